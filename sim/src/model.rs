//! The model of what every client's message list must hold, built from
//! what the simulator saw happen, and the check of every list against it.
//!
//! The simulator records, as the run goes: every message written (who
//! wrote it, when), every copy its sender queued (a re-send after a lost
//! epoch is another copy, in another epoch), when each copy's envelopes
//! were stamped, which states (epoch and authenticator digest) each client
//! was in, and which envelopes it handled, in which state.
//! Each client's life in the group is split into *incarnations*: creating
//! or joining starts one, and a join after a fork or a removal ends it.
//!
//! A message's *canonical copy* is the last one its sender queued. At the
//! end, every client's whole stored list (ids, order, delivery state) is
//! compared with what the model allows:
//!
//! - each message is stored once and announced once (one `Message`
//!   event), the list is in time order, and each received message is in
//!   the state its events last announced (`Message` and `MessageConfirmed`
//!   deliver, `MessageSuperseded` supersedes);
//! - a received message is stored at the stamp of one of its copies, an
//!   own one when its last copy was queued (or when it was written, if no
//!   copy was; a failed one may be later, if the step that failed it
//!   encrypted it once more first);
//! - a received message held as delivered was readable by the holder: in
//!   the same incarnation it handled one of its copies, and was in that
//!   copy's state (same epoch, same branch) at some point;
//! - nobody holds a message whose canonical copy is from before its first
//!   join;
//! - a member in its last incarnation, active and not on a fork, holds
//!   every other message of its time (canonical copy at or after its
//!   join) as delivered, unless the sender was told it failed; in an
//!   incarnation that ended, it holds a message if it handled the
//!   canonical copy while in exactly that copy's state;
//! - the sender holds its own message: failed if it was told so, else
//!   delivered, or still waiting if it ends on a fork nobody re-adds it
//!   from.
//!
//! A message its sender was told failed may still be held as delivered by
//! a member that was on the sender's branch (the previous rule makes sure
//! it could read it): failing tells the sender that the group did not get
//! it, and the group's canonical members do not.
//!
//! A power loss takes back what a client recorded since its last flush
//! (messages written, copies queued, states seen, envelopes handled,
//! joins): it lost those steps, as it lost the store they were in.

use std::collections::{BTreeMap, BTreeSet};

use kith_engine::group::{Delivery, GroupEvent, StoredMessage};

use crate::trace::hex8;

/// A state of the group as one client had it: epoch and authenticator
/// digest.
pub type State = (u64, [u8; 8]);

/// One queued copy of a message: its payload's hash, when it was queued,
/// and the state it was encrypted in.
#[derive(Clone, Debug)]
struct Copy {
    hash: [u8; 32],
    queued_ms: u64,
    state: State,
}

/// A message as the model knows it.
#[derive(Debug)]
struct Message {
    sender: usize,
    written_ms: u64,
    copies: Vec<Copy>,
    /// How many copies the sender had flushed.
    flushed_copies: usize,
}

/// What the model knows of one client. Each list grows in order, and a
/// power loss cuts it back to its length at the last flush.
#[derive(Debug, Default, Clone)]
struct ClientLog {
    /// Messages it wrote.
    written: Vec<[u8; 32]>,
    /// `(incarnation, state)` it was seen in.
    observed: Vec<(u32, State)>,
    /// `(incarnation, payload hash, its state then)` of envelopes it
    /// handled, in a step that committed.
    handled: Vec<(u32, [u8; 32], State)>,
    /// The epoch of each incarnation's join.
    joins: BTreeMap<u32, u64>,
}

/// How long a client's lists were, and its joins, at its last flush.
#[derive(Debug, Default, Clone)]
struct Mark {
    written: usize,
    observed: usize,
    handled: usize,
    joins: BTreeMap<u32, u64>,
}

/// A client as the final check sees it.
#[derive(Debug)]
pub struct Holder<'a> {
    /// Its index.
    pub index: usize,
    /// Its stored messages, in the store's order.
    pub messages: &'a [StoredMessage],
    /// Every event it emitted.
    pub events: &'a [GroupEvent],
    /// Its incarnation now.
    pub incarnation: u32,
    /// Whether it ends as an active member not on a fork.
    pub member: bool,
    /// Whether it ends on a fork that nobody re-adds it from (the members
    /// removed it meanwhile): what it wrote there may still wait.
    pub stranded: bool,
}

