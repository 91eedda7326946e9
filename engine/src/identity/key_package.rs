//! Key packages: generating them with Kith's capabilities and checking the
//! ones a stranger hands us. Keeping an installation's pool of them on the
//! node is the inventory's (`inventory`).
//!
//! Private keys: OpenMLS deletes a one-time package's private keys when the
//! Welcome that used it is processed.

use openmls::prelude::{
    Capabilities, Ciphersuite, CredentialType, CredentialWithKey, ExtensionType, KeyPackage,
    KeyPackageIn, Lifetime, OpenMlsCrypto, ProtocolVersion,
};

use super::{
    credential::{CredentialError, KITH_CREDENTIAL_TYPE, kith_credential, validate_leaf},
    installation::{InstallationId, InstallationKeys},
    log::IdentityState,
    wallet::InboxId,
};

/// The cipher suite Kith uses.
pub const CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// The Kith GroupContext extension types (DESIGN.md section 5): immutable
/// metadata, mutable metadata, policies, membership, gating rules.
pub const KITH_EXTENSION_TYPES: [u16; 5] = [0xff10, 0xff11, 0xff12, 0xff13, 0xff14];

/// How long a key package is valid by default: 84 days, the longest range
/// OpenMLS accepts. Last-resort packages are rotated well before that.
pub const DEFAULT_LIFETIME_SECS: u64 = 60 * 60 * 24 * 84;

/// How far `not_before` is set in the past, to tolerate clock skew.
const CLOCK_SKEW_SECS: u64 = 60 * 60;

/// Why a key package was not accepted or could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyPackageError {
    /// OpenMLS rejected it: a bad signature, bad keys, or an unsupported
    /// version or extension.
    #[error("invalid key package: {0}")]
    Invalid(String),
    /// Its lifetime has ended.
    #[error("key package expired at {not_after} (now {now})")]
    Expired {
        /// End of its lifetime, seconds since the Unix epoch.
        not_after: u64,
        /// The time it was checked at.
        now: u64,
    },
    /// OpenMLS found its lifetime invalid against the system clock (expired,
    /// not yet valid, or a range longer than OpenMLS accepts).
    #[error("key package lifetime rejected: {0}")]
    Lifetime(String),
    /// Its lifetime has not begun.
    #[error("key package is not valid before {not_before} (now {now})")]
    NotYetValid {
        /// Start of its lifetime, seconds since the Unix epoch.
        not_before: u64,
        /// The time it was checked at.
        now: u64,
    },
    /// Its leaf does not list a capability Kith needs.
    #[error("key package leaf lacks the capability {0}")]
    MissingCapability(String),
    /// Its credential is not an active installation of the inbox.
    #[error(transparent)]
    Credential(#[from] CredentialError),
    /// OpenMLS failed to build or store a key package.
    #[error("could not create a key package: {0}")]
    Create(String),
    /// The OpenMLS store failed.
    #[error("key package storage failed: {0}")]
    Storage(String),
}

/// The leaf capabilities of every Kith installation: the Kith extension
/// types, the last-resort key-package extension (a key package may only
/// carry extensions its leaf lists) and the Kith credential type, on top of
/// OpenMLS's defaults.
pub fn kith_capabilities() -> Capabilities {
    Capabilities::builder()
        .extensions(
            KITH_EXTENSION_TYPES
                .iter()
                .map(|t| ExtensionType::Unknown(*t))
                .chain([ExtensionType::LastResort])
                .collect(),
        )
        .credentials(vec![CredentialType::Other(KITH_CREDENTIAL_TYPE)])
        .build()
}

/// Generate a key package for `installation` of `inbox`, valid from `now`
/// (seconds since the Unix epoch, less an hour for clock skew) for
/// `lifetime_secs`. OpenMLS stores its private keys in the provider.
pub fn generate_key_package(
    provider: &impl openmls::storage::OpenMlsProvider,
    installation: &InstallationKeys,
    inbox: InboxId,
    now: u64,
    lifetime_secs: u64,
    last_resort: bool,
) -> Result<KeyPackage, KeyPackageError> {
    let credential = CredentialWithKey {
        credential: kith_credential(inbox),
        signature_key: installation.id().as_bytes().to_vec().into(),
    };
    builder(kith_capabilities(), now, lifetime_secs, last_resort)
        .build(CIPHERSUITE, provider, installation, credential)
        .map(|bundle| bundle.key_package().clone())
        .map_err(|e| KeyPackageError::Create(e.to_string()))
}

