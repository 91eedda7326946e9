//! Rollback and replay over a bounded ring of snapshots (DESIGN.md
//! section 7).
//!
//! The network may show members the envelopes of a group topic in
//! different orders. Every member applies them as they arrive and keeps,
//! for each epoch transition that has not *settled*, a snapshot of the
//! group state taken just before the transition, and the envelopes that
//! arrived since. When a commit arrives that sorts before the commit
//! applied for its epoch, the member restores that epoch's snapshot and
//! replays the retained envelopes, the new one included, in canonical
//! order: the first valid commit of each epoch wins, as on every other
//! member.
//!
//! A transition settles when `now >= commit time + settle_window`, or when
//! the ring holds more than `max_rewind` snapshots; its snapshot is then
//! deleted at once. With a settle window of 0 (a single node, or nodes
//! sharing one database: a strong order) no snapshot is ever taken.
//!
//! What a rollback undoes, and how:
//! - own commits that lost are regenerated (their intents go to
//!   [`IntentState::Regenerate`]);
//! - own messages sent in an epoch that lost are re-sent, with the same
//!   message id, in the current epoch;
//! - received messages known only from a losing epoch are marked
//!   [`Delivery::Superseded`]; the re-sent copy turns them back.
//!
//! Fork detection: every Kith application message carries, in its
//! authenticated data, the canonical position of the commit that started
//! its epoch and a digest of the epoch authenticator. A member that cannot
//! decrypt a message of its own epoch learns from it whether the sender's
//! branch sorts first; if it does and this member can no longer roll back,
//! this member is on a fork. So is a member that receives a commit, for an
//! epoch that already settled, that sorts before the one it applied.

use std::collections::BTreeSet;

use openmls::prelude::{GroupId, MlsGroup};
use openmls_traits::{OpenMlsProvider, random::OpenMlsRand as _};
use prost::Message as _;

use super::{
    aad::{AAD_HISTORY, KithAad, auth_digest},
    config::GroupConfig,
    content::{Content, WelcomePayload},
    error::GroupError,
    events::GroupEvent,
    group_state::Group,
    intent::IntentState,
    metadata::GroupMetadata,
    records::{
        ConversationState, Delivery, EarlierCommit, EpochSnapshot, Fork, OrderKey, OwnSend,
        RetainedEnvelope, RewindStats,
    },
    signer::Me,
    store::{ClientStore, GroupSnapshots, KvStore},
};
use crate::delivery::Topic;

/// How many past epochs' commit positions are remembered for fork
/// detection (positions only: no secrets).
pub const COMMIT_HISTORY: u64 = 64;

/// How often every member publishes an epoch digest, even without
/// commits of its own (see [`super::CONTENT_TYPE_EPOCH_DIGEST`]).
pub const DIGEST_INTERVAL_MS: u64 = 60 * 60 * 1000;

/// How many envelopes of future epochs a group holds.
pub const MAX_HELD: usize = 1024;

/// How a rollback returns to the current state when the earlier commit
/// does not merge.
enum Undo<P> {
    /// The store's savepoint of the group.
    Savepoint(P),
    /// A capture of the group's whole state.
    State(zeroize::Zeroizing<Vec<u8>>),
}

impl Group {
    /// The configuration in force.
    pub fn config(&self) -> GroupConfig {
        self.config
    }

    /// Set the configuration (from the node's settle window and the
    /// client's settings). Not stored: the driver sets it whenever it loads
    /// the group.
    pub fn set_config(&mut self, config: GroupConfig) {
        self.config = config;
    }

    /// Rollback metrics.
    pub fn rewind_stats(&self) -> RewindStats {
        self.record.rewind
    }

    /// Whether this installation found itself on a fork, and why.
    pub fn fork(&self) -> Option<&Fork> {
        self.record.forked.as_ref()
    }

    /// When the oldest retained snapshot settles by time (so that the
    /// driver can wake up then), if any is retained.
    pub fn next_settle_ms<S: KvStore + ?Sized>(&self, kv: &S) -> Result<Option<u64>, GroupError> {
        Ok(ClientStore(kv)
            .snapshots(self.group_id())?
            .first()
            .map(|s| {
                s.commit_key
                    .0
                    .saturating_add(self.config.rewind.settle_window_ms)
            }))
    }

