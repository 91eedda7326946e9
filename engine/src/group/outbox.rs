//! The [`Outbox`]: a group's durable intents and the payloads waiting to
//! be published (DESIGN.md section 7).
//!
//! It owns the intents (`'i'` records), the outbound payloads (`'o'`
//! records, mirrored in memory for [`Group::poll_outbound`]) and their
//! counters, and moves intents through their states:
//!
//! ```text
//!  queue ─► ToPublish ─► Proposed / Published ─► Committed ─► done (at settling)
//!                 ▲              │                    │
//!                 └── Regenerate ◄── lost a race, rolled back, forked
//!  any open state ─► Failed (kept, the newest KEPT_FAILED_INTENTS of them)
//! ```
//!
//! It never builds a commit, never touches the MLS state and never decides
//! which commit won: the group tells it what happened (a commit merged
//! with these proposals, a rollback to this epoch) and it updates the
//! intents that depends on.
//!
//! [`Group::poll_outbound`]: crate::group::Group::poll_outbound

use std::collections::{BTreeSet, VecDeque};

use super::{
    config::ProposalPolicy,
    content::WelcomePayload,
    conversation,
    error::GroupError,
    events::{Events, GroupEvent},
    history::RewindHistory,
    intent::{Intent, IntentKind, IntentState, ProposedChange, PublishedCommit},
    records::{ConversationId, Outbound, OutboxState, OwnCommit},
    shared_welcome,
    store::{ClientStore, KvStore},
};
use crate::delivery::{Cursor, Topic};

/// How many failed intents a group keeps in its store.
pub const KEPT_FAILED_INTENTS: usize = 32;

/// A group's intents and outbound payloads. See the module docs.
#[derive(Debug)]
pub(crate) struct Outbox {
    group_id: Vec<u8>,
    state: OutboxState,
    /// The stored payloads, oldest first, as the driver pulls them.
    queue: VecDeque<Outbound>,
}

impl Outbox {
    /// An empty outbox for a new group.
    pub(crate) fn new(group_id: &[u8], state: OutboxState) -> Self {
        Self {
            group_id: group_id.to_vec(),
            state,
            queue: VecDeque::new(),
        }
    }

    /// The outbox of a stored group, with its unpublished payloads.
    pub(crate) fn load<S: KvStore + ?Sized>(
        kv: &S,
        group_id: &[u8],
        state: OutboxState,
    ) -> Result<Self, GroupError> {
        Ok(Self {
            group_id: group_id.to_vec(),
            state,
            queue: ClientStore(kv).outbox(group_id)?.into(),
        })
    }

    /// The counters, for the group's record.
    pub(crate) fn state(&self) -> OutboxState {
        self.state
    }

    // ----- payloads --------------------------------------------------------

