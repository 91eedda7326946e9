//! The delivery-service node: one [`NodeLogic`] over a
//! [`NodeStore`](kith_engine::delivery::NodeStore), with its limits, rate
//! limits and request authentication.
//!
//! ```text
//!  gRPC service ─┐
//!                ├─► NodeLogic ──(blocking pool)──► NodeStore (sled, memory, later PostgreSQL)
//!  LocalNode   ──┘       └──► broadcast of new envelopes ──► subscriptions
//! ```

mod auth;
mod config;
mod error;
mod logic;
mod rate_limit;
mod server;
mod service;

pub use auth::{
    deniable_fetch_bytes, deniable_upload_bytes, fetch_signed_bytes, upload_signed_bytes,
};
pub use config::{NodeConfig, NodeLimits};
pub use error::{NodeError, RETRY_AFTER_METADATA};
pub use logic::{
    Clock, DeniableKeyPackageFetch, DeniableKeyPackageUpload, FetchedKeyPackage, KeyPackageFetch,
    KeyPackageUpload, NodeLogic, SystemClock,
};
pub use rate_limit::BucketLimit;
pub use server::serve;
pub use service::NodeService;
