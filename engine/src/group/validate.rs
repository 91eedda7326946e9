//! Commit validation: what every member checks before it merges a commit
//! (DESIGN.md sections 5 and 9), and what the engine checks of its own
//! commits before publishing them.
//!
//! - Policies are evaluated against the proposer of each change, with the
//!   roles and policies of the epoch the commit leaves.
//! - Added and removed leaves must match the membership extension and the
//!   identity logs at the sequence numbers it records.
//! - Any forbidden change rejects the whole commit.

use std::collections::{BTreeMap, BTreeSet};

use openmls::prelude::{
    LeafNode, LeafNodeIndex, Member, MlsGroup, Proposal, QueuedProposal, Sender, StagedCommit,
};

use super::{
    error::GroupError,
    identities::IdentityCache,
    metadata::{GroupMetadata, Role},
    records::DeniableState,
    roster::{Roster, leaf_identity},
};
use crate::identity::{
    DEFAULT_MAX_INSTALLATIONS, InboxId, InstallationId, check_pseudonym, credential_inbox,
};

/// The most leaves a deniable DM may have: every installation of both
/// inboxes.
pub const MAX_DENIABLE_LEAVES: usize = 2 * DEFAULT_MAX_INSTALLATIONS;

/// What a valid commit changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitSummary {
    /// Who committed.
    pub committer: InboxId,
    /// From which installation (`None` in a deniable DM, whose leaves do
    /// not say).
    pub committer_installation: Option<InstallationId>,
    /// Installations added.
    pub added: Vec<(InboxId, InstallationId)>,
    /// Installations removed.
    pub removed: Vec<(InboxId, InstallationId)>,
    /// The metadata after the commit.
    pub metadata: GroupMetadata,
    /// Whether attributes, admins, policies or gating rules changed.
    pub metadata_changed: bool,
    /// Whether leaves were added (in a deniable DM, `added` stays empty
    /// until their bindings say whose they are).
    pub leaves_added: bool,
}

impl CommitSummary {
    /// Whether the commit added or removed leaves.
    pub(crate) fn changed_leaves(&self) -> bool {
        self.leaves_added || !self.removed.is_empty()
    }
}

/// Why a commit cannot be merged (yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The identity cache must reach these sequence numbers first.
    NeedIdentities(Vec<(InboxId, u64)>),
    /// The commit breaks a rule; it is rejected whole.
    Reject(String),
    /// The commit disagrees with the cached logs of these inboxes, which
    /// the driver has not read again yet ([`GroupError::IdentitiesDisputed`]).
    Disputed(Vec<InboxId>),
}

fn reject(reason: impl Into<String>) -> Verdict {
    Verdict::Reject(reason.into())
}

/// The verdict on an input that disagrees with `inbox`'s cached log: read
/// the log again first, unless that was done; then `reason` rejects it.
fn disputed(identities: &IdentityCache, inbox: &InboxId, reason: String) -> Verdict {
    if identities.is_final(inbox) {
        Verdict::Reject(reason)
    } else {
        Verdict::Disputed(vec![*inbox])
    }
}

