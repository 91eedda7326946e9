//! The client's own store: conversations, messages, intents, the outbox,
//! cursors and the identity cache.
//!
//! The engine declares a small key-value port, [`KvStore`], and owns the key
//! layout and the record encoding (MessagePack through serde) in
//! [`ClientStore`]. `kith-storage` implements the port in the same sled tree
//! as the OpenMLS state, so that one engine step (the MLS state, the stored
//! message, the cursor and the intent) commits in one sled batch.
//! [`MemoryKvStore`] is the in-memory port for tests.
//!
//! ```text
//!  'v' conv id                      -> ConversationRecord
//!  'm' conv id | time | message id  -> StoredMessage      (by conversation and time)
//!  'x' conv id | message id         -> time               (de-duplication index)
//!  'i' group id | intent id         -> Intent
//!  'o' group id | outbox id         -> Outbound
//!  'g' group id                     -> GroupRecord
//!  'c' topic key                    -> Cursor
//!  'd' inbox                        -> identity updates
//!  's' group id | epoch             -> EpochSnapshot       (the rollback ring)
//!  'S' group id | epoch             -> snapshot state bytes (secret)
//!  'r' group id | arrival           -> RetainedEnvelope    (replayed after a rollback)
//!  'p' group id | commit hash       -> OwnCommit           (own commits of unsettled epochs)
//!  'u' group id | message id        -> OwnSend             (own messages of unsettled epochs)
//!  'k' group id | epoch             -> (order key of the commit that left it, its digest)
//!  'f' group id | epoch             -> branch claim key    (secret; MACs claims of that epoch)
//!  'a' group id | installation      -> LeafAdded           (when its leaf was last added)
//!  'w' group id | payload hash      -> DeferredWelcome     (a re-add Welcome not needed yet)
//!  'e' leaf key                      -> ephemeral key seed  (secret; deniable DMs' leaf keys)
//!  'b' group id | epoch             -> binding exporter secret (secret; deniable DMs)
//!  'R' group id                     -> RetiredGroup        (a group left for good; no secret)
//! ```
//! Variable-length ids are length-prefixed so that one id is never a prefix
//! of another's keys.

use std::{collections::BTreeMap, sync::Mutex};

use serde::{Serialize, de::DeserializeOwned};

use super::{
    error::GroupError,
    intent::Intent,
    records::{
        ConversationId, ConversationRecord, DeferredWelcome, EpochSnapshot, GroupRecord, LeafAdded,
        OrderKey, Outbound, OwnCommit, OwnSend, RetainedEnvelope, RetiredGroup, StoredMessage,
    },
};
use crate::{
    delivery::{Cursor, Topic},
    identity::{EphemeralKey, IdentityUpdate, InboxId, InstallationId},
};

/// Key and value pairs, as a scan returns them.
pub type KvEntries = Vec<(Vec<u8>, Vec<u8>)>;

/// A byte-oriented store with atomic steps, implemented by `kith-storage`.
///
/// Writes made while the implementation has a step open on this thread are
/// applied together or not at all; reads see them.
pub trait KvStore {
    /// The store's error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The value under `key`.
    fn kv_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Self::Error>;
    /// Store `value` under `key`.
    fn kv_put(&self, key: &[u8], value: &[u8]) -> Result<(), Self::Error>;
    /// Remove `key`.
    fn kv_delete(&self, key: &[u8]) -> Result<(), Self::Error>;
    /// All entries whose key starts with `prefix`, in key order.
    fn kv_scan(&self, prefix: &[u8]) -> Result<KvEntries, Self::Error>;

