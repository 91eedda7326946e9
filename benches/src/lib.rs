//! `kith-benches` holds Kith's criterion benchmarks and the scenarios they
//! share.
//!
//! Every benchmark lives in `benches/benches/` and runs the raw-OpenMLS
//! baseline (`openmls_memory_storage`, no actors, no network) in the same run,
//! printing the ratio. Results are recorded in `BENCHMARKS.md` at the
//! workspace root.
//!
//! ```text
//!  scenario (this crate) ──► Backend::step ──► KithProvider (sled, one step per operation)
//!                                          └─► OpenMlsRustCrypto (memory, baseline)
//!  timings ──► Recorder ──► ratio table printed at the end of the run
//! ```

use std::{
    collections::BTreeMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use criterion::{BenchmarkGroup, Criterion, measurement::WallTime};

use kith_storage::KithProvider;
use openmls::prelude::{tls_codec::Deserialize as _, *};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;

/// The cipher suite every benchmark uses.
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// A provider that a scenario can run on, and how it makes one operation
/// atomic.
pub trait Backend: openmls::storage::OpenMlsProvider {
    /// Run `f` as one atomic storage step.
    fn step<T>(&self, f: impl FnOnce() -> T) -> T;
}

impl Backend for OpenMlsRustCrypto {
    fn step<T>(&self, f: impl FnOnce() -> T) -> T {
        // The in-memory baseline writes in place; there is nothing to commit.
        f()
    }
}

impl Backend for KithProvider {
    fn step<T>(&self, f: impl FnOnce() -> T) -> T {
        let step = self.storage().begin_step().expect("no step open yet");
        let value = f();
        step.commit().expect("commit step");
        value
    }
}

/// One member of a benchmark group.
#[derive(Debug)]
pub struct Member<P> {
    /// The member's provider.
    pub provider: P,
    /// Its signature key.
    pub signer: SignatureKeyPair,
    /// Its credential.
    pub credential: CredentialWithKey,
}

impl<P: Backend> Member<P> {
    /// A member with a fresh signature key.
    pub fn new(name: &str, provider: P) -> Self {
        let signer = SignatureKeyPair::new(CIPHERSUITE.signature_algorithm()).expect("signer");
        let credential = CredentialWithKey {
            credential: BasicCredential::new(name.as_bytes().to_vec()).into(),
            signature_key: signer.public().into(),
        };
        Self {
            provider,
            signer,
            credential,
        }
    }

    /// A key package of this member.
    pub fn key_package(&self) -> KeyPackage {
        KeyPackage::builder()
            .build(
                CIPHERSUITE,
                &self.provider,
                &self.signer,
                self.credential.clone(),
            )
            .expect("key package")
            .key_package()
            .clone()
    }

    /// The benchmarked operation "create a group and add these members in
    /// one commit": create (one step), stage the add (one step), merge it
    /// (one step).
    pub fn create_and_add(&self, group_id: &[u8], key_packages: &[KeyPackage]) -> MlsGroup {
        self.create_and_add_with_welcome(group_id, key_packages).0
    }

    /// [`Member::create_and_add`], also returning the Welcome.
    pub fn create_and_add_with_welcome(
        &self,
        group_id: &[u8],
        key_packages: &[KeyPackage],
    ) -> (MlsGroup, MlsMessageOut) {
        let mut group = self.provider.step(|| {
            MlsGroup::new_with_group_id(
                &self.provider,
                &self.signer,
                &create_config(),
                GroupId::from_slice(group_id),
                self.credential.clone(),
            )
            .expect("create")
        });
        let (_, welcome, _) = self.provider.step(|| {
            group
                .add_members(&self.provider, &self.signer, key_packages)
                .expect("add")
        });
        self.provider
            .step(|| group.merge_pending_commit(&self.provider).expect("merge"));
        (group, welcome)
    }
}

/// `n` key packages of throwaway members, for adds whose joiners never
/// process their Welcome.
pub fn key_packages(n: usize) -> Vec<KeyPackage> {
    (0..n)
        .map(|i| Member::new(&format!("member-{i}"), OpenMlsRustCrypto::default()).key_package())
        .collect()
}

/// Two real members, `a` (the creator) and `b`, in a group with `others`
/// added alongside `b`.
#[derive(Debug)]
pub struct Pair<P> {
    /// The creator.
    pub a: Member<P>,
    /// A joiner that processes everything `a` sends.
    pub b: Member<P>,
    /// `a`'s group.
    pub group_a: MlsGroup,
    /// `b`'s group.
    pub group_b: MlsGroup,
}

impl<P: Backend> Pair<P> {
    /// Build the group: `a` adds `b` and `others` in one commit, `b` joins.
    pub fn new(a: P, b: P, group_id: &[u8], others: &[KeyPackage]) -> Self {
        let a = Member::new("a", a);
        let b = Member::new("b", b);
        let mut key_packages = vec![b.key_package()];
        key_packages.extend_from_slice(others);
        Self::from_members(a, b, group_id, &key_packages)
    }

    /// [`Pair::new`] with the members and key packages made by the caller:
    /// `a` adds `key_packages` (the first of which is `b`'s) in one
    /// commit, and `b` joins. Only group work is left in here, so that a
    /// caller can time it without the key generation.
    pub fn from_members(
        a: Member<P>,
        b: Member<P>,
        group_id: &[u8],
        key_packages: &[KeyPackage],
    ) -> Self {
        let (group_a, welcome) = a.create_and_add_with_welcome(group_id, key_packages);
        let welcome = MlsMessageIn::tls_deserialize_exact(wire(&welcome).as_slice())
            .expect("parse welcome")
            .extract();
        let MlsMessageBodyIn::Welcome(welcome) = welcome else {
            panic!("expected a welcome");
        };
        let group_b = b.provider.step(|| {
            StagedWelcome::new_from_welcome(&b.provider, &join_config(), welcome, None)
                .expect("stage welcome")
                .into_group(&b.provider)
                .expect("join")
        });
        Self {
            a,
            b,
            group_a,
            group_b,
        }
    }

    /// The benchmarked operation "one member commits an update and another
    /// processes it": `a` stages an update (one step) and merges it (one
    /// step); `b` processes and merges it (one step).
    pub fn update_and_process(&mut self) {
        let Self {
            a,
            b,
            group_a,
            group_b,
        } = self;
        let bundle = a.provider.step(|| {
            group_a
                .self_update(&a.provider, &a.signer, LeafNodeParameters::default())
                .expect("update")
        });
        a.provider
            .step(|| group_a.merge_pending_commit(&a.provider).expect("merge"));
        let commit = wire(bundle.commit());
        b.provider.step(|| {
            let processed = group_b
                .process_message(&b.provider, protocol_message(&commit))
                .expect("process commit");
            let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content()
            else {
                panic!("expected a commit");
            };
            group_b
                .merge_staged_commit(&b.provider, *staged)
                .expect("merge commit");
        });
    }

    /// The benchmarked operation "encrypt and decrypt one application
    /// message": `a` encrypts (one step), `b` decrypts (one step).
    pub fn message_round_trip(&mut self, payload: &[u8]) {
        let Self {
            a,
            b,
            group_a,
            group_b,
        } = self;
        let message = a.provider.step(|| {
            group_a
                .create_message(&a.provider, &a.signer, payload)
                .expect("encrypt")
        });
        let bytes = wire(&message);
        let plaintext = b.provider.step(|| {
            let processed = group_b
                .process_message(&b.provider, protocol_message(&bytes))
                .expect("decrypt");
            let ProcessedMessageContent::ApplicationMessage(app) = processed.into_content() else {
                panic!("expected an application message");
            };
            app.into_bytes()
        });
        assert_eq!(plaintext, payload);
    }
}

/// The group configuration of every benchmark group.
pub fn create_config() -> MlsGroupCreateConfig {
    MlsGroupCreateConfig::builder()
        .ciphersuite(CIPHERSUITE)
        .use_ratchet_tree_extension(true)
        .build()
}

/// The join configuration matching [`create_config`].
pub fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .build()
}

