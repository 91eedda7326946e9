//! Buffered durability under a power-loss model.
//!
//! With `Durability::Buffered`, committed steps reach the disk when sled
//! flushes, not when they return. A ciphertext that left the process
//! before the step that advanced its ratchet reached the disk would, after
//! a power loss, be followed by a second ciphertext under the same key and
//! nonce. The client flushes before anything leaves; this checks it.
//!
//! The model: a node wrapper copies the client's data directory at the
//! instant a publish reaches it, before the node sees the batch. The copy
//! holds what sled had written to its files, which is what a power loss at
//! that instant would leave (sled keeps unflushed writes in its own
//! buffers; the background flusher is set to an hour so it never runs).
//! The client is then restarted from the copy.

mod common;

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use common::{Net, joined, texts, wallet};
use kith::{Client, ClientConfig, GroupOptions, LocalWallet, Node};
use kith_engine::{
    delivery::{Cursor, Envelope, Topic},
    identity::{IdentityUpdate, InboxId},
};
use kith_storage::{Durability, StorageConfig};
use kith_transport::{
    client::{ClientError, DeliveryClient, EnvelopeStream, NodeInfo, QueryPage},
    node::{
        DeniableKeyPackageFetch, DeniableKeyPackageUpload, FetchedKeyPackage, KeyPackageFetch,
        KeyPackageUpload,
    },
};

/// Copies `data_dir` to `copy` when a publish arrives while armed.
struct PowerLossModel {
    inner: Arc<dyn DeliveryClient>,
    data_dir: PathBuf,
    copy: PathBuf,
    armed: AtomicBool,
    taken: Mutex<bool>,
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the copy");
    for entry in std::fs::read_dir(from).expect("read the data directory") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy a file");
        }
    }
}

#[async_trait::async_trait]
impl DeliveryClient for PowerLossModel {
    async fn publish(&self, batch: Vec<(Topic, Vec<u8>)>) -> Result<Vec<Envelope>, ClientError> {
        let group = batch.iter().any(|(t, _)| matches!(t, Topic::Group(_)));
        if group && self.armed.swap(false, Ordering::SeqCst) {
            copy_dir(&self.data_dir, &self.copy);
            *self.taken.lock().unwrap_or_else(PoisonError::into_inner) = true;
        }
        self.inner.publish(batch).await
    }

    async fn query(
        &self,
        topic: &Topic,
        cursor: &Cursor,
        limit: u32,
    ) -> Result<QueryPage, ClientError> {
        self.inner.query(topic, cursor, limit).await
    }

    async fn subscribe(&self, topics: Vec<(Topic, Cursor)>) -> Result<EnvelopeStream, ClientError> {
        self.inner.subscribe(topics).await
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

async fn buffered_client(dir: &Path, wallet: &LocalWallet, node: Node) -> Client {
    Client::builder()
        .wallet(wallet.clone())
        .data_dir(dir)
        .node(node)
        .config(ClientConfig {
            sync_interval: Duration::from_secs(3600),
            ..ClientConfig::default()
        })
        .storage(StorageConfig {
            durability: Durability::Buffered {
                flush_every_ms: 3_600_000,
            },
            ..StorageConfig::default()
        })
        .build()
        .await
        .expect("client")
}

/// Alice sends with buffered durability; power is lost the instant her
/// message reaches the node. Restarted from what was on disk then, her
/// next message uses the next key: Bob reads both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_power_loss_as_a_message_leaves_the_next_one_uses_a_fresh_key() {
    let net = Net::new();
    let (aw, bw) = (wallet(), wallet());
    let bob = net.client("bob", &bw).await;
    let model = Arc::new(PowerLossModel {
        inner: Arc::new(net.node.clone()),
        data_dir: net.path("alice"),
        copy: net.path("alice-after-power-loss"),
        armed: AtomicBool::new(false),
        taken: Mutex::new(false),
    });
    let alice = buffered_client(
        &net.path("alice"),
        &aw,
        Node::Client(Arc::clone(&model) as Arc<dyn DeliveryClient>),
    )
    .await;
    alice.register().await.expect("register");
    let group = alice
        .create_group(&[bob.inbox_id()], GroupOptions::default())
        .await
        .expect("create");
    let bob_group = joined(&bob, group.id()).await;
    group.send_text("warm up").await.expect("send");

    model.armed.store(true, Ordering::SeqCst);
    group.send_text("one").await.expect("send");
    assert!(
        *model.taken.lock().unwrap_or_else(PoisonError::into_inner),
        "the power-loss copy was taken as the message left"
    );
    let id = group.id().clone();
    drop(group);
    alice.shutdown().await.expect("shutdown");

    let restored = buffered_client(
        &net.path("alice-after-power-loss"),
        &aw,
        Node::Client(Arc::new(net.node.clone())),
    )
    .await;
    let group = joined(&restored, &id).await;
    group
        .send_text("two")
        .await
        .expect("send after the power loss");
    assert_eq!(texts(&bob_group).await, ["warm up", "one", "two"]);
}
