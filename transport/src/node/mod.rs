//! The delivery-service node: one [`NodeLogic`] over a
//! [`NodeStore`](kith_engine::delivery::NodeStore), with its limits, rate
//! limits and request authentication.
//!
//! ```text
//!  gRPC service ─┐
//!                ├─► NodeLogic ──(blocking pool)──► NodeStore (sled, memory, later PostgreSQL)
//!  LocalNode   ──┘       └──► broadcast of new envelopes ──► subscriptions
//!                                                       └──► peers pulling (SubscribeOriginated)
//!  replicator (one task per peer) ──► peer's SubscribeOriginated ──► NodeLogic::accept_replicated
//! ```
//!
//! A node with peers is an originator in an eventually consistent network
//! (DESIGN.md section 6): it stamps and seals what its clients publish,
//! pulls each peer's own envelopes, and serves everything it has in
//! canonical order from vector cursors.

mod auth;
mod config;
mod error;
mod logic;
mod rate_limit;
mod replicator;
mod server;
mod service;

pub use auth::{
    deniable_fetch_bytes, deniable_upload_bytes, fetch_signed_bytes,
    forwarded_deniable_fetch_bytes, upload_signed_bytes,
};
pub use config::{
    DEFAULT_SETTLE_WINDOW, MESSAGE_HEADROOM, NodeConfig, NodeLimits, Peer, envelope_message_bytes,
};
pub use error::{NodeError, RETRY_AFTER_METADATA};
pub use logic::{
    Clock, DeniableKeyPackageFetch, DeniableKeyPackageUpload, FetchedKeyPackage,
    ForwardedDeniableFetch, KeyPackageFetch, KeyPackageUpload, NodeLogic, ReplicationError,
    SystemClock,
};
pub use rate_limit::BucketLimit;
pub use replicator::{ReplicationDelay, spawn_replicators};
pub use server::serve;
pub use service::NodeService;
