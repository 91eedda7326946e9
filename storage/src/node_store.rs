//! [`SledNodeStore`]: the delivery-service node's [`NodeStore`] over sled.
//!
//! One tree, keys by kind:
//!
//! ```text
//! 'h' | originator u32                                   -> last sequence u64 | last time u64
//! 'e' | u16 len | topic key | originator u32 | seq u64   -> time u64 | payload
//! 'i' | inbox (20) | sequence u64                         -> identity update bytes
//! 'k' | installation (32) | counter u64                   -> one-time key package
//! 'c' | installation (32)                                 -> next counter u64
//! 'l' | installation (32)                                 -> last-resort key package
//! 'K', 'C', 'L'                                           -> the same, deniable pool
//! 's'                                                     -> the node's X25519 secret
//! ```
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
        Cursor, Envelope, KeyPackagePool, NodeId, NodeStore, SequencedUpdates, StoredKeyPackage,
        Topic,
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
        Ok(Self {
            db,
            tree,
            write_lock: Mutex::new(()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // The guarded data lives in sled; a panic while holding the lock
        // cannot leave it half-written (batches are atomic).
        self.write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
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

impl NodeStore for SledNodeStore {
    type Error = StorageError;

    fn append_envelopes(
        &self,
        originator: NodeId,
        batch: Vec<(Topic, Vec<u8>)>,
        now_ms: u64,
    ) -> Result<Vec<Envelope>, StorageError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let _guard = self.lock();
        let head_key = keyed(b'h', &originator.to_be_bytes());
        let (mut sequence, last_time) = match self.tree.get(&head_key)? {
            None => (0, 0),
            Some(head) if head.len() == 16 => (be_u64(&head[..8])?, be_u64(&head[8..])?),
            Some(_) => return Err(StorageError::corrupt("originator head")),
        };
        let time = now_ms.max(last_time);
        let mut writes = sled::Batch::default();
        let mut stored = Vec::with_capacity(batch.len());
        for (topic, payload) in batch {
            sequence += 1;
            let mut value = Vec::with_capacity(8 + payload.len());
            value.extend_from_slice(&time.to_be_bytes());
            value.extend_from_slice(&payload);
            writes.insert(
                envelope_key(&topic_prefix(&topic)?, originator, sequence),
                value,
            );
            stored.push(Envelope {
                topic,
                payload,
                originator_node_id: originator,
                originator_sequence_id: sequence,
                originator_time_ms: time,
            });
        }
        let mut head = Vec::with_capacity(16);
        head.extend_from_slice(&sequence.to_be_bytes());
        head.extend_from_slice(&time.to_be_bytes());
        writes.insert(head_key, head);
        self.commit(writes)?;
        Ok(stored)
    }

    fn query_envelopes(
        &self,
        topic: &Topic,
        cursor: &Cursor,
        limit: usize,
    ) -> Result<Vec<Envelope>, StorageError> {
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
            let originator_bytes: [u8; 4] = key[prefix.len()..prefix.len() + 4]
                .try_into()
                .map_err(|_| StorageError::corrupt("envelope key"))?;
            let originator = NodeId::from_be_bytes(originator_bytes);
            let start = envelope_key(
                &prefix,
                originator,
                cursor.get(originator).saturating_add(1),
            );
            let end = envelope_key(&prefix, originator, u64::MAX);
            for entry in self.tree.range(start..=end).take(limit) {
                let (key, value) = entry?;
                if value.len() < 8 {
                    return Err(StorageError::corrupt("envelope value"));
                }
                found.push(Envelope {
                    topic: topic.clone(),
                    payload: value[8..].to_vec(),
                    originator_node_id: originator,
                    originator_sequence_id: be_u64(&key[key.len() - 8..])?,
                    originator_time_ms: be_u64(&value[..8])?,
                });
            }
            next_originator = originator.checked_add(1);
        }
        found.sort_by(Envelope::canonical_cmp);
        found.truncate(limit);
        Ok(found)
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
        let _guard = self.lock();
        let prefix = keyed(b'i', inbox.as_bytes());
        let last = match self.tree.scan_prefix(&prefix).next_back() {
            None => 0,
            Some(entry) => be_u64(&entry?.0[prefix.len()..])?,
        };
        if sequence != last + 1 {
            return Ok(false);
        }
        let mut key = prefix;
        key.extend_from_slice(&sequence.to_be_bytes());
        let mut batch = sled::Batch::default();
        batch.insert(key, update);
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

    fn node_secret(&self, fresh: [u8; 32]) -> Result<[u8; 32], StorageError> {
        let _guard = self.lock();
        if let Some(stored) = self.tree.get(NODE_SECRET_KEY)? {
            return stored
                .as_ref()
                .try_into()
                .map_err(|_| StorageError::corrupt("the node secret is not 32 bytes"));
        }
        let mut batch = sled::Batch::default();
        batch.insert(NODE_SECRET_KEY, &fresh);
        self.commit(batch)?;
        Ok(fresh)
    }
}
