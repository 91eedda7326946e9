//! Fuzz target `group_envelope`: `Group::handle_envelope` on arbitrary payloads
//! of a real group's topic; it must never fail on them. The entry point,
//! `kith_sim::fuzzing::group_envelope`, holds the checks;
//! `sim/tests/fuzz_corpus.rs` replays this target's corpus through it in `cargo
//! test`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kith_sim::fuzzing::group_envelope(data);
});
