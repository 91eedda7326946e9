//! [`Client`] and [`Conversation`]: the public, async face of Kith. Both
//! are cheap, cloneable, `Send + Sync` handles that work from any tokio
//! runtime; the actors run on their own threads.

use std::{
    sync::{Arc, Mutex, PoisonError, Weak},
    thread::JoinHandle,
    time::Duration,
};

use actix::Addr;
use futures::{Stream, StreamExt as _};
use kith_engine::{
    group::{
        CONTENT_TYPE_TEXT, ConversationId, ConversationKind, ConversationRecord, ConversationState,
        DmVerification, Group, IntentKind, LegacyConversation, NewGroup, PolicyPreset,
        dm_conversation_id,
        gating::Gating,
        metadata::{ATTRIBUTE_DESCRIPTION, ATTRIBUTE_IMAGE_URL, ATTRIBUTE_NAME},
    },
    identity::{DmMode, InboxId, InstallationId, UnsignedIdentityUpdate},
};
use tokio_stream::wrappers::{BroadcastStream, errors::BroadcastStreamRecvError};

use crate::{
    Error, WalletSigner,
    builder::ClientBuilder,
    content::Content,
    events::{Event, Message, MessageId, Metadata},
    group_actor::{Change, GroupActor, Info, InjectPanic, Restarts, Send as SendMessage, Sync},
    installation_discovery::Discover,
    key_package_manager::Refill,
    shared::{Shared, now_ms},
    supervisor::{Adopt, GetGroup, ProcessWelcomes, Shutdown, Supervisor, WatchIdentity},
};

/// How many times [`Client::register`] signs and publishes before it gives
/// up on registrations of other devices that keep taking its sequence
/// number (replicating nodes only).
pub const REGISTER_ATTEMPTS: u32 = 3;

/// Options for [`Client::create_group`].
#[derive(Debug, Clone, Default)]
pub struct GroupOptions {
    name: Option<String>,
    description: Option<String>,
    image_url: Option<String>,
    attributes: Vec<(String, String)>,
    preset: PolicyPreset,
    legacy: Option<LegacyConversation>,
    gating: Gating,
}

impl GroupOptions {
    /// The group's name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The group's description.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// The group's image URL.
    pub fn image_url(mut self, url: impl Into<String>) -> Self {
        self.image_url = Some(url.into());
        self
    }

    /// Any other attribute.
    pub fn attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.push((key.into(), value.into()));
        self
    }

    /// The policy preset (default [`PolicyPreset::Default`]).
    pub fn policies(mut self, preset: PolicyPreset) -> Self {
        self.preset = preset;
        self
    }

    /// Shorthand for [`PolicyPreset::AdminsOnly`].
    pub fn admins_only(self) -> Self {
        self.policies(PolicyPreset::AdminsOnly)
    }

    /// Make the group the continuation of a conversation of an older
    /// protocol (a migration): its id and metadata are kept in the group's
    /// immutable metadata, where every member checks on every commit and
    /// Welcome that they never change, and
    /// [`Client::conversation_by_legacy_id`] finds it.
    ///
    /// ```
    /// use std::{collections::BTreeMap, sync::Arc};
    ///
    /// use kith::{Client, GroupOptions, LegacyConversation, LocalNode, LocalWallet};
    /// use kith_engine::delivery::MemoryNodeStore;
    /// use kith_transport::node::{NodeConfig, NodeLogic};
    ///
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let node = LocalNode::new(Arc::new(NodeLogic::new(NodeConfig::new(1), MemoryNodeStore::default())));
    /// let dir = tempfile::tempdir()?;
    /// let open = |name: &str| {
    ///     Client::builder()
    ///         .wallet(LocalWallet::generate(&mut rand_core::OsRng))
    ///         .data_dir(dir.path().join(name))
    ///         .node(node.clone())
    ///         .build()
    /// };
    /// let (alice, bob) = (open("alice").await?, open("bob").await?);
    /// alice.register().await?;
    /// bob.register().await?;
    ///
    /// // The V2 conversation "v2-topic-1" moves to Kith, with its context.
    /// let legacy = LegacyConversation {
    ///     id: "v2-topic-1".into(),
    ///     metadata: BTreeMap::from([("topic".into(), "/xmtp/0/m-1/proto".into())]),
    /// };
    /// let group = alice
    ///     .create_group(&[bob.inbox_id()], GroupOptions::default().migrated_from(legacy.clone()))
    ///     .await?;
    ///
    /// bob.sync().await?;
    /// let found = bob.conversation_by_legacy_id("v2-topic-1").await?.expect("migrated");
    /// assert_eq!(found.id(), group.id());
    /// assert_eq!(found.metadata().await?.legacy, Some(legacy));
    /// # Ok(()) }
    /// ```
    pub fn migrated_from(mut self, legacy: LegacyConversation) -> Self {
        self.legacy = Some(legacy);
        self
    }

    /// Gate the group: every inbox added (from the first) must satisfy
    /// `gating`'s rules. Token rules are answered by this client's
    /// [`GatingVerifier`](crate::GatingVerifier) when it adds an inbox;
    /// allowlists by every member. Changed later with
    /// [`Conversation::set_gating`], under the `change_policies` policy.
    ///
    /// ```
    /// use kith::{Gating, GroupOptions, Require, TokenRule};
    ///
    /// // Holders of 100 tokens (18 decimals) on Base, or anyone on the list.
    /// let usdc_on_base = [0x83; 20];
    /// let gating = Gating::new(
    ///     [
    ///         TokenRule::Erc20 {
    ///             chain_id: 8453,
    ///             contract: usdc_on_base,
    ///             min_balance: 100 * 10u128.pow(18),
    ///         },
    ///         TokenRule::Allowlist { inboxes: Default::default() },
    ///     ],
    ///     Require::Any,
    /// );
    /// let options = GroupOptions::default().name("Holders").gating(gating);
    /// # let _ = options;
    /// ```
    pub fn gating(mut self, gating: Gating) -> Self {
        self.gating = gating;
        self
    }
}

