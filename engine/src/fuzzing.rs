//! Entry points for the fuzz targets in `fuzz/` and for the test that
//! replays their corpus (`sim/tests/fuzz_corpus.rs`): one thin function
//! per decoder of bytes that reach the engine from the network or the disk.
//!
//! Each function decodes its input and returns whether it decoded. Where
//! an encoder exists it also checks the round trip (decode, encode, decode
//! gives the same value), so that the fuzzer finds logic bugs (a value the
//! engine cannot write back the way it read it) and not only panics. A
//! failed property panics: that is what libFuzzer and the replay test see.
//!
//! Built only with the `fuzzing` feature, which no normal build enables;
//! nothing here is API.

use openmls::prelude::{Extension, ExtensionType, Extensions, GroupContext, UnknownExtension};
use prost::Message as _;
use x25519_dalek::{PublicKey as X25519Public, StaticSecret};

use crate::{
    delivery::{Cursor, Topic},
    group::{
        BindingView, ClientStore, Content, ConversationId, KithAad, KvEntries, KvStore,
        MemoryKvStore, RejoinRequest, WelcomePayload, binding_body, decode_binding,
        metadata::{
            ConversationKind, GatingRule, GroupMetadata, ImmutableMetadata, MutableMetadata,
            Policies, PolicyPreset,
        },
    },
    identity::{
        BindingClaim, DmMode, IdentityState, IdentityUpdate, InboxId, InstallationId,
        InstallationKeys, KeyPackageInventory, KeyPackagePolicy,
    },
};

/// The Kith AAD of application messages (`group/aad.rs`): read by every
/// member from messages it may not be able to decrypt. Its layout is fixed,
/// so a decoded AAD must encode to exactly the bytes it came from: two
/// encodings of one claim would let a relay change the bytes unnoticed.
pub fn kith_aad(data: &[u8]) -> bool {
    let Some(aad) = KithAad::decode(data) else {
        return false;
    };
    let encoded = aad.encode();
    assert_eq!(encoded, data, "a decoded AAD encodes to other bytes");
    assert_eq!(KithAad::decode(&encoded).as_ref(), Some(&aad));
    true
}

/// The installation that signs the rejoin requests this module makes, from
/// fixed bytes so that every run and the corpus agree.
fn fuzz_installation() -> InstallationKeys {
    InstallationKeys::from_secret_bytes(&[0x5a; 64])
        .unwrap_or_else(|e| unreachable!("64 bytes are installation keys: {e}"))
}

/// Reads fields out of fuzz input, with zeros once it runs out, so that
/// every input makes a value.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.0.len());
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let n = len.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head.to_vec()
    }

    fn u64(&mut self) -> u64 {
        u64::from_be_bytes(self.take())
    }

    fn u32(&mut self) -> u32 {
        u32::from_be_bytes(self.take())
    }
}

/// A rejoin request (`group/forks.rs`), which anyone can publish on a group
/// topic. The input is verified as it is; then, because random bytes never
/// carry a valid signature, a request made from the input's bytes is
/// signed with a fixed key and must verify back to itself, and not once a
/// byte is cut off.
pub fn rejoin_request(data: &[u8]) -> bool {
    let verified = RejoinRequest::verify(data);
    if verified.is_ok() {
        assert!(RejoinRequest::is_request(data), "verified a non-request");
    }
    let keys = fuzz_installation();
    let mut fields = Fields(data);
    let len = usize::from(fields.take::<1>()[0]);
    let request = RejoinRequest {
        group_id: fields.bytes(len),
        inbox: InboxId::from_bytes(fields.take()),
        installation: keys.id(),
        epoch: fields.u64(),
        time_ms: fields.u64(),
        evidence_epoch: fields.u64(),
        evidence_key: (fields.u64(), fields.u32(), fields.u64()),
    };
    let signed = request.sign(&keys);
    assert!(RejoinRequest::is_request(&signed));
    assert_eq!(RejoinRequest::verify(&signed), Ok(request));
    assert!(
        RejoinRequest::verify(&signed[..signed.len() - 1]).is_err(),
        "a truncated request verified"
    );
    verified.is_ok()
}

