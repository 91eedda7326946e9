//! A hand-driven world for tests and benchmarks: clients with real sled
//! stores around one group, where the caller stamps every envelope (time,
//! node, sequence) and decides who receives what, in which order.

use kith_engine::{
    delivery::{Envelope, Topic},
    group::{
        CONTENT_TYPE_TEXT, ClientStore, ConversationKind, Delivery, Group, GroupConfig, GroupEvent,
        IdentityCache, IntentKind, IntentState, LegacyConversation, Me, NewGroup, Outbound,
        PolicyPreset, ProposalPolicy, RewindPolicy, WelcomePayload, assemble_welcome,
    },
};
use openmls::prelude::{ContentType, MlsMessageIn, tls_codec::Deserialize as _};
use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng as _};

use crate::client::{Client, StepError, population};

/// Clients around one group. See the module docs.
#[derive(Debug)]
pub struct World {
    /// Everyone's identity logs.
    pub identities: IdentityCache,
    /// The clients; client 0 created the group.
    pub clients: Vec<Client>,
    /// The group.
    pub group_id: Vec<u8>,
    /// Start of time; every time given to the world is an offset from it.
    pub base: u64,
    /// The rollback policy every member runs with.
    pub policy: GroupConfig,
}

/// OpenMLS checks key-package lifetimes against the system clock, so the
/// world's time starts at the real time; only differences matter.
#[allow(clippy::disallowed_methods)]
fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The world panics on any failure: it is a harness, and a failure is the
/// test's (or the benchmark's) failure.
impl World {
    /// `count` clients; client 0 creates the group and `members` of them
    /// (client 0 included) are in it at epoch 1, all settled, every member
    /// running with a settle window of `window_ms`.
    ///
    /// Every change is its own commit, so that a test stages exactly the
    /// commit races it is about; [`World::with_proposals`] sends metadata
    /// changes and key updates as proposals first.
    pub fn new(seed: u64, count: usize, members: usize, window_ms: u64) -> Self {
        Self::with_policy(
            seed,
            count,
            members,
            GroupConfig {
                rewind: RewindPolicy {
                    max_rewind: 5,
                    settle_window_ms: window_ms,
                },
                proposals: ProposalPolicy {
                    propose_first: false,
                    ..ProposalPolicy::default()
                },
                ..GroupConfig::default()
            },
        )
    }

    /// As [`World::new`], but metadata changes and key updates go out as
    /// proposals first, committed by their proposer after `wait_ms` unless
    /// someone else's commit included them.
    pub fn with_proposals(
        seed: u64,
        count: usize,
        members: usize,
        window_ms: u64,
        wait_ms: u64,
    ) -> Self {
        Self::with_policy(
            seed,
            count,
            members,
            GroupConfig {
                rewind: RewindPolicy {
                    max_rewind: 5,
                    settle_window_ms: window_ms,
                },
                proposals: ProposalPolicy {
                    propose_first: true,
                    proposal_wait_ms: wait_ms,
                },
                ..GroupConfig::default()
            },
        )
    }

    fn with_policy(seed: u64, count: usize, members: usize, policy: GroupConfig) -> Self {
        Self::at(seed, wall_clock_ms(), count, members, policy)
    }

    /// As [`World::new`], with the rollback `policy`, but starting at the
    /// fixed time `base` instead of the real clock: the same seed then
    /// gives the same bytes on every run (the fuzz harness needs that).
    /// The clients' key packages live for a century, so the real clock,
    /// which OpenMLS checks them against, accepts them on any day.
    pub fn at(seed: u64, base: u64, count: usize, members: usize, policy: GroupConfig) -> Self {
        Self::migrated(seed, base, count, members, policy, None)
    }

