//! [`Input`]: one envelope of the group topic on its way through the
//! parts of a group, with the rollback and replay it may cause.
//!
//! [`Group::handle_envelope`](super::Group::handle_envelope) makes an
//! `Input` for each envelope and
//! routes it: a rejoin request goes to the fork monitor; an own commit is
//! recognised by its hash and merged if it came back first; a commit for a
//! past epoch goes to the rewind history, which says whether to roll back;
//! an envelope of a future epoch is held; anything else is processed by
//! the MLS state, and what it yields updates the parts.
//!
//! ```text
//!  route ─┬─ rejoin request ──────────────► ForkMonitor ─► RejoinRequested
//!         ├─ own commit, first in its epoch ► merge_own ─┐
//!         ├─ commit of a past epoch ─► RewindHistory ─► rollback: restore the
//!         │        snapshot, apply the earlier commit, replay (route again)
//!         ├─ future epoch ─► held ─► released after the next merge
//!         └─ current epoch ─► Mls::receive ─┬─ message ─► conversation
//!                                           ├─ proposal ─► stored (Outbox if a member leaves)
//!                                           └─ commit ─► merge ─► merged ┘
//!  merged: commit position, leaves added, settle by the ring's bound, held envelopes
//! ```
//!
//! An `Input` lives for one call. It owns what that call carries through
//! routing and replay (the messages a replay delivered again, whether a
//! replay is running, an epoch just restored), and borrows the group;
//! it stores nothing of its own.

use std::collections::BTreeSet;

use openmls::prelude::{
    ContentType, Credential, LeafNodeIndex, MlsMessageIn, ProtocolMessage,
    tls_codec::Deserialize as _,
};
use openmls_traits::OpenMlsProvider;
use sha2::{Digest as _, Sha256};

use super::{
    bindings::Bindings,
    content::{CONTENT_TYPE_BINDING, CONTENT_TYPE_EPOCH_DIGEST, CONTROL_CONTENT_PREFIX, Content},
    conversation,
    error::GroupError,
    events::GroupEvent,
    forks::{Membership, RejoinRequest},
    history::{PastCommit, ReplayPlan},
    identities::IdentityCache,
    intent::IntentKind,
    mls::{Merge, Received, ValidCommit},
    outbox::Outbox,
    parts::Parts,
    records::{Delivery, EpochSnapshot, OwnCommit, RetainedEnvelope, StoredMessage},
    store::GroupSnapshots,
    transcript,
};

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// A snapshot of the state before a commit (none if it is stored already)
/// and the digest of that epoch's authenticator.
type StateBefore = (Option<zeroize::Zeroizing<Vec<u8>>>, [u8; 8]);
/// How a rollback returns to the current state when the earlier commit
/// does not merge.
enum Undo<P> {
    /// The store's savepoint of the group.
    Savepoint(P),
    /// A capture of the group's whole state.
    State(zeroize::Zeroizing<Vec<u8>>),
}

/// One envelope on its way through a group. See the module docs.
pub(crate) struct Input<'a, P, S: ?Sized> {
    parts: &'a mut Parts,
    provider: &'a P,
    kv: &'a S,
    identities: &'a IdentityCache,
    now_ms: u64,
    /// During a replay: the messages it delivered again.
    confirmed: Option<BTreeSet<[u8; 32]>>,
    /// Inside a rollback's replay, which routes held envelopes in their
    /// canonical place: merges and proposals release none meanwhile.
    replaying: bool,
    /// Set by a rollback that restored this epoch's snapshot and changed
    /// nothing since: the next commit applied need not capture it again.
    restored: Option<u64>,
}

impl<'a, P: OpenMlsProvider, S: GroupSnapshots + ?Sized> Input<'a, P, S> {
    /// An input to the group made of `parts`, at `now_ms`, with the
    /// identity logs its checks consult.
    pub(crate) fn new(
        parts: &'a mut Parts,
        provider: &'a P,
        kv: &'a S,
        identities: &'a IdentityCache,
        now_ms: u64,
    ) -> Self {
        Self {
            parts,
            provider,
            kv,
            identities,
            now_ms,
            confirmed: None,
            replaying: false,
            restored: None,
        }
    }

