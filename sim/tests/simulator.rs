//! The network simulator over many seeds (see the `kith_sim` docs for what
//! a run does and checks).
//!
//! `cargo test` runs 200 seeds; the ignored test runs 10,000. A failing
//! seed is printed with the command that replays it alone:
//!
//! ```text
//! KITH_SIM_SEEDS=1234 cargo test -p kith-sim --test simulator -- --nocapture
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

fn run_seeds(range: Range<u64>) {
    let next = AtomicU64::new(range.start);
    let failed: Mutex<Vec<Outcome>> = Mutex::new(Vec::new());
    let passed = AtomicU64::new(0);
    let rollbacks = AtomicU64::new(0);
    let replayed = AtomicU64::new(0);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= range.end {
                        return;
                    }
                    let outcome = run(seed, &Config::for_seed(seed));
                    rollbacks.fetch_add(outcome.rollbacks, Ordering::Relaxed);
                    replayed.fetch_add(outcome.replayed, Ordering::Relaxed);
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
            "  replay: KITH_SIM_SEEDS={} cargo test -p kith-sim --test simulator -- --nocapture",
            outcome.seed
        );
    }
    println!(
        "simulator: {} seeds passed, {} failed ({} rollbacks, {} envelopes replayed)",
        passed.load(Ordering::Relaxed),
        failed.len(),
        rollbacks.load(Ordering::Relaxed),
        replayed.load(Ordering::Relaxed),
    );
    assert!(failed.is_empty(), "{} seeds failed", failed.len());
}

#[test]
fn two_hundred_seeds() {
    run_seeds(seeds(0..200));
}

#[test]
#[ignore = "10,000 seeds take a long time; run with --ignored"]
fn ten_thousand_seeds() {
    run_seeds(seeds(0..10_000));
}
