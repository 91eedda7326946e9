//! Turning an intent into the parts of a commit: which key packages to
//! add, which leaves to remove, what the metadata becomes, and which
//! pending proposals ride along (DESIGN.md sections 5 and 7).
//!
//! The planner reads the group (its tree, metadata and pending proposals)
//! and the identity logs, and checks every key package it is handed; it
//! never stages anything. The group builds the commit from the plan with
//! OpenMLS, then checks it exactly as every receiver will before
//! publishing it.
//!
//! ```text
//!  intent ─► plan_commit ─┬─ Done (nothing left to change: another commit did it)
//!                         ├─ Leave (a self-remove proposal, for another member to commit)
//!                         └─ Commit { adds, removals, metadata, riders }
//! ```

use std::collections::{BTreeMap, BTreeSet};

use openmls::prelude::{
    Extension, KeyPackage, LeafNodeIndex, MlsGroup, MlsMessageBodyIn, MlsMessageIn, Proposal,
    QueuedProposal, Sender, UnknownExtension, tls_codec::Deserialize as _,
};
use openmls_traits::crypto::OpenMlsCrypto;

use super::{
    error::GroupError,
    identities::IdentityCache,
    intent::{DeniableAdd, IntentKind},
    metadata::{GroupMetadata, POLICIES_EXTENSION},
    roster::Roster,
    validate::check_own_metadata_change,
};
use crate::identity::{
    InboxId, InstallationId, ValidatedDeniableKeyPackage, ValidatedKeyPackage, credential_inbox,
    validate_deniable_key_package, validate_key_package,
};

/// What an intent comes to in the group as it is now.
#[derive(Debug)]
pub(crate) enum Plan {
    /// Nothing is left to change: another member's commit made the change,
    /// or it needs none.
    Done,
    /// Leave the group: a self-remove proposal that another member commits.
    Leave,
    /// A commit.
    Commit(Box<CommitPlan>),
}

/// The parts of a commit.
#[derive(Debug)]
pub(crate) struct CommitPlan {
    /// The metadata after the commit.
    pub(crate) metadata: GroupMetadata,
    /// Whether it differs from the metadata now (a group-context change).
    pub(crate) metadata_changed: bool,
    /// Key packages to add.
    pub(crate) adds: Vec<KeyPackage>,
    /// The installations the Welcome is for.
    pub(crate) welcome_to: Vec<InstallationId>,
    /// Leaves to remove.
    pub(crate) removals: Vec<LeafNodeIndex>,
    /// Whether the commit must update this installation's path.
    pub(crate) force_update: bool,
    /// The references of pending proposals the commit takes along.
    pub(crate) riders: BTreeSet<Vec<u8>>,
}

/// The group a plan is made for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GroupView<'a> {
    /// The MLS group (read only).
    pub(crate) mls: &'a MlsGroup,
    /// Who its leaves are.
    pub(crate) roster: Roster<'a>,
    /// Its metadata now.
    pub(crate) metadata: &'a GroupMetadata,
}

/// Plan the commit that carries out `kind`, made by `me` at `now_ms`, with
/// `crypto` to check the key packages it adds.
pub(crate) fn plan_commit(
    crypto: &impl OpenMlsCrypto,
    group: GroupView<'_>,
    me: InboxId,
    identities: &IdentityCache,
    kind: &IntentKind,
    now_ms: u64,
) -> Result<Plan, GroupError> {
    let members = group.roster.members();
    let context = Context {
        crypto,
        group,
        members: &members,
        identities,
        now_ms,
    };
    match ask(&context, kind)? {
        Asked::Decided(plan) => Ok(plan),
        Asked::Commit(parts) => finish(&context, me, *parts),
    }
}

/// What every step of planning reads.
struct Context<'a, C> {
    crypto: &'a C,
    group: GroupView<'a>,
    members: &'a Members,
    identities: &'a IdentityCache,
    now_ms: u64,
}

/// Who the group's members are: installations per inbox.
type Members = BTreeMap<InboxId, BTreeSet<InstallationId>>;