/// A Welcome payload (`group/content.rs`), read from a `welcome/` topic.
pub fn welcome_payload(data: &[u8]) -> bool {
    let Ok(payload) = WelcomePayload::from_bytes(data) else {
        return false;
    };
    let again = WelcomePayload::from_bytes(&payload.to_bytes());
    assert_eq!(again.as_ref(), Ok(&payload), "a Welcome payload round trip");
    true
}

/// The plaintext of an application message (`group/content.rs`), as a
/// member decrypted it.
pub fn content(data: &[u8]) -> bool {
    let Ok((content, id)) = Content::decode_checked(data) else {
        return false;
    };
    assert_eq!(content.message_id, id, "the returned id is the content's");
    assert!(!content.content_type.is_empty());
    assert!(content.content_type.len() <= crate::group::MAX_CONTENT_TYPE_LEN);
    let again = Content::decode_checked(&content.encode_to_vec());
    assert_eq!(again, Ok((content, id)), "a message content round trip");
    true
}

/// Valid metadata, whose extensions stand in for those a metadata input
/// does not replace.
fn sample_metadata() -> GroupMetadata {
    let a = InboxId::from_bytes([1; 20]);
    let b = InboxId::from_bytes([2; 20]);
    GroupMetadata {
        immutable: ImmutableMetadata {
            kind: ConversationKind::Dm,
            creator: a,
            dm_members: Some((a, b)),
            dm_mode: Some(DmMode::Deniable),
            created_at_ms: 7,
            legacy: None,
        },
        mutable: MutableMetadata {
            attributes: [("name".to_string(), "fuzz".to_string())].into(),
            admins: [b].into(),
            super_admins: [a].into(),
        },
        policies: Policies::preset(PolicyPreset::AdminsOnly),
        membership: [(a, 1), (b, 2)].into(),
        gating: crate::group::metadata::Gating {
            rules: vec![GatingRule {
                kind: "erc20".into(),
                data: vec![1, 2],
            }],
            ..Default::default()
        },
    }
}

/// The Kith extension types, in the order the metadata input's first byte
/// picks them (immutable, mutable, policies, membership, gating).
const METADATA_EXTENSIONS: [u16; 5] = crate::identity::KITH_EXTENSION_TYPES;

/// The metadata extensions of a group context (`group/metadata.rs`), read
/// from every commit and Welcome. The first byte picks the extension the
/// rest replaces (0 to 4: immutable, mutable, policies, membership,
/// gating), or, from 5 on, one to leave out; the others are valid. What
/// decodes must pass the limits and survive `to_extensions` and back.
pub fn metadata(data: &[u8]) -> bool {
    let Some((&pick, rest)) = data.split_first() else {
        return false;
    };
    let mut extensions = sample_metadata().to_extensions();
    let index = usize::from(pick) % 10;
    if let Some(&ty) = METADATA_EXTENSIONS.get(index) {
        let replaced =
            extensions.add_or_replace(Extension::Unknown(ty, UnknownExtension(rest.to_vec())));
        if replaced.is_err() {
            return false;
        }
    } else {
        extensions.remove(ExtensionType::Unknown(METADATA_EXTENSIONS[index - 5]));
    }
    check_metadata(&extensions)
}

fn check_metadata(extensions: &Extensions<GroupContext>) -> bool {
    let Ok(metadata) = GroupMetadata::from_extensions(extensions) else {
        return false;
    };
    assert_eq!(metadata.check_limits(), Ok(()), "decoded past the limits");
    let again = GroupMetadata::from_extensions(&metadata.to_extensions());
    assert_eq!(again.as_ref(), Ok(&metadata), "a metadata round trip");
    true
}

/// The body of a deniable DM's binding message (`group/bindings.rs`). A
/// binding that decodes is made again with [`binding_body`] (its tags
/// cannot be reproduced without the keys, but what a reader sees of it,
/// the [`BindingView`], must be the same).
pub fn binding(data: &[u8]) -> bool {
    let Ok(view) = decode_binding(data) else {
        return false;
    };
    let identity = StaticSecret::from([0x11; 32]);
    let peer = X25519Public::from(&StaticSecret::from([0x22; 32])).to_bytes();
    let claim = BindingClaim {
        ephemeral_key: &[0x33; 32],
        group_id: b"fuzz",
        inbox: view.inbox,
        installation: view.installation,
    };
    let body = binding_body(
        view.epoch,
        &claim,
        &identity,
        &[0x44; 32],
        view.recipients.iter().map(|r| (*r, peer)),
    )
    .unwrap_or_else(|e| panic!("a binding of a decoded view: {e}"));
    let again: Result<BindingView, String> = decode_binding(&body);
    assert_eq!(again.as_ref(), Ok(&view), "a binding round trip");
    true
}

