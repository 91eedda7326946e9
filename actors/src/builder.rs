//! [`ClientBuilder`]: the required pieces first (wallet, data directory,
//! node), tuning after, with documented defaults.

use std::{path::PathBuf, sync::Arc};

use kith_engine::{
    delivery::NodeStore,
    group::{ClientStore, IdentityCache},
    identity::{InboxId, LocalWallet, load_or_create_installation},
};
use kith_storage::{KithProvider, StorageConfig};
use kith_transport::client::{
    CheckedClient, DeliveryClient, FailoverClient, GrpcClient, LocalNode,
};

use crate::{Client, ClientConfig, Error, client::Inner, shared::Shared};

/// Signs identity updates for an inbox: a [`LocalWallet`], or an external
/// wallet (hardware, browser, remote signer) behind this trait.
#[async_trait::async_trait]
pub trait WalletSigner: Send + Sync {
    /// The inbox (the wallet's address).
    fn inbox_id(&self) -> InboxId;
    /// Sign `text` with EIP-191 `personal_sign`: a 65-byte `r ‖ s ‖ v`
    /// signature with `v` in {27, 28}.
    async fn sign_personal(&self, text: &str) -> Result<[u8; 65], String>;
}

#[async_trait::async_trait]
impl WalletSigner for LocalWallet {
    fn inbox_id(&self) -> InboxId {
        LocalWallet::inbox_id(self)
    }

    async fn sign_personal(&self, text: &str) -> Result<[u8; 65], String> {
        Ok(LocalWallet::sign_personal(self, text.as_bytes()))
    }
}

/// A [`WalletSigner`] that calls an async function: the way to plug in a
/// wallet that signs elsewhere (a hardware wallet, a browser extension, a
/// remote signer). Build it with [`ClientBuilder::wallet_callback`].
pub struct CallbackSigner<F> {
    inbox: InboxId,
    sign: F,
}

impl<F> std::fmt::Debug for CallbackSigner<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackSigner")
            .field("inbox", &self.inbox)
            .finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl<F, Fut> WalletSigner for CallbackSigner<F>
where
    F: Fn(String) -> Fut + Send + Sync,
    Fut: std::future::Future<Output = Result<[u8; 65], String>> + Send,
{
    fn inbox_id(&self) -> InboxId {
        self.inbox
    }

    async fn sign_personal(&self, text: &str) -> Result<[u8; 65], String> {
        (self.sign)(text.to_owned()).await
    }
}

/// Which node a client talks to.
///
/// Whichever it is, the client checks every answer through a
/// [`CheckedClient`] and refuses what cannot be true, so that a node (or a
/// `DeliveryClient` of your own) that lies can withhold but not mislead.
#[derive(Clone)]
pub enum Node {
    /// Any [`DeliveryClient`]: a [`LocalNode`] in this process, or a
    /// [`GrpcClient`].
    Client(Arc<dyn DeliveryClient>),
    /// The URL of a `kith-node`, e.g. `http://127.0.0.1:5556`.
    Url(String),
    /// The URLs of several replicating `kith-node`s, in order of
    /// preference: the client uses the first that answers and moves to
    /// the next when it cannot be reached ([`FailoverClient`]).
    ///
    /// [`FailoverClient`]: kith_transport::client::FailoverClient
    Urls(Vec<String>),
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Node::Client(_) => f.write_str("Node::Client(..)"),
            Node::Url(url) => write!(f, "Node::Url({url:?})"),
            Node::Urls(urls) => write!(f, "Node::Urls({urls:?})"),
        }
    }
}

impl<S: NodeStore + 'static> From<LocalNode<S>> for Node {
    fn from(node: LocalNode<S>) -> Self {
        Node::Client(Arc::new(node))
    }
}

impl From<GrpcClient> for Node {
    fn from(client: GrpcClient) -> Self {
        Node::Client(Arc::new(client))
    }
}

impl From<&str> for Node {
    fn from(url: &str) -> Self {
        Node::Url(url.to_owned())
    }
}

impl From<String> for Node {
    fn from(url: String) -> Self {
        Node::Url(url)
    }
}

impl From<Vec<String>> for Node {
    fn from(urls: Vec<String>) -> Self {
        Node::Urls(urls)
    }
}

/// Builds a [`Client`]. See [`Client::builder`].
#[derive(Default)]
pub struct ClientBuilder {
    wallet: Option<Arc<dyn WalletSigner>>,
    data_dir: Option<PathBuf>,
    node: Option<Node>,
    config: ClientConfig,
    storage: StorageConfig,
    gating: Option<Arc<dyn crate::gating::GatingVerifier>>,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("data_dir", &self.data_dir)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// The wallet that owns the inbox (required): a [`LocalWallet`].
    pub fn wallet(mut self, wallet: LocalWallet) -> Self {
        self.wallet = Some(Arc::new(wallet));
        self
    }

    /// A wallet behind the [`WalletSigner`] trait (instead of
    /// [`ClientBuilder::wallet`]).
    pub fn wallet_signer(mut self, signer: Arc<dyn WalletSigner>) -> Self {
        self.wallet = Some(signer);
        self
    }

    /// An external wallet for `inbox` that signs through `sign` (instead of
    /// [`ClientBuilder::wallet`]). `sign` gets the text to sign with EIP-191
    /// `personal_sign` and returns the 65-byte signature, or why the wallet
    /// refused. It is called once per identity update (registering or
    /// revoking an installation), never for messages.
    pub fn wallet_callback<F, Fut>(self, inbox: InboxId, sign: F) -> Self
    where
        F: Fn(String) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<[u8; 65], String>> + Send + 'static,
    {
        self.wallet_signer(Arc::new(CallbackSigner { inbox, sign }))
    }

