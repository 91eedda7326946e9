//! Fuzz target `welcome_payload`: Welcome payloads
//! (`WelcomePayload::from_bytes`), with their round trip. The entry point,
//! `kith_engine::fuzzing::welcome_payload`, holds the checks;
//! `sim/tests/fuzz_corpus.rs` replays this target's corpus through it in `cargo
//! test`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kith_engine::fuzzing::welcome_payload(data);
});
