//! Entries OpenMLS 0.9 leaves behind are cleaned up. Each scenario runs on
//! `openmls_memory_storage` too, to show that the leak is real there (so the
//! check could fail), and then on `SledMlsStorage`, where a prefix-scan
//! count proves it is gone.

mod common;

use common::{Client, pair, receive, wire};
use kith_storage::{EntryKind, KithProvider};
use openmls::prelude::*;
use openmls_rust_crypto::OpenMlsRustCrypto;

/// Bob proposes an update, Alice queues it and then clears her queue.
/// Returns how many queued-proposal entries Alice's store holds afterwards.
fn proposals_after_clearing<P: openmls::storage::OpenMlsProvider>(
    alice_provider: &P,
    bob_provider: &P,
    count_proposals: impl Fn(&P) -> usize,
) -> (usize, usize)
where
    P::StorageError: 'static,
{
    let alice = Client::new("alice", alice_provider);
    let bob = Client::new("bob", bob_provider);
    let (mut a, mut b) = pair(&alice, &bob);
    let (proposal, _) = b
        .propose_self_update(bob.provider, &bob.signer, LeafNodeParameters::default())
        .expect("propose");
    receive(alice.provider, &mut a, &wire(&proposal)).expect("queue proposal");
    let queued = count_proposals(alice.provider);
    a.clear_pending_proposals(alice.provider.storage())
        .expect("clear");
    (queued, count_proposals(alice.provider))
}

/// Who commits Bob's pending update proposal.
#[derive(Clone, Copy, Debug)]
enum Committer {
    /// Alice commits it: OpenMLS applies Bob's new leaf and deletes its key.
    Alice,
    /// Bob commits while his own update proposal is pending: his commit's
    /// update path replaces the proposed leaf, and OpenMLS forgets the key.
    Bob,
}

/// Bob proposes an update, then `committer` commits the pending proposals
/// and both merge. Returns how many standalone encryption key pairs Bob's
/// store holds while the proposal is pending and after the commit, and
/// checks that the group still works.
fn update_key_pairs_after_commit<P: openmls::storage::OpenMlsProvider>(
    alice_provider: &P,
    bob_provider: &P,
    committer: Committer,
    count_key_pairs: impl Fn(&P) -> usize,
) -> (usize, usize)
where
    P::StorageError: 'static,
{
    let alice = Client::new("alice", alice_provider);
    let bob = Client::new("bob", bob_provider);
    let (mut a, mut b) = pair(&alice, &bob);
    let (proposal, _) = b
        .propose_self_update(bob.provider, &bob.signer, LeafNodeParameters::default())
        .expect("propose");
    let pending = count_key_pairs(bob.provider);
    receive(alice.provider, &mut a, &wire(&proposal)).expect("queue proposal");
    match committer {
        Committer::Alice => {
            let (commit, _, _) = a
                .commit_to_pending_proposals(alice.provider, &alice.signer)
                .expect("commit");
            a.merge_pending_commit(alice.provider).expect("merge");
            receive(bob.provider, &mut b, &wire(&commit)).expect("bob merges");
        }
        Committer::Bob => {
            let (commit, _, _) = b
                .commit_to_pending_proposals(bob.provider, &bob.signer)
                .expect("commit");
            b.merge_pending_commit(bob.provider).expect("merge");
            receive(alice.provider, &mut a, &wire(&commit)).expect("alice merges");
        }
    }
    assert_eq!(
        a.epoch_authenticator().as_slice(),
        b.epoch_authenticator().as_slice()
    );
    // Bob's current leaf key is in use (through the epoch key pairs): he
    // still decrypts in the new epoch.
    let hello = a
        .create_message(alice.provider, &alice.signer, b"still readable")
        .expect("encrypt");
    let got = receive(bob.provider, &mut b, &wire(&hello)).expect("decrypt");
    assert_eq!(common::text(got), "still readable");
    (pending, count_key_pairs(bob.provider))
}

fn memory_count(provider: &OpenMlsRustCrypto, label: &[u8]) -> usize {
    provider
        .storage()
        .values
        .read()
        .expect("lock")
        .keys()
        .filter(|k| k.starts_with(label))
        .count()
}

