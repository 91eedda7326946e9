//! The node's configuration and limits, with the documented defaults.

use std::time::Duration;

use kith_engine::delivery::NodeId;

use super::rate_limit::BucketLimit;

/// Limits a node enforces; exceeding one is `RESOURCE_EXHAUSTED`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeLimits {
    /// Largest envelope payload in bytes (default 2 MiB: a commit at
    /// 10,000 members carries its path encrypted to most of them, about
    /// 90 bytes each).
    pub max_envelope_bytes: usize,
    /// Largest gRPC message the node decodes or encodes, request or
    /// response, in bytes (default 4 MiB). Pages and subscription batches
    /// are cut to fit it; it must exceed `max_envelope_bytes` by
    /// [`MESSAGE_HEADROOM`] so that any one envelope fits.
    pub max_message_bytes: usize,
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
    /// Key-package fetches per requester installation (default burst
    /// 10,000, 10,000 per minute): enough to create a group of 10,000
    /// installations at once; it bounds one requester's load on the node.
    pub fetch_per_requester: BucketLimit,
    /// Key-package fetches per target installation (default burst 20,
    /// 10 per minute): what protects a victim's pool from being drained.
    pub fetch_per_target: BucketLimit,
    /// Key-package fetches of one target by one requester (default burst 5,
    /// 2 per minute): one party takes at most this share of a target's
    /// allowance, so it cannot starve everyone else's adds of that target.
    pub fetch_per_pair: BucketLimit,
    /// How far a signed request's timestamp may be from the node's clock
    /// (default 5 minutes).
    pub timestamp_window: Duration,
}

impl Default for NodeLimits {
    fn default() -> Self {
        Self {
            max_envelope_bytes: 2 * 1024 * 1024,
            max_message_bytes: 4 * 1024 * 1024,
            max_batch_envelopes: 1_000,
            max_page_envelopes: 1_000,
            max_subscription_topics: 10_000,
            max_identity_inboxes: 10_000,
            max_batch_key_packages: 1_000,
            fetch_per_requester: BucketLimit {
                burst: 10_000,
                per_minute: 10_000,
            },
            fetch_per_target: BucketLimit {
                burst: 20,
                per_minute: 10,
            },
            fetch_per_pair: BucketLimit {
                burst: 5,
                per_minute: 2,
            },
            timestamp_window: Duration::from_secs(5 * 60),
        }
    }
}

/// What a message needs beyond its envelopes' payloads: room for one
/// envelope's topic, originator fields and seal, and the message framing.
pub const MESSAGE_HEADROOM: usize = 64 * 1024;

/// The bytes one envelope takes in a message, a bound for cutting pages:
/// its payload, its topic, and 256 bytes for originator fields, seal and
/// framing.
pub fn envelope_message_bytes(topic_len: usize, payload_len: usize) -> usize {
    payload_len + topic_len + 256
}

impl NodeLimits {
    /// Check that the limits fit together: any one envelope must fit in a
    /// message.
    ///
    /// # Errors
    /// A message that says which limit to raise.
    pub fn check(&self) -> Result<(), String> {
        if self.max_message_bytes < self.max_envelope_bytes + MESSAGE_HEADROOM {
            return Err(format!(
                "max_message_bytes ({}) must be at least max_envelope_bytes ({}) plus {} bytes \
                 of headroom",
                self.max_message_bytes, self.max_envelope_bytes, MESSAGE_HEADROOM
            ));
        }
        Ok(())
    }
}

/// Another originator node this node replicates with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its originator id.
    pub node_id: NodeId,
    /// Its Ed25519 public key, which must seal every envelope it originates.
    pub public_key: ed25519_dalek::VerifyingKey,
    /// Where to reach its gRPC service, e.g. `http://127.0.0.1:5557`.
    pub url: String,
}

/// The settle window a node with peers reports by default: how long after
/// an envelope's originator time its position in the canonical order is
/// final. It must cover replication lag between healthy peers (a few
/// milliseconds on a LAN, tens across regions) with a wide margin; a
/// longer window costs clients more retained snapshots and delays each
/// Welcome by that much, because Welcomes wait for their commit to settle.
pub const DEFAULT_SETTLE_WINDOW: Duration = Duration::from_millis(1_000);

/// A node's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// This node's originator id.
    pub node_id: NodeId,
    /// The limits it enforces.
    pub limits: NodeLimits,
    /// The nodes it replicates with. None: one node, a strong order.
    pub peers: Vec<Peer>,
    /// The settle window reported when there are peers (default
    /// [`DEFAULT_SETTLE_WINDOW`]).
    pub settle_window: Duration,
}

impl NodeConfig {
    /// A node with id `node_id`, the default limits, and no peers.
    pub fn new(node_id: NodeId) -> Self {
        Self {
            node_id,
            limits: NodeLimits::default(),
            peers: Vec::new(),
            settle_window: DEFAULT_SETTLE_WINDOW,
        }
    }

    /// The settle window clients must use: 0 for a node on its own (its
    /// order is strong), the configured window for a node with peers.
    pub fn settle_window_ms(&self) -> u64 {
        if self.peers.is_empty() {
            0
        } else {
            u64::try_from(self.settle_window.as_millis()).unwrap_or(u64::MAX)
        }
    }

    /// The configured peer with originator id `node_id`.
    pub fn peer(&self, node_id: NodeId) -> Option<&Peer> {
        self.peers.iter().find(|peer| peer.node_id == node_id)
    }
}
