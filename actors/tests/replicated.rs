//! Kith on replicating nodes, as real processes: three `kith-node`s that
//! replicate over loopback with injected delay and jitter, and six clients
//! of the actor API spread over them. They race commits and send messages
//! at once; the commits reach members in different orders, members roll
//! back and replay, and everyone ends on one state with every message once.

#[path = "../../transport/tests/common/cluster.rs"]
mod cluster;
mod common;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use cluster::{Node, cluster, start};
use common::{remote_client, wallet};
use futures::StreamExt as _;
use kith::{Client, Conversation, Event, GroupOptions, LocalWallet};

/// The settle window the nodes announce; the injected replication delay
/// (40 ms plus up to 60 ms of jitter) stays inside it.
const SETTLE_WINDOW_MS: &str = "500";
/// How long the test waits for the members to agree.
const CONVERGE: Duration = Duration::from_secs(60);

/// Every event a client emits, kept for the asserts.
fn record(client: &Client) -> Arc<Mutex<Vec<Event>>> {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    let mut stream = client.stream_events();
    tokio::spawn(async move {
        while let Some(event) = stream.next().await {
            sink.lock().expect("events").push(event);
        }
    });
    events
}

/// Retry `f` until it succeeds (a peer's identity log or key packages may
/// still be on their way between nodes).
async fn eventually<T, E: std::fmt::Debug, F: std::future::Future<Output = Result<T, E>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + CONVERGE;
    loop {
        match f().await {
            Ok(value) => return value,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(?e, "{what}: not yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{what}: {e:?}"),
        }
    }
}

/// Sync everyone until all members show one epoch, authenticator and name.
async fn converge(groups: &[Conversation]) -> (u64, Vec<u8>) {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let mut states = BTreeMap::new();
        for (i, group) in groups.iter().enumerate() {
            let _ = group.sync().await;
            let state = group.epoch_state().await.expect("epoch");
            let name = group.metadata().await.expect("metadata").name;
            states.insert(i, (state, name));
        }
        let first = states[&0].clone();
        if states.values().all(|s| *s == first) {
            return first.0;
        }
        assert!(
            Instant::now() < deadline,
            "the members did not agree within {CONVERGE:?}: {states:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn six_clients_on_three_replicating_nodes_race_and_agree() {
    let root = tempfile::tempdir().expect("temporary directory");
    let mut nodes: Vec<Node> = cluster(&root.path().join("nodes"), 3);
    let flags = [
        "--settle-window-ms",
        SETTLE_WINDOW_MS,
        "--replication-delay-ms",
        "40",
        "--replication-jitter-ms",
        "60",
    ];
    for i in 0..nodes.len() {
        start(&mut nodes, i, &flags);
    }
    let urls = |home: usize| -> Vec<String> {
        (0..nodes.len())
            .map(|k| nodes[(home + k) % nodes.len()].url())
            .collect()
    };
    let wallets: Vec<LocalWallet> = (0..6).map(|_| wallet()).collect();
    let mut clients = Vec::new();
    for (i, w) in wallets.iter().enumerate() {
        clients.push(remote_client(root.path(), &format!("c{i}"), w, urls(i % 3)).await);
    }
    let events: Vec<_> = clients.iter().map(record).collect();

    let others: Vec<_> = wallets[1..].iter().map(LocalWallet::inbox_id).collect();
    let group = eventually("create the group", || {
        clients[0].create_group(&others, GroupOptions::default().name("start"))
    })
    .await;
    let id = group.id().clone();
    let mut groups = vec![group];
    for client in &clients[1..] {
        let joined = eventually("join", || async {
            client.sync().await?;
            client.conversation(&id).await
        })
        .await;
        groups.push(joined);
    }
    converge(&groups).await;

    // Rounds of racing renames on three nodes while the others send, until
    // some member had to roll back (each round almost always does).
    let mut sent = Vec::new();
    let rolled_back = |events: &[Arc<Mutex<Vec<Event>>>]| {
        events.iter().any(|e| {
            e.lock()
                .expect("events")
                .iter()
                .any(|e| matches!(e, Event::RolledBack { .. }))
        })
    };
    for round in 0..6 {
        let renames = (0..3).map(|i| {
            let group = &groups[i];
            async move {
                // Pending is fine: the change is queued and goes out later.
                let _ = group.update_name(&format!("round {round} by {i}")).await;
            }
        });
        let texts: Vec<String> = (3..6).map(|i| format!("round {round} from {i}")).collect();
        let sends = texts.iter().enumerate().map(|(k, text)| {
            let group = &groups[3 + k];
            async move { group.send_text(text).await.expect("send") }
        });
        let (_, ids) = tokio::join!(
            futures::future::join_all(renames),
            futures::future::join_all(sends)
        );
        assert_eq!(ids.len(), texts.len());
        sent.extend(texts);
        if round >= 1 && rolled_back(&events) {
            break;
        }
    }
    let (epoch, _) = converge(&groups).await;
    let rollbacks: usize = events
        .iter()
        .map(|e| {
            e.lock()
                .expect("events")
                .iter()
                .filter(|e| matches!(e, Event::RolledBack { .. }))
                .count()
        })
        .sum();
    eprintln!(
        "replicated: {} messages, epoch {epoch}, {rollbacks} rollbacks across the six clients",
        sent.len()
    );
    assert!(epoch > 1, "the renames moved the group on");
    assert!(
        rolled_back(&events),
        "no member rolled back: the commits never raced"
    );

    // Every member has every message once.
    sent.sort();
    for (i, group) in groups.iter().enumerate() {
        let mut texts: Vec<String> = group
            .messages()
            .await
            .expect("messages")
            .iter()
            .filter_map(|m| m.text().map(str::to_owned))
            .collect();
        texts.sort();
        assert_eq!(texts, sent, "client {i} has every message once");
    }
}
