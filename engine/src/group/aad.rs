//! Kith's authenticated data on application messages: a digest of the
//! sender's epoch authenticator and the canonical positions of the commits
//! that led to its epoch (DESIGN.md section 7, fork detection).
//!
//! It is readable without the epoch secret, so that a member on another
//! branch, which cannot decrypt the message, can still tell where the two
//! branches parted and which sorts first. It is not authenticated to a
//! member that cannot decrypt: a reader must treat it as a claim.
//!
//! ```text
//!  "k3" | auth digest (8) | count (1) | count x [ epoch (8) | auth digest (8)
//!                                                | time (8) | node (4) | sequence (8) ]
//! ```

use sha2::{Digest as _, Sha256};

use super::records::OrderKey;

/// How many of its epoch's predecessors a message's authenticated data
/// names (see [`KithAad`]).
pub(crate) const AAD_HISTORY: usize = 6;

/// Kith's authenticated data on application messages, readable without
/// the epoch secret: a digest of the sender's epoch authenticator, and, for
/// the commits that entered the sender's epoch and its [`AAD_HISTORY`]` - 1`
/// predecessors (newest first, as far as the sender knows them), the epoch
/// each left, that epoch's authenticator digest and the commit's canonical
/// position. A member on another branch finds the epoch both were in whose
/// commits differ (where the branches part) and which commit sorts first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KithAad {
    pub(crate) auth_digest: [u8; 8],
    /// `(epoch left, its authenticator digest, commit position)`, newest
    /// first.
    pub(crate) history: Vec<(u64, [u8; 8], OrderKey)>,
}

const AAD_TAG: &[u8; 2] = b"k3";
const AAD_ENTRY: usize = 36;

impl KithAad {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(11 + AAD_ENTRY * self.history.len());
        out.extend_from_slice(AAD_TAG);
        out.extend_from_slice(&self.auth_digest);
        out.push(self.history.len() as u8);
        for (epoch, auth, (time, node, seq)) in &self.history {
            out.extend_from_slice(&epoch.to_be_bytes());
            out.extend_from_slice(auth);
            out.extend_from_slice(&time.to_be_bytes());
            out.extend_from_slice(&node.to_be_bytes());
            out.extend_from_slice(&seq.to_be_bytes());
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
            history.push((
                u64::from_be_bytes(*epoch),
                *auth,
                (
                    u64::from_be_bytes(*time),
                    u32::from_be_bytes(*node),
                    u64::from_be_bytes(*seq),
                ),
            ));
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
