//! Replicating originator nodes, as real `kith-node` processes on loopback:
//! every envelope reaches every node with its originator fields and seal, a
//! node that was killed catches up from its peers, and a node takes nothing
//! from a peer whose key it was not given. The in-process tests check what
//! a node does with a forged, foreign or gapped batch. Key packages are
//! handed out by the node they were uploaded to, whichever node is asked.

mod common;

#[path = "common/cluster.rs"]
mod cluster;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use cluster::{Node, cluster, kill, start};
use common::Identity;
use ed25519_dalek::{Signer as _, SigningKey};
use kith_engine::delivery::{Cursor, Envelope, MemoryNodeStore, SealedEnvelope, Topic};
use kith_transport::{
    client::{ClientError, DeliveryClient as _, GrpcClient},
    node::{NodeConfig, NodeError, NodeLogic, Peer},
    proto::{self, node_client::NodeClient},
};

/// How long a test waits for replication to converge before it fails.
const CONVERGE: Duration = Duration::from_secs(30);

async fn connect(node: &Node) -> NodeClient<tonic::transport::Channel> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match NodeClient::connect(node.url()).await {
            Ok(client) => return client,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot connect to node {}: {e}", node.id),
        }
    }
}

async fn publish(node: &Node, topic: &str, payloads: Vec<Vec<u8>>) -> Vec<proto::Envelope> {
    connect(node)
        .await
        .publish_envelopes(proto::PublishEnvelopesRequest {
            envelopes: payloads
                .into_iter()
                .map(|payload| proto::PublishedEnvelope {
                    topic: topic.into(),
                    payload,
                })
                .collect(),
        })
        .await
        .expect("publish")
        .into_inner()
        .envelopes
}

/// Everything `node` serves on `topic`, paging with its vector cursor.
async fn read_topic(node: &Node, topic: &str) -> Vec<proto::Envelope> {
    let mut client = connect(node).await;
    let mut cursor = None;
    let mut all = Vec::new();
    loop {
        let page = client
            .query_envelopes(proto::QueryEnvelopesRequest {
                topic: topic.into(),
                cursor: cursor.clone(),
                limit: 0,
            })
            .await
            .expect("query")
            .into_inner();
        all.extend(page.envelopes);
        cursor = page.next_cursor;
        if !page.more {
            return all;
        }
    }
}

type Stamp = (u32, u64);

fn by_stamp(envelopes: &[proto::Envelope]) -> BTreeMap<Stamp, proto::Envelope> {
    envelopes
        .iter()
        .map(|e| ((e.originator_node_id, e.originator_sequence_id), e.clone()))
        .collect()
}