    /// As [`World::at`], with a group that continues the conversation
    /// `legacy` of an older protocol (a migration).
    pub fn migrated(
        seed: u64,
        base: u64,
        count: usize,
        members: usize,
        policy: GroupConfig,
        legacy: Option<LegacyConversation>,
    ) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let (identities, mut clients) = population(&mut rng, count, 1, base).expect("clients");
        let creator = &mut clients[0];
        let storage = creator.storage();
        let me = creator.me();
        let mut group = storage
            .step(|| {
                Ok::<_, StepError>(Group::create(
                    &creator.provider,
                    storage,
                    me,
                    &identities,
                    NewGroup {
                        kind: ConversationKind::Group,
                        dm_peer: None,
                        dm_mode: kith_engine::identity::DmMode::NonRepudiable,
                        attributes: Default::default(),
                        preset: PolicyPreset::Default,
                        now_ms: base,
                        legacy,
                        gating: Default::default(),
                    },
                )?)
            })
            .expect("create");
        group.set_config(policy);
        let group_id = group.group_id().to_vec();
        creator.group_id = Some(group_id.clone());
        creator.group = Some(group);
        let mut world = Self {
            identities,
            clients,
            group_id,
            base,
            policy,
        };
        let added: Vec<usize> = (1..members).collect();
        world.add(0, &added, 10);
        world
    }

    /// An envelope stamped by `node`. The setup used node 1 up to sequence
    /// 10, so callers continue node 1 from 11.
    pub fn env(&self, time: u64, node: u32, sequence: u64, payload: Vec<u8>) -> Envelope {
        Envelope {
            topic: Topic::Group(self.group_id.clone()),
            payload,
            originator_node_id: node,
            originator_sequence_id: sequence,
            originator_time_ms: self.base + time,
        }
    }

    /// `client` handles `envelope` at time `at`, in one step.
    pub fn handle(&mut self, client: usize, envelope: &Envelope, at: u64) {
        let identities = &self.identities;
        let now = self.base + at;
        self.clients[client]
            .step(|group, provider, storage| {
                Ok(group.handle_envelope(provider, storage, identities, envelope, now)?)
            })
            .expect("handle envelope");
    }

    /// `client` advances at time `at`, in one step.
    pub fn advance(&mut self, client: usize, at: u64) {
        let identities = &self.identities;
        let now = self.base + at;
        let inbox = self.clients[client].inbox;
        let keys = self.clients[client].keys.clone();
        self.clients[client]
            .step(|group, provider, storage| {
                let me = Me { inbox, keys: &keys };
                Ok(group.advance(provider, storage, me, identities, now)?)
            })
            .expect("advance");
    }

    /// Take (and acknowledge) what `client` queued for publishing, less
    /// the epoch digests committers publish (which these tests do not
    /// deliver).
    pub fn outbox(&mut self, client: usize) -> Vec<Outbound> {
        let pending: Vec<Outbound> = self.group(client).pending_outbound().cloned().collect();
        let is_digest = |item: &Outbound| {
            item.message_id.is_none()
                && MlsMessageIn::tls_deserialize_exact(item.payload.as_slice())
                    .ok()
                    .and_then(|m| m.try_into_protocol_message().ok())
                    .is_some_and(|p| p.content_type() == ContentType::Application)
        };
        self.clients[client]
            .step(|group, _, storage| {
                for item in &pending {
                    group.ack_outbound(storage, item)?;
                }
                Ok(())
            })
            .expect("ack");
        pending
            .into_iter()
            .filter(|item| !is_digest(item))
            .collect()
    }

    /// `client` queues `kind`.
    pub fn queue(&mut self, client: usize, kind: IntentKind) {
        self.clients[client]
            .step(|group, _, storage| Ok(group.queue_intent(storage, kind)?))
            .expect("queue");
    }

    /// `client` sends `text` at time `at`; returns the message id.
    pub fn send(&mut self, client: usize, text: &str, at: u64) -> [u8; 32] {
        let inbox = self.clients[client].inbox;
        let keys = self.clients[client].keys.clone();
        let now = self.base + at;
        self.clients[client]
            .step(|group, provider, storage| {
                let me = Me { inbox, keys: &keys };
                Ok(group.send_message(
                    provider,
                    storage,
                    me,
                    kith_engine::group::Outgoing::new(CONTENT_TYPE_TEXT, text.as_bytes()),
                    now,
                )?)
            })
            .expect("send")
    }

    /// `client`'s group (it must have one).
    pub fn group(&self, client: usize) -> &Group {
        self.clients[client].group.as_ref().expect("a member")
    }

    /// `adder` adds `clients` in one commit at `time`; the commit is
    /// delivered to every member, settles, and the joiners join.
    pub fn add(&mut self, adder: usize, clients: &[usize], time: u64) {
        let window = self.policy.rewind.settle_window_ms;
        let mut key_packages = Vec::new();
        let mut sequences = Vec::new();
        for &c in clients {
            key_packages.push(self.clients[c].key_package.take().expect("key package"));
            sequences.push((self.clients[c].inbox, 1));
        }
        self.queue(
            adder,
            IntentKind::AddMembers {
                key_packages,
                sequences,
                admissions: Vec::new(),
            },
        );
        self.advance(adder, time);
        let commit = self.outbox(adder).remove(0);
        let envelope = self.env(time, 1, time, commit.payload);
        let members: Vec<usize> = (0..self.clients.len())
            .filter(|c| self.clients[*c].is_member())
            .collect();
        for &m in &members {
            self.handle(m, &envelope, time);
            self.advance(m, time + window);
        }
        // The Welcome: whole, or split into a shared part and one small
        // envelope per joiner (kith_engine::group::assemble_welcome).
        let out = self.outbox(adder);
        let shared: Vec<&[u8]> = out
            .iter()
            .filter(|item| item.topics.iter().any(|t| t.starts_with("welcome-shared/")))
            .map(|item| item.payload.as_slice())
            .collect();
        for &c in clients {
            let topic = Topic::Welcome(self.clients[c].keys.id()).to_string();
            let own = out
                .iter()
                .find(|item| item.topics.contains(&topic))
                .expect("a Welcome for each joiner");
            let payload = WelcomePayload::from_bytes(&own.payload).expect("a Welcome payload");
            let whole = assemble_welcome(&payload, shared.iter().copied())
                .expect("assembles")
                .expect("every shared part was published")
                .to_bytes();
            let identities = &self.identities;
            assert!(
                self.clients[c]
                    .join(identities, &whole, self.policy, self.base + time + window)
                    .expect("join"),
                "joined"
            );
        }
    }

    /// Every event `client`'s engine emitted.
    pub fn events(&self, client: usize) -> &[GroupEvent] {
        &self.clients[client].events
    }

    /// How `client` holds message `id`, if at all.
    pub fn delivery(&self, client: usize, id: &[u8; 32]) -> Option<Delivery> {
        let conversation = self.group(client).conversation_id();
        ClientStore(self.clients[client].storage())
            .message(&conversation, id)
            .expect("read")
            .map(|m| m.delivery)
    }

    /// `client`'s epoch and epoch authenticator.
    pub fn state(&self, client: usize) -> (u64, Vec<u8>) {
        let g = self.group(client);
        (g.epoch(), g.epoch_authenticator())
    }

    /// The states of `client`'s intents for the group, in id order.
    pub fn intent_states(&self, client: usize) -> Vec<IntentState> {
        ClientStore(self.clients[client].storage())
            .intents(&self.group_id)
            .expect("intents")
            .into_iter()
            .map(|i| i.state)
            .collect()
    }
}
