//! Behaviour every implementation of the identity store ports must have.
//! The in-memory stores run these in this crate's tests; `kith-storage`
//! runs them against its sled stores (feature `test-suite`).

use rand_core::SeedableRng as _;

use super::{
    InstallationStore, KeyPackageInventory, KeyPackageInventoryStore, LastResortRecord,
    RetiredLastResort, load_or_create_installation,
};

/// An [`InstallationStore`] starts empty, keeps what was saved, and
/// `load_or_create_installation` creates keys once.
///
/// # Panics
/// When the store misbehaves.
pub fn installation_store_suite<S: InstallationStore>(store: &S) {
    assert!(
        store.load_installation().expect("load").is_none(),
        "a new store holds no installation"
    );
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
    let created = load_or_create_installation(store, &mut rng).expect("create");
    let loaded = store.load_installation().expect("load").expect("stored");
    assert_eq!(loaded.id(), created.id());
    assert_eq!(loaded.identity_public_key(), created.identity_public_key());
    assert_eq!(
        *loaded.to_secret_bytes(),
        *created.to_secret_bytes(),
        "the private keys round-trip"
    );
    let again = load_or_create_installation(store, &mut rng).expect("load again");
    assert_eq!(again.id(), created.id(), "no second installation is made");
}

/// A [`KeyPackageInventoryStore`] starts empty and keeps what was saved.
///
/// # Panics
/// When the store misbehaves.
pub fn inventory_store_suite<S: KeyPackageInventoryStore>(store: &S) {
    assert_eq!(
        store.load_inventory().expect("load"),
        KeyPackageInventory::default()
    );
    let inventory = KeyPackageInventory {
        last_resort: Some(LastResortRecord {
            hash_ref: vec![1, 2, 3],
            created_at_ms: 10,
            first_used_at_ms: Some(20),
        }),
        retired: vec![RetiredLastResort {
            hash_ref: vec![4, 5],
            retired_at_ms: 30,
        }],
    };
    store.save_inventory(&inventory).expect("save");
    assert_eq!(store.load_inventory().expect("load"), inventory);
    store
        .save_inventory(&KeyPackageInventory::default())
        .expect("save empty");
    assert_eq!(
        store.load_inventory().expect("load"),
        KeyPackageInventory::default()
    );

    // The deniable pool's inventory is its own.
    store.save_deniable_inventory(&inventory).expect("save");
    assert_eq!(store.load_deniable_inventory().expect("load"), inventory);
    assert_eq!(
        store.load_inventory().expect("load"),
        KeyPackageInventory::default(),
        "saving the deniable inventory leaves the ordinary one alone"
    );
    store.save_inventory(&inventory).expect("save");
    store
        .save_deniable_inventory(&KeyPackageInventory::default())
        .expect("save empty");
    assert_eq!(store.load_inventory().expect("load"), inventory);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{MemoryInstallationStore, MemoryInventoryStore};

    #[test]
    fn memory_installation_store() {
        installation_store_suite(&MemoryInstallationStore::default());
    }

    #[test]
    fn memory_inventory_store() {
        inventory_store_suite(&MemoryInventoryStore::default());
    }
}
