//! [`Parts`]: the parts of one group, held together, and the procedures
//! that touch several of them at once.
//!
//! A group is its MLS state ([`Mls`]), its outbox, its rewind history, its
//! fork monitor, its deniable bindings (in a deniable DM), what it keeps of
//! its own (the conversation it belongs to, when it joined, when it last
//! published an epoch digest), and the events waiting for the application.
//! [`Group`](super::Group) is the public face of a `Parts`, and
//! [`Input`](super::input::Input) routes an envelope through one.
//!
//! Most work belongs to one part. What spans several is here: settling an
//! epoch (the history deletes the snapshot, the fork monitor learns whether
//! a rollback it expected never came, the outbox sends the Welcomes that
//! waited), flagging a fork (the conversation fails what was sent on it,
//! the outbox withdraws what did not go out yet, the fork monitor records
//! it), keeping a deniable DM's exporter, and storing the group's record.
//! Nothing here decides how to route an envelope or build an intent.

use std::collections::{BTreeMap, BTreeSet};

use super::{
    bindings::Bindings,
    conversation,
    error::GroupError,
    events::{Events, GroupEvent},
    forks::{ForkEvidence, ForkMonitor},
    history::RewindHistory,
    intent::{Intent, PublishedCommit},
    metadata::GroupMetadata,
    mls::{Built, Mls},
    mls_config::MAX_PAST_EPOCHS,
    outbox::{self, Outbox},
    records::{ConversationId, CoreState, DeniableState, OwnCommit, RecordParts},
    roster::{Roster, leaf_identity},
    store::{ClientStore, GroupSnapshots, KvStore},
    validate,
};
use crate::{
    delivery::{Envelope, Topic},
    identity::{InboxId, InstallationId},
};
use openmls_traits::OpenMlsProvider;
use sha2::{Digest as _, Sha256};

/// The parts of one group. See the module docs.
#[derive(Debug)]
pub(crate) struct Parts {
    pub(crate) mls: Mls,
    pub(crate) core: CoreState,
    pub(crate) outbox: Outbox,
    pub(crate) history: RewindHistory,
    pub(crate) forks: ForkMonitor,
    /// In a deniable DM, who is behind each pseudonymous leaf.
    pub(crate) bindings: Option<Bindings>,
    pub(crate) events: Events,
}

impl Parts {
    /// Assemble a group from its MLS state and stored record, with its
    /// outbox (loaded with its unpublished payloads), or an empty one.
    pub(crate) fn new(mls: Mls, record: RecordParts, outbox: Option<Outbox>) -> Self {
        let group_id = mls.group_id().to_vec();
        Self {
            outbox: outbox.unwrap_or_else(|| Outbox::new(&group_id, record.outbox)),
            history: RewindHistory::new(&group_id, record.history),
            forks: ForkMonitor::new(&group_id, record.forks),
            bindings: record.deniable.map(|state| Bindings::new(&group_id, state)),
            core: record.core,
            mls,
            events: Events::new(),
        }
    }

    /// What the group stores of its parts.
    pub(crate) fn record(&self) -> RecordParts {
        RecordParts {
            core: self.core.clone(),
            outbox: self.outbox.state(),
            history: self.history.state(),
            forks: self.forks.state().clone(),
            deniable: self.bindings.as_ref().map(|b| b.state().clone()),
        }
    }

    /// Store the group's record: every public call that changes the group
    /// ends with it, inside the driver's step.
    pub(crate) fn save<S: KvStore + ?Sized>(&self, kv: &S) -> Result<(), GroupError> {
        ClientStore(kv).put_group_record(self.group_id(), &self.record().into_record())
    }

    // ----- what every part asks ----------------------------------------------

    /// The MLS group id.
    pub(crate) fn group_id(&self) -> &[u8] {
        self.mls.group_id()
    }

    /// The current epoch.
    pub(crate) fn epoch(&self) -> u64 {
        self.mls.epoch()
    }

    /// The metadata of the current epoch.
    pub(crate) fn metadata(&self) -> &GroupMetadata {
        self.mls.metadata()
    }

    /// The conversation this group belongs to.
    pub(crate) fn conversation_id(&self) -> ConversationId {
        self.core
            .conversation_id
            .clone()
            .unwrap_or_else(|| ConversationId(self.group_id().to_vec()))
    }

    /// For a DM, the inbox that is not `me`.
    pub(crate) fn dm_peer(&self, me: InboxId) -> Option<InboxId> {
        validate::dm_peer(self.metadata(), me)
    }

    /// In a deniable DM, the bindings' state.
    pub(crate) fn deniable(&self) -> Option<&DeniableState> {
        self.bindings.as_ref().map(Bindings::state)
    }

