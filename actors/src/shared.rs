//! What every actor of one client shares: the stores, the installation's
//! keys, the node, the identity cache and the event channel.
//!
//! Actors hold it as an `Arc`; nothing here is locked across an `.await`.

use std::{
    collections::HashMap,
    sync::{Arc, PoisonError, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use kith_engine::{
    group::{ClientStore, DeniableAdd, GroupError, IdentityCache, IntentKind, Me},
    identity::{
        IdentityState, IdentityUpdate, InboxId, InstallationId, InstallationKeys, KeyPackagePolicy,
        UpdateAction, recover_signer, verify_installation_signature,
    },
};
use kith_storage::{Durability, KithProvider, SledMlsStorage};
use kith_transport::{
    client::{ClientError, DeliveryClient},
    node::{
        DeniableKeyPackageFetch, FetchedKeyPackage, KeyPackageFetch, NodeError, NodeLimits,
        deniable_fetch_bytes, fetch_signed_bytes,
    },
};
use tokio::sync::broadcast;
use zeroize::Zeroizing;

use crate::{Error, events::Event};

/// The most inboxes whose identity logs are asked for in one request: a
/// log of a few updates is about a kilobyte, so an answer stays well
/// under the node's 4 MiB message limit (10,000 logs at once did not).
const IDENTITY_CHUNK: usize = 1_000;

/// The most key-package bytes one add commit carries. A commit also
/// carries its path, encrypted to every leaf below a blank parent: in a
/// group built by adds, about 90 bytes per member (measured: 0.93 to
/// 1.11 MB per commit while a group grew past 8,000). With 256 KiB of
/// packages, an add commit at 10,000 members stays under the node's
/// default envelope limit (2 MiB).
pub(crate) const ADD_BYTES_PER_COMMIT: usize = 256 * 1024;

/// Tuning knobs, with the defaults of DESIGN.md.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Periodic installation discovery (default 30 minutes).
    pub discovery_interval: Duration,
    /// Before a send, reconcile the group if its last check is older than
    /// this (default 60 s).
    pub discovery_before_send: Duration,
    /// Run discovery when a subscribed identity topic gets an update
    /// (default on).
    pub discovery_on_push: bool,
    /// How soon discovery runs again when a new installation had no key
    /// packages on the node yet (default 5 s).
    pub discovery_retry: Duration,
    /// How often each group re-syncs with the node even without pushes
    /// (default 30 s), in case a push was missed.
    pub sync_interval: Duration,
    /// How often the key-package pool is checked (default 10 minutes).
    pub key_package_interval: Duration,
    /// The key-package pool's policy.
    pub key_packages: KeyPackagePolicy,
    /// The deniable key-package pool's policy (the same defaults): the
    /// packages peers add this installation to deniable DMs with.
    pub deniable_key_packages: KeyPackagePolicy,
    /// Threads running group actors (default 2).
    pub group_threads: usize,
    /// How long after a commit's originator time it settles (and its
    /// rollback snapshot is deleted). `None` (the default) takes the
    /// node's settle window from its info: 0 for a single node or nodes
    /// sharing one database, which keeps no snapshots at all.
    pub settle_window: Option<Duration>,
    /// At most this many unsettled epochs per group can be rolled back
    /// (default 5); older ones settle early.
    pub max_rewind: usize,
    /// Whether metadata changes and key updates go out first as proposals
    /// that whoever commits next includes (default true).
    pub propose_first: bool,
    /// How long this client waits for another member's commit to include
    /// its proposal before committing it itself (default 0: at once). On a
    /// busy group over several nodes, a settle window or so saves commits.
    pub proposal_wait: Duration,
    /// How long a removed installation keeps a group's state after its
    /// removal, so that it can still find out that the removal was a
    /// losing branch's and ask to be re-added, before deleting the
    /// group's secrets (default a day; no wait with a settle window of 0,
    /// where no branch can lose). See [`GroupConfig::retire_grace_ms`].
    ///
    /// [`GroupConfig::retire_grace_ms`]: kith_engine::group::GroupConfig::retire_grace_ms
    pub retire_grace: Duration,
    /// How many events the client keeps for readers of
    /// [`Client::stream_events`](crate::Client::stream_events) that fall
    /// behind (default 4,096). A reader further behind loses the oldest
    /// and is told by [`Event::Lagged`](crate::Event::Lagged).
    pub event_buffer: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            discovery_interval: Duration::from_secs(30 * 60),
            discovery_before_send: Duration::from_secs(60),
            discovery_on_push: true,
            discovery_retry: Duration::from_secs(5),
            sync_interval: Duration::from_secs(30),
            key_package_interval: Duration::from_secs(10 * 60),
            key_packages: KeyPackagePolicy::default(),
            deniable_key_packages: KeyPackagePolicy::default(),
            group_threads: 2,
            settle_window: None,
            max_rewind: 5,
            propose_first: true,
            proposal_wait: Duration::ZERO,
            retire_grace: Duration::from_millis(kith_engine::group::RETIRE_GRACE_MS),
            event_buffer: 4096,
        }
    }
}

