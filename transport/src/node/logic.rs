//! [`NodeLogic`]: everything the node does, once. The gRPC service and
//! `LocalNode` are thin layers over it.
//!
//! Storage calls are blocking (the [`NodeStore`] port) and run on tokio's
//! blocking pool; so does signature and key-package verification. New
//! envelopes are announced on a broadcast channel after they are stored, and
//! subscriptions register on it *before* they catch up from the store, so
//! that nothing falls between catch-up and live.

use std::sync::{Arc, Mutex, PoisonError};

use ed25519_dalek::{Signer as _, SigningKey};
use kith_engine::{
    delivery::{
        Cursor, Envelope, KeyPackagePool, NodeId, NodeStore, SealedEnvelope, StoredKeyPackage,
        Topic,
    },
    identity::{
        IdentityConfig, IdentityError, IdentityState, IdentityUpdate, InboxId, InstallationId,
        KeyPackageError, credential_inbox, upload_key, validate_deniable_key_package,
        validate_key_package, verify_upload_tag,
    },
};
use openmls::prelude::{MlsMessageBodyIn, MlsMessageIn, tls_codec::Deserialize as _};
use tokio::sync::{broadcast, mpsc};
use x25519_dalek::{PublicKey as X25519Public, StaticSecret};

mod feed;
mod forwarded;
mod replication;

pub use forwarded::ForwardedDeniableFetch;
pub use replication::ReplicationError;

use super::{
    auth,
    config::{self, NodeConfig},
    error::NodeError,
    rate_limit::{self, Buckets},
};

/// Where the node's time comes from; tests drive it by hand.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }
}

/// How many live envelopes a slow subscriber may fall behind before it
/// re-reads from the store instead.
const LIVE_BUFFER: usize = 4_096;

/// One answer of a key-package fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedKeyPackage {
    /// The target installation.
    pub installation: InstallationId,
    /// Its key package, if it has any.
    pub key_package: Option<StoredKeyPackage>,
}

/// A signed key-package upload, as received.
#[derive(Debug, Clone)]
pub struct KeyPackageUpload {
    /// The uploading installation.
    pub installation: InstallationId,
    /// One-time packages (TLS-serialized `MlsMessage`s).
    pub one_time: Vec<Vec<u8>>,
    /// A last-resort package.
    pub last_resort: Option<Vec<u8>>,
    /// The request's timestamp (ms).
    pub timestamp_ms: u64,
    /// The installation's signature over [`auth::upload_signed_bytes`].
    pub signature: Vec<u8>,
}

/// A signed key-package fetch, as received.
#[derive(Debug, Clone)]
pub struct KeyPackageFetch {
    /// The installations to fetch a package for.
    pub targets: Vec<InstallationId>,
    /// The requester's inbox.
    pub requester_inbox: InboxId,
    /// The requesting installation.
    pub requester: InstallationId,
    /// The request's timestamp (ms).
    pub timestamp_ms: u64,
    /// The requester's signature over [`auth::fetch_signed_bytes`].
    pub signature: Vec<u8>,
}

/// A deniable key-package upload, as received. It is authenticated by a
/// MAC keyed with `X25519(installation identity key, node static key)`,
/// never by a signature, so that nothing the node keeps proves to anyone
/// else which installation made a package (DESIGN.md section 8).
#[derive(Debug, Clone)]
pub struct DeniableKeyPackageUpload {
    /// The uploader's inbox, whose identity log holds its identity key.
    pub inbox: InboxId,
    /// The uploading installation.
    pub installation: InstallationId,
    /// One-time deniable packages (TLS-serialized `MlsMessage`s).
    pub one_time: Vec<Vec<u8>>,
    /// A deniable last-resort package.
    pub last_resort: Option<Vec<u8>>,
    /// The request's timestamp (ms).
    pub timestamp_ms: u64,
    /// HMAC-SHA256 over [`auth::deniable_upload_bytes`].
    pub mac: Vec<u8>,
}

/// A deniable key-package fetch, as received: one package for each active
/// installation of `target`, authenticated like an upload, by a MAC.
#[derive(Debug, Clone)]
pub struct DeniableKeyPackageFetch {
    /// The inbox whose installations' packages are wanted.
    pub target: InboxId,
    /// The requester's inbox.
    pub requester_inbox: InboxId,
    /// The requesting installation, which gets no package of its own.
    pub requester: InstallationId,
    /// The request's timestamp (ms).
    pub timestamp_ms: u64,
    /// HMAC-SHA256 over [`auth::deniable_fetch_bytes`].
    pub mac: Vec<u8>,
}

struct Limiter {
    requesters: Buckets<InstallationId>,
    targets: Buckets<InstallationId>,
    pairs: Buckets<(InstallationId, InstallationId)>,
}

