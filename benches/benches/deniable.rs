//! Time to the first verified message of a DM: deniable against
//! non-repudiable, and raw OpenMLS as the baseline, in one run, at two
//! levels: the engine with sled stores and in-process delivery, and the
//! client end to end.
//!
//! **Engine.**
//! Measured from the creator's `Group::create` until the peer holds the
//! creator's first message as verified: the commit that adds the peer, its
//! Welcome, the join, and (deniable only) both bindings, each checked at
//! the next `advance`, before the held message goes out. Every engine call
//! is one storage step, as the client makes it. Delivery is in-process: no
//! node, no network. The peer's key package is made before the clock
//! starts (it comes from the pool on the node). The raw-OpenMLS baseline
//! creates a group, adds the peer, joins it from the Welcome and sends one
//! message, on `openmls_memory_storage`; like the Kith side, it makes its
//! signature keys, credentials and the peer's key package before its clock
//! starts ([`raw_first_message`]).
//!
//! **Client end to end.** Two fresh registered clients (actors, sled
//! stores, a `LocalNode` on sled, periodic timers stretched by
//! `kith_benches::stretched_timers`; made before the clock starts), then from
//! `find_or_create_dm_with` until the peer's client shows the first message
//! as verified: the deniable key-package fetch (MACed) or the ordinary
//! one, the commit and Welcome through the node, and each side syncing in
//! turn. In a deniable DM that takes one more round: the creator must see
//! the peer's binding before its held message goes out.

use std::time::{Duration, Instant};

use std::path::Path;

use criterion::{Criterion, SamplingMode};
use kith::ClientConfig;
use kith_benches::{
    Backend as _, Recorder, STRETCHED_TIMERS_NOTE, bench_timed, median, raw_first_message,
    registered_client, unlimited_local_node,
};
use kith_engine::{
    delivery::{Envelope, Topic},
    group::{
        ClientStore, ConversationKind, DeniableAdd, Group, IdentityCache, IntentKind, Me, NewGroup,
        PolicyPreset,
    },
    identity::{
        DEFAULT_LIFETIME_SECS, DmMode, InboxId, InstallationKeys, KeyPackagePolicy, LocalWallet,
        UnsignedIdentityUpdate, generate_deniable_key_package, generate_key_package,
    },
};
use kith_storage::{KithProvider, SledMlsStorage, StorageConfig};
use openmls::prelude::{MlsMessageOut, OpenMlsProvider as _, tls_codec::Serialize as _};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng as _;

type Node = kith::LocalNode<kith_storage::SledNodeStore>;

/// Key-package lifetimes are checked against the system clock.
#[allow(clippy::disallowed_methods)]
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .expect("clock after 1970")
}

struct Side {
    provider: KithProvider,
    keys: InstallationKeys,
    inbox: InboxId,
    group: Option<Group>,
    read: usize,
}

impl Side {
    fn new(rng: &mut ChaCha20Rng, identities: &mut IdentityCache) -> Self {
        let wallet = LocalWallet::generate(rng);
        let keys = InstallationKeys::generate(rng);
        let update =
            UnsignedIdentityUpdate::add_installation(wallet.inbox_id(), &keys, 1, now_ms());
        let signature = wallet.sign_personal(update.signature_text().as_bytes());
        identities
            .extend(wallet.inbox_id(), [update.sign(signature, Some(&keys))])
            .expect("identity log");
        let db = sled::Config::new().temporary(true).open().expect("sled");
        Self {
            provider: KithProvider::from_storage(
                SledMlsStorage::from_db(db, StorageConfig::default()).expect("storage"),
            ),
            keys,
            inbox: wallet.inbox_id(),
            group: None,
            read: 0,
        }
    }

    fn me(&self) -> Me<'_> {
        Me {
            inbox: self.inbox,
            keys: &self.keys,
        }
    }

    /// Run `f` on the group in one storage step.
    fn on_group<T>(&mut self, f: impl FnOnce(&mut Group, &KithProvider, Me<'_>) -> T) -> T {
        let mut group = self.group.take().expect("in the DM");
        let me = Me {
            inbox: self.inbox,
            keys: &self.keys,
        };
        let value = self.provider.step(|| f(&mut group, &self.provider, me));
        self.group = Some(group);
        value
    }
}

/// An in-process topic log.
#[derive(Default)]
struct Log {
    envelopes: Vec<Envelope>,
}

impl Log {
    fn publish(&mut self, side: &mut Side) -> Vec<Envelope> {
        let mut welcomes = Vec::new();
        let items: Vec<_> =
            side.on_group(|group, _, _| std::iter::from_fn(|| group.poll_outbound()).collect());
        for item in items {
            for topic in &item.topics {
                let sequence = self.envelopes.len() as u64 + 1;
                let envelope = Envelope {
                    topic: topic.parse().expect("topic"),
                    payload: item.payload.clone(),
                    originator_node_id: 1,
                    originator_sequence_id: sequence,
                    originator_time_ms: now_ms() + sequence,
                };
                if matches!(envelope.topic, Topic::Welcome(_)) {
                    welcomes.push(envelope.clone());
                }
                self.envelopes.push(envelope);
            }
            side.on_group(|group, provider, _| {
                group.ack_outbound(provider.storage(), &item).expect("ack");
            });
        }
        welcomes
    }

