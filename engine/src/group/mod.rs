//! Groups and DMs: the conversation engine (DESIGN.md sections 5, 7 and 9).
//!
//! ```text
//!  envelopes ──► Group::handle_envelope ─┬─► OpenMLS (process, validate, merge)
//!  commands  ──► Group::send_message      ├─► ClientStore (messages, cursor, intents, outbox)
//!               Group::queue_intent/advance┘
//!  outputs   ◄── Group::poll_outbound / poll_event
//! ```
//!
//! [`metadata`] holds the GroupContext extensions and policies; commits are
//! checked by `validate` before any merge; [`rewind`] rolls a group back
//! and replays when the network delivered a group's commits out of
//! canonical order; [`store`] is the client's own store port; [`identities`]
//! the identity cache commit checks consult.

mod aad;
mod config;
mod content;
pub mod deniable;
mod error;
mod events;
mod group_state;
mod heal;
mod identities;
mod intent;
pub mod metadata;
pub mod records;
pub mod rewind;
mod signer;
pub mod store;
mod validate;

pub use config::{GroupConfig, ProposalPolicy, REJOIN_RETRY_MS, RewindPolicy};
pub use content::{
    BranchCommit, CONTENT_TYPE_BINDING, CONTENT_TYPE_EPOCH_DIGEST, CONTENT_TYPE_TEXT,
    CONTROL_CONTENT_PREFIX, Content, ContentError, MAX_CONTENT_TYPE_LEN, WelcomePayload,
    message_id,
};
pub use deniable::{
    BindingView, DmVerification, MAX_DENIABLE_LEAVES, binding_body, decode_binding,
};
pub use error::GroupError;
pub use events::GroupEvent;
pub use group_state::{
    Group, KEPT_FAILED_INTENTS, MAX_PAST_EPOCHS, NewGroup, OUT_OF_ORDER_TOLERANCE, ReconcilePlan,
};
pub use heal::RejoinRequest;
pub use identities::IdentityCache;
pub use intent::{DeniableAdd, Intent, IntentKind, IntentState, ProposedChange, PublishedCommit};
pub use metadata::{ConversationKind, GroupMetadata, Permission, Policies, PolicyPreset, Role};
pub use records::{
    ConversationId, ConversationRecord, ConversationState, DeferredWelcome, Delivery, LeafAdded,
    Outbound, RewindStats, StoredMessage, dm_conversation_id,
};
pub use signer::Me;
pub use store::{ClientStore, GroupSnapshots, KvEntries, KvStore, MemoryKvStore};
pub use validate::CommitSummary;

#[cfg(any(test, feature = "test-suite"))]
pub mod test_suite;
