//! Rolling a group back to an earlier epoch: restore every member's
//! snapshot, check that nothing of the later epochs is left, take a
//! different path, and never touch another group in the same database.

mod common;

use common::{Member, Received, TestError, deliver, wire};
use kith_storage::{EntryKind, GroupSnapshot};
use openmls::prelude::{
    GroupId, LeafNodeParameters, MlsGroup, MlsMessageIn, OpenMlsProvider as _,
    ProcessedMessageContent, tls_codec::Deserialize as _,
};

const GROUP: &[u8] = b"rollback-group";
const OTHER: &[u8] = b"bystander-group";

fn snapshot(member: &Member) -> GroupSnapshot {
    member
        .provider
        .storage()
        .snapshot_group(&GroupId::from_slice(GROUP))
        .expect("snapshot")
}

fn raw_other(member: &Member) -> Vec<(Vec<u8>, Vec<u8>)> {
    member
        .provider
        .storage()
        .raw_group_entries(&GroupId::from_slice(OTHER))
        .expect("scan")
        .into_iter()
        .map(|(k, v)| (k, v.to_vec()))
        .collect()
}

/// Process a commit and take the snapshot of the epoch it ends *before*
/// merging it: that is the moment the epoch ends, and the state that a
/// rollback must return to.
fn process_commit_with_snapshot(
    member: &Member,
    group: &mut MlsGroup,
    commit: &[u8],
) -> GroupSnapshot {
    member
        .provider
        .storage()
        .step(|| {
            let message =
                MlsMessageIn::tls_deserialize_exact(commit)?.try_into_protocol_message()?;
            let processed = group.process_message(&member.provider, message)?;
            let snapshot = member.provider.storage().snapshot_group(group.group_id())?;
            let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content()
            else {
                return Err("expected a commit".into());
            };
            group.merge_staged_commit(&member.provider, *staged)?;
            Ok::<_, TestError>(snapshot)
        })
        .expect("process commit")
}

