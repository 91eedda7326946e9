//! The engine's identity ports on sled: the shared store suites, keys that
//! survive a restart, and private keys of key packages deleted when they
//! should be, seen in the sled store.

mod common;

use kith_engine::identity::{
    CIPHERSUITE, EphemeralKey, IdentityState, InstallationKeys, InstallationStore,
    KeyPackageInventoryStore, KeyPackagePolicy, LocalWallet, UnsignedIdentityUpdate,
    deniable_capabilities, execute_deniable_plan, execute_plan, generate_key_package,
    kith_capabilities, kith_credential, pseudonym_credential,
    test_suite::{installation_store_suite, inventory_store_suite},
};
use kith_storage::{EntryKind, KithProvider, SledMlsStorage};
use openmls::prelude::{OpenMlsProvider as _, tls_codec::Deserialize as _, *};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

#[test]
fn sled_installation_store_passes_the_suite_and_survives_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("db");
    let id = {
        let storage = SledMlsStorage::open(&path).expect("open");
        installation_store_suite(&storage);
        storage
            .load_installation()
            .expect("load")
            .expect("stored")
            .id()
    };
    let storage = SledMlsStorage::open(&path).expect("reopen");
    assert_eq!(
        storage
            .load_installation()
            .expect("load")
            .expect("stored")
            .id(),
        id
    );
}

#[test]
fn sled_inventory_store_passes_the_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    inventory_store_suite(&SledMlsStorage::open(dir.path().join("db")).expect("open"));
}

#[test]
fn corrupt_installation_keys_are_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = SledMlsStorage::open(dir.path().join("db")).expect("open");
    let tree = storage.db().open_tree("kith-openmls").expect("tree");
    tree.insert(b"Kinstallation", b"short".as_slice())
        .expect("insert");
    assert!(storage.load_installation().is_err());
    tree.insert(b"Kkey-package-inventory", b"\xff\xff".as_slice())
        .expect("insert");
    assert!(storage.load_inventory().is_err());
}

struct Client {
    provider: KithProvider,
    wallet: LocalWallet,
    keys: InstallationKeys,
}

impl Client {
    fn new(dir: &std::path::Path, name: &str, seed: u64) -> Self {
        let provider = KithProvider::open(dir.join(name)).expect("open");
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let wallet = LocalWallet::generate(&mut rng);
        let keys = InstallationKeys::generate(&mut rng);
        Self {
            provider,
            wallet,
            keys,
        }
    }

    fn credential(&self) -> CredentialWithKey {
        CredentialWithKey {
            credential: kith_credential(self.wallet.inbox_id()),
            signature_key: self.keys.id().as_bytes().to_vec().into(),
        }
    }

    fn identity(&self) -> IdentityState {
        let mut state = IdentityState::new(self.wallet.inbox_id());
        let request =
            UnsignedIdentityUpdate::add_installation(self.wallet.inbox_id(), &self.keys, 1, 0);
        let signature = self
            .wallet
            .sign_personal(request.signature_text().as_bytes());
        state
            .apply(&request.sign(signature, Some(&self.keys)))
            .expect("add installation");
        state
    }

    fn key_packages_stored(&self) -> usize {
        self.provider
            .storage()
            .count_entries(EntryKind::KeyPackage)
            .expect("count")
    }
}

/// Alice adds `key_package` to a new group; Bob processes the Welcome in a
/// step.
fn welcome_bob(alice: &Client, bob: &Client, key_package: KeyPackage) -> MlsGroup {
    let group = MlsGroup::builder()
        .ciphersuite(CIPHERSUITE)
        .with_capabilities(kith_capabilities())
        .use_ratchet_tree_extension(true)
        .build(&alice.provider, &alice.keys, alice.credential())
        .expect("create group");
    welcome_into(group, &alice.provider, &alice.keys, bob, key_package)
}

