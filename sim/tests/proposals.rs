//! Proposals first, hand-driven: a change sent as a proposal is carried
//! out by whoever commits next, a commit that arrives before the proposal
//! it refers to waits for it, and members hold their messages while a
//! proposal waits for its commit (MLS sends none then).

use kith_engine::{
    delivery::Envelope,
    group::{Delivery, GroupEvent, IntentKind, IntentState},
    identity::InboxId,
};
use kith_sim::world::World;
use openmls::prelude::{ContentType, MlsMessageIn, tls_codec::Deserialize as _};

const WINDOW: u64 = 1_000;

fn rename(name: &str) -> IntentKind {
    IntentKind::UpdateAttributes {
        changes: vec![("name".into(), Some(name.into()))],
    }
}

fn content_type(payload: &[u8]) -> Option<ContentType> {
    MlsMessageIn::tls_deserialize_exact(payload)
        .ok()?
        .try_into_protocol_message()
        .ok()
        .map(|p| p.content_type())
}

fn name(w: &World, client: usize) -> Option<String> {
    w.group(client)
        .metadata()
        .mutable
        .attributes
        .get("name")
        .cloned()
}

/// Alice proposes a rename and waits; Bob's key update, committed before
/// her wait is over, carries her proposal too. Her intent is done without
/// a commit of her own, and Carol, who got the proposal before the
/// commit, holds a message until the commit is in.
#[test]
fn a_proposal_committed_by_another_member_needs_no_commit_of_its_own() {
    let (alice, bob, carol) = (0, 1, 2);
    let mut w = World::with_proposals(11, 3, 3, WINDOW, 500);
    w.queue(alice, rename("alice's"));
    w.advance(alice, 100);
    let out = w.outbox(alice);
    assert_eq!(out.len(), 1, "only the proposal goes out");
    assert_eq!(content_type(&out[0].payload), Some(ContentType::Proposal));
    assert!(matches!(
        w.intent_states(alice).as_slice(),
        [IntentState::Proposed(p)] if p.epoch == 1
    ));
    let proposal = w.env(110, 1, 11, out[0].payload.clone());
    for m in [alice, bob, carol] {
        w.handle(m, &proposal, 120);
    }

    // Carol writes while the proposal waits: the message is kept, not sent.
    let held = w.send(carol, "while a proposal waits", 130);
    assert!(w.outbox(carol).is_empty(), "MLS sends nothing now");
    assert_eq!(w.delivery(carol, &held), Some(Delivery::Unpublished));

    // Bob updates his keys: a proposal, which (with no wait left for him)
    // he commits at once, with Alice's rename riding along.
    w.queue(bob, IntentKind::UpdateKeys);
    w.advance(bob, 140);
    w.advance(bob, 650);
    let out = w.outbox(bob);
    let kinds: Vec<_> = out.iter().map(|o| content_type(&o.payload)).collect();
    assert_eq!(
        kinds,
        [Some(ContentType::Proposal), Some(ContentType::Commit)],
        "Bob's proposal, then his commit"
    );
    let bob_proposal = w.env(150, 2, 1, out[0].payload.clone());
    let commit = w.env(660, 2, 2, out[1].payload.clone());
    for m in [alice, bob, carol] {
        w.handle(m, &bob_proposal, 670);
        w.handle(m, &commit, 680);
    }
    for m in [alice, bob, carol] {
        assert_eq!(w.group(m).epoch(), 2);
        assert_eq!(name(&w, m).as_deref(), Some("alice's"), "client {m}");
    }
    assert_eq!(w.state(alice), w.state(bob));
    assert_eq!(w.state(alice), w.state(carol));
    assert!(matches!(
        w.intent_states(alice).as_slice(),
        [IntentState::Committed { commit, .. }] if commit.epoch == 1
    ));

    // Alice's wait runs out after the commit: nothing is left to commit,
    // and once the epoch settles her intent is done.
    w.advance(alice, 700);
    assert!(w.outbox(alice).is_empty(), "Alice never commits");
    w.advance(alice, 660 + WINDOW);
    assert!(w.intent_states(alice).is_empty());
    assert!(
        w.events(alice)
            .iter()
            .any(|e| matches!(e, GroupEvent::IntentDone { .. }))
    );

    // Carol's held message goes out now, with the id she was given.
    w.advance(carol, 690);
    let out = w.outbox(carol);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].message_id, Some(held));
    let message = w.env(700, 3, 1, out[0].payload.clone());
    w.handle(alice, &message, 710);
    assert_eq!(w.delivery(alice, &held), Some(Delivery::Published));
}

