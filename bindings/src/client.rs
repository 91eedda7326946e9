//! [`KithClient`]: one installation of one inbox, built by
//! [`create_client`] from [`ClientOptions`] and a [`Wallet`].

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use kith::{Client, ClientConfig, InstallationId};
use kith_storage::{Durability, StorageConfig};

use crate::{
    ConversationItem, ConversationQuery, DmMode, EmbeddedNode, EventListener, EventStream,
    GatingVerifier, GroupOptions, KithConversation, KithError, LegacyConversation, Wallet,
    gating::ForeignVerifier,
    runtime,
    types::{parse_conversation, parse_inbox, parse_inboxes},
};

/// Where a client keeps its state and which node it talks to.
#[derive(Clone, uniffi::Record)]
pub struct ClientOptions {
    /// The directory of this installation's store (created if missing).
    /// One directory holds one installation; reopening it resumes it.
    pub data_dir: String,
    /// The URLs of the node, e.g. `http://127.0.0.1:5556`; several for
    /// replicating nodes, in order of preference. Leave empty when
    /// `embedded_node` is set.
    #[uniffi(default)]
    pub node_urls: Vec<String>,
    /// A node in this process, instead of `node_urls`.
    #[uniffi(default)]
    pub embedded_node: Option<Arc<EmbeddedNode>>,
    /// Tuning; unset fields keep `kith`'s defaults.
    #[uniffi(default)]
    pub tuning: Option<ClientTuning>,
    /// Answers token-gating rules when this client adds inboxes to a gated
    /// group. Without one such adds fail with `GatingUnavailable`;
    /// allowlists need none.
    #[uniffi(default)]
    pub gating_verifier: Option<Arc<dyn GatingVerifier>>,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("data_dir", &self.data_dir)
            .field("node_urls", &self.node_urls)
            .field("embedded_node", &self.embedded_node)
            .field("tuning", &self.tuning)
            .field("gating_verifier", &self.gating_verifier.is_some())
            .finish()
    }
}

/// Tuning knobs, each `kith::ClientConfig`'s field of the same name;
/// unset fields keep the default.
#[derive(Debug, Clone, Default, PartialEq, Eq, uniffi::Record)]
pub struct ClientTuning {
    /// How often each group re-syncs with the node without a push (ms).
    #[uniffi(default)]
    pub sync_interval_ms: Option<u64>,
    /// Periodic installation discovery (ms).
    #[uniffi(default)]
    pub discovery_interval_ms: Option<u64>,
    /// Before a send, check the group's installations if the last check is
    /// older than this (ms).
    #[uniffi(default)]
    pub discovery_before_send_ms: Option<u64>,
    /// How often the key-package pool is checked (ms).
    #[uniffi(default)]
    pub key_package_interval_ms: Option<u64>,
    /// Threads running group actors.
    #[uniffi(default)]
    pub group_threads: Option<u32>,
    /// Whether metadata changes go out first as proposals.
    #[uniffi(default)]
    pub propose_first: Option<bool>,
    /// Buffered durability (`Durability::Buffered`): flush the store in
    /// the background every this many ms, and always before anything
    /// leaves the process, instead of on every step. Faster; a power loss
    /// loses only what nobody else has seen.
    #[uniffi(default)]
    pub buffered_flush_every_ms: Option<u64>,
}

impl ClientTuning {
    fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::default();
        let ms = Duration::from_millis;
        if let Some(v) = self.sync_interval_ms {
            config.sync_interval = ms(v);
        }
        if let Some(v) = self.discovery_interval_ms {
            config.discovery_interval = ms(v);
        }
        if let Some(v) = self.discovery_before_send_ms {
            config.discovery_before_send = ms(v);
        }
        if let Some(v) = self.key_package_interval_ms {
            config.key_package_interval = ms(v);
        }
        if let Some(v) = self.group_threads {
            config.group_threads = v as usize;
        }
        if let Some(v) = self.propose_first {
            config.propose_first = v;
        }
        config
    }

    fn storage(&self) -> StorageConfig {
        let mut storage = StorageConfig::default();
        if let Some(flush_every_ms) = self.buffered_flush_every_ms {
            storage.durability = Durability::Buffered { flush_every_ms };
        }
        storage
    }
}