/// A member of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The inbox.
    pub inbox: InboxId,
    /// Its installations in the group.
    pub installations: Vec<InstallationId>,
}

pub(crate) struct Inner {
    shared: Arc<Shared>,
    supervisor: Addr<Supervisor>,
    wallet: Arc<dyn WalletSigner>,
    system: actix::System,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Inner {
    pub(crate) async fn start(
        shared: Arc<Shared>,
        wallet: Arc<dyn WalletSigner>,
    ) -> Result<Self, Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let for_system = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("kith-actors".into())
            .spawn(move || {
                let system = actix::System::new();
                let supervisor = system.block_on(async move {
                    use actix::Actor as _;
                    Supervisor::new(for_system).start()
                });
                let _ = tx.send((supervisor, actix::System::current()));
                if let Err(e) = system.run() {
                    tracing::error!(error = %e, "the actor system failed");
                }
            })
            .map_err(|e| Error::Config(format!("cannot start the actor thread: {e}")))?;
        let (supervisor, system) = rx.await.map_err(|_| Error::Shutdown)?;
        Ok(Self {
            shared,
            supervisor,
            wallet,
            system,
            thread: Mutex::new(Some(thread)),
        })
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.system.stop();
    }
}

/// A Kith client: one installation of one inbox. See the crate docs.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("inbox", &self.inner.shared.inbox)
            .field("installation", &self.inner.shared.keys.id())
            .finish()
    }
}

pub(crate) async fn blocking<T: std::marker::Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + std::marker::Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Storage(format!("blocking task: {e}")))?
}