/// Bob commits Alice's proposal. Carol gets the commit before the proposal
/// (they came by different nodes): the commit waits for it, then applies.
#[test]
fn a_commit_that_comes_before_its_proposal_waits_for_it() {
    let (alice, bob, carol) = (0, 1, 2);
    let mut w = World::with_proposals(12, 3, 3, WINDOW, 0);
    w.queue(alice, rename("alice's"));
    w.advance(alice, 100);
    let out = w.outbox(alice);
    let proposal = w.env(110, 1, 11, out[0].payload.clone());
    // Alice commits at once (no wait); only her proposal is delivered, and
    // Bob's commit, carrying it, wins.
    assert_eq!(content_type(&out[1].payload), Some(ContentType::Commit));
    w.handle(bob, &proposal, 120);
    w.queue(bob, IntentKind::CommitPending);
    w.advance(bob, 130);
    let out = w.outbox(bob);
    assert_eq!(out.len(), 1);
    let commit = w.env(140, 2, 1, out[0].payload.clone());

    w.handle(carol, &commit, 150);
    assert_eq!(w.group(carol).epoch(), 1, "the commit waits");
    w.handle(carol, &proposal, 160);
    assert_eq!(
        w.group(carol).epoch(),
        2,
        "and applies once its proposal is in"
    );
    assert_eq!(name(&w, carol).as_deref(), Some("alice's"));
    assert_eq!(w.group(carol).rewind_stats().rollbacks, 0);

    for m in [alice, bob] {
        w.handle(m, &commit, 170);
    }
    assert_eq!(w.state(alice), w.state(carol));
    assert_eq!(w.state(bob), w.state(carol));
    // Alice's own commit lost, but the winner carried her proposal.
    assert!(matches!(
        w.intent_states(alice).as_slice(),
        [IntentState::Committed { .. }]
    ));
}

/// As above, but before the proposal reaches Carol a later-sorting commit
/// for the same epoch does, and she applies it. When the proposal comes,
/// she rolls back to the commit that was waiting for it, as everyone else
/// applied.
#[test]
fn a_late_proposal_brings_back_the_commit_that_referred_to_it() {
    let (alice, bob, carol, dave, erin) = (0, 1, 2, 3, 4);
    let mut w = World::with_proposals(13, 5, 4, WINDOW, 10_000);
    let (proposal, commit) = renamed_by_alice_committed_by_bob(&mut w, alice, bob, 140);

    // Dave, without the proposal, adds Erin (a commit of his own).
    let payload = add_commit(&mut w, dave, erin, 130);
    let add = w.env(200, 3, 1, payload);

    // Carol: Bob's commit (waits), Dave's (applied), then the proposal.
    w.handle(carol, &commit, 210);
    w.handle(carol, &add, 220);
    assert_eq!(w.group(carol).members().len(), 5, "Dave's add applied");
    w.handle(carol, &proposal, 230);
    assert_eq!(name(&w, carol).as_deref(), Some("alice's"));
    assert_eq!(w.group(carol).members().len(), 4, "Dave's add lost");
    assert_eq!(w.group(carol).rewind_stats().rollbacks, 1);

    // Everyone else in canonical order.
    for m in [alice, bob, dave] {
        if m != bob {
            w.handle(m, &proposal, 240);
        }
        w.handle(m, &commit, 250);
        w.handle(m, &add, 260);
    }
    for m in [alice, bob, dave] {
        assert_eq!(w.state(m), w.state(carol), "client {m}");
    }
    // Dave regenerates his add on the canonical epoch.
    w.advance(dave, 300);
    let out = w.outbox(dave);
    assert_eq!(out.len(), 1);
    assert_eq!(content_type(&out[0].payload), Some(ContentType::Commit));
}

