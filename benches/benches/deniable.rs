//! Time to the first verified message of a DM: deniable against
//! non-repudiable, on the engine with sled stores, and raw OpenMLS as the
//! baseline, in one run.
//!
//! Measured from the creator's `Group::create` until the peer holds the
//! creator's first message as verified: the commit that adds the peer, its
//! Welcome, the join, and (deniable only) both bindings, each checked at
//! the next `advance`, before the held message goes out. Every engine call
//! is one storage step, as the client makes it. Delivery is in-process: no
//! node, no network. The peer's key package is made before the clock
//! starts (it comes from the pool on the node). The raw-OpenMLS baseline
//! creates a group, adds the peer, joins it from the Welcome and sends one
//! message, on `openmls_memory_storage`.

use std::time::{Duration, Instant};

use criterion::Criterion;
use kith_benches::{Backend as _, Pair, Recorder};
use kith_engine::{
    delivery::{Envelope, Topic},
    group::{
        ClientStore, ConversationKind, DeniableAdd, Group, IdentityCache, IntentKind, Me, NewGroup,
        PolicyPreset,
    },
    identity::{
        DEFAULT_LIFETIME_SECS, DmMode, InboxId, InstallationKeys, LocalWallet,
        UnsignedIdentityUpdate, generate_deniable_key_package, generate_key_package,
    },
};
use kith_storage::{KithProvider, SledMlsStorage, StorageConfig};
use openmls::prelude::{MlsMessageOut, OpenMlsProvider as _, tls_codec::Serialize as _};
use openmls_rust_crypto::OpenMlsRustCrypto;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng as _;

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
                "text/plain",
                b"hello",
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

/// The raw-OpenMLS baseline: create, add one member, join from the
/// Welcome, one message across, on memory storage.
fn raw(seed: u64) -> Duration {
    let id = seed.to_be_bytes();
    let start = Instant::now();
    let mut pair = Pair::new(
        OpenMlsRustCrypto::default(),
        OpenMlsRustCrypto::default(),
        &id,
        &[],
    );
    pair.message_round_trip(b"hello");
    start.elapsed()
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
    let mut bench = |backend: &str, run: &mut dyn FnMut() -> Duration| {
        c.benchmark_group(operation)
            .sample_size(20)
            .measurement_time(Duration::from_secs(6))
            .bench_function(backend, |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += run();
                    }
                    recorder.record(operation, backend, total, iters);
                    total
                });
            });
    };
    bench("raw OpenMLS", &mut || raw(next()));
    bench("kith non-repudiable", &mut || {
        first_verified_message(next(), DmMode::NonRepudiable)
    });
    bench("kith deniable", &mut || {
        first_verified_message(next(), DmMode::Deniable)
    });
    recorder.print_ratios("raw OpenMLS");

    // Paired: the two modes in alternation, so that drift on a shared
    // machine falls on both.
    let rounds = 40;
    let (mut deniable, mut plain) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let s = 1_000_000 + round;
        if round % 2 == 0 {
            deniable.push(first_verified_message(s, DmMode::Deniable));
            plain.push(first_verified_message(s, DmMode::NonRepudiable));
        } else {
            plain.push(first_verified_message(s, DmMode::NonRepudiable));
            deniable.push(first_verified_message(s, DmMode::Deniable));
        }
    }
    deniable.sort();
    plain.sort();
    let (d, p) = (deniable[rounds as usize / 2], plain[rounds as usize / 2]);
    println!(
        "\npaired medians over {rounds} rounds: deniable {:.2} ms, non-repudiable {:.2} ms, \
         ratio {:.2}x",
        d.as_secs_f64() * 1e3,
        p.as_secs_f64() * 1e3,
        d.as_secs_f64() / p.as_secs_f64()
    );
}
