//! Rollback and replay (DESIGN.md section 7, issue 6), at 10 and 100
//! members:
//!
//! - **replay k**: a member that applied a rival commit for epoch E (and
//!   received the canonical commits for E+1..E+k-1, which it could not use
//!   on the rival branch) gets the canonical commit for E, which sorts
//!   first: it restores E's snapshot and replays. Timed: handling that one
//!   envelope.
//! - **replay k, whole path**: the same out-of-order delivery, all of it
//!   timed: the rival commit, the k-1 canonical commits held on the rival
//!   branch, and the commit for E with its rewind. This is what the
//!   member pays for the delivery order, where replay k is what the
//!   rewind itself costs.
//! - **direct k**: the same member, in order: the k canonical commits, one
//!   step each (taking the per-epoch snapshots, as Kith does whenever the
//!   settle window is not 0).
//! - **raw k**: the baseline, raw OpenMLS over `openmls_memory_storage`
//!   processing and merging the same number of commits in a group of the
//!   same size. It is the baseline of the whole path too: the least work
//!   that reaches the same epoch (raw OpenMLS cannot undo a rival commit,
//!   so it has no out-of-order path of its own).
//!
//! DESIGN's target is replay k at most 1.2x direct k. The run also prints
//! what one snapshot costs (capture time and bytes).
//!
//! Every iteration starts from a copy of the same stored state (made
//! outside the timed part).

use std::time::{Duration, Instant};

use criterion::Criterion;
use kith_benches::{Backend as _, Pair, Recorder, bench_timed, key_packages, median};
use kith_engine::{delivery::Envelope, group::IntentKind};
use kith_sim::{client::Client, world::World};
use openmls::prelude::{
    GroupId, LeafNodeParameters, MlsGroup, MlsMessageIn, OpenMlsProvider as _,
    ProcessedMessageContent, tls_codec::Deserialize as _, tls_codec::Serialize as _,
};
use openmls_rust_crypto::OpenMlsRustCrypto;

const MAX_K: usize = 5;
/// Long enough that nothing settles during a run.
const WINDOW_MS: u64 = 600_000;
const RECEIVER: usize = 0;
const COMMITTER: usize = 1;
const RIVAL: usize = 2;
/// The backend name of the whole out-of-order path's row.
const WHOLE_PATH: &str = "kith replay, whole path";

/// A group of `n`, the receiver's state at epoch E (never given anything
/// since), the canonical chain for E..E+MAX_K-1 and a rival commit for E.
struct Scenario {
    world: World,
    template: Client,
    chain: Vec<Envelope>,
    rival: Envelope,
}

impl Scenario {
    fn new(n: usize) -> Self {
        let mut world = World::new(7, n, n, WINDOW_MS);
        let template = world.clients[RECEIVER].copy().expect("copy the receiver");
        world.queue(RIVAL, IntentKind::UpdateKeys);
        world.advance(RIVAL, 900);
        let rival = world.outbox(RIVAL).remove(0);
        let mut chain = Vec::new();
        for i in 0..MAX_K as u64 {
            let at = 1_000 + 100 * i;
            world.queue(COMMITTER, IntentKind::UpdateKeys);
            world.advance(COMMITTER, at);
            let commit = world.outbox(COMMITTER).remove(0);
            // The first canonical commit went through another node than
            // the rest, whose replication lagged: it can arrive last.
            let envelope = if i == 0 {
                world.env(at, 5, 1, commit.payload)
            } else {
                world.env(at, 3, i, commit.payload)
            };
            world.handle(COMMITTER, &envelope, at + 1);
            chain.push(envelope);
        }
        // Between the first and second canonical commits.
        let rival = world.env(1_050, 4, 1, rival.payload);
        Self {
            world,
            template,
            chain,
            rival,
        }
    }

    fn handle(&self, client: &mut Client, envelope: &Envelope) {
        let identities = &self.world.identities;
        let now = self.world.base + 5_000;
        client
            .step(|group, provider, storage| {
                Ok(group.handle_envelope(provider, storage, identities, envelope, now)?)
            })
            .expect("handle");
    }

    fn direct(&self, k: usize) -> Duration {
        let mut receiver = self.template.copy().expect("copy");
        let start = Instant::now();
        for envelope in &self.chain[..k] {
            self.handle(&mut receiver, envelope);
        }
        let elapsed = start.elapsed();
        assert_eq!(
            receiver.group.as_ref().map(|g| g.epoch()),
            self.world
                .group(COMMITTER)
                .epoch()
                .checked_sub((MAX_K - k) as u64)
        );
        elapsed
    }

