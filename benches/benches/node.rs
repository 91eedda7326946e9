//! The delivery-service node: batched publish plus query, and key-package
//! fetches, over loopback gRPC and through `LocalNode` (the same logic
//! in-process), both on sled with a flush before every acknowledgement.
//!
//! There is no raw-OpenMLS equivalent of a delivery node, so the in-process
//! `LocalNode` is this benchmark's baseline: the printed ratio is the cost
//! of gRPC over loopback. Throughput is printed in envelopes (or fetches)
//! per second.

use std::{sync::Arc, time::Duration};

use criterion::Criterion;
use kith_benches::{Recorder, bench_recorded};
use kith_engine::{
    delivery::{Cursor, Topic},
    identity::{InstallationKeys, LocalWallet, UnsignedIdentityUpdate, generate_key_package},
};
use kith_storage::SledNodeStore;
use kith_transport::{
    client::{DeliveryClient, GrpcClient, LocalNode},
    node::{
        BucketLimit, KeyPackageFetch, KeyPackageUpload, NodeConfig, NodeLimits, NodeLogic,
        fetch_signed_bytes, serve, upload_signed_bytes,
    },
};
use openmls::prelude::MlsMessageOut;
use openmls_rust_crypto::OpenMlsRustCrypto;
use rand_core::SeedableRng;

const BATCH: usize = 1_000;
const PUBLISH: &str = "publish 1,000 x 100 B + query them back";
const FETCH: &str = "fetch one key package (signed, rate-limited)";
const LOCAL: &str = "LocalNode (baseline)";
const GRPC: &str = "gRPC over loopback";

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

fn bench_client(
    c: &mut Criterion,
    recorder: &Recorder,
    runtime: &tokio::runtime::Runtime,
    backend: &str,
    client: &dyn DeliveryClient,
) {
    let requester = Identity::new(1);
    let target = Identity::new(2);
    runtime.block_on(async {
        requester.register(client).await;
        target.register(client).await;
        let one_time = target.key_packages(200, false);
        let last_resort = target.key_packages(1, true).pop();
        let t = now_ms();
        client
            .upload_key_packages(KeyPackageUpload {
                installation: target.keys.id(),
                signature: target
                    .keys
                    .sign(&upload_signed_bytes(
                        t,
                        &target.keys.id(),
                        &one_time,
                        last_resort.as_deref(),
                    ))
                    .to_vec(),
                one_time,
                last_resort,
                timestamp_ms: t,
            })
            .await
            .expect("upload");
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
    bench_recorded(
        c,
        recorder,
        (FETCH, backend),
        (30, Duration::from_secs(5)),
        || {
            runtime.block_on(async {
                let t = now_ms();
                let targets = vec![target.keys.id()];
                let signed = fetch_signed_bytes(
                    t,
                    &requester.wallet.inbox_id(),
                    &requester.keys.id(),
                    &targets,
                );
                let fetched = client
                    .fetch_key_packages(KeyPackageFetch {
                        signature: requester.keys.sign(&signed).to_vec(),
                        targets,
                        requester_inbox: requester.wallet.inbox_id(),
                        requester: requester.keys.id(),
                        timestamp_ms: t,
                    })
                    .await
                    .expect("fetch");
                assert!(fetched[0].key_package.is_some());
            });
        },
    );
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
    bench_client(&mut c, &recorder, &runtime, LOCAL, &local);

    let grpc_store = SledNodeStore::open(dir.path().join("grpc")).expect("open");
    let logic = Arc::new(NodeLogic::new(bench_config(), grpc_store));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let address = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(serve(listener, logic, async {
            let _ = stopped.await;
        }));
        address
    });
    let client = runtime.block_on(async {
        GrpcClient::connect_lazy(&format!("http://{address}")).expect("client")
    });
    bench_client(&mut c, &recorder, &runtime, GRPC, &client);
    let _ = stop.send(());

    c.final_summary();
    recorder.print_ratios(LOCAL);
    println!("\nthroughput:");
    for backend in [LOCAL, GRPC] {
        if let Some(mean) = recorder.mean_secs(PUBLISH, backend) {
            println!(
                "  {backend}: {:.0} envelopes/s published and queried back",
                BATCH as f64 / mean
            );
        }
        if let Some(mean) = recorder.mean_secs(FETCH, backend) {
            println!("  {backend}: {:.0} key-package fetches/s", 1.0 / mean);
        }
    }
}
