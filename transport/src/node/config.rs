//! The node's configuration and limits, with the documented defaults.

use std::time::Duration;

use kith_engine::delivery::NodeId;

use super::rate_limit::BucketLimit;

/// Limits a node enforces; exceeding one is `RESOURCE_EXHAUSTED`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeLimits {
    /// Largest envelope payload in bytes (default 1 MiB).
    pub max_envelope_bytes: usize,
    /// Most envelopes in one publish (default 1,000).
    pub max_batch_envelopes: usize,
    /// Most envelopes in one query page (default 1,000).
    pub max_page_envelopes: usize,
    /// Most topics in one subscription (default 10,000).
    pub max_subscription_topics: usize,
    /// Most inboxes in one `GetIdentityUpdates` (default 10,000).
    pub max_identity_inboxes: usize,
    /// Most key packages in one upload or fetch (default 1,000).
    pub max_batch_key_packages: usize,
    /// Key-package fetches per requester installation (default burst 100,
    /// 60 per minute).
    pub fetch_per_requester: BucketLimit,
    /// Key-package fetches per target installation (default burst 20,
    /// 10 per minute): what protects a victim's pool from being drained.
    pub fetch_per_target: BucketLimit,
    /// How far a signed request's timestamp may be from the node's clock
    /// (default 5 minutes).
    pub timestamp_window: Duration,
}

impl Default for NodeLimits {
    fn default() -> Self {
        Self {
            max_envelope_bytes: 1024 * 1024,
            max_batch_envelopes: 1_000,
            max_page_envelopes: 1_000,
            max_subscription_topics: 10_000,
            max_identity_inboxes: 10_000,
            max_batch_key_packages: 1_000,
            fetch_per_requester: BucketLimit {
                burst: 100,
                per_minute: 60,
            },
            fetch_per_target: BucketLimit {
                burst: 20,
                per_minute: 10,
            },
            timestamp_window: Duration::from_secs(5 * 60),
        }
    }
}

/// A node's configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// This node's originator id.
    pub node_id: NodeId,
    /// The limits it enforces.
    pub limits: NodeLimits,
}

impl NodeConfig {
    /// A node with id `node_id` and the default limits.
    pub fn new(node_id: NodeId) -> Self {
        Self {
            node_id,
            limits: NodeLimits::default(),
        }
    }
}