    /// Up to `limit` entries with keys in `start..end`, in key order, or
    /// in reverse key order when `reverse`: a page of a long list without
    /// reading all of it.
    ///
    /// The default scans the keys the two bounds share and filters; a
    /// store with ordered range reads should override it.
    fn kv_range(
        &self,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<KvEntries, Self::Error> {
        let shared = start.iter().zip(end).take_while(|(a, b)| a == b).count();
        let within = self
            .kv_scan(&start[..shared])?
            .into_iter()
            .filter(|(k, _)| k.as_slice() >= start && k.as_slice() < end);
        Ok(if reverse {
            within.rev().take(limit).collect()
        } else {
            within.take(limit).collect()
        })
    }
}

/// Whole-group snapshots of the MLS state, which rolling back needs and
/// the OpenMLS storage trait cannot express. `kith-storage` implements it
/// on the same store as [`KvStore`], so that a snapshot, a restore and the
/// records around them commit in one step.
pub trait GroupSnapshots: KvStore {
    /// Everything stored for the group (including a pending commit and the
    /// epoch's key pairs), encoded. The bytes hold secrets.
    fn snapshot_group(&self, group_id: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, Self::Error>;
    /// Replace everything stored for the group with `snapshot`.
    fn restore_group(&self, group_id: &[u8], snapshot: &[u8]) -> Result<(), Self::Error>;
    /// Delete everything stored for the group (to join it afresh).
    fn delete_group(&self, group_id: &[u8]) -> Result<(), Self::Error>;

    /// A mark of the group's stored state, see [`Self::savepoint_group`].
    type Savepoint;
    /// Mark the group's stored state, when the store can put it back
    /// without copying all of it (inside an open step, say). `None` when it
    /// cannot: the engine then takes a [snapshot](Self::snapshot_group).
    ///
    /// A rollback tries an earlier commit on a restored epoch and must
    /// return to the current state if that commit does not merge; a
    /// savepoint spares it a copy of the current state every time.
    fn savepoint_group(&self, group_id: &[u8]) -> Result<Option<Self::Savepoint>, Self::Error>;
    /// Put the group's stored state back to `savepoint`. What else was
    /// written since (records outside the MLS state) stays.
    fn rollback_group_to(&self, savepoint: Self::Savepoint) -> Result<(), Self::Error>;
}

/// A [`KvStore`] in memory, without steps (each write applies at once).
#[derive(Debug, Default)]
pub struct MemoryKvStore {
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryKvStore {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl KvStore for MemoryKvStore {
    type Error = std::convert::Infallible;

    fn kv_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Self::Error> {
        Ok(self.map().get(key).cloned())
    }

    fn kv_put(&self, key: &[u8], value: &[u8]) -> Result<(), Self::Error> {
        self.map().insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn kv_delete(&self, key: &[u8]) -> Result<(), Self::Error> {
        self.map().remove(key);
        Ok(())
    }

    fn kv_scan(&self, prefix: &[u8]) -> Result<KvEntries, Self::Error> {
        Ok(self
            .map()
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn kv_range(
        &self,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<KvEntries, Self::Error> {
        if start >= end {
            return Ok(Vec::new());
        }
        let map = self.map();
        let within = map
            .range(start.to_vec()..end.to_vec())
            .map(|(k, v)| (k.clone(), v.clone()));
        Ok(if reverse {
            within.rev().take(limit).collect()
        } else {
            within.take(limit).collect()
        })
    }
}

fn with_len(tag: u8, id: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(5 + id.len());
    key.push(tag);
    key.extend_from_slice(&(id.len() as u32).to_be_bytes());
    key.extend_from_slice(id);
    key
}

/// The smallest key after every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff: nothing sorts after the prefix but its own
    // extensions, which a run of 0xff past any key length bounds.
    vec![u8::MAX; prefix.len() + 64]
}

/// Which part of a conversation's order a page of messages comes from
/// ([`ClientStore::messages_in`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageRange {
    /// Only messages at or after this time (ms since the Unix epoch).
    pub since_ms: Option<u64>,
    /// Only messages before this time.
    pub until_ms: Option<u64>,
    /// Only messages past this one (its time and id) in the page's
    /// direction: where the previous page ended.
    pub after: Option<(u64, [u8; 32])>,
    /// Newest first.
    pub descending: bool,
}

/// Typed access to the client's records over a [`KvStore`].
#[derive(Debug)]
pub struct ClientStore<'a, S: ?Sized>(pub &'a S);

impl<S: KvStore + ?Sized> ClientStore<'_, S> {
    fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, GroupError> {
        match self.0.kv_get(key).map_err(GroupError::store)? {
            None => Ok(None),
            Some(bytes) => rmp_serde::from_slice(&bytes)
                .map(Some)
                .map_err(|e| GroupError::Corrupt(format!("record {}: {e}", hex::encode(key)))),
        }
    }

    fn put<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), GroupError> {
        let bytes = rmp_serde::to_vec(value)
            .map_err(|e| GroupError::Corrupt(format!("encoding a record: {e}")))?;
        self.0.kv_put(key, &bytes).map_err(GroupError::store)
    }

    fn scan<T: DeserializeOwned>(&self, prefix: &[u8]) -> Result<Vec<T>, GroupError> {
        self.0
            .kv_scan(prefix)
            .map_err(GroupError::store)?
            .into_iter()
            .map(|(k, v)| {
                rmp_serde::from_slice(&v)
                    .map_err(|e| GroupError::Corrupt(format!("record {}: {e}", hex::encode(k))))
            })
            .collect()
    }

    /// Store a conversation, replacing its previous record.
    pub fn put_conversation(&self, record: &ConversationRecord) -> Result<(), GroupError> {
        self.put(&with_len(b'v', &record.id.0), record)
    }

    /// One conversation.
    pub fn conversation(
        &self,
        id: &ConversationId,
    ) -> Result<Option<ConversationRecord>, GroupError> {
        self.get(&with_len(b'v', &id.0))
    }

    /// All conversations, by id.
    pub fn conversations(&self) -> Result<Vec<ConversationRecord>, GroupError> {
        self.scan(b"v")
    }

    fn message_key(message: &StoredMessage) -> Vec<u8> {
        let mut key = with_len(b'm', &message.conversation_id.0);
        key.extend_from_slice(&message.time_ms.to_be_bytes());
        key.extend_from_slice(&message.message_id);
        key
    }

    fn index_key(conversation: &ConversationId, message_id: &[u8; 32]) -> Vec<u8> {
        let mut key = with_len(b'x', &conversation.0);
        key.extend_from_slice(message_id);
        key
    }

    /// Store `message` unless its conversation already holds one with its
    /// id. Returns whether it was stored.
    pub fn insert_message(&self, message: &StoredMessage) -> Result<bool, GroupError> {
        let index = Self::index_key(&message.conversation_id, &message.message_id);
        if self.0.kv_get(&index).map_err(GroupError::store)?.is_some() {
            return Ok(false);
        }
        self.put(&Self::message_key(message), message)?;
        self.put(&index, &message.time_ms)?;
        Ok(true)
    }

    /// A stored message by id.
    pub fn message(
        &self,
        conversation: &ConversationId,
        message_id: &[u8; 32],
    ) -> Result<Option<StoredMessage>, GroupError> {
        let Some(time_ms) = self.get::<u64>(&Self::index_key(conversation, message_id))? else {
            return Ok(None);
        };
        let mut key = with_len(b'm', &conversation.0);
        key.extend_from_slice(&time_ms.to_be_bytes());
        key.extend_from_slice(message_id);
        self.get(&key)
    }

    /// Move a stored message to `time_ms` in its conversation's order (an
    /// own message that waited in the outbox takes the time it was sent).
    pub fn restamp_message(
        &self,
        conversation: &ConversationId,
        message_id: &[u8; 32],
        time_ms: u64,
    ) -> Result<(), GroupError> {
        let Some(mut message) = self.message(conversation, message_id)? else {
            return Ok(());
        };
        if message.time_ms == time_ms {
            return Ok(());
        }
        self.0
            .kv_delete(&Self::message_key(&message))
            .map_err(GroupError::store)?;
        message.time_ms = time_ms;
        self.put(&Self::message_key(&message), &message)?;
        self.put(&Self::index_key(conversation, message_id), &time_ms)
    }

    /// Replace a stored message in place (same conversation, time and id).
    pub fn update_message(&self, message: &StoredMessage) -> Result<(), GroupError> {
        self.put(&Self::message_key(message), message)
    }

    /// A conversation's messages, oldest first.
    pub fn messages(
        &self,
        conversation: &ConversationId,
    ) -> Result<Vec<StoredMessage>, GroupError> {
        self.scan(&with_len(b'm', &conversation.0))
    }

    /// A page of a conversation's messages in `range`: up to `limit` that
    /// `keep` accepts, oldest first (newest first if `range.descending`).
    ///
    /// It reads the store in chunks, so a page of a long conversation
    /// costs about what it returns, plus what `keep` passes over.
    pub fn messages_in(
        &self,
        conversation: &ConversationId,
        range: &MessageRange,
        limit: usize,
        keep: &mut dyn FnMut(&StoredMessage) -> bool,
    ) -> Result<Vec<StoredMessage>, GroupError> {
        let prefix = with_len(b'm', &conversation.0);
        let at = |time_ms: u64| {
            let mut key = prefix.clone();
            key.extend_from_slice(&time_ms.to_be_bytes());
            key
        };
        let mut start = at(range.since_ms.unwrap_or(0));
        let mut end = match range.until_ms {
            Some(until) => at(until),
            None => prefix_end(&prefix),
        };
        if let Some((time_ms, id)) = range.after {
            let mut key = at(time_ms);
            key.extend_from_slice(&id);
            if range.descending {
                end = end.min(key);
            } else {
                // The key just past the cursor's own.
                key.push(0);
                start = start.max(key);
            }
        }
        let chunk = limit.clamp(16, 256);
        let mut page = Vec::new();
        while page.len() < limit && start < end {
            let entries = self
                .0
                .kv_range(&start, &end, range.descending, chunk)
                .map_err(GroupError::store)?;
            let full = entries.len() == chunk;
            for (key, value) in entries {
                if range.descending {
                    end.clone_from(&key);
                } else {
                    start.clone_from(&key);
                    start.push(0);
                }
                let message: StoredMessage = rmp_serde::from_slice(&value).map_err(|e| {
                    GroupError::Corrupt(format!("record {}: {e}", hex::encode(&key)))
                })?;
                if keep(&message) {
                    page.push(message);
                    if page.len() == limit {
                        break;
                    }
                }
            }
            if !full {
                break;
            }
        }
        Ok(page)
    }

    /// A topic's cursor (empty if none was stored).
    pub fn cursor(&self, topic: &Topic) -> Result<Cursor, GroupError> {
        Ok(self
            .get(&with_len(b'c', &topic.to_key()))?
            .unwrap_or_default())
    }

    /// Store a topic's cursor.
    pub fn put_cursor(&self, topic: &Topic, cursor: &Cursor) -> Result<(), GroupError> {
        self.put(&with_len(b'c', &topic.to_key()), cursor)
    }

    /// A group's bookkeeping.
    pub fn group_record(&self, group_id: &[u8]) -> Result<GroupRecord, GroupError> {
        Ok(self.get(&with_len(b'g', group_id))?.unwrap_or_default())
    }

    /// Store a group's bookkeeping, unless the store holds it already.
    ///
    /// The group stores its record at the end of every call that may have
    /// changed it, and most calls (an `advance` with nothing to do, a
    /// message received) leave it as it was. A step that writes nothing is
    /// not flushed, so skipping the identical write saves a disk flush per
    /// such call.
    pub fn put_group_record(
        &self,
        group_id: &[u8],
        record: &GroupRecord,
    ) -> Result<(), GroupError> {
        let key = with_len(b'g', group_id);
        let bytes = rmp_serde::to_vec(record)
            .map_err(|e| GroupError::Corrupt(format!("encoding a record: {e}")))?;
        if self.0.kv_get(&key).map_err(GroupError::store)?.as_deref() == Some(&bytes[..]) {
            return Ok(());
        }
        self.0.kv_put(&key, &bytes).map_err(GroupError::store)
    }

    /// Delete a group's bookkeeping (its state was deleted).
    pub fn remove_group_record(&self, group_id: &[u8]) -> Result<(), GroupError> {
        self.0
            .kv_delete(&with_len(b'g', group_id))
            .map_err(GroupError::store)
    }

    /// What is kept of a group this installation is no longer in.
    pub fn retired_group(&self, group_id: &[u8]) -> Result<Option<RetiredGroup>, GroupError> {
        self.get(&with_len(b'R', group_id))
    }

    /// Store what is kept of a group this installation is no longer in.
    pub fn put_retired_group(&self, retired: &RetiredGroup) -> Result<(), GroupError> {
        self.put(&with_len(b'R', &retired.group_id), retired)
    }

    /// Forget a retired group (this installation joined it again).
    pub fn remove_retired_group(&self, group_id: &[u8]) -> Result<(), GroupError> {
        self.0
            .kv_delete(&with_len(b'R', group_id))
            .map_err(GroupError::store)
    }

    fn intent_key(group_id: &[u8], id: u64) -> Vec<u8> {
        let mut key = with_len(b'i', group_id);
        key.extend_from_slice(&id.to_be_bytes());
        key
    }

    /// A group's open intents, oldest first.
    pub fn intents(&self, group_id: &[u8]) -> Result<Vec<Intent>, GroupError> {
        self.scan(&with_len(b'i', group_id))
    }

    /// Store an intent.
    pub fn put_intent(&self, group_id: &[u8], intent: &Intent) -> Result<(), GroupError> {
        self.put(&Self::intent_key(group_id, intent.id), intent)
    }

    /// Remove a finished intent.
    pub fn remove_intent(&self, group_id: &[u8], id: u64) -> Result<(), GroupError> {
        self.0
            .kv_delete(&Self::intent_key(group_id, id))
            .map_err(GroupError::store)
    }

    fn outbox_key(group_id: &[u8], id: u64) -> Vec<u8> {
        let mut key = with_len(b'o', group_id);
        key.extend_from_slice(&id.to_be_bytes());
        key
    }

    /// A group's unpublished outbound payloads, oldest first.
    pub fn outbox(&self, group_id: &[u8]) -> Result<Vec<Outbound>, GroupError> {
        self.scan(&with_len(b'o', group_id))
    }

    /// Queue a payload for publishing.
    pub fn push_outbox(&self, group_id: &[u8], item: &Outbound) -> Result<(), GroupError> {
        self.put(&Self::outbox_key(group_id, item.id), item)
    }

    /// Drop a published payload.
    pub fn remove_outbox(&self, group_id: &[u8], id: u64) -> Result<(), GroupError> {
        self.0
            .kv_delete(&Self::outbox_key(group_id, id))
            .map_err(GroupError::store)
    }

    fn epoch_key(tag: u8, group_id: &[u8], epoch: u64) -> Vec<u8> {
        let mut key = with_len(tag, group_id);
        key.extend_from_slice(&epoch.to_be_bytes());
        key
    }

    /// When `installation`'s leaf was last added to the group, if
    /// recorded.
    pub fn leaf_added(
        &self,
        group_id: &[u8],
        installation: &InstallationId,
    ) -> Result<Option<LeafAdded>, GroupError> {
        self.get(&Self::installation_key(group_id, installation))
    }

    /// Record when `installation`'s leaf was added.
    pub fn put_leaf_added(
        &self,
        group_id: &[u8],
        installation: &InstallationId,
        added: &LeafAdded,
    ) -> Result<(), GroupError> {
        self.put(&Self::installation_key(group_id, installation), added)
    }

    fn installation_key(group_id: &[u8], installation: &InstallationId) -> Vec<u8> {
        let mut key = with_len(b'a', group_id);
        key.extend_from_slice(installation.as_bytes());
        key
    }

    /// Forget when each installation's leaf was added to the group.
    pub fn remove_leaves_added(&self, group_id: &[u8]) -> Result<(), GroupError> {
        self.remove_prefix(&with_len(b'a', group_id))
    }

    fn remove_prefix(&self, prefix: &[u8]) -> Result<(), GroupError> {
        for (key, _) in self.0.kv_scan(prefix).map_err(GroupError::store)? {
            self.0.kv_delete(&key).map_err(GroupError::store)?;
        }
        Ok(())
    }

    /// The retained snapshots of a group, oldest epoch first.
    pub fn snapshots(&self, group_id: &[u8]) -> Result<Vec<EpochSnapshot>, GroupError> {
        self.scan(&with_len(b's', group_id))
    }

    /// The retained snapshot of one epoch.
    pub fn snapshot(
        &self,
        group_id: &[u8],
        epoch: u64,
    ) -> Result<Option<EpochSnapshot>, GroupError> {
        self.get(&Self::epoch_key(b's', group_id, epoch))
    }

    /// Store a snapshot.
    pub fn put_snapshot(
        &self,
        group_id: &[u8],
        snapshot: &EpochSnapshot,
    ) -> Result<(), GroupError> {
        self.put(&Self::epoch_key(b's', group_id, snapshot.epoch), snapshot)
    }

    /// Delete a snapshot: its ring entry and its state.
    pub fn remove_snapshot(&self, group_id: &[u8], epoch: u64) -> Result<(), GroupError> {
        self.0
            .kv_delete(&Self::epoch_key(b'S', group_id, epoch))
            .map_err(GroupError::store)?;
        self.0
            .kv_delete(&Self::epoch_key(b's', group_id, epoch))
            .map_err(GroupError::store)
    }

    /// The state bytes of a retained snapshot.
    pub fn snapshot_state(
        &self,
        group_id: &[u8],
        epoch: u64,
    ) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>, GroupError> {
        Ok(self
            .0
            .kv_get(&Self::epoch_key(b'S', group_id, epoch))
            .map_err(GroupError::store)?
            .map(zeroize::Zeroizing::new))
    }

    /// Store the state bytes of a snapshot.
    pub fn put_snapshot_state(
        &self,
        group_id: &[u8],
        epoch: u64,
        state: &[u8],
    ) -> Result<(), GroupError> {
        self.0
            .kv_put(&Self::epoch_key(b'S', group_id, epoch), state)
            .map_err(GroupError::store)
    }

    /// The retained envelopes of a group, by arrival.
    pub fn retained(&self, group_id: &[u8]) -> Result<Vec<RetainedEnvelope>, GroupError> {
        self.scan(&with_len(b'r', group_id))
    }

    /// Store a retained envelope.
    pub fn put_retained(
        &self,
        group_id: &[u8],
        entry: &RetainedEnvelope,
    ) -> Result<(), GroupError> {
        self.put(&Self::epoch_key(b'r', group_id, entry.arrival), entry)
    }

    /// Drop a retained envelope.
    pub fn remove_retained(&self, group_id: &[u8], arrival: u64) -> Result<(), GroupError> {
        self.0
            .kv_delete(&Self::epoch_key(b'r', group_id, arrival))
            .map_err(GroupError::store)
    }

    fn hash_key(tag: u8, group_id: &[u8], hash: &[u8; 32]) -> Vec<u8> {
        let mut key = with_len(tag, group_id);
        key.extend_from_slice(hash);
        key
    }

    /// Own commits of a group's unsettled epochs.
    pub fn own_commits(&self, group_id: &[u8]) -> Result<Vec<OwnCommit>, GroupError> {
        self.scan(&with_len(b'p', group_id))
    }

    /// The own commit whose bytes hash to `hash`.
    pub fn own_commit(
        &self,
        group_id: &[u8],
        hash: &[u8; 32],
    ) -> Result<Option<OwnCommit>, GroupError> {
        self.get(&Self::hash_key(b'p', group_id, hash))
    }

    /// Record an own commit.
    pub fn put_own_commit(&self, group_id: &[u8], commit: &OwnCommit) -> Result<(), GroupError> {
        self.put(&Self::hash_key(b'p', group_id, &commit.hash), commit)
    }

    /// Forget an own commit.
    pub fn remove_own_commit(&self, group_id: &[u8], hash: &[u8; 32]) -> Result<(), GroupError> {
        self.0
            .kv_delete(&Self::hash_key(b'p', group_id, hash))
            .map_err(GroupError::store)
    }

    /// The Welcomes of a group kept for later (see
    /// [`crate::group::Group::rejoin_deferred`]).
    pub fn deferred_welcomes(&self, group_id: &[u8]) -> Result<Vec<DeferredWelcome>, GroupError> {
        self.scan(&with_len(b'w', group_id))
    }

    /// Keep a Welcome for later.
    pub fn put_deferred_welcome(
        &self,
        group_id: &[u8],
        welcome: &DeferredWelcome,
    ) -> Result<(), GroupError> {
        self.put(&Self::hash_key(b'w', group_id, &welcome.hash()), welcome)
    }

    /// Forget a kept Welcome.
    pub fn remove_deferred_welcome(
        &self,
        group_id: &[u8],
        welcome: &DeferredWelcome,
    ) -> Result<(), GroupError> {
        self.0
            .kv_delete(&Self::hash_key(b'w', group_id, &welcome.hash()))
            .map_err(GroupError::store)
    }

    /// Own messages of a group's unsettled epochs.
    pub fn own_sends(&self, group_id: &[u8]) -> Result<Vec<OwnSend>, GroupError> {
        self.scan(&with_len(b'u', group_id))
    }

    /// Record an own message.
    pub fn put_own_send(&self, group_id: &[u8], send: &OwnSend) -> Result<(), GroupError> {
        self.put(&Self::hash_key(b'u', group_id, &send.message_id), send)
    }

    /// Forget an own message.
    pub fn remove_own_send(
        &self,
        group_id: &[u8],
        message_id: &[u8; 32],
    ) -> Result<(), GroupError> {
        self.0
            .kv_delete(&Self::hash_key(b'u', group_id, message_id))
            .map_err(GroupError::store)
    }

    /// The order key of the commit that left `epoch`, if still recorded.
    pub fn commit_key(&self, group_id: &[u8], epoch: u64) -> Result<Option<OrderKey>, GroupError> {
        Ok(self.commit_record(group_id, epoch)?.map(|(key, _)| key))
    }

    /// The order key of the commit that left `epoch` and the digest of
    /// that epoch's authenticator, if still recorded.
    pub fn commit_record(
        &self,
        group_id: &[u8],
        epoch: u64,
    ) -> Result<Option<(OrderKey, [u8; 8])>, GroupError> {
        self.get(&Self::epoch_key(b'k', group_id, epoch))
    }

    /// Record the commit that left `epoch`, and the claim key of `epoch`
    /// when this installation was a member of it (for a joiner, the
    /// epochs before its join have none), forgetting both `keep` epochs
    /// older.
    pub fn put_commit_key(
        &self,
        group_id: &[u8],
        epoch: u64,
        key: (OrderKey, [u8; 8]),
        claim_key: Option<&[u8; 32]>,
        keep: u64,
    ) -> Result<(), GroupError> {
        self.put(&Self::epoch_key(b'k', group_id, epoch), &key)?;
        let claim_at = Self::epoch_key(b'f', group_id, epoch);
        match claim_key {
            Some(secret) => self.0.kv_put(&claim_at, secret),
            None => self.0.kv_delete(&claim_at),
        }
        .map_err(GroupError::store)?;
        if let Some(old) = epoch.checked_sub(keep) {
            for prefix in [b'k', b'f'] {
                self.0
                    .kv_delete(&Self::epoch_key(prefix, group_id, old))
                    .map_err(GroupError::store)?;
            }
        }
        Ok(())
    }

    /// The claim key of `epoch` (the exporter secret that MACs claims
    /// about its commit), if this installation was a member of it and it
    /// is still recorded.
    pub fn claim_key(
        &self,
        group_id: &[u8],
        epoch: u64,
    ) -> Result<Option<zeroize::Zeroizing<[u8; 32]>>, GroupError> {
        let Some(bytes) = self
            .0
            .kv_get(&Self::epoch_key(b'f', group_id, epoch))
            .map_err(GroupError::store)?
        else {
            return Ok(None);
        };
        let bytes = zeroize::Zeroizing::new(bytes);
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| GroupError::Corrupt("a stored claim key of the wrong length".into()))?;
        Ok(Some(zeroize::Zeroizing::new(key)))
    }

