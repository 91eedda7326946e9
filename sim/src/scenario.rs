//! One seeded run: the schedule, the clients' loop, and the checks.

use std::collections::{BTreeMap, BTreeSet};

use kith_engine::{
    delivery::{Envelope, Topic},
    group::{
        CONTENT_TYPE_TEXT, ClientStore, ConversationKind, Delivery, Group, GroupConfig, GroupEvent,
        IdentityCache, IntentKind, NewGroup, Outbound, PolicyPreset, ProposalPolicy, RewindPolicy,
    },
    identity::{InboxId, InstallationId},
};
use openmls::prelude::{ContentType, MlsMessageIn, tls_codec::Deserialize as _};
use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng as _};
use sha2::{Digest as _, Sha256};

use crate::{
    client::{Client, StepError, population},
    network::Network,
    oracle::{self, Generations},
    rng::{below, chance},
};

/// What a run looks like. The defaults keep every delay and partition
/// inside the settle window, so no member may end on a fork.
#[derive(Clone, Debug)]
pub struct Config {
    /// Originator nodes.
    pub nodes: usize,
    /// Clients (one installation of one inbox each).
    pub clients: usize,
    /// Members at the start (the creator included).
    pub initial_members: usize,
    /// Operations to issue before the network quiets down.
    pub ops: usize,
    /// Virtual time per tick, in ms.
    pub tick_ms: u64,
    /// Largest base delay of a link, in ms.
    pub max_delay_ms: u64,
    /// Extra random delay per envelope, in ms.
    pub jitter_ms: u64,
    /// The settle window, in ms.
    pub settle_window_ms: u64,
    /// At most this many unsettled transitions.
    pub max_rewind: usize,
    /// Chance of a duplicated replication, per mille.
    pub duplicate_per_mille: u64,
    /// Chance per tick that a member issues an operation, per mille.
    pub op_per_mille: u64,
    /// Chance per tick that a client crashes, per mille.
    pub crash_per_mille: u64,
    /// Chance that a client crashes inside a step, per mille of steps.
    pub crash_in_step_per_mille: u64,
    /// Chance per tick that a partition starts, per mille.
    pub partition_per_mille: u64,
    /// Longest partition, in ms.
    pub max_partition_ms: u64,
    /// Chance per tick that a client moves to another node, per mille.
    pub reconnect_per_mille: u64,
    /// Give up (and fail) after this many ticks.
    pub max_ticks: u64,
    /// Whether metadata changes and key updates go out as proposals first.
    pub propose_first: bool,
    /// How long a proposer waits for someone else to commit its proposal.
    pub proposal_wait_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            nodes: 3,
            clients: 5,
            initial_members: 3,
            ops: 12,
            tick_ms: 5,
            max_delay_ms: 25,
            jitter_ms: 15,
            settle_window_ms: 200,
            max_rewind: 5,
            duplicate_per_mille: 50,
            op_per_mille: 25,
            crash_per_mille: 3,
            crash_in_step_per_mille: 10,
            partition_per_mille: 3,
            max_partition_ms: 60,
            reconnect_per_mille: 4,
            max_ticks: 20_000,
            propose_first: true,
            proposal_wait_ms: 40,
        }
    }
}

impl Config {
    /// The configuration the seed tests use: the seed picks one of three
    /// profiles (calm, busy, crashy), all of whose delays and partitions
    /// stay inside the settle window.
    pub fn for_seed(seed: u64) -> Self {
        let base = Self::default();
        match seed % 3 {
            1 => Self {
                nodes: 4,
                ops: 24,
                op_per_mille: 80,
                max_delay_ms: 60,
                jitter_ms: 40,
                settle_window_ms: 300,
                max_partition_ms: 120,
                partition_per_mille: 5,
                proposal_wait_ms: 0,
                ..base
            },
            2 => Self {
                crash_per_mille: 10,
                crash_in_step_per_mille: 30,
                reconnect_per_mille: 10,
                op_per_mille: 50,
                ..base
            },
            _ => base,
        }
    }
}

impl Config {
    /// Replication that can lag past the settle window (partitions up to
    /// three windows long): members end up on forks, which must be found
    /// and healed. [`Config::heavy_lag`] is harsher.
    pub fn lagging() -> Self {
        Self {
            settle_window_ms: 100,
            max_partition_ms: 300,
            partition_per_mille: 15,
            op_per_mille: 40,
            ops: 14,
            ..Self::default()
        }
    }
}

