//! Who each leaf of a group's tree is: the [`Roster`], a read-only view of
//! the tree that answers with inboxes and installations instead of leaf
//! indices, and the [`ReconcilePlan`] that compares it with the identity
//! logs (DESIGN.md section 9).
//!
//! In a group a leaf's credential names its inbox and its signature key is
//! the installation. In a deniable DM leaves are pseudonyms: a leaf is
//! someone only once its binding verified, so the roster asks the bindings'
//! state. The roster owns nothing and changes nothing; it is built fresh
//! from the MLS group whenever a question is asked.

use std::collections::{BTreeMap, BTreeSet};

use openmls::prelude::{Credential, LeafNodeIndex, Member, MlsGroup};

use super::{identities::IdentityCache, metadata::GroupMetadata, records::DeniableState};
use crate::identity::{InboxId, InstallationId, credential_inbox};

/// The inbox and installation of a leaf of a group's tree, from its Kith
/// credential; `None` for an empty leaf or one without a Kith credential.
pub(crate) fn leaf_identity(
    group: &MlsGroup,
    leaf: LeafNodeIndex,
) -> Option<(InboxId, InstallationId)> {
    let member = group.member_at(leaf)?;
    member_identity(&member)
}

fn member_identity(member: &Member) -> Option<(InboxId, InstallationId)> {
    let inbox = credential_inbox(&member.credential).ok()?;
    let installation = InstallationId(member.signature_key.as_slice().try_into().ok()?);
    Some((inbox, installation))
}

/// Who the leaves of one group are. See the module docs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Roster<'a> {
    mls: &'a MlsGroup,
    /// In a deniable DM, the bindings that say who a leaf is.
    deniable: Option<&'a DeniableState>,
}

impl<'a> Roster<'a> {
    /// The roster of `mls`; `deniable` is the bindings' state of a
    /// deniable DM (`None` for groups and non-repudiable DMs).
    pub(crate) fn new(mls: &'a MlsGroup, deniable: Option<&'a DeniableState>) -> Self {
        Self { mls, deniable }
    }

    /// The inbox and installation a leaf speaks for: from its credential in
    /// groups, from its verified binding in a deniable DM.
    pub(crate) fn identity_of(&self, leaf: LeafNodeIndex) -> Option<(InboxId, InstallationId)> {
        match self.deniable {
            None => leaf_identity(self.mls, leaf),
            Some(state) => {
                let member = self.mls.member_at(leaf)?;
                state
                    .bound_leaf(member.signature_key.as_slice())
                    .map(|b| (b.inbox, b.installation))
            }
        }
    }

    /// The leaf of `installation`, if it is in the group (and, in a
    /// deniable DM, bound).
    pub(crate) fn leaf_of(&self, installation: &InstallationId) -> Option<LeafNodeIndex> {
        match self.deniable {
            None => self
                .mls
                .members()
                .find(|m| m.signature_key.as_slice() == installation.as_bytes())
                .map(|m| m.index),
            Some(state) => {
                let bound = state
                    .bound
                    .iter()
                    .find(|b| b.installation == *installation)?;
                self.mls
                    .members()
                    .find(|m| m.signature_key.as_slice() == bound.leaf_key)
                    .map(|m| m.index)
            }
        }
    }

    /// The leaves whose inbox and installation satisfy `pred`.
    pub(crate) fn leaves_where(
        &self,
        pred: impl Fn(InboxId, InstallationId) -> bool,
    ) -> Vec<LeafNodeIndex> {
        self.mls
            .members()
            .filter(|m| self.identity_of(m.index).is_some_and(|(i, x)| pred(i, x)))
            .map(|m| m.index)
            .collect()
    }

    /// Who sent an application message from `leaf` whose credential in
    /// the sender's epoch is `credential`: the inbox that credential names,
    /// and the installation if the leaf is still that inbox's (a message of
    /// a past epoch may come from a leaf that has left since, or been taken
    /// by someone else). `None` for a credential that is not Kith's.
    pub(crate) fn sender(
        &self,
        leaf: LeafNodeIndex,
        credential: &Credential,
    ) -> Option<(InboxId, InstallationId, Option<[u8; 32]>)> {
        let signer = credential_inbox(credential).ok()?;
        Some(match leaf_identity(self.mls, leaf) {
            Some((inbox, installation)) if inbox == signer => (inbox, installation, None),
            _ => (signer, InstallationId::UNKNOWN, None),
        })
    }

