//! The IETF MLS passive-client test vectors, run on `KithProvider`.
//!
//! The vectors are read from `../shared/test-vectors` next to the workspace
//! (or from `$KITH_TEST_VECTORS`); they are public data and are not copied
//! into this repository. Where the folder is missing the test says so in one
//! line and passes without running.

mod common;

use std::path::PathBuf;

use kith_storage::KithProvider;
use openmls::{
    prelude::{tls_codec::Deserialize as _, *},
    schedule::PreSharedKeyId,
};
use openmls_traits::storage::StorageProvider as _;
use serde::Deserialize;

const FILES: [&str; 3] = [
    "passive-client-welcome.json",
    "passive-client-handling-commit.json",
    "passive-client-random.json",
];

#[derive(Deserialize)]
struct Vector {
    cipher_suite: u16,
    external_psks: Vec<ExternalPsk>,
    #[serde(with = "hex::serde")]
    key_package: Vec<u8>,
    #[serde(with = "hex::serde")]
    encryption_priv: Vec<u8>,
    #[serde(with = "hex::serde")]
    init_priv: Vec<u8>,
    #[serde(with = "hex::serde")]
    welcome: Vec<u8>,
    ratchet_tree: Option<Hex>,
    #[serde(with = "hex::serde")]
    initial_epoch_authenticator: Vec<u8>,
    epochs: Vec<Epoch>,
}

#[derive(Deserialize)]
struct Hex(#[serde(with = "hex::serde")] Vec<u8>);

#[derive(Deserialize)]
struct ExternalPsk {
    #[serde(with = "hex::serde")]
    psk_id: Vec<u8>,
    #[serde(with = "hex::serde")]
    psk: Vec<u8>,
}

#[derive(Deserialize)]
struct Epoch {
    proposals: Vec<Hex>,
    #[serde(with = "hex::serde")]
    commit: Vec<u8>,
    #[serde(with = "hex::serde")]
    epoch_authenticator: Vec<u8>,
}

/// The vectors folder: `$KITH_TEST_VECTORS`, or `../shared/test-vectors`
/// beside the workspace. A missing folder fails the test (a wrong path
/// must not pass silently) unless `KITH_SKIP_TEST_VECTORS=1` asks to skip
/// it; then `None`, after one line saying so.
fn vectors_dir(what: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("KITH_TEST_VECTORS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/test-vectors"),
        PathBuf::from,
    );
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var_os("KITH_SKIP_TEST_VECTORS").is_some_and(|v| v == "1") {
        eprintln!(
            "{what}: skipped as KITH_SKIP_TEST_VECTORS=1 asks: no test-vector folder at {}",
            dir.display()
        );
        return None;
    }
    panic!(
        "{what}: no test-vector folder at {}; put ../shared beside the workspace, set \
         KITH_TEST_VECTORS to the folder, or set KITH_SKIP_TEST_VECTORS=1 to skip",
        dir.display()
    );
}

/// Put the vector's key package, with its private keys, into the store the
/// way OpenMLS would have after generating it. `KeyPackageBundle` has no
/// public constructor, so it is built through its serde form.
fn inject_key_package(provider: &KithProvider, vector: &Vector) -> Result<(), String> {
    let message = MlsMessageIn::tls_deserialize_exact(vector.key_package.as_slice())
        .map_err(|e| format!("key package: {e:?}"))?;
    let MlsMessageBodyIn::KeyPackage(key_package) = message.extract() else {
        return Err("key_package is not a KeyPackage message".into());
    };
    // `KeyPackageIn::validate` would reject these key packages: their
    // lifetimes ended in 2024. Convert through serde instead (the two types
    // share their serde form), and prove the conversion faithful by
    // re-serialising to the vector's exact bytes.
    let key_package: KeyPackage = serde_json::to_value(&key_package)
        .and_then(serde_json::from_value)
        .map_err(|e| format!("key package conversion: {e}"))?;
    let round_trip = MlsMessageOut::from(key_package.clone())
        .to_bytes()
        .map_err(|e| format!("key package: {e:?}"))?;
    if round_trip != vector.key_package {
        return Err("key package did not survive conversion unchanged".into());
    }
    let bundle: KeyPackageBundle = serde_json::from_value(serde_json::json!({
        "key_package": key_package,
        "private_init_key": HpkePrivateKey::from(vector.init_priv.clone()),
        "private_encryption_key": { "key": HpkePrivateKey::from(vector.encryption_priv.clone()) },
    }))
    .map_err(|e| format!("key package bundle: {e}"))?;
    let hash_ref = key_package
        .hash_ref(provider.crypto())
        .map_err(|e| format!("hash ref: {e:?}"))?;
    provider
        .storage()
        .write_key_package(&hash_ref, &bundle)
        .map_err(|e| format!("store key package: {e}"))
}