    /// Who the leaves are; [`GroupError::NotMember`] once the state is
    /// retired.
    pub(crate) fn roster(&self) -> Result<Roster<'_>, GroupError> {
        Ok(Roster::new(self.mls.group()?, self.deniable()))
    }

    /// The members' installations, by inbox (the last epoch's, once
    /// retired).
    pub(crate) fn members(&self) -> BTreeMap<InboxId, BTreeSet<InstallationId>> {
        self.mls.members(self.deniable())
    }

    /// This installation. Groups stored before the record named it: the
    /// leaf does, while this installation is a member.
    pub(crate) fn own_installation(&self) -> InstallationId {
        self.core.own_installation.unwrap_or_else(|| {
            self.mls
                .group()
                .ok()
                .and_then(|group| leaf_identity(group, group.own_leaf_index()))
                .map_or(InstallationId::UNKNOWN, |(_, installation)| installation)
        })
    }

    /// Whether an application message must wait: on a fork (nobody would
    /// read it), while proposals wait for a commit (MLS sends none), or in
    /// a deniable DM not yet verified both ways.
    pub(crate) fn must_hold_messages(&self) -> bool {
        self.forks.is_forked() || self.mls.has_pending_proposals() || self.awaiting_bindings()
    }

    fn awaiting_bindings(&self) -> bool {
        let Ok(group) = self.mls.group() else {
            return false;
        };
        self.bindings
            .as_ref()
            .is_some_and(|b| b.awaiting(group.members()))
    }

    // ----- procedures across parts -------------------------------------------

    /// This installation is on a fork: take back what it sent there (the
    /// first time), to go out again with the same ids in the group joined
    /// again, and record the fork; `advance` then asks to be re-added.
    pub(crate) fn flag_fork<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        found: ForkEvidence,
        now_ms: u64,
    ) -> Result<(), GroupError> {
        if !self.forks.is_forked() {
            let (conversation, me) = (self.conversation_id(), self.own_installation());
            let group_id = self.group_id().to_vec();
            let taken = conversation::take_back_sent_since(
                kv,
                &conversation,
                &group_id,
                me,
                found.since_ms,
            )?;
            let ids: Vec<[u8; 32]> = taken.iter().map(|(id, _)| *id).collect();
            // Not published yet: it must not go out on the fork either.
            self.outbox.withdraw(kv, &ids)?;
            let (epoch, auth) = (self.epoch(), self.mls.auth_digest());
            for (id, content) in taken {
                self.history
                    .track_send(kv, id, content, epoch, auth, true)?;
            }
        }
        let epoch = self.epoch();
        self.forks.flag(found, epoch, now_ms, &mut self.events);
        Ok(())
    }

    /// Settle what is due: delete snapshots whose transition settled (by
    /// time, or because the ring is over its bound), then finish what
    /// waited for settling below the oldest snapshot left: own commits
    /// (their Welcomes go out now) and own messages.
    ///
    /// `synced_ms` is the time up to which the topic has been read (`None`
    /// applies only the ring's bound); `now_ms` measures snapshot ages.
    pub(crate) fn settle<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        synced_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<(), GroupError> {
        let settlement = self.history.settle_ring(kv, synced_ms, now_ms)?;
        for snapshot in &settlement.settled {
            self.forks.settled(snapshot);
            // An earlier commit that was kept but never applied is now as
            // good as one that arrived late: if a member's branch took it,
            // this one lost.
            for key in self.history.unapplied_earlier_commits(kv, snapshot)? {
                let (epoch, applied) = (snapshot.epoch, snapshot.commit_key);
                if let Some(found) = self.forks.late_commit(epoch, key, applied) {
                    self.flag_fork(kv, found, now_ms)?;
                }
            }
        }
        let oldest = settlement.oldest_kept.as_ref();
        let horizon = oldest.map_or(self.epoch(), |s| s.epoch);
        self.outbox
            .finish_settled(kv, horizon, &self.history, &mut self.events)?;
        let keep_from = oldest.map_or(u64::MAX, |s| s.arrival);
        self.history.forget_settled(kv, horizon, keep_from)?;
        if !settlement.settled.is_empty() {
            let stats = self.history.stats();
            self.events.push_back(GroupEvent::Settled { stats });
        }
        Ok(())
    }

    /// Delete the group's secrets for good once this installation is out
    /// of it and nothing can need them again (RFC 9420 section 8 asks a
    /// removed member to delete its group secrets, for forward secrecy):
    /// its removal settled (no snapshot is left, so no rollback can undo
    /// it) and is `grace_ms` old (a fork found later needs the state: see
    /// [`GroupConfig::retire_grace_ms`](super::GroupConfig::retire_grace_ms)),
    /// nothing of its own waits to go out or to be re-sent (own commits of
    /// settled epochs are stale: they are dropped), and it is not on a fork
    /// (healing one needs the state). Deleted in this step: the
    /// MLS state, snapshots, retained envelopes, own commits and sends,
    /// claim keys, binding exporters, kept Welcomes and the deniable leaf
    /// key. What stays is public
    /// ([`RetiredGroup`](super::records::RetiredGroup)): enough to show the
    /// conversation and to check that a later Welcome continues it. The
    /// messages stay. Returns whether it retired the group.
    pub(crate) fn retire_if_done<S: GroupSnapshots + ?Sized>(
        &mut self,
        kv: &S,
        now_ms: u64,
        grace_ms: u64,
    ) -> Result<bool, GroupError> {
        if self.mls.is_active() || self.mls.is_retired() || self.forks.is_forked() {
            return Ok(false);
        }
        let removed_at = self.core.removed_at_ms.unwrap_or(0);
        if grace_ms > 0 && now_ms < removed_at.saturating_add(grace_ms) {
            return Ok(false);
        }
        let group_id = self.group_id().to_vec();
        let store = ClientStore(kv);
        let busy = self.history.ring_len(kv)? > 0
            || self.outbox.pending().next().is_some()
            || store
                .intents(&group_id)?
                .iter()
                .any(|i| !i.state.is_final())
            || !store.own_sends(&group_id)?.is_empty();
        if busy {
            return Ok(false);
        }
        let members = self.members();
        let retired = self.mls.retire(&members, now_ms)?;
        let leaf_key = self.bindings.take().map(|b| b.state().own_leaf_key);
        RewindHistory::forget(kv, &group_id)?;
        Bindings::forget(kv, &group_id)?;
        ForkMonitor::forget(kv, &group_id, u64::MAX)?;
        kv.delete_group(&group_id).map_err(GroupError::store)?;
        store.put_retired_group(&retired)?;
        // Saved first: the key is kept while any group record names it.
        self.save(kv)?;
        if let Some(key) = leaf_key {
            store.retire_ephemeral_key(&key)?;
        }
        Ok(true)
    }

    /// Keep the current epoch's binding exporter secret (deniable DMs only),
    /// so that a binding sent in it can be checked after the group moved on.
    pub(crate) fn keep_exporter<P: OpenMlsProvider, S: KvStore + ?Sized>(
        &self,
        provider: &P,
        kv: &S,
    ) -> Result<(), GroupError> {
        let Some(bindings) = &self.bindings else {
            return Ok(());
        };
        if !self.mls.is_active() {
            return Ok(());
        }
        let secret = self.mls.binding_exporter(provider)?;
        let keep = MAX_PAST_EPOCHS as u64 + 1;
        let (epoch, auth) = (self.epoch(), self.mls.auth_digest());
        bindings.keep_exporter(kv, epoch, auth, &secret, keep)
    }

    /// Record what became of `intent` (whose commit, if it is one, carries
    /// the intent's proposal `proposal_ref`). Returns whether a commit of
    /// ours is now published: it must come back before the next intent.
    pub(crate) fn built<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        intent: Intent,
        built: Result<Built, GroupError>,
        proposal_ref: Option<Vec<u8>>,
        now_ms: u64,
    ) -> Result<bool, GroupError> {
        let topics = [Topic::Group(self.group_id().to_vec())];
        match built {
            Ok(Built::Proposed { message, reference }) => {
                self.outbox.push(kv, &topics, message, None)?;
                let epoch = self.epoch();
                self.outbox.proposed(kv, intent, epoch, reference, now_ms)?;
            }
            Ok(Built::Commit {
                commit,
                welcome,
                welcome_to,
                welcome_refs,
            }) => {
                let published = PublishedCommit {
                    epoch: self.epoch(),
                    commit_hash: Sha256::digest(&commit).into(),
                    proposal_ref,
                };
                let own = OwnCommit {
                    hash: published.commit_hash,
                    intent_id: intent.id,
                    epoch: published.epoch,
                    auth_digest: self.mls.auth_digest(),
                    welcome,
                    welcome_to,
                    welcome_refs,
                    joiner_cursor: ClientStore(kv).cursor(&topics[0])?,
                };
                self.history.put_own_commit(kv, &own)?;
                self.outbox.published(kv, intent, published, commit)?;
                return Ok(true);
            }
            Ok(Built::Leave(proposal)) => {
                self.outbox.push(kv, &topics, proposal, None)?;
                self.outbox.done(kv, intent.id, &mut self.events)?;
            }
            Ok(Built::Done) => self.outbox.done(kv, intent.id, &mut self.events)?,
            Err(e) => {
                let (reason, denied) = outbox::failure(e)?;
                self.outbox
                    .fail(kv, intent.id, reason, denied, &mut self.events)?;
            }
        }
        Ok(false)
    }

    /// See [`Group::skip_envelope`](super::Group::skip_envelope).
    pub(crate) fn skip_envelope<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        envelope: &Envelope,
        reason: String,
    ) -> Result<(), GroupError> {
        let store = ClientStore(kv);
        let topic = Topic::Group(self.group_id().to_vec());
        if envelope.topic != topic {
            return Err(GroupError::InvalidInput(format!(
                "envelope of {} handed to group {}",
                envelope.topic, topic
            )));
        }
        let mut cursor = store.cursor(&topic)?;
        if !cursor.is_before(envelope) {
            return Ok(());
        }
        cursor.advance(envelope);
        store.put_cursor(&topic, &cursor)?;
        self.events
            .push_back(GroupEvent::EnvelopeSkipped { reason });
        Ok(())
    }
}
