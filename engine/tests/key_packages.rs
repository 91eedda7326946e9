//! Key packages: Kith capabilities and lifetimes on generation; every
//! rejection on the receiving side; the inventory policy; and the private
//! keys a plan creates and deletes, seen in the store.

use kith_engine::identity::{
    CredentialError, IdentityState, InstallationKeys, InventoryPlan, KITH_CREDENTIAL_TYPE,
    KITH_EXTENSION_TYPES, KeyPackageError, KeyPackageInventory, KeyPackagePolicy, LastResortRecord,
    LocalWallet, RetiredLastResort, UnsignedIdentityUpdate, execute_plan, generate_key_package,
    validate_key_package, validate_leaf,
};
use openmls::prelude::{tls_codec::Deserialize as _, *};
use openmls_basic_credential::SignatureKeyPair;
use openmls_rust_crypto::OpenMlsRustCrypto;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const NOW: u64 = 1_795_716_485; // seconds; the tests pass time in explicitly
const DAY: u64 = 24 * 60 * 60;

struct Setup {
    provider: OpenMlsRustCrypto,
    wallet: LocalWallet,
    keys: InstallationKeys,
    state: IdentityState,
}

fn setup(seed: u64) -> Setup {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let wallet = LocalWallet::generate(&mut rng);
    let keys = InstallationKeys::generate(&mut rng);
    let mut state = IdentityState::new(wallet.inbox_id());
    let request = UnsignedIdentityUpdate::add_installation(wallet.inbox_id(), &keys, 1, NOW * 1000);
    let signature = wallet.sign_personal(request.signature_text().as_bytes());
    state
        .apply(&request.sign(signature, Some(&keys)))
        .expect("add");
    Setup {
        provider: OpenMlsRustCrypto::default(),
        wallet,
        keys,
        state,
    }
}

