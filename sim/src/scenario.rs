//! One seeded run: the schedule, the clients' loop, and what it records
//! for the checks ([`crate::model`], [`crate::oracle`], [`crate::checks`]).

use std::collections::{BTreeMap, BTreeSet};

use kith_engine::{
    delivery::Topic,
    group::{
        CONTENT_TYPE_TEXT, ConversationKind, Group, GroupConfig, GroupEvent, IdentityCache,
        IntentKind, NewGroup, Outbound, PolicyPreset, ProposalPolicy, RewindPolicy,
    },
    identity::InstallationId,
};
use openmls::prelude::{ContentType, GroupId, MlsMessageIn, tls_codec::Deserialize as _};
use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng as _};
use rand_core::RngCore as _;

use crate::{
    checks,
    client::{Client, KEY_PACKAGE_LIFETIME_SECS, StepError, population},
    config::Config,
    model::{Model, State},
    network::Network,
    oracle::{self, Generations, NonceOracle},
    rng::{below, chance},
    trace::{self, Trace, TraceHashes, hex8, sha256},
};

/// When every run starts, in ms since the Unix epoch (2026-01-01T00:00Z).
/// Fixed, so that a seed replays byte for byte; only differences matter.
pub const START_MS: u64 = 1_767_225_600_000;

/// What a run found.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// Every violated check, with its evidence. Empty when the run passed.
    pub failures: Vec<String>,
    /// The hashes of the run's trace (see [`crate::trace`]): equal for two
    /// runs of the same seed and configuration (the byte hash only if no
    /// commit was [`Outcome::unordered_commits`]).
    pub trace: TraceHashes,
    /// Commits that covered proposals about two or more members (updates,
    /// removals). OpenMLS 0.9.2 lists those in the order of a `HashMap`
    /// (`ProposalQueue::filter_proposals`), seeded by the process, so the
    /// commit's bytes, and every byte after it, differ between runs; what
    /// the commit does, and so the run, does not.
    pub unordered_commits: usize,
    /// Operations issued.
    pub ops: usize,
    /// Rollbacks done, over all clients.
    pub rollbacks: u64,
    /// Envelopes replayed by them.
    pub replayed: u64,
    /// Whether two different commits were published for the same epoch
    /// of the same branch (so that one of them had to lose).
    pub raced: bool,
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
    /// Process crashes (inside a step or between steps).
    pub crashes: usize,
    /// Power losses.
    pub power_losses: usize,
}

impl Outcome {
    /// Whether every check held.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// Whether the run exercised conflict resolution: commits raced, or
    /// somebody rolled back.
    pub fn contended(&self) -> bool {
        self.raced || self.rollbacks > 0
    }
}

/// One run in progress.
pub(crate) struct Sim {
    pub(crate) config: Config,
    rng: ChaCha20Rng,
    net: Network,
    pub(crate) clients: Vec<Client>,
    identities: IdentityCache,
    pub(crate) policy: GroupConfig,
    pub(crate) now: u64,
    pub(crate) failures: Vec<String>,
    ops_done: usize,
    pub(crate) model: Model,
    nonces: NonceOracle,
    /// Per queued commit's payload hash, the state it leaves.
    commits: BTreeMap<[u8; 32], State>,
    /// Per state, the different commits published to leave it.
    published_commits: BTreeMap<State, BTreeSet<[u8; 32]>>,
    last_publish: u64,
    /// Per client, how many of its events were looked at for rejoin
    /// requests.
    events_seen: BTreeMap<usize, usize>,
    pub(crate) trace: Trace,
    crashes: usize,
    power_losses: usize,
    /// Whether the deliberate ratchet reuse was done.
    mutated: bool,
    unordered_commits: usize,
}

