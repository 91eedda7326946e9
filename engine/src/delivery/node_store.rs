//! The node's storage port: what the delivery-service node needs from its
//! database, in batch operations, so that sled (embedded and single node)
//! and PostgreSQL (a pool of stateless nodes) can both implement it without
//! the node logic changing.
//!
//! Every method is synchronous; the node calls it from a blocking pool.
//! Every mutating method is durable when it returns: the node acknowledges
//! a write only after the store said so.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Mutex,
};

use super::{
    envelope::{Cursor, Envelope, NodeId, SealedEnvelope},
    topic::Topic,
};
use crate::identity::{InboxId, InstallationId};

/// One inbox's identity updates as stored: `(sequence, encoded update)`,
/// in sequence order.
pub type SequencedUpdates = Vec<(u64, Vec<u8>)>;

/// A key package as the node keeps it: its serialized bytes, and whether it
/// is the installation's last-resort package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredKeyPackage {
    /// The TLS-serialized `MlsMessage` carrying the key package.
    pub bytes: Vec<u8>,
    /// Whether this is the last-resort package (handed out, not removed).
    pub last_resort: bool,
}

/// Which of an installation's two key-package pools an operation is about.
/// They are kept apart because they are handed to different conversations:
/// ordinary packages carry the installation's credential, deniable ones a
/// pseudonym (DESIGN.md section 8), and a fetch of one kind must never
/// return the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyPackagePool {
    /// Packages signed by the installation key, for groups and
    /// non-repudiable DMs.
    Ordinary,
    /// Packages signed by a fresh leaf key, for deniable DMs.
    Deniable,
}

/// What the delivery-service node stores.
pub trait NodeStore: Send + Sync {
    /// The store's error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Store `batch` as new envelopes originated by `originator`, all or
    /// nothing. Sequence ids continue after the last one this originator
    /// stored; the originator time is `now_ms`, raised if needed so that it
    /// never goes below the previous envelope's. `seal` is called on each
    /// stamped envelope and its answer stored with it. Returns the stored
    /// envelopes, in batch order.
    fn append_envelopes(
        &self,
        originator: NodeId,
        batch: Vec<(Topic, Vec<u8>)>,
        now_ms: u64,
        seal: Sealer<'_>,
    ) -> Result<Vec<SealedEnvelope>, Self::Error>;

    /// Up to `limit` envelopes of `topic` after `cursor`, in canonical
    /// order.
    fn query_envelopes(
        &self,
        topic: &Topic,
        cursor: &Cursor,
        limit: usize,
    ) -> Result<Vec<SealedEnvelope>, Self::Error>;