/// Through the wire, as a stranger receives it.
fn received(key_package: &KeyPackage) -> KeyPackageIn {
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

fn key_packages_in_store(provider: &OpenMlsRustCrypto) -> usize {
    provider
        .storage()
        .values
        .read()
        .expect("lock")
        .keys()
        .filter(|k| k.starts_with(b"KeyPackage"))
        .count()
}

#[test]
fn generated_key_packages_carry_kith_capabilities_and_lifetimes() {
    let s = setup(1);
    let kp = generate_key_package(
        &s.provider,
        &s.keys,
        s.wallet.inbox_id(),
        NOW,
        30 * DAY,
        false,
    )
    .expect("generate");
    let capabilities = kp.leaf_node().capabilities();
    for t in KITH_EXTENSION_TYPES {
        assert!(
            capabilities
                .extensions()
                .contains(&ExtensionType::Unknown(t))
        );
    }
    assert!(
        capabilities
            .credentials()
            .contains(&CredentialType::Other(KITH_CREDENTIAL_TYPE))
    );
    assert_eq!(kp.life_time().not_after(), NOW + 30 * DAY);
    assert!(kp.life_time().not_before() < NOW);
    assert!(!kp.last_resort());
    assert_eq!(
        kp.leaf_node().signature_key().as_slice(),
        s.keys.id().as_bytes()
    );

    let last_resort = generate_key_package(
        &s.provider,
        &s.keys,
        s.wallet.inbox_id(),
        NOW,
        30 * DAY,
        true,
    )
    .expect("generate");
    assert!(last_resort.last_resort());
    assert!(
        last_resort
            .extensions()
            .iter()
            .any(|e| e.extension_type() == ExtensionType::LastResort)
    );
}

#[test]
fn a_valid_key_package_is_accepted() {
    let s = setup(2);
    // Generated "now" by the system clock's standard, so that OpenMLS's own
    // clock check passes as well.
    let now = openmls_now();
    let kp = generate_key_package(
        &s.provider,
        &s.keys,
        s.wallet.inbox_id(),
        now,
        30 * DAY,
        true,
    )
    .expect("generate");
    let validated =
        validate_key_package(s.provider.crypto(), received(&kp), now, &s.state).expect("valid");
    assert_eq!(validated.installation, s.keys.id());
    assert!(validated.last_resort);
}

#[test]
fn expired_and_not_yet_valid_key_packages_are_rejected() {
    let s = setup(3);
    let now = openmls_now();
    let kp = generate_key_package(
        &s.provider,
        &s.keys,
        s.wallet.inbox_id(),
        now,
        30 * DAY,
        false,
    )
    .expect("generate");
    assert!(matches!(
        validate_key_package(s.provider.crypto(), received(&kp), now + 31 * DAY, &s.state),
        Err(KeyPackageError::Expired { .. })
    ));
    assert!(matches!(
        validate_key_package(s.provider.crypto(), received(&kp), now - 2 * DAY, &s.state),
        Err(KeyPackageError::NotYetValid { .. })
    ));
    // Expired by the system clock too: OpenMLS itself refuses it.
    let old = generate_key_package(
        &s.provider,
        &s.keys,
        s.wallet.inbox_id(),
        now - 100 * DAY,
        30 * DAY,
        false,
    )
    .expect("generate");
    assert!(validate_key_package(s.provider.crypto(), received(&old), now, &s.state).is_err());
}

#[test]
fn a_revoked_or_unknown_installation_is_rejected() {
    let mut s = setup(4);
    let now = openmls_now();
    let kp = generate_key_package(
        &s.provider,
        &s.keys,
        s.wallet.inbox_id(),
        now,
        30 * DAY,
        false,
    )
    .expect("generate");

    // Another inbox's log: the credential names the wrong inbox.
    let stranger =
        IdentityState::new(LocalWallet::generate(&mut ChaCha20Rng::seed_from_u64(99)).inbox_id());
    assert!(matches!(
        validate_key_package(s.provider.crypto(), received(&kp), now, &stranger),
        Err(KeyPackageError::Credential(
            CredentialError::WrongInbox { .. }
        ))
    ));

    // The right inbox, but an installation it never added.
    let rogue = InstallationKeys::generate(&mut ChaCha20Rng::seed_from_u64(100));
    let rogue_kp = generate_key_package(
        &s.provider,
        &rogue,
        s.wallet.inbox_id(),
        now,
        30 * DAY,
        false,
    )
    .expect("generate");
    assert!(matches!(
        validate_key_package(s.provider.crypto(), received(&rogue_kp), now, &s.state),
        Err(KeyPackageError::Credential(
            CredentialError::NotAnInstallation(_)
        ))
    ));

    // Revoke the installation: its key package and its leaf are rejected.
    let request = UnsignedIdentityUpdate::revoke_installation(
        s.wallet.inbox_id(),
        s.keys.id(),
        s.keys.identity_public_key(),
        2,
        now * 1000,
    );
    let signature = s.wallet.sign_personal(request.signature_text().as_bytes());
    s.state
        .apply(&request.sign(signature, None))
        .expect("revoke");
    assert!(matches!(
        validate_key_package(s.provider.crypto(), received(&kp), now, &s.state),
        Err(KeyPackageError::Credential(CredentialError::Revoked(_)))
    ));
    assert!(matches!(
        validate_leaf(
            kp.leaf_node().credential(),
            kp.leaf_node().signature_key().as_slice(),
            &s.state
        ),
        Err(CredentialError::Revoked(_))
    ));
}

#[test]
fn key_packages_without_kith_capabilities_or_credential_are_rejected() {
    let s = setup(5);
    let now = openmls_now();
    // A plain OpenMLS key package: Basic credential, default capabilities.
    let plain = basic_key_package(&s.provider, None);
    assert!(matches!(
        validate_key_package(s.provider.crypto(), received(&plain), now, &s.state),
        Err(KeyPackageError::MissingCapability(_))
    ));

    // Kith capabilities but a Basic credential.
    let basic = basic_key_package(
        &s.provider,
        Some(kith_engine::identity::kith_capabilities()),
    );
    assert!(matches!(
        validate_key_package(s.provider.crypto(), received(&basic), now, &s.state),
        Err(KeyPackageError::Credential(
            CredentialError::WrongCredentialType(1)
        ))
    ));
}

/// A key package with a Basic credential and, optionally, given
/// capabilities.
fn basic_key_package(
    provider: &OpenMlsRustCrypto,
    capabilities: Option<Capabilities>,
) -> KeyPackage {
    let signer = SignatureKeyPair::new(SignatureScheme::ED25519).expect("signer");
    let mut builder = KeyPackage::builder();
    if let Some(capabilities) = capabilities {
        builder = builder.leaf_node_capabilities(capabilities);
    }
    builder
        .build(
            Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519,
            provider,
            &signer,
            CredentialWithKey {
                credential: BasicCredential::new(b"someone".to_vec()).into(),
                signature_key: signer.public().into(),
            },
        )
        .expect("key package")
        .key_package()
        .clone()
}

#[test]
fn a_tampered_key_package_is_rejected() {
    let s = setup(6);
    let now = openmls_now();
    let kp = generate_key_package(
        &s.provider,
        &s.keys,
        s.wallet.inbox_id(),
        now,
        30 * DAY,
        false,
    )
    .expect("generate");
    let bytes = MlsMessageOut::from(kp).to_bytes().expect("serialise");
    let mut rejected = 0;
    // Flip one byte at a time across the whole package: each either fails
    // to parse or fails validation; none is accepted.
    for at in (0..bytes.len()).step_by(3) {
        let mut tampered = bytes.clone();
        tampered[at] ^= 0x01;
        let Ok(message) = MlsMessageIn::tls_deserialize_exact(tampered.as_slice()) else {
            rejected += 1;
            continue;
        };
        let MlsMessageBodyIn::KeyPackage(kp) = message.extract() else {
            rejected += 1;
            continue;
        };
        assert!(
            validate_key_package(s.provider.crypto(), kp, now, &s.state).is_err(),
            "a key package with byte {at} flipped was accepted"
        );
        rejected += 1;
    }
    assert!(rejected > 50);
}

#[test]
fn the_policy_refills_rotates_and_expires_retired_keys() {
    let policy = KeyPackagePolicy::default();
    let hour = 60 * 60 * 1000;
    let empty = KeyPackageInventory::default();

    // First run: a full pool and a last-resort package.
    let plan = policy.plan(&empty, 0, 0);
    assert_eq!(plan.generate_one_time, 100);
    assert!(plan.rotate_last_resort);

    let fresh = KeyPackageInventory {
        last_resort: Some(LastResortRecord {
            hash_ref: vec![1],
            created_at_ms: 0,
            first_used_at_ms: None,
        }),
        retired: vec![],
    };
    assert!(
        policy.plan(&fresh, 10, hour).is_empty(),
        "10 left is enough"
    );
    assert_eq!(policy.plan(&fresh, 9, hour).generate_one_time, 91);

    // Rotation at 30 days.
    assert!(
        !policy
            .plan(&fresh, 50, 30 * 24 * hour - 1)
            .rotate_last_resort
    );
    assert!(policy.plan(&fresh, 50, 30 * 24 * hour).rotate_last_resort);

    // Rotation after use, debounced by 10 minutes.
    let mut used = fresh.clone();
    used.note_last_resort_used(&[1], 5 * hour);
    used.note_last_resort_used(&[1], 5 * hour + 1); // only the first use counts
    assert!(
        !policy
            .plan(&used, 50, 5 * hour + 10 * 60 * 1000 - 1)
            .rotate_last_resort
    );
    assert!(
        policy
            .plan(&used, 50, 5 * hour + 10 * 60 * 1000)
            .rotate_last_resort
    );
    let mut other = fresh.clone();
    other.note_last_resort_used(&[2], 5 * hour);
    assert_eq!(other, fresh, "a use of another package is not this one's");

    // Retired keys are deleted after 24 hours.
    let retired = KeyPackageInventory {
        retired: vec![
            RetiredLastResort {
                hash_ref: vec![7],
                retired_at_ms: 0,
            },
            RetiredLastResort {
                hash_ref: vec![8],
                retired_at_ms: 2 * hour,
            },
        ],
        ..fresh
    };
    assert_eq!(
        policy.plan(&retired, 50, 24 * hour),
        InventoryPlan {
            delete_retired: vec![vec![7]],
            ..InventoryPlan::default()
        }
    );

    let bytes = retired.to_bytes();
    assert_eq!(
        KeyPackageInventory::from_bytes(&bytes).expect("decodes"),
        retired
    );
}

#[test]
fn executing_plans_creates_rotates_and_deletes_private_keys() {
    let s = setup(7);
    let policy = KeyPackagePolicy {
        target_pool: 5,
        refill_below: 2,
        ..KeyPackagePolicy::default()
    };
    let mut inventory = KeyPackageInventory::default();
    let t0 = NOW * 1000;
    let plan = policy.plan(&inventory, 0, t0);
    let made = execute_plan(
        &s.provider,
        &s.keys,
        s.wallet.inbox_id(),
        &policy,
        &mut inventory,
        &plan,
        t0,
    )
    .expect("execute");
    assert_eq!(made.one_time.len(), 5);
    let first_last_resort = made.last_resort.expect("a last-resort package");
    assert_eq!(key_packages_in_store(&s.provider), 6);

    // 31 days later: rotate. The old private key stays (grace period).
    let t1 = t0 + 31 * DAY * 1000;
    let plan = policy.plan(&inventory, 5, t1);
    assert!(plan.rotate_last_resort && plan.generate_one_time == 0);
    execute_plan(
        &s.provider,
        &s.keys,
        s.wallet.inbox_id(),
        &policy,
        &mut inventory,
        &plan,
        t1,
    )
    .expect("execute");
    assert_eq!(key_packages_in_store(&s.provider), 7);
    assert_eq!(inventory.retired.len(), 1);
    let old_ref = first_last_resort
        .hash_ref(s.provider.crypto())
        .expect("hash ref");
    assert_eq!(inventory.retired[0].hash_ref, old_ref.as_slice());

    // Within the grace period nothing is deleted; after it, the key is gone.
    let plan = policy.plan(&inventory, 5, t1 + 23 * 60 * 60 * 1000);
    assert!(plan.is_empty());
    let t2 = t1 + 24 * 60 * 60 * 1000;
    let plan = policy.plan(&inventory, 5, t2);
    assert_eq!(plan.delete_retired, vec![old_ref.as_slice().to_vec()]);
    execute_plan(
        &s.provider,
        &s.keys,
        s.wallet.inbox_id(),
        &policy,
        &mut inventory,
        &plan,
        t2,
    )
    .expect("execute");
    assert_eq!(key_packages_in_store(&s.provider), 6);
    assert!(inventory.retired.is_empty());
    let gone: Option<KeyPackageBundle> =
        openmls_traits::storage::StorageProvider::key_package(s.provider.storage(), &old_ref)
            .expect("read");
    assert!(gone.is_none(), "the retired private key is deleted");
}

/// OpenMLS checks lifetimes against the system clock while verifying; for
/// the packages that must pass that check, generate them at the system
/// time. (The engine itself never reads the clock; tests may.)
#[allow(clippy::disallowed_methods)]
fn openmls_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}