/// What an intent asks of a commit, before pending proposals ride along.
struct Parts {
    metadata: GroupMetadata,
    adds: Adds,
    removals: Vec<LeafNodeIndex>,
    commit_pending: bool,
    force_update: bool,
}

/// Where an intent leads: a plan decided already (nothing to change, or a
/// leave), or the parts of a commit.
enum Asked {
    Decided(Plan),
    Commit(Box<Parts>),
}

/// What `kind` asks of a commit in the group as it is now.
fn ask<C: OpenMlsCrypto>(context: &Context<'_, C>, kind: &IntentKind) -> Result<Asked, GroupError> {
    let group = context.group;
    let mut parts = Parts {
        metadata: changed_metadata(group.metadata, context.members, kind)?,
        adds: Adds::default(),
        removals: Vec::new(),
        commit_pending: false,
        force_update: false,
    };
    let deniable = group.metadata.immutable.deniable();
    let dm = group.metadata.immutable.dm_members;
    match kind {
        IntentKind::AddMembers { .. } if deniable => {
            return Err(GroupError::InvalidInput(
                "a deniable DM takes deniable key packages (IntentKind::AddDeniable)".into(),
            ));
        }
        IntentKind::AddDeniable { .. } if !deniable => {
            return Err(GroupError::InvalidInput(
                "deniable key packages are for deniable DMs only".into(),
            ));
        }
        IntentKind::AddDeniable {
            key_packages,
            sequences,
        } => add_deniable(context, &mut parts, key_packages, sequences)?,
        IntentKind::AddMembers {
            key_packages,
            sequences,
            admissions,
        } => {
            if dm.is_some_and(|(a, b)| sequences.iter().any(|(i, _)| *i != a && *i != b)) {
                return Err(GroupError::NotPermitted(
                    "a DM cannot take other inboxes".into(),
                ));
            }
            take_adds(context, &mut parts, key_packages, sequences)?;
            // The admissions of the inboxes this commit brings in, and only
            // theirs: every receiver checks both (validate.rs).
            let joining: Vec<InboxId> = sequences
                .iter()
                .map(|(inbox, _)| *inbox)
                .filter(|inbox| !group.metadata.membership.contains_key(inbox))
                .collect();
            if group.metadata.gating.is_gated() && !joining.is_empty() {
                parts.metadata.gating.admissions = admissions
                    .iter()
                    .filter(|a| joining.contains(&a.inbox))
                    .cloned()
                    .collect();
            }
        }
        IntentKind::RemoveMembers { inboxes } => {
            // Inboxes already gone were removed by another member's
            // commit: that part of the intent is satisfied.
            for inbox in inboxes {
                parts.metadata.membership.remove(inbox);
            }
            parts.removals = group.roster.leaves_where(|i, _| inboxes.contains(&i));
        }
        // Their metadata is `changed_metadata`'s.
        IntentKind::UpdateAttributes { .. }
        | IntentKind::UpdateAdmins { .. }
        | IntentKind::SetPolicies { .. }
        | IntentKind::SetGating { .. } => {}
        IntentKind::Reconcile {
            key_packages,
            remove,
            sequences,
        } => {
            take_adds(context, &mut parts, key_packages, sequences)?;
            parts.removals = group.roster.leaves_where(|_, x| remove.contains(&x));
            if parts.adds.key_packages.is_empty() && parts.removals.is_empty() {
                return Ok(Asked::Decided(Plan::Done));
            }
        }
        IntentKind::CommitPending => parts.commit_pending = true,
        IntentKind::UpdateKeys => parts.force_update = true,
        IntentKind::Readd {
            installation,
            key_package,
            stale_leaf,
        } => {
            if !readd(context, &mut parts, installation, key_package, stale_leaf)? {
                return Ok(Asked::Decided(Plan::Done));
            }
        }
        IntentKind::Leave => return Ok(Asked::Decided(leave(group))),
    }
    let adding = matches!(
        kind,
        IntentKind::AddMembers { .. } | IntentKind::AddDeniable { .. }
    );
    if adding && parts.adds.key_packages.is_empty() {
        // Everyone asked for is in already.
        return Ok(Asked::Decided(Plan::Done));
    }
    Ok(Asked::Commit(Box::new(parts)))
}