    /// In a deniable DM, the key of `leaf`, if it is still the leaf that
    /// sent with `credential` (its pseudonym).
    pub(crate) fn deniable_leaf_key(
        &self,
        leaf: LeafNodeIndex,
        credential: &Credential,
    ) -> Result<[u8; 32], &'static str> {
        let member = self
            .mls
            .member_at(leaf)
            .filter(|m| m.credential == *credential)
            .ok_or("a message from a leaf that has left the DM")?;
        <[u8; 32]>::try_from(member.signature_key.as_slice())
            .map_err(|_| "a leaf key that is not Ed25519")
    }

    /// In a deniable DM, who sent from `leaf` (key `leaf_key`): its
    /// installation once its binding verified; until then the peer, with
    /// no installation, and the leaf key to fill it in later, so that the
    /// message is never shown as verified.
    pub(crate) fn deniable_sender(
        &self,
        leaf: LeafNodeIndex,
        leaf_key: [u8; 32],
        peer: InboxId,
    ) -> (InboxId, InstallationId, Option<[u8; 32]>) {
        match self.identity_of(leaf) {
            Some((inbox, installation)) => (inbox, installation, None),
            None => (peer, InstallationId::UNKNOWN, Some(leaf_key)),
        }
    }

    /// The members' installations, by inbox. A deniable DM's leaves show
    /// only once bound.
    pub(crate) fn members(&self) -> BTreeMap<InboxId, BTreeSet<InstallationId>> {
        let mut out: BTreeMap<InboxId, BTreeSet<InstallationId>> = BTreeMap::new();
        for member in self.mls.members() {
            if let Some((inbox, installation)) = self.identity_of(member.index) {
                out.entry(inbox).or_default().insert(installation);
            }
        }
        out
    }

    /// The encryption key of a leaf now (empty for an empty leaf): it
    /// changes whenever the leaf is re-added or updated, so it tells one
    /// incarnation of a member's leaf from the next.
    pub(crate) fn leaf_encryption_key(&self, leaf: LeafNodeIndex) -> Vec<u8> {
        self.mls
            .member_at(leaf)
            .map(|m| m.encryption_key.clone())
            .unwrap_or_default()
    }

    /// Installations the identity logs say should be added (per inbox,
    /// with the log sequence read) and leaves whose installation is no
    /// longer active, for a group whose metadata is `metadata`.
    ///
    /// Empty for a deniable DM: its leaves are added from deniable key
    /// packages, not from the logs.
    pub(crate) fn reconcile_plan(
        &self,
        metadata: &GroupMetadata,
        identities: &IdentityCache,
    ) -> ReconcilePlan {
        let mut plan = ReconcilePlan::default();
        if metadata.immutable.deniable() {
            return plan;
        }
        for (inbox, installations) in &self.members() {
            let Some(state) = identities.state(inbox) else {
                continue;
            };
            let recorded = metadata.membership.get(inbox).copied().unwrap_or(0);
            let mut changed = false;
            for (installation, _) in state.active_installations() {
                if !installations.contains(installation) {
                    plan.add.push((*inbox, *installation));
                    changed = true;
                }
            }
            for installation in installations {
                if !state.is_active(installation) {
                    plan.remove.push(*installation);
                    changed = true;
                }
            }
            if changed || state.sequence() > recorded {
                plan.sequences.push((*inbox, state.sequence()));
            }
        }
        if plan.add.is_empty() && plan.remove.is_empty() {
            plan.sequences.clear();
        }
        plan
    }
}

/// What [`Group::reconcile_plan`](crate::group::Group::reconcile_plan)
/// found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcilePlan {
    /// Installations to add (their key packages must be fetched).
    pub add: Vec<(InboxId, InstallationId)>,
    /// Installations to remove.
    pub remove: Vec<InstallationId>,
    /// Inbox -> log sequence to record.
    pub sequences: Vec<(InboxId, u64)>,
}

impl ReconcilePlan {
    /// Whether nothing needs to change.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty()
    }
}