    /// Forget every recorded commit position (and claim key) of a group.
    pub fn remove_commit_keys(&self, group_id: &[u8]) -> Result<(), GroupError> {
        self.remove_prefix(&with_len(b'k', group_id))?;
        self.remove_prefix(&with_len(b'f', group_id))
    }

    /// Keep a deniable leaf key, under its public key.
    pub fn put_ephemeral_key(&self, key: &EphemeralKey) -> Result<(), GroupError> {
        self.0
            .kv_put(
                &with_len(b'e', &key.public_key()),
                key.to_secret_bytes().as_ref(),
            )
            .map_err(GroupError::store)
    }

    /// The deniable leaf key whose public key is `public`, if kept.
    pub fn ephemeral_key(&self, public: &[u8; 32]) -> Result<Option<EphemeralKey>, GroupError> {
        let Some(bytes) = self
            .0
            .kv_get(&with_len(b'e', public))
            .map_err(GroupError::store)?
        else {
            return Ok(None);
        };
        let bytes = zeroize::Zeroizing::new(bytes);
        EphemeralKey::from_secret_bytes(&bytes)
            .map(Some)
            .map_err(|e| GroupError::Corrupt(format!("a stored ephemeral key: {e}")))
    }

    /// Delete the deniable leaf key whose public key is `public`.
    pub fn remove_ephemeral_key(&self, public: &[u8; 32]) -> Result<(), GroupError> {
        self.0
            .kv_delete(&with_len(b'e', public))
            .map_err(GroupError::store)
    }