/// Validate `staged`, a commit by leaf `committer` of `group`, whose
/// metadata before the commit is `old`.
pub(crate) fn validate_commit(
    group: &MlsGroup,
    old: &GroupMetadata,
    staged: &StagedCommit,
    committer: LeafNodeIndex,
    identities: &IdentityCache,
) -> Result<CommitSummary, Verdict> {
    let (committer_inbox, committer_installation) = leaf_identity(group, committer)
        .ok_or_else(|| reject("the committer's leaf carries no valid Kith credential"))?;
    let new = GroupMetadata::from_extensions(staged.group_context().extensions())
        .map_err(|e| reject(format!("metadata after the commit: {e}")))?;
    if new.immutable != old.immutable {
        return Err(reject("the commit changes the immutable metadata"));
    }
    let proposed = read_proposals(group, staged)?;
    if let Some(leaf) = staged.update_path_leaf_node() {
        let inbox = credential_inbox(leaf.credential()).ok();
        if inbox != Some(committer_inbox)
            || leaf.signature_key().as_slice() != committer_installation.as_bytes()
        {
            return Err(reject("the committer's new leaf changes its identity"));
        }
    }
    let old_inboxes = check_membership(group, old, &new, &proposed)?;
    // Every installation the commit adds or keeps because of the logs must
    // be checked against the logs at the recorded sequence.
    let need = identities.behind(&new.membership);
    if !need.is_empty() {
        return Err(Verdict::NeedIdentities(need));
    }
    check_adds(old, &new, identities, &proposed.added, &old_inboxes)?;
    check_gating(old, &new, &proposed.added, &old_inboxes)?;
    check_removals(old, &new, identities, &proposed)?;
    let metadata_changed = new.mutable != old.mutable
        || new.policies != old.policies
        || !new.gating.same_rules(&old.gating);
    if metadata_changed {
        let proposer = proposed
            .metadata_proposer
            .ok_or_else(|| reject("the metadata changed without a group-context proposal"))?;
        check_metadata_change(old, &new, &proposer).map_err(Verdict::Reject)?;
    }
    Ok(CommitSummary {
        committer: committer_inbox,
        committer_installation: Some(committer_installation),
        leaves_added: !proposed.added.is_empty(),
        added: proposed
            .added
            .into_iter()
            .map(|a| (a.inbox, a.installation))
            .collect(),
        removed: proposed
            .removed
            .into_iter()
            .map(|r| (r.inbox, r.installation))
            .collect(),
        metadata: new,
        metadata_changed,
    })
}

/// A leaf a commit adds, and who proposed it.
struct Added {
    by: InboxId,
    inbox: InboxId,
    installation: InstallationId,
}

/// A leaf a commit removes, who proposed it, and whether it removes itself.
struct Removed {
    by: InboxId,
    inbox: InboxId,
    installation: InstallationId,
    own: bool,
}

/// What a commit's proposals do, as far as the rules care.
struct Proposed {
    added: Vec<Added>,
    removed: Vec<Removed>,
    /// Who proposed the group-context change, if one is covered.
    metadata_proposer: Option<InboxId>,
}

/// Read the commit's proposals: every one from a member with a Kith
/// credential, of a type Kith uses, an update that keeps its identity, and
/// at most one group-context change.
fn read_proposals(group: &MlsGroup, staged: &StagedCommit) -> Result<Proposed, Verdict> {
    let mut proposed = Proposed {
        added: Vec::new(),
        removed: Vec::new(),
        metadata_proposer: None,
    };
    for queued in staged.queued_proposals() {
        let Sender::Member(sender_leaf) = queued.sender() else {
            return Err(reject("a proposal from outside the group"));
        };
        let proposer = leaf_identity(group, *sender_leaf)
            .ok_or_else(|| reject("a proposal from a leaf without a Kith credential"))?;
        match queued.proposal() {
            Proposal::Add(add) => {
                let leaf = add.key_package().leaf_node();
                let inbox = credential_inbox(leaf.credential())
                    .map_err(|e| reject(format!("an added leaf: {e}")))?;
                let installation = InstallationId(
                    leaf.signature_key()
                        .as_slice()
                        .try_into()
                        .map_err(|_| reject("an added leaf's signature key is not Ed25519"))?,
                );
                proposed.added.push(Added {
                    by: proposer.0,
                    inbox,
                    installation,
                });
            }
            Proposal::Remove(remove) => {
                let (inbox, installation) = leaf_identity(group, remove.removed())
                    .ok_or_else(|| reject("a removal of an empty or invalid leaf"))?;
                proposed.removed.push(Removed {
                    by: proposer.0,
                    inbox,
                    installation,
                    own: *sender_leaf == remove.removed(),
                });
            }
            Proposal::Update(update) => {
                check_update(update.leaf_node(), proposer.0, proposer.1)
                    .map_err(Verdict::Reject)?;
            }
            Proposal::GroupContextExtensions(_) => {
                if proposed.metadata_proposer.replace(proposer.0).is_some() {
                    return Err(reject("more than one group-context change in one commit"));
                }
            }
            _ => {
                return Err(reject(format!(
                    "proposal type {:?} is not used by Kith",
                    queued.proposal().proposal_type()
                )));
            }
        }
    }
    Ok(proposed)
}

