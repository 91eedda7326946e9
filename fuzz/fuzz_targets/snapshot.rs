//! Fuzz target `snapshot`: group snapshots (`GroupSnapshot::from_bytes`),
//! restored as a rollback restores them and loaded. The entry point,
//! `kith_storage::fuzzing::snapshot`, holds the checks;
//! `sim/tests/fuzz_corpus.rs` replays this target's corpus through it in `cargo
//! test`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kith_storage::fuzzing::snapshot(data);
});
