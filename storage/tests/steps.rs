//! The step API, format checks and bad stored bytes, on a real sled
//! database.

mod common;

use common::{Client, Member, TestError, pair, wire};
use kith_storage::{
    Codec, Durability, EntryKind, GroupSnapshot, KithProvider, SledMlsStorage, StorageConfig,
    StorageError,
};
use openmls::prelude::{GroupId, MlsGroup, OpenMlsProvider as _};
use openmls_traits::storage::StorageProvider;

/// A tiny stored value, through the public `StorageProvider` surface.
fn psk_count(storage: &SledMlsStorage) -> usize {
    storage.count_entries(EntryKind::Psk).expect("count")
}

fn store_psk(provider: &KithProvider, id: &[u8]) {
    openmls::schedule::PreSharedKeyId::external(id.to_vec(), vec![])
        .store(provider, b"secret")
        .expect("store psk");
}

#[test]
fn a_step_is_invisible_until_committed_and_discarded_when_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = KithProvider::open(dir.path().join("db")).expect("open");
    let storage = provider.storage();

    let step = storage.begin_step().expect("begin");
    store_psk(&provider, b"one");
    assert_eq!(psk_count(storage), 1, "the writing thread sees its step");
    std::thread::scope(|s| {
        s.spawn(|| assert_eq!(psk_count(storage), 0, "other threads do not"));
    });
    drop(step);
    assert_eq!(psk_count(storage), 0, "dropping the step discarded it");

    let step = storage.begin_step().expect("begin");
    store_psk(&provider, b"two");
    step.commit().expect("commit");
    std::thread::scope(|s| {
        s.spawn(|| assert_eq!(psk_count(storage), 1, "committed is visible everywhere"));
    });
}

#[test]
fn steps_do_not_nest_and_an_err_closure_discards() {
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = KithProvider::open(dir.path().join("db")).expect("open");
    let storage = provider.storage();

    let outer = storage.begin_step().expect("begin");
    assert!(matches!(
        storage.begin_step(),
        Err(StorageError::StepAlreadyOpen)
    ));
    outer.discard();

    let result: Result<(), TestError> = storage.step(|| {
        store_psk(&provider, b"doomed");
        Err("the operation failed".into())
    });
    assert!(result.is_err());
    assert_eq!(psk_count(storage), 0);
    // The failed step is closed: a new one opens.
    storage.begin_step().expect("begin again").discard();
}

#[test]
fn steps_on_two_threads_are_independent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = KithProvider::open(dir.path().join("db")).expect("open");
    std::thread::scope(|s| {
        for name in [b"left".as_slice(), b"right".as_slice()] {
            let provider = &provider;
            s.spawn(move || {
                let step = provider.storage().begin_step().expect("begin");
                store_psk(provider, name);
                assert!(
                    psk_count(provider.storage()) >= 1,
                    "a step sees its own write"
                );
                step.commit().expect("commit");
            });
        }
    });
    assert_eq!(psk_count(provider.storage()), 2);
}

#[test]
fn committed_steps_survive_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    {
        let provider = KithProvider::open(&path).expect("open");
        let step = provider.storage().begin_step().expect("begin");
        store_psk(&provider, b"kept");
        step.commit().expect("commit");
        let discarded = provider.storage().begin_step().expect("begin");
        store_psk(&provider, b"lost");
        drop(discarded);
    }
    let storage = SledMlsStorage::open(&path).expect("reopen");
    assert_eq!(psk_count(&storage), 1);
}

#[test]
fn a_database_refuses_another_codec() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    drop(SledMlsStorage::open(&path).expect("create with the default codec"));
    let other = Codec::ALL
        .into_iter()
        .find(|c| *c != Codec::default())
        .expect("more than one codec");
    let config = StorageConfig {
        codec: other,
        durability: Durability::Sync,
    };
    match SledMlsStorage::open_with(&path, config) {
        Err(StorageError::CodecMismatch { found, requested }) => {
            assert_eq!(found, Codec::default());
            assert_eq!(requested, other);
        }
        other => panic!("expected a codec mismatch, got {other:?}"),
    }
}