    /// Up to `limit` envelopes stamped by `originator` with a sequence id
    /// above `after`, over all topics, in sequence order: what a peer pulls
    /// to replicate them.
    fn originated_envelopes(
        &self,
        originator: NodeId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<SealedEnvelope>, Self::Error>;

    /// Store envelopes that other originators stamped and sealed
    /// (replication), keeping their originator fields, all or nothing.
    /// Per originator, an envelope at or below the last sequence id stored
    /// is a copy and is skipped; the next one is stored; one beyond it (a
    /// gap) ends the batch, and neither it nor anything after it is
    /// stored. The caller has checked the seals. Returns what was newly
    /// stored, in batch order.
    fn store_replicated(
        &self,
        batch: Vec<SealedEnvelope>,
    ) -> Result<Vec<SealedEnvelope>, Self::Error>;

    /// The node's vector clock: per originator, the last sequence id
    /// stored.
    fn heads(&self) -> Result<Cursor, Self::Error>;

    /// For each `(inbox, after)`, the stored updates of that inbox with a
    /// sequence number above `after`, in order, at most `limit` per inbox.
    fn identity_updates(
        &self,
        requests: &[(InboxId, u64)],
        limit: usize,
    ) -> Result<Vec<SequencedUpdates>, Self::Error>;

    /// Append an identity update with `sequence` to `inbox`'s log if the log
    /// currently ends at `sequence - 1`. Returns `false`, storing nothing,
    /// if it does not (another writer was first). The caller has verified
    /// the update.
    fn append_identity_update(
        &self,
        inbox: &InboxId,
        sequence: u64,
        update: Vec<u8>,
    ) -> Result<bool, Self::Error>;

    /// Replace `inbox`'s log from sequence `from` on with `updates`
    /// (sequences `from`, `from + 1`, ...), all or nothing, if the log
    /// currently ends at `last`. Returns `false`, changing nothing, if it
    /// does not (a writer got in between) or if `from` is not within
    /// `1..=last + 1`. For replicating nodes that find that another node's
    /// update with the same sequence comes first; the caller has verified
    /// the revised log.
    fn revise_identity_log(
        &self,
        inbox: &InboxId,
        last: u64,
        from: u64,
        updates: Vec<Vec<u8>>,
    ) -> Result<bool, Self::Error>;

    /// Add one-time key packages to `installation`'s `pool`, and replace
    /// that pool's last-resort package if one is given. All or nothing.
    fn add_key_packages(
        &self,
        pool: KeyPackagePool,
        installation: &InstallationId,
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> Result<(), Self::Error>;

    /// For each installation, atomically remove and return the oldest
    /// one-time package of its `pool`, or return that pool's last-resort
    /// package (without removing it) when it has no one-time package left,
    /// or `None` when it has neither. No package is ever handed out twice.
    fn take_key_packages(
        &self,
        pool: KeyPackagePool,
        installations: &[InstallationId],
    ) -> Result<Vec<Option<StoredKeyPackage>>, Self::Error>;

    /// For each installation, whether its `pool` holds any package (one-time
    /// or last resort): whether a fetch for it is worth charging. Takes
    /// nothing.
    fn has_key_packages(
        &self,
        pool: KeyPackagePool,
        installations: &[InstallationId],
    ) -> Result<Vec<bool>, Self::Error>;

    /// How many one-time packages `installation` has left in `pool`.
    fn one_time_key_packages_left(
        &self,
        pool: KeyPackagePool,
        installation: &InstallationId,
    ) -> Result<usize, Self::Error>;

    /// Remove the one-time packages of `installation`'s `pool` that
    /// `expired` says are expired, and return how many one-time packages
    /// are left. The last-resort package stays (its owner rotates it).
    fn purge_key_packages(
        &self,
        pool: KeyPackagePool,
        installation: &InstallationId,
        expired: &dyn Fn(&[u8]) -> bool,
    ) -> Result<usize, Self::Error>;

    /// The node's static X25519 secret, which keys the MACs of deniable
    /// key-package requests. Returns the stored secret, or stores `fresh`
    /// and returns it when there is none yet, atomically: every node over
    /// one store uses the same key, and it survives restarts, because
    /// clients learn it once from `GetNodeInfo`.
    fn node_secret(&self, fresh: [u8; 32]) -> Result<[u8; 32], Self::Error>;

    /// The seed of the node's Ed25519 key, which seals the envelopes it
    /// originates. Like [`NodeStore::node_secret`]: the stored seed, or
    /// `fresh`, stored, when there is none yet. Peers are configured with
    /// the public key, so it must survive restarts.
    fn node_signing_seed(&self, fresh: [u8; 32]) -> Result<[u8; 32], Self::Error>;

    /// For a store that other node processes write too (a database shared
    /// by several `kith-node`s): call `wake` whenever they may have stored
    /// envelopes, from now until the store is dropped, and return `true`.
    /// The node then reads what it has not announced yet
    /// ([`NodeStore::originated_envelopes`]) and hands it to its
    /// subscribers, so that a subscriber on any process sees what was
    /// published through every other. A wake may be spurious or late, never
    /// missing for good.
    ///
    /// The default, for a store only this process writes, returns `false`.
    fn watch_external_appends(&self, wake: Box<dyn Fn() + Send + Sync>) -> bool {
        let _ = wake;
        false
    }

    /// For a store shared by several node processes: keep the rate limits'
    /// token buckets in the store, so that a limit holds across all the
    /// processes instead of per process. Atomically (against every other
    /// process): read the states stored under `keys` (`None` for a bucket
    /// never charged, or not charged for `forget_after_ms`, after which
    /// every bucket is full again), let `charge` update them in place, and
    /// store them if it returns `true`. Returns what `charge` returned.
    ///
    /// The states are opaque to the store; the node encodes them. The
    /// default returns `None`: this store keeps no buckets, and the node
    /// keeps them in memory.
    fn charge_buckets(
        &self,
        keys: &[Vec<u8>],
        now_ms: u64,
        forget_after_ms: Option<u64>,
        charge: BucketCharge<'_>,
    ) -> Option<Result<bool, Self::Error>> {
        let _ = (keys, now_ms, forget_after_ms, charge);
        None
    }

    /// Whether `error` means the store cannot be reached for now (its
    /// database is down or restarting) and a retry later may succeed: the
    /// node answers such requests `UNAVAILABLE` instead of `INTERNAL`.
    /// The default says no.
    fn is_unavailable(error: &Self::Error) -> bool {
        let _ = error;
        false
    }
}

/// Charges rate-limit buckets whose stored states it is given
/// ([`NodeStore::charge_buckets`]): updates them in place and says whether
/// to keep the update.
pub type BucketCharge<'a> = &'a mut (dyn FnMut(&mut [Option<Vec<u8>>]) -> bool + Send);

/// Computes the seal of an envelope a store has just stamped
/// ([`NodeStore::append_envelopes`]).
pub type Sealer<'a> = &'a (dyn Fn(&Envelope) -> Vec<u8> + Sync);

/// Where a replicated envelope goes, given the last sequence id stored for
/// its originator: shared by the stores so that they agree on copies and
/// gaps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replicated {
    /// Already stored: skip it.
    Copy,
    /// The next one: store it.
    Next,
    /// Beyond the next one: stop the batch here.
    Gap,
}

impl Replicated {
    /// Classify an envelope with sequence id `sequence` after `head`.
    pub fn classify(head: u64, sequence: u64) -> Self {
        if sequence <= head {
            Self::Copy
        } else if sequence == head + 1 {
            Self::Next
        } else {
            Self::Gap
        }
    }
}

#[derive(Debug, Default)]
struct MemoryInner {
    /// Per originator: the last sequence id and time.
    heads: BTreeMap<NodeId, (u64, u64)>,
    /// Per topic, per originator, by sequence id.
    envelopes: BTreeMap<Topic, BTreeMap<NodeId, BTreeMap<u64, SealedEnvelope>>>,
    /// Per originator, by sequence id: the topic.
    originated: BTreeMap<NodeId, BTreeMap<u64, Topic>>,
    identity: BTreeMap<InboxId, Vec<Vec<u8>>>,
    one_time: BTreeMap<(KeyPackagePool, InstallationId), VecDeque<Vec<u8>>>,
    last_resort: BTreeMap<(KeyPackagePool, InstallationId), Vec<u8>>,
    secret: Option<[u8; 32]>,
    signing_seed: Option<[u8; 32]>,
}

impl MemoryInner {
    fn insert(&mut self, sealed: SealedEnvelope) {
        let envelope = &sealed.envelope;
        let (node, sequence) = (envelope.originator_node_id, envelope.originator_sequence_id);
        self.heads
            .insert(node, (sequence, envelope.originator_time_ms));
        self.originated
            .entry(node)
            .or_default()
            .insert(sequence, envelope.topic.clone());
        self.envelopes
            .entry(envelope.topic.clone())
            .or_default()
            .entry(node)
            .or_default()
            .insert(sequence, sealed);
    }
}

/// A [`NodeStore`] in memory, for tests and an ephemeral `LocalNode`.
#[derive(Debug, Default)]
pub struct MemoryNodeStore {
    inner: Mutex<MemoryInner>,
}

impl MemoryNodeStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        // Every critical section leaves the data consistent before it could
        // panic, so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl NodeStore for MemoryNodeStore {
    type Error = std::convert::Infallible;

