//! Who acts in a group: [`Me`], the installation's inbox and keys, and
//! the key its leaf signs with, which in a deniable DM is not the
//! installation's (DESIGN.md section 8).

use openmls_traits::{
    signatures::{Signer, SignerError},
    types::SignatureScheme,
};

use crate::identity::{EphemeralKey, InboxId, InstallationKeys};

/// The installation acting: its inbox and keys.
#[derive(Debug, Clone, Copy)]
pub struct Me<'a> {
    /// The inbox.
    pub inbox: InboxId,
    /// The installation's keys (its leaf signature key).
    pub keys: &'a InstallationKeys,
}

/// The key a group signs with: the installation's own, or, in a deniable
/// DM, the leaf's ephemeral key.
#[derive(Debug, Clone, Copy)]
pub(crate) enum GroupSigner<'a> {
    Installation(&'a InstallationKeys),
    Ephemeral(&'a EphemeralKey),
}

impl Signer for GroupSigner<'_> {
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, SignerError> {
        match self {
            Self::Installation(keys) => Signer::sign(*keys, payload),
            Self::Ephemeral(key) => Signer::sign(*key, payload),
        }
    }

    fn signature_scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

/// The key a group signs with, given its ephemeral key (a deniable DM's)
/// and the installation acting. A free function, so that it borrows only
/// the key, not the whole group, while OpenMLS mutates the MLS group.
pub(crate) fn signer<'a>(ephemeral: &'a Option<EphemeralKey>, me: Me<'a>) -> GroupSigner<'a> {
    match ephemeral {
        Some(key) => GroupSigner::Ephemeral(key),
        None => GroupSigner::Installation(me.keys),
    }
}
