//! Replication between two originator nodes over loopback gRPC, both on
//! sled: how fast a batch published to one node is on its peer, and how
//! long one envelope takes from a publish on one node to a subscriber of
//! the other.
//!
//! There is no raw-OpenMLS equivalent of replication, so the baseline is
//! the same work on one node without peers: the batch acknowledged by the
//! node it was published to, and the envelope delivered to a subscriber of
//! that same node. The printed ratio is what replication adds.

use std::{sync::Arc, time::Duration};

use criterion::Criterion;
use ed25519_dalek::SigningKey;
use kith_benches::{Recorder, bench_recorded};
use kith_engine::delivery::{Cursor, NodeStore as _, Topic};
use kith_storage::SledNodeStore;
use kith_transport::{
    client::{DeliveryClient as _, EnvelopeStream, GrpcClient},
    node::{NodeConfig, NodeLogic, Peer, ReplicationDelay, serve, spawn_replicators},
};
use tokio_stream::StreamExt as _;

const BATCH: usize = 1_000;
const REPLICATE: &str = "publish 1,000 x 100 B until they are on the peer";
const LAG: &str = "one envelope from publish to a subscriber";
const SOLO: &str = "one node (baseline)";
const PAIR: &str = "replicated to a peer";

/// A node served on loopback, with its store's signing seed fixed so that
/// its peers can be configured before it starts.
struct Running {
    logic: Arc<NodeLogic<SledNodeStore>>,
    client: GrpcClient,
}

fn seed(id: u32) -> [u8; 32] {
    [u8::try_from(id).expect("small id"); 32]
}

fn start(
    runtime: &tokio::runtime::Runtime,
    dir: &std::path::Path,
    id: u32,
    listener: tokio::net::TcpListener,
    peers: Vec<Peer>,
) -> Running {
    let store = SledNodeStore::open(dir.join(format!("node-{id}"))).expect("open");
    store.node_signing_seed(seed(id)).expect("seed");
    let mut config = NodeConfig::new(id);
    config.peers = peers;
    let logic = Arc::new(NodeLogic::new(config, store));
    let address = listener.local_addr().expect("address");
    let serving = Arc::clone(&logic);
    runtime.spawn(async move {
        let _ = serve(listener, serving, std::future::pending()).await;
    });
    let _guard = runtime.enter();
    spawn_replicators(&logic, ReplicationDelay::default());
    let client = GrpcClient::connect_lazy(&format!("http://{address}")).expect("client");
    Running { logic, client }
}

fn bench_pair(
    c: &mut Criterion,
    recorder: &Recorder,
    runtime: &tokio::runtime::Runtime,
    backend: &str,
    (publisher, receiver): (&Running, &Running),
) {
    let origin = publisher.logic.config().node_id;
    let mut round = 0u64;
    bench_recorded(
        c,
        recorder,
        (REPLICATE, backend),
        (10, Duration::from_secs(8)),
        || {
            round += 1;
            let topic = Topic::Group(round.to_be_bytes().to_vec());
            runtime.block_on(async {
                let batch = (0..BATCH)
                    .map(|_| (topic.clone(), vec![0x42; 100]))
                    .collect();
                let stored = publisher.client.publish(batch).await.expect("publish");
                let last = stored.last().expect("stored").originator_sequence_id;
                // On one node the acknowledgement is the end; on a pair, the
                // peer must hold them.
                while receiver.logic.heads().await.expect("heads").get(origin) < last {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
            });
        },
    );

    let topic = Topic::Group(b"lag".to_vec());
    let mut stream: EnvelopeStream = runtime.block_on(async {
        receiver
            .client
            .subscribe(vec![(topic.clone(), Cursor::new())])
            .await
            .expect("subscribe")
    });
    bench_recorded(
        c,
        recorder,
        (LAG, backend),
        (30, Duration::from_secs(5)),
        || {
            runtime.block_on(async {
                publisher
                    .client
                    .publish(vec![(topic.clone(), b"ping".to_vec())])
                    .await
                    .expect("publish");
                let envelope = stream
                    .next()
                    .await
                    .expect("the subscription is open")
                    .expect("an envelope");
                assert_eq!(envelope.payload, b"ping");
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
    let bind = || {
        runtime.block_on(async {
            tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind")
        })
    };

    let solo = start(&runtime, dir.path(), 9, bind(), Vec::new());
    bench_pair(&mut c, &recorder, &runtime, SOLO, (&solo, &solo));

    let (first, second) = (bind(), bind());
    let peer = |id: u32, listener: &tokio::net::TcpListener| Peer {
        node_id: id,
        public_key: SigningKey::from_bytes(&seed(id)).verifying_key(),
        url: format!("http://{}", listener.local_addr().expect("address")),
    };
    let (peer_of_first, peer_of_second) = (peer(2, &second), peer(1, &first));
    let a = start(&runtime, dir.path(), 1, first, vec![peer_of_first]);
    let b = start(&runtime, dir.path(), 2, second, vec![peer_of_second]);
    bench_pair(&mut c, &recorder, &runtime, PAIR, (&a, &b));

    c.final_summary();
    recorder.print_ratios(SOLO);
    println!("\nthroughput and lag:");
    for backend in [SOLO, PAIR] {
        if let Some(mean) = recorder.mean_secs(REPLICATE, backend) {
            println!(
                "  {backend}: {:.0} envelopes/s published and on the receiving node",
                BATCH as f64 / mean
            );
        }
        if let Some(mean) = recorder.mean_secs(LAG, backend) {
            println!(
                "  {backend}: {:.2} ms from publish to a subscriber",
                mean * 1e3
            );
        }
    }
}
