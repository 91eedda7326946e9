//! [`SledNodeStore`]: the delivery-service node's [`NodeStore`] over sled.
//!
//! One tree, keys by kind:
//!
//! ```text
//! 'v'                                                     -> schema version u32 (2)
//! 'h' | originator u32                                   -> last sequence u64 | last time u64
//! 'e' | u16 len | topic key | originator u32 | seq u64   -> time u64 | seal len u16 | seal | payload
//! 'o' | originator u32 | seq u64                          -> topic key (the by-originator index)
//! 'i' | inbox (20) | sequence u64                         -> identity update bytes
//! 'k' | installation (32) | counter u64                   -> one-time key package
//! 'c' | installation (32)                                 -> next counter u64
//! 'l' | installation (32)                                 -> last-resort key package
//! 'K', 'C', 'L'                                           -> the same, deniable pool
//! 's'                                                     -> the node's X25519 secret
//! 'n'                                                     -> the seed of the node's Ed25519 key
//! ```
//!
//! Version 1 (no `'v'` key) kept `time | payload` and had no `'o'` index;
//! [`SledNodeStore::open`] rewrites such a store to version 2 in one
//! batch, with empty seals, which the node fills when it serves its own
//! envelopes.
//!
//! Writers take one lock (sequence ids and pool counters are
//! read-modify-write), apply one sled batch, and flush before returning:
//! nothing is acknowledged before it is on disk. Callers batch to amortise
//! the flush.

use std::{
    path::Path,
    sync::{Mutex, MutexGuard, PoisonError},
};

use kith_engine::{
    delivery::{
        Cursor, Envelope, KeyPackagePool, NodeId, NodeStore, Replicated, SealedEnvelope, Sealer,
        SequencedUpdates, StoredKeyPackage, Topic,
    },
    identity::{InboxId, InstallationId},
};

use crate::error::StorageError;

const NODE_TREE: &str = "kith-node";

/// The node's store on sled. See the module docs.
#[derive(Debug)]
pub struct SledNodeStore {
    db: sled::Db,
    tree: sled::Tree,
    write_lock: Mutex<()>,
}

