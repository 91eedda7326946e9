//! Convergence on replicating nodes: how long from a commit until every
//! member shows it, against the replication lag between the nodes, and how
//! often racing commits make members roll back.
//!
//! Three originator nodes on sled, in this process, each serving gRPC on
//! loopback and pulling its two peers' envelopes with a fixed injected lag
//! (0, 50 or 200 ms per replicated batch; the settle window is the default
//! 1,000 ms). Six clients of the actor API (sled stores), two at home on
//! each node, in one group. Their periodic timers are stretched to an
//! hour (`kith_benches::stretched_timers`; the run prints a note with its
//! figures): no periodic re-sync runs, so members learn of a commit by
//! push alone.
//!
//! - **one commit**: a member renames the group (the committer turns with
//!   each iteration).
//! - **two racing commits**: members at home on two different nodes rename
//!   at once; the loser is rebuilt on the winner and committed again, so
//!   the group ends two epochs on. The rollbacks the clients report are
//!   counted.
//!
//! Timed: from the call until the last member's last change of state (a
//! `MetadataChanged` or `RolledBack` event), read from the event streams'
//! timestamps once the renames returned and all six members were seen to
//! agree on one epoch authenticator. A member's view cannot be polled
//! meanwhile: a group actor answers nothing else while a change of its own
//! waits for its commit to settle.
//!
//! The raw-OpenMLS baseline is the compute floor of one commit reaching a
//! member: a member of a group of six commits an update and another
//! processes and merges it, on `openmls_memory_storage`, with no network.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use criterion::{Criterion, SamplingMode};
use ed25519_dalek::SigningKey;
use kith::{Client, ClientConfig, Conversation, Event, GroupOptions};
use kith_benches::{
    Pair, Recorder, STRETCHED_TIMERS_NOTE, bench_timed, key_packages, stretched_timers,
};
use kith_engine::delivery::NodeStore as _;
use kith_storage::SledNodeStore;
use kith_transport::node::{
    BucketLimit, NodeConfig, NodeLimits, NodeLogic, Peer, ReplicationDelay, serve,
    spawn_replicators,
};
use openmls_rust_crypto::OpenMlsRustCrypto;
use tokio_stream::StreamExt as _;

const ONE: &str = "one commit until six members agree";
const RACE: &str = "two racing commits until six members agree";
const RAW: &str = "raw OpenMLS";
/// How long one convergence may take before the run is called broken.
const GIVE_UP: Duration = Duration::from_secs(60);

fn seed(id: u32) -> [u8; 32] {
    [u8::try_from(id).expect("small id"); 32]
}

/// Three replicating nodes with `lag`, six clients, one group.
struct Network {
    _clients: Vec<Client>,
    groups: Vec<Conversation>,
    rollbacks: Arc<AtomicU64>,
    /// When each member last changed state (metadata, or a rollback).
    changed: Vec<Arc<Mutex<Option<Instant>>>>,
    _dir: tempfile::TempDir,
}

async fn network(lag: Duration) -> Network {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut listeners = Vec::new();
    for _ in 0..3 {
        listeners.push(
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind"),
        );
    }
    let urls: Vec<String> = listeners
        .iter()
        .map(|l| format!("http://{}", l.local_addr().expect("address")))
        .collect();
    let unlimited = BucketLimit {
        burst: 1_000_000,
        per_minute: 1_000_000,
    };
    for (i, listener) in listeners.into_iter().enumerate() {
        let id = u32::try_from(i + 1).expect("small id");
        let store = SledNodeStore::open(dir.path().join(format!("node-{id}"))).expect("store");
        store.node_signing_seed(seed(id)).expect("seed");
        let peers = (1..=3u32)
            .filter(|peer| *peer != id)
            .map(|peer| Peer {
                node_id: peer,
                public_key: SigningKey::from_bytes(&seed(peer)).verifying_key(),
                url: urls[peer as usize - 1].clone(),
            })
            .collect();
        let config = NodeConfig {
            peers,
            limits: NodeLimits {
                fetch_per_requester: unlimited,
                fetch_per_target: unlimited,
                fetch_per_pair: unlimited,
                ..NodeLimits::default()
            },
            ..NodeConfig::new(id)
        };
        let logic = Arc::new(NodeLogic::new(config, store));
        spawn_replicators(
            &logic,
            ReplicationDelay {
                fixed: lag,
                jitter: Duration::ZERO,
            },
        );
        tokio::spawn(async move {
            let _ = serve(listener, logic, std::future::pending()).await;
        });
    }
    let rollbacks = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    let mut changed = Vec::new();
    for i in 0..6 {
        let home: Vec<String> = (0..3).map(|k| urls[(i + k) % 3].clone()).collect();
        let client = Client::builder()
            .wallet(kith::LocalWallet::generate(&mut rand_core::OsRng))
            .data_dir(dir.path().join(format!("client-{i}")))
            .node(home)
            .config(stretched_timers(ClientConfig::default()))
            .build()
            .await
            .expect("client");
        client.register().await.expect("register");
        let mut events = client.stream_events();
        let counter = Arc::clone(&rollbacks);
        let last = Arc::new(Mutex::new(None));
        changed.push(Arc::clone(&last));
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                let at = Instant::now();
                match event {
                    Event::RolledBack { .. } => {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    Event::MetadataChanged { .. } => {}
                    _ => continue,
                }
                *last.lock().expect("lock") = Some(at);
            }
        });
        clients.push(client);
    }
    let inboxes: Vec<_> = clients[1..].iter().map(Client::inbox_id).collect();
    let group = retry(|| clients[0].create_group(&inboxes, GroupOptions::default())).await;
    let id = group.id().clone();
    let mut groups = vec![group];
    for client in &clients[1..] {
        groups.push(
            retry(|| async {
                client.sync().await?;
                client.conversation(&id).await
            })
            .await,
        );
    }
    let network = Network {
        _clients: clients,
        groups,
        rollbacks,
        changed,
        _dir: dir,
    };
    network.agree(|_| true).await;
    network
}

