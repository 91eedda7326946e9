//! The key material of deniable DMs: ephemeral leaf keys, pseudonym key
//! packages, binding tags and upload tags, with the real crypto. Each
//! rejection the DM and the node rely on is checked here once.

use kith_engine::identity::{
    BindingClaim, DeniableError, EphemeralKey, IdentityState, InboxId, InstallationKeys,
    KeyPackageError, LocalWallet, PSEUDONYM_CREDENTIAL_TYPE, UnsignedIdentityUpdate, binding_key,
    binding_tag, check_pseudonym, generate_deniable_key_package, generate_key_package,
    kith_credential, upload_key, upload_tag, validate_deniable_key_package, validate_key_package,
    verify_binding_tag, verify_upload_tag,
};
use openmls::prelude::{tls_codec::Deserialize as _, *};
use openmls_rust_crypto::OpenMlsRustCrypto;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore as _, SeedableRng};
use x25519_dalek::StaticSecret;

const NOW: u64 = 1_795_716_485; // seconds
const DAY: u64 = 24 * 60 * 60;

fn received(key_package: &KeyPackage) -> KeyPackageIn {
    let bytes = MlsMessageOut::from(key_package.clone())
        .to_bytes()
        .expect("serialise");
    received_bytes(&bytes).expect("parse")
}

fn received_bytes(bytes: &[u8]) -> Option<KeyPackageIn> {
    match MlsMessageIn::tls_deserialize_exact(bytes).ok()?.extract() {
        MlsMessageBodyIn::KeyPackage(kp) => Some(kp),
        _ => None,
    }
}

struct Side {
    inbox: InboxId,
    keys: InstallationKeys,
}

fn side(rng: &mut ChaCha20Rng) -> Side {
    Side {
        inbox: LocalWallet::generate(rng).inbox_id(),
        keys: InstallationKeys::generate(rng),
    }
}

#[test]
fn a_deniable_key_package_names_nobody_and_is_signed_by_its_own_leaf_key() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let provider = OpenMlsRustCrypto::default();
    let made =
        generate_deniable_key_package(&provider, &mut rng, NOW, 30 * DAY, false).expect("generate");
    let leaf = made.key_package.leaf_node();
    assert_eq!(
        leaf.credential().credential_type(),
        CredentialType::Other(PSEUDONYM_CREDENTIAL_TYPE)
    );
    assert_eq!(leaf.signature_key().as_slice(), made.leaf_key.public_key());
    check_pseudonym(leaf.credential()).expect("a pseudonym");

    let validated =
        validate_deniable_key_package(provider.crypto(), received(&made.key_package), NOW)
            .expect("valid");
    assert_eq!(validated.leaf_key, made.leaf_key.public_key());
    assert!(!validated.last_resort);

    // Two packages share neither key nor pseudonym.
    let other =
        generate_deniable_key_package(&provider, &mut rng, NOW, 30 * DAY, true).expect("generate");
    let other_leaf = other.key_package.leaf_node();
    assert_ne!(other_leaf.signature_key(), leaf.signature_key());
    assert_ne!(other_leaf.credential(), leaf.credential());
    assert!(
        validate_deniable_key_package(provider.crypto(), received(&other.key_package), NOW)
            .expect("valid")
            .last_resort
    );
}

#[test]
fn a_tampered_or_expired_deniable_key_package_is_refused() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let provider = OpenMlsRustCrypto::default();
    let made =
        generate_deniable_key_package(&provider, &mut rng, NOW, 30 * DAY, false).expect("generate");
    let bytes = MlsMessageOut::from(made.key_package.clone())
        .to_bytes()
        .expect("serialise");

    // Flip each of a spread of bytes: it either stops parsing or stops
    // verifying; never does a changed package validate.
    let mut parsed_but_refused = 0;
    for i in (8..bytes.len()).step_by(7) {
        let mut tampered = bytes.clone();
        tampered[i] ^= 0x01;
        if let Some(kp) = received_bytes(&tampered) {
            assert!(
                validate_deniable_key_package(provider.crypto(), kp, NOW).is_err(),
                "a package with byte {i} flipped validated"
            );
            parsed_but_refused += 1;
        }
    }
    // Most flips keep the structure: the signature check is what refuses.
    assert!(parsed_but_refused > 10, "only {parsed_but_refused} parsed");

    assert!(matches!(
        validate_deniable_key_package(
            provider.crypto(),
            received(&made.key_package),
            NOW + 31 * DAY
        ),
        Err(KeyPackageError::Expired { .. })
    ));
}

