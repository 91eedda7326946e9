//! `kith-storage`: Kith's sled adapters.
//!
//! Today this crate holds the storage under OpenMLS. Kith's conflict
//! resolution rolls a group back to an earlier epoch and replays commits, so
//! that storage must do three things beyond `StorageProvider`:
//!
//! - **persist** across restarts (sled, on disk);
//! - apply the writes of one OpenMLS operation **atomically** (a
//!   [`Step`]: buffered writes applied as one sled batch);
//! - **snapshot and restore one group** without touching the others
//!   ([`SledMlsStorage::snapshot_group`], [`SledMlsStorage::restore_group`]).
//!
//! ```text
//!   MlsGroup ──(StorageProvider calls)──► SledMlsStorage
//!                                          │  step open on this thread?
//!                                          ├─ yes ─► overlay (BTreeMap) ──commit──┐
//!                                          └─ no ────────────────────────────────►├─► sled batch ─► fsync
//!                                                                                  │   (atomic)    (Durability)
//!   engine ──snapshot_group / restore_group / delete_group────────────────────────┘
//! ```
//!
//! [`KithProvider`] bundles the storage with RustCrypto into an
//! `OpenMlsProvider`. [`SledMlsStorage`] also implements the engine's
//! identity ports (`InstallationStore`, `KeyPackageInventoryStore`) in the
//! same tree, so that they commit in the same steps as OpenMLS.
//!
//! [`SledNodeStore`] is the delivery-service node's store: envelopes,
//! identity logs and key-package pools, flushed before every
//! acknowledgement.

mod client_store;
mod codec;
mod error;
mod identity_store;
mod keys;
mod mls_storage;
mod node_store;
mod provider;
mod sled_open;
mod snapshot;
mod storage_provider;

/// Entry points for the fuzz targets (`fuzz/`) and their corpus replay;
/// only with the `fuzzing` feature, never in normal builds.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

pub use codec::Codec;
pub use error::StorageError;
pub use keys::EntryKind;
pub use mls_storage::{Durability, GroupSavepoint, SledMlsStorage, Step, StorageConfig};
pub use node_store::SledNodeStore;
pub use provider::KithProvider;
pub use snapshot::GroupSnapshot;
