//! The fuzz harness of [`Group::handle_envelope`], and the seeds of every
//! fuzz target that a real group can give.
//!
//! [`group_envelope`] feeds arbitrary bytes to a member of a real group as
//! the payloads of envelopes of its group topic. The group is made once per
//! thread, from a fixed seed at a fixed time ([`World::at`]), so that it is
//! the same group, with the same epoch secrets, in every process: the seed
//! corpus holds real commits and application messages of that group, which
//! the member can decrypt, and the fuzzer mutates them from there. Each
//! input runs inside a storage step that is then discarded, so that every
//! input starts from the same state.
//!
//! An envelope's payload is anyone's to choose, so whatever it holds the
//! member must neither panic nor fail: errors of `handle_envelope` (and of
//! the `advance` that follows) are the member's own (its store, its state),
//! never the peer's. The one exception is `NeedIdentities`, which asks the
//! driver to fetch identity logs first.
//!
//! [`seeds`] runs the same group further (messages, commits racing each
//! other, a removal, a rejoin request) and returns, by target, what it
//! made: the payloads, the Kith AAD of each application message, the
//! Welcome, the member's stored records and its group snapshot.
//!
//! Built only with the `fuzzing` feature, which no normal build enables;
//! nothing here is API.

use kith_engine::{
    delivery::{Envelope, Topic},
    group::{
        Group, GroupConfig, GroupError, GroupEvent, IntentKind, KvStore, ProposalPolicy,
        RejoinRequest, RewindPolicy,
    },
};
use openmls::prelude::{GroupId, MlsMessageIn, ProtocolMessage, tls_codec::Deserialize as _};

use crate::{START_MS, world::World};

/// The seed of the fuzzed group's world.
const WORLD_SEED: u64 = 0x6b69_7468;

/// Clients in the world: the creator, the member under test, another
/// member, and one installation that is not a member yet.
const CLIENTS: usize = 4;

/// The members at the start (clients `0..MEMBERS`).
const MEMBERS: usize = 3;

/// The member whose group the inputs go to.
const RECEIVER: usize = 1;

/// The settle window: long enough that commits of the inputs can be
/// rolled back.
const WINDOW_MS: u64 = 10_000;

/// Each unit of an input's time byte, in ms after the world's start: the
/// setup's commit is at 10 ms, the member reads at [`READ_AT_MS`].
const TIME_UNIT_MS: u64 = 200;

/// When the member handles the inputs, in ms after the world's start:
/// after every time an input can name.
const READ_AT_MS: u64 = 60_000;

/// The sequence id of an input's first envelope (past the setup's).
const FIRST_SEQUENCE: u64 = 1_000;

/// The most envelopes one input makes.
const MAX_ENVELOPES: usize = 8;

fn policy() -> GroupConfig {
    GroupConfig {
        rewind: RewindPolicy {
            max_rewind: 5,
            settle_window_ms: WINDOW_MS,
        },
        proposals: ProposalPolicy {
            propose_first: false,
            ..ProposalPolicy::default()
        },
        // The member under test retires as soon as its removal settles,
        // so that the seeds hold a retired group's record.
        retire_grace_ms: 0,
        ..GroupConfig::default()
    }
}

/// The world every input and every seed starts from.
fn world() -> World {
    World::at(WORLD_SEED, START_MS, CLIENTS, MEMBERS, policy())
}

thread_local! {
    /// The fuzzed group, made on first use.
    static WORLD: World = world();
}

/// One envelope of an input: its time unit, its node and its payload.
type Frame<'a> = (u8, u8, &'a [u8]);

/// Splits an input into frames `time (1) | node (1) | length (2,
/// big-endian) | payload`; the last payload takes what is left if the input
/// is shorter than its length says. An input shorter than a header is one
/// payload, at the latest time.
fn frames(data: &[u8]) -> Vec<Frame<'_>> {
    if data.len() < 4 {
        return vec![(u8::MAX, 0, data)];
    }
    let mut out = Vec::new();
    let mut rest = data;
    while out.len() < MAX_ENVELOPES && rest.len() >= 4 {
        let (header, tail) = rest.split_at(4);
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let (payload, tail) = tail.split_at(len.min(tail.len()));
        out.push((header[0], header[1], payload));
        rest = tail;
    }
    out
}

