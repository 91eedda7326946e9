//! The key material of deniable DMs (DESIGN.md section 8).
//!
//! MLS signs every message, and OpenMLS has no unsigned mode. A deniable DM
//! therefore signs with keys that nothing public ties to a person, and
//! brings identity in only through MACs that either party could have
//! computed:
//!
//! - **Ephemeral leaf keys.** A deniable key package's leaf signature key is
//!   a fresh Ed25519 key ([`EphemeralKey`]) that signs the package and,
//!   once the package is used, every message of that one DM. Its credential
//!   is a random pseudonym ([`pseudonym_credential`]), not an inbox. The
//!   creator of a deniable DM joins it with a fresh key of its own.
//! - **Bindings.** Inside the encrypted group, each installation sends, for
//!   each installation of the peer, `MAC(k, own ephemeral key ‖ group id ‖
//!   own inbox ‖ own installation)` with `k = HKDF(X25519(own identity key,
//!   peer identity key) ‖ MLS exporter secret)` ([`binding_key`],
//!   [`binding_tag`]). Both ends of a pair compute the same `k`, so each is
//!   convinced of the other, and either could have made the other's tag.
//! - **Uploads.** The node learns who uploaded a pool from a MAC keyed with
//!   `X25519(installation identity key, node static key)` ([`upload_key`]),
//!   which the node could have computed itself: it can check, not prove.
//!
//! Every function here is pure; randomness comes from the caller.

use std::fmt;

use ed25519_dalek::{Signer as _, SigningKey};
use hkdf::Hkdf;
use hmac::{Hmac, Mac as _};
use openmls::prelude::{
    Capabilities, Credential, CredentialType, CredentialWithKey, ExtensionType, KeyPackage,
    KeyPackageIn, OpenMlsCrypto,
};
use openmls_traits::{
    signatures::{Signer, SignerError},
    types::SignatureScheme,
};
use rand_core::CryptoRngCore;
use sha2::Sha256;
use x25519_dalek::{PublicKey as X25519Public, StaticSecret};
use zeroize::Zeroizing;

use super::{
    credential::KITH_CREDENTIAL_TYPE,
    installation::InstallationId,
    key_package::{
        CIPHERSUITE, KITH_EXTENSION_TYPES, KeyPackageError, builder, verify_with_kith_extensions,
    },
    wallet::InboxId,
};

/// The credential type of the pseudonyms deniable leaves carry
/// (private-use range, next to [`KITH_CREDENTIAL_TYPE`]).
pub const PSEUDONYM_CREDENTIAL_TYPE: u16 = 0xff01;

/// The MLS exporter label of the binding secret.
pub const BINDING_EXPORTER_LABEL: &str = "kith deniable binding";

/// The length of the binding exporter secret.
pub const BINDING_EXPORTER_LEN: usize = 32;

const PSEUDONYM_VERSION: u8 = 1;
const PSEUDONYM_LEN: usize = 16;
const BINDING_KEY_INFO: &[u8] = b"kith deniable binding key v1";
const BINDING_TAG_DOMAIN: &[u8] = b"kith deniable binding v1";
const UPLOAD_KEY_INFO: &[u8] = b"kith deniable upload key v1";

/// Whether a DM can be denied (DESIGN.md section 8).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum DmMode {
    /// Leaves carry pseudonyms and per-conversation keys; identity is bound
    /// by MACs either side could have made. The default for DMs.
    #[default]
    Deniable,
    /// Leaves carry the installations' own keys and Kith credentials, as in
    /// groups: every message is signed by a key the sender's wallet vouched
    /// for.
    NonRepudiable,
}

/// Why deniable key material was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeniableError {
    /// A credential that is not a well-formed Kith pseudonym.
    #[error("not a Kith pseudonym credential: {0}")]
    NotAPseudonym(String),
    /// An X25519 public key of small order, whose shared secret is known to
    /// everyone; a binding or upload key from it would prove nothing.
    #[error("the X25519 key {0} is of small order and cannot key a MAC")]
    WeakKey(String),
    /// A tag that does not verify.
    #[error("the {0} MAC does not verify")]
    BadTag(&'static str),
    /// Stored secret bytes of the wrong length.
    #[error("an ephemeral key must be 32 bytes, got {0}")]
    BadKeyLength(usize),
}

/// A per-conversation Ed25519 signature key: the leaf key of a deniable key
/// package, and then of the one DM that used it. Zeroed on drop; never
/// printed.
#[derive(Clone)]
pub struct EphemeralKey(SigningKey);

impl fmt::Debug for EphemeralKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EphemeralKey({})", hex::encode(self.public_key()))
    }
}

impl EphemeralKey {
    /// A fresh key from `rng`.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Self(SigningKey::generate(rng))
    }

    /// The public key, as it appears as a leaf signature key.
    pub fn public_key(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }

    /// The 32-byte seed, for storage.
    pub fn to_secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// A key from bytes written by [`EphemeralKey::to_secret_bytes`].
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, DeniableError> {
        let mut seed = Zeroizing::new([0u8; 32]);
        if bytes.len() != seed.len() {
            return Err(DeniableError::BadKeyLength(bytes.len()));
        }
        seed.copy_from_slice(bytes);
        Ok(Self(SigningKey::from_bytes(&seed)))
    }
}