impl SledNodeStore {
    /// Open (or create) the node store at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        let db = crate::sled_open::open_db(&sled::Config::new().path(path.as_ref()))?;
        let tree = db.open_tree(NODE_TREE)?;
        let store = Self {
            db,
            tree,
            write_lock: Mutex::new(()),
        };
        store.upgrade()?;
        Ok(store)
    }

    /// Bring a store of an earlier schema to [`SCHEMA_VERSION`], in one
    /// batch: a crash during it leaves the old store as it was.
    fn upgrade(&self) -> Result<(), StorageError> {
        let _guard = self.lock();
        match self.tree.get(SCHEMA_KEY)? {
            Some(version) if version.as_ref() == SCHEMA_VERSION.to_be_bytes() => return Ok(()),
            Some(version) => {
                return Err(StorageError::corrupt(format!(
                    "the node store has schema version {version:?}; this kith-node reads \
                     version {SCHEMA_VERSION}: run the kith-node that wrote it"
                )));
            }
            None => {}
        }
        let mut batch = sled::Batch::default();
        for entry in self.tree.scan_prefix(b"e") {
            let (key, value) = entry?;
            let (topic_key, originator, sequence) = split_envelope_key(&key)?;
            if value.len() < 8 {
                return Err(StorageError::corrupt("envelope value"));
            }
            batch.insert(
                key.clone(),
                envelope_value(be_u64(&value[..8])?, &[], &value[8..])?,
            );
            batch.insert(originated_key(originator, sequence), topic_key);
        }
        batch.insert(SCHEMA_KEY, &SCHEMA_VERSION.to_be_bytes());
        self.commit(batch)
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // The guarded data lives in sled; a panic while holding the lock
        // cannot leave it half-written (batches are atomic).
        self.write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The last sequence id and time stored for `originator` ((0, 0) for
    /// none).
    fn head(&self, originator: NodeId) -> Result<(u64, u64), StorageError> {
        match self.tree.get(keyed(b'h', &originator.to_be_bytes()))? {
            None => Ok((0, 0)),
            Some(head) if head.len() == 16 => Ok((be_u64(&head[..8])?, be_u64(&head[8..])?)),
            Some(_) => Err(StorageError::corrupt("originator head")),
        }
    }

    /// The 32 bytes stored under `key`, or `fresh`, stored, when there are
    /// none yet.
    fn set_once(
        &self,
        key: &[u8],
        fresh: [u8; 32],
        corrupt: &'static str,
    ) -> Result<[u8; 32], StorageError> {
        let _guard = self.lock();
        if let Some(stored) = self.tree.get(key)? {
            return stored
                .as_ref()
                .try_into()
                .map_err(|_| StorageError::corrupt(corrupt));
        }
        let mut batch = sled::Batch::default();
        batch.insert(key, &fresh);
        self.commit(batch)?;
        Ok(fresh)
    }

    /// Add an envelope and its by-originator index entry to `writes`.
    fn write_envelope(
        &self,
        writes: &mut sled::Batch,
        sealed: &SealedEnvelope,
    ) -> Result<(), StorageError> {
        let envelope = &sealed.envelope;
        let prefix = topic_prefix(&envelope.topic)?;
        let (originator, sequence) = (envelope.originator_node_id, envelope.originator_sequence_id);
        writes.insert(
            envelope_key(&prefix, originator, sequence),
            envelope_value(envelope.originator_time_ms, &sealed.seal, &envelope.payload)?,
        );
        writes.insert(originated_key(originator, sequence), &prefix[3..]);
        Ok(())
    }

    fn commit(&self, batch: sled::Batch) -> Result<(), StorageError> {
        self.tree.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }
}

fn topic_prefix(topic: &Topic) -> Result<Vec<u8>, StorageError> {
    let key = topic.to_key();
    let len = u16::try_from(key.len()).map_err(|_| StorageError::corrupt("topic too long"))?;
    let mut prefix = Vec::with_capacity(3 + key.len());
    prefix.push(b'e');
    prefix.extend_from_slice(&len.to_be_bytes());
    prefix.extend_from_slice(&key);
    Ok(prefix)
}

const SCHEMA_KEY: &[u8] = b"v";
const SCHEMA_VERSION: u32 = 2;

/// `'o' | originator | sequence`: the by-originator index of an envelope.
fn originated_key(originator: NodeId, sequence: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(13);
    key.push(b'o');
    key.extend_from_slice(&originator.to_be_bytes());
    key.extend_from_slice(&sequence.to_be_bytes());
    key
}

/// The parts of an `'e'` key: the topic key, the originator, the sequence.
fn split_envelope_key(key: &[u8]) -> Result<(&[u8], NodeId, u64), StorageError> {
    let corrupt = || StorageError::corrupt("envelope key");
    let len = key.get(1..3).ok_or_else(corrupt)?;
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    let topic_key = key.get(3..3 + len).ok_or_else(corrupt)?;
    let rest = key.get(3 + len..).ok_or_else(corrupt)?;
    if rest.len() != 12 {
        return Err(corrupt());
    }
    let originator = NodeId::from_be_bytes(rest[..4].try_into().map_err(|_| corrupt())?);
    Ok((topic_key, originator, be_u64(&rest[4..])?))
}

/// `time | seal len | seal | payload`.
fn envelope_value(time: u64, seal: &[u8], payload: &[u8]) -> Result<Vec<u8>, StorageError> {
    let seal_len =
        u16::try_from(seal.len()).map_err(|_| StorageError::corrupt("a seal over 64 KiB"))?;
    let mut value = Vec::with_capacity(10 + seal.len() + payload.len());
    value.extend_from_slice(&time.to_be_bytes());
    value.extend_from_slice(&seal_len.to_be_bytes());
    value.extend_from_slice(seal);
    value.extend_from_slice(payload);
    Ok(value)
}

/// Read an envelope back from its key parts and stored value.
fn read_envelope(
    topic: Topic,
    originator: NodeId,
    sequence: u64,
    value: &[u8],
) -> Result<SealedEnvelope, StorageError> {
    let corrupt = || StorageError::corrupt("envelope value");
    let time = be_u64(value.get(..8).ok_or_else(corrupt)?)?;
    let seal_len = value.get(8..10).ok_or_else(corrupt)?;
    let seal_end = 10 + usize::from(u16::from_be_bytes([seal_len[0], seal_len[1]]));
    let seal = value.get(10..seal_end).ok_or_else(corrupt)?;
    Ok(SealedEnvelope {
        envelope: Envelope {
            topic,
            payload: value[seal_end..].to_vec(),
            originator_node_id: originator,
            originator_sequence_id: sequence,
            originator_time_ms: time,
        },
        seal: seal.to_vec(),
    })
}

fn head_value(sequence: u64, time: u64) -> Vec<u8> {
    let mut head = Vec::with_capacity(16);
    head.extend_from_slice(&sequence.to_be_bytes());
    head.extend_from_slice(&time.to_be_bytes());
    head
}

fn envelope_key(prefix: &[u8], originator: NodeId, sequence: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 12);
    key.extend_from_slice(prefix);
    key.extend_from_slice(&originator.to_be_bytes());
    key.extend_from_slice(&sequence.to_be_bytes());
    key
}

