//! The delivery network's data model, shared by the node and its clients:
//! topics, envelopes in canonical order, vector cursors, and the node's
//! storage port (DESIGN.md section 6).
//!
//! ```text
//!  publish(topic, payload) ──► node stamps (originator id, sequence id, time) ──► NodeStore
//!  query(topic, cursor)    ◄── envelopes after the cursor, canonical order: (time, node, sequence)
//! ```

mod envelope;
mod node_store;
mod topic;

pub use envelope::{Cursor, Envelope, NodeId, SealedEnvelope};
pub use node_store::{
    BucketCharge, KeyPackagePool, MemoryNodeStore, NodeStore, Replicated, Sealer, SequencedUpdates,
    StoredKeyPackage,
};
pub use topic::{MAX_GROUP_ID_LEN, Topic, TopicError};

#[cfg(any(test, feature = "test-suite"))]
pub mod test_suite;