impl Client {
    /// Start building a client.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    pub(crate) fn from_inner(inner: Inner) -> Self {
        Self {
            inner: Arc::new(inner),
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// This client's inbox.
    pub fn inbox_id(&self) -> InboxId {
        self.inner.shared.inbox
    }

    /// This installation's id.
    pub fn installation_id(&self) -> InstallationId {
        self.inner.shared.keys.id()
    }

    /// Register this installation in the inbox's identity log (the wallet
    /// signs) and upload its key packages. Does nothing if it is registered
    /// already.
    ///
    /// On replicating nodes (a settle window above 0) another device of
    /// the inbox may register at once through another node with the same
    /// sequence number, and only one of the two updates stays (docs/
    /// replication.md). So there this waits two settle windows after its
    /// update was accepted, reads the whole log again, and if its update
    /// lost, signs and publishes a new one after the winner (up to
    /// [`REGISTER_ATTEMPTS`] times in all).
    pub async fn register(&self) -> Result<(), Error> {
        let shared = self.shared();
        let inbox = shared.inbox;
        let window = Duration::from_millis(shared.group_config.rewind.settle_window_ms);
        shared.refresh_identities([inbox]).await?;
        let registered = |shared: &Shared| {
            let cache = shared.identities();
            (
                cache
                    .state(&inbox)
                    .is_some_and(|s| s.is_active(&shared.keys.id())),
                cache.sequence(&inbox),
            )
        };
        let mut attempts = 0;
        loop {
            let (active, sequence) = registered(shared);
            if active {
                break;
            }
            if attempts == REGISTER_ATTEMPTS {
                return Err(Error::Pending(format!(
                    "this installation's registration lost to other devices' {attempts} times; \
                     call register again"
                )));
            }
            attempts += 1;
            let unsigned = UnsignedIdentityUpdate::add_installation(
                inbox,
                &shared.keys,
                sequence + 1,
                now_ms(),
            );
            let signature = self
                .inner
                .wallet
                .sign_personal(&unsigned.signature_text())
                .await
                .map_err(Error::Wallet)?;
            let update = unsigned.sign(signature, Some(&shared.keys));
            shared.flush_before_output()?;
            shared.node.publish_identity_update(update).await?;
            if window.is_zero() {
                shared.refresh_identities([inbox]).await?;
                continue;
            }
            // By then every rival update's mirror reached our node, if the
            // network keeps its promise, and the node revised its log.
            tokio::time::sleep(window.saturating_mul(2)).await;
            if shared.reload_identity(inbox).await? && !registered(shared).0 {
                tracing::info!(
                    %inbox,
                    sequence = sequence + 1,
                    "another device's registration took this sequence; registering again"
                );
            }
        }
        let kpm = self.supervisor_part(|s| s.key_packages.clone()).await?;
        kpm.send(Refill).await??;
        self.inner.supervisor.do_send(WatchIdentity(inbox));
        Ok(())
    }

    /// Revoke another installation of this inbox (the wallet signs). Groups
    /// remove it as discovery finds the revocation.
    pub async fn revoke_installation(&self, installation: InstallationId) -> Result<(), Error> {
        let shared = self.shared();
        let inbox = shared.inbox;
        shared.refresh_identities([inbox]).await?;
        let (identity_key, sequence) = {
            let cache = shared.identities();
            let state = cache
                .state(&inbox)
                .ok_or_else(|| Error::InvalidInput("this inbox has no identity log".into()))?;
            let active = state.installation(&installation).ok_or_else(|| {
                Error::InvalidInput(format!("{installation} is not an active installation"))
            })?;
            (active.identity_key, state.sequence())
        };
        let unsigned = UnsignedIdentityUpdate::revoke_installation(
            inbox,
            installation,
            identity_key,
            sequence + 1,
            now_ms(),
        );
        let signature = self
            .inner
            .wallet
            .sign_personal(&unsigned.signature_text())
            .await
            .map_err(Error::Wallet)?;
        shared.flush_before_output()?;
        shared
            .node
            .publish_identity_update(unsigned.sign(signature, None))
            .await?;
        shared.refresh_identities([inbox]).await?;
        Ok(())
    }

    async fn supervisor_part<T: std::marker::Send + 'static>(
        &self,
        f: impl FnOnce(&Supervisor) -> Option<T> + std::marker::Send + 'static,
    ) -> Result<T, Error> {
        self.inner
            .supervisor
            .send(Peek(Box::new(move |s| Box::new(f(s)))))
            .await?
            .downcast::<Option<T>>()
            .ok()
            .and_then(|b| *b)
            .ok_or(Error::Shutdown)
    }

    /// The conversations this installation is in, oldest first.
    pub async fn conversations(&self) -> Result<Vec<Conversation>, Error> {
        let shared = Arc::clone(self.shared());
        let mut records = blocking(move || Ok(shared.store().conversations()?)).await?;
        records.retain(|r| r.state == ConversationState::Active);
        records.sort_by_key(|r| r.created_at_ms);
        Ok(records
            .into_iter()
            .map(|r| self.conversation_from(r))
            .collect())
    }

    /// One conversation by id.
    pub async fn conversation(&self, id: &ConversationId) -> Result<Conversation, Error> {
        let shared = Arc::clone(self.shared());
        let key = id.clone();
        let record = blocking(move || Ok(shared.store().conversation(&key)?)).await?;
        record
            .map(|r| self.conversation_from(r))
            .ok_or_else(|| Error::UnknownConversation(id.to_string()))
    }

    pub(crate) fn conversation_from(&self, record: ConversationRecord) -> Conversation {
        Conversation {
            client: self.clone(),
            id: record.id,
            dm_peer: record.dm_peer,
        }
    }

