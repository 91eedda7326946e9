//! The key and nonce oracle: which sender-ratchet generation each published
//! ciphertext used.
//!
//! OpenMLS does not expose generations, so the oracle reads the sender's
//! own ratchets from its store (the simulator stores OpenMLS values as
//! JSON) before and after every engine call, and attributes the
//! generations spent in between, in order, to the ciphertexts the call
//! produced. A rewound ratchet shows up either as a generation going
//! backwards or as a tuple reused with different bytes.

use kith_storage::{EntryKind, SledMlsStorage};
use openmls::prelude::GroupId;
use serde_json::Value;

/// The next generation of this installation's application and handshake
/// sender ratchets in the current epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Generations {
    /// Application ratchet.
    pub application: u64,
    /// Handshake ratchet.
    pub handshake: u64,
}

fn own_generation(ratchets: &Value) -> Option<u64> {
    ratchets
        .as_array()?
        .iter()
        .find_map(|r| r.get("EncryptionRatchet")?.get("generation")?.as_u64())
}

/// Read the generations from the store; `None` if the group or its
/// secrets are not there (or not in the expected shape).
pub fn generations(storage: &SledMlsStorage, group_id: &[u8]) -> Option<Generations> {
    let group = GroupId::from_slice(group_id);
    let kinds = storage.group_entries(&group).ok()?;
    let entries = storage.raw_group_entries(&group).ok()?;
    let (_, value) = kinds
        .iter()
        .zip(entries.iter())
        .find(|(kind, _)| **kind == EntryKind::MessageSecrets)?;
    let json: Value = serde_json::from_slice(&value.1).ok()?;
    let tree = json.get("message_secrets")?.get("secret_tree")?;
    Some(Generations {
        application: own_generation(tree.get("application_sender_ratchets")?).unwrap_or(0),
        handshake: own_generation(tree.get("handshake_sender_ratchets")?).unwrap_or(0),
    })
}