/// Run one seed.
pub fn run(seed: u64, config: &Config) -> Outcome {
    let mut outcome = Outcome {
        seed,
        ..Outcome::default()
    };
    let mut sim = match Sim::new(seed, config.clone()) {
        Ok(sim) => sim,
        Err(e) => {
            outcome.failures.push(format!("setup failed: {e}"));
            return outcome;
        }
    };
    sim.run();
    if sim.config.reuse_ratchet && !sim.mutated {
        sim.failures
            .push("the ratchet reuse asked for was never done: no message went out".into());
    }
    outcome.ops = sim.ops_done;
    outcome.messages = sim.model.written_count();
    outcome.raced = sim.published_commits.values().any(|c| c.len() > 1);
    outcome.crashes = sim.crashes;
    outcome.power_losses = sim.power_losses;
    outcome.virtual_ms = sim.now - START_MS;
    for client in &sim.clients {
        if let Some(group) = &client.group {
            let stats = group.rewind_stats();
            outcome.rollbacks += stats.rollbacks;
            outcome.replayed += stats.replayed;
            outcome.epoch = outcome.epoch.max(group.epoch());
        }
        for event in &client.events {
            match event {
                GroupEvent::Forked { .. } => outcome.forks += 1,
                GroupEvent::Rejoined { .. } => outcome.rejoins += 1,
                _ => {}
            }
        }
    }
    outcome.failures = std::mem::take(&mut sim.failures);
    outcome.unordered_commits = sim.unordered_commits;
    outcome.trace = sim.trace.finish();
    outcome
}