    /// Where this installation keeps its state (required). One directory
    /// holds one installation; it is created if missing.
    pub fn data_dir(mut self, path: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(path.into());
        self
    }

    /// The node (required): a [`LocalNode`], a [`GrpcClient`], a URL, or
    /// several URLs of replicating nodes ([`Node::Urls`]).
    pub fn node(mut self, node: impl Into<Node>) -> Self {
        self.node = Some(node.into());
        self
    }

    /// Tuning; see [`ClientConfig`] for the defaults.
    pub fn config(mut self, config: ClientConfig) -> Self {
        self.config = config;
        self
    }

    /// Storage tuning (default: fsync every step).
    ///
    /// [`Durability::Buffered`](kith_storage::Durability::Buffered) fsyncs
    /// far less: the client flushes once before anything leaves the process
    /// (a batch of messages and commits, key packages, an identity update),
    /// so a power loss only loses work nobody else has seen, and never
    /// makes a ratchet key be used twice. What it loses of received
    /// messages is read from the node again.
    pub fn storage(mut self, storage: StorageConfig) -> Self {
        self.storage = storage;
        self
    }

    /// The verifier that answers token-gating rules when this client adds
    /// inboxes to a gated group (see [`GatingVerifier`](crate::GatingVerifier)).
    /// Without one, such adds are refused with
    /// [`Error::GatingUnavailable`]; allowlists need none.
    pub fn gating_verifier(mut self, verifier: impl crate::GatingVerifier) -> Self {
        self.gating = Some(Arc::new(verifier));
        self
    }

    /// Open the stores (creating this installation's keys on first use) and
    /// start the actors. Call [`Client::register`] once per installation.
    pub async fn build(self) -> Result<Client, Error> {
        let wallet = self
            .wallet
            .ok_or_else(|| Error::Config("a wallet is required: call .wallet(..)".into()))?;
        let data_dir = self.data_dir.ok_or_else(|| {
            Error::Config("a data directory is required: call .data_dir(..)".into())
        })?;
        let node: Arc<dyn DeliveryClient> = match self
            .node
            .ok_or_else(|| Error::Config("a node is required: call .node(..)".into()))?
        {
            Node::Client(client) => client,
            Node::Url(url) => Arc::new(connect(&url)?),
            Node::Urls(urls) => {
                let nodes = urls
                    .iter()
                    .map(|url| connect(url).map(|c| Arc::new(c) as Arc<dyn DeliveryClient>))
                    .collect::<Result<Vec<_>, _>>()?;
                Arc::new(
                    FailoverClient::new(nodes)
                        .map_err(|e| Error::Config(format!("node URLs: {e}")))?,
                )
            }
        };
        // Every answer of the node passes the checks, whoever implemented
        // the client.
        let node: Arc<dyn DeliveryClient> = Arc::new(CheckedClient::new(node));
        let storage_config = self.storage;
        let opened = tokio::task::spawn_blocking(move || -> Result<_, Error> {
            std::fs::create_dir_all(&data_dir)
                .map_err(|e| Error::Storage(format!("{}: {e}", data_dir.display())))?;
            let provider = KithProvider::open_with(data_dir.join("kith.sled"), storage_config)?;
            let storage = {
                use openmls_traits::OpenMlsProvider as _;
                provider.storage()
            };
            let keys = load_or_create_installation(storage, &mut rand_core::OsRng)
                .map_err(|e| Error::Storage(e.to_string()))?;
            let mut identities = IdentityCache::new();
            // Any node may replicate, and a replicating node may revise a
            // log this client read: a commit that disputes a cached log
            // gets the log read again before it is refused.
            identities.allow_revisions();
            for log in ClientStore(storage).all_identity_updates()? {
                if let Some(first) = log.first() {
                    let inbox = first.unsigned.inbox;
                    identities
                        .extend(inbox, log)
                        .map_err(|e| Error::Storage(format!("cached identity log: {e}")))?;
                }
            }
            Ok((provider, keys, identities))
        })
        .await
        .map_err(|e| Error::Storage(format!("opening the store: {e}")))??;
        let (provider, keys, identities) = opened;
        let (events, _) = tokio::sync::broadcast::channel(self.config.event_buffer.max(1));
        let settle_window_ms = match self.config.settle_window {
            Some(window) => u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            None => node.node_info().await?.settle_window_ms,
        };
        let group_config = kith_engine::group::GroupConfig {
            rewind: kith_engine::group::RewindPolicy {
                max_rewind: self.config.max_rewind,
                settle_window_ms,
            },
            proposals: kith_engine::group::ProposalPolicy {
                propose_first: self.config.propose_first,
                proposal_wait_ms: u64::try_from(self.config.proposal_wait.as_millis())
                    .unwrap_or(u64::MAX),
            },
            retire_grace_ms: u64::try_from(self.config.retire_grace.as_millis())
                .unwrap_or(u64::MAX),
            ..kith_engine::group::GroupConfig::default()
        };
        let shared = Arc::new(Shared {
            provider,
            keys,
            inbox: wallet.inbox_id(),
            node,
            identities: std::sync::RwLock::new(identities),
            events,
            group_config,
            config: self.config,
            node_key: std::sync::RwLock::new(None),
            revised: std::sync::Mutex::default(),
            gating: self.gating,
            joins: std::sync::RwLock::new(0),
            limits: std::sync::Mutex::default(),
        });
        Ok(Client::from_inner(Inner::start(shared, wallet).await?))
    }
}

fn connect(url: &str) -> Result<GrpcClient, Error> {
    GrpcClient::connect_lazy(url).map_err(|e| Error::Config(format!("node URL {url:?}: {e}")))
}
