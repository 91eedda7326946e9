//! Deniable DMs in the group engine (DESIGN.md section 8).
//!
//! A deniable DM's leaves carry pseudonyms and per-conversation keys
//! ([`crate::identity::EphemeralKey`]), so the tree says nothing about who
//! is in it. Identity comes in through *bindings*: each installation sends,
//! inside the group as a [`CONTENT_TYPE_BINDING`] message, one MAC per
//! installation of the two inboxes, keyed by the pair's X25519 identity keys
//! and the epoch's exporter secret (see [`crate::identity::binding_key`]).
//!
//! ```text
//!  join / leaves added ─► binding_due ─► advance: send_binding (one tag per peer installation)
//!  binding received ─► pending (tag for this installation) ─► advance: verify_bindings
//!        ├─ verifies: the leaf is bound; its earlier messages become verified
//!        └─ fails: the DM is unverified for good (GroupEvent::BindingFailed)
//!  send_message ─► held while any other leaf is unbound, or own binding unsent
//! ```
//!
//! Verifying needs this installation's identity secret, which
//! [`Group::handle_envelope`] does not take: a binding is checked in the
//! next [`Group::advance`], with the exporter secret of the epoch it came
//! in, kept per epoch for that (and dropped if that epoch lost to another
//! branch: the sender re-sends its binding after its own rollback).
//!
//! Commits are checked by [`validate_deniable_commit`] instead of the
//! identity-log checks of groups: a pseudonymous leaf cannot be checked
//! against a log; its binding is what checks it.

use std::collections::BTreeSet;

use openmls::prelude::{LeafNodeIndex, Member, MlsGroup, Proposal, Sender, StagedCommit};
use openmls_traits::{OpenMlsProvider, random::OpenMlsRand as _};
use prost::Message as _;
use x25519_dalek::StaticSecret;

use super::{
    content::{CONTENT_TYPE_BINDING, Content, message_id},
    error::GroupError,
    events::GroupEvent,
    group_state::{Group, MAX_PAST_EPOCHS},
    identities::IdentityCache,
    metadata::{GroupMetadata, Role},
    records::{BoundLeaf, PendingBinding},
    signer::Me,
    store::{ClientStore, KvStore},
    validate::{CommitSummary, Verdict, check_metadata_change_by_role},
};
use crate::{
    delivery::Topic,
    identity::{
        BINDING_EXPORTER_LABEL, BINDING_EXPORTER_LEN, BindingClaim, DEFAULT_MAX_INSTALLATIONS,
        DeniableError, InboxId, InstallationId, binding_key, binding_tag, check_pseudonym,
        verify_binding_tag,
    },
};

/// The most leaves a deniable DM may have: every installation of both
/// inboxes.
pub const MAX_DENIABLE_LEAVES: usize = 2 * DEFAULT_MAX_INSTALLATIONS;

/// Where a deniable DM stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DmVerification {
    /// Some leaf's binding has not arrived or not been checked yet, or this
    /// installation has not sent its own: messages out are held, and
    /// messages in are not shown as verified.
    Pending,
    /// Every leaf is bound to an installation of one of the two inboxes.
    Verified,
    /// A binding did not verify: someone in the DM is not who the tree's
    /// other members claim. Nothing is sent; the application must tell
    /// the user.
    Failed(String),
}

/// The body of a binding message sent in `epoch`: a tag of `claim` for
/// each recipient installation (with its X25519 identity key), keyed with
/// `identity`, the maker's identity secret, and `exporter`, the epoch's
/// binding exporter secret.
///
/// Whoever holds either identity secret of a pair, and the exporter, can
/// make that pair's tag: the peer can make the tag that claims the other
/// side. That is what makes a DM deniable, and it is public here so that
/// the claim can be demonstrated, not only stated.
pub fn binding_body(
    epoch: u64,
    claim: &BindingClaim<'_>,
    identity: &StaticSecret,
    exporter: &[u8],
    recipients: impl IntoIterator<Item = (InstallationId, [u8; 32])>,
) -> Result<Vec<u8>, DeniableError> {
    let mut tags = Vec::new();
    for (installation, identity_key) in recipients {
        let key = binding_key(identity, &identity_key, exporter)?;
        tags.push(TagWire {
            installation: installation.as_bytes().to_vec(),
            tag: binding_tag(&key, claim).to_vec(),
        });
    }
    Ok(BindingWire {
        epoch,
        inbox: claim.inbox.as_bytes().to_vec(),
        installation: claim.installation.as_bytes().to_vec(),
        tags,
    }
    .encode_to_vec())
}

