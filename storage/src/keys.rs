//! The key layout of OpenMLS state in sled.
//!
//! Everything lives in one sled tree, so that the writes of one step can be
//! applied as one atomic batch. Keys are:
//!
//! ```text
//! group-scoped:  'g' | u32 BE len | group id | kind tag | sub-key
//! global:        kind tag | key
//! ```
//!
//! The group id comes first (after the namespace byte), and is length
//! prefixed so that no group id is a prefix of another one: one prefix scan
//! over `'g' | len | group id` finds exactly one group's entries. Group ids
//! and sub-keys are the JSON encoding of the key values OpenMLS hands us.
//! Keys are encoded with JSON whatever the value codec is, so the layout does
//! not depend on the codec.

use serde::Serialize;

use crate::error::StorageError;

/// The namespace byte of group-scoped entries.
const GROUP_NAMESPACE: u8 = b'g';

/// What a stored entry is. Group-scoped kinds live under their group's
/// prefix; the others are global (keyed by a public key or a reference).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum EntryKind {
    /// The group's `MlsGroupJoinConfig`.
    JoinConfig,
    /// Own leaf nodes of pending own update proposals.
    OwnLeafNodes,
    /// One queued proposal, keyed by its proposal reference.
    QueuedProposal,
    /// The ordered list of queued proposal references.
    ProposalQueueRefs,
    /// The ratchet tree (TreeSync).
    Tree,
    /// The interim transcript hash.
    InterimTranscriptHash,
    /// The group context.
    GroupContext,
    /// The confirmation tag.
    ConfirmationTag,
    /// The `MlsGroupState` (operational, pending commit, inactive).
    GroupState,
    /// The message secrets store (secret tree, past epochs' secrets).
    MessageSecrets,
    /// The resumption PSK store.
    ResumptionPskStore,
    /// The own leaf index.
    OwnLeafIndex,
    /// The group epoch secrets.
    EpochSecrets,
    /// The HPKE key pairs of one epoch, keyed by epoch and leaf index.
    EpochKeyPairs,
    /// A signature key pair (global, keyed by public key).
    SignatureKeyPair,
    /// An HPKE key pair of an update leaf node (global, keyed by public key).
    EncryptionKeyPair,
    /// A key package bundle with its private keys (global, keyed by hash
    /// reference).
    KeyPackage,
    /// A pre-shared key (global, keyed by PSK id).
    Psk,
}

impl EntryKind {
    /// Every kind, in tag order.
    pub const ALL: [EntryKind; 18] = [
        EntryKind::JoinConfig,
        EntryKind::OwnLeafNodes,
        EntryKind::QueuedProposal,
        EntryKind::ProposalQueueRefs,
        EntryKind::Tree,
        EntryKind::InterimTranscriptHash,
        EntryKind::GroupContext,
        EntryKind::ConfirmationTag,
        EntryKind::GroupState,
        EntryKind::MessageSecrets,
        EntryKind::ResumptionPskStore,
        EntryKind::OwnLeafIndex,
        EntryKind::EpochSecrets,
        EntryKind::EpochKeyPairs,
        EntryKind::SignatureKeyPair,
        EntryKind::EncryptionKeyPair,
        EntryKind::KeyPackage,
        EntryKind::Psk,
    ];

    /// Whether entries of this kind belong to one group.
    pub fn is_group_scoped(self) -> bool {
        !matches!(
            self,
            EntryKind::SignatureKeyPair
                | EntryKind::EncryptionKeyPair
                | EntryKind::KeyPackage
                | EntryKind::Psk
        )
    }

    /// The tag byte. Group-scoped tags only need to be distinct among
    /// themselves; global tags must also differ from the group namespace.
    pub(crate) fn tag(self) -> u8 {
        match self {
            EntryKind::JoinConfig => 0x01,
            EntryKind::OwnLeafNodes => 0x02,
            EntryKind::QueuedProposal => 0x03,
            EntryKind::ProposalQueueRefs => 0x04,
            EntryKind::Tree => 0x05,
            EntryKind::InterimTranscriptHash => 0x06,
            EntryKind::GroupContext => 0x07,
            EntryKind::ConfirmationTag => 0x08,
            EntryKind::GroupState => 0x09,
            EntryKind::MessageSecrets => 0x0a,
            EntryKind::ResumptionPskStore => 0x0b,
            EntryKind::OwnLeafIndex => 0x0c,
            EntryKind::EpochSecrets => 0x0d,
            EntryKind::EpochKeyPairs => 0x0e,
            EntryKind::SignatureKeyPair => b's',
            EntryKind::EncryptionKeyPair => b'e',
            EntryKind::KeyPackage => b'k',
            EntryKind::Psk => b'p',
        }
    }

    fn group_kind_from_tag(tag: u8) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.is_group_scoped() && k.tag() == tag)
    }
}