    /// Route the envelope `entry` (numbered on arrival).
    pub(crate) fn run(mut self, entry: RetainedEnvelope) -> Result<(), GroupError> {
        self.route(entry, true)
    }

    fn skip(&mut self, reason: String) {
        self.parts
            .events
            .push_back(GroupEvent::EnvelopeSkipped { reason });
    }

    /// Decide what an envelope is and where it goes: applied now, held for
    /// a future epoch, or (a commit for a past epoch) a rollback or a drop.
    fn route(
        &mut self,
        mut entry: RetainedEnvelope,
        allow_rollback: bool,
    ) -> Result<(), GroupError> {
        if RejoinRequest::is_request(&entry.payload) {
            return self.rejoin_requested(&entry.payload);
        }
        let current = self.parts.epoch();
        if let Some(own) = self
            .parts
            .history
            .own_commit(self.kv, &sha256(&entry.payload))?
        {
            entry.epoch = own.epoch;
            if own.epoch == current
                && own.auth_digest == self.parts.mls.auth_digest()
                && self.parts.mls.has_pending_commit()
            {
                return self.merge_own(entry, own);
            }
            if own.epoch < current {
                return self.past_commit(entry, allow_rollback);
            }
            // Built on a branch that was rolled away.
            self.skip(format!(
                "an own commit for epoch {} of an abandoned branch",
                own.epoch
            ));
            return Ok(());
        }
        let protocol = match MlsMessageIn::tls_deserialize_exact(entry.payload.as_slice())
            .map_err(|e| format!("malformed MLS message: {e}"))
            .and_then(|m| {
                m.try_into_protocol_message()
                    .map_err(|e| format!("not a group message: {e:?}"))
            }) {
            Ok(p) => p,
            Err(reason) => {
                self.skip(reason);
                return Ok(());
            }
        };
        if protocol.group_id().as_slice() != self.parts.group_id() {
            self.skip("a message for another group".into());
            return Ok(());
        }
        entry.epoch = protocol.epoch().as_u64();
        let is_commit = protocol.content_type() == ContentType::Commit;
        if entry.epoch < self.parts.core.joined_at_epoch {
            // From before this installation joined: a joiner reads the topic
            // from where its adder staged the commit, so it meets a few.
            // Their authenticated data still shows whether the branch it
            // joined is the others'.
            return self.check_branch_of(&protocol, self.now_ms);
        }
        if is_commit && entry.epoch < current {
            return self.past_commit(entry, allow_rollback);
        }
        if !self.parts.mls.is_active() {
            // Removed: only a rollback can bring it back, and then it needs
            // what arrived meanwhile (kept only while snapshots are). The
            // removal may also have been a fork's, past rolling back: the
            // members' messages still tell (and then it asks back in).
            self.check_branch_of(&protocol, self.now_ms)?;
            return self.parts.history.retain(self.kv, &entry);
        }
        if protocol.content_type() == ContentType::Proposal && entry.epoch < current {
            // MLS takes no proposal of a past epoch, but a rollback may
            // need it: keep it, and see whether one is due.
            self.parts.history.retain(self.kv, &entry)?;
            return match allow_rollback {
                true => self.late_proposal(&entry),
                false => Ok(()),
            };
        }
        if entry.epoch > current {
            self.check_branch_of(&protocol, self.now_ms)?;
            return self.hold(entry);
        }
        self.apply(entry, protocol, is_commit)
    }