    async fn create(&self, new: NewGroup, members: Vec<InboxId>) -> Result<Conversation, Error> {
        // Refuse unknown inboxes before anything is created, so that a bad
        // member list leaves no half-made group behind.
        self.shared()
            .refresh_identities(members.iter().copied())
            .await?;
        {
            let cache = self.shared().identities();
            if let Some(missing) = members.iter().find(|inbox| {
                cache
                    .state(inbox)
                    .is_none_or(|s| s.active_installations().next().is_none())
            }) {
                return Err(Error::InvalidInput(format!(
                    "{missing} has no registered installations"
                )));
            }
        }
        // Fetch the members' key packages before anything is created: a
        // group, and above all a DM (which find_or_create_dm would then
        // find), must not be left without the members it was made for.
        // A gated group refuses a member that fails its rules before
        // anything is fetched or created.
        let admissions =
            crate::gating::admit(self.shared().gating.as_ref(), &new.gating, &members).await?;
        let adds = if members.is_empty() {
            Vec::new()
        } else {
            let deniable = new.kind == ConversationKind::Dm && new.dm_mode == DmMode::Deniable;
            let mut adds = self.shared().member_adds(&members, deniable).await?;
            crate::gating::attach(&mut adds, &admissions);
            adds
        };
        let shared = Arc::clone(self.shared());
        let group_id = blocking(move || {
            shared.step(|| {
                let group = Group::create(
                    &shared.provider,
                    shared.storage(),
                    shared.me(),
                    &shared.identities(),
                    new,
                )?;
                Ok(group.group_id().to_vec())
            })
        })
        .await?;
        let addr = self.inner.supervisor.send(Adopt(group_id)).await?;
        let info = addr.send(Info).await??;
        self.shared().emit(Event::Joined {
            conversation: info.conversation.clone(),
        });
        for add in adds {
            addr.send(Change::Intent(add)).await??;
        }
        self.conversation(&info.conversation).await
    }

    /// Create a group with `members` (all their installations) and this
    /// installation; this inbox becomes its super admin.
    pub async fn create_group(
        &self,
        members: &[InboxId],
        options: GroupOptions,
    ) -> Result<Conversation, Error> {
        let mut attributes = std::collections::BTreeMap::new();
        for (key, value) in [
            (ATTRIBUTE_NAME, options.name),
            (ATTRIBUTE_DESCRIPTION, options.description),
            (ATTRIBUTE_IMAGE_URL, options.image_url),
        ] {
            if let Some(value) = value {
                attributes.insert(key.to_owned(), value);
            }
        }
        attributes.extend(options.attributes);
        let members: Vec<InboxId> = members
            .iter()
            .copied()
            .filter(|m| *m != self.inbox_id())
            .collect();
        self.create(
            NewGroup {
                kind: ConversationKind::Group,
                dm_peer: None,
                // Groups are always non-repudiable.
                dm_mode: DmMode::NonRepudiable,
                attributes,
                preset: options.preset,
                now_ms: now_ms(),
                legacy: options.legacy,
                gating: options.gating,
            },
            members,
        )
        .await
    }

    /// The DM with `peer`, created if there is none, in the default mode:
    /// deniable. See [`Client::find_or_create_dm_with`].
    pub async fn find_or_create_dm(&self, peer: InboxId) -> Result<Conversation, Error> {
        self.find_or_create_dm_with(peer, DmMode::default()).await
    }

    /// The DM with `peer`, created in `mode` if there is none.
    ///
    /// - **`DmMode::Deniable`**: no installation or wallet key signs
    ///   anything in it; each side proves who it is to the other with MACs
    ///   that either side could have made, so a leaked transcript proves
    ///   nothing to a third party. Messages sent before every installation
    ///   has proved itself wait ([`Conversation::verification`]).
    /// - **`DmMode::NonRepudiable`**: every message is signed by an
    ///   installation key the sender's wallet vouched for.
    ///
    /// Both modes share one conversation id per pair of inboxes, so an
    /// active DM is returned whatever its mode; check
    /// [`Conversation::dm_mode`] when it matters. If both sides create it at
    /// once, each ends up in both groups, which are shown as one
    /// conversation; both send in the group with the lower id.
    pub async fn find_or_create_dm_with(
        &self,
        peer: InboxId,
        mode: DmMode,
    ) -> Result<Conversation, Error> {
        self.dm(peer, mode, None).await
    }

    /// The DM with `peer` that continues `legacy`, a 1:1 conversation of
    /// an older protocol: the one this installation holds already
    /// (found by its legacy id, or else the DM with `peer`, whose legacy id
    /// cannot change), or a new DM in `mode` that carries it.
    ///
    /// When both sides migrate the same legacy DM at once, each creates a
    /// group, and the two end as one conversation (the DM of the two
    /// inboxes, see [`Client::find_or_create_dm_with`]) carrying the
    /// legacy id on both sides.
    pub async fn migrate_dm(
        &self,
        peer: InboxId,
        mode: DmMode,
        legacy: LegacyConversation,
    ) -> Result<Conversation, Error> {
        if let Some(existing) = self.conversation_by_legacy_id(&legacy.id).await? {
            return Ok(existing);
        }
        self.dm(peer, mode, Some(legacy)).await
    }

