//! Buffered durability under a power-loss model.
//!
//! With `Durability::Buffered`, committed steps reach the disk when sled
//! flushes, not when they return. A ciphertext that left the process
//! before the step that advanced its ratchet reached the disk would, after
//! a power loss, be followed by a second ciphertext under the same key and
//! nonce. The client flushes before anything leaves; this checks it.
//!
//! The model: a tap on the node copies the client's data directory at the
//! instant a publish reaches it, before the node sees the batch. The copy
//! holds what sled had written to its files, which is what a power loss at
//! that instant would leave (sled keeps unflushed writes in its own
//! buffers; the background flusher is set to an hour so it never runs).
//! The client is then restarted from the copy.

mod common;

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use common::{
    Net, joined,
    tap::{self, Tap},
    texts, wallet,
};
use kith::{Client, ClientConfig, GroupOptions, LocalWallet, Node};
use kith_engine::delivery::Topic;
use kith_storage::{Durability, StorageConfig};

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
    let tap = Tap::new(Arc::new(net.node.clone()));
    let armed = Arc::new(AtomicBool::new(false));
    let taken = Arc::new(AtomicBool::new(false));
    {
        let (data_dir, copy) = (net.path("alice"), net.path("alice-after-power-loss"));
        let (armed, taken) = (Arc::clone(&armed), Arc::clone(&taken));
        tap.on_publish(move |batch| {
            let group = batch.iter().any(|(t, _)| matches!(t, Topic::Group(_)));
            if group && armed.swap(false, Ordering::SeqCst) {
                copy_dir(&data_dir, &copy);
                taken.store(true, Ordering::SeqCst);
            }
        });
    }
    let alice = buffered_client(&net.path("alice"), &aw, tap::node(&tap)).await;
    alice.register().await.expect("register");
    let group = alice
        .create_group(&[bob.inbox_id()], GroupOptions::default())
        .await
        .expect("create");
    let bob_group = joined(&bob, group.id()).await;
    group.send_text("warm up").await.expect("send");

    armed.store(true, Ordering::SeqCst);
    group.send_text("one").await.expect("send");
    assert!(
        taken.load(Ordering::SeqCst),
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
