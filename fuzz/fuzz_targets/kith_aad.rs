//! Fuzz target `kith_aad`: the Kith AAD of application messages
//! (`KithAad::decode`), re-encoded byte for byte. The entry point,
//! `kith_engine::fuzzing::kith_aad`, holds the checks;
//! `sim/tests/fuzz_corpus.rs` replays this target's corpus through it in `cargo
//! test`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kith_engine::fuzzing::kith_aad(data);
});
