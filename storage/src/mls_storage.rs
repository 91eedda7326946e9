//! [`SledMlsStorage`]: OpenMLS state in sled, with atomic steps and group
//! snapshots.
//!
//! The `StorageProvider` implementation itself is in `storage_provider.rs`;
//! this file holds the type, how it is opened, the step (transaction) API,
//! and the whole-group operations the engine's rollback needs.

use std::{
    collections::{BTreeMap, HashMap},
    marker::PhantomData,
    path::Path,
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    thread::{self, ThreadId},
};

use openmls::prelude::{GroupContext, GroupId, LeafNode};
use zeroize::Zeroizing;

use crate::{
    codec::Codec,
    error::StorageError,
    keys::{self, EntryKind},
    snapshot::{Entry, GroupSnapshot, hex_string},
};

/// The sled tree that holds OpenMLS state.
const MLS_TREE: &str = "kith-openmls";
/// The sled tree that records the storage format and codec.
const META_TREE: &str = "kith-openmls-meta";
const META_FORMAT: &[u8] = b"format";
const META_CODEC: &[u8] = b"codec";
/// The on-disk layout version this build reads and writes.
const FORMAT: u32 = 1;
/// With [`Durability::Buffered`], flush synchronously once this many bytes
/// were committed since the last flush. This bounds the work a crash can
/// lose, and it bounds how many sealed log buffers wait for sled's IO
/// threads: sled 0.34.7 deadlocks when all of its IO threads are blocked
/// behind a segment truncation that itself waits for an IO thread, which
/// sustained unflushed writes of large values can bring about. One segment
/// (512 KiB by default) keeps the backlog to a couple of buffers.
const BUFFERED_FLUSH_BYTES: usize = 512 * 1024;

/// When committed writes reach the disk.
///
/// sled applies each batch atomically: after a crash the database holds the
/// state before a step or the state after it, never a mix. *Durability* is
/// separate: how much committed work a crash can lose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// fsync after every committed step (and every write made outside a
    /// step). A step that returned `Ok` survives a crash. This is the default:
    /// MLS state that advanced a ratchet must not be forgotten once a
    /// ciphertext made from it has left the process.
    Sync,
    /// Leave flushing to sled's background flusher, every `flush_every_ms`,
    /// and flush synchronously whenever 512 KiB were committed since the
    /// last flush. A crash can lose up to that much committed work (still
    /// atomically, a whole step at a time). Callers that let output leave the
    /// process must call [`SledMlsStorage::flush`] first.
    Buffered {
        /// The background flush interval in milliseconds.
        flush_every_ms: u64,
    },
}

/// How a [`SledMlsStorage`] is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StorageConfig {
    /// The value codec. Must match the one the database was created with.
    pub codec: Codec,
    /// When committed writes are flushed to disk.
    pub durability: Durability,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            codec: Codec::default(),
            durability: Durability::Sync,
        }
    }
}

/// A write buffered by an open step: `Some(value)` to insert, `None` to
/// delete.
pub(crate) type Overlay = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// A step open on one thread: its number and its buffered writes.
struct OpenStep {
    serial: u64,
    overlay: Overlay,
}

/// Stored key and value pairs, as a scan returns them.
type RawEntries = Vec<(Vec<u8>, Vec<u8>)>;