impl Config {
    /// Frequent partitions several settle windows long (over six windows):
    /// forks are frequent and older, and several members often answer one
    /// rejoin request.
    pub fn heavy_lag() -> Self {
        Self {
            settle_window_ms: 60,
            max_partition_ms: 400,
            partition_per_mille: 25,
            op_per_mille: 60,
            ops: 20,
            ..Self::default()
        }
    }
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// Every violated check, with its evidence. Empty when the run passed.
    pub failures: Vec<String>,
    /// Operations issued.
    pub ops: usize,
    /// Rollbacks done, over all clients.
    pub rollbacks: u64,
    /// Envelopes replayed by them.
    pub replayed: u64,
    /// Messages sent.
    pub messages: usize,
    /// The final epoch.
    pub epoch: u64,
    /// Virtual time the run took, in ms.
    pub virtual_ms: u64,
    /// Forks found (over all clients).
    pub forks: usize,
    /// Forked clients that were re-added.
    pub rejoins: usize,
}

impl Outcome {
    /// Whether every check held.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Key of a ciphertext for the key and nonce invariant: group epoch and
/// authenticator digest, sender leaf, generation, handshake or not.
type NonceTuple = (u64, [u8; 8], u32, u64, bool);

struct Sent {
    sender: usize,
}

struct Sim {
    config: Config,
    rng: ChaCha20Rng,
    net: Network,
    clients: Vec<Client>,
    identities: IdentityCache,
    policy: GroupConfig,
    now: u64,
    start: u64,
    failures: Vec<String>,
    ops_done: usize,
    sent: BTreeMap<[u8; 32], Sent>,
    /// Per message id, the epoch of the last copy its sender queued.
    message_epochs: BTreeMap<[u8; 32], u64>,
    nonces: BTreeMap<NonceTuple, [u8; 32]>,
    /// Per client: the last generations seen, in which epoch.
    last_generations: BTreeMap<usize, (u64, [u8; 8], Generations)>,
    last_publish: u64,
    /// Per client, how many of its events were looked at for rejoin
    /// requests.
    events_seen: BTreeMap<usize, usize>,
}

/// OpenMLS checks key-package lifetimes against the system clock, so the
/// virtual clock starts at the real time; only differences matter.
#[allow(clippy::disallowed_methods)]
fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn digest8(bytes: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    out.copy_from_slice(&Sha256::digest(bytes)[..8]);
    out
}

/// Run one seed.
pub fn run(seed: u64, config: &Config) -> Outcome {
    let mut outcome = Outcome {
        seed,
        ..Outcome::default()
    };
    match Sim::new(seed, config.clone()) {
        Ok(mut sim) => {
            sim.run();
            outcome.failures = std::mem::take(&mut sim.failures);
            outcome.ops = sim.ops_done;
            outcome.messages = sim.sent.len();
            for client in &sim.clients {
                if let Some(group) = &client.group {
                    let stats = group.rewind_stats();
                    outcome.rollbacks += stats.rollbacks;
                    outcome.replayed += stats.replayed;
                    outcome.epoch = outcome.epoch.max(group.epoch());
                }
            }
            outcome.virtual_ms = sim.now.saturating_sub(sim.start);
            for client in &sim.clients {
                outcome.forks += client
                    .events
                    .iter()
                    .filter(|e| matches!(e, GroupEvent::Forked { .. }))
                    .count();
                outcome.rejoins += client
                    .events
                    .iter()
                    .filter(|e| matches!(e, GroupEvent::Rejoined { .. }))
                    .count();
            }
        }
        Err(e) => outcome.failures.push(format!("setup failed: {e}")),
    }
    outcome
}

impl Sim {
    fn new(seed: u64, config: Config) -> Result<Self, StepError> {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let now = wall_clock_ms();
        let net = Network::new(
            &mut rng,
            config.nodes,
            config.max_delay_ms,
            config.jitter_ms,
            config.duplicate_per_mille,
        );
        let (identities, clients) = population(&mut rng, config.clients, config.nodes, now)?;
        // A forked member asks again after a few settle windows, so that
        // a request that met members in the middle of their own rollback
        // is repeated within the run.
        let policy = GroupConfig {
            rewind: RewindPolicy {
                max_rewind: config.max_rewind,
                settle_window_ms: config.settle_window_ms,
            },
            proposals: ProposalPolicy {
                propose_first: config.propose_first,
                proposal_wait_ms: config.proposal_wait_ms,
            },
            rejoin_retry_ms: 5 * config.settle_window_ms,
        };
        let mut sim = Self {
            config,
            rng,
            net,
            clients,
            identities,
            policy,
            now,
            start: now,
            failures: Vec::new(),
            ops_done: 0,
            sent: BTreeMap::new(),
            message_epochs: BTreeMap::new(),
            nonces: BTreeMap::new(),
            last_generations: BTreeMap::new(),
            last_publish: now,
            events_seen: BTreeMap::new(),
        };
        sim.create()?;
        Ok(sim)
    }