#[test]
fn three_members_roll_back_three_epochs_and_take_another_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let alice = Member::new("alice", dir.path());
    let bob = Member::new("bob", dir.path());
    let carol = Member::new("carol", dir.path());
    let dave = Member::new("dave", dir.path());

    // Epoch 1: Alice, Bob and Carol.
    let mut a = alice.create_group(GROUP);
    let (_, welcome, _) = alice
        .provider
        .storage()
        .step(|| {
            a.add_members(
                &alice.provider,
                &alice.signer,
                &[bob.key_package(), carol.key_package()],
            )
            .map_err(TestError::from)
        })
        .expect("add bob and carol");
    alice.merge_own(&mut a);
    let mut b = bob.join(&wire(&welcome));
    let mut c = carol.join(&wire(&welcome));
    assert_eq!(a.epoch().as_u64(), 1);

    // A second group in the same databases (Alice's and Bob's), which the
    // rollback of the first must not touch.
    let mut a2 = alice.create_group(OTHER);
    let (_, welcome2, _) = alice
        .provider
        .storage()
        .step(|| {
            a2.add_members(&alice.provider, &alice.signer, &[bob.key_package()])
                .map_err(TestError::from)
        })
        .expect("add bob to the other group");
    alice.merge_own(&mut a2);
    let mut b2 = bob.join(&wire(&welcome2));
    let note = alice.send(&mut a2, "other group, before");
    deliver(&mut [(&bob, &mut b2)], &note, "other group, before");
    let alice_other_before = raw_other(&alice);
    let bob_other_before = raw_other(&bob);

    // Epoch 1 -> 2: Bob commits an update. Each member's epoch-1 snapshot is
    // taken at the moment epoch 1 ends.
    let update = bob
        .provider
        .storage()
        .step(|| {
            b.self_update(&bob.provider, &bob.signer, LeafNodeParameters::default())
                .map_err(TestError::from)
        })
        .expect("bob updates");
    let bob_snapshot = snapshot(&bob);
    assert!(
        bob.provider
            .storage()
            .group_entries(b.group_id())
            .expect("scan")
            .contains(&EntryKind::GroupState),
        "bob's snapshot holds his pending commit"
    );
    bob.merge_own(&mut b);
    let alice_snapshot = process_commit_with_snapshot(&alice, &mut a, &wire(update.commit()));
    let carol_snapshot = process_commit_with_snapshot(&carol, &mut c, &wire(update.commit()));
    for s in [&alice_snapshot, &bob_snapshot, &carol_snapshot] {
        assert_eq!(s.epoch(), 1);
    }
    let original_epoch2 = a.epoch_authenticator().as_slice().to_vec();

    // Epoch 2 -> 3: Alice adds Dave.
    let (add, welcome, _) = alice
        .provider
        .storage()
        .step(|| {
            a.add_members(&alice.provider, &alice.signer, &[dave.key_package()])
                .map_err(TestError::from)
        })
        .expect("add dave");
    alice.merge_own(&mut a);
    for (member, group) in [(&bob, &mut b), (&carol, &mut c)] {
        assert_eq!(member.receive(group, &wire(&add)), Received::CommitMerged);
    }
    let mut d = dave.join(&wire(&welcome));
    let hi = dave.send(&mut d, "hi from dave");
    deliver(
        &mut [(&alice, &mut a), (&bob, &mut b), (&carol, &mut c)],
        &hi,
        "hi from dave",
    );

    // Epoch 3 -> 4: Alice removes Dave.
    let dave_leaf = dave.leaf_of(&d);
    let (remove, _, _) = alice
        .provider
        .storage()
        .step(|| {
            a.remove_members(&alice.provider, &alice.signer, &[dave_leaf])
                .map_err(TestError::from)
        })
        .expect("remove dave");
    alice.merge_own(&mut a);
    for (member, group) in [(&bob, &mut b), (&carol, &mut c)] {
        assert_eq!(
            member.receive(group, &wire(&remove)),
            Received::CommitMerged
        );
    }
    assert_eq!(a.epoch().as_u64(), 4);
    let at4 = carol.send(&mut c, "epoch four");
    deliver(&mut [(&alice, &mut a), (&bob, &mut b)], &at4, "epoch four");
    for member in [&alice, &bob, &carol] {
        let epochs = member
            .provider
            .storage()
            .epoch_key_pair_epochs(&GroupId::from_slice(GROUP))
            .expect("scan");
        assert!(epochs.contains(&4), "{}: {epochs:?}", member.name);
    }

    // Everyone restores its epoch-1 snapshot.
    drop((a, b, c));
    for (member, snap) in [
        (&alice, &alice_snapshot),
        (&bob, &bob_snapshot),
        (&carol, &carol_snapshot),
    ] {
        let storage = member.provider.storage();
        storage.restore_group(snap).expect("restore");

        // A prefix scan finds exactly the snapshot, byte for byte ...
        let restored = storage
            .snapshot_group(&GroupId::from_slice(GROUP))
            .expect("snapshot after restore");
        assert_eq!(
            &restored, snap,
            "{}: stored state is the snapshot",
            member.name
        );
        assert_eq!(restored.epoch(), 1);
        // ... so nothing of epochs 2 to 4 is left: no epoch key pairs ...
        let epochs = storage
            .epoch_key_pair_epochs(&GroupId::from_slice(GROUP))
            .expect("scan");
        assert!(!epochs.is_empty());
        assert!(
            epochs.iter().all(|e| *e == 1),
            "{}: epoch key pairs left: {epochs:?}",
            member.name
        );
        // ... and no stray update key pairs or proposals.
        assert_eq!(
            storage
                .count_entries(EntryKind::EncryptionKeyPair)
                .expect("count"),
            0
        );
        assert_eq!(
            storage
                .count_entries(EntryKind::QueuedProposal)
                .expect("count"),
            0
        );
    }
    assert_eq!(
        raw_other(&alice),
        alice_other_before,
        "alice's other group untouched"
    );
    assert_eq!(
        raw_other(&bob),
        bob_other_before,
        "bob's other group untouched"
    );

    let mut a = alice.load(GROUP);
    let mut b = bob.load(GROUP);
    let mut c = carol.load(GROUP);
    for group in [&a, &b, &c] {
        assert_eq!(group.epoch().as_u64(), 1);
    }
    assert!(
        b.pending_commit().is_some(),
        "bob's pending commit came back"
    );

    // A different commit for epoch 1: Carol updates. Everyone processes it
    // (Bob's pending commit is discarded by merging Carol's).
    let other_path = carol
        .provider
        .storage()
        .step(|| {
            c.self_update(
                &carol.provider,
                &carol.signer,
                LeafNodeParameters::default(),
            )
            .map_err(TestError::from)
        })
        .expect("carol updates");
    carol.merge_own(&mut c);
    for (member, group) in [(&alice, &mut a), (&bob, &mut b)] {
        assert_eq!(
            member.receive(group, &wire(other_path.commit())),
            Received::CommitMerged
        );
    }
    assert!(b.pending_commit().is_none());
    for group in [&a, &b, &c] {
        assert_eq!(group.epoch().as_u64(), 2);
        assert_eq!(
            group.epoch_authenticator().as_slice(),
            c.epoch_authenticator().as_slice()
        );
    }
    assert_ne!(
        c.epoch_authenticator().as_slice(),
        original_epoch2,
        "the new epoch 2 is not the old one"
    );
    assert_eq!(a.members().count(), 3);

    let m = alice.send(&mut a, "from alice");
    deliver(&mut [(&bob, &mut b), (&carol, &mut c)], &m, "from alice");
    let m = bob.send(&mut b, "from bob");
    deliver(&mut [(&alice, &mut a), (&carol, &mut c)], &m, "from bob");
    let m = carol.send(&mut c, "from carol");
    deliver(&mut [(&alice, &mut a), (&bob, &mut b)], &m, "from carol");

    // The bystander group still works.
    let after = bob.send(&mut b2, "other group, after");
    deliver(&mut [(&alice, &mut a2)], &after, "other group, after");
}

