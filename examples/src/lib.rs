//! `kith-examples`: runnable examples of Kith.
//!
//! - **quickstart** (`cargo run --release -p kith-examples --example
//!   quickstart`): three clients and an embedded node in one process; a
//!   named group, a rename and a removal, printed as a transcript.
//! - **echo bot** ([`echo_bot`], run by the `echo_bot` example): an actix
//!   actor on the client's event stream that answers every text message,
//!   exactly once across restarts.
//! - **kith-chat** ([`chat`], the `kith-chat` binary): a line-oriented chat
//!   client, against a `kith-node` or an embedded node, that reads commands
//!   from standard input, so that it works in a terminal and in a pipe.
//!
//! ```text
//!   echo_bot ──┐                      ┌── kith-node (gRPC)
//!              ├── kith::Client ──────┤
//!   kith-chat ─┘   (wallet_file)      └── LocalNode (embedded)
//! ```
//!
//! Both keep their wallet key in `DIR/wallet.key` ([`wallet_file`]) and
//! their client store in `DIR/client`, so restarting on the same directory
//! reopens the same inbox and installation.

pub mod chat;
pub mod echo_bot;
pub mod wallet_file;
