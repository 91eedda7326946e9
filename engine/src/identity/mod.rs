//! Identity: who is a member, which devices speak for a user, and how a
//! stranger gets the key material to add someone (DESIGN.md sections 3
//! and 4).
//!
//! ```text
//!  wallet (secp256k1) ──EIP-191 signs──► IdentityUpdate (AddInstallation / RevokeInstallation)
//!     │ inbox = EIP-55 address              │ + installation's Ed25519 proof of possession
//!     ▼                                     ▼
//!  InboxId ◄──────────── IdentityState::apply (verifies, in sequence) ──► active installations
//!                                           │
//!  KeyPackage / leaf (Kith credential = inbox, signature key = installation)
//!     └── validate_key_package / validate_leaf: accepted only if the installation is active
//! ```
//!
//! Everything here is sans-IO: time comes in as a parameter, randomness from
//! an injected RNG, and persistence through [`InstallationStore`] and
//! [`KeyPackageInventoryStore`].

mod credential;
mod deniable;
mod error;
mod installation;
mod inventory;
mod key_package;
mod log;
mod wallet;

pub use credential::{
    CredentialError, KITH_CREDENTIAL_TYPE, credential_inbox, kith_credential, validate_leaf,
};
pub use deniable::{
    BINDING_EXPORTER_LABEL, BINDING_EXPORTER_LEN, BindingClaim, DeniableError, DeniableKeyPackage,
    DmMode, EphemeralKey, PSEUDONYM_CREDENTIAL_TYPE, ValidatedDeniableKeyPackage, binding_key,
    binding_tag, check_pseudonym, deniable_capabilities, generate_deniable_key_package,
    pseudonym_credential, pseudonym_credential_from_bytes, upload_key, upload_tag,
    validate_deniable_key_package, verify_binding_tag, verify_upload_tag,
};
pub use error::IdentityError;
pub use installation::{
    INSTALLATION_KEYS_LEN, InstallationId, InstallationKeys, InstallationStore,
    MemoryInstallationStore, load_or_create_installation, verify_installation_signature,
};
pub use inventory::{
    GeneratedDeniableKeyPackages, GeneratedKeyPackages, InventoryPlan, KeyPackageInventory,
    KeyPackageInventoryStore, KeyPackagePolicy, LastResortRecord, MemoryInventoryStore,
    RetiredLastResort, execute_deniable_plan, execute_plan,
};
pub use key_package::{
    CIPHERSUITE, DEFAULT_LIFETIME_SECS, KITH_EXTENSION_TYPES, KeyPackageError, ValidatedKeyPackage,
    generate_key_package, kith_capabilities, leaf_lifetime, validate_key_package,
};
pub use log::{
    ActiveInstallation, DEFAULT_MAX_INSTALLATIONS, IdentityConfig, IdentityState, IdentityUpdate,
    LogError, UnsignedIdentityUpdate, UpdateAction,
};
pub use wallet::{InboxId, LocalWallet, eip191_hash, keccak256, recover_signer};

#[cfg(any(test, feature = "test-suite"))]
pub mod test_suite;
