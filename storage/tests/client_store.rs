//! The engine's client-store port over sled: the shared suite, and the
//! property the port exists for: one engine step (MLS state, stored
//! message, cursor) commits together, so a crash neither loses nor
//! duplicates a message.

use kith_engine::{
    delivery::{Envelope, Topic},
    group::{
        ClientStore, ConversationKind, Group, GroupSnapshots, IdentityCache, IntentKind, Me,
        NewGroup, PolicyPreset,
    },
    identity::{
        DEFAULT_LIFETIME_SECS, InboxId, InstallationKeys, LocalWallet, UnsignedIdentityUpdate,
        generate_key_package,
    },
};
use kith_storage::{KithProvider, SledMlsStorage};
use openmls::prelude::{MlsMessageOut, tls_codec::Serialize as _};
use openmls_traits::OpenMlsProvider as _;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng as _;

#[test]
fn sled_client_store_passes_the_suite() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let storage = SledMlsStorage::open(dir.path().join("db")).expect("open");
    kith_engine::group::test_suite::client_store_suite(&storage);
}

#[test]
fn sled_message_pages_pass_the_suite() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let storage = SledMlsStorage::open(dir.path().join("db")).expect("open");
    kith_engine::group::test_suite::message_pages_suite(&storage);
}

/// A page read inside an open step sees the step's writes and deletes
/// (which sled does not hold yet), and still fills up to its limit.
#[test]
fn sled_pages_see_the_open_step() {
    use kith_engine::group::KvStore as _;
    let dir = tempfile::tempdir().expect("temporary directory");
    let storage = SledMlsStorage::open(dir.path().join("db")).expect("open");
    for k in 0..10u8 {
        storage.kv_put(&[b'p', k], &[k]).expect("put");
    }
    let keys = |entries: Vec<(Vec<u8>, Vec<u8>)>| {
        entries.into_iter().map(|(k, _)| k[1]).collect::<Vec<_>>()
    };
    storage
        .step(|| {
            for k in 0..4u8 {
                storage.kv_delete(&[b'p', k]).expect("delete");
            }
            storage.kv_put(&[b'p', 20], &[20]).expect("put");
            assert_eq!(
                keys(storage.kv_range(b"p", b"q", false, 3).expect("range")),
                [4, 5, 6],
                "deleted in the step, so not listed"
            );
            assert_eq!(
                keys(storage.kv_range(b"p", b"q", true, 2).expect("range")),
                [20, 9],
                "written in the step, so listed"
            );
            Ok::<_, kith_storage::StorageError>(())
        })
        .expect("step");
    assert_eq!(
        keys(storage.kv_range(b"p", b"q", false, 100).expect("range")),
        [4, 5, 6, 7, 8, 9, 20]
    );
}

/// OpenMLS checks key-package lifetimes against the system clock.
#[allow(clippy::disallowed_methods)]
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .expect("clock after 1970")
}

fn identity(rng: &mut ChaCha20Rng, cache: &mut IdentityCache) -> (InboxId, InstallationKeys) {
    let wallet = LocalWallet::generate(rng);
    let keys = InstallationKeys::generate(rng);
    let unsigned = UnsignedIdentityUpdate::add_installation(wallet.inbox_id(), &keys, 1, now_ms());
    let signature = wallet.sign_personal(unsigned.signature_text().as_bytes());
    cache
        .extend(wallet.inbox_id(), [unsigned.sign(signature, Some(&keys))])
        .expect("valid log");
    (wallet.inbox_id(), keys)
}

fn envelope(group_id: &[u8], sequence: u64, payload: Vec<u8>) -> Envelope {
    Envelope {
        topic: Topic::Group(group_id.to_vec()),
        payload,
        originator_node_id: 1,
        originator_sequence_id: sequence,
        originator_time_ms: 1_000 + sequence,
    }
}