    /// A rejoin request arrived: if this member should answer it, tell the
    /// driver, which fetches a key package for the installation and queues
    /// [`IntentKind::Readd`].
    fn rejoin_requested(&mut self, payload: &[u8]) -> Result<(), GroupError> {
        if !self.parts.forks.is_forked()
            && let Some(found) = self.parts.forks.adder_forked(
                payload,
                self.parts.core.welcomed_by,
                self.parts.core.joined_at_epoch,
            )
        {
            return self.parts.flag_fork(self.kv, found, self.now_ms);
        }
        let membership = Membership {
            roster: self.parts.roster()?,
            active: self.parts.mls.is_active(),
            own_installation: self.parts.own_installation(),
            member_since: self.parts.core.member_since(),
        };
        match self
            .parts
            .forks
            .examine_request(self.kv, &self.parts.history, membership, payload)?
        {
            Err(reason) => self.skip(reason),
            Ok(None) => {}
            Ok(Some(answer)) => self.parts.events.push_back(GroupEvent::RejoinRequested {
                inbox: answer.inbox,
                installation: answer.installation,
                stale_leaf: answer.stale_leaf,
            }),
        }
        Ok(())
    }

    /// [`Group::check_branch`] on a member's message this installation
    /// does not decrypt (commits carry no Kith authenticated data).
    fn check_branch_of(
        &mut self,
        protocol: &ProtocolMessage,
        now_ms: u64,
    ) -> Result<(), GroupError> {
        match protocol {
            ProtocolMessage::PrivateMessage(m) if m.content_type() != ContentType::Commit => {
                self.check_branch(m.aad(), now_ms)
            }
            _ => Ok(()),
        }
    }

    /// A member's message this installation cannot decrypt (or must hold)
    /// names its branch in `aad`: the fork monitor tells whether ours lost.
    fn check_branch(&mut self, aad: &[u8], now_ms: u64) -> Result<(), GroupError> {
        let auth = self.parts.mls.auth_digest();
        match self
            .parts
            .forks
            .check_branch(self.kv, &self.parts.history, aad, auth)?
        {
            Some(found) => self.parts.flag_fork(self.kv, found, now_ms),
            None => Ok(()),
        }
    }

    /// Keep an envelope of a future epoch until the group reaches it.
    fn hold(&mut self, entry: RetainedEnvelope) -> Result<(), GroupError> {
        let current = self.parts.epoch();
        if let Err(reason) = self.parts.history.hold(self.kv, entry, current)? {
            self.skip(reason);
        }
        Ok(())
    }

    /// After the epoch moved, apply the held envelopes it unblocked.
    fn release_held(&mut self) -> Result<(), GroupError> {
        if self.replaying {
            return Ok(());
        }
        for mut entry in self.parts.history.ready(self.kv, self.parts.epoch())? {
            self.parts.history.release(self.kv, &mut entry)?;
            self.route(entry, false)?;
        }
        Ok(())
    }

    /// Apply an envelope of the current epoch (or an application message
    /// of a past one).
    fn apply(
        &mut self,
        entry: RetainedEnvelope,
        protocol: ProtocolMessage,
        is_commit: bool,
    ) -> Result<(), GroupError> {
        let aad = match &protocol {
            ProtocolMessage::PrivateMessage(m) => m.aad().to_vec(),
            ProtocolMessage::PublicMessage(_) => Vec::new(),
        };
        let before = self.state_before(&entry, is_commit)?;
        let deniable = self.parts.bindings.as_ref().map(Bindings::state);
        match self
            .parts
            .mls
            .receive(self.provider, protocol, self.identities, deniable)?
        {
            Received::MissingProposal => self.hold(entry),
            Received::Unreadable(reason) => {
                if !is_commit {
                    self.check_branch(&aad, self.now_ms)?;
                }
                self.skip(reason);
                self.parts.history.retain(self.kv, &entry)
            }
            Received::Application {
                leaf,
                credential,
                plaintext,
            } => self.receive_message(entry, leaf, &credential, &plaintext),
            Received::Proposal { leaving } => self.received_proposal(&entry, leaving),
            Received::Commit(commit) => self.received_commit(&entry, *commit, before),
            Received::Refused {
                commit: true,
                reason,
            } => {
                self.parts
                    .events
                    .push_back(GroupEvent::CommitRejected { reason });
                Ok(())
            }
            Received::Refused { reason, .. } => {
                self.skip(reason);
                Ok(())
            }
            Received::Own => Ok(()),
        }
    }

