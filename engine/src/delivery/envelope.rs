//! Envelopes, their canonical order, and vector cursors (DESIGN.md
//! section 6).

use std::{cmp::Ordering, collections::BTreeMap};

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