    /// Client 0 creates the group and adds the first members.
    fn create(&mut self) -> Result<(), StepError> {
        let now = self.now;
        let identities = &self.identities;
        let creator = &mut self.clients[0];
        let storage = creator.storage();
        let me = creator.me();
        let mut group = storage.step(|| {
            Ok::<_, StepError>(Group::create(
                &creator.provider,
                storage,
                me,
                identities,
                NewGroup {
                    kind: ConversationKind::Group,
                    dm_peer: None,
                    dm_mode: kith_engine::identity::DmMode::NonRepudiable,
                    attributes: BTreeMap::from([("name".into(), "sim".into())]),
                    preset: PolicyPreset::Default,
                    now_ms: now,
                },
            )?)
        })?;
        group.set_config(self.policy);
        creator.group_id = Some(group.group_id().to_vec());
        creator.join_epoch = Some(0);
        creator.group = Some(group);
        creator.key_package = None;
        let mut key_packages = Vec::new();
        let mut sequences = Vec::new();
        for index in 1..self.config.initial_members.min(self.clients.len()) {
            if let Some(kp) = self.clients[index].key_package.take() {
                key_packages.push(kp);
                sequences.push((self.clients[index].inbox, 1));
            }
        }
        self.clients[0].step(|group, _, storage| {
            Ok(group.queue_intent(
                storage,
                IntentKind::AddMembers {
                    key_packages,
                    sequences,
                },
            )?)
        })?;
        Ok(())
    }

    fn group_topic(&self) -> Option<Topic> {
        self.clients[0].group_id.clone().map(Topic::Group)
    }

    fn active(&self) -> bool {
        self.ops_done < self.config.ops
    }

    fn run(&mut self) {
        let mut quiet_rounds = 0;
        for _ in 0..self.config.max_ticks {
            self.now += self.config.tick_ms;
            self.net.tick(self.now);
            if self.active()
                && !self.net.partitioned(self.now)
                && chance(&mut self.rng, self.config.partition_per_mille)
            {
                let side: BTreeSet<usize> = (0..self.net.len())
                    .filter(|_| chance(&mut self.rng, 500))
                    .collect();
                let until = self.now + 1 + below(&mut self.rng, self.config.max_partition_ms);
                self.net.partition(side, until);
            }
            let mut busy = false;
            let mut order: Vec<usize> = (0..self.clients.len()).collect();
            for i in (1..order.len()).rev() {
                let j = below(&mut self.rng, i as u64 + 1) as usize;
                order.swap(i, j);
            }
            for index in order {
                busy |= self.client_tick(index);
            }
            let forked = self.forked_members_pending();
            if self.active()
                || busy
                || forked
                || !self.net.is_quiet()
                || self.net.partitioned(self.now)
            {
                quiet_rounds = 0;
                continue;
            }
            let settled = self.now
                >= self.last_publish + self.config.settle_window_ms + 4 * self.config.tick_ms;
            if settled && self.clients.iter().all(Client::is_up) {
                quiet_rounds += 1;
                if quiet_rounds > 3 {
                    self.check_final();
                    return;
                }
            }
        }
        self.failures.push(format!(
            "the network did not quiet down within {} ticks",
            self.config.max_ticks
        ));
        self.check_final();
    }

    /// Whether a client on a fork is still in the canonical tree (as a
    /// member not on a fork sees it), so that its re-add is due.
    fn forked_members_pending(&self) -> bool {
        let Some(tree) = self
            .clients
            .iter()
            .filter(|c| c.is_member())
            .filter_map(|c| c.group.as_ref())
            .find(|g| g.fork().is_none())
            .map(Group::members)
        else {
            return false;
        };
        self.clients.iter().any(|c| {
            c.group.as_ref().is_some_and(|g| g.fork().is_some()) && tree.contains_key(&c.inbox)
        })
    }

