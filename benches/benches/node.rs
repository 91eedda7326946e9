//! The delivery-service node: batched publish plus query, and key-package
//! fetches, over loopback gRPC and through `LocalNode` (the same logic
//! in-process), both on sled with a flush before every acknowledgement.
//!
//! A fetch takes one of two paths, measured apart:
//!
//! - **one-time**: the target has one-time packages, and the fetch removes
//!   one atomically. The pool is re-supplied outside the timed part, 100
//!   packages at a time (a client's default pool), so that every timed
//!   fetch takes a one-time package; each is checked to be one of those
//!   uploaded, and each re-supply checks that the pool was empty, i.e.
//!   that every fetch removed exactly one.
//! - **last resort**: the target's one-time pool is empty, and the fetch
//!   hands out its last-resort package, which stays.
//!
//! A third backend is the same gRPC node on PostgreSQL (`kith-storage-pg`,
//! issue 22), against sled in the same run: on the server `DATABASE_URL`
//! names, or else on a throwaway one this benchmark starts with
//! `scripts/local-postgres` (fsync on, the Debian defaults otherwise), in a
//! database of its own. Every backend also times a single publish of one
//! envelope (its latency).
//!
//! There is no raw-OpenMLS equivalent of a delivery node, so the in-process
//! `LocalNode` is this benchmark's baseline: the printed ratio is the cost
//! of gRPC over loopback. Throughput is printed in envelopes (or fetches)
//! per second.

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use criterion::Criterion;
use kith_benches::{Recorder, bench_recorded, bench_timed};
use kith_engine::{
    delivery::{Cursor, NodeStore, Topic},
    identity::{InstallationKeys, LocalWallet, UnsignedIdentityUpdate, generate_key_package},
};
use kith_storage::SledNodeStore;
use kith_storage_pg::PgNodeStore;
use kith_transport::{
    client::{DeliveryClient, GrpcClient, LocalNode},
    node::{
        BucketLimit, FetchedKeyPackage, KeyPackageFetch, KeyPackageUpload, NodeConfig, NodeLimits,
        NodeLogic, fetch_signed_bytes, serve, upload_signed_bytes,
    },
};
use openmls::prelude::MlsMessageOut;
use openmls_rust_crypto::OpenMlsRustCrypto;
use rand_core::SeedableRng;

const BATCH: usize = 1_000;
const PUBLISH: &str = "publish 1,000 x 100 B + query them back";
const PUBLISH_ONE: &str = "publish 1 x 100 B (latency)";
const FETCH_ONE_TIME: &str = "fetch a key package: one-time (removed)";
const FETCH_LAST_RESORT: &str = "fetch a key package: last resort (kept)";
/// One-time packages per re-supply: a client's default pool
/// (`KeyPackagePolicy::target_pool`), so that the timed fetches see the
/// pool sizes a real installation's pool goes through between refills.
const SUPPLY: usize = 100;
const LOCAL: &str = "LocalNode (baseline)";
const GRPC: &str = "gRPC over loopback";
const GRPC_PG: &str = "gRPC, PostgreSQL";

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

struct Identity {
    wallet: LocalWallet,
    keys: InstallationKeys,
}

impl Identity {
    fn new(seed: u64) -> Self {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(seed);
        Self {
            wallet: LocalWallet::generate(&mut rng),
            keys: InstallationKeys::generate(&mut rng),
        }
    }

    async fn register(&self, client: &dyn DeliveryClient) {
        let request = UnsignedIdentityUpdate::add_installation(
            self.wallet.inbox_id(),
            &self.keys,
            1,
            now_ms(),
        );
        let signature = self
            .wallet
            .sign_personal(request.signature_text().as_bytes());
        client
            .publish_identity_update(request.sign(signature, Some(&self.keys)))
            .await
            .expect("register");
    }

