//! Rollback and replay, hand-driven: each test builds the exact arrival
//! order it is about, on real sled stores, and checks what the members
//! end with and what they were told.

use kith_engine::{
    delivery::Envelope,
    group::{
        CONTENT_TYPE_GROUP_UPDATED, ClientStore, Delivery, GroupEvent, GroupUpdateWire, IntentKind,
        IntentState, KvStore,
    },
};
use kith_sim::world::World;
use openmls::prelude::{GroupId, OpenMlsProvider as _};
use prost::Message as _;

const WINDOW: u64 = 1_000;

fn rename(name: &str) -> IntentKind {
    IntentKind::UpdateAttributes {
        changes: vec![("name".into(), Some(name.into()))],
    }
}

/// Bob and Carol commit on epoch 1 at once; Carol's sorts first but reaches
/// Alice and Bob after Bob's, and after a message Bob sent on his branch.
#[test]
fn an_earlier_commit_rolls_back_and_replays_in_canonical_order() {
    let mut w = World::new(1, 3, 3, WINDOW);
    let (alice, bob, carol) = (0, 1, 2);
    // Carol's reached node 1 at 200, Bob's node 2 at 300.
    let (b, c) = racing_commits(&mut w, (bob, rename("bob's")), (carol, rename("carol's")));

    // Bob sees his own commit first, merges it, and sends on his branch.
    w.handle(bob, &b, 310);
    assert_eq!(w.group(bob).epoch(), 2);
    let id = w.send(bob, "on bob's branch", 320);
    let first_copy = w.outbox(bob).remove(0);
    let m = w.env(330, 2, 2, first_copy.payload);

    // Alice: Bob's commit, Bob's message, then Carol's earlier commit.
    w.handle(alice, &b, 340);
    w.handle(alice, &m, 350);
    assert_eq!(w.delivery(alice, &id), Some(Delivery::Published));
    w.handle(alice, &c, 360);
    assert_eq!(
        w.group(alice).metadata().mutable.attributes["name"],
        "carol's"
    );
    assert!(w.events(alice).iter().any(|e| matches!(
        e,
        GroupEvent::RolledBack {
            to_epoch: 1,
            replayed: 3,
            ..
        }
    )));
    assert_eq!(
        w.delivery(alice, &id),
        Some(Delivery::Superseded),
        "a message known only from the losing branch is superseded"
    );
    assert!(
        w.events(alice).iter().any(
            |e| matches!(e, GroupEvent::MessageSuperseded { message_id } if *message_id == id)
        )
    );

    // Bob and Carol get the other commit; Bob rolls back too.
    w.handle(bob, &c, 370);
    w.handle(carol, &c, 370);
    w.handle(carol, &b, 375);
    w.handle(carol, &m, 376);
    assert_eq!(w.state(alice), w.state(bob));
    assert_eq!(w.state(alice), w.state(carol));
    assert_eq!(w.group(bob).rewind_stats().rollbacks, 1);

    // Bob re-sends his message with the same id, and regenerates his
    // rename on the canonical epoch.
    w.advance(bob, 400);
    let out = w.outbox(bob);
    assert_eq!(
        out.len(),
        2,
        "the re-sent message and the regenerated commit"
    );
    assert_eq!(out[0].message_id, Some(id));
    let resent = w.env(410, 2, 3, out[0].payload.clone());
    let regenerated = w.env(420, 2, 4, out[1].payload.clone());
    for member in [alice, bob, carol] {
        w.handle(member, &resent, 430);
        w.handle(member, &regenerated, 440);
    }
    assert_eq!(w.delivery(alice, &id), Some(Delivery::Published));
    assert!(
        w.events(alice)
            .iter()
            .any(|e| matches!(e, GroupEvent::MessageConfirmed { message_id } if *message_id == id))
    );
    assert_eq!(w.delivery(carol, &id), Some(Delivery::Published));
    let conversation = w.group(alice).conversation_id();
    let copies = ClientStore(w.clients[alice].storage())
        .messages(&conversation)
        .expect("messages")
        .iter()
        .filter(|m| m.message_id == id)
        .count();
    assert_eq!(copies, 1, "one copy per message id");
    for member in [alice, bob, carol] {
        assert_eq!(w.group(member).epoch(), 3);
        assert_eq!(
            w.group(member).metadata().mutable.attributes["name"],
            "bob's"
        );
    }
    assert_eq!(w.state(alice), w.state(bob));
    assert_eq!(w.state(alice), w.state(carol));
    // The transcript shows the renames that happened, in canonical order;
    // Bob's first one, which lost, is marked superseded wherever it was
    // written (at Alice and Bob, who merged it before Carol's arrived).
    for member in [alice, bob, carol] {
        let entries: Vec<(Delivery, String)> = ClientStore(w.clients[member].storage())
            .messages(&conversation)
            .expect("messages")
            .into_iter()
            .filter(|m| m.content_type == CONTENT_TYPE_GROUP_UPDATED)
            .filter_map(|m| {
                let update = GroupUpdateWire::decode(m.body.as_slice()).expect("decodes");
                // The renames; the setup's add has no field changes.
                let name = update.changes.first()?.new.clone().unwrap_or_default();
                Some((m.delivery, name))
            })
            .collect();
        let superseded = entries
            .iter()
            .filter(|(delivery, name)| *delivery == Delivery::Superseded && name == "bob's")
            .count();
        assert_eq!(superseded, usize::from(member != carol), "member {member}");
        let entries: Vec<_> = entries
            .into_iter()
            .filter(|(delivery, _)| *delivery == Delivery::Published)
            .collect();
        assert_eq!(
            entries,
            [
                (Delivery::Published, "carol's".to_owned()),
                (Delivery::Published, "bob's".to_owned())
            ],
            "member {member}"
        );
    }
}

