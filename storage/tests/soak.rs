//! Liveness under sustained writes with large values: many message steps in
//! a 100-member group, on each durability setting.
//!
//! sled 0.34.7 can deadlock when its IO thread pool is saturated by pending
//! log writes while a segment truncation is queued behind them (the
//! truncation waits for a thread, the writers wait for the segment
//! accountant, and the committing thread holds the accountant while it
//! waits for the truncation). This test keeps writing and fails, instead of
//! hanging, if the writer stops making progress. It did not reproduce the
//! deadlock on its own (the criterion benchmark did, once, in release mode
//! before `SledMlsStorage` bounded its unflushed bytes); it stays as a
//! liveness and correctness check across many segment rollovers.

mod common;

use std::{
    sync::mpsc,
    time::{Duration, Instant},
};

use common::{Client, wire};
use kith_storage::{Durability, KithProvider, StorageConfig};
use openmls::prelude::*;
use openmls_rust_crypto::OpenMlsRustCrypto;

/// No progress for this long means the writer is stuck, not slow.
const STALL: Duration = Duration::from_secs(60);

fn soak(durability: Durability, steps: usize) {
    let (progress_tx, progress_rx) = mpsc::channel::<usize>();
    let worker = std::thread::spawn(move || {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = StorageConfig {
            durability,
            ..StorageConfig::default()
        };
        let alice_provider = KithProvider::open_with(dir.path().join("a"), config).expect("open");
        let bob_provider = KithProvider::open_with(dir.path().join("b"), config).expect("open");
        let alice = Client::new("alice", &alice_provider);
        let bob = Client::new("bob", &bob_provider);
        let others: Vec<KeyPackage> = (0..98)
            .map(|i| {
                let provider = OpenMlsRustCrypto::default();
                Client::new(&format!("m{i}"), &provider).key_package()
            })
            .collect();
        let (mut a, mut b) = common::pair_with(&alice, &bob, &others);
        let size = alice_provider
            .storage()
            .snapshot_group(a.group_id())
            .expect("snapshot")
            .size_bytes();
        println!("{durability:?}: one 100-member group state is {size} bytes");
        for i in 0..steps {
            // 100 bytes that differ per step, so that a message delivered
            // twice or out of turn does not pass for the right one.
            let mut plaintext = [7u8; 100];
            plaintext[..8].copy_from_slice(&(i as u64).to_be_bytes());
            let message = alice_provider
                .storage()
                .step(|| {
                    a.create_message(&alice_provider, &alice.signer, &plaintext)
                        .map_err(common::TestError::from)
                })
                .expect("encrypt");
            let received = bob_provider
                .storage()
                .step(|| common::receive(&bob_provider, &mut b, &wire(&message)))
                .expect("decrypt");
            assert_eq!(
                received,
                common::Received::Application(plaintext.to_vec()),
                "{durability:?}: step {i} decrypted to something else"
            );
            // Every so often a commit rewrites the tree and the epoch state.
            if i % 20 == 19 {
                let update = alice_provider
                    .storage()
                    .step(|| {
                        a.self_update(
                            &alice_provider,
                            &alice.signer,
                            LeafNodeParameters::default(),
                        )
                        .map_err(common::TestError::from)
                    })
                    .expect("update");
                alice_provider
                    .storage()
                    .step(|| {
                        a.merge_pending_commit(&alice_provider)
                            .map_err(common::TestError::from)
                    })
                    .expect("merge");
                let processed = bob_provider
                    .storage()
                    .step(|| common::receive(&bob_provider, &mut b, &wire(update.commit())))
                    .expect("process update");
                assert_eq!(processed, common::Received::CommitMerged);
                assert_eq!(a.epoch(), b.epoch(), "{durability:?}: epochs part at {i}");
            }
            if progress_tx.send(i).is_err() {
                return;
            }
        }
    });
    let started = Instant::now();
    let mut done = 0;
    while done < steps {
        match progress_rx.recv_timeout(STALL) {
            Ok(i) => done = i + 1,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "{durability:?}: no progress for {STALL:?} after {done} message steps: \
                 the storage is stuck"
            ),
        }
    }
    worker.join().expect("worker finished");
    assert_eq!(done, steps);
    println!(
        "{durability:?}: {steps} message steps in {:?}",
        started.elapsed()
    );
}

#[test]
fn sustained_buffered_writes_keep_making_progress() {
    soak(
        Durability::Buffered {
            flush_every_ms: 500,
        },
        3_000,
    );
}

#[test]
fn sustained_synced_writes_keep_making_progress() {
    soak(Durability::Sync, 1_000);
}