fn wire(message: &MlsMessageOut) -> Vec<u8> {
    message.to_bytes().expect("serialise")
}

fn protocol_message(bytes: &[u8]) -> ProtocolMessage {
    MlsMessageIn::tls_deserialize_exact(bytes)
        .expect("parse")
        .try_into_protocol_message()
        .expect("protocol message")
}

/// Benchmark `op` as `operation`/`backend` with criterion, and record what
/// it measures (warm-up included) so that [`Recorder::print_ratios`] can
/// compare backends.
pub fn bench_recorded(
    c: &mut Criterion,
    recorder: &Recorder,
    (operation, backend): (&str, &str),
    (sample_size, measurement_time): (usize, Duration),
    mut op: impl FnMut(),
) {
    c.benchmark_group(operation)
        .sample_size(sample_size)
        .measurement_time(measurement_time)
        .bench_function(backend, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    op();
                }
                let elapsed = start.elapsed();
                recorder.record(operation, backend, elapsed, iters);
                elapsed
            });
        });
}

/// Benchmark `run` as `operation`/`backend` in `group` (configured by the
/// caller), where `run` performs one iteration and returns the time it
/// measured itself, so that set-up inside it is not counted. Records the
/// samples, as [`bench_recorded`] does.
pub fn bench_timed(
    group: &mut BenchmarkGroup<'_, WallTime>,
    recorder: &Recorder,
    (operation, backend): (&str, &str),
    mut run: impl FnMut() -> Duration,
) {
    group.bench_function(backend, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += run();
            }
            recorder.record(operation, backend, total, iters);
            total
        });
    });
}

