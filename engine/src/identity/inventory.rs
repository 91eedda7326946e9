//! The key-package inventory: deciding when to make more key packages, and
//! making them (DESIGN.md section 4).
//!
//! Each installation keeps a pool of one-time key packages on the node plus
//! one last-resort package (OpenMLS `LastResortExtension`) that the node
//! hands out when the pool is empty, and the same again of deniable ones.
//! [`KeyPackagePolicy::plan`] is sans-IO: given what the node reports and
//! the time, it says how many packages to generate, whether to rotate the
//! last-resort one, and which retired last-resort keys have outlived their
//! grace period. [`execute_plan`] carries a plan out against an OpenMLS
//! provider.
//!
//! A last-resort package is kept for re-use; once rotated it is *retired*,
//! kept for a grace period for Welcomes still in flight, and then deleted by
//! [`execute_plan`].

use openmls::prelude::{KeyPackage, KeyPackageBundle, KeyPackageRef};
use openmls_traits::storage::StorageProvider as _;
use prost::Message as _;

use super::{
    deniable::{DeniableKeyPackage, generate_deniable_key_package},
    installation::InstallationKeys,
    key_package::{DEFAULT_LIFETIME_SECS, KeyPackageError, generate_key_package},
    wallet::InboxId,
};

/// The knobs of the key-package inventory (defaults from DESIGN.md
/// section 4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyPackagePolicy {
    /// How many one-time packages to keep on the node (default 100).
    pub target_pool: u32,
    /// Refill when the node reports fewer than this many (default 10).
    pub refill_below: u32,
    /// Rotate the last-resort package at least this often (default 30 days).
    pub last_resort_max_age_ms: u64,
    /// After the last-resort package was used, rotate it once this much
    /// time has passed, so a burst of uses causes one rotation (default
    /// 10 minutes).
    pub rotate_after_use_ms: u64,
    /// Keep a retired last-resort private key this long for Welcomes still
    /// in flight (default 24 hours).
    pub retired_grace_ms: u64,
    /// Lifetime of new key packages in seconds (default 84 days).
    pub lifetime_secs: u64,
}

impl Default for KeyPackagePolicy {
    fn default() -> Self {
        const HOUR_MS: u64 = 60 * 60 * 1000;
        Self {
            target_pool: 100,
            refill_below: 10,
            last_resort_max_age_ms: 30 * 24 * HOUR_MS,
            rotate_after_use_ms: 10 * 60 * 1000,
            retired_grace_ms: 24 * HOUR_MS,
            lifetime_secs: DEFAULT_LIFETIME_SECS,
        }
    }
}

/// The current last-resort package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastResortRecord {
    /// Its hash reference.
    pub hash_ref: Vec<u8>,
    /// When it was made (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// When it was first used, if it was.
    pub first_used_at_ms: Option<u64>,
}

/// A retired last-resort package whose private key is still kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetiredLastResort {
    /// Its hash reference.
    pub hash_ref: Vec<u8>,
    /// When it was retired (ms since the Unix epoch).
    pub retired_at_ms: u64,
}

/// What an installation knows about its own key packages.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPackageInventory {
    /// The current last-resort package.
    pub last_resort: Option<LastResortRecord>,
    /// Retired last-resort packages within their grace period.
    pub retired: Vec<RetiredLastResort>,
}

/// What to do, as decided by [`KeyPackagePolicy::plan`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InventoryPlan {
    /// How many one-time packages to generate and upload.
    pub generate_one_time: u32,
    /// Whether to make a new last-resort package and retire the current one.
    pub rotate_last_resort: bool,
    /// Retired last-resort packages whose private keys to delete now.
    pub delete_retired: Vec<Vec<u8>>,
}

impl InventoryPlan {
    /// Whether the plan does nothing.
    pub fn is_empty(&self) -> bool {
        self.generate_one_time == 0 && !self.rotate_last_resort && self.delete_retired.is_empty()
    }
}