impl Sim {
    fn new(seed: u64, config: Config) -> Result<Self, StepError> {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let now = START_MS;
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
            retire_grace_ms: config.retire_grace_ms,
        };
        let mut sim = Self {
            config,
            rng,
            net,
            clients,
            identities,
            policy,
            now,
            failures: Vec::new(),
            ops_done: 0,
            model: Model::default(),
            nonces: NonceOracle::default(),
            commits: BTreeMap::new(),
            published_commits: BTreeMap::new(),
            last_publish: now,
            events_seen: BTreeMap::new(),
            trace: Trace::new(seed),
            crashes: 0,
            power_losses: 0,
            mutated: false,
            unordered_commits: 0,
        };
        sim.trace.line(format_args!("seed {seed} {:?}", sim.config));
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
                    legacy: None,
                    gating: Default::default(),
                },
            )?)
        })?;
        group.set_config(self.policy);
        creator.group_id = Some(group.group_id().to_vec());
        creator.join_epoch = Some(0);
        creator.group = Some(group);
        creator.incarnation = 1;
        creator.key_package = None;
        self.model.joined(0, 1, 0);
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
                    admissions: Vec::new(),
                },
            )?)
        })?;
        // The application saves the group it made before it shows it.
        self.flush(0);
        self.observe(0);
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
                self.trace.line(format_args!(
                    "t={} partition {side:?} until {until}",
                    self.now
                ));
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
                || self.retirements_pending()
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
                    checks::end(self);
                    return;
                }
            }
        }
        self.failures.push(format!(
            "the network did not quiet down within {} ticks",
            self.config.max_ticks
        ));
        checks::end(self);
    }

    /// Whether a removed client (not on a fork) still holds the group's
    /// state: the end checks want it deleted, once its grace is over.
    fn retirements_pending(&self) -> bool {
        self.clients.iter().any(|c| {
            c.group
                .as_ref()
                .is_some_and(|g| !g.is_active() && !g.is_retired() && g.fork().is_none())
        })
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
            self.trace
                .line(format_args!("t={now} client {index} restarts"));
            let client = &mut self.clients[index];
            client.down_until = None;
            if let Err(e) = client.reload(self.policy) {
                self.failures
                    .push(format!("client {index} could not restart: {e}"));
            }
            self.observe(index);
            return true;
        }
        if self.active() && chance(&mut self.rng, self.config.crash_per_mille) {
            self.crash(index, "crashes");
            return true;
        }
        if self.active()
            && self.config.power_loss_per_mille > 0
            && chance(&mut self.rng, self.config.power_loss_per_mille)
        {
            self.power_loss(index);
            return true;
        }
        if self.active() && chance(&mut self.rng, self.config.reconnect_per_mille) {
            let node = below(&mut self.rng, self.net.len() as u64) as usize;
            self.trace
                .line(format_args!("t={now} client {index} moves to node {node}"));
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
        if !self.advance(index) {
            return true;
        }
        checks::ring(self, index);
        self.answer_rejoin_requests(index);
        busy | self.rejoin_deferred(index) | self.publish(index)
    }

    /// The engine's timers and sends; `false` if the client went down.
    fn advance(&mut self, index: usize) -> bool {
        let now = self.now;
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
        let done = self.handle(index, result, "advance").is_some();
        if done {
            self.observe(index);
        }
        done
    }

    /// Handle a step's result: a crash takes the client down; any other
    /// error is a finding.
    fn handle<T>(&mut self, index: usize, result: Result<T, StepError>, what: &str) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(StepError::Crash) => {
                self.crash(index, "crashes inside a step");
                None
            }
            Err(e) => {
                self.failures
                    .push(format!("client {index}: {what} failed: {e}"));
                None
            }
        }
    }

    /// The process of `index` dies; it restarts from its store a little
    /// later.
    fn crash(&mut self, index: usize, how: &str) {
        let until = self.now + 20 + below(&mut self.rng, 200);
        self.trace.line(format_args!(
            "t={} client {index} {how} until {until}",
            self.now
        ));
        self.clients[index].crash(until);
        self.crashes += 1;
    }

    /// `index` loses power: it restarts a little later from what its store
    /// held at its last flush.
    fn power_loss(&mut self, index: usize) {
        let until = self.now + 20 + below(&mut self.rng, 200);
        let mut seed = [0u8; 32];
        self.rng.fill_bytes(&mut seed);
        self.trace.line(format_args!(
            "t={} client {index} loses power until {until}",
            self.now
        ));
        if let Err(e) = self.clients[index].power_loss(until, seed) {
            self.failures
                .push(format!("client {index} could not lose power: {e}"));
            return;
        }
        self.model.power_lost(index);
        self.nonces.power_lost(index);
        let events = self.clients[index].events.len();
        self.events_seen
            .entry(index)
            .and_modify(|seen| *seen = (*seen).min(events));
        self.power_losses += 1;
    }

    /// Flush `index`'s store: its steps so far survive a power loss.
    fn flush(&mut self, index: usize) {
        self.clients[index].flush();
        self.model.flushed(index);
    }

    /// Record the states `index` has been in: the current one and those
    /// its commit records name (a rollback and replay inside one step
    /// passes through epochs no step ends in).
    fn observe(&mut self, index: usize) {
        let client = &self.clients[index];
        let Some(group) = client.group.as_ref() else {
            return;
        };
        let epoch = group.epoch();
        let mut states = vec![(epoch, group.epoch_digest())];
        let store = kith_engine::group::ClientStore(client.storage());
        let deepest = epoch.saturating_sub(self.config.max_rewind as u64 + 1);
        for past in deepest..epoch {
            if let Ok(Some((_, auth))) = store.commit_record(group.group_id(), past) {
                states.push((past, auth));
            }
        }
        let incarnation = client.incarnation;
        for state in states {
            self.model.observed(index, incarnation, state);
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
                    if joined {
                        self.joined(index, "joins");
                    }
                }
                // A member re-reading its topic meets the Welcomes it used.
                Err(e) if had_group => {
                    self.trace.line(format_args!(
                        "t={} client {index} does not join from a Welcome: {e}",
                        self.now
                    ));
                }
                Err(e) => self
                    .failures
                    .push(format!("client {index} could not join from a Welcome: {e}")),
            }
        }
        busy
    }

    /// `index` joined (from a Welcome or a kept one): a new incarnation.
    fn joined(&mut self, index: usize, how: &str) {
        let client = &self.clients[index];
        let (incarnation, epoch) = (client.incarnation, client.join_epoch.unwrap_or(0));
        self.trace.line(format_args!(
            "t={} client {index} {how}: incarnation {incarnation}, epoch {epoch}",
            self.now
        ));
        if trace::enabled() {
            eprintln!(
                "t={} client {index} {how}: incarnation {incarnation}, epoch {epoch}",
                self.now % 100_000
            );
        }
        self.model.joined(index, incarnation, epoch);
        self.observe(index);
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
        if joined {
            self.joined(index, "joins from a kept Welcome");
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
            // A removed member still reads messages of its past epochs
            // (and is a member again if its removal loses a race).
            let before = self.clients[index]
                .group
                .as_ref()
                .map(|g| (g.epoch(), g.epoch_digest()));
            let result = self.clients[index].step(|group, provider, storage| {
                group.handle_envelope(provider, storage, identities, &envelope, now)?;
                if crash {
                    return Err(StepError::Crash);
                }
                Ok(())
            });
            if trace::enabled() {
                self.log_handled(index, &envelope, &result, events_before);
            }
            if self.handle(index, result, "handling an envelope").is_none() {
                return true;
            }
            if let Some(state) = before {
                let incarnation = self.clients[index].incarnation;
                self.model
                    .handled(index, incarnation, sha256(&envelope.payload), state);
            }
            self.observe(index);
        }
        busy
    }

    fn log_handled(
        &self,
        index: usize,
        envelope: &kith_engine::delivery::Envelope,
        result: &Result<(), StepError>,
        events_before: usize,
    ) {
        let header = MlsMessageIn::tls_deserialize_exact(envelope.payload.as_slice())
            .ok()
            .and_then(|m| m.try_into_protocol_message().ok())
            .map(|p| (p.epoch().as_u64(), p.content_type()));
        eprintln!(
            "t={} client {index} handles {} {:?} key ({}, {}, {}) -> {:?} {:?}",
            self.now % 100_000,
            hex8(&sha256(&envelope.payload)),
            header,
            envelope.originator_time_ms % 100_000,
            envelope.originator_node_id,
            envelope.originator_sequence_id,
            result.as_ref().map(|_| ()).map_err(ToString::to_string),
            self.clients[index]
                .group
                .as_ref()
                .map(|g| (g.epoch(), hex8(&g.epoch_digest()))),
        );
        for event in self.clients[index].events.iter().skip(events_before) {
            if !matches!(event, GroupEvent::Message(_)) {
                eprintln!("    event {event:?}");
            }
        }
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
                admissions: Vec::new(),
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
        match kind {
            Some(kind) => {
                let result = self.clients[index]
                    .step(|group, _, storage| Ok(group.queue_intent(storage, kind)?));
                self.handle(index, result, "an operation");
            }
            None if self.config.reuse_ratchet && !self.mutated => self.send_twice(index),
            None => {
                self.send(index);
            }
        }
    }

    /// Member `index` sends a message; its id, if it was written.
    fn send(&mut self, index: usize) -> Option<[u8; 32]> {
        let now = self.now;
        let result = self.watch(index, |client, _| {
            let inbox = client.inbox;
            let keys = client.keys.clone();
            client.step(|group, provider, storage| {
                let me = kith_engine::group::Me { inbox, keys: &keys };
                Ok(group.send_message(
                    provider,
                    storage,
                    me,
                    kith_engine::group::Outgoing::new(
                        CONTENT_TYPE_TEXT,
                        format!("message {now} from {index}").as_bytes(),
                    ),
                    now,
                )?)
            })
        });
        let id = self.handle(index, result, "sending a message")?;
        self.model.written(index, id, now);
        self.observe(index);
        Some(id)
    }

    /// The deliberate bug of [`Config::reuse_ratchet`]: send, put the
    /// group's MLS state back as it was before, and send again, so that
    /// two ciphertexts leave with the same key and nonce.
    fn send_twice(&mut self, index: usize) {
        let Some(group_id) = self.clients[index].group_id.clone() else {
            return;
        };
        let snapshot = match self.clients[index]
            .storage()
            .snapshot_group(&GroupId::from_slice(&group_id))
        {
            Ok(snapshot) => snapshot,
            Err(e) => {
                self.failures
                    .push(format!("client {index}: snapshot for the mutation: {e}"));
                return;
            }
        };
        let Some(id) = self.send(index) else {
            return;
        };
        let went_out = self.clients[index]
            .group
            .as_ref()
            .is_some_and(|g| g.pending_outbound().any(|o| o.message_id == Some(id)));
        if !went_out {
            return;
        }
        let result = self.clients[index].step(|_, _, storage| {
            storage.restore_group(&snapshot)?;
            Ok(())
        });
        let restored = self
            .handle(index, result, "restoring for the mutation")
            .is_some();
        if let (true, Err(e)) = (restored, self.clients[index].reload(self.policy)) {
            self.failures
                .push(format!("client {index}: reload for the mutation: {e}"));
            return;
        }
        self.mutated = restored;
        self.send(index);
    }

    /// Run an engine call that may encrypt, and attribute the generations
    /// it spent to the ciphertexts it queued (see [`oracle`]); the
    /// messages among them are copies for the model.
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
        let before = client.group.as_ref().map(|g| (g.epoch(), g.epoch_digest()));
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
        let state = (group.epoch(), group.epoch_digest());
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
        if trace::enabled() {
            eprintln!(
                "t={} client {index} gens {:?} -> {:?} epoch {:?} -> {} ({} new)",
                self.now % 100_000,
                gens_before,
                gens_after,
                before.map(|b| b.0),
                state.0,
                new.len()
            );
        }
        self.failures
            .extend(self.nonces.read(index, state.0, state.1, gens_after));
        let start = match (before, gens_before) {
            (Some(b), Some(g)) if b == state => g,
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
            if protocol.epoch().as_u64() != state.0 {
                self.failures.push(format!(
                    "client {index}: queued a ciphertext of epoch {} while in epoch {}",
                    protocol.epoch().as_u64(),
                    state.0
                ));
            }
            let hash = sha256(&item.payload);
            match protocol.content_type() {
                ContentType::Application => {
                    app.push(hash);
                    if let Some(id) = item.message_id {
                        self.model.queued(index, id, hash, self.now, state);
                    }
                }
                ContentType::Commit => {
                    self.commits.insert(hash, state);
                    handshake.push(hash);
                    let client = &self.clients[index];
                    if oracle::pending_commit_member_proposals(client.storage(), &group_id)
                        .is_some_and(|n| n > 1)
                    {
                        self.unordered_commits += 1;
                    }
                }
                ContentType::Proposal => handshake.push(hash),
            }
        }
        let at = (state.0, state.1, leaf);
        let spent = [
            self.nonces.queued(
                index,
                at,
                &app,
                start.application,
                gens_after.application,
                false,
            ),
            self.nonces.queued(
                index,
                at,
                &handshake,
                start.handshake,
                gens_after.handshake,
                true,
            ),
        ];
        self.failures.extend(spent.into_iter().flatten());
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
            // The installation flushed its key package before uploading it.
            self.flush(target);
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

    /// Publish everything queued, after flushing the store (what leaves
    /// the process must survive a power loss); a client may crash between
    /// publishing and recording it (it publishes again after restarting).
    fn publish(&mut self, index: usize) -> bool {
        let pending: Vec<Outbound> = self.clients[index]
            .group
            .as_ref()
            .map(|g| g.pending_outbound().cloned().collect())
            .unwrap_or_default();
        if pending.is_empty() {
            return false;
        }
        self.flush(index);
        self.last_publish = self.now;
        let node = self.clients[index].node;
        for item in &pending {
            let hash = sha256(&item.payload);
            self.failures.extend(self.nonces.published(index, hash));
            if let Some(state) = self.commits.get(&hash) {
                self.published_commits
                    .entry(*state)
                    .or_default()
                    .insert(hash);
            }
            for topic in &item.topics {
                let Ok(topic) = topic.parse::<Topic>() else {
                    self.failures.push(format!(
                        "client {index}: an unparsable outbox topic {topic}"
                    ));
                    continue;
                };
                if trace::enabled() {
                    eprintln!(
                        "t={} client {index} publishes {} to {topic} at node {node} (message {:?})",
                        self.now % 100_000,
                        hex8(&hash),
                        item.message_id.map(|id| hex8(&id))
                    );
                }
                self.trace.line(format_args!(
                    "t={} client {index} publishes {} bytes to {topic} at node {node}",
                    self.now,
                    item.payload.len()
                ));
                self.trace.bytes(trace::hex(&hash));
                let envelope =
                    self.net
                        .publish(&mut self.rng, node, topic, item.payload.clone(), self.now);
                self.model.stamped(hash, envelope.originator_time_ms);
            }
        }
        if self.active() && chance(&mut self.rng, self.config.crash_in_step_per_mille) {
            self.crash(index, "crashes before recording a publish");
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
}

fn fresh_key_package(client: &Client, now_ms: u64) -> Result<Vec<u8>, String> {
    use openmls::prelude::{MlsMessageOut, tls_codec::Serialize as _};
    let key_package = kith_engine::identity::generate_key_package(
        &client.provider,
        &client.keys,
        client.inbox,
        now_ms / 1000,
        KEY_PACKAGE_LIFETIME_SECS,
        false,
    )
    .map_err(|e| e.to_string())?;
    MlsMessageOut::from(key_package)
        .tls_serialize_detached()
        .map_err(|e| e.to_string())
}