/// A commit that sorts before the one applied but does not merge (its
/// ciphertext was tampered with) is tried on the restored epoch and
/// refused: the member is back where it was, down to the stored MLS state,
/// and the genuine commit still rolls it back afterwards. Once inside a
/// step (the store's savepoint undoes the attempt) and once outside one
/// (a capture of the current state does).
#[test]
fn an_earlier_commit_that_does_not_merge_changes_nothing() {
    for in_step in [true, false] {
        let mut w = World::new(1, 3, 3, WINDOW);
        let (alice, bob, carol) = (0, 1, 2);
        let (b, c) = racing_commits(&mut w, (bob, rename("bob's")), (carol, rename("carol's")));
        w.handle(alice, &b, 340);
        let before = w.state(alice);
        let group_id = GroupId::from_slice(&w.group_id);
        let stored = |w: &World| {
            w.clients[alice]
                .storage()
                .snapshot_group(&group_id)
                .expect("snapshot")
                .to_bytes()
        };
        let stored_before = stored(&w);

        // Carol's commit with the last byte of its ciphertext flipped, at a
        // place that sorts before both.
        let mut payload = c.payload.clone();
        if let Some(last) = payload.last_mut() {
            *last ^= 1;
        }
        let tampered = w.env(150, 1, 50, payload);
        if in_step {
            w.handle(alice, &tampered, 350);
        } else {
            let now = w.base + 350;
            let client = &mut w.clients[alice];
            let group = client.group.as_mut().expect("a member");
            let storage = client.provider.storage();
            group
                .handle_envelope(&client.provider, storage, &w.identities, &tampered, now)
                .expect("handled outside a step");
            while let Some(event) = group.poll_event() {
                client.events.push(event);
            }
        }
        let events = w.events(alice);
        assert!(
            !events
                .iter()
                .any(|e| matches!(e, GroupEvent::RolledBack { .. })),
            "in step: {in_step}: nothing was rolled back: {events:?}"
        );
        assert!(
            events.iter().any(|e| matches!(
                e,
                GroupEvent::CommitRejected { .. } | GroupEvent::EnvelopeSkipped { .. }
            )),
            "in step: {in_step}: the refusal is reported: {events:?}"
        );
        assert_eq!(w.state(alice), before, "in step: {in_step}");
        assert_eq!(
            w.group(alice).metadata().mutable.attributes["name"],
            "bob's"
        );
        assert!(
            stored(&w) == stored_before,
            "in step: {in_step}: the stored MLS state is the one before"
        );

        // The genuine one still wins.
        w.handle(alice, &c, 360);
        w.handle(carol, &c, 370);
        assert_eq!(w.state(alice), w.state(carol), "in step: {in_step}");
        assert_eq!(w.group(alice).rewind_stats().rollbacks, 1);
    }
}

/// Snapshots are deleted, from the store, as soon as their transition
/// settles; none is kept past the window.
#[test]
fn a_settled_snapshot_is_gone_from_the_store() {
    let mut w = World::new(2, 2, 2, WINDOW);
    let (alice, bob) = (0, 1);
    w.queue(bob, IntentKind::UpdateKeys);
    w.advance(bob, 100);
    let commit = w.outbox(bob).remove(0);
    let e = w.env(200, 1, 200, commit.payload);
    w.handle(alice, &e, 210);
    let storage = w.clients[alice].storage();
    assert_eq!(w.clients[alice].snapshots().len(), 1);
    let mut prefix = vec![b'S'];
    prefix.extend_from_slice(&(w.group_id.len() as u32).to_be_bytes());
    prefix.extend_from_slice(&w.group_id);
    let raw_state_keys = |s: &kith_storage::SledMlsStorage| s.kv_scan(&prefix).expect("scan").len();
    assert_eq!(raw_state_keys(storage), 1, "the snapshot's state is stored");
    w.advance(alice, 200 + WINDOW - 1);
    assert_eq!(w.clients[alice].snapshots().len(), 1, "not yet settled");
    w.advance(alice, 200 + WINDOW);
    assert!(w.clients[alice].snapshots().is_empty());
    assert_eq!(
        raw_state_keys(w.clients[alice].storage()),
        0,
        "the snapshot's state is deleted from the store"
    );
    let stats = w.group(alice).rewind_stats();
    assert!(stats.max_snapshot_age_ms > 0 && stats.max_snapshot_age_ms <= WINDOW);
    assert!(
        w.events(alice)
            .iter()
            .any(|e| matches!(e, GroupEvent::Settled { .. }))
    );
}