/// Membership: the inboxes with leaves after the commit are exactly the
/// inboxes of the membership extension, whose sequences never go back.
/// Returns the inboxes with leaves before the commit.
fn check_membership(
    group: &MlsGroup,
    old: &GroupMetadata,
    new: &GroupMetadata,
    proposed: &Proposed,
) -> Result<BTreeSet<InboxId>, Verdict> {
    // Only adds and removals change whose the leaves are (an update keeps
    // its leaf's identity, checked above and in `check_update`), and the
    // leaves matched `old.membership` when the last epoch began: a commit
    // that changes neither need not read every leaf again, which is most
    // of its cost in a large group.
    if proposed.added.is_empty() && proposed.removed.is_empty() && new.membership == old.membership
    {
        return Ok(old.membership.keys().copied().collect());
    }
    let mut leaves: BTreeMap<InboxId, BTreeSet<InstallationId>> = BTreeMap::new();
    for member in group.members() {
        if let Some(identity) = leaf_identity(group, member.index) {
            leaves.entry(identity.0).or_default().insert(identity.1);
        }
    }
    let old_inboxes: BTreeSet<InboxId> = leaves.keys().copied().collect();
    for removed in &proposed.removed {
        if let Some(set) = leaves.get_mut(&removed.inbox) {
            set.remove(&removed.installation);
            if set.is_empty() {
                leaves.remove(&removed.inbox);
            }
        }
    }
    for added in &proposed.added {
        if !leaves
            .entry(added.inbox)
            .or_default()
            .insert(added.installation)
        {
            return Err(reject(format!(
                "installation {} is added twice",
                added.installation
            )));
        }
    }
    let new_inboxes: BTreeSet<InboxId> = leaves.keys().copied().collect();
    let recorded: BTreeSet<InboxId> = new.membership.keys().copied().collect();
    if new_inboxes != recorded {
        return Err(reject(
            "the membership extension does not match the members after the commit",
        ));
    }
    for (inbox, sequence) in &new.membership {
        if let Some(previous) = old.membership.get(inbox)
            && sequence < previous
        {
            return Err(reject(format!(
                "the identity-log sequence of {inbox} goes back from {previous} to {sequence}"
            )));
        }
    }
    Ok(old_inboxes)
}

/// Every added installation is active in its inbox's log at the recorded
/// sequence, and whoever brings in a new inbox may add members.
fn check_adds(
    old: &GroupMetadata,
    new: &GroupMetadata,
    identities: &IdentityCache,
    added: &[Added],
    old_inboxes: &BTreeSet<InboxId>,
) -> Result<(), Verdict> {
    for Added {
        by,
        inbox,
        installation,
    } in added
    {
        let sequence = new.membership.get(inbox).copied().unwrap_or(0);
        if identities.active_at(inbox, installation, sequence) != Some(true) {
            return Err(disputed(
                identities,
                inbox,
                format!(
                    "installation {installation} is not active in the identity log of {inbox} \
                     at sequence {sequence}"
                ),
            ));
        }
        // The two inboxes of a DM are its members by definition; the
        // policy governs everyone else.
        let dm_member = old
            .immutable
            .dm_members
            .is_some_and(|(a, b)| *inbox == a || *inbox == b);
        if !old_inboxes.contains(inbox)
            && !dm_member
            && !old.policies.add_member.allows(old.role(by))
        {
            return Err(reject(format!("{by} may not add members")));
        }
    }
    Ok(())
}

/// Every inbox the commit brings in passes the gating rules of the epoch
/// it leaves, and the commit records admissions only for those inboxes
/// (see `gating.rs` for why this, and not a chain query, is the check).
fn check_gating(
    old: &GroupMetadata,
    new: &GroupMetadata,
    added: &[Added],
    old_inboxes: &BTreeSet<InboxId>,
) -> Result<(), Verdict> {
    let joining: BTreeSet<InboxId> = added
        .iter()
        .map(|a| a.inbox)
        .filter(|i| !old_inboxes.contains(i))
        .collect();
    if new.gating.admissions != old.gating.admissions
        && let Some(stranger) = new
            .gating
            .admissions
            .iter()
            .find(|a| !joining.contains(&a.inbox))
    {
        return Err(reject(format!(
            "the commit records a gating admission of {}, which it does not add",
            stranger.inbox
        )));
    }
    let rules = old.gating.check();
    for inbox in &joining {
        let admitted = rules.admission_in(&new.gating.admissions, inbox).is_some();
        if !rules.admits(inbox, admitted) {
            return Err(reject(format!(
                "{inbox} is added without satisfying the group's gating rules"
            )));
        }
    }
    Ok(())
}