/// Check `key_packages` and take those of installations not in the group
/// yet (see [`Adds::take`]).
fn take_adds<C: OpenMlsCrypto>(
    context: &Context<'_, C>,
    parts: &mut Parts,
    key_packages: &[Vec<u8>],
    sequences: &[(InboxId, u64)],
) -> Result<(), GroupError> {
    parts.adds.take(
        context.crypto,
        context.identities,
        context.members,
        key_packages,
        sequences,
        &mut parts.metadata,
        context.now_ms,
    )
}

/// Leaving is a self-remove proposal, unless one is pending already.
fn leave(group: GroupView<'_>) -> Plan {
    let own = group.mls.own_leaf_index();
    let leaving = group
        .mls
        .pending_proposals()
        .any(|p| matches!(p.proposal(), Proposal::Remove(r) if r.removed() == own));
    if leaving { Plan::Done } else { Plan::Leave }
}

/// Deniable key packages for the DM's own inboxes; those whose leaf key is
/// in the group already are skipped.
fn add_deniable<C: OpenMlsCrypto>(
    context: &Context<'_, C>,
    parts: &mut Parts,
    key_packages: &[DeniableAdd],
    sequences: &[(InboxId, u64)],
) -> Result<(), GroupError> {
    let dm = context.group.metadata.immutable.dm_members;
    for (inbox, sequence) in sequences {
        if !dm.is_some_and(|(a, b)| *inbox == a || *inbox == b) {
            return Err(GroupError::NotPermitted(
                "a DM cannot take other inboxes".into(),
            ));
        }
        raise_sequence(&mut parts.metadata, *inbox, *sequence);
    }
    let present: BTreeSet<Vec<u8>> = context
        .group
        .mls
        .members()
        .map(|m| m.signature_key.clone())
        .collect();
    for add in key_packages {
        let valid = checked_deniable_key_package(context.crypto, &add.key_package, context.now_ms)?;
        if present.contains(valid.leaf_key.as_slice()) {
            continue;
        }
        parts.adds.welcome_to.push(add.installation);
        parts.adds.key_packages.push(valid.key_package);
    }
    Ok(())
}

/// Replace a forked installation's stale leaf with a fresh one; `false` if
/// that leaf is gone or changed since it asked (re-added already).
fn readd<C: OpenMlsCrypto>(
    context: &Context<'_, C>,
    parts: &mut Parts,
    installation: &InstallationId,
    key_package: &[u8],
    stale_leaf: &[u8],
) -> Result<bool, GroupError> {
    let roster = context.group.roster;
    let Some(leaf) = roster.leaf_of(installation) else {
        return Ok(false);
    };
    if roster.leaf_encryption_key(leaf) != stale_leaf {
        return Ok(false);
    }
    let (_, valid) = checked_key_package(
        context.crypto,
        context.identities,
        key_package,
        context.now_ms,
    )?;
    if valid.installation != *installation {
        return Err(GroupError::InvalidInput(
            "the key package is not the forked installation's".into(),
        ));
    }
    parts.removals = vec![leaf];
    parts.adds.welcome_to.push(valid.installation);
    parts.adds.key_packages.push(valid.key_package);
    Ok(true)
}

/// Take the pending proposals along, and make the plan: nothing, if the
/// intent changes nothing and carries nobody else's change.
fn finish<C>(context: &Context<'_, C>, me: InboxId, parts: Parts) -> Result<Plan, GroupError> {
    let group = context.group;
    let Parts {
        mut metadata,
        adds,
        removals,
        commit_pending,
        force_update,
    } = parts;
    let own_change = metadata != *group.metadata
        || !adds.key_packages.is_empty()
        || !removals.is_empty()
        || force_update;
    let riders = pending_riders(group, context.members, &mut metadata);
    let carries_others = commit_pending && !riders.is_empty();
    if !(own_change || carries_others) {
        // Another member's commit already made this change.
        return Ok(Plan::Done);
    }
    metadata.check_limits()?;
    let metadata_changed = metadata != *group.metadata;
    if metadata_changed {
        check_own_metadata_change(group.metadata, &metadata, me)?;
    }
    Ok(Plan::Commit(Box::new(CommitPlan {
        metadata,
        metadata_changed,
        adds: adds.key_packages,
        welcome_to: adds.welcome_to,
        removals,
        force_update,
        riders,
    })))
}