/// The ring keeps at most `max_rewind` transitions, whatever the window.
#[test]
fn the_ring_is_bounded() {
    let mut w = World::new(3, 2, 2, WINDOW);
    let (alice, bob) = (0, 1);
    for round in 0..8u64 {
        w.queue(bob, IntentKind::UpdateKeys);
        w.advance(bob, 100 + round * 10);
        let commit = w.outbox(bob).remove(0);
        let e = w.env(100 + round * 10, 1, 100 + round, commit.payload);
        w.handle(bob, &e, 101 + round * 10);
        w.handle(alice, &e, 101 + round * 10);
        assert!(w.clients[alice].snapshots().len() <= 5);
    }
    assert_eq!(w.clients[alice].snapshots().len(), 5);
    assert_eq!(w.state(alice), w.state(bob));
}

/// Replication lagged past the settle window: Alice settled Bob's commit
/// before Carol's earlier one reached her. The commit is dropped with a
/// reason; Carol's next message shows Alice that the group went on without
/// her; Alice takes back what she sent on the fork, asks to be re-added, Bob
/// re-adds her, all three agree again, and what she wrote goes out again.
#[test]
fn lag_beyond_the_settle_window_forks_a_member_who_is_then_healed() {
    let mut w = World::new(4, 3, 3, WINDOW);
    let (alice, bob, carol) = (0, 1, 2);
    let (b, c) = renames_racing_past_alice(&mut w, bob, carol);
    w.handle(alice, &b, 310);
    let on_fork = w.send(alice, "on the fork", 320);
    w.outbox(alice);
    // She also proposes a rename there, to be committed by whoever commits
    // next (long after she finds out).
    let mut proposing = w.policy;
    proposing.proposals.propose_first = true;
    proposing.proposals.proposal_wait_ms = 10 * WINDOW;
    w.clients[alice]
        .group
        .as_mut()
        .expect("a member")
        .set_config(proposing);
    w.queue(alice, rename("alice's"));
    w.advance(alice, 330);
    assert_eq!(w.outbox(alice).len(), 1, "her proposal");
    assert!(matches!(
        w.intent_states(alice).as_slice(),
        [IntentState::Proposed(p)] if p.epoch == 2
    ));
    w.advance(alice, 300 + WINDOW);
    w.handle(alice, &c, 300 + WINDOW + 10);
    assert!(w.events(alice).iter().any(|e| matches!(
        e,
        GroupEvent::EnvelopeSkipped { reason } if reason.contains("settled")
    )));
    assert_eq!(w.group(alice).rewind_stats().dropped_settled, 1);

    // Carol speaks on the canonical branch; Alice cannot decrypt it, and
    // its authenticated data shows the branches parting at epoch 1.
    let m = canonical_message(&mut w, carol, 1400);
    w.handle(alice, &m, 1410);
    assert!(
        w.group(alice).fork().is_some(),
        "Alice knows she is on a fork"
    );
    assert!(
        w.events(alice)
            .iter()
            .any(|e| matches!(e, GroupEvent::Forked { epoch: 2, .. }))
    );
    // What she sent on the fork nobody else read: it is taken back, to go
    // out again once she is re-added, not failed.
    assert_eq!(w.delivery(alice, &on_fork), Some(Delivery::Unpublished));
    assert!(
        !w.events(alice)
            .iter()
            .any(|e| matches!(e, GroupEvent::MessageFailed { .. }))
    );

    // What she writes now waits for the re-add: on the fork nobody reads it.
    let waiting = w.send(alice, "written while forked", 1415);
    assert_eq!(w.delivery(alice, &waiting), Some(Delivery::Unpublished));

    // She asks to be re-added; Bob, who applied Carol's commit, does it.
    w.advance(alice, 1420);
    let mut out = w.outbox(alice);
    assert_eq!(out.len(), 1, "only the request goes out: {out:?}");
    let request = out.remove(0);
    assert!(kith_engine::group::RejoinRequest::is_request(
        &request.payload
    ));
    let request = w.env(1420, 2, 2, request.payload);
    w.handle(bob, &request, 1430);
    let (installation, stale_leaf) = w
        .events(bob)
        .iter()
        .find_map(|e| match e {
            GroupEvent::RejoinRequested {
                installation,
                stale_leaf,
                ..
            } => Some((*installation, stale_leaf.clone())),
            _ => None,
        })
        .expect("Bob hears the request");
    let key_package = fresh_key_package(&w, alice);
    w.queue(
        bob,
        IntentKind::Readd {
            installation,
            key_package,
            stale_leaf,
        },
    );
    // Bob's own rename lost to Carol's and is rebuilt first; then the
    // re-add. Deliver what he publishes until the Welcome comes out.
    for member in [bob, carol] {
        w.handle(member, &m, 1435);
    }
    let mut welcome = None;
    let (mut at, mut sequence) = (1440, 3);
    while welcome.is_none() && at < 10_000 {
        w.advance(bob, at);
        for item in w.outbox(bob) {
            if item.topics[0].starts_with("welcome/") {
                welcome = Some(item);
                continue;
            }
            let e = w.env(at + 5, 2, sequence, item.payload);
            sequence += 1;
            for member in [bob, carol] {
                w.handle(member, &e, at + 10);
            }
        }
        at += WINDOW / 2;
    }
    let welcome = welcome.expect("the re-add's Welcome");
    let identities = &w.identities;
    assert!(
        w.clients[alice]
            .join(identities, &welcome.payload, w.policy, w.base + at)
            .expect("join again")
    );
    assert!(w.group(alice).fork().is_none());
    assert!(
        w.events(alice)
            .iter()
            .any(|e| matches!(e, GroupEvent::Rejoined { forked_at: 2, .. }))
    );
    assert_eq!(w.state(alice), w.state(bob));
    assert_eq!(w.state(alice), w.state(carol));
    assert_eq!(
        w.group(alice).metadata().mutable.attributes["name"],
        "bob's"
    );
    // Her proposal was made on the fork: nobody on this branch can commit
    // it, so it is rebuilt here rather than left waiting for ever.
    assert_eq!(
        w.intent_states(alice),
        [IntentState::Regenerate],
        "the rename proposed on the fork is rebuilt"
    );

    // Her request reaches Carol only now, after Bob's re-add, through a
    // node that lagged: answering it would remove the leaf Alice has just
    // joined with.
    let late = w.env(at + 5, 3, 1, request.payload.clone());
    w.handle(carol, &late, at + 5);
    assert!(
        !w.events(carol)
            .iter()
            .any(|e| matches!(e, GroupEvent::RejoinRequested { .. })),
        "a request the re-add answered is not answered again"
    );
    assert!(w.events(carol).iter().any(|e| matches!(
        e,
        GroupEvent::EnvelopeSkipped { reason } if reason.contains("already answered")
    )));

    // Back in the group, what she sent on the fork and what she wrote
    // while forked go out with their ids, in the order she wrote them.
    w.advance(alice, at + 10);
    let out = w.outbox(alice);
    let order: Vec<[u8; 32]> = out.iter().filter_map(|o| o.message_id).collect();
    assert_eq!(order, [on_fork, waiting], "both are sent after the re-add");
    for (k, sent) in out.iter().filter(|o| o.message_id.is_some()).enumerate() {
        let e = w.env(at + 20, 2, sequence + k as u64, sent.payload.clone());
        w.handle(carol, &e, at + 30);
    }
    assert_eq!(w.delivery(carol, &on_fork), Some(Delivery::Published));
    assert_eq!(w.delivery(carol, &waiting), Some(Delivery::Published));
    // And her rename goes out again, built on the epoch she joined in.
    let epoch = w.group(alice).epoch();
    assert!(
        matches!(
            w.intent_states(alice).as_slice(),
            [IntentState::Published(commit)] if commit.epoch == epoch
        ),
        "{:?}",
        w.intent_states(alice)
    );
}