    /// The active conversation that continues the legacy conversation
    /// `legacy_id`, if this installation holds one. Reads each
    /// conversation's metadata, so it costs one read per conversation.
    pub async fn conversation_by_legacy_id(
        &self,
        legacy_id: &str,
    ) -> Result<Option<Conversation>, Error> {
        for conversation in self.conversations().await? {
            if !conversation.is_active().await? {
                continue;
            }
            let metadata = conversation.metadata().await?;
            if metadata.legacy.as_ref().is_some_and(|l| l.id == legacy_id) {
                return Ok(Some(conversation));
            }
        }
        Ok(None)
    }

    async fn dm(
        &self,
        peer: InboxId,
        mode: DmMode,
        legacy: Option<LegacyConversation>,
    ) -> Result<Conversation, Error> {
        if peer == self.inbox_id() {
            return Err(Error::InvalidInput("a DM needs another inbox".into()));
        }
        self.sync_welcomes().await?;
        let id = dm_conversation_id(self.inbox_id(), peer);
        if let Ok(existing) = self.conversation(&id).await
            && existing.is_active().await?
        {
            return Ok(existing);
        }
        self.create(
            NewGroup {
                kind: ConversationKind::Dm,
                dm_peer: Some(peer),
                dm_mode: mode,
                attributes: Default::default(),
                preset: PolicyPreset::Default,
                now_ms: now_ms(),
                legacy,
                gating: Default::default(),
            },
            vec![peer],
        )
        .await
    }

    async fn sync_welcomes(&self) -> Result<(), Error> {
        self.inner.supervisor.send(ProcessWelcomes).await??;
        Ok(())
    }

    /// Fetch Welcomes and every group's new envelopes now (pushes do this
    /// in the background; this is for callers that want it done).
    pub async fn sync(&self) -> Result<(), Error> {
        self.sync_welcomes().await?;
        for conversation in self.conversations().await? {
            conversation.sync().await?;
        }
        Ok(())
    }

    /// Run installation discovery now, over every group.
    pub async fn discover_installations(&self) -> Result<(), Error> {
        let discovery = self.supervisor_part(|s| s.discovery.clone()).await?;
        discovery.send(Discover).await??;
        Ok(())
    }

    /// A stream of events: messages, membership and metadata changes. It
    /// starts now. A consumer that falls more than 4,096 events behind
    /// loses the oldest, and is told so by an [`Event::Lagged`]: re-read
    /// from the store then.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use kith::{Client, Event, GroupOptions, LocalNode, LocalWallet};
    /// # use kith_engine::delivery::MemoryNodeStore;
    /// # use kith_transport::node::{NodeConfig, NodeLogic};
    /// use futures::StreamExt as _;
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let node = LocalNode::new(Arc::new(NodeLogic::new(NodeConfig::new(1), MemoryNodeStore::default())));
    /// # let dir = tempfile::tempdir()?;
    /// # let open = |name: &str| Client::builder()
    /// #     .wallet(LocalWallet::generate(&mut rand_core::OsRng))
    /// #     .data_dir(dir.path().join(name)).node(node.clone()).build();
    /// # let (alice, bob) = (open("alice").await?, open("bob").await?);
    /// # alice.register().await?; bob.register().await?;
    /// let mut events = bob.stream_events();
    /// let group = alice.create_group(&[bob.inbox_id()], GroupOptions::default()).await?;
    /// group.send_text("hi").await?;
    /// bob.sync().await?; // pushes do this in the background too
    /// while let Some(event) = events.next().await {
    ///     if let Event::Message(message) = event {
    ///         assert_eq!(message.text(), Some("hi"));
    ///         break;
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn stream_events(&self) -> impl Stream<Item = Event> + std::marker::Send + Unpin + use<> {
        BroadcastStream::new(self.inner.shared.events.subscribe()).map(|item| match item {
            Ok(event) => event,
            Err(BroadcastStreamRecvError::Lagged(missed)) => Event::Lagged { missed },
        })
    }

