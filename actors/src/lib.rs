//! `kith`: embeddable end-to-end encrypted messaging over MLS.
//!
//! A [`Client`] is one installation of one inbox (a wallet). It keeps its
//! state in sled, talks to a node (an in-process [`LocalNode`] or a remote
//! `kith-node`), and exposes conversations ([`Conversation`]) and a stream
//! of [`Event`]s.
//!
//! ```no_run
//! # async fn demo() -> Result<(), kith::Error> {
//! use kith::{Client, GroupOptions, LocalWallet};
//! # let (node, bob, dir) = todo_node();
//! let wallet = LocalWallet::generate(&mut rand_core::OsRng);
//! let client = Client::builder()
//!     .wallet(wallet)
//!     .data_dir(dir)
//!     .node(node)
//!     .build()
//!     .await?;
//! client.register().await?;
//! let group = client
//!     .create_group(&[bob], GroupOptions::default().name("Climbing"))
//!     .await?;
//! group.send_text("Saturday, 9am?").await?;
//! # Ok(()) }
//! # fn todo_node() -> (kith::Node, kith::InboxId, std::path::PathBuf) { unimplemented!() }
//! ```
//!
//! # Actors
//!
//! `Client` and `Conversation` are thin handles; the work happens in actix
//! actors on a thread of their own, so a client works from any tokio
//! runtime. The supervision tree:
//!
//! ```text
//!                       Supervisor  (owns the stores; restarts group actors)
//!       ┌──────────────┬─────┴──────────────┬─────────────────────────┐
//!  NetworkPoller   KeyPackageManager   InstallationDiscovery   GroupActor × groups
//!  one subscription  pool + last-resort  timer / identity pushes  (actix::Supervisor,
//!  wakes the owner   package             -> Reconcile             on group threads)
//!  of each topic
//! ```
//!
//! - The **NetworkPoller** follows every topic in one subscription. An
//!   arrival only wakes the topic's owner, which reads from its own durable
//!   cursor, so pushes may be lost or repeated without harm.
//! - A **GroupActor** drives one group's sans-IO engine
//!   (`kith_engine::group::Group`): each input is one storage step (MLS
//!   state, message, cursor and intent in one sled batch). It runs on a
//!   group thread, away from the poller, and a panic in it discards the
//!   step and restarts it from storage.
//! - The **KeyPackageManager** tops up the one-time key packages on the
//!   node and rotates the last-resort package.
//! - **InstallationDiscovery** fetches every member's identity log in one
//!   request and asks groups to add new installations and remove revoked
//!   ones.

mod builder;
mod client;
mod error;
mod events;
mod group_actor;
mod installation_discovery;
mod key_package_manager;
mod network_poller;
mod shared;
mod supervisor;

pub use builder::{ClientBuilder, Node, WalletSigner};
pub use client::{Client, Conversation, GroupOptions, Member};
pub use error::Error;
pub use events::{Event, Message, MessageId, Metadata};
pub use kith_engine::{
    group::{ConversationId, ConversationKind, Permission, Policies, PolicyPreset},
    identity::{InboxId, InstallationId, LocalWallet},
};
pub use kith_transport::client::{GrpcClient, LocalNode};
pub use shared::ClientConfig;