#[test]
fn every_codec_runs_a_group() {
    for codec in Codec::ALL {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = StorageConfig {
            codec,
            durability: Durability::Buffered { flush_every_ms: 50 },
        };
        let alice = KithProvider::open_with(dir.path().join("alice"), config).expect("open");
        let bob = KithProvider::open_with(dir.path().join("bob"), config).expect("open");
        let (alice_client, bob_client) = (Client::new("alice", &alice), Client::new("bob", &bob));
        let (mut a, mut b) = pair(&alice_client, &bob_client);
        let message = a
            .create_message(&alice, &alice_client.signer, b"codec check")
            .expect("encrypt");
        let got = common::receive(&bob, &mut b, &wire(&message)).expect("decrypt");
        assert_eq!(common::text(got), "codec check", "{codec:?}");
        // Reload from the store, which decodes everything with the codec.
        let reloaded = MlsGroup::load(alice.storage(), a.group_id())
            .expect("load")
            .expect("stored");
        assert_eq!(
            reloaded.epoch_authenticator().as_slice(),
            a.epoch_authenticator().as_slice()
        );
    }
}

#[test]
fn corrupt_stored_bytes_give_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let alice = Member::new("alice", dir.path());
    let group = alice.create_group(b"to-be-corrupted");
    let group_id = group.group_id().clone();
    let storage = alice.provider.storage();
    // Overwrite every stored value of the group with garbage, as a damaged
    // disk might.
    let tree = storage.db().open_tree("kith-openmls").expect("tree");
    let mut damaged = 0;
    for entry in tree.iter() {
        let (key, _) = entry.expect("entry");
        if key.first() == Some(&b'g') {
            tree.insert(key, b"\xff not a value".as_slice())
                .expect("insert");
            damaged += 1;
        }
    }
    assert!(damaged > 5);
    match MlsGroup::load(storage, &group_id) {
        Err(StorageError::Decode { .. }) => {}
        other => panic!(
            "expected a decode error, got {:?}",
            other.map(|g| g.is_some())
        ),
    }
    assert!(matches!(
        storage.snapshot_group(&group_id),
        Err(StorageError::Decode { .. })
    ));
    let context: Result<Option<openmls::prelude::GroupContext>, _> =
        storage.group_context(&group_id);
    assert!(matches!(context, Err(StorageError::Decode { .. })));
}

#[test]
fn snapshots_round_trip_through_bytes_and_refuse_mismatches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let alice = Member::new("alice", dir.path());
    let group = alice.create_group(b"snap");
    let storage = alice.provider.storage();
    let snapshot = storage.snapshot_group(group.group_id()).expect("snapshot");
    let decoded = GroupSnapshot::from_bytes(&snapshot.to_bytes()).expect("decode");
    assert_eq!(decoded, snapshot);
    assert_eq!(decoded.group_id(), b"snap");
    assert_eq!(decoded.epoch(), 0);
    assert!(!format!("{decoded:?}").contains("private"));

    // A snapshot of a group that does not exist is an error.
    assert!(matches!(
        storage.snapshot_group(&GroupId::from_slice(b"nope")),
        Err(StorageError::GroupNotFound(_))
    ));

    // A snapshot from a storage with another codec cannot be restored here.
    let other = Codec::ALL
        .into_iter()
        .find(|c| *c != Codec::default())
        .expect("more than one codec");
    let foreign = SledMlsStorage::open_with(
        dir.path().join("foreign"),
        StorageConfig {
            codec: other,
            durability: Durability::Sync,
        },
    )
    .expect("open");
    let before = storage.raw_group_entries(group.group_id()).expect("scan");
    assert!(matches!(
        foreign.restore_group(&snapshot),
        Err(StorageError::SnapshotCodecMismatch { .. })
    ));
    assert!(
        foreign
            .group_entries(group.group_id())
            .expect("scan")
            .is_empty()
    );
    assert_eq!(
        storage.raw_group_entries(group.group_id()).expect("scan"),
        before
    );
}

#[test]
fn a_restore_inside_a_step_is_part_of_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let alice = Member::new("alice", dir.path());
    let bob = Member::new("bob", dir.path());
    let mut a = alice.create_group(b"in-step");
    let snapshot = alice
        .provider
        .storage()
        .snapshot_group(a.group_id())
        .expect("snapshot");
    a.add_members(&alice.provider, &alice.signer, &[bob.key_package()])
        .expect("add");
    alice.merge_own(&mut a);
    let storage = alice.provider.storage();
    let at_epoch_1 = storage.raw_group_entries(a.group_id()).expect("scan");

    let step = storage.begin_step().expect("begin");
    storage.restore_group(&snapshot).expect("restore");
    assert_eq!(
        storage
            .snapshot_group(a.group_id())
            .expect("snapshot")
            .epoch(),
        0,
        "the step sees the restore"
    );
    drop(step);
    assert_eq!(
        storage.raw_group_entries(a.group_id()).expect("scan"),
        at_epoch_1,
        "discarding the step discarded the restore"
    );
}

