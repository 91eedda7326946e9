//! The deniable-DM [`Bindings`]: who is behind each pseudonymous leaf of a
//! deniable DM (DESIGN.md section 8).
//!
//! A deniable DM's leaves carry pseudonyms and per-conversation keys
//! ([`crate::identity::EphemeralKey`]), so the tree says nothing about who
//! is in it. Identity comes in through *bindings*: each installation sends,
//! inside the group as a [`CONTENT_TYPE_BINDING`](super::content::CONTENT_TYPE_BINDING) message, one MAC per
//! installation of the two inboxes, keyed by the pair's X25519 identity keys
//! and the epoch's exporter secret (see [`crate::identity::binding_key`]).
//!
//! ```text
//!  join / leaves added ─► due ─► advance: this installation's binding (one tag per peer installation)
//!  binding received ─► pending (the tag for this installation) ─► advance: verify
//!        ├─ verifies: the leaf is bound; its earlier messages become verified
//!        └─ fails: the DM is unverified for good (GroupEvent::BindingFailed)
//!  sending ─► held while any other leaf is unbound, or the own binding unsent
//! ```
//!
//! Verifying needs this installation's identity secret, which receiving an
//! envelope does not take: a binding is checked in the next
//! [`Group::advance`], with the exporter secret of the epoch it came in,
//! kept per epoch for that (and dropped if that epoch lost to another
//! branch: the sender re-sends its binding after its own rollback).
//!
//! The bindings own the deniable state of the group's record and the kept
//! exporter secrets (`'b'`). They never encrypt, never export a secret
//! from the MLS group and never change the tree: the group hands them the
//! epoch's exporter and sends the binding they make. Commits of a deniable
//! DM are checked in `validate`.
//!
//! [`Group::advance`]: crate::group::Group::advance

use openmls::prelude::Member;
use prost::Message as _;
use x25519_dalek::StaticSecret;

use super::{
    error::GroupError,
    events::{Events, GroupEvent},
    identities::IdentityCache,
    records::{BoundLeaf, ConversationId, DeniableState, PendingBinding},
    signer::Me,
    store::{ClientStore, KvStore},
};
use crate::identity::{
    BINDING_EXPORTER_LEN, BindingClaim, DeniableError, EphemeralKey, InboxId, InstallationId,
    binding_key, binding_tag, verify_binding_tag,
};

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

/// Decode the body of a [`CONTENT_TYPE_BINDING`](super::content::CONTENT_TYPE_BINDING)
/// message.
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

/// A deniable DM's bindings. See the module docs.
#[derive(Debug)]
pub(crate) struct Bindings {
    group_id: Vec<u8>,
    state: DeniableState,
}

impl Bindings {
    /// The bindings of `group_id`, from their stored state.
    pub(crate) fn new(group_id: &[u8], state: DeniableState) -> Self {
        Self {
            group_id: group_id.to_vec(),
            state,
        }
    }

    /// The bindings' state of a deniable DM this installation joins with
    /// the leaf whose signature key is `leaf_key`: one of its deniable key
    /// packages, whose key was kept when the package was made. This
    /// installation owes the DM its binding at once.
    pub(crate) fn joined<S: KvStore + ?Sized>(
        kv: &S,
        leaf_key: Option<[u8; 32]>,
        me: Me<'_>,
    ) -> Result<(DeniableState, EphemeralKey), GroupError> {
        let leaf_key = leaf_key
            .ok_or_else(|| GroupError::InvalidInput("the Welcome has no leaf for us".into()))?;
        let key = ClientStore(kv).ephemeral_key(&leaf_key)?.ok_or_else(|| {
            GroupError::InvalidInput(
                "the Welcome uses a deniable key package whose leaf key this installation does \
                 not hold"
                    .into(),
            )
        })?;
        let mut state = DeniableState::new(leaf_key, me.inbox, me.keys.id());
        state.binding_due = true;
        Ok((state, key))
    }

    /// The state, for the group's record.
    pub(crate) fn state(&self) -> &DeniableState {
        &self.state
    }

