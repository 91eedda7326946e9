//! `kith-node`: the Kith delivery-service node over gRPC, storing in sled.
//!
//! ```text
//! kith-node --data-dir ./node-data                      # listens on 127.0.0.1:5556
//! kith-node --data-dir ./node-data --listen 127.0.0.1:0 # any free port
//! ```
//!
//! On start it prints one line, `kith-node listening on <address>`, to
//! standard output (useful with port 0). It stops gracefully on SIGINT or
//! SIGTERM: in-flight calls finish and subscriptions end. Logs go to
//! standard error; set `RUST_LOG` (e.g. `RUST_LOG=kith_transport=debug`).

use std::{io::Write as _, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use clap::Parser;
use kith_storage::SledNodeStore;
use kith_transport::node::{BucketLimit, NodeConfig, NodeLimits, NodeLogic, serve};
use tracing_subscriber::EnvFilter;

/// The Kith delivery-service node.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on. Use 127.0.0.1:0 for any free loopback port.
    #[arg(long, default_value = "127.0.0.1:5556")]
    listen: SocketAddr,
    /// Directory of the node's sled database (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
    /// This node's originator id.
    #[arg(long, default_value_t = 1)]
    node_id: u32,
    /// Largest envelope payload in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    max_envelope_bytes: usize,
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
    #[arg(long, default_value_t = 100)]
    fetch_burst_per_requester: u32,
    /// Key-package fetches per minute a requester is refilled with.
    #[arg(long, default_value_t = 60)]
    fetch_per_minute_per_requester: u32,
    /// Key-package fetches of one target installation that may burst.
    #[arg(long, default_value_t = 20)]
    fetch_burst_per_target: u32,
    /// Key-package fetches per minute of one target installation.
    #[arg(long, default_value_t = 10)]
    fetch_per_minute_per_target: u32,
    /// How far a signed request's timestamp may be from the node's clock,
    /// in seconds.
    #[arg(long, default_value_t = 300)]
    timestamp_window_secs: u64,
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
    let config = NodeConfig {
        node_id: args.node_id,
        limits: NodeLimits {
            max_envelope_bytes: args.max_envelope_bytes,
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
            timestamp_window: Duration::from_secs(args.timestamp_window_secs),
        },
    };
    let store = SledNodeStore::open(&args.data_dir).map_err(|e| {
        format!(
            "cannot open the data directory {}: {e}",
            args.data_dir.display()
        )
    })?;
    let logic = Arc::new(NodeLogic::new(config, store));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, node_id = args.node_id, data_dir = %args.data_dir.display(), "kith-node started");
    println!("kith-node listening on {address}");
    std::io::stdout().flush()?;

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
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