fn be_u64(bytes: &[u8]) -> Result<u64, StorageError> {
    bytes
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| StorageError::corrupt("expected an 8-byte integer"))
}

fn keyed(kind: u8, id: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + id.len() + 8);
    key.push(kind);
    key.extend_from_slice(id);
    key
}

/// The key kinds of a pool: (one-time, counter, last resort).
fn pool_kinds(pool: KeyPackagePool) -> (u8, u8, u8) {
    match pool {
        KeyPackagePool::Ordinary => (b'k', b'c', b'l'),
        KeyPackagePool::Deniable => (b'K', b'C', b'L'),
    }
}

const NODE_SECRET_KEY: &[u8] = b"s";
const NODE_SIGNING_SEED_KEY: &[u8] = b"n";

impl NodeStore for SledNodeStore {
    type Error = StorageError;

    fn append_envelopes(
        &self,
        originator: NodeId,
        batch: Vec<(Topic, Vec<u8>)>,
        now_ms: u64,
        seal: Sealer<'_>,
    ) -> Result<Vec<SealedEnvelope>, StorageError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let _guard = self.lock();
        let (mut sequence, last_time) = self.head(originator)?;
        let time = now_ms.max(last_time);
        let mut writes = sled::Batch::default();
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
            self.write_envelope(&mut writes, &sealed)?;
            stored.push(sealed);
        }
        writes.insert(
            keyed(b'h', &originator.to_be_bytes()),
            head_value(sequence, time),
        );
        self.commit(writes)?;
        Ok(stored)
    }

    fn query_envelopes(
        &self,
        topic: &Topic,
        cursor: &Cursor,
        limit: usize,
    ) -> Result<Vec<SealedEnvelope>, StorageError> {
        let prefix = topic_prefix(topic)?;
        let mut found = Vec::new();
        // Visit each originator of the topic: seek to its first key, scan
        // from the cursor, then seek past it.
        let mut next_originator: Option<NodeId> = Some(0);
        while let Some(from) = next_originator {
            let seek = envelope_key(&prefix, from, 0);
            let Some(first) = self.tree.range(seek..).next() else {
                break;
            };
            let (key, _) = first?;
            if !key.starts_with(&prefix) {
                break;
            }
            let (_, originator, _) = split_envelope_key(&key)?;
            let start = envelope_key(
                &prefix,
                originator,
                cursor.get(originator).saturating_add(1),
            );
            let end = envelope_key(&prefix, originator, u64::MAX);
            for entry in self.tree.range(start..=end).take(limit) {
                let (key, value) = entry?;
                let (_, _, sequence) = split_envelope_key(&key)?;
                found.push(read_envelope(topic.clone(), originator, sequence, &value)?);
            }
            next_originator = originator.checked_add(1);
        }
        found.sort_by(|a, b| a.envelope.canonical_cmp(&b.envelope));
        found.truncate(limit);
        Ok(found)
    }

    fn originated_envelopes(
        &self,
        originator: NodeId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<SealedEnvelope>, StorageError> {
        let start = originated_key(originator, after.saturating_add(1));
        let end = originated_key(originator, u64::MAX);
        let mut found = Vec::new();
        for entry in self.tree.range(start..=end).take(limit) {
            let (key, topic_key) = entry?;
            let sequence = be_u64(&key[5..])?;
            let topic = Topic::from_key(&topic_key)
                .ok_or_else(|| StorageError::corrupt("topic of an indexed envelope"))?;
            let value = self
                .tree
                .get(envelope_key(&topic_prefix(&topic)?, originator, sequence))?
                .ok_or_else(|| StorageError::corrupt("an indexed envelope is missing"))?;
            found.push(read_envelope(topic, originator, sequence, &value)?);
        }
        Ok(found)
    }

    fn store_replicated(
        &self,
        batch: Vec<SealedEnvelope>,
    ) -> Result<Vec<SealedEnvelope>, StorageError> {
        let _guard = self.lock();
        let mut heads = std::collections::BTreeMap::new();
        let mut writes = sled::Batch::default();
        let mut stored = Vec::new();
        for sealed in batch {
            let envelope = &sealed.envelope;
            let originator = envelope.originator_node_id;
            let head = match heads.get(&originator) {
                Some(head) => *head,
                None => self.head(originator)?,
            };
            match Replicated::classify(head.0, envelope.originator_sequence_id) {
                Replicated::Copy => {}
                Replicated::Next => {
                    self.write_envelope(&mut writes, &sealed)?;
                    heads.insert(
                        originator,
                        (envelope.originator_sequence_id, envelope.originator_time_ms),
                    );
                    stored.push(sealed);
                }
                Replicated::Gap => break,
            }
        }
        if stored.is_empty() {
            return Ok(stored);
        }
        for (originator, (sequence, time)) in heads {
            writes.insert(
                keyed(b'h', &originator.to_be_bytes()),
                head_value(sequence, time),
            );
        }
        self.commit(writes)?;
        Ok(stored)
    }

    fn heads(&self) -> Result<Cursor, StorageError> {
        self.tree
            .scan_prefix(b"h")
            .map(|entry| {
                let (key, value) = entry?;
                let originator: [u8; 4] = key[1..]
                    .try_into()
                    .map_err(|_| StorageError::corrupt("originator head key"))?;
                let sequence = be_u64(
                    value
                        .get(..8)
                        .ok_or_else(|| StorageError::corrupt("originator head"))?,
                )?;
                Ok((NodeId::from_be_bytes(originator), sequence))
            })
            .collect()
    }

    fn identity_updates(
        &self,
        requests: &[(InboxId, u64)],
        limit: usize,
    ) -> Result<Vec<SequencedUpdates>, StorageError> {
        requests
            .iter()
            .map(|(inbox, after)| {
                let prefix = keyed(b'i', inbox.as_bytes());
                let mut start = prefix.clone();
                start.extend_from_slice(&after.saturating_add(1).to_be_bytes());
                self.tree
                    .range(start..)
                    .take_while(|entry| {
                        entry.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix))
                    })
                    .take(limit)
                    .map(|entry| {
                        let (key, value) = entry?;
                        Ok((be_u64(&key[prefix.len()..])?, value.to_vec()))
                    })
                    .collect()
            })
            .collect()
    }

    fn append_identity_update(
        &self,
        inbox: &InboxId,
        sequence: u64,
        update: Vec<u8>,
    ) -> Result<bool, StorageError> {
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
    ) -> Result<bool, StorageError> {
        let _guard = self.lock();
        let prefix = keyed(b'i', inbox.as_bytes());
        let current = match self.tree.scan_prefix(&prefix).next_back() {
            None => 0,
            Some(entry) => be_u64(&entry?.0[prefix.len()..])?,
        };
        if current != last || from == 0 || from > last + 1 {
            return Ok(false);
        }
        let mut batch = sled::Batch::default();
        for sequence in from..=last {
            let mut key = prefix.clone();
            key.extend_from_slice(&sequence.to_be_bytes());
            batch.remove(key);
        }
        for (sequence, update) in (from..).zip(updates) {
            let mut key = prefix.clone();
            key.extend_from_slice(&sequence.to_be_bytes());
            batch.insert(key, update);
        }
        self.commit(batch)?;
        Ok(true)
    }

    fn add_key_packages(
        &self,
        pool: KeyPackagePool,
        installation: &InstallationId,
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> Result<(), StorageError> {
        let (one_time_kind, counter_kind, last_resort_kind) = pool_kinds(pool);
        let _guard = self.lock();
        let counter_key = keyed(counter_kind, installation.as_bytes());
        let mut counter = match self.tree.get(&counter_key)? {
            None => 0,
            Some(bytes) => be_u64(&bytes)?,
        };
        let mut batch = sled::Batch::default();
        for package in one_time {
            let mut key = keyed(one_time_kind, installation.as_bytes());
            key.extend_from_slice(&counter.to_be_bytes());
            batch.insert(key, package);
            counter += 1;
        }
        batch.insert(counter_key, &counter.to_be_bytes());
        if let Some(last_resort) = last_resort {
            batch.insert(
                keyed(last_resort_kind, installation.as_bytes()),
                last_resort,
            );
        }
        self.commit(batch)
    }

    fn take_key_packages(
        &self,
        pool: KeyPackagePool,
        installations: &[InstallationId],
    ) -> Result<Vec<Option<StoredKeyPackage>>, StorageError> {
        let (one_time_kind, _, last_resort_kind) = pool_kinds(pool);
        let _guard = self.lock();
        let mut batch = sled::Batch::default();
        let mut taken_keys = std::collections::BTreeSet::new();
        let mut answers = Vec::with_capacity(installations.len());
        for installation in installations {
            // The same installation may appear twice in one request: skip
            // packages this request already took.
            let one_time = self
                .tree
                .scan_prefix(keyed(one_time_kind, installation.as_bytes()))
                .find(|entry| {
                    entry
                        .as_ref()
                        .map_or(true, |(key, _)| !taken_keys.contains(key.as_ref()))
                })
                .transpose()?;
            if let Some((key, value)) = one_time {
                batch.remove(key.clone());
                taken_keys.insert(key.to_vec());
                answers.push(Some(StoredKeyPackage {
                    bytes: value.to_vec(),
                    last_resort: false,
                }));
                continue;
            }
            answers.push(
                self.tree
                    .get(keyed(last_resort_kind, installation.as_bytes()))?
                    .map(|bytes| StoredKeyPackage {
                        bytes: bytes.to_vec(),
                        last_resort: true,
                    }),
            );
        }
        // Removed before they are handed out: after a crash a package can be
        // lost, never given twice.
        self.commit(batch)?;
        Ok(answers)
    }

    fn has_key_packages(
        &self,
        pool: KeyPackagePool,
        installations: &[InstallationId],
    ) -> Result<Vec<bool>, StorageError> {
        let (one_time_kind, _, last_resort_kind) = pool_kinds(pool);
        installations
            .iter()
            .map(|installation| {
                let key = installation.as_bytes();
                let one_time = self
                    .tree
                    .scan_prefix(keyed(one_time_kind, key))
                    .next()
                    .transpose()?;
                Ok(one_time.is_some() || self.tree.contains_key(keyed(last_resort_kind, key))?)
            })
            .collect()
    }

    fn one_time_key_packages_left(
        &self,
        pool: KeyPackagePool,
        installation: &InstallationId,
    ) -> Result<usize, StorageError> {
        Ok(self
            .tree
            .scan_prefix(keyed(pool_kinds(pool).0, installation.as_bytes()))
            .count())
    }

    fn purge_key_packages(
        &self,
        pool: KeyPackagePool,
        installation: &InstallationId,
        expired: &dyn Fn(&[u8]) -> bool,
    ) -> Result<usize, StorageError> {
        let _guard = self.lock();
        let mut batch = sled::Batch::default();
        let mut left = 0;
        let mut purged = 0;
        for entry in self
            .tree
            .scan_prefix(keyed(pool_kinds(pool).0, installation.as_bytes()))
        {
            let (key, value) = entry?;
            if expired(&value) {
                batch.remove(key);
                purged += 1;
            } else {
                left += 1;
            }
        }
        if purged > 0 {
            self.commit(batch)?;
        }
        Ok(left)
    }

    fn node_secret(&self, fresh: [u8; 32]) -> Result<[u8; 32], StorageError> {
        self.set_once(NODE_SECRET_KEY, fresh, "the node secret is not 32 bytes")
    }

    fn node_signing_seed(&self, fresh: [u8; 32]) -> Result<[u8; 32], StorageError> {
        self.set_once(
            NODE_SIGNING_SEED_KEY,
            fresh,
            "the node key seed is not 32 bytes",
        )
    }
}
