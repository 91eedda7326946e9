//! `kith-node`: the Kith delivery-service node over gRPC, storing in sled
//! (`--data-dir`) or in PostgreSQL (`--database-url`).
//!
//! ```text
//! kith-node --data-dir ./node-data                      # listens on 127.0.0.1:5556
//! kith-node --database-url postgres://kith@db/kith      # PostgreSQL; run several
//! kith-node --data-dir ./node-data --listen 127.0.0.1:0 # any free port
//! kith-node --data-dir ./node-data --print-key          # print this node's public key, exit
//! kith-node --data-dir ./a --node-id 1 \
//!     --peer 2=<key of node 2>@http://127.0.0.1:5557     # replicate with node 2
//! ```
//!
//! With peers (`--peer`, repeatable, or `--peers-file` with one
//! `ID=KEY@URL` per line) the node replicates: it pulls each peer's own
//! envelopes and reports an eventual order with its `--settle-window-ms`.
//! Each node's key is made on first start and kept in its store;
//! `--print-key` prints it (run it before the node starts: the store is
//! locked while the node runs).
//!
//! Several processes with the same `--database-url` and `--node-id` are one
//! node: the database orders what any of them stores, and each one's
//! subscribers see what was published through every other (LISTEN/NOTIFY;
//! see `kith-storage-pg`). Put them behind one address, or give clients
//! all their URLs.
//!
//! On start it prints one line, `kith-node listening on <address>`, to
//! standard output (useful with port 0). It stops gracefully on SIGINT or
//! SIGTERM: in-flight calls finish and subscriptions end. Logs go to
//! standard error; set `RUST_LOG` (e.g. `RUST_LOG=kith_transport=debug`).

