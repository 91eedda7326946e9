//! A write that fails part-way through a commit merge leaves the previous
//! complete state on disk, because the merge runs inside one step.

mod common;

use std::sync::atomic::Ordering;

use common::{
    Member, TestError, deliver,
    faulty::{FaultError, FaultyProvider},
    wire,
};
use kith_storage::KithProvider;
use openmls::prelude::{
    GroupId, LeafNodeParameters, MlsGroup, MlsMessageIn, OpenMlsProvider as _,
    ProcessedMessageContent, tls_codec::Deserialize as _,
};

const GROUP: &[u8] = b"atomicity-group";

/// Process `commit` with `provider`, arming the fault only for the merge.
fn process_then_merge(
    provider: &FaultyProvider,
    group: &mut MlsGroup,
    commit: &[u8],
    fail_after: usize,
) -> Result<(), TestError> {
    let message = MlsMessageIn::tls_deserialize_exact(commit)?.try_into_protocol_message()?;
    let processed = group.process_message(provider, message)?;
    let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
        return Err("expected a commit".into());
    };
    provider.storage.fail_after(fail_after);
    group.merge_staged_commit(provider, *staged)?;
    Ok(())
}

fn load(
    provider: &impl openmls_traits::OpenMlsProvider<StorageProvider = kith_storage::SledMlsStorage>,
) -> MlsGroup {
    MlsGroup::load(provider.storage(), &GroupId::from_slice(GROUP))
        .expect("load")
        .expect("stored")
}

#[test]
fn a_fault_part_way_through_a_merge_leaves_the_previous_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let alice = Member::new("alice", dir.path());
    let bob = Member::new("bob", dir.path());

    let mut a = alice.create_group(GROUP);
    let (_, welcome, _) = alice
        .provider
        .storage()
        .step(|| {
            a.add_members(&alice.provider, &alice.signer, &[bob.key_package()])
                .map_err(TestError::from)
        })
        .expect("add bob");
    alice.merge_own(&mut a);
    let b = bob.join(&wire(&welcome));
    let epoch_before = b.epoch();
    let authenticator_before = b.epoch_authenticator().as_slice().to_vec();
    drop(b);
    let bob_path = bob.path.clone();
    let bob_signer_public = bob.signer.public().to_vec();
    drop(bob);

    // Alice commits an update (a full UpdatePath: many writes on merge) and
    // then speaks in the new epoch.
    let update = alice
        .provider
        .storage()
        .step(|| {
            a.self_update(
                &alice.provider,
                &alice.signer,
                LeafNodeParameters::default(),
            )
            .map_err(TestError::from)
        })
        .expect("alice updates");
    alice.merge_own(&mut a);
    let commit = wire(update.commit());
    let hello = alice.send(&mut a, "after the update");

    // Fail the k-th write of Bob's merge, for every k until the merge gets
    // through. Each time the step is dropped, the database closed and
    // reopened, and the previous complete state must load.
    let mut merge_writes = None;
    for k in 0.. {
        let provider = FaultyProvider::open(&bob_path);
        let mut group = load_faulty(&provider);
        let step = provider.storage.inner.begin_step().expect("step");
        match process_then_merge(&provider, &mut group, &commit, k) {
            Ok(()) => {
                step.commit().expect("commit step");
                merge_writes = Some(provider.storage.writes.load(Ordering::SeqCst));
                break;
            }
            Err(error) => {
                let injected = error
                    .downcast_ref::<openmls::prelude::MergeCommitError<FaultError<kith_storage::StorageError>>>()
                    .is_some();
                assert!(injected, "k={k}: unexpected error {error}");
                assert_eq!(provider.storage.faults.load(Ordering::SeqCst), 1);
                assert_eq!(
                    provider.storage.writes.load(Ordering::SeqCst),
                    k,
                    "k={k}: the fault came after {k} successful writes"
                );
                drop(step);
            }
        }
        drop(group);
        drop(provider);

        let reopened = KithProvider::open(&bob_path).expect("reopen");
        let group = load(&reopened);
        assert_eq!(group.epoch(), epoch_before, "k={k}");
        assert_eq!(
            group.epoch_authenticator().as_slice(),
            authenticator_before,
            "k={k}"
        );
    }
    let merge_writes = merge_writes.expect("the merge got through");
    assert!(
        merge_writes >= 3,
        "a merge takes several writes, so the faults above were part-way: {merge_writes}"
    );

    // After reopening, Bob is in the new epoch and the group works.
    let provider = KithProvider::open(&bob_path).expect("reopen");
    let signer = openmls_basic_credential::SignatureKeyPair::read(
        provider.storage(),
        &bob_signer_public,
        common::CIPHERSUITE.signature_algorithm(),
    )
    .expect("signer");
    let mut b = load(&provider);
    assert_eq!(
        b.epoch_authenticator().as_slice(),
        a.epoch_authenticator().as_slice()
    );
    let received = provider
        .storage()
        .step(|| common::receive(&provider, &mut b, &hello))
        .expect("decrypt");
    assert_eq!(common::text(received), "after the update");
    let reply = provider
        .storage()
        .step(|| {
            b.create_message(&provider, &signer, b"merged once, cleanly")
                .map_err(TestError::from)
        })
        .expect("reply");
    deliver(
        &mut [(&alice, &mut a)],
        &wire(&reply),
        "merged once, cleanly",
    );
}

/// Without a step the same fault tears the stored state: evidence that the
/// step, not luck, is what kept it whole above.
#[test]
fn without_a_step_the_same_fault_leaves_a_torn_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let alice = Member::new("alice", dir.path());
    let bob = Member::new("bob", dir.path());
    let mut a = alice.create_group(GROUP);
    let (_, welcome, _) = a
        .add_members(&alice.provider, &alice.signer, &[bob.key_package()])
        .expect("add bob");
    alice.merge_own(&mut a);
    drop(bob.join(&wire(&welcome)));
    let bob_path = bob.path.clone();
    drop(bob);
    let update = a
        .self_update(
            &alice.provider,
            &alice.signer,
            LeafNodeParameters::default(),
        )
        .expect("update");
    alice.merge_own(&mut a);

    let provider = FaultyProvider::open(&bob_path);
    let group_id = GroupId::from_slice(GROUP);
    let mut group = load_faulty(&provider);
    let message = MlsMessageIn::tls_deserialize_exact(wire(update.commit()).as_slice())
        .expect("parse")
        .try_into_protocol_message()
        .expect("protocol message");
    let processed = group.process_message(&provider, message).expect("process");
    let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
        panic!("expected a commit");
    };
    let before = provider
        .storage
        .inner
        .raw_group_entries(&group_id)
        .expect("scan");
    provider.storage.fail_after(2);
    assert!(
        group.merge_staged_commit(&provider, *staged).is_err(),
        "the fault fired"
    );
    let after = provider
        .storage
        .inner
        .raw_group_entries(&group_id)
        .expect("scan");
    assert_ne!(
        before, after,
        "the merge's first two writes reached the store"
    );
}

fn load_faulty(provider: &FaultyProvider) -> MlsGroup {
    MlsGroup::load(&provider.storage, &GroupId::from_slice(GROUP))
        .expect("load")
        .expect("stored")
}