/// A removal is allowed when the installation leaves by itself, is re-added
/// in the same commit (a fork healed), was revoked in its log, or its whole
/// inbox goes and the proposer may remove members (a super admin only by a
/// super admin).
fn check_removals(
    old: &GroupMetadata,
    new: &GroupMetadata,
    identities: &IdentityCache,
    proposed: &Proposed,
) -> Result<(), Verdict> {
    for Removed {
        by,
        inbox,
        installation,
        own,
    } in &proposed.removed
    {
        if *own {
            continue; // leaving is always allowed
        }
        // Removed and added again in one commit: a forked installation
        // re-added (its key package proves it asked for a new leaf).
        if proposed
            .added
            .iter()
            .any(|a| a.inbox == *inbox && a.installation == *installation)
        {
            continue;
        }
        let revoked = new.membership.get(inbox).is_some_and(|sequence| {
            identities.active_at(inbox, installation, *sequence) == Some(false)
        });
        if revoked {
            continue;
        }
        if new.membership.contains_key(inbox) {
            return Err(disputed(
                identities,
                inbox,
                format!(
                    "installation {installation} of {inbox} is removed while still active in \
                     its identity log"
                ),
            ));
        }
        let role = old.role(by);
        if !old.policies.remove_member.allows(role) {
            return Err(reject(format!("{by} may not remove members")));
        }
        if old.mutable.super_admins.contains(inbox) && role != Role::SuperAdmin {
            return Err(reject(format!(
                "only a super admin may remove the super admin {inbox}"
            )));
        }
    }
    Ok(())
}

/// A member's key update may replace its leaf's keys, never its identity:
/// the new leaf names the same inbox and keeps the installation's
/// signature key.
pub(crate) fn check_update(
    leaf: &LeafNode,
    inbox: InboxId,
    installation: InstallationId,
) -> Result<(), String> {
    let same_inbox = credential_inbox(leaf.credential()).ok() == Some(inbox);
    if !same_inbox || leaf.signature_key().as_slice() != installation.as_bytes() {
        return Err("a key update that changes its member's identity".into());
    }
    Ok(())
}

/// Check each metadata change of `old` -> `new` against the policies of
/// `old` for `proposer`.
pub(crate) fn check_metadata_change(
    old: &GroupMetadata,
    new: &GroupMetadata,
    proposer: &InboxId,
) -> Result<(), String> {
    check_metadata_change_by_role(old, new, old.role(proposer), &proposer.to_string())
}

/// Check each metadata change of `old` -> `new` against the policies of
/// `old` for a proposer with `role`, named `proposer` in errors.
pub(crate) fn check_metadata_change_by_role(
    old: &GroupMetadata,
    new: &GroupMetadata,
    role: Role,
    proposer: &str,
) -> Result<(), String> {
    let keys: BTreeSet<&String> = old
        .mutable
        .attributes
        .keys()
        .chain(new.mutable.attributes.keys())
        .collect();
    for key in keys {
        if old.mutable.attributes.get(key) != new.mutable.attributes.get(key)
            && !old.policies.attribute(key).allows(role)
        {
            return Err(format!("{proposer} may not change the attribute {key:?}"));
        }
    }
    if old.mutable.admins != new.mutable.admins && !old.policies.manage_admins.allows(role) {
        return Err(format!("{proposer} may not manage admins"));
    }
    if old.mutable.super_admins != new.mutable.super_admins && role != Role::SuperAdmin {
        return Err(format!("{proposer} may not manage super admins"));
    }
    if (old.policies != new.policies || !old.gating.same_rules(&new.gating))
        && !old.policies.change_policies.allows(role)
    {
        return Err(format!("{proposer} may not change policies"));
    }
    Ok(())
}

/// A deniable leaf's new version (a key update, or a committer's path) may
/// change its encryption key, never its signature key or pseudonym: those
/// are what its binding speaks for.
pub(crate) fn check_deniable_update(
    leaf: Option<Member>,
    new: &openmls::prelude::LeafNode,
) -> Result<(), String> {
    let leaf = leaf.ok_or("an update from an empty leaf")?;
    if new.signature_key().as_slice() != leaf.signature_key.as_slice()
        || *new.credential() != leaf.credential
    {
        return Err("a key update that changes its leaf's key or pseudonym".into());
    }
    Ok(())
}

