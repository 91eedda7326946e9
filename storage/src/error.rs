//! The errors of `kith-storage`, sorted by who is to blame: the disk or sled
//! (I/O), the stored bytes (corruption or a format mismatch), or the caller
//! (API misuse).

use crate::codec::Codec;

/// Everything that can go wrong in `kith-storage`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// sled failed to read, write or flush. The operation did not take
    /// effect; retrying after the underlying I/O problem is fixed is safe.
    #[error("sled I/O failed: {0}")]
    Sled(#[from] sled::Error),

    /// A value could not be encoded. This indicates a type OpenMLS asked us to
    /// store that the configured codec cannot represent.
    #[error("could not encode a value with {codec:?}: {reason}")]
    Encode {
        /// The codec in use.
        codec: Codec,
        /// What the encoder said.
        reason: String,
    },

    /// Stored bytes could not be decoded: the database is corrupt, or was
    /// written by an incompatible version of Kith or OpenMLS.
    #[error("stored value could not be decoded with {codec:?}: {reason}")]
    Decode {
        /// The codec in use.
        codec: Codec,
        /// What the decoder said.
        reason: String,
    },

    /// A stored list, key or snapshot has an impossible layout.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),

    /// The database was created with another value codec. Open it with the
    /// codec it was created with.
    #[error("database was created with codec {found:?} but was opened with {requested:?}")]
    CodecMismatch {
        /// The codec recorded in the database.
        found: Codec,
        /// The codec the caller asked for.
        requested: Codec,
    },

    /// The database was written by a newer, unknown storage format.
    #[error(
        "database storage format {found} is not supported (this build reads format {supported})"
    )]
    UnsupportedFormat {
        /// The format recorded in the database.
        found: u32,
        /// The format this build reads and writes.
        supported: u32,
    },

    /// `begin_step` was called while this thread already had a step open.
    /// Steps do not nest: commit or drop the open one first.
    #[error("a storage step is already open on this thread; commit or drop it first")]
    StepAlreadyOpen,

    /// The step being committed is no longer open (it was discarded).
    #[error("no storage step is open on this thread")]
    NoStepOpen,

    /// A group savepoint was rolled back to after the step it was taken in
    /// ended (or on another thread). Nothing was changed.
    #[error("the group savepoint belongs to a step that is no longer open on this thread")]
    StaleSavepoint,

    /// The group has no state in this storage.
    #[error("group {0} has no state in this storage")]
    GroupNotFound(String),

    /// A snapshot's bytes are malformed or truncated.
    #[error("malformed group snapshot: {0}")]
    MalformedSnapshot(String),

    /// A snapshot was taken from a storage that uses a different codec, so
    /// its entries cannot be read here.
    #[error("snapshot was taken with codec {snapshot:?}, but this storage uses {storage:?}")]
    SnapshotCodecMismatch {
        /// The codec the snapshot's entries are encoded with.
        snapshot: Codec,
        /// The codec of this storage.
        storage: Codec,
    },
}

impl StorageError {
    pub(crate) fn corrupt(what: impl Into<String>) -> Self {
        Self::Corrupt(what.into())
    }
}
