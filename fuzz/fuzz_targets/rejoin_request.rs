//! Fuzz target `rejoin_request`: rejoin requests (`RejoinRequest::verify`), and
//! requests made from the input, signed and verified back. The entry point,
//! `kith_engine::fuzzing::rejoin_request`, holds the checks;
//! `sim/tests/fuzz_corpus.rs` replays this target's corpus through it in `cargo
//! test`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kith_engine::fuzzing::rejoin_request(data);
});