pub(crate) struct Shared {
    pub(crate) provider: KithProvider,
    pub(crate) keys: InstallationKeys,
    pub(crate) inbox: InboxId,
    pub(crate) node: Arc<dyn DeliveryClient>,
    pub(crate) identities: RwLock<IdentityCache>,
    pub(crate) events: broadcast::Sender<Event>,
    /// The configuration every group runs with (rollback, proposals,
    /// fork healing).
    pub(crate) group_config: kith_engine::group::GroupConfig,
    pub(crate) config: ClientConfig,
    /// The static X25519 key of the node last asked, which deniable
    /// requests are MACed for; read again when a node refuses a MAC (the
    /// client moved to another node, or the node was set up afresh).
    pub(crate) node_key: RwLock<Option<[u8; 32]>>,
    /// Orders joins from Welcomes against group steps: every group step
    /// holds it for reading, a join for writing, and each join counts
    /// itself. A join may replace the state of a group whose actor holds
    /// the old state in memory (a member re-added after a fork): an actor
    /// that loaded its group before the last join loads it again, and can
    /// never write the old state over the new.
    pub(crate) joins: RwLock<u64>,
    /// The limits the node advertises, read on first use: fetches and
    /// publishes are cut to fit them.
    pub(crate) limits: std::sync::Mutex<Option<NodeLimits>>,
    /// Inboxes whose logs a push said the node revised: the next discovery
    /// reads them again in full.
    pub(crate) revised: std::sync::Mutex<std::collections::BTreeSet<InboxId>>,
    /// The application's token-gating verifier, if it gave one.
    pub(crate) gating: Option<Arc<dyn crate::gating::GatingVerifier>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("inbox", &self.inbox)
            .field("installation", &self.keys.id())
            .finish_non_exhaustive()
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Shared {
    pub(crate) fn me(&self) -> Me<'_> {
        Me {
            inbox: self.inbox,
            keys: &self.keys,
        }
    }

    pub(crate) fn storage(&self) -> &SledMlsStorage {
        use openmls_traits::OpenMlsProvider as _;
        self.provider.storage()
    }

    /// With [`Durability::Buffered`], put every committed step on disk.
    /// Called before anything made from them leaves the process (a
    /// ciphertext, a commit, key packages, an identity update): a power
    /// loss must not roll the state back behind what others hold, or the
    /// next message would reuse a ratchet key and nonce, and a Welcome
    /// could name a key package whose private key is gone. One fsync per
    /// batch of output; nothing to do with `Durability::Sync`, whose every
    /// step was flushed as it committed.
    pub(crate) fn flush_before_output(&self) -> Result<(), Error> {
        let storage = self.storage();
        if matches!(storage.config().durability, Durability::Buffered { .. }) {
            storage.flush()?;
        }
        Ok(())
    }