    fn append_envelopes(
        &self,
        originator: NodeId,
        batch: Vec<(Topic, Vec<u8>)>,
        now_ms: u64,
        seal: Sealer<'_>,
    ) -> Result<Vec<SealedEnvelope>, Self::Error> {
        let mut inner = self.lock();
        let (mut sequence, last_time) = inner.heads.get(&originator).copied().unwrap_or((0, 0));
        let time = now_ms.max(last_time);
        let mut stored = Vec::with_capacity(batch.len());
        for (topic, payload) in batch {
            sequence += 1;
            let envelope = Envelope {
                topic,
                payload,
                originator_node_id: originator,
                originator_sequence_id: sequence,
                originator_time_ms: time,
            };
            let sealed = SealedEnvelope {
                seal: seal(&envelope),
                envelope,
            };
            inner.insert(sealed.clone());
            stored.push(sealed);
        }
        Ok(stored)
    }

    fn query_envelopes(
        &self,
        topic: &Topic,
        cursor: &Cursor,
        limit: usize,
    ) -> Result<Vec<SealedEnvelope>, Self::Error> {
        let inner = self.lock();
        let Some(by_node) = inner.envelopes.get(topic) else {
            return Ok(Vec::new());
        };
        let mut found: Vec<SealedEnvelope> = by_node
            .iter()
            .flat_map(|(node, envelopes)| {
                envelopes
                    .range(cursor.get(*node) + 1..)
                    .take(limit)
                    .map(|(_, e)| e.clone())
            })
            .collect();
        found.sort_by(|a, b| a.envelope.canonical_cmp(&b.envelope));
        found.truncate(limit);
        Ok(found)
    }