/// OpenMLS storage over sled 0.34.
///
/// # Steps
///
/// OpenMLS performs one logical operation (merging a commit, say) as many
/// separate `StorageProvider` writes. If the process dies half-way, a naive
/// store is left with a mix of two epochs. A **step** groups writes:
///
/// ```no_run
/// # fn demo(storage: &kith_storage::SledMlsStorage) -> Result<(), kith_storage::StorageError> {
/// let step = storage.begin_step()?;
/// // ... OpenMLS operations through a provider backed by `storage` ...
/// step.commit()?; // one atomic sled batch, then fsync (Durability::Sync)
/// # Ok(()) }
/// ```
///
/// or, with a closure that commits on `Ok` and discards on `Err`:
///
/// ```no_run
/// # fn demo(storage: &kith_storage::SledMlsStorage) -> Result<(), kith_storage::StorageError> {
/// storage.step(|| {
///     // ... OpenMLS operations ...
///     Ok::<_, kith_storage::StorageError>(())
/// })?;
/// # Ok(()) }
/// ```
///
/// While a step is open, writes made **on the same thread** are buffered in
/// memory and reads on that thread see them. Dropping the [`Step`] without
/// committing discards them, leaving the stored state untouched. Other
/// threads neither see nor disturb the buffered writes, so several groups
/// can run steps concurrently on different threads. A [`Step`] is not `Send`:
/// it cannot be held across an `.await` in a multi-threaded runtime, where
/// the task could resume on another thread.
///
/// Writes made outside a step are applied immediately, each one atomically.
///
/// # Key layout
///
/// Group-scoped entries are keyed by group id first, so that one prefix scan
/// finds a whole group; see the `keys` module and [`EntryKind`].
///
/// # Leaks OpenMLS leaves behind
///
/// - `clear_proposal_queue` removes every queued proposal by prefix scan, not
///   only those on the reference list.
/// - `delete_own_leaf_nodes` (called by OpenMLS when a commit is merged and
///   when a group is deleted) also deletes the HPKE key pairs of those leaf
///   nodes, which OpenMLS 0.9 would otherwise keep forever once an own
///   update proposal was committed.
pub struct SledMlsStorage {
    db: sled::Db,
    tree: sled::Tree,
    config: StorageConfig,
    steps: Mutex<HashMap<ThreadId, OpenStep>>,
    /// Numbers the steps, so that a savepoint cannot outlive its own.
    next_step: AtomicU64,
    /// Bytes committed since the last flush (buffered durability only).
    unflushed: AtomicUsize,
}

impl std::fmt::Debug for SledMlsStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledMlsStorage")
            .field("config", &self.config)
            .field("entries", &self.tree.len())
            .finish_non_exhaustive()
    }
}