/// JSON-encode a key value.
pub(crate) fn encode_key<K: Serialize + ?Sized>(key: &K) -> Result<Vec<u8>, StorageError> {
    serde_json::to_vec(key).map_err(|e| StorageError::Encode {
        codec: crate::Codec::Json,
        reason: format!("key: {e}"),
    })
}

/// The prefix shared by every entry of one group.
pub(crate) fn group_prefix<G: Serialize + ?Sized>(group_id: &G) -> Result<Vec<u8>, StorageError> {
    let id = encode_key(group_id)?;
    let len =
        u32::try_from(id.len()).map_err(|_| StorageError::corrupt("group id longer than 4 GiB"))?;
    let mut prefix = Vec::with_capacity(5 + id.len());
    prefix.push(GROUP_NAMESPACE);
    prefix.extend_from_slice(&len.to_be_bytes());
    prefix.extend_from_slice(&id);
    Ok(prefix)
}

/// The key of a group-scoped entry.
pub(crate) fn group_key<G: Serialize + ?Sized>(
    group_id: &G,
    kind: EntryKind,
    sub_key: &[u8],
) -> Result<Vec<u8>, StorageError> {
    debug_assert!(kind.is_group_scoped());
    let mut key = group_prefix(group_id)?;
    key.push(kind.tag());
    key.extend_from_slice(sub_key);
    Ok(key)
}

/// The prefix of all entries of one kind within one group.
pub(crate) fn group_kind_prefix<G: Serialize + ?Sized>(
    group_id: &G,
    kind: EntryKind,
) -> Result<Vec<u8>, StorageError> {
    group_key(group_id, kind, &[])
}

/// The key of a global entry.
pub(crate) fn global_key<K: Serialize + ?Sized>(
    kind: EntryKind,
    key: &K,
) -> Result<Vec<u8>, StorageError> {
    debug_assert!(!kind.is_group_scoped());
    let mut out = vec![kind.tag()];
    out.extend_from_slice(&encode_key(key)?);
    Ok(out)
}

/// The kind of a group-scoped entry, from its key with the group prefix
/// already stripped.
pub(crate) fn group_entry_kind(suffix: &[u8]) -> Result<EntryKind, StorageError> {
    suffix
        .first()
        .and_then(|tag| EntryKind::group_kind_from_tag(*tag))
        .ok_or_else(|| StorageError::corrupt("group entry with an unknown kind tag"))
}

/// Encode a list of already-encoded items: `u32 BE len | bytes`, repeated.
/// Lists are stored this way so that appending does not depend on the codec.
pub(crate) fn encode_list(items: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(items.iter().map(|i| i.len() + 4).sum());
    for item in items {
        // Entries are far below 4 GiB; a longer one could not have been
        // produced by OpenMLS, so truncation cannot happen in practice, and
        // `decode_list` would reject the result rather than misread it.
        out.extend_from_slice(&(item.len() as u32).to_be_bytes());
        out.extend_from_slice(item);
    }
    out
}

/// Decode a list written by [`encode_list`], rejecting truncated input.
pub(crate) fn decode_list(mut bytes: &[u8]) -> Result<Vec<Vec<u8>>, StorageError> {
    let mut items = Vec::new();
    while !bytes.is_empty() {
        let (len, rest) = bytes
            .split_first_chunk::<4>()
            .ok_or_else(|| StorageError::corrupt("truncated list length"))?;
        let len = u32::from_be_bytes(*len) as usize;
        if rest.len() < len {
            return Err(StorageError::corrupt("truncated list item"));
        }
        let (item, rest) = rest.split_at(len);
        items.push(item.to_vec());
        bytes = rest;
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_group_prefix_is_a_prefix_of_another_group() {
        let a = group_prefix(&vec![1u8, 2]).expect("encodes");
        let b = group_prefix(&vec![1u8, 2, 3]).expect("encodes");
        assert!(!b.starts_with(&a));
        assert!(!a.starts_with(&b));
    }

    #[test]
    fn tags_are_distinct_and_global_tags_avoid_the_group_namespace() {
        let mut tags: Vec<u8> = EntryKind::ALL.iter().map(|k| k.tag()).collect();
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(tags.len(), EntryKind::ALL.len());
        for kind in EntryKind::ALL {
            if !kind.is_group_scoped() {
                assert_ne!(kind.tag(), GROUP_NAMESPACE);
            }
        }
    }

    #[test]
    fn lists_round_trip_and_truncation_is_rejected() {
        let items = vec![vec![], vec![1, 2, 3], vec![9; 300]];
        let encoded = encode_list(&items);
        assert_eq!(decode_list(&encoded).expect("decodes"), items);
        for cut in 1..encoded.len() {
            let truncated = &encoded[..cut];
            // A cut that lands exactly on an item boundary is a valid,
            // shorter list; every other cut must be rejected.
            if let Ok(decoded) = decode_list(truncated) {
                assert!(decoded.len() < items.len());
                assert_eq!(encode_list(&decoded), truncated);
            }
        }
    }
}
