//! The network simulator over many seeds (see the `kith_sim` docs for what
//! a run does and checks).
//!
//! `cargo test` runs 200 seeds; the ignored test runs 10,000. A failing
//! seed is printed with the command that replays it alone:
//!
//! ```text
//! KITH_SIM_SEEDS=1234 cargo test -p kith-sim --test simulator two_hundred_seeds -- --exact --nocapture
//! ```
//!
//! `KITH_SIM_SEEDS` takes one seed (`1234`) or a range (`0..10000`) and
//! replaces the seeds of whichever test runs.

use std::{
    ops::Range,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use kith_sim::{Config, Outcome, run};

fn seeds(default: Range<u64>) -> Range<u64> {
    let Ok(spec) = std::env::var("KITH_SIM_SEEDS") else {
        return default;
    };
    let parsed = match spec.split_once("..") {
        Some((a, b)) => a.trim().parse().ok().zip(b.trim().parse().ok()),
        None => spec.trim().parse().ok().map(|s: u64| (s, s + 1)),
    };
    match parsed {
        Some((a, b)) => a..b,
        None => panic!("KITH_SIM_SEEDS must be a seed or a range a..b, not {spec:?}"),
    }
}

/// How to run one test of this file again: its name, and whether it is
/// ignored (so that the printed command for a failing seed runs that test's
/// configuration, not the default one).
struct Test {
    name: &'static str,
    ignored: bool,
}

fn run_seeds_with(
    test: Test,
    range: Range<u64>,
    config: impl Fn(u64) -> Config + std::marker::Sync,
) -> Totals {
    let next = AtomicU64::new(range.start);
    let failed: Mutex<Vec<Outcome>> = Mutex::new(Vec::new());
    let passed = AtomicU64::new(0);
    let rollbacks = AtomicU64::new(0);
    let replayed = AtomicU64::new(0);
    let forks = AtomicU64::new(0);
    let rejoins = AtomicU64::new(0);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= range.end {
                        return;
                    }
                    let outcome = run(seed, &config(seed));
                    rollbacks.fetch_add(outcome.rollbacks, Ordering::Relaxed);
                    replayed.fetch_add(outcome.replayed, Ordering::Relaxed);
                    forks.fetch_add(outcome.forks as u64, Ordering::Relaxed);
                    rejoins.fetch_add(outcome.rejoins as u64, Ordering::Relaxed);
                    if outcome.passed() {
                        passed.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(outcome);
                    }
                }
            });
        }
    });
    let mut failed = failed.into_inner().unwrap_or_else(PoisonError::into_inner);
    failed.sort_by_key(|o| o.seed);
    for outcome in &failed {
        eprintln!("seed {} failed:", outcome.seed);
        for failure in outcome.failures.iter().take(10) {
            eprintln!("  - {failure}");
        }
        eprintln!(
            "  replay: KITH_SIM_SEEDS={} cargo test -p kith-sim --test simulator {} -- --exact \
             --nocapture{}",
            outcome.seed,
            test.name,
            if test.ignored { " --ignored" } else { "" }
        );
    }
    println!(
        "simulator: {} seeds passed, {} failed ({} rollbacks, {} envelopes replayed, {} forks, \
         {} rejoins)",
        passed.load(Ordering::Relaxed),
        failed.len(),
        rollbacks.load(Ordering::Relaxed),
        replayed.load(Ordering::Relaxed),
        forks.load(Ordering::Relaxed),
        rejoins.load(Ordering::Relaxed),
    );
    assert!(failed.is_empty(), "{} seeds failed", failed.len());
    Totals {
        rollbacks: rollbacks.into_inner(),
        forks: forks.into_inner(),
        rejoins: rejoins.into_inner(),
    }
}

struct Totals {
    rollbacks: u64,
    forks: u64,
    rejoins: u64,
}

#[test]
fn two_hundred_seeds() {
    let totals = run_seeds_with(
        Test {
            name: "two_hundred_seeds",
            ignored: false,
        },
        seeds(0..200),
        Config::for_seed,
    );
    assert!(totals.rollbacks > 0, "the schedules made nobody roll back");
}

/// Replication lagging past the settle window forks members; every fork
/// is found and healed by the end, and the checks hold as everywhere.
#[test]
fn lag_beyond_the_settle_window_is_found_and_healed() {
    let totals = run_seeds_with(
        Test {
            name: "lag_beyond_the_settle_window_is_found_and_healed",
            ignored: false,
        },
        seeds(0..40),
        |_| Config::lagging(),
    );
    assert!(
        totals.forks > 0,
        "no schedule forked anyone: the test shows nothing"
    );
    assert!(totals.rejoins > 0);
}

#[test]
#[ignore = "10,000 seeds take a long time; run with --ignored"]
fn ten_thousand_seeds() {
    run_seeds_with(
        Test {
            name: "ten_thousand_seeds",
            ignored: true,
        },
        seeds(0..10_000),
        Config::for_seed,
    );
}

/// Frequent partitions several settle windows long: forks are more
/// frequent and older, members are re-added by several others at once, and
/// every fork is still found and healed.
#[test]
fn heavy_lag_is_found_and_healed() {
    let totals = run_seeds_with(
        Test {
            name: "heavy_lag_is_found_and_healed",
            ignored: false,
        },
        seeds(0..40),
        |_| Config::heavy_lag(),
    );
    assert!(
        totals.forks > 0,
        "no schedule forked anyone: the test shows nothing"
    );
    assert!(totals.rejoins > 0);
}