    /// The last envelope of the out-of-order path: the rewind.
    fn replay(&self, k: usize) -> Duration {
        self.out_of_order(k).1
    }

    /// Every envelope of the out-of-order path, the rewind included.
    fn whole_path(&self, k: usize) -> Duration {
        self.out_of_order(k).0
    }

    /// The out-of-order delivery: the rival commit, the canonical commits
    /// for E+1..E+k-1, then the one for E. Returns the time of the whole
    /// path and of its last envelope.
    fn out_of_order(&self, k: usize) -> (Duration, Duration) {
        let mut receiver = self.template.copy().expect("copy");
        let start = Instant::now();
        self.handle(&mut receiver, &self.rival);
        for envelope in &self.chain[1..k] {
            self.handle(&mut receiver, envelope);
        }
        let last = Instant::now();
        self.handle(&mut receiver, &self.chain[0]);
        let end = Instant::now();
        let group = receiver.group.as_ref().expect("a member");
        assert_eq!(group.rewind_stats().rollbacks, 1, "it rolled back");
        assert_eq!(
            Some(group.epoch()),
            self.world
                .group(COMMITTER)
                .epoch()
                .checked_sub((MAX_K - k) as u64),
            "and reached the canonical epoch"
        );
        (end - start, end - last)
    }
}

/// The raw baseline: a receiver `b` at epoch E and `MAX_K` commits of `a`.
struct Raw {
    template: Vec<(Vec<u8>, Vec<u8>)>,
    group_id: GroupId,
    commits: Vec<Vec<u8>>,
}

impl Raw {
    fn new(n: usize) -> Self {
        let group_id = b"rewind-baseline".to_vec();
        let mut pair = Pair::new(
            OpenMlsRustCrypto::default(),
            OpenMlsRustCrypto::default(),
            &group_id,
            &key_packages(n.saturating_sub(2)),
        );
        let template = pair
            .b
            .provider
            .storage()
            .values
            .read()
            .expect("lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut commits = Vec::new();
        for _ in 0..MAX_K {
            let bundle = pair.a.provider.step(|| {
                pair.group_a
                    .self_update(
                        &pair.a.provider,
                        &pair.a.signer,
                        LeafNodeParameters::default(),
                    )
                    .expect("update")
            });
            pair.group_a
                .merge_pending_commit(&pair.a.provider)
                .expect("merge");
            commits.push(bundle.commit().tls_serialize_detached().expect("serialise"));
        }
        Self {
            template,
            group_id: GroupId::from_slice(&group_id),
            commits,
        }
    }

    fn process(&self, k: usize) -> Duration {
        let provider = OpenMlsRustCrypto::default();
        provider
            .storage()
            .values
            .write()
            .expect("lock")
            .extend(self.template.iter().cloned());
        let mut group = MlsGroup::load(provider.storage(), &self.group_id)
            .expect("load")
            .expect("stored");
        let start = Instant::now();
        for commit in &self.commits[..k] {
            let message = MlsMessageIn::tls_deserialize_exact(commit.as_slice())
                .expect("parse")
                .try_into_protocol_message()
                .expect("protocol message");
            let processed = group.process_message(&provider, message).expect("process");
            let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content()
            else {
                panic!("expected a commit");
            };
            group
                .merge_staged_commit(&provider, *staged)
                .expect("merge");
        }
        start.elapsed()
    }
}

fn timed(
    c: &mut Criterion,
    recorder: &Recorder,
    operation: &str,
    backend: &str,
    run: impl FnMut() -> Duration,
) {
    let mut group = c.benchmark_group(operation);
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(4));
    bench_timed(&mut group, recorder, (operation, backend), run);
}

/// Rounds of the paired measurement.
const PAIRED_ROUNDS: usize = 60;

