//! Healing a fork: a member that found itself on a fork asks to be
//! re-added, and a member on the canonical branch removes and re-adds its
//! installation in one commit (DESIGN.md section 7).
//!
//! The request cannot travel inside the group: the forked member's epoch
//! secrets are not the others'. It is a small frame on the group topic,
//! outside MLS, signed by the installation key, which the identity log
//! ties to the inbox:
//!
//! ```text
//!  "KITH-REJOIN-1" | u32 len | group id | inbox (20) | installation (32)
//!                  | u64 forked epoch | u64 time
//!                  | u64 evidence epoch | u64 time | u32 node | u64 sequence
//!                  | Ed25519 signature (64)
//! ```
//!
//! The evidence is the canonical commit the requester saw too late: the
//! one it could not roll back to. Only a member that applied that very
//! commit for that epoch acts on the request, so a member that is itself
//! on the fork (and may not know it yet) never re-adds anyone into it.
//!
//! Anyone can replay a request; all it can cause is a re-add of that
//! installation with a fresh key package of its own, which only that
//! installation can use. A member acts on a request only for an
//! installation that is in its tree under that inbox.

use openmls::prelude::{LeafNodeIndex, OpenMlsProvider};

use super::{
    content::WelcomePayload,
    error::GroupError,
    events::GroupEvent,
    group_state::Group,
    identities::IdentityCache,
    records::{DeferredWelcome, Delivery, OrderKey},
    signer::Me,
    store::{ClientStore, GroupSnapshots, KvStore},
    validate::leaf_identity,
};
use crate::{
    delivery::Topic,
    identity::{InboxId, InstallationId, verify_installation_signature},
};

const MAGIC: &[u8] = b"KITH-REJOIN-1";

/// A forked installation's request to be re-added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejoinRequest {
    /// The group.
    pub group_id: Vec<u8>,
    /// The requester's inbox.
    pub inbox: InboxId,
    /// The requester's installation (its Ed25519 key).
    pub installation: InstallationId,
    /// The requester's epoch when it found the fork.
    pub epoch: u64,
    /// When it asked (its clock).
    pub time_ms: u64,
    /// The epoch whose canonical commit it missed.
    pub evidence_epoch: u64,
    /// That commit's canonical position.
    pub evidence_key: OrderKey,
}

impl RejoinRequest {
    fn signed_part(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAGIC.len() + 4 + self.group_id.len() + 68);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.group_id.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.group_id);
        out.extend_from_slice(self.inbox.as_bytes());
        out.extend_from_slice(self.installation.as_bytes());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        out.extend_from_slice(&self.time_ms.to_be_bytes());
        out.extend_from_slice(&self.evidence_epoch.to_be_bytes());
        out.extend_from_slice(&self.evidence_key.0.to_be_bytes());
        out.extend_from_slice(&self.evidence_key.1.to_be_bytes());
        out.extend_from_slice(&self.evidence_key.2.to_be_bytes());
        out
    }

    /// Sign and encode with the installation's keys.
    pub fn sign(&self, keys: &crate::identity::InstallationKeys) -> Vec<u8> {
        let mut out = self.signed_part();
        let signature = keys.sign(&out);
        out.extend_from_slice(&signature);
        out
    }

    /// Whether `payload` is a rejoin request at all (as opposed to an MLS
    /// message).
    pub fn is_request(payload: &[u8]) -> bool {
        payload.starts_with(MAGIC)
    }

    /// Decode and check the signature.
    pub fn verify(payload: &[u8]) -> Result<Self, String> {
        let rest = payload.strip_prefix(MAGIC).ok_or("not a rejoin request")?;
        let (len, rest) = rest.split_first_chunk::<4>().ok_or("truncated")?;
        let len = u32::from_be_bytes(*len) as usize;
        if rest.len() != len + 20 + 32 + 8 + 8 + 28 + 64 {
            return Err("a rejoin request of the wrong length".into());
        }
        let (group_id, rest) = rest.split_at(len);
        let (inbox, rest) = rest.split_first_chunk::<20>().ok_or("truncated")?;
        let (installation, rest) = rest.split_first_chunk::<32>().ok_or("truncated")?;
        let (epoch, rest) = rest.split_first_chunk::<8>().ok_or("truncated")?;
        let (time, rest) = rest.split_first_chunk::<8>().ok_or("truncated")?;
        let (evidence_epoch, rest) = rest.split_first_chunk::<8>().ok_or("truncated")?;
        let (key_time, rest) = rest.split_first_chunk::<8>().ok_or("truncated")?;
        let (key_node, rest) = rest.split_first_chunk::<4>().ok_or("truncated")?;
        let (key_sequence, rest) = rest.split_first_chunk::<8>().ok_or("truncated")?;
        let signature: [u8; 64] = rest.try_into().map_err(|_| "truncated")?;
        let request = Self {
            group_id: group_id.to_vec(),
            inbox: InboxId::from_bytes(*inbox),
            installation: InstallationId(*installation),
            epoch: u64::from_be_bytes(*epoch),
            time_ms: u64::from_be_bytes(*time),
            evidence_epoch: u64::from_be_bytes(*evidence_epoch),
            evidence_key: (
                u64::from_be_bytes(*key_time),
                u32::from_be_bytes(*key_node),
                u64::from_be_bytes(*key_sequence),
            ),
        };
        verify_installation_signature(&request.installation, &request.signed_part(), &signature)
            .map_err(|e| format!("a rejoin request with a bad signature: {e}"))?;
        Ok(request)
    }
}