/// The raw-OpenMLS baseline of a DM's first message, on
/// `openmls_memory_storage`; `seed` makes the group id.
///
/// Timed: create the group, add the peer (commit and Welcome), the peer
/// joins from the Welcome, and one message across (encrypted, serialised,
/// decrypted). Not timed: both members' signature keys and credentials
/// and the peer's key package. The Kith runs it is compared with make
/// those before their clock starts too (installation keys at
/// registration, key packages ahead of time in the pool on the node), so
/// both sides time the same scope.
pub fn raw_first_message(seed: u64) -> Duration {
    let a = Member::new("a", OpenMlsRustCrypto::default());
    let b = Member::new("b", OpenMlsRustCrypto::default());
    let key_package = b.key_package();
    let start = Instant::now();
    let mut pair = Pair::from_members(a, b, &seed.to_be_bytes(), &[key_package]);
    pair.message_round_trip(b"hello");
    start.elapsed()
}

/// The median of `times` (sorting them).
pub fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// A `LocalNode` over a sled store in `dir`, with the key-package fetch
/// rate limits lifted: benchmarks fetch far faster than people do.
pub fn unlimited_local_node(dir: &std::path::Path) -> kith::LocalNode<kith_storage::SledNodeStore> {
    use kith_transport::node::{BucketLimit, NodeConfig, NodeLimits, NodeLogic};
    let unlimited = BucketLimit {
        burst: 1_000_000,
        per_minute: 1_000_000,
    };
    let config = NodeConfig {
        node_id: 1,
        limits: NodeLimits {
            fetch_per_requester: unlimited,
            fetch_per_target: unlimited,
            fetch_per_pair: unlimited,
            ..NodeLimits::default()
        },
        ..NodeConfig::new(1)
    };
    let store = kith_storage::SledNodeStore::open(dir.join("node")).expect("node store");
    kith::LocalNode::new(std::sync::Arc::new(NodeLogic::new(config, store)))
}

/// What the clients' timers are stretched to by [`stretched_timers`].
pub const STRETCHED_TIMER: Duration = Duration::from_secs(3600);

/// The line each benchmark that runs clients prints with its figures.
pub const STRETCHED_TIMERS_NOTE: &str = "note: the clients' sync_interval and \
     discovery_before_send are stretched to 1 h (defaults 30 s and 60 s); these figures \
     leave out the periodic re-sync of every group and the installation check that a \
     send makes after 60 s without one";

/// `config` with two of the client's periodic timers stretched to
/// [`STRETCHED_TIMER`] (an hour):
///
/// - `sync_interval` (default 30 s): every group re-syncs with the node
///   this often even without pushes;
/// - `discovery_before_send` (default 60 s): a send first re-checks the
///   members' installations if the group's last check is older than this.
///
/// Why: a run makes hundreds of groups, and with the defaults each would
/// re-sync every 30 s, on a 2-core machine, in the middle of whatever is
/// being timed; and the first send after 60 s would fold one discovery
/// round into one sample. Both are periodic costs, not costs of the
/// operation being measured.
///
/// What it means for the figures: they are the operation alone. A client
/// with the default timers also pays, per group, a sync with the node
/// every 30 s, and one installation check on the first send after 60 s
/// without one; and nothing here recovers a missed push (convergence
/// relies on pushes alone). Benchmarks that use this print
/// [`STRETCHED_TIMERS_NOTE`] with their figures.
pub fn stretched_timers(config: kith::ClientConfig) -> kith::ClientConfig {
    kith::ClientConfig {
        sync_interval: STRETCHED_TIMER,
        discovery_before_send: STRETCHED_TIMER,
        ..config
    }
}

/// A registered client with a fresh wallet, its store at `dir/name`, on
/// `node`, with [`stretched_timers`].
pub async fn registered_client(
    dir: &std::path::Path,
    name: &str,
    node: &kith::LocalNode<kith_storage::SledNodeStore>,
    config: kith::ClientConfig,
) -> kith::Client {
    let client = kith::Client::builder()
        .wallet(kith::LocalWallet::generate(&mut rand_core::OsRng))
        .data_dir(dir.join(name))
        .node(node.clone())
        .config(stretched_timers(config))
        .build()
        .await
        .expect("client");
    client.register().await.expect("register");
    client
}

