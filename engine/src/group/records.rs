//! The records the group engine stores, and nothing else: the bottom
//! layer of `group`, beside the store port that reads and writes them.
//!
//! Each part of the engine owns some of these records (the rewind history
//! its snapshots and retained envelopes, the fork monitor its fork state
//! and kept Welcomes, the bindings their deniable state, the outbox its
//! counters); they are defined here so that the store port can name them
//! without importing the parts. This module imports nothing from the rest
//! of `group` but the intent records.
//!
//! Records are MessagePack through serde, positional: a field added later
//! goes at the end with `#[serde(default)]`, so that records written by an
//! older version still decode.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{
    delivery::{Cursor, Envelope, NodeId, Topic},
    identity::{DmMode, InboxId, InstallationId},
};

/// An envelope's place in canonical order: `(time, node, sequence)`.
pub type OrderKey = (u64, NodeId, u64);

// ----- conversations and messages ---------------------------------------

/// A conversation's id: the group id for a group, and for a DM an id
/// derived from its two inboxes, so that both sides and all DM groups
/// between them share it (see [`dm_conversation_id`]).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConversationId(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl std::fmt::Display for ConversationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

impl std::fmt::Debug for ConversationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConversationId({self})")
    }
}

/// The conversation id of the DM between `a` and `b` (in either order).
pub fn dm_conversation_id(a: InboxId, b: InboxId) -> ConversationId {
    use sha2::{Digest, Sha256};
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut hasher = Sha256::new();
    hasher.update(b"kith dm conversation v1");
    hasher.update(lo.as_bytes());
    hasher.update(hi.as_bytes());
    ConversationId(hasher.finalize()[..16].to_vec())
}

/// Whether this installation still takes part in a conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConversationState {
    /// A member.
    Active,
    /// Removed by another member, or left.
    Removed,
}

/// A conversation in the conversation list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationRecord {
    /// Its id.
    pub id: ConversationId,
    /// For a DM, the other inbox.
    pub dm_peer: Option<InboxId>,
    /// Its MLS groups. A group has one; a DM that both sides created at
    /// once has several, and the lowest id is the one used for sending.
    #[serde(with = "byte_lists")]
    pub group_ids: Vec<Vec<u8>>,
    /// When this installation first saw it, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// Whether this installation is still a member.
    pub state: ConversationState,
    /// For a DM, its mode, fixed when the conversation was first stored:
    /// no later group of the conversation may have another.
    #[serde(default)]
    pub dm_mode: Option<DmMode>,
}

impl ConversationRecord {
    /// The group to send in: the lowest group id, which both sides agree on.
    pub fn active_group(&self) -> Option<&[u8]> {
        self.group_ids.iter().min().map(Vec::as_slice)
    }
}

/// Whether a stored message reached the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Delivery {
    /// Sent by this installation, not yet acknowledged by the node.
    Unpublished,
    /// On the node.
    Published,
    /// Received only in an epoch that lost to another branch of the group
    /// (DESIGN.md section 7). It turns back into `Published` when the
    /// sender's re-sent copy arrives in the canonical branch.
    Superseded,
    /// Sent by this installation in an epoch that lost, and it could not be
    /// re-sent (this installation is no longer a member).
    Failed,
}

/// A message as stored and shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// The conversation.
    pub conversation_id: ConversationId,
    /// The MLS group it came through.
    #[serde(with = "serde_bytes")]
    pub group_id: Vec<u8>,
    /// Its id (hash of sender, group and a random nonce).
    pub message_id: [u8; 32],
    /// Who sent it.
    pub sender_inbox: InboxId,
    /// From which installation.
    pub sender_installation: InstallationId,
    /// Its content type, e.g. `text/plain`.
    pub content_type: String,
    /// Its body.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
    /// The sender's clock when sending, ms since the Unix epoch.
    pub sent_at_ms: u64,
    /// Its place in the conversation's order: the node's time for received
    /// messages, the local time for own ones.
    pub time_ms: u64,
    /// Whether it reached the node.
    pub delivery: Delivery,
    /// In a deniable DM, the leaf key of a sender whose binding had not
    /// verified when the message arrived: who sent it is not known, and it
    /// must not be shown as verified. Cleared (and the sender filled in)
    /// when that leaf's binding verifies. Always `None` elsewhere.
    #[serde(default)]
    pub unbound_leaf: Option<[u8; 32]>,
    /// The text its sender gave for readers that do not know its content
    /// type.
    #[serde(default)]
    pub fallback: Option<String>,
}