    /// The state to snapshot before a commit of `entry`'s epoch is applied,
    /// and that epoch's authenticator digest; `None` when no snapshot is
    /// kept (not a commit, or the settle window is 0). The snapshot is
    /// taken before the commit is even decrypted, so that a restore leaves
    /// its handshake generation unspent. Right after a rollback restored
    /// this epoch, the stored snapshot is that state already (`None` state:
    /// nothing to capture or write again).
    fn state_before(
        &mut self,
        entry: &RetainedEnvelope,
        is_commit: bool,
    ) -> Result<Option<StateBefore>, GroupError> {
        let restored = self.restored.take() == Some(entry.epoch);
        Ok(match is_commit && self.parts.history.retains() {
            true if restored => Some((None, self.parts.mls.auth_digest())),
            true => Some((
                Some(self.parts.mls.capture(self.kv)?),
                self.parts.mls.auth_digest(),
            )),
            false => None,
        })
    }

    /// A proposal arrived (and was stored by OpenMLS).
    fn received_proposal(
        &mut self,
        entry: &RetainedEnvelope,
        leaving: bool,
    ) -> Result<(), GroupError> {
        // A leaving member cannot commit its own removal: someone else
        // must. Other proposers commit their own in time.
        let intents = self.parts.outbox.intents(self.kv)?;
        if leaving && !Outbox::has_waiting(&intents, &IntentKind::CommitPending) {
            self.parts
                .outbox
                .queue(self.kv, IntentKind::CommitPending)?;
        }
        self.parts.history.retain(self.kv, entry)?;
        // A commit that refers to it may be waiting for it.
        self.release_held()
    }

    /// A valid commit of the current epoch: keep the snapshot taken
    /// `before` it, merge it, and settle what it decides about our own
    /// pending commit and proposals.
    fn received_commit(
        &mut self,
        entry: &RetainedEnvelope,
        commit: ValidCommit,
        before: Option<StateBefore>,
    ) -> Result<(), GroupError> {
        if let Some((state, auth)) = &before {
            let state = state.as_ref().map(|s| s.as_slice());
            self.parts.history.keep_snapshot(
                self.kv,
                state,
                entry,
                entry.epoch,
                *auth,
                self.now_ms,
            )?;
        }
        let merge = self.parts.mls.merge(self.provider, commit)?;
        // A pending commit of ours lost, and proposals of ours were
        // committed or are void: see which.
        let hash = sha256(&entry.payload);
        self.parts
            .outbox
            .resolve(self.kv, entry.epoch, &merge.included, hash, None)?;
        self.merged(entry, merge)
    }