    fn originated_envelopes(
        &self,
        originator: NodeId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<SealedEnvelope>, Self::Error> {
        let inner = self.lock();
        let Some(topics) = inner.originated.get(&originator) else {
            return Ok(Vec::new());
        };
        Ok(topics
            .range(after.saturating_add(1)..)
            .take(limit)
            .filter_map(|(sequence, topic)| {
                inner
                    .envelopes
                    .get(topic)
                    .and_then(|by_node| by_node.get(&originator))
                    .and_then(|envelopes| envelopes.get(sequence))
                    .cloned()
            })
            .collect())
    }

    fn store_replicated(
        &self,
        batch: Vec<SealedEnvelope>,
    ) -> Result<Vec<SealedEnvelope>, Self::Error> {
        let mut inner = self.lock();
        let mut stored = Vec::new();
        for sealed in batch {
            let envelope = &sealed.envelope;
            let head = inner
                .heads
                .get(&envelope.originator_node_id)
                .map_or(0, |(sequence, _)| *sequence);
            match Replicated::classify(head, envelope.originator_sequence_id) {
                Replicated::Copy => {}
                Replicated::Next => {
                    inner.insert(sealed.clone());
                    stored.push(sealed);
                }
                Replicated::Gap => break,
            }
        }
        Ok(stored)
    }

    fn heads(&self) -> Result<Cursor, Self::Error> {
        Ok(self
            .lock()
            .heads
            .iter()
            .map(|(node, (sequence, _))| (*node, *sequence))
            .collect())
    }

    fn identity_updates(
        &self,
        requests: &[(InboxId, u64)],
        limit: usize,
    ) -> Result<Vec<SequencedUpdates>, Self::Error> {
        let inner = self.lock();
        Ok(requests
            .iter()
            .map(|(inbox, after)| {
                inner.identity.get(inbox).map_or_else(Vec::new, |log| {
                    log.iter()
                        .enumerate()
                        .map(|(i, u)| (i as u64 + 1, u.clone()))
                        .filter(|(seq, _)| seq > after)
                        .take(limit)
                        .collect()
                })
            })
            .collect())
    }

    fn append_identity_update(
        &self,
        inbox: &InboxId,
        sequence: u64,
        update: Vec<u8>,
    ) -> Result<bool, Self::Error> {
        // An append is a revision from the end that replaces nothing.
        match sequence.checked_sub(1) {
            Some(last) => self.revise_identity_log(inbox, last, sequence, vec![update]),
            None => Ok(false),
        }
    }

    fn revise_identity_log(
        &self,
        inbox: &InboxId,
        last: u64,
        from: u64,
        updates: Vec<Vec<u8>>,
    ) -> Result<bool, Self::Error> {
        let mut inner = self.lock();
        let log = inner.identity.entry(*inbox).or_default();
        if log.len() as u64 != last || from == 0 || from > last + 1 {
            return Ok(false);
        }
        log.truncate(usize::try_from(from - 1).unwrap_or(usize::MAX));
        log.extend(updates);
        Ok(true)
    }

    fn add_key_packages(
        &self,
        pool: KeyPackagePool,
        installation: &InstallationId,
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> Result<(), Self::Error> {
        let mut inner = self.lock();
        inner
            .one_time
            .entry((pool, *installation))
            .or_default()
            .extend(one_time);
        if let Some(last_resort) = last_resort {
            inner.last_resort.insert((pool, *installation), last_resort);
        }
        Ok(())
    }

    fn take_key_packages(
        &self,
        pool: KeyPackagePool,
        installations: &[InstallationId],
    ) -> Result<Vec<Option<StoredKeyPackage>>, Self::Error> {
        let mut inner = self.lock();
        Ok(installations
            .iter()
            .map(|id| {
                let key = (pool, *id);
                if let Some(bytes) = inner.one_time.get_mut(&key).and_then(VecDeque::pop_front) {
                    return Some(StoredKeyPackage {
                        bytes,
                        last_resort: false,
                    });
                }
                inner.last_resort.get(&key).map(|bytes| StoredKeyPackage {
                    bytes: bytes.clone(),
                    last_resort: true,
                })
            })
            .collect())
    }

    fn has_key_packages(
        &self,
        pool: KeyPackagePool,
        installations: &[InstallationId],
    ) -> Result<Vec<bool>, Self::Error> {
        let inner = self.lock();
        Ok(installations
            .iter()
            .map(|id| {
                let key = (pool, *id);
                inner.one_time.get(&key).is_some_and(|q| !q.is_empty())
                    || inner.last_resort.contains_key(&key)
            })
            .collect())
    }

    fn one_time_key_packages_left(
        &self,
        pool: KeyPackagePool,
        installation: &InstallationId,
    ) -> Result<usize, Self::Error> {
        Ok(self
            .lock()
            .one_time
            .get(&(pool, *installation))
            .map_or(0, VecDeque::len))
    }

    fn purge_key_packages(
        &self,
        pool: KeyPackagePool,
        installation: &InstallationId,
        expired: &dyn Fn(&[u8]) -> bool,
    ) -> Result<usize, Self::Error> {
        let mut inner = self.lock();
        Ok(inner
            .one_time
            .get_mut(&(pool, *installation))
            .map_or(0, |packages| {
                packages.retain(|bytes| !expired(bytes));
                packages.len()
            }))
    }

    fn node_secret(&self, fresh: [u8; 32]) -> Result<[u8; 32], Self::Error> {
        Ok(*self.lock().secret.get_or_insert(fresh))
    }

    fn node_signing_seed(&self, fresh: [u8; 32]) -> Result<[u8; 32], Self::Error> {
        Ok(*self.lock().signing_seed.get_or_insert(fresh))
    }
}