/// Alice proposes a rename (at 110, node 1) and waits; Bob commits it
/// (stamped `commit_time`, node 2). Returns the proposal and the commit.
fn renamed_by_alice_committed_by_bob(
    w: &mut World,
    alice: usize,
    bob: usize,
    commit_time: u64,
) -> (Envelope, Envelope) {
    w.queue(alice, rename("alice's"));
    w.advance(alice, 100);
    let out = w.outbox(alice);
    assert_eq!(out.len(), 1, "Alice waits for someone to commit");
    let proposal = w.env(110, 1, 11, out[0].payload.clone());
    w.handle(bob, &proposal, 120);
    w.queue(bob, IntentKind::CommitPending);
    w.advance(bob, 130);
    let payload = w.outbox(bob).remove(0).payload;
    (proposal, w.env(commit_time, 2, 1, payload))
}

/// `adder` queues and stages the add of `joiner`; returns the commit.
fn add_commit(w: &mut World, adder: usize, joiner: usize, at: u64) -> Vec<u8> {
    let key_package = w.clients[joiner].key_package.take().expect("key package");
    let inbox: InboxId = w.clients[joiner].inbox;
    w.queue(
        adder,
        IntentKind::AddMembers {
            key_packages: vec![key_package],
            sequences: vec![(inbox, 1)],
            admissions: Vec::new(),
        },
    );
    w.advance(adder, at);
    w.outbox(adder).remove(0).payload
}

/// In canonical order: Alice's proposal (110), Dave's add of Erin (150),
/// Bob's commit of Alice's proposal (160), Carol's add of Frank (300).
/// Dave's add is canonical. Carol meets them backwards: her own add, then
/// Bob's commit (it waits for the proposal), the proposal (Bob's commit
/// comes back), and Dave's add last. Bob's commit, once held, must
/// neither be forgotten when its proposal comes nor, replayed, get ahead
/// of Dave's add, which sorts before it.
#[test]
fn a_held_commit_keeps_its_place_in_a_replay() {
    let (alice, bob, carol, dave, erin, frank) = (0, 1, 2, 3, 4, 5);
    let mut w = World::with_proposals(14, 6, 4, WINDOW, 10_000);
    let (proposal, bobs) = renamed_by_alice_committed_by_bob(&mut w, alice, bob, 160);
    let payload = add_commit(&mut w, dave, erin, 130);
    let daves = w.env(150, 3, 1, payload);
    let payload = add_commit(&mut w, carol, frank, 130);
    let carols = w.env(300, 4, 1, payload);

    w.handle(carol, &carols, 310);
    assert_eq!(w.group(carol).epoch(), 2);
    w.handle(carol, &bobs, 320);
    assert_eq!(
        w.group(carol).members().len(),
        5,
        "Bob's commit waits for its proposal; Carol's add stays"
    );
    w.handle(carol, &proposal, 330);
    assert_eq!(
        name(&w, carol).as_deref(),
        Some("alice's"),
        "the proposal brings Bob's commit back"
    );
    assert_eq!(w.group(carol).members().len(), 4);
    w.handle(carol, &daves, 340);
    assert_eq!(w.group(carol).members().len(), 5, "Dave's add won");
    assert_eq!(name(&w, carol), None, "Bob's commit lost");

    for m in [alice, bob, dave] {
        for envelope in [&proposal, &daves, &bobs, &carols] {
            if m != bob || envelope != &proposal {
                w.handle(m, envelope, 400);
            }
        }
        assert_eq!(w.state(m), w.state(carol), "client {m}");
    }
}