/// Alice applies Bob's commit; Carol's, which sorts first, lags (as when it
/// refers to a proposal that has not replicated yet). A message from
/// Carol's branch shows Alice the parting while she can still roll back.
/// When the epoch settles without the rollback, the claim alone proves
/// nothing (a member may lie): Alice is on a fork once Carol's commit
/// itself arrives, too late to roll back to. Had it arrived in time, the
/// rollback would have made her canonical; had it arrived and been refused
/// (here: tampered with), Carol's branch would not be one to follow.
#[test]
fn an_epoch_that_settles_before_an_earlier_commit_arrives_is_a_fork() {
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Commit {
        Lost,
        Arrives,
        Refused,
    }
    for commit in [Commit::Lost, Commit::Arrives, Commit::Refused] {
        let mut w = World::new(4, 3, 3, WINDOW);
        let (alice, bob, carol) = (0, 1, 2);
        let (b, c) = renames_racing_past_alice(&mut w, bob, carol);
        w.handle(alice, &b, 310);
        // Through another node than Carol's commit, which it overtakes.
        w.send(carol, "canonical", 400);
        let m = w.outbox(carol).remove(0);
        let m = w.env(400, 3, 1, m.payload);
        w.handle(alice, &m, 410);
        assert!(
            w.group(alice).fork().is_none(),
            "epoch 1 can still roll back: not a fork yet"
        );
        match commit {
            Commit::Lost => {}
            Commit::Arrives => {
                w.handle(alice, &c, 420);
                assert_eq!(w.group(alice).rewind_stats().rollbacks, 1);
            }
            Commit::Refused => {
                let mut tampered = c.clone();
                if let Some(last) = tampered.payload.last_mut() {
                    *last ^= 1;
                }
                w.handle(alice, &tampered, 420);
                assert_eq!(w.group(alice).rewind_stats().rollbacks, 0);
                assert!(w.events(alice).iter().any(|e| matches!(
                    e,
                    GroupEvent::CommitRejected { .. } | GroupEvent::EnvelopeSkipped { .. }
                )));
            }
        }
        w.advance(alice, 300 + 2 * WINDOW);
        let forked = w
            .events(alice)
            .iter()
            .any(|e| matches!(e, GroupEvent::Forked { .. }));
        match commit {
            Commit::Lost => {
                assert!(!forked, "a claim alone is no evidence");
                w.handle(alice, &c, 400 + 2 * WINDOW);
                let fork = w.group(alice).fork().expect("on a fork");
                assert!(fork.reason.contains("epoch 1"), "{}", fork.reason);
            }
            Commit::Arrives => {
                assert!(!forked, "the rollback made her canonical");
                assert_eq!(w.state(alice), w.state(carol));
            }
            Commit::Refused => {
                assert!(!forked, "a refused commit is no branch to follow");
                assert_eq!(w.group(alice).epoch(), 2);
            }
        }
        assert_eq!(
            w.group(alice).fork().is_some(),
            commit == Commit::Lost,
            "{commit:?}"
        );
    }
}