    /// An application message from `leaf` (credential `credential` in the
    /// sender's epoch): store it, or take in a control message.
    fn receive_message(
        &mut self,
        mut entry: RetainedEnvelope,
        leaf: LeafNodeIndex,
        credential: &Credential,
        plaintext: &[u8],
    ) -> Result<(), GroupError> {
        let (content, id) = match Content::decode_checked(plaintext) {
            Ok(c) => c,
            Err(e) => {
                self.skip(e.to_string());
                return Ok(());
            }
        };
        let sender = match self.parts.bindings.as_ref().map(Bindings::state) {
            Some(state) => {
                // A deniable DM's leaf is someone only once its binding
                // verified; it is the sender's only if its pseudonym is the
                // one OpenMLS saw.
                let leaf_key = match self.parts.roster()?.deniable_leaf_key(leaf, credential) {
                    Ok(key) => key,
                    Err(reason) => {
                        self.skip(reason.into());
                        return self.parts.history.retain(self.kv, &entry);
                    }
                };
                if content.content_type == CONTENT_TYPE_BINDING {
                    self.receive_binding(&entry, leaf_key, &content.body)?;
                    return self.parts.history.retain(self.kv, &entry);
                }
                let peer = self
                    .parts
                    .dm_peer(state.own_inbox)
                    .unwrap_or(state.own_inbox);
                self.parts.roster()?.deniable_sender(leaf, leaf_key, peer)
            }
            None => match self.parts.roster()?.sender(leaf, credential) {
                Some(sender) => sender,
                None => {
                    self.skip("an application message with a foreign credential".into());
                    return Ok(());
                }
            },
        };
        let (inbox, installation, unbound_leaf) = sender;
        match content.content_type.as_str() {
            CONTENT_TYPE_BINDING => {
                self.skip("a deniable binding in a group that is not a deniable DM".into());
                return self.parts.history.retain(self.kv, &entry);
            }
            CONTENT_TYPE_EPOCH_DIGEST => {
                // Decrypting it proves the same epoch secret, so the digest
                // can only match; a mismatch means a broken peer.
                if entry.epoch == self.parts.epoch() && content.body != self.parts.mls.auth_digest()
                {
                    self.skip("an epoch digest that does not match ours".into());
                }
                return self.parts.history.retain(self.kv, &entry);
            }
            other if other.starts_with(CONTROL_CONTENT_PREFIX) => {
                // Transcript entries and control types of later versions:
                // only the engine makes the former, from checked commits.
                self.skip(format!(
                    "a control message of type {other:?} sent as content"
                ));
                return self.parts.history.retain(self.kv, &entry);
            }
            _ => {}
        }
        let message = StoredMessage {
            conversation_id: self.parts.conversation_id(),
            group_id: self.parts.group_id().to_vec(),
            message_id: id,
            sender_inbox: inbox,
            sender_installation: installation,
            content_type: content.content_type,
            body: content.body,
            sent_at_ms: content.sent_at_ms,
            time_ms: entry.key.0,
            delivery: Delivery::Published,
            unbound_leaf,
            fallback: content.fallback,
        };
        entry.message_id = Some(id);
        if let Some(confirmed) = self.confirmed.as_mut() {
            confirmed.insert(id);
        }
        conversation::store_received(self.kv, message, &mut self.parts.events)?;
        self.parts.history.retain(self.kv, &entry)
    }

    /// A binding that leaf `leaf_key` sent in `entry`'s epoch: the bindings
    /// keep the tag meant for this installation (a malformed one fails the
    /// DM).
    fn receive_binding(
        &mut self,
        entry: &RetainedEnvelope,
        leaf_key: [u8; 32],
        body: &[u8],
    ) -> Result<(), GroupError> {
        let own = self.parts.own_installation();
        let Some(bindings) = self.parts.bindings.as_mut() else {
            return Ok(());
        };
        if let Err(reason) =
            bindings.receive(self.kv, self.identities, own, leaf_key, entry.epoch, body)?
        {
            bindings.fail(reason, &mut self.parts.events);
        }
        Ok(())
    }

    /// Bookkeeping after any merge: the commit's position, when the leaves
    /// it added were added, the envelope kept for replay, events, the
    /// bindings, settling by the ring's bound, and held envelopes.
    fn merged(&mut self, entry: &RetainedEnvelope, merge: Merge) -> Result<(), GroupError> {
        let Merge {
            left_auth,
            left_claim_key,
            summary,
            self_removed,
            update,
            ..
        } = merge;
        if let (Some(update), Some(installation)) = (update, summary.committer_installation) {
            let group_id = self.parts.group_id().to_vec();
            let id = transcript::record(
                self.kv,
                self.parts.conversation_id(),
                &group_id,
                entry,
                (summary.committer, installation),
                &update,
                &mut self.parts.events,
            )?;
            if let Some(confirmed) = self.confirmed.as_mut() {
                confirmed.insert(id);
            }
        }
        self.parts.history.record_commit(
            self.kv,
            entry.epoch,
            entry.key,
            left_auth,
            Some(&left_claim_key),
        )?;
        for (_, installation) in &summary.added {
            let roster = self.parts.roster()?;
            if let Some(leaf) = roster.leaf_of(installation) {
                let key = roster.leaf_encryption_key(leaf);
                self.parts
                    .forks
                    .leaf_added_now(self.kv, installation, entry.key.0, key)?;
            }
        }
        self.parts.history.retain(self.kv, entry)?;
        if let Some(bindings) = self.parts.bindings.as_mut()
            && summary.leaves_added
        {
            bindings.leaves_added();
        }
        self.announce(summary, self_removed)?;
        self.parts.keep_exporter(self.provider, self.kv)?;
        // Without snapshots nothing can roll back: the transition settles
        // at once. With them only the ring's bound applies here; settling
        // by time waits for `advance`, once the topic's backlog is read.
        let synced = (!self.parts.history.retains()).then_some(self.now_ms);
        self.parts.settle(self.kv, synced, self.now_ms)?;
        self.release_held()
    }

