//! The Kith MLS credential, and the check that a leaf speaks for its inbox.
//!
//! A Kith credential has credential type [`KITH_CREDENTIAL_TYPE`] and its
//! content is `0x01 ‖ 20-byte inbox address` (a version byte, then the
//! address). The leaf's signature key is the installation's Ed25519 key, so
//! the pair (credential, signature key) names an inbox and an installation;
//! [`validate_leaf`] accepts it only if that installation is active in the
//! inbox's identity log.

use openmls::prelude::{Credential, CredentialType};

use super::{installation::InstallationId, log::IdentityState, wallet::InboxId};

/// The credential type of Kith credentials (private-use range).
pub const KITH_CREDENTIAL_TYPE: u16 = 0xff00;

const CREDENTIAL_VERSION: u8 = 1;

/// Why a leaf was not accepted as a member of an inbox.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// Not a Kith credential.
    #[error("credential type {0:#06x} is not the Kith credential type")]
    WrongCredentialType(u16),
    /// A Kith credential whose content is not `0x01 ‖ 20 bytes`.
    #[error("malformed Kith credential")]
    Malformed,
    /// The credential names another inbox than the identity log given.
    #[error("credential names inbox {credential}, but the identity log is {log}")]
    WrongInbox {
        /// The inbox in the credential.
        credential: String,
        /// The inbox of the identity log.
        log: String,
    },
    /// The signature key is not an Ed25519 public key.
    #[error("leaf signature key is not a 32-byte Ed25519 key")]
    BadSignatureKey,
    /// The installation was revoked.
    #[error("installation {0} was revoked")]
    Revoked(String),
    /// The installation is not in the inbox's identity log.
    #[error("installation {0} is not an active installation of the inbox")]
    NotAnInstallation(String),
}

/// The Kith credential of `inbox`.
pub fn kith_credential(inbox: InboxId) -> Credential {
    let mut content = Vec::with_capacity(21);
    content.push(CREDENTIAL_VERSION);
    content.extend_from_slice(inbox.as_bytes());
    Credential::new(CredentialType::Other(KITH_CREDENTIAL_TYPE), content)
}

/// The inbox a Kith credential names.
pub fn credential_inbox(credential: &Credential) -> Result<InboxId, CredentialError> {
    match credential.credential_type() {
        CredentialType::Other(KITH_CREDENTIAL_TYPE) => {}
        other => return Err(CredentialError::WrongCredentialType(u16::from(other))),
    }
    match credential.serialized_content() {
        [CREDENTIAL_VERSION, address @ ..] => address
            .try_into()
            .map(InboxId::from_bytes)
            .map_err(|_| CredentialError::Malformed),
        _ => Err(CredentialError::Malformed),
    }
}

/// Accept a leaf (its credential and signature key) only if the key is an
/// active installation of the credential's inbox in `state`. Returns the
/// installation.
pub fn validate_leaf(
    credential: &Credential,
    signature_key: &[u8],
    state: &IdentityState,
) -> Result<InstallationId, CredentialError> {
    let inbox = credential_inbox(credential)?;
    if inbox != state.inbox() {
        return Err(CredentialError::WrongInbox {
            credential: inbox.to_string(),
            log: state.inbox().to_string(),
        });
    }
    let installation = InstallationId(
        signature_key
            .try_into()
            .map_err(|_| CredentialError::BadSignatureKey)?,
    );
    if state.is_revoked(&installation) {
        return Err(CredentialError::Revoked(installation.to_string()));
    }
    if !state.is_active(&installation) {
        return Err(CredentialError::NotAnInstallation(installation.to_string()));
    }
    Ok(installation)
}