    /// Store `payload` for publishing on `topics`; `message_id` is the own
    /// message it carries, if any.
    pub(crate) fn push<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        topics: &[Topic],
        payload: Vec<u8>,
        message_id: Option<[u8; 32]>,
    ) -> Result<(), GroupError> {
        let item = Outbound {
            id: self.state.next_outbox_id,
            topics: topics.iter().map(Topic::to_string).collect(),
            payload,
            message_id,
        };
        self.state.next_outbox_id += 1;
        ClientStore(kv).push_outbox(&self.group_id, &item)?;
        self.queue.push_back(item);
        Ok(())
    }

    /// The next payload to publish; it stays stored until [`Self::ack`].
    pub(crate) fn poll(&mut self) -> Option<Outbound> {
        self.queue.pop_front()
    }

    /// The payloads waiting, without taking them.
    pub(crate) fn pending(&self) -> impl Iterator<Item = &Outbound> {
        self.queue.iter()
    }

    /// `item` was published: drop it, and mark the message it carries
    /// published in `conversation`.
    pub(crate) fn ack<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        item: &Outbound,
        conversation: &ConversationId,
    ) -> Result<(), GroupError> {
        ClientStore(kv).remove_outbox(&self.group_id, item.id)?;
        self.queue.retain(|o| o.id != item.id);
        if let Some(id) = item.message_id {
            conversation::mark_published(kv, conversation, &id)?;
        }
        Ok(())
    }

    /// Withdraw the unpublished payloads that carry `messages` (failed
    /// before they went out).
    pub(crate) fn withdraw<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        messages: &[[u8; 32]],
    ) -> Result<(), GroupError> {
        let store = ClientStore(kv);
        for item in store.outbox(&self.group_id)? {
            if item.message_id.is_some_and(|id| messages.contains(&id)) {
                store.remove_outbox(&self.group_id, item.id)?;
                self.queue.retain(|o| o.id != item.id);
            }
        }
        Ok(())
    }

    // ----- intents ---------------------------------------------------------

    /// The open intents (and the kept failed ones), oldest first.
    pub(crate) fn intents<S: KvStore + ?Sized>(&self, kv: &S) -> Result<Vec<Intent>, GroupError> {
        ClientStore(kv).intents(&self.group_id)
    }

    /// Store a new intent of `kind`; returns its id.
    pub(crate) fn queue<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        kind: IntentKind,
    ) -> Result<u64, GroupError> {
        let intent = Intent {
            id: self.state.next_intent_id,
            kind,
            state: IntentState::ToPublish,
        };
        self.state.next_intent_id += 1;
        ClientStore(kv).put_intent(&self.group_id, &intent)?;
        Ok(intent.id)
    }

    /// Whether a waiting intent of `kind` exists already.
    pub(crate) fn has_waiting(intents: &[Intent], kind: &IntentKind) -> bool {
        intents
            .iter()
            .any(|i| i.kind == *kind && i.state.is_waiting())
    }

    /// The proposal of ours, made in `epoch`, that nobody committed within
    /// the policy's wait: its proposer commits it now.
    pub(crate) fn due_proposal(
        intents: Vec<Intent>,
        epoch: u64,
        now_ms: u64,
        policy: ProposalPolicy,
    ) -> Option<(Intent, Vec<u8>)> {
        let intent = intents.into_iter().find(|i| match &i.state {
            IntentState::Proposed(p) => {
                p.epoch == epoch
                    && now_ms >= p.proposed_at_ms.saturating_add(policy.proposal_wait_ms)
            }
            _ => false,
        })?;
        let IntentState::Proposed(proposed) = &intent.state else {
            return None;
        };
        let proposal_ref = proposed.proposal_ref.clone();
        Some((intent, proposal_ref))
    }

    /// `intent` went out as a proposal, in `epoch`.
    pub(crate) fn proposed<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        mut intent: Intent,
        epoch: u64,
        proposal_ref: Vec<u8>,
        now_ms: u64,
    ) -> Result<(), GroupError> {
        intent.state = IntentState::Proposed(ProposedChange {
            epoch,
            proposal_ref,
            proposed_at_ms: now_ms,
        });
        ClientStore(kv).put_intent(&self.group_id, &intent)
    }

    /// `intent`'s commit is staged and queued for publishing.
    pub(crate) fn published<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        mut intent: Intent,
        commit: PublishedCommit,
        bytes: Vec<u8>,
    ) -> Result<(), GroupError> {
        intent.state = IntentState::Published(commit);
        ClientStore(kv).put_intent(&self.group_id, &intent)?;
        self.push(kv, &[Topic::Group(self.group_id.clone())], bytes, None)
    }

    /// `intent` must be built again on the current epoch.
    pub(crate) fn regenerate<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        mut intent: Intent,
    ) -> Result<(), GroupError> {
        intent.state = IntentState::Regenerate;
        ClientStore(kv).put_intent(&self.group_id, &intent)
    }

    /// `id` is carried out: it leaves the store.
    pub(crate) fn done<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        id: u64,
        events: &mut Events,
    ) -> Result<(), GroupError> {
        ClientStore(kv).remove_intent(&self.group_id, id)?;
        events.push_back(GroupEvent::IntentDone { id });
        Ok(())
    }

    /// Move an intent to `Failed` and tell the application. The newest
    /// [`KEPT_FAILED_INTENTS`] failed intents stay in the store, for
    /// inspection after a restart.
    pub(crate) fn fail<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        id: u64,
        reason: String,
        denied: bool,
        events: &mut Events,
    ) -> Result<(), GroupError> {
        let store = ClientStore(kv);
        let intents = store.intents(&self.group_id)?;
        if let Some(mut intent) = intents.iter().find(|i| i.id == id).cloned() {
            intent.state = IntentState::Failed {
                reason: reason.clone(),
                denied,
            };
            store.put_intent(&self.group_id, &intent)?;
        }
        let failed: Vec<u64> = intents
            .iter()
            .filter(|i| i.state.is_final() || i.id == id)
            .map(|i| i.id)
            .collect();
        for old in failed
            .iter()
            .take(failed.len().saturating_sub(KEPT_FAILED_INTENTS))
        {
            store.remove_intent(&self.group_id, *old)?;
        }
        events.push_back(GroupEvent::IntentFailed { id, reason, denied });
        Ok(())
    }

    /// This installation was removed: every intent still open fails. A
    /// merged commit of ours still owes its joiners their Welcome once it
    /// settles, so `Committed` intents stay.
    pub(crate) fn fail_open<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        reason: &str,
        events: &mut Events,
    ) -> Result<(), GroupError> {
        for intent in self.intents(kv)? {
            if intent.state.is_final() || matches!(intent.state, IntentState::Committed { .. }) {
                continue;
            }
            self.fail(kv, intent.id, reason.into(), false, events)?;
        }
        Ok(())
    }

    /// After a commit for `epoch` merged: proposals of ours that it
    /// included are carried out (`Committed` until it settles); those it
    /// left out are void in the new epoch and proposed again. So is an own
    /// commit that lost, unless the winner included its proposal. The
    /// intent of an own commit that won (`own_intent`) is its caller's.
    pub(crate) fn resolve<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        epoch: u64,
        included: &BTreeSet<Vec<u8>>,
        commit_hash: [u8; 32],
        own_intent: Option<u64>,
    ) -> Result<(), GroupError> {
        let store = ClientStore(kv);
        for mut intent in store.intents(&self.group_id)? {
            if Some(intent.id) == own_intent {
                continue;
            }
            let carried = match &intent.state {
                IntentState::Published(commit) => commit
                    .proposal_ref
                    .as_ref()
                    .is_some_and(|reference| included.contains(reference)),
                // An own commit leaves this installation's own key-update
                // proposal out and updates its keys by its path instead.
                IntentState::Proposed(p)
                    if own_intent.is_some() && intent.kind == IntentKind::UpdateKeys =>
                {
                    p.epoch == epoch
                }
                IntentState::Proposed(p) => included.contains(&p.proposal_ref),
                _ => continue,
            };
            intent.state = if carried {
                IntentState::Committed {
                    commit: PublishedCommit {
                        epoch,
                        commit_hash,
                        proposal_ref: None,
                    },
                    joiner_cursor: Cursor::default(),
                }
            } else {
                IntentState::Regenerate
            };
            store.put_intent(&self.group_id, &intent)?;
        }
        Ok(())
    }

    /// Our own commit `own` won its epoch: its intent (as read before the
    /// merge) is `Committed` until the epoch settles.
    pub(crate) fn own_commit_won<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        intent: Option<Intent>,
        own: &OwnCommit,
    ) -> Result<(), GroupError> {
        let Some(mut intent) = intent else {
            return Ok(());
        };
        let commit = match intent.state {
            IntentState::Published(commit) => commit,
            // Regenerated meanwhile, then rolled back to the state in
            // which this commit is pending: it is this commit that won.
            _ => PublishedCommit {
                epoch: own.epoch,
                commit_hash: own.hash,
                proposal_ref: None,
            },
        };
        intent.state = IntentState::Committed {
            commit,
            joiner_cursor: own.joiner_cursor.clone(),
        };
        ClientStore(kv).put_intent(&self.group_id, &intent)
    }

    /// A rollback restored `epoch` and `first_hash` won it: own commits
    /// that won on the old branch lost on this one, those built on its
    /// later epochs are gone with them, and proposals made there are void.
    pub(crate) fn rolled_back<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        epoch: u64,
        first_hash: [u8; 32],
    ) -> Result<(), GroupError> {
        for intent in self.intents(kv)? {
            let lost = match &intent.state {
                IntentState::Committed { commit, .. } => {
                    commit.epoch >= epoch && commit.commit_hash != first_hash
                }
                IntentState::Published(commit) => commit.epoch > epoch,
                IntentState::Proposed(proposed) => proposed.epoch > epoch,
                _ => false,
            };
            if lost {
                self.regenerate(kv, intent)?;
            }
        }
        Ok(())
    }

    /// The intents whose own commit merged in an epoch before `horizon`
    /// (settled): with the commit and where its joiners start reading.
    pub(crate) fn committed_before<S: KvStore + ?Sized>(
        &self,
        kv: &S,
        horizon: u64,
    ) -> Result<Vec<(u64, PublishedCommit, Cursor)>, GroupError> {
        Ok(self
            .intents(kv)?
            .into_iter()
            .filter_map(|intent| match intent.state {
                IntentState::Committed {
                    commit,
                    joiner_cursor,
                } if commit.epoch < horizon => Some((intent.id, commit, joiner_cursor)),
                _ => None,
            })
            .collect())
    }

    /// Finish the intents whose own commit merged in an epoch before
    /// `horizon`, which has settled: their Welcome (kept with the commit in
    /// `history`) goes out now, with the branch it leads into, and they are
    /// done.
    pub(crate) fn finish_settled<S: KvStore + ?Sized>(
        &mut self,
        kv: &S,
        horizon: u64,
        history: &RewindHistory,
        events: &mut Events,
    ) -> Result<(), GroupError> {
        for (id, commit, cursor) in self.committed_before(kv, horizon)? {
            if let Some(own) = history.own_commit(kv, &commit.commit_hash)?
                && let Some(welcome) = own.welcome
            {
                let payload = WelcomePayload {
                    welcome,
                    group_id: self.group_id.clone(),
                    cursor,
                    branch: history.branch_before(kv, commit.epoch + 1)?,
                    shared: None,
                };
                // A record without the joiners' references (written before
                // Welcomes were split), or a Welcome that cannot be cut,
                // goes out whole: larger, but never wrong.
                let split = match own.welcome_refs.len() == own.welcome_to.len() {
                    true => shared_welcome::split(&payload.welcome, &own.welcome_refs)
                        .ok()
                        .flatten(),
                    false => None,
                };
                match split {
                    Some(split) => {
                        // The shared parts first: a node serves them
                        // before the envelopes that name them.
                        let shared_topic = [split.shared.topic()];
                        for part in split.parts {
                            self.push(kv, &shared_topic, part, None)?;
                        }
                        for (joiner, own_part) in own.welcome_to.iter().zip(split.own) {
                            let payload = WelcomePayload {
                                welcome: own_part,
                                shared: Some(split.shared.clone()),
                                ..payload.clone()
                            };
                            self.push(kv, &[Topic::Welcome(*joiner)], payload.to_bytes(), None)?;
                        }
                    }
                    None => {
                        let topics: Vec<Topic> =
                            own.welcome_to.iter().copied().map(Topic::Welcome).collect();
                        self.push(kv, &topics, payload.to_bytes(), None)?;
                    }
                }
            }
            self.done(kv, id, events)?;
        }
        Ok(())
    }

    /// Forget what this installation had in flight on a branch it leaves
    /// for good (it joins the group again): a proposal or commit made there
    /// can never be included on the canonical branch, so the intent is
    /// rebuilt; nothing unpublished of the branch goes out.
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
        for item in store.outbox(group_id)? {
            store.remove_outbox(group_id, item.id)?;
        }
        Ok(())
    }
}