    pub(crate) fn store(&self) -> ClientStore<'_, SledMlsStorage> {
        ClientStore(self.storage())
    }

    pub(crate) fn identities(&self) -> std::sync::RwLockReadGuard<'_, IdentityCache> {
        self.identities
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn emit(&self, event: Event) {
        // Nobody listening is fine.
        let _ = self.events.send(event);
    }

    /// Run `f` as one storage step: all its writes commit together, or
    /// none do if it fails (or panics).
    pub(crate) fn step<T>(&self, f: impl FnOnce() -> Result<T, GroupError>) -> Result<T, Error> {
        let storage = self.storage();
        let step = storage.begin_step()?;
        let value = f()?;
        step.commit()?;
        Ok(value)
    }

    /// Fetch the identity updates of `inboxes` since what the cache holds,
    /// in one request; verify them into the cache and persist them.
    /// Returns the inboxes whose logs grew.
    pub(crate) async fn refresh_identities(
        &self,
        inboxes: impl IntoIterator<Item = InboxId>,
    ) -> Result<Vec<InboxId>, Error> {
        let requests: Vec<(InboxId, u64)> = {
            let cache = self.identities();
            let mut seen = std::collections::BTreeSet::new();
            inboxes
                .into_iter()
                .filter(|i| seen.insert(*i))
                .map(|i| (i, cache.sequence(&i)))
                .collect()
        };
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        // An answer carries whole logs: asked in chunks, it fits the
        // node's message limit however large the group.
        let chunk = IDENTITY_CHUNK.min(self.node_limits().await?.max_identity_inboxes.max(1));
        let mut answers = Vec::with_capacity(requests.len());
        for part in requests.chunks(chunk) {
            answers.extend(self.node.identity_updates(part.to_vec()).await?);
        }
        // CheckedClient refuses an answer that leaves out an inbox; check
        // anyway, as pairing them up below must never drop one (a withheld
        // revocation would go unnoticed).
        if answers.len() != requests.len() {
            return Err(ClientError::Malformed(format!(
                "identity logs for {} inboxes in an answer for {}",
                answers.len(),
                requests.len()
            ))
            .into());
        }
        let mut changed = Vec::new();
        let mut cache = self
            .identities
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        // All the logs in one storage step: one fsync, not one per inbox
        // (a joiner of a group of 1,000 stores 1,000 logs).
        let step = self.storage().begin_step()?;
        for ((inbox, _), updates) in requests.into_iter().zip(answers) {
            match cache.extend(inbox, updates) {
                Ok(true) => {
                    self.store()
                        .put_identity_updates(&inbox, cache.updates(&inbox))
                        .map_err(Error::from)?;
                    changed.push(inbox);
                }
                Ok(false) => {}
                Err(e) => {
                    // The node vouched for updates that do not verify: keep
                    // what we had and say so.
                    tracing::warn!(%inbox, error = %e, "identity log from the node does not verify");
                }
            }
        }
        step.commit()?;
        Ok(changed)
    }

    /// Read `inbox`'s whole log from the node again and replace the cached
    /// one with it if it differs: on replicating nodes a node may revise a
    /// log (another device's update with the same sequence came first),
    /// and [`Self::refresh_identities`] only reads past what it holds.
    /// Returns whether the cached log changed.
    pub(crate) async fn reload_identity(&self, inbox: InboxId) -> Result<bool, Error> {
        Ok(!self.reload_identities(vec![inbox]).await?.is_empty())
    }

    /// [`Self::reload_identity`] for several inboxes, in one request;
    /// returns those whose cached logs changed.
    pub(crate) async fn reload_identities(
        &self,
        inboxes: Vec<InboxId>,
    ) -> Result<Vec<InboxId>, Error> {
        if inboxes.is_empty() {
            return Ok(Vec::new());
        }
        let answers = self
            .node
            .identity_updates(inboxes.iter().map(|i| (*i, 0)).collect())
            .await?;
        if answers.len() != inboxes.len() {
            return Err(ClientError::Malformed(
                "identity logs for another number of inboxes than asked".into(),
            )
            .into());
        }
        let mut changed = Vec::new();
        let mut cache = self
            .identities
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for (inbox, updates) in inboxes.into_iter().zip(answers) {
            let replaced = cache.replace(inbox, updates).map_err(|e| {
                Error::from(ClientError::Malformed(format!(
                    "the identity log of {inbox} from the node does not verify: {e}"
                )))
            })?;
            if replaced {
                tracing::debug!(%inbox, "read an identity log again; it changed");
                self.store()
                    .put_identity_updates(&inbox, cache.updates(&inbox))
                    .map_err(Error::from)?;
                changed.push(inbox);
            }
        }
        Ok(changed)
    }

    /// Note that a push said the node revised `inbox`'s log
    /// ([`IdentityPush::Revised`]), for the next discovery.
    pub(crate) fn note_revised(&self, inbox: InboxId) {
        self.revised
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(inbox);
    }

    /// Read again, in full, the logs pushes said were revised since the
    /// last call; returns those whose cached logs changed. On failure they
    /// stay noted for the next call.
    pub(crate) async fn reload_revised(&self) -> Result<Vec<InboxId>, Error> {
        let inboxes: Vec<InboxId> =
            std::mem::take(&mut *self.revised.lock().unwrap_or_else(PoisonError::into_inner))
                .into_iter()
                .collect();
        match self.reload_identities(inboxes.clone()).await {
            Ok(changed) => Ok(changed),
            Err(e) => {
                for inbox in inboxes {
                    self.note_revised(inbox);
                }
                Err(e)
            }
        }
    }

    /// A fetcher for the identity logs one input needs
    /// ([`IdentityFetches`]).
    pub(crate) fn identity_fetches(&self) -> IdentityFetches<'_> {
        IdentityFetches {
            shared: self,
            reread: Vec::new(),
        }
    }

    /// Whether an envelope that arrived on the identity topic of `inbox`
    /// is worth a discovery run: only a verified identity update of that
    /// inbox that the cache does not hold yet. Anything else on the topic
    /// (a stranger's bytes, from a node that lets anyone publish there; an
    /// update of another inbox; one already known) wakes nothing.
    pub(crate) fn identity_push(&self, inbox: &InboxId, payload: &[u8]) -> IdentityPush {
        let update = match IdentityUpdate::from_bytes(payload) {
            Ok(update) => update,
            Err(e) => return IdentityPush::Forged(format!("not an identity update: {e}")),
        };
        let u = &update.unsigned;
        if u.inbox != *inbox {
            return IdentityPush::Forged(format!(
                "an update of inbox {} on the identity topic of {inbox}",
                u.inbox
            ));
        }
        let cache = self.identities();
        let cached = cache.sequence(inbox);
        if u.sequence <= cached {
            if cache.updates(inbox).contains(&update) {
                return IdentityPush::Known;
            }
            // Another update with a sequence number the cache holds: a
            // replicating node may have revised the log (two devices took
            // one sequence number, and this one came first). Only the
            // inbox's wallet can make one, and then the whole log is read
            // again; the node's log decides which update stands.
            return match signed_by_inbox(inbox, &update) {
                Ok(()) => IdentityPush::Revised,
                Err(reason) => IdentityPush::Forged(reason),
            };
        }
        if u.sequence == cached + 1 {
            // The next step: verify it as the log would.
            let mut state = cache
                .state(inbox)
                .cloned()
                .unwrap_or_else(|| IdentityState::new(*inbox));
            return match state.apply(&update) {
                Ok(()) => IdentityPush::New,
                Err(e) => {
                    IdentityPush::Forged(format!("update {} does not verify: {e}", u.sequence))
                }
            };
        }
        // Further ahead: the updates in between are fetched by discovery,
        // which verifies the whole log; the signatures can be checked now.
        match signed_by_inbox(inbox, &update) {
            Ok(()) => IdentityPush::New,
            Err(reason) => IdentityPush::Forged(reason),
        }
    }

    /// Fetch one key package per installation, in signed requests that fit
    /// the node's advertised limits (at most `max_batch_key_packages`
    /// targets, and no more than a requester's burst), waiting as long as
    /// the node's `retry-after` says when it is rate-limited, up to
    /// [`FETCH_PATIENCE`] per request.
    pub(crate) async fn fetch_key_packages(
        &self,
        targets: Vec<InstallationId>,
    ) -> Result<Vec<FetchedKeyPackage>, Error> {
        if targets.is_empty() {
            return Ok(Vec::new());
        }
        let chunk = self.fetch_chunk().await?;
        let mut fetched = Vec::with_capacity(targets.len());
        for part in targets.chunks(chunk) {
            fetched.extend(self.fetch_key_packages_patiently(part).await?);
        }
        Ok(fetched)
    }

    /// The most targets one fetch may name on this node.
    async fn fetch_chunk(&self) -> Result<usize, Error> {
        let limits = self.node_limits().await?;
        let burst = usize::try_from(limits.fetch_per_requester.burst).unwrap_or(usize::MAX);
        Ok(limits.max_batch_key_packages.min(burst).max(1))
    }

    /// The limits the node advertises, read once.
    pub(crate) async fn node_limits(&self) -> Result<NodeLimits, Error> {
        if let Some(limits) = *self.limits.lock().unwrap_or_else(PoisonError::into_inner) {
            return Ok(limits);
        }
        let limits = self.node.node_info().await?.limits;
        *self.limits.lock().unwrap_or_else(PoisonError::into_inner) = Some(limits);
        Ok(limits)
    }

    /// One fetch of `targets`, signed afresh and tried again while the node
    /// says to retry later and [`FETCH_PATIENCE`] allows.
    async fn fetch_key_packages_patiently(
        &self,
        targets: &[InstallationId],
    ) -> Result<Vec<FetchedKeyPackage>, Error> {
        let started = std::time::Instant::now();
        let mut pause = Duration::from_millis(100);
        loop {
            let timestamp_ms = now_ms();
            let installation = self.keys.id();
            let signed = fetch_signed_bytes(timestamp_ms, &self.inbox, &installation, targets);
            let fetch = KeyPackageFetch {
                targets: targets.to_vec(),
                requester_inbox: self.inbox,
                requester: installation,
                timestamp_ms,
                signature: self.keys.sign(&signed).to_vec(),
            };
            match self.node.fetch_key_packages(fetch).await {
                Err(ClientError::Refused(NodeError::ResourceExhausted {
                    retry_after_ms: Some(wait),
                    message,
                })) => {
                    // Wait what the node asks, and at least a growing pause,
                    // so that a node that keeps saying "now" is not hammered.
                    let wait = Duration::from_millis(wait).max(pause);
                    if started.elapsed() + wait > FETCH_PATIENCE {
                        return Err(ClientError::Refused(NodeError::ResourceExhausted {
                            retry_after_ms: Some(
                                u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                            ),
                            message,
                        })
                        .into());
                    }
                    tracing::debug!(
                        ?wait,
                        targets = targets.len(),
                        "key-package fetch rate-limited; waiting"
                    );
                    tokio::time::sleep(wait).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
                other => return Ok(other?),
            }
        }
    }

    /// Run a deniable request, MACed with the key this installation shares
    /// with the node (from its identity key and the node's static key). A
    /// MAC is good for one node only, so if the node refuses it as
    /// unauthenticated, the node's static key is read again and the request
    /// made once more: a client that moved to another node since it read
    /// the key (`FailoverClient`) follows it.
    pub(crate) async fn with_deniable_mac<T, F, Fut>(&self, request: F) -> Result<T, Error>
    where
        F: Fn(Zeroizing<[u8; 32]>) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let cached = *self.node_key.read().unwrap_or_else(PoisonError::into_inner);
        let key = match cached {
            Some(node_key) => self.mac_key(&node_key)?,
            None => self.refresh_mac_key().await?,
        };
        match request(key).await {
            Err(ClientError::Refused(NodeError::Unauthenticated(reason))) => {
                tracing::debug!(%reason, "deniable request refused; reading the node's static key again");
                Ok(request(self.refresh_mac_key().await?).await?)
            }
            other => Ok(other?),
        }
    }

    /// Ask the node for its static key, keep it, and derive the MAC key.
    async fn refresh_mac_key(&self) -> Result<Zeroizing<[u8; 32]>, Error> {
        let node_key = self.node.node_info().await?.static_key;
        *self
            .node_key
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(node_key);
        self.mac_key(&node_key)
    }

    fn mac_key(&self, node_key: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>, Error> {
        kith_engine::identity::upload_key(self.keys.identity_secret(), node_key)
            .map_err(|e| Error::Network(format!("the node's static key cannot be used: {e}")))
    }

    /// Fetch one deniable key package for each active installation of
    /// `target` (this installation excluded), in one MACed request.
    pub(crate) async fn fetch_deniable_key_packages(
        &self,
        target: InboxId,
    ) -> Result<Vec<FetchedKeyPackage>, Error> {
        let installation = self.keys.id();
        let fetched = self
            .with_deniable_mac(|key| {
                let timestamp_ms = now_ms();
                let macd = deniable_fetch_bytes(timestamp_ms, &self.inbox, &installation, &target);
                self.node
                    .fetch_deniable_key_packages(DeniableKeyPackageFetch {
                        target,
                        requester_inbox: self.inbox,
                        requester: installation,
                        timestamp_ms,
                        mac: kith_engine::identity::upload_tag(&key, &macd).to_vec(),
                    })
            })
            .await?;
        // Nothing in a deniable package says whose it is, so CheckedClient
        // cannot tie it to its installation. The identity log can at least
        // say whether the installation it is handed out for exists: a
        // package for one that does not is left out (a new installation the
        // cache has not seen yet joins later, through discovery).
        let cache = self.identities();
        let state = cache.state(&target);
        Ok(fetched
            .into_iter()
            .filter(|f| {
                let active = state.is_some_and(|s| s.is_active(&f.installation));
                if !active {
                    tracing::warn!(
                        %target,
                        installation = %f.installation,
                        "the node handed out a deniable key package for an installation the \
                         inbox's identity log does not have; leaving it out"
                    );
                }
                active
            })
            .collect())
    }

    /// The intents that add `inboxes` (all their active installations, as
    /// the cache knows them) to a group or DM: their key packages, fetched
    /// now, and the log sequences to record. For a deniable DM
    /// (`deniable`), their deniable packages and this inbox's, so that its
    /// other installations join too and every installation pair is bound.
    /// Fails, having changed nothing but the node's pools, if an inbox has
    /// no installation with a package.
    ///
    /// A commit carries every package it adds, and a commit is one
    /// envelope: adds are cut into intents of whole inboxes, each within
    /// [`ADD_BYTES_PER_COMMIT`] of packages, one commit each (a group of
    /// 10,000 installations takes about twenty).
    pub(crate) async fn member_adds(
        &self,
        inboxes: &[InboxId],
        deniable: bool,
    ) -> Result<Vec<IntentKind>, Error> {
        let (targets, sequences) = {
            let cache = self.identities();
            let mut targets = Vec::new();
            let mut sequences = Vec::new();
            for inbox in inboxes {
                let state = cache.state(inbox);
                let active: Vec<InstallationId> = state
                    .map(|s| s.active_installations().map(|(id, _)| *id).collect())
                    .unwrap_or_default();
                if active.is_empty() {
                    return Err(Error::InvalidInput(format!(
                        "{inbox} has no registered installations"
                    )));
                }
                sequences.push((*inbox, state.map_or(0, |s| s.sequence())));
                targets.push(active);
            }
            (targets, sequences)
        };
        if !deniable {
            let fetched = self
                .fetch_key_packages(targets.iter().flatten().copied().collect())
                .await?;
            let packages: HashMap<InstallationId, Vec<u8>> = fetched
                .into_iter()
                .filter_map(|f| Some((f.installation, f.key_package?.bytes)))
                .collect();
            if packages.is_empty() {
                return Err(Error::InvalidInput(
                    "none of the installations has a key package on the node".into(),
                ));
            }
            return Ok(add_intents(
                &targets,
                sequences,
                packages,
                ADD_BYTES_PER_COMMIT,
            ));
        }
        let mut key_packages = Vec::new();
        for inbox in inboxes {
            let before = key_packages.len();
            key_packages.extend(deniable_adds(
                self.fetch_deniable_key_packages(*inbox).await?,
            ));
            if key_packages.len() == before {
                return Err(Error::InvalidInput(format!(
                    "no installation of {inbox} has a deniable key package on the node"
                )));
            }
        }
        // This inbox's other installations join too; one without a package
        // yet is not a reason to keep the peer waiting.
        if !inboxes.contains(&self.inbox) {
            key_packages.extend(deniable_adds(
                self.fetch_deniable_key_packages(self.inbox).await?,
            ));
        }
        Ok(vec![IntentKind::AddDeniable {
            key_packages,
            sequences,
        }])
    }
}