impl StoredMessage {
    /// Whether the sender is known: always outside deniable DMs, and in
    /// one once the sending leaf's binding verified.
    pub fn is_verified(&self) -> bool {
        self.unbound_leaf.is_none()
    }
}

/// What the engine wants published.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outbound {
    /// Its id, increasing per group.
    pub id: u64,
    /// The topics to publish it on (a Welcome goes to every joiner's
    /// topic), as their string form. Stored once however many there are.
    pub topics: Vec<String>,
    /// The payload.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// The own message this carries, to mark it published.
    pub message_id: Option<[u8; 32]>,
}

// ----- per-group bookkeeping --------------------------------------------

/// Engine bookkeeping per group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// The conversation the group belongs to.
    pub conversation_id: Option<ConversationId>,
    /// The next intent id.
    pub next_intent_id: u64,
    /// The next outbox id.
    pub next_outbox_id: u64,
    /// When installations were last reconciled, ms since the Unix epoch.
    pub last_reconciled_ms: u64,
    /// The arrival number of the next envelope of the group topic.
    #[serde(default)]
    pub next_arrival: u64,
    /// Rollback metrics.
    #[serde(default)]
    pub rewind: RewindStats,
    /// Set when this installation found itself on a fork of the group.
    #[serde(default)]
    pub forked: Option<Fork>,
    /// An own commit merged: publish an epoch digest.
    #[serde(default)]
    pub digest_due: bool,
    /// When this installation last published an epoch digest.
    #[serde(default)]
    pub last_digest_ms: u64,
    /// The epoch this installation joined at (from a Welcome).
    #[serde(default)]
    pub joined_at_epoch: u64,
    /// The installation whose Welcome this one joined from (its adder),
    /// when its leaf names one: the branch it joined is that member's.
    #[serde(default)]
    pub welcomed_by: Option<InstallationId>,
    /// This installation. Its leaf names it too, but not once it was
    /// removed (the leaf is blank, or someone else's), and a removed
    /// member must still know its own messages (to fail them if the
    /// removal was a fork's).
    #[serde(default)]
    pub own_installation: Option<InstallationId>,
    /// The installations this installation saw removed, with the epoch
    /// each removal left (the latest [`MAX_REMOVED_KEPT`]). A member on a
    /// fork may be re-added by one its own branch removed: that member was
    /// in the last tree both branches shared (see `check_continuity`).
    #[serde(default)]
    pub removed_installations: Vec<(u64, InstallationId)>,
    /// When this installation applied the commit that removed it (ms since
    /// the Unix epoch); the state is deleted [`GroupConfig::retire_grace_ms`]
    /// later. `None` while a member, and in records from before it was kept
    /// (those retire once the removal settled).
    ///
    /// [`GroupConfig::retire_grace_ms`]: super::GroupConfig::retire_grace_ms
    #[serde(default)]
    pub removed_at_ms: Option<u64>,
    /// The epoch this installation has been in the canonical tree since,
    /// when it is older than `joined_at_epoch`: a member that healed from
    /// a fork was re-added in place, and was a member all along. `None`:
    /// since `joined_at_epoch`.
    #[serde(default)]
    pub member_since_epoch: Option<u64>,
    /// A member's branch parted from this one by an earlier commit, at an
    /// epoch not settled yet when it was seen.
    #[serde(default)]
    pub earlier_commit: Option<EarlierCommit>,
    /// The `written` number of the next own message tracked for re-sending.
    #[serde(default)]
    pub next_written: u64,
    /// Members' verified claims of an earlier commit for a settled epoch,
    /// waiting for that commit to arrive (fork evidence needs both).
    #[serde(default)]
    pub awaited_commits: Vec<EarlierCommit>,
    /// Commits that arrived after their epoch settled, sorting before the
    /// one applied, waiting for a member's claim.
    #[serde(default)]
    pub late_commits: Vec<LateCommit>,
    /// In a deniable DM: the bindings and this installation's leaf key.
    #[serde(default)]
    pub deniable: Option<DeniableState>,
}

