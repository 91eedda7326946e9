//! Several `kith-node` processes over one PostgreSQL database (issue 22):
//! one strong order, subscriptions that see every process's envelopes,
//! nothing acknowledged lost to SIGKILL, and a database restart survived.
//!
//! Each test uses a database of its own on the server `DATABASE_URL` names
//! (`.ci/run` starts one); without it they print one line and skip. The
//! restart test starts a server of its own with `scripts/local-postgres`,
//! so that stopping it disturbs no other test.

#[path = "common/cluster.rs"]
mod cluster;
mod common;
#[path = "../../storage-pg/tests/common/mod.rs"]
mod pg;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::Command,
    time::Duration,
};

use kith_transport::proto::{self, node_client::NodeClient};
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

/// A node process over one database, as originator 1; killed on drop.
type NodeProcess = cluster::Standalone;

fn start(database_url: &str) -> NodeProcess {
    cluster::standalone_with(&["--database-url", database_url])
}

async fn connect(node: &NodeProcess) -> NodeClient<Channel> {
    NodeClient::connect(node.url.clone())
        .await
        .expect("connect")
}

fn topic(n: usize) -> String {
    format!("group/0{n}")
}

/// Publish `batches` batches of `size` through `node`, payloads tagged
/// with `tag`; the acknowledged envelopes.
async fn publish(
    node: &NodeProcess,
    tag: &str,
    batches: usize,
    size: usize,
) -> Vec<proto::Envelope> {
    let mut client = connect(node).await;
    let mut acknowledged = Vec::new();
    for batch in 0..batches {
        let envelopes = (0..size)
            .map(|i| proto::PublishedEnvelope {
                topic: topic(i % 3),
                payload: format!("{tag}-{batch}-{i}").into_bytes(),
            })
            .collect();
        let response = client
            .publish_envelopes(proto::PublishEnvelopesRequest { envelopes })
            .await
            .expect("publish");
        acknowledged.extend(response.into_inner().envelopes);
    }
    acknowledged
}

/// Subscribe through `node` to the three topics from the start, and
/// collect until `expected` envelopes arrived (or 30 s passed).
async fn collect(url: String, expected: usize) -> Vec<proto::Envelope> {
    let mut client = NodeClient::connect(url).await.expect("connect");
    let mut stream = client
        .subscribe_envelopes(proto::SubscribeEnvelopesRequest {
            topics: (0..3)
                .map(|t| proto::TopicCursor {
                    topic: topic(t),
                    cursor: None,
                })
                .collect(),
        })
        .await
        .expect("subscribe")
        .into_inner();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got.len() < expected {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(page))) => got.extend(page.envelopes),
            Ok(Some(Err(e))) => panic!("subscription failed: {e}"),
            Ok(None) => panic!("the subscription ended after {} envelopes", got.len()),
            Err(_) => panic!("only {} of {expected} envelopes within 30 s", got.len()),
        }
    }
    got
}

