//! The same conversation, with every client talking gRPC to the real
//! `kith-node` binary on a loopback port.

mod common;

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::{joined, texts, wallet};
use kith::{Client, ClientConfig, DmVerification, GroupOptions, GrpcClient, LocalWallet};
use kith_transport::client::DeliveryClient as _;

/// The `kith-node` binary of this workspace's target directory, built if
/// it is not there yet (e.g. when only this crate's tests run).
fn node_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory");
    let binary = dir.join("kith-node");
    if !binary.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "kith-transport", "--bin", "kith-node"])
            .status()
            .expect("run cargo");
        assert!(status.success(), "building kith-node failed");
    }
    binary
}

struct Node {
    child: Child,
    url: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_node(data_dir: &std::path::Path) -> Node {
    let mut child = Command::new(node_binary())
        .args(["--listen", "127.0.0.1:0", "--node-id", "7", "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kith-node");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("the listening line");
    let address = line
        .trim()
        .strip_prefix("kith-node listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    Node {
        child,
        url: format!("http://{address}"),
    }
}

async fn client(dir: &std::path::Path, name: &str, wallet: &LocalWallet, url: &str) -> Client {
    let client = Client::builder()
        .wallet(wallet.clone())
        .data_dir(dir.join(name))
        .node(url)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_conversation_over_the_kith_node_binary() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let node = start_node(&dir.path().join("node"));
    let (aw, bw, cw) = (wallet(), wallet(), wallet());
    let alice = client(dir.path(), "alice", &aw, &node.url).await;
    let bob = client(dir.path(), "bob", &bw, &node.url).await;
    let carol = client(dir.path(), "carol", &cw, &node.url).await;

    let group = alice
        .create_group(
            &[bw.inbox_id(), cw.inbox_id()],
            GroupOptions::default().name("over the wire"),
        )
        .await
        .expect("create");
    let bob_group = joined(&bob, group.id()).await;
    let carol_group = joined(&carol, group.id()).await;
    group.send_text("hello over gRPC").await.expect("send");
    bob_group.send_text("loud and clear").await.expect("send");
    assert_eq!(
        texts(&carol_group).await,
        ["hello over gRPC", "loud and clear"]
    );

    group
        .update_name("renamed over the wire")
        .await
        .expect("rename");
    bob_group.sync().await.expect("sync");
    assert_eq!(
        bob_group
            .metadata()
            .await
            .expect("metadata")
            .name
            .as_deref(),
        Some("renamed over the wire")
    );

    group
        .remove_members(&[cw.inbox_id()])
        .await
        .expect("remove");
    group.send_text("after carol left").await.expect("send");
    assert!(
        texts(&bob_group)
            .await
            .iter()
            .any(|t| t == "after carol left")
    );
    let carol_sees = texts(&carol_group).await;
    assert!(!carol_sees.iter().any(|t| t == "after carol left"));
    assert!(!carol_group.is_active().await.expect("state"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deniable_dm_over_the_kith_node_binary() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let node = start_node(&dir.path().join("node"));
    let (aw, bw) = (wallet(), wallet());
    let alice = client(dir.path(), "alice", &aw, &node.url).await;
    let bob = client(dir.path(), "bob", &bw, &node.url).await;

    // Deniable by default: packages fetched by inbox with a MAC keyed with
    // the node's static key, which the client read from GetNodeInfo.
    let dm = alice.find_or_create_dm(bw.inbox_id()).await.expect("dm");
    dm.send_text("deniably yours").await.expect("send");
    let mut arrived = false;
    for _ in 0..50 {
        bob.sync().await.expect("sync");
        alice.sync().await.expect("sync");
        if let Ok(view) = bob.conversation(dm.id()).await
            && view
                .messages()
                .await
                .expect("messages")
                .first()
                .is_some_and(|m| m.verified && m.text() == Some("deniably yours"))
        {
            arrived = true;
            break;
        }
    }
    assert!(arrived, "Bob never held Alice's message, verified");
    assert_eq!(
        dm.verification().await.expect("verification"),
        Some(DmVerification::Verified)
    );
}

#[tokio::test]
async fn the_node_keeps_its_static_key_across_restarts() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let data = dir.path().join("node");
    let static_key = |url: String| async move {
        GrpcClient::connect_lazy(&url)
            .expect("client")
            .node_info()
            .await
            .expect("node info")
            .static_key
    };
    let first = {
        let node = start_node(&data);
        static_key(node.url.clone()).await
        // Dropping the node kills the process.
    };
    let node = start_node(&data);
    assert_eq!(static_key(node.url.clone()).await, first);
    assert_ne!(first, [0; 32]);
}
