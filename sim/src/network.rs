//! The simulated delivery network: originator nodes that stamp envelopes
//! and replicate them to each other with per-link delays, duplicates and
//! partitions, in virtual time.
//!
//! What the model keeps from DESIGN.md section 6, because the engine relies
//! on it: each node stamps `(time, node, sequence)` with a monotonic clock,
//! and replication on one link is first-in first-out (so a vector cursor
//! never skips an envelope). What it varies: how long each link takes,
//! duplicates, and partitions that hold a link's traffic until they heal.
//! A node therefore holds the envelopes of other originators in an order
//! that differs from canonical order and from other nodes' orders.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use kith_engine::delivery::{Envelope, Topic};
use rand_chacha::ChaCha20Rng;

use crate::rng::{below, chance};

/// One originator node.
#[derive(Debug)]
pub struct Node {
    id: u32,
    sequence: u64,
    clock: u64,
    /// Every envelope the node has, in the order it got them.
    log: Vec<Envelope>,
    seen: HashSet<(u32, u64)>,
}

impl Node {
    fn accept(&mut self, envelope: Envelope) {
        if self
            .seen
            .insert((envelope.originator_node_id, envelope.originator_sequence_id))
        {
            self.log.push(envelope);
        }
    }

    /// The envelopes of `topic` from position `from` of this node's log
    /// on, and the position after them.
    pub fn read(&self, topic: &Topic, from: usize) -> (Vec<Envelope>, usize) {
        let out = self.log[from.min(self.log.len())..]
            .iter()
            .filter(|e| &e.topic == topic)
            .cloned()
            .collect();
        (out, self.log.len())
    }
}

/// A partition: the nodes on one side cannot reach the others until
/// `until`.
#[derive(Clone, Debug)]
struct Partition {
    side: BTreeSet<usize>,
    until: u64,
}

/// The network of nodes and the envelopes in flight between them.
#[derive(Debug)]
pub struct Network {
    nodes: Vec<Node>,
    /// `(deliver at, tie) -> (to node, envelope)`.
    in_flight: BTreeMap<(u64, u64), (usize, Envelope)>,
    next_tie: u64,
    /// Per link, the last scheduled delivery (links are FIFO).
    link_last: BTreeMap<(usize, usize), u64>,
    /// Per link, its base delay in ms.
    base_delay: Vec<Vec<u64>>,
    jitter_ms: u64,
    duplicate_per_mille: u64,
    partition: Option<Partition>,
}

impl Network {
    /// `count` nodes whose links take `1..=max_delay_ms` (fixed per link)
    /// plus up to `jitter_ms`.
    pub fn new(
        rng: &mut ChaCha20Rng,
        count: usize,
        max_delay_ms: u64,
        jitter_ms: u64,
        duplicate_per_mille: u64,
    ) -> Self {
        let base_delay = (0..count)
            .map(|_| (0..count).map(|_| 1 + below(rng, max_delay_ms)).collect())
            .collect();
        Self {
            nodes: (0..count)
                .map(|i| Node {
                    id: i as u32 + 1,
                    sequence: 0,
                    clock: 0,
                    log: Vec::new(),
                    seen: HashSet::new(),
                })
                .collect(),
            in_flight: BTreeMap::new(),
            next_tie: 0,
            link_last: BTreeMap::new(),
            base_delay,
            jitter_ms,
            duplicate_per_mille,
            partition: None,
        }
    }

    /// How many nodes there are.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// A node.
    pub fn node(&self, index: usize) -> &Node {
        &self.nodes[index]
    }

    /// Whether anything is still in flight.
    pub fn is_quiet(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Cut the nodes in `side` off from the rest until `until`.
    pub fn partition(&mut self, side: BTreeSet<usize>, until: u64) {
        self.partition = Some(Partition { side, until });
    }

    /// Whether a partition is in force at `now`.
    pub fn partitioned(&self, now: u64) -> bool {
        self.partition.as_ref().is_some_and(|p| p.until > now)
    }

    fn cut(&self, from: usize, to: usize, now: u64) -> Option<u64> {
        let p = self.partition.as_ref()?;
        (p.until > now && p.side.contains(&from) != p.side.contains(&to)).then_some(p.until)
    }

    /// A client publishes `payload` on `topic` through node `at`.
    pub fn publish(
        &mut self,
        rng: &mut ChaCha20Rng,
        at: usize,
        topic: Topic,
        payload: Vec<u8>,
        now: u64,
    ) -> Envelope {
        let node = &mut self.nodes[at];
        node.clock = node.clock.max(now);
        node.sequence += 1;
        let envelope = Envelope {
            topic,
            payload,
            originator_node_id: node.id,
            originator_sequence_id: node.sequence,
            originator_time_ms: node.clock,
        };
        node.accept(envelope.clone());
        for to in 0..self.nodes.len() {
            if to == at {
                continue;
            }
            let copies = if chance(rng, self.duplicate_per_mille) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let mut when = now + self.base_delay[at][to] + below(rng, self.jitter_ms + 1);
                if let Some(until) = self.cut(at, to, now) {
                    when = when.max(until + self.base_delay[at][to]);
                }
                let last = self.link_last.entry((at, to)).or_insert(0);
                when = when.max(*last);
                *last = when;
                self.in_flight
                    .insert((when, self.next_tie), (to, envelope.clone()));
                self.next_tie += 1;
            }
        }
        envelope
    }

    /// Deliver everything due by `now`.
    pub fn tick(&mut self, now: u64) {
        while let Some(entry) = self.in_flight.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (to, envelope) = entry.remove();
            self.nodes[to].accept(envelope);
        }
        for node in &mut self.nodes {
            node.clock = node.clock.max(now);
        }
    }
}
