//! Envelopes, their canonical order, and vector cursors (DESIGN.md
//! section 6).

use std::{cmp::Ordering, collections::BTreeMap};

use sha2::{Digest as _, Sha256};

use super::topic::Topic;

/// The id of an originator node.
pub type NodeId = u32;

/// One stored message: an opaque payload on a topic, stamped by the node
/// that first accepted it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Where it was published.
    pub topic: Topic,
    /// The bytes (an MLS message or a wrapped Welcome), opaque to the node.
    pub payload: Vec<u8>,
    /// The node that accepted it first.
    pub originator_node_id: NodeId,
    /// Strictly increasing per originator node, starting at 1.
    pub originator_sequence_id: u64,
    /// The originator's time when it accepted it, in ms since the Unix
    /// epoch; never decreasing per originator.
    pub originator_time_ms: u64,
}

impl Envelope {
    /// The canonical order key: `(time, node, sequence)`.
    pub fn order_key(&self) -> (u64, NodeId, u64) {
        (
            self.originator_time_ms,
            self.originator_node_id,
            self.originator_sequence_id,
        )
    }

    /// Compare two envelopes in canonical order.
    pub fn canonical_cmp(&self, other: &Self) -> Ordering {
        self.order_key().cmp(&other.order_key())
    }

    /// The bytes its originator node signs: a domain label, the originator
    /// fields, the topic and a SHA-256 of the payload. Hashing the payload
    /// keeps the signed input small; naming the topic stops a peer from
    /// moving a sealed payload to another topic.
    pub fn seal_input(&self) -> Vec<u8> {
        let topic = self.topic.to_string();
        let mut input = Vec::with_capacity(SEAL_DOMAIN.len() + 4 + 8 + 8 + 4 + topic.len() + 32);
        input.extend_from_slice(SEAL_DOMAIN);
        input.extend_from_slice(&self.originator_node_id.to_be_bytes());
        input.extend_from_slice(&self.originator_sequence_id.to_be_bytes());
        input.extend_from_slice(&self.originator_time_ms.to_be_bytes());
        // A topic string is at most a few hundred bytes (Topic bounds it).
        input.extend_from_slice(&u32::try_from(topic.len()).unwrap_or(u32::MAX).to_be_bytes());
        input.extend_from_slice(topic.as_bytes());
        input.extend_from_slice(&Sha256::digest(&self.payload));
        input
    }
}

/// The domain label of [`Envelope::seal_input`].
const SEAL_DOMAIN: &[u8] = b"kith envelope seal v1";

/// An envelope as nodes store, serve and replicate it: with its
/// originator's *seal*, an Ed25519 signature by the originator's node key
/// over [`Envelope::seal_input`]. A node accepts a replicated envelope only
/// under a seal by a configured peer, so no peer can speak in another
/// originator's name; a client can check the same seal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedEnvelope {
    /// The envelope.
    pub envelope: Envelope,
    /// The originator's signature (64 bytes). Empty for an envelope stored
    /// by a node before seals existed; its originator seals it when it
    /// serves it.
    pub seal: Vec<u8>,
}

/// A vector cursor: per originator node, the last sequence id seen. An
/// envelope is *after* the cursor if its sequence id is greater than the
/// cursor's entry for its originator (or the originator is absent).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cursor(BTreeMap<NodeId, u64>);

impl Cursor {
    /// The empty cursor: everything is after it.
    pub fn new() -> Self {
        Self::default()
    }

    /// The last sequence id seen from `node` (0 if none).
    pub fn get(&self, node: NodeId) -> u64 {
        self.0.get(&node).copied().unwrap_or(0)
    }

    /// Whether `envelope` is after this cursor.
    pub fn is_before(&self, envelope: &Envelope) -> bool {
        envelope.originator_sequence_id > self.get(envelope.originator_node_id)
    }

    /// Advance past `envelope` (never moves backwards).
    pub fn advance(&mut self, envelope: &Envelope) {
        let entry = self.0.entry(envelope.originator_node_id).or_insert(0);
        *entry = (*entry).max(envelope.originator_sequence_id);
    }

    /// The entries, by node id.
    pub fn entries(&self) -> impl Iterator<Item = (NodeId, u64)> + '_ {
        self.0.iter().map(|(n, s)| (*n, *s))
    }
}

impl FromIterator<(NodeId, u64)> for Cursor {
    fn from_iter<I: IntoIterator<Item = (NodeId, u64)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}