impl Group {
    /// If this installation is on a fork, ask (again, after
    /// the policy's `rejoin_retry_ms`) to be re-added.
    pub(crate) fn ask_to_rejoin<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        me: Me<'_>,
        now_ms: u64,
    ) -> Result<(), GroupError> {
        // The request is signed by the installation key, which would tie a
        // deniable DM to the installation: a forked deniable DM reports
        // the fork (`GroupEvent::Forked`) and does not ask.
        if self.record.deniable.is_some() {
            return Ok(());
        }
        let Some(fork) = self.record.forked.as_mut() else {
            return Ok(());
        };
        if fork
            .requested_at_ms
            .is_some_and(|at| now_ms < at.saturating_add(self.config.rejoin_retry_ms))
        {
            return Ok(());
        }
        fork.requested_at_ms = Some(now_ms);
        let (epoch, evidence_epoch, evidence_key) =
            (fork.epoch, fork.evidence_epoch, fork.evidence_key);
        let request = RejoinRequest {
            group_id: self.group_id().to_vec(),
            inbox: me.inbox,
            installation: me.keys.id(),
            epoch,
            time_ms: now_ms,
            evidence_epoch,
            evidence_key,
        }
        .sign(me.keys);
        self.save_record(kv)?;
        self.push_outbound(kv, &[Topic::Group(self.group_id().to_vec())], request, None)
    }

    /// A rejoin request arrived: if it names an installation of this
    /// group, tell the driver, which fetches a key package for it and
    /// queues [`super::IntentKind::Readd`].
    pub(crate) fn rejoin_requested<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        payload: &[u8],
    ) -> Result<(), GroupError> {
        let request = match RejoinRequest::verify(payload) {
            Ok(r) => r,
            Err(reason) => {
                self.skip(reason);
                return Ok(());
            }
        };
        if request.group_id != self.group_id()
            || !self.mls.is_active()
            || self.record.forked.is_some()
            || request.installation == self.own_installation()
        {
            return Ok(());
        }
        let Some(leaf) = self.leaf_of(&request.installation) else {
            self.skip("a rejoin request from an installation that is not a member".into());
            return Ok(());
        };
        if self.identity_of(leaf).map(|(inbox, _)| inbox) != Some(request.inbox) {
            self.skip("a rejoin request whose inbox does not match the member".into());
            return Ok(());
        }
        let applied = ClientStore(kv).commit_key(self.group_id(), request.evidence_epoch)?;
        if applied != Some(request.evidence_key) {
            self.skip(format!(
                "a rejoin request naming a commit for epoch {} at {:?} that this \
                 installation did not apply (it applied {applied:?})",
                request.evidence_epoch, request.evidence_key
            ));
            return Ok(());
        }
        let stale_leaf = self.leaf_encryption_key(leaf);
        // Several members answer one request, and a request may reach a
        // member after the re-add that answered it: a leaf added by a
        // commit later than the request is its answer, and re-adding it
        // again would remove the leaf the requester has just joined with.
        if let Some(added) = ClientStore(kv).leaf_added(self.group_id(), &request.installation)?
            && added.encryption_key == stale_leaf
            && added.commit_time_ms >= request.time_ms
        {
            self.skip("a rejoin request that a re-add already answered".into());
            return Ok(());
        }
        self.events.push_back(GroupEvent::RejoinRequested {
            inbox: request.inbox,
            installation: request.installation,
            stale_leaf,
        });
        Ok(())
    }

    pub(crate) fn own_installation(&self) -> InstallationId {
        // Groups stored before the record named the installation: the
        // leaf does, while this installation is a member.
        self.record.own_installation.unwrap_or_else(|| {
            leaf_identity(&self.mls, self.mls.own_leaf_index())
                .map_or(InstallationId::UNKNOWN, |(_, installation)| installation)
        })
    }

    pub(crate) fn leaf_encryption_key(&self, leaf: LeafNodeIndex) -> Vec<u8> {
        self.mls
            .member_at(leaf)
            .map(|m| m.encryption_key.clone())
            .unwrap_or_default()
    }

    /// Own messages sent since the fork began reached nobody on the
    /// canonical branch: mark them failed and say so.
    pub(crate) fn fail_forked_sends<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        since_ms: u64,
    ) -> Result<(), GroupError> {
        let store = ClientStore(kv);
        let me = self.own_installation();
        let conversation = self.conversation_id();
        let mut failed = Vec::new();
        for mut message in store.messages(&conversation)? {
            if message.group_id != self.group_id()
                || message.sender_installation != me
                || message.time_ms < since_ms
                || message.delivery == Delivery::Failed
            {
                continue;
            }
            message.delivery = Delivery::Failed;
            store.update_message(&message)?;
            failed.push(message.message_id);
            self.events.push_back(GroupEvent::MessageFailed {
                message_id: message.message_id,
                reason: "sent on a fork of the group, which the other members never saw".into(),
            });
        }
        // What is not published yet stays unpublished.
        let group_id = self.group_id().to_vec();
        for item in store.outbox(&group_id)? {
            if item.message_id.is_some_and(|id| failed.contains(&id)) {
                store.remove_outbox(&group_id, item.id)?;
                self.outbound.retain(|o| o.id != item.id);
            }
        }
        Ok(())
    }

    /// Whether this installation needs a Welcome to take part again: it is
    /// on a fork, or was removed. Its state is dropped when it joins again
    /// (from a new Welcome, or from a kept one: [`Group::rejoin_deferred`]).
    pub fn needs_rejoin(&self) -> bool {
        self.record.forked.is_some() || !self.mls.is_active()
    }

    /// Keep a Welcome for this group, which this installation is still a
    /// member of, if it starts at a later epoch: a re-add committed there
    /// will remove the leaf in use, and then the Welcome is the way back.
    /// One for this epoch or an earlier one can never be needed.
    pub(crate) fn defer_welcome<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        payload: &WelcomePayload,
        bytes: &[u8],
    ) -> Result<(), GroupError> {
        let Some(epoch) = payload
            .branch
            .first()
            .map(|(left, ..)| left.saturating_add(1))
        else {
            return Ok(());
        };
        if epoch <= self.epoch() {
            return Ok(());
        }
        let store = ClientStore(kv);
        let mut kept = store.deferred_welcomes(self.group_id())?;
        kept.sort_by_key(|w| std::cmp::Reverse(w.epoch));
        // Bounded: only the newest are worth keeping.
        for old in kept.iter().skip(MAX_DEFERRED_WELCOMES - 1) {
            store.remove_deferred_welcome(self.group_id(), old)?;
        }
        store.put_deferred_welcome(
            self.group_id(),
            &DeferredWelcome {
                epoch,
                payload: bytes.to_vec(),
            },
        )
    }

    /// Join a group again from a Welcome kept by [`Group::join`] while this
    /// installation was still a member, once it needs one (it was removed,
    /// or found itself on a fork). Drivers call it after handling envelopes;
    /// it does nothing while the group does not need a rejoin. Kept
    /// Welcomes are tried newest first; one that cannot be used is dropped.
    /// Returns the group joined again, whose events include
    /// [`GroupEvent::Rejoined`].
    pub fn rejoin_deferred<P: OpenMlsProvider, S: GroupSnapshots + ?Sized>(
        provider: &P,
        kv: &S,
        me: Me<'_>,
        identities: &IdentityCache,
        group_id: &[u8],
        now_ms: u64,
    ) -> Result<Option<Self>, GroupError> {
        let store = ClientStore(kv);
        let mut kept = store.deferred_welcomes(group_id)?;
        if kept.is_empty() {
            return Ok(None);
        }
        let Some(current) = Self::load(provider, kv, group_id)? else {
            return Ok(None);
        };
        if !current.needs_rejoin() {
            return Ok(None);
        }
        kept.sort_by_key(|w| std::cmp::Reverse(w.epoch));
        for welcome in kept {
            store.remove_deferred_welcome(group_id, &welcome)?;
            if welcome.epoch <= current.record.joined_at_epoch {
                // Older than the Welcome this state came from.
                continue;
            }
            match Self::join(provider, kv, me, identities, &welcome.payload, now_ms) {
                Ok(Some(group)) => return Ok(Some(group)),
                Ok(None) => {}
                Err(e @ GroupError::NeedIdentities(_)) => {
                    // Fetched by the caller, then tried again.
                    store.put_deferred_welcome(group_id, &welcome)?;
                    return Err(e);
                }
                Err(e @ (GroupError::Store(_) | GroupError::Corrupt(_))) => return Err(e),
                // Unusable (its key package spent by an earlier join, say):
                // it would fail the same way every time.
                Err(_) => {}
            }
        }
        Ok(None)
    }
}

/// How many re-add Welcomes a group keeps for later.
const MAX_DEFERRED_WELCOMES: usize = 4;