/// What is kept of a group this installation is no longer a member of,
/// once its removal settled (no rollback can undo it any more): enough to
/// show the conversation as it was and to check that a later Welcome
/// continues it, and no secret. The group's MLS state, snapshots,
/// retained envelopes, claim and exporter secrets and deniable leaf key
/// are deleted when this is written (RFC 9420 section 8 asks removed
/// members to delete their group secrets, for forward secrecy).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredGroup {
    /// The MLS group id.
    #[serde(with = "serde_bytes")]
    pub group_id: Vec<u8>,
    /// The last epoch this installation was in.
    pub epoch: u64,
    /// That epoch's authenticator (public: members compare it out of band).
    #[serde(with = "serde_bytes")]
    pub epoch_authenticator: Vec<u8>,
    /// That epoch's GroupContext extensions (TLS), which carry the metadata.
    #[serde(with = "serde_bytes")]
    pub extensions: Vec<u8>,
    /// Each leaf of that epoch's tree: its credential (TLS) and signature
    /// key. A Welcome that continues the group comes from one of them.
    pub leaves: Vec<RetiredLeaf>,
    /// The members of that epoch, by inbox.
    pub members: Vec<(InboxId, Vec<InstallationId>)>,
    /// This installation's leaf index in that tree.
    pub own_leaf_index: u32,
    /// When the state was deleted, ms since the Unix epoch.
    pub retired_at_ms: u64,
}

/// One leaf of a [`RetiredGroup`]'s last tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetiredLeaf {
    /// The leaf's credential, TLS-encoded.
    #[serde(with = "serde_bytes")]
    pub credential: Vec<u8>,
    /// The leaf's signature key.
    #[serde(with = "serde_bytes")]
    pub signature_key: Vec<u8>,
}

impl GroupRecord {
    /// Split the record by the part of the engine that owns each field.
    pub(crate) fn into_parts(self) -> RecordParts {
        RecordParts {
            core: CoreState {
                conversation_id: self.conversation_id,
                last_reconciled_ms: self.last_reconciled_ms,
                digest_due: self.digest_due,
                last_digest_ms: self.last_digest_ms,
                joined_at_epoch: self.joined_at_epoch,
                welcomed_by: self.welcomed_by,
                own_installation: self.own_installation,
                removed_installations: self.removed_installations,
                removed_at_ms: self.removed_at_ms,
                member_since_epoch: self.member_since_epoch,
            },
            outbox: OutboxState {
                next_intent_id: self.next_intent_id,
                next_outbox_id: self.next_outbox_id,
            },
            history: HistoryState {
                next_arrival: self.next_arrival,
                next_written: self.next_written,
                stats: self.rewind,
            },
            forks: ForkState {
                forked: self.forked,
                earlier_commit: self.earlier_commit,
                awaited_commits: self.awaited_commits,
                late_commits: self.late_commits,
            },
            deniable: self.deniable,
        }
    }
}

/// A [`GroupRecord`] split by owner: what the coordinating `Group` keeps,
/// and the state of the outbox, the rewind history, the fork monitor and
/// (in a deniable DM) the bindings. The group is stored as one record, so
/// that an old record still decodes and one step writes it once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct RecordParts {
    pub(crate) core: CoreState,
    pub(crate) outbox: OutboxState,
    pub(crate) history: HistoryState,
    pub(crate) forks: ForkState,
    pub(crate) deniable: Option<DeniableState>,
}

impl RecordParts {
    /// The stored form.
    pub(crate) fn into_record(self) -> GroupRecord {
        let Self {
            core,
            outbox,
            history,
            forks,
            deniable,
        } = self;
        GroupRecord {
            conversation_id: core.conversation_id,
            next_intent_id: outbox.next_intent_id,
            next_outbox_id: outbox.next_outbox_id,
            last_reconciled_ms: core.last_reconciled_ms,
            next_arrival: history.next_arrival,
            rewind: history.stats,
            forked: forks.forked,
            digest_due: core.digest_due,
            last_digest_ms: core.last_digest_ms,
            joined_at_epoch: core.joined_at_epoch,
            welcomed_by: core.welcomed_by,
            own_installation: core.own_installation,
            removed_installations: core.removed_installations,
            removed_at_ms: core.removed_at_ms,
            member_since_epoch: core.member_since_epoch,
            earlier_commit: forks.earlier_commit,
            next_written: history.next_written,
            awaited_commits: forks.awaited_commits,
            late_commits: forks.late_commits,
            deniable,
        }
    }
}