/// What a binding message says, as anyone who can read it sees it: its
/// claim and whom its tags are for. The tags themselves can be checked only
/// by the two ends of each pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingView {
    /// The epoch it was made in.
    pub epoch: u64,
    /// The inbox it claims.
    pub inbox: InboxId,
    /// The installation it claims.
    pub installation: InstallationId,
    /// The installations it carries a tag for.
    pub recipients: Vec<InstallationId>,
}

/// Decode the body of a [`CONTENT_TYPE_BINDING`] message.
pub fn decode_binding(body: &[u8]) -> Result<BindingView, String> {
    let wire = BindingWire::decode(body).map_err(|e| format!("a malformed binding: {e}"))?;
    let inbox = <[u8; 20]>::try_from(wire.inbox.as_slice())
        .map_err(|_| "a binding's inbox is not 20 bytes".to_string())?;
    let installation = <[u8; 32]>::try_from(wire.installation.as_slice())
        .map_err(|_| "a binding's installation is not 32 bytes".to_string())?;
    let recipients = wire
        .tags
        .iter()
        .map(|t| {
            if t.tag.len() != 32 {
                return Err(format!("a binding tag is {} bytes, not 32", t.tag.len()));
            }
            <[u8; 32]>::try_from(t.installation.as_slice())
                .map(InstallationId)
                .map_err(|_| "a binding names an installation that is not 32 bytes".to_string())
        })
        .collect::<Result<_, _>>()?;
    Ok(BindingView {
        epoch: wire.epoch,
        inbox: InboxId::from_bytes(inbox),
        installation: InstallationId(installation),
        recipients,
    })
}