/// An identity update (`identity/log.rs`), from the node or the client's
/// cache. It is also applied to an empty log, which checks its signatures:
/// that must refuse or accept, never panic.
pub fn identity_update(data: &[u8]) -> bool {
    let Ok(update) = IdentityUpdate::from_bytes(data) else {
        return false;
    };
    let again = IdentityUpdate::from_bytes(&update.to_bytes());
    assert_eq!(
        again.as_ref().ok(),
        Some(&update),
        "an identity update round trip"
    );
    let mut state = IdentityState::new(update.unsigned.inbox);
    if state.apply(&update).is_ok() {
        assert_eq!(state.sequence(), update.unsigned.sequence);
    }
    true
}

/// The key-package inventory (`identity/inventory.rs`), read from the
/// client's store. The policy then plans on it at a time taken from the
/// input, which must not overflow whatever the stored times are.
pub fn key_package_inventory(data: &[u8]) -> bool {
    let Ok(inventory) = KeyPackageInventory::from_bytes(data) else {
        return false;
    };
    let again = KeyPackageInventory::from_bytes(&inventory.to_bytes());
    assert_eq!(
        again.as_ref().ok(),
        Some(&inventory),
        "an inventory round trip"
    );
    let mut fields = Fields(data);
    let plan = KeyPackagePolicy::default().plan(&inventory, fields.u32(), fields.u64());
    assert!(plan.delete_retired.len() <= inventory.retired.len());
    true
}

/// A [`KvStore`] that holds the fuzz input under every key: each getter of
/// the [`ClientStore`] reads it as its own record, whatever the key layout.
#[derive(Debug)]
struct InputKv<'a>(&'a [u8]);

impl KvStore for InputKv<'_> {
    type Error = std::convert::Infallible;

    fn kv_get(&self, _key: &[u8]) -> Result<Option<Vec<u8>>, Self::Error> {
        Ok(Some(self.0.to_vec()))
    }

    fn kv_put(&self, _key: &[u8], _value: &[u8]) -> Result<(), Self::Error> {
        Ok(())
    }

    fn kv_delete(&self, _key: &[u8]) -> Result<(), Self::Error> {
        Ok(())
    }

    fn kv_scan(&self, prefix: &[u8]) -> Result<KvEntries, Self::Error> {
        Ok(vec![(prefix.to_vec(), self.0.to_vec())])
    }
}