impl SledMlsStorage {
    /// Open (or create) the storage at `path` with the default
    /// [`StorageConfig`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        Self::open_with(path, StorageConfig::default())
    }

    /// Open (or create) the storage at `path` with `config`.
    pub fn open_with(path: impl AsRef<Path>, config: StorageConfig) -> Result<Self, StorageError> {
        let flush_every_ms = match config.durability {
            Durability::Sync => Some(500),
            Durability::Buffered { flush_every_ms } => Some(flush_every_ms.max(1)),
        };
        let db = crate::sled_open::open_db(
            &sled::Config::new()
                .path(path.as_ref())
                .flush_every_ms(flush_every_ms),
        )?;
        Self::from_db(db, config)
    }

    /// Use an already open sled database, for applications that keep their
    /// own trees in the same database. OpenMLS state goes into its own tree.
    pub fn from_db(db: sled::Db, config: StorageConfig) -> Result<Self, StorageError> {
        let meta = db.open_tree(META_TREE)?;
        check_or_record_format(&meta, config.codec)?;
        let tree = db.open_tree(MLS_TREE)?;
        Ok(Self {
            db,
            tree,
            config,
            steps: Mutex::new(HashMap::new()),
            next_step: AtomicU64::new(0),
            unflushed: AtomicUsize::new(0),
        })
    }

    /// The configuration this storage was opened with.
    pub fn config(&self) -> StorageConfig {
        self.config
    }

    /// The underlying sled database.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Flush all committed writes to disk. Needed before output leaves the
    /// process when the durability is [`Durability::Buffered`].
    pub fn flush(&self) -> Result<(), StorageError> {
        self.unflushed.store(0, Ordering::Relaxed);
        self.db.flush()?;
        Ok(())
    }

    // ----- steps -------------------------------------------------------

    /// Open a step on the current thread. See the type docs.
    pub fn begin_step(&self) -> Result<Step<'_>, StorageError> {
        let id = thread::current().id();
        let mut steps = self.lock_steps();
        if steps.contains_key(&id) {
            return Err(StorageError::StepAlreadyOpen);
        }
        let serial = self.next_step.fetch_add(1, Ordering::Relaxed);
        steps.insert(
            id,
            OpenStep {
                serial,
                overlay: Overlay::new(),
            },
        );
        Ok(Step {
            storage: self,
            thread: id,
            finished: false,
            _not_send: PhantomData,
        })
    }

    /// Run `f` inside a step: commit its writes if it returns `Ok`, discard
    /// them if it returns `Err` (or panics).
    pub fn step<T, E>(&self, f: impl FnOnce() -> Result<T, E>) -> Result<T, E>
    where
        E: From<StorageError>,
    {
        let step = self.begin_step()?;
        let value = f()?;
        step.commit()?;
        Ok(value)
    }

    fn lock_steps(&self) -> MutexGuard<'_, HashMap<ThreadId, OpenStep>> {
        // The lock only guards map operations that cannot panic half-way, so
        // a poisoned lock still holds consistent data.
        self.steps.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn commit_overlay(&self, thread: ThreadId) -> Result<(), StorageError> {
        let overlay = self
            .lock_steps()
            .remove(&thread)
            .ok_or(StorageError::NoStepOpen)?
            .overlay;
        self.apply_to_sled(overlay)
    }

    fn apply_to_sled(&self, ops: Overlay) -> Result<(), StorageError> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        let mut bytes = 0;
        for (key, value) in ops {
            bytes += key.len() + value.as_ref().map_or(0, Vec::len);
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        self.tree.apply_batch(batch)?;
        let flush_now = match self.config.durability {
            Durability::Sync => true,
            Durability::Buffered { .. } => {
                self.unflushed.fetch_add(bytes, Ordering::Relaxed) + bytes >= BUFFERED_FLUSH_BYTES
            }
        };
        if flush_now {
            self.flush()?;
        }
        Ok(())
    }

    // ----- primitive reads and writes ---------------------------------

    /// Read one key, seeing this thread's open step.
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        if let Some(step) = self.lock_steps().get(&thread::current().id())
            && let Some(buffered) = step.overlay.get(key)
        {
            return Ok(buffered.clone());
        }
        Ok(self.tree.get(key)?.map(|v| v.to_vec()))
    }

    /// All entries under `prefix`, in key order, seeing this thread's open
    /// step.
    pub(crate) fn scan(&self, prefix: &[u8]) -> Result<RawEntries, StorageError> {
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for entry in self.tree.scan_prefix(prefix) {
            let (key, value) = entry?;
            merged.insert(key.to_vec(), value.to_vec());
        }
        if let Some(step) = self.lock_steps().get(&thread::current().id()) {
            for (key, value) in step.overlay.range(prefix.to_vec()..) {
                if !key.starts_with(prefix) {
                    break;
                }
                match value {
                    Some(value) => merged.insert(key.clone(), value.clone()),
                    None => merged.remove(key),
                };
            }
        }
        Ok(merged.into_iter().collect())
    }

    /// Up to `limit` entries with keys in `start..end`, in key order (or
    /// the reverse), seeing this thread's open step.
    pub(crate) fn range(
        &self,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<RawEntries, StorageError> {
        if start >= end || limit == 0 {
            return Ok(Vec::new());
        }
        let overlay: Overlay = match self.lock_steps().get(&thread::current().id()) {
            Some(step) => step
                .overlay
                .range(start.to_vec()..end.to_vec())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            None => Overlay::new(),
        };
        // The step can hide at most as many stored entries as it deletes,
        // so this many from sled are always enough to fill the page.
        let wanted = limit.saturating_add(overlay.len());
        let mut merged = overlay;
        let stored = self.tree.range(start..end);
        let stored: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> = if reverse {
            Box::new(stored.rev())
        } else {
            Box::new(stored)
        };
        for entry in stored.take(wanted) {
            let (key, value) = entry?;
            merged
                .entry(key.to_vec())
                .or_insert_with(|| Some(value.to_vec()));
        }
        let live = merged.into_iter().filter_map(|(k, v)| v.map(|v| (k, v)));
        Ok(if reverse {
            live.rev().take(limit).collect()
        } else {
            live.take(limit).collect()
        })
    }

    /// Apply `ops` atomically: into this thread's open step if there is one,
    /// straight to sled otherwise.
    pub(crate) fn write(&self, ops: Overlay) -> Result<(), StorageError> {
        {
            let mut steps = self.lock_steps();
            if let Some(step) = steps.get_mut(&thread::current().id()) {
                step.overlay.extend(ops);
                return Ok(());
            }
        }
        self.apply_to_sled(ops)
    }

    pub(crate) fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), StorageError> {
        self.write(Overlay::from([(key, Some(value))]))
    }

    pub(crate) fn remove(&self, key: Vec<u8>) -> Result<(), StorageError> {
        self.write(Overlay::from([(key, None)]))
    }

    pub(crate) fn encode<T: serde::Serialize + ?Sized>(
        &self,
        value: &T,
    ) -> Result<Vec<u8>, StorageError> {
        self.config.codec.encode(value)
    }

    pub(crate) fn decode<T: serde::de::DeserializeOwned>(
        &self,
        bytes: &[u8],
    ) -> Result<T, StorageError> {
        self.config.codec.decode(bytes)
    }

    /// The keys of the global HPKE key pairs of a group's own pending update
    /// leaf nodes, which the group state refers to but which OpenMLS keeps
    /// outside the group's key space.
    pub(crate) fn own_leaf_key_pair_keys(
        &self,
        group_id: &GroupId,
    ) -> Result<Vec<Vec<u8>>, StorageError> {
        let key = keys::group_key(group_id, EntryKind::OwnLeafNodes, &[])?;
        self.own_leaf_key_pair_keys_at(&key)
    }

    pub(crate) fn own_leaf_key_pair_keys_at(
        &self,
        own_leaf_nodes_key: &[u8],
    ) -> Result<Vec<Vec<u8>>, StorageError> {
        let Some(list) = self.get(own_leaf_nodes_key)? else {
            return Ok(Vec::new());
        };
        keys::decode_list(&list)?
            .iter()
            .map(|item| {
                let leaf: LeafNode = self.decode(item)?;
                keys::global_key(EntryKind::EncryptionKeyPair, leaf.encryption_key())
            })
            .collect()
    }

    // ----- whole groups ---------------------------------------------------

    /// Capture everything stored for `group_id`: all group-scoped entries
    /// (what `MlsGroup::load` reads, the epoch key pairs, queued proposals
    /// and a pending commit) and the HPKE key pairs of own pending update
    /// leaf nodes. Sees this thread's open step.
    pub fn snapshot_group(&self, group_id: &GroupId) -> Result<GroupSnapshot, StorageError> {
        let prefix = keys::group_prefix(group_id)?;
        let mut epoch = None;
        let mut group_entries = Vec::new();
        for (key, value) in self.scan(&prefix)? {
            let suffix = key[prefix.len()..].to_vec();
            if keys::group_entry_kind(&suffix)? == EntryKind::GroupContext {
                let context: GroupContext = self.decode(&value)?;
                epoch = Some(context.epoch().as_u64());
            }
            group_entries.push((suffix, Zeroizing::new(value)));
        }
        let epoch =
            epoch.ok_or_else(|| StorageError::GroupNotFound(hex_string(group_id.as_slice())))?;
        let mut key_pairs = Vec::new();
        for key in self.own_leaf_key_pair_keys(group_id)? {
            if let Some(value) = self.get(&key)? {
                key_pairs.push((key, Zeroizing::new(value)));
            }
        }
        Ok(GroupSnapshot {
            codec: self.config.codec,
            group_id: group_id.as_slice().to_vec(),
            epoch,
            group_entries,
            key_pairs,
        })
    }

    /// Replace the stored state of the snapshot's group with the snapshot,
    /// atomically. Entries the current state has and the snapshot lacks (those
    /// of later epochs, newer proposals, key pairs of newer own updates) are
    /// deleted. Other groups are not touched. Inside a step, the restore
    /// becomes part of that step.
    ///
    /// A `MlsGroup` loaded before the restore is stale afterwards: load it
    /// again with `MlsGroup::load`.
    pub fn restore_group(&self, snapshot: &GroupSnapshot) -> Result<(), StorageError> {
        if snapshot.codec != self.config.codec {
            return Err(StorageError::SnapshotCodecMismatch {
                snapshot: snapshot.codec,
                storage: self.config.codec,
            });
        }
        let group_id = GroupId::from_slice(&snapshot.group_id);
        let prefix = keys::group_prefix(&group_id)?;
        let mut ops = self.deletion_ops(&group_id, &prefix)?;
        for (suffix, value) in &snapshot.group_entries {
            keys::group_entry_kind(suffix)?;
            let mut key = prefix.clone();
            key.extend_from_slice(suffix);
            ops.insert(key, Some(value.to_vec()));
        }
        for (key, value) in &snapshot.key_pairs {
            if key.first() != Some(&EntryKind::EncryptionKeyPair.tag()) {
                return Err(StorageError::MalformedSnapshot(
                    "a snapshot key pair is not an encryption key pair".into(),
                ));
            }
            ops.insert(key.clone(), Some(value.to_vec()));
        }
        tracing::debug!(
            group = %hex_string(group_id.as_slice()),
            epoch = snapshot.epoch,
            entries = snapshot.entry_count(),
            "restoring group snapshot"
        );
        self.write(ops)
    }

    /// Mark the stored state of `group_id` in this thread's open step, so
    /// that [`rollback_group_to`](Self::rollback_group_to) can put it back.
    /// `None` when no step is open: outside a step writes go straight to
    /// sled, and only [`snapshot_group`](Self::snapshot_group) can keep a
    /// copy.
    ///
    /// Unlike a snapshot, a savepoint copies only what the step has written
    /// to the group so far (usually little or nothing), not the group's
    /// whole state. It covers what a snapshot does: the group's entries and
    /// the HPKE key pairs of its own pending update leaf nodes.
    pub fn savepoint_group(
        &self,
        group_id: &GroupId,
    ) -> Result<Option<GroupSavepoint>, StorageError> {
        let prefix = keys::group_prefix(group_id)?;
        let key_pairs = self.own_leaf_key_pair_keys(group_id)?;
        let steps = self.lock_steps();
        let Some(step) = steps.get(&thread::current().id()) else {
            return Ok(None);
        };
        let buffered = step
            .overlay
            .iter()
            .filter(|(key, _)| key.starts_with(&prefix) || key_pairs.contains(key))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        Ok(Some(GroupSavepoint {
            step: step.serial,
            group_id: group_id.clone(),
            prefix,
            key_pairs,
            buffered,
        }))
    }

    /// Put the stored state of the savepoint's group back to what it was at
    /// the savepoint: its entries, and the key pairs of its own leaf nodes
    /// then and now (a restore or a merge replaces those). Everything else
    /// the step wrote since stays. Fails with
    /// [`StorageError::StaleSavepoint`], changing nothing, unless the step
    /// the savepoint was taken in is still open on this thread.
    pub fn rollback_group_to(&self, mut savepoint: GroupSavepoint) -> Result<(), StorageError> {
        let key_pairs_now = self.own_leaf_key_pair_keys(&savepoint.group_id)?;
        let mut steps = self.lock_steps();
        let step = steps
            .get_mut(&thread::current().id())
            // Step numbers are never reused, across threads too.
            .filter(|step| step.serial == savepoint.step)
            .ok_or(StorageError::StaleSavepoint)?;
        step.overlay.retain(|key, _| {
            !(key.starts_with(&savepoint.prefix)
                || savepoint.key_pairs.contains(key)
                || key_pairs_now.contains(key))
        });
        // Moved, not copied: one copy of the secrets fewer to wipe.
        step.overlay.extend(std::mem::take(&mut savepoint.buffered));
        Ok(())
    }

    /// Delete everything stored for `group_id`, including the HPKE key pairs
    /// of its own pending update leaf nodes, atomically. Deleting a group
    /// that is not stored is not an error.
    pub fn delete_group(&self, group_id: &GroupId) -> Result<(), StorageError> {
        let prefix = keys::group_prefix(group_id)?;
        let ops = self.deletion_ops(group_id, &prefix)?;
        self.write(ops)
    }

    fn deletion_ops(&self, group_id: &GroupId, prefix: &[u8]) -> Result<Overlay, StorageError> {
        let mut ops = Overlay::new();
        for key in self.own_leaf_key_pair_keys(group_id)? {
            ops.insert(key, None);
        }
        for (key, _) in self.scan(prefix)? {
            ops.insert(key, None);
        }
        Ok(ops)
    }

    // ----- inspection -----------------------------------------------------

    /// The kind of every entry stored for `group_id`, in key order (one per
    /// entry). Sees this thread's open step.
    pub fn group_entries(&self, group_id: &GroupId) -> Result<Vec<EntryKind>, StorageError> {
        let prefix = keys::group_prefix(group_id)?;
        self.scan(&prefix)?
            .iter()
            .map(|(key, _)| keys::group_entry_kind(&key[prefix.len()..]))
            .collect()
    }

    /// The epochs for which HPKE epoch key pairs of `group_id` are stored.
    pub fn epoch_key_pair_epochs(&self, group_id: &GroupId) -> Result<Vec<u64>, StorageError> {
        let prefix = keys::group_kind_prefix(group_id, EntryKind::EpochKeyPairs)?;
        self.scan(&prefix)?
            .iter()
            .map(|(key, _)| {
                let (epoch, _leaf): (u64, u32) = serde_json::from_slice(&key[prefix.len()..])
                    .map_err(|e| StorageError::corrupt(format!("epoch key pair key: {e}")))?;
                Ok(epoch)
            })
            .collect()
    }

    /// How many global entries of `kind` are stored (for group-scoped kinds:
    /// across all groups). Sees this thread's open step.
    pub fn count_entries(&self, kind: EntryKind) -> Result<usize, StorageError> {
        if !kind.is_group_scoped() {
            return Ok(self.scan(&[kind.tag()])?.len());
        }
        let mut count = 0;
        for (key, _) in self.scan(b"g")? {
            let Some(len) = key.get(1..5) else {
                return Err(StorageError::corrupt("group key without a length"));
            };
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            if key.get(5 + len) == Some(&kind.tag()) {
                count += 1;
            }
        }
        Ok(count)
    }

    /// Every group-scoped entry of `group_id` as raw key suffix and value,
    /// for tests that compare stored state byte for byte.
    #[doc(hidden)]
    pub fn raw_group_entries(&self, group_id: &GroupId) -> Result<Vec<Entry>, StorageError> {
        let prefix = keys::group_prefix(group_id)?;
        Ok(self
            .scan(&prefix)?
            .into_iter()
            .map(|(key, value)| (key[prefix.len()..].to_vec(), Zeroizing::new(value)))
            .collect())
    }
}

