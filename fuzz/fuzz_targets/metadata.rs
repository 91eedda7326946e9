//! Fuzz target `metadata`: the Kith metadata extensions of a group context
//! (`GroupMetadata::from_extensions`), one replaced by the input. The entry
//! point, `kith_engine::fuzzing::metadata`, holds the checks;
//! `sim/tests/fuzz_corpus.rs` replays this target's corpus through it in `cargo
//! test`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kith_engine::fuzzing::metadata(data);
});
