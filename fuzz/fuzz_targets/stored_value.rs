//! Fuzz target `stored_value`: one value of the stored OpenMLS state in each
//! codec, loaded with the rest of a real group. The entry point,
//! `kith_storage::fuzzing::stored_value`, holds the checks;
//! `sim/tests/fuzz_corpus.rs` replays this target's corpus through it in `cargo
//! test`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kith_storage::fuzzing::stored_value(data);
});