fn check_or_record_format(meta: &sled::Tree, codec: Codec) -> Result<(), StorageError> {
    match meta.get(META_FORMAT)? {
        None => {
            let mut batch = sled::Batch::default();
            batch.insert(META_FORMAT, &FORMAT.to_be_bytes());
            batch.insert(META_CODEC, &[codec.id()]);
            meta.apply_batch(batch)?;
            meta.flush()?;
            Ok(())
        }
        Some(found) => {
            let found: [u8; 4] = found
                .as_ref()
                .try_into()
                .map_err(|_| StorageError::corrupt("format marker has the wrong length"))?;
            let found = u32::from_be_bytes(found);
            if found != FORMAT {
                return Err(StorageError::UnsupportedFormat {
                    found,
                    supported: FORMAT,
                });
            }
            let stored = meta
                .get(META_CODEC)?
                .and_then(|id| id.first().copied())
                .and_then(Codec::from_id)
                .ok_or_else(|| StorageError::corrupt("missing or unknown codec marker"))?;
            if stored != codec {
                return Err(StorageError::CodecMismatch {
                    found: stored,
                    requested: codec,
                });
            }
            Ok(())
        }
    }
}

/// A mark of one group's stored state inside an open step; see
/// [`SledMlsStorage::savepoint_group`]. It holds copies of buffered
/// writes, which may be secrets, and wipes them when dropped.
pub struct GroupSavepoint {
    step: u64,
    group_id: GroupId,
    prefix: Vec<u8>,
    /// The keys of the own leaf nodes' key pairs at the savepoint.
    key_pairs: Vec<Vec<u8>>,
    /// The step's writes to all of the above at the savepoint.
    buffered: Overlay,
}