    /// Hand the side what it has not read, then advance it.
    fn sync(&self, side: &mut Side, identities: &IdentityCache) {
        let topic = Topic::Group(side.group.as_ref().expect("in the DM").group_id().to_vec());
        let new: Vec<Envelope> = self
            .envelopes
            .iter()
            .filter(|e| e.topic == topic)
            .skip(side.read)
            .cloned()
            .collect();
        side.read += new.len();
        side.on_group(|group, provider, me| {
            for envelope in &new {
                group
                    .handle_envelope(provider, provider.storage(), identities, envelope, now_ms())
                    .expect("handle");
            }
            group
                .advance(provider, provider.storage(), me, identities, now_ms())
                .expect("advance");
        });
    }
}

/// One run: a fresh pair of installations; the time from create to the
/// peer holding the first message, verified.
fn first_verified_message(seed: u64, mode: DmMode) -> Duration {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut identities = IdentityCache::new();
    let mut alice = Side::new(&mut rng, &mut identities);
    let mut bob = Side::new(&mut rng, &mut identities);
    let now = now_ms();
    let package = bob.provider.step(|| match mode {
        DmMode::Deniable => {
            let made = generate_deniable_key_package(
                &bob.provider,
                &mut rng,
                now / 1000,
                DEFAULT_LIFETIME_SECS,
                false,
            )
            .expect("deniable key package");
            ClientStore(bob.provider.storage())
                .put_ephemeral_key(&made.leaf_key)
                .expect("keep leaf key");
            wire(made.key_package)
        }
        DmMode::NonRepudiable => wire(
            generate_key_package(
                &bob.provider,
                &bob.keys,
                bob.inbox,
                now / 1000,
                DEFAULT_LIFETIME_SECS,
                false,
            )
            .expect("key package"),
        ),
    });
    let sequences = vec![(bob.inbox, identities.sequence(&bob.inbox))];
    let intent = match mode {
        DmMode::Deniable => IntentKind::AddDeniable {
            key_packages: vec![DeniableAdd {
                installation: bob.keys.id(),
                key_package: package,
            }],
            sequences,
        },
        DmMode::NonRepudiable => IntentKind::AddMembers {
            key_packages: vec![package],
            sequences,
            admissions: Vec::new(),
        },
    };
    let mut log = Log::default();

    let start = Instant::now();
    let group = alice.provider.step(|| {
        Group::create(
            &alice.provider,
            alice.provider.storage(),
            alice.me(),
            &identities,
            NewGroup {
                kind: ConversationKind::Dm,
                dm_peer: Some(bob.inbox),
                dm_mode: mode,
                attributes: Default::default(),
                preset: PolicyPreset::Default,
                now_ms: now_ms(),
                legacy: None,
                gating: Default::default(),
            },
        )
        .expect("create")
    });
    alice.group = Some(group);
    alice.on_group(|group, provider, me| {
        group
            .queue_intent(provider.storage(), intent)
            .expect("queue");
        group
            .advance(provider, provider.storage(), me, &identities, now_ms())
            .expect("advance");
    });
    log.publish(&mut alice);
    log.sync(&mut alice, &identities);
    let welcome = log.publish(&mut alice).pop().expect("a Welcome");
    let joined = bob.provider.step(|| {
        Group::join(
            &bob.provider,
            bob.provider.storage(),
            bob.me(),
            &identities,
            &welcome.payload,
            now_ms(),
        )
        .expect("join")
        .expect("a new group")
    });
    bob.group = Some(joined);
    let id = alice.on_group(|group, provider, me| {
        group
            .send_message(
                provider,
                provider.storage(),
                me,
                kith_engine::group::Outgoing::new("text/plain", b"hello"),
                now_ms(),
            )
            .expect("send")
    });
    for _ in 0..8 {
        log.publish(&mut alice);
        log.sync(&mut bob, &identities);
        let conversation = bob.group.as_ref().expect("in the DM").conversation_id();
        let arrived = ClientStore(bob.provider.storage())
            .message(&conversation, &id)
            .expect("store")
            .is_some_and(|m| m.is_verified());
        if arrived {
            return start.elapsed();
        }
        log.publish(&mut bob);
        log.sync(&mut alice, &identities);
    }
    panic!("the first message never arrived verified ({mode:?})");
}

fn wire(key_package: openmls::prelude::KeyPackage) -> Vec<u8> {
    MlsMessageOut::from(key_package)
        .tls_serialize_detached()
        .expect("serialize")
}