    /// Whether outgoing messages must wait: a leaf of `members` is not
    /// bound, this installation sent no binding (or owes one), no peer is
    /// bound, or a binding failed.
    pub(crate) fn awaiting(&self, members: impl Iterator<Item = Member>) -> bool {
        let state = &self.state;
        if state.failed.is_some() || state.sent_epoch.is_none() || state.binding_due {
            return true;
        }
        let mut peer_bound = false;
        for member in members {
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

    /// Where the DM stands, with `members` its leaves now.
    pub(crate) fn verification(&self, members: impl Iterator<Item = Member>) -> DmVerification {
        if let Some(reason) = &self.state.failed {
            return DmVerification::Failed(reason.clone());
        }
        if self.awaiting(members) {
            DmVerification::Pending
        } else {
            DmVerification::Verified
        }
    }

    /// Whether this installation owes the DM a binding.
    pub(crate) fn due(&self) -> bool {
        self.state.binding_due
    }

    /// This installation's binding for `epoch` of the DM between `dm`'s two
    /// inboxes, whose binding exporter secret is `exporter`: a tag for
    /// every active installation of the two inboxes but this one.
    pub(crate) fn binding(
        &self,
        me: Me<'_>,
        identities: &IdentityCache,
        dm: (InboxId, InboxId),
        epoch: u64,
        exporter: &[u8],
    ) -> Result<Vec<u8>, GroupError> {
        let claim = BindingClaim {
            ephemeral_key: &self.state.own_leaf_key,
            group_id: &self.group_id,
            inbox: me.inbox,
            installation: me.keys.id(),
        };
        let mut recipients = Vec::new();
        let mut need = Vec::new();
        for inbox in [dm.0, dm.1] {
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
        binding_body(
            epoch,
            &claim,
            me.keys.identity_secret(),
            exporter,
            recipients,
        )
        .map_err(|e| GroupError::InvalidInput(format!("making the binding: {e}")))
    }

    /// This installation's binding went out in `epoch`.
    pub(crate) fn sent(&mut self, epoch: u64) {
        self.state.binding_due = false;
        self.state.sent_epoch = Some(epoch);
    }

    /// Leaves were added: their installations need a tag of ours.
    pub(crate) fn leaves_added(&mut self) {
        self.state.binding_due = true;
    }

    /// A rollback to `epoch` changed the branch: a binding sent in a later
    /// epoch went out on the losing branch.
    pub(crate) fn rolled_back(&mut self, epoch: u64) {
        if self.state.sent_epoch.is_some_and(|sent| sent > epoch) {
            self.state.binding_due = true;
        }
    }

    /// Keep the binding exporter secret of `epoch` (whose authenticator
    /// digest is `auth`), so that a binding sent in it can be checked after
    /// the group moved on. The `keep` newest epochs are kept.
    pub(crate) fn keep_exporter<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        epoch: u64,
        auth: [u8; 8],
        secret: &[u8],
        keep: u64,
    ) -> Result<(), GroupError> {
        let mut value = zeroize::Zeroizing::new(Vec::with_capacity(8 + secret.len()));
        value.extend_from_slice(&auth);
        value.extend_from_slice(secret);
        ClientStore(kv).put_binding_exporter(&self.group_id, epoch, &value, keep)
    }

    /// Take in a binding that leaf `leaf_key` sent in `epoch`: keep the tag
    /// meant for this installation (`own`) for [`Self::verify`]. `Err` is a
    /// binding that cannot be one (malformed): the DM fails.
    pub(crate) fn receive<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        identities: &IdentityCache,
        own: InstallationId,
        leaf_key: [u8; 32],
        epoch: u64,
        body: &[u8],
    ) -> Result<Result<(), String>, GroupError> {
        let kept = ClientStore(kv).binding_exporter(&self.group_id, epoch)?;
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
            // An epoch whose exporter is no longer kept: see `verify`.
            return Ok(Ok(()));
        };
        let auth_digest: [u8; 8] = auth_digest
            .try_into()
            .map_err(|_| GroupError::Corrupt("a kept exporter record is short".into()))?;
        let inbox = InboxId::from_bytes(inbox);
        self.state.pending.push(PendingBinding {
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

    /// Check the bindings received since the last call, in the DM between
    /// `dm`'s inboxes. Each one that verifies binds its leaf (and its
    /// earlier messages in `conversation` become verified); one that does
    /// not marks the DM unverified for good.
    pub(crate) fn verify<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        me: Me<'_>,
        identities: &IdentityCache,
        dm: Option<(InboxId, InboxId)>,
        conversation: &ConversationId,
        events: &mut Events,
    ) -> Result<(), GroupError> {
        if self.state.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.state.pending);
        let store = ClientStore(kv);
        let mut newly_bound = Vec::new();
        let mut failure = None;
        let mut waiting = Vec::new();
        for binding in pending {
            let Some(kept) = store.binding_exporter(&self.group_id, binding.epoch)? else {
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
            match check_binding(&binding, dm, identities, me, &self.group_id, exporter) {
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
        self.state.pending = waiting;
        for bound in newly_bound {
            if self.state.bound.contains(&bound) {
                continue;
            }
            self.state.bound.retain(|b| b.leaf_key != bound.leaf_key);
            for mut message in store.messages(conversation)? {
                if message.unbound_leaf == Some(bound.leaf_key) {
                    message.unbound_leaf = None;
                    message.sender_inbox = bound.inbox;
                    message.sender_installation = bound.installation;
                    store.update_message(&message)?;
                }
            }
            events.push_back(GroupEvent::MemberVerified {
                inbox: bound.inbox,
                installation: bound.installation,
            });
            self.state.bound.push(bound);
        }
        if let Some(reason) = failure {
            self.fail(reason, events);
        }
        Ok(())
    }

    /// Mark the DM unverified for good, once, and say why.
    pub(crate) fn fail(&mut self, reason: String, events: &mut Events) {
        if self.state.failed.is_none() {
            self.state.failed = Some(reason.clone());
            events.push_back(GroupEvent::BindingFailed { reason });
        }
    }

    /// The group's state was replaced: forget the old state's exporter
    /// secrets (they are secrets of epochs no member uses any more).
    pub(crate) fn forget<S: KvStore + ?Sized>(kv: &S, group_id: &[u8]) -> Result<(), GroupError> {
        ClientStore(kv).remove_binding_exporters(group_id)
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

#[cfg(test)]
mod tests {
    use openmls::prelude::{Credential, LeafNodeIndex};
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng as _;

    use super::*;
    use crate::{
        group::store::MemoryKvStore,
        identity::{InstallationKeys, LocalWallet, UnsignedIdentityUpdate},
    };

    const GROUP: &[u8] = b"a deniable dm";
    const EXPORTER: [u8; BINDING_EXPORTER_LEN] = [9; BINDING_EXPORTER_LEN];

    struct Side {
        inbox: InboxId,
        keys: InstallationKeys,
        leaf_key: [u8; 32],
    }

    impl Side {
        fn me(&self) -> Me<'_> {
            Me {
                inbox: self.inbox,
                keys: &self.keys,
            }
        }

        fn member(&self, index: u32) -> Member {
            Member::new(
                LeafNodeIndex::new(index),
                Vec::new(),
                self.leaf_key.to_vec(),
                Credential::new(0xff01u16.into(), vec![index as u8]),
            )
        }
    }

    /// Alice and Bob, each with one installation in the identity cache.
    fn sides() -> (Side, Side, IdentityCache) {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let mut identities = IdentityCache::new();
        let mut side = |leaf: u8| {
            let wallet = LocalWallet::generate(&mut rng);
            let keys = InstallationKeys::generate(&mut rng);
            let unsigned = UnsignedIdentityUpdate::add_installation(wallet.inbox_id(), &keys, 1, 1);
            let signature = wallet.sign_personal(unsigned.signature_text().as_bytes());
            identities
                .extend(wallet.inbox_id(), [unsigned.sign(signature, Some(&keys))])
                .expect("log");
            Side {
                inbox: wallet.inbox_id(),
                keys,
                leaf_key: [leaf; 32],
            }
        };
        let (alice, bob) = (side(1), side(2));
        (alice, bob, identities)
    }

    fn bindings(side: &Side) -> Bindings {
        Bindings::new(
            GROUP,
            DeniableState::new(side.leaf_key, side.inbox, side.keys.id()),
        )
    }

    /// Keep epoch 3's exporter (digest `[3; 8]`) on `kv`.
    fn exporter_kept(kv: &MemoryKvStore, bindings: &Bindings) {
        bindings
            .keep_exporter(kv, 3, [3; 8], &EXPORTER, 17)
            .expect("keep");
    }

    #[test]
    fn messages_wait_until_every_leaf_is_bound_and_the_own_binding_sent() {
        let (alice, bob, identities) = sides();
        let kv = MemoryKvStore::default();
        let mut at_bob = bindings(&bob);
        exporter_kept(&kv, &at_bob);
        let members = || [alice.member(0), bob.member(1)].into_iter();
        assert!(at_bob.awaiting(members()));
        assert_eq!(at_bob.verification(members()), DmVerification::Pending);
        // Alice's binding arrives, made with her identity key and the
        // epoch's exporter, with a tag for Bob's installation.
        let dm = (alice.inbox, bob.inbox);
        let body = bindings(&alice)
            .binding(alice.me(), &identities, dm, 3, &EXPORTER)
            .expect("binding");
        assert_eq!(
            decode_binding(&body).expect("decodes").recipients,
            [bob.keys.id()]
        );
        let received = at_bob
            .receive(&kv, &identities, bob.keys.id(), alice.leaf_key, 3, &body)
            .expect("receive");
        assert_eq!(received, Ok(()));
        let mut events = Events::new();
        let conversation = ConversationId(b"c".to_vec());
        at_bob
            .verify(
                &kv,
                bob.me(),
                &identities,
                Some(dm),
                &conversation,
                &mut events,
            )
            .expect("verify");
        assert!(matches!(
            events.pop_front(),
            Some(GroupEvent::MemberVerified { inbox, .. }) if inbox == alice.inbox
        ));
        assert!(at_bob.awaiting(members()), "Bob's own binding is not sent");
        at_bob.sent(3);
        assert_eq!(at_bob.verification(members()), DmVerification::Verified);
        // New leaves mean new tags owed; a rollback past the sent binding
        // means it went out on a losing branch.
        at_bob.rolled_back(2);
        assert!(at_bob.due());
        at_bob.sent(4);
        at_bob.rolled_back(4);
        assert!(!at_bob.due());
        at_bob.leaves_added();
        assert!(at_bob.due());
    }

    #[test]
    fn a_binding_for_another_leaf_fails_the_dm_for_good() {
        let (alice, bob, identities) = sides();
        let kv = MemoryKvStore::default();
        let mut at_bob = bindings(&bob);
        exporter_kept(&kv, &at_bob);
        let dm = (alice.inbox, bob.inbox);
        let body = bindings(&alice)
            .binding(alice.me(), &identities, dm, 3, &EXPORTER)
            .expect("binding");
        // The node swapped Alice's key package: the leaf that sent it is
        // not the one her binding speaks for.
        at_bob
            .receive(&kv, &identities, bob.keys.id(), [0xee; 32], 3, &body)
            .expect("receive")
            .expect("well formed");
        let mut events = Events::new();
        let conversation = ConversationId(b"c".to_vec());
        at_bob
            .verify(
                &kv,
                bob.me(),
                &identities,
                Some(dm),
                &conversation,
                &mut events,
            )
            .expect("verify");
        assert!(matches!(
            events.pop_front(),
            Some(GroupEvent::BindingFailed { .. })
        ));
        let members = [alice.member(0), bob.member(1)];
        assert!(matches!(
            at_bob.verification(members.into_iter()),
            DmVerification::Failed(_)
        ));
        // Once: a second failure says nothing more.
        at_bob.fail("again".into(), &mut events);
        assert!(events.is_empty());
    }

    #[test]
    fn malformed_stale_and_foreign_bindings() {
        let (alice, bob, identities) = sides();
        let kv = MemoryKvStore::default();
        let mut at_bob = bindings(&bob);
        exporter_kept(&kv, &at_bob);
        let dm = (alice.inbox, bob.inbox);
        assert!(
            at_bob
                .receive(
                    &kv,
                    &identities,
                    bob.keys.id(),
                    alice.leaf_key,
                    3,
                    b"\xff\xff"
                )
                .expect("receive")
                .is_err(),
            "malformed"
        );
        let body = bindings(&alice)
            .binding(alice.me(), &identities, dm, 2, &EXPORTER)
            .expect("binding");
        // Made in epoch 2 but arriving in epoch 3: a copy re-sent after a
        // rollback, ignored (a fresh one follows).
        at_bob
            .receive(&kv, &identities, bob.keys.id(), alice.leaf_key, 3, &body)
            .expect("receive")
            .expect("ignored");
        assert!(at_bob.state().pending.is_empty());
        // For a DM between other inboxes: refused when verified.
        let body = bindings(&alice)
            .binding(alice.me(), &identities, dm, 3, &EXPORTER)
            .expect("binding");
        at_bob
            .receive(&kv, &identities, bob.keys.id(), alice.leaf_key, 3, &body)
            .expect("receive")
            .expect("kept");
        let mut events = Events::new();
        let elsewhere = Some((bob.inbox, InboxId::from_bytes([5; 20])));
        let conversation = ConversationId(b"c".to_vec());
        at_bob
            .verify(
                &kv,
                bob.me(),
                &identities,
                elsewhere,
                &conversation,
                &mut events,
            )
            .expect("verify");
        assert!(matches!(
            events.pop_front(),
            Some(GroupEvent::BindingFailed { reason }) if reason.contains("not in this DM")
        ));
    }

    #[test]
    fn a_binding_of_an_epoch_that_lost_is_dropped_unchecked() {
        let (alice, bob, identities) = sides();
        let kv = MemoryKvStore::default();
        let mut at_bob = bindings(&bob);
        exporter_kept(&kv, &at_bob);
        let dm = (alice.inbox, bob.inbox);
        let body = bindings(&alice)
            .binding(alice.me(), &identities, dm, 3, &EXPORTER)
            .expect("binding");
        at_bob
            .receive(&kv, &identities, bob.keys.id(), [0xee; 32], 3, &body)
            .expect("receive")
            .expect("kept");
        // A rollback replaced epoch 3: its exporter now has another digest.
        at_bob
            .keep_exporter(&kv, 3, [0x33; 8], &EXPORTER, 17)
            .expect("keep");
        let mut events = Events::new();
        let conversation = ConversationId(b"c".to_vec());
        at_bob
            .verify(
                &kv,
                bob.me(),
                &identities,
                Some(dm),
                &conversation,
                &mut events,
            )
            .expect("verify");
        assert!(events.is_empty(), "not proof of forgery: {events:?}");
        assert!(at_bob.state().pending.is_empty());
        assert!(at_bob.state().failed.is_none());
    }

    #[test]
    fn a_joined_dm_owes_its_binding_with_the_kept_leaf_key() {
        let (_, bob, _) = sides();
        let kv = MemoryKvStore::default();
        let key = EphemeralKey::generate(&mut ChaCha20Rng::seed_from_u64(9));
        assert!(Bindings::joined(&kv, Some(key.public_key()), bob.me()).is_err());
        ClientStore(&kv).put_ephemeral_key(&key).expect("keep");
        let (state, joined_key) =
            Bindings::joined(&kv, Some(key.public_key()), bob.me()).expect("joined");
        assert!(state.binding_due);
        assert_eq!(joined_key.public_key(), key.public_key());
        assert!(Bindings::joined(&kv, None, bob.me()).is_err());
        // Forgetting the group forgets its exporters.
        let at_bob = bindings(&bob);
        exporter_kept(&kv, &at_bob);
        Bindings::forget(&kv, GROUP).expect("forget");
        assert!(
            ClientStore(&kv)
                .binding_exporter(GROUP, 3)
                .expect("read")
                .is_none()
        );
    }
}