/// A snapshot is self-contained: restored into an empty database (with only
/// the signature key beside it), the group loads and processes a commit
/// whose path secrets are encrypted to the key of an own update proposal,
/// which lives outside the group's key space.
#[test]
fn a_snapshot_restored_into_an_empty_store_is_a_working_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let alice = Member::new("alice", dir.path());
    let bob = Member::new("bob", dir.path());
    let mut a = alice.create_group(GROUP);
    let (_, welcome, _) = a
        .add_members(&alice.provider, &alice.signer, &[bob.key_package()])
        .expect("add bob");
    alice.merge_own(&mut a);
    let mut b = bob.join(&wire(&welcome));

    // Bob proposes an update; its HPKE key pair is stored globally.
    let (proposal, _) = bob
        .provider
        .storage()
        .step(|| {
            b.propose_self_update(&bob.provider, &bob.signer, LeafNodeParameters::default())
                .map_err(TestError::from)
        })
        .expect("propose");
    let snapshot = bob
        .provider
        .storage()
        .snapshot_group(b.group_id())
        .expect("snapshot");
    assert_eq!(
        alice.receive(&mut a, &wire(&proposal)),
        Received::ProposalStored
    );
    let (commit, _, _) = alice
        .provider
        .storage()
        .step(|| {
            a.commit_to_pending_proposals(&alice.provider, &alice.signer)
                .map_err(TestError::from)
        })
        .expect("commit bob's update");
    alice.merge_own(&mut a);

    // A new, empty database gets Bob's signer and the snapshot, nothing else.
    let fresh = Member::new("bob-restored", dir.path());
    bob.signer
        .store(fresh.provider.storage())
        .expect("store signer");
    let restored = bytes_round_trip(&snapshot);
    fresh
        .provider
        .storage()
        .restore_group(&restored)
        .expect("restore into an empty store");
    assert_eq!(
        fresh
            .provider
            .storage()
            .count_entries(EntryKind::EncryptionKeyPair)
            .expect("count"),
        1,
        "the update's key pair came with the snapshot"
    );
    let mut b = fresh.load(GROUP);
    assert_eq!(
        fresh.receive(&mut b, &wire(&commit)),
        Received::CommitMerged
    );
    assert_eq!(
        a.epoch_authenticator().as_slice(),
        b.epoch_authenticator().as_slice()
    );
    let hello = alice.send(&mut a, "from alice");
    deliver(&mut [(&fresh, &mut b)], &hello, "from alice");
    let reply = fresh
        .provider
        .storage()
        .step(|| {
            b.create_message(&fresh.provider, &bob.signer, b"from bob")
                .map_err(TestError::from)
        })
        .expect("reply");
    deliver(&mut [(&alice, &mut a)], &wire(&reply), "from bob");
}

/// Through the byte encoding, as the engine would persist it.
fn bytes_round_trip(snapshot: &GroupSnapshot) -> GroupSnapshot {
    GroupSnapshot::from_bytes(&snapshot.to_bytes()).expect("decode snapshot")
}