use std::{io::Write as _, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use clap::Parser;
use kith_engine::delivery::NodeStore;
use kith_storage::SledNodeStore;
use kith_storage_pg::PgNodeStore;
use kith_transport::node::{
    BucketLimit, DEFAULT_SETTLE_WINDOW, NodeConfig, NodeLimits, NodeLogic, Peer, ReplicationDelay,
    serve, spawn_replicators,
};
use tracing_subscriber::EnvFilter;

/// The Kith delivery-service node.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on. Use 127.0.0.1:0 for any free loopback port.
    #[arg(long, default_value = "127.0.0.1:5556")]
    listen: SocketAddr,
    /// Directory of the node's sled database (created if missing).
    #[arg(
        long,
        required_unless_present = "database_url",
        conflicts_with = "database_url"
    )]
    data_dir: Option<PathBuf>,
    /// The node's PostgreSQL database, e.g. postgres://kith@127.0.0.1/kith,
    /// instead of --data-dir. Several processes may share it.
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// This node's originator id.
    #[arg(long, default_value_t = 1)]
    node_id: u32,
    /// Largest envelope payload in bytes.
    #[arg(long, default_value_t = NodeLimits::default().max_envelope_bytes)]
    max_envelope_bytes: usize,
    /// Largest gRPC message decoded or encoded, in bytes (at least the
    /// largest envelope plus 64 KiB).
    #[arg(long, default_value_t = NodeLimits::default().max_message_bytes)]
    max_message_bytes: usize,
    /// Most envelopes in one publish.
    #[arg(long, default_value_t = 1_000)]
    max_batch_envelopes: usize,
    /// Most envelopes in one query page.
    #[arg(long, default_value_t = 1_000)]
    max_page_envelopes: usize,
    /// Most topics in one subscription.
    #[arg(long, default_value_t = 10_000)]
    max_subscription_topics: usize,
    /// Most inboxes in one GetIdentityUpdates.
    #[arg(long, default_value_t = 10_000)]
    max_identity_inboxes: usize,
    /// Most key packages in one upload or fetch.
    #[arg(long, default_value_t = 1_000)]
    max_batch_key_packages: usize,
    /// Key-package fetches a requester may burst.
    #[arg(long, default_value_t = NodeLimits::default().fetch_per_requester.burst)]
    fetch_burst_per_requester: u32,
    /// Key-package fetches per minute a requester is refilled with.
    #[arg(long, default_value_t = NodeLimits::default().fetch_per_requester.per_minute)]
    fetch_per_minute_per_requester: u32,
    /// Key-package fetches of one target installation that may burst.
    #[arg(long, default_value_t = NodeLimits::default().fetch_per_target.burst)]
    fetch_burst_per_target: u32,
    /// Key-package fetches per minute of one target installation.
    #[arg(long, default_value_t = NodeLimits::default().fetch_per_target.per_minute)]
    fetch_per_minute_per_target: u32,
    /// Key-package fetches of one target by one requester that may burst.
    #[arg(long, default_value_t = NodeLimits::default().fetch_per_pair.burst)]
    fetch_burst_per_pair: u32,
    /// Key-package fetches per minute of one target by one requester.
    #[arg(long, default_value_t = NodeLimits::default().fetch_per_pair.per_minute)]
    fetch_per_minute_per_pair: u32,
    /// How far a signed request's timestamp may be from the node's clock,
    /// in seconds.
    #[arg(long, default_value_t = 300)]
    timestamp_window_secs: u64,
    /// A node to replicate with, as `ID=KEY@URL`: its originator id, its
    /// Ed25519 public key in hex (its `--print-key`), and its gRPC URL.
    /// Repeatable.
    #[arg(long = "peer", value_parser = parse_peer)]
    peers: Vec<Peer>,
    /// A file of peers, one `ID=KEY@URL` per line (`#` starts a comment).
    #[arg(long)]
    peers_file: Option<PathBuf>,
    /// With peers: how long after an envelope's originator time its place
    /// in the order is final, in milliseconds. It must exceed the
    /// replication lag between healthy peers.
    #[arg(long, default_value_t = DEFAULT_SETTLE_WINDOW.as_millis() as u64)]
    settle_window_ms: u64,
    /// Print this node's public key (hex) and exit.
    #[arg(long)]
    print_key: bool,
    /// Testing only: delay every replicated batch by this many ms.
    #[arg(long, default_value_t = 0, hide = true)]
    replication_delay_ms: u64,
    /// Testing only: and by up to this many ms more, at random.
    #[arg(long, default_value_t = 0, hide = true)]
    replication_jitter_ms: u64,
}

/// Parse `ID=KEY@URL`.
fn parse_peer(text: &str) -> Result<Peer, String> {
    let form = "expected ID=KEY@URL, e.g. 2=<64 hex digits>@http://127.0.0.1:5557";
    let (id, rest) = text.split_once('=').ok_or(form)?;
    let (key, url) = rest.split_once('@').ok_or(form)?;
    let node_id = id
        .trim()
        .parse()
        .map_err(|e| format!("peer id {id:?}: {e}; {form}"))?;
    let key: [u8; 32] = hex::decode(key.trim())
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or_else(|| {
            format!("peer {node_id}: the key must be 64 hex digits (its --print-key)")
        })?;
    let public_key = ed25519_dalek::VerifyingKey::from_bytes(&key)
        .map_err(|e| format!("peer {node_id}: not an Ed25519 public key: {e}"))?;
    let url = url.trim();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!(
            "peer {node_id}: the URL {url:?} must start with http:// or https://"
        ));
    }
    Ok(Peer {
        node_id,
        public_key,
        url: url.to_owned(),
    })
}

