//! The engine's identity store ports over the same sled tree as the OpenMLS
//! state: the installation's own keys and its key-package inventory.
//!
//! They live in the OpenMLS tree (under their own namespace byte, `K`) and
//! go through the same step machinery, so that generating key packages
//! (OpenMLS writes their private keys) and recording them in the inventory
//! commit in one atomic step.

use kith_engine::identity::{
    InstallationKeys, InstallationStore, KeyPackageInventory, KeyPackageInventoryStore,
};
use zeroize::Zeroizing;

use crate::{error::StorageError, mls_storage::SledMlsStorage};

const INSTALLATION_KEY: &[u8] = b"Kinstallation";
const INVENTORY_KEY: &[u8] = b"Kkey-package-inventory";
const DENIABLE_INVENTORY_KEY: &[u8] = b"Kdeniable-key-package-inventory";

impl InstallationStore for SledMlsStorage {
    type Error = StorageError;

    fn load_installation(&self) -> Result<Option<InstallationKeys>, StorageError> {
        let Some(bytes) = self.get(INSTALLATION_KEY)?.map(Zeroizing::new) else {
            return Ok(None);
        };
        InstallationKeys::from_secret_bytes(&bytes)
            .map(Some)
            .map_err(|e| StorageError::corrupt(format!("installation keys: {e}")))
    }

    fn save_installation(&self, keys: &InstallationKeys) -> Result<(), StorageError> {
        self.put(INSTALLATION_KEY.to_vec(), keys.to_secret_bytes().to_vec())
    }
}

impl KeyPackageInventoryStore for SledMlsStorage {
    type Error = StorageError;

    fn load_inventory(&self) -> Result<KeyPackageInventory, StorageError> {
        self.inventory_at(INVENTORY_KEY)
    }

    fn save_inventory(&self, inventory: &KeyPackageInventory) -> Result<(), StorageError> {
        self.put(INVENTORY_KEY.to_vec(), inventory.to_bytes())
    }

    fn load_deniable_inventory(&self) -> Result<KeyPackageInventory, StorageError> {
        self.inventory_at(DENIABLE_INVENTORY_KEY)
    }

    fn save_deniable_inventory(&self, inventory: &KeyPackageInventory) -> Result<(), StorageError> {
        self.put(DENIABLE_INVENTORY_KEY.to_vec(), inventory.to_bytes())
    }
}

impl SledMlsStorage {
    fn inventory_at(&self, key: &[u8]) -> Result<KeyPackageInventory, StorageError> {
        match self.get(key)? {
            None => Ok(KeyPackageInventory::default()),
            Some(bytes) => KeyPackageInventory::from_bytes(&bytes)
                .map_err(|e| StorageError::corrupt(format!("key-package inventory: {e}"))),
        }
    }
}