    /// Delete the deniable leaf key `public` unless a DM still signs with
    /// it, and say whether it was deleted. The key of a retired last-resort
    /// package is the leaf key, for life, of every DM joined through it.
    pub fn retire_ephemeral_key(&self, public: &[u8; 32]) -> Result<bool, GroupError> {
        let records: Vec<GroupRecord> = self.scan(b"g")?;
        if records
            .iter()
            .filter_map(|record| record.deniable.as_ref())
            .any(|state| &state.own_leaf_key == public)
        {
            return Ok(false);
        }
        self.remove_ephemeral_key(public)?;
        Ok(true)
    }

    /// Keep the binding exporter secret of a deniable DM's `epoch`,
    /// forgetting the one `keep` epochs older.
    pub fn put_binding_exporter(
        &self,
        group_id: &[u8],
        epoch: u64,
        secret: &[u8],
        keep: u64,
    ) -> Result<(), GroupError> {
        self.0
            .kv_put(&Self::epoch_key(b'b', group_id, epoch), secret)
            .map_err(GroupError::store)?;
        if let Some(old) = epoch.checked_sub(keep) {
            self.0
                .kv_delete(&Self::epoch_key(b'b', group_id, old))
                .map_err(GroupError::store)?;
        }
        Ok(())
    }

