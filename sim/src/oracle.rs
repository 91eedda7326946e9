//! The key and nonce oracle: which sender-ratchet generation each published
//! ciphertext used.
//!
//! OpenMLS does not expose generations, so the oracle reads the sender's
//! own ratchets from its store (OpenMLS values are MessagePack with named
//! fields there) before and after every engine call, and attributes the
//! generations spent in between, in order, to the ciphertexts the call
//! produced. A rewound ratchet shows up either as a generation going
//! backwards or as a tuple reused with different bytes. Only the fields
//! the oracle needs are decoded; the rest of OpenMLS's layout is ignored,
//! so a layout change makes the oracle return `None` (and the simulator
//! report it) rather than guess.

use kith_storage::{EntryKind, SledMlsStorage};
use openmls::prelude::GroupId;
use serde::Deserialize;
use serde::de::IgnoredAny;

/// The next generation of this installation's application and handshake
/// sender ratchets in the current epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Generations {
    /// Application ratchet.
    pub application: u64,
    /// Handshake ratchet.
    pub handshake: u64,
}

#[derive(Deserialize)]
struct Store {
    message_secrets: Secrets,
}

#[derive(Deserialize)]
struct Secrets {
    secret_tree: Tree,
}

#[derive(Deserialize)]
struct Tree {
    handshake_sender_ratchets: Vec<Option<Ratchet>>,
    application_sender_ratchets: Vec<Option<Ratchet>>,
}

#[derive(Deserialize)]
enum Ratchet {
    EncryptionRatchet { generation: u64 },
    DecryptionRatchet(IgnoredAny),
}

fn own(ratchets: &[Option<Ratchet>]) -> u64 {
    ratchets
        .iter()
        .find_map(|r| match r {
            Some(Ratchet::EncryptionRatchet { generation }) => Some(*generation),
            _ => None,
        })
        .unwrap_or(0)
}

/// Read the generations from the store; `None` if the group or its
/// secrets are not there (or not in the expected shape).
pub fn generations(storage: &SledMlsStorage, group_id: &[u8]) -> Option<Generations> {
    let group = GroupId::from_slice(group_id);
    let kinds = storage.group_entries(&group).ok()?;
    let entries = storage.raw_group_entries(&group).ok()?;
    let (_, (_, value)) = kinds
        .iter()
        .zip(entries.iter())
        .find(|(kind, _)| **kind == EntryKind::MessageSecrets)?;
    let store: Store = rmp_serde::from_slice(value).ok()?;
    let tree = store.message_secrets.secret_tree;
    Some(Generations {
        application: own(&tree.application_sender_ratchets),
        handshake: own(&tree.handshake_sender_ratchets),
    })
}