/// What the coordinating `Group` itself keeps of its record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CoreState {
    pub(crate) conversation_id: Option<ConversationId>,
    pub(crate) last_reconciled_ms: u64,
    pub(crate) digest_due: bool,
    pub(crate) last_digest_ms: u64,
    pub(crate) joined_at_epoch: u64,
    pub(crate) welcomed_by: Option<InstallationId>,
    pub(crate) own_installation: Option<InstallationId>,
    pub(crate) removed_installations: Vec<(u64, InstallationId)>,
    pub(crate) removed_at_ms: Option<u64>,
    pub(crate) member_since_epoch: Option<u64>,
}

impl CoreState {
    /// The epoch this installation has been in the canonical tree since
    /// (see [`GroupRecord::member_since_epoch`]).
    pub(crate) fn member_since(&self) -> u64 {
        self.member_since_epoch
            .map_or(self.joined_at_epoch, |since| {
                since.min(self.joined_at_epoch)
            })
    }
}

/// How many removals a group record remembers for `check_continuity`.
pub(crate) const MAX_REMOVED_KEPT: usize = 64;

/// The outbox's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct OutboxState {
    /// The next intent id.
    pub(crate) next_intent_id: u64,
    /// The next outbox id.
    pub(crate) next_outbox_id: u64,
}

/// The rewind history's counters and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct HistoryState {
    /// The arrival number of the next envelope of the group topic.
    pub(crate) next_arrival: u64,
    /// The `written` number of the next own message tracked for re-sending.
    pub(crate) next_written: u64,
    /// Rollback metrics.
    pub(crate) stats: RewindStats,
}

/// The fork monitor's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ForkState {
    /// Set when this installation found itself on a fork of the group.
    pub(crate) forked: Option<Fork>,
    /// A member's branch parted from this one by an earlier commit, at an
    /// epoch not settled yet when it was seen.
    pub(crate) earlier_commit: Option<EarlierCommit>,
    /// Members' verified claims of an earlier commit for a settled epoch,
    /// waiting for that commit to arrive.
    pub(crate) awaited_commits: Vec<EarlierCommit>,
    /// Commits that arrived after their epoch settled, sorting before the
    /// one applied, waiting for a member's claim.
    pub(crate) late_commits: Vec<LateCommit>,
}

// ----- the rewind history's records --------------------------------------

/// The ring entry for one unsettled epoch transition. The snapshot bytes
/// are stored beside it, under their own key, so that scanning the ring
/// reads no secrets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochSnapshot {
    /// The epoch the snapshot captures (the one the commit left).
    pub epoch: u64,
    /// The arrival number of the commit applied to leave it: envelopes
    /// from this one on are replayed after a restore.
    pub arrival: u64,
    /// The applied commit's canonical position.
    pub commit_key: OrderKey,
    /// SHA-256 of the applied commit's bytes (a copy of it is no rival).
    pub commit_hash: [u8; 32],
    /// When the snapshot was taken (the driver's clock).
    pub taken_at_ms: u64,
    /// Digest of the epoch authenticator of `epoch`.
    pub auth_digest: [u8; 8],
}

/// An envelope of the group topic kept for replay.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetainedEnvelope {
    /// Arrival number, increasing per group.
    pub arrival: u64,
    /// Its bytes.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// Its canonical position.
    pub key: OrderKey,
    /// The epoch in its MLS header.
    pub epoch: u64,
    /// From a future epoch: not applied yet.
    pub held: bool,
    /// The application message it delivered, if any.
    pub message_id: Option<[u8; 32]>,
}

impl RetainedEnvelope {
    pub(crate) fn new(arrival: u64, envelope: &Envelope) -> Self {
        Self {
            arrival,
            payload: envelope.payload.clone(),
            key: envelope.order_key(),
            epoch: 0,
            held: false,
            message_id: None,
        }
    }