/// `group`'s creator adds `key_package`; Bob processes the Welcome in a
/// step.
fn welcome_into(
    mut group: MlsGroup,
    provider: &KithProvider,
    signer: &impl openmls_traits::signatures::Signer,
    bob: &Client,
    key_package: KeyPackage,
) -> MlsGroup {
    let (_, welcome, _) = group
        .add_members(provider, signer, &[key_package])
        .expect("add bob");
    group.merge_pending_commit(provider).expect("merge");
    let welcome =
        MlsMessageIn::tls_deserialize_exact(welcome.to_bytes().expect("serialise").as_slice())
            .expect("parse")
            .extract();
    let MlsMessageBodyIn::Welcome(welcome) = welcome else {
        panic!("expected a welcome");
    };
    bob.provider
        .storage()
        .step(|| {
            let join = MlsGroupJoinConfig::builder()
                .use_ratchet_tree_extension(true)
                .build();
            StagedWelcome::new_from_welcome(&bob.provider, &join, welcome, None)?
                .into_group(&bob.provider)
                .map_err(common::TestError::from)
        })
        .expect("bob joins")
}

#[test]
fn a_one_time_private_key_is_deleted_when_its_welcome_is_processed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let alice = Client::new(dir.path(), "alice", 1);
    let bob = Client::new(dir.path(), "bob", 2);
    let now = system_now();
    let key_package = generate_key_package(
        &bob.provider,
        &bob.keys,
        bob.wallet.inbox_id(),
        now,
        30 * 24 * 3600,
        false,
    )
    .expect("generate");
    assert_eq!(bob.key_packages_stored(), 1);
    let validated = kith_engine::identity::validate_key_package(
        alice.provider.crypto(),
        key_package_in(&key_package),
        now,
        &bob.identity(),
    )
    .expect("alice accepts bob's key package");
    let group = welcome_bob(&alice, &bob, validated.key_package);
    assert_eq!(group.members().count(), 2);
    assert_eq!(
        bob.key_packages_stored(),
        0,
        "the one-time private key is gone"
    );
}

#[test]
fn a_retired_last_resort_key_is_kept_for_the_grace_period_then_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let alice = Client::new(dir.path(), "alice", 3);
    let bob = Client::new(dir.path(), "bob", 4);
    let storage = bob.provider.storage();
    let policy = KeyPackagePolicy {
        target_pool: 0,
        refill_below: 0,
        ..KeyPackagePolicy::default()
    };
    let t0 = system_now() * 1000;
    let hour = 3_600_000;

    // Plan and execute at `now`: keys and inventory commit in one step.
    let run = |now: u64| {
        storage
            .step(|| {
                let mut inventory = storage.load_inventory()?;
                let plan = policy.plan(&inventory, 0, now);
                let made = execute_plan(
                    &bob.provider,
                    &bob.keys,
                    bob.wallet.inbox_id(),
                    &policy,
                    &mut inventory,
                    &plan,
                    now,
                )?;
                storage.save_inventory(&inventory)?;
                Ok::<_, common::TestError>((plan, made))
            })
            .expect("plan")
    };

    // Make the last-resort package.
    let (_, made) = run(t0);
    let last_resort = made.last_resort.expect("a last-resort package");
    assert_eq!(bob.key_packages_stored(), 1);

    // It is used: the Welcome leaves the last-resort key in place.
    welcome_bob(&alice, &bob, last_resort.clone());
    assert_eq!(bob.key_packages_stored(), 1, "last-resort keys survive use");
    let hash_ref = last_resort
        .hash_ref(bob.provider.crypto())
        .expect("hash ref");
    let mut inventory = storage.load_inventory().expect("load");
    inventory.note_last_resort_used(hash_ref.as_slice(), t0 + hour);
    storage.save_inventory(&inventory).expect("save");

    // Rotation after use: a new one, the old one retired but still stored.
    let (plan, _) = run(t0 + 2 * hour);
    assert!(plan.rotate_last_resort);
    assert_eq!(bob.key_packages_stored(), 2, "the retired key is kept");
    let (plan, _) = run(t0 + 25 * hour);
    assert!(plan.delete_retired.is_empty(), "23 hours after retiring");
    assert_eq!(bob.key_packages_stored(), 2);
    let (plan, _) = run(t0 + 26 * hour);
    assert_eq!(plan.delete_retired, vec![hash_ref.as_slice().to_vec()]);
    assert_eq!(bob.key_packages_stored(), 1, "the retired key is deleted");
    let gone: Option<KeyPackageBundle> =
        openmls_traits::storage::StorageProvider::key_package(storage, &hash_ref).expect("read");
    assert!(gone.is_none());
    assert!(storage.load_inventory().expect("load").retired.is_empty());
}