#[test]
fn a_crash_mid_step_neither_loses_nor_duplicates_a_message() {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let mut identities = IdentityCache::new();
    let (alice_inbox, alice_keys) = identity(&mut rng, &mut identities);
    let (bob_inbox, bob_keys) = identity(&mut rng, &mut identities);
    let alice_dir = tempfile::tempdir().expect("tempdir");
    let alice_provider = KithProvider::open(alice_dir.path()).expect("open");
    let alice_kv = alice_provider.storage();
    let alice = Me {
        inbox: alice_inbox,
        keys: &alice_keys,
    };
    let bob = Me {
        inbox: bob_inbox,
        keys: &bob_keys,
    };
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("bob");

    // Alice creates a group with Bob (whose state is on sled).
    let bob_provider = KithProvider::open(&path).expect("open");
    let key_package = generate_key_package(
        &bob_provider,
        &bob_keys,
        bob_inbox,
        now_ms() / 1000,
        DEFAULT_LIFETIME_SECS,
        false,
    )
    .expect("key package");
    let mut group = Group::create(
        &alice_provider,
        alice_kv,
        alice,
        &identities,
        NewGroup {
            kind: ConversationKind::Group,
            dm_peer: None,
            dm_mode: kith_engine::identity::DmMode::NonRepudiable,
            attributes: Default::default(),
            preset: PolicyPreset::Default,
            now_ms: now_ms(),
            legacy: None,
            gating: Default::default(),
        },
    )
    .expect("create");
    let group_id = group.group_id().to_vec();
    group
        .queue_intent(
            alice_kv,
            IntentKind::AddMembers {
                key_packages: vec![
                    MlsMessageOut::from(key_package)
                        .tls_serialize_detached()
                        .expect("serialize"),
                ],
                sequences: vec![(bob_inbox, 1)],
                admissions: Vec::new(),
            },
        )
        .expect("queue");
    group
        .advance(&alice_provider, alice_kv, alice, &identities, now_ms())
        .expect("advance");
    let commit = group.poll_outbound().expect("commit");
    group
        .handle_envelope(
            &alice_provider,
            alice_kv,
            &identities,
            &envelope(&group_id, 1, commit.payload),
            now_ms(),
        )
        .expect("merge own commit");
    let welcome = group.poll_outbound().expect("welcome");
    let storage = bob_provider.storage();
    let step = storage.begin_step().expect("step");
    Group::join(
        &bob_provider,
        storage,
        bob,
        &identities,
        &welcome.payload,
        now_ms(),
    )
    .expect("join")
    .expect("new");
    step.commit().expect("commit the join");

    group
        .send_message(
            &alice_provider,
            alice_kv,
            alice,
            kith_engine::group::Outgoing::new("text/plain", b"once"),
            now_ms(),
        )
        .expect("send");
    let message = envelope(
        &group_id,
        2,
        group.poll_outbound().expect("message").payload,
    );
    let conversation = group.conversation_id();
    let cursor_topic = Topic::Group(group_id.clone());

    // Bob processes it, and crashes before the step commits.
    {
        let storage = bob_provider.storage();
        let step = storage.begin_step().expect("step");
        let mut bob_group = Group::load(&bob_provider, storage, &group_id)
            .expect("load")
            .expect("stored");
        bob_group
            .handle_envelope(&bob_provider, storage, &identities, &message, now_ms())
            .expect("handle");
        assert_eq!(
            ClientStore(storage)
                .messages(&conversation)
                .expect("read")
                .len(),
            1,
            "the step sees its own write"
        );
        drop(step); // the crash: nothing of the step reaches the disk
    }
    drop(bob_provider);
    let bob_provider = KithProvider::open(&path).expect("reopen");
    let storage = bob_provider.storage();
    assert!(
        ClientStore(storage)
            .messages(&conversation)
            .expect("read")
            .is_empty()
    );
    assert_eq!(
        ClientStore(storage)
            .cursor(&cursor_topic)
            .expect("cursor")
            .get(1),
        0,
        "the cursor is still the Welcome's (where Alice staged her commit), not past the lost step"
    );

    // The retry decrypts it (the ratchet was not advanced on disk either)
    // and stores it once.
    let step = storage.begin_step().expect("step");
    let mut bob_group = Group::load(&bob_provider, storage, &group_id)
        .expect("load")
        .expect("stored");
    bob_group
        .handle_envelope(&bob_provider, storage, &identities, &message, now_ms())
        .expect("handle again");
    step.commit().expect("commit");
    drop(bob_group);
    drop(bob_provider);

    // After a restart, the same envelope delivered again changes nothing.
    let bob_provider = KithProvider::open(&path).expect("reopen");
    let storage = bob_provider.storage();
    let mut bob_group = Group::load(&bob_provider, storage, &group_id)
        .expect("load")
        .expect("stored");
    bob_group
        .handle_envelope(&bob_provider, storage, &identities, &message, now_ms())
        .expect("duplicate delivery");
    let messages = ClientStore(storage).messages(&conversation).expect("read");
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].body, b"once");
}

