//! The adversary suite, engine side: a stranger or a malicious member
//! attacks a group of honest engines on real sled stores, hand-driven (the
//! attacker is an engine whose client was altered: it chooses its group id,
//! or sends what an honest client would not). The public-API half is in
//! `actors/tests/adversary.rs`; docs/security.md maps both to the threat
//! model.

use kith_engine::{
    delivery::Envelope,
    group::{
        ConversationKind, Group, GroupError, IntentKind, MAX_HELD, MAX_HELD_AHEAD, NewGroup,
        PolicyPreset,
    },
    identity::DmMode,
};
use kith_sim::{client::StepError, world::World};

const WINDOW: u64 = 0;

/// `attacker` (not a member) makes its own group under the id of the
/// world's group and adds `victim` with a fresh key package of the
/// victim's (anyone can fetch one from the node): the Welcome it would
/// publish to the victim.
fn strangers_welcome(w: &mut World, attacker: usize, victim: usize, at: u64) -> Vec<u8> {
    let group_id = w.group_id.clone();
    let now = w.base + at;
    {
        let c = &mut w.clients[attacker];
        let storage = c.storage();
        let me = c.me();
        let group = storage
            .step(|| {
                Ok::<_, StepError>(Group::create_with_id_for_tests(
                    &c.provider,
                    storage,
                    me,
                    &w.identities,
                    NewGroup {
                        kind: ConversationKind::Group,
                        dm_peer: None,
                        dm_mode: DmMode::NonRepudiable,
                        attributes: Default::default(),
                        preset: PolicyPreset::Default,
                        now_ms: now,
                        legacy: None,
                        gating: Default::default(),
                    },
                    &group_id,
                )?)
            })
            .expect("the attacker's group");
        let mut group = group;
        group.set_config(w.policy);
        c.group = Some(group);
        c.group_id = Some(group_id);
    }
    // A few epochs of its own first: a Welcome into a later epoch than
    // the victim's is one the victim keeps for a re-add.
    for (n, sequence) in (2..5).enumerate() {
        w.queue(
            attacker,
            IntentKind::UpdateAttributes {
                changes: vec![("name".into(), Some(format!("copy {n}")))],
            },
        );
        w.advance(attacker, at);
        let commit = w.outbox(attacker).remove(0);
        let commit = w.env(at, 9, sequence, commit.payload);
        w.handle(attacker, &commit, at);
    }
    let key_package = fresh_key_package(w, victim);
    let victim_inbox = w.clients[victim].inbox;
    w.queue(
        attacker,
        IntentKind::AddMembers {
            key_packages: vec![key_package],
            sequences: vec![(victim_inbox, 1)],
            admissions: Vec::new(),
        },
    );
    w.advance(attacker, at);
    let commit = w.outbox(attacker).remove(0);
    let commit = w.env(at, 9, 5, commit.payload);
    w.handle(attacker, &commit, at);
    w.advance(attacker, at + 1);
    w.outbox(attacker)
        .into_iter()
        .find(|o| o.topics[0].starts_with("welcome/"))
        .expect("the attacker's Welcome")
        .payload
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

/// `remover` removes `removed`; every member applies it.
fn remove(w: &mut World, remover: usize, removed: usize, at: u64) -> Envelope {
    let inbox = w.clients[removed].inbox;
    w.queue(
        remover,
        IntentKind::RemoveMembers {
            inboxes: vec![inbox],
        },
    );
    w.advance(remover, at);
    let commit = w.outbox(remover).remove(0);
    let commit = w.env(at, 1, at, commit.payload);
    for member in 0..3 {
        w.handle(member, &commit, at + 1);
    }
    commit
}

// ----- 2. any Welcome replaces a forked, removed or live group -------------

/// Finding 2: a stranger makes an MLS group under the id of a group Carol
/// was removed from, adds her with a key package it fetched, and sends her
/// the Welcome. Before the fix she "rejoined" the attacker's group under
/// the old conversation. Now it is refused and her state stays.
#[test]
fn a_strangers_welcome_for_a_group_id_held_is_refused() {
    let mut w = World::new(1, 4, 3, WINDOW);
    let (alice, carol, stranger) = (0, 2, 3);
    remove(&mut w, alice, carol, 100);
    assert!(!w.group(carol).is_active());
    let conversation = w.group(carol).conversation_id();
    let before = w.group(carol).epoch();

    let welcome = strangers_welcome(&mut w, stranger, carol, 200);
    let identities = &w.identities;
    let refused = w.clients[carol].join(identities, &welcome, w.policy, w.base + 210);
    assert!(
        matches!(
            refused,
            Err(StepError::Group(GroupError::NotPermitted(ref reason)))
                if reason.contains("not a member")
        ),
        "{refused:?}"
    );
    let held = w.group(carol);
    assert_eq!(held.epoch(), before, "the state held is untouched");
    assert!(!held.is_active());
    assert_eq!(held.conversation_id(), conversation);

    // A re-add by a member of the group is still taken.
    w.clients[carol].key_package = Some(fresh_key_package(&w, carol));
    w.add(alice, &[carol], 1_000);
    assert!(w.group(carol).is_active());
    assert_eq!(w.state(carol), w.state(alice));
}

/// The same Welcome reaching Carol while she is a live member is kept
/// unopened (opening it would spend her key package), and refused when
/// her removal makes the kept Welcomes worth trying.
#[test]
fn a_strangers_welcome_kept_while_a_member_is_refused_when_tried() {
    let mut w = World::new(2, 4, 3, WINDOW);
    let (alice, carol, stranger) = (0, 2, 3);
    let welcome = strangers_welcome(&mut w, stranger, carol, 50);
    let identities = &w.identities;
    assert!(
        !w.clients[carol]
            .join(identities, &welcome, w.policy, w.base + 60)
            .expect("kept"),
        "kept, not used"
    );
    remove(&mut w, alice, carol, 100);
    let identities = &w.identities;
    assert!(
        !w.clients[carol]
            .rejoin_deferred(identities, w.policy, w.base + 200)
            .expect("tried"),
        "the stranger's Welcome does not bring her back"
    );
    assert!(!w.group(carol).is_active());
    assert_eq!(
        w.group(carol).metadata().immutable.creator,
        w.clients[alice].inbox
    );
}

// ----- 4. poison envelopes: held junk ---------------------------------------

/// `payload` (an application message of the world's group) with the epoch
/// in its plaintext header set to `epoch`: what a stranger can make of any
/// message it sees on the topic.
fn with_epoch(w: &World, payload: &[u8], epoch: u64) -> Vec<u8> {
    let at = payload
        .windows(w.group_id.len())
        .position(|window| window == w.group_id.as_slice())
        .expect("the group id in the header")
        + w.group_id.len();
    let mut out = payload.to_vec();
    out[at..at + 8].copy_from_slice(&epoch.to_be_bytes());
    out
}

/// Finding 4: more than [`MAX_HELD`] junk envelopes claiming future epochs
/// filled the hold for good, after which a real message of the next epoch
/// (its commit not there yet) was dropped. Now junk claiming far epochs
/// gives way to it, and junk too far ahead is not held at all.
#[test]
fn junk_of_future_epochs_does_not_push_out_a_real_message() {
    let mut w = World::new(3, 3, 3, 1_000);
    let (alice, bob) = (0, 1);
    w.queue(
        bob,
        IntentKind::UpdateAttributes {
            changes: vec![("name".into(), Some("bob's".into()))],
        },
    );
    w.advance(bob, 100);
    let commit = w.outbox(bob).remove(0).payload;
    // Through node 4, which lags behind node 2 at Alice's.
    let commit = w.env(100, 4, 1, commit);
    w.handle(bob, &commit, 110);
    let id = w.send(bob, "after the rename", 120);
    let message = w.outbox(bob).remove(0).payload;
    assert_eq!(w.group(alice).epoch(), 1);

    let mut sequence = 100;
    for (epoch, copies) in [(1 + MAX_HELD_AHEAD, MAX_HELD + 10), (1_000, 10)] {
        let junk = with_epoch(&w, &message, epoch);
        for _ in 0..copies {
            sequence += 1;
            let e = w.env(130, 3, sequence, junk.clone());
            w.handle(alice, &e, 130);
        }
    }
    let real = w.env(140, 2, 2, message);
    w.handle(alice, &real, 140);
    w.handle(alice, &commit, 150);
    assert_eq!(w.group(alice).epoch(), 2);
    assert_eq!(
        w.delivery(alice, &id),
        Some(kith_engine::group::Delivery::Published),
        "the real message of epoch 2 was held and delivered"
    );
}

// ----- 7. state that outlives its use ----------------------------------------

/// Finding 7: the MLS state of a group this installation was removed from
/// was never deleted. Once the removal can no longer be rolled back (its
/// epoch settled: at the next `advance`, with a settle window of 0), the
/// epoch secrets, the message secrets of past epochs, the leaf keys,
/// retained envelopes and snapshots are deleted in one step; the messages
/// and the conversation stay, read-only.
#[test]
fn a_removed_members_group_secrets_are_deleted() {
    use kith_engine::group::ClientStore;
    use openmls::prelude::GroupId;

    let mut w = World::new(4, 3, 3, WINDOW);
    let (alice, carol) = (0, 2);
    let id = w.send(alice, "before", 10);
    let m = w.outbox(alice).remove(0).payload;
    let m = w.env(10, 1, 50, m);
    w.handle(carol, &m, 20);
    let group_id = GroupId::from_slice(&w.group_id);
    // Every value OpenMLS stored for the group: epoch secrets, message
    // secrets of past epochs, leaf keys, the tree.
    let held: Vec<Vec<u8>> = w.clients[carol]
        .storage()
        .raw_group_entries(&group_id)
        .expect("read")
        .into_iter()
        .map(|(_, value)| value.to_vec())
        .filter(|value| value.len() >= 32)
        .collect();
    assert!(!held.is_empty(), "a member holds the group's state");

    remove(&mut w, alice, carol, 100);
    let members = w.group(carol).members();
    let (epoch, authenticator) = (w.group(carol).epoch(), w.group(carol).epoch_authenticator());
    assert!(
        !w.clients[carol]
            .storage()
            .raw_group_entries(&group_id)
            .expect("read")
            .is_empty(),
        "kept until the removal settles: a rollback could still undo it"
    );
    w.advance(carol, 100);
    let c = &w.clients[carol];
    let kv = c.storage();
    assert!(kv.raw_group_entries(&group_id).expect("read").is_empty());
    // Nor is any of it anywhere else in the store.
    let db = kv.db();
    for name in db.tree_names() {
        let tree = db.open_tree(&name).expect("tree");
        for item in tree.iter() {
            let (_, value) = item.expect("entry");
            for secret in &held {
                assert!(
                    !value.windows(secret.len()).any(|w| w == secret.as_slice()),
                    "a value of the deleted state is still stored"
                );
            }
        }
    }
    // What stays is the public face of the last epoch.
    let kept = Group::load(&c.provider, kv, &w.group_id)
        .expect("load")
        .expect("the conversation's group stays, read-only");
    assert!(!kept.is_active());
    assert_eq!(kept.epoch(), epoch);
    assert_eq!(kept.epoch_authenticator(), authenticator);
    assert_eq!(kept.members(), members);
    let store = ClientStore(kv);
    assert!(store.retained(&w.group_id).expect("read").is_empty());
    assert!(store.snapshots(&w.group_id).expect("read").is_empty());
    let conversation = w.group(carol).conversation_id();
    assert!(
        store.message(&conversation, &id).expect("read").is_some(),
        "the messages stay"
    );
}

/// Once a removed member's state is deleted, what is kept of it (the last
/// tree's leaves and the immutable metadata) still decides which Welcome
/// may bring her back: a stranger's is refused, a member's re-add is
/// taken, and she reads and sends in the group again.
#[test]
fn after_the_state_is_deleted_only_a_members_welcome_brings_her_back() {
    let mut w = World::new(5, 4, 3, WINDOW);
    let (alice, bob, carol, stranger) = (0, 1, 2, 3);
    remove(&mut w, alice, carol, 100);
    w.advance(carol, 100);
    let group_id = openmls::prelude::GroupId::from_slice(&w.group_id);
    assert!(
        w.clients[carol]
            .storage()
            .raw_group_entries(&group_id)
            .expect("read")
            .is_empty(),
        "deleted"
    );
    let conversation = w.group(carol).conversation_id();

    let welcome = strangers_welcome(&mut w, stranger, carol, 200);
    let identities = &w.identities;
    let refused = w.clients[carol].join(identities, &welcome, w.policy, w.base + 210);
    assert!(
        matches!(
            refused,
            Err(StepError::Group(GroupError::NotPermitted(ref reason)))
                if reason.contains("not a member")
        ),
        "{refused:?}"
    );
    assert!(!w.group(carol).is_active());
    assert_eq!(w.group(carol).conversation_id(), conversation);

    w.clients[carol].key_package = Some(fresh_key_package(&w, carol));
    w.add(alice, &[carol], 1_000);
    assert!(w.group(carol).is_active());
    assert_eq!(w.group(carol).conversation_id(), conversation);
    assert_eq!(w.state(carol), w.state(alice));
    let id = w.send(bob, "welcome back", 1_100);
    let m = w.outbox(bob).remove(0).payload;
    let m = w.env(1_100, 1, 1_100, m);
    w.handle(carol, &m, 1_110);
    let store = kith_engine::group::ClientStore(w.clients[carol].storage());
    assert!(
        store.message(&conversation, &id).expect("read").is_some(),
        "she reads the group again"
    );
}

/// On an eventually consistent network a removal that settled can still
/// turn out to be a losing branch's (a commit sorting before it arrives
/// once a partition heals, and the members on that branch still count
/// the removed member in): only with its state can the member see that
/// fork and ask to be re-added. So it keeps the state for the group's
/// `retire_grace_ms` after its removal (a day by default), and then
/// deletes it as above. With a strong order there is no wait (the tests
/// above).
#[test]
fn on_an_eventual_network_the_state_is_deleted_once_the_grace_is_over() {
    use kith_engine::group::RETIRE_GRACE_MS;

    let window = 100;
    let mut w = World::new(6, 3, 3, window);
    let (alice, carol) = (0, 2);
    assert_eq!(w.policy.retire_grace_ms, RETIRE_GRACE_MS);
    remove(&mut w, alice, carol, 100);
    let group_id = openmls::prelude::GroupId::from_slice(&w.group_id);
    let entries = |w: &World| {
        w.clients[carol]
            .storage()
            .raw_group_entries(&group_id)
            .expect("read")
            .len()
    };
    // Settled (several windows later), but within the grace.
    w.advance(carol, 100 + 10 * window);
    assert!(!w.group(carol).is_active());
    assert!(!w.group(carol).is_retired(), "kept for the grace");
    assert!(entries(&w) > 0, "the state is kept while a fork may show");
    w.advance(carol, 100 + RETIRE_GRACE_MS);
    assert!(!w.group(carol).is_retired(), "one ms short of the grace");
    w.advance(carol, 101 + RETIRE_GRACE_MS);
    assert!(w.group(carol).is_retired());
    assert_eq!(entries(&w), 0, "deleted once the grace is over");
}