impl std::fmt::Debug for GroupSavepoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupSavepoint")
            .field("step", &self.step)
            .field("buffered", &self.buffered.len())
            .finish_non_exhaustive()
    }
}

impl Drop for GroupSavepoint {
    fn drop(&mut self) {
        for value in self.buffered.values_mut().flatten() {
            zeroize::Zeroize::zeroize(value);
        }
    }
}

/// An open step: writes on this thread are buffered until [`Step::commit`].
/// Dropping it without committing discards them. See [`SledMlsStorage`].
#[must_use = "a step that is dropped discards its writes; call `commit`"]
pub struct Step<'a> {
    storage: &'a SledMlsStorage,
    thread: ThreadId,
    finished: bool,
    /// Steps are bound to the thread that opened them.
    _not_send: PhantomData<*const ()>,
}

impl std::fmt::Debug for Step<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Step")
            .field("thread", &self.thread)
            .finish_non_exhaustive()
    }
}

impl Step<'_> {
    /// Apply the step's writes as one atomic sled batch (and fsync, with
    /// [`Durability::Sync`]). If the batch fails, nothing was applied; if
    /// only the fsync fails, the batch was applied but may not survive a
    /// crash.
    pub fn commit(mut self) -> Result<(), StorageError> {
        self.finished = true;
        self.storage.commit_overlay(self.thread)
    }

    /// Discard the step's writes. Same as dropping it, but explicit.
    pub fn discard(self) {}
}

impl Drop for Step<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.storage.lock_steps().remove(&self.thread);
        }
    }
}