/// The lifetime of a leaf made at `now` (seconds since the Unix epoch) for
/// `lifetime_secs`, starting an hour early for clock skew. Taken from the
/// time the engine is given, never from the system clock.
pub fn leaf_lifetime(now: u64, lifetime_secs: u64) -> Lifetime {
    Lifetime::init(now.saturating_sub(CLOCK_SKEW_SECS), now + lifetime_secs)
}

/// The builder both kinds of key package start from: `capabilities`, a
/// lifetime from `now` (seconds since the Unix epoch, less an hour for
/// clock skew) for `lifetime_secs`, and the last-resort mark if asked.
pub(super) fn builder(
    capabilities: Capabilities,
    now: u64,
    lifetime_secs: u64,
    last_resort: bool,
) -> openmls::prelude::KeyPackageBuilder {
    let builder = KeyPackage::builder()
        .leaf_node_capabilities(capabilities)
        .key_package_lifetime(leaf_lifetime(now, lifetime_secs));
    if last_resort {
        builder.mark_as_last_resort()
    } else {
        builder
    }
}

/// A key package that passed [`validate_key_package`].
#[derive(Debug, Clone)]
pub struct ValidatedKeyPackage {
    /// The key package.
    pub key_package: KeyPackage,
    /// The installation it belongs to.
    pub installation: InstallationId,
    /// Whether it is a last-resort package.
    pub last_resort: bool,
}

/// Check a key package received from the node or a peer: its signatures
/// (by OpenMLS), its lifetime at `now` (seconds since the Unix epoch), the
/// Kith capabilities, and that its credential is an active installation in
/// `identity`.
///
/// OpenMLS also checks the lifetime against the system clock while
/// verifying; the check against `now` is the one the engine relies on.
pub fn validate_key_package(
    crypto: &impl OpenMlsCrypto,
    key_package: KeyPackageIn,
    now: u64,
    identity: &IdentityState,
) -> Result<ValidatedKeyPackage, KeyPackageError> {
    let key_package = verify_with_kith_extensions(crypto, key_package, now)?;
    let leaf = key_package.leaf_node();
    let capabilities = leaf.capabilities();
    if !capabilities
        .credentials()
        .contains(&CredentialType::Other(KITH_CREDENTIAL_TYPE))
    {
        return Err(KeyPackageError::MissingCapability(
            "the Kith credential type".into(),
        ));
    }
    let installation = validate_leaf(leaf.credential(), leaf.signature_key().as_slice(), identity)?;
    let last_resort = key_package.last_resort();
    Ok(ValidatedKeyPackage {
        key_package,
        installation,
        last_resort,
    })
}

/// What every Kith key package must pass, ordinary or deniable: its
/// signatures (by OpenMLS), its lifetime at `now` (seconds since the Unix
/// epoch), and the Kith extension types among its leaf's capabilities.
pub(super) fn verify_with_kith_extensions(
    crypto: &impl OpenMlsCrypto,
    key_package: KeyPackageIn,
    now: u64,
) -> Result<KeyPackage, KeyPackageError> {
    let key_package = key_package
        .validate(crypto, ProtocolVersion::Mls10)
        .map_err(|e| match e {
            openmls::prelude::KeyPackageVerifyError::LifetimeError(_) => {
                KeyPackageError::Lifetime(e.to_string())
            }
            other => KeyPackageError::Invalid(other.to_string()),
        })?;
    let lifetime = key_package.life_time();
    if now > lifetime.not_after() {
        return Err(KeyPackageError::Expired {
            not_after: lifetime.not_after(),
            now,
        });
    }
    if now < lifetime.not_before() {
        return Err(KeyPackageError::NotYetValid {
            not_before: lifetime.not_before(),
            now,
        });
    }
    let capabilities = key_package.leaf_node().capabilities();
    for extension in KITH_EXTENSION_TYPES {
        if !capabilities
            .extensions()
            .contains(&ExtensionType::Unknown(extension))
        {
            return Err(KeyPackageError::MissingCapability(format!(
                "extension {extension:#06x}"
            )));
        }
    }
    Ok(key_package)
}
