//! Entry points for the fuzz targets in `fuzz/` and for the test that
//! replays their corpus (`sim/tests/fuzz_corpus.rs`): the decoders of what
//! this crate reads back from disk, that is group snapshots and the values
//! of the OpenMLS state in their codec.
//!
//! Each function returns whether its input decoded, checks round trips
//! where an encoder exists, and panics when a property fails. Whatever
//! decodes is also restored into a real store, inside a storage step that
//! is then discarded, and the group loaded from it with `MlsGroup::load`:
//! corrupt state on disk must make an error, never a panic.
//!
//! Built only with the `fuzzing` feature, which no normal build enables;
//! nothing here is API.

use kith_engine::{
    group::{
        ConversationKind, Group, GroupConfig, GroupSnapshots, IdentityCache, IntentKind, Me,
        NewGroup,
    },
    identity::{DmMode, InstallationKeys, LocalWallet, UnsignedIdentityUpdate},
};
use openmls::prelude::{GroupId, MlsGroup};
use zeroize::Zeroizing;

use crate::{
    codec::Codec,
    keys,
    mls_storage::{Durability, SledMlsStorage, StorageConfig},
    provider::KithProvider,
    snapshot::GroupSnapshot,
};

/// The time the base groups are made at (fixed: nothing here reads the
/// clock).
const BASE_TIME_MS: u64 = 1_767_225_600_000;

/// A store holding one real group, per codec, that inputs are restored
/// into and loaded from.
struct Base {
    provider: KithProvider,
    /// The group's state as the store holds it.
    snapshot: GroupSnapshot,
}

impl Base {
    /// A temporary store in `codec` with a group of one member, which has
    /// proposed an update of its own keys: so the state also holds a
    /// queued proposal, the list entries and an own leaf's key pair.
    fn new(codec: Codec) -> Self {
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .unwrap_or_else(|e| panic!("a temporary sled database: {e}"));
        let storage = SledMlsStorage::from_db(
            db,
            StorageConfig {
                codec,
                durability: Durability::Buffered {
                    flush_every_ms: 3_600_000,
                },
            },
        )
        .unwrap_or_else(|e| panic!("a store over it: {e}"));
        let provider = KithProvider::from_storage(storage);
        let wallet = LocalWallet::from_private_key_hex(&"22".repeat(32))
            .unwrap_or_else(|e| panic!("a valid secp256k1 key: {e}"));
        let keys = InstallationKeys::from_secret_bytes(&[0x6b; 64])
            .unwrap_or_else(|e| panic!("64 bytes are installation keys: {e}"));
        let me = Me {
            inbox: wallet.inbox_id(),
            keys: &keys,
        };
        let unsigned = UnsignedIdentityUpdate::add_installation(me.inbox, &keys, 1, BASE_TIME_MS);
        let signature = wallet.sign_personal(unsigned.signature_text().as_bytes());
        let mut identities = IdentityCache::new();
        identities
            .extend(me.inbox, [unsigned.sign(signature, Some(&keys))])
            .unwrap_or_else(|e| panic!("a valid identity log: {e}"));
        let storage = openmls_traits::OpenMlsProvider::storage(&provider);
        let mut group = Group::create(
            &provider,
            storage,
            me,
            &identities,
            NewGroup {
                kind: ConversationKind::Group,
                dm_peer: None,
                dm_mode: DmMode::NonRepudiable,
                attributes: Default::default(),
                preset: Default::default(),
                now_ms: BASE_TIME_MS,
                legacy: None,
                gating: Default::default(),
            },
        )
        .unwrap_or_else(|e| panic!("a group: {e}"));
        let mut config = GroupConfig::default();
        config.proposals.propose_first = true;
        group.set_config(config);
        group
            .queue_intent(storage, IntentKind::UpdateKeys)
            .unwrap_or_else(|e| panic!("an update intent: {e}"));
        group
            .advance(&provider, storage, me, &identities, BASE_TIME_MS + 1)
            .unwrap_or_else(|e| panic!("the update proposed: {e}"));
        let snapshot = storage
            .snapshot_group(&GroupId::from_slice(group.group_id()))
            .unwrap_or_else(|e| panic!("a snapshot of the group: {e}"));
        Self { provider, snapshot }
    }

    fn storage(&self) -> &SledMlsStorage {
        openmls_traits::OpenMlsProvider::storage(&self.provider)
    }
}

thread_local! {
    /// One base per codec, made on first use (sled is slow to open).
    static BASES: Vec<Base> = Codec::ALL.into_iter().map(Base::new).collect();
}