/// The model. See the module docs.
#[derive(Debug, Default)]
pub struct Model {
    messages: BTreeMap<[u8; 32], Message>,
    clients: BTreeMap<usize, ClientLog>,
    /// Per client, where its log stood at its last flush.
    flushed: BTreeMap<usize, Mark>,
    /// Per payload hash, the originator times of its envelopes.
    stamps: BTreeMap<[u8; 32], Vec<u64>>,
}

impl Model {
    fn log(&mut self, client: usize) -> &mut ClientLog {
        self.clients.entry(client).or_default()
    }

    /// `client` wrote message `id` at `now`.
    pub fn written(&mut self, client: usize, id: [u8; 32], now: u64) {
        self.message(client, id, now);
        self.log(client).written.push(id);
    }

    /// `client`, the sender, queued a copy of `id` (payload `hash`) at
    /// `now`, in `state`. The engine queues the first copy inside the call
    /// that writes the message, so this may come before [`Model::written`].
    pub fn queued(&mut self, client: usize, id: [u8; 32], hash: [u8; 32], now: u64, state: State) {
        self.message(client, id, now).copies.push(Copy {
            hash,
            queued_ms: now,
            state,
        });
    }

    fn message(&mut self, sender: usize, id: [u8; 32], now: u64) -> &mut Message {
        self.messages.entry(id).or_insert(Message {
            sender,
            written_ms: now,
            copies: Vec::new(),
            flushed_copies: 0,
        })
    }

    /// How many messages were written (and not lost to a power loss).
    pub fn written_count(&self) -> usize {
        self.messages.len()
    }

    /// An envelope carrying `hash` was stamped at `time`.
    pub fn stamped(&mut self, hash: [u8; 32], time: u64) {
        self.stamps.entry(hash).or_default().push(time);
    }

    /// `client` joined (or created) the group as `incarnation` at `epoch`.
    pub fn joined(&mut self, client: usize, incarnation: u32, epoch: u64) {
        self.log(client).joins.insert(incarnation, epoch);
    }

    /// `client`, in `incarnation`, was in `state`.
    pub fn observed(&mut self, client: usize, incarnation: u32, state: State) {
        let log = self.log(client);
        if !log.observed.contains(&(incarnation, state)) {
            log.observed.push((incarnation, state));
        }
    }

    /// `client`, in `incarnation` and in `state`, handled an envelope
    /// carrying `hash`, in a step that committed.
    pub fn handled(&mut self, client: usize, incarnation: u32, hash: [u8; 32], state: State) {
        self.log(client).handled.push((incarnation, hash, state));
    }

    /// `client` flushed its store: what it recorded so far survives a power
    /// loss.
    pub fn flushed(&mut self, client: usize) {
        let log = self.log(client);
        let mark = Mark {
            written: log.written.len(),
            observed: log.observed.len(),
            handled: log.handled.len(),
            joins: log.joins.clone(),
        };
        self.flushed.insert(client, mark);
        for message in self.messages.values_mut() {
            if message.sender == client {
                message.flushed_copies = message.copies.len();
            }
        }
    }

    /// `client` lost power: take back what it recorded since its flush.
    pub fn power_lost(&mut self, client: usize) {
        let mark = self.flushed.get(&client).cloned().unwrap_or_default();
        let log = self.log(client);
        let lost: Vec<[u8; 32]> = log
            .written
            .drain(mark.written.min(log.written.len())..)
            .collect();
        log.observed.truncate(mark.observed);
        log.handled.truncate(mark.handled);
        log.joins = mark.joins;
        for id in lost {
            self.messages.remove(&id);
        }
        for message in self.messages.values_mut() {
            if message.sender == client {
                message.copies.truncate(message.flushed_copies);
            }
        }
    }

