//! Intents: the durable outbox of changes this installation wants to make
//! to a group (DESIGN.md section 7).
//!
//! An intent is stored before anything is published and leaves the store
//! only when its change is in the group (or it failed for a reason the
//! application is told). Its state is an enum, so that a published intent
//! always knows which commit it is waiting for.

use serde::{Deserialize, Serialize};

use super::gating::{Admission, GatingRule, Require};
use crate::identity::{InboxId, InstallationId};

/// One change to a group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum IntentKind {
    /// Add inboxes: one key package per installation (TLS-serialized
    /// `MlsMessage`s, as the node hands them out), and the
    /// identity-log sequence each inbox was read at.
    AddMembers {
        /// The key packages.
        #[serde(with = "super::records::byte_lists")]
        key_packages: Vec<Vec<u8>>,
        /// Inbox -> sequence number recorded in the membership extension.
        sequences: Vec<(InboxId, u64)>,
        /// In a gated group, the verifier's admissions of the inboxes
        /// (see `gating.rs`); empty otherwise.
        #[serde(default)]
        admissions: Vec<Admission>,
    },
    /// Add installations to a deniable DM: a deniable key package each,
    /// with the installation the node handed it out for (its Welcome goes
    /// to that installation's topic). Nothing in a package says whose it
    /// is: the bindings check that, once the leaves are in.
    AddDeniable {
        /// The key packages.
        key_packages: Vec<DeniableAdd>,
        /// Inbox -> sequence number recorded in the membership extension.
        sequences: Vec<(InboxId, u64)>,
    },
    /// Remove inboxes, with all their installations.
    RemoveMembers {
        /// The inboxes.
        inboxes: Vec<InboxId>,
    },
    /// Set (`Some`) or clear (`None`) attributes.
    UpdateAttributes {
        /// Key -> new value.
        changes: Vec<(String, Option<String>)>,
    },
    /// Change the admin list (or the super-admin list).
    UpdateAdmins {
        /// Inboxes to add.
        add: Vec<InboxId>,
        /// Inboxes to remove.
        remove: Vec<InboxId>,
        /// Whether the super-admin list is meant.
        super_admin: bool,
    },
    /// Replace the policies (encoded as in the policies extension).
    SetPolicies {
        /// The encoded policies.
        #[serde(with = "serde_bytes")]
        encoded: Vec<u8>,
    },
    /// Replace the gating rules and how they combine (admissions stay).
    SetGating {
        /// The rules.
        rules: Vec<GatingRule>,
        /// How they combine.
        require: Require,
    },
    /// Bring installations in line with the identity logs.
    Reconcile {
        /// Key packages of installations to add.
        #[serde(with = "super::records::byte_lists")]
        key_packages: Vec<Vec<u8>>,
        /// Installations to remove.
        remove: Vec<InstallationId>,
        /// Inbox -> sequence number the group catches up to.
        sequences: Vec<(InboxId, u64)>,
    },
    /// Commit the proposals other members sent (e.g. a member leaving).
    CommitPending,
    /// Update this installation's leaf keys.
    UpdateKeys,
    /// Leave the group: a self-remove proposal that another member commits.
    Leave,
    /// Remove and re-add an installation that found itself on a fork and
    /// asked to be re-added, with a fresh key package of its own. Done
    /// without a commit if its leaf already changed (someone else re-added
    /// it).
    Readd {
        /// The installation.
        installation: InstallationId,
        /// Its key package (a TLS-serialized `MlsMessage`).
        #[serde(with = "serde_bytes")]
        key_package: Vec<u8>,
        /// The encryption key of its leaf when it asked.
        #[serde(with = "serde_bytes")]
        stale_leaf: Vec<u8>,
    },
}

/// One deniable key package to add, and whose the node says it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeniableAdd {
    /// The installation the node handed it out for.
    pub installation: InstallationId,
    /// The key package (a TLS-serialized `MlsMessage`).
    #[serde(with = "serde_bytes")]
    pub key_package: Vec<u8>,
}