/// Check the tree of a Welcome into a deniable DM: pseudonymous leaves
/// only, no more than [`MAX_DENIABLE_LEAVES`], and a membership record
/// that names only the DM's inboxes.
pub(crate) fn check_deniable_welcome(
    metadata: &GroupMetadata,
    members: impl Iterator<Item = Member>,
) -> Result<(), GroupError> {
    let mut leaves = 0;
    for member in members {
        check_pseudonym(&member.credential)
            .map_err(|e| GroupError::InvalidInput(format!("a leaf of the deniable DM: {e}")))?;
        leaves += 1;
    }
    if leaves > MAX_DENIABLE_LEAVES {
        return Err(GroupError::InvalidInput(format!(
            "a deniable DM has at most {MAX_DENIABLE_LEAVES} leaves, this one {leaves}"
        )));
    }
    let dm = metadata.immutable.dm_members;
    if metadata
        .membership
        .keys()
        .any(|inbox| !dm.is_some_and(|(a, b)| *inbox == a || *inbox == b))
    {
        return Err(GroupError::InvalidInput(
            "the membership record names an inbox that is not in the DM".into(),
        ));
    }
    Ok(())
}

/// Validate `staged`, a commit by leaf `committer` of the deniable DM
/// `group`, whose metadata before it is `old`. Leaves are pseudonyms:
/// adds must be pseudonymous leaves (their bindings check whose they
/// are), nobody is removed but a member leaving or a leaf replaced in the
/// same commit, a leaf keeps its key and pseudonym, and metadata changes
/// follow the DM's policies.
pub(crate) fn validate_deniable_commit(
    group: &MlsGroup,
    old: &GroupMetadata,
    staged: &StagedCommit,
    committer: LeafNodeIndex,
    identities: &IdentityCache,
    committer_inbox: InboxId,
) -> Result<CommitSummary, Verdict> {
    let reject = |reason: String| Verdict::Reject(reason);
    let new = GroupMetadata::from_extensions(staged.group_context().extensions())
        .map_err(|e| reject(format!("metadata after the commit: {e}")))?;
    if new.immutable != old.immutable {
        return Err(reject("the commit changes the immutable metadata".into()));
    }
    let committer_leaf = group
        .member_at(committer)
        .ok_or_else(|| reject("the committer has no leaf".into()))?;
    let DeniableProposed {
        added,
        removed,
        metadata_changes,
    } = read_deniable_proposals(group, staged)?;
    if let Some(leaf) = staged.update_path_leaf_node() {
        check_deniable_update(Some(committer_leaf), leaf)
            .map_err(|_| reject("the committer's new leaf changes its key or pseudonym".into()))?;
    }
    // A removal is a member leaving, or a leaf replaced by an add in the
    // same commit (a re-add): a DM removes nobody.
    let replaced = removed.iter().filter(|(_, own)| !own).count();
    if replaced > added {
        return Err(reject("a DM removes nobody".into()));
    }
    let leaves = group.members().count() + added - removed.len();
    if leaves > MAX_DENIABLE_LEAVES {
        return Err(reject(format!(
            "a deniable DM has at most {MAX_DENIABLE_LEAVES} leaves"
        )));
    }
    check_dm_membership(old, &new)?;
    let need = identities.behind(&new.membership);
    if !need.is_empty() {
        return Err(Verdict::NeedIdentities(need));
    }
    let metadata_changed = new.mutable != old.mutable
        || new.policies != old.policies
        || !new.gating.same_rules(&old.gating);
    if metadata_changed {
        if metadata_changes == 0 {
            return Err(reject(
                "the metadata changed without a group-context proposal".into(),
            ));
        }
        // A DM has no admins: every member acts as one.
        check_metadata_change_by_role(old, &new, Role::Member, "a member of this DM")
            .map_err(Verdict::Reject)?;
    }
    Ok(CommitSummary {
        committer: committer_inbox,
        committer_installation: None,
        added: Vec::new(),
        removed: Vec::new(),
        metadata: new,
        metadata_changed,
        leaves_added: added > 0,
    })
}

