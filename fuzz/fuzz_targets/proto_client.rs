//! Fuzz target `proto_client`: what a client receives from a node: each
//! answer's protobuf and its conversion. The entry point,
//! `kith_transport::fuzzing::proto_client`, holds the checks;
//! `sim/tests/fuzz_corpus.rs` replays this target's corpus through it in `cargo
//! test`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kith_transport::fuzzing::proto_client(data);
});
