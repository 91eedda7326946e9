//! One normal-path suite for every `DeliveryClient`: `LocalNode` in-process
//! and `GrpcClient` against the real server on a loopback port, both over
//! sled. Plus: a gRPC subscription resumes, without gap or duplicate, after
//! the node restarts.

mod common;

use std::{sync::Arc, time::Duration};

use common::{Identity, now_ms};

use kith_engine::{
    delivery::{Cursor, Topic},
    identity::IdentityUpdate,
};
use kith_storage::SledNodeStore;
use kith_transport::{
    client::{CheckedClient, ClientError, DeliveryClient, FailoverClient, GrpcClient, LocalNode},
    node::{
        KeyPackageFetch, KeyPackageUpload, NodeConfig, NodeError, NodeLogic, fetch_signed_bytes,
        serve, upload_signed_bytes,
    },
};
use tokio::sync::oneshot;
use tokio_stream::StreamExt as _;

/// What every client must do.
async fn normal_path_suite(client: &dyn DeliveryClient) {
    let topic = Topic::Group(b"suite".to_vec());

    // Publish and page through a query.
    let stored = client
        .publish((0..5u8).map(|i| (topic.clone(), vec![i])).collect())
        .await
        .expect("publish");
    assert_eq!(stored.len(), 5);
    let mut cursor = Cursor::new();
    let mut seen = Vec::new();
    loop {
        let page = client.query(&topic, &cursor, 2).await.expect("query");
        seen.extend(page.envelopes.iter().map(|e| e.payload[0]));
        cursor = page.next_cursor;
        if !page.more {
            break;
        }
    }
    assert_eq!(seen, vec![0, 1, 2, 3, 4]);

    // Subscribe from the third envelope: catch-up, then live.
    let from = Cursor::from_iter([(
        stored[1].originator_node_id,
        stored[1].originator_sequence_id,
    )]);
    let mut stream = client
        .subscribe(vec![(topic.clone(), from)])
        .await
        .expect("subscribe");
    client
        .publish(vec![(topic.clone(), vec![5])])
        .await
        .expect("publish live");
    let mut got = Vec::new();
    while got.len() < 4 {
        let envelope = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("delivered")
            .expect("open")
            .expect("envelope");
        got.push(envelope.payload[0]);
    }
    assert_eq!(got, vec![2, 3, 4, 5]);
    drop(stream);

    // Bad input is refused.
    assert!(matches!(
        client.publish(vec![]).await,
        Err(ClientError::Refused(_))
    ));

    // Identity updates.
    let alice = Identity::new(1);
    let bob = Identity::new(2);
    alice.register(client).await;
    bob.register(client).await;
    let logs = client
        .identity_updates(vec![
            (alice.wallet.inbox_id(), 0),
            (bob.wallet.inbox_id(), 1),
        ])
        .await
        .expect("identity updates");
    assert_eq!(logs[0].len(), 1);
    assert_eq!(logs[0][0].unsigned.installation, alice.keys.id());
    assert!(logs[1].is_empty());

    // Identity topics are the node's: it mirrors each update there, and
    // refuses a client's publish to them.
    let identity = Topic::Identity(alice.wallet.inbox_id());
    let mirror = client
        .query(&identity, &Cursor::new(), 0)
        .await
        .expect("query the mirror")
        .envelopes;
    assert_eq!(mirror.len(), 1);
    assert_eq!(
        IdentityUpdate::from_bytes(&mirror[0].payload).expect("an update"),
        logs[0][0]
    );
    let refused = client.publish(vec![(identity, b"forged".to_vec())]).await;
    assert!(
        matches!(
            &refused,
            Err(ClientError::Refused(NodeError::InvalidArgument(m))) if m.contains("identity")
        ),
        "{refused:?}"
    );

    // Key packages: one-time first, then the last-resort one.
    let one_time = vec![bob.key_package(false)];
    let last_resort = bob.key_package(true);
    let t = now_ms();
    let left = client
        .upload_key_packages(KeyPackageUpload {
            installation: bob.keys.id(),
            signature: bob
                .keys
                .sign(&upload_signed_bytes(
                    t,
                    &bob.keys.id(),
                    &one_time,
                    Some(&last_resort),
                ))
                .to_vec(),
            one_time: one_time.clone(),
            last_resort: Some(last_resort.clone()),
            timestamp_ms: t,
        })
        .await
        .expect("upload");
    assert_eq!(left, 1);
    for expected in [(&one_time[0], false), (&last_resort, true)] {
        let t = now_ms();
        let targets = vec![bob.keys.id()];
        let fetched = client
            .fetch_key_packages(KeyPackageFetch {
                signature: alice
                    .keys
                    .sign(&fetch_signed_bytes(
                        t,
                        &alice.wallet.inbox_id(),
                        &alice.keys.id(),
                        &targets,
                    ))
                    .to_vec(),
                targets,
                requester_inbox: alice.wallet.inbox_id(),
                requester: alice.keys.id(),
                timestamp_ms: t,
            })
            .await
            .expect("fetch");
        let package = fetched[0].key_package.as_ref().expect("a package");
        assert_eq!(&package.bytes, expected.0);
        assert_eq!(package.last_resort, expected.1);
    }
}

#[tokio::test]
async fn local_node_passes_the_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledNodeStore::open(dir.path().join("node")).expect("open");
    let node = LocalNode::new(Arc::new(NodeLogic::new(NodeConfig::new(1), store)));
    normal_path_suite(&node).await;
}

