//! Fuzz target `proto_node`: what a node receives: a sequence of requests
//! served by a fresh in-memory node. The entry point,
//! `kith_transport::fuzzing::proto_node`, holds the checks;
//! `sim/tests/fuzz_corpus.rs` replays this target's corpus through it in `cargo
//! test`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kith_transport::fuzzing::proto_node(data);
});