    /// Stop the actors and close the store, so that the data directory can
    /// be opened again (by a new `Client`). Other clones of this client
    /// stop working.
    ///
    /// Drop this client's [`Conversation`] handles first: each holds the
    /// client, and with it the store.
    pub async fn shutdown(self) -> Result<(), Error> {
        let weak: Weak<Shared> = Arc::downgrade(&self.inner.shared);
        if let Ok(arbiters) = self.inner.supervisor.send(Shutdown).await {
            blocking(move || {
                for arbiter in arbiters {
                    arbiter.stop();
                    // A group thread that panicked has nothing left to
                    // clean up; its store handle is dropped either way.
                    let _ = arbiter.join();
                }
                Ok(())
            })
            .await?;
        }
        self.inner.system.stop();
        let thread = self
            .inner
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(self);
        if let Some(thread) = thread {
            blocking(move || {
                thread
                    .join()
                    .map_err(|_| Error::Storage("the actor thread panicked".into()))
            })
            .await?;
        }
        // Group threads drop their handles as they wind down.
        for _ in 0..500 {
            if weak.strong_count() == 0 {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(Error::Storage(
            "the store is still in use: drop every clone of the client and its Conversation \
             handles before shutdown"
                .into(),
        ))
    }
}

/// Run a closure on the supervisor to read one of its parts.
type PeekFn =
    Box<dyn FnOnce(&Supervisor) -> Box<dyn std::any::Any + std::marker::Send> + std::marker::Send>;

struct Peek(PeekFn);

impl actix::Message for Peek {
    type Result = Box<dyn std::any::Any + std::marker::Send>;
}

impl actix::Handler<Peek> for Supervisor {
    type Result = actix::MessageResult<Peek>;

    fn handle(&mut self, msg: Peek, _: &mut Self::Context) -> Self::Result {
        actix::MessageResult((msg.0)(self))
    }
}

/// A group or DM. Cheap to clone.
///
/// ```
/// # use std::sync::Arc;
/// # use kith::{Client, GroupOptions, LocalNode, LocalWallet};
/// # use kith_engine::delivery::MemoryNodeStore;
/// # use kith_transport::node::{NodeConfig, NodeLogic};
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let node = LocalNode::new(Arc::new(NodeLogic::new(NodeConfig::new(1), MemoryNodeStore::default())));
/// # let dir = tempfile::tempdir()?;
/// # let open = |name: &str| Client::builder()
/// #     .wallet(LocalWallet::generate(&mut rand_core::OsRng))
/// #     .data_dir(dir.path().join(name)).node(node.clone()).build();
/// # let (alice, bob, carol) = (open("alice").await?, open("bob").await?, open("carol").await?);
/// # for c in [&alice, &bob, &carol] { c.register().await?; }
/// let group = alice
///     .create_group(&[bob.inbox_id()], GroupOptions::default().admins_only())
///     .await?;
/// group.add_members(&[carol.inbox_id()]).await?;
/// group.update_name("Board").await?;
/// group.add_admin(bob.inbox_id()).await?;
/// assert_eq!(group.members().await?.len(), 3);
///
/// // Carol is not an admin: her own client refuses to remove anyone.
/// carol.sync().await?;
/// let carols = carol.conversation(group.id()).await?;
/// assert!(matches!(
///     carols.remove_members(&[bob.inbox_id()]).await,
///     Err(kith::Error::NotPermitted(_))
/// ));
/// group.remove_members(&[carol.inbox_id()]).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Conversation {
    pub(crate) client: Client,
    id: ConversationId,
    dm_peer: Option<InboxId>,
}

impl std::fmt::Debug for Conversation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conversation")
            .field("id", &self.id)
            .field("dm_peer", &self.dm_peer)
            .finish()
    }
}

impl Conversation {
    /// Its id.
    pub fn id(&self) -> &ConversationId {
        &self.id
    }

    /// For a DM, the other inbox.
    pub fn dm_peer(&self) -> Option<InboxId> {
        self.dm_peer
    }

    async fn record(&self) -> Result<ConversationRecord, Error> {
        let shared = Arc::clone(self.client.shared());
        let id = self.id.clone();
        blocking(move || {
            shared
                .store()
                .conversation(&id)?
                .ok_or_else(|| Error::UnknownConversation(id.to_string()))
        })
        .await
    }

    async fn actor(&self) -> Result<Addr<GroupActor>, Error> {
        let record = self.record().await?;
        let group = record
            .active_group()
            .ok_or_else(|| Error::UnknownConversation(self.id.to_string()))?
            .to_vec();
        self.client.inner.supervisor.send(GetGroup(group)).await?
    }

    /// Whether this installation is still a member.
    pub async fn is_active(&self) -> Result<bool, Error> {
        Ok(self.record().await?.state == ConversationState::Active)
    }

    /// Send text; returns the message id once the node has it.
    pub async fn send_text(&self, text: &str) -> Result<MessageId, Error> {
        self.send(CONTENT_TYPE_TEXT, text.as_bytes()).await
    }

    /// Send a message of any content type, without fallback text.
    pub async fn send(&self, content_type: &str, body: &[u8]) -> Result<MessageId, Error> {
        self.send_raw(content_type, body, None).await
    }

