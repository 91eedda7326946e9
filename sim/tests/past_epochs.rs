//! How many past epochs' secrets a member keeps follows the group's size
//! (`past_epochs_for`), on the committer, on a member that merges the
//! commit and on a joiner; a message sent that many commits back still
//! decrypts, and one sent a commit further back is skipped with a reason,
//! without wedging the group. A removal that shrinks the group gives the
//! epochs back.
//!
//! Client 0 creates the group with client 1; clients 2 to 259 are added in
//! bulk and never read (only their key packages take part); client 260
//! joins last. 261 installations: just past the size at which the budget
//! starts to bite.

use kith_engine::group::{GroupEvent, IntentKind, MAX_PAST_EPOCHS, past_epochs_for};
use kith_sim::world::World;

const BULK: std::ops::Range<usize> = 2..260;
const JOINER: usize = 260;

/// Stamps envelopes on node 1 in order (the world's setup used up to 10).
struct Clock(u64);

impl Clock {
    fn tick(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
}

/// Client 0 commits `intent`; the commit reaches client 0 and `readers`,
/// and any Welcome it releases is dropped.
fn commit(world: &mut World, clock: &mut Clock, readers: &[usize], intent: IntentKind) {
    let epoch = world.group(0).epoch();
    world.queue(0, intent);
    let t = clock.tick();
    world.advance(0, t);
    for item in world.outbox(0) {
        let envelope = world.env(t, 1, t, item.payload);
        for &reader in [0].iter().chain(readers) {
            world.handle(reader, &envelope, t);
            world.advance(reader, t);
        }
    }
    for &member in [0].iter().chain(readers) {
        assert_eq!(world.group(member).epoch(), epoch + 1, "{member} merged");
    }
    // The Welcomes the merge released: the bulk-added never read them.
    world.outbox(0);
}

/// Client 0 encrypts `text` now; the envelope reaches client 1 only after
/// `commits` more commits (a sender that had not seen them yet).
fn late_message(world: &mut World, clock: &mut Clock, text: &str, commits: usize) -> usize {
    let id = world.send(0, text, clock.tick());
    let sealed = world.outbox(0);
    for _ in 0..commits {
        commit(world, clock, &[1, JOINER], IntentKind::UpdateKeys);
    }
    let events_before = world.events(1).len();
    for item in sealed {
        let t = clock.tick();
        let envelope = world.env(t, 1, t, item.payload);
        world.handle(1, &envelope, t);
    }
    assert!(world.delivery(0, &id).is_some(), "the sender keeps it");
    events_before
}

fn texts(events: &[GroupEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            GroupEvent::Message(m) => Some(String::from_utf8_lossy(&m.body).into_owned()),
            _ => None,
        })
        .collect()
}

#[test]
fn past_epochs_follow_the_group_size_and_late_messages_within_them_decrypt() {
    let mut world = World::new(20, JOINER + 1, 2, 0);
    let mut clock = Clock(10);
    for member in [0, 1] {
        assert_eq!(
            world.group(member).past_epochs_kept_for_tests(),
            Some(MAX_PAST_EPOCHS)
        );
    }

    // The bulk add: the committer and a member that merges it fit their
    // stores.
    let (key_packages, sequences) = BULK
        .map(|c| {
            let client = &mut world.clients[c];
            (
                client.key_package.take().expect("unused"),
                (client.inbox, 1),
            )
        })
        .unzip();
    commit(
        &mut world,
        &mut clock,
        &[1],
        IntentKind::AddMembers {
            key_packages,
            sequences,
            admissions: Vec::new(),
        },
    );
    let kept = past_epochs_for(BULK.end);
    assert!(kept < MAX_PAST_EPOCHS, "the budget bites at this size");
    for member in [0, 1] {
        assert_eq!(world.group(member).past_epochs_kept_for_tests(), Some(kept));
    }

    // A joiner fits its store when it joins.
    world.add(0, &[JOINER], clock.tick());
    let kept = past_epochs_for(JOINER + 1);
    for member in [0, 1, JOINER] {
        assert_eq!(world.group(member).past_epochs_kept_for_tests(), Some(kept));
    }

    // A message `kept` commits late decrypts.
    let from = late_message(&mut world, &mut clock, "kept commits late", kept);
    assert_eq!(texts(&world.events(1)[from..]), ["kept commits late"]);

    // One commit later than that, it is skipped with a reason.
    let from = late_message(&mut world, &mut clock, "one commit too late", kept + 1);
    let events = &world.events(1)[from..];
    assert!(texts(events).is_empty(), "{events:?}");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, GroupEvent::EnvelopeSkipped { .. })),
        "the envelope is skipped with a reason: {events:?}"
    );

    // The group goes on, and a removal that brings it to 256 installations
    // gives the epochs back.
    let from = late_message(&mut world, &mut clock, "on time", 0);
    assert_eq!(texts(&world.events(1)[from..]), ["on time"]);
    let removed = BULK.take(5).map(|c| world.clients[c].inbox).collect();
    commit(
        &mut world,
        &mut clock,
        &[1, JOINER],
        IntentKind::RemoveMembers { inboxes: removed },
    );
    assert_eq!(past_epochs_for(256), MAX_PAST_EPOCHS);
    for member in [0, 1, JOINER] {
        assert_eq!(
            world.group(member).past_epochs_kept_for_tests(),
            Some(MAX_PAST_EPOCHS)
        );
    }
}
