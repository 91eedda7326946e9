//! The real `kith-node` binary: acknowledged envelopes survive `kill -9`
//! under concurrent load, and SIGTERM stops it gracefully even with an open
//! subscription.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use kith_transport::proto::{self, node_client::NodeClient};
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;

struct RunningNode {
    child: Child,
    address: String,
}

fn start(data_dir: &Path) -> RunningNode {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kith-node"))
        .args(["--listen", "127.0.0.1:0", "--node-id", "3", "--data-dir"])
        .arg(data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kith-node");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the listening line");
    let address = line
        .trim()
        .strip_prefix("kith-node listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    RunningNode { child, address }
}

async fn connect(node: &RunningNode) -> NodeClient<Channel> {
    NodeClient::connect(format!("http://{}", node.address))
        .await
        .expect("connect")
}

fn topic(p: usize) -> String {
    format!("group/0{p}")
}

async fn read_topic(client: &mut NodeClient<Channel>, topic: &str) -> Vec<proto::Envelope> {
    let mut cursor = None;
    let mut all = Vec::new();
    loop {
        let page = client
            .query_envelopes(proto::QueryEnvelopesRequest {
                topic: topic.into(),
                cursor: cursor.clone(),
                limit: 100,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_envelopes_survive_kill_9_under_load() {
    const PUBLISHERS: usize = 4;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut node = start(dir.path());
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let address = node.address.clone();
            tokio::spawn(async move {
                let mut client = NodeClient::connect(format!("http://{address}"))
                    .await
                    .expect("connect");
                let mut acknowledged = Vec::new();
                for batch in 0u32.. {
                    let envelopes = (0..10u32)
                        .map(|i| proto::PublishedEnvelope {
                            topic: topic(p),
                            payload: format!("{p}-{batch}-{i}").into_bytes(),
                        })
                        .collect();
                    match client
                        .publish_envelopes(proto::PublishEnvelopesRequest { envelopes })
                        .await
                    {
                        Ok(response) => acknowledged.extend(response.into_inner().envelopes),
                        Err(_) => return acknowledged, // the node died
                    }
                }
                acknowledged
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(1000)).await;
    node.child.kill().expect("kill -9"); // SIGKILL on Unix
    node.child.wait().expect("reap");

    let mut acknowledged = Vec::new();
    for publisher in publishers {
        acknowledged.push(publisher.await.expect("publisher"));
    }
    let total: usize = acknowledged.iter().map(Vec::len).sum();
    assert!(total > 0, "the load acknowledged something before the kill");
    println!("kill -9 after {total} acknowledged envelopes");

    let node = start(dir.path());
    let mut client = connect(&node).await;
    for (p, acked) in acknowledged.iter().enumerate() {
        let stored = read_topic(&mut client, &topic(p)).await;
        let by_sequence: BTreeMap<u64, &proto::Envelope> = stored
            .iter()
            .map(|e| (e.originator_sequence_id, e))
            .collect();
        for envelope in acked {
            assert_eq!(
                by_sequence.get(&envelope.originator_sequence_id),
                Some(&envelope),
                "acknowledged envelope {} is gone or changed",
                envelope.originator_sequence_id
            );
        }
        // Same order: the acknowledged ones appear in the order they were
        // acknowledged, and a cursor at the last acknowledged one returns
        // only later envelopes.
        let positions: Vec<usize> = acked
            .iter()
            .map(|a| stored.iter().position(|s| s == a).expect("present"))
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]));
        if let Some(last) = acked.last() {
            let after = client
                .query_envelopes(proto::QueryEnvelopesRequest {
                    topic: topic(p),
                    cursor: Some(proto::Cursor {
                        last_seen: [(3, last.originator_sequence_id)].into(),
                    }),
                    limit: 0,
                })
                .await
                .expect("query")
                .into_inner()
                .envelopes;
            assert!(
                after
                    .iter()
                    .all(|e| e.originator_sequence_id > last.originator_sequence_id)
            );
        }
    }
    // The restarted node continues the sequence.
    let next = client
        .publish_envelopes(proto::PublishEnvelopesRequest {
            envelopes: vec![proto::PublishedEnvelope {
                topic: topic(0),
                payload: b"after restart".to_vec(),
            }],
        })
        .await
        .expect("publish")
        .into_inner()
        .envelopes;
    let highest = acknowledged
        .iter()
        .flatten()
        .map(|e| e.originator_sequence_id)
        .max()
        .unwrap_or(0);
    assert!(next[0].originator_sequence_id > highest);
    stop(node).await;
}

#[tokio::test]
async fn sigterm_stops_the_node_gracefully_with_an_open_subscription() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start(dir.path());
    let mut client = connect(&node).await;
    let mut stream = client
        .subscribe_envelopes(proto::SubscribeEnvelopesRequest {
            topics: vec![proto::TopicCursor {
                topic: topic(1),
                cursor: None,
            }],
        })
        .await
        .expect("subscribe")
        .into_inner();
    client
        .publish_envelopes(proto::PublishEnvelopesRequest {
            envelopes: vec![proto::PublishedEnvelope {
                topic: topic(1),
                payload: b"x".to_vec(),
            }],
        })
        .await
        .expect("publish");
    let first = stream.next().await.expect("open").expect("batch");
    assert_eq!(first.envelopes.len(), 1);
    stop(node).await;
    let end = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("the stream ends");
    assert!(!matches!(end, Some(Ok(_))));
}

/// SIGTERM, then expect a clean exit within 10 seconds. Async, so that the
/// test's clients keep running and can answer the server's shutdown.
async fn stop(mut node: RunningNode) {
    let status = Command::new("kill")
        .args(["-TERM", &node.child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    for _ in 0..100 {
        if let Some(exit) = node.child.try_wait().expect("wait") {
            assert!(exit.success(), "kith-node exited with {exit}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = node.child.kill();
    panic!("kith-node did not stop within 10 s of SIGTERM");
}