#[test]
fn deniable_and_ordinary_key_packages_are_not_mistaken_for_each_other() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let provider = OpenMlsRustCrypto::default();
    let wallet = LocalWallet::generate(&mut rng);
    let keys = InstallationKeys::generate(&mut rng);
    let mut state = IdentityState::new(wallet.inbox_id());
    let request = UnsignedIdentityUpdate::add_installation(wallet.inbox_id(), &keys, 1, NOW * 1000);
    let signature = wallet.sign_personal(request.signature_text().as_bytes());
    state
        .apply(&request.sign(signature, Some(&keys)))
        .expect("add");

    let ordinary = generate_key_package(&provider, &keys, wallet.inbox_id(), NOW, 30 * DAY, false)
        .expect("generate");
    assert!(matches!(
        validate_deniable_key_package(provider.crypto(), received(&ordinary), NOW),
        Err(KeyPackageError::Invalid(_))
    ));
    assert!(check_pseudonym(&kith_credential(wallet.inbox_id())).is_err());

    let deniable =
        generate_deniable_key_package(&provider, &mut rng, NOW, 30 * DAY, false).expect("generate");
    assert!(matches!(
        validate_key_package(
            provider.crypto(),
            received(&deniable.key_package),
            NOW,
            &state
        ),
        Err(KeyPackageError::Credential(_))
    ));
}

#[test]
fn both_ends_of_a_pair_compute_the_same_binding_key_and_only_they_do() {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let (alice, bob, mallory) = (side(&mut rng), side(&mut rng), side(&mut rng));
    let mut exporter = [0u8; 32];
    rng.fill_bytes(&mut exporter);

    let at_alice = binding_key(
        alice.keys.identity_secret(),
        &bob.keys.identity_public_key(),
        &exporter,
    )
    .expect("key");
    let at_bob = binding_key(
        bob.keys.identity_secret(),
        &alice.keys.identity_public_key(),
        &exporter,
    )
    .expect("key");
    assert_eq!(*at_alice, *at_bob);

    // Mallory knows Alice's public identity key and the exporter secret of
    // a group she is in, but not Bob's identity secret.
    let at_mallory = binding_key(
        mallory.keys.identity_secret(),
        &alice.keys.identity_public_key(),
        &exporter,
    )
    .expect("key");
    assert_ne!(*at_alice, *at_mallory);

    // Another epoch or group (another exporter secret) gives another key.
    let mut other = exporter;
    other[0] ^= 1;
    let elsewhere = binding_key(
        alice.keys.identity_secret(),
        &bob.keys.identity_public_key(),
        &other,
    )
    .expect("key");
    assert_ne!(*at_alice, *elsewhere);
}