impl KeyPackagePolicy {
    /// Decide what to do, given the one-time packages the node reports left
    /// and the time (ms since the Unix epoch).
    pub fn plan(
        &self,
        inventory: &KeyPackageInventory,
        one_time_remaining: u32,
        now_ms: u64,
    ) -> InventoryPlan {
        let generate_one_time = if one_time_remaining < self.refill_below {
            self.target_pool.saturating_sub(one_time_remaining)
        } else {
            0
        };
        let rotate_last_resort = match &inventory.last_resort {
            None => true,
            Some(current) => {
                now_ms.saturating_sub(current.created_at_ms) >= self.last_resort_max_age_ms
                    || current
                        .first_used_at_ms
                        .is_some_and(|used| now_ms.saturating_sub(used) >= self.rotate_after_use_ms)
            }
        };
        let delete_retired = inventory
            .retired
            .iter()
            .filter(|r| now_ms.saturating_sub(r.retired_at_ms) >= self.retired_grace_ms)
            .map(|r| r.hash_ref.clone())
            .collect();
        InventoryPlan {
            generate_one_time,
            rotate_last_resort,
            delete_retired,
        }
    }
}

impl KeyPackageInventory {
    /// Record that the last-resort package `hash_ref` was used (a Welcome
    /// arrived for it) at `now_ms`. Only the first use counts, so that the
    /// rotation debounce runs from it.
    pub fn note_last_resort_used(&mut self, hash_ref: &[u8], now_ms: u64) {
        if let Some(current) = &mut self.last_resort
            && current.hash_ref == hash_ref
            && current.first_used_at_ms.is_none()
        {
            current.first_used_at_ms = Some(now_ms);
        }
    }

    /// The protobuf encoding, for storage.
    pub fn to_bytes(&self) -> Vec<u8> {
        InventoryProto {
            last_resort: self.last_resort.as_ref().map(|r| LastResortProto {
                hash_ref: r.hash_ref.clone(),
                created_at_ms: r.created_at_ms,
                first_used_at_ms: r.first_used_at_ms,
            }),
            retired: self
                .retired
                .iter()
                .map(|r| RetiredProto {
                    hash_ref: r.hash_ref.clone(),
                    retired_at_ms: r.retired_at_ms,
                })
                .collect(),
        }
        .encode_to_vec()
    }

    /// Decode [`KeyPackageInventory::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, prost::DecodeError> {
        let proto = InventoryProto::decode(bytes)?;
        Ok(Self {
            last_resort: proto.last_resort.map(|r| LastResortRecord {
                hash_ref: r.hash_ref,
                created_at_ms: r.created_at_ms,
                first_used_at_ms: r.first_used_at_ms,
            }),
            retired: proto
                .retired
                .into_iter()
                .map(|r| RetiredLastResort {
                    hash_ref: r.hash_ref,
                    retired_at_ms: r.retired_at_ms,
                })
                .collect(),
        })
    }
}