/// Cut the adds of inboxes (`targets[i]`: the installations of the inbox
/// of `sequences[i]`) into intents of whole inboxes, each with at most
/// `budget` bytes of `packages` (or one inbox, if that alone is more).
/// Inboxes none of whose installations has a package ride along with the
/// others: their sequences are recorded all the same.
fn add_intents(
    targets: &[Vec<InstallationId>],
    sequences: Vec<(InboxId, u64)>,
    mut packages: HashMap<InstallationId, Vec<u8>>,
    budget: usize,
) -> Vec<IntentKind> {
    let mut intents = Vec::new();
    let (mut key_packages, mut chunk_sequences, mut bytes) = (Vec::new(), Vec::new(), 0);
    for (installations, sequence) in targets.iter().zip(sequences) {
        let own: Vec<Vec<u8>> = installations
            .iter()
            .filter_map(|i| packages.remove(i))
            .collect();
        let own_bytes: usize = own.iter().map(Vec::len).sum();
        if !key_packages.is_empty() && bytes + own_bytes > budget {
            intents.push(IntentKind::AddMembers {
                key_packages: std::mem::take(&mut key_packages),
                sequences: std::mem::take(&mut chunk_sequences),
                admissions: Vec::new(),
            });
            bytes = 0;
        }
        bytes += own_bytes;
        key_packages.extend(own);
        chunk_sequences.push(sequence);
    }
    match intents.last_mut() {
        Some(IntentKind::AddMembers { sequences, .. }) if key_packages.is_empty() => {
            sequences.extend(chunk_sequences);
        }
        _ => intents.push(IntentKind::AddMembers {
            key_packages,
            sequences: chunk_sequences,
            admissions: Vec::new(),
        }),
    }
    intents
}

