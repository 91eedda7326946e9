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

use std::collections::BTreeMap;

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

/// Where a ciphertext sits for the invariant: group epoch and authenticator
/// digest, sender leaf, generation, handshake or not.
pub type NonceTuple = (u64, [u8; 8], u32, u64, bool);

/// The key and nonce invariant over a run: no two distinct published
/// ciphertexts share a [`NonceTuple`], and no sender ratchet goes
/// backwards within an epoch.
///
/// A ciphertext counts when it is published, not when it is queued: a
/// power loss takes back a queued ciphertext with the ratchet step that
/// made it, and the generation is then spent again, harmlessly, on bytes
/// nobody saw.
#[derive(Debug, Default)]
pub struct NonceOracle {
    /// Per payload hash, where it sits, from when it was queued.
    queued: BTreeMap<[u8; 32], NonceTuple>,
    /// Per tuple, the payload published with it.
    published: BTreeMap<NonceTuple, [u8; 32]>,
    /// Per client, the generations last seen and in which state.
    last: BTreeMap<usize, (u64, [u8; 8], Generations)>,
}

impl NonceOracle {
    /// `client`'s ratchets read `after` in state (`epoch`, `auth`): a
    /// finding if a ratchet went backwards since the last reading in the
    /// same state.
    pub fn read(
        &mut self,
        client: usize,
        epoch: u64,
        auth: [u8; 8],
        after: Generations,
    ) -> Option<String> {
        let finding = match self.last.get(&client) {
            Some((e, a, last))
                if (*e, *a) == (epoch, auth)
                    && (after.application < last.application
                        || after.handshake < last.handshake) =>
            {
                Some(format!(
                    "client {client}: a sender ratchet went backwards in epoch {e}: {last:?} -> \
                     {after:?}"
                ))
            }
            _ => None,
        };
        self.last.insert(client, (epoch, auth, after));
        finding
    }

    /// A call spent generations `from..to` of one ratchet on `hashes`, the
    /// ciphertexts it queued (in order) for `leaf` in (`epoch`, `auth`): a
    /// finding if it queued more ciphertexts than it spent generations.
    /// The ciphertexts used the last generations spent (a commit that
    /// failed its own check spends one and is not published).
    #[allow(clippy::too_many_arguments)]
    pub fn queued(
        &mut self,
        client: usize,
        (epoch, auth, leaf): (u64, [u8; 8], u32),
        hashes: &[[u8; 32]],
        from: u64,
        to: u64,
        handshake: bool,
    ) -> Option<String> {
        let spent = to.saturating_sub(from);
        let first = to.saturating_sub(hashes.len() as u64);
        for (offset, hash) in hashes.iter().enumerate() {
            self.queued
                .insert(*hash, (epoch, auth, leaf, first + offset as u64, handshake));
        }
        ((hashes.len() as u64) > spent).then(|| {
            format!(
                "client {client}: {} ciphertexts but {spent} generations spent",
                hashes.len()
            )
        })
    }

    /// `client` published the payload `hash`: a finding if another
    /// payload went out with the same key and nonce.
    pub fn published(&mut self, client: usize, hash: [u8; 32]) -> Option<String> {
        let tuple = *self.queued.get(&hash)?;
        match self.published.insert(tuple, hash) {
            Some(previous) if previous != hash => Some(format!(
                "client {client}: key and nonce reused: epoch {}, leaf {}, generation {}, \
                 handshake {}",
                tuple.0, tuple.2, tuple.3, tuple.4
            )),
            _ => None,
        }
    }

    /// `client` lost power: its ratchets are back where its disk had them.
    pub fn power_lost(&mut self, client: usize) {
        self.last.remove(&client);
    }
}

/// How many proposals about a member (updates, removals, self-removals)
/// the pending own commit of the group covers; `None` if there is none (or
/// the stored state is not in the expected shape). OpenMLS lists those in
/// a commit in `HashMap` order, which differs from run to run: the
/// simulator counts such commits to know which runs cannot repeat their
/// bytes.
pub fn pending_commit_member_proposals(storage: &SledMlsStorage, group_id: &[u8]) -> Option<usize> {
    let group = GroupId::from_slice(group_id);
    let kinds = storage.group_entries(&group).ok()?;
    let entries = storage.raw_group_entries(&group).ok()?;
    let (_, (_, value)) = kinds
        .iter()
        .zip(entries.iter())
        .find(|(kind, _)| **kind == EntryKind::GroupState)?;
    let GroupState::PendingCommit(pending) = rmp_serde::from_slice(value).ok()? else {
        return None;
    };
    let (PendingCommit::Member(staged) | PendingCommit::External(staged)) = *pending;
    Some(
        staged
            .staged_proposal_queue
            .queued_proposals
            .iter()
            .filter(|(_, queued)| {
                matches!(
                    queued.proposal.0.as_str(),
                    "Update" | "Remove" | "SelfRemove"
                )
            })
            .count(),
    )
}

#[derive(Deserialize)]
enum GroupState {
    PendingCommit(Box<PendingCommit>),
    Operational,
    Inactive,
}

#[derive(Deserialize)]
enum PendingCommit {
    Member(StagedCommit),
    External(StagedCommit),
}

#[derive(Deserialize)]
struct StagedCommit {
    staged_proposal_queue: ProposalQueue,
}

#[derive(Deserialize)]
struct ProposalQueue {
    queued_proposals: Vec<(IgnoredAny, QueuedProposal)>,
}

#[derive(Deserialize)]
struct QueuedProposal {
    proposal: VariantName,
}

/// The name of an enum variant, whatever it carries.
struct VariantName(String);

impl<'de> Deserialize<'de> for VariantName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = VariantName;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an enum variant")
            }
            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<VariantName, E> {
                Ok(VariantName(name.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<VariantName, A::Error> {
                let name: String = map
                    .next_key()?
                    .ok_or_else(|| serde::de::Error::custom("an empty enum"))?;
                let _: IgnoredAny = map.next_value()?;
                Ok(VariantName(name))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}
