//! Fuzz target `identity_update`: identity updates
//! (`IdentityUpdate::from_bytes`), round trip and signature checks. The entry
//! point, `kith_engine::fuzzing::identity_update`, holds the checks;
//! `sim/tests/fuzz_corpus.rs` replays this target's corpus through it in `cargo
//! test`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kith_engine::fuzzing::identity_update(data);
});
