//! [`GroupEvent`]: what the group engine tells the application, pulled
//! with [`Group::poll_event`](crate::group::Group::poll_event).
//!
//! Every part of the engine may add events (the outbox when an intent ends,
//! the rewind history's owner when it rolls back, the fork monitor when it
//! finds a fork, the bindings when a member verifies); they all go through
//! one queue, in the order they happened within a call.

use std::collections::VecDeque;

use super::{
    metadata::GroupMetadata,
    records::{RewindStats, StoredMessage},
};
use crate::identity::{InboxId, InstallationId};

/// The queue of events a call produces, oldest first.
pub(crate) type Events = VecDeque<GroupEvent>;

/// Something the application should hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupEvent {
    /// A message was stored (received, or sent by this installation).
    Message(StoredMessage),
    /// Installations joined or left.
    MembersChanged {
        /// Who committed the change.
        by: InboxId,
        /// Installations added.
        added: Vec<(InboxId, InstallationId)>,
        /// Installations removed.
        removed: Vec<(InboxId, InstallationId)>,
    },
    /// Attributes, admins or policies changed.
    MetadataChanged {
        /// Who committed the change.
        by: InboxId,
        /// The metadata now.
        metadata: Box<GroupMetadata>,
    },
    /// An intent is done.
    IntentDone {
        /// Its id.
        id: u64,
    },
    /// An intent failed for good.
    IntentFailed {
        /// Its id.
        id: u64,
        /// Why.
        reason: String,
        /// Whether the group's policy forbade it (rather than it no longer
        /// making sense).
        denied: bool,
    },
    /// A commit from another member broke a rule and was not merged.
    CommitRejected {
        /// Why.
        reason: String,
    },
    /// An envelope could not be used (malformed, stale, undecryptable).
    EnvelopeSkipped {
        /// Why.
        reason: String,
    },
    /// This installation is no longer a member.
    Removed,
    /// A received message was known only from an epoch that lost; it is
    /// kept, marked [`Delivery::Superseded`](super::records::Delivery::Superseded), until the sender's re-sent
    /// copy arrives.
    MessageSuperseded {
        /// Its id.
        message_id: [u8; 32],
    },
    /// An own message was sent in an epoch that lost and cannot be re-sent
    /// (this installation is no longer a member); it is marked
    /// [`Delivery::Failed`](super::records::Delivery::Failed).
    MessageFailed {
        /// Its id.
        message_id: [u8; 32],
        /// Why.
        reason: String,
    },
    /// The re-sent copy of a superseded message arrived in the canonical
    /// branch; the message is delivered again.
    MessageConfirmed {
        /// Its id.
        message_id: [u8; 32],
    },
    /// A commit arrived that sorts before the one applied for its epoch:
    /// the group was restored to that epoch and the envelopes since
    /// replayed in canonical order.
    RolledBack {
        /// The epoch restored.
        to_epoch: u64,
        /// How many envelopes were replayed.
        replayed: u64,
        /// The group's rollback metrics now.
        stats: RewindStats,
    },
    /// Epoch transitions settled and their snapshots were deleted.
    Settled {
        /// The group's rollback metrics now.
        stats: RewindStats,
    },
    /// A member on a fork asked to be re-added. The driver fetches a key
    /// package for the installation and queues [`IntentKind::Readd`](super::intent::IntentKind::Readd) with
    /// these fields.
    RejoinRequested {
        /// The member's inbox.
        inbox: InboxId,
        /// Its installation.
        installation: InstallationId,
        /// The encryption key of its leaf now.
        stale_leaf: Vec<u8>,
    },
    /// This installation, which was on a fork, joined the group again from
    /// a Welcome. Messages of the epochs between the fork and `epoch` may
    /// be missing: it could not decrypt them.
    Rejoined {
        /// The epoch it joined at.
        epoch: u64,
        /// The epoch it was in when it found the fork.
        forked_at: u64,
    },
    /// In a deniable DM, a leaf's binding verified: it is this
    /// installation of this inbox, and its messages are shown as verified.
    MemberVerified {
        /// The inbox.
        inbox: InboxId,
        /// The installation.
        installation: InstallationId,
    },
    /// In a deniable DM, a binding did not verify: a leaf is not the
    /// installation it claims (a key package substituted by the node, say).
    /// The DM stays unverified and sends no application message any more;
    /// tell the user.
    BindingFailed {
        /// Why.
        reason: String,
    },
    /// This installation found itself on a fork of the group: its epoch
    /// differs from the canonical one and it can no longer roll back.
    Forked {
        /// Its epoch.
        epoch: u64,
        /// The evidence.
        reason: String,
    },
}