fn sled_count(provider: &KithProvider, kind: EntryKind) -> usize {
    provider.storage().count_entries(kind).expect("count")
}

#[test]
fn proposals_do_not_survive_clear_proposal_queue() {
    let (queued, left) = proposals_after_clearing(
        &OpenMlsRustCrypto::default(),
        &OpenMlsRustCrypto::default(),
        |p| memory_count(p, b"QueuedProposal"),
    );
    assert_eq!(queued, 1);
    assert_eq!(left, 1, "openmls_memory_storage leaks the cleared proposal");

    let dir = tempfile::tempdir().expect("tempdir");
    let alice = KithProvider::open(dir.path().join("alice")).expect("open");
    let bob = KithProvider::open(dir.path().join("bob")).expect("open");
    let (queued, left) =
        proposals_after_clearing(&alice, &bob, |p| sled_count(p, EntryKind::QueuedProposal));
    assert_eq!(queued, 1);
    assert_eq!(left, 0, "the cleared proposal is gone from sled");
    assert_eq!(sled_count(&alice, EntryKind::ProposalQueueRefs), 0);
}

fn key_pairs_left(committer: Committer) -> (usize, usize) {
    let (pending, left) = update_key_pairs_after_commit(
        &OpenMlsRustCrypto::default(),
        &OpenMlsRustCrypto::default(),
        committer,
        |p| memory_count(p, b"EncryptionKeyPair"),
    );
    assert_eq!(pending, 1);

    let dir = tempfile::tempdir().expect("tempdir");
    let alice = KithProvider::open(dir.path().join("alice")).expect("open");
    let bob = KithProvider::open(dir.path().join("bob")).expect("open");
    let (pending, sled_left) = update_key_pairs_after_commit(&alice, &bob, committer, |p| {
        sled_count(p, EntryKind::EncryptionKeyPair)
    });
    assert_eq!(pending, 1);
    assert_eq!(sled_count(&bob, EntryKind::OwnLeafNodes), 0);
    (left, sled_left)
}

#[test]
fn an_own_update_committed_by_a_peer_leaves_no_key_pair_behind() {
    // In this path OpenMLS 0.9 deletes the key itself; the sled store must
    // not do worse.
    let (memory_left, sled_left) = key_pairs_left(Committer::Alice);
    assert_eq!(memory_left, 0);
    assert_eq!(sled_left, 0, "the update's key pair is gone from sled");
}

#[test]
fn an_own_update_superseded_by_an_own_commit_leaves_no_key_pair_behind() {
    let (memory_left, sled_left) = key_pairs_left(Committer::Bob);
    assert_eq!(memory_left, 1, "openmls_memory_storage keeps the key pair");
    assert_eq!(sled_left, 0, "the update's key pair is gone from sled");
}

#[test]
fn deleting_a_group_removes_all_of_it_and_nothing_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let alice_provider = KithProvider::open(dir.path().join("alice")).expect("open");
    let bob_provider = KithProvider::open(dir.path().join("bob")).expect("open");
    let alice = Client::new("alice", &alice_provider);
    let bob = Client::new("bob", &bob_provider);
    let (_a1, mut b1) = pair(&alice, &bob);
    let (_a2, b2) = pair(&alice, &bob);
    // A pending own update: its key pair belongs to the group too.
    b1.propose_self_update(&bob_provider, &bob.signer, LeafNodeParameters::default())
        .expect("propose");
    let storage = bob_provider.storage();
    assert_eq!(sled_count(&bob_provider, EntryKind::EncryptionKeyPair), 1);
    let other_before = storage.raw_group_entries(b2.group_id()).expect("scan");

    storage.delete_group(b1.group_id()).expect("delete");

    assert!(
        storage
            .group_entries(b1.group_id())
            .expect("scan")
            .is_empty()
    );
    assert_eq!(sled_count(&bob_provider, EntryKind::EncryptionKeyPair), 0);
    assert_eq!(
        storage.raw_group_entries(b2.group_id()).expect("scan"),
        other_before
    );
    assert!(
        MlsGroup::load(storage, b1.group_id())
            .expect("load")
            .is_none()
    );
}