/// Bob, Carol and Dave rename the group at once. Dave's commit sorts first,
/// then Carol's, then Bob's. Alice applies Bob's and settles; Carol applied
/// hers and never saw Dave's. Carol's commit reaches Alice late, and a
/// message from Carol shows Alice a fork, with Carol's commit as the
/// evidence; but nobody on the canonical branch applied that one, so nobody
/// would answer. Dave's commit and message show the earlier commit: Alice
/// asks again, naming it.
#[test]
fn a_forked_member_asks_again_with_an_earlier_parting_it_learns_of() {
    let mut w = World::new(7, 4, 4, WINDOW);
    let (alice, bob, carol, dave) = (0, 1, 2, 3);
    let stage = |w: &mut World, client: usize, name: &str| {
        w.queue(client, rename(name));
        w.advance(client, 100);
        w.outbox(client).remove(0).payload
    };
    let b = stage(&mut w, bob, "bob's");
    let c = stage(&mut w, carol, "carol's");
    let d = stage(&mut w, dave, "dave's");
    let (b, c, d) = (
        w.env(300, 2, 1, b),
        w.env(200, 1, 100, c),
        w.env(150, 3, 1, d),
    );
    w.handle(carol, &c, 210);
    for e in [&d, &c, &b] {
        w.handle(dave, e, 320);
    }
    w.handle(alice, &b, 310);
    w.advance(alice, 300 + WINDOW);

    let message = |w: &mut World, from: usize, node: u32, at: u64| {
        w.send(from, "hello", at);
        let m = w.outbox(from).remove(0).payload;
        w.env(at, node, 200, m)
    };
    let from_carol = message(&mut w, carol, 1, 1_400);
    w.handle(alice, &c, 1_405);
    w.handle(alice, &from_carol, 1_410);
    let fork = w.group(alice).fork().expect("on a fork").clone();
    assert_eq!((fork.evidence_epoch, fork.evidence_key), (1, c.order_key()));
    w.advance(alice, 1_420);
    let first = w.outbox(alice).remove(0).payload;
    let first = kith_engine::group::RejoinRequest::verify(&first).expect("a request");
    assert_eq!(first.evidence_key, c.order_key());

    let from_dave = message(&mut w, dave, 3, 1_500);
    w.handle(alice, &d, 1_505);
    w.handle(alice, &from_dave, 1_510);
    let fork = w.group(alice).fork().expect("still on a fork");
    assert_eq!((fork.evidence_epoch, fork.evidence_key), (1, d.order_key()));
    // Well before the retry interval: the better evidence goes out now.
    w.advance(alice, 1_520);
    let out = w.outbox(alice);
    assert_eq!(out.len(), 1, "{out:?}");
    let again = kith_engine::group::RejoinRequest::verify(&out[0].payload).expect("a request");
    assert_eq!(
        (again.evidence_epoch, again.evidence_key),
        (1, d.order_key())
    );
}

/// Alice, on a fork she does not know of yet (Bob's commit settled at her
/// before Carol's earlier one arrived), adds Dave. Dave joins her branch.
/// He holds no claim keys of the epochs before his own, so Carol's
/// messages cannot show him that the branch he joined lost; his adder's
/// rejoin request does, once Alice finds her fork.
#[test]
fn a_joiner_added_on_a_fork_learns_it_is_on_one() {
    let mut w = World::new(5, 4, 3, WINDOW);
    let (alice, bob, carol, dave) = (0, 1, 2, 3);
    let (b, c) = renames_racing_past_alice(&mut w, bob, carol);
    // Alice settles Bob's commit, then adds Dave on her branch.
    w.handle(alice, &b, 310);
    w.advance(alice, 300 + WINDOW);
    let key_package = w.clients[dave].key_package.take().expect("key package");
    let dave_inbox = w.clients[dave].inbox;
    w.queue(
        alice,
        IntentKind::AddMembers {
            key_packages: vec![key_package],
            sequences: vec![(dave_inbox, 1)],
            admissions: Vec::new(),
        },
    );
    w.advance(alice, 1400);
    let add = w.outbox(alice).remove(0);
    let add = w.env(1400, 2, 2, add.payload);
    w.handle(alice, &add, 1410);
    w.advance(alice, 1400 + WINDOW + 10);
    let welcome = w
        .outbox(alice)
        .into_iter()
        .find(|o| o.topics[0].starts_with("welcome/"))
        .expect("Alice's Welcome for Dave");
    let identities = &w.identities;
    assert!(
        w.clients[dave]
            .join(identities, &welcome.payload, w.policy, w.base + 2500)
            .expect("join")
    );
    assert!(w.group(dave).fork().is_none(), "nothing tells him yet");

    // Carol speaks on the canonical branch: Dave cannot check what her
    // message claims about epoch 1.
    let m = canonical_message(&mut w, carol, 2600);
    w.handle(dave, &m, 2610);
    assert!(w.group(dave).fork().is_none());
    // Alice gets Carol's commit, too late, and her message: she is on a
    // fork, and asks to be re-added. Her request tells Dave.
    w.handle(alice, &c, 2620);
    w.handle(alice, &m, 2630);
    assert!(w.group(alice).fork().is_some(), "Alice finds her fork");
    w.advance(alice, 2640);
    let request = w.outbox(alice).remove(0).payload;
    let request = w.env(2650, 2, 3, request);
    w.handle(dave, &request, 2660);
    assert!(
        w.group(dave).fork().is_some(),
        "Dave learns that the branch he joined lost"
    );
    assert!(
        w.events(dave)
            .iter()
            .any(|e| matches!(e, GroupEvent::Forked { .. }))
    );
}