    /// Send a message of any content type, with `fallback` as the text
    /// that clients which do not know the type show instead (at most
    /// 4 KiB).
    pub async fn send_raw(
        &self,
        content_type: &str,
        body: &[u8],
        fallback: Option<&str>,
    ) -> Result<MessageId, Error> {
        let id = self
            .actor()
            .await?
            .send(SendMessage {
                content_type: content_type.to_owned(),
                body: body.to_vec(),
                fallback: fallback.map(str::to_owned),
            })
            .await??;
        Ok(MessageId(id))
    }

    /// Send typed content, with its fallback text. A
    /// [`Content::Unknown`] goes out as it came (its type, body and
    /// fallback), so a client can pass on a type it does not know.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use kith::{Client, GroupOptions, LocalNode, LocalWallet};
    /// # use kith_engine::delivery::MemoryNodeStore;
    /// # use kith_transport::node::{NodeConfig, NodeLogic};
    /// use kith::{Content, Reaction, ReactionAction, Reply};
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let node = LocalNode::new(Arc::new(NodeLogic::new(NodeConfig::new(1), MemoryNodeStore::default())));
    /// # let dir = tempfile::tempdir()?;
    /// # let alice = Client::builder()
    /// #     .wallet(LocalWallet::generate(&mut rand_core::OsRng))
    /// #     .data_dir(dir.path().join("alice")).node(node.clone()).build().await?;
    /// # alice.register().await?;
    /// # let group = alice.create_group(&[], GroupOptions::default()).await?;
    /// let question = group.send_text("Lunch?").await?;
    /// group
    ///     .send_content(&Content::Reply(Reply {
    ///         reference: question,
    ///         content: Box::new(Content::Text("Yes, at noon".into())),
    ///     }))
    ///     .await?;
    /// group
    ///     .send_content(&Content::Reaction(Reaction {
    ///         reference: question,
    ///         action: ReactionAction::Added,
    ///         content: "👍".into(),
    ///     }))
    ///     .await?;
    /// let messages = group.messages().await?;
    /// assert!(matches!(messages[1].content()?, Content::Reply(r) if r.reference == question));
    /// assert!(!messages[2].is_listed(), "reactions stay out of a message list");
    /// # Ok(()) }
    /// ```
    pub async fn send_content(&self, content: &Content) -> Result<MessageId, Error> {
        let body = content.encode()?;
        let fallback = content.fallback();
        self.send_raw(content.content_type(), &body, fallback.as_deref())
            .await
    }

    /// The stored messages, oldest first.
    pub async fn messages(&self) -> Result<Vec<Message>, Error> {
        let shared = Arc::clone(self.client.shared());
        let id = self.id.clone();
        let stored = blocking(move || Ok(shared.store().messages(&id)?)).await?;
        Ok(stored.into_iter().map(Message::from).collect())
    }

    /// The members and their installations.
    pub async fn members(&self) -> Result<Vec<Member>, Error> {
        let info = self.actor().await?.send(Info).await??;
        Ok(info
            .members
            .into_iter()
            .map(|(inbox, installations)| Member {
                inbox,
                installations,
            })
            .collect())
    }

    /// The metadata of the current epoch.
    pub async fn metadata(&self) -> Result<Metadata, Error> {
        Ok(self.actor().await?.send(Info).await??.metadata)
    }

    /// For a DM, whether it is deniable (`None` for a group).
    pub async fn dm_mode(&self) -> Result<Option<DmMode>, Error> {
        Ok(self.metadata().await?.dm_mode)
    }

    /// For a deniable DM, whether every installation in it has proved who
    /// it is (`None` for groups and non-repudiable DMs, whose members are
    /// always known). While it is `Pending`, messages sent here wait and
    /// messages received show `verified: false`; `Failed` is for good.
    pub async fn verification(&self) -> Result<Option<DmVerification>, Error> {
        Ok(self.actor().await?.send(Info).await??.verification)
    }

    /// The group's epoch and epoch authenticator (equal on every member in
    /// the same state; for diagnostics and tests).
    pub async fn epoch_state(&self) -> Result<(u64, Vec<u8>), Error> {
        let info = self.actor().await?.send(Info).await??;
        Ok((info.epoch, info.epoch_authenticator))
    }

    async fn change(&self, change: Change) -> Result<(), Error> {
        self.actor().await?.send(change).await?
    }

