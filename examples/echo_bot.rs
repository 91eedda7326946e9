//! The echo bot: answers every text message it receives with
//! `echo: <text>`. The logic is in `kith_examples::echo_bot`.
//!
//! ```sh
//! cargo run -p kith-transport --bin kith-node -- --data-dir node-data &
//! cargo run -p kith-examples --example echo_bot -- --data-dir bot --node http://127.0.0.1:5556
//! ```
//!
//! It prints its inbox on start; add that inbox to a group, or open a DM
//! with it. Stop it with Ctrl-C; starting it again on the same directory
//! answers what arrived meanwhile, and nothing twice. `RUST_LOG` sets the
//! log level (default `info`).

use std::{path::PathBuf, process::ExitCode};

use clap::Parser;
use kith_examples::echo_bot::{EchoBot, EchoBotConfig};

/// An echo bot on Kith.
#[derive(Debug, Parser)]
#[command(name = "echo_bot", version)]
struct Args {
    /// Where the bot keeps its wallet key and its store (created if missing).
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// The kith-node to talk to.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:5556")]
    node: String,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let bot = match EchoBot::start(EchoBotConfig::new(&args.data_dir, args.node.as_str())).await {
        Ok(bot) => bot,
        Err(e) => {
            tracing::error!(error = %e, "the bot could not start");
            return ExitCode::FAILURE;
        }
    };
    println!("echo bot running as inbox {}", bot.inbox_id());
    if let Err(e) = shutdown_signal().await {
        tracing::error!(error = %e, "cannot wait for a signal; stopping");
    }
    tracing::info!("stopping");
    match bot.stop().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "the bot did not shut down cleanly");
            ExitCode::FAILURE
        }
    }
}

/// Ctrl-C, or SIGTERM where there is one (a service manager stopping it).
async fn shutdown_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result,
            _ = terminate.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await
}