/// One run through the client: a fresh pair of registered clients on
/// `node` (not timed), then the time from `find_or_create_dm_with` until
/// the peer's client holds the creator's first message as verified, each
/// side syncing in turn as an application would on a push.
async fn client_first_verified_message(
    node: &Node,
    dir: &Path,
    run: u64,
    mode: DmMode,
) -> Duration {
    // Small pools: each run makes new clients, and filling the default
    // pools of 100 would dominate the set-up.
    let pools = KeyPackagePolicy {
        target_pool: 4,
        refill_below: 2,
        ..KeyPackagePolicy::default()
    };
    let config = ClientConfig {
        key_packages: pools,
        deniable_key_packages: pools,
        ..ClientConfig::default()
    };
    let alice = registered_client(dir, &format!("alice-{run}"), node, config.clone()).await;
    let bob = registered_client(dir, &format!("bob-{run}"), node, config).await;
    let start = Instant::now();
    let dm = alice
        .find_or_create_dm_with(bob.inbox_id(), mode)
        .await
        .expect("dm");
    dm.send_text("hello").await.expect("send");
    let mut rounds = 0;
    loop {
        bob.sync().await.expect("sync");
        if let Ok(view) = bob.conversation(dm.id()).await
            && view
                .messages()
                .await
                .expect("messages")
                .first()
                .is_some_and(|m| m.verified)
        {
            break;
        }
        dm.sync().await.expect("sync");
        rounds += 1;
        assert!(rounds < 50, "the first message never arrived verified");
    }
    let elapsed = start.elapsed();
    // Shutting down closes the stores, which no handle may still hold.
    drop(dm);
    alice.shutdown().await.expect("shutdown");
    bob.shutdown().await.expect("shutdown");
    elapsed
}

fn main() {
    let recorder = Recorder::default();
    let mut c = Criterion::default().configure_from_args();
    let operation = "first verified message of a DM";
    let mut seed = 0u64;
    let mut next = move || {
        seed += 1;
        seed
    };
    {
        let mut group = c.benchmark_group(operation);
        group
            .sample_size(20)
            .measurement_time(Duration::from_secs(6));
        let mut bench = |backend: &str, run: &mut dyn FnMut() -> Duration| {
            bench_timed(&mut group, &recorder, (operation, backend), run);
        };
        // Both sides time the group work: create, add, Welcome, join and
        // the first message across. The members' long-term keys and the
        // peer's key package are made before either clock starts; the
        // deniable side's per-DM leaf key and bindings are what deniability
        // costs, so they stay in its time.
        bench("raw OpenMLS", &mut || raw_first_message(next()));
        bench("kith non-repudiable", &mut || {
            first_verified_message(next(), DmMode::NonRepudiable)
        });
        bench("kith deniable", &mut || {
            first_verified_message(next(), DmMode::Deniable)
        });
    }

    // End to end through the client: actors, sled stores, a LocalNode on
    // sled. Each run makes two clients first (not timed), so criterion is
    // held to one run per sample.
    let client_operation = "first verified message, client end to end";
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temporary directory");
    let node = unlimited_local_node(dir.path());
    let mut run = 0u64;
    let mut client_run = |mode| {
        run += 1;
        rt.block_on(client_first_verified_message(&node, dir.path(), run, mode))
    };
    {
        let mut group = c.benchmark_group(client_operation);
        group
            .sampling_mode(SamplingMode::Flat)
            .sample_size(10)
            .warm_up_time(Duration::from_millis(1))
            .measurement_time(Duration::from_millis(10));
        bench_timed(
            &mut group,
            &recorder,
            (client_operation, "raw OpenMLS"),
            || raw_first_message(next()),
        );
        for (backend, mode) in [
            ("kith non-repudiable", DmMode::NonRepudiable),
            ("kith deniable", DmMode::Deniable),
        ] {
            bench_timed(&mut group, &recorder, (client_operation, backend), || {
                client_run(mode)
            });
        }
    }
    recorder.print_ratios("raw OpenMLS");

    // Paired: the two modes in alternation, so that drift on a shared
    // machine falls on both.
    let paired = |rounds: u64, run: &mut dyn FnMut(u64, DmMode) -> Duration| {
        let (mut deniable, mut plain) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            if round % 2 == 0 {
                deniable.push(run(round, DmMode::Deniable));
                plain.push(run(round, DmMode::NonRepudiable));
            } else {
                plain.push(run(round, DmMode::NonRepudiable));
                deniable.push(run(round, DmMode::Deniable));
            }
        }
        (median(&mut deniable), median(&mut plain))
    };
    let report = |what: &str, rounds: u64, (d, p): (Duration, Duration)| {
        println!(
            "paired medians, {what}, over {rounds} rounds: deniable {:.2} ms, \
             non-repudiable {:.2} ms, ratio {:.2}x",
            d.as_secs_f64() * 1e3,
            p.as_secs_f64() * 1e3,
            d.as_secs_f64() / p.as_secs_f64()
        );
    };
    println!();
    report(
        "engine",
        40,
        paired(40, &mut |round, mode| {
            first_verified_message(1_000_000 + round, mode)
        }),
    );
    report(
        "client end to end",
        16,
        paired(16, &mut |_, mode| client_run(mode)),
    );
    println!("client end to end: {STRETCHED_TIMERS_NOTE}");
}