/// Retry `f` until it succeeds (identities and key packages replicate).
async fn retry<T, E: std::fmt::Debug, F: std::future::Future<Output = Result<T, E>>>(
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + GIVE_UP;
    loop {
        match f().await {
            Ok(value) => return value,
            Err(e) => {
                assert!(Instant::now() < deadline, "gave up: {e:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

impl Network {
    /// Poll until every member shows one epoch authenticator and `done`
    /// holds for it (given the epoch and the name).
    async fn agree(&self, done: impl Fn((u64, Option<&str>)) -> bool) {
        let deadline = Instant::now() + GIVE_UP;
        loop {
            let mut states = Vec::new();
            for group in &self.groups {
                let state = group.epoch_state().await.expect("epoch");
                let name = group.metadata().await.expect("metadata").name;
                states.push((state, name));
            }
            let first = &states[0];
            if states.iter().all(|s| s == first) && done((first.0.0, first.1.as_deref())) {
                return;
            }
            assert!(Instant::now() < deadline, "no agreement: {states:?}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn epoch(&self) -> u64 {
        self.groups[0].epoch_state().await.expect("epoch").0
    }

    /// The time from `start` to the last member's last change of state.
    fn converged_after(&self, start: Instant) -> Duration {
        self.changed
            .iter()
            .filter_map(|last| *last.lock().expect("lock"))
            .max()
            .map_or(Duration::ZERO, |last| last.saturating_duration_since(start))
    }

    /// One commit by member `by`: the time until every member shows it.
    async fn one_commit(&self, by: usize, round: u64) -> Duration {
        let name = format!("one {round}");
        let start = Instant::now();
        self.groups[by].update_name(&name).await.expect("rename");
        self.agree(|(_, current)| current == Some(name.as_str()))
            .await;
        self.converged_after(start)
    }

    /// Members `a` and `b` (at home on different nodes) rename at once:
    /// the time until every member shows both renames.
    async fn racing_commits(&self, (a, b): (usize, usize), round: u64) -> Duration {
        let before = self.epoch().await;
        let start = Instant::now();
        let (name_a, name_b) = (format!("race {round} {a}"), format!("race {round} {b}"));
        // The loser's rename may still be pending when its call returns;
        // it goes out by itself, and the agreement below waits for it.
        let _ = tokio::join!(
            self.groups[a].update_name(&name_a),
            self.groups[b].update_name(&name_b)
        );
        self.agree(|(epoch, _)| epoch >= before + 2).await;
        self.converged_after(start)
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let recorder = Recorder::default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    let mut pair = Pair::new(
        OpenMlsRustCrypto::default(),
        OpenMlsRustCrypto::default(),
        b"convergence baseline",
        &key_packages(4),
    );
    let raw = |pair: &mut Pair<OpenMlsRustCrypto>| {
        let start = Instant::now();
        pair.update_and_process();
        start.elapsed()
    };
    let mut races = Vec::new();
    for lag_ms in [0u64, 50, 200] {
        let network = runtime.block_on(network(Duration::from_millis(lag_ms)));
        let lag = format!("lag {lag_ms} ms");
        let mut round = 0u64;
        for operation in [ONE, RACE] {
            let name = format!("{operation}, {lag}");
            let mut group = c.benchmark_group(&name);
            group
                .sampling_mode(SamplingMode::Flat)
                .sample_size(10)
                .warm_up_time(Duration::from_millis(1))
                .measurement_time(Duration::from_millis(10));
            bench_timed(&mut group, &recorder, (&name, RAW), || raw(&mut pair));
            let rollbacks_before = network.rollbacks.load(Ordering::Relaxed);
            let mut rounds = 0u64;
            bench_timed(&mut group, &recorder, (&name, "kith"), || {
                round += 1;
                rounds += 1;
                runtime.block_on(async {
                    if operation == ONE {
                        network.one_commit((round % 6) as usize, round).await
                    } else {
                        // Home nodes: client i is at home on node i % 3.
                        let a = (round % 3) as usize;
                        network.racing_commits((a, (a + 1) % 3), round).await
                    }
                })
            });
            group.finish();
            if operation == RACE {
                let rollbacks = network.rollbacks.load(Ordering::Relaxed) - rollbacks_before;
                races.push((lag_ms, rounds, rollbacks));
            }
        }
        drop(network);
    }
    c.final_summary();
    recorder.print_ratios(RAW);
    println!("\n{STRETCHED_TIMERS_NOTE}");
    println!("\nrollbacks during racing commits (six members):");
    for (lag_ms, rounds, rollbacks) in races {
        println!(
            "  lag {lag_ms} ms: {rollbacks} rollbacks in {rounds} races = {:.2} per race",
            rollbacks as f64 / rounds.max(1) as f64
        );
    }
}