#[test]
fn a_binding_tag_verifies_for_its_claim_only() {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let (alice, bob, mallory) = (side(&mut rng), side(&mut rng), side(&mut rng));
    let exporter = [7u8; 32];
    let ephemeral = EphemeralKey::generate(&mut rng).public_key();
    let group_id = b"a group id".to_vec();
    let key = binding_key(
        alice.keys.identity_secret(),
        &bob.keys.identity_public_key(),
        &exporter,
    )
    .expect("key");
    let claim = BindingClaim {
        ephemeral_key: &ephemeral,
        group_id: &group_id,
        inbox: alice.inbox,
        installation: alice.keys.id(),
    };
    let tag = binding_tag(&key, &claim);
    let at_bob = binding_key(
        bob.keys.identity_secret(),
        &alice.keys.identity_public_key(),
        &exporter,
    )
    .expect("key");
    verify_binding_tag(&at_bob, &claim, &tag).expect("verifies");

    let other_ephemeral = EphemeralKey::generate(&mut rng).public_key();
    let other_group = b"another group".to_vec();
    let changed = [
        BindingClaim {
            ephemeral_key: &other_ephemeral,
            ..claim
        },
        BindingClaim {
            group_id: &other_group,
            ..claim
        },
        BindingClaim {
            inbox: mallory.inbox,
            ..claim
        },
        BindingClaim {
            installation: mallory.keys.id(),
            ..claim
        },
    ];
    for changed in changed {
        assert_eq!(
            verify_binding_tag(&at_bob, &changed, &tag),
            Err(DeniableError::BadTag("binding"))
        );
    }
    assert!(verify_binding_tag(&at_bob, &claim, &tag[..31]).is_err());
    let mut flipped = tag;
    flipped[31] ^= 0x80;
    assert!(verify_binding_tag(&at_bob, &claim, &flipped).is_err());
}

#[test]
fn a_small_order_identity_key_cannot_key_a_mac() {
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    let alice = side(&mut rng);
    // The identity point and a point of order 8 on Curve25519.
    let zero = [0u8; 32];
    let order_eight: [u8; 32] =
        hex::decode("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
            .expect("hex")
            .try_into()
            .expect("32 bytes");
    for weak in [zero, order_eight] {
        assert!(matches!(
            binding_key(alice.keys.identity_secret(), &weak, &[0; 32]),
            Err(DeniableError::WeakKey(_))
        ));
        assert!(matches!(
            upload_key(alice.keys.identity_secret(), &weak),
            Err(DeniableError::WeakKey(_))
        ));
    }
}

#[test]
fn the_node_and_the_installation_share_the_upload_key_and_nobody_else_does() {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let (alice, mallory) = (side(&mut rng), side(&mut rng));
    let mut node_seed = [0u8; 32];
    rng.fill_bytes(&mut node_seed);
    let node = StaticSecret::from(node_seed);
    let node_public = x25519_dalek::PublicKey::from(&node).to_bytes();

    let at_alice = upload_key(alice.keys.identity_secret(), &node_public).expect("key");
    let at_node = upload_key(&node, &alice.keys.identity_public_key()).expect("key");
    assert_eq!(*at_alice, *at_node);

    let message = b"an upload";
    let tag = upload_tag(&at_alice, message);
    verify_upload_tag(&at_node, message, &tag).expect("verifies");
    assert!(verify_upload_tag(&at_node, b"another upload", &tag).is_err());

    // Mallory, with her own identity key, cannot pass as Alice.
    let at_mallory = upload_key(mallory.keys.identity_secret(), &node_public).expect("key");
    let forged = upload_tag(&at_mallory, message);
    assert_eq!(
        verify_upload_tag(&at_node, message, &forged),
        Err(DeniableError::BadTag("upload"))
    );
}

#[test]
fn an_ephemeral_key_round_trips_through_its_secret_bytes() {
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let key = EphemeralKey::generate(&mut rng);
    let back = EphemeralKey::from_secret_bytes(key.to_secret_bytes().as_ref()).expect("restore");
    assert_eq!(back.public_key(), key.public_key());
    assert_eq!(
        EphemeralKey::from_secret_bytes(&[0; 31]).map(|k| k.public_key()),
        Err(DeniableError::BadKeyLength(31))
    );
    // Debug shows the public key, never the secret.
    let printed = format!("{key:?}");
    assert!(printed.contains(&hex::encode(key.public_key())));
    assert!(!printed.contains(&hex::encode(key.to_secret_bytes().as_ref())));
}
