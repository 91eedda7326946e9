//! Which self-describing codec should `SledMlsStorage` use? The same
//! operations as `mls_storage`, on sled with each codec (buffered durability,
//! so that fsync does not drown the codec's cost), against the in-memory
//! baseline; plus the bytes one 100-member group takes in each codec.

use std::time::Duration;

use criterion::Criterion;
use kith_benches::{Backend, Pair, Recorder, bench_recorded, key_packages};
use kith_storage::{Codec, Durability, KithProvider, StorageConfig};
use openmls::prelude::OpenMlsProvider as _;
use openmls_rust_crypto::OpenMlsRustCrypto;

const BASELINE: &str = "memory (baseline)";
const UPDATE: &str = "codec: 100 members: commit update + process";
const MESSAGE: &str = "codec: encrypt + decrypt 100 B message";

fn bench<P: Backend>(c: &mut Criterion, recorder: &Recorder, backend: &str, mut pair: Pair<P>) {
    bench_recorded(
        c,
        recorder,
        (UPDATE, backend),
        (10, Duration::from_secs(6)),
        || pair.update_and_process(),
    );
    bench_recorded(
        c,
        recorder,
        (MESSAGE, backend),
        (100, Duration::from_secs(4)),
        || pair.message_round_trip(&[0x42; 100]),
    );
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let recorder = Recorder::default();
    let dir = tempfile::tempdir().expect("tempdir");
    let others = key_packages(98);

    let memory = Pair::new(
        OpenMlsRustCrypto::default(),
        OpenMlsRustCrypto::default(),
        b"codec-group",
        &others,
    );
    bench(&mut c, &recorder, BASELINE, memory);

    let mut sizes = Vec::new();
    for codec in Codec::ALL {
        let config = StorageConfig {
            codec,
            durability: Durability::Buffered {
                flush_every_ms: 500,
            },
        };
        let open = |who: &str| {
            KithProvider::open_with(dir.path().join(format!("{codec:?}-{who}")), config)
                .expect("open")
        };
        let pair = Pair::new(open("a"), open("b"), b"codec-group", &others);
        let snapshot = pair
            .a
            .provider
            .storage()
            .snapshot_group(pair.group_a.group_id())
            .expect("snapshot");
        sizes.push((codec, snapshot.entry_count(), snapshot.size_bytes()));
        bench(&mut c, &recorder, &format!("sled, {codec:?}"), pair);
    }

    c.final_summary();
    recorder.print_ratios(BASELINE);
    println!("\nstored size of one 100-member group (creator's state):");
    for (codec, entries, bytes) in sizes {
        println!("  {codec:?}: {entries} entries, {bytes} bytes");
    }
}