/// Check the signatures of an identity update of `inbox` that cannot be
/// checked against the log yet: the inbox's wallet signed it, and an added
/// installation signed it too.
fn signed_by_inbox(inbox: &InboxId, update: &IdentityUpdate) -> Result<(), String> {
    let u = &update.unsigned;
    let text = u.signature_text();
    if recover_signer(text.as_bytes(), &update.wallet_signature).ok() != Some(*inbox) {
        return Err(format!(
            "update {} is not signed by the inbox's wallet",
            u.sequence
        ));
    }
    if u.action == UpdateAction::AddInstallation {
        let signed = update.installation_signature.is_some_and(|proof| {
            verify_installation_signature(&u.installation, text.as_bytes(), &proof).is_ok()
        });
        if !signed {
            return Err(format!(
                "update {} adds an installation that did not sign it",
                u.sequence
            ));
        }
    }
    Ok(())
}

/// How long one key-package fetch waits in all for a rate-limited node
/// before the caller gets the refusal.
pub(crate) const FETCH_PATIENCE: Duration = Duration::from_secs(120);

/// The identity logs the engine asked for before it can take an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IdentityNeed {
    /// Logs the cache has not read far enough
    /// ([`GroupError::NeedIdentities`]): read past what it holds.
    Behind(Vec<InboxId>),
    /// Logs the input disagrees with ([`GroupError::IdentitiesDisputed`]):
    /// read them whole again, since the node may have revised them.
    Disputed(Vec<InboxId>),
}