/// The ephemeral key signs its leaf and the DM's messages.
impl Signer for EphemeralKey {
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, SignerError> {
        Ok(self.0.sign(payload).to_bytes().to_vec())
    }

    fn signature_scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

/// A random pseudonym credential: `0x01 ‖ 16 random bytes`, of type
/// [`PSEUDONYM_CREDENTIAL_TYPE`]. It names nobody; its only job is to be a
/// credential MLS accepts.
pub fn pseudonym_credential(rng: &mut impl CryptoRngCore) -> Credential {
    let mut random = [0u8; PSEUDONYM_LEN];
    rng.fill_bytes(&mut random);
    pseudonym_credential_from_bytes(&random)
}

/// The pseudonym credential with these 16 random bytes, for callers whose
/// randomness comes from elsewhere (an OpenMLS provider).
pub fn pseudonym_credential_from_bytes(random: &[u8; PSEUDONYM_LEN]) -> Credential {
    let mut content = Vec::with_capacity(1 + PSEUDONYM_LEN);
    content.push(PSEUDONYM_VERSION);
    content.extend_from_slice(random);
    Credential::new(CredentialType::Other(PSEUDONYM_CREDENTIAL_TYPE), content)
}

/// Check that `credential` is a well-formed pseudonym.
pub fn check_pseudonym(credential: &Credential) -> Result<(), DeniableError> {
    match credential.credential_type() {
        CredentialType::Other(PSEUDONYM_CREDENTIAL_TYPE) => {}
        other => {
            return Err(DeniableError::NotAPseudonym(format!(
                "credential type {:#06x}",
                u16::from(other)
            )));
        }
    }
    match credential.serialized_content() {
        [PSEUDONYM_VERSION, rest @ ..] if rest.len() == PSEUDONYM_LEN => Ok(()),
        _ => Err(DeniableError::NotAPseudonym(
            "content is not 0x01 and 16 bytes".into(),
        )),
    }
}

/// The leaf capabilities of a deniable key package: the Kith extension types,
/// the last-resort extension and both Kith credential types.
pub fn deniable_capabilities() -> Capabilities {
    Capabilities::builder()
        .extensions(
            KITH_EXTENSION_TYPES
                .iter()
                .map(|t| ExtensionType::Unknown(*t))
                .chain([ExtensionType::LastResort])
                .collect(),
        )
        .credentials(vec![
            CredentialType::Other(KITH_CREDENTIAL_TYPE),
            CredentialType::Other(PSEUDONYM_CREDENTIAL_TYPE),
        ])
        .build()
}

/// A deniable key package and the private key its leaf signs with.
#[derive(Debug)]
pub struct DeniableKeyPackage {
    /// The package, to upload.
    pub key_package: KeyPackage,
    /// Its leaf signature key. The caller keeps it, in the same storage step
    /// as the provider's writes, until the package is used or retired.
    pub leaf_key: EphemeralKey,
}

/// Generate a deniable key package valid from `now` (seconds since the Unix
/// epoch, less an hour for clock skew) for `lifetime_secs`: a fresh leaf
/// key, a fresh pseudonym, signed by that leaf key. OpenMLS stores its HPKE
/// private keys in the provider, as for ordinary packages.
pub fn generate_deniable_key_package(
    provider: &impl openmls::storage::OpenMlsProvider,
    rng: &mut impl CryptoRngCore,
    now: u64,
    lifetime_secs: u64,
    last_resort: bool,
) -> Result<DeniableKeyPackage, KeyPackageError> {
    let leaf_key = EphemeralKey::generate(rng);
    let credential = CredentialWithKey {
        credential: pseudonym_credential(rng),
        signature_key: leaf_key.public_key().to_vec().into(),
    };
    let key_package = builder(deniable_capabilities(), now, lifetime_secs, last_resort)
        .build(CIPHERSUITE, provider, &leaf_key, credential)
        .map(|bundle| bundle.key_package().clone())
        .map_err(|e| KeyPackageError::Create(e.to_string()))?;
    Ok(DeniableKeyPackage {
        key_package,
        leaf_key,
    })
}

/// A deniable key package that passed [`validate_deniable_key_package`].
#[derive(Debug, Clone)]
pub struct ValidatedDeniableKeyPackage {
    /// The key package.
    pub key_package: KeyPackage,
    /// Its leaf signature key.
    pub leaf_key: [u8; 32],
    /// Whether it is a last-resort package.
    pub last_resort: bool,
}

/// Check a deniable key package: its signature by its own leaf key (by
/// OpenMLS), its lifetime at `now` (seconds since the Unix epoch), its
/// capabilities and its pseudonym. Nothing in it says whose it is, so
/// nothing here can check that; the DM's bindings do.
pub fn validate_deniable_key_package(
    crypto: &impl OpenMlsCrypto,
    key_package: KeyPackageIn,
    now: u64,
) -> Result<ValidatedDeniableKeyPackage, KeyPackageError> {
    let key_package = verify_with_kith_extensions(crypto, key_package, now)?;
    let leaf = key_package.leaf_node();
    check_pseudonym(leaf.credential()).map_err(|e| KeyPackageError::Invalid(e.to_string()))?;
    let capabilities = leaf.capabilities();
    if !capabilities
        .credentials()
        .contains(&CredentialType::Other(PSEUDONYM_CREDENTIAL_TYPE))
    {
        return Err(KeyPackageError::MissingCapability(
            "the Kith pseudonym credential type".into(),
        ));
    }
    let leaf_key: [u8; 32] = leaf.signature_key().as_slice().try_into().map_err(|_| {
        KeyPackageError::Invalid("the leaf key is not a 32-byte Ed25519 key".into())
    })?;
    let last_resort = key_package.last_resort();
    Ok(ValidatedDeniableKeyPackage {
        key_package,
        leaf_key,
        last_resort,
    })
}

/// X25519 of `secret` and `public`, refusing a small-order `public`: its
/// shared secret would be all zeros, known to anybody.
fn contributory_dh(
    secret: &StaticSecret,
    public: &[u8; 32],
) -> Result<Zeroizing<[u8; 32]>, DeniableError> {
    let shared = secret.diffie_hellman(&X25519Public::from(*public));
    if !shared.was_contributory() {
        return Err(DeniableError::WeakKey(hex::encode(public)));
    }
    Ok(Zeroizing::new(shared.to_bytes()))
}

/// The binding key of one installation pair in one epoch:
/// `HKDF-SHA256(ikm = X25519(own identity key, peer identity key) ‖
/// exporter)`, where `exporter` is the MLS exporter secret labelled
/// [`BINDING_EXPORTER_LABEL`]. Both installations of the pair compute the
/// same key.
pub fn binding_key(
    own_identity: &StaticSecret,
    peer_identity_key: &[u8; 32],
    exporter: &[u8],
) -> Result<Zeroizing<[u8; 32]>, DeniableError> {
    let dh = contributory_dh(own_identity, peer_identity_key)?;
    let mut ikm = Zeroizing::new(Vec::with_capacity(dh.len() + exporter.len()));
    ikm.extend_from_slice(dh.as_ref());
    ikm.extend_from_slice(exporter);
    Ok(hkdf_32(&ikm, BINDING_KEY_INFO))
}

/// What a binding says: that the leaf signing with `ephemeral_key` in group
/// `group_id` is installation `installation` of `inbox`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingClaim<'a> {
    /// The sender's leaf signature key in the DM.
    pub ephemeral_key: &'a [u8; 32],
    /// The DM's MLS group id.
    pub group_id: &'a [u8],
    /// The sender's inbox.
    pub inbox: InboxId,
    /// The sender's installation.
    pub installation: InstallationId,
}

