//! Fuzz target `content`: the plaintext of application messages
//! (`Content::decode_checked`), with its round trip. The entry point,
//! `kith_engine::fuzzing::content`, holds the checks;
//! `sim/tests/fuzz_corpus.rs` replays this target's corpus through it in `cargo
//! test`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kith_engine::fuzzing::content(data);
});