/// Open (or create) the installation in `options.data_dir`, owned by
/// `wallet`, and start it. Call [`KithClient::register`] once per
/// installation.
#[uniffi::export]
pub async fn create_client(
    options: ClientOptions,
    wallet: Arc<Wallet>,
) -> Result<Arc<KithClient>, KithError> {
    let mut builder = Client::builder()
        .wallet_signer(wallet.signer())
        .data_dir(&options.data_dir);
    builder = match (options.embedded_node, options.node_urls.len()) {
        (Some(node), 0) => builder.node(kith::Node::Client(node.client())),
        (None, 1) => builder.node(options.node_urls[0].clone()),
        (None, n) if n > 1 => builder.node(options.node_urls),
        (None, _) => {
            return Err(KithError::Config(
                "no node: give node_urls or an embedded_node".into(),
            ));
        }
        (Some(_), _) => {
            return Err(KithError::Config(
                "give node_urls or an embedded_node, not both".into(),
            ));
        }
    };
    if let Some(tuning) = &options.tuning {
        builder = builder.config(tuning.config()).storage(tuning.storage());
    }
    if let Some(verifier) = options.gating_verifier {
        builder = builder.gating_verifier(ForeignVerifier(verifier));
    }
    let client =
        runtime::run(async move { builder.build().await.map_err(KithError::from) }).await?;
    Ok(Arc::new(KithClient {
        inbox_id: client.inbox_id().to_string(),
        installation_id: client.installation_id().to_string(),
        slot: Arc::new(ClientSlot(Mutex::new(Some(client)))),
    }))
}

/// The client, shared with its conversations, until shutdown empties it.
#[derive(Debug)]
pub(crate) struct ClientSlot(Mutex<Option<Client>>);

impl ClientSlot {
    /// A handle to the client, or `Shutdown`.
    pub(crate) fn get(&self) -> Result<Client, KithError> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or(KithError::Shutdown)
    }
}

/// One installation of one inbox.
#[derive(Debug, uniffi::Object)]
pub struct KithClient {
    inbox_id: String,
    installation_id: String,
    slot: Arc<ClientSlot>,
}

impl KithClient {
    fn conversation_handle(&self, conversation: &kith::Conversation) -> Arc<KithConversation> {
        KithConversation::new(
            Arc::clone(&self.slot),
            conversation.id().clone(),
            conversation.dm_peer(),
        )
    }
}

#[uniffi::export]
impl KithClient {
    /// The inbox id: the wallet's EIP-55 address.
    pub fn inbox_id(&self) -> String {
        self.inbox_id.clone()
    }

    /// This installation's id (hex).
    pub fn installation_id(&self) -> String {
        self.installation_id.clone()
    }

    /// Register this installation with its inbox (the wallet signs once)
    /// and publish its key packages. Safe to call again.
    pub async fn register(&self) -> Result<(), KithError> {
        let client = self.slot.get()?;
        runtime::run(async move { Ok(client.register().await?) }).await
    }