impl IdentityNeed {
    /// What `error` asks for, if it asks for identity logs.
    pub(crate) fn of(error: &GroupError) -> Option<Self> {
        match error {
            GroupError::NeedIdentities(list) => {
                Some(Self::Behind(list.iter().map(|(i, _)| *i).collect()))
            }
            GroupError::IdentitiesDisputed(list) => Some(Self::Disputed(list.clone())),
            _ => None,
        }
    }

    /// The inboxes named.
    pub(crate) fn inboxes(&self) -> &[InboxId] {
        match self {
            Self::Behind(list) | Self::Disputed(list) => list,
        }
    }
}

/// Fetches the identity logs one input needs, over its retries. A log read
/// again for a dispute counts as final ([`IdentityCache::mark_reread`])
/// until this is dropped, so that the retry rejects an input that still
/// disputes it, and a later input may ask for it again.
pub(crate) struct IdentityFetches<'a> {
    shared: &'a Shared,
    reread: Vec<InboxId>,
}

impl IdentityFetches<'_> {
    /// Fetch what `need` asks for into the cache.
    pub(crate) async fn fetch(&mut self, need: IdentityNeed) -> Result<(), Error> {
        match need {
            IdentityNeed::Behind(inboxes) => {
                self.shared.refresh_identities(inboxes).await?;
            }
            IdentityNeed::Disputed(inboxes) => {
                tracing::debug!(
                    ?inboxes,
                    "an input disputes cached identity logs; reading them again"
                );
                self.shared.reload_identities(inboxes.clone()).await?;
                let mut cache = self
                    .shared
                    .identities
                    .write()
                    .unwrap_or_else(PoisonError::into_inner);
                for inbox in inboxes {
                    cache.mark_reread(inbox);
                    self.reread.push(inbox);
                }
            }
        }
        Ok(())
    }
}

