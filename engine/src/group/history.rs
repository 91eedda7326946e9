//! The [`RewindHistory`]: what a group keeps so that it can roll back and
//! replay when the network delivered its commits out of canonical order
//! (DESIGN.md section 7).
//!
//! Every member applies envelopes as they arrive. For each epoch
//! transition that has not *settled*, the history keeps a snapshot of the
//! group state taken just before it (the ring), and every envelope of the
//! group topic that arrived since (retained envelopes, each numbered in
//! arrival order). When a commit arrives that sorts before the commit
//! applied for its epoch, the group restores that epoch's snapshot and
//! replays the retained envelopes in canonical order: the first valid
//! commit of each epoch wins, as on every other member.
//!
//! ```text
//!  arrive ─► numbered entry ─► applied ─► retained (while the ring is not empty)
//!                  └─ of a future epoch ─► held ─► released when the group gets there
//!  commit applied ─► snapshot of the epoch it left ─► ring (at most max_rewind)
//!  settle: now >= commit time + settle window, or the ring over its bound
//!     ─► snapshot deleted; own commits, own sends, retained envelopes below it forgotten
//! ```
//!
//! It owns, per group: the ring (`'s'` entries and `'S'` secret state),
//! the retained envelopes (`'r'`), the canonical position of the commit
//! that left each recent epoch (`'k'`, positions only, for fork
//! detection), own commits of unsettled epochs (`'p'`, recognised by
//! hash), own messages of unsettled epochs (`'u'`, re-sent if their epoch
//! loses), and its counters and metrics.
//!
//! It never touches the MLS state: capturing, restoring and replaying are
//! the group's, which asks the history what to restore and what to replay,
//! and tells it what it applied. With a settle window of 0 (a single node,
//! or nodes sharing one database: a strong order) it keeps no snapshot and
//! retains nothing.

use openmls::prelude::{ContentType, MlsMessageIn, tls_codec::Deserialize as _};
use sha2::{Digest as _, Sha256};

use super::{
    aad::{AAD_HISTORY, BranchClaim, KithAad},
    config::RewindPolicy,
    error::GroupError,
    records::{
        Delivery, EpochSnapshot, HistoryState, OrderKey, OwnCommit, OwnSend, RetainedEnvelope,
        RewindStats,
    },
    store::{ClientStore, KvStore},
};
use crate::delivery::Envelope;

/// How many past epochs' commit positions are remembered for fork
/// detection (positions only: no secrets).
pub const COMMIT_HISTORY: u64 = 64;

/// How many envelopes of future epochs a group holds.
pub const MAX_HELD: usize = 1024;

/// How many bytes of envelopes of future epochs a group holds.
pub const MAX_HELD_BYTES: usize = 16 << 20;

/// How far ahead of the group's epoch an envelope may be and still be
/// held. An honest member is ahead only by the commits this installation
/// has not received yet; the epoch in a message's header is plaintext,
/// and anyone can claim any.
pub const MAX_HELD_AHEAD: u64 = 32;

/// What became of a commit for an epoch the group already left.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PastCommit {
    /// The commit applied for it, again (published twice): nothing to do.
    Duplicate,
    /// It sorts before the commit applied, and the epoch's snapshot is
    /// kept: roll back to it. The commit is retained for the replay.
    RollBack(EpochSnapshot),
    /// It lost on this branch, but a rollback to an earlier epoch may bring
    /// back the branch it was built on: it is retained.
    Kept,
    /// The epoch settled: it cannot be checked any more, and is dropped.
    Settled {
        /// If it sorts before the commit applied for its epoch, that
        /// commit's position.
        earlier_than: Option<OrderKey>,
    },
}

/// What a rollback to a snapshot replays, in canonical order, split at
/// the commit it is about: the envelopes of the restored epoch that sort
/// before that commit (it may refer to a proposal among them), and
/// everything after.
#[derive(Debug, Default)]
pub(crate) struct ReplayPlan {
    /// Envelopes of the restored epoch sorting before the earlier commit.
    pub(crate) before: Vec<RetainedEnvelope>,
    /// Everything else retained since the snapshot, and every held one.
    pub(crate) after: Vec<RetainedEnvelope>,
}

/// What settling took off the ring.
#[derive(Debug, Default)]
pub(crate) struct Settlement {
    /// The snapshots deleted, oldest first.
    pub(crate) settled: Vec<EpochSnapshot>,
    /// The oldest snapshot left, if any.
    pub(crate) oldest_kept: Option<EpochSnapshot>,
}

/// A group's rewind history. See the module docs.
#[derive(Debug)]
pub(crate) struct RewindHistory {
    group_id: Vec<u8>,
    policy: RewindPolicy,
    state: HistoryState,
}

impl RewindHistory {
    /// The history of `group_id`, from its stored counters.
    pub(crate) fn new(group_id: &[u8], state: HistoryState) -> Self {
        Self {
            group_id: group_id.to_vec(),
            policy: RewindPolicy::default(),
            state,
        }
    }

    /// The counters and metrics, for the group's record.
    pub(crate) fn state(&self) -> HistoryState {
        self.state
    }

    /// Set the policy (from the driver's configuration; not stored).
    pub(crate) fn set_policy(&mut self, policy: RewindPolicy) {
        self.policy = policy;
    }

    /// Whether snapshots are taken at all.
    pub(crate) fn retains(&self) -> bool {
        self.policy.retains()
    }