/// Collects the times measured inside `iter_custom`, so that the ratio of
/// each backend to the baseline can be printed from the same runs that
/// criterion measured. Criterion's warm-up calls `iter_custom` too, so the
/// means include the warm-up iterations: criterion's own estimates (printed
/// above the table) leave them out.
#[derive(Debug, Default)]
pub struct Recorder {
    totals: Mutex<BTreeMap<(String, String), (Duration, u64)>>,
}

impl Recorder {
    /// Add `iterations` iterations that took `elapsed` in total.
    pub fn record(&self, operation: &str, backend: &str, elapsed: Duration, iterations: u64) {
        let mut totals = self.totals.lock().expect("recorder lock");
        let entry = totals
            .entry((operation.to_owned(), backend.to_owned()))
            .or_default();
        entry.0 += elapsed;
        entry.1 += iterations;
    }

    /// The mean time per iteration of `operation` on `backend`, in seconds.
    pub fn mean_secs(&self, operation: &str, backend: &str) -> Option<f64> {
        let totals = self.totals.lock().expect("recorder lock");
        let (elapsed, iterations) = totals.get(&(operation.to_owned(), backend.to_owned()))?;
        (*iterations > 0).then(|| elapsed.as_secs_f64() / *iterations as f64)
    }

    /// Print, per operation, each backend's mean and its ratio to
    /// `baseline`.
    pub fn print_ratios(&self, baseline: &str) {
        let totals = self.totals.lock().expect("recorder lock");
        let operations: Vec<&String> = {
            let mut ops: Vec<&String> = totals.keys().map(|(op, _)| op).collect();
            ops.dedup();
            ops
        };
        println!(
            "\n{:<44} {:<22} {:>12} {:>8}",
            "operation", "backend", "mean", "ratio"
        );
        for operation in operations {
            let Some((base_elapsed, base_iters)) =
                totals.get(&(operation.clone(), baseline.to_owned()))
            else {
                continue;
            };
            let base = base_elapsed.as_secs_f64() / *base_iters as f64;
            for ((op, backend), (elapsed, iters)) in totals.iter() {
                if op != operation {
                    continue;
                }
                let mean = elapsed.as_secs_f64() / *iters as f64;
                println!(
                    "{:<44} {:<22} {:>10.3}ms {:>7.2}x",
                    op,
                    backend,
                    mean * 1e3,
                    mean / base
                );
            }
        }
    }
}

/// Milliseconds since the Unix epoch, for signed requests.
#[allow(clippy::disallowed_methods)]
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .expect("clock")
}

/// An inbox with one installation registered straight on `node` (an
/// identity update and key packages, no client behind it): a last-resort
/// package, handed out on every fetch, and `one_time` one-time packages.
pub async fn virtual_member(
    node: &dyn kith_transport::client::DeliveryClient,
    one_time: usize,
) -> (kith::InboxId, kith::InstallationId) {
    use kith_engine::identity::{
        DEFAULT_LIFETIME_SECS, InstallationKeys, UnsignedIdentityUpdate, generate_key_package,
    };
    use kith_transport::node::{KeyPackageUpload, upload_signed_bytes};
    use openmls::prelude::tls_codec::Serialize as _;

    let mut rng = rand_core::OsRng;
    let wallet = kith::LocalWallet::generate(&mut rng);
    let keys = InstallationKeys::generate(&mut rng);
    let unsigned = UnsignedIdentityUpdate::add_installation(wallet.inbox_id(), &keys, 1, now_ms());
    let signature = wallet.sign_personal(unsigned.signature_text().as_bytes());
    node.publish_identity_update(unsigned.sign(signature, Some(&keys)))
        .await
        .expect("identity");
    let package = |last_resort| {
        let key_package = generate_key_package(
            &OpenMlsRustCrypto::default(),
            &keys,
            wallet.inbox_id(),
            now_ms() / 1000,
            DEFAULT_LIFETIME_SECS,
            last_resort,
        )
        .expect("key package");
        MlsMessageOut::from(key_package)
            .tls_serialize_detached()
            .expect("serialize")
    };
    let one_time: Vec<Vec<u8>> = (0..one_time).map(|_| package(false)).collect();
    let last_resort = package(true);
    let timestamp_ms = now_ms();
    let signed = upload_signed_bytes(timestamp_ms, &keys.id(), &one_time, Some(&last_resort));
    node.upload_key_packages(KeyPackageUpload {
        installation: keys.id(),
        one_time,
        last_resort: Some(last_resort),
        timestamp_ms,
        signature: keys.sign(&signed).to_vec(),
    })
    .await
    .expect("upload");
    (wallet.inbox_id(), keys.id())
}