/// Wait until every running node serves exactly `expected` on `topic`, in
/// canonical order; panics with what each node has after [`CONVERGE`].
async fn converge(nodes: &[Node], topic: &str, expected: &BTreeMap<Stamp, proto::Envelope>) {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let mut all_there = true;
        let mut counts = Vec::new();
        for node in nodes.iter().filter(|n| n.child.is_some()) {
            let served = read_topic(node, topic).await;
            counts.push((node.id, served.len()));
            let order: Vec<(u64, u32, u64)> = served
                .iter()
                .map(|e| {
                    (
                        e.originator_time_ms,
                        e.originator_node_id,
                        e.originator_sequence_id,
                    )
                })
                .collect();
            assert!(
                order.windows(2).all(|w| w[0] < w[1]),
                "node {} serves {topic} out of canonical order",
                node.id
            );
            let served = by_stamp(&served);
            for (stamp, envelope) in &served {
                // Whatever arrived is exactly what the originator stamped.
                assert_eq!(
                    expected.get(stamp),
                    Some(envelope),
                    "node {} serves {stamp:?} unlike its originator acknowledged it",
                    node.id
                );
            }
            all_there &= served.len() == expected.len();
        }
        if all_there {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replication did not converge on {topic} within {CONVERGE:?}: {} expected, nodes have {counts:?}",
            expected.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_every_envelope_with_its_originator_fields_and_seal() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut nodes = cluster(root.path(), 3);
    for i in 0..nodes.len() {
        start(
            &mut nodes,
            i,
            &[
                "--replication-delay-ms",
                "20",
                "--replication-jitter-ms",
                "40",
            ],
        );
    }
    // The node says it is eventually consistent, with its window, and
    // vouches for its peers' keys.
    let info = connect(&nodes[0])
        .await
        .get_node_info(proto::GetNodeInfoRequest {})
        .await
        .expect("node info")
        .into_inner();
    assert_eq!(
        info.consistency_mode,
        proto::ConsistencyMode::Eventual as i32
    );
    assert_eq!(info.settle_window_ms, 1_000, "the documented default");
    assert_eq!(hex::encode(&info.node_key), nodes[0].key);
    let vouched: BTreeMap<u32, String> = info
        .originator_keys
        .iter()
        .map(|k| (k.node_id, hex::encode(&k.public_key)))
        .collect();
    let configured: BTreeMap<u32, String> = nodes.iter().map(|n| (n.id, n.key.clone())).collect();
    assert_eq!(vouched, configured);

    // Every node takes publishes on the same topics at once.
    let topics = ["group/0a", "group/0b"];
    let mut acknowledged = BTreeMap::new();
    let mut publishers = Vec::new();
    for node in &nodes {
        for topic in topics {
            let url = node.url();
            let id = node.id;
            publishers.push(tokio::spawn(async move {
                let mut client = NodeClient::connect(url).await.expect("connect");
                let mut acked = Vec::new();
                for round in 0..10u32 {
                    let envelopes = (0..5u32)
                        .map(|i| proto::PublishedEnvelope {
                            topic: topic.into(),
                            payload: format!("{id}-{topic}-{round}-{i}").into_bytes(),
                        })
                        .collect();
                    acked.extend(
                        client
                            .publish_envelopes(proto::PublishEnvelopesRequest { envelopes })
                            .await
                            .expect("publish")
                            .into_inner()
                            .envelopes,
                    );
                }
                (topic, acked)
            }));
        }
    }
    for publisher in publishers {
        let (topic, acked) = publisher.await.expect("publisher");
        acknowledged
            .entry(topic)
            .or_insert_with(BTreeMap::new)
            .extend(by_stamp(&acked));
    }
    for topic in topics {
        let expected = &acknowledged[topic];
        assert_eq!(expected.len(), 3 * 10 * 5, "every publish was acknowledged");
        converge(&nodes, topic, expected).await;
    }

    // A client that pins the three keys accepts what any node serves.
    let keys: Vec<(u32, [u8; 32])> = nodes
        .iter()
        .map(|n| {
            let key: [u8; 32] = hex::decode(&n.key)
                .expect("hex")
                .try_into()
                .expect("32 bytes");
            (n.id, key)
        })
        .collect();
    let topic: Topic = topics[0].parse().expect("topic");
    for node in &nodes {
        let client = GrpcClient::connect_lazy(&node.url())
            .expect("client")
            .with_originator_keys(keys.clone())
            .expect("keys");
        let page = client
            .query(&topic, &Cursor::new(), 0)
            .await
            .expect("sealed");
        assert_eq!(page.envelopes.len(), 150);
        // Without node 2's key, node 2's envelopes are refused.
        let partial = GrpcClient::connect_lazy(&node.url())
            .expect("client")
            .with_originator_keys(keys.iter().copied().filter(|(id, _)| *id != 2))
            .expect("keys");
        match partial.query(&topic, &Cursor::new(), 0).await {
            Err(ClientError::Malformed(reason)) => {
                assert!(reason.contains("originator 2"), "{reason}");
            }
            other => panic!("an unpinned originator was accepted: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_run_catches_up_from_its_peers_and_they_from_it() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut nodes = cluster(root.path(), 3);
    for i in 0..nodes.len() {
        start(&mut nodes, i, &[]);
    }
    let topic = "group/0c";
    let mut expected = BTreeMap::new();
    for node in &nodes {
        expected.extend(by_stamp(
            &publish(
                node,
                topic,
                vec![format!("before {}", node.id).into_bytes()],
            )
            .await,
        ));
    }
    converge(&nodes, topic, &expected).await;

    // Node 3 dies. Its peers go on; it published once more just before.
    expected.extend(by_stamp(
        &publish(&nodes[2], topic, vec![b"3 just before dying".to_vec()]).await,
    ));
    kill(&mut nodes[2]);
    for round in 0..20u32 {
        for node in &nodes[..2] {
            expected.extend(by_stamp(
                &publish(
                    node,
                    topic,
                    vec![format!("{} while 3 is down: {round}", node.id).into_bytes()],
                )
                .await,
            ));
        }
    }
    // Back up: it pulls what it missed, and its peers get what it had.
    start(&mut nodes, 2, &[]);
    converge(&nodes, topic, &expected).await;
    assert_eq!(expected.len(), 3 + 1 + 40);
    assert_eq!(
        read_topic(&nodes[0], topic).await,
        read_topic(&nodes[2], topic).await,
        "the same envelopes, in the same order, on both"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_takes_nothing_from_a_peer_under_the_wrong_key() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut nodes = cluster(root.path(), 2);
    // Node 1 is told a key for node 2 that is not node 2's.
    let real = nodes[1].key.clone();
    nodes[1].key = hex::encode(SigningKey::from_bytes(&[9; 32]).verifying_key().to_bytes());
    start(&mut nodes, 0, &[]);
    nodes[1].key = real;
    start(&mut nodes, 1, &[]);
    let topic = "group/0d";
    let from_one = by_stamp(&publish(&nodes[0], topic, vec![b"from 1".to_vec()]).await);
    let from_two = by_stamp(&publish(&nodes[1], topic, vec![b"from 2".to_vec()]).await);
    // Node 2 knows node 1's real key and takes its envelope.
    let mut both = from_one.clone();
    both.extend(from_two);
    let deadline = Instant::now() + CONVERGE;
    while by_stamp(&read_topic(&nodes[1], topic).await) != both {
        assert!(
            Instant::now() < deadline,
            "node 2 never got node 1's envelope"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Long enough for several pulls: node 1 still has only its own.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(by_stamp(&read_topic(&nodes[0], topic).await), from_one);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_registered_on_one_node_is_served_by_its_peers() {
    use kith_engine::identity::{InstallationKeys, LocalWallet, UnsignedIdentityUpdate};
    use rand_core::SeedableRng as _;

    let root = tempfile::tempdir().expect("tempdir");
    let mut nodes = cluster(root.path(), 3);
    for i in 0..nodes.len() {
        start(&mut nodes, i, &["--replication-jitter-ms", "30"]);
    }
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
    let wallet = LocalWallet::generate(&mut rng);
    let inbox = wallet.inbox_id();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64;
    let update = |keys: &InstallationKeys, sequence: u64| {
        let unsigned =
            UnsignedIdentityUpdate::add_installation(inbox, keys, sequence, now + sequence);
        let signature = wallet.sign_personal(unsigned.signature_text().as_bytes());
        unsigned.sign(signature, Some(keys))
    };
    let clients: Vec<GrpcClient> = nodes
        .iter()
        .map(|n| GrpcClient::connect_lazy(&n.url()).expect("client"))
        .collect();
    let wait_for = |sequence: u64| {
        let clients = clients.clone();
        async move {
            let deadline = Instant::now() + CONVERGE;
            for (i, client) in clients.iter().enumerate() {
                loop {
                    let log = client
                        .identity_updates(vec![(inbox, 0)])
                        .await
                        .expect("identity updates");
                    if log[0].len() as u64 == sequence {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "node {} serves {} updates of the inbox, not {sequence}",
                        i + 1,
                        log[0].len()
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    };

    // Registered through node 1: nodes 2 and 3 serve it.
    let phone = InstallationKeys::generate(&mut rng);
    clients[0]
        .publish_identity_update(update(&phone, 1))
        .await
        .expect("register on node 1");
    wait_for(1).await;
    // A second device through node 2, which now holds the log: 1 and 3
    // follow.
    let laptop = InstallationKeys::generate(&mut rng);
    clients[1]
        .publish_identity_update(update(&laptop, 2))
        .await
        .expect("second device on node 2");
    wait_for(2).await;
    let logs: Vec<_> = {
        let mut logs = Vec::new();
        for client in &clients {
            logs.push(
                client
                    .identity_updates(vec![(inbox, 0)])
                    .await
                    .expect("log"),
            );
        }
        logs
    };
    assert!(
        logs.windows(2).all(|w| w[0] == w[1]),
        "the same log on every node"
    );
}

/// A node over memory with node 2 as its peer under `key`.
fn node_with_peer(key: &SigningKey) -> NodeLogic<MemoryNodeStore> {
    let mut config = NodeConfig::new(1);
    config.peers.push(Peer {
        node_id: 2,
        public_key: key.verifying_key(),
        url: "http://127.0.0.1:1".into(),
    });
    NodeLogic::new(config, MemoryNodeStore::default())
}

fn sealed(key: &SigningKey, node: u32, sequence: u64, payload: &[u8]) -> SealedEnvelope {
    let envelope = Envelope {
        topic: Topic::Group(b"g".to_vec()),
        payload: payload.to_vec(),
        originator_node_id: node,
        originator_sequence_id: sequence,
        originator_time_ms: 1_000 + sequence,
    };
    SealedEnvelope {
        seal: key.sign(&envelope.seal_input()).to_bytes().to_vec(),
        envelope,
    }
}

#[tokio::test]
async fn a_forged_foreign_or_gapped_batch_is_refused_whole_and_a_copy_changes_nothing() {
    let peer = SigningKey::from_bytes(&[2; 32]);
    let stranger = SigningKey::from_bytes(&[3; 32]);
    let node = node_with_peer(&peer);
    let good = sealed(&peer, 2, 1, b"one");

    let refused = |result: Result<usize, NodeError>, what: &str| match result {
        Err(NodeError::InvalidArgument(reason)) => assert!(reason.contains(what), "{reason}"),
        other => panic!("expected a refusal naming {what:?}, got {other:?}"),
    };
    // Sealed by someone else in node 2's name.
    refused(
        node.accept_replicated(vec![good.clone(), sealed(&stranger, 2, 2, b"forged")])
            .await,
        "seal does not verify",
    );
    // The peer's seal, with a changed payload, topic or field.
    let mut changed = sealed(&peer, 2, 2, b"two");
    changed.envelope.payload = b"changed".to_vec();
    refused(
        node.accept_replicated(vec![changed]).await,
        "seal does not verify",
    );
    let mut moved = sealed(&peer, 2, 1, b"one");
    moved.envelope.topic = Topic::Group(b"elsewhere".to_vec());
    refused(
        node.accept_replicated(vec![moved]).await,
        "seal does not verify",
    );
    let mut retimed = sealed(&peer, 2, 1, b"one");
    retimed.envelope.originator_time_ms = 1;
    refused(
        node.accept_replicated(vec![retimed]).await,
        "seal does not verify",
    );
    // An originator that is no peer, even self-consistently sealed.
    refused(
        node.accept_replicated(vec![sealed(&stranger, 3, 1, b"x")])
            .await,
        "not a configured peer",
    );
    // A gap.
    refused(
        node.accept_replicated(vec![good.clone(), sealed(&peer, 2, 3, b"three")])
            .await,
        "must not skip",
    );
    assert_eq!(
        node.heads().await.expect("heads"),
        Cursor::new(),
        "nothing stored"
    );

    // The good batch is stored, and again is a copy.
    assert_eq!(
        node.accept_replicated(vec![good.clone()])
            .await
            .expect("stored"),
        1
    );
    assert_eq!(
        node.accept_replicated(vec![good.clone()])
            .await
            .expect("copy"),
        0
    );
    let (page, _, _) = node
        .query("group/67", Cursor::new(), 0)
        .await
        .expect("query");
    assert_eq!(page, vec![good]);

    // The node serves its own, sealed by its key, to pullers.
    let own = node
        .publish(vec![("group/67".into(), b"mine".to_vec())])
        .await
        .expect("publish");
    let pulled = node.originated(1, 0, 10).await.expect("pull");
    assert_eq!(pulled, own);
    let key = ed25519_dalek::VerifyingKey::from_bytes(&node.public_key().await.expect("key"))
        .expect("valid key");
    let seal = ed25519_dalek::Signature::from_slice(&pulled[0].seal).expect("64 bytes");
    key.verify_strict(&pulled[0].envelope.seal_input(), &seal)
        .expect("the node's seal verifies under its published key");
}

/// An installation's key packages live on the node it uploaded them to;
/// a fetch through another node is forwarded there. Two fetches at once,
/// through each node, get the one-time package once between them (the
/// other gets the last-resort one), and a fetch after that through the
/// other node gets the last-resort one again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_packages_are_handed_out_once_through_any_node() {
    let root = tempfile::tempdir().expect("temporary directory");
    let mut nodes = cluster(root.path(), 2);
    start(&mut nodes, 0, &[]);
    start(&mut nodes, 1, &[]);
    let one = GrpcClient::connect_lazy(&nodes[0].url()).expect("client");
    let two = GrpcClient::connect_lazy(&nodes[1].url()).expect("client");
    let (alice, bob) = (Identity::new(11), Identity::new(12));
    // Bob's home is node one; Alice registers through node two, and node
    // one must know her before it takes her request.
    bob.register(&one).await;
    alice.register(&two).await;
    wait_for_logs(&one, &[&alice]).await;
    let one_time = bob.key_package(false);
    let last_resort = bob.key_package(true);
    bob.upload(&one, vec![one_time.clone()], last_resort.clone())
        .await;

    let (a, b) = tokio::join!(alice.fetch(&one, &bob), alice.fetch(&two, &bob));
    let mut got: Vec<(Vec<u8>, bool)> = [a, b]
        .into_iter()
        .map(|f| {
            let package = f.key_package.expect("a package through either node");
            (package.bytes, package.last_resort)
        })
        .collect();
    got.sort_by_key(|(_, last_resort)| *last_resort);
    assert_eq!(
        got,
        [(one_time, false), (last_resort.clone(), true)],
        "the one-time package went out once"
    );
    let again = alice
        .fetch(&two, &bob)
        .await
        .key_package
        .expect("a package");
    assert_eq!((again.bytes, again.last_resort), (last_resort, true));
}

/// Wait until `client`'s node serves a log for each of `who`.
async fn wait_for_logs(client: &GrpcClient, who: &[&Identity]) {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let logs = client
            .identity_updates(who.iter().map(|i| (i.wallet.inbox_id(), 0)).collect())
            .await
            .expect("identity logs");
        if logs.len() == who.len() && logs.iter().all(|log| !log.is_empty()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the identity logs never replicated"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deniable packages, whose requests only the asked node can check, still
/// come from their home node alone: the asked node vouches for the request
/// to its peers. Two fetches at once through both nodes get the one-time
/// package once; the home node's last-resort package answers the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deniable_key_packages_are_handed_out_once_through_any_node() {
    let root = tempfile::tempdir().expect("temporary directory");
    let mut nodes = cluster(root.path(), 2);
    start(&mut nodes, 0, &[]);
    start(&mut nodes, 1, &[]);
    let one = GrpcClient::connect_lazy(&nodes[0].url()).expect("client");
    let two = GrpcClient::connect_lazy(&nodes[1].url()).expect("client");
    let (alice, bob) = (Identity::new(21), Identity::new(22));
    bob.register(&one).await;
    alice.register(&two).await;
    wait_for_logs(&one, &[&alice, &bob]).await;
    wait_for_logs(&two, &[&alice, &bob]).await;
    let one_time = bob.deniable_package(false);
    let last_resort = bob.deniable_package(true);
    bob.upload_deniable(&one, vec![one_time.clone()], Some(last_resort.clone()))
        .await;

    let (a, b) = tokio::join!(
        alice.fetch_deniable(&one, &bob),
        alice.fetch_deniable(&two, &bob)
    );
    let mut got: Vec<(Vec<u8>, bool)> = [a, b]
        .into_iter()
        .map(|fetched| {
            let mut fetched = fetched.expect("a deniable fetch through either node");
            assert_eq!(fetched.len(), 1, "one package per installation of Bob");
            assert_eq!(fetched[0].installation, bob.keys.id());
            let package = fetched.remove(0).key_package.expect("a package");
            (package.bytes, package.last_resort)
        })
        .collect();
    got.sort_by_key(|(_, last_resort)| *last_resort);
    assert_eq!(
        got,
        [(one_time, false), (last_resort.clone(), true)],
        "the one-time deniable package went out once"
    );
    let again = alice.fetch_deniable(&two, &bob).await.expect("fetch");
    let again = again[0]
        .key_package
        .clone()
        .expect("the last-resort package");
    assert_eq!((again.bytes, again.last_resort), (last_resort, true));

    // With the home node down, the asked node has nothing to give, and
    // says so rather than failing.
    kill(&mut nodes[0]);
    let fetched = alice.fetch_deniable(&two, &bob).await.expect("fetch");
    assert_eq!(fetched.len(), 1);
    assert!(
        fetched[0].key_package.is_none(),
        "no package without its home node"
    );
}

/// A node hands out deniable packages for a forwarded fetch only when a
/// configured peer signed it, freshly, and only for the installations it
/// names; a forgery takes nothing from the pool.
#[tokio::test]
async fn a_forwarded_deniable_fetch_needs_a_peers_fresh_signature() {
    use kith_transport::{
        client::LocalNode,
        node::{ForwardedDeniableFetch, forwarded_deniable_fetch_bytes},
    };
    let peer_key = SigningKey::from_bytes(&[7; 32]);
    let logic = std::sync::Arc::new(node_with_peer(&peer_key));
    let node = LocalNode::new(std::sync::Arc::clone(&logic));
    let (alice, bob) = (Identity::new(31), Identity::new(32));
    alice.register(&node).await;
    bob.register(&node).await;
    let one_time = bob.deniable_package(false);
    bob.upload_deniable(&node, vec![one_time.clone()], None)
        .await;

    let forward = |signer: &SigningKey, node_id: u32, timestamp_ms: u64| {
        let installations = vec![bob.keys.id()];
        let signed = forwarded_deniable_fetch_bytes(
            node_id,
            timestamp_ms,
            &alice.wallet.inbox_id(),
            &alice.keys.id(),
            &bob.wallet.inbox_id(),
            &installations,
        );
        ForwardedDeniableFetch {
            node_id,
            timestamp_ms,
            requester_inbox: alice.wallet.inbox_id(),
            requester: alice.keys.id(),
            target: bob.wallet.inbox_id(),
            installations,
            signature: signer.sign(&signed).to_bytes().to_vec(),
        }
    };
    let now = common::now_ms();
    let stranger = SigningKey::from_bytes(&[8; 32]);
    let mut tampered = forward(&peer_key, 2, now);
    tampered.requester = bob.keys.id();
    for (case, forged) in [
        ("a stranger's key", forward(&stranger, 2, now)),
        ("not a peer", forward(&peer_key, 3, now)),
        ("this node's own id", forward(&peer_key, 1, now)),
        ("stale", forward(&peer_key, 2, now - 10 * 60 * 1000)),
        ("tampered after signing", tampered),
    ] {
        let refused = logic.fetch_forwarded_deniable(forged).await;
        assert!(
            matches!(refused, Err(NodeError::Unauthenticated(_))),
            "{case}: {refused:?}"
        );
    }
    let mut empty = forward(&peer_key, 2, now);
    empty.installations.clear();
    assert!(matches!(
        logic.fetch_forwarded_deniable(empty).await,
        Err(NodeError::InvalidArgument(_))
    ));

    let fetched = logic
        .fetch_forwarded_deniable(forward(&peer_key, 2, now))
        .await
        .expect("the peer's forward is served");
    assert_eq!(fetched.len(), 1);
    assert_eq!(fetched[0].installation, bob.keys.id());
    let package = fetched[0]
        .key_package
        .clone()
        .expect("the one-time package");
    assert_eq!((package.bytes, package.last_resort), (one_time, false));
    let again = logic
        .fetch_forwarded_deniable(forward(&peer_key, 2, now))
        .await
        .expect("served");
    assert!(again[0].key_package.is_none(), "handed out once");
}

/// Two devices register at once through different nodes with the same
/// sequence number: each node accepts its own, and once the mirrors have
/// replicated every node serves one log, whose update at that sequence is
/// the first mirror of it in canonical order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_registrations_on_two_nodes_end_on_one_log_everywhere() {
    use kith_engine::identity::{InstallationKeys, LocalWallet, UnsignedIdentityUpdate};
    use rand_core::SeedableRng as _;

    let root = tempfile::tempdir().expect("tempdir");
    let mut nodes = cluster(root.path(), 3);
    for i in 0..nodes.len() {
        // Slow enough that each node accepts its own update before it
        // sees the other's.
        start(&mut nodes, i, &["--replication-delay-ms", "300"]);
    }
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
    let wallet = LocalWallet::generate(&mut rng);
    let inbox = wallet.inbox_id();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64;
    let update = |keys: &InstallationKeys, sequence: u64| {
        let unsigned = UnsignedIdentityUpdate::add_installation(inbox, keys, sequence, now);
        let signature = wallet.sign_personal(unsigned.signature_text().as_bytes());
        unsigned.sign(signature, Some(keys))
    };
    let clients: Vec<GrpcClient> = nodes
        .iter()
        .map(|n| GrpcClient::connect_lazy(&n.url()).expect("client"))
        .collect();
    let log_on = |i: usize| {
        let client = clients[i].clone();
        async move {
            client
                .identity_updates(vec![(inbox, 0)])
                .await
                .expect("identity updates")
                .remove(0)
        }
    };

    let phone = InstallationKeys::generate(&mut rng);
    let first = update(&phone, 1);
    clients[0]
        .publish_identity_update(first.clone())
        .await
        .expect("register the phone on node 1");
    let deadline = Instant::now() + CONVERGE;
    for i in 0..3 {
        while log_on(i).await.len() != 1 {
            assert!(
                Instant::now() < deadline,
                "node {} never got the phone",
                i + 1
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (laptop, tablet) = (
        InstallationKeys::generate(&mut rng),
        InstallationKeys::generate(&mut rng),
    );
    let (on_1, on_2) = (update(&laptop, 2), update(&tablet, 2));
    let (a, b) = tokio::join!(
        clients[0].publish_identity_update(on_1.clone()),
        clients[1].publish_identity_update(on_2.clone())
    );
    a.expect("node 1 accepts the laptop");
    b.expect("node 2 accepts the tablet");

    // The winner: the first mirror of sequence 2 on the identity topic.
    let winner = loop {
        let mirrors = clients[2]
            .query(&Topic::Identity(inbox), &Cursor::new(), 100)
            .await
            .expect("identity topic");
        let seconds: Vec<_> = mirrors
            .envelopes
            .iter()
            .filter_map(|e| kith_engine::identity::IdentityUpdate::from_bytes(&e.payload).ok())
            .filter(|u| u.unsigned.sequence == 2)
            .collect();
        if seconds.len() == 2 {
            break seconds[0].clone();
        }
        assert!(Instant::now() < deadline, "node 3 never got both mirrors");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let loser = if winner == on_1 { &on_2 } else { &on_1 };
    for i in 0..3 {
        loop {
            let log = log_on(i).await;
            if log.len() == 2 && log[1] == winner {
                assert_eq!(log[0], first);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {} serves {} updates{}, not the winner at 2",
                i + 1,
                log.len(),
                if log.get(1) == Some(loser) {
                    " with the loser at 2"
                } else {
                    ""
                }
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