impl Drop for IdentityFetches<'_> {
    fn drop(&mut self) {
        self.shared
            .identities
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .forget_reread(&self.reread);
    }
}

/// What an envelope on an identity topic is ([`Shared::identity_push`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IdentityPush {
    /// A verified update the cache does not hold: run discovery.
    New,
    /// An update the cache holds already (a replay on re-subscribing).
    Known,
    /// A wallet-signed update that differs from the cached one with its
    /// sequence number: the node may have revised the log. Read it again.
    Revised,
    /// Anything else, and why: ignored.
    Forged(String),
}

/// The fetched deniable packages, each with the installation the node
/// handed it out for (the Welcome goes to that installation).
fn deniable_adds(fetched: Vec<FetchedKeyPackage>) -> impl Iterator<Item = DeniableAdd> {
    fetched.into_iter().filter_map(|f| {
        f.key_package.map(|k| DeniableAdd {
            installation: f.installation,
            key_package: k.bytes,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn installation(n: u8) -> InstallationId {
        InstallationId([n; 32])
    }

    fn inbox(n: u8) -> InboxId {
        InboxId::from_bytes([n; 20])
    }

    #[test]
    fn adds_are_cut_into_commits_of_whole_inboxes_within_the_budget() {
        // Inbox 1 has two installations, inbox 2 one, inbox 3 one without
        // a package, inbox 4 one.
        let targets = vec![
            vec![installation(1), installation(11)],
            vec![installation(2)],
            vec![installation(3)],
            vec![installation(4)],
        ];
        let sequences: Vec<(InboxId, u64)> = (1..=4).map(|n| (inbox(n), u64::from(n))).collect();
        let packages: HashMap<InstallationId, Vec<u8>> = [1, 11, 2, 4]
            .into_iter()
            .map(|n| (installation(n), vec![n; 40]))
            .collect();
        let cut = |budget| {
            add_intents(&targets, sequences.clone(), packages.clone(), budget)
                .into_iter()
                .map(|kind| match kind {
                    IntentKind::AddMembers {
                        key_packages,
                        sequences,
                        ..
                    } => (
                        key_packages.iter().map(|k| k[0]).collect::<Vec<u8>>(),
                        sequences.iter().map(|(_, s)| *s).collect::<Vec<u64>>(),
                    ),
                    other => panic!("not an add: {other:?}"),
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(cut(1_000), vec![(vec![1, 11, 2, 4], vec![1, 2, 3, 4])]);
        // 80 bytes of inbox 1 fill a budget of 100: inbox 2 starts the next.
        assert_eq!(
            cut(100),
            vec![(vec![1, 11], vec![1]), (vec![2, 4], vec![2, 3, 4])]
        );
        // An inbox larger than the budget goes alone, never split.
        assert_eq!(
            cut(50),
            vec![
                (vec![1, 11], vec![1]),
                (vec![2], vec![2, 3]),
                (vec![4], vec![4])
            ]
        );
    }
}