    /// Revoke another installation of this inbox (the wallet signs);
    /// groups remove it as they discover the revocation.
    pub async fn revoke_installation(&self, installation_id: String) -> Result<(), KithError> {
        let bytes: [u8; 32] = hex::decode(&installation_id)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                KithError::InvalidInput(format!(
                    "installation id {installation_id:?} is not 64 hex digits"
                ))
            })?;
        let client = self.slot.get()?;
        runtime::run(async move { Ok(client.revoke_installation(InstallationId(bytes)).await?) })
            .await
    }

    /// Every conversation this installation holds.
    pub async fn conversations(&self) -> Result<Vec<Arc<KithConversation>>, KithError> {
        let client = self.slot.get()?;
        let conversations = runtime::run(async move { Ok(client.conversations().await?) }).await?;
        Ok(conversations
            .iter()
            .map(|c| self.conversation_handle(c))
            .collect())
    }

    /// The conversation with this id (hex).
    pub async fn conversation(
        &self,
        conversation_id: String,
    ) -> Result<Arc<KithConversation>, KithError> {
        let id = parse_conversation(&conversation_id)?;
        let client = self.slot.get()?;
        let conversation = runtime::run(async move { Ok(client.conversation(&id).await?) }).await?;
        Ok(self.conversation_handle(&conversation))
    }

    /// The conversations this installation is in (and, if the query
    /// says so, those it was removed from), most recently active first,
    /// each with its newest listed message.
    pub async fn list_conversations(
        &self,
        query: ConversationQuery,
    ) -> Result<Vec<ConversationItem>, KithError> {
        let query = query.into();
        let client = self.slot.get()?;
        let items =
            runtime::run(async move { Ok(client.list_conversations(&query).await?) }).await?;
        Ok(items
            .into_iter()
            .map(|item| ConversationItem {
                conversation: self.conversation_handle(&item.conversation),
                kind: item.kind.into(),
                last_activity_ms: item.last_activity_ms,
                last_message: item.last_message.map(Into::into),
                active: item.active,
            })
            .collect())
    }

    /// Create a group with these inboxes (all their installations); this
    /// inbox becomes its super admin. A gated group (`options.gating`)
    /// checks every inbox first: one that fails raises `GatingRefused`
    /// and no group is made.
    pub async fn create_group(
        &self,
        inbox_ids: Vec<String>,
        options: GroupOptions,
    ) -> Result<Arc<KithConversation>, KithError> {
        let members = parse_inboxes(&inbox_ids)?;
        let options = options.try_into()?;
        let client = self.slot.get()?;
        let group =
            runtime::run(async move { Ok(client.create_group(&members, options).await?) }).await?;
        Ok(self.conversation_handle(&group))
    }

    /// The DM with `peer_inbox_id`, created in `mode` (default deniable)
    /// if there is none.
    #[uniffi::method(default(mode = None))]
    pub async fn find_or_create_dm(
        &self,
        peer_inbox_id: String,
        mode: Option<DmMode>,
    ) -> Result<Arc<KithConversation>, KithError> {
        let peer = parse_inbox(&peer_inbox_id)?;
        let mode = mode.unwrap_or_default().into();
        let client = self.slot.get()?;
        let dm = runtime::run(async move { Ok(client.find_or_create_dm_with(peer, mode).await?) })
            .await?;
        Ok(self.conversation_handle(&dm))
    }

    /// The DM with `peer_inbox_id` that continues `legacy`, a 1:1
    /// conversation of an older protocol: found by its legacy id, or the
    /// DM with the peer, or a new DM in `mode` (default deniable) carrying
    /// it. Both sides migrating at once end in one conversation.
    #[uniffi::method(default(mode = None))]
    pub async fn migrate_dm(
        &self,
        peer_inbox_id: String,
        legacy: LegacyConversation,
        mode: Option<DmMode>,
    ) -> Result<Arc<KithConversation>, KithError> {
        let peer = parse_inbox(&peer_inbox_id)?;
        let mode = mode.unwrap_or_default().into();
        let client = self.slot.get()?;
        let dm =
            runtime::run(async move { Ok(client.migrate_dm(peer, mode, legacy.into()).await?) })
                .await?;
        Ok(self.conversation_handle(&dm))
    }

    /// The conversation that continues the legacy conversation
    /// `legacy_id`, if this installation holds one.
    pub async fn conversation_by_legacy_id(
        &self,
        legacy_id: String,
    ) -> Result<Option<Arc<KithConversation>>, KithError> {
        let client = self.slot.get()?;
        let found =
            runtime::run(async move { Ok(client.conversation_by_legacy_id(&legacy_id).await?) })
                .await?;
        Ok(found.map(|c| self.conversation_handle(&c)))
    }

    /// Read new Welcomes and every conversation's new messages now,
    /// instead of waiting for the node's push.
    pub async fn sync(&self) -> Result<(), KithError> {
        let client = self.slot.get()?;
        runtime::run(async move { Ok(client.sync().await?) }).await
    }

    /// Look for new and revoked installations of every member now.
    pub async fn discover_installations(&self) -> Result<(), KithError> {
        let client = self.slot.get()?;
        runtime::run(async move { Ok(client.discover_installations().await?) }).await
    }

    /// Deliver this client's events from now on to `listener`, until the
    /// returned stream is stopped.
    pub fn stream_events(
        &self,
        listener: Arc<dyn EventListener>,
    ) -> Result<Arc<EventStream>, KithError> {
        let client = self.slot.get()?;
        // Subscribe here, before returning, so that no event of a call made
        // right after this one is missed.
        let events = {
            let _guard = runtime::get().enter();
            client.stream_events()
        };
        Ok(EventStream::start(events, listener))
    }

    /// Stop the client and close its store, so that the data directory can
    /// be opened again. Every later call on it, or on its conversations,
    /// fails with `Shutdown`. Idempotent.
    pub async fn shutdown(&self) -> Result<(), KithError> {
        let client = self
            .slot
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match client {
            Some(client) => runtime::run(async move { Ok(client.shutdown().await?) }).await,
            None => Ok(()),
        }
    }
}