    /// Forget every binding exporter secret kept for a group.
    pub fn remove_binding_exporters(&self, group_id: &[u8]) -> Result<(), GroupError> {
        self.remove_prefix(&with_len(b'b', group_id))
    }

    /// The binding exporter secret of `epoch`, if kept.
    pub fn binding_exporter(
        &self,
        group_id: &[u8],
        epoch: u64,
    ) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>, GroupError> {
        Ok(self
            .0
            .kv_get(&Self::epoch_key(b'b', group_id, epoch))
            .map_err(GroupError::store)?
            .map(zeroize::Zeroizing::new))
    }

    /// The cached identity log of `inbox` (empty if none).
    pub fn identity_updates(&self, inbox: &InboxId) -> Result<Vec<IdentityUpdate>, GroupError> {
        let stored: Option<Vec<Vec<u8>>> = self.get(&with_len(b'd', inbox.as_bytes()))?;
        stored
            .unwrap_or_default()
            .iter()
            .map(|bytes| {
                IdentityUpdate::from_bytes(bytes)
                    .map_err(|e| GroupError::Corrupt(format!("cached identity update: {e}")))
            })
            .collect()
    }

    /// Every cached identity log.
    pub fn all_identity_updates(&self) -> Result<Vec<Vec<IdentityUpdate>>, GroupError> {
        let stored: Vec<Vec<Vec<u8>>> = self.scan(b"d")?;
        stored
            .iter()
            .map(|log| {
                log.iter()
                    .map(|bytes| {
                        IdentityUpdate::from_bytes(bytes).map_err(|e| {
                            GroupError::Corrupt(format!("cached identity update: {e}"))
                        })
                    })
                    .collect()
            })
            .collect()
    }