#[derive(Clone, PartialEq, prost::Message)]
struct BindingWire {
    #[prost(uint64, tag = "1")]
    epoch: u64,
    #[prost(bytes = "vec", tag = "2")]
    inbox: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    installation: Vec<u8>,
    #[prost(message, repeated, tag = "4")]
    tags: Vec<TagWire>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TagWire {
    #[prost(bytes = "vec", tag = "1")]
    installation: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    tag: Vec<u8>,
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

impl Group {
    /// Whether this group is a deniable DM.
    pub fn is_deniable(&self) -> bool {
        self.metadata.immutable.deniable()
    }

    /// Where a deniable DM stands; `None` for groups and non-repudiable
    /// DMs, whose leaves are checked against the identity logs instead.
    pub fn verification(&self) -> Option<DmVerification> {
        let state = self.record.deniable.as_ref()?;
        if let Some(reason) = &state.failed {
            return Some(DmVerification::Failed(reason.clone()));
        }
        Some(if self.awaiting_bindings() {
            DmVerification::Pending
        } else {
            DmVerification::Verified
        })
    }

    /// Whether outgoing messages must wait: a deniable DM with a leaf not
    /// bound, no binding of its own sent, no peer, or a failed binding.
    pub(crate) fn awaiting_bindings(&self) -> bool {
        let Some(state) = &self.record.deniable else {
            return false;
        };
        if state.failed.is_some() || state.sent_epoch.is_none() || state.binding_due {
            return true;
        }
        let mut peer_bound = false;
        for member in self.mls.members() {
            let key = member.signature_key.as_slice();
            if key == state.own_leaf_key.as_slice() {
                continue;
            }
            match state.bound_leaf(key) {
                Some(bound) => peer_bound |= bound.inbox != state.own_inbox,
                None => return true,
            }
        }
        !peer_bound
    }

    /// Validate a staged commit by leaf `committer`, as every member will:
    /// against the identity logs in groups, by [`validate_deniable_commit`]
    /// in a deniable DM.
    pub(crate) fn validate_staged(
        &self,
        staged: &StagedCommit,
        committer: LeafNodeIndex,
        identities: &IdentityCache,
    ) -> Result<CommitSummary, Verdict> {
        match &self.record.deniable {
            None => super::validate::validate_commit(
                &self.mls,
                &self.metadata,
                staged,
                committer,
                identities,
            ),
            Some(state) => {
                // Until its binding verifies, a committer is taken to be the
                // peer: only for the events' `by`, never for a permission
                // (a DM grants the same to both).
                let committer_inbox = self.identity_of(committer).map_or_else(
                    || self.dm_peer(state.own_inbox).unwrap_or(state.own_inbox),
                    |(inbox, _)| inbox,
                );
                validate_deniable_commit(
                    &self.mls,
                    &self.metadata,
                    staged,
                    committer,
                    identities,
                    committer_inbox,
                )
            }
        }
    }

    /// Check a metadata change this installation is about to propose or
    /// commit, as the others will check it.
    pub(crate) fn check_own_metadata_change(
        &self,
        new: &GroupMetadata,
        me: Me<'_>,
    ) -> Result<(), GroupError> {
        let checked = if self.is_deniable() {
            check_metadata_change_by_role(&self.metadata, new, Role::Member, "a member of this DM")
        } else {
            super::validate::check_metadata_change(&self.metadata, new, &me.inbox)
        };
        checked.map_err(GroupError::NotPermitted)
    }

    /// The inbox and installation a leaf speaks for: from its credential in
    /// groups, from its verified binding in a deniable DM.
    pub(crate) fn identity_of(&self, leaf: LeafNodeIndex) -> Option<(InboxId, InstallationId)> {
        match &self.record.deniable {
            None => super::validate::leaf_identity(&self.mls, leaf),
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
        match &self.record.deniable {
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

    /// The current epoch's binding exporter secret.
    fn binding_exporter<P: OpenMlsProvider>(
        &self,
        provider: &P,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, GroupError> {
        self.mls
            .export_secret(
                provider.crypto(),
                BINDING_EXPORTER_LABEL,
                &[],
                BINDING_EXPORTER_LEN,
            )
            .map(zeroize::Zeroizing::new)
            .map_err(GroupError::mls)
    }

    /// Keep the current epoch's binding exporter secret (deniable DMs only),
    /// so that a binding sent in it can be checked after the group moved on.
    pub(crate) fn keep_exporter<P: OpenMlsProvider, S: KvStore + ?Sized>(
        &self,
        provider: &P,
        kv: &S,
    ) -> Result<(), GroupError> {
        if self.record.deniable.is_none() || !self.mls.is_active() {
            return Ok(());
        }
        let secret = self.binding_exporter(provider)?;
        let mut value = zeroize::Zeroizing::new(Vec::with_capacity(8 + secret.len()));
        value.extend_from_slice(&self.auth_digest());
        value.extend_from_slice(&secret);
        ClientStore(kv).put_binding_exporter(
            self.group_id(),
            self.epoch(),
            &value,
            MAX_PAST_EPOCHS as u64 + 1,
        )
    }

    /// Send this installation's binding, if one is due: a tag for every
    /// active installation of the two inboxes but this one.
    pub(crate) fn send_binding<P: OpenMlsProvider, S: KvStore + ?Sized>(
        &mut self,
        provider: &P,
        kv: &S,
        me: Me<'_>,
        identities: &IdentityCache,
        now_ms: u64,
    ) -> Result<(), GroupError> {
        let Some(state) = &self.record.deniable else {
            return Ok(());
        };
        if !state.binding_due
            || !self.mls.is_active()
            || self.record.forked.is_some()
            || self.mls.pending_proposals().next().is_some()
        {
            return Ok(());
        }
        let Some((a, b)) = self.metadata.immutable.dm_members else {
            return Err(GroupError::Corrupt(
                "a deniable DM without its inboxes".into(),
            ));
        };
        let exporter = self.binding_exporter(provider)?;
        let own_leaf_key = state.own_leaf_key;
        let group_id = self.group_id().to_vec();
        let claim = BindingClaim {
            ephemeral_key: &own_leaf_key,
            group_id: &group_id,
            inbox: me.inbox,
            installation: me.keys.id(),
        };
        let mut recipients = Vec::new();
        let mut need = Vec::new();
        for inbox in [a, b] {
            let Some(log) = identities.state(&inbox) else {
                need.push((inbox, 1));
                continue;
            };
            recipients.extend(
                log.active_installations()
                    .filter(|(installation, _)| **installation != me.keys.id())
                    .map(|(installation, active)| (*installation, active.identity_key)),
            );
        }
        if !need.is_empty() {
            return Err(GroupError::NeedIdentities(need));
        }
        let body = binding_body(
            self.epoch(),
            &claim,
            me.keys.identity_secret(),
            &exporter,
            recipients,
        )
        .map_err(|e| GroupError::InvalidInput(format!("making the binding: {e}")))?;
        let nonce = provider.rand().random_vec(16).map_err(GroupError::mls)?;
        let content = Content {
            content_type: CONTENT_TYPE_BINDING.to_owned(),
            message_id: message_id(me.inbox, &group_id, &nonce).to_vec(),
            body,
            sent_at_ms: now_ms,
        };
        let out = self.encrypt(provider, kv, me, &content.encode_to_vec())?;
        self.push_outbound(kv, &[Topic::Group(group_id)], out, None)?;
        let epoch = self.epoch();
        if let Some(state) = self.record.deniable.as_mut() {
            state.binding_due = false;
            state.sent_epoch = Some(epoch);
        }
        self.save_record(kv)
    }

    /// Take in a binding that leaf `leaf_key` sent in `epoch`: keep the tag
    /// meant for this installation for [`Self::verify_bindings`]. `Err` is
    /// a binding that cannot be one (malformed): the DM fails.
    pub(crate) fn receive_binding<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        identities: &IdentityCache,
        leaf_key: [u8; 32],
        epoch: u64,
        body: &[u8],
    ) -> Result<Result<(), String>, GroupError> {
        let own = self.own_installation();
        let kept = ClientStore(kv).binding_exporter(self.group_id(), epoch)?;
        let Some(state) = self.record.deniable.as_mut() else {
            return Ok(Err(
                "a deniable binding in a group that is not a deniable DM".into(),
            ));
        };
        let Ok(wire) = BindingWire::decode(body) else {
            return Ok(Err("a malformed binding".into()));
        };
        if wire.epoch != epoch {
            // A copy re-sent after a rollback: its MAC is of another
            // epoch's secret. The sender sends a fresh one.
            return Ok(Ok(()));
        }
        let (Ok(inbox), Ok(installation)) = (
            <[u8; 20]>::try_from(wire.inbox.as_slice()),
            <[u8; 32]>::try_from(wire.installation.as_slice()),
        ) else {
            return Ok(Err(
                "a binding whose inbox or installation is malformed".into()
            ));
        };
        let Some(tag) = wire
            .tags
            .into_iter()
            .find(|t| t.installation.as_slice() == own.as_bytes())
        else {
            // Made before the sender knew this installation; it sends
            // another when leaves are added.
            return Ok(Ok(()));
        };
        let Some(auth_digest) = kept.as_deref().and_then(|k| k.get(..8)) else {
            // An epoch whose exporter is no longer kept: see verify_bindings.
            return Ok(Ok(()));
        };
        let auth_digest: [u8; 8] = auth_digest
            .try_into()
            .map_err(|_| GroupError::Corrupt("a kept exporter record is short".into()))?;
        let inbox = InboxId::from_bytes(inbox);
        state.pending.push(PendingBinding {
            leaf_key,
            epoch,
            auth_digest,
            inbox,
            installation: InstallationId(installation),
            tag: tag.tag,
            log_sequence: identities.sequence(&inbox),
        });
        Ok(Ok(()))
    }

    /// Check the bindings received since the last call. Each one that
    /// verifies binds its leaf (and its earlier messages become verified);
    /// one that does not marks the DM unverified for good.
    pub(crate) fn verify_bindings<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        me: Me<'_>,
        identities: &IdentityCache,
    ) -> Result<(), GroupError> {
        let Some(state) = self.record.deniable.as_mut() else {
            return Ok(());
        };
        if state.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut state.pending);
        let dm = self.metadata.immutable.dm_members;
        let group_id = self.group_id().to_vec();
        let store = ClientStore(kv);
        let mut newly_bound = Vec::new();
        let mut failure = None;
        let mut waiting = Vec::new();
        for binding in pending {
            let Some(kept) = store.binding_exporter(&group_id, binding.epoch)? else {
                // Older than the exporters kept: it cannot be checked,
                // which is not proof of forgery. The sender's next
                // binding (leaves added, rollback) is checked instead.
                continue;
            };
            if kept.len() != 8 + BINDING_EXPORTER_LEN || kept[..8] != binding.auth_digest {
                // The epoch it came in lost to another branch.
                continue;
            }
            let exporter = &kept[8..];
            let verdict = check_binding(&binding, dm, identities, me, &group_id, exporter);
            match verdict {
                Err(Unchecked::LogBehind) => waiting.push(binding),
                Ok(()) => newly_bound.push(BoundLeaf {
                    leaf_key: binding.leaf_key,
                    inbox: binding.inbox,
                    installation: binding.installation,
                }),
                Err(Unchecked::Refused(reason)) => {
                    failure.get_or_insert(reason);
                }
            }
        }
        let conversation = self.conversation_id();
        let Some(state) = self.record.deniable.as_mut() else {
            return Ok(());
        };
        state.pending = waiting;
        let mut events = Vec::new();
        for bound in newly_bound {
            if state.bound.contains(&bound) {
                continue;
            }
            state.bound.retain(|b| b.leaf_key != bound.leaf_key);
            for mut message in store.messages(&conversation)? {
                if message.unbound_leaf == Some(bound.leaf_key) {
                    message.unbound_leaf = None;
                    message.sender_inbox = bound.inbox;
                    message.sender_installation = bound.installation;
                    store.update_message(&message)?;
                }
            }
            events.push(GroupEvent::MemberVerified {
                inbox: bound.inbox,
                installation: bound.installation,
            });
            state.bound.push(bound);
        }
        self.events.extend(events);
        if let Some(reason) = failure {
            self.fail_binding(reason);
        }
        self.save_record(kv)
    }

    /// Mark the DM unverified for good, once, and say why.
    pub(crate) fn fail_binding(&mut self, reason: String) {
        if let Some(state) = self.record.deniable.as_mut()
            && state.failed.is_none()
        {
            state.failed = Some(reason.clone());
            self.events.push_back(GroupEvent::BindingFailed { reason });
        }
    }

    /// After a merge: keep the new epoch's exporter, and owe a binding if
    /// leaves were added (their installations need a tag of ours).
    pub(crate) fn after_deniable_merge<P: OpenMlsProvider, S: KvStore + ?Sized>(
        &mut self,
        provider: &P,
        kv: &S,
        leaves_added: bool,
    ) -> Result<(), GroupError> {
        if let Some(state) = self.record.deniable.as_mut()
            && leaves_added
        {
            state.binding_due = true;
        }
        self.keep_exporter(provider, kv)
    }

    /// After a rollback to `epoch` that changed the branch: a binding sent
    /// in a later epoch went out on the losing branch.
    pub(crate) fn after_deniable_rollback(&mut self, epoch: u64) {
        if let Some(state) = self.record.deniable.as_mut()
            && state.sent_epoch.is_some_and(|sent| sent > epoch)
        {
            state.binding_due = true;
        }
    }
}

/// Why a binding was not accepted.
enum Unchecked {
    /// The cached identity log has not been read past where it was when the
    /// binding arrived, and does not show the installation: wait.
    LogBehind,
    /// It is not a binding of this DM's.
    Refused(String),
}

fn check_binding(
    binding: &PendingBinding,
    dm: Option<(InboxId, InboxId)>,
    identities: &IdentityCache,
    me: Me<'_>,
    group_id: &[u8],
    exporter: &[u8],
) -> Result<(), Unchecked> {
    if !dm.is_some_and(|(a, b)| binding.inbox == a || binding.inbox == b) {
        return Err(Unchecked::Refused(format!(
            "a leaf claims inbox {}, which is not in this DM",
            binding.inbox
        )));
    }
    let log = identities.state(&binding.inbox);
    let active = match log {
        Some(log) if log.is_revoked(&binding.installation) => {
            return Err(Unchecked::Refused(format!(
                "a leaf claims installation {} of {}, which was revoked",
                binding.installation, binding.inbox
            )));
        }
        Some(log) => log.installation(&binding.installation),
        None => None,
    };
    let Some(active) = active else {
        // A new installation the cache has not read of yet, or one that
        // does not exist: only a log read further can tell.
        if identities.sequence(&binding.inbox) <= binding.log_sequence {
            return Err(Unchecked::LogBehind);
        }
        return Err(Unchecked::Refused(format!(
            "a leaf claims installation {} of {}, which its identity log does not show",
            binding.installation, binding.inbox
        )));
    };
    let key = binding_key(me.keys.identity_secret(), &active.identity_key, exporter)
        .map_err(|e| Unchecked::Refused(e.to_string()))?;
    let claim = BindingClaim {
        ephemeral_key: &binding.leaf_key,
        group_id,
        inbox: binding.inbox,
        installation: binding.installation,
    };
    verify_binding_tag(&key, &claim, &binding.tag).map_err(|_| {
        Unchecked::Refused(format!(
            "the binding of installation {} of {} does not verify: its leaf was not made by \
             that installation (a substituted key package, or a forgery)",
            binding.installation, binding.inbox
        ))
    })
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
    let mut added = 0usize;
    let mut removed = BTreeSet::new();
    let mut metadata_changes = 0;
    for queued in staged.queued_proposals() {
        let Sender::Member(sender) = queued.sender() else {
            return Err(reject("a proposal from outside the group".into()));
        };
        match queued.proposal() {
            Proposal::Add(add) => {
                check_pseudonym(add.key_package().leaf_node().credential())
                    .map_err(|e| reject(format!("an added leaf: {e}")))?;
                added += 1;
            }
            Proposal::Remove(remove) => {
                removed.insert((remove.removed(), *sender == remove.removed()));
            }
            Proposal::Update(update) => {
                check_deniable_update(group.member_at(*sender), update.leaf_node())
                    .map_err(reject)?;
            }
            Proposal::GroupContextExtensions(_) => metadata_changes += 1,
            other => {
                return Err(reject(format!(
                    "proposal type {:?} is not used by Kith",
                    other.proposal_type()
                )));
            }
        }
    }
    if metadata_changes > 1 {
        return Err(reject(
            "more than one group-context change in one commit".into(),
        ));
    }
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
    // The membership extension names only the DM's inboxes, whose
    // identity-log sequences never go back.
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
    let need = identities.behind(&new.membership);
    if !need.is_empty() {
        return Err(Verdict::NeedIdentities(need));
    }
    let metadata_changed =
        new.mutable != old.mutable || new.policies != old.policies || new.gating != old.gating;
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
        added: Vec::new(),
        removed: Vec::new(),
        metadata: new,
        metadata_changed,
        leaves_added: added > 0,
    })
}

#[cfg(any(test, feature = "test-suite"))]
impl Group {
    /// Test hook: this installation's binding exporter secret of the
    /// current epoch, as a member (and so a forger) holds it.
    ///
    /// # Errors
    /// If OpenMLS cannot export (the group is inactive).
    pub fn binding_exporter_for_tests<P: OpenMlsProvider>(
        &self,
        provider: &P,
    ) -> Result<Vec<u8>, GroupError> {
        Ok(self.binding_exporter(provider)?.to_vec())
    }

    /// Test hook: encrypt and queue `content_type` and `body` at once, past
    /// every hold, as a member whose client was altered would.
    ///
    /// # Errors
    /// As [`Group::send_message`].
    pub fn send_unchecked_for_tests<P: OpenMlsProvider, S: KvStore + ?Sized>(
        &mut self,
        provider: &P,
        kv: &S,
        me: Me<'_>,
        content_type: &str,
        body: &[u8],
        now_ms: u64,
    ) -> Result<(), GroupError> {
        let nonce = provider.rand().random_vec(16).map_err(GroupError::mls)?;
        let content = Content {
            content_type: content_type.to_owned(),
            message_id: message_id(me.inbox, self.group_id(), &nonce).to_vec(),
            body: body.to_vec(),
            sent_at_ms: now_ms,
        };
        let out = self.encrypt(provider, kv, me, &content.encode_to_vec())?;
        self.push_outbound(kv, &[Topic::Group(self.group_id().to_vec())], out, None)
    }
}