    /// Upload `one_time` (and `last_resort`, if any) for this installation;
    /// returns how many one-time packages the node then holds for it.
    async fn upload(
        &self,
        client: &dyn DeliveryClient,
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> usize {
        let t = now_ms();
        let signed = upload_signed_bytes(t, &self.keys.id(), &one_time, last_resort.as_deref());
        client
            .upload_key_packages(KeyPackageUpload {
                installation: self.keys.id(),
                signature: self.keys.sign(&signed).to_vec(),
                one_time,
                last_resort,
                timestamp_ms: t,
            })
            .await
            .expect("upload")
    }

    /// Fetch one package of `target`, signed by this installation.
    async fn fetch(&self, client: &dyn DeliveryClient, target: &Identity) -> FetchedKeyPackage {
        let t = now_ms();
        let targets = vec![target.keys.id()];
        let signed = fetch_signed_bytes(t, &self.wallet.inbox_id(), &self.keys.id(), &targets);
        client
            .fetch_key_packages(KeyPackageFetch {
                signature: self.keys.sign(&signed).to_vec(),
                targets,
                requester_inbox: self.wallet.inbox_id(),
                requester: self.keys.id(),
                timestamp_ms: t,
            })
            .await
            .expect("fetch")
            .pop()
            .expect("one answer per target")
    }

    fn key_packages(&self, n: usize, last_resort: bool) -> Vec<Vec<u8>> {
        let provider = OpenMlsRustCrypto::default();
        (0..n)
            .map(|_| {
                let kp = generate_key_package(
                    &provider,
                    &self.keys,
                    self.wallet.inbox_id(),
                    now_ms() / 1000,
                    30 * 24 * 3600,
                    last_resort,
                )
                .expect("key package");
                MlsMessageOut::from(kp).to_bytes().expect("serialise")
            })
            .collect()
    }
}

/// The node's limits, opened up so that the benchmark measures the path,
/// not the rate limiter's refusals (the buckets are still consulted).
fn bench_config() -> NodeConfig {
    let open = BucketLimit {
        burst: u32::MAX / 2,
        per_minute: u32::MAX / 2,
    };
    NodeConfig {
        node_id: 1,
        limits: NodeLimits {
            fetch_per_requester: open,
            fetch_per_target: open,
            fetch_per_pair: open,
            ..NodeLimits::default()
        },
        ..NodeConfig::new(1)
    }
}

/// What one backend's fetch rows saw, for the summary.
#[derive(Debug, Default)]
struct FetchCounts {
    /// Timed fetches that removed a one-time package.
    one_time: u64,
    /// Timed fetches that got the last-resort package.
    last_resort: u64,
}

fn bench_client(
    c: &mut Criterion,
    recorder: &Recorder,
    runtime: &tokio::runtime::Runtime,
    backend: &str,
    client: &dyn DeliveryClient,
) -> FetchCounts {
    let requester = Identity::new(1);
    let target = Identity::new(2);
    // Made once and uploaded again at every re-supply: the node keeps no
    // record of the packages it handed out, so the same bytes take the same
    // path, and new ones would put 100 key generations before every
    // hundredth fetch.
    let supply = target.key_packages(SUPPLY, false);
    let supplied: HashSet<&[u8]> = supply.iter().map(Vec::as_slice).collect();
    runtime.block_on(async {
        requester.register(client).await;
        target.register(client).await;
        let last_resort = target.key_packages(1, true).pop();
        let left = target.upload(client, Vec::new(), last_resort).await;
        assert_eq!(left, 0, "a fresh installation holds no one-time packages");
    });

    let mut round = 0u64;
    bench_recorded(
        c,
        recorder,
        (PUBLISH, backend),
        (10, Duration::from_secs(8)),
        || {
            round += 1;
            let topic = Topic::Group(round.to_be_bytes().to_vec());
            runtime.block_on(async {
                let batch = (0..BATCH)
                    .map(|_| (topic.clone(), vec![0x42; 100]))
                    .collect();
                client.publish(batch).await.expect("publish");
                let page = client
                    .query(&topic, &Cursor::new(), 0)
                    .await
                    .expect("query");
                assert_eq!(page.envelopes.len(), BATCH);
            });
        },
    );

    let mut single = 0u64;
    {
        let mut group = c.benchmark_group(PUBLISH_ONE);
        group
            .sample_size(30)
            .measurement_time(Duration::from_secs(5));
        let topic = Topic::Group(b"single".to_vec());
        bench_timed(&mut group, recorder, (PUBLISH_ONE, backend), || {
            single += 1;
            runtime.block_on(async {
                let start = Instant::now();
                let stored = client
                    .publish(vec![(topic.clone(), vec![0x42; 100])])
                    .await
                    .expect("publish");
                let elapsed = start.elapsed();
                assert_eq!(stored.len(), 1);
                elapsed
            })
        });
    }

    let mut counts = FetchCounts::default();
    let mut in_pool = 0usize;
    {
        let mut group = c.benchmark_group(FETCH_ONE_TIME);
        group
            .sample_size(30)
            .measurement_time(Duration::from_secs(5));
        bench_timed(&mut group, recorder, (FETCH_ONE_TIME, backend), || {
            runtime.block_on(async {
                if in_pool == 0 {
                    let left = target.upload(client, supply.clone(), None).await;
                    assert_eq!(
                        left, SUPPLY,
                        "the pool was not empty at a re-supply: a fetch did not remove \
                         its one-time package"
                    );
                    in_pool = SUPPLY;
                }
                let start = Instant::now();
                let answer = requester.fetch(client, &target).await;
                let elapsed = start.elapsed();
                let package = answer
                    .key_package
                    .expect("a key package while one-time packages are in the pool");
                assert!(
                    !package.last_resort,
                    "got the last-resort package with {in_pool} one-time packages in the pool"
                );
                assert!(
                    supplied.contains(package.bytes.as_slice()),
                    "got a one-time package that was not uploaded"
                );
                in_pool -= 1;
                counts.one_time += 1;
                elapsed
            })
        });
    }

    runtime.block_on(async {
        // Untimed: what the one-time row left in the pool.
        for _ in 0..in_pool {
            requester.fetch(client, &target).await;
        }
        let left = target.upload(client, Vec::new(), None).await;
        assert_eq!(left, 0, "one-time packages left before the last-resort row");
    });
    {
        let mut group = c.benchmark_group(FETCH_LAST_RESORT);
        group
            .sample_size(30)
            .measurement_time(Duration::from_secs(5));
        bench_timed(&mut group, recorder, (FETCH_LAST_RESORT, backend), || {
            runtime.block_on(async {
                let start = Instant::now();
                let answer = requester.fetch(client, &target).await;
                let elapsed = start.elapsed();
                let package = answer
                    .key_package
                    .expect("the last-resort package when the pool is empty");
                assert!(
                    package.last_resort,
                    "got a one-time package from an empty pool"
                );
                counts.last_resort += 1;
                elapsed
            })
        });
    }
    counts
}

/// Serve `logic` over gRPC on a free loopback port; a client of it, and
/// the sender that stops the server.
fn serve_grpc<S: NodeStore + 'static>(
    runtime: &tokio::runtime::Runtime,
    logic: Arc<NodeLogic<S>>,
) -> (GrpcClient, tokio::sync::oneshot::Sender<()>) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let client = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(serve(listener, logic, async {
            let _ = stopped.await;
        }));
        GrpcClient::connect_lazy(&format!("http://{address}")).expect("client")
    });
    (client, stop)
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let recorder = Recorder::default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");

    let local_store = SledNodeStore::open(dir.path().join("local")).expect("open");
    let local = LocalNode::new(Arc::new(NodeLogic::new(bench_config(), local_store)));
    let local_counts = bench_client(&mut c, &recorder, &runtime, LOCAL, &local);

    let grpc_store = SledNodeStore::open(dir.path().join("grpc")).expect("open");
    let logic = Arc::new(NodeLogic::new(bench_config(), grpc_store));
    let (client, stop) = serve_grpc(&runtime, logic);
    let grpc_counts = bench_client(&mut c, &recorder, &runtime, GRPC, &client);
    let _ = stop.send(());

    let postgres = Postgres::start(dir.path());
    let pg_store = PgNodeStore::connect(&postgres.url).expect("connect to PostgreSQL");
    let logic = Arc::new(NodeLogic::new(bench_config(), pg_store));
    let (client, stop) = serve_grpc(&runtime, logic);
    let pg_counts = bench_client(&mut c, &recorder, &runtime, GRPC_PG, &client);
    let _ = stop.send(());
    drop(client);

    c.final_summary();
    recorder.print_ratios(LOCAL);
    println!("\nthroughput:");
    for (backend, counts) in [
        (LOCAL, &local_counts),
        (GRPC, &grpc_counts),
        (GRPC_PG, &pg_counts),
    ] {
        if let Some(mean) = recorder.mean_secs(PUBLISH, backend) {
            println!(
                "  {backend}: {:.0} envelopes/s published and queried back",
                BATCH as f64 / mean
            );
        }
        if let Some(mean) = recorder.mean_secs(PUBLISH_ONE, backend) {
            println!("  {backend}: a single publish in {:.3} ms", mean * 1e3);
        }
        if let Some(mean) = recorder.mean_secs(FETCH_ONE_TIME, backend) {
            println!(
                "  {backend}: {:.0} fetches/s removing a one-time package \
                 ({} timed, each checked one-time and removed)",
                1.0 / mean,
                counts.one_time
            );
        }
        if let Some(mean) = recorder.mean_secs(FETCH_LAST_RESORT, backend) {
            println!(
                "  {backend}: {:.0} fetches/s of the last-resort package \
                 ({} timed, each checked last-resort)",
                1.0 / mean,
                counts.last_resort
            );
        }
    }
}