#[derive(Clone, PartialEq, prost::Message)]
struct InventoryProto {
    #[prost(message, optional, tag = "1")]
    last_resort: Option<LastResortProto>,
    #[prost(message, repeated, tag = "2")]
    retired: Vec<RetiredProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LastResortProto {
    #[prost(bytes = "vec", tag = "1")]
    hash_ref: Vec<u8>,
    #[prost(uint64, tag = "2")]
    created_at_ms: u64,
    #[prost(uint64, optional, tag = "3")]
    first_used_at_ms: Option<u64>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RetiredProto {
    #[prost(bytes = "vec", tag = "1")]
    hash_ref: Vec<u8>,
    #[prost(uint64, tag = "2")]
    retired_at_ms: u64,
}

/// The packages [`execute_plan`] made, to be uploaded to the node.
#[derive(Debug, Default)]
pub struct GeneratedKeyPackages {
    /// New one-time packages.
    pub one_time: Vec<KeyPackage>,
    /// The new last-resort package, if it was rotated.
    pub last_resort: Option<KeyPackage>,
}

/// Carry out `plan` at `now_ms`: generate packages (their private keys go
/// into the provider's store), rotate the last-resort package (retiring the
/// old one), and delete the private keys of retired packages past their
/// grace period. Updates `inventory`; the caller persists it in the same
/// storage step as the provider's writes.
pub fn execute_plan(
    provider: &impl openmls::storage::OpenMlsProvider,
    installation: &InstallationKeys,
    inbox: InboxId,
    policy: &KeyPackagePolicy,
    inventory: &mut KeyPackageInventory,
    plan: &InventoryPlan,
    now_ms: u64,
) -> Result<GeneratedKeyPackages, KeyPackageError> {
    let now = now_ms / 1000;
    let done = carry_out(
        provider,
        inventory,
        plan,
        now_ms,
        |last_resort| {
            generate_key_package(
                provider,
                installation,
                inbox,
                now,
                policy.lifetime_secs,
                last_resort,
            )
        },
        |key_package| key_package,
    )?;
    Ok(GeneratedKeyPackages {
        one_time: done.one_time,
        last_resort: done.last_resort,
    })
}

/// The packages [`execute_deniable_plan`] made, with their leaf keys.
#[derive(Debug, Default)]
pub struct GeneratedDeniableKeyPackages {
    /// New one-time packages. Keep each leaf key (in the same storage step)
    /// before uploading: a Welcome for the package needs it.
    pub one_time: Vec<DeniableKeyPackage>,
    /// The new last-resort package, if it was rotated.
    pub last_resort: Option<DeniableKeyPackage>,
    /// The leaf keys of retired last-resort packages whose HPKE keys were
    /// deleted. Delete each one that no DM signs with: a DM joined through
    /// a last-resort package keeps its leaf key for life.
    pub retired_leaf_keys: Vec<[u8; 32]>,
}

/// [`execute_plan`] for the deniable pool: the same policy and inventory
/// rules, with packages from [`generate_deniable_key_package`].
pub fn execute_deniable_plan(
    provider: &impl openmls::storage::OpenMlsProvider,
    rng: &mut impl rand_core::CryptoRngCore,
    policy: &KeyPackagePolicy,
    inventory: &mut KeyPackageInventory,
    plan: &InventoryPlan,
    now_ms: u64,
) -> Result<GeneratedDeniableKeyPackages, KeyPackageError> {
    let now = now_ms / 1000;
    let done = carry_out(
        provider,
        inventory,
        plan,
        now_ms,
        |last_resort| {
            generate_deniable_key_package(provider, rng, now, policy.lifetime_secs, last_resort)
        },
        |made| &made.key_package,
    )?;
    Ok(GeneratedDeniableKeyPackages {
        one_time: done.one_time,
        last_resort: done.last_resort,
        retired_leaf_keys: done
            .retired_leaf_keys
            .into_iter()
            .filter_map(|key| key.try_into().ok())
            .collect(),
    })
}

struct Carried<T> {
    one_time: Vec<T>,
    last_resort: Option<T>,
    retired_leaf_keys: Vec<Vec<u8>>,
}

/// What both plans do; `make(last_resort)` makes one package.
fn carry_out<T>(
    provider: &impl openmls::storage::OpenMlsProvider,
    inventory: &mut KeyPackageInventory,
    plan: &InventoryPlan,
    now_ms: u64,
    mut make: impl FnMut(bool) -> Result<T, KeyPackageError>,
    key_package: impl Fn(&T) -> &KeyPackage,
) -> Result<Carried<T>, KeyPackageError> {
    let mut carried = Carried {
        one_time: Vec::new(),
        last_resort: None,
        retired_leaf_keys: Vec::new(),
    };
    for _ in 0..plan.generate_one_time {
        carried.one_time.push(make(false)?);
    }
    if plan.rotate_last_resort {
        let made = make(true)?;
        let hash_ref = key_package(&made)
            .hash_ref(provider.crypto())
            .map_err(|e| KeyPackageError::Create(e.to_string()))?;
        if let Some(old) = inventory.last_resort.replace(LastResortRecord {
            hash_ref: hash_ref.as_slice().to_vec(),
            created_at_ms: now_ms,
            first_used_at_ms: None,
        }) {
            inventory.retired.push(RetiredLastResort {
                hash_ref: old.hash_ref,
                retired_at_ms: now_ms,
            });
        }
        carried.last_resort = Some(made);
    }
    let storage_error = |e| KeyPackageError::Storage(format!("{e:?}"));
    for hash_ref in &plan.delete_retired {
        let hash_ref_typed = key_package_ref(hash_ref)?;
        let bundle: Option<KeyPackageBundle> = provider
            .storage()
            .key_package(&hash_ref_typed)
            .map_err(storage_error)?;
        if let Some(bundle) = bundle {
            carried.retired_leaf_keys.push(
                bundle
                    .key_package()
                    .leaf_node()
                    .signature_key()
                    .as_slice()
                    .to_vec(),
            );
        }
        provider
            .storage()
            .delete_key_package(&hash_ref_typed)
            .map_err(storage_error)?;
        inventory.retired.retain(|r| &r.hash_ref != hash_ref);
    }
    Ok(carried)
}

/// A `KeyPackageRef` from its raw bytes. OpenMLS offers no public
/// constructor outside its test utilities, so go through its TLS encoding
/// (a variable-length byte vector).
fn key_package_ref(bytes: &[u8]) -> Result<KeyPackageRef, KeyPackageError> {
    use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _, VLBytes};
    let encoded = VLBytes::new(bytes.to_vec())
        .tls_serialize_detached()
        .map_err(|e| KeyPackageError::Storage(format!("hash reference: {e:?}")))?;
    KeyPackageRef::tls_deserialize_exact(encoded.as_slice())
        .map_err(|e| KeyPackageError::Storage(format!("hash reference: {e:?}")))
}

/// Where an installation keeps its [`KeyPackageInventory`].
pub trait KeyPackageInventoryStore {
    /// The store's error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The stored inventory (empty if none was stored).
    fn load_inventory(&self) -> Result<KeyPackageInventory, Self::Error>;