    /// One client's turn; returns whether it did anything.
    fn client_tick(&mut self, index: usize) -> bool {
        let now = self.now;
        if let Some(until) = self.clients[index].down_until {
            if now < until {
                return false;
            }
            let client = &mut self.clients[index];
            client.down_until = None;
            if let Err(e) = client.reload(self.policy) {
                self.failures
                    .push(format!("client {index} could not restart: {e}"));
            }
            return true;
        }
        if self.active() && chance(&mut self.rng, self.config.crash_per_mille) {
            let until = now + 20 + below(&mut self.rng, 200);
            self.clients[index].crash(until);
            return true;
        }
        if self.active() && chance(&mut self.rng, self.config.reconnect_per_mille) {
            let node = below(&mut self.rng, self.net.len() as u64) as usize;
            let client = &mut self.clients[index];
            client.node = node;
            client.read.clear();
        }
        let mut busy = self.read_welcomes(index);
        if self.clients[index].group.is_none() {
            return busy;
        }
        busy |= self.read_group(index);
        if self.clients[index].down_until.is_some() {
            return true;
        }
        if self.active()
            && self.clients[index].is_member()
            && chance(&mut self.rng, self.config.op_per_mille)
        {
            self.operate(index);
            busy = true;
        }
        if self.clients[index].down_until.is_some() {
            return true;
        }
        let crash = chance(&mut self.rng, self.config.crash_in_step_per_mille) && self.active();
        let result = self.watch(index, |client, identities| {
            let me_inbox = client.inbox;
            let keys = client.keys.clone();
            client.step(|group, provider, storage| {
                let me = kith_engine::group::Me {
                    inbox: me_inbox,
                    keys: &keys,
                };
                group.advance(provider, storage, me, identities, now)?;
                if crash {
                    return Err(StepError::Crash);
                }
                Ok(())
            })
        });
        if self.handle(index, result, "advance").is_none() {
            return true;
        }
        self.check_ring(index);
        self.answer_rejoin_requests(index);
        busy | self.rejoin_deferred(index) | self.publish(index)
    }

