//! Installations: one app install on one device, with its two keys.
//!
//! - An **Ed25519 signature key**: the installation's MLS leaf signature key
//!   in groups, and its id ([`InstallationId`] is the public key).
//! - An **X25519 identity key**: used later to bind deniable DMs.
//!
//! Both come from an injected RNG (the engine never reaches for OS
//! randomness itself) and are persisted through [`InstallationStore`], which
//! `kith-storage` implements over sled; [`MemoryInstallationStore`] is the
//! in-memory implementation for tests and ephemeral clients.

use std::{fmt, sync::Mutex};

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use openmls_traits::{
    signatures::{Signer, SignerError},
    types::SignatureScheme,
};
use rand_core::CryptoRngCore;
use x25519_dalek::{PublicKey as X25519Public, StaticSecret};
use zeroize::Zeroizing;

use super::error::IdentityError;

/// An installation's id: its Ed25519 public key.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct InstallationId(pub [u8; 32]);

impl InstallationId {
    /// All zeros: the sender of a message whose leaf left the group before
    /// the message was processed (its inbox is still known).
    pub const UNKNOWN: Self = Self([0; 32]);

    /// The raw public key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for InstallationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for InstallationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InstallationId({self})")
    }
}

/// The private keys of one installation. Zeroed on drop; never printed.
#[derive(Clone)]
pub struct InstallationKeys {
    signing: SigningKey,
    identity: StaticSecret,
}

impl fmt::Debug for InstallationKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstallationKeys")
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}

/// The length of [`InstallationKeys::to_secret_bytes`].
pub const INSTALLATION_KEYS_LEN: usize = 64;

impl InstallationKeys {
    /// New keys from `rng`.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let signing = SigningKey::generate(rng);
        let mut identity = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(identity.as_mut());
        Self {
            signing,
            identity: StaticSecret::from(*identity),
        }
    }

    /// The installation's id (its Ed25519 public key).
    pub fn id(&self) -> InstallationId {
        InstallationId(self.signing.verifying_key().to_bytes())
    }

    /// The X25519 public identity key.
    pub fn identity_public_key(&self) -> [u8; 32] {
        X25519Public::from(&self.identity).to_bytes()
    }

    /// The X25519 secret, for the DH of deniable DMs.
    pub fn identity_secret(&self) -> &StaticSecret {
        &self.identity
    }

    /// An Ed25519 signature over `message` by the installation key.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    /// The 64 secret bytes (Ed25519 seed ‖ X25519 secret), for storage.
    pub fn to_secret_bytes(&self) -> Zeroizing<[u8; INSTALLATION_KEYS_LEN]> {
        let mut out = Zeroizing::new([0u8; INSTALLATION_KEYS_LEN]);
        out[..32].copy_from_slice(&self.signing.to_bytes());
        out[32..].copy_from_slice(self.identity.as_bytes());
        out
    }

    /// Keys from bytes written by [`InstallationKeys::to_secret_bytes`].
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, IdentityError> {
        let bytes: &[u8; INSTALLATION_KEYS_LEN] = bytes.try_into().map_err(|_| {
            IdentityError::InvalidKey(format!(
                "installation keys must be {INSTALLATION_KEYS_LEN} bytes, got {}",
                bytes.len()
            ))
        })?;
        let mut seed = Zeroizing::new([0u8; 32]);
        seed.copy_from_slice(&bytes[..32]);
        let mut identity = Zeroizing::new([0u8; 32]);
        identity.copy_from_slice(&bytes[32..]);
        Ok(Self {
            signing: SigningKey::from_bytes(&seed),
            identity: StaticSecret::from(*identity),
        })
    }
}

/// The installation key signs MLS leaves and messages.
impl Signer for InstallationKeys {
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, SignerError> {
        Ok(self.signing.sign(payload).to_bytes().to_vec())
    }

    fn signature_scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

/// Verify an Ed25519 signature by installation `id`.
pub fn verify_installation_signature(
    id: &InstallationId,
    message: &[u8],
    signature: &[u8; 64],
) -> Result<(), IdentityError> {
    let key = VerifyingKey::from_bytes(&id.0)
        .map_err(|_| IdentityError::InvalidKey("not an Ed25519 public key".into()))?;
    key.verify_strict(message, &ed25519_dalek::Signature::from_bytes(signature))
        .map_err(|_| IdentityError::BadProofOfPossession)
}

/// Where an installation keeps its own keys.
pub trait InstallationStore {
    /// The store's error.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The stored keys, if any.
    fn load_installation(&self) -> Result<Option<InstallationKeys>, Self::Error>;

    /// Store `keys`, replacing any stored ones.
    fn save_installation(&self, keys: &InstallationKeys) -> Result<(), Self::Error>;
}

/// Load the installation's keys, or generate and store them on first use.
pub fn load_or_create_installation<S: InstallationStore>(
    store: &S,
    rng: &mut impl CryptoRngCore,
) -> Result<InstallationKeys, S::Error> {
    if let Some(keys) = store.load_installation()? {
        return Ok(keys);
    }
    let keys = InstallationKeys::generate(rng);
    store.save_installation(&keys)?;
    Ok(keys)
}

/// An [`InstallationStore`] in memory.
#[derive(Debug, Default)]
pub struct MemoryInstallationStore {
    keys: Mutex<Option<InstallationKeys>>,
}

impl InstallationStore for MemoryInstallationStore {
    type Error = std::convert::Infallible;

    fn load_installation(&self) -> Result<Option<InstallationKeys>, Self::Error> {
        Ok(self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone())
    }

    fn save_installation(&self, keys: &InstallationKeys) -> Result<(), Self::Error> {
        *self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(keys.clone());
        Ok(())
    }
}