    /// Compare every holder's stored list with the model; returns what does
    /// not hold.
    pub fn check(&self, holders: &[Holder<'_>]) -> Vec<String> {
        let failed: BTreeSet<[u8; 32]> = holders
            .iter()
            .flat_map(|h| h.events.iter())
            .filter_map(|e| match e {
                GroupEvent::MessageFailed { message_id, .. } => Some(*message_id),
                _ => None,
            })
            .collect();
        // A sender still on a fork holds what it sent there unpublished,
        // to send again once it is re-added: nobody else need have it yet.
        let waiting: BTreeSet<[u8; 32]> = holders
            .iter()
            .filter(|h| h.stranded)
            .flat_map(|h| h.messages.iter())
            .filter(|m| m.delivery == Delivery::Unpublished)
            .map(|m| m.message_id)
            .collect();
        let excused: BTreeSet<[u8; 32]> = failed.union(&waiting).copied().collect();
        let mut out = Vec::new();
        for holder in holders {
            let empty = ClientLog::default();
            let log = self.clients.get(&holder.index).unwrap_or(&empty);
            check_list(holder, &mut out);
            self.check_against_model(holder, log, &failed, &excused, &mut out);
        }
        out
    }

    fn check_against_model(
        &self,
        holder: &Holder<'_>,
        log: &ClientLog,
        failed: &BTreeSet<[u8; 32]>,
        excused: &BTreeSet<[u8; 32]>,
        out: &mut Vec<String>,
    ) {
        let index = holder.index;
        let stored: BTreeMap<[u8; 32], &StoredMessage> =
            holder.messages.iter().map(|m| (m.message_id, m)).collect();
        let observed: BTreeSet<(u32, State)> = log.observed.iter().copied().collect();
        let first_join = log.joins.values().min().copied();
        for (id, model) in &self.messages {
            let held = stored.get(id).copied();
            if model.sender == index {
                check_own(holder, id, model, held, failed, out);
                continue;
            }
            let required = !excused.contains(id) && required(holder, log, model);
            let Some(held) = held else {
                if required {
                    out.push(format!(
                        "client {index} never got message {} of client {}",
                        hex8(id),
                        model.sender
                    ));
                }
                continue;
            };
            let in_time = model.copies.iter().any(|c| {
                self.stamps
                    .get(&c.hash)
                    .is_some_and(|t| t.contains(&held.time_ms))
            });
            if !in_time {
                out.push(format!(
                    "client {index} holds message {} at {}, the time of none of its copies",
                    hex8(id),
                    held.time_ms
                ));
            }
            // Any copy will do: a member re-added after a fork re-sends what
            // it sent there in an epoch of the branch that won, which may be
            // earlier than the fork's epoch a joiner of the fork read it in.
            if let (Some(join), Some(latest)) =
                (first_join, model.copies.iter().map(|c| c.state.0).max())
                && latest < join
            {
                out.push(format!(
                    "client {index} holds message {} of epoch {latest}, from before it first \
                     joined (epoch {join})",
                    hex8(id),
                ));
            }
            match held.delivery {
                Delivery::Published => {
                    let readable = model.copies.iter().any(|c| {
                        log.handled.iter().any(|(incarnation, hash, _)| {
                            *hash == c.hash && observed.contains(&(*incarnation, c.state))
                        })
                    });
                    if !readable {
                        out.push(format!(
                            "client {index} holds message {} of client {} as delivered, but never \
                             handled a copy of it in that copy's epoch",
                            hex8(id),
                            model.sender
                        ));
                    }
                }
                Delivery::Superseded if !required => {}
                other => out.push(format!(
                    "client {index} holds message {} of client {} as {other:?}",
                    hex8(id),
                    model.sender
                )),
            }
        }
        for id in stored.keys() {
            if !self.messages.contains_key(id) {
                out.push(format!(
                    "client {index} stores message {}, which nobody wrote",
                    hex8(id)
                ));
            }
        }
    }
}

/// The list's own invariants: one record per id, in time order, each
/// announced once and in the state its events last announced.
fn check_list(holder: &Holder<'_>, out: &mut Vec<String>) {
    let index = holder.index;
    for pair in holder.messages.windows(2) {
        if (pair[0].time_ms, pair[0].message_id) > (pair[1].time_ms, pair[1].message_id) {
            out.push(format!(
                "client {index}: message {} at {} is listed before message {} at {}",
                hex8(&pair[0].message_id),
                pair[0].time_ms,
                hex8(&pair[1].message_id),
                pair[1].time_ms
            ));
        }
    }
    let mut ids = BTreeSet::new();
    for message in holder.messages {
        if !ids.insert(message.message_id) {
            out.push(format!(
                "client {index} stores message {} twice",
                hex8(&message.message_id)
            ));
        }
    }
    let mut announced: BTreeMap<[u8; 32], usize> = BTreeMap::new();
    // Per received message, the delivery state its events last announced;
    // own messages are announced as written (unpublished) and followed by
    // no event when they go out.
    let mut announced_state: BTreeMap<[u8; 32], Delivery> = BTreeMap::new();
    let mut own = BTreeSet::new();
    for event in holder.events {
        match event {
            GroupEvent::Message(m) => {
                *announced.entry(m.message_id).or_default() += 1;
                if m.delivery == Delivery::Unpublished {
                    own.insert(m.message_id);
                }
                announced_state.insert(m.message_id, m.delivery);
            }
            GroupEvent::MessageSuperseded { message_id } => {
                announced_state.insert(*message_id, Delivery::Superseded);
            }
            GroupEvent::MessageConfirmed { message_id } => {
                announced_state.insert(*message_id, Delivery::Published);
            }
            _ => {}
        }
    }
    for (id, count) in &announced {
        if *count != 1 {
            out.push(format!(
                "client {index} announced message {} {count} times",
                hex8(id)
            ));
        }
    }
    for message in holder.messages {
        let id = &message.message_id;
        if !announced.contains_key(id) {
            out.push(format!(
                "client {index} stores message {} it never announced",
                hex8(id)
            ));
        } else if !own.contains(id) && announced_state.get(id) != Some(&message.delivery) {
            out.push(format!(
                "client {index} holds message {} as {:?}, but its events last said {:?}",
                hex8(id),
                message.delivery,
                announced_state.get(id)
            ));
        }
    }
}

/// Whether `holder` must hold `model` (a message of another client's that
/// did not fail) as delivered.
fn required(holder: &Holder<'_>, log: &ClientLog, model: &Message) -> bool {
    let Some(canonical) = model.copies.last() else {
        return false;
    };
    if holder.member
        && log
            .joins
            .get(&holder.incarnation)
            .is_some_and(|join| canonical.state.0 >= *join)
    {
        return true;
    }
    log.handled
        .iter()
        .any(|(_, hash, state)| *hash == canonical.hash && *state == canonical.state)
}

fn check_own(
    holder: &Holder<'_>,
    id: &[u8; 32],
    model: &Message,
    held: Option<&StoredMessage>,
    failed: &BTreeSet<[u8; 32]>,
    out: &mut Vec<String>,
) {
    let index = holder.index;
    let Some(held) = held else {
        out.push(format!("client {index} lost its own message {}", hex8(id)));
        return;
    };
    let expected = if failed.contains(id) {
        Delivery::Failed
    } else {
        Delivery::Published
    };
    let waiting = holder.stranded && held.delivery == Delivery::Unpublished;
    if held.delivery != expected && !waiting {
        out.push(format!(
            "client {index} holds its own message {} as {:?}, not {expected:?}",
            hex8(id),
            held.delivery
        ));
    }
    let time = model
        .copies
        .last()
        .map_or(model.written_ms, |c| c.queued_ms);
    // A message that failed, or waits on a fork, may have been encrypted
    // once more, and that copy withdrawn, in the step that found the fork:
    // it is stored when that copy was made, which the model never saw
    // queued.
    let in_place = if expected == Delivery::Failed || waiting {
        held.time_ms >= time
    } else {
        held.time_ms == time
    };
    if !in_place {
        out.push(format!(
            "client {index} holds its own message {} at {}, not at {time} (when it last went out)",
            hex8(id),
            held.time_ms
        ));
    }
}

#[cfg(test)]
mod tests {
    //! The model's checks fail on the defects they exist for.

