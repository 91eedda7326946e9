//! Groups and DMs: the conversation engine (DESIGN.md sections 5, 7, 8
//! and 9).
//!
//! [`Group`] is the API: the driver makes every call through it. It owns
//! the group's parts, each a type that owns its state, has its own tests,
//! and says in its module docs what it never does; `Group` routes each
//! input and each command to the parts that own what it changes.
//!
//! ```text
//!  Group (group.rs)  the API: lifecycle, commands, advance, outputs
//!   │ │
//!   │ └─ each envelope ─► Input (input.rs)  routing, rollback and replay
//!   │                      │
//!   ▼                      ▼
//!  Parts (parts.rs)  the parts together: settling, flagging a fork
//!   ├─► Mls (mls.rs)                  the epoch's MLS state; every OpenMLS call
//!   │     └─► commit_plan ─► validate ─► roster
//!   ├─► Outbox (outbox.rs)            intents and payloads to publish
//!   │     ├─► shared_welcome            a Welcome split for many joiners
//!   │     ├─► RewindHistory
//!   │     └─► conversation
//!   ├─► ForkMonitor (forks.rs)        fork evidence, rejoin requests, kept Welcomes
//!   │     └─► RewindHistory
//!   ├─► RewindHistory (history.rs)    snapshot ring, retained envelopes, commit
//!   │                                 positions, own commits and sends
//!   ├─► Bindings (bindings.rs)        who is behind a deniable DM's leaves
//!   └─► conversation (conversation.rs)  conversations and messages
//!  everything above ─► records, store (the port), events, config, content,
//!                      aad, metadata, identities, signer, error
//! ```
//!
//! An arrow points from a caller to what it calls (`commit_plan` decides
//! what a commit carries, `validate` what every member checks, `roster`
//! who each leaf is).
//!
//! Dependencies point down this picture only: the records and the store
//! port import nothing above them, no part imports `Group`, and no two
//! modules import each other, directly or around a circle
//! (`engine/tests/layers.rs` checks it on every test run).
//!
//! The call order, the commit flow and where each envelope goes are in the
//! docs of [`Group`]; rollback and replay in `history` and `input`; forks
//! and their healing in `forks`; deniable DMs in `bindings`.

mod aad;
mod bindings;
mod commit_plan;
mod config;
mod content;
mod conversation;
mod error;
mod events;
mod forks;
pub mod gating;
#[allow(clippy::module_inception)]
mod group;
mod history;
mod identities;
mod input;
mod intent;
pub mod metadata;
mod mls;
mod mls_config;
mod outbox;
mod parts;
pub mod records;
mod roster;
mod shared_welcome;
mod signer;
pub mod store;
mod transcript;
mod validate;
mod welcome;

pub use bindings::{BindingView, DmVerification, binding_body, decode_binding};
pub use config::{GroupConfig, ProposalPolicy, REJOIN_RETRY_MS, RETIRE_GRACE_MS, RewindPolicy};
pub use content::{
    BranchCommit, CONTENT_TYPE_BINDING, CONTENT_TYPE_EPOCH_DIGEST, CONTENT_TYPE_GROUP_UPDATED,
    CONTENT_TYPE_TEXT, CONTROL_CONTENT_PREFIX, Content, ContentError, MAX_CONTENT_TYPE_LEN,
    MAX_FALLBACK_LEN, Outgoing, SharedWelcome, WelcomePayload, message_id,
};
pub use conversation::NewGroup;
pub use error::GroupError;
pub use events::GroupEvent;
pub use forks::RejoinRequest;
pub use group::{DIGEST_INTERVAL_MS, Group};
pub use history::{COMMIT_HISTORY, MAX_HELD, MAX_HELD_AHEAD, MAX_HELD_BYTES};
pub use identities::IdentityCache;
pub use intent::{DeniableAdd, Intent, IntentKind, IntentState, ProposedChange, PublishedCommit};
pub use metadata::{
    ConversationKind, GroupMetadata, LegacyConversation, Permission, Policies, PolicyPreset, Role,
};
pub use mls_config::{
    MAX_PAST_EPOCHS, OUT_OF_ORDER_TOLERANCE, PAST_EPOCH_MEMBER_BUDGET, past_epochs_for,
};
pub use outbox::KEPT_FAILED_INTENTS;
pub use records::{
    ConversationId, ConversationRecord, ConversationState, DeferredWelcome, Delivery, LeafAdded,
    Outbound, RewindStats, StoredMessage, dm_conversation_id,
};
pub use roster::ReconcilePlan;
pub use shared_welcome::{
    MAX_WELCOME_PARTS, WELCOME_INLINE_SAVINGS, WELCOME_PART_BYTES, assemble_welcome,
};
pub use signer::Me;
pub use store::{ClientStore, GroupSnapshots, KvEntries, KvStore, MemoryKvStore, MessageRange};
pub use transcript::{
    FIELD_ADMIN, FIELD_GATING, FIELD_POLICIES, FIELD_SUPER_ADMIN, FieldChangeWire, GroupUpdateWire,
    MAX_TRANSCRIPT_ENTRIES,
};
pub use validate::{CommitSummary, MAX_DENIABLE_LEAVES};

#[cfg(any(test, feature = "test-suite"))]
pub mod test_suite;

// The AAD decoder is crate-private; the fuzz targets reach it through
// `crate::fuzzing` (feature `fuzzing`, never in normal builds).
#[cfg(feature = "fuzzing")]
pub(crate) use aad::KithAad;
