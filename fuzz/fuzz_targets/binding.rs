//! Fuzz target `binding`: deniable DMs' binding messages (`decode_binding`),
//! made again with `binding_body`. The entry point,
//! `kith_engine::fuzzing::binding`, holds the checks;
//! `sim/tests/fuzz_corpus.rs` replays this target's corpus through it in `cargo
//! test`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kith_engine::fuzzing::binding(data);
});
