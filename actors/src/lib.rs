//! `kith`: embeddable end-to-end encrypted messaging over MLS.
//!
//! A [`Client`] is one installation of one inbox (a wallet). It keeps its
//! state in sled, talks to a node (an in-process [`LocalNode`] or a remote
//! `kith-node`), and exposes conversations ([`Conversation`]) and a stream
//! of [`Event`]s.
//!
//! ```
//! use std::sync::Arc;
//!
//! use kith::{Client, GroupOptions, LocalNode, LocalWallet};
//! use kith_engine::delivery::MemoryNodeStore;
//! use kith_transport::node::{NodeConfig, NodeLogic};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // An embedded node; a remote one is `.node("http://host:port")`.
//! let node = LocalNode::new(Arc::new(NodeLogic::new(NodeConfig::new(1), MemoryNodeStore::default())));
//! let dir = tempfile::tempdir()?;
//! let open = |name: &str| {
//!     Client::builder()
//!         .wallet(LocalWallet::generate(&mut rand_core::OsRng))
//!         .data_dir(dir.path().join(name))
//!         .node(node.clone())
//!         .build()
//! };
//! let (alice, bob) = (open("alice").await?, open("bob").await?);
//! alice.register().await?;
//! bob.register().await?;
//!
//! let group = alice
//!     .create_group(&[bob.inbox_id()], GroupOptions::default().name("Climbing"))
//!     .await?;
//! group.send_text("Saturday, 9am?").await?;
//!
//! bob.sync().await?;
//! let bobs = bob.conversation(group.id()).await?;
//! assert_eq!(bobs.metadata().await?.name.as_deref(), Some("Climbing"));
//! assert_eq!(bobs.messages().await?[0].text(), Some("Saturday, 9am?"));
//! # Ok(()) }
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
//!
//! The node is trusted to store and forward, not to tell the truth: every
//! answer passes a `CheckedClient` (`kith_transport::client`), which
//! refuses what cannot be true, and a group skips an envelope that fails
//! for good after a few syncs instead of stopping on it (`poison.rs` says
//! which failures are retried and which are not).

mod builder;
mod client;
pub mod content;
mod error;
mod events;
mod gating;
mod group_actor;
mod installation_discovery;
mod key_package_manager;
mod network_poller;
mod poison;
mod query;
mod shared;
mod supervisor;

pub use builder::{CallbackSigner, ClientBuilder, Node, WalletSigner};
pub use client::{Client, Conversation, GroupOptions, Member, REGISTER_ATTEMPTS};
pub use content::{
    Attachment, Content, ContentError, FieldChange, GroupUpdated, Reaction, ReactionAction,
    ReadReceipt, RemoteAttachment, Reply,
};
pub use error::Error;
pub use events::{Event, Message, MessageId, Metadata};
pub use gating::{GatingVerdict, GatingVerifier};
pub use kith_engine::{
    group::{
        ConversationId, ConversationKind, Delivery, DmVerification, LegacyConversation, Permission,
        Policies, PolicyPreset,
        gating::{Gating, Require, TokenRule},
    },
    identity::{DmMode, InboxId, InstallationId, LocalWallet},
};
pub use kith_transport::client::{GrpcClient, LocalNode};
pub use query::{
    ConversationItem, ConversationQuery, DEFAULT_PAGE_SIZE, Direction, MessageCursor, MessagePage,
    MessageQuery,
};
pub use shared::ClientConfig;
