//! The engine's client-store port ([`KvStore`]) over the same sled tree as
//! the OpenMLS state, under its own namespace byte (`C`).
//!
//! Because it goes through the same step machinery, one engine step (the
//! MLS state, the stored message, the cursor and the intent) commits in one
//! sled batch: a crash either keeps all of it or none. The engine's
//! rollback port ([`GroupSnapshots`]) is [`SledMlsStorage::snapshot_group`]
//! and [`SledMlsStorage::restore_group`] in [`GroupSnapshot`]'s encoding,
//! and [`SledMlsStorage::savepoint_group`] inside a step.

use kith_engine::group::{GroupSnapshots, KvEntries, KvStore};
use openmls::prelude::GroupId;
use zeroize::Zeroizing;

use crate::{
    error::StorageError,
    mls_storage::{GroupSavepoint, SledMlsStorage},
    snapshot::GroupSnapshot,
};

const NAMESPACE: u8 = b'C';

fn key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + key.len());
    out.push(NAMESPACE);
    out.extend_from_slice(key);
    out
}

impl KvStore for SledMlsStorage {
    type Error = StorageError;

    fn kv_get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.get(&key(k))
    }

    fn kv_put(&self, k: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.put(key(k), value.to_vec())
    }

    fn kv_delete(&self, k: &[u8]) -> Result<(), StorageError> {
        self.remove(key(k))
    }

    fn kv_scan(&self, prefix: &[u8]) -> Result<KvEntries, StorageError> {
        Ok(self
            .scan(&key(prefix))?
            .into_iter()
            .map(|(k, v)| (k[1..].to_vec(), v))
            .collect())
    }

    fn kv_range(
        &self,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<KvEntries, StorageError> {
        Ok(self
            .range(&key(start), &key(end), reverse, limit)?
            .into_iter()
            .map(|(k, v)| (k[1..].to_vec(), v))
            .collect())
    }
}

impl GroupSnapshots for SledMlsStorage {
    fn snapshot_group(&self, group_id: &[u8]) -> Result<Zeroizing<Vec<u8>>, StorageError> {
        Ok(SledMlsStorage::snapshot_group(self, &GroupId::from_slice(group_id))?.to_bytes())
    }

    fn restore_group(&self, group_id: &[u8], snapshot: &[u8]) -> Result<(), StorageError> {
        let snapshot = GroupSnapshot::from_bytes(snapshot)?;
        if snapshot.group_id() != group_id {
            return Err(StorageError::MalformedSnapshot(
                "the snapshot belongs to another group".into(),
            ));
        }
        SledMlsStorage::restore_group(self, &snapshot)
    }

    fn delete_group(&self, group_id: &[u8]) -> Result<(), StorageError> {
        SledMlsStorage::delete_group(self, &GroupId::from_slice(group_id))
    }

    type Savepoint = GroupSavepoint;

    fn savepoint_group(&self, group_id: &[u8]) -> Result<Option<GroupSavepoint>, StorageError> {
        SledMlsStorage::savepoint_group(self, &GroupId::from_slice(group_id))
    }

    fn rollback_group_to(&self, savepoint: GroupSavepoint) -> Result<(), StorageError> {
        SledMlsStorage::rollback_group_to(self, savepoint)
    }
}
