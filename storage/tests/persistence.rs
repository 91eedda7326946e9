//! A conversation survives closing and reopening every member's database.

mod common;

use common::{Member, Received, TestError, deliver, wire};
use openmls::prelude::{LeafNodeParameters, OpenMlsProvider as _};

#[test]
fn conversation_continues_after_reopening_from_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let alice = Member::new("alice", dir.path());
    let bob = Member::new("bob", dir.path());
    let group_id = b"persistence-group";

    // Alice creates the group and adds Bob.
    let mut alice_group = alice.create_group(group_id);
    let (commit, welcome, _) = alice
        .provider
        .storage()
        .step(|| {
            alice_group
                .add_members(&alice.provider, &alice.signer, &[bob.key_package()])
                .map_err(TestError::from)
        })
        .expect("add bob");
    drop(commit); // nobody else is in the group yet
    alice.merge_own(&mut alice_group);
    let mut bob_group = bob.join(&wire(&welcome));
    assert_eq!(alice_group.epoch(), bob_group.epoch());

    // They talk, and Bob commits an update.
    let hello = alice.send(&mut alice_group, "hello bob");
    deliver(&mut [(&bob, &mut bob_group)], &hello, "hello bob");
    let reply = bob.send(&mut bob_group, "hi alice");
    deliver(&mut [(&alice, &mut alice_group)], &reply, "hi alice");
    let update = bob
        .provider
        .storage()
        .step(|| {
            bob_group
                .self_update(&bob.provider, &bob.signer, LeafNodeParameters::default())
                .map_err(TestError::from)
        })
        .expect("bob updates");
    bob.merge_own(&mut bob_group);
    assert_eq!(
        alice.receive(&mut alice_group, &wire(update.commit())),
        Received::CommitMerged
    );
    let epoch_before = alice_group.epoch();
    let authenticator_before = alice_group.epoch_authenticator().as_slice().to_vec();

    // Close everything: only the files on disk remain.
    drop((alice_group, bob_group));
    let alice = alice.reopen();
    let bob = bob.reopen();

    let mut alice_group = alice.load(group_id);
    let mut bob_group = bob.load(group_id);
    assert_eq!(alice_group.epoch(), epoch_before);
    assert_eq!(bob_group.epoch(), epoch_before);
    assert_eq!(
        alice_group.epoch_authenticator().as_slice(),
        authenticator_before
    );
    assert_eq!(
        bob_group.epoch_authenticator().as_slice(),
        authenticator_before
    );

    // The conversation continues: messages both ways, then a new member.
    let again = alice.send(&mut alice_group, "still here?");
    deliver(&mut [(&bob, &mut bob_group)], &again, "still here?");
    let yes = bob.send(&mut bob_group, "yes");
    deliver(&mut [(&alice, &mut alice_group)], &yes, "yes");

    let carol = Member::new("carol", dir.path());
    let (commit, welcome, _) = alice
        .provider
        .storage()
        .step(|| {
            alice_group
                .add_members(&alice.provider, &alice.signer, &[carol.key_package()])
                .map_err(TestError::from)
        })
        .expect("add carol");
    alice.merge_own(&mut alice_group);
    assert_eq!(
        bob.receive(&mut bob_group, &wire(&commit)),
        Received::CommitMerged
    );
    let mut carol_group = carol.join(&wire(&welcome));
    let welcome_all = bob.send(&mut bob_group, "welcome carol");
    deliver(
        &mut [(&alice, &mut alice_group), (&carol, &mut carol_group)],
        &welcome_all,
        "welcome carol",
    );
    assert_eq!(
        alice_group.epoch_authenticator().as_slice(),
        carol_group.epoch_authenticator().as_slice()
    );

    // And once more across a restart, now with three members.
    drop((alice_group, bob_group, carol_group));
    let (alice, bob, carol) = (alice.reopen(), bob.reopen(), carol.reopen());
    let mut alice_group = alice.load(group_id);
    let mut bob_group = bob.load(group_id);
    let mut carol_group = carol.load(group_id);
    let last = carol.send(&mut carol_group, "bye");
    deliver(
        &mut [(&alice, &mut alice_group), (&bob, &mut bob_group)],
        &last,
        "bye",
    );
}