    /// Store `inventory`, replacing the stored one.
    fn save_inventory(&self, inventory: &KeyPackageInventory) -> Result<(), Self::Error>;

    /// The stored inventory of the deniable pool (empty if none was
    /// stored). It is kept apart from the ordinary one: each pool has its
    /// own last-resort package.
    fn load_deniable_inventory(&self) -> Result<KeyPackageInventory, Self::Error>;

    /// Store the deniable pool's `inventory`, replacing the stored one.
    fn save_deniable_inventory(&self, inventory: &KeyPackageInventory) -> Result<(), Self::Error>;
}

/// A [`KeyPackageInventoryStore`] in memory.
#[derive(Debug, Default)]
pub struct MemoryInventoryStore {
    inventory: std::sync::Mutex<KeyPackageInventory>,
    deniable: std::sync::Mutex<KeyPackageInventory>,
}

impl MemoryInventoryStore {
    fn slot(
        slot: &std::sync::Mutex<KeyPackageInventory>,
    ) -> std::sync::MutexGuard<'_, KeyPackageInventory> {
        slot.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl KeyPackageInventoryStore for MemoryInventoryStore {
    type Error = std::convert::Infallible;

    fn load_inventory(&self) -> Result<KeyPackageInventory, Self::Error> {
        Ok(Self::slot(&self.inventory).clone())
    }

    fn save_inventory(&self, inventory: &KeyPackageInventory) -> Result<(), Self::Error> {
        *Self::slot(&self.inventory) = inventory.clone();
        Ok(())
    }

    fn load_deniable_inventory(&self) -> Result<KeyPackageInventory, Self::Error> {
        Ok(Self::slot(&self.deniable).clone())
    }

    fn save_deniable_inventory(&self, inventory: &KeyPackageInventory) -> Result<(), Self::Error> {
        *Self::slot(&self.deniable) = inventory.clone();
        Ok(())
    }
}