/// Restore `snapshot` into its codec's base store the way a rollback
/// does (through the engine's port, from its bytes), inside a step that is
/// discarded, and load the group it names. Returns whether it loaded.
fn restore_and_load(snapshot: &GroupSnapshot) -> bool {
    BASES.with(|bases| {
        let Some(base) = bases
            .iter()
            .find(|b| b.storage().config().codec == snapshot.codec)
        else {
            unreachable!("a base for every codec");
        };
        let storage = base.storage();
        let step = storage
            .begin_step()
            .unwrap_or_else(|e| panic!("a step on the base store: {e}"));
        let mut loaded = false;
        let bytes = snapshot.to_bytes();
        if GroupSnapshots::restore_group(storage, &snapshot.group_id, &bytes).is_ok() {
            let group_id = GroupId::from_slice(&snapshot.group_id);
            loaded = matches!(MlsGroup::load(storage, &group_id), Ok(Some(_)));
            // Taking a snapshot of it decodes its context again.
            let _ = storage.snapshot_group(&group_id);
        }
        step.discard();
        loaded
    })
}

/// A group snapshot (`snapshot.rs`), as the engine reads it back from its
/// store before a rollback. Its format has one encoding per value, so a
/// decoded snapshot must encode to exactly its input. It is then restored
/// as a rollback restores it, and loaded.
pub fn snapshot(data: &[u8]) -> bool {
    let Ok(snapshot) = GroupSnapshot::from_bytes(data) else {
        return false;
    };
    let encoded = snapshot.to_bytes();
    assert_eq!(
        &encoded[..],
        data,
        "a decoded snapshot encodes to other bytes"
    );
    assert_eq!(
        GroupSnapshot::from_bytes(&encoded).as_ref().ok(),
        Some(&snapshot),
        "a snapshot round trip"
    );
    // The engine stores snapshots as MessagePack byte strings.
    let packed = rmp_serde::to_vec(&snapshot).unwrap_or_else(|e| panic!("packing: {e}"));
    let unpacked: GroupSnapshot =
        rmp_serde::from_slice(&packed).unwrap_or_else(|e| panic!("unpacking: {e}"));
    assert_eq!(unpacked, snapshot, "a snapshot round trip through serde");
    restore_and_load(&snapshot);
    true
}

/// One stored value of the OpenMLS state, in one of the three codecs
/// (`codec.rs`, through `storage_provider.rs`). The first byte picks the
/// codec and the entry of the base group whose value the rest replaces;
/// the group is then loaded, which decodes every entry. The rest is also
/// read as a stored list (`keys.rs`), whose encoding is unique.
pub fn stored_value(data: &[u8]) -> bool {
    let Some((&pick, value)) = data.split_first() else {
        return false;
    };
    if let Ok(items) = keys::decode_list(value) {
        assert_eq!(keys::encode_list(&items), value, "a stored list round trip");
    }
    let codec = Codec::ALL[usize::from(pick) % Codec::ALL.len()];
    let mut snapshot = BASES.with(|bases| {
        bases
            .iter()
            .find(|b| b.storage().config().codec == codec)
            .map(|b| b.snapshot.clone())
            .unwrap_or_else(|| unreachable!("a base for every codec"))
    });
    let entries = snapshot.group_entries.len() + snapshot.key_pairs.len();
    let index = usize::from(pick) / Codec::ALL.len() % entries;
    let slot = match snapshot.group_entries.get_mut(index) {
        Some(entry) => entry,
        None => &mut snapshot.key_pairs[index - snapshot.group_entries.len()],
    };
    slot.1 = Zeroizing::new(value.to_vec());
    restore_and_load(&snapshot)
}

/// Seed inputs for the targets above, by target name: the base groups'
/// snapshots and each of their stored values, as the store wrote them.
pub fn seeds() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    BASES.with(|bases| {
        let mut snapshots = Vec::new();
        let mut values = Vec::new();
        for base in bases {
            let snapshot = &base.snapshot;
            snapshots.push(snapshot.to_bytes().to_vec());
            let codec = Codec::ALL
                .iter()
                .position(|c| *c == snapshot.codec)
                .unwrap_or_else(|| unreachable!("a known codec"));
            let all = snapshot.group_entries.iter().chain(&snapshot.key_pairs);
            for (index, (_, value)) in all.enumerate() {
                // The pick that selects this codec and this entry.
                let Ok(pick) = u8::try_from(index * Codec::ALL.len() + codec) else {
                    continue;
                };
                let mut input = vec![pick];
                input.extend_from_slice(value);
                values.push(input);
            }
        }
        snapshots.push(b"KSNP".to_vec());
        vec![("snapshot", snapshots), ("stored_value", values)]
    })
}