/// Counts the record writes an engine call makes through the client-store
/// port, passing them on to sled.
struct CountingKv<'a> {
    inner: &'a SledMlsStorage,
    writes: std::cell::Cell<usize>,
}

impl kith_engine::group::KvStore for CountingKv<'_> {
    type Error = <SledMlsStorage as kith_engine::group::KvStore>::Error;

    fn kv_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Self::Error> {
        self.inner.kv_get(key)
    }

    fn kv_put(&self, key: &[u8], value: &[u8]) -> Result<(), Self::Error> {
        self.writes.set(self.writes.get() + 1);
        self.inner.kv_put(key, value)
    }

    fn kv_delete(&self, key: &[u8]) -> Result<(), Self::Error> {
        self.writes.set(self.writes.get() + 1);
        self.inner.kv_delete(key)
    }

    fn kv_scan(&self, prefix: &[u8]) -> Result<kith_engine::group::KvEntries, Self::Error> {
        self.inner.kv_scan(prefix)
    }
}

/// Whole-group operations write too: counted like the rest.
impl GroupSnapshots for CountingKv<'_> {
    type Savepoint = kith_storage::GroupSavepoint;

    fn snapshot_group(&self, group_id: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>, Self::Error> {
        GroupSnapshots::snapshot_group(self.inner, group_id)
    }

    fn restore_group(&self, group_id: &[u8], snapshot: &[u8]) -> Result<(), Self::Error> {
        self.writes.set(self.writes.get() + 1);
        GroupSnapshots::restore_group(self.inner, group_id, snapshot)
    }

    fn delete_group(&self, group_id: &[u8]) -> Result<(), Self::Error> {
        self.writes.set(self.writes.get() + 1);
        GroupSnapshots::delete_group(self.inner, group_id)
    }

    fn savepoint_group(&self, group_id: &[u8]) -> Result<Option<Self::Savepoint>, Self::Error> {
        GroupSnapshots::savepoint_group(self.inner, group_id)
    }

    fn rollback_group_to(&self, savepoint: Self::Savepoint) -> Result<(), Self::Error> {
        self.writes.set(self.writes.get() + 1);
        GroupSnapshots::rollback_group_to(self.inner, savepoint)
    }
}

/// A storage step that writes nothing is not flushed, so a call with
/// nothing to do must write nothing: the group record is stored only when
/// it changed. (Storing it unchanged after every `advance` cost the
/// send-to-receive path about five disk flushes per message.)
#[test]
fn an_advance_with_nothing_to_do_stores_nothing() {
    let mut rng = ChaCha20Rng::seed_from_u64(12);
    let mut identities = IdentityCache::new();
    let (inbox, keys) = identity(&mut rng, &mut identities);
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = KithProvider::open(dir.path()).expect("open");
    let me = Me { inbox, keys: &keys };
    let kv = CountingKv {
        inner: provider.storage(),
        writes: std::cell::Cell::new(0),
    };
    let now = now_ms();
    let mut group = Group::create(
        &provider,
        &kv,
        me,
        &identities,
        NewGroup {
            kind: ConversationKind::Group,
            dm_peer: None,
            dm_mode: kith_engine::identity::DmMode::NonRepudiable,
            attributes: Default::default(),
            preset: PolicyPreset::Default,
            now_ms: now,
            legacy: None,
            gating: Default::default(),
        },
    )
    .expect("create");
    assert!(kv.writes.get() > 0, "creating a group stores its records");
    group
        .advance(&provider, &kv, me, &identities, now)
        .expect("advance");

    kv.writes.set(0);
    group
        .advance(&provider, &kv, me, &identities, now + 1)
        .expect("advance");
    assert_eq!(kv.writes.get(), 0, "an idle advance wrote records");

    // A call that changes the group still stores it.
    group
        .queue_intent(
            &kv,
            IntentKind::UpdateAttributes {
                changes: vec![("name".to_string(), Some("renamed".to_string()))],
            },
        )
        .expect("queue");
    kv.writes.set(0);
    group
        .advance(&provider, &kv, me, &identities, now + 2)
        .expect("advance");
    assert!(kv.writes.get() > 0, "an advance that commits stores it");
}