impl BindingClaim<'_> {
    fn mac(&self, key: &[u8; 32]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as hmac::Mac>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
        mac.update(BINDING_TAG_DOMAIN);
        mac.update(self.ephemeral_key);
        mac.update(&(self.group_id.len() as u32).to_be_bytes());
        mac.update(self.group_id);
        mac.update(self.inbox.as_bytes());
        mac.update(self.installation.as_bytes());
        mac
    }
}

/// The binding tag of `claim` under `key` (HMAC-SHA256).
pub fn binding_tag(key: &[u8; 32], claim: &BindingClaim<'_>) -> [u8; 32] {
    claim.mac(key).finalize().into_bytes().into()
}

/// Check a binding tag in constant time.
pub fn verify_binding_tag(
    key: &[u8; 32],
    claim: &BindingClaim<'_>,
    tag: &[u8],
) -> Result<(), DeniableError> {
    claim
        .mac(key)
        .verify_slice(tag)
        .map_err(|_| DeniableError::BadTag("binding"))
}

/// The key of an installation's deniable uploads to one node:
/// `HKDF-SHA256(X25519(identity key, node static key))`. The installation
/// computes it with its identity secret and the node's public key, the node
/// with its static secret and the installation's identity key.
pub fn upload_key(
    own_secret: &StaticSecret,
    other_public: &[u8; 32],
) -> Result<Zeroizing<[u8; 32]>, DeniableError> {
    let dh = contributory_dh(own_secret, other_public)?;
    Ok(hkdf_32(dh.as_ref(), UPLOAD_KEY_INFO))
}

/// The upload MAC of `message` (HMAC-SHA256).
pub fn upload_tag(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as hmac::Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// Check an upload MAC in constant time.
pub fn verify_upload_tag(key: &[u8; 32], message: &[u8], tag: &[u8]) -> Result<(), DeniableError> {
    let mut mac = <Hmac<Sha256> as hmac::Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(message);
    mac.verify_slice(tag)
        .map_err(|_| DeniableError::BadTag("upload"))
}

fn hkdf_32(ikm: &[u8], info: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    Hkdf::<Sha256>::new(None, ikm)
        .expand(info, out.as_mut())
        .unwrap_or_else(|_| unreachable!("32 bytes is a valid HKDF-SHA256 output length"));
    out
}