/// A commit that carries out an intent: one this installation staged and
/// published, or (for a proposed change) another member's commit that
/// included the proposal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedCommit {
    /// The epoch the commit leaves.
    pub epoch: u64,
    /// SHA-256 of the commit's bytes; an own commit's record (with its
    /// Welcome) is kept under it until the epoch settles.
    pub commit_hash: [u8; 32],
    /// The reference of the intent's own proposal, if it went out as one
    /// first: any commit that includes it carries out the intent.
    #[serde(default, with = "serde_bytes")]
    pub proposal_ref: Option<Vec<u8>>,
}

/// A change sent as a standalone proposal, for whoever commits next.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProposedChange {
    /// The epoch the proposal was made in (it is void in any other).
    pub epoch: u64,
    /// Its reference (the hash MLS commits refer to it by).
    #[serde(with = "serde_bytes")]
    pub proposal_ref: Vec<u8>,
    /// When it was sent: after the policy's proposal wait, the proposer
    /// commits it itself.
    pub proposed_at_ms: u64,
}

/// Where an intent is in its life (DESIGN.md section 7).
///
/// ```text
///  ToPublish ──► Published ──(own commit canonical)──► Committed ──(settled)──► done
///   │    ▲          ▲  │                                  ▲  │
///   │    │  (wait   │  └──(another commit won)──► Regenerate ◄──(rolled back)
///   │    │  over)   │                                 ▲   │
///   └──► Proposed ──┴──(a commit included it)─────────┼───┘ (Committed)
///           └──(the epoch moved without it)───────────┘
///  any state ──(cannot be carried out)──► Failed
/// ```
///
/// Metadata changes and key updates go out first as proposals (when the
/// policy allows, see [`crate::group::ProposalPolicy::propose_first`]), so
/// that whoever commits next includes them; the proposer commits them
/// itself only if nobody did within the proposal wait. An intent that
/// another member's commit already satisfied is done without a commit of
/// its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IntentState {
    /// Not yet turned into a commit.
    ToPublish,
    /// Sent as a proposal, which the next commit of its epoch should
    /// include.
    Proposed(ProposedChange),
    /// Its commit is staged as the pending commit and published.
    Published(PublishedCommit),
    /// Its commit was merged as the canonical commit of its epoch, which
    /// has not settled yet: a rollback can still undo it. Its Welcome goes
    /// out when the epoch settles.
    Committed {
        /// The commit.
        commit: PublishedCommit,
        /// Where joiners start reading the group topic: just past the
        /// commit.
        joiner_cursor: crate::delivery::Cursor,
    },
    /// Its commit lost to another member's (or was rolled back): it must
    /// be rebuilt on the current epoch.
    Regenerate,
    /// It cannot be carried out; the application was told why.
    Failed {
        /// Why.
        reason: String,
        /// Whether the group's policy forbade it.
        denied: bool,
    },
}

impl IntentState {
    /// Whether [`crate::group::Group::advance`] should (re)build a commit
    /// for it.
    pub fn is_waiting(&self) -> bool {
        matches!(self, Self::ToPublish | Self::Regenerate)
    }

    /// Whether it reached an end state.
    pub fn is_final(&self) -> bool {
        matches!(self, Self::Failed { .. })
    }
}

impl IntentKind {
    /// Whether MLS can carry the change as a standalone proposal from its
    /// author: metadata changes (a group-context proposal, which validation
    /// checks against the proposer's role) and key updates. Membership
    /// changes are committed directly: the membership extension must change
    /// in the same commit as the leaves, and the committer sends the
    /// Welcome.
    pub fn is_proposable(&self) -> bool {
        matches!(
            self,
            Self::UpdateAttributes { .. }
                | Self::UpdateAdmins { .. }
                | Self::SetPolicies { .. }
                | Self::UpdateKeys
        )
    }
}

/// A stored intent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// Its id, increasing per group.
    pub id: u64,
    /// What it changes.
    pub kind: IntentKind,
    /// Where it is.
    pub state: IntentState,
}
