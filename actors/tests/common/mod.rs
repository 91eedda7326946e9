//! The multi-client harness: a real `LocalNode` over a sled node store and
//! clients over real sled stores, all in one temporary directory.

#![allow(dead_code, unreachable_pub)]

pub mod tap;

use std::{path::PathBuf, sync::Arc, time::Duration};

use kith::{
    Client, ClientBuilder, ClientConfig, Conversation, ConversationId, GroupOptions, LocalNode,
    LocalWallet,
};
use kith_storage::SledNodeStore;
use kith_transport::node::{NodeConfig, NodeLogic};

pub struct Net {
    pub dir: tempfile::TempDir,
    pub node: LocalNode<SledNodeStore>,
}

/// Tests sync explicitly: background timers are kept out of the way.
pub fn test_config() -> ClientConfig {
    ClientConfig {
        sync_interval: Duration::from_secs(3600),
        discovery_retry: Duration::from_millis(200),
        ..ClientConfig::default()
    }
}

pub fn wallet() -> LocalWallet {
    LocalWallet::generate(&mut rand_core::OsRng)
}

/// Logs to standard error at `RUST_LOG` (`kith=debug` shows what the
/// actors do), off by default; once per test binary.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_writer(std::io::stderr)
        .try_init();
}

impl Net {
    pub fn new() -> Self {
        Self::with_config(NodeConfig::new(1))
    }

    /// A net whose node runs with `config`.
    pub fn with_config(config: NodeConfig) -> Self {
        init_tracing();
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = SledNodeStore::open(dir.path().join("node")).expect("node store");
        let node = LocalNode::new(Arc::new(NodeLogic::new(config, store)));
        Self { dir, node }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The builder of a client for `wallet` whose store is `name`, on this
    /// net's node with [`test_config`]; a test changes what it needs.
    pub fn builder(&self, name: &str, wallet: &LocalWallet) -> ClientBuilder {
        Client::builder()
            .wallet(wallet.clone())
            .data_dir(self.path(name))
            .node(self.node.clone())
            .config(test_config())
    }

    /// A client for `wallet` whose store is `name` (created, or reopened).
    pub async fn open(&self, name: &str, wallet: &LocalWallet) -> Client {
        self.builder(name, wallet).build().await.expect("client")
    }

    /// A registered client.
    pub async fn client(&self, name: &str, wallet: &LocalWallet) -> Client {
        let client = self.open(name, wallet).await;
        client.register().await.expect("register");
        client
    }
}

/// `client`'s view of conversation `id`, after a sync.
pub async fn joined(client: &Client, id: &ConversationId) -> Conversation {
    client.sync().await.expect("sync");
    client.conversation(id).await.expect("the client joined")
}

/// The texts of a conversation, after a sync (its other messages, such as
/// the transcript's group updates, left out).
pub async fn texts(conversation: &Conversation) -> Vec<String> {
    conversation.sync().await.expect("sync");
    conversation
        .messages()
        .await
        .expect("messages")
        .iter()
        .filter(|m| m.content_type == kith::content::TEXT)
        .map(|m| m.text().unwrap_or("<not utf-8>").to_owned())
        .collect()
}

/// Wait until `check` holds, syncing `client` between tries.
pub async fn eventually<F, Fut>(client: &Client, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        client.sync().await.expect("sync");
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting until {what}");
}

/// `creator` makes a group with `others`, and each of them joins it.
/// Returns the creator's view and the others' views, in order.
pub async fn group_with(
    creator: &Client,
    others: &[&Client],
    options: GroupOptions,
) -> (Conversation, Vec<Conversation>) {
    let inboxes: Vec<_> = others.iter().map(|c| c.inbox_id()).collect();
    let group = creator
        .create_group(&inboxes, options)
        .await
        .expect("create");
    let mut views = Vec::new();
    for other in others {
        views.push(joined(other, group.id()).await);
    }
    (group, views)
}

/// A registered client whose store is `dir/name`, talking to `node` (a URL,
/// or several), with the background sync timer out of the way.
pub async fn remote_client(
    dir: &std::path::Path,
    name: &str,
    wallet: &LocalWallet,
    node: impl Into<kith::Node>,
) -> Client {
    let client = Client::builder()
        .wallet(wallet.clone())
        .data_dir(dir.join(name))
        .node(node)
        .config(ClientConfig {
            sync_interval: Duration::from_secs(3600),
            ..ClientConfig::default()
        })
        .build()
        .await
        .expect("client");
    client.register().await.expect("register");
    client
}