    use kith_engine::{
        group::{ConversationId, Delivery, GroupEvent, StoredMessage},
        identity::{InboxId, InstallationId},
    };

    use super::{Holder, Model};

    const STATE: (u64, [u8; 8]) = (3, [7; 8]);
    const ID: [u8; 32] = [1; 32];
    const COPY: [u8; 32] = [2; 32];
    const STAMP: u64 = 1_000;

    /// Client 0 wrote one message in `STATE`, stamped at `STAMP`; client
    /// 1 joined at epoch 0, was in `STATE` and handled the copy.
    fn model() -> Model {
        let mut model = Model::default();
        model.joined(0, 1, 0);
        model.joined(1, 1, 0);
        model.queued(0, ID, COPY, 900, STATE);
        model.written(0, ID, 900);
        model.stamped(COPY, STAMP);
        model.observed(1, 1, STATE);
        model.handled(1, 1, COPY, STATE);
        model
    }

    fn stored(delivery: Delivery, time_ms: u64) -> StoredMessage {
        StoredMessage {
            conversation_id: ConversationId(vec![9]),
            group_id: vec![9],
            message_id: ID,
            sender_inbox: InboxId::from_bytes([5; 20]),
            sender_installation: InstallationId([6; 32]),
            content_type: "text/plain".into(),
            body: b"hi".to_vec(),
            sent_at_ms: 900,
            time_ms,
            delivery,
            unbound_leaf: None,
            fallback: None,
        }
    }

