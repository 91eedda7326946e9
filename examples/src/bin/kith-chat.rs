//! `kith-chat`: chat over Kith from a terminal or a script. The commands
//! and their output are in `kith_examples::chat`; this parses the flags.
//!
//! ```sh
//! kith-chat --data-dir alice --node http://127.0.0.1:5556
//! kith-chat --data-dir solo --embedded
//! ```

use std::{io::IsTerminal as _, path::PathBuf, process::ExitCode};

use clap::Parser;
use kith_examples::chat::{self, ChatOptions, NodeChoice};

/// Chat over Kith: reads one command per line from standard input
/// (`help` lists them).
#[derive(Debug, Parser)]
#[command(name = "kith-chat", version)]
struct Args {
    /// Where the wallet key and the stores are kept (created if missing).
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// The kith-node to talk to, e.g. http://127.0.0.1:5556.
    #[arg(long, value_name = "URL", required_unless_present = "embedded")]
    node: Option<String>,
    /// Run a node in this process (its store in DIR/node), to try the chat
    /// alone.
    #[arg(long, conflicts_with = "node")]
    embedded: bool,
    /// On first use, take this private key (hex) instead of making one.
    /// Other users of the machine can read it in the process list.
    #[arg(long, value_name = "HEX")]
    key: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // Kith's own logs stay quiet unless asked for: the chat's output is
    // the conversation.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let node = match args.node {
        Some(url) => NodeChoice::Url(url),
        None => NodeChoice::Embedded,
    };
    let stdin = std::io::stdin();
    let options = ChatOptions {
        data_dir: args.data_dir,
        node,
        import_key: args.key,
        interactive: stdin.is_terminal(),
    };
    // Read on a thread of the chat's own: an unlocked handle, which can
    // move there.
    let input = std::io::BufReader::new(stdin);
    match chat::run(options, input, std::io::stdout(), std::io::stderr()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