/// The peers of `--peer` and `--peers-file`, checked: unique ids, none
/// this node's own.
fn peers(args: &Args) -> Result<Vec<Peer>, String> {
    let mut peers = args.peers.clone();
    if let Some(path) = &args.peers_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the peers file {}: {e}", path.display()))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if !line.is_empty() {
                peers.push(
                    parse_peer(line)
                        .map_err(|e| format!("{} line {}: {e}", path.display(), n + 1))?,
                );
            }
        }
    }
    let mut ids = std::collections::BTreeSet::new();
    for peer in &peers {
        if peer.node_id == args.node_id {
            return Err(format!(
                "peer {} has this node's own --node-id; give each node its own id",
                peer.node_id
            ));
        }
        if !ids.insert(peer.node_id) {
            return Err(format!("peer {} is named twice", peer.node_id));
        }
    }
    Ok(peers)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let peers = peers(&args)?;
    let config = NodeConfig {
        node_id: args.node_id,
        limits: NodeLimits {
            max_envelope_bytes: args.max_envelope_bytes,
            max_message_bytes: args.max_message_bytes,
            max_batch_envelopes: args.max_batch_envelopes,
            max_page_envelopes: args.max_page_envelopes,
            max_subscription_topics: args.max_subscription_topics,
            max_identity_inboxes: args.max_identity_inboxes,
            max_batch_key_packages: args.max_batch_key_packages,
            fetch_per_requester: BucketLimit {
                burst: args.fetch_burst_per_requester,
                per_minute: args.fetch_per_minute_per_requester,
            },
            fetch_per_target: BucketLimit {
                burst: args.fetch_burst_per_target,
                per_minute: args.fetch_per_minute_per_target,
            },
            fetch_per_pair: BucketLimit {
                burst: args.fetch_burst_per_pair,
                per_minute: args.fetch_per_minute_per_pair,
            },
            timestamp_window: Duration::from_secs(args.timestamp_window_secs),
        },
        peers,
        settle_window: Duration::from_millis(args.settle_window_ms),
    };
    config.limits.check()?;
    match (args.database_url.clone(), args.data_dir.clone()) {
        (Some(url), _) => {
            // The PostgreSQL client blocks; keep it off the async threads.
            let logic = tokio::task::spawn_blocking(move || {
                let store = PgNodeStore::connect(&url)
                    .map_err(|e| format!("cannot use the database {url}: {e}"))?;
                Ok::<_, String>(NodeLogic::new(config, store))
            })
            .await??;
            run(&args, Arc::new(logic), "database").await
        }
        (None, Some(dir)) => {
            let store = SledNodeStore::open(&dir)
                .map_err(|e| format!("cannot open the data directory {}: {e}", dir.display()))?;
            run(&args, Arc::new(NodeLogic::new(config, store)), "data_dir").await
        }
        (None, None) => Err("give --data-dir DIR or --database-url URL".into()),
    }
}

/// Serve `logic` until SIGINT or SIGTERM.
async fn run<S: NodeStore + 'static>(
    args: &Args,
    logic: Arc<NodeLogic<S>>,
    store: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let key = hex::encode(logic.public_key().await?);
    if args.print_key {
        println!("{key}");
        return Ok(());
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, node_id = args.node_id, %key, peers = logic.config().peers.len(), store, "kith-node started");
    println!("kith-node listening on {address}");
    std::io::stdout().flush()?;

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let replicators = spawn_replicators(
        &logic,
        ReplicationDelay {
            fixed: Duration::from_millis(args.replication_delay_ms),
            jitter: Duration::from_millis(args.replication_jitter_ms),
        },
    );
    let mut server = tokio::spawn(serve(listener, logic, async {
        let _ = stopped.await;
    }));
    tokio::select! {
        result = &mut server => {
            // The server ended on its own: that is an error.
            result??;
            return Err("the gRPC server stopped unexpectedly".into());
        }
        () = shutdown_signal() => {}
    }
    let _ = stop.send(());
    // In-flight calls finish and subscriptions end; a client that never
    // acknowledges the shutdown must not keep the process alive.
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(result) => result??,
        Err(_) => tracing::warn!("clients did not close within {SHUTDOWN_GRACE:?}; exiting anyway"),
    }
    for replicator in replicators {
        // They end when the server closes the node's subscriptions.
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, replicator).await;
    }
    tracing::info!("kith-node stopped");
    Ok(())
}

/// How long a graceful shutdown may wait for clients.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM ({e}); stopping on SIGINT only");
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
    tracing::info!("shutdown signal received");
}