    fn check(model: &Model, receiver: &[StoredMessage], events: &[GroupEvent]) -> Vec<String> {
        let own = [stored(Delivery::Published, 900)];
        let own_events = [GroupEvent::Message(stored(Delivery::Unpublished, 900))];
        model.check(&[
            Holder {
                index: 0,
                messages: &own,
                events: &own_events,
                incarnation: 1,
                member: true,
                stranded: false,
            },
            Holder {
                index: 1,
                messages: receiver,
                events,
                incarnation: 1,
                member: true,
                stranded: false,
            },
        ])
    }

    fn announced() -> GroupEvent {
        GroupEvent::Message(stored(Delivery::Published, STAMP))
    }

    #[test]
    fn a_faithful_list_passes() {
        let found = check(
            &model(),
            &[stored(Delivery::Published, STAMP)],
            &[announced()],
        );
        assert_eq!(found, Vec::<String>::new());
    }

    #[test]
    fn a_missing_message_is_found() {
        let found = check(&model(), &[], &[]);
        assert_eq!(
            found,
            vec!["client 1 never got message 01010101 of client 0".to_string()]
        );
    }

    #[test]
    fn a_duplicate_record_is_found() {
        let message = stored(Delivery::Published, STAMP);
        let found = check(&model(), &[message.clone(), message], &[announced()]);
        assert!(
            found
                .iter()
                .any(|f| f.contains("stores message 01010101 twice")),
            "{found:?}"
        );
    }

    #[test]
    fn a_duplicate_delivery_event_is_found() {
        let found = check(
            &model(),
            &[stored(Delivery::Published, STAMP)],
            &[announced(), announced()],
        );
        assert!(
            found
                .iter()
                .any(|f| f.contains("announced message 01010101 2 times")),
            "{found:?}"
        );
    }

    #[test]
    fn a_message_out_of_its_place_is_found() {
        let found = check(
            &model(),
            &[stored(Delivery::Published, STAMP + 1)],
            &[announced()],
        );
        assert!(
            found
                .iter()
                .any(|f| f.contains("the time of none of its copies")),
            "{found:?}"
        );
    }

    #[test]
    fn a_state_its_events_did_not_announce_is_found() {
        let found = check(
            &model(),
            &[stored(Delivery::Superseded, STAMP)],
            &[announced()],
        );
        assert!(
            found.iter().any(|f| f.contains("its events last said")),
            "{found:?}"
        );
    }

    #[test]
    fn a_message_held_without_being_readable_is_found() {
        let mut model = model();
        model.joined(2, 1, 0);
        let found = model.check(&[Holder {
            index: 2,
            messages: &[stored(Delivery::Published, STAMP)],
            events: &[announced()],
            incarnation: 1,
            member: false,
            stranded: false,
        }]);
        assert!(
            found
                .iter()
                .any(|f| f.contains("never handled a copy of it in that copy's epoch")),
            "{found:?}"
        );
    }

    #[test]
    fn a_power_loss_takes_back_what_was_not_flushed() {
        let mut model = Model::default();
        model.joined(0, 1, 0);
        model.flushed(0);
        model.queued(0, ID, COPY, 900, STATE);
        model.written(0, ID, 900);
        let sender = [Holder {
            index: 0,
            messages: &[],
            events: &[],
            incarnation: 1,
            member: true,
            stranded: false,
        }];
        assert_eq!(
            model.check(&sender),
            vec!["client 0 lost its own message 01010101".to_string()]
        );
        model.power_lost(0);
        // The store lost it with the step that wrote it: nobody is
        // expected to hold it, the sender included.
        assert_eq!(model.written_count(), 0);
        assert_eq!(model.check(&sender), Vec::<String>::new());
    }
}