/// Replay k and direct k measured in alternation, `PAIRED_ROUNDS` times
/// each, on the same scenario: (median replay, median direct). Criterion
/// measures one after the other, several seconds apart, and on a shared
/// 2-vCPU machine the drift between them is as large as the difference
/// being measured; pairing cancels the drift and medians drop the stalls.
fn paired(scenario: &Scenario, k: usize) -> (Duration, Duration) {
    let mut replay = Vec::with_capacity(PAIRED_ROUNDS);
    let mut direct = Vec::with_capacity(PAIRED_ROUNDS);
    for round in 0..PAIRED_ROUNDS {
        if round % 2 == 0 {
            replay.push(scenario.replay(k));
            direct.push(scenario.direct(k));
        } else {
            direct.push(scenario.direct(k));
            replay.push(scenario.replay(k));
        }
    }
    (median(&mut replay), median(&mut direct))
}

/// The name filter given on the command line (criterion's), if any.
fn filter() -> Option<String> {
    std::env::args().skip(1).find(|arg| !arg.starts_with("--"))
}

fn main() {
    let recorder = Recorder::default();
    let mut c = Criterion::default().configure_from_args();
    let filter = filter();
    let mut snapshots = Vec::new();
    let mut pairs = Vec::new();
    for n in [10, 100] {
        let scenario = Scenario::new(n);
        let raw = Raw::new(n);
        for k in 1..=MAX_K {
            let operation = format!("rewind {n} members, k={k}");
            timed(&mut c, &recorder, &operation, "raw OpenMLS", || {
                raw.process(k)
            });
            timed(&mut c, &recorder, &operation, "kith direct", || {
                scenario.direct(k)
            });
            timed(&mut c, &recorder, &operation, "kith replay", || {
                scenario.replay(k)
            });
            timed(&mut c, &recorder, &operation, WHOLE_PATH, || {
                scenario.whole_path(k)
            });
            if filter
                .as_ref()
                .is_none_or(|f| format!("{operation}/kith replay").contains(f.as_str()))
            {
                pairs.push((n, k, paired(&scenario, k)));
            }
        }
        // One snapshot: what every epoch transition costs when the settle
        // window is not 0.
        let storage = scenario.template.storage();
        let group_id = GroupId::from_slice(&scenario.world.group_id);
        let runs = 50u32;
        let start = Instant::now();
        let mut bytes = 0;
        for _ in 0..runs {
            bytes = storage
                .snapshot_group(&group_id)
                .expect("snapshot")
                .to_bytes()
                .len();
        }
        snapshots.push((n, start.elapsed() / runs, bytes));
    }
    recorder.print_ratios("raw OpenMLS");
    println!("\nreplay k (the last envelope, the rewind) against direct k (target at most 1.2x):");
    for n in [10, 100] {
        for k in 1..=MAX_K {
            let operation = format!("rewind {n} members, k={k}");
            if let (Some(replay), Some(direct)) = (
                recorder.mean_secs(&operation, "kith replay"),
                recorder.mean_secs(&operation, "kith direct"),
            ) {
                println!(
                    "  {n:>3} members, k={k}: replay {:>8.2} ms, direct {:>8.2} ms, ratio {:.2}x",
                    replay * 1e3,
                    direct * 1e3,
                    replay / direct
                );
            }
        }
    }
    println!(
        "\nthe whole out-of-order path (rival, k-1 held, then the rewind) against \
         raw k and direct k:"
    );
    for n in [10, 100] {
        for k in 1..=MAX_K {
            let operation = format!("rewind {n} members, k={k}");
            if let (Some(whole), Some(raw), Some(direct)) = (
                recorder.mean_secs(&operation, WHOLE_PATH),
                recorder.mean_secs(&operation, "raw OpenMLS"),
                recorder.mean_secs(&operation, "kith direct"),
            ) {
                println!(
                    "  {n:>3} members, k={k}: whole path {:>8.2} ms, {:.2}x raw, {:.2}x direct",
                    whole * 1e3,
                    whole / raw,
                    whole / direct
                );
            }
        }
    }
    println!(
        "\npaired, {PAIRED_ROUNDS} rounds of each in alternation, medians (target at most 1.2x):"
    );
    for (n, k, (replay, direct)) in pairs {
        println!(
            "  {n:>3} members, k={k}: replay {:>8.2} ms, direct {:>8.2} ms, ratio {:.2}x",
            replay.as_secs_f64() * 1e3,
            direct.as_secs_f64() * 1e3,
            replay.as_secs_f64() / direct.as_secs_f64()
        );
    }
    println!("\nsnapshot per epoch:");
    for (n, time, bytes) in snapshots {
        println!(
            "  {n:>3} members: {:.3} ms to capture, {bytes} bytes",
            time.as_secs_f64() * 1e3
        );
    }
    c.final_summary();
}