/// What a deniable DM commit's proposals do.
struct DeniableProposed {
    /// Leaves added.
    added: usize,
    /// Leaves removed, and whether each removes itself.
    removed: BTreeSet<(LeafNodeIndex, bool)>,
    /// Group-context changes covered.
    metadata_changes: usize,
}

/// Read a deniable DM commit's proposals: from members only, of the types
/// Kith uses, added leaves with pseudonyms, updates that keep a leaf's key
/// and pseudonym, and at most one group-context change.
fn read_deniable_proposals(
    group: &MlsGroup,
    staged: &StagedCommit,
) -> Result<DeniableProposed, Verdict> {
    let mut proposed = DeniableProposed {
        added: 0,
        removed: BTreeSet::new(),
        metadata_changes: 0,
    };
    for queued in staged.queued_proposals() {
        let Sender::Member(sender) = queued.sender() else {
            return Err(reject("a proposal from outside the group"));
        };
        match queued.proposal() {
            Proposal::Add(add) => {
                check_pseudonym(add.key_package().leaf_node().credential())
                    .map_err(|e| reject(format!("an added leaf: {e}")))?;
                proposed.added += 1;
            }
            Proposal::Remove(remove) => {
                proposed
                    .removed
                    .insert((remove.removed(), *sender == remove.removed()));
            }
            Proposal::Update(update) => {
                check_deniable_update(group.member_at(*sender), update.leaf_node())
                    .map_err(Verdict::Reject)?;
            }
            Proposal::GroupContextExtensions(_) => proposed.metadata_changes += 1,
            other => {
                return Err(reject(format!(
                    "proposal type {:?} is not used by Kith",
                    other.proposal_type()
                )));
            }
        }
    }
    if proposed.metadata_changes > 1 {
        return Err(reject("more than one group-context change in one commit"));
    }
    Ok(proposed)
}

/// The membership extension of a DM names only the DM's inboxes, whose
/// identity-log sequences never go back.
fn check_dm_membership(old: &GroupMetadata, new: &GroupMetadata) -> Result<(), Verdict> {
    let dm = old.immutable.dm_members;
    for (inbox, sequence) in &new.membership {
        if !dm.is_some_and(|(a, b)| *inbox == a || *inbox == b) {
            return Err(reject(format!("{inbox} is not one of the DM's inboxes")));
        }
        if old.membership.get(inbox).is_some_and(|p| sequence < p) {
            return Err(reject(format!(
                "the identity-log sequence of {inbox} goes back"
            )));
        }
    }
    Ok(())
}

/// Validate a staged commit by leaf `committer` of `group` (metadata
/// `metadata` before it), as every member will: against the identity logs
/// in groups, by [`validate_deniable_commit`] in a deniable DM, whose
/// bindings are `deniable`.
pub(crate) fn validate_staged(
    group: &MlsGroup,
    metadata: &GroupMetadata,
    deniable: Option<&DeniableState>,
    staged: &StagedCommit,
    committer: LeafNodeIndex,
    identities: &IdentityCache,
) -> Result<CommitSummary, Verdict> {
    match deniable {
        None => validate_commit(group, metadata, staged, committer, identities),
        Some(state) => {
            // Until its binding verifies, a committer is taken to be the
            // peer: only for the events' `by`, never for a permission (a DM
            // grants the same to both).
            let committer_inbox = Roster::new(group, deniable)
                .identity_of(committer)
                .map_or_else(
                    || dm_peer(metadata, state.own_inbox).unwrap_or(state.own_inbox),
                    |(inbox, _)| inbox,
                );
            validate_deniable_commit(
                group,
                metadata,
                staged,
                committer,
                identities,
                committer_inbox,
            )
        }
    }
}

/// For a DM, the inbox that is not `me`.
pub(crate) fn dm_peer(metadata: &GroupMetadata, me: InboxId) -> Option<InboxId> {
    metadata
        .immutable
        .dm_members
        .map(|(a, b)| if a == me { b } else { a })
}