    /// The envelope, on the group's topic.
    pub fn envelope(&self, group_id: &[u8]) -> Envelope {
        Envelope {
            topic: Topic::Group(group_id.to_vec()),
            payload: self.payload.clone(),
            originator_time_ms: self.key.0,
            originator_node_id: self.key.1,
            originator_sequence_id: self.key.2,
        }
    }
}

/// A commit this installation published, remembered until its epoch
/// settles so that it is recognised (by the hash of its bytes) even after
/// a rollback brought back the state in which it is pending.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnCommit {
    /// SHA-256 of its bytes.
    pub hash: [u8; 32],
    /// The intent it carries out.
    pub intent_id: u64,
    /// The epoch it leaves.
    pub epoch: u64,
    /// Digest of that epoch's authenticator (which branch it was built on).
    pub auth_digest: [u8; 8],
    /// The Welcome to publish once the commit is canonical and settled.
    #[serde(with = "serde_bytes")]
    pub welcome: Option<Vec<u8>>,
    /// The installations the Welcome is for.
    pub welcome_to: Vec<InstallationId>,
    /// Their key packages' references, in the same order: which of the
    /// Welcome's secrets is whose, so that each joiner is sent its own
    /// (empty in records written before Welcomes were split: those go out
    /// whole).
    #[serde(default)]
    pub welcome_refs: Vec<Vec<u8>>,
    /// The group topic's cursor when the commit was staged: where its
    /// joiners start reading. Everything of the commit's new epoch comes
    /// after it, whatever order this installation saw envelopes in
    /// afterwards (held ones, a replay).
    pub joiner_cursor: Cursor,
}

/// An own application message sent in an epoch whose transition has not
/// settled, kept so that it can be re-sent if that epoch loses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnSend {
    /// Its id.
    pub message_id: [u8; 32],
    /// The epoch it was encrypted in.
    pub epoch: u64,
    /// Digest of that epoch's authenticator.
    pub auth_digest: [u8; 8],
    /// The encoded [`Content`].
    #[serde(with = "serde_bytes")]
    pub content: Vec<u8>,
    /// [`Group::advance`](crate::group::Group::advance) (re-)sends it: its epoch lost, or it was written
    /// while proposals waited for a commit (MLS sends nothing then).
    pub resend: bool,
    /// Its place in the order this installation wrote its messages: what
    /// waited goes out in that order, not in the store's (by id).
    #[serde(default)]
    pub written: u64,
}

/// Rollback metrics of one group, kept in its record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RewindStats {
    /// Rollbacks done.
    pub rollbacks: u64,
    /// Envelopes replayed by them.
    pub replayed: u64,
    /// The oldest a snapshot got before it was deleted, in ms.
    pub max_snapshot_age_ms: u64,
    /// Commits dropped because their epoch had settled.
    pub dropped_settled: u64,
}

// ----- the fork monitor's records -----------------------------------------

/// How this installation found itself on a fork.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fork {
    /// Its epoch when the fork was found.
    pub epoch: u64,
    /// The evidence.
    pub reason: String,
    /// When (the driver's clock).
    pub detected_at_ms: u64,
    /// When this installation last asked to be re-added.
    #[serde(default)]
    pub requested_at_ms: Option<u64>,
    /// The epoch whose canonical commit it missed.
    pub evidence_epoch: u64,
    /// That commit's canonical position.
    pub evidence_key: OrderKey,
}

/// A member's branch took a commit for an epoch this installation can
/// still roll back, sorting before the one it applied. The rollback should
/// follow once that commit arrives; if the epoch settles first (the commit
/// came too late, or waits for a proposal that lags), this installation is
/// on a fork, and the settling says so without waiting for another
/// message from that branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EarlierCommit {
    /// The epoch both branches left by different commits.
    pub epoch: u64,
    /// That epoch's authenticator digest (the same on both branches).
    pub auth_digest: [u8; 8],
    /// The canonical position of the member's commit for it.
    pub key: OrderKey,
}

/// A commit that arrived after its epoch settled and sorts before the one
/// applied: it could not be checked, and proves a fork only together with
/// a member's claim that its branch took it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LateCommit {
    /// The epoch it left.
    pub epoch: u64,
    /// Its canonical position.
    pub key: OrderKey,
}

