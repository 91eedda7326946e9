//! Fuzz target `key_package_inventory`: the stored key-package inventory
//! (`KeyPackageInventory::from_bytes`) and the plan made on it. The entry
//! point, `kith_engine::fuzzing::key_package_inventory`, holds the checks;
//! `sim/tests/fuzz_corpus.rs` replays this target's corpus through it in `cargo
//! test`.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    kith_engine::fuzzing::key_package_inventory(data);
});
