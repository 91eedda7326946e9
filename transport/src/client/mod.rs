//! Talking to a node: the [`DeliveryClient`] trait, implemented by
//! [`GrpcClient`] (a remote `kith-node`) and [`LocalNode`] (the same node
//! logic in-process, the embedded default).
//!
//! ```text
//!  engine/actors ──► DeliveryClient ─┬─► GrpcClient ──gRPC──► kith-node ──► NodeLogic
//!                                    └─► LocalNode ─────────────────────────► NodeLogic
//! ```
//!
//! [`FailoverClient`] spreads one client over several replicating nodes,
//! moving on when the one in use cannot be reached.
//!
//! A client does not take a node's word for anything: [`CheckedClient`]
//! wraps whichever `DeliveryClient` it uses and refuses answers that cannot
//! be true (see its module for what is checked, and what a node can still
//! do).

mod checked;
mod failover;
mod grpc;
mod local;

use std::pin::Pin;

use kith_engine::{
    delivery::{Cursor, Envelope, Topic},
    identity::{IdentityUpdate, InboxId},
};
use tokio_stream::Stream;

pub use checked::{CheckedClient, DEFAULT_PAGE_LIMIT, MAX_FUTURE_SKEW_MS, MAX_SEQUENCE_ID};
pub use failover::FailoverClient;
pub use grpc::GrpcClient;
pub use local::LocalNode;

use crate::node::{
    DeniableKeyPackageFetch, DeniableKeyPackageUpload, FetchedKeyPackage, KeyPackageFetch,
    KeyPackageUpload, NodeError, NodeLimits,
};

/// Why a call to a node failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The node refused the request; nothing changed on the node.
    #[error("the node refused the request: {0}")]
    Refused(NodeError),
    /// The node could not be reached, or the connection broke. For a
    /// publish, the outcome is unknown.
    #[error("node unavailable: {0}")]
    Unavailable(String),
    /// The node answered with data that does not decode, or that cannot be
    /// true (see [`CheckedClient`]). Nothing of the answer was used.
    #[error("malformed answer from the node: {0}")]
    Malformed(String),
}

impl From<NodeError> for ClientError {
    /// A node whose database is down did not refuse anything: the request
    /// may succeed later, as after a broken connection.
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Unavailable(message) => Self::Unavailable(message),
            other => Self::Refused(other),
        }
    }
}

/// One page of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryPage {
    /// The envelopes, in canonical order.
    pub envelopes: Vec<Envelope>,
    /// The cursor advanced past them.
    pub next_cursor: Cursor,
    /// Whether more may follow.
    pub more: bool,
}

/// What a node says about itself that clients act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's id (its originator id).
    pub node_id: u32,
    /// How long after an envelope's originator time every node has it, in
    /// ms: 0 for a strong order (a single node, or nodes sharing one
    /// database). Clients settle commits after it (DESIGN.md section 7).
    pub settle_window_ms: u64,
    /// The node's static X25519 public key: deniable key-package requests
    /// are MACed with a key derived from it (DESIGN.md section 8).
    pub static_key: [u8; 32],
    /// The limits the node enforces, as it advertises them
    /// ([`NodeLimits::default`] where it advertises none).
    pub limits: NodeLimits,
}

/// A live stream of envelopes of a subscription.
pub type EnvelopeStream = Pin<Box<dyn Stream<Item = Result<Envelope, ClientError>> + Send>>;

/// What a Kith client needs from a node.
#[async_trait::async_trait]
pub trait DeliveryClient: Send + Sync {
    /// Publish a batch, all or nothing; returns the stored envelopes.
    async fn publish(&self, batch: Vec<(Topic, Vec<u8>)>) -> Result<Vec<Envelope>, ClientError>;

    /// One page of `topic` after `cursor` (`limit` 0: the node's page size).
    async fn query(
        &self,
        topic: &Topic,
        cursor: &Cursor,
        limit: u32,
    ) -> Result<QueryPage, ClientError>;

    /// Catch up on `topics` from their cursors, then follow them live.
    async fn subscribe(&self, topics: Vec<(Topic, Cursor)>) -> Result<EnvelopeStream, ClientError>;

    /// Publish the next update of an identity log; returns its sequence.
    async fn publish_identity_update(&self, update: IdentityUpdate) -> Result<u64, ClientError>;

    /// Identity updates of many inboxes after given sequence numbers.
    async fn identity_updates(
        &self,
        requests: Vec<(InboxId, u64)>,
    ) -> Result<Vec<Vec<IdentityUpdate>>, ClientError>;

    /// Upload key packages; returns the one-time packages left.
    async fn upload_key_packages(&self, upload: KeyPackageUpload) -> Result<usize, ClientError>;

    /// Fetch one key package per target installation.
    async fn fetch_key_packages(
        &self,
        fetch: KeyPackageFetch,
    ) -> Result<Vec<FetchedKeyPackage>, ClientError>;

    /// Upload deniable key packages; returns the one-time deniable
    /// packages left.
    async fn upload_deniable_key_packages(
        &self,
        upload: DeniableKeyPackageUpload,
    ) -> Result<usize, ClientError>;

    /// Fetch one deniable key package per active installation of an inbox.
    async fn fetch_deniable_key_packages(
        &self,
        fetch: DeniableKeyPackageFetch,
    ) -> Result<Vec<FetchedKeyPackage>, ClientError>;

    /// The node's id, consistency (its settle window) and static key.
    async fn node_info(&self) -> Result<NodeInfo, ClientError>;
}