/// A Welcome that re-adds this installation to a group it is still a
/// member of: several members may answer one rejoin request, at different
/// epochs, and the canonical re-add may be one whose Welcome arrives while
/// an earlier re-add's leaf is still in use. It is kept until that leaf
/// is removed (by the later re-add's commit).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeferredWelcome {
    /// The epoch the Welcome starts at.
    pub epoch: u64,
    /// The Welcome payload, as read from the welcome topic.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

impl DeferredWelcome {
    /// SHA-256 of the payload: the key it is kept under.
    pub(crate) fn hash(&self) -> [u8; 32] {
        Sha256::digest(&self.payload).into()
    }
}

/// When an installation's current leaf was added, so that a member can
/// tell a rejoin request that a re-add already answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeafAdded {
    /// The originator time of the commit that added it, ms.
    pub commit_time_ms: u64,
    /// The added leaf's encryption key: the record holds only while the
    /// leaf does (a rollback or an update replaces it).
    #[serde(with = "serde_bytes")]
    pub encryption_key: Vec<u8>,
}

// ----- the deniable bindings' records -----------------------------------

/// A leaf whose binding verified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoundLeaf {
    /// The leaf's signature key.
    pub leaf_key: [u8; 32],
    /// The inbox it speaks for.
    pub inbox: InboxId,
    /// The installation it speaks for.
    pub installation: InstallationId,
}

/// A binding received, waiting for [`Group::advance`](crate::group::Group::advance) to verify the tag
/// meant for this installation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingBinding {
    /// The sending leaf's signature key.
    pub leaf_key: [u8; 32],
    /// The epoch it was sent in.
    pub epoch: u64,
    /// That epoch's authenticator digest here: if the epoch is replaced by
    /// a rollback, the binding was of a losing branch and is dropped.
    pub auth_digest: [u8; 8],
    /// The inbox it claims.
    pub inbox: InboxId,
    /// The installation it claims.
    pub installation: InstallationId,
    /// The tag for this installation.
    pub tag: Vec<u8>,
    /// How far the cached identity log of `inbox` went when it arrived: an
    /// installation the log does not show is waited for until the log has
    /// been read further, and only then refused.
    #[serde(default)]
    pub log_sequence: u64,
}

/// The deniable side of a group's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeniableState {
    /// This installation's leaf signature key in the DM (its secret is kept
    /// under the store's `'e'` tag).
    pub own_leaf_key: [u8; 32],
    /// This installation's inbox; the peer is the DM's other inbox.
    pub own_inbox: InboxId,
    /// Leaves whose binding verified, this installation's own included.
    pub bound: Vec<BoundLeaf>,
    /// Bindings received and not verified yet.
    pub pending: Vec<PendingBinding>,
    /// This installation owes the DM a binding: it joined, leaves were
    /// added, or its last binding was sent in an epoch that lost.
    pub binding_due: bool,
    /// The epoch its last binding went out in.
    pub sent_epoch: Option<u64>,
    /// Why a binding failed, if one did. The DM stays unverified.
    pub failed: Option<String>,
}

impl DeniableState {
    pub(crate) fn new(own_leaf_key: [u8; 32], own_inbox: InboxId, me: InstallationId) -> Self {
        Self {
            own_leaf_key,
            own_inbox,
            bound: vec![BoundLeaf {
                leaf_key: own_leaf_key,
                inbox: own_inbox,
                installation: me,
            }],
            pending: Vec::new(),
            binding_due: false,
            sent_epoch: None,
            failed: None,
        }
    }

    pub(crate) fn bound_leaf(&self, leaf_key: &[u8]) -> Option<&BoundLeaf> {
        self.bound
            .iter()
            .find(|b| b.leaf_key.as_slice() == leaf_key)
    }
}

/// Lists of byte strings, encoded as lists of binary values rather than
/// lists of lists of integers (which MessagePack would spend a byte of
/// type tag on per byte).
pub(crate) mod byte_lists {
    use serde::{Deserialize as _, Deserializer, Serialize as _, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    pub(crate) fn serialize<S: Serializer>(
        lists: &[Vec<u8>],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let borrowed: Vec<&Bytes> = lists.iter().map(|b| Bytes::new(b)).collect();
        borrowed.serialize(serializer)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<Vec<u8>>, D::Error> {
        Ok(Vec::<ByteBuf>::deserialize(deserializer)?
            .into_iter()
            .map(ByteBuf::into_vec)
            .collect())
    }
}