/// A database of its own for the PostgreSQL backend, on `DATABASE_URL`'s
/// server or on a throwaway server started here; dropped at the end.
struct Postgres {
    admin: String,
    name: String,
    url: String,
    /// The throwaway server's directory, if this benchmark started one.
    server: Option<std::path::PathBuf>,
}

fn local_postgres(action: &str, dir: &std::path::Path) -> String {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/local-postgres");
    let output = std::process::Command::new(script)
        .arg(action)
        .arg(dir)
        .output()
        .expect("run scripts/local-postgres");
    assert!(
        output.status.success(),
        "scripts/local-postgres {action}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

impl Postgres {
    fn start(dir: &std::path::Path) -> Self {
        let (admin, server) = match std::env::var("DATABASE_URL") {
            Ok(url) => (url, None),
            Err(_) => {
                let server = dir.join("postgres");
                (local_postgres("start", &server), Some(server))
            }
        };
        let name = format!("kith_bench_{}", std::process::id());
        let (server_url, _) = admin.rsplit_once('/').expect("a URL ending in /DBNAME");
        let url = format!("{server_url}/{name}");
        // Built first, so that a failure below still stops the server.
        let this = Self {
            admin,
            name,
            url,
            server,
        };
        let mut client = postgres::Client::connect(&this.admin, postgres::NoTls).expect("connect");
        // One statement each: DROP and CREATE DATABASE refuse a
        // transaction block, which several statements in one call make.
        client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {}", this.name))
            .expect("drop a leftover benchmark database");
        client
            .batch_execute(&format!("CREATE DATABASE {}", this.name))
            .expect("create the benchmark's database");
        println!("PostgreSQL backend: {}", this.url);
        this
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Ok(mut client) = postgres::Client::connect(&self.admin, postgres::NoTls) {
            let _ = client.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
        if let Some(server) = &self.server {
            local_postgres("stop", server);
        }
    }
}
