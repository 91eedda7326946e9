//! Value codecs: how OpenMLS entities become bytes in sled.
//!
//! OpenMLS 0.9 stores its state through serde, and several of its types
//! (`#[serde(skip_serializing_if)]`, internally tagged enums) need a
//! *self-describing* format: a compact positional one such as bincode cannot
//! read them back. The candidates are JSON, CBOR and MessagePack (with named
//! struct fields, which is what makes it self-describing).
//!
//! The default was chosen by measurement (`cargo bench -p kith-benches --bench
//! storage_codec`, full figures in `BENCHMARKS.md`). On a 100-member group,
//! MessagePack was the fastest on both measured operations and the smallest:
//!
//! | codec       | commit + process | message round trip | one group's state |
//! |-------------|------------------|--------------------|-------------------|
//! | JSON        | 10.4 ms (1.28x)  | 243 µs (2.02x)     | 105 102 bytes     |
//! | CBOR        | 10.1 ms (1.24x)  | 279 µs (2.32x)     |  66 295 bytes     |
//! | MessagePack |  9.7 ms (1.18x)  | 210 µs (1.75x)     |  59 914 bytes     |
//!
//! (ratios against `openmls_memory_storage`, which itself encodes with JSON;
//! sled with buffered durability so that fsync does not hide the codec.)
//! JSON spells every byte string as an array of decimal numbers, which is
//! where its size goes. The other codecs stay available so that the
//! measurement can be re-run; the codec is recorded in the database and a
//! mismatch is refused at open.

use serde::{Serialize, de::DeserializeOwned};

use crate::error::StorageError;

/// The self-describing format used to encode OpenMLS values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Codec {
    /// JSON (`serde_json`). Byte strings become arrays of numbers.
    Json,
    /// CBOR (`ciborium`).
    Cbor,
    /// MessagePack with named fields (`rmp-serde`). The default: fastest and
    /// smallest in the `storage_codec` benchmark.
    #[default]
    MessagePack,
}

impl Codec {
    /// Every codec, for benchmarks and tests that compare them.
    pub const ALL: [Codec; 3] = [Codec::Json, Codec::Cbor, Codec::MessagePack];

    /// The identifier recorded in the database and in snapshots.
    pub(crate) fn id(self) -> u8 {
        match self {
            Codec::Json => 1,
            Codec::Cbor => 2,
            Codec::MessagePack => 3,
        }
    }

    pub(crate) fn from_id(id: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.id() == id)
    }

    pub(crate) fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Vec<u8>, StorageError> {
        let encoded = match self {
            Codec::Json => serde_json::to_vec(value).map_err(|e| e.to_string()),
            Codec::Cbor => {
                let mut out = Vec::new();
                ciborium::into_writer(value, &mut out)
                    .map(|()| out)
                    .map_err(|e| e.to_string())
            }
            Codec::MessagePack => rmp_serde::to_vec_named(value).map_err(|e| e.to_string()),
        };
        encoded.map_err(|reason| StorageError::Encode {
            codec: self,
            reason,
        })
    }

    pub(crate) fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, StorageError> {
        let decoded = match self {
            Codec::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
            Codec::Cbor => ciborium::from_reader(bytes).map_err(|e| e.to_string()),
            Codec::MessagePack => rmp_serde::from_slice(bytes).map_err(|e| e.to_string()),
        };
        decoded.map_err(|reason| StorageError::Decode {
            codec: self,
            reason,
        })
    }
}
