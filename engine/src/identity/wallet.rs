//! Wallets and inboxes: secp256k1 keys, Ethereum addresses (EIP-55) and
//! EIP-191 `personal_sign`.
//!
//! The engine never needs a wallet's private key: it produces the exact text
//! to sign and takes back a 65-byte signature. [`LocalWallet`] is one signer
//! an application can use; a hardware or browser wallet is another.

use std::{fmt, str::FromStr};

use k256::ecdsa::{RecoveryId, Signature, SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;
use sha3::{Digest, Keccak256};

use super::error::IdentityError;

/// keccak-256 of `data`.
pub fn keccak256(data: &[u8]) -> [u8; 32] {
    Keccak256::digest(data).into()
}

/// The EIP-191 (version 0x45, `personal_sign`) hash of `message`:
/// `keccak256("\x19Ethereum Signed Message:\n" ‖ len(message) ‖ message)`,
/// with the length in decimal ASCII.
pub fn eip191_hash(message: &[u8]) -> [u8; 32] {
    let mut hasher = Keccak256::new();
    hasher.update(b"\x19Ethereum Signed Message:\n");
    hasher.update(message.len().to_string().as_bytes());
    hasher.update(message);
    hasher.finalize().into()
}

/// An inbox: the Ethereum address of the wallet that controls it.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct InboxId([u8; 20]);

impl InboxId {
    /// The inbox of a raw 20-byte address.
    pub fn from_bytes(bytes: [u8; 20]) -> Self {
        Self(bytes)
    }

    /// The 20 address bytes.
    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }

    /// The inbox of a secp256k1 public key: the last 20 bytes of the
    /// keccak-256 of the uncompressed point without its `0x04` prefix.
    pub fn from_verifying_key(key: &VerifyingKey) -> Self {
        let point = key.to_encoded_point(false);
        let hash = keccak256(&point.as_bytes()[1..]);
        let mut address = [0u8; 20];
        address.copy_from_slice(&hash[12..]);
        Self(address)
    }

    /// The EIP-55 mixed-case checksummed form, with `0x`.
    pub fn to_checksummed(&self) -> String {
        let lower = hex::encode(self.0);
        let hash = keccak256(lower.as_bytes());
        let mut out = String::with_capacity(42);
        out.push_str("0x");
        for (i, c) in lower.chars().enumerate() {
            let nibble = (hash[i / 2] >> (if i % 2 == 0 { 4 } else { 0 })) & 0x0f;
            out.push(if nibble >= 8 {
                c.to_ascii_uppercase()
            } else {
                c
            });
        }
        out
    }
}

impl fmt::Display for InboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_checksummed())
    }
}

impl fmt::Debug for InboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InboxId({self})")
    }
}

impl FromStr for InboxId {
    type Err = IdentityError;

    /// Accepts `0x` followed by 40 hex digits in any case. All-lowercase and
    /// all-uppercase inputs carry no checksum; a mixed-case input must match
    /// its EIP-55 checksum exactly.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .ok_or_else(|| IdentityError::InvalidAddress(s.to_owned()))?;
        if digits.len() != 40 {
            return Err(IdentityError::InvalidAddress(s.to_owned()));
        }
        let mut bytes = [0u8; 20];
        hex::decode_to_slice(digits, &mut bytes)
            .map_err(|_| IdentityError::InvalidAddress(s.to_owned()))?;
        let inbox = Self(bytes);
        let has_lower = digits.chars().any(|c| c.is_ascii_lowercase());
        let has_upper = digits.chars().any(|c| c.is_ascii_uppercase());
        if has_lower && has_upper && inbox.to_checksummed()[2..] != *digits {
            return Err(IdentityError::BadChecksum(s.to_owned()));
        }
        Ok(inbox)
    }
}

/// Recover the inbox whose wallet made the EIP-191 `signature` (r ‖ s ‖ v)
/// over `message`.
///
/// Only the canonical encoding is accepted: v in {27, 28} and s in the lower
/// half of the curve order (EIP-2), as `personal_sign` produces it.
/// Accepting {0, 1} or a high s too would give every signature a second
/// valid byte string, and identity logs must not be malleable.
pub fn recover_signer(message: &[u8], signature: &[u8; 65]) -> Result<InboxId, IdentityError> {
    let bad = |why: &str| IdentityError::BadWalletSignature(why.to_owned());
    let v = match signature[64] {
        27 | 28 => signature[64] - 27,
        _ => return Err(bad("v must be 27 or 28")),
    };
    let recovery_id = RecoveryId::from_byte(v).ok_or_else(|| bad("bad recovery id"))?;
    let signature =
        Signature::from_slice(&signature[..64]).map_err(|_| bad("r or s out of range"))?;
    if signature.normalize_s().is_some() {
        return Err(bad("s is in the upper half of the order (not canonical)"));
    }
    let key = VerifyingKey::recover_from_prehash(&eip191_hash(message), &signature, recovery_id)
        .map_err(|_| bad("signature does not recover to a public key"))?;
    Ok(InboxId::from_verifying_key(&key))
}

/// A wallet whose secp256k1 private key lives in this process. Useful for
/// bots, tests and custodial setups; other wallets sign the same texts
/// elsewhere and hand back the 65-byte signature.
#[derive(Clone)]
pub struct LocalWallet {
    key: SigningKey,
}

impl fmt::Debug for LocalWallet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalWallet")
            .field("inbox_id", &self.inbox_id())
            .finish_non_exhaustive()
    }
}

impl LocalWallet {
    /// A wallet from a 32-byte private key in hex, with or without `0x`.
    pub fn from_private_key_hex(hex_key: &str) -> Result<Self, IdentityError> {
        let digits = hex_key.strip_prefix("0x").unwrap_or(hex_key);
        let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(digits, bytes.as_mut())
            .map_err(|e| IdentityError::InvalidPrivateKey(e.to_string()))?;
        let key = SigningKey::from_bytes(bytes.as_ref().into())
            .map_err(|_| IdentityError::InvalidPrivateKey("not a valid secp256k1 scalar".into()))?;
        Ok(Self { key })
    }

    /// A new wallet from `rng`.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Self {
            key: SigningKey::random(rng),
        }
    }

    /// The inbox this wallet controls.
    pub fn inbox_id(&self) -> InboxId {
        InboxId::from_verifying_key(self.key.verifying_key())
    }

    /// EIP-191 `personal_sign` of `message`: r ‖ s ‖ v with v in {27, 28}
    /// and s in the lower half of the order, as Ethereum requires.
    pub fn sign_personal(&self, message: &[u8]) -> [u8; 65] {
        let hash = eip191_hash(message);
        // Signing a 32-byte prehash with a valid key cannot fail: k256 only
        // errors on prehashes shorter than half the field size.
        #[allow(clippy::expect_used)]
        let (signature, recovery_id) = self
            .key
            .sign_prehash_recoverable(&hash)
            .expect("a 32-byte prehash is always signable");
        let mut out = [0u8; 65];
        out[..64].copy_from_slice(&signature.to_bytes());
        out[64] = 27 + recovery_id.to_byte();
        out
    }
}