/// How an error from building an intent ends it: `Err` for an error that
/// may pass (identity logs to fetch, a failing store), which the caller
/// returns so that the intent waits; otherwise the reason it fails for
/// good, and whether the policy denied it. Anything that would fail the
/// same way on every retry must end the intent, or it would wedge the
/// group's intents behind it.
pub(crate) fn failure(error: GroupError) -> Result<(String, bool), GroupError> {
    match error {
        e @ (GroupError::NeedIdentities(_)
        | GroupError::IdentitiesDisputed(_)
        | GroupError::Store(_)
        | GroupError::Corrupt(_)) => Err(e),
        GroupError::NotPermitted(reason) => Ok((reason, true)),
        GroupError::InvalidInput(reason) => Ok((reason, false)),
        other => Ok((other.to_string(), false)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::{
        records::{Delivery, StoredMessage},
        store::MemoryKvStore,
    };

    const GROUP: &[u8] = b"group";

    fn outbox() -> (MemoryKvStore, Outbox) {
        (
            MemoryKvStore::default(),
            Outbox::new(GROUP, OutboxState::default()),
        )
    }

    fn states(outbox: &Outbox, kv: &MemoryKvStore) -> Vec<IntentState> {
        outbox
            .intents(kv)
            .expect("intents")
            .into_iter()
            .map(|i| i.state)
            .collect()
    }

    #[test]
    fn payloads_survive_a_reload_until_acknowledged() {
        let (kv, mut outbox) = outbox();
        let topic = Topic::Group(GROUP.to_vec());
        outbox
            .push(&kv, std::slice::from_ref(&topic), b"one".to_vec(), None)
            .expect("push");
        outbox
            .push(&kv, &[topic], b"two".to_vec(), None)
            .expect("push");
        let mut reloaded = Outbox::load(&kv, GROUP, outbox.state()).expect("load");
        let first = reloaded.poll().expect("first");
        assert_eq!(first.payload, b"one");
        let conversation = ConversationId(b"c".to_vec());
        reloaded.ack(&kv, &first, &conversation).expect("ack");
        let again = Outbox::load(&kv, GROUP, reloaded.state()).expect("load");
        let left: Vec<&[u8]> = again.pending().map(|o| o.payload.as_slice()).collect();
        assert_eq!(left, [b"two".as_slice()]);
        // Ids keep increasing across reloads.
        assert_eq!(again.state().next_outbox_id, 2);
    }

    #[test]
    fn an_ack_publishes_the_message_it_carries_unless_it_failed() {
        let (kv, mut outbox) = outbox();
        let conversation = ConversationId(b"c".to_vec());
        let store = ClientStore(&kv);
        for (id, delivery) in [(1u8, Delivery::Unpublished), (2, Delivery::Failed)] {
            store
                .insert_message(&StoredMessage {
                    conversation_id: conversation.clone(),
                    group_id: GROUP.to_vec(),
                    message_id: [id; 32],
                    sender_inbox: crate::identity::InboxId::from_bytes([1; 20]),
                    sender_installation: crate::identity::InstallationId([1; 32]),
                    content_type: "text/plain".into(),
                    body: Vec::new(),
                    sent_at_ms: 1,
                    time_ms: 1,
                    delivery,
                    unbound_leaf: None,
                    fallback: None,
                })
                .expect("insert");
            outbox
                .push(
                    &kv,
                    &[Topic::Group(GROUP.to_vec())],
                    vec![id],
                    Some([id; 32]),
                )
                .expect("push");
        }
        while let Some(item) = outbox.poll() {
            outbox.ack(&kv, &item, &conversation).expect("ack");
        }
        let stored: Vec<Delivery> = store
            .messages(&conversation)
            .expect("read")
            .iter()
            .map(|m| m.delivery)
            .collect();
        assert_eq!(stored, [Delivery::Published, Delivery::Failed]);
    }

    #[test]
    fn withdrawn_payloads_never_go_out() {
        let (kv, mut outbox) = outbox();
        let topic = Topic::Group(GROUP.to_vec());
        outbox
            .push(
                &kv,
                std::slice::from_ref(&topic),
                b"keep".to_vec(),
                Some([1; 32]),
            )
            .expect("push");
        outbox
            .push(&kv, &[topic], b"drop".to_vec(), Some([2; 32]))
            .expect("push");
        outbox.withdraw(&kv, &[[2; 32]]).expect("withdraw");
        let pending: Vec<&[u8]> = outbox.pending().map(|o| o.payload.as_slice()).collect();
        assert_eq!(pending, [b"keep".as_slice()]);
        let stored = ClientStore(&kv).outbox(GROUP).expect("read");
        assert_eq!(stored.len(), 1);
    }

    #[test]
    fn failed_intents_are_kept_up_to_the_bound() {
        let (kv, mut outbox) = outbox();
        let mut events = Events::new();
        for _ in 0..KEPT_FAILED_INTENTS + 3 {
            let id = outbox.queue(&kv, IntentKind::UpdateKeys).expect("queue");
            outbox
                .fail(&kv, id, "no".into(), false, &mut events)
                .expect("fail");
        }
        let kept = outbox.intents(&kv).expect("intents");
        assert_eq!(kept.len(), KEPT_FAILED_INTENTS);
        // The newest stay.
        assert_eq!(kept[0].id, 3);
        assert_eq!(events.len(), KEPT_FAILED_INTENTS + 3);
        assert!(
            events
                .iter()
                .all(|e| matches!(e, GroupEvent::IntentFailed { denied: false, .. }))
        );
    }

    #[test]
    fn a_merge_carries_included_proposals_and_voids_the_rest() {
        let (kv, mut outbox) = outbox();
        let included = outbox.queue(&kv, IntentKind::UpdateKeys).expect("queue");
        let left_out = outbox
            .queue(
                &kv,
                IntentKind::UpdateAttributes {
                    changes: vec![("name".into(), Some("x".into()))],
                },
            )
            .expect("queue");
        let intents = outbox.intents(&kv).expect("intents");
        outbox
            .proposed(&kv, intents[0].clone(), 3, b"in".to_vec(), 10)
            .expect("proposed");
        outbox
            .proposed(&kv, intents[1].clone(), 3, b"out".to_vec(), 10)
            .expect("proposed");
        outbox
            .resolve(&kv, 3, &BTreeSet::from([b"in".to_vec()]), [7; 32], None)
            .expect("resolve");
        let by_id: Vec<(u64, IntentState)> = outbox
            .intents(&kv)
            .expect("intents")
            .into_iter()
            .map(|i| (i.id, i.state))
            .collect();
        assert!(matches!(
            &by_id[0],
            (id, IntentState::Committed { commit, .. }) if *id == included && commit.commit_hash == [7; 32]
        ));
        assert_eq!(by_id[1], (left_out, IntentState::Regenerate));
    }

    #[test]
    fn a_rollback_regenerates_what_lost() {
        let (kv, mut outbox) = outbox();
        for _ in 0..4 {
            outbox.queue(&kv, IntentKind::UpdateKeys).expect("queue");
        }
        let intents = outbox.intents(&kv).expect("intents");
        let commit = |epoch, hash| PublishedCommit {
            epoch,
            commit_hash: hash,
            proposal_ref: None,
        };
        let store = ClientStore(&kv);
        let set = |i: usize, state: IntentState| {
            let mut intent = intents[i].clone();
            intent.state = state;
            store.put_intent(GROUP, &intent).expect("put");
        };
        // Won epoch 5 with the commit that wins again: stays.
        set(
            0,
            IntentState::Committed {
                commit: commit(5, [1; 32]),
                joiner_cursor: Cursor::default(),
            },
        );
        // Won epoch 6 on the old branch: lost.
        set(
            1,
            IntentState::Committed {
                commit: commit(6, [2; 32]),
                joiner_cursor: Cursor::default(),
            },
        );
        // Published for epoch 5 (the restored one): still in the race.
        set(2, IntentState::Published(commit(5, [3; 32])));
        // Published for epoch 7: built on the old branch.
        set(3, IntentState::Published(commit(7, [4; 32])));
        outbox.rolled_back(&kv, 5, [1; 32]).expect("roll back");
        let states = states(&outbox, &kv);
        assert!(matches!(states[0], IntentState::Committed { .. }));
        assert_eq!(states[1], IntentState::Regenerate);
        assert!(matches!(states[2], IntentState::Published(_)));
        assert_eq!(states[3], IntentState::Regenerate);
    }

    #[test]
    fn a_removed_member_fails_what_is_open_but_owes_its_welcomes() {
        let (kv, mut outbox) = outbox();
        outbox.queue(&kv, IntentKind::UpdateKeys).expect("queue");
        outbox.queue(&kv, IntentKind::UpdateKeys).expect("queue");
        let committed = outbox.intents(&kv).expect("intents")[1].clone();
        outbox
            .own_commit_won(
                &kv,
                Some(committed),
                &OwnCommit {
                    hash: [1; 32],
                    intent_id: 1,
                    epoch: 2,
                    auth_digest: [0; 8],
                    welcome: None,
                    welcome_to: Vec::new(),
                    welcome_refs: Vec::new(),
                    joiner_cursor: Cursor::default(),
                },
            )
            .expect("won");
        let mut events = Events::new();
        outbox
            .fail_open(&kv, "removed", &mut events)
            .expect("fail open");
        let states = states(&outbox, &kv);
        assert!(matches!(states[0], IntentState::Failed { .. }));
        assert!(matches!(states[1], IntentState::Committed { .. }));
        assert_eq!(outbox.committed_before(&kv, 3).expect("committed").len(), 1);
        assert!(
            outbox
                .committed_before(&kv, 2)
                .expect("committed")
                .is_empty()
        );
    }

    #[test]
    fn a_proposal_is_due_after_the_wait_in_its_own_epoch() {
        let (kv, mut outbox) = outbox();
        outbox.queue(&kv, IntentKind::UpdateKeys).expect("queue");
        let intent = outbox.intents(&kv).expect("intents").remove(0);
        outbox
            .proposed(&kv, intent, 4, b"ref".to_vec(), 100)
            .expect("proposed");
        let policy = ProposalPolicy {
            propose_first: true,
            proposal_wait_ms: 50,
        };
        let intents = || outbox.intents(&kv).expect("intents");
        assert!(Outbox::due_proposal(intents(), 4, 149, policy).is_none());
        assert!(Outbox::due_proposal(intents(), 5, 200, policy).is_none());
        let (_, reference) = Outbox::due_proposal(intents(), 4, 150, policy).expect("due");
        assert_eq!(reference, b"ref");
    }

    #[test]
    fn forgetting_a_branch_rebuilds_what_was_in_flight() {
        let (kv, mut outbox) = outbox();
        outbox.queue(&kv, IntentKind::UpdateKeys).expect("queue");
        let intent = outbox.intents(&kv).expect("intents").remove(0);
        outbox
            .published(
                &kv,
                intent,
                PublishedCommit {
                    epoch: 1,
                    commit_hash: [1; 32],
                    proposal_ref: None,
                },
                b"commit".to_vec(),
            )
            .expect("published");
        Outbox::forget_branch(&kv, GROUP).expect("forget");
        assert_eq!(states(&outbox, &kv), [IntentState::Regenerate]);
        assert!(ClientStore(&kv).outbox(GROUP).expect("read").is_empty());
    }

    #[test]
    fn build_errors_that_may_pass_keep_the_intent() {
        assert!(failure(GroupError::NeedIdentities(Vec::new())).is_err());
        assert!(failure(GroupError::Store("down".into())).is_err());
        assert_eq!(
            failure(GroupError::NotPermitted("admins only".into())).expect("ends"),
            ("admins only".to_string(), true)
        );
        assert_eq!(
            failure(GroupError::InvalidInput("not a member".into())).expect("ends"),
            ("not a member".to_string(), false)
        );
        assert_eq!(
            failure(GroupError::NotMember).expect("ends"),
            (GroupError::NotMember.to_string(), false)
        );
    }
}
