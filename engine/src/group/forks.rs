//! The [`ForkMonitor`]: how a member finds out it is on a fork of its
//! group, and how a fork heals (DESIGN.md section 7).
//!
//! A member is on a fork when its branch and the canonical one parted at
//! an epoch it can no longer roll back (it settled). Evidence comes from
//! other members' messages, whose authenticated data names the commits of
//! their branch ([`KithAad`]): where the branches part, the side whose
//! commit sorts first is canonical. Evidence for an epoch still in the
//! ring is only noted ([`EarlierCommit`]): the rollback should follow, and
//! if the epoch settles first, the member is forked.
//!
//! A forked member asks to be re-added, with a [`RejoinRequest`]: a small
//! frame on the group topic, outside MLS (the forked member's epoch
//! secrets are not the others'), signed by the installation key, which the
//! identity log ties to the inbox:
//!
//! ```text
//!  "KITH-REJOIN-1" | u32 len | group id | inbox (20) | installation (32)
//!                  | u64 forked epoch | u64 time
//!                  | u64 evidence epoch | u64 time | u32 node | u64 sequence
//!                  | Ed25519 signature (64)
//! ```
//!
//! The evidence is the canonical commit the requester saw too late. Only a
//! member that applied that very commit for that epoch acts on the
//! request, so a member that is itself on the fork (and may not know it
//! yet) never re-adds anyone into it. Anyone can replay a request; all it
//! can cause is a re-add of that installation with a fresh key package of
//! its own, which only that installation can use.
//!
//! The monitor owns the fork state (in the group's record), the re-add
//! Welcomes kept for later (`'w'`) and when each installation's leaf was
//! last added (`'a'`). It never changes the MLS state and never sends:
//! the group acts on what it finds (takes back what was sent on the fork,
//! publishes the request, queues a re-add).

use super::{
    aad::KithAad,
    error::GroupError,
    events::{Events, GroupEvent},
    history::RewindHistory,
    records::{DeferredWelcome, EarlierCommit, Fork, ForkState, LateCommit, LeafAdded, OrderKey},
    roster::Roster,
    store::{ClientStore, KvStore},
};
use crate::identity::{InboxId, InstallationId, InstallationKeys, verify_installation_signature};

/// How many re-add Welcomes a group keeps for later.
const MAX_DEFERRED_WELCOMES: usize = 4;

/// How many verified claims awaiting their commit, and how many late
/// commits awaiting a claim, the monitor keeps.
const MAX_AWAITED: usize = 8;

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
    pub fn sign(&self, keys: &InstallationKeys) -> Vec<u8> {
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

/// Evidence that this installation is on a fork: the reason, the
/// canonical commit it missed (its epoch and position), and when the fork
/// began here (the time of the commit this installation applied instead).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ForkEvidence {
    pub(crate) reason: String,
    pub(crate) evidence: (u64, OrderKey),
    pub(crate) since_ms: u64,
}

/// A rejoin request this member should answer: the driver fetches a key
/// package for the installation and queues a re-add.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RejoinAnswer {
    pub(crate) inbox: InboxId,
    pub(crate) installation: InstallationId,
    pub(crate) stale_leaf: Vec<u8>,
}

/// What a member knows of the group that a rejoin request is checked
/// against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Membership<'a> {
    /// Who the leaves are.
    pub(crate) roster: Roster<'a>,
    /// Whether this installation is a member.
    pub(crate) active: bool,
    /// This installation.
    pub(crate) own_installation: InstallationId,
    /// The epoch this installation has been in the canonical tree since:
    /// when it joined (0 for the creator), or first joined, if it healed
    /// from a fork since.
    pub(crate) member_since: u64,
}

/// A group's fork monitor. See the module docs.
#[derive(Debug)]
pub(crate) struct ForkMonitor {
    group_id: Vec<u8>,
    state: ForkState,
    retry_ms: u64,
}

impl ForkMonitor {
    /// The monitor of `group_id`, from its stored state.
    pub(crate) fn new(group_id: &[u8], state: ForkState) -> Self {
        Self {
            group_id: group_id.to_vec(),
            state,
            retry_ms: super::config::REJOIN_RETRY_MS,
        }
    }

    /// The state, for the group's record.
    pub(crate) fn state(&self) -> &ForkState {
        &self.state
    }

    /// How long a forked member waits for its re-add before asking again.
    pub(crate) fn set_retry_ms(&mut self, retry_ms: u64) {
        self.retry_ms = retry_ms;
    }

    /// The fork this installation is on, if any.
    pub(crate) fn fork(&self) -> Option<&Fork> {
        self.state.forked.as_ref()
    }

