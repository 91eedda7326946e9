//! Fuzz target `client_record`: the client store's records, read by every
//! getter of `ClientStore`, written back and read again. The entry point,
//! `kith_engine::fuzzing::client_record`, holds the checks;
//! `sim/tests/fuzz_corpus.rs` replays this target's corpus through it in `cargo
//! test`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kith_engine::fuzzing::client_record(data);
});