/// Every envelope once, each topic's in sequence order, and the sequence
/// ids over all topics exactly 1..=n.
fn assert_one_order(seen: &[proto::Envelope], published: &[proto::Envelope], who: &str) {
    let ids: BTreeSet<u64> = seen.iter().map(|e| e.originator_sequence_id).collect();
    assert_eq!(ids.len(), seen.len(), "{who}: an envelope arrived twice");
    let n = published.len() as u64;
    assert_eq!(
        ids,
        (1..=n).collect::<BTreeSet<u64>>(),
        "{who}: sequence ids are not exactly 1..={n} (a gap or a stranger)"
    );
    for t in 0..3 {
        let sequences: Vec<u64> = seen
            .iter()
            .filter(|e| e.topic == topic(t))
            .map(|e| e.originator_sequence_id)
            .collect();
        assert!(
            sequences.windows(2).all(|w| w[0] < w[1]),
            "{who}: topic {t} out of order: {sequences:?}"
        );
    }
    let by_id: BTreeMap<u64, &proto::Envelope> = published
        .iter()
        .map(|e| (e.originator_sequence_id, e))
        .collect();
    for envelope in seen {
        assert_eq!(
            by_id
                .get(&envelope.originator_sequence_id)
                .map(|e| &e.payload),
            Some(&envelope.payload),
            "{who}: envelope {} is not what was acknowledged",
            envelope.originator_sequence_id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_node_processes_over_one_database_serve_one_order() {
    let Some(db) = pg::TestDatabase::create("two_node_processes_over_one_database_serve_one_order")
    else {
        return;
    };
    let (a, b) = (start(&db.url), start(&db.url));
    const BATCHES: usize = 40;
    const SIZE: usize = 5;
    let total = 2 * 2 * BATCHES * SIZE;
    // Subscribers on both processes from the start, live while the
    // publishers run.
    let (watch_a, watch_b) = (collect(a.url.clone(), total), collect(b.url.clone(), total));
    let watchers = tokio::spawn(async move { tokio::join!(watch_a, watch_b) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Two publishers through each process, at once.
    let (p1, p2, p3, p4) = tokio::join!(
        publish(&a, "a1", BATCHES, SIZE),
        publish(&a, "a2", BATCHES, SIZE),
        publish(&b, "b1", BATCHES, SIZE),
        publish(&b, "b2", BATCHES, SIZE),
    );
    let published: Vec<proto::Envelope> = [p1, p2, p3, p4].concat();
    assert_eq!(published.len(), total);
    let (seen_a, seen_b) = tokio::time::timeout(Duration::from_secs(60), watchers)
        .await
        .expect("the subscribers finish")
        .expect("subscribers");
    assert_one_order(&seen_a, &published, "subscriber on process A");
    assert_one_order(&seen_b, &published, "subscriber on process B");
    // Each topic in the same order on both.
    for t in 0..3 {
        let order = |seen: &[proto::Envelope]| -> Vec<u64> {
            seen.iter()
                .filter(|e| e.topic == topic(t))
                .map(|e| e.originator_sequence_id)
                .collect()
        };
        assert_eq!(order(&seen_a), order(&seen_b), "topic {t} differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_under_load_loses_no_acknowledged_envelope() {
    let Some(db) =
        pg::TestDatabase::create("a_process_killed_under_load_loses_no_acknowledged_envelope")
    else {
        return;
    };
    let survivor = start(&db.url);
    let mut victim = start(&db.url);
    let victim_url = victim.url.clone();
    let load = tokio::spawn(async move {
        let mut client = NodeClient::connect(victim_url).await.expect("connect");
        let mut acknowledged = Vec::new();
        for batch in 0u32.. {
            let envelopes = (0..10u32)
                .map(|i| proto::PublishedEnvelope {
                    topic: topic(0),
                    payload: format!("v-{batch}-{i}").into_bytes(),
                })
                .collect();
            match client
                .publish_envelopes(proto::PublishEnvelopesRequest { envelopes })
                .await
            {
                Ok(response) => acknowledged.extend(response.into_inner().envelopes),
                Err(_) => return acknowledged, // the process died
            }
        }
        acknowledged
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    victim.child.kill().expect("kill -9");
    victim.child.wait().expect("reap");
    let acknowledged = load.await.expect("load");
    assert!(!acknowledged.is_empty(), "the load acknowledged something");
    println!(
        "SIGKILL after {} acknowledged envelopes",
        acknowledged.len()
    );

    // The other process serves every acknowledged envelope, unchanged, and
    // goes on with the sequence.
    let mut client = connect(&survivor).await;
    let mut stored = Vec::new();
    let mut cursor = None;
    loop {
        let page = client
            .query_envelopes(proto::QueryEnvelopesRequest {
                topic: topic(0),
                cursor: cursor.clone(),
                limit: 1000,
            })
            .await
            .expect("query")
            .into_inner();
        stored.extend(page.envelopes);
        cursor = page.next_cursor;
        if !page.more {
            break;
        }
    }
    let by_id: BTreeMap<u64, &proto::Envelope> = stored
        .iter()
        .map(|e| (e.originator_sequence_id, e))
        .collect();
    for envelope in &acknowledged {
        assert_eq!(
            by_id.get(&envelope.originator_sequence_id),
            Some(&envelope),
            "acknowledged envelope {} is gone or changed",
            envelope.originator_sequence_id
        );
    }
    let next = client
        .publish_envelopes(proto::PublishEnvelopesRequest {
            envelopes: vec![proto::PublishedEnvelope {
                topic: topic(0),
                payload: b"after the kill".to_vec(),
            }],
        })
        .await
        .expect("publish through the survivor")
        .into_inner()
        .envelopes;
    let highest = stored
        .iter()
        .map(|e| e.originator_sequence_id)
        .max()
        .unwrap_or(0);
    assert_eq!(
        next[0].originator_sequence_id,
        highest + 1,
        "no gap, no reuse"
    );
}

/// `scripts/local-postgres`, from the workspace.
fn local_postgres(action: &str, dir: &Path) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/local-postgres");
    let output = Command::new(script)
        .arg(action)
        .arg(dir)
        .output()
        .expect("run scripts/local-postgres");
    assert!(
        output.status.success(),
        "scripts/local-postgres {action} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_under_a_running_node_loses_nothing_acknowledged() {
    // This test stops its server, so it runs one of its own; it needs
    // the PostgreSQL server binaries, which CI has (DATABASE_URL set).
    if std::env::var_os("DATABASE_URL").is_none() {
        println!(
            "skipped a_database_restart_under_a_running_node_loses_nothing_acknowledged: \
             DATABASE_URL is not set (no PostgreSQL for the tests here)"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let server = dir.path().join("pg");
    let url = local_postgres("start", &server);
    struct Stop<'a>(&'a Path);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/local-postgres");
            let _ = Command::new(script).arg("stop").arg(self.0).output();
        }
    }
    let _stop = Stop(&server);
    let node = start(&url);
    let before = publish(&node, "before", 5, 4).await;

    local_postgres("stop", &server);
    let mut client = connect(&node).await;
    let refused = client
        .publish_envelopes(proto::PublishEnvelopesRequest {
            envelopes: vec![proto::PublishedEnvelope {
                topic: topic(0),
                payload: b"while down".to_vec(),
            }],
        })
        .await
        .expect_err("the database is down");
    assert_eq!(
        refused.code(),
        tonic::Code::Unavailable,
        "a down database is reported unavailable: {refused}"
    );

    local_postgres("start", &server);
    // The node reconnects by itself: a publish succeeds within a few tries.
    let mut after = None;
    for _ in 0..50 {
        match client
            .publish_envelopes(proto::PublishEnvelopesRequest {
                envelopes: vec![proto::PublishedEnvelope {
                    topic: topic(0),
                    payload: b"after the restart".to_vec(),
                }],
            })
            .await
        {
            Ok(response) => {
                after = Some(response.into_inner().envelopes);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let after = after.expect("the node recovers once the database is back");
    let highest = before
        .iter()
        .map(|e| e.originator_sequence_id)
        .max()
        .unwrap_or(0);
    assert_eq!(after[0].originator_sequence_id, highest + 1);
    let mut all = Vec::new();
    for t in 0..3 {
        let page = client
            .query_envelopes(proto::QueryEnvelopesRequest {
                topic: topic(t),
                cursor: None,
                limit: 1000,
            })
            .await
            .expect("query")
            .into_inner();
        all.extend(page.envelopes);
    }
    for envelope in &before {
        assert!(
            all.contains(envelope),
            "envelope {} lost",
            envelope.originator_sequence_id
        );
    }
}

/// Two nodes over one database share the fetch limits: what a requester
/// takes of a target through one counts on the other, and key packages are
/// handed out once across both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_key_packages_hold_across_processes() {
    use kith_storage_pg::PgNodeStore;
    use kith_transport::{
        client::LocalNode,
        node::{NodeConfig, NodeLogic},
    };
    let Some(db) = pg::TestDatabase::create("rate_limits_and_key_packages_hold_across_processes")
    else {
        return;
    };
    // Two node logics, each with its own pool and listener: two processes
    // but for the address space.
    let open = |url: String| async move {
        tokio::task::spawn_blocking(move || {
            let store = PgNodeStore::connect(&url).expect("connect");
            LocalNode::new(std::sync::Arc::new(NodeLogic::new(
                NodeConfig::new(1),
                store,
            )))
        })
        .await
        .expect("open a node")
    };
    let (a, b) = (open(db.url.clone()).await, open(db.url.clone()).await);
    let attacker = common::Identity::new(31);
    let victim = common::Identity::new(32);
    attacker.register(&a).await;
    victim.register(&b).await;
    let pool: Vec<Vec<u8>> = (0..20).map(|_| victim.key_package(false)).collect();
    victim
        .upload(&a, pool.clone(), victim.key_package(true))
        .await;

    // The default pair bucket holds 5: 3 through A, then only 2 through B.
    let mut handed = Vec::new();
    for _ in 0..3 {
        handed.push(attacker.fetch(&a, &victim).await);
    }
    let mut through_b = 0;
    loop {
        match attacker.try_fetch(&b, &victim).await {
            Ok(fetched) => {
                handed.push(fetched);
                through_b += 1;
                assert!(through_b <= 5, "process B ignored what A charged");
            }
            Err(e) => {
                assert!(
                    e.to_string().contains("rate limit"),
                    "refused for a rate limit: {e}"
                );
                break;
            }
        }
    }
    assert_eq!(
        through_b, 2,
        "the pair's burst of 5 holds across both processes"
    );
    // Every package handed out is a distinct one-time package of the pool.
    let bytes: BTreeSet<Vec<u8>> = handed
        .iter()
        .map(|f| {
            let package = f.key_package.as_ref().expect("a package");
            assert!(!package.last_resort);
            package.bytes.clone()
        })
        .collect();
    assert_eq!(bytes.len(), 5, "no package handed out twice");
    assert!(bytes.iter().all(|b| pool.contains(b)));
}