/// Key packages a commit adds, and whom its Welcome is for.
#[derive(Debug, Default)]
struct Adds {
    key_packages: Vec<KeyPackage>,
    welcome_to: Vec<InstallationId>,
}

impl Adds {
    /// Check `packages` against the identity logs and take those of
    /// installations not in the group yet; record the log sequences read
    /// in the membership extension.
    #[allow(clippy::too_many_arguments)]
    fn take(
        &mut self,
        crypto: &impl OpenMlsCrypto,
        identities: &IdentityCache,
        members: &BTreeMap<InboxId, BTreeSet<InstallationId>>,
        packages: &[Vec<u8>],
        sequences: &[(InboxId, u64)],
        metadata: &mut GroupMetadata,
        now_ms: u64,
    ) -> Result<(), GroupError> {
        for (inbox, sequence) in sequences {
            raise_sequence(metadata, *inbox, *sequence);
        }
        for bytes in packages {
            let (inbox, valid) = checked_key_package(crypto, identities, bytes, now_ms)?;
            let state = identities
                .state(&inbox)
                .ok_or_else(|| GroupError::NeedIdentities(vec![(inbox, 1)]))?;
            if members
                .get(&inbox)
                .is_some_and(|set| set.contains(&valid.installation))
            {
                continue;
            }
            metadata
                .membership
                .entry(inbox)
                .or_insert_with(|| state.sequence());
            self.welcome_to.push(valid.installation);
            self.key_packages.push(valid.key_package);
        }
        Ok(())
    }
}

/// Record that the group caught up to `sequence` of `inbox`'s log (never
/// going back).
fn raise_sequence(metadata: &mut GroupMetadata, inbox: InboxId, sequence: u64) {
    let entry = metadata.membership.entry(inbox).or_insert(0);
    *entry = (*entry).max(sequence);
}

/// The metadata after a metadata intent (attributes, admins, policies) of
/// a group whose metadata is `metadata` and whose members are `members`;
/// the current metadata for any other kind.
pub(crate) fn changed_metadata(
    metadata: &GroupMetadata,
    members: &BTreeMap<InboxId, BTreeSet<InstallationId>>,
    kind: &IntentKind,
) -> Result<GroupMetadata, GroupError> {
    let mut metadata = metadata.clone();
    match kind {
        IntentKind::UpdateAttributes { changes } => {
            for (key, value) in changes {
                match value {
                    Some(v) => metadata.mutable.attributes.insert(key.clone(), v.clone()),
                    None => metadata.mutable.attributes.remove(key),
                };
            }
        }
        IntentKind::UpdateAdmins {
            add,
            remove,
            super_admin,
        } => {
            let list = if *super_admin {
                &mut metadata.mutable.super_admins
            } else {
                &mut metadata.mutable.admins
            };
            for inbox in add {
                if !members.contains_key(inbox) {
                    return Err(GroupError::InvalidInput(format!("{inbox} is not a member")));
                }
                list.insert(*inbox);
            }
            for inbox in remove {
                list.remove(inbox);
            }
        }
        IntentKind::SetGating { rules, require } => {
            if metadata.immutable.dm_members.is_some() {
                return Err(GroupError::InvalidInput("a DM cannot be gated".into()));
            }
            metadata.gating.rules.clone_from(rules);
            metadata.gating.require = *require;
            metadata.check_limits()?;
        }
        IntentKind::SetPolicies { encoded } => {
            let mut extensions = metadata.to_extensions();
            extensions
                .add_or_replace(Extension::Unknown(
                    POLICIES_EXTENSION,
                    UnknownExtension(encoded.clone()),
                ))
                .map_err(GroupError::mls)?;
            metadata = GroupMetadata::from_extensions(&extensions)?;
        }
        _ => {}
    }
    Ok(metadata)
}