/// The node. See the module docs.
pub struct NodeLogic<S> {
    config: NodeConfig,
    store: Arc<S>,
    clock: Arc<dyn Clock>,
    live: broadcast::Sender<Arc<SealedEnvelope>>,
    /// Held from storing a batch until it is announced, so that live
    /// envelopes are announced in sequence order: a subscriber skips what
    /// its cursor already covers, and an out-of-order announcement would be
    /// skipped for good.
    publish_order: tokio::sync::Mutex<()>,
    /// Set when the node shuts down: subscriptions end, so that a graceful
    /// shutdown is not held open by streams that never finish.
    closing: tokio::sync::watch::Sender<bool>,
    limiter: Mutex<Limiter>,
    /// The node's static X25519 secret, read from the store (or made and
    /// stored) on first use.
    secret: tokio::sync::OnceCell<StaticSecret>,
    /// The node's Ed25519 key, which seals what it originates; read from
    /// the store (or made and stored) on first use.
    signing_key: tokio::sync::OnceCell<SigningKey>,
    /// For a store other node processes write too: what this process
    /// announced, and the store's wake-ups (`feed.rs`).
    shared: Option<feed::SharedFeed>,
}

impl<S> std::fmt::Debug for NodeLogic<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeLogic")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn internal(e: impl std::fmt::Display) -> NodeError {
    NodeError::Internal(e.to_string())
}

/// A store's error as the node reports it: `Unavailable` when the store
/// says retrying later may work (its database is down), else `Internal`.
pub(crate) fn store_error<S: NodeStore>(e: S::Error) -> NodeError {
    if S::is_unavailable(&e) {
        NodeError::Unavailable(e.to_string())
    } else {
        NodeError::Internal(e.to_string())
    }
}