/// Alice removes Dave while Carol renames the group in the same epoch;
/// Carol's commit sorts first but reaches Dave last. Removed, Dave still
/// keeps what arrives (Bob's next commit on Carol's branch), so that when
/// Carol's commit brings him back he replays it and catches up.
#[test]
fn a_member_whose_removal_is_rolled_back_catches_up() {
    let mut w = World::new(6, 4, 4, WINDOW);
    let (alice, bob, carol, dave) = (0, 1, 2, 3);
    let dave_inbox = w.clients[dave].inbox;
    let removal = IntentKind::RemoveMembers {
        inboxes: vec![dave_inbox],
    };
    let (a, c) = racing_commits(&mut w, (alice, removal), (carol, rename("carol's")));

    // Bob sees both in order and renames again on Carol's branch.
    w.handle(bob, &c, 210);
    w.handle(bob, &a, 310);
    w.queue(bob, rename("bob's"));
    w.advance(bob, 400);
    let r = w.outbox(bob).remove(0);
    let r = w.env(400, 3, 1, r.payload);
    w.handle(bob, &r, 410);
    assert_eq!(w.group(bob).epoch(), 3);

    // Dave: Alice's removal, Bob's commit, then Carol's earlier one.
    w.handle(dave, &a, 310);
    assert!(!w.group(dave).is_active(), "removed, for now");
    w.handle(dave, &r, 420);
    w.handle(dave, &c, 430);
    assert!(w.group(dave).is_active(), "Carol's commit brings him back");
    assert_eq!(w.state(dave), w.state(bob), "and he replays Bob's commit");
    assert_eq!(w.group(dave).metadata().mutable.attributes["name"], "bob's");
}

/// Alice and Dave see Bob's rename settle before Carol's earlier one: a
/// fork. On it Dave writes, and then Alice removes him. Removed, Dave still
/// reads the members' messages: Carol's shows that his branch lost, so
/// he takes back what he sent on it, to send again once he is back (though
/// his leaf no longer names him), and asks to be re-added.
#[test]
fn a_member_removed_on_a_fork_learns_it_was_a_fork() {
    let mut w = World::new(7, 4, 4, WINDOW);
    let (alice, bob, carol, dave) = (0, 1, 2, 3);
    let (b, c) = renames_racing_past_alice(&mut w, bob, carol);
    for member in [alice, dave] {
        w.handle(member, &b, 310);
        w.advance(member, 300 + WINDOW);
    }
    let on_fork = w.send(dave, "on the fork", 300 + WINDOW + 5);
    w.outbox(dave);
    let dave_inbox = w.clients[dave].inbox;
    w.queue(
        alice,
        IntentKind::RemoveMembers {
            inboxes: vec![dave_inbox],
        },
    );
    w.advance(alice, 300 + WINDOW + 10);
    let removal = w.outbox(alice).remove(0);
    let removal = w.env(300 + WINDOW + 10, 3, 1, removal.payload);
    for member in [alice, dave] {
        w.handle(member, &removal, 300 + WINDOW + 20);
    }
    assert!(!w.group(dave).is_active(), "removed on the fork");
    w.handle(dave, &c, 300 + WINDOW + 30);
    assert!(
        w.group(dave).fork().is_none(),
        "a settled commit alone proves nothing"
    );

    let m = canonical_message(&mut w, carol, 2600);
    w.handle(dave, &m, 2610);
    assert!(
        w.group(dave).fork().is_some(),
        "Dave learns that his removal was the fork's"
    );
    assert_eq!(w.delivery(dave, &on_fork), Some(Delivery::Unpublished));
    w.advance(dave, 2620);
    let out = w.outbox(dave);
    assert!(
        out.iter()
            .any(|o| kith_engine::group::RejoinRequest::is_request(&o.payload)),
        "and asks to be re-added"
    );
}

/// `late` and `early` each commit their change at 100, in the same epoch;
/// `early`'s commit reached node 1 at 200, `late`'s node 2 at 300, so
/// `early`'s sorts first. Returns `late`'s and `early`'s envelopes.
fn racing_commits(
    w: &mut World,
    late: (usize, IntentKind),
    early: (usize, IntentKind),
) -> (Envelope, Envelope) {
    let mut stage = |(client, kind): (usize, IntentKind)| {
        w.queue(client, kind);
        w.advance(client, 100);
        w.outbox(client).remove(0).payload
    };
    let (l, e) = (stage(late), stage(early));
    (w.env(300, 2, 1, l), w.env(200, 1, 100, e))
}