fn run(provider: &KithProvider, vector: &Vector) -> Result<(), String> {
    for psk in &vector.external_psks {
        PreSharedKeyId::external(psk.psk_id.clone(), vec![])
            .store(provider, &psk.psk)
            .map_err(|e| format!("psk: {e:?}"))?;
    }
    inject_key_package(provider, vector)?;

    let join_config = MlsGroupJoinConfig::builder()
        .use_ratchet_tree_extension(true)
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .number_of_resumption_psks(16)
        .build();
    let welcome = MlsMessageIn::tls_deserialize_exact(vector.welcome.as_slice())
        .map_err(|e| format!("welcome: {e:?}"))?;
    let MlsMessageBodyIn::Welcome(welcome) = welcome.extract() else {
        return Err("welcome is not a Welcome message".into());
    };
    let mut group = provider
        .storage()
        .step(|| {
            // The vectors were generated long ago with short leaf lifetimes.
            let mut builder = StagedWelcome::build_from_welcome(provider, &join_config, welcome)?
                .skip_lifetime_validation();
            if let Some(tree) = &vector.ratchet_tree {
                builder = builder
                    .with_ratchet_tree(RatchetTreeIn::tls_deserialize_exact(tree.0.as_slice())?);
            }
            Ok::<_, common::TestError>(builder.build()?.into_group(provider)?)
        })
        .map_err(|e| format!("join: {e}"))?;
    if group.epoch_authenticator().as_slice() != vector.initial_epoch_authenticator {
        return Err("initial epoch authenticator differs".into());
    }

    for (i, epoch) in vector.epochs.iter().enumerate() {
        for proposal in &epoch.proposals {
            provider
                .storage()
                .step(|| common::receive(provider, &mut group, &proposal.0))
                .map_err(|e| format!("epoch {i}: proposal: {e}"))?;
        }
        provider
            .storage()
            .step(|| common::receive(provider, &mut group, &epoch.commit))
            .map_err(|e| format!("epoch {i}: commit: {e}"))?;
        if group.epoch_authenticator().as_slice() != epoch.epoch_authenticator {
            return Err(format!("epoch {i}: epoch authenticator differs"));
        }
    }
    Ok(())
}

#[test]
fn passive_client_vectors() {
    let Some(dir) = vectors_dir("passive-client vectors") else {
        return;
    };
    let supported = openmls_rust_crypto::RustCrypto::default();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut passed = 0;
    let mut failures = Vec::new();
    for file in FILES {
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let vectors: Vec<Vector> =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("parse {file}: {e}"));
        assert!(!vectors.is_empty(), "{file} holds no vectors");
        for (i, vector) in vectors.iter().enumerate() {
            let Ok(suite) = Ciphersuite::try_from(vector.cipher_suite) else {
                continue;
            };
            if supported.supports(suite).is_err() {
                continue;
            }
            let provider =
                KithProvider::open(tmp.path().join(format!("{file}-{i}"))).expect("open");
            match run(&provider, vector) {
                Ok(()) => passed += 1,
                Err(e) => {
                    failures.push(format!("{file} #{i} (suite {}): {e}", vector.cipher_suite))
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "failed vectors:\n{}",
        failures.join("\n")
    );
    println!("passive-client vectors: {passed} cases passed");
    assert!(
        passed >= 64,
        "expected at least 64 supported cases, ran {passed}"
    );
}