    /// Whether this installation is on a fork.
    pub(crate) fn is_forked(&self) -> bool {
        self.state.forked.is_some()
    }

    /// On a fork: the epoch whose canonical commit this installation
    /// missed, where its branch parted from the canonical one.
    pub(crate) fn parted_at(&self) -> Option<u64> {
        self.state.forked.as_ref().map(|fork| fork.evidence_epoch)
    }

    // ----- evidence ------------------------------------------------------------

    /// A member's message whose authenticated data is `aad`, which this
    /// installation (its epoch digest `my_auth`) cannot decrypt or must
    /// hold: if the sender's branch parts from ours, the side whose commit
    /// sorts first where they part is canonical.
    ///
    /// Only claims whose MAC verifies under this installation's own claim
    /// key of that epoch count: a member of the epoch made them (a
    /// stranger cannot). Even then a claim alone is not evidence, since a
    /// member may lie about a position. If the sender's commit sorts first
    /// and the epoch is still in the ring, it is noted (the commit should
    /// reach us, and the rollback checks it); if the epoch settled, this
    /// installation is on a fork only if that very commit reached it, too
    /// late to be checked ([`ForkMonitor::late_commit`]); until then the
    /// claim waits for it.
    pub(crate) fn check_branch<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        history: &RewindHistory,
        aad: &[u8],
        my_auth: [u8; 8],
    ) -> Result<Option<ForkEvidence>, GroupError> {
        let Some(theirs) = KithAad::decode(aad) else {
            return Ok(None);
        };
        // On a fork already, a message may still show an earlier parting
        // than the one it asks to be re-added for (`flag` takes it).
        if theirs.auth_digest == my_auth {
            return Ok(None);
        }
        // Oldest first: the first epoch both were in (same authenticator)
        // whose commits differ is where the branches part.
        for claim in theirs.history.iter().rev() {
            let Some((my_key, my_auth)) = history.commit_record(kv, claim.epoch)? else {
                continue;
            };
            if my_auth != claim.auth_digest || my_key == claim.key {
                continue;
            }
            let Some(claim_key) = history.claim_key(kv, claim.epoch)? else {
                continue;
            };
            if !claim.verifies(&self.group_id, &claim_key) {
                // Not made by a member of that epoch: a stranger's.
                continue;
            }
            if claim.key >= my_key {
                // Ours sorts first: the sender rolls back, or is forked.
                return Ok(None);
            }
            let seen = EarlierCommit {
                epoch: claim.epoch,
                auth_digest: claim.auth_digest,
                key: claim.key,
            };
            if history.snapshot(kv, claim.epoch)?.is_some() {
                // Their commit should reach us, and we roll back to it if it
                // is valid; if the epoch settles first, the claim waits for
                // the commit (`settled`).
                self.note_earlier(seen);
                return Ok(None);
            }
            if self
                .state
                .late_commits
                .iter()
                .any(|late| late.epoch == claim.epoch && late.key == claim.key)
            {
                return Ok(Some(Self::evidence(claim.epoch, claim.key, my_key)));
            }
            self.await_commit(seen);
            return Ok(None);
        }
        Ok(None)
    }

    fn evidence(epoch: u64, key: OrderKey, applied: OrderKey) -> ForkEvidence {
        ForkEvidence {
            reason: format!(
                "a commit for epoch {epoch} that sorts before the one applied here arrived after \
                 the epoch settled, and a member's branch took it"
            ),
            evidence: (epoch, key),
            since_ms: applied.0,
        }
    }

    /// Remember the earliest parting seen (the oldest epoch, and there the
    /// first commit) until its epoch settles.
    fn note_earlier(&mut self, seen: EarlierCommit) {
        let earlier = match &self.state.earlier_commit {
            Some(known) => (seen.epoch, seen.key) < (known.epoch, known.key),
            None => true,
        };
        if earlier {
            self.state.earlier_commit = Some(seen);
        }
    }

    /// Keep a verified claim about a settled epoch until the commit it
    /// names arrives (bounded; the oldest claim goes first).
    fn await_commit(&mut self, claim: EarlierCommit) {
        let claims = &mut self.state.awaited_commits;
        if claims.contains(&claim) {
            return;
        }
        if claims.len() >= MAX_AWAITED {
            claims.remove(0);
        }
        claims.push(claim);
    }

    /// A commit for the settled epoch `epoch` arrived at `key`, sorting
    /// before the commit applied here (at `applied`): too late to check
    /// it. If a member's verified claim names it as its branch's, this
    /// installation is on a fork; otherwise it is remembered (bounded) in
    /// case such a claim comes.
    ///
    /// Both halves are needed. The commit alone may be anyone's bytes,
    /// placed early only by a node that broke its settle window; the claim
    /// alone may be a member's lie. A commit a member's branch took, at a
    /// position the node gave it, is what a fork is.
    pub(crate) fn late_commit(
        &mut self,
        epoch: u64,
        key: OrderKey,
        applied: OrderKey,
    ) -> Option<ForkEvidence> {
        if self
            .state
            .awaited_commits
            .iter()
            .any(|claim| claim.epoch == epoch && claim.key == key)
        {
            self.state
                .awaited_commits
                .retain(|claim| (claim.epoch, claim.key) != (epoch, key));
            return Some(Self::evidence(epoch, key, applied));
        }
        let late = LateCommit { epoch, key };
        if !self.state.late_commits.contains(&late) {
            if self.state.late_commits.len() >= MAX_AWAITED {
                self.state.late_commits.remove(0);
            }
            self.state.late_commits.push(late);
        }
        None
    }

    /// A rollback to `epoch` for the commit at `key` did not merge it: a
    /// member's message named it as its branch's, but that branch is not
    /// one to follow, and no fork is to be inferred from it when the epoch
    /// settles.
    pub(crate) fn earlier_commit_refused(&mut self, epoch: u64, key: OrderKey) {
        if self
            .state
            .earlier_commit
            .as_ref()
            .is_some_and(|seen| seen.epoch == epoch && seen.key == key)
        {
            self.state.earlier_commit = None;
        }
    }

    /// The snapshot of `snapshot`'s epoch settled: if a member's branch
    /// took an earlier commit for it, the rollback to it never came, and
    /// now it cannot. The claim now waits for that commit, which proves the
    /// fork if it arrives (late). A noted parting at an older epoch is
    /// forgotten (it can no longer be acted on).
    pub(crate) fn settled(&mut self, snapshot: &super::records::EpochSnapshot) {
        let Some(seen) = self
            .state
            .earlier_commit
            .take_if(|seen| seen.epoch <= snapshot.epoch)
        else {
            return;
        };
        if seen.epoch == snapshot.epoch
            && seen.auth_digest == snapshot.auth_digest
            && seen.key < snapshot.commit_key
        {
            self.await_commit(seen);
        }
    }

    /// Record that this installation, in `epoch`, is on the fork `found`
    /// shows, and say so. Returns `false` if it knew already; then better
    /// evidence (an earlier parting) replaces the old, and the request goes
    /// out again at once: only a member that applied the evidence commit
    /// answers, and the first evidence found may itself have lost to a
    /// commit that sorts even earlier.
    pub(crate) fn flag(
        &mut self,
        found: ForkEvidence,
        epoch: u64,
        now_ms: u64,
        events: &mut Events,
    ) -> bool {
        if let Some(fork) = self.state.forked.as_mut() {
            if found.evidence < (fork.evidence_epoch, fork.evidence_key) {
                fork.evidence_epoch = found.evidence.0;
                fork.evidence_key = found.evidence.1;
                fork.reason = found.reason;
                fork.requested_at_ms = None;
            }
            return false;
        }
        events.push_back(GroupEvent::Forked {
            epoch,
            reason: found.reason.clone(),
        });
        self.state.forked = Some(Fork {
            epoch,
            reason: found.reason,
            detected_at_ms: now_ms,
            requested_at_ms: None,
            evidence_epoch: found.evidence.0,
            evidence_key: found.evidence.1,
        });
        true
    }

    // ----- healing -------------------------------------------------------------

    /// If this installation is on a fork, its rejoin request, signed, when
    /// it is time to ask (again, after the retry interval).
    pub(crate) fn rejoin_request(
        &mut self,
        inbox: InboxId,
        keys: &InstallationKeys,
        now_ms: u64,
    ) -> Option<Vec<u8>> {
        let fork = self.state.forked.as_mut()?;
        if fork
            .requested_at_ms
            .is_some_and(|at| now_ms < at.saturating_add(self.retry_ms))
        {
            return None;
        }
        fork.requested_at_ms = Some(now_ms);
        Some(
            RejoinRequest {
                group_id: self.group_id.clone(),
                inbox,
                installation: keys.id(),
                epoch: fork.epoch,
                time_ms: now_ms,
                evidence_epoch: fork.evidence_epoch,
                evidence_key: fork.evidence_key,
            }
            .sign(keys),
        )
    }

    /// A rejoin request from the member whose Welcome this installation
    /// joined from (`welcomed_by`, its adder), naming a parting before this
    /// installation joined (at `joined_at_epoch`): the branch it was added
    /// to had lost before it joined, so it is on that fork too. It holds
    /// no claim keys of those epochs, so no other member's claim could tell
    /// it. The adder is trusted for the branch it put this installation on
    /// (it made the Welcome); no one else's request moves it.
    ///
    /// Only a request the adder made after the Welcome counts: one flagged
    /// at an epoch from before this installation joined is about a fork
    /// the adder had healed before it added this installation (a forked
    /// member commits nothing, and a Welcome goes out only once its commit
    /// settled), re-sent or replicated late. Taking that one would fork
    /// every member the adder has added since.
    pub(crate) fn adder_forked(
        &self,
        payload: &[u8],
        welcomed_by: Option<InstallationId>,
        joined_at_epoch: u64,
    ) -> Option<ForkEvidence> {
        let request = RejoinRequest::verify(payload).ok()?;
        (request.group_id == self.group_id
            && welcomed_by == Some(request.installation)
            && request.evidence_epoch < joined_at_epoch
            && request.epoch >= joined_at_epoch)
            .then(|| ForkEvidence {
                reason: format!(
                    "the member that added this installation found that its branch lost at \
                     epoch {}, before this installation joined",
                    request.evidence_epoch
                ),
                evidence: (request.evidence_epoch, request.evidence_key),
                // Everything it sent went out on that branch.
                since_ms: 0,
            })
    }

    /// A rejoin request arrived: `Ok(Ok(Some(_)))` if this member should
    /// re-add the installation it names, `Ok(Ok(None))` if it is not this
    /// member's to answer (or its own), and `Ok(Err(reason))` for a
    /// request to skip.
    pub(crate) fn examine_request<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        history: &RewindHistory,
        group: Membership<'_>,
        payload: &[u8],
    ) -> Result<Result<Option<RejoinAnswer>, String>, GroupError> {
        let request = match RejoinRequest::verify(payload) {
            Ok(r) => r,
            Err(reason) => return Ok(Err(reason)),
        };
        if request.group_id != self.group_id
            || !group.active
            || self.is_forked()
            || request.installation == group.own_installation
        {
            return Ok(Ok(None));
        }
        let Some(leaf) = group.roster.leaf_of(&request.installation) else {
            return Ok(Err(
                "a rejoin request from an installation that is not a member".into(),
            ));
        };
        if group.roster.identity_of(leaf).map(|(inbox, _)| inbox) != Some(request.inbox) {
            return Ok(Err(
                "a rejoin request whose inbox does not match the member".into(),
            ));
        }
        if group.member_since > request.evidence_epoch {
            // The requester takes a re-add only from a member it knew (see
            // `Group::join`): one that joined after the branches parted is
            // in no tree the requester trusts. Older members answer, and
            // so does one that healed from a fork since (it was re-added
            // in place, so it was in every tree).
            return Ok(Ok(None));
        }
        let applied = history.commit_key(kv, request.evidence_epoch)?;
        if applied != Some(request.evidence_key) {
            return Ok(Err(format!(
                "a rejoin request naming a commit for epoch {} at {:?} that this \
                 installation did not apply (it applied {applied:?})",
                request.evidence_epoch, request.evidence_key
            )));
        }
        let stale_leaf = group.roster.leaf_encryption_key(leaf);
        // Several members answer one request, and a request may reach a
        // member after the re-add that answered it: a leaf added by a
        // commit later than the request is its answer, and re-adding it
        // again would remove the leaf the requester has just joined with.
        if let Some(added) = self.leaf_added(kv, &request.installation)?
            && added.encryption_key == stale_leaf
            && added.commit_time_ms >= request.time_ms
        {
            return Ok(Err("a rejoin request that a re-add already answered".into()));
        }
        Ok(Ok(Some(RejoinAnswer {
            inbox: request.inbox,
            installation: request.installation,
            stale_leaf,
        })))
    }

    /// Record that `installation`'s leaf was added by a commit at
    /// `commit_time_ms`, with `encryption_key`.
    pub(crate) fn leaf_added_now<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        installation: &InstallationId,
        commit_time_ms: u64,
        encryption_key: Vec<u8>,
    ) -> Result<(), GroupError> {
        ClientStore(kv).put_leaf_added(
            &self.group_id,
            installation,
            &LeafAdded {
                commit_time_ms,
                encryption_key,
            },
        )
    }

    fn leaf_added<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        installation: &InstallationId,
    ) -> Result<Option<LeafAdded>, GroupError> {
        ClientStore(kv).leaf_added(&self.group_id, installation)
    }

    // ----- kept Welcomes -------------------------------------------------------

    /// Keep a Welcome for this group, which this installation (in `epoch`)
    /// is still a member of, if it starts at a later epoch (`starts`, as
    /// the Welcome itself says, checked by the caller): a re-add committed
    /// there will remove the leaf in use, and then the Welcome is the way
    /// back. One for this epoch or an earlier one can never be needed.
    pub(crate) fn keep_welcome<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        epoch: u64,
        starts: u64,
        bytes: &[u8],
    ) -> Result<(), GroupError> {
        if starts <= epoch {
            return Ok(());
        }
        let store = ClientStore(kv);
        let mut kept = store.deferred_welcomes(&self.group_id)?;
        kept.sort_by_key(|w| std::cmp::Reverse(w.epoch));
        // Bounded: only the newest are worth keeping.
        for old in kept.iter().skip(MAX_DEFERRED_WELCOMES - 1) {
            store.remove_deferred_welcome(&self.group_id, old)?;
        }
        store.put_deferred_welcome(
            &self.group_id,
            &DeferredWelcome {
                epoch: starts,
                payload: bytes.to_vec(),
            },
        )
    }

    /// The kept Welcomes of `group_id`, newest first.
    pub(crate) fn kept_welcomes<S: KvStore + ?Sized>(
        kv: &S,
        group_id: &[u8],
    ) -> Result<Vec<DeferredWelcome>, GroupError> {
        let mut kept = ClientStore(kv).deferred_welcomes(group_id)?;
        kept.sort_by_key(|w| std::cmp::Reverse(w.epoch));
        Ok(kept)
    }

    /// Stop keeping `welcome` (it is being tried, or can never be used).
    pub(crate) fn drop_welcome<S: KvStore + ?Sized>(
        kv: &S,
        group_id: &[u8],
        welcome: &DeferredWelcome,
    ) -> Result<(), GroupError> {
        ClientStore(kv).remove_deferred_welcome(group_id, welcome)
    }

    /// Join again from the Welcomes kept for `group_id`, newest first, with
    /// `join`; the state joined from last started at `joined_at_epoch`,
    /// and older ones are dropped untried. Each is dropped as it is tried;
    /// one whose identity logs must be fetched first is kept for the next
    /// try, and one that fails otherwise would fail the same way every
    /// time (its key package spent by an earlier join, say).
    pub(crate) fn rejoin_from_kept<S: KvStore + ?Sized, T>(
        kv: &S,
        group_id: &[u8],
        joined_at_epoch: u64,
        mut join: impl FnMut(&[u8]) -> Result<Option<T>, GroupError>,
    ) -> Result<Option<T>, GroupError> {
        for welcome in Self::kept_welcomes(kv, group_id)? {
            Self::drop_welcome(kv, group_id, &welcome)?;
            if welcome.epoch <= joined_at_epoch {
                continue;
            }
            match join(&welcome.payload) {
                Ok(Some(joined)) => return Ok(Some(joined)),
                Ok(None) => {}
                Err(e @ (GroupError::NeedIdentities(_) | GroupError::IdentitiesDisputed(_))) => {
                    Self::put_back(kv, group_id, &welcome)?;
                    return Err(e);
                }
                Err(e @ (GroupError::Store(_) | GroupError::Corrupt(_))) => return Err(e),
                Err(_) => {}
            }
        }
        Ok(None)
    }

    /// Keep `welcome` again (it could not be tried yet).
    pub(crate) fn put_back<S: KvStore + ?Sized>(
        kv: &S,
        group_id: &[u8],
        welcome: &DeferredWelcome,
    ) -> Result<(), GroupError> {
        ClientStore(kv).put_deferred_welcome(group_id, welcome)
    }

    /// The group's state was replaced by a Welcome starting at `epoch`:
    /// forget what was kept for the state it replaced. Its leaves' add
    /// records name leaves of the old tree, and a kept Welcome that starts
    /// at or before `epoch` can never be used.
    pub(crate) fn forget<S: KvStore + ?Sized>(
        kv: &S,
        group_id: &[u8],
        epoch: u64,
    ) -> Result<(), GroupError> {
        let store = ClientStore(kv);
        store.remove_leaves_added(group_id)?;
        for welcome in store.deferred_welcomes(group_id)? {
            if welcome.epoch <= epoch {
                store.remove_deferred_welcome(group_id, &welcome)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rand_core::SeedableRng as _;

    use super::*;
    use crate::{
        group::{
            aad::{BranchClaim, KithAad},
            config::RewindPolicy,
            content::WelcomePayload,
            records::{EpochSnapshot, HistoryState, RetainedEnvelope},
            store::MemoryKvStore,
        },
        identity::LocalWallet,
    };

    const GROUP: &[u8] = b"group";

    fn setup() -> (MemoryKvStore, RewindHistory, ForkMonitor) {
        let mut history = RewindHistory::new(GROUP, HistoryState::default());
        history.set_policy(RewindPolicy {
            max_rewind: 5,
            settle_window_ms: 100,
        });
        (
            MemoryKvStore::default(),
            history,
            ForkMonitor::new(GROUP, ForkState::default()),
        )
    }

    /// This member applied, for each epoch 0..=last, the commit at time
    /// `10 * (epoch + 1)`; epoch `e`'s authenticator digest is `[e; 8]` and
    /// its claim key `[e; 32]`.
    fn applied(kv: &MemoryKvStore, history: &RewindHistory, last: u64) {
        for epoch in 0..=last {
            history
                .record_commit(
                    kv,
                    epoch,
                    (10 * (epoch + 1), 1, epoch),
                    [epoch as u8; 8],
                    Some(&[epoch as u8; 32]),
                )
                .expect("record");
        }
    }

    fn snapshot_of(kv: &MemoryKvStore, history: &RewindHistory, epoch: u64) {
        let entry = RetainedEnvelope {
            arrival: epoch,
            payload: vec![epoch as u8],
            key: (10 * (epoch + 1), 1, epoch),
            epoch,
            held: false,
            message_id: None,
        };
        history
            .keep_snapshot(kv, None, &entry, epoch, [epoch as u8; 8], 0)
            .expect("snapshot");
    }

    /// A claim about `epoch` (commit at `key`) MACed with `claim_key`.
    fn claim_with(epoch: u64, key: OrderKey, claim_key: [u8; 32]) -> Vec<u8> {
        KithAad {
            auth_digest: [0xbb; 8],
            history: vec![BranchClaim::new(
                GROUP,
                &claim_key,
                epoch,
                [epoch as u8; 8],
                key,
            )],
        }
        .encode()
    }

    /// A member's message whose branch took, for `epoch`, a commit at `key`.
    fn their_aad(epoch: u64, key: OrderKey) -> Vec<u8> {
        claim_with(epoch, key, [epoch as u8; 32])
    }

    fn check(
        kv: &MemoryKvStore,
        history: &RewindHistory,
        forks: &mut ForkMonitor,
        aad: &[u8],
    ) -> Option<ForkEvidence> {
        forks.check_branch(kv, history, aad, [3; 8]).expect("check")
    }

    #[test]
    fn a_claim_and_its_late_commit_at_a_settled_epoch_are_a_fork_in_either_order() {
        for claim_first in [true, false] {
            let (kv, history, mut forks) = setup();
            applied(&kv, &history, 3);
            let found = if claim_first {
                assert!(check(&kv, &history, &mut forks, &their_aad(2, (5, 2, 1))).is_none());
                forks.late_commit(2, (5, 2, 1), (30, 1, 2))
            } else {
                assert!(forks.late_commit(2, (5, 2, 1), (30, 1, 2)).is_none());
                check(&kv, &history, &mut forks, &their_aad(2, (5, 2, 1)))
            };
            let found = found.expect("evidence");
            assert_eq!(found.evidence, (2, (5, 2, 1)));
            assert_eq!(found.since_ms, 30, "the fork began with our commit for 2");
            let mut events = Events::new();
            assert!(forks.flag(found, 4, 1_000, &mut events));
            assert!(matches!(
                events.pop_front(),
                Some(GroupEvent::Forked { epoch: 4, .. })
            ));
            assert_eq!(forks.fork().map(|f| f.detected_at_ms), Some(1_000));
        }
    }

    #[test]
    fn a_claim_alone_a_late_commit_alone_or_another_commit_is_no_fork() {
        let (kv, history, mut forks) = setup();
        applied(&kv, &history, 3);
        // A member's claim whose commit never arrives (a lie, say).
        assert!(check(&kv, &history, &mut forks, &their_aad(2, (5, 2, 1))).is_none());
        // A late commit no member's branch took.
        assert!(forks.late_commit(1, (4, 2, 1), (20, 1, 1)).is_none());
        // A late commit at another position than the one claimed.
        assert!(forks.late_commit(2, (6, 2, 1), (30, 1, 2)).is_none());
        assert!(!forks.is_forked());
        // Bounded: a flood of either is forgotten oldest first.
        for n in 0..100 {
            forks.late_commit(2, (7, 3, n), (30, 1, 2));
            check(&kv, &history, &mut forks, &their_aad(2, (8, 3, n)));
        }
        assert_eq!(forks.state().late_commits.len(), MAX_AWAITED);
        assert_eq!(forks.state().awaited_commits.len(), MAX_AWAITED);
    }

    #[test]
    fn a_claim_a_stranger_made_is_ignored() {
        let (kv, history, mut forks) = setup();
        applied(&kv, &history, 3);
        forks.late_commit(2, (5, 2, 1), (30, 1, 2));
        // The epoch's digest and the positions are public; its claim key
        // is not.
        let forged = claim_with(2, (5, 2, 1), [0xee; 32]);
        assert!(check(&kv, &history, &mut forks, &forged).is_none());
        let mut tampered = their_aad(2, (5, 2, 1));
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(check(&kv, &history, &mut forks, &tampered).is_none());
        assert!(!forks.is_forked());
        assert!(forks.state().awaited_commits.is_empty());
    }

    #[test]
    fn a_later_commit_same_branch_or_junk_is_no_evidence() {
        let (kv, history, mut forks) = setup();
        applied(&kv, &history, 3);
        forks.late_commit(2, (5, 2, 1), (30, 1, 2));
        let none = |forks: &mut ForkMonitor, aad: &[u8], mine: [u8; 8]| {
            forks
                .check_branch(&kv, &history, aad, mine)
                .expect("check")
                .is_none()
        };
        // Theirs sorts after ours: they roll back, or are forked.
        assert!(none(&mut forks, &their_aad(2, (99, 1, 1)), [3; 8]));
        // The same epoch as ours.
        let same = KithAad {
            auth_digest: [3; 8],
            history: vec![BranchClaim::new(GROUP, &[2; 32], 2, [2; 8], (5, 2, 1))],
        };
        assert!(none(&mut forks, &same.encode(), [3; 8]));
        // An epoch we were never in (another authenticator).
        let other = KithAad {
            auth_digest: [0xbb; 8],
            history: vec![BranchClaim::new(GROUP, &[2; 32], 2, [0xcc; 8], (5, 2, 1))],
        };
        assert!(none(&mut forks, &other.encode(), [3; 8]));
        assert!(none(&mut forks, b"not kith authenticated data", [3; 8]));
        assert!(!forks.is_forked());
    }

    #[test]
    fn an_earlier_commit_in_the_ring_waits_for_its_commit_when_it_settles() {
        let (kv, history, mut forks) = setup();
        applied(&kv, &history, 3);
        snapshot_of(&kv, &history, 2);
        let aad = their_aad(2, (5, 2, 1));
        assert!(
            check(&kv, &history, &mut forks, &aad).is_none(),
            "the rollback should follow"
        );
        let snapshot: EpochSnapshot = history.snapshot(&kv, 2).expect("read").expect("kept");
        forks.settled(&snapshot);
        assert!(!forks.is_forked(), "settling alone proves nothing");
        let found = forks
            .late_commit(2, (5, 2, 1), (30, 1, 2))
            .expect("the commit arrived after all, too late");
        assert_eq!(found.evidence, (2, (5, 2, 1)));
    }

    #[test]
    fn a_refused_earlier_commit_is_forgotten() {
        let (kv, history, mut forks) = setup();
        applied(&kv, &history, 3);
        snapshot_of(&kv, &history, 2);
        check(&kv, &history, &mut forks, &their_aad(2, (5, 2, 1)));
        forks.earlier_commit_refused(2, (5, 2, 1));
        let snapshot = history.snapshot(&kv, 2).expect("read").expect("kept");
        forks.settled(&snapshot);
        assert!(forks.state().awaited_commits.is_empty());
    }

    #[test]
    fn better_evidence_replaces_the_old_and_asks_again_at_once() {
        let (_, _, mut forks) = setup();
        let evidence = |epoch, time| ForkEvidence {
            reason: format!("epoch {epoch}"),
            evidence: (epoch, (time, 1, 1)),
            since_ms: time,
        };
        let mut events = Events::new();
        assert!(forks.flag(evidence(5, 50), 7, 100, &mut events));
        let keys = crate::identity::InstallationKeys::generate(
            &mut rand_chacha::ChaCha20Rng::seed_from_u64(1),
        );
        let inbox =
            LocalWallet::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(2)).inbox_id();
        assert!(forks.rejoin_request(inbox, &keys, 200).is_some());
        assert!(
            forks.rejoin_request(inbox, &keys, 300).is_none(),
            "waits for the retry interval"
        );
        assert!(!forks.flag(evidence(6, 60), 7, 400, &mut events), "worse");
        assert!(forks.rejoin_request(inbox, &keys, 400).is_none());
        assert!(!forks.flag(evidence(4, 40), 7, 500, &mut events), "better");
        let request = forks
            .rejoin_request(inbox, &keys, 500)
            .expect("asks at once");
        let decoded = RejoinRequest::verify(&request).expect("signed");
        assert_eq!(decoded.evidence_epoch, 4);
        assert_eq!(decoded.epoch, 7);
        assert_eq!(decoded.installation, keys.id());
        assert_eq!(events.len(), 1, "one Forked event");
    }

    #[test]
    fn a_forged_or_truncated_request_does_not_verify() {
        let keys = crate::identity::InstallationKeys::generate(
            &mut rand_chacha::ChaCha20Rng::seed_from_u64(3),
        );
        let request = RejoinRequest {
            group_id: GROUP.to_vec(),
            inbox: LocalWallet::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(4))
                .inbox_id(),
            installation: keys.id(),
            epoch: 3,
            time_ms: 10,
            evidence_epoch: 2,
            evidence_key: (5, 1, 1),
        };
        let mut bytes = request.sign(&keys);
        assert_eq!(RejoinRequest::verify(&bytes).expect("valid"), request);
        bytes[MAGIC.len() + 4] ^= 1;
        assert!(RejoinRequest::verify(&bytes).is_err());
        assert!(RejoinRequest::verify(&bytes[..bytes.len() - 1]).is_err());
        assert!(RejoinRequest::verify(b"KITH-REJOIN-1").is_err());
    }

    fn welcome_starting_at(epoch: u64, tag: u8) -> (WelcomePayload, Vec<u8>) {
        let payload = WelcomePayload {
            welcome: vec![tag],
            group_id: GROUP.to_vec(),
            cursor: Default::default(),
            branch: vec![(epoch - 1, [0; 8], (0, 1, 0))],
            shared: None,
        };
        let bytes = payload.to_bytes();
        (payload, bytes)
    }

    #[test]
    fn kept_welcomes_are_bounded_tried_newest_first_and_forgotten_when_stale() {
        let (kv, _, forks) = setup();
        // One for the current epoch (5) is never needed.
        let (_, bytes) = welcome_starting_at(5, 0);
        forks.keep_welcome(&kv, 5, 5, &bytes).expect("keep");
        assert!(
            ForkMonitor::kept_welcomes(&kv, GROUP)
                .expect("read")
                .is_empty()
        );
        for (epoch, tag) in [(6, 1), (7, 2), (8, 3), (9, 4), (10, 5)] {
            let (_, bytes) = welcome_starting_at(epoch, tag);
            forks.keep_welcome(&kv, 5, epoch, &bytes).expect("keep");
        }
        let kept: Vec<u64> = ForkMonitor::kept_welcomes(&kv, GROUP)
            .expect("read")
            .iter()
            .map(|w| w.epoch)
            .collect();
        assert_eq!(kept, [10, 9, 8, 7], "the newest four");
        // The first fails for good, the second needs identity logs.
        let mut tried = Vec::new();
        let result: Result<Option<()>, GroupError> =
            ForkMonitor::rejoin_from_kept(&kv, GROUP, 7, |payload| {
                tried.push(
                    WelcomePayload::from_bytes(payload)
                        .expect("decodes")
                        .welcome[0],
                );
                match tried.len() {
                    1 => Err(GroupError::InvalidInput("spent".into())),
                    _ => Err(GroupError::NeedIdentities(Vec::new())),
                }
            });
        assert!(matches!(result, Err(GroupError::NeedIdentities(_))));
        assert_eq!(tried, [5, 4]);
        let left: Vec<u64> = ForkMonitor::kept_welcomes(&kv, GROUP)
            .expect("read")
            .iter()
            .map(|w| w.epoch)
            .collect();
        assert_eq!(left, [9, 8, 7], "the one waiting for logs is kept");
        // A state joined at epoch 8 makes the ones up to it useless.
        ForkMonitor::forget(&kv, GROUP, 8).expect("forget");
        let left: Vec<u64> = ForkMonitor::kept_welcomes(&kv, GROUP)
            .expect("read")
            .iter()
            .map(|w| w.epoch)
            .collect();
        assert_eq!(left, [9]);
    }

    #[test]
    fn leaf_add_records_go_with_the_state_they_describe() {
        let (kv, _, forks) = setup();
        let installation = InstallationId([7; 32]);
        forks
            .leaf_added_now(&kv, &installation, 10, vec![1, 2])
            .expect("record");
        assert!(
            forks
                .leaf_added(&kv, &installation)
                .expect("read")
                .is_some()
        );
        ForkMonitor::forget(&kv, GROUP, 3).expect("forget");
        assert!(
            forks
                .leaf_added(&kv, &installation)
                .expect("read")
                .is_none()
        );
    }
}