impl<S: NodeStore + 'static> NodeLogic<S> {
    /// A node over `store`, on the system clock.
    pub fn new(config: NodeConfig, store: S) -> Self {
        Self::with_clock(config, store, Arc::new(SystemClock))
    }

    /// A node over `store`, on `clock`.
    pub fn with_clock(config: NodeConfig, store: S, clock: Arc<dyn Clock>) -> Self {
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        let shared = feed::SharedFeed::watch(&store);
        Self {
            shared,
            limiter: Mutex::new(Limiter {
                requesters: Buckets::new(config.limits.fetch_per_requester),
                targets: Buckets::new(config.limits.fetch_per_target),
                pairs: Buckets::new(config.limits.fetch_per_pair),
            }),
            config,
            store: Arc::new(store),
            clock,
            live,
            publish_order: tokio::sync::Mutex::new(()),
            closing: tokio::sync::watch::Sender::new(false),
            secret: tokio::sync::OnceCell::new(),
            signing_key: tokio::sync::OnceCell::new(),
        }
    }

    async fn secret(&self) -> Result<StaticSecret, NodeError> {
        self.secret
            .get_or_try_init(|| async {
                let fresh = StaticSecret::random_from_rng(rand_core::OsRng).to_bytes();
                let stored = self
                    .blocking(move |store| store.node_secret(fresh).map_err(store_error::<S>))
                    .await?;
                Ok(StaticSecret::from(stored))
            })
            .await
            .cloned()
    }

    async fn signing_key(&self) -> Result<SigningKey, NodeError> {
        self.signing_key
            .get_or_try_init(|| async {
                let fresh = SigningKey::generate(&mut rand_core::OsRng).to_bytes();
                let stored = self
                    .blocking(move |store| store.node_signing_seed(fresh).map_err(store_error::<S>))
                    .await?;
                Ok(SigningKey::from_bytes(&stored))
            })
            .await
            .cloned()
    }

    /// The node's Ed25519 public key: its peers are configured with it, and
    /// it seals every envelope this node originates.
    pub async fn public_key(&self) -> Result<[u8; 32], NodeError> {
        Ok(self.signing_key().await?.verifying_key().to_bytes())
    }

    /// Every originator whose seals this node can vouch for: itself and its
    /// peers, with their public keys (for `GetNodeInfo`).
    pub async fn originator_keys(&self) -> Result<Vec<(NodeId, [u8; 32])>, NodeError> {
        let mut keys = vec![(self.config.node_id, self.public_key().await?)];
        keys.extend(
            self.config
                .peers
                .iter()
                .map(|peer| (peer.node_id, peer.public_key.to_bytes())),
        );
        Ok(keys)
    }

    /// Seal, with this node's key, the envelopes of this node stored before
    /// seals existed (their seal is empty).
    async fn fill_seals(&self, page: &mut [SealedEnvelope]) -> Result<(), NodeError> {
        if !page.iter().any(|e| e.seal.is_empty()) {
            return Ok(());
        }
        let key = self.signing_key().await?;
        for sealed in page.iter_mut().filter(|e| e.seal.is_empty()) {
            if sealed.envelope.originator_node_id == self.config.node_id {
                sealed.seal = key.sign(&sealed.envelope.seal_input()).to_bytes().to_vec();
            }
        }
        Ok(())
    }

    /// The node's static X25519 public key, published in `GetNodeInfo`:
    /// clients key the MACs of their deniable key-package requests with it.
    pub async fn static_key(&self) -> Result<[u8; 32], NodeError> {
        Ok(X25519Public::from(&self.secret().await?).to_bytes())
    }

    /// End every subscription (their streams finish cleanly). Called when
    /// the node shuts down.
    pub fn close_subscriptions(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves to `true` once the node closes (see
    /// [`NodeLogic::close_subscriptions`]): background tasks stop on it.
    pub(crate) fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// The node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&S) -> Result<T, NodeError> + Send + 'static,
    ) -> Result<T, NodeError> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(internal)?
    }

    /// Store a batch of envelopes from a client, all or nothing, and
    /// announce them.
    ///
    /// Identity topics are refused: they carry the node's own mirror of
    /// the identity updates it verified ([`NodeLogic::publish_identity_update`]),
    /// and clients that follow them must read only that.
    pub async fn publish(
        &self,
        batch: Vec<(String, Vec<u8>)>,
    ) -> Result<Vec<SealedEnvelope>, NodeError> {
        self.append(batch, false).await
    }

    /// Store and announce a batch; `own` lets the node write the topics it
    /// keeps for itself.
    async fn append(
        &self,
        batch: Vec<(String, Vec<u8>)>,
        own: bool,
    ) -> Result<Vec<SealedEnvelope>, NodeError> {
        let limits = self.config.limits;
        if batch.is_empty() {
            return Err(NodeError::InvalidArgument(
                "publish at least one envelope".into(),
            ));
        }
        if batch.len() > limits.max_batch_envelopes {
            return Err(NodeError::too_large(format!(
                "{} envelopes in one publish; the limit is {}",
                batch.len(),
                limits.max_batch_envelopes
            )));
        }
        let mut parsed = Vec::with_capacity(batch.len());
        for (i, (topic, payload)) in batch.into_iter().enumerate() {
            let topic: Topic = topic
                .parse()
                .map_err(|e: kith_engine::delivery::TopicError| {
                    NodeError::InvalidArgument(format!("envelope {i}: {e}"))
                })?;
            if !own && matches!(topic, Topic::Identity(_)) {
                return Err(NodeError::InvalidArgument(format!(
                    "envelope {i}: {topic} is written by the node only, with the identity \
                     updates it verified; publish an identity update with \
                     PublishIdentityUpdate instead"
                )));
            }
            if payload.len() > limits.max_envelope_bytes {
                return Err(NodeError::too_large(format!(
                    "envelope {i} is {} bytes; the limit is {}",
                    payload.len(),
                    limits.max_envelope_bytes
                )));
            }
            parsed.push((topic, payload));
        }
        let node_id = self.config.node_id;
        let key = self.signing_key().await?;
        let _order = self.publish_order.lock().await;
        let now = self.clock.now_ms();
        let stored = self
            .blocking(move |store| {
                let seal =
                    |envelope: &Envelope| key.sign(&envelope.seal_input()).to_bytes().to_vec();
                store
                    .append_envelopes(node_id, parsed, now, &seal)
                    .map_err(store_error::<S>)
            })
            .await?;
        self.announce(&stored).await;
        Ok(stored)
    }

    /// One page of `topic` after `cursor`; returns the page, the advanced
    /// cursor and whether more may follow.
    pub async fn query(
        &self,
        topic: &str,
        cursor: Cursor,
        limit: usize,
    ) -> Result<(Vec<SealedEnvelope>, Cursor, bool), NodeError> {
        let topic: Topic = topic
            .parse()
            .map_err(|e: kith_engine::delivery::TopicError| {
                NodeError::InvalidArgument(e.to_string())
            })?;
        let max = self.config.limits.max_page_envelopes;
        let limit = if limit == 0 { max } else { limit.min(max) };
        let after = cursor.clone();
        let mut page = self
            .blocking(move |store| {
                store
                    .query_envelopes(&topic, &after, limit)
                    .map_err(store_error::<S>)
            })
            .await?;
        let full = page.len() == limit;
        let cut = self.fit_to_message(&mut page);
        self.fill_seals(&mut page).await?;
        let mut next = cursor;
        for sealed in &page {
            next.advance(&sealed.envelope);
        }
        Ok((page, next, full || cut))
    }

    /// Cut `page` to the longest start that fits in one message of the
    /// node's `max_message_bytes` (never below one envelope); returns
    /// whether it cut anything.
    fn fit_to_message(&self, page: &mut Vec<SealedEnvelope>) -> bool {
        let budget = self
            .config
            .limits
            .max_message_bytes
            .saturating_sub(config::MESSAGE_HEADROOM);
        let mut used = 0;
        let keep = page
            .iter()
            .take_while(|sealed| {
                let envelope = &sealed.envelope;
                used += config::envelope_message_bytes(
                    envelope.topic.to_string().len(),
                    envelope.payload.len(),
                );
                used <= budget
            })
            .count()
            .max(1);
        let cut = keep < page.len();
        page.truncate(keep);
        cut
    }

    /// Subscribe to `topics` from their cursors: catch-up, then live, with
    /// no gap and no duplicate. The stream ends when the receiver is
    /// dropped.
    pub fn subscribe(
        self: &Arc<Self>,
        topics: Vec<(String, Cursor)>,
    ) -> Result<mpsc::Receiver<Result<Vec<SealedEnvelope>, NodeError>>, NodeError> {
        if topics.is_empty() {
            return Err(NodeError::InvalidArgument(
                "subscribe to at least one topic".into(),
            ));
        }
        if topics.len() > self.config.limits.max_subscription_topics {
            return Err(NodeError::too_large(format!(
                "{} topics in one subscription; the limit is {}",
                topics.len(),
                self.config.limits.max_subscription_topics
            )));
        }
        let mut cursors = std::collections::HashMap::new();
        for (topic, cursor) in topics {
            let topic: Topic = topic
                .parse()
                .map_err(|e: kith_engine::delivery::TopicError| {
                    NodeError::InvalidArgument(e.to_string())
                })?;
            cursors.insert(topic, cursor);
        }
        self.start_feed();
        // Register for live envelopes before catching up (see module docs).
        let mut live = self.live.subscribe();
        let mut closing = self.closing.subscribe();
        let (tx, rx) = mpsc::channel(64);
        let node = Arc::clone(self);
        tokio::spawn(async move {
            if node.catch_up(&mut cursors, &tx).await.is_err() {
                return;
            }
            loop {
                let next = tokio::select! {
                    // The subscriber left, or the node is shutting down.
                    () = tx.closed() => return,
                    _ = closing.wait_for(|closing| *closing) => return,
                    next = live.recv() => next,
                };
                match next {
                    Ok(sealed) => {
                        let envelope = &sealed.envelope;
                        let Some(cursor) = cursors.get_mut(&envelope.topic) else {
                            continue;
                        };
                        if !cursor.is_before(envelope) {
                            continue; // already sent during catch-up
                        }
                        cursor.advance(envelope);
                        if tx.send(Ok(vec![(*sealed).clone()])).await.is_err() {
                            return; // the subscriber left
                        }
                    }
                    // Fell behind the live buffer: read the rest from the
                    // store, which has everything.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if node.catch_up(&mut cursors, &tx).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(rx)
    }

    /// Send everything after each cursor, page by page, advancing them.
    /// `Err` means the subscriber is gone.
    async fn catch_up(
        &self,
        cursors: &mut std::collections::HashMap<Topic, Cursor>,
        tx: &mpsc::Sender<Result<Vec<SealedEnvelope>, NodeError>>,
    ) -> Result<(), ()> {
        let topics: Vec<Topic> = cursors.keys().cloned().collect();
        for topic in topics {
            loop {
                let cursor = cursors.get(&topic).cloned().unwrap_or_default();
                let limit = self.config.limits.max_page_envelopes;
                let t = topic.clone();
                let read = async {
                    let mut page = self
                        .blocking(move |store| {
                            store
                                .query_envelopes(&t, &cursor, limit)
                                .map_err(store_error::<S>)
                        })
                        .await?;
                    self.fill_seals(&mut page).await?;
                    Ok::<_, NodeError>(page)
                };
                let mut page = match read.await {
                    Ok(page) => page,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return Err(());
                    }
                };
                if page.is_empty() {
                    break;
                }
                let full = page.len() == limit || self.fit_to_message(&mut page);
                if let Some(cursor) = cursors.get_mut(&topic) {
                    for sealed in &page {
                        cursor.advance(&sealed.envelope);
                    }
                }
                tx.send(Ok(page)).await.map_err(|_| ())?;
                if !full {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Verify `update` against the stored log of its inbox and store it.
    ///
    /// Once stored, the update is also announced on the inbox's identity
    /// topic, so that clients following it learn of new or revoked
    /// installations without polling. The announcement is a hint: a client
    /// that misses it finds the update on its next periodic check.
    pub async fn publish_identity_update(&self, update: IdentityUpdate) -> Result<u64, NodeError> {
        let topic = kith_engine::delivery::Topic::Identity(update.unsigned.inbox).to_string();
        let bytes = update.to_bytes();
        let sequence = self.store_identity_update(update).await?;
        if let Err(e) = self.append(vec![(topic, bytes)], true).await {
            tracing::warn!(error = %e, "could not announce an identity update");
        }
        Ok(sequence)
    }

    async fn store_identity_update(&self, update: IdentityUpdate) -> Result<u64, NodeError> {
        self.blocking(move |store| {
            let inbox = update.unsigned.inbox;
            let mut state = load_identity(store, inbox)?;
            state.apply(&update).map_err(identity_error)?;
            let sequence = update.unsigned.sequence;
            if store
                .append_identity_update(&inbox, sequence, update.to_bytes())
                .map_err(store_error::<S>)?
            {
                Ok(sequence)
            } else {
                Err(NodeError::FailedPrecondition(format!(
                    "another update {sequence} of inbox {inbox} was stored first; \
                     fetch the log and sign the next update"
                )))
            }
        })
        .await
    }

    /// Identity updates of many inboxes after given sequence numbers.
    pub async fn identity_updates(
        &self,
        requests: Vec<(InboxId, u64)>,
    ) -> Result<Vec<Vec<IdentityUpdate>>, NodeError> {
        if requests.len() > self.config.limits.max_identity_inboxes {
            return Err(NodeError::too_large(format!(
                "{} inboxes in one request; the limit is {}",
                requests.len(),
                self.config.limits.max_identity_inboxes
            )));
        }
        self.blocking(move |store| {
            store
                .identity_updates(&requests, usize::MAX)
                .map_err(store_error::<S>)?
                .into_iter()
                .map(|updates| {
                    updates
                        .into_iter()
                        .map(|(_, bytes)| IdentityUpdate::from_bytes(&bytes).map_err(internal))
                        .collect()
                })
                .collect()
        })
        .await
    }

    /// Verify and store a key-package upload; returns the one-time packages
    /// the installation has left.
    pub async fn upload_key_packages(&self, upload: KeyPackageUpload) -> Result<usize, NodeError> {
        self.check_upload_size(upload.one_time.len(), upload.last_resort.is_some())?;
        let now_ms = self.clock.now_ms();
        let window = self.timestamp_window_ms();
        self.blocking(move |store| {
            let signed = auth::upload_signed_bytes(
                upload.timestamp_ms,
                &upload.installation,
                &upload.one_time,
                upload.last_resort.as_deref(),
            );
            auth::check(
                &upload.installation,
                &signed,
                &upload.signature,
                upload.timestamp_ms,
                now_ms,
                window,
            )?;
            let crypto = openmls_rust_crypto::RustCrypto::default();
            let mut identities = std::collections::HashMap::new();
            check_and_store(
                store,
                KeyPackagePool::Ordinary,
                &upload.installation,
                upload.one_time,
                upload.last_resort,
                now_ms / 1000,
                |bytes, want_last_resort| {
                    check_uploaded_package(
                        store,
                        &crypto,
                        &mut identities,
                        bytes,
                        &upload.installation,
                        want_last_resort,
                        now_ms / 1000,
                    )
                },
            )
        })
        .await
    }

    /// Authenticate and rate-limit a fetch, then hand out one package per
    /// target.
    pub async fn fetch_key_packages(
        &self,
        fetch: KeyPackageFetch,
    ) -> Result<Vec<FetchedKeyPackage>, NodeError> {
        let limits = self.config.limits;
        if fetch.targets.is_empty() {
            return Err(NodeError::InvalidArgument(
                "a fetch must name at least one target installation".into(),
            ));
        }
        if fetch.targets.len() > limits.max_batch_key_packages {
            return Err(NodeError::too_large(format!(
                "{} key packages in one fetch; the limit is {}",
                fetch.targets.len(),
                limits.max_batch_key_packages
            )));
        }
        let now_ms = self.clock.now_ms();
        let window = self.timestamp_window_ms();
        let signed = auth::fetch_signed_bytes(
            fetch.timestamp_ms,
            &fetch.requester_inbox,
            &fetch.requester,
            &fetch.targets,
        );
        auth::check(
            &fetch.requester,
            &signed,
            &fetch.signature,
            fetch.timestamp_ms,
            now_ms,
            window,
        )?;
        let (inbox, requester) = (fetch.requester_inbox, fetch.requester);
        let registered = self
            .blocking(move |store| Ok(load_identity(store, inbox)?.is_active(&requester)))
            .await?;
        if !registered {
            return Err(NodeError::Unauthenticated(format!(
                "installation {requester} is not an active installation of inbox {inbox}"
            )));
        }
        // Only a target with packages here costs anything: a fetch for an
        // unknown installation answers `None` for free, and makes no bucket
        // (the tables stay bounded by real installations).
        let targets = fetch.targets;
        let (targets, known) = self
            .blocking(move |store| {
                let known = store
                    .has_key_packages(KeyPackagePool::Ordinary, &targets)
                    .map_err(store_error::<S>)?;
                Ok((targets, known))
            })
            .await?;
        let charged: Vec<InstallationId> = targets
            .iter()
            .zip(&known)
            .filter(|(_, known)| **known)
            .map(|(id, _)| *id)
            .collect();
        if charged.is_empty() {
            return Ok(targets
                .into_iter()
                .map(|installation| FetchedKeyPackage {
                    installation,
                    key_package: None,
                })
                .collect());
        }
        self.charge(requester, &charged, now_ms).await?;
        let mut taken = self
            .blocking(move |store| {
                take_unexpired(store, KeyPackagePool::Ordinary, &charged, now_ms / 1000)
            })
            .await?
            .into_iter();
        Ok(targets
            .into_iter()
            .zip(known)
            .map(|(installation, known)| FetchedKeyPackage {
                installation,
                key_package: if known { taken.next().flatten() } else { None },
            })
            .collect())
    }

    fn timestamp_window_ms(&self) -> u64 {
        u64::try_from(self.config.limits.timestamp_window.as_millis()).unwrap_or(u64::MAX)
    }

    fn check_upload_size(&self, one_time: usize, last_resort: bool) -> Result<(), NodeError> {
        let limit = self.config.limits.max_batch_key_packages;
        let count = one_time + usize::from(last_resort);
        if count > limit {
            return Err(NodeError::too_large(format!(
                "{count} key packages in one upload; the limit is {limit}"
            )));
        }
        Ok(())
    }

    /// Take `targets.len()` fetches from `requester`'s bucket, and one per
    /// target from each target's bucket and from the bucket of the pair
    /// (requester, target): all or none.
    ///
    /// Over a store shared by several node processes the buckets live in
    /// the store ([`NodeStore::charge_buckets`]), so that a limit holds
    /// across all of them; otherwise in this process's memory.
    async fn charge(
        &self,
        requester: InstallationId,
        targets: &[InstallationId],
        now_ms: u64,
    ) -> Result<(), NodeError> {
        let mut per_target: std::collections::BTreeMap<InstallationId, u32> =
            std::collections::BTreeMap::new();
        for target in targets {
            *per_target.entry(*target).or_default() += 1;
        }
        let per_target: Vec<(InstallationId, u32)> = per_target.into_iter().collect();
        let per_pair: Vec<_> = per_target
            .iter()
            .map(|(target, cost)| ((requester, *target), *cost))
            .collect();
        let requester_cost = [(requester, u32::try_from(targets.len()).unwrap_or(u32::MAX))];
        if self.shared.is_some() {
            let limits = self.config.limits;
            let mut keys = vec![[b"r".as_slice(), requester.as_bytes()].concat()];
            let mut charges = vec![(limits.fetch_per_requester, requester_cost[0].1)];
            for (target, cost) in &per_target {
                keys.push([b"t".as_slice(), target.as_bytes()].concat());
                charges.push((limits.fetch_per_target, *cost));
            }
            for ((requester, target), cost) in &per_pair {
                keys.push([b"p".as_slice(), requester.as_bytes(), target.as_bytes()].concat());
                charges.push((limits.fetch_per_pair, *cost));
            }
            // After the slowest refill every bucket is full: forgettable.
            let forget = [
                limits.fetch_per_requester,
                limits.fetch_per_target,
                limits.fetch_per_pair,
            ]
            .into_iter()
            .map(rate_limit::refill_ms)
            .collect::<Option<Vec<u64>>>()
            .and_then(|all| all.into_iter().max());
            let shared = self
                .blocking(move |store| {
                    let mut wait = 0;
                    let outcome = store.charge_buckets(&keys, now_ms, forget, &mut |states| {
                        wait = rate_limit::charge_states(states, &charges, now_ms);
                        wait == 0
                    });
                    match outcome {
                        None => Ok(None),
                        Some(result) => result.map(|_| Some(wait)).map_err(store_error::<S>),
                    }
                })
                .await?;
            if let Some(wait) = shared {
                return self.refuse_fetch(wait, targets.len());
            }
        }
        let mut limiter = self.limiter.lock().unwrap_or_else(PoisonError::into_inner);
        let wait = limiter
            .requesters
            .wait_ms(&requester_cost, now_ms)
            .max(limiter.targets.wait_ms(&per_target, now_ms))
            .max(limiter.pairs.wait_ms(&per_pair, now_ms));
        self.refuse_fetch(wait, targets.len())?;
        limiter.requesters.take(&requester_cost, now_ms);
        limiter.targets.take(&per_target, now_ms);
        limiter.pairs.take(&per_pair, now_ms);
        Ok(())
    }

    /// `Ok` if a fetch of `count` targets may go ahead after waiting `wait`
    /// ms (0), else the rate-limit answer.
    fn refuse_fetch(&self, wait: u64, count: usize) -> Result<(), NodeError> {
        if wait == 0 {
            return Ok(());
        }
        let message = if wait == u64::MAX {
            let l = &self.config.limits;
            format!(
                "a fetch of {count} key packages asks for more than this node ever allows at \
                 once (at most {} per requester, {} per target, {} per requester and \
                 target); split it",
                l.fetch_per_requester.burst, l.fetch_per_target.burst, l.fetch_per_pair.burst
            )
        } else {
            format!("key-package fetch rate limit exceeded; retry in {wait} ms")
        };
        Err(NodeError::ResourceExhausted {
            message,
            retry_after_ms: (wait != u64::MAX).then_some(wait),
        })
    }

    /// Check a deniable request's MAC: `installation` must be active in
    /// `inbox`'s log on this node, and the MAC keyed with its identity key
    /// and the node's static key.
    async fn check_mac(
        &self,
        inbox: InboxId,
        installation: InstallationId,
        macd: Vec<u8>,
        mac: Vec<u8>,
    ) -> Result<(), NodeError> {
        let secret = self.secret().await?;
        self.blocking(move |store| {
            let state = load_identity(store, inbox)?;
            let identity_key = state
                .installation(&installation)
                .map(|active| active.identity_key)
                .ok_or_else(|| {
                    NodeError::Unauthenticated(format!(
                        "installation {installation} is not an active installation of inbox \
                         {inbox}"
                    ))
                })?;
            let key = upload_key(&secret, &identity_key)
                .map_err(|e| NodeError::Unauthenticated(e.to_string()))?;
            verify_upload_tag(&key, &macd, &mac).map_err(|_| {
                NodeError::Unauthenticated(format!(
                    "the MAC does not verify for installation {installation}; key it with this \
                     node's static key from GetNodeInfo"
                ))
            })
        })
        .await
    }

    /// Verify and store a deniable key-package upload; returns the one-time
    /// deniable packages the installation has left.
    pub async fn upload_deniable_key_packages(
        &self,
        upload: DeniableKeyPackageUpload,
    ) -> Result<usize, NodeError> {
        self.check_upload_size(upload.one_time.len(), upload.last_resort.is_some())?;
        let now_ms = self.clock.now_ms();
        let window = self.timestamp_window_ms();
        auth::check_timestamp(upload.timestamp_ms, now_ms, window)?;
        let macd = auth::deniable_upload_bytes(
            upload.timestamp_ms,
            &upload.inbox,
            &upload.installation,
            &upload.one_time,
            upload.last_resort.as_deref(),
        );
        self.check_mac(upload.inbox, upload.installation, macd, upload.mac)
            .await?;
        self.blocking(move |store| {
            let crypto = openmls_rust_crypto::RustCrypto::default();
            check_and_store(
                store,
                KeyPackagePool::Deniable,
                &upload.installation,
                upload.one_time,
                upload.last_resort,
                now_ms / 1000,
                |bytes, want_last_resort| {
                    check_deniable_package(&crypto, bytes, want_last_resort, now_ms / 1000)
                },
            )
        })
        .await
    }

    /// Authenticate and rate-limit a deniable fetch, then hand out one
    /// deniable package for each active installation of the target inbox
    /// (the requester's own installation excluded), in the log's order.
    pub async fn fetch_deniable_key_packages(
        &self,
        fetch: DeniableKeyPackageFetch,
    ) -> Result<Vec<FetchedKeyPackage>, NodeError> {
        let now_ms = self.clock.now_ms();
        let window = self.timestamp_window_ms();
        auth::check_timestamp(fetch.timestamp_ms, now_ms, window)?;
        let macd = auth::deniable_fetch_bytes(
            fetch.timestamp_ms,
            &fetch.requester_inbox,
            &fetch.requester,
            &fetch.target,
        );
        self.check_mac(fetch.requester_inbox, fetch.requester, macd, fetch.mac)
            .await?;
        self.hand_out_deniable(fetch.target, fetch.requester, None, now_ms)
            .await
    }

    /// Charge `requester`, then hand out one deniable package for each
    /// installation active in `target`'s log on this node (`requester`
    /// excluded, and only those in `only` when given), in the log's order.
    /// The request was authenticated by the caller.
    async fn hand_out_deniable(
        &self,
        target: InboxId,
        requester: InstallationId,
        only: Option<Vec<InstallationId>>,
        now_ms: u64,
    ) -> Result<Vec<FetchedKeyPackage>, NodeError> {
        let targets: Vec<InstallationId> = self
            .blocking(move |store| {
                Ok(load_identity(store, target)?
                    .active_installations()
                    .map(|(id, _)| *id)
                    .filter(|id| *id != requester)
                    .filter(|id| only.as_ref().is_none_or(|only| only.contains(id)))
                    .collect())
            })
            .await?;
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        self.charge(requester, &targets, now_ms).await?;
        self.blocking(move |store| {
            let packages =
                take_unexpired(store, KeyPackagePool::Deniable, &targets, now_ms / 1000)?;
            Ok(targets
                .into_iter()
                .zip(packages)
                .map(|(installation, key_package)| FetchedKeyPackage {
                    installation,
                    key_package,
                })
                .collect())
        })
        .await
    }
}

fn load_identity<S: NodeStore>(store: &S, inbox: InboxId) -> Result<IdentityState, NodeError> {
    let stored = store
        .identity_updates(&[(inbox, 0)], usize::MAX)
        .map_err(store_error::<S>)?
        .pop()
        .unwrap_or_default();
    let updates = stored
        .iter()
        .map(|(_, bytes)| IdentityUpdate::from_bytes(bytes).map_err(internal))
        .collect::<Result<Vec<_>, _>>()?;
    IdentityState::from_log(inbox, IdentityConfig::default(), &updates).map_err(|e| {
        internal(format!(
            "stored identity log of {inbox} does not verify: {e}"
        ))
    })
}

fn identity_error(e: IdentityError) -> NodeError {
    use IdentityError as E;
    match e {
        E::BadWalletSignature(_)
        | E::ForeignWalletSignature { .. }
        | E::MissingProofOfPossession
        | E::BadProofOfPossession => NodeError::Unauthenticated(e.to_string()),
        E::Malformed(_)
        | E::InvalidKey(_)
        | E::UnexpectedInstallationSignature
        | E::WrongInbox { .. } => NodeError::InvalidArgument(e.to_string()),
        other => NodeError::FailedPrecondition(other.to_string()),
    }
}

fn check_uploaded_package<S: NodeStore>(
    store: &S,
    crypto: &openmls_rust_crypto::RustCrypto,
    identities: &mut std::collections::HashMap<InboxId, IdentityState>,
    bytes: &[u8],
    uploader: &InstallationId,
    want_last_resort: bool,
    now_secs: u64,
) -> Result<(), NodeError> {
    let message = MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|e| NodeError::InvalidArgument(format!("does not parse: {e:?}")))?;
    let MlsMessageBodyIn::KeyPackage(key_package) = message.extract() else {
        return Err(NodeError::InvalidArgument(
            "is not a KeyPackage message".into(),
        ));
    };
    // The credential names the inbox whose log decides; checked properly by
    // validate_key_package below.
    let unverified = key_package.unverified_credential();
    let inbox = credential_inbox(&unverified.credential)
        .map_err(|e| NodeError::InvalidArgument(e.to_string()))?;
    let state = match identities.entry(inbox) {
        std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
        std::collections::hash_map::Entry::Vacant(entry) => {
            entry.insert(load_identity(store, inbox)?)
        }
    };
    let validated =
        validate_key_package(crypto, key_package, now_secs, state).map_err(|e| match e {
            KeyPackageError::Credential(c) => NodeError::Unauthenticated(c.to_string()),
            KeyPackageError::Invalid(m) => NodeError::Unauthenticated(m),
            other => NodeError::InvalidArgument(other.to_string()),
        })?;
    if validated.installation != *uploader {
        return Err(NodeError::Unauthenticated(format!(
            "belongs to installation {}, not the uploader",
            validated.installation
        )));
    }
    if validated.last_resort != want_last_resort {
        return Err(NodeError::InvalidArgument(if want_last_resort {
            "the last_resort field needs a package with the LastResortExtension".into()
        } else {
            "a last-resort package was uploaded as one-time".into()
        }));
    }
    Ok(())
}

/// Check every package of an upload with `check(bytes, want_last_resort)`,
/// naming the first that fails, then store them all in `installation`'s
/// `pool`; returns the one-time packages the pool holds.
fn check_and_store<S: NodeStore>(
    store: &S,
    pool: KeyPackagePool,
    installation: &InstallationId,
    one_time: Vec<Vec<u8>>,
    last_resort: Option<Vec<u8>>,
    now_secs: u64,
    mut check: impl FnMut(&[u8], bool) -> Result<(), NodeError>,
) -> Result<usize, NodeError> {
    let packages = one_time
        .iter()
        .map(|p| (p, false))
        .chain(last_resort.iter().map(|p| (p, true)));
    for (i, (bytes, want_last_resort)) in packages.enumerate() {
        check(bytes, want_last_resort).map_err(|e| match e {
            NodeError::InvalidArgument(m) => {
                NodeError::InvalidArgument(format!("key package {i}: {m}"))
            }
            other => other,
        })?;
    }
    store
        .add_key_packages(pool, installation, one_time, last_resort)
        .map_err(store_error::<S>)?;
    // The count is what the client refills by: expired packages must not
    // count, and are purged here, where the owner asks for the count.
    let crypto = openmls_rust_crypto::RustCrypto::default();
    store
        .purge_key_packages(pool, installation, &|bytes| {
            expired_package(&crypto, bytes, now_secs)
        })
        .map_err(store_error::<S>)
}

/// [`NodeStore::take_key_packages`], never handing out an expired one-time
/// package: one that comes out expired is dropped (it was removed from the
/// pool by the take) and the next is taken instead.
fn take_unexpired<S: NodeStore>(
    store: &S,
    pool: KeyPackagePool,
    installations: &[InstallationId],
    now_secs: u64,
) -> Result<Vec<Option<StoredKeyPackage>>, NodeError> {
    let crypto = openmls_rust_crypto::RustCrypto::default();
    let stale = |answer: &Option<StoredKeyPackage>| {
        answer
            .as_ref()
            .is_some_and(|p| !p.last_resort && expired_package(&crypto, &p.bytes, now_secs))
    };
    let mut answers = store
        .take_key_packages(pool, installations)
        .map_err(store_error::<S>)?;
    // Each round removes one expired package per installation still
    // pending; a pool holds at most a few hundred.
    for _ in 0..MAX_EXPIRED_SKIPS {
        let pending: Vec<usize> = (0..answers.len()).filter(|i| stale(&answers[*i])).collect();
        if pending.is_empty() {
            return Ok(answers);
        }
        let again: Vec<InstallationId> = pending.iter().map(|i| installations[*i]).collect();
        let retaken = store
            .take_key_packages(pool, &again)
            .map_err(store_error::<S>)?;
        for (i, answer) in pending.into_iter().zip(retaken) {
            answers[i] = answer;
        }
    }
    for answer in &mut answers {
        if stale(answer) {
            *answer = None;
        }
    }
    Ok(answers)
}

/// How many expired packages one fetch skips per installation before it
/// gives up on it.
const MAX_EXPIRED_SKIPS: usize = 1_000;

/// Whether a stored package can no longer be used: it no longer parses or
/// verifies, or its lifetime ended by the node's clock (`now_secs`).
fn expired_package(crypto: &openmls_rust_crypto::RustCrypto, bytes: &[u8], now_secs: u64) -> bool {
    let Ok(message) = MlsMessageIn::tls_deserialize_exact(bytes) else {
        return true;
    };
    let MlsMessageBodyIn::KeyPackage(key_package) = message.extract() else {
        return true;
    };
    key_package
        .validate(crypto, openmls::prelude::ProtocolVersion::Mls10)
        .map_or(true, |kp| kp.life_time().not_after() <= now_secs)
}

fn check_deniable_package(
    crypto: &openmls_rust_crypto::RustCrypto,
    bytes: &[u8],
    want_last_resort: bool,
    now_secs: u64,
) -> Result<(), NodeError> {
    let message = MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|e| NodeError::InvalidArgument(format!("does not parse: {e:?}")))?;
    let MlsMessageBodyIn::KeyPackage(key_package) = message.extract() else {
        return Err(NodeError::InvalidArgument(
            "is not a KeyPackage message".into(),
        ));
    };
    // Nothing in a deniable package says whose it is; the MAC said who
    // uploaded it, and the DM's bindings check the rest.
    let validated = validate_deniable_key_package(crypto, key_package, now_secs)
        .map_err(|e| NodeError::InvalidArgument(format!("is not a valid deniable package: {e}")))?;
    if validated.last_resort != want_last_resort {
        return Err(NodeError::InvalidArgument(if want_last_resort {
            "the last_resort field needs a package with the LastResortExtension".into()
        } else {
            "a last-resort package was uploaded as one-time".into()
        }));
    }
    Ok(())
}