    /// Store the cached identity log of `inbox`.
    pub fn put_identity_updates(
        &self,
        inbox: &InboxId,
        updates: &[IdentityUpdate],
    ) -> Result<(), GroupError> {
        let encoded: Vec<Vec<u8>> = updates.iter().map(IdentityUpdate::to_bytes).collect();
        self.put(&with_len(b'd', inbox.as_bytes()), &encoded)
    }
}

#[cfg(test)]
mod tests {
    use rand_core::SeedableRng as _;

    use super::*;
    use crate::{
        group::records::DeniableState,
        identity::{InstallationKeys, LocalWallet},
    };

    #[test]
    fn a_retired_leaf_key_is_kept_while_a_dm_signs_with_it() {
        let kv = MemoryKvStore::default();
        let store = ClientStore(&kv);
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
        let (in_use, unused) = (
            EphemeralKey::generate(&mut rng),
            EphemeralKey::generate(&mut rng),
        );
        store.put_ephemeral_key(&in_use).expect("put");
        store.put_ephemeral_key(&unused).expect("put");
        let me = InstallationKeys::generate(&mut rng);
        let record = GroupRecord {
            deniable: Some(DeniableState::new(
                in_use.public_key(),
                LocalWallet::generate(&mut rng).inbox_id(),
                me.id(),
            )),
            ..GroupRecord::default()
        };
        store.put_group_record(b"a dm", &record).expect("put");

        assert!(
            !store
                .retire_ephemeral_key(&in_use.public_key())
                .expect("retire")
        );
        assert!(
            store
                .ephemeral_key(&in_use.public_key())
                .expect("get")
                .is_some()
        );
        assert!(
            store
                .retire_ephemeral_key(&unused.public_key())
                .expect("retire")
        );
        assert!(
            store
                .ephemeral_key(&unused.public_key())
                .expect("get")
                .is_none()
        );
    }
}