/// Whether a member's standalone proposal may be stored for the next
/// commit: a member leaving (`Ok(true)`), a key update that keeps the
/// member's identity, or a metadata change the proposer's role allows that
/// leaves the membership and the immutable metadata alone. Checked when it
/// arrives, as a commit including it will be, so that nobody's commit
/// picks up a proposal that would sink it.
pub(crate) fn check_proposal(
    group: &MlsGroup,
    metadata: &GroupMetadata,
    queued: &QueuedProposal,
) -> Result<bool, String> {
    let Sender::Member(sender) = queued.sender() else {
        return Err("a proposal from outside the group".into());
    };
    // In a deniable DM the proposer is a pseudonym: its binding, not its
    // leaf, says who it is, and every member may do what a DM allows.
    let proposer = if metadata.immutable.deniable() {
        None
    } else {
        Some(
            leaf_identity(group, *sender)
                .ok_or("a proposal from a leaf without a Kith credential")?,
        )
    };
    match queued.proposal() {
        Proposal::Remove(r) if r.removed() == *sender => Ok(true),
        Proposal::Update(update) => {
            match proposer {
                Some((inbox, installation)) => {
                    check_update(update.leaf_node(), inbox, installation)?
                }
                None => check_deniable_update(group.member_at(*sender), update.leaf_node())?,
            }
            Ok(false)
        }
        Proposal::GroupContextExtensions(change) => {
            let new = GroupMetadata::from_extensions(change.extensions())
                .map_err(|e| format!("a proposed metadata change: {e}"))?;
            if new.immutable != metadata.immutable || new.membership != metadata.membership {
                return Err(
                    "a proposed metadata change touches the immutable metadata or the membership"
                        .into(),
                );
            }
            match proposer {
                Some((inbox, _)) => check_metadata_change(metadata, &new, &inbox)?,
                None => check_metadata_change_by_role(
                    metadata,
                    &new,
                    Role::Member,
                    "a member of this DM",
                )?,
            }
            Ok(false)
        }
        other => Err(format!(
            "a standalone {:?} proposal, which Kith does not use",
            other.proposal_type()
        )),
    }
}

/// Check a metadata change `old` -> `new` this installation (`me`) is about
/// to propose or commit, as the others will check it.
pub(crate) fn check_own_metadata_change(
    old: &GroupMetadata,
    new: &GroupMetadata,
    me: InboxId,
) -> Result<(), GroupError> {
    let checked = if old.immutable.deniable() {
        check_metadata_change_by_role(old, new, Role::Member, "a member of this DM")
    } else {
        check_metadata_change(old, new, &me)
    };
    checked.map_err(GroupError::NotPermitted)
}

/// Check the tree of a Welcome whose group metadata is `metadata`: every
/// member's leaf is checked against the identity logs at the sequence
/// numbers the group records, and the membership record must name exactly
/// the members' inboxes. A deniable DM's leaves are pseudonyms, checked by
/// [`check_deniable_welcome`] (their bindings say who they are).
pub(crate) fn check_welcome(
    metadata: &GroupMetadata,
    members: Vec<Member>,
    identities: &IdentityCache,
) -> Result<(), GroupError> {
    let need = identities.behind(&metadata.membership);
    if !need.is_empty() {
        return Err(GroupError::NeedIdentities(need));
    }
    if metadata.immutable.deniable() {
        return check_deniable_welcome(metadata, members.into_iter());
    }
    let mut inboxes = BTreeSet::new();
    for member in members {
        let inbox = credential_inbox(&member.credential)
            .map_err(|e| GroupError::InvalidInput(format!("a member's leaf: {e}")))?;
        let installation = InstallationId(
            member
                .signature_key
                .as_slice()
                .try_into()
                .map_err(|_| GroupError::InvalidInput("a leaf key is not Ed25519".into()))?,
        );
        let sequence = metadata.membership.get(&inbox).copied().ok_or_else(|| {
            GroupError::InvalidInput(format!("member {inbox} is not in the membership record"))
        })?;
        if identities.active_at(&inbox, &installation, sequence) != Some(true) {
            if !identities.is_final(&inbox) {
                return Err(GroupError::IdentitiesDisputed(vec![inbox]));
            }
            return Err(GroupError::InvalidInput(format!(
                "member installation {installation} is not active for {inbox}"
            )));
        }
        inboxes.insert(inbox);
    }
    if inboxes != metadata.membership.keys().copied().collect() {
        return Err(GroupError::InvalidInput(
            "the membership record does not match the members".into(),
        ));
    }
    Ok(())
}
