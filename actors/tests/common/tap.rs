//! A `DeliveryClient` that passes everything to a real one and lets a test
//! watch and disturb the traffic: count the group envelopes a client reads
//! by query and by subscription, drop envelopes from its subscription (a
//! lost push), and run a hook as a publish reaches the node.

use std::sync::{
    Arc, Mutex, PoisonError,
    atomic::{AtomicUsize, Ordering},
};

use futures::StreamExt as _;
use kith_engine::{
    delivery::{Cursor, Envelope, Topic},
    identity::{IdentityUpdate, InboxId},
};
use kith_transport::{
    client::{ClientError, DeliveryClient, EnvelopeStream, NodeInfo, QueryPage},
    node::{
        DeniableKeyPackageFetch, DeniableKeyPackageUpload, FetchedKeyPackage, KeyPackageFetch,
        KeyPackageUpload,
    },
};

type PublishHook = Box<dyn Fn(&[(Topic, Vec<u8>)]) + Send + Sync>;
type DropRule = Box<dyn Fn(&Envelope) -> bool + Send + Sync>;

/// See the module docs.
pub struct Tap {
    inner: Arc<dyn DeliveryClient>,
    /// Group-topic envelopes returned by queries.
    queried: AtomicUsize,
    /// Group-topic envelopes delivered by subscriptions.
    streamed: Arc<AtomicUsize>,
    on_publish: Mutex<Option<PublishHook>>,
    drop_streamed: Arc<Mutex<Option<DropRule>>>,
    /// Raised to end every subscription made before.
    generation: Arc<AtomicUsize>,
    /// While set, every publish fails as if the node were down.
    offline: std::sync::atomic::AtomicBool,
}

impl Tap {
    pub fn new(inner: Arc<dyn DeliveryClient>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            queried: AtomicUsize::new(0),
            streamed: Arc::default(),
            on_publish: Mutex::new(None),
            drop_streamed: Arc::new(Mutex::new(None)),
            generation: Arc::default(),
            offline: Default::default(),
        })
    }

    /// Make every publish fail as if the node were down (`true`), or pass
    /// again (`false`).
    pub fn set_offline(&self, offline: bool) {
        self.offline.store(offline, Ordering::SeqCst);
    }

    /// Run `hook` on every publish, before the node sees it.
    pub fn on_publish(&self, hook: impl Fn(&[(Topic, Vec<u8>)]) + Send + Sync + 'static) {
        *self
            .on_publish
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Box::new(hook));
    }

    /// Leave out of subscriptions every envelope `rule` picks.
    pub fn drop_streamed(&self, rule: impl Fn(&Envelope) -> bool + Send + Sync + 'static) {
        *self
            .drop_streamed
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Box::new(rule));
    }

    /// End every subscription made so far, at its next envelope (which it
    /// does not deliver): a connection that broke.
    pub fn break_streams(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    pub fn queried(&self) -> usize {
        self.queried.load(Ordering::SeqCst)
    }

    pub fn streamed(&self) -> usize {
        self.streamed.load(Ordering::SeqCst)
    }
}

/// The tap as the node of a client.
pub fn node(tap: &Arc<Tap>) -> kith::Node {
    kith::Node::Client(Arc::clone(tap) as Arc<dyn DeliveryClient>)
}

#[async_trait::async_trait]
impl DeliveryClient for Tap {
    async fn publish(&self, batch: Vec<(Topic, Vec<u8>)>) -> Result<Vec<Envelope>, ClientError> {
        if let Some(hook) = &*self
            .on_publish
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
        {
            hook(&batch);
        }
        if self.offline.load(Ordering::SeqCst) {
            return Err(ClientError::Unavailable("the tap is offline".into()));
        }
        self.inner.publish(batch).await
    }

    async fn query(
        &self,
        topic: &Topic,
        cursor: &Cursor,
        limit: u32,
    ) -> Result<QueryPage, ClientError> {
        let page = self.inner.query(topic, cursor, limit).await?;
        if matches!(topic, Topic::Group(_)) {
            self.queried
                .fetch_add(page.envelopes.len(), Ordering::SeqCst);
        }
        Ok(page)
    }

    async fn subscribe(&self, topics: Vec<(Topic, Cursor)>) -> Result<EnvelopeStream, ClientError> {
        let stream = self.inner.subscribe(topics).await?;
        let rule = Arc::clone(&self.drop_streamed);
        let streamed = Arc::clone(&self.streamed);
        let generation = Arc::clone(&self.generation);
        let born = generation.load(Ordering::SeqCst);
        let alive = move |_: &_| futures::future::ready(generation.load(Ordering::SeqCst) == born);
        Ok(Box::pin(stream.take_while(alive).filter(move |item| {
            let keep = match item {
                Ok(envelope) => {
                    let dropped = rule
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .as_ref()
                        .is_some_and(|rule| rule(envelope));
                    if !dropped && matches!(envelope.topic, Topic::Group(_)) {
                        streamed.fetch_add(1, Ordering::SeqCst);
                    }
                    !dropped
                }
                Err(_) => true,
            };
            futures::future::ready(keep)
        })))
    }

    async fn publish_identity_update(&self, update: IdentityUpdate) -> Result<u64, ClientError> {
        self.inner.publish_identity_update(update).await
    }

    async fn identity_updates(
        &self,
        requests: Vec<(InboxId, u64)>,
    ) -> Result<Vec<Vec<IdentityUpdate>>, ClientError> {
        self.inner.identity_updates(requests).await
    }

    async fn upload_key_packages(&self, upload: KeyPackageUpload) -> Result<usize, ClientError> {
        self.inner.upload_key_packages(upload).await
    }

    async fn fetch_key_packages(
        &self,
        fetch: KeyPackageFetch,
    ) -> Result<Vec<FetchedKeyPackage>, ClientError> {
        self.inner.fetch_key_packages(fetch).await
    }

    async fn upload_deniable_key_packages(
        &self,
        upload: DeniableKeyPackageUpload,
    ) -> Result<usize, ClientError> {
        self.inner.upload_deniable_key_packages(upload).await
    }

    async fn fetch_deniable_key_packages(
        &self,
        fetch: DeniableKeyPackageFetch,
    ) -> Result<Vec<FetchedKeyPackage>, ClientError> {
        self.inner.fetch_deniable_key_packages(fetch).await
    }

    async fn node_info(&self) -> Result<NodeInfo, ClientError> {
        self.inner.node_info().await
    }
}
