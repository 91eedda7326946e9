//! [`FailoverClient`]: one client over several replicating nodes, moving to
//! the next when the one in use cannot be reached.
//!
//! Replicating originator nodes serve every originator's envelopes, so a
//! group topic's vector cursor means the same on each of them, and a client
//! can read and publish through any. This wrapper sticks to one node (its
//! answers are consistent with each other) and moves on only when that node
//! is [`ClientError::Unavailable`]; a refusal or a malformed answer is the
//! node's word, and is returned as it is.
//!
//! What does not move with the client: key packages live on the node they
//! were uploaded to, and deniable requests are MACed with one node's static
//! key (DESIGN.md section 8), so after a move those calls reach a node that
//! may not have the packages or may not take the MAC. See
//! `docs/replication.md`.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use kith_engine::{
    delivery::{Cursor, Envelope, Topic},
    identity::{IdentityUpdate, InboxId},
};

use super::{ClientError, DeliveryClient, EnvelopeStream, NodeInfo, QueryPage};
use crate::node::{
    DeniableKeyPackageFetch, DeniableKeyPackageUpload, FetchedKeyPackage, KeyPackageFetch,
    KeyPackageUpload,
};

/// A [`DeliveryClient`] over several nodes of one network, in order of
/// preference. See the module docs.
pub struct FailoverClient {
    nodes: Vec<Arc<dyn DeliveryClient>>,
    current: AtomicUsize,
}

impl std::fmt::Debug for FailoverClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailoverClient")
            .field("nodes", &self.nodes.len())
            .field("current", &self.current.load(Ordering::Relaxed))
            .finish()
    }
}

impl FailoverClient {
    /// A client over `nodes`, starting with the first.
    ///
    /// # Errors
    /// [`ClientError::Unavailable`] if `nodes` is empty.
    pub fn new(nodes: Vec<Arc<dyn DeliveryClient>>) -> Result<Self, ClientError> {
        if nodes.is_empty() {
            return Err(ClientError::Unavailable("no node was given".into()));
        }
        Ok(Self {
            nodes,
            current: AtomicUsize::new(0),
        })
    }

    /// The index (in the order given) of the node in use.
    pub fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    /// Run `call` on the node in use; while it is unavailable, on the next
    /// ones, each once. The first node that answers becomes the one in use.
    async fn call<'a, T, F, Fut>(&'a self, call: F) -> Result<T, ClientError>
    where
        F: Fn(&'a dyn DeliveryClient) -> Fut,
        Fut: Future<Output = Result<T, ClientError>> + 'a,
    {
        let start = self.current();
        let mut last = None;
        for step in 0..self.nodes.len() {
            let index = (start + step) % self.nodes.len();
            match call(self.nodes[index].as_ref()).await {
                Err(ClientError::Unavailable(reason)) => {
                    tracing::debug!(node = index, %reason, "node unavailable; trying the next");
                    last = Some(reason);
                }
                answer => {
                    if index != start {
                        tracing::info!(from = start, to = index, "moved to another node");
                        self.current.store(index, Ordering::Relaxed);
                    }
                    return answer;
                }
            }
        }
        Err(ClientError::Unavailable(format!(
            "none of the {} nodes answered; the last said: {}",
            self.nodes.len(),
            last.unwrap_or_default()
        )))
    }
}

#[async_trait::async_trait]
impl DeliveryClient for FailoverClient {
    async fn publish(&self, batch: Vec<(Topic, Vec<u8>)>) -> Result<Vec<Envelope>, ClientError> {
        // Unavailable may mean published but unacknowledged: publishing on
        // the next node makes a second copy, which receivers drop (a
        // duplicate commit by its hash, a message by its spent generation).
        self.call(|node| node.publish(batch.clone())).await
    }

    async fn query(
        &self,
        topic: &Topic,
        cursor: &Cursor,
        limit: u32,
    ) -> Result<QueryPage, ClientError> {
        self.call(|node| node.query(topic, cursor, limit)).await
    }

    async fn subscribe(&self, topics: Vec<(Topic, Cursor)>) -> Result<EnvelopeStream, ClientError> {
        self.call(|node| node.subscribe(topics.clone())).await
    }

    async fn publish_identity_update(&self, update: IdentityUpdate) -> Result<u64, ClientError> {
        self.call(|node| node.publish_identity_update(update.clone()))
            .await
    }

    async fn identity_updates(
        &self,
        requests: Vec<(InboxId, u64)>,
    ) -> Result<Vec<Vec<IdentityUpdate>>, ClientError> {
        self.call(|node| node.identity_updates(requests.clone()))
            .await
    }

    async fn upload_key_packages(&self, upload: KeyPackageUpload) -> Result<usize, ClientError> {
        self.call(|node| node.upload_key_packages(upload.clone()))
            .await
    }

    async fn fetch_key_packages(
        &self,
        fetch: KeyPackageFetch,
    ) -> Result<Vec<FetchedKeyPackage>, ClientError> {
        self.call(|node| node.fetch_key_packages(fetch.clone()))
            .await
    }

    async fn upload_deniable_key_packages(
        &self,
        upload: DeniableKeyPackageUpload,
    ) -> Result<usize, ClientError> {
        self.call(|node| node.upload_deniable_key_packages(upload.clone()))
            .await
    }

    async fn fetch_deniable_key_packages(
        &self,
        fetch: DeniableKeyPackageFetch,
    ) -> Result<Vec<FetchedKeyPackage>, ClientError> {
        self.call(|node| node.fetch_deniable_key_packages(fetch.clone()))
            .await
    }

    async fn node_info(&self) -> Result<NodeInfo, ClientError> {
        self.call(|node| node.node_info()).await
    }
}