/// The checks a client puts around its node refuse nothing an honest node
/// says.
#[tokio::test]
async fn an_honest_node_passes_the_checks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledNodeStore::open(dir.path().join("node")).expect("open");
    let node = LocalNode::new(Arc::new(NodeLogic::new(NodeConfig::new(1), store)));
    normal_path_suite(&CheckedClient::new(Arc::new(node))).await;

    let server = start_server(&dir.path().join("grpc"), "127.0.0.1:0").await;
    let client = GrpcClient::connect_lazy(&format!("http://{}", server.address)).expect("client");
    normal_path_suite(&CheckedClient::new(Arc::new(client))).await;
    server.stop().await;
}

struct Server {
    address: std::net::SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn start_server(data: &std::path::Path, address: &str) -> Server {
    let store = SledNodeStore::open(data).expect("open");
    let logic = Arc::new(NodeLogic::new(NodeConfig::new(1), store));
    let listener = tokio::net::TcpListener::bind(address).await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        serve(listener, logic, async {
            let _ = stopped.await;
        })
        .await
        .expect("serve");
    });
    Server {
        address,
        stop,
        task,
    }
}

impl Server {
    async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("server stops")
            .expect("server task");
    }
}

#[tokio::test]
async fn grpc_client_passes_the_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start_server(&dir.path().join("node"), "127.0.0.1:0").await;
    let client = GrpcClient::connect_lazy(&format!("http://{}", server.address)).expect("client");
    normal_path_suite(&client).await;
    drop(client);
    server.stop().await;
}

#[tokio::test]
async fn a_grpc_subscription_resumes_after_the_node_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("node");
    let server = start_server(&data, "127.0.0.1:0").await;
    let address = server.address;
    let client = GrpcClient::connect_lazy(&format!("http://{address}")).expect("client");
    let topic = Topic::Group(b"resume".to_vec());
    let mut stream = client
        .subscribe(vec![(topic.clone(), Cursor::new())])
        .await
        .expect("subscribe");
    client
        .publish((0..3u8).map(|i| (topic.clone(), vec![i])).collect())
        .await
        .expect("publish");
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(
            stream
                .next()
                .await
                .expect("open")
                .expect("envelope")
                .payload[0],
        );
    }

    // The node goes away and comes back on the same address and data.
    server.stop().await;
    let server = start_server(&data, &address.to_string()).await;
    // Publishing is not retried by the client (its outcome could be
    // unknown); here the test retries until the channel has reconnected.
    let mut published = false;
    for _ in 0..50 {
        match client
            .publish((3..6u8).map(|i| (topic.clone(), vec![i])).collect())
            .await
        {
            Ok(_) => {
                published = true;
                break;
            }
            Err(ClientError::Unavailable(_)) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(other) => panic!("publish failed: {other}"),
        }
    }
    assert!(published, "the client reconnected");
    while got.len() < 6 {
        let envelope = tokio::time::timeout(Duration::from_secs(15), stream.next())
            .await
            .expect("the subscription resumed")
            .expect("open")
            .expect("envelope");
        got.push(envelope.payload[0]);
    }
    assert_eq!(got, vec![0, 1, 2, 3, 4, 5], "no gap, no duplicate");
    // Nothing repeated after the resume: the next envelope is one published
    // after all of them.
    client
        .publish(vec![(topic.clone(), vec![6])])
        .await
        .expect("publish the marker");
    let next = tokio::time::timeout(Duration::from_secs(15), stream.next())
        .await
        .expect("the marker arrives")
        .expect("open")
        .expect("envelope");
    assert_eq!(next.payload, [6], "only the marker follows the resume");
    drop(stream);
    drop(client);
    server.stop().await;
}

/// A loopback URL nobody listens on.
fn dead_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    format!("http://127.0.0.1:{port}")
}

fn dead_node() -> Arc<dyn DeliveryClient> {
    Arc::new(GrpcClient::connect_lazy(&dead_url()).expect("client"))
}

/// Over a node that cannot be reached and one that answers, the failover
/// client is a whole client: it moves to the second at the first call
/// and passes the same suite.
#[tokio::test]
async fn a_failover_client_moves_past_an_unreachable_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SledNodeStore::open(dir.path().join("node")).expect("open");
    let live = LocalNode::new(Arc::new(NodeLogic::new(NodeConfig::new(1), store)));
    let client = FailoverClient::new(vec![dead_node(), Arc::new(live)]).expect("client");
    assert_eq!(client.current(), 0);
    client.node_info().await.expect("the second node answers");
    assert_eq!(client.current(), 1, "it stays on the node that answered");
    normal_path_suite(&client).await;
    assert_eq!(client.current(), 1);
}

/// A refusal is the node's answer, not a reason to ask another; with no
/// node reachable the error says so.
#[tokio::test]
async fn a_failover_client_returns_refusals_and_reports_no_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let open = |name: &str| {
        let store = SledNodeStore::open(dir.path().join(name)).expect("open");
        Arc::new(LocalNode::new(Arc::new(NodeLogic::new(
            NodeConfig::new(1),
            store,
        )))) as Arc<dyn DeliveryClient>
    };
    let client = FailoverClient::new(vec![open("a"), open("b")]).expect("client");
    // Clients may not write the identity topics the node keeps itself.
    let inbox = kith_engine::identity::InboxId::from_bytes([7; 20]);
    let refused = client
        .publish(vec![(Topic::Identity(inbox), vec![1, 2, 3])])
        .await;
    assert!(
        matches!(refused, Err(ClientError::Refused(_))),
        "{refused:?}"
    );
    assert_eq!(client.current(), 0, "a refusal does not move the client");

    let nowhere = FailoverClient::new(vec![dead_node(), dead_node()]).expect("client");
    match nowhere.node_info().await {
        Err(ClientError::Unavailable(reason)) => {
            assert!(reason.contains("none of the 2 nodes"), "{reason}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(FailoverClient::new(Vec::new()).is_err(), "no node at all");
}