    /// Rollback metrics.
    pub(crate) fn stats(&self) -> RewindStats {
        self.state.stats
    }

    fn store<'s, S: KvStore + ?Sized>(&self, kv: &'s S) -> ClientStore<'s, S> {
        ClientStore(kv)
    }

    // ----- arrivals ----------------------------------------------------------

    /// Number an envelope of the group topic as arriving now.
    pub(crate) fn arrive(&mut self, envelope: &Envelope) -> RetainedEnvelope {
        let entry = RetainedEnvelope::new(self.state.next_arrival, envelope);
        self.state.next_arrival += 1;
        entry
    }

    /// Keep an applied envelope for replay, while the ring holds snapshots.
    pub(crate) fn retain<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        entry: &RetainedEnvelope,
    ) -> Result<(), GroupError> {
        if self.retains() && self.ring_len(kv)? > 0 {
            self.store(kv).put_retained(&self.group_id, entry)?;
        }
        Ok(())
    }

    /// Keep `entry` for replay whatever the ring holds (a commit a rollback
    /// may need).
    pub(crate) fn keep<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        entry: &RetainedEnvelope,
    ) -> Result<(), GroupError> {
        self.store(kv).put_retained(&self.group_id, entry)
    }

    /// Hold an envelope of a future epoch (or a commit waiting for its
    /// proposal) until the group, now in `current`, reaches it;
    /// `Ok(Err(reason))` if it is dropped instead.
    ///
    /// Held envelopes are bounded in count ([`MAX_HELD`]), in bytes
    /// ([`MAX_HELD_BYTES`]) and in distance ([`MAX_HELD_AHEAD`]), since
    /// anyone can publish envelopes that claim a future epoch. When full,
    /// the one furthest ahead goes first (the least likely to be real):
    /// junk claiming a far epoch cannot push out a real message of the
    /// next one, and junk claiming the next epoch is released, and
    /// dropped, as soon as the group gets there.
    pub(crate) fn hold<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        mut entry: RetainedEnvelope,
        current: u64,
    ) -> Result<Result<(), String>, GroupError> {
        if entry.epoch > current.saturating_add(MAX_HELD_AHEAD) {
            return Ok(Err(format!(
                "a message of epoch {}, more than {MAX_HELD_AHEAD} ahead of this group's {current}",
                entry.epoch
            )));
        }
        if entry.payload.len() > MAX_HELD_BYTES {
            return Ok(Err("a message of a future epoch too large to hold".into()));
        }
        let store = self.store(kv);
        let mut held: Vec<RetainedEnvelope> = store
            .retained(&self.group_id)?
            .into_iter()
            .filter(|e| e.held)
            .collect();
        // Furthest ahead (then latest) last: the first to go.
        held.sort_by_key(|e| (e.epoch, e.key));
        let mut bytes: usize = held.iter().map(|e| e.payload.len()).sum();
        while held.len() >= MAX_HELD || bytes + entry.payload.len() > MAX_HELD_BYTES {
            let Some(last) = held.last() else {
                break;
            };
            if (last.epoch, last.key) <= (entry.epoch, entry.key) {
                return Ok(Err(format!(
                    "a message of future epoch {} (already holding {} envelopes, {bytes} \
                     bytes, of epochs no further ahead)",
                    entry.epoch,
                    held.len()
                )));
            }
            store.remove_retained(&self.group_id, last.arrival)?;
            bytes -= last.payload.len();
            held.pop();
        }
        entry.held = true;
        store.put_retained(&self.group_id, &entry)?;
        Ok(Ok(()))
    }

    /// The held envelopes that the group, now in `epoch`, can apply, in
    /// canonical order. Each stays held until [`Self::release`].
    pub(crate) fn ready<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        epoch: u64,
    ) -> Result<Vec<RetainedEnvelope>, GroupError> {
        let mut ready: Vec<RetainedEnvelope> = self
            .store(kv)
            .retained(&self.group_id)?
            .into_iter()
            .filter(|e| e.held && e.epoch <= epoch)
            .collect();
        ready.sort_by_key(|e| e.key);
        Ok(ready)
    }

    /// Release a held envelope for applying. It is applied now, after any
    /// snapshot the merge that released it took: it is numbered as
    /// arriving now, so that a rollback to that snapshot replays it.
    pub(crate) fn release<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        entry: &mut RetainedEnvelope,
    ) -> Result<(), GroupError> {
        self.store(kv)
            .remove_retained(&self.group_id, entry.arrival)?;
        entry.held = false;
        entry.arrival = self.state.next_arrival;
        self.state.next_arrival += 1;
        Ok(())
    }

    /// Give a replayed envelope the next arrival number, so that arrival
    /// order stays the order of processing: a snapshot the replay takes
    /// must see everything replayed after it as arriving after it, or a
    /// later rollback to that snapshot would leave it out. It is stored
    /// under its new number before it is routed, so that a routing that
    /// drops it (a skip) leaves it retained as before.
    pub(crate) fn renumber<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        entry: &mut RetainedEnvelope,
    ) -> Result<(), GroupError> {
        let store = self.store(kv);
        let old = entry.arrival;
        entry.arrival = self.state.next_arrival;
        self.state.next_arrival += 1;
        entry.held = false;
        entry.message_id = None;
        store.put_retained(&self.group_id, entry)?;
        store.remove_retained(&self.group_id, old)
    }

    // ----- the ring ----------------------------------------------------------

    /// How many snapshots the ring holds.
    pub(crate) fn ring_len<S: KvStore + ?Sized>(&self, kv: &S) -> Result<usize, GroupError> {
        Ok(self.store(kv).snapshots(&self.group_id)?.len())
    }

    /// The snapshots, oldest epoch first.
    pub(crate) fn snapshots<S: KvStore + ?Sized>(
        &self,
        kv: &S,
    ) -> Result<Vec<EpochSnapshot>, GroupError> {
        self.store(kv).snapshots(&self.group_id)
    }

    /// The snapshot of `epoch`, if kept.
    pub(crate) fn snapshot<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        epoch: u64,
    ) -> Result<Option<EpochSnapshot>, GroupError> {
        self.store(kv).snapshot(&self.group_id, epoch)
    }

    /// The secret state of the snapshot of `epoch`.
    pub(crate) fn snapshot_state<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        epoch: u64,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, GroupError> {
        self.store(kv)
            .snapshot_state(&self.group_id, epoch)?
            .ok_or_else(|| {
                GroupError::Corrupt(format!("the snapshot of epoch {epoch} has no state"))
            })
    }

    /// When the oldest snapshot settles by time, if any is kept.
    pub(crate) fn next_settle_ms<S: KvStore + ?Sized>(
        &self,
        kv: &S,
    ) -> Result<Option<u64>, GroupError> {
        Ok(self
            .snapshots(kv)?
            .first()
            .map(|s| s.commit_key.0.saturating_add(self.policy.settle_window_ms)))
    }

    /// Record the snapshot of `epoch`, left by the commit `entry` (whose
    /// epoch authenticator digest is `auth`); `state` is `None` when the
    /// stored state is already this one (the epoch was just restored).
    pub(crate) fn keep_snapshot<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        state: Option<&[u8]>,
        entry: &RetainedEnvelope,
        epoch: u64,
        auth: [u8; 8],
        now_ms: u64,
    ) -> Result<(), GroupError> {
        let store = self.store(kv);
        if let Some(state) = state {
            store.put_snapshot_state(&self.group_id, epoch, state)?;
        }
        store.put_snapshot(
            &self.group_id,
            &EpochSnapshot {
                epoch,
                arrival: entry.arrival,
                commit_key: entry.key,
                commit_hash: Sha256::digest(&entry.payload).into(),
                taken_at_ms: now_ms,
                auth_digest: auth,
            },
        )
    }

    /// A commit for `entry.epoch`, which the group has left: decide what it
    /// is (see [`PastCommit`]), retaining it where a rollback may need it.
    pub(crate) fn past_commit<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        entry: &RetainedEnvelope,
        allow_rollback: bool,
    ) -> Result<PastCommit, GroupError> {
        let hash: [u8; 32] = Sha256::digest(&entry.payload).into();
        match self.snapshot(kv, entry.epoch)? {
            Some(snapshot) if hash == snapshot.commit_hash => Ok(PastCommit::Duplicate),
            Some(snapshot) if entry.key < snapshot.commit_key && allow_rollback => {
                self.keep(kv, entry)?;
                Ok(PastCommit::RollBack(snapshot))
            }
            Some(_) => {
                self.keep(kv, entry)?;
                Ok(PastCommit::Kept)
            }
            None => {
                self.state.stats.dropped_settled += 1;
                let earlier_than = self
                    .commit_key(kv, entry.epoch)?
                    .filter(|applied| entry.key < *applied);
                Ok(PastCommit::Settled { earlier_than })
            }
        }
    }

    /// The commits for `snapshot`'s epoch that sort before the one applied
    /// and were kept, never applied: each arrived while the epoch could
    /// still roll back, but could not be taken then (its proposal had not
    /// arrived, or it came out of a held queue during a merge) and nothing
    /// took it since. Asked when the snapshot settles: if a member's branch
    /// took one of them, this installation is on a fork (see
    /// [`ForkMonitor::late_commit`](super::forks::ForkMonitor::late_commit)).
    pub(crate) fn unapplied_earlier_commits<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        snapshot: &EpochSnapshot,
    ) -> Result<Vec<OrderKey>, GroupError> {
        Ok(self
            .store(kv)
            .retained(&self.group_id)?
            .into_iter()
            .filter(|e| {
                e.epoch == snapshot.epoch
                    && e.key < snapshot.commit_key
                    && Sha256::digest(&e.payload).as_slice() != snapshot.commit_hash
                    && is_commit(&e.payload)
            })
            .map(|e| e.key)
            .collect())
    }

    /// A proposal of `proposal.epoch`, which has passed, arrived: the
    /// earliest retained commit of that epoch sorting between it and the
    /// commit applied, which may have been tried without it, and the
    /// snapshot to roll back to, if the epoch is still in the ring.
    pub(crate) fn commit_waiting_for<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        proposal: &RetainedEnvelope,
    ) -> Result<Option<(EpochSnapshot, RetainedEnvelope)>, GroupError> {
        let epoch = proposal.epoch;
        let Some(snapshot) = self.snapshot(kv, epoch)? else {
            return Ok(None);
        };
        // Held or not: a commit tried in a rollback that found its
        // proposal missing stays held.
        let waiting = self
            .store(kv)
            .retained(&self.group_id)?
            .into_iter()
            .filter(|e| {
                e.epoch == epoch
                    && proposal.key < e.key
                    && e.key < snapshot.commit_key
                    && is_commit(&e.payload)
            })
            .min_by_key(|e| e.key);
        Ok(waiting.map(|commit| (snapshot, commit)))
    }

    /// What a rollback to `snapshot` for the earlier commit `first`
    /// replays. Decided before `first` is applied: applying it rewrites
    /// this epoch's ring entry, and settling by the ring's bound would drop
    /// the envelopes it no longer covers. Held envelopes join the replay in
    /// their canonical place.
    pub(crate) fn replay_plan<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        snapshot: &EpochSnapshot,
        first: &RetainedEnvelope,
    ) -> Result<ReplayPlan, GroupError> {
        let mut entries: Vec<RetainedEnvelope> = self
            .store(kv)
            .retained(&self.group_id)?
            .into_iter()
            .filter(|e| (e.held || e.arrival >= snapshot.arrival) && e.arrival != first.arrival)
            .collect();
        entries.sort_by_key(|e| e.key);
        let (before, after) = entries
            .into_iter()
            .partition(|e| e.epoch == snapshot.epoch && e.key < first.key);
        Ok(ReplayPlan { before, after })
    }

    /// A rollback to `epoch` changed the branch: the ring past it belongs
    /// to the old one (this epoch's entry was rewritten by the merge).
    pub(crate) fn drop_after<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        epoch: u64,
    ) -> Result<(), GroupError> {
        let store = self.store(kv);
        for later in store.snapshots(&self.group_id)? {
            if later.epoch > epoch {
                store.remove_snapshot(&self.group_id, later.epoch)?;
            }
        }
        Ok(())
    }

    /// Count a rollback that replayed `replayed` envelopes.
    pub(crate) fn rolled_back(&mut self, replayed: u64) -> RewindStats {
        self.state.stats.rollbacks += 1;
        self.state.stats.replayed += replayed;
        self.state.stats
    }

    /// Delete the snapshots whose transition settled: by time, once the
    /// topic has been read up to `synced_ms` past the commit's time plus the
    /// settle window (`None` applies only the ring's bound), or because the
    /// ring is over its bound. `now_ms` measures their age.
    pub(crate) fn settle_ring<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        synced_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<Settlement, GroupError> {
        let store = self.store(kv);
        let ring = store.snapshots(&self.group_id)?;
        let mut left = ring.len();
        let mut out = Settlement::default();
        for snapshot in ring {
            let due = synced_ms.is_some_and(|synced| {
                synced
                    >= snapshot
                        .commit_key
                        .0
                        .saturating_add(self.policy.settle_window_ms)
            }) || left > self.policy.max_rewind;
            if !due {
                out.oldest_kept = Some(snapshot);
                break;
            }
            store.remove_snapshot(&self.group_id, snapshot.epoch)?;
            let age = now_ms.saturating_sub(snapshot.taken_at_ms);
            self.state.stats.max_snapshot_age_ms = self.state.stats.max_snapshot_age_ms.max(age);
            out.settled.push(snapshot);
            left -= 1;
        }
        Ok(out)
    }

    /// After settling: forget own commits of epochs before `horizon`, own
    /// messages up to it (unless waiting to be re-sent), and retained
    /// envelopes that arrived before `keep_from` (unless held).
    pub(crate) fn forget_settled<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        horizon: u64,
        keep_from: u64,
    ) -> Result<(), GroupError> {
        let store = self.store(kv);
        for own in store.own_commits(&self.group_id)? {
            if own.epoch < horizon {
                store.remove_own_commit(&self.group_id, &own.hash)?;
            }
        }
        for send in store.own_sends(&self.group_id)? {
            if send.epoch <= horizon && !send.resend {
                store.remove_own_send(&self.group_id, &send.message_id)?;
            }
        }
        for entry in store.retained(&self.group_id)? {
            if !entry.held && entry.arrival < keep_from {
                store.remove_retained(&self.group_id, entry.arrival)?;
            }
        }
        Ok(())
    }

    // ----- commit positions --------------------------------------------------

    /// Record the commit that left `epoch` (at `key`; `auth` is the
    /// digest of `epoch`'s authenticator; `claim_key` the epoch's claim
    /// key, if this installation was a member of it), forgetting the
    /// position [`COMMIT_HISTORY`] epochs older.
    pub(crate) fn record_commit<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        epoch: u64,
        key: OrderKey,
        auth: [u8; 8],
        claim_key: Option<&[u8; 32]>,
    ) -> Result<(), GroupError> {
        self.store(kv).put_commit_key(
            &self.group_id,
            epoch,
            (key, auth),
            claim_key,
            COMMIT_HISTORY,
        )
    }

    /// The claim key of `epoch`, if this installation was a member of it
    /// and still has it (see [`BranchClaim`]).
    pub(crate) fn claim_key<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        epoch: u64,
    ) -> Result<Option<zeroize::Zeroizing<[u8; 32]>>, GroupError> {
        self.store(kv).claim_key(&self.group_id, epoch)
    }

    /// The position of the commit that left `epoch` and that epoch's
    /// authenticator digest, if still recorded.
    pub(crate) fn commit_record<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        epoch: u64,
    ) -> Result<Option<(OrderKey, [u8; 8])>, GroupError> {
        self.store(kv).commit_record(&self.group_id, epoch)
    }

    /// The position of the commit that left `epoch`, if still recorded.
    pub(crate) fn commit_key<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        epoch: u64,
    ) -> Result<Option<OrderKey>, GroupError> {
        self.store(kv).commit_key(&self.group_id, epoch)
    }

    /// The [`AAD_HISTORY`] commits that led to `epoch` on this branch,
    /// newest first, as far as they are remembered.
    pub(crate) fn branch_before<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        epoch: u64,
    ) -> Result<Vec<(u64, [u8; 8], OrderKey)>, GroupError> {
        let mut history = Vec::with_capacity(AAD_HISTORY);
        for back in 1..=AAD_HISTORY as u64 {
            let Some(left) = epoch.checked_sub(back) else {
                break;
            };
            match self.commit_record(kv, left)? {
                Some((key, auth)) => history.push((left, auth, key)),
                None => break,
            }
        }
        Ok(history)
    }

    /// The authenticated data of a message sent in `epoch`, whose
    /// authenticator digest is `auth`.
    pub(crate) fn aad<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        epoch: u64,
        auth: [u8; 8],
    ) -> Result<KithAad, GroupError> {
        let mut history = Vec::with_capacity(AAD_HISTORY);
        for (left, left_auth, key) in self.branch_before(kv, epoch)? {
            // Epochs before this installation joined: it cannot vouch for
            // them (and readers could not check an unkeyed claim).
            if let Some(claim_key) = self.claim_key(kv, left)? {
                history.push(BranchClaim::new(
                    &self.group_id,
                    &claim_key,
                    left,
                    left_auth,
                    key,
                ));
            }
        }
        Ok(KithAad {
            auth_digest: auth,
            history,
        })
    }

    // ----- own commits and messages ------------------------------------------

    /// Remember an own commit until its epoch settles.
    pub(crate) fn put_own_commit<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        commit: &OwnCommit,
    ) -> Result<(), GroupError> {
        self.store(kv).put_own_commit(&self.group_id, commit)
    }

    /// The own commit whose bytes hash to `hash`.
    pub(crate) fn own_commit<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        hash: &[u8; 32],
    ) -> Result<Option<OwnCommit>, GroupError> {
        self.store(kv).own_commit(&self.group_id, hash)
    }

    /// Record an own message (encoded content) sent in `epoch` (digest
    /// `auth`) for re-sending if its epoch loses: only while the ring holds
    /// snapshots, unless it is `deferred` (written while it could not go
    /// out, it waits here to be sent).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn track_send<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        message_id: [u8; 32],
        content: Vec<u8>,
        epoch: u64,
        auth: [u8; 8],
        deferred: bool,
    ) -> Result<(), GroupError> {
        if !deferred && (!self.retains() || self.ring_len(kv)? == 0) {
            return Ok(());
        }
        let written = self.state.next_written;
        self.state.next_written += 1;
        self.store(kv).put_own_send(
            &self.group_id,
            &OwnSend {
                message_id,
                epoch,
                auth_digest: auth,
                content,
                resend: deferred,
                written,
            },
        )
    }

    /// After a rollback to `restored` changed the branch: flag own
    /// messages sent in a later epoch that is not on the branch now (the
    /// current epoch `current` with digest `auth`, or one in the ring) for
    /// re-sending with the same id.
    pub(crate) fn flag_lost_sends<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        restored: u64,
        current: u64,
        auth: [u8; 8],
    ) -> Result<(), GroupError> {
        let store = self.store(kv);
        let ring = store.snapshots(&self.group_id)?;
        for mut send in store.own_sends(&self.group_id)? {
            if send.epoch <= restored || send.resend {
                continue;
            }
            let on_branch = (send.epoch == current && send.auth_digest == auth)
                || ring
                    .iter()
                    .any(|s| s.epoch == send.epoch && s.auth_digest == send.auth_digest);
            if !on_branch {
                send.resend = true;
                store.put_own_send(&self.group_id, &send)?;
            }
        }
        Ok(())
    }

    /// The own messages flagged for (re-)sending, in the order they were
    /// written.
    pub(crate) fn to_resend<S: KvStore + ?Sized>(
        &self,
        kv: &S,
    ) -> Result<Vec<OwnSend>, GroupError> {
        let mut sends = self.store(kv).own_sends(&self.group_id)?;
        sends.retain(|send| send.resend);
        sends.sort_by_key(|send| send.written);
        Ok(sends)
    }

    /// `send` went out again in `epoch` (digest `auth`).
    pub(crate) fn resent<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        mut send: OwnSend,
        epoch: u64,
        auth: [u8; 8],
    ) -> Result<(), GroupError> {
        send.epoch = epoch;
        send.auth_digest = auth;
        send.resend = false;
        self.store(kv).put_own_send(&self.group_id, &send)
    }

    /// Forget an own message (it can no longer be re-sent).
    pub(crate) fn forget_send<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        message_id: &[u8; 32],
    ) -> Result<(), GroupError> {
        self.store(kv).remove_own_send(&self.group_id, message_id)
    }

    // ----- leaving a branch for good -----------------------------------------

    /// Drop everything kept of the branch of `group_id` this installation
    /// leaves for good (it joins the group again): the ring, retained
    /// envelopes, own commits, commit positions, and own messages, but
    /// those waiting to go out in the group joined again: written while
    /// forked, or sent on the fork and taken back when it was found.
    pub(crate) fn forget<S: KvStore + ?Sized>(kv: &S, group_id: &[u8]) -> Result<(), GroupError> {
        let store = ClientStore(kv);
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
        store.remove_commit_keys(group_id)
    }
}

