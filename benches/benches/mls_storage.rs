//! Kith's sled storage against the raw OpenMLS baseline
//! (`openmls_memory_storage`), on the operations of issue 2:
//!
//! - create a group and add 99 members in one commit;
//! - at 100 members, one member commits an update and another processes it;
//! - encrypt and decrypt one 100-byte application message.
//!
//! Each sled operation runs as one step per OpenMLS call, the way Kith uses
//! it. sled runs twice: fsync after every step (`Durability::Sync`, the
//! default) and with sled's background flush (`Durability::Buffered`). The
//! ratio of each to the baseline is printed at the end.

use std::{
    hint::black_box,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use criterion::Criterion;
use kith_benches::{Backend, Member, Pair, Recorder, bench_recorded, key_packages};
use kith_storage::{Durability, KithProvider, StorageConfig};
use openmls::prelude::KeyPackage;
use openmls_rust_crypto::OpenMlsRustCrypto;

const BASELINE: &str = "memory (baseline)";
const SYNC: &str = "sled, fsync per step";
const BUFFERED: &str = "sled, buffered";

const CREATE_ADD: &str = "create group + add 99 in one commit";
const UPDATE: &str = "100 members: commit update + process";
const MESSAGE: &str = "encrypt + decrypt 100 B message";

struct Backends {
    dir: tempfile::TempDir,
    opened: AtomicU64,
}

impl Backends {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            opened: AtomicU64::new(0),
        }
    }

    fn sled(&self, durability: Durability) -> KithProvider {
        let n = self.opened.fetch_add(1, Ordering::Relaxed);
        let config = StorageConfig {
            durability,
            ..StorageConfig::default()
        };
        KithProvider::open_with(self.dir.path().join(format!("db-{n}")), config).expect("open")
    }
}

fn bench_create_add<P: Backend>(
    c: &mut Criterion,
    recorder: &Recorder,
    backend: &str,
    provider: P,
    others: &[KeyPackage],
) {
    let creator = Member::new("creator", provider);
    let mut counter = 0u64;
    bench_recorded(
        c,
        recorder,
        (CREATE_ADD, backend),
        (10, Duration::from_secs(8)),
        || {
            counter += 1;
            black_box(creator.create_and_add(&counter.to_be_bytes(), others));
        },
    );
}

fn bench_pair<P: Backend>(
    c: &mut Criterion,
    recorder: &Recorder,
    backend: &str,
    (a, b): (P, P),
    others: &[KeyPackage],
) {
    let mut pair = Pair::new(a, b, b"bench-group", others);
    bench_recorded(
        c,
        recorder,
        (UPDATE, backend),
        (10, Duration::from_secs(8)),
        || pair.update_and_process(),
    );
    bench_recorded(
        c,
        recorder,
        (MESSAGE, backend),
        (100, Duration::from_secs(5)),
        || pair.message_round_trip(&[0x42; 100]),
    );
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let recorder = Recorder::default();
    let backends = Backends::new();
    let buffered = Durability::Buffered {
        flush_every_ms: 500,
    };
    let others_99 = key_packages(99);
    let others_98 = &others_99[..98];

    bench_create_add(
        &mut c,
        &recorder,
        BASELINE,
        OpenMlsRustCrypto::default(),
        &others_99,
    );
    bench_create_add(
        &mut c,
        &recorder,
        SYNC,
        backends.sled(Durability::Sync),
        &others_99,
    );
    bench_create_add(
        &mut c,
        &recorder,
        BUFFERED,
        backends.sled(buffered),
        &others_99,
    );

    let memory_pair = (OpenMlsRustCrypto::default(), OpenMlsRustCrypto::default());
    bench_pair(&mut c, &recorder, BASELINE, memory_pair, others_98);
    let sync_pair = (
        backends.sled(Durability::Sync),
        backends.sled(Durability::Sync),
    );
    bench_pair(&mut c, &recorder, SYNC, sync_pair, others_98);
    let buffered_pair = (backends.sled(buffered), backends.sled(buffered));
    bench_pair(&mut c, &recorder, BUFFERED, buffered_pair, others_98);

    c.final_summary();
    recorder.print_ratios(BASELINE);
}
