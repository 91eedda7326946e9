//! `kith-chat`: a line-oriented chat client. It reads one command per line
//! from standard input (a terminal or a pipe alike), prints results on
//! standard output and errors as `error: …` on standard error, and keeps
//! going after an error.
//!
//! ```text
//!   stdin ── reader thread ──▶ ┌──────────┐ ──▶ stdout  results, live messages
//!                              │ Session  │
//!   kith::Client events ─────▶ └──────────┘ ──▶ stderr  error: …, progress
//! ```
//!
//! One task runs the session: it waits for either the next line or the
//! next client event, so a command runs to its end before an event is
//! shown, and the output of the two never interleaves within a line. New
//! messages of the open conversation are printed as they arrive; `watch`
//! widens that to every conversation, and otherwise another conversation
//! gets a one-line notice. [`command::HELP`] lists the commands.
//!
//! The wallet key lives in `DIR/wallet.key` ([`crate::wallet_file`]) and
//! the client's store in `DIR/client`; with `--embedded`, an in-process
//! node keeps its store in `DIR/node`.

pub mod command;
pub mod display;
mod session;

use std::{
    io::{BufRead, Write},
    path::PathBuf,
    sync::Arc,
};

use kith::{Client, LocalNode};
use kith_storage::SledNodeStore;
use kith_transport::node::{NodeConfig, NodeLogic};

use crate::wallet_file::{self, WalletFileError};

/// Why a command, or the chat as a whole, failed. Each message says what
/// to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChatError {
    /// The command line is malformed.
    #[error("{0}")]
    Usage(String),
    /// A command needs an open conversation and none is.
    #[error("no conversation is open: `open N` first (`list` shows them)")]
    NotOpen,
    /// `open` named a conversation that does not exist here.
    #[error("{0}")]
    NoSuchConversation(String),
    /// The Kith client refused or failed.
    #[error(transparent)]
    Client(#[from] kith::Error),
    /// The node did not answer when the chat started.
    #[error("cannot reach the node at {url} ({reason}); is kith-node running there?")]
    Unreachable {
        /// The node's URL.
        url: String,
        /// What the client said.
        reason: String,
    },
    /// The wallet file could not be read or made.
    #[error("wallet: {0}")]
    Wallet(#[from] WalletFileError),
    /// Another process has the data directory's stores open.
    #[error(
        "{0} is in use by another process (another kith-chat?): stop it, or use another --data-dir"
    )]
    InUse(PathBuf),
    /// The embedded node's store could not be opened.
    #[error("embedded node store {path}: {reason}")]
    NodeStore {
        /// Its directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Reading input or writing output failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Which node the chat talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeChoice {
    /// A `kith-node` at this URL.
    Url(String),
    /// A node in this process, over a sled store in `DIR/node`: for trying
    /// the chat alone.
    Embedded,
}

/// What the chat needs to start.
#[derive(Debug, Clone)]
pub struct ChatOptions {
    /// The data directory (wallet key and stores).
    pub data_dir: PathBuf,
    /// The node.
    pub node: NodeChoice,
    /// A private key (hex) to use on first start instead of a new one.
    pub import_key: Option<String>,
    /// Whether the input is a terminal: then a prompt is shown.
    pub interactive: bool,
}

/// Run the chat until `quit` or the end of `input`, then shut the client
/// down. Errors of single commands are printed on `err` and the chat goes
/// on; an error is returned only when the chat cannot start, or its
/// output is gone.
pub async fn run(
    options: ChatOptions,
    input: impl BufRead + Send + 'static,
    mut out: impl Write,
    mut err: impl Write,
) -> Result<(), ChatError> {
    let ChatOptions {
        data_dir,
        node,
        import_key,
        interactive,
    } = options;
    let wallet = {
        let dir = data_dir.clone();
        tokio::task::spawn_blocking(move || {
            wallet_file::load_or_import(&dir, import_key.as_deref())
        })
        .await
        .map_err(|e| ChatError::Io(std::io::Error::other(e)))??
    };
    let url = match &node {
        NodeChoice::Url(url) => Some(url.clone()),
        NodeChoice::Embedded => None,
    };
    let node: kith::Node = match node {
        NodeChoice::Url(url) => {
            writeln!(err, "connecting to {url}")?;
            url.into()
        }
        NodeChoice::Embedded => {
            let path = data_dir.join("node");
            let store = {
                let path = path.clone();
                tokio::task::spawn_blocking(move || SledNodeStore::open(path))
                    .await
                    .map_err(|e| ChatError::Io(std::io::Error::other(e)))?
            }
            .map_err(|e| {
                let reason = e.to_string();
                if is_locked(&reason) {
                    ChatError::InUse(data_dir.clone())
                } else {
                    ChatError::NodeStore {
                        path: path.clone(),
                        reason,
                    }
                }
            })?;
            LocalNode::new(Arc::new(NodeLogic::new(NodeConfig::new(1), store))).into()
        }
    };
    let client = Client::builder()
        .wallet(wallet)
        .data_dir(data_dir.join("client"))
        .node(node)
        .build()
        .await
        .map_err(|e| match (e, url) {
            (kith::Error::Network(reason), Some(url)) => ChatError::Unreachable { url, reason },
            (kith::Error::Storage(reason), _) if is_locked(&reason) => {
                ChatError::InUse(data_dir.clone())
            }
            (e, _) => e.into(),
        })?;
    // Subscribed before the first command, so that nothing is missed.
    let events = client.stream_events();
    writeln!(out, "inbox {}", client.inbox_id())?;
    out.flush()?;
    if interactive {
        writeln!(
            err,
            "`register` once per data directory; `help` lists the commands"
        )?;
    }
    let session = session::Session::new(client, out, err, interactive);
    let (client, result) = session.run(session::read_lines(input), events).await;
    client.shutdown().await?;
    result
}

/// Whether a store failed to open because another process holds it. sled
/// says so only in its error's text.
fn is_locked(reason: &str) -> bool {
    reason.contains("could not acquire lock")
}