/// Whether `payload` is an MLS commit (read from its header; nothing is
/// decrypted).
fn is_commit(payload: &[u8]) -> bool {
    MlsMessageIn::tls_deserialize_exact(payload)
        .ok()
        .and_then(|m| m.try_into_protocol_message().ok())
        .is_some_and(|p| p.content_type() == ContentType::Commit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        delivery::Topic,
        group::{
            records::{ConversationId, GroupRecord, StoredMessage},
            store::MemoryKvStore,
        },
        identity::{InboxId, InstallationId},
    };

    const GROUP: &[u8] = b"group";

    fn history() -> (MemoryKvStore, RewindHistory) {
        let mut history = RewindHistory::new(GROUP, HistoryState::default());
        history.set_policy(RewindPolicy {
            max_rewind: 2,
            settle_window_ms: 100,
        });
        (MemoryKvStore::default(), history)
    }

    fn envelope(time: u64, payload: &[u8]) -> Envelope {
        Envelope {
            topic: Topic::Group(GROUP.to_vec()),
            payload: payload.to_vec(),
            originator_node_id: 1,
            originator_sequence_id: time,
            originator_time_ms: time,
        }
    }

    fn entry(
        history: &mut RewindHistory,
        time: u64,
        epoch: u64,
        payload: &[u8],
    ) -> RetainedEnvelope {
        let mut entry = history.arrive(&envelope(time, payload));
        entry.epoch = epoch;
        entry
    }

    /// The commit `payload` at `time` left `epoch`: snapshot it.
    fn applied(
        kv: &MemoryKvStore,
        history: &mut RewindHistory,
        time: u64,
        epoch: u64,
        payload: &[u8],
    ) -> RetainedEnvelope {
        let commit = entry(history, time, epoch, payload);
        history
            .keep_snapshot(kv, Some(b"state"), &commit, epoch, [epoch as u8; 8], time)
            .expect("snapshot");
        history
            .record_commit(
                kv,
                epoch,
                commit.key,
                [epoch as u8; 8],
                Some(&[epoch as u8; 32]),
            )
            .expect("position");
        history.retain(kv, &commit).expect("retain");
        commit
    }

    #[test]
    fn nothing_is_retained_without_snapshots_or_with_a_strong_order() {
        let (kv, mut history) = history();
        let message = entry(&mut history, 10, 0, b"m");
        history.retain(&kv, &message).expect("retain");
        assert!(ClientStore(&kv).retained(GROUP).expect("read").is_empty());
        history.set_policy(RewindPolicy {
            max_rewind: 5,
            settle_window_ms: 0,
        });
        applied(&kv, &mut history, 20, 0, b"c");
        let message = entry(&mut history, 30, 1, b"m2");
        history.retain(&kv, &message).expect("retain");
        assert!(
            ClientStore(&kv).retained(GROUP).expect("read").is_empty(),
            "a settle window of 0 never rolls back"
        );
    }

    #[test]
    fn arrivals_are_numbered_and_renumbered_in_processing_order() {
        let (kv, mut history) = history();
        applied(&kv, &mut history, 10, 0, b"c0");
        let mut late = entry(&mut history, 5, 0, b"late");
        history.keep(&kv, &late).expect("keep");
        assert_eq!(late.arrival, 1);
        late.message_id = Some([9; 32]);
        history.renumber(&kv, &mut late).expect("renumber");
        assert_eq!(late.arrival, 2);
        assert_eq!(late.message_id, None);
        let arrivals: Vec<u64> = ClientStore(&kv)
            .retained(GROUP)
            .expect("read")
            .iter()
            .map(|e| e.arrival)
            .collect();
        assert_eq!(arrivals, [0, 2]);
        assert_eq!(history.state().next_arrival, 3);
    }

    #[test]
    fn held_envelopes_are_released_in_canonical_order_when_due() {
        let (kv, mut history) = history();
        for (time, epoch) in [(30, 2), (20, 1), (40, 3)] {
            let held = entry(&mut history, time, epoch, &[time as u8]);
            assert_eq!(history.hold(&kv, held, 0).expect("hold"), Ok(()));
        }
        let ready = history.ready(&kv, 2).expect("ready");
        let times: Vec<u64> = ready.iter().map(|e| e.key.0).collect();
        assert_eq!(times, [20, 30]);
        let mut first = ready[0].clone();
        history.release(&kv, &mut first).expect("release");
        assert!(!first.held);
        assert_eq!(first.arrival, 3);
        assert_eq!(history.ready(&kv, 2).expect("ready").len(), 1);
    }

    #[test]
    fn held_envelopes_are_bounded_and_the_furthest_ahead_go_first() {
        let (kv, mut history) = history();
        let held = |_: &RewindHistory| {
            ClientStore(&kv)
                .retained(GROUP)
                .expect("read")
                .into_iter()
                .filter(|e| e.held)
                .map(|e| e.epoch)
                .collect::<Vec<u64>>()
        };
        // Junk claiming epochs far ahead fills the count.
        for i in 0..MAX_HELD as u64 {
            let junk = entry(&mut history, i, 1 + MAX_HELD_AHEAD, b"junk");
            assert_eq!(history.hold(&kv, junk, 1).expect("hold"), Ok(()));
        }
        // Further still: refused outright.
        let far = entry(&mut history, 5_000, 2 + MAX_HELD_AHEAD, b"far");
        assert!(history.hold(&kv, far, 1).expect("hold").is_err());
        // A real message of the next epoch pushes out one of the junk.
        let real = entry(&mut history, 6_000, 2, b"real");
        assert_eq!(history.hold(&kv, real, 1).expect("hold"), Ok(()));
        let epochs = held(&history);
        assert_eq!(epochs.len(), MAX_HELD);
        assert!(epochs.contains(&2));
        // Once full of envelopes no further ahead than it, one is dropped.
        let later = entry(&mut history, 7_000, 1 + MAX_HELD_AHEAD, b"later");
        assert!(history.hold(&kv, later, 1).expect("hold").is_err());
        // Bytes: one envelope of a third of the budget, three times.
        let (kv, mut history) = self::history();
        let big = vec![0u8; MAX_HELD_BYTES / 3 + 1];
        for (i, epoch) in [(1, 5), (2, 4), (3, 3)] {
            let e = entry(&mut history, i, epoch, &big);
            assert_eq!(history.hold(&kv, e, 2).expect("hold"), Ok(()));
        }
        let stored: Vec<u64> = ClientStore(&kv)
            .retained(GROUP)
            .expect("read")
            .iter()
            .filter(|e| e.held)
            .map(|e| e.epoch)
            .collect();
        assert_eq!(stored.len(), 2, "the third pushed out the furthest ahead");
        assert!(!stored.contains(&5));
    }

    #[test]
    fn a_past_commit_is_a_duplicate_a_rollback_a_loser_or_too_late() {
        let (kv, mut history) = history();
        let applied = applied(&kv, &mut history, 50, 0, b"applied");
        let mut again = applied.clone();
        again.key = (60, 2, 1);
        assert_eq!(
            history.past_commit(&kv, &again, true).expect("past"),
            PastCommit::Duplicate
        );
        let earlier = entry(&mut history, 40, 0, b"earlier");
        assert!(matches!(
            history.past_commit(&kv, &earlier, true).expect("past"),
            PastCommit::RollBack(snapshot) if snapshot.epoch == 0
        ));
        assert_eq!(
            history.past_commit(&kv, &earlier, false).expect("past"),
            PastCommit::Kept,
            "during a replay, it is only kept"
        );
        let later = entry(&mut history, 70, 0, b"later");
        assert_eq!(
            history.past_commit(&kv, &later, true).expect("past"),
            PastCommit::Kept
        );
        history
            .settle_ring(&kv, Some(1_000), 1_000)
            .expect("settle");
        assert_eq!(
            history.past_commit(&kv, &earlier, true).expect("past"),
            PastCommit::Settled {
                earlier_than: Some((50, 1, 50))
            }
        );
        assert_eq!(history.stats().dropped_settled, 1);
    }

    #[test]
    fn the_replay_plan_splits_at_the_earlier_commit() {
        let (kv, mut history) = history();
        let snapshot_commit = applied(&kv, &mut history, 50, 0, b"c0");
        let message_e1 = entry(&mut history, 60, 1, b"m1");
        history.retain(&kv, &message_e1).expect("retain");
        let proposal_e0 = entry(&mut history, 30, 0, b"p0");
        history.keep(&kv, &proposal_e0).expect("keep");
        let future = entry(&mut history, 80, 3, b"m3");
        assert_eq!(history.hold(&kv, future, 0).expect("hold"), Ok(()));
        let first = entry(&mut history, 40, 0, b"earlier");
        history.keep(&kv, &first).expect("keep");
        let snapshot = history.snapshot(&kv, 0).expect("read").expect("kept");
        let plan = history.replay_plan(&kv, &snapshot, &first).expect("plan");
        let before: Vec<&[u8]> = plan.before.iter().map(|e| e.payload.as_slice()).collect();
        let after: Vec<&[u8]> = plan.after.iter().map(|e| e.payload.as_slice()).collect();
        assert_eq!(before, [b"p0".as_slice()]);
        // The applied commit that lost is replayed too (and refused then).
        assert_eq!(after, [b"c0".as_slice(), b"m1", b"m3"]);
        assert_eq!(snapshot_commit.arrival, snapshot.arrival);
    }

    #[test]
    fn settling_by_time_and_by_bound() {
        let (kv, mut history) = history();
        for epoch in 0..3 {
            applied(&kv, &mut history, 100 * (epoch + 1), epoch, &[epoch as u8]);
        }
        // Three snapshots, bound two: the oldest goes at once.
        let settled = history.settle_ring(&kv, None, 150).expect("settle");
        assert_eq!(settled.settled.len(), 1);
        assert_eq!(settled.oldest_kept.as_ref().map(|s| s.epoch), Some(1));
        assert_eq!(history.next_settle_ms(&kv).expect("next"), Some(300));
        // By time: epoch 1's commit at 200 settles at 300.
        let settled = history.settle_ring(&kv, Some(299), 299).expect("settle");
        assert!(settled.settled.is_empty());
        let settled = history.settle_ring(&kv, Some(300), 320).expect("settle");
        assert_eq!(settled.settled.len(), 1);
        assert_eq!(history.ring_len(&kv).expect("len"), 1);
        assert_eq!(history.stats().max_snapshot_age_ms, 120);
        assert!(
            ClientStore(&kv)
                .snapshot_state(GROUP, 1)
                .expect("read")
                .is_none(),
            "a settled snapshot's secrets are deleted"
        );
    }

    #[test]
    fn the_branch_is_named_by_the_positions_it_remembers() {
        let (kv, history) = history();
        for epoch in 0..10u64 {
            history
                .record_commit(
                    &kv,
                    epoch,
                    (epoch * 10, 1, epoch),
                    [epoch as u8; 8],
                    // A joiner at epoch 6: no claim keys before it.
                    (epoch >= 6).then_some(&[epoch as u8; 32]),
                )
                .expect("record");
        }
        let branch = history.branch_before(&kv, 10).expect("branch");
        assert_eq!(branch.len(), AAD_HISTORY);
        assert_eq!(branch[0], (9, [9; 8], (90, 1, 9)));
        let aad = history.aad(&kv, 10, [10; 8]).expect("aad");
        assert_eq!(KithAad::decode(&aad.encode()), Some(aad.clone()));
        // Only the epochs it was a member of, each MACed with its key.
        let epochs: Vec<u64> = aad.history.iter().map(|c| c.epoch).collect();
        assert_eq!(epochs, [9, 8, 7, 6]);
        assert!(aad.history[0].verifies(GROUP, &[9; 32]));
        assert!(!aad.history[0].verifies(GROUP, &[8; 32]));
        assert!(!aad.history[0].verifies(b"another group", &[9; 32]));
        // Positions older than the history are forgotten, keys with them.
        history
            .record_commit(&kv, COMMIT_HISTORY + 6, (0, 1, 0), [0; 8], None)
            .expect("record");
        assert_eq!(history.commit_key(&kv, 6).expect("read"), None);
        assert!(history.claim_key(&kv, 6).expect("read").is_none());
        assert!(history.commit_key(&kv, 7).expect("read").is_some());
        assert!(history.claim_key(&kv, 7).expect("read").is_some());
    }

    #[test]
    fn own_messages_of_a_losing_epoch_are_resent_in_written_order() {
        let (kv, mut history) = history();
        applied(&kv, &mut history, 10, 0, b"c0");
        // Sent in epoch 1 and 2 of the old branch, and one deferred.
        history
            .track_send(&kv, [1; 32], b"one".to_vec(), 1, [1; 8], false)
            .expect("track");
        history
            .track_send(&kv, [2; 32], b"two".to_vec(), 2, [2; 8], false)
            .expect("track");
        // A rollback to epoch 0 put the group in epoch 2 of another branch.
        history.flag_lost_sends(&kv, 0, 2, [0xee; 8]).expect("flag");
        let ids: Vec<[u8; 32]> = history
            .to_resend(&kv)
            .expect("resend")
            .iter()
            .map(|s| s.message_id)
            .collect();
        assert_eq!(ids, [[1; 32], [2; 32]]);
        let send = history.to_resend(&kv).expect("resend").remove(0);
        history.resent(&kv, send, 2, [0xee; 8]).expect("resent");
        assert_eq!(history.to_resend(&kv).expect("resend").len(), 1);
        // Settled below the horizon, a sent one is forgotten.
        history.forget_settled(&kv, 2, u64::MAX).expect("forget");
        assert_eq!(ClientStore(&kv).own_sends(GROUP).expect("read").len(), 1);
    }

    #[test]
    fn leaving_a_branch_keeps_only_unsent_messages_written_on_it() {
        let (kv, mut history) = history();
        let conversation = ConversationId(b"c".to_vec());
        ClientStore(&kv)
            .put_group_record(
                GROUP,
                &GroupRecord {
                    conversation_id: Some(conversation.clone()),
                    ..GroupRecord::default()
                },
            )
            .expect("record");
        applied(&kv, &mut history, 10, 0, b"c0");
        for (id, delivery) in [(1u8, Delivery::Unpublished), (2, Delivery::Failed)] {
            ClientStore(&kv)
                .insert_message(&StoredMessage {
                    conversation_id: conversation.clone(),
                    group_id: GROUP.to_vec(),
                    message_id: [id; 32],
                    sender_inbox: InboxId::from_bytes([1; 20]),
                    sender_installation: InstallationId([1; 32]),
                    content_type: "text/plain".into(),
                    body: Vec::new(),
                    sent_at_ms: 1,
                    time_ms: 1,
                    delivery,
                    unbound_leaf: None,
                    fallback: None,
                })
                .expect("insert");
            history
                .track_send(&kv, [id; 32], vec![id], 1, [1; 8], true)
                .expect("track");
        }
        RewindHistory::forget(&kv, GROUP).expect("forget");
        let store = ClientStore(&kv);
        assert!(store.snapshots(GROUP).expect("read").is_empty());
        assert!(store.retained(GROUP).expect("read").is_empty());
        assert_eq!(store.commit_key(GROUP, 0).expect("read"), None);
        let kept: Vec<[u8; 32]> = store
            .own_sends(GROUP)
            .expect("read")
            .iter()
            .map(|s| s.message_id)
            .collect();
        assert_eq!(kept, [[1; 32]]);
    }
}