/// Frames one envelope for [`group_envelope`].
fn frame(time: u8, node: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![time, node];
    out.extend_from_slice(
        &u16::try_from(payload.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(payload);
    out
}

/// The envelopes of an input, on the group's topic.
fn envelopes(world: &World, data: &[u8]) -> Vec<Envelope> {
    frames(data)
        .into_iter()
        .zip(0u64..)
        .map(|((time, node, payload), i)| Envelope {
            topic: Topic::Group(world.group_id.clone()),
            payload: payload.to_vec(),
            originator_node_id: 1 + u32::from(node % 3),
            originator_sequence_id: FIRST_SEQUENCE + i,
            originator_time_ms: world.base + u64::from(time) * TIME_UNIT_MS,
        })
        .collect()
}

/// Fails unless `result` is fine for bytes anyone could have sent.
fn peer_proof(result: Result<(), GroupError>, what: &str) {
    match result {
        Ok(()) | Err(GroupError::NeedIdentities(_) | GroupError::IdentitiesDisputed(_)) => {}
        Err(e) => panic!("{what} failed on peer bytes: {e}"),
    }
}

/// A member handles an input's envelopes (see [`frames`]) on its group
/// topic, in one storage step, then advances past the settle window; the
/// step is discarded. Returns the events the member emitted.
///
/// # Panics
/// When the member panics or fails on the input (see the module docs).
pub fn group_envelope(data: &[u8]) -> Vec<GroupEvent> {
    WORLD.with(|world| {
        let client = &world.clients[RECEIVER];
        let storage = client.storage();
        let step = storage
            .begin_step()
            .unwrap_or_else(|e| panic!("a step on the member's store: {e}"));
        let mut group = Group::load(&client.provider, storage, &world.group_id)
            .unwrap_or_else(|e| panic!("loading the member's group: {e}"))
            .unwrap_or_else(|| panic!("the member has the group"));
        group.set_config(world.policy);
        let now = world.base + READ_AT_MS;
        for envelope in envelopes(world, data) {
            peer_proof(
                group.handle_envelope(&client.provider, storage, &world.identities, &envelope, now),
                "handle_envelope",
            );
        }
        peer_proof(
            group.advance(
                &client.provider,
                storage,
                client.me(),
                &world.identities,
                now + WINDOW_MS + 1,
            ),
            "advance",
        );
        let mut events = Vec::new();
        while let Some(event) = group.poll_event() {
            events.push(event);
        }
        step.discard();
        events
    })
}

/// The Kith AAD of an application message's payload, if it is one.
fn aad_of(payload: &[u8]) -> Option<Vec<u8>> {
    let message = MlsMessageIn::tls_deserialize_exact(payload).ok()?;
    match message.try_into_protocol_message().ok()? {
        ProtocolMessage::PrivateMessage(m) => Some(m.aad().to_vec()),
        ProtocolMessage::PublicMessage(_) => None,
    }
}

/// What one run of the world published, by kind.
#[derive(Debug, Default)]
struct Published {
    /// Group-topic payloads, framed for [`group_envelope`] (single
    /// envelopes and the sequences that make races).
    group: Vec<Vec<u8>>,
    /// Welcome payloads.
    welcomes: Vec<Vec<u8>>,
    /// The records in the store of the member that did most (messages,
    /// own commits and sends, the snapshot ring, retained envelopes).
    records: Vec<Vec<u8>>,
}

/// The client-store records of `client`, less the large ones (snapshot
/// states: the `snapshot` target has those), to keep the corpus small.
fn records(world: &World, client: usize) -> Vec<Vec<u8>> {
    KvStore::kv_scan(world.clients[client].storage(), b"")
        .unwrap_or_default()
        .into_iter()
        .map(|(_, value)| value)
        .filter(|value| value.len() <= 2_048)
        .collect()
}

/// `client` publishes what it has queued, at `at` ms after the start:
/// returns the payloads.
fn publish(world: &mut World, client: usize, at: u64) -> Vec<Vec<u8>> {
    world.advance(client, at);
    world
        .outbox(client)
        .into_iter()
        .map(|o| o.payload)
        .collect()
}

/// The time byte of `at` ms after the start.
fn unit(at: u64) -> u8 {
    u8::try_from(at / TIME_UNIT_MS).unwrap_or(u8::MAX)
}

/// Runs the world through the scenarios whose payloads make the seeds.
fn run_scenarios() -> Published {
    let mut out = Published::default();

    // Messages in the member's epoch, an add with its Welcome, and a
    // message of the epoch after it (which the member holds until the
    // commit arrives).
    let mut world = world();
    world.send(0, "hello", 20_000);
    let alice_says = world.outbox(0).remove(0).payload;
    world.send(2, "hi", 21_000);
    let carol_says = world.outbox(2).remove(0).payload;
    let joiner = world.clients[3].key_package.take().unwrap_or_default();
    let joiner_inbox = world.clients[3].inbox;
    world.queue(
        0,
        IntentKind::AddMembers {
            key_packages: vec![joiner],
            sequences: vec![(joiner_inbox, 1)],
            admissions: Vec::new(),
        },
    );
    let add = publish(&mut world, 0, 30_000).remove(0);
    let add_envelope = world.env(30_000, 1, 11, add.clone());
    world.handle(0, &add_envelope, 30_000);
    world.advance(0, 30_000 + WINDOW_MS);
    out.welcomes
        .extend(world.outbox(0).into_iter().map(|o| o.payload));
    world.send(0, "after the add", 45_000);
    let next_epoch = world.outbox(0).remove(0).payload;
    out.records.extend(records(&world, 0));
    out.group.extend([
        frame(unit(20_000), 0, &alice_says),
        frame(unit(21_000), 0, &carol_says),
        frame(unit(30_000), 0, &add),
        frame(unit(45_000), 0, &next_epoch),
        [
            frame(unit(30_000), 0, &add),
            frame(unit(45_000), 0, &next_epoch),
        ]
        .concat(),
        [
            frame(unit(45_000), 0, &next_epoch),
            frame(unit(30_000), 0, &add),
        ]
        .concat(),
        // The same message twice: stored once.
        [
            frame(unit(20_000), 0, &alice_says),
            frame(unit(20_000), 0, &alice_says),
        ]
        .concat(),
    ]);

    // A rename by another member that races the add: it sorts first, so a
    // member that applied the add rolls back and replays.
    let mut world = self::world();
    world.queue(
        2,
        IntentKind::UpdateAttributes {
            changes: vec![("name".into(), Some("renamed".into()))],
        },
    );
    let rename = publish(&mut world, 2, 25_000).remove(0);
    out.group.extend([
        frame(unit(25_000), 2, &rename),
        [
            frame(unit(30_000), 0, &add),
            frame(unit(25_000), 2, &rename),
        ]
        .concat(),
    ]);

    // The creator removes the member under test; a key update proposed
    // first; and a rejoin request from another member.
    let mut world = self::world();
    let receiver = world.clients[RECEIVER].inbox;
    world.queue(
        0,
        IntentKind::RemoveMembers {
            inboxes: vec![receiver],
        },
    );
    let removal = publish(&mut world, 0, 35_000).remove(0);
    // The member under test applies its removal; once it settled, its
    // store keeps the retired group's public record instead of the state.
    let removal_envelope = world.env(35_000, 1, 12, removal.clone());
    world.handle(RECEIVER, &removal_envelope, 35_000);
    world.advance(RECEIVER, 35_000 + WINDOW_MS);
    out.records.extend(records(&world, RECEIVER));
    let mut world = self::world();
    if let Some(group) = world.clients[2].group.as_mut() {
        let mut config = policy();
        config.proposals.propose_first = true;
        group.set_config(config);
    }
    world.queue(2, IntentKind::UpdateKeys);
    let proposals = publish(&mut world, 2, 36_000);
    let carol = &world.clients[2];
    let rejoin = RejoinRequest {
        group_id: world.group_id.clone(),
        inbox: carol.inbox,
        installation: carol.keys.id(),
        epoch: 1,
        time_ms: world.base + 40_000,
        evidence_epoch: 0,
        evidence_key: (world.base + 10, 1, 10),
    }
    .sign(&carol.keys);
    out.group.push(frame(unit(35_000), 0, &removal));
    out.group
        .extend(proposals.iter().map(|p| frame(unit(36_000), 2, p)));
    out.group.push(frame(unit(40_000), 2, &rejoin));
    out
}

/// Seed inputs taken from the fuzzed group, by target name: the payloads
/// of the scenarios (for [`group_envelope`]), the AAD of each application
/// message, the Welcome, and the member's stored records and snapshot as
/// its store holds them.
pub fn seeds() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let published = run_scenarios();
    let aads = published
        .group
        .iter()
        .flat_map(|input| frames(input).into_iter().map(|(_, _, p)| p.to_vec()))
        .filter_map(|payload| aad_of(&payload))
        .collect();
    let member = world();
    let mut records = records(&member, RECEIVER);
    records.extend(published.records);
    records.sort();
    records.dedup();
    let snapshot = member.clients[RECEIVER]
        .storage()
        .snapshot_group(&GroupId::from_slice(&member.group_id))
        .map(|s| s.to_bytes().to_vec())
        .into_iter()
        .collect();
    vec![
        ("group_envelope", published.group),
        ("kith_aad", aads),
        ("welcome_payload", published.welcomes),
        ("client_record", records),
        ("snapshot", snapshot),
    ]
}