/// The proposals other members (or this installation) sent that ride along
/// with a commit this installation builds: members leaving (whose inboxes
/// leave `metadata`'s membership when their last leaf goes) and key
/// updates, always; a group-context change only if the commit makes no
/// metadata change of its own (a commit carries at most one), this
/// installation's own first.
fn pending_riders(
    group: GroupView<'_>,
    members: &BTreeMap<InboxId, BTreeSet<InstallationId>>,
    metadata: &mut GroupMetadata,
) -> BTreeSet<Vec<u8>> {
    let own_leaf = group.mls.own_leaf_index();
    let mut riders = BTreeSet::new();
    let mut remaining = members.clone();
    let mut context_change: Option<(bool, Vec<u8>)> = None;
    for queued in group.mls.pending_proposals() {
        let Sender::Member(sender) = queued.sender() else {
            continue;
        };
        let reference = queued.proposal_reference_ref().as_slice().to_vec();
        match queued.proposal() {
            Proposal::Remove(r) if r.removed() == *sender => {
                if let Some((inbox, installation)) = group.roster.identity_of(*sender)
                    && let Some(set) = remaining.get_mut(&inbox)
                {
                    set.remove(&installation);
                    if set.is_empty() {
                        metadata.membership.remove(&inbox);
                    }
                }
                riders.insert(reference);
            }
            Proposal::Update(_) => {
                riders.insert(reference);
            }
            Proposal::GroupContextExtensions(_) => {
                let own = *sender == own_leaf;
                if context_change
                    .as_ref()
                    .is_none_or(|(was_own, _)| own && !was_own)
                {
                    context_change = Some((own, reference));
                }
            }
            _ => {}
        }
    }
    if *metadata == *group.metadata
        && let Some((_, reference)) = context_change
    {
        riders.insert(reference);
    }
    riders
}

/// The references of the proposals a commit carries.
pub(crate) fn proposal_refs<'a>(
    queued: impl Iterator<Item = &'a QueuedProposal>,
) -> BTreeSet<Vec<u8>> {
    queued
        .map(|q| q.proposal_reference_ref().as_slice().to_vec())
        .collect()
}

/// Decode a key package as the node hands it out (an `MlsMessage`) and
/// validate it against its inbox's identity log.
fn checked_key_package(
    crypto: &impl OpenMlsCrypto,
    identities: &IdentityCache,
    bytes: &[u8],
    now_ms: u64,
) -> Result<(InboxId, ValidatedKeyPackage), GroupError> {
    let message = MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|e| GroupError::InvalidInput(format!("key package: {e}")))?;
    let MlsMessageBodyIn::KeyPackage(key_package) = message.extract() else {
        return Err(GroupError::InvalidInput(
            "a key package message holds no key package".into(),
        ));
    };
    let inbox = credential_inbox(&key_package.unverified_credential().credential)
        .map_err(|e| GroupError::InvalidInput(format!("key package: {e}")))?;
    let state = identities
        .state(&inbox)
        .ok_or_else(|| GroupError::NeedIdentities(vec![(inbox, 1)]))?;
    let valid = validate_key_package(crypto, key_package, now_ms / 1000, state)?;
    Ok((inbox, valid))
}

/// Decode a deniable key package as the node hands it out (an
/// `MlsMessage`) and validate it (it names nobody: nothing to check
/// against a log).
fn checked_deniable_key_package(
    crypto: &impl OpenMlsCrypto,
    bytes: &[u8],
    now_ms: u64,
) -> Result<ValidatedDeniableKeyPackage, GroupError> {
    let message = MlsMessageIn::tls_deserialize_exact(bytes)
        .map_err(|e| GroupError::InvalidInput(format!("deniable key package: {e}")))?;
    let MlsMessageBodyIn::KeyPackage(key_package) = message.extract() else {
        return Err(GroupError::InvalidInput(
            "a key package message holds no key package".into(),
        ));
    };
    Ok(validate_deniable_key_package(
        crypto,
        key_package,
        now_ms / 1000,
    )?)
}