    /// Tell the application what a merged commit changed; if it removed
    /// this installation, retire the group and fail what is still open.
    fn announce(
        &mut self,
        summary: super::validate::CommitSummary,
        self_removed: bool,
    ) -> Result<(), GroupError> {
        if !summary.removed.is_empty() {
            let left = self.parts.mls.epoch().saturating_sub(1);
            let removed = &mut self.parts.core.removed_installations;
            removed.extend(
                summary
                    .removed
                    .iter()
                    .map(|(_, installation)| (left, *installation)),
            );
            let excess = removed
                .len()
                .saturating_sub(super::records::MAX_REMOVED_KEPT);
            removed.drain(..excess);
        }
        if !summary.added.is_empty() || !summary.removed.is_empty() {
            self.parts.events.push_back(GroupEvent::MembersChanged {
                by: summary.committer,
                added: summary.added,
                removed: summary.removed,
            });
        }
        if summary.metadata_changed {
            self.parts.events.push_back(GroupEvent::MetadataChanged {
                by: summary.committer,
                metadata: Box::new(summary.metadata),
            });
        }
        if self_removed || !self.parts.mls.is_active() {
            self.parts.core.removed_at_ms = Some(self.now_ms);
            conversation::retire_group(
                self.kv,
                &self.parts.conversation_id(),
                self.parts.group_id(),
            )?;
            let reason = "this installation was removed";
            self.parts
                .outbox
                .fail_open(self.kv, reason, &mut self.parts.events)?;
            self.parts.events.push_back(GroupEvent::Removed);
        }
        Ok(())
    }

    /// Our own commit `own` came back first in its epoch: merge it (if it
    /// still passes every member's checks).
    fn merge_own(&mut self, entry: RetainedEnvelope, own: OwnCommit) -> Result<(), GroupError> {
        let intent = self
            .parts
            .outbox
            .intents(self.kv)?
            .into_iter()
            .find(|i| i.id == own.intent_id);
        let deniable = self.parts.bindings.as_ref().map(Bindings::state);
        let summary = match self
            .parts
            .mls
            .check_own(self.provider, self.identities, deniable)?
        {
            Ok(summary) => summary,
            Err(reason) => {
                // Every other member rejects it too, so the epoch stays.
                if intent.is_some() {
                    self.parts.outbox.fail(
                        self.kv,
                        own.intent_id,
                        reason,
                        true,
                        &mut self.parts.events,
                    )?;
                }
                return Ok(());
            }
        };
        if self.parts.history.retains() {
            let state = self.parts.mls.capture(self.kv)?;
            let auth = self.parts.mls.auth_digest();
            self.parts.history.keep_snapshot(
                self.kv,
                Some(&state),
                &entry,
                entry.epoch,
                auth,
                self.now_ms,
            )?;
        }
        let merge = self.parts.mls.merge_own(self.provider, summary)?;
        self.parts.core.digest_due = true;
        self.parts.outbox.resolve(
            self.kv,
            own.epoch,
            &merge.included,
            own.hash,
            Some(own.intent_id),
        )?;
        self.parts.outbox.own_commit_won(self.kv, intent, &own)?;
        self.merged(&entry, merge)
    }