    pub(crate) fn auth_digest(&self) -> [u8; 8] {
        auth_digest(self.mls.epoch_authenticator().as_slice())
    }

    pub(crate) fn current_aad<S: KvStore + ?Sized>(&self, kv: &S) -> Result<KithAad, GroupError> {
        Ok(KithAad {
            auth_digest: self.auth_digest(),
            history: self.branch_before(kv, self.epoch())?,
        })
    }

    /// The [`AAD_HISTORY`] commits that led to `epoch` on this branch,
    /// newest first, as far as they are remembered.
    pub(crate) fn branch_before<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        epoch: u64,
    ) -> Result<Vec<(u64, [u8; 8], OrderKey)>, GroupError> {
        let store = ClientStore(kv);
        let mut history = Vec::with_capacity(AAD_HISTORY);
        for back in 1..=AAD_HISTORY as u64 {
            let Some(left) = epoch.checked_sub(back) else {
                break;
            };
            match store.commit_record(self.group_id(), left)? {
                Some((key, auth)) => history.push((left, auth, key)),
                None => break,
            }
        }
        Ok(history)
    }

    /// Whether the ring holds a snapshot (so envelopes must be retained).
    pub(crate) fn ring_len<S: KvStore + ?Sized>(&self, kv: &S) -> Result<usize, GroupError> {
        Ok(ClientStore(kv).snapshots(self.group_id())?.len())
    }

    /// Capture the state before applying the commit `entry` (called only
    /// when the policy retains snapshots). The bytes are written by
    /// [`Group::keep_snapshot`] once the commit proved valid.
    pub(crate) fn capture<S: GroupSnapshots + ?Sized>(
        &self,
        kv: &S,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, GroupError> {
        kv.snapshot_group(self.group_id())
            .map_err(GroupError::store)
    }

    /// Record the snapshot of `epoch`, left by the commit `entry`; `state`
    /// is `None` when the stored state is already this one (the epoch was
    /// just restored).
    pub(crate) fn keep_snapshot<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        state: Option<&[u8]>,
        entry: &RetainedEnvelope,
        epoch: u64,
        auth: [u8; 8],
        now_ms: u64,
    ) -> Result<(), GroupError> {
        let store = ClientStore(kv);
        if let Some(state) = state {
            store.put_snapshot_state(self.group_id(), epoch, state)?;
        }
        store.put_snapshot(
            self.group_id(),
            &EpochSnapshot {
                epoch,
                arrival: entry.arrival,
                commit_key: entry.key,
                commit_hash: super::group_state::sha256(&entry.payload),
                taken_at_ms: now_ms,
                auth_digest: auth,
            },
        )
    }

    /// A commit for an epoch this installation already left.
    pub(crate) fn past_commit<P: OpenMlsProvider, S: GroupSnapshots + ?Sized>(
        &mut self,
        provider: &P,
        kv: &S,
        ctx: &mut super::group_state::Ctx<'_>,
        entry: RetainedEnvelope,
        allow_rollback: bool,
    ) -> Result<(), GroupError> {
        let store = ClientStore(kv);
        let epoch = entry.epoch;
        match store.snapshot(self.group_id(), epoch)? {
            Some(snapshot)
                if super::group_state::sha256(&entry.payload) == snapshot.commit_hash =>
            {
                // The same commit again (published twice): nothing changes.
                Ok(())
            }
            Some(snapshot) if entry.key < snapshot.commit_key && allow_rollback => {
                store.put_retained(self.group_id(), &entry)?;
                self.rollback(provider, kv, ctx, snapshot, entry)
            }
            Some(_) => {
                // It lost on this branch, but a rollback to an earlier epoch
                // may bring back the branch it was built on: keep it.
                store.put_retained(self.group_id(), &entry)?;
                self.skip(format!(
                    "a commit for epoch {epoch} that sorts after the one applied"
                ));
                Ok(())
            }
            None => {
                self.record.rewind.dropped_settled += 1;
                // Even if it sorts before the commit applied, it cannot be
                // checked any more (it may be invalid, or of a branch that
                // lost earlier): members' messages tell whether this
                // installation is on a fork (`check_branch`).
                let earlier = store
                    .commit_key(self.group_id(), epoch)?
                    .is_some_and(|applied| entry.key < applied);
                self.skip(format!(
                    "a commit for epoch {epoch}, which has settled, was dropped{}",
                    if earlier {
                        " (it sorts before the one applied)"
                    } else {
                        ""
                    }
                ));
                Ok(())
            }
        }
    }

    /// A proposal for `proposal.epoch`, which has passed: MLS cannot take it
    /// any more, but a commit of that epoch that refers to it may have been
    /// tried without it. If such a commit sorts before the one applied, and
    /// the epoch is still in the ring, roll back to it: with the proposal
    /// replayed first, it may now be valid.
    pub(crate) fn late_proposal<P: OpenMlsProvider, S: GroupSnapshots + ?Sized>(
        &mut self,
        provider: &P,
        kv: &S,
        ctx: &mut super::group_state::Ctx<'_>,
        proposal: &RetainedEnvelope,
    ) -> Result<(), GroupError> {
        let store = ClientStore(kv);
        let epoch = proposal.epoch;
        let Some(snapshot) = store.snapshot(self.group_id(), epoch)? else {
            return Ok(());
        };
        // Held or not: a commit tried in a rollback that found its
        // proposal missing stays held.
        let waiting = store
            .retained(self.group_id())?
            .into_iter()
            .filter(|e| {
                e.epoch == epoch
                    && proposal.key < e.key
                    && e.key < snapshot.commit_key
                    && is_commit(&e.payload)
            })
            .min_by_key(|e| e.key);
        match waiting {
            Some(commit) => self.rollback(provider, kv, ctx, snapshot, commit),
            None => Ok(()),
        }
    }

    /// A member's message this installation cannot decrypt (or must hold):
    /// if the sender's branch parts from ours, the side whose commit sorts
    /// first where they part is canonical. If it is the sender's and we can
    /// no longer roll back to that epoch, we are on a fork.
    pub(crate) fn check_branch<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        aad: &[u8],
        now_ms: u64,
    ) -> Result<(), GroupError> {
        let Some(theirs) = KithAad::decode(aad) else {
            return Ok(());
        };
        // On a fork already, a message may still show an earlier parting
        // than the one it asks to be re-added for (`flag_fork` takes it).
        if theirs.auth_digest == self.auth_digest() {
            return Ok(());
        }
        let store = ClientStore(kv);
        // Oldest first: the first epoch both were in (same authenticator)
        // whose commits differ is where the branches part.
        for (epoch, their_auth, their_key) in theirs.history.iter().rev() {
            let Some((my_key, my_auth)) = store.commit_record(self.group_id(), *epoch)? else {
                continue;
            };
            if my_auth != *their_auth || my_key == *their_key {
                continue;
            }
            if *their_key >= my_key {
                // Ours sorts first: the sender rolls back, or is forked.
                return Ok(());
            }
            if store.snapshot(self.group_id(), *epoch)?.is_some() {
                // Their commit should reach us, and we roll back to it; if
                // the epoch settles first, `settle` finds us on a fork.
                return self.note_earlier_commit(
                    kv,
                    EarlierCommit {
                        epoch: *epoch,
                        auth_digest: *their_auth,
                        key: *their_key,
                    },
                );
            }
            return self.flag_fork(
                kv,
                format!(
                    "a member's branch took an earlier commit for epoch {epoch}, which has \
                     settled here"
                ),
                (*epoch, *their_key),
                my_key.0,
                now_ms,
            );
        }
        Ok(())
    }

    /// Remember the earliest parting seen (the oldest epoch, and there the
    /// first commit) until its epoch settles.
    fn note_earlier_commit<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        seen: EarlierCommit,
    ) -> Result<(), GroupError> {
        let earlier = match &self.record.earlier_commit {
            Some(known) => (seen.epoch, seen.key) < (known.epoch, known.key),
            None => true,
        };
        if earlier {
            self.record.earlier_commit = Some(seen);
            self.save_record(kv)?;
        }
        Ok(())
    }

    /// Record that this installation is on a fork that began with the
    /// commit it applied at `since_ms`, tell the application, and fail the
    /// own messages sent on it. [`Group::advance`] then asks to be
    /// re-added.
    pub(crate) fn flag_fork<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        reason: String,
        evidence: (u64, OrderKey),
        since_ms: u64,
        now_ms: u64,
    ) -> Result<(), GroupError> {
        if let Some(fork) = self.record.forked.as_mut() {
            // Only a member that applied the evidence commit answers the
            // request. The first evidence found may itself have lost to a
            // commit that sorts even earlier (or the branches may part at an
            // older epoch); then nobody would answer: ask again, with the
            // better evidence, at once.
            if evidence < (fork.evidence_epoch, fork.evidence_key) {
                fork.evidence_epoch = evidence.0;
                fork.evidence_key = evidence.1;
                fork.reason = reason;
                fork.requested_at_ms = None;
                self.save_record(kv)?;
            }
            return Ok(());
        }
        self.fail_forked_sends(kv, since_ms)?;
        let fork = Fork {
            epoch: self.epoch(),
            reason,
            detected_at_ms: now_ms,
            requested_at_ms: None,
            evidence_epoch: evidence.0,
            evidence_key: evidence.1,
        };
        self.events.push_back(GroupEvent::Forked {
            epoch: fork.epoch,
            reason: fork.reason.clone(),
        });
        self.record.forked = Some(fork);
        self.save_record(kv)
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
    fn rollback<P: OpenMlsProvider, S: GroupSnapshots + ?Sized>(
        &mut self,
        provider: &P,
        kv: &S,
        ctx: &mut super::group_state::Ctx<'_>,
        snapshot: EpochSnapshot,
        first: RetainedEnvelope,
    ) -> Result<(), GroupError> {
        let store = ClientStore(kv);
        let group_id = self.group_id().to_vec();
        let epoch = snapshot.epoch;
        let state = store.snapshot_state(&group_id, epoch)?.ok_or_else(|| {
            GroupError::Corrupt(format!("the snapshot of epoch {epoch} has no state"))
        })?;
        // What to replay is decided before `first` is applied: applying it
        // rewrites this epoch's ring entry, and settling by the ring's bound
        // would drop the envelopes it no longer covers. Held envelopes join
        // the replay in their canonical place (and none is released in
        // between, see `Ctx::replaying`): released by the replay's first
        // proposal or merge, a held commit sorting after `first` would beat
        // it to the restored epoch.
        let first_arrival = first.arrival;
        let mut entries: Vec<RetainedEnvelope> = store
            .retained(&group_id)?
            .into_iter()
            .filter(|e| (e.held || e.arrival >= snapshot.arrival) && e.arrival != first_arrival)
            .collect();
        entries.sort_by_key(|e| e.key);
        // Envelopes of the restored epoch that sort before `first` go
        // first: `first` may refer to a proposal among them.
        let (before, entries): (Vec<RetainedEnvelope>, Vec<RetainedEnvelope>) = entries
            .into_iter()
            .partition(|e| e.epoch == epoch && e.key < first.key);
        // If `first` does not merge, the current state comes back: from a
        // savepoint when the store has one (no copy), else from a capture.
        let undo = match kv.savepoint_group(&group_id).map_err(GroupError::store)? {
            Some(savepoint) => Undo::Savepoint(savepoint),
            None => Undo::State(self.capture(kv)?),
        };
        let (current_mls, current_metadata) = self.restore(provider, kv, &state)?;
        let first_hash = super::group_state::sha256(&first.payload);
        let first_key = first.key;
        let events_before = self.events.len();
        let outer_replaying = std::mem::replace(&mut ctx.replaying, true);
        for mut entry in before.iter().cloned() {
            self.renumber(kv, &mut entry)?;
            self.route(provider, kv, ctx, entry, false)?;
        }
        let mut first = first;
        self.renumber(kv, &mut first)?;
        if before.is_empty() {
            ctx.restored = Some(epoch);
        }
        self.route(provider, kv, ctx, first, false)?;
        ctx.restored = None;
        if self.epoch() == epoch {
            ctx.replaying = outer_replaying;
            match undo {
                Undo::Savepoint(savepoint) => {
                    kv.rollback_group_to(savepoint).map_err(GroupError::store)?;
                    // Untouched since the restore replaced it, and the store
                    // holds its state again.
                    self.mls = current_mls;
                    self.metadata = current_metadata;
                }
                Undo::State(current) => {
                    self.restore(provider, kv, &current)?;
                }
            }
            // A member's message named this commit as its branch's: that
            // branch is not one to follow, and no fork is to be inferred
            // from it when the epoch settles.
            if self
                .record
                .earlier_commit
                .as_ref()
                .is_some_and(|seen| seen.epoch == epoch && seen.key == first_key)
            {
                self.record.earlier_commit = None;
                self.save_record(kv)?;
            }
            // What `first` changed went with the restore; keep only why
            // it was refused.
            let kept: Vec<GroupEvent> = self
                .events
                .drain(events_before..)
                .filter(|e| {
                    matches!(
                        e,
                        GroupEvent::CommitRejected { .. } | GroupEvent::EnvelopeSkipped { .. }
                    )
                })
                .collect();
            self.events.extend(kept);
            return Ok(());
        }
        // The branch changed: a binding sent past this epoch is lost.
        self.after_deniable_rollback(epoch);
        // The ring past this epoch belongs to the old one (this epoch's
        // entry was rewritten by the merge).
        for later in store.snapshots(&group_id)? {
            if later.epoch > epoch {
                store.remove_snapshot(&group_id, later.epoch)?;
            }
        }
        // Own commits that won on the old branch lost on this one, and
        // those built on its later epochs are gone with them.
        for mut intent in store.intents(&group_id)? {
            let lost = match &intent.state {
                IntentState::Committed { commit, .. } => {
                    commit.epoch >= epoch && commit.commit_hash != first_hash
                }
                IntentState::Published(commit) => commit.epoch > epoch,
                // Proposed on the old branch: void on this one.
                IntentState::Proposed(proposed) => proposed.epoch > epoch,
                _ => false,
            };
            if lost {
                intent.state = IntentState::Regenerate;
                store.put_intent(&group_id, &intent)?;
            }
        }
        let candidates: BTreeSet<[u8; 32]> = entries
            .iter()
            .filter(|e| e.epoch > epoch)
            .filter_map(|e| e.message_id)
            .collect();
        let replayed = entries.len() as u64 + 1;
        let outer = ctx.confirmed.replace(BTreeSet::new());
        for mut entry in entries {
            self.renumber(kv, &mut entry)?;
            self.route(provider, kv, ctx, entry, false)?;
        }
        let confirmed = std::mem::replace(&mut ctx.confirmed, outer).unwrap_or_default();
        ctx.replaying = outer_replaying;
        // Held envelopes the replay left held may be ready now.
        self.release_held(provider, kv, ctx)?;
        let conversation = self.conversation_id();
        for id in candidates.difference(&confirmed) {
            if let Some(mut message) = store.message(&conversation, id)?
                && message.delivery != Delivery::Superseded
            {
                message.delivery = Delivery::Superseded;
                store.update_message(&message)?;
                self.events
                    .push_back(GroupEvent::MessageSuperseded { message_id: *id });
            }
        }
        self.flag_lost_sends(kv, epoch)?;
        if self.mls.is_active() {
            // The replay may have undone a removal of this installation.
            let mut record = store.conversation(&conversation)?;
            if let Some(record) = record.as_mut()
                && (record.state != ConversationState::Active
                    || !record.group_ids.contains(&group_id))
            {
                record.state = ConversationState::Active;
                if !record.group_ids.contains(&group_id) {
                    record.group_ids.push(group_id.clone());
                }
                store.put_conversation(record)?;
            }
        }
        self.record.rewind.rollbacks += 1;
        self.record.rewind.replayed += replayed;
        self.save_record(kv)?;
        self.events.push_back(GroupEvent::RolledBack {
            to_epoch: epoch,
            replayed,
            stats: self.record.rewind,
        });
        Ok(())
    }

    /// Give a replayed envelope the next arrival number, so that arrival
    /// order stays the order of processing: a snapshot the replay takes
    /// must see everything replayed after it as arriving after it, or a
    /// later rollback to that snapshot would leave it out. It is stored
    /// under its new number before it is routed, so that one routing drops
    /// (a skip) leaves it retained as before.
    fn renumber<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        entry: &mut RetainedEnvelope,
    ) -> Result<(), GroupError> {
        let store = ClientStore(kv);
        let old = entry.arrival;
        entry.arrival = self.record.next_arrival;
        self.record.next_arrival += 1;
        entry.held = false;
        entry.message_id = None;
        store.put_retained(self.group_id(), entry)?;
        store.remove_retained(self.group_id(), old)
    }

    /// Flag own messages whose epoch lost, for [`Group::advance`] to
    /// re-send with the same id.
    fn flag_lost_sends<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        restored: u64,
    ) -> Result<(), GroupError> {
        let store = ClientStore(kv);
        let group_id = self.group_id();
        let current = self.epoch();
        let digest = self.auth_digest();
        let ring = store.snapshots(group_id)?;
        for mut send in store.own_sends(group_id)? {
            if send.epoch <= restored || send.resend {
                continue;
            }
            let on_branch = (send.epoch == current && send.auth_digest == digest)
                || ring
                    .iter()
                    .any(|s| s.epoch == send.epoch && s.auth_digest == send.auth_digest);
            if !on_branch {
                send.resend = true;
                store.put_own_send(group_id, &send)?;
            }
        }
        Ok(())
    }

    /// Put the group's stored state back to `state` and load it; returns
    /// the group and metadata it replaced.
    fn restore<P: OpenMlsProvider, S: GroupSnapshots + ?Sized>(
        &mut self,
        provider: &P,
        kv: &S,
        state: &[u8],
    ) -> Result<(MlsGroup, GroupMetadata), GroupError> {
        let group_id = self.group_id().to_vec();
        kv.restore_group(&group_id, state)
            .map_err(GroupError::store)?;
        let restored = MlsGroup::load(provider.storage(), &GroupId::from_slice(&group_id))
            .map_err(GroupError::mls)?
            .ok_or_else(|| GroupError::Corrupt("the restored group does not load".into()))?;
        // Commits that change neither metadata nor membership (key updates)
        // leave the extensions as they were: decoding them again is wasted.
        let metadata = if restored.extensions() == self.mls.extensions() {
            self.metadata.clone()
        } else {
            GroupMetadata::from_extensions(restored.extensions())?
        };
        Ok((
            std::mem::replace(&mut self.mls, restored),
            std::mem::replace(&mut self.metadata, metadata),
        ))
    }

    /// Re-send the flagged own messages in the current epoch.
    pub(crate) fn resend_lost<P: OpenMlsProvider, S: KvStore + ?Sized>(
        &mut self,
        provider: &P,
        kv: &S,
        me: Me<'_>,
        now_ms: u64,
    ) -> Result<(), GroupError> {
        let store = ClientStore(kv);
        let group_id = self.group_id().to_vec();
        if self.record.forked.is_some() {
            // Sent now, it would stay on the fork: wait to be re-added.
            return Ok(());
        }
        if self.mls.is_active() && self.mls.pending_proposals().next().is_some() {
            // No application message until the proposals are committed (a
            // removed member's store may keep proposals: it fails them).
            return Ok(());
        }
        if self.mls.is_active() && self.awaiting_bindings() {
            // A deniable DM sends nothing before every leaf is bound (this
            // also releases the messages held for that).
            return Ok(());
        }
        let mut sends = store.own_sends(&group_id)?;
        sends.sort_by_key(|send| send.written);
        for mut send in sends {
            if !send.resend {
                continue;
            }
            if !self.mls.is_active() {
                store.remove_own_send(&group_id, &send.message_id)?;
                let conversation = self.conversation_id();
                if let Some(mut message) = store.message(&conversation, &send.message_id)? {
                    message.delivery = Delivery::Failed;
                    store.update_message(&message)?;
                }
                self.events.push_back(GroupEvent::MessageFailed {
                    message_id: send.message_id,
                    reason: "sent in an epoch that lost, after which this installation \
                             was no longer a member"
                        .into(),
                });
                continue;
            }
            let out = self.encrypt(provider, kv, me, &send.content)?;
            self.push_outbound(
                kv,
                &[Topic::Group(group_id.clone())],
                out,
                Some(send.message_id),
            )?;
            // Its place is when it went out: a fork found later fails what
            // was sent on it by that time.
            store.restamp_message(&self.conversation_id(), &send.message_id, now_ms)?;
            send.epoch = self.epoch();
            send.auth_digest = self.auth_digest();
            send.resend = false;
            store.put_own_send(&group_id, &send)?;
        }
        Ok(())
    }

    /// Settle what is due: delete snapshots whose transition settled (by
    /// time, or because the ring is over its bound), then finish what
    /// waited for settling below the oldest snapshot left.
    ///
    /// `synced_ms` is the time up to which the topic has been read (`None`
    /// applies only the ring's bound); `now_ms` measures snapshot ages.
    pub(crate) fn settle<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        synced_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<(), GroupError> {
        let store = ClientStore(kv);
        let group_id = self.group_id().to_vec();
        let ring = store.snapshots(&group_id)?;
        let mut left = ring.len();
        let mut oldest_kept = None;
        let mut settled_any = false;
        let mut forked = None;
        for snapshot in ring {
            let due = synced_ms.is_some_and(|synced| {
                synced
                    >= snapshot
                        .commit_key
                        .0
                        .saturating_add(self.config.rewind.settle_window_ms)
            }) || left > self.config.rewind.max_rewind;
            if !due {
                oldest_kept = Some(snapshot);
                break;
            }
            store.remove_snapshot(&group_id, snapshot.epoch)?;
            if self
                .record
                .earlier_commit
                .as_ref()
                .is_some_and(|seen| seen.epoch <= snapshot.epoch)
                && let Some(seen) = self.record.earlier_commit.take()
                && seen.epoch == snapshot.epoch
                && seen.auth_digest == snapshot.auth_digest
                && seen.key < snapshot.commit_key
            {
                // The rollback to the member's earlier commit never came,
                // and now it cannot.
                forked = Some((seen, snapshot.commit_key.0));
            }
            let age = now_ms.saturating_sub(snapshot.taken_at_ms);
            self.record.rewind.max_snapshot_age_ms =
                self.record.rewind.max_snapshot_age_ms.max(age);
            settled_any = true;
            left -= 1;
        }
        let horizon = oldest_kept.as_ref().map_or(self.epoch(), |s| s.epoch);
        // Own commits and Welcomes of settled transitions.
        for intent in store.intents(&group_id)? {
            if let IntentState::Committed {
                commit,
                joiner_cursor,
            } = &intent.state
                && commit.epoch < horizon
            {
                if let Some(own) = store.own_commit(&group_id, &commit.commit_hash)?
                    && let Some(welcome) = own.welcome
                {
                    let payload = WelcomePayload {
                        welcome,
                        group_id: group_id.clone(),
                        cursor: joiner_cursor.clone(),
                        branch: self.branch_before(kv, commit.epoch + 1)?,
                    }
                    .to_bytes();
                    let topics: Vec<Topic> =
                        own.welcome_to.iter().copied().map(Topic::Welcome).collect();
                    self.push_outbound(kv, &topics, payload, None)?;
                }
                store.remove_intent(&group_id, intent.id)?;
                self.events
                    .push_back(GroupEvent::IntentDone { id: intent.id });
            }
        }
        for own in store.own_commits(&group_id)? {
            if own.epoch < horizon {
                store.remove_own_commit(&group_id, &own.hash)?;
            }
        }
        for send in store.own_sends(&group_id)? {
            if send.epoch <= horizon && !send.resend {
                store.remove_own_send(&group_id, &send.message_id)?;
            }
        }
        let keep_from = oldest_kept.as_ref().map_or(u64::MAX, |s| s.arrival);
        for entry in store.retained(&group_id)? {
            if !entry.held && entry.arrival < keep_from {
                store.remove_retained(&group_id, entry.arrival)?;
            }
        }
        if settled_any {
            self.save_record(kv)?;
            self.events.push_back(GroupEvent::Settled {
                stats: self.record.rewind,
            });
        }
        if let Some((seen, since_ms)) = forked {
            self.flag_fork(
                kv,
                format!(
                    "a member's branch took an earlier commit for epoch {}, which settled here \
                     before that commit could be applied",
                    seen.epoch
                ),
                (seen.epoch, seen.key),
                since_ms,
                now_ms,
            )?;
        }
        Ok(())
    }

    /// Drop everything this installation kept of its branch of the group
    /// (the ring, retained envelopes, own commits and sends, commit
    /// positions, the unpublished outbox), before joining it again.
    ///
    /// Intents in flight on the branch are rebuilt in the group joined
    /// again: a proposal or commit made on the fork can never be included
    /// on the canonical branch (nobody there can read it), and no merge
    /// will resolve it, since the join skips the epochs in between.
    pub(crate) fn forget_branch<S: KvStore + ?Sized>(
        kv: &S,
        group_id: &[u8],
    ) -> Result<(), GroupError> {
        let store = ClientStore(kv);
        for mut intent in store.intents(group_id)? {
            if matches!(
                intent.state,
                IntentState::Proposed(_) | IntentState::Published(_)
            ) {
                intent.state = IntentState::Regenerate;
                store.put_intent(group_id, &intent)?;
            }
        }
        for snapshot in store.snapshots(group_id)? {
            store.remove_snapshot(group_id, snapshot.epoch)?;
        }
        for entry in store.retained(group_id)? {
            store.remove_retained(group_id, entry.arrival)?;
        }
        for own in store.own_commits(group_id)? {
            store.remove_own_commit(group_id, &own.hash)?;
        }
        let conversation = store.group_record(group_id)?.conversation_id;
        for send in store.own_sends(group_id)? {
            // Messages written while forked, never sent, go out in the
            // group joined again; anything sent on the fork was failed.
            let waiting = match &conversation {
                Some(conversation) => store
                    .message(conversation, &send.message_id)?
                    .is_some_and(|m| m.delivery == Delivery::Unpublished),
                None => false,
            };
            if !(send.resend && waiting) {
                store.remove_own_send(group_id, &send.message_id)?;
            }
        }
        for item in store.outbox(group_id)? {
            store.remove_outbox(group_id, item.id)?;
        }
        store.remove_commit_keys(group_id)
    }

    /// Publish an epoch digest if an own commit merged since the last one,
    /// or [`DIGEST_INTERVAL_MS`] passed.
    pub(crate) fn publish_digest<P: OpenMlsProvider, S: KvStore + ?Sized>(
        &mut self,
        provider: &P,
        kv: &S,
        me: Me<'_>,
        now_ms: u64,
    ) -> Result<(), GroupError> {
        let due = self.record.digest_due
            || now_ms
                >= self
                    .record
                    .last_digest_ms
                    .saturating_add(DIGEST_INTERVAL_MS);
        // MLS sends no application message while proposals wait for a
        // commit: the digest waits too.
        if !due || !self.mls.is_active() || self.mls.pending_proposals().next().is_some() {
            return Ok(());
        }
        self.record.digest_due = false;
        self.record.last_digest_ms = now_ms;
        let nonce = provider.rand().random_vec(16).map_err(GroupError::mls)?;
        let content = Content {
            content_type: super::content::CONTENT_TYPE_EPOCH_DIGEST.to_owned(),
            message_id: super::content::message_id(me.inbox, self.group_id(), &nonce).to_vec(),
            body: self.auth_digest().to_vec(),
            sent_at_ms: now_ms,
        };
        let out = self.encrypt(provider, kv, me, &content.encode_to_vec())?;
        self.save_record(kv)?;
        self.push_outbound(kv, &[Topic::Group(self.group_id().to_vec())], out, None)
    }

    /// Record an own message for re-sending if its epoch loses.
    pub(crate) fn track_send<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        content: &Content,
        message_id: [u8; 32],
        deferred: bool,
    ) -> Result<(), GroupError> {
        if !deferred && (!self.config.rewind.retains() || self.ring_len(kv)? == 0) {
            return Ok(());
        }
        let written = self.record.next_written;
        self.record.next_written += 1;
        self.save_record(kv)?;
        ClientStore(kv).put_own_send(
            self.group_id(),
            &OwnSend {
                message_id,
                epoch: self.epoch(),
                auth_digest: self.auth_digest(),
                content: content.encode_to_vec(),
                resend: deferred,
                written,
            },
        )
    }
}

/// Whether `payload` is an MLS commit.
fn is_commit(payload: &[u8]) -> bool {
    use openmls::prelude::tls_codec::Deserialize as _;
    openmls::prelude::MlsMessageIn::tls_deserialize_exact(payload)
        .ok()
        .and_then(|m| m.try_into_protocol_message().ok())
        .is_some_and(|p| p.content_type() == openmls::prelude::ContentType::Commit)
}
