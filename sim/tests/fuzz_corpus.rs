//! The fuzz corpus, replayed without a fuzzer: every file under
//! `fuzz/corpus/<target>/` goes through the same entry point as the fuzz
//! target of that name (`fuzz/fuzz_targets/<target>.rs`), so that every
//! `cargo test` checks each target's seeds and every crash input the
//! fuzzers found, and a regression panics here.
//!
//! The corpus must be there: a missing folder, an empty one, a folder for
//! no known target or a fuzz target missing from [`TARGETS`] fails the
//! test rather than letting it pass on nothing.
//!
//! The seeds are made by the real encoders (`kith_*::fuzzing::seeds`).
//! To write them again, after a format changed:
//!
//! ```text
//! cargo test -p kith-sim --test fuzz_corpus -- --ignored write_seed_corpus
//! ```

use std::{
    collections::BTreeSet,
    panic::{AssertUnwindSafe, catch_unwind, resume_unwind},
    path::{Path, PathBuf},
};

use kith_engine::group::GroupEvent;
use sha2::{Digest as _, Sha256};

/// A fuzz target's entry point; the result (whether the input decoded)
/// does not matter here.
type Entry = fn(&[u8]) -> bool;

/// Every fuzz target, by name, with its entry point.
const TARGETS: &[(&str, Entry)] = &[
    ("kith_aad", kith_engine::fuzzing::kith_aad),
    ("rejoin_request", kith_engine::fuzzing::rejoin_request),
    ("welcome_payload", kith_engine::fuzzing::welcome_payload),
    ("content", kith_engine::fuzzing::content),
    ("metadata", kith_engine::fuzzing::metadata),
    ("binding", kith_engine::fuzzing::binding),
    ("identity_update", kith_engine::fuzzing::identity_update),
    (
        "key_package_inventory",
        kith_engine::fuzzing::key_package_inventory,
    ),
    ("client_record", kith_engine::fuzzing::client_record),
    ("snapshot", kith_storage::fuzzing::snapshot),
    ("stored_value", kith_storage::fuzzing::stored_value),
    ("proto_client", kith_transport::fuzzing::proto_client),
    ("proto_node", kith_transport::fuzzing::proto_node),
    ("group_envelope", group_envelope),
];

fn group_envelope(data: &[u8]) -> bool {
    !kith_sim::fuzzing::group_envelope(data).is_empty()
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The names of the entries of `dir`, with `suffix` cut off (entries
/// without it are left out).
fn names(dir: &Path, suffix: &str) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{} must exist: {e}", dir.display()))
        .map(|entry| {
            entry
                .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter_map(|name| name.strip_suffix(suffix).map(str::to_owned))
        .collect()
}

#[test]
fn every_fuzz_target_has_a_corpus_and_is_replayed() {
    let known: BTreeSet<String> = TARGETS.iter().map(|(name, _)| (*name).to_owned()).collect();
    assert_eq!(
        names(&fuzz_dir().join("fuzz_targets"), ".rs"),
        known,
        "the fuzz targets and the ones this test replays differ"
    );
    assert_eq!(
        names(&fuzz_dir().join("corpus"), ""),
        known,
        "the corpus folders and the fuzz targets differ"
    );
}

#[test]
fn the_corpus_replays_without_a_failure() {
    let mut replayed = 0;
    for (target, entry) in TARGETS {
        let dir = fuzz_dir().join("corpus").join(target);
        let files = names(&dir, "");
        assert!(!files.is_empty(), "{} holds no input", dir.display());
        for file in files {
            let path = dir.join(&file);
            let data =
                std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| entry(&data))) {
                eprintln!("fuzz target {target} fails on {}", path.display());
                resume_unwind(panic);
            }
            replayed += 1;
        }
    }
    assert!(replayed >= TARGETS.len());
}

/// The seeds of every target, from every crate's encoders and from the
/// fuzzed group, by target.
fn all_seeds() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let mut all = kith_engine::fuzzing::seeds();
    all.extend(kith_storage::fuzzing::seeds());
    all.extend(kith_transport::fuzzing::seeds());
    all.extend(kith_sim::fuzzing::seeds());
    all
}

/// Fresh seeds go through their entry points, and the group harness
/// reaches deep: the group is the same in every process (or the committed
/// seeds would be noise to it), and a real message among them is stored.
#[test]
fn fresh_seeds_replay_and_reach_the_member() {
    let seeds = all_seeds();
    for (target, inputs) in &seeds {
        let (_, entry) = TARGETS
            .iter()
            .find(|(name, _)| name == target)
            .unwrap_or_else(|| panic!("seeds for an unknown target {target}"));
        for input in inputs {
            entry(input);
        }
    }
    let group: Vec<&Vec<u8>> = seeds
        .iter()
        .filter(|(target, _)| *target == "group_envelope")
        .flat_map(|(_, inputs)| inputs)
        .collect();
    assert!(
        group
            .iter()
            .any(|input| kith_sim::fuzzing::group_envelope(input)
                .iter()
                .any(|event| matches!(event, GroupEvent::Message(_)))),
        "no seed delivers a message to the fuzzed member"
    );
    let again: Vec<Vec<u8>> = kith_sim::fuzzing::seeds()
        .into_iter()
        .filter(|(target, _)| *target == "group_envelope")
        .flat_map(|(_, inputs)| inputs)
        .collect();
    assert_eq!(
        group.into_iter().cloned().collect::<Vec<_>>(),
        again,
        "the fuzzed group differs between two runs"
    );
}

/// Writes the seeds into `fuzz/corpus/<target>/seed-<hash>`, next to what
/// is there (crash inputs stay).
#[test]
#[ignore = "writes the seed corpus; run it by hand after a format change"]
fn write_seed_corpus() {
    for (target, inputs) in all_seeds() {
        let dir = fuzz_dir().join("corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for input in inputs {
            let hash: String = Sha256::digest(&input)[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            let path = dir.join(format!("seed-{hash}"));
            std::fs::write(&path, &input).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        }
    }
}