    // ----- rollback and settling -----------------------------------------

    /// A commit for an epoch this installation already left: a duplicate, a
    /// rollback, or one to keep or drop (see [`PastCommit`]).
    fn past_commit(
        &mut self,
        entry: RetainedEnvelope,
        allow_rollback: bool,
    ) -> Result<(), GroupError> {
        let epoch = entry.epoch;
        match self
            .parts
            .history
            .past_commit(self.kv, &entry, allow_rollback)?
        {
            PastCommit::Duplicate => {}
            PastCommit::RollBack(snapshot) => return self.rollback(snapshot, entry),
            PastCommit::Kept => self.skip(format!(
                "a commit for epoch {epoch} that sorts after the one applied"
            )),
            // Even if it sorts before the commit applied, it cannot be
            // checked any more (it may be invalid, or of a branch that lost
            // earlier). If a member's branch took it (a verified claim in
            // its messages), this installation is on a fork.
            PastCommit::Settled { earlier_than } => {
                self.skip(format!(
                    "a commit for epoch {epoch}, which has settled, was dropped{}",
                    if earlier_than.is_some() {
                        " (it sorts before the one applied)"
                    } else {
                        ""
                    }
                ));
                if let Some(applied) = earlier_than
                    && let Some(found) = self.parts.forks.late_commit(epoch, entry.key, applied)
                {
                    self.parts.flag_fork(self.kv, found, self.now_ms)?;
                }
            }
        }
        Ok(())
    }

    /// A proposal of a past epoch arrived: if a retained commit of that
    /// epoch that sorts before the one applied may have waited for it, roll
    /// back to it (with the proposal replayed first, it may now be valid).
    fn late_proposal(&mut self, proposal: &RetainedEnvelope) -> Result<(), GroupError> {
        match self.parts.history.commit_waiting_for(self.kv, proposal)? {
            Some((snapshot, commit)) => self.rollback(snapshot, commit),
            None => Ok(()),
        }
    }

    /// Restore the snapshot of `snapshot.epoch` and apply `first`, the
    /// commit that sorts before the one applied. If it is merged, the
    /// branch changed: replay, in canonical order, every envelope retained
    /// since the snapshot (and every held one). If it is not (invalid, or
    /// not decryptable), put the state back as it was.
    ///
    /// Never replaying onto the same branch matters for more than speed:
    /// re-deriving an epoch from the same commit yields the same secrets
    /// with fresh sender ratchets, and sending from them would reuse key
    /// and nonce pairs already spent.
    fn rollback(
        &mut self,
        snapshot: EpochSnapshot,
        first: RetainedEnvelope,
    ) -> Result<(), GroupError> {
        let epoch = snapshot.epoch;
        let state = self.parts.history.snapshot_state(self.kv, epoch)?;
        // Decided before `first` is applied; held envelopes join the replay
        // in their canonical place, and none is released in between (see
        // `Ctx::replaying`): released by the replay's first proposal or
        // merge, a held commit sorting after `first` would beat it.
        let ReplayPlan { before, after } =
            self.parts.history.replay_plan(self.kv, &snapshot, &first)?;
        // If `first` does not merge, the current state comes back: from a
        // savepoint when the store has one (no copy), else from a capture.
        let undo = match self
            .kv
            .savepoint_group(self.parts.group_id())
            .map_err(GroupError::store)?
        {
            Some(savepoint) => Undo::Savepoint(savepoint),
            None => Undo::State(self.parts.mls.capture(self.kv)?),
        };
        let current = self.parts.mls.restore(self.provider, self.kv, &state)?;
        let (first_hash, first_key) = (sha256(&first.payload), first.key);
        let events_before = self.parts.events.len();
        let outer_replaying = std::mem::replace(&mut self.replaying, true);
        // Envelopes of the restored epoch that sort before `first` go first:
        // `first` may refer to a proposal among them.
        let restored_as_is = before.is_empty();
        for mut entry in before {
            self.parts.history.renumber(self.kv, &mut entry)?;
            self.route(entry, false)?;
        }
        let mut first = first;
        self.parts.history.renumber(self.kv, &mut first)?;
        if restored_as_is {
            self.restored = Some(epoch);
        }
        self.route(first, false)?;
        self.restored = None;
        if self.parts.epoch() == epoch {
            self.replaying = outer_replaying;
            match undo {
                Undo::Savepoint(savepoint) => {
                    self.kv
                        .rollback_group_to(savepoint)
                        .map_err(GroupError::store)?;
                    // Untouched since the restore replaced it, and the store
                    // holds its state again.
                    self.parts.mls.put_back(current);
                }
                Undo::State(state) => {
                    self.parts.mls.restore(self.provider, self.kv, &state)?;
                }
            }
            self.parts.forks.earlier_commit_refused(epoch, first_key);
            // What `first` changed went with the restore; keep only why it
            // was refused.
            let kept: Vec<GroupEvent> = self
                .parts
                .events
                .drain(events_before..)
                .filter(|e| {
                    matches!(
                        e,
                        GroupEvent::CommitRejected { .. } | GroupEvent::EnvelopeSkipped { .. }
                    )
                })
                .collect();
            self.parts.events.extend(kept);
            return Ok(());
        }
        self.branch_changed(epoch, first_hash, after, outer_replaying)
    }

