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

use openmls::prelude::{LeafNode, LeafNodeIndex, MlsGroup, Proposal, Sender, StagedCommit};

use super::{identities::IdentityCache, metadata::GroupMetadata};
use crate::identity::{InboxId, InstallationId, credential_inbox};

/// What a valid commit changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitSummary {
    /// Who committed.
    pub committer: InboxId,
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

/// Why a commit cannot be merged (yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The identity cache must reach these sequence numbers first.
    NeedIdentities(Vec<(InboxId, u64)>),
    /// The commit breaks a rule; it is rejected whole.
    Reject(String),
}

/// The inbox and installation of a leaf of the current tree.
pub(crate) fn leaf_identity(
    group: &MlsGroup,
    leaf: LeafNodeIndex,
) -> Option<(InboxId, InstallationId)> {
    let member = group.member_at(leaf)?;
    let inbox = credential_inbox(&member.credential).ok()?;
    let installation = InstallationId(member.signature_key.as_slice().try_into().ok()?);
    Some((inbox, installation))
}

fn reject(reason: impl Into<String>) -> Verdict {
    Verdict::Reject(reason.into())
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

    let mut added = Vec::new();
    let mut removed = Vec::new();
    let mut metadata_proposer = None;
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
                added.push((proposer.0, inbox, installation));
            }
            Proposal::Remove(remove) => {
                let (inbox, installation) = leaf_identity(group, remove.removed())
                    .ok_or_else(|| reject("a removal of an empty or invalid leaf"))?;
                let own = *sender_leaf == remove.removed();
                removed.push((proposer.0, inbox, installation, own));
            }
            Proposal::Update(update) => {
                check_update(update.leaf_node(), proposer.0, proposer.1)
                    .map_err(Verdict::Reject)?;
            }
            Proposal::GroupContextExtensions(_) => {
                if metadata_proposer.replace(proposer.0).is_some() {
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
    if let Some(leaf) = staged.update_path_leaf_node() {
        let inbox = credential_inbox(leaf.credential()).ok();
        if inbox != Some(committer_inbox)
            || leaf.signature_key().as_slice() != committer_installation.as_bytes()
        {
            return Err(reject("the committer's new leaf changes its identity"));
        }
    }

    // Membership: the inboxes with leaves after the commit are exactly the
    // inboxes of the membership extension, whose sequences never go back.
    let mut leaves: BTreeMap<InboxId, BTreeSet<InstallationId>> = BTreeMap::new();
    for member in group.members() {
        if let Some(identity) = leaf_identity(group, member.index) {
            leaves.entry(identity.0).or_default().insert(identity.1);
        }
    }
    let old_inboxes: BTreeSet<InboxId> = leaves.keys().copied().collect();
    for (_, inbox, installation, _) in &removed {
        if let Some(set) = leaves.get_mut(inbox) {
            set.remove(installation);
            if set.is_empty() {
                leaves.remove(inbox);
            }
        }
    }
    for (_, inbox, installation) in &added {
        if !leaves.entry(*inbox).or_default().insert(*installation) {
            return Err(reject(format!(
                "installation {installation} is added twice"
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

    // Every installation the commit adds or keeps because of the logs must
    // be checked against the logs at the recorded sequence.
    let need = identities.behind(&new.membership);
    if !need.is_empty() {
        return Err(Verdict::NeedIdentities(need));
    }

    for (proposer, inbox, installation) in &added {
        let sequence = new.membership.get(inbox).copied().unwrap_or(0);
        if identities.active_at(inbox, installation, sequence) != Some(true) {
            return Err(reject(format!(
                "installation {installation} is not active in the identity log of {inbox} at \
                 sequence {sequence}"
            )));
        }
        // The two inboxes of a DM are its members by definition; the
        // policy governs everyone else.
        let dm_member = old
            .immutable
            .dm_members
            .is_some_and(|(a, b)| *inbox == a || *inbox == b);
        if !old_inboxes.contains(inbox)
            && !dm_member
            && !old.policies.add_member.allows(old.role(proposer))
        {
            return Err(reject(format!("{proposer} may not add members")));
        }
    }
    for (proposer, inbox, installation, own) in &removed {
        if *own {
            continue; // leaving is always allowed
        }
        // Removed and added again in one commit: a forked installation
        // re-added (its key package proves it asked for a new leaf).
        if added
            .iter()
            .any(|(_, i, x)| i == inbox && x == installation)
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
            return Err(reject(format!(
                "installation {installation} of {inbox} is removed while still active in its \
                 identity log"
            )));
        }
        let role = old.role(proposer);
        if !old.policies.remove_member.allows(role) {
            return Err(reject(format!("{proposer} may not remove members")));
        }
        if old.mutable.super_admins.contains(inbox) && role != super::Role::SuperAdmin {
            return Err(reject(format!(
                "only a super admin may remove the super admin {inbox}"
            )));
        }
    }

    let metadata_changed =
        new.mutable != old.mutable || new.policies != old.policies || new.gating != old.gating;
    if metadata_changed {
        let proposer = metadata_proposer
            .ok_or_else(|| reject("the metadata changed without a group-context proposal"))?;
        check_metadata_change(old, &new, &proposer).map_err(Verdict::Reject)?;
    }

    Ok(CommitSummary {
        committer: committer_inbox,
        leaves_added: !added.is_empty(),
        added: added.into_iter().map(|(_, i, x)| (i, x)).collect(),
        removed: removed.into_iter().map(|(_, i, x, _)| (i, x)).collect(),
        metadata: new,
        metadata_changed,
    })
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
    role: super::Role,
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
    if old.mutable.super_admins != new.mutable.super_admins && role != super::Role::SuperAdmin {
        return Err(format!("{proposer} may not manage super admins"));
    }
    if (old.policies != new.policies || old.gating != new.gating)
        && !old.policies.change_policies.allows(role)
    {
        return Err(format!("{proposer} may not change policies"));
    }
    Ok(())
}