/// Asserts that `value`, written by the store and read back, is `value`.
fn stored_again<T: PartialEq + std::fmt::Debug>(
    value: &T,
    write: impl FnOnce(&ClientStore<'_, MemoryKvStore>) -> Result<(), crate::group::GroupError>,
    read: impl FnOnce(&ClientStore<'_, MemoryKvStore>) -> Result<Option<T>, crate::group::GroupError>,
) {
    let kv = MemoryKvStore::default();
    let store = ClientStore(&kv);
    write(&store).unwrap_or_else(|e| panic!("storing a record that was read: {e}"));
    let back = read(&store).unwrap_or_else(|e| panic!("reading a record written: {e}"));
    assert_eq!(back.as_ref(), Some(value), "a stored record round trip");
}

/// The records of the client store (`group/store.rs`, `group/records.rs`),
/// read from disk. Every getter reads the input as its record; what
/// decodes is written by the matching setter into a fresh store and must
/// read back the same. Returns whether any getter decoded it.
pub fn client_record(data: &[u8]) -> bool {
    let kv = InputKv(data);
    let store = ClientStore(&kv);
    let group: &[u8] = b"fuzz group";
    let conversation = ConversationId(group.to_vec());
    let inbox = InboxId::from_bytes([3; 20]);
    let mut decoded = false;

    if let Ok(Some(record)) = store.conversation(&conversation) {
        decoded = true;
        stored_again(
            &record,
            |s| s.put_conversation(&record),
            |s| s.conversation(&record.id),
        );
    }
    if let Ok(list) = store.conversations() {
        decoded |= !list.is_empty();
    }
    if let Ok(messages) = store.messages(&conversation) {
        for message in &messages {
            decoded = true;
            stored_again(
                message,
                |s| s.insert_message(message).map(|_| ()),
                |s| s.message(&message.conversation_id, &message.message_id),
            );
        }
    }
    // The index read first decodes as a time, then the message under it.
    let _ = store.message(&conversation, &[0; 32]);
    let topic = Topic::Group(group.to_vec());
    if let Ok(cursor) = store.cursor(&topic) {
        decoded |= cursor != Cursor::new();
        stored_again(
            &cursor,
            |s| s.put_cursor(&topic, &cursor),
            |s| s.cursor(&topic).map(Some),
        );
    }
    if let Ok(Some(retired)) = store.retired_group(group) {
        decoded = true;
        stored_again(
            &retired,
            |s| s.put_retired_group(&retired),
            |s| s.retired_group(&retired.group_id),
        );
    }
    if let Ok(record) = store.group_record(group) {
        decoded = true;
        stored_again(
            &record,
            |s| s.put_group_record(group, &record),
            |s| s.group_record(group).map(Some),
        );
    }
    if let Ok(intents) = store.intents(group) {
        for intent in &intents {
            decoded = true;
            stored_again(
                intent,
                |s| s.put_intent(group, intent),
                |s| Ok(s.intents(group)?.into_iter().next()),
            );
        }
    }
    if let Ok(outbox) = store.outbox(group) {
        for item in &outbox {
            decoded = true;
            stored_again(
                item,
                |s| s.push_outbox(group, item),
                |s| Ok(s.outbox(group)?.into_iter().next()),
            );
        }
    }
    if let Ok(snapshots) = store.snapshots(group) {
        for snapshot in &snapshots {
            decoded = true;
            stored_again(
                snapshot,
                |s| s.put_snapshot(group, snapshot),
                |s| s.snapshot(group, snapshot.epoch),
            );
        }
    }
    if let Ok(retained) = store.retained(group) {
        for entry in &retained {
            decoded = true;
            stored_again(
                entry,
                |s| s.put_retained(group, entry),
                |s| Ok(s.retained(group)?.into_iter().next()),
            );
        }
    }
    if let Ok(commits) = store.own_commits(group) {
        for commit in &commits {
            decoded = true;
            stored_again(
                commit,
                |s| s.put_own_commit(group, commit),
                |s| s.own_commit(group, &commit.hash),
            );
        }
    }
    if let Ok(welcomes) = store.deferred_welcomes(group) {
        for welcome in &welcomes {
            decoded = true;
            stored_again(
                welcome,
                |s| s.put_deferred_welcome(group, welcome),
                |s| Ok(s.deferred_welcomes(group)?.into_iter().next()),
            );
        }
    }
    if let Ok(sends) = store.own_sends(group) {
        for send in &sends {
            decoded = true;
            stored_again(
                send,
                |s| s.put_own_send(group, send),
                |s| Ok(s.own_sends(group)?.into_iter().next()),
            );
        }
    }
    // Decoding only: its setter also prunes older epochs' records.
    decoded |= matches!(store.commit_record(group, 5), Ok(Some(_)));
    let installation = InstallationId([4; 32]);
    if let Ok(Some(added)) = store.leaf_added(group, &installation) {
        decoded = true;
        stored_again(
            &added,
            |s| s.put_leaf_added(group, &installation, &added),
            |s| s.leaf_added(group, &installation),
        );
    }
    if let Ok(Some(key)) = store.ephemeral_key(&[5; 32]) {
        decoded = true;
        let public = key.public_key();
        stored_again(
            &public,
            |s| s.put_ephemeral_key(&key),
            |s| Ok(s.ephemeral_key(&public)?.map(|k| k.public_key())),
        );
    }
    let _ = store.binding_exporter(group, 5);
    let _ = store.snapshot_state(group, 5);
    if let Ok(updates) = store.identity_updates(&inbox) {
        decoded |= !updates.is_empty();
        stored_again(
            &updates,
            |s| s.put_identity_updates(&inbox, &updates),
            |s| s.identity_updates(&inbox).map(Some),
        );
    }
    let _ = store.all_identity_updates();
    decoded
}

/// Seed inputs for the targets above, made by the engine's own encoders
/// (plus a few edge cases), by target name. The simulator adds inputs
/// taken from a real group (`kith_sim::fuzzing::seeds`).
pub fn seeds() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let keys = fuzz_installation();
    let inbox = InboxId::from_bytes([7; 20]);
    let rejoin = RejoinRequest {
        group_id: vec![0xab; 16],
        inbox,
        installation: keys.id(),
        epoch: 4,
        time_ms: 1_767_225_600_000,
        evidence_epoch: 3,
        evidence_key: (1_767_225_500_000, 1, 42),
    }
    .sign(&keys);
    let welcome = WelcomePayload {
        welcome: vec![0, 1, 0, 3],
        group_id: vec![0xab; 16],
        cursor: [(1, 10), (2, 3)].into_iter().collect(),
        branch: vec![(3, [9; 8], (1_767_225_500_000, 1, 42))],
        shared: Some(crate::group::SharedWelcome {
            hash: [5; 32],
            parts: vec![[6; 32], [7; 32]],
        }),
    }
    .to_bytes();
    let text = Content {
        content_type: crate::group::CONTENT_TYPE_TEXT.into(),
        message_id: crate::group::message_id(inbox, &[0xab; 16], &[1; 16]).to_vec(),
        body: b"hello".to_vec(),
        sent_at_ms: 1_767_225_600_000,
        fallback: Some("hello".into()),
    };
    let mut metadata = Vec::new();
    let sample = sample_metadata();
    for (index, ty) in METADATA_EXTENSIONS.iter().enumerate() {
        let bytes = sample
            .to_extensions()
            .unknown(*ty)
            .map(|e| e.0.clone())
            .unwrap_or_default();
        let mut input = vec![index as u8];
        input.extend_from_slice(&bytes);
        metadata.push(input);
    }
    metadata.push(vec![7]);
    let claim = BindingClaim {
        ephemeral_key: &[0x33; 32],
        group_id: b"fuzz",
        inbox,
        installation: keys.id(),
    };
    let peer = X25519Public::from(&StaticSecret::from([0x22; 32])).to_bytes();
    let binding = binding_body(
        2,
        &claim,
        keys.identity_secret(),
        &[0x44; 32],
        [(InstallationId([8; 32]), peer)],
    )
    .unwrap_or_default();
    let inventory = KeyPackageInventory {
        last_resort: Some(crate::identity::LastResortRecord {
            hash_ref: vec![1; 16],
            created_at_ms: 5,
            first_used_at_ms: Some(u64::MAX),
        }),
        retired: vec![crate::identity::RetiredLastResort {
            hash_ref: vec![2; 16],
            retired_at_ms: u64::MAX,
        }],
    }
    .to_bytes();
    let wallet = crate::identity::LocalWallet::from_private_key_hex(&"11".repeat(32))
        .unwrap_or_else(|e| unreachable!("a valid secp256k1 key: {e}"));
    let add = crate::identity::UnsignedIdentityUpdate::add_installation(
        wallet.inbox_id(),
        &keys,
        1,
        1_767_225_600_000,
    );
    let signature = wallet.sign_personal(add.signature_text().as_bytes());
    let add = add.sign(signature, Some(&keys));
    let revoke = crate::identity::UnsignedIdentityUpdate::revoke_installation(
        wallet.inbox_id(),
        keys.id(),
        keys.identity_public_key(),
        2,
        1_767_225_600_001,
    );
    let signature = wallet.sign_personal(revoke.signature_text().as_bytes());
    let revoke = revoke.sign(signature, None);
    vec![
        ("kith_aad", vec![b"k4".to_vec(), b"k3".to_vec()]),
        ("rejoin_request", vec![rejoin, b"KITH-REJOIN-1".to_vec()]),
        ("welcome_payload", vec![welcome, Vec::new()]),
        ("content", vec![text.encode_to_vec()]),
        ("metadata", metadata),
        ("binding", vec![binding]),
        ("identity_update", vec![add.to_bytes(), revoke.to_bytes()]),
        ("key_package_inventory", vec![inventory, Vec::new()]),
        ("client_record", vec![Vec::new(), vec![0x90], vec![0xc0]]),
    ]
}