    /// The rollback to `epoch` merged the earlier commit `first_hash`:
    /// replay what followed it, and undo what the old branch did.
    #[allow(clippy::too_many_arguments)]
    fn branch_changed(
        &mut self,
        epoch: u64,
        first_hash: [u8; 32],
        replay: Vec<RetainedEnvelope>,
        outer_replaying: bool,
    ) -> Result<(), GroupError> {
        // A binding sent past this epoch went out on the losing branch.
        if let Some(bindings) = self.parts.bindings.as_mut() {
            bindings.rolled_back(epoch);
        }
        self.parts.history.drop_after(self.kv, epoch)?;
        self.parts.outbox.rolled_back(self.kv, epoch, first_hash)?;
        let group_id = self.parts.group_id().to_vec();
        let candidates: BTreeSet<[u8; 32]> = replay
            .iter()
            .filter(|e| e.epoch > epoch)
            .filter_map(|e| e.message_id)
            // The transcript entries of commits that may have lost, the
            // first of them included (it left `epoch`).
            .chain(
                replay
                    .iter()
                    .filter(|e| e.epoch >= epoch)
                    .map(|e| transcript::entry_id(&group_id, e.key)),
            )
            .collect();
        let replayed = replay.len() as u64 + 1;
        let outer = self.confirmed.replace(BTreeSet::new());
        for mut entry in replay {
            self.parts.history.renumber(self.kv, &mut entry)?;
            self.route(entry, false)?;
        }
        let confirmed = std::mem::replace(&mut self.confirmed, outer).unwrap_or_default();
        self.replaying = outer_replaying;
        // Held envelopes the replay left held may be ready now.
        self.release_held()?;
        let conversation = self.parts.conversation_id();
        let lost = candidates.difference(&confirmed);
        conversation::supersede(self.kv, &conversation, lost, &mut self.parts.events)?;
        let (current, auth) = (self.parts.epoch(), self.parts.mls.auth_digest());
        self.parts
            .history
            .flag_lost_sends(self.kv, epoch, current, auth)?;
        if self.parts.mls.is_active() {
            // The replay may have undone a removal of this installation.
            conversation::restore_group(self.kv, &conversation, self.parts.group_id())?;
        }
        let stats = self.parts.history.rolled_back(replayed);
        self.parts.events.push_back(GroupEvent::RolledBack {
            to_epoch: epoch,
            replayed,
            stats,
        });
        Ok(())
    }
}