/// Bob and Carol rename the group at once; Carol's commit sorts first, and
/// both apply it before Bob's. Returns Bob's and Carol's commits, for the
/// caller to show Alice late.
fn renames_racing_past_alice(w: &mut World, bob: usize, carol: usize) -> (Envelope, Envelope) {
    let (b, c) = racing_commits(w, (bob, rename("bob's")), (carol, rename("carol's")));
    for member in [bob, carol] {
        w.handle(member, &c, 210);
        w.handle(member, &b, 310);
    }
    (b, c)
}

/// A message `carol` sends at `at` on the canonical branch, stamped by
/// node 1.
fn canonical_message(w: &mut World, carol: usize, at: u64) -> Envelope {
    w.send(carol, "canonical", at);
    let m = w.outbox(carol).remove(0);
    w.env(at, 1, 101, m.payload)
}

fn fresh_key_package(w: &World, client: usize) -> Vec<u8> {
    use openmls::prelude::{MlsMessageOut, tls_codec::Serialize as _};
    let c = &w.clients[client];
    let kp = kith_engine::identity::generate_key_package(
        &c.provider,
        &c.keys,
        c.inbox,
        w.base / 1000,
        kith_engine::identity::DEFAULT_LIFETIME_SECS,
        false,
    )
    .expect("key package");
    MlsMessageOut::from(kp)
        .tls_serialize_detached()
        .expect("serialize")
}

/// Carol is removed and added back; the Welcome that adds her back
/// overtakes the commit that removed her. She is still a member when it
/// arrives, so it is kept, not used (nor lost): once the removal reaches
/// her, she joins from it. This is what happens when several members answer
/// one rejoin request at different epochs.
#[test]
fn a_welcome_that_overtakes_the_removal_it_answers_is_kept_for_it() {
    let mut w = World::new(6, 3, 3, WINDOW);
    let (alice, carol) = (0, 2);
    let carol_inbox = w.clients[carol].inbox;
    w.queue(
        alice,
        IntentKind::RemoveMembers {
            inboxes: vec![carol_inbox],
        },
    );
    w.advance(alice, 100);
    let removal = w.outbox(alice).remove(0).payload;
    let removal = w.env(110, 1, 11, removal);
    w.handle(alice, &removal, 120);
    let key_package = fresh_key_package(&w, carol);
    w.queue(
        alice,
        IntentKind::AddMembers {
            key_packages: vec![key_package],
            sequences: vec![(carol_inbox, 1)],
            admissions: Vec::new(),
        },
    );
    w.advance(alice, 200);
    let add = w.outbox(alice).remove(0).payload;
    let add = w.env(210, 1, 12, add);
    w.handle(alice, &add, 220);
    w.advance(alice, 210 + WINDOW);
    let welcome = w.outbox(alice).remove(0);
    assert!(welcome.topics[0].starts_with("welcome/"));

    let identities = &w.identities;
    let now = w.base + 210 + WINDOW;
    assert!(
        !w.clients[carol]
            .join(identities, &welcome.payload, w.policy, now)
            .expect("join"),
        "still a member: the Welcome is not used yet"
    );
    assert!(
        !w.clients[carol]
            .rejoin_deferred(identities, w.policy, now)
            .expect("rejoin"),
        "nor while she is a member"
    );
    assert_eq!(w.group(carol).epoch(), 1);

    w.handle(carol, &removal, 210 + WINDOW + 10);
    assert!(!w.group(carol).is_active(), "removed");
    let identities = &w.identities;
    assert!(
        w.clients[carol]
            .rejoin_deferred(identities, w.policy, now + 20)
            .expect("rejoin"),
        "the kept Welcome brings her back"
    );
    assert!(w.group(carol).is_active());
    assert_eq!(w.state(carol), w.state(alice));
    assert!(
        ClientStore(w.clients[carol].storage())
            .deferred_welcomes(&w.group_id)
            .expect("kept Welcomes")
            .is_empty(),
        "a used Welcome is not kept"
    );
}

/// A Welcome goes out only once its commit settled; an add whose commit
/// lost is rebuilt, and the joiner only ever sees the canonical one.
#[test]
fn a_welcome_waits_for_settling_and_never_follows_a_losing_commit() {
    let mut w = World::new(5, 3, 2, WINDOW);
    let (alice, bob, dave) = (0, 1, 2);
    let kp = w.clients[dave].key_package.take().expect("key package");
    w.queue(
        alice,
        IntentKind::AddMembers {
            key_packages: vec![kp],
            sequences: vec![(w.clients[dave].inbox, 1)],
            admissions: Vec::new(),
        },
    );
    w.advance(alice, 100);
    let a = w.outbox(alice).remove(0);
    w.queue(bob, rename("bob's"));
    w.advance(bob, 100);
    let b = w.outbox(bob).remove(0);
    let a = w.env(300, 1, 11, a.payload);
    let b = w.env(200, 2, 1, b.payload);
    // Alice merges her own add first: no Welcome until it settles.
    w.handle(alice, &a, 310);
    w.advance(alice, 320);
    assert!(w.outbox(alice).is_empty(), "no Welcome before settling");
    // Bob's earlier commit wins; Alice's add is rebuilt on it.
    w.handle(alice, &b, 330);
    w.handle(bob, &b, 330);
    w.handle(bob, &a, 331);
    w.advance(alice, 340);
    let out = w.outbox(alice);
    assert_eq!(out.len(), 1, "only the rebuilt commit, no Welcome");
    assert!(out[0].topics[0].starts_with("group/"));
    let a2 = w.env(400, 1, 12, out[0].payload.clone());
    w.handle(alice, &a2, 410);
    w.handle(bob, &a2, 410);
    w.advance(alice, 400 + WINDOW - 1);
    assert!(w.outbox(alice).is_empty());
    w.advance(alice, 400 + WINDOW);
    let welcome = w.outbox(alice);
    assert_eq!(welcome.len(), 1);
    assert!(welcome[0].topics[0].starts_with("welcome/"));
    let identities = &w.identities;
    assert!(
        w.clients[dave]
            .join(identities, &welcome[0].payload, w.policy, w.base + 2000)
            .expect("join")
    );
    assert_eq!(w.state(dave), w.state(alice));
    assert_eq!(w.state(bob), w.state(alice));
    assert_eq!(w.group(dave).metadata().mutable.attributes["name"], "bob's");
}