    /// Add inboxes, with all their installations. In a gated group, the
    /// client's [`GatingVerifier`](crate::GatingVerifier) is asked about
    /// each inbox that is not a member yet, first: this call waits for it
    /// (the group goes on meanwhile), and an inbox that fails is refused
    /// with nothing changed.
    pub async fn add_members(&self, inboxes: &[InboxId]) -> Result<(), Error> {
        let info = self.actor().await?.send(Info).await??;
        let joining: Vec<InboxId> = inboxes
            .iter()
            .filter(|inbox| !info.members.iter().any(|(member, _)| member == *inbox))
            .copied()
            .collect();
        let admissions = crate::gating::admit(
            self.client.shared().gating.as_ref(),
            &info.metadata.gating,
            &joining,
        )
        .await?;
        self.change(Change::AddMembers {
            inboxes: inboxes.to_vec(),
            refresh: true,
            admissions,
        })
        .await
    }

    /// Remove inboxes, with all their installations.
    pub async fn remove_members(&self, inboxes: &[InboxId]) -> Result<(), Error> {
        self.change(Change::Intent(IntentKind::RemoveMembers {
            inboxes: inboxes.to_vec(),
        }))
        .await
    }

    /// Leave: propose this installation's removal, which the next member
    /// to commit includes.
    pub async fn leave(&self) -> Result<(), Error> {
        self.change(Change::Intent(IntentKind::Leave)).await
    }

    /// Set the name.
    pub async fn update_name(&self, name: &str) -> Result<(), Error> {
        self.set_attribute(ATTRIBUTE_NAME, name).await
    }

    /// Set the description.
    pub async fn update_description(&self, description: &str) -> Result<(), Error> {
        self.set_attribute(ATTRIBUTE_DESCRIPTION, description).await
    }

    /// Set any attribute.
    pub async fn set_attribute(&self, key: &str, value: &str) -> Result<(), Error> {
        self.change(Change::Intent(IntentKind::UpdateAttributes {
            changes: vec![(key.to_owned(), Some(value.to_owned()))],
        }))
        .await
    }

    /// Make `inbox` an admin.
    pub async fn add_admin(&self, inbox: InboxId) -> Result<(), Error> {
        self.change(Change::Intent(IntentKind::UpdateAdmins {
            add: vec![inbox],
            remove: vec![],
            super_admin: false,
        }))
        .await
    }

    /// Take admin rights from `inbox`.
    pub async fn remove_admin(&self, inbox: InboxId) -> Result<(), Error> {
        self.change(Change::Intent(IntentKind::UpdateAdmins {
            add: vec![],
            remove: vec![inbox],
            super_admin: false,
        }))
        .await
    }

    /// Make `inbox` a super admin.
    pub async fn add_super_admin(&self, inbox: InboxId) -> Result<(), Error> {
        self.change(Change::Intent(IntentKind::UpdateAdmins {
            add: vec![inbox],
            remove: vec![],
            super_admin: true,
        }))
        .await
    }

    /// Replace the group's gating rules (and how they combine), under the
    /// `change_policies` policy. Inboxes already in stay; the rules apply
    /// to the next ones added. An empty list ungates the group.
    pub async fn set_gating(&self, gating: Gating) -> Result<(), Error> {
        self.change(Change::Intent(IntentKind::SetGating {
            rules: gating.rules,
            require: gating.require,
        }))
        .await
    }

    /// Replace the group's policies.
    pub async fn set_policies(&self, policies: kith_engine::group::Policies) -> Result<(), Error> {
        let encoded = kith_engine::group::metadata::encode_policies(&policies);
        self.change(Change::Intent(IntentKind::SetPolicies { encoded }))
            .await
    }

    /// Check the members' identity logs now and add or remove
    /// installations to match.
    pub async fn reconcile_installations(&self) -> Result<(), Error> {
        self.change(Change::Reconcile { refresh: true }).await
    }

    /// Fetch and apply what is new on the node, and publish what is queued.
    pub async fn sync(&self) -> Result<(), Error> {
        let record = self.record().await?;
        for group in record.group_ids {
            let addr = self.client.inner.supervisor.send(GetGroup(group)).await??;
            addr.send(Sync { read_node: true }).await??;
        }
        Ok(())
    }

    #[doc(hidden)]
    /// Fault injection for supervision tests: make this conversation's
    /// actor panic inside a storage step. Returns the error it reported.
    pub async fn inject_actor_panic(&self) -> Error {
        match self.actor().await {
            Ok(addr) => match addr.send(InjectPanic).await {
                Ok(Err(e)) => e,
                Ok(Ok(())) => Error::Storage("the injected panic did not happen".into()),
                Err(e) => e.into(),
            },
            Err(e) => e,
        }
    }

    #[doc(hidden)]
    /// How often this conversation's actor was restarted.
    pub async fn actor_restarts(&self) -> Result<u64, Error> {
        Ok(self.actor().await?.send(Restarts).await?)
    }
}
