//! Kith's authenticated data on application messages: a digest of the
//! sender's epoch authenticator and, for the commits that led to its
//! epoch, claims of their canonical positions (DESIGN.md section 7, fork
//! detection).
//!
//! It is readable without the epoch secret, so that a member on another
//! branch, which cannot decrypt the message, can still tell where the two
//! branches parted and which sorts first. Because anyone can publish to a
//! group topic and the bytes are plaintext, each claim carries a MAC keyed
//! by an exporter secret of the epoch it is about ([`claim_mac`]): only a
//! member of that epoch can make one, and a reader checks it with the key
//! it kept when it left that epoch itself. A claim is still only a claim
//! (a member may lie about a position): the fork monitor acts on it only
//! together with the commit envelope it names (docs/conflict-resolution.md).
//!
//! ```text
//!  "k4" | auth digest (8) | count (1) | count x [ epoch (8) | auth digest (8)
//!                      | time (8) | node (4) | sequence (8) | MAC (16) ]
//! ```

use hmac::{Hmac, Mac};
use sha2::{Digest as _, Sha256};

use super::records::OrderKey;

/// How many of its epoch's predecessors a message's authenticated data
/// names (see [`KithAad`]).
pub(crate) const AAD_HISTORY: usize = 6;

/// The MLS exporter label of the key that MACs claims about an epoch.
pub(crate) const CLAIM_EXPORTER_LABEL: &str = "kith branch claim v1";

/// One claim of a branch: the commit that left `epoch` (whose
/// authenticator digest is `auth_digest`) sits at `key` on the topic,
/// MACed by a member of `epoch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BranchClaim {
    pub(crate) epoch: u64,
    pub(crate) auth_digest: [u8; 8],
    pub(crate) key: OrderKey,
    pub(crate) mac: [u8; 16],
}

impl BranchClaim {
    /// The claim that the commit at `key` left `epoch`, MACed with
    /// `claim_key`, the exporter secret of `epoch` in `group_id`.
    pub(crate) fn new(
        group_id: &[u8],
        claim_key: &[u8; 32],
        epoch: u64,
        auth_digest: [u8; 8],
        key: OrderKey,
    ) -> Self {
        let mac = claim_mac(claim_key, group_id, epoch, auth_digest, key);
        Self {
            epoch,
            auth_digest,
            key,
            mac,
        }
    }

    /// Whether the MAC verifies under `claim_key` (this reader's exporter
    /// secret of the claim's epoch): then a member of that epoch made it.
    pub(crate) fn verifies(&self, group_id: &[u8], claim_key: &[u8; 32]) -> bool {
        claim_hmac(claim_key, group_id, self.epoch, self.auth_digest, self.key)
            .verify_truncated_left(&self.mac)
            .is_ok()
    }
}

/// The MAC of a branch claim: HMAC-SHA256 keyed by the epoch's claim key,
/// over the group id and the claim, truncated to 16 bytes.
pub(crate) fn claim_mac(
    claim_key: &[u8; 32],
    group_id: &[u8],
    epoch: u64,
    auth_digest: [u8; 8],
    key: OrderKey,
) -> [u8; 16] {
    let tag = claim_hmac(claim_key, group_id, epoch, auth_digest, key)
        .finalize()
        .into_bytes();
    let mut out = [0u8; 16];
    out.copy_from_slice(&tag[..16]);
    out
}

fn claim_hmac(
    claim_key: &[u8; 32],
    group_id: &[u8],
    epoch: u64,
    auth_digest: [u8; 8],
    key: OrderKey,
) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(claim_key)
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"));
    mac.update(b"kith branch claim v1");
    mac.update(&(group_id.len() as u32).to_be_bytes());
    mac.update(group_id);
    mac.update(&epoch.to_be_bytes());
    mac.update(&auth_digest);
    mac.update(&key.0.to_be_bytes());
    mac.update(&key.1.to_be_bytes());
    mac.update(&key.2.to_be_bytes());
    mac
}

/// Kith's authenticated data on application messages, readable without
/// the epoch secret: a digest of the sender's epoch authenticator, and, for
/// the commits that entered the sender's epoch and its [`AAD_HISTORY`]` - 1`
/// predecessors (newest first, as far as the sender can claim them), a
/// [`BranchClaim`]. A member on another branch finds the epoch both were
/// in whose commits differ (where the branches part) and which commit
/// sorts first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KithAad {
    pub(crate) auth_digest: [u8; 8],
    /// Newest first.
    pub(crate) history: Vec<BranchClaim>,
}

const AAD_TAG: &[u8; 2] = b"k4";
const AAD_ENTRY: usize = 52;

impl KithAad {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(11 + AAD_ENTRY * self.history.len());
        out.extend_from_slice(AAD_TAG);
        out.extend_from_slice(&self.auth_digest);
        out.push(self.history.len() as u8);
        for claim in &self.history {
            let (time, node, seq) = claim.key;
            out.extend_from_slice(&claim.epoch.to_be_bytes());
            out.extend_from_slice(&claim.auth_digest);
            out.extend_from_slice(&time.to_be_bytes());
            out.extend_from_slice(&node.to_be_bytes());
            out.extend_from_slice(&seq.to_be_bytes());
            out.extend_from_slice(&claim.mac);
        }
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        let rest = bytes.strip_prefix(AAD_TAG)?;
        let (digest, rest) = rest.split_first_chunk::<8>()?;
        let (count, mut rest) = rest.split_first()?;
        if usize::from(*count) > AAD_HISTORY || rest.len() != usize::from(*count) * AAD_ENTRY {
            return None;
        }
        let mut history = Vec::with_capacity(usize::from(*count));
        for _ in 0..*count {
            let (epoch, r) = rest.split_first_chunk::<8>()?;
            let (auth, r) = r.split_first_chunk::<8>()?;
            let (time, r) = r.split_first_chunk::<8>()?;
            let (node, r) = r.split_first_chunk::<4>()?;
            let (seq, r) = r.split_first_chunk::<8>()?;
            let (mac, r) = r.split_first_chunk::<16>()?;
            history.push(BranchClaim {
                epoch: u64::from_be_bytes(*epoch),
                auth_digest: *auth,
                key: (
                    u64::from_be_bytes(*time),
                    u32::from_be_bytes(*node),
                    u64::from_be_bytes(*seq),
                ),
                mac: *mac,
            });
            rest = r;
        }
        Some(Self {
            auth_digest: *digest,
            history,
        })
    }
}

/// The digest of an epoch authenticator that members publish and compare:
/// the first 8 bytes of a domain-separated SHA-256. It names an epoch of
/// one branch without revealing the authenticator.
pub(crate) fn auth_digest(authenticator: &[u8]) -> [u8; 8] {
    let hash = Sha256::new()
        .chain_update(b"kith epoch digest v1")
        .chain_update(authenticator)
        .finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&hash[..8]);
    out
}