/// A message of an epoch the member has not reached is held, then applied
/// when the commit arrives.
#[test]
fn a_message_from_a_future_epoch_is_held_until_its_epoch() {
    let mut w = World::new(6, 3, 3, WINDOW);
    let (alice, bob, carol) = (0, 1, 2);
    w.queue(bob, IntentKind::UpdateKeys);
    w.advance(bob, 100);
    let payload = w.outbox(bob).remove(0).payload;
    let commit = w.env(200, 1, 200, payload);
    w.handle(bob, &commit, 210);
    let id = w.send(bob, "after the commit", 220);
    let payload = w.outbox(bob).remove(0).payload;
    let message = w.env(230, 2, 1, payload);
    w.handle(carol, &message, 240);
    assert_eq!(w.delivery(carol, &id), None, "held, not dropped");
    w.handle(carol, &commit, 250);
    assert_eq!(w.delivery(carol, &id), Some(Delivery::Published));
    w.handle(alice, &commit, 250);
    w.handle(alice, &message, 251);
    assert_eq!(w.state(alice), w.state(carol));
}

/// Carol is removed, keeps a re-add Welcome from before, and is added back
/// by a Welcome that replaces her removed state: what she kept for that
/// state (when each leaf was added, the kept Welcome) goes with it.
#[test]
fn a_replaced_state_takes_what_was_kept_for_it_along() {
    use kith_engine::group::{Group, WelcomePayload};

    let mut w = World::new(7, 4, 3, WINDOW);
    let (alice, carol, dave) = (0, 2, 3);
    w.add(alice, &[dave], 100);
    let group_id = w.group_id.clone();
    let dave_installation = w.clients[dave].keys.id();
    let leaf_added = |w: &World| {
        ClientStore(w.clients[carol].storage())
            .leaf_added(&group_id, &dave_installation)
            .expect("read")
    };
    assert!(leaf_added(&w).is_some(), "Carol saw Dave's leaf added");
    // A Welcome into a later epoch reaches Carol while she is a member: she
    // keeps it.
    let epoch = w.group(carol).epoch();
    let later = WelcomePayload {
        welcome: vec![0],
        group_id: group_id.clone(),
        cursor: Default::default(),
        branch: vec![(epoch + 1, [0; 8], (0, 1, 0))],
        shared: None,
    }
    .to_bytes();
    let kept = {
        let c = &w.clients[carol];
        let storage = c.storage();
        let me = c.me();
        storage
            .step(|| {
                Ok::<_, kith_sim::client::StepError>(Group::join(
                    &c.provider,
                    storage,
                    me,
                    &w.identities,
                    &later,
                    w.base + 150,
                )?)
            })
            .expect("kept")
    };
    assert!(kept.is_none());
    let kept_welcomes = |w: &World| {
        ClientStore(w.clients[carol].storage())
            .deferred_welcomes(&group_id)
            .expect("read")
            .len()
    };
    assert_eq!(kept_welcomes(&w), 1);

    // Alice removes Carol, then adds her back.
    w.queue(
        alice,
        IntentKind::RemoveMembers {
            inboxes: vec![w.clients[carol].inbox],
        },
    );
    w.advance(alice, 200);
    let removal = w.outbox(alice).remove(0);
    let removal = w.env(200, 1, 200, removal.payload);
    for member in [0, 1, 2, 3] {
        w.handle(member, &removal, 210);
        w.advance(member, 210 + WINDOW);
    }
    assert!(!w.group(carol).is_active());
    w.clients[carol].key_package = Some(fresh_key_package(&w, carol));
    w.add(alice, &[carol], 2_000);
    assert!(w.group(carol).is_active());
    assert_eq!(w.state(carol), w.state(alice));
    assert!(
        w.group(carol).epoch() > epoch,
        "she joined at or after the kept Welcome's epoch"
    );
    assert!(
        leaf_added(&w).is_none(),
        "the old state's add records are gone"
    );
    assert_eq!(
        kept_welcomes(&w),
        0,
        "the kept Welcome can never be used now"
    );
}
