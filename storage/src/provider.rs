//! [`KithProvider`]: the OpenMLS provider Kith runs on, with RustCrypto for
//! crypto and randomness (or another crypto provider: the simulator seeds
//! its own) and [`SledMlsStorage`] for state.

use std::path::Path;

use openmls_rust_crypto::RustCrypto;
use openmls_traits::{OpenMlsProvider, crypto::OpenMlsCrypto, random::OpenMlsRand};

use crate::{
    error::StorageError,
    mls_storage::{SledMlsStorage, StorageConfig},
};

/// An `OpenMlsProvider` whose state lives in sled, with RustCrypto (or the
/// crypto provider `C`) for crypto and randomness.
///
/// Group operations that must be atomic run inside a step of
/// [`KithProvider::storage`]; see [`SledMlsStorage`].
#[derive(Debug)]
pub struct KithProvider<C = RustCrypto> {
    crypto: C,
    storage: SledMlsStorage,
}

impl<C> KithProvider<C> {
    /// A provider over an already opened storage, with `crypto` for crypto
    /// and randomness.
    pub fn with_crypto(storage: SledMlsStorage, crypto: C) -> Self {
        Self { crypto, storage }
    }

    /// Give the storage back, e.g. to close and reopen it.
    pub fn into_storage(self) -> SledMlsStorage {
        self.storage
    }
}

impl KithProvider {
    /// Open (or create) a provider whose storage is at `path`, with the
    /// default [`StorageConfig`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        Ok(Self::from_storage(SledMlsStorage::open(path)?))
    }

    /// Open (or create) a provider whose storage is at `path` with `config`.
    pub fn open_with(path: impl AsRef<Path>, config: StorageConfig) -> Result<Self, StorageError> {
        Ok(Self::from_storage(SledMlsStorage::open_with(path, config)?))
    }

    /// A provider over an already opened storage.
    pub fn from_storage(storage: SledMlsStorage) -> Self {
        Self {
            crypto: RustCrypto::default(),
            storage,
        }
    }
}

impl<C: OpenMlsCrypto + OpenMlsRand> OpenMlsProvider for KithProvider<C> {
    type CryptoProvider = C;
    type RandProvider = C;
    type StorageProvider = SledMlsStorage;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }

    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }

    fn rand(&self) -> &Self::RandProvider {
        &self.crypto
    }
}
