//! [`GroupSnapshot`]: one group's complete stored state, as a value.
//!
//! The engine rolls a group back by restoring a snapshot taken when an epoch
//! ended. A snapshot holds every group-scoped entry (everything
//! `MlsGroup::load` reads, including a pending commit and the epoch HPKE key
//! pairs) plus the global HPKE key pairs that the state refers to (those of
//! own pending update proposals). It holds private keys, so its entries are
//! zeroed on drop and never printed by `Debug`.
//!
//! The byte encoding ([`GroupSnapshot::to_bytes`]) is a small length-prefixed
//! binary format, versioned, so that the engine can persist snapshots in any
//! store:
//!
//! ```text
//! "KSNP" | u16 version | u8 codec | u64 epoch
//! | u32 len | group id
//! | u32 n | n * (u32 len | key suffix | u32 len | value)     group entries
//! | u32 m | m * (u32 len | key | u32 len | value)            key pairs
//! ```

use zeroize::Zeroizing;

use crate::{codec::Codec, error::StorageError};

const MAGIC: &[u8; 4] = b"KSNP";
const VERSION: u16 = 1;

/// A stored entry: its key and its (secret-bearing) value.
pub(crate) type Entry = (Vec<u8>, Zeroizing<Vec<u8>>);

/// The stored state of one group at one moment. See the module docs.
#[derive(Clone, PartialEq, Eq)]
pub struct GroupSnapshot {
    pub(crate) codec: Codec,
    pub(crate) group_id: Vec<u8>,
    pub(crate) epoch: u64,
    /// Group-scoped entries, keyed by their key *without* the group prefix.
    pub(crate) group_entries: Vec<Entry>,
    /// Global entries the group state refers to, keyed by their full key.
    pub(crate) key_pairs: Vec<Entry>,
}

impl GroupSnapshot {
    /// The raw id of the group this snapshot belongs to.
    pub fn group_id(&self) -> &[u8] {
        &self.group_id
    }

    /// The epoch the group was in when the snapshot was taken.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// How many stored entries the snapshot holds.
    pub fn entry_count(&self) -> usize {
        self.group_entries.len() + self.key_pairs.len()
    }

    /// The number of bytes the snapshot's keys and values take.
    pub fn size_bytes(&self) -> usize {
        self.group_entries
            .iter()
            .chain(&self.key_pairs)
            .map(|(k, v)| k.len() + v.len())
            .sum()
    }

    /// Encode the snapshot for storage. The result contains private keys:
    /// store it with the same care as the group state itself.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(64 + self.size_bytes()));
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.push(self.codec.id());
        out.extend_from_slice(&self.epoch.to_be_bytes());
        put_bytes(&mut out, &self.group_id);
        for entries in [&self.group_entries, &self.key_pairs] {
            put_u32(&mut out, entries.len());
            for (key, value) in entries {
                put_bytes(&mut out, key);
                put_bytes(&mut out, value);
            }
        }
        out
    }

    /// Decode a snapshot written by [`GroupSnapshot::to_bytes`]. Malformed or
    /// truncated input is rejected with [`StorageError::MalformedSnapshot`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StorageError> {
        let mut r = Reader(bytes);
        if r.take(4)? != MAGIC {
            return Err(malformed("not a Kith group snapshot (bad magic)"));
        }
        let version = u16::from_be_bytes(r.array()?);
        if version != VERSION {
            return Err(malformed(format!("unsupported snapshot version {version}")));
        }
        let [codec_id] = r.array()?;
        let codec = Codec::from_id(codec_id)
            .ok_or_else(|| malformed(format!("unknown codec id {codec_id}")))?;
        let epoch = u64::from_be_bytes(r.array()?);
        let group_id = r.bytes()?.to_vec();
        let group_entries = r.entries()?;
        let key_pairs = r.entries()?;
        if !r.0.is_empty() {
            return Err(malformed("trailing bytes after snapshot"));
        }
        Ok(Self {
            codec,
            group_id,
            epoch,
            group_entries,
            key_pairs,
        })
    }
}

impl std::fmt::Debug for GroupSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Values hold private keys; show only their shape.
        f.debug_struct("GroupSnapshot")
            .field("group_id", &hex_string(&self.group_id))
            .field("epoch", &self.epoch)
            .field("codec", &self.codec)
            .field("entries", &self.entry_count())
            .field("size_bytes", &self.size_bytes())
            .finish()
    }
}

impl serde::Serialize for GroupSnapshot {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.to_bytes())
    }
}

impl<'de> serde::Deserialize<'de> for GroupSnapshot {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = GroupSnapshot;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("the bytes of a Kith group snapshot")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                GroupSnapshot::from_bytes(v).map_err(E::custom)
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Self::Value, E> {
                let v = Zeroizing::new(v);
                GroupSnapshot::from_bytes(&v).map_err(E::custom)
            }
        }
        deserializer.deserialize_bytes(Visitor)
    }
}

pub(crate) fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn malformed(why: impl Into<String>) -> StorageError {
    StorageError::MalformedSnapshot(why.into())
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    // Snapshot parts are bounded by sled's own value sizes, far below 4 GiB.
    out.extend_from_slice(&(n as u32).to_be_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(out, bytes.len());
    out.extend_from_slice(bytes);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StorageError> {
        if self.0.len() < n {
            return Err(malformed("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], StorageError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn bytes(&mut self) -> Result<&'a [u8], StorageError> {
        let len = u32::from_be_bytes(self.array()?) as usize;
        self.take(len)
    }

    fn entries(&mut self) -> Result<Vec<Entry>, StorageError> {
        let count = u32::from_be_bytes(self.array()?) as usize;
        // Each entry needs at least 8 bytes of lengths: refuse counts the
        // input cannot hold before allocating for them.
        if count > self.0.len() / 8 {
            return Err(malformed("entry count exceeds the input"));
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let key = self.bytes()?.to_vec();
            let value = Zeroizing::new(self.bytes()?.to_vec());
            entries.push((key, value));
        }
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> GroupSnapshot {
        GroupSnapshot {
            codec: Codec::Json,
            group_id: b"group".to_vec(),
            epoch: 7,
            group_entries: vec![(vec![1, 2], Zeroizing::new(vec![3, 4, 5]))],
            key_pairs: vec![(vec![b'e', 9], Zeroizing::new(vec![6]))],
        }
    }

    #[test]
    fn round_trips() {
        let snapshot = sample();
        let bytes = snapshot.to_bytes();
        assert_eq!(
            GroupSnapshot::from_bytes(&bytes).expect("decodes"),
            snapshot
        );
    }

    #[test]
    fn every_truncation_and_extension_is_rejected() {
        let bytes = sample().to_bytes();
        for cut in 0..bytes.len() {
            assert!(
                GroupSnapshot::from_bytes(&bytes[..cut]).is_err(),
                "truncation to {cut} bytes was accepted"
            );
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(GroupSnapshot::from_bytes(&longer).is_err());
    }

    #[test]
    fn debug_does_not_print_values() {
        let printed = format!("{:?}", sample());
        assert!(printed.contains("epoch: 7"));
        assert!(!printed.contains("[3, 4, 5]"));
    }
}