#[test]
fn the_deniable_pool_rotates_and_deletes_its_last_resort_keys_like_the_ordinary_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bob = Client::new(dir.path(), "bob", 5);
    let storage = bob.provider.storage();
    let policy = KeyPackagePolicy {
        target_pool: 3,
        refill_below: 1,
        ..KeyPackagePolicy::default()
    };
    let t0 = system_now() * 1000;
    let hour = 3_600_000;
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    let mut run = |now: u64| {
        storage
            .step(|| {
                let mut inventory = storage.load_deniable_inventory()?;
                let plan = policy.plan(&inventory, 0, now);
                let made = execute_deniable_plan(
                    &bob.provider,
                    &mut rng,
                    &policy,
                    &mut inventory,
                    &plan,
                    now,
                )?;
                storage.save_deniable_inventory(&inventory)?;
                Ok::<_, common::TestError>((plan, made))
            })
            .expect("plan")
    };

    let (_, made) = run(t0);
    assert_eq!(made.one_time.len(), 3);
    let alice = Client::new(dir.path(), "alice", 7);
    let last_resort = made.last_resort.expect("a deniable last-resort package");
    assert!(last_resort.key_package.last_resort());
    assert_eq!(bob.key_packages_stored(), 4, "HPKE keys of all four");
    assert!(
        storage
            .load_inventory()
            .expect("load")
            .last_resort
            .is_none(),
        "the ordinary inventory is untouched"
    );
    let leaf_keys: std::collections::BTreeSet<[u8; 32]> = made
        .one_time
        .iter()
        .chain([&last_resort])
        .map(|m| m.leaf_key.public_key())
        .collect();
    assert_eq!(leaf_keys.len(), 4, "a fresh leaf key per package");

    // A Welcome for a one-time deniable package deletes its HPKE keys, as
    // for ordinary packages. (Its leaf key becomes the DM's signing key.)
    let alice_key = EphemeralKey::generate(&mut ChaCha20Rng::seed_from_u64(8));
    let deniable_group = MlsGroup::builder()
        .ciphersuite(CIPHERSUITE)
        .with_capabilities(deniable_capabilities())
        .use_ratchet_tree_extension(true)
        .build(
            &alice.provider,
            &alice_key,
            CredentialWithKey {
                credential: pseudonym_credential(&mut ChaCha20Rng::seed_from_u64(9)),
                signature_key: alice_key.public_key().to_vec().into(),
            },
        )
        .expect("a deniable group");
    welcome_into(
        deniable_group,
        &alice.provider,
        &alice_key,
        &bob,
        made.one_time[0].key_package.clone(),
    );
    assert_eq!(
        bob.key_packages_stored(),
        3,
        "the used one-time key is gone"
    );

    let hash_ref = last_resort
        .key_package
        .hash_ref(bob.provider.crypto())
        .expect("hash ref");
    let mut inventory = storage.load_deniable_inventory().expect("load");
    inventory.note_last_resort_used(hash_ref.as_slice(), t0 + hour);
    storage.save_deniable_inventory(&inventory).expect("save");
    let (plan, made) = run(t0 + 2 * hour);
    assert!(plan.rotate_last_resort);
    assert!(
        made.retired_leaf_keys.is_empty(),
        "kept for the grace period"
    );
    let (plan, made) = run(t0 + 26 * hour);
    assert_eq!(plan.delete_retired, vec![hash_ref.as_slice().to_vec()]);
    assert_eq!(
        made.retired_leaf_keys,
        vec![last_resort.leaf_key.public_key()],
        "the caller is told which leaf key to retire"
    );
    let gone: Option<KeyPackageBundle> =
        openmls_traits::storage::StorageProvider::key_package(storage, &hash_ref).expect("read");
    assert!(gone.is_none(), "its HPKE key is deleted");
}

fn key_package_in(key_package: &KeyPackage) -> KeyPackageIn {
    let bytes = MlsMessageOut::from(key_package.clone())
        .to_bytes()
        .expect("serialise");
    match MlsMessageIn::tls_deserialize_exact(bytes.as_slice())
        .expect("parse")
        .extract()
    {
        MlsMessageBodyIn::KeyPackage(kp) => kp,
        _ => panic!("expected a key package"),
    }
}

/// OpenMLS checks lifetimes against the system clock, so packages that must
/// pass its checks are generated at the system time.
fn system_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}