    /// Handle a step's result: a crash takes the client down; any other
    /// error is a finding.
    fn handle<T>(&mut self, index: usize, result: Result<T, StepError>, what: &str) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(StepError::Crash) => {
                let until = self.now + 20 + below(&mut self.rng, 200);
                self.clients[index].crash(until);
                None
            }
            Err(e) => {
                self.failures
                    .push(format!("client {index}: {what} failed: {e}"));
                None
            }
        }
    }

    fn read_welcomes(&mut self, index: usize) -> bool {
        let client = &self.clients[index];
        let topic = Topic::Welcome(client.keys.id());
        let node = client.node;
        let envelopes = self.clients[index].take_new(self.net.node(node), &topic);
        let mut busy = false;
        for envelope in envelopes {
            busy = true;
            let now = self.now;
            let had_group = self.clients[index].group_id.is_some();
            match self.clients[index].join(&self.identities, &envelope.payload, self.policy, now) {
                Ok(joined) => {
                    if std::env::var_os("KITH_SIM_TRACE").is_some() {
                        eprintln!(
                            "t={} client {index} joined: {joined}, epoch {:?}",
                            now % 100_000,
                            self.clients[index].join_epoch
                        );
                    }
                }
                // A member re-reading its topic meets the Welcomes it used.
                Err(_) if had_group => {}
                Err(e) => self
                    .failures
                    .push(format!("client {index} could not join from a Welcome: {e}")),
            }
        }
        busy
    }

    /// A member that needs a rejoin uses a Welcome it was given while it
    /// still was a member (several members answered its request).
    fn rejoin_deferred(&mut self, index: usize) -> bool {
        if !self.clients[index]
            .group
            .as_ref()
            .is_some_and(Group::needs_rejoin)
        {
            return false;
        }
        let now = self.now;
        let result = self.clients[index].rejoin_deferred(&self.identities, self.policy, now);
        let joined = self
            .handle(index, result, "joining from a kept Welcome")
            .unwrap_or(false);
        if joined && std::env::var_os("KITH_SIM_TRACE").is_some() {
            eprintln!(
                "t={} client {index} joined from a kept Welcome, epoch {:?}",
                now % 100_000,
                self.clients[index].join_epoch
            );
        }
        joined
    }

    fn read_group(&mut self, index: usize) -> bool {
        let Some(topic) = self.group_topic() else {
            return false;
        };
        let node = self.clients[index].node;
        let envelopes = self.clients[index].take_new(self.net.node(node), &topic);
        let busy = !envelopes.is_empty();
        for envelope in envelopes {
            let events_before = self.clients[index].events.len();
            let crash = self.active() && chance(&mut self.rng, self.config.crash_in_step_per_mille);
            let identities = &self.identities;
            let now = self.now;
            let result = self.clients[index].step(|group, provider, storage| {
                group.handle_envelope(provider, storage, identities, &envelope, now)?;
                if crash {
                    return Err(StepError::Crash);
                }
                Ok(())
            });
            if std::env::var_os("KITH_SIM_TRACE").is_some() {
                let header = MlsMessageIn::tls_deserialize_exact(envelope.payload.as_slice())
                    .ok()
                    .and_then(|m| m.try_into_protocol_message().ok())
                    .map(|p| (p.epoch().as_u64(), p.content_type()));
                eprintln!(
                    "t={} client {index} handles {} {:?} key ({}, {}, {}) -> {:?} {:?}",
                    self.now % 100_000,
                    hex8(&Sha256::digest(&envelope.payload)),
                    header,
                    envelope.originator_time_ms % 100_000,
                    envelope.originator_node_id,
                    envelope.originator_sequence_id,
                    result.as_ref().map(|_| ()).map_err(|e| e.to_string()),
                    self.clients[index]
                        .group
                        .as_ref()
                        .map(|g| (g.epoch(), hex8(&g.epoch_authenticator()))),
                );
                for event in self.clients[index].events.iter().skip(events_before) {
                    if !matches!(event, GroupEvent::Message(_)) {
                        eprintln!("    event {event:?}");
                    }
                }
            }
            if self.handle(index, result, "handling an envelope").is_none() {
                return true;
            }
        }
        busy
    }

    /// One random operation by member `index`.
    fn operate(&mut self, index: usize) {
        self.ops_done += 1;
        let others: Vec<usize> = {
            let members = self.clients[index]
                .group
                .as_ref()
                .map(Group::members)
                .unwrap_or_default();
            self.clients
                .iter()
                .filter(|c| c.index != index && members.contains_key(&c.inbox))
                .map(|c| c.index)
                .collect()
        };
        let candidates: Vec<usize> = self
            .clients
            .iter()
            .filter(|c| c.group_id.is_none() && c.key_package.is_some())
            .map(|c| c.index)
            .collect();
        let roll = below(&mut self.rng, 100);
        let kind = if roll < 45 {
            None
        } else if roll < 60 && !candidates.is_empty() {
            // A key package is handed out once, as the node does.
            let target = candidates[below(&mut self.rng, candidates.len() as u64) as usize];
            let client = &mut self.clients[target];
            client.key_package.take().map(|kp| IntentKind::AddMembers {
                key_packages: vec![kp],
                sequences: vec![(client.inbox, 1)],
            })
        } else if roll < 70 && others.len() > 1 {
            let target = others[below(&mut self.rng, others.len() as u64) as usize];
            Some(IntentKind::RemoveMembers {
                inboxes: vec![self.clients[target].inbox],
            })
        } else if roll < 85 {
            Some(IntentKind::UpdateAttributes {
                changes: vec![(
                    "name".into(),
                    Some(format!("name {} by {index}", self.ops_done)),
                )],
            })
        } else {
            Some(IntentKind::UpdateKeys)
        };
        let now = self.now;
        let result = match kind {
            Some(kind) => self.clients[index]
                .step(|group, _, storage| Ok(group.queue_intent(storage, kind)?))
                .map(|_| None),
            None => self.watch(index, |client, _| {
                let inbox = client.inbox;
                let keys = client.keys.clone();
                client.step(|group, provider, storage| {
                    let me = kith_engine::group::Me { inbox, keys: &keys };
                    Ok(Some(group.send_message(
                        provider,
                        storage,
                        me,
                        CONTENT_TYPE_TEXT,
                        format!("message {} from {index}", now).as_bytes(),
                        now,
                    )?))
                })
            }),
        };
        if let Some(Some(id)) = self.handle(index, result, "an operation") {
            self.sent.insert(id, Sent { sender: index });
        }
    }

    /// Run an engine call that may encrypt, and attribute the generations
    /// it spent to the ciphertexts it queued (see [`oracle`]).
    fn watch<T>(
        &mut self,
        index: usize,
        f: impl FnOnce(&mut Client, &IdentityCache) -> Result<T, StepError>,
    ) -> Result<T, StepError> {
        let identities = &self.identities;
        let client = &mut self.clients[index];
        let Some(group_id) = client.group_id.clone() else {
            return f(client, identities);
        };
        let before_ids: BTreeSet<u64> = client
            .group
            .as_ref()
            .map(|g| g.pending_outbound().map(|o| o.id).collect())
            .unwrap_or_default();
        let before = client
            .group
            .as_ref()
            .map(|g| (g.epoch(), digest8(&g.epoch_authenticator())));
        let gens_before = oracle::generations(client.storage(), &group_id);
        let result = f(client, identities);
        let client = &self.clients[index];
        // A removed member sends nothing more, and OpenMLS drops its own
        // ratchets: there is nothing to check.
        let (Some(group), true) = (
            client.group.as_ref().filter(|g| g.is_active()),
            result.is_ok(),
        ) else {
            return result;
        };
        let epoch = (group.epoch(), digest8(&group.epoch_authenticator()));
        let Some(gens_after) = oracle::generations(client.storage(), &group_id) else {
            self.failures.push(format!(
                "client {index}: the key and nonce oracle cannot read the sender ratchets"
            ));
            return result;
        };
        let leaf = group.own_leaf_index();
        let new: Vec<Outbound> = group
            .pending_outbound()
            .filter(|o| !before_ids.contains(&o.id))
            .cloned()
            .collect();
        // Generations never go backwards within one epoch.
        if let Some((e, a, last)) = self.last_generations.get(&index)
            && (*e, *a) == epoch
            && (gens_after.application < last.application || gens_after.handshake < last.handshake)
        {
            self.failures.push(format!(
                "client {index}: a sender ratchet went backwards in epoch {e}: {last:?} -> {gens_after:?}"
            ));
        }
        self.last_generations
            .insert(index, (epoch.0, epoch.1, gens_after));
        if std::env::var_os("KITH_SIM_TRACE").is_some() {
            eprintln!(
                "t={} client {index} gens {:?} -> {:?} epoch {:?} -> {} ({} new)",
                self.now % 100_000,
                gens_before,
                gens_after,
                before,
                epoch.0,
                new.len()
            );
        }
        let start = match (before, gens_before) {
            (Some(b), Some(g)) if b == epoch => g,
            _ => Generations {
                application: 0,
                handshake: 0,
            },
        };
        let mut app = Vec::new();
        let mut handshake = Vec::new();
        for item in &new {
            if !item.topics.iter().any(|t| t.starts_with("group/")) {
                continue;
            }
            let Ok(message) = MlsMessageIn::tls_deserialize_exact(item.payload.as_slice()) else {
                continue;
            };
            let Ok(protocol) = message.try_into_protocol_message() else {
                continue;
            };
            if protocol.epoch().as_u64() != epoch.0 {
                self.failures.push(format!(
                    "client {index}: queued a ciphertext of epoch {} while in epoch {}",
                    protocol.epoch().as_u64(),
                    epoch.0
                ));
            }
            let hash: [u8; 32] = Sha256::digest(&item.payload).into();
            if protocol.content_type() == ContentType::Application {
                app.push(hash);
                if let Some(id) = item.message_id {
                    self.message_epochs.insert(id, epoch.0);
                }
            } else {
                handshake.push(hash);
            }
        }
        let mut record = |hashes: &[[u8; 32]], from: u64, to: u64, handshake: bool| {
            // The ciphertexts used the last generations spent (a commit
            // that failed its own check spends one and is not published).
            let spent = to.saturating_sub(from);
            if (hashes.len() as u64) > spent {
                self.failures.push(format!(
                    "client {index}: {} ciphertexts but {spent} generations spent",
                    hashes.len()
                ));
            }
            let first = to.saturating_sub(hashes.len() as u64);
            for (offset, hash) in hashes.iter().enumerate() {
                let tuple = (epoch.0, epoch.1, leaf, first + offset as u64, handshake);
                match self.nonces.insert(tuple, *hash) {
                    Some(previous) if previous != *hash => self.failures.push(format!(
                        "client {index}: key and nonce reused: epoch {}, leaf {leaf}, \
                         generation {}, handshake {handshake}",
                        tuple.0, tuple.3
                    )),
                    _ => {}
                }
            }
        };
        record(&app, start.application, gens_after.application, false);
        record(&handshake, start.handshake, gens_after.handshake, true);
        result
    }

    /// A member heard a forked member ask to be re-added: hand it a fresh
    /// key package of that installation (as the node would) and queue the
    /// re-add.
    fn answer_rejoin_requests(&mut self, index: usize) {
        let seen = self.events_seen.get(&index).copied().unwrap_or(0);
        let requests: Vec<(InstallationId, Vec<u8>)> = self.clients[index].events[seen..]
            .iter()
            .filter_map(|e| match e {
                GroupEvent::RejoinRequested {
                    installation,
                    stale_leaf,
                    ..
                } => Some((*installation, stale_leaf.clone())),
                _ => None,
            })
            .collect();
        self.events_seen
            .insert(index, self.clients[index].events.len());
        for (installation, stale_leaf) in requests {
            // Removed since it heard the request (later in the same step):
            // the members that are left answer it.
            if !self.clients[index].is_member() {
                continue;
            }
            let Some(target) = self
                .clients
                .iter()
                .position(|c| c.keys.id() == installation)
            else {
                continue;
            };
            let key_package = match fresh_key_package(&self.clients[target], self.now) {
                Ok(kp) => kp,
                Err(e) => {
                    self.failures.push(format!("client {target}: {e}"));
                    continue;
                }
            };
            let result = self.clients[index].step(|group, _, storage| {
                Ok(group.queue_intent(
                    storage,
                    IntentKind::Readd {
                        installation,
                        key_package,
                        stale_leaf,
                    },
                )?)
            });
            self.handle(index, result, "queueing a re-add");
        }
    }

    /// Publish everything queued; a client may crash between publishing
    /// and recording it (it publishes again after restarting).
    fn publish(&mut self, index: usize) -> bool {
        let pending: Vec<Outbound> = self.clients[index]
            .group
            .as_ref()
            .map(|g| g.pending_outbound().cloned().collect())
            .unwrap_or_default();
        if pending.is_empty() {
            return false;
        }
        self.last_publish = self.now;
        let node = self.clients[index].node;
        if std::env::var_os("KITH_SIM_TRACE").is_some() {
            let epoch = self.clients[index].group.as_ref().map(Group::epoch);
            for item in &pending {
                eprintln!(
                    "t={} client {index} (epoch {epoch:?}) publishes {} {} bytes (message {}) to {}",
                    self.now % 100_000,
                    hex8(&Sha256::digest(&item.payload)),
                    item.payload.len(),
                    item.message_id
                        .as_ref()
                        .map_or_else(|| "-".into(), |id| hex8(id)),
                    item.topics
                        .iter()
                        .map(|t| t.chars().take(16).collect::<String>())
                        .collect::<Vec<_>>()
                        .join(",")
                );
            }
        }
        for item in &pending {
            for topic in &item.topics {
                let Ok(topic) = topic.parse::<Topic>() else {
                    self.failures.push(format!(
                        "client {index}: an unparsable outbox topic {topic}"
                    ));
                    continue;
                };
                let _: Envelope =
                    self.net
                        .publish(&mut self.rng, node, topic, item.payload.clone(), self.now);
            }
        }
        if self.active() && chance(&mut self.rng, self.config.crash_in_step_per_mille) {
            let until = self.now + 20 + below(&mut self.rng, 200);
            self.clients[index].crash(until);
            return true;
        }
        let result = self.clients[index].step(|group, _, storage| {
            for item in &pending {
                group.ack_outbound(storage, item)?;
            }
            Ok(())
        });
        self.handle(index, result, "acknowledging a publish");
        true
    }

    /// After a client's advance, every snapshot left must still be within
    /// its bound, and the ring within its size.
    fn check_ring(&mut self, index: usize) {
        let ring = self.clients[index].snapshots();
        if ring.len() > self.policy.rewind.max_rewind {
            self.failures.push(format!(
                "client {index}: {} snapshots retained, over the bound of {}",
                ring.len(),
                self.policy.rewind.max_rewind
            ));
        }
        for snapshot in ring {
            if self.now >= snapshot.commit_key.0 + self.policy.rewind.settle_window_ms {
                self.failures.push(format!(
                    "client {index}: the snapshot of epoch {} outlived the settle window",
                    snapshot.epoch
                ));
            }
        }
    }

    fn check_final(&mut self) {
        // A member removed on the canonical branch while it was on a fork
        // cannot learn of the removal (it cannot decrypt that branch); it
        // must know it is on a fork, and then it is not counted a member.
        let removed_on_fork: BTreeSet<usize> = self
            .clients
            .iter()
            .filter(|c| c.group.as_ref().is_some_and(|g| g.fork().is_some()))
            .map(|c| c.index)
            .collect();
        if std::env::var_os("KITH_SIM_TRACE").is_some() {
            for client in &self.clients {
                eprintln!(
                    "client {} node {} join {:?} epoch {:?}",
                    client.index,
                    client.node,
                    client.join_epoch,
                    client.group.as_ref().map(Group::epoch)
                );
                if let Some(group) = client.group.as_ref() {
                    // The commit applied for each recorded epoch: where two
                    // members' chains part is where one of them went wrong.
                    let store = ClientStore(client.storage());
                    let chain: Vec<String> = (0..group.epoch())
                        .filter_map(|epoch| {
                            let (key, auth) =
                                store.commit_record(group.group_id(), epoch).ok()??;
                            Some(format!(
                                "{epoch}:({},{},{})@{}",
                                key.0 % 100_000,
                                key.1,
                                key.2,
                                hex8(&auth)
                            ))
                        })
                        .collect();
                    eprintln!("    chain {}", chain.join(" "));
                }
                for event in &client.events {
                    eprintln!("    {}", trace_event(event));
                }
            }
        }
        let members: Vec<usize> = self
            .clients
            .iter()
            .filter(|c| c.is_member() && !removed_on_fork.contains(&c.index))
            .map(|c| c.index)
            .collect();
        let Some(&first) = members.first() else {
            self.failures.push("no member is left".into());
            return;
        };
        let reference = {
            let Some(g) = self.clients[first].group.as_ref() else {
                return;
            };
            (
                g.epoch(),
                g.epoch_authenticator(),
                g.members(),
                g.metadata().clone(),
            )
        };
        let member_inboxes: BTreeSet<InboxId> =
            members.iter().map(|i| self.clients[*i].inbox).collect();
        if reference.2.keys().copied().collect::<BTreeSet<_>>() != member_inboxes {
            self.failures.push(format!(
                "the tree's members {:?} are not the clients that think they are members {:?}",
                reference.2.keys().collect::<Vec<_>>(),
                member_inboxes
            ));
        }
        for &index in &members {
            let client = &self.clients[index];
            let Some(g) = client.group.as_ref() else {
                continue;
            };
            if g.epoch() != reference.0 || g.epoch_authenticator() != reference.1 {
                self.failures.push(format!(
                    "client {index} ended in epoch {} ({}), client {first} in epoch {} ({})",
                    g.epoch(),
                    hex8(&g.epoch_authenticator()),
                    reference.0,
                    hex8(&reference.1)
                ));
            }
            if g.members() != reference.2 {
                self.failures
                    .push(format!("client {index} disagrees on the membership"));
            }
            if *g.metadata() != reference.3 {
                self.failures
                    .push(format!("client {index} disagrees on the metadata"));
            }
            if let Some(fork) = g.fork() {
                self.failures
                    .push(format!("client {index} is on a fork: {}", fork.reason));
            }
        }
        for client in &self.clients {
            let Some(group) = client.group.as_ref() else {
                continue;
            };
            let store = ClientStore(client.storage());
            let group_id = group.group_id().to_vec();
            if !client.snapshots().is_empty() {
                self.failures.push(format!(
                    "client {}: snapshots are left after the network settled",
                    client.index
                ));
            }
            match store.intents(&group_id) {
                // Waiting to be re-added, by members that removed it.
                Ok(_) if removed_on_fork.contains(&client.index) => {}
                Ok(intents) => {
                    for intent in intents {
                        if !intent.state.is_final() {
                            self.failures.push(format!(
                                "client {}: intent {} is stuck in {:?}",
                                client.index, intent.id, intent.state
                            ));
                        } else if !client.events.iter().any(
                            |e| matches!(e, GroupEvent::IntentFailed { id, .. } if *id == intent.id),
                        ) {
                            self.failures.push(format!(
                                "client {}: intent {} failed without an event",
                                client.index, intent.id
                            ));
                        }
                    }
                }
                Err(e) => self.failures.push(format!("client {}: {e}", client.index)),
            }
            if group.pending_outbound().next().is_some() {
                self.failures.push(format!(
                    "client {}: outbox not empty after the network settled",
                    client.index
                ));
            }
        }
        // Exactly once, to every member of the message's canonical epoch.
        for (id, sent) in &self.sent {
            let sender = &self.clients[sent.sender];
            let Some(conversation) = sender.group.as_ref().map(Group::conversation_id) else {
                continue;
            };
            let own = ClientStore(sender.storage())
                .message(&conversation, id)
                .ok()
                .flatten();
            if own.as_ref().is_some_and(|m| m.delivery == Delivery::Failed) {
                continue;
            }
            let Some(&epoch) = self.message_epochs.get(id) else {
                // Written on a fork, it waits for a re-add that never comes:
                // the members removed this installation meanwhile.
                if removed_on_fork.contains(&sent.sender)
                    && own
                        .as_ref()
                        .is_some_and(|m| m.delivery == Delivery::Unpublished)
                {
                    continue;
                }
                self.failures.push(format!(
                    "message {} of client {} was never published",
                    hex8(id),
                    sent.sender
                ));
                continue;
            };
            for &index in &members {
                let client = &self.clients[index];
                if index == sent.sender || client.join_epoch.is_none_or(|j| j > epoch) {
                    continue;
                }
                let stored = ClientStore(client.storage())
                    .message(&conversation, id)
                    .ok()
                    .flatten();
                match stored {
                    Some(m) if m.delivery == Delivery::Published => {}
                    Some(m) => self.failures.push(format!(
                        "client {index} holds message {} of client {} (epoch {epoch}) as {:?}",
                        hex8(id),
                        sent.sender,
                        m.delivery
                    )),
                    None => self.failures.push(format!(
                        "client {index} (joined at epoch {:?}) never got message {} of client {} (epoch {epoch})",
                        client.join_epoch,
                        hex8(id),
                        sent.sender
                    )),
                }
            }
        }
    }
}

fn fresh_key_package(client: &Client, now_ms: u64) -> Result<Vec<u8>, String> {
    use openmls::prelude::{MlsMessageOut, tls_codec::Serialize as _};
    let key_package = kith_engine::identity::generate_key_package(
        &client.provider,
        &client.keys,
        client.inbox,
        now_ms / 1000,
        kith_engine::identity::DEFAULT_LIFETIME_SECS,
        false,
    )
    .map_err(|e| e.to_string())?;
    MlsMessageOut::from(key_package)
        .tls_serialize_detached()
        .map_err(|e| e.to_string())
}

fn hex8(bytes: &[u8]) -> String {
    bytes.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

fn trace_event(event: &GroupEvent) -> String {
    match event {
        GroupEvent::Message(m) => format!(
            "message {} from {} at {}",
            hex8(&m.message_id),
            m.sender_inbox,
            m.time_ms % 100_000
        ),
        other => format!("{other:?}").chars().take(200).collect(),
    }
}