/// sled lets go of its file lock only after its IO threads have, a moment
/// after the store is dropped: an open meanwhile waits instead of failing.
#[test]
fn reopening_waits_for_a_lock_about_to_be_released() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let first = SledMlsStorage::open(&path).expect("open");
    let closer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(first);
    });
    let second = SledMlsStorage::open(&path).expect("the second open waits for the first to close");
    closer.join().expect("closer");
    assert_eq!(psk_count(&second), 0);
}

/// A group savepoint puts back that group's entries and its own leaves' key
/// pairs, and nothing else: another group's work and global entries written
/// since stay, and so does what the step wrote to the group before it.
#[test]
fn a_group_savepoint_puts_back_only_that_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let alice = Member::new("alice", dir.path());
    let bob = Member::new("bob", dir.path());
    let mut a = alice.create_group(b"saved");
    let mut other = alice.create_group(b"other");
    let storage = alice.provider.storage();
    let at_epoch_0 = storage.snapshot_group(a.group_id()).expect("snapshot");
    a.add_members(&alice.provider, &alice.signer, &[bob.key_package()])
        .expect("add");
    alice.merge_own(&mut a);
    assert!(
        storage
            .savepoint_group(a.group_id())
            .expect("savepoint")
            .is_none(),
        "no savepoint outside a step"
    );
    let key_pairs = || {
        storage
            .count_entries(EntryKind::EncryptionKeyPair)
            .expect("count")
    };

    let step = storage.begin_step().expect("begin");
    // Before the savepoint: an own update leaf (a group entry and a key pair).
    a.propose_self_update(&alice.provider, &alice.signer, Default::default())
        .expect("propose");
    let saved = storage.raw_group_entries(a.group_id()).expect("scan");
    let saved_key_pairs = key_pairs();
    let savepoint = storage
        .savepoint_group(a.group_id())
        .expect("savepoint")
        .expect("a step is open");

    // After it: a restore of the group (which deletes that key pair), a
    // global entry, and another group's own update leaf.
    storage.restore_group(&at_epoch_0).expect("restore");
    assert_ne!(
        storage.raw_group_entries(a.group_id()).expect("scan"),
        saved
    );
    assert_eq!(key_pairs(), saved_key_pairs - 1);
    store_psk(&alice.provider, b"after");
    other
        .propose_self_update(&alice.provider, &alice.signer, Default::default())
        .expect("propose");
    let other_entries = storage.raw_group_entries(other.group_id()).expect("scan");

    storage.rollback_group_to(savepoint).expect("roll back");
    assert_eq!(
        storage.raw_group_entries(a.group_id()).expect("scan"),
        saved,
        "the group is as it was at the savepoint, own update included"
    );
    assert_eq!(
        key_pairs(),
        saved_key_pairs + 1,
        "its key pair is back, and the other group's stays"
    );
    assert_eq!(psk_count(storage), 1, "the global entry stays");
    assert_eq!(
        storage.raw_group_entries(other.group_id()).expect("scan"),
        other_entries,
        "the other group's work stays"
    );
    step.commit().expect("commit");
    assert_eq!(
        storage.raw_group_entries(a.group_id()).expect("scan"),
        saved,
        "and that is what the step committed"
    );
    let a = alice.load(b"saved");
    assert_eq!(a.epoch().as_u64(), 1);
    assert_eq!(a.pending_proposals().count(), 1);
}

/// A savepoint outlives its step only to be refused.
#[test]
fn a_savepoint_of_an_ended_step_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let alice = Member::new("alice", dir.path());
    let mut a = alice.create_group(b"stale");
    let storage = alice.provider.storage();

    let step = storage.begin_step().expect("begin");
    let savepoint = storage
        .savepoint_group(a.group_id())
        .expect("savepoint")
        .expect("a step is open");
    step.commit().expect("commit");

    let step = storage.begin_step().expect("begin");
    a.propose_self_update(&alice.provider, &alice.signer, Default::default())
        .expect("propose");
    let written = storage.raw_group_entries(a.group_id()).expect("scan");
    assert!(matches!(
        storage.rollback_group_to(savepoint),
        Err(StorageError::StaleSavepoint)
    ));
    assert_eq!(
        storage.raw_group_entries(a.group_id()).expect("scan"),
        written,
        "the refused rollback changed nothing"
    );
    step.commit().expect("commit");
}
