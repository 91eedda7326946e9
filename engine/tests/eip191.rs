//! EIP-191 `personal_sign` against vectors made by a standard Ethereum
//! library (eth-account), read from `../shared/test-vectors/eip191.json` or
//! `$KITH_TEST_VECTORS`; they are not copied into this repository.

use std::path::PathBuf;

use kith_engine::identity::{IdentityError, InboxId, LocalWallet, eip191_hash, recover_signer};
use serde::Deserialize;

#[derive(Deserialize)]
struct Vectors {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    private_key: String,
    address: String,
    message: String,
    eip191_hash: String,
    signature: String,
}

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s.trim_start_matches("0x")).expect("vector hex")
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

#[test]
fn eip191_vectors() {
    let Some(dir) = vectors_dir("eip191 vectors") else {
        return;
    };
    let text = std::fs::read_to_string(dir.join("eip191.json")).expect("read eip191.json");
    let vectors: Vectors = serde_json::from_str(&text).expect("parse eip191.json");
    assert!(!vectors.cases.is_empty());
    for (i, case) in vectors.cases.iter().enumerate() {
        let wallet = LocalWallet::from_private_key_hex(&case.private_key).expect("private key");
        let message = case.message.as_bytes();

        // Address, in EIP-55 form both ways.
        assert_eq!(
            wallet.inbox_id().to_string(),
            case.address,
            "case {i}: address"
        );
        let parsed: InboxId = case.address.parse().expect("checksummed address parses");
        assert_eq!(parsed, wallet.inbox_id(), "case {i}: parse");

        // Hash.
        assert_eq!(
            eip191_hash(message).to_vec(),
            unhex(&case.eip191_hash),
            "case {i}: hash"
        );

        // Signature bytes: RFC 6979 signing is deterministic, so ours must
        // equal the library's exactly.
        let expected: [u8; 65] = unhex(&case.signature).try_into().expect("65 bytes");
        assert_eq!(
            wallet.sign_personal(message),
            expected,
            "case {i}: signature"
        );

        // Recovery.
        assert_eq!(
            recover_signer(message, &expected).expect("recovers"),
            wallet.inbox_id(),
            "case {i}: recovery"
        );
        // The signature does not hold for another message.
        let mut other = message.to_vec();
        other.push(b'!');
        assert_ne!(
            recover_signer(&other, &expected).ok(),
            Some(wallet.inbox_id()),
            "case {i}: signature is bound to its message"
        );
    }
    println!("eip191 vectors: {} cases passed", vectors.cases.len());
}

#[test]
fn inbox_ids_parse_any_case_but_check_mixed_case() {
    let checksummed = "0xB5b61b1Ef312c72F648B49c08E83f0cDf8fBEf7b";
    let inbox: InboxId = checksummed.parse().expect("parses");
    assert_eq!(inbox.to_string(), checksummed);
    let lower: InboxId = checksummed
        .to_lowercase()
        .parse()
        .expect("lowercase parses");
    assert_eq!(lower, inbox);
    let upper = format!("0x{}", checksummed[2..].to_uppercase());
    assert_eq!(upper.parse::<InboxId>().expect("uppercase parses"), inbox);

    // One letter's case flipped: a wrong checksum.
    let mut wrong = checksummed.to_owned();
    wrong.replace_range(3..4, "B"); // 'b' -> 'B'
    assert!(matches!(
        wrong.parse::<InboxId>(),
        Err(IdentityError::BadChecksum(_))
    ));

    for bad in [
        "",
        "0x",
        "B5b61b1Ef312c72F648B49c08E83f0cDf8fBEf7b",
        "0xB5b61b1Ef312c72F648B49c08E83f0cDf8fBEf7",
        "0xB5b61b1Ef312c72F648B49c08E83f0cDf8fBEf7bb",
        "0xZ5b61b1Ef312c72F648B49c08E83f0cDf8fBEf7b",
    ] {
        assert!(
            matches!(
                bad.parse::<InboxId>(),
                Err(IdentityError::InvalidAddress(_))
            ),
            "{bad:?} must not parse"
        );
    }
}

#[test]
fn bad_keys_and_signatures_are_errors_not_panics() {
    for bad in [
        "",
        "zz",
        "00",
        &"00".repeat(32),
        &"ff".repeat(32),
        &"11".repeat(33),
    ] {
        assert!(
            LocalWallet::from_private_key_hex(bad).is_err(),
            "{bad:?} must be rejected"
        );
    }
    let wallet = LocalWallet::from_private_key_hex(&"11".repeat(32)).expect("valid key");
    let mut signature = wallet.sign_personal(b"hi");
    assert_eq!(
        recover_signer(b"hi", &signature).expect("ok"),
        wallet.inbox_id()
    );
    for v in [0u8, 1, 26, 29, 255] {
        signature[64] = v;
        assert!(matches!(
            recover_signer(b"hi", &signature),
            Err(IdentityError::BadWalletSignature(_))
        ));
    }
    assert!(recover_signer(b"hi", &[0u8; 65]).is_err());

    // The same signature with s replaced by n - s (and v flipped) recovers
    // the same key mathematically; it is refused as non-canonical.
    let good = wallet.sign_personal(b"hi");
    let signature = k256::ecdsa::Signature::from_slice(&good[..64]).expect("valid");
    let (r, s) = signature.split_scalars();
    let high = k256::ecdsa::Signature::from_scalars(r, -*s).expect("valid scalars");
    let mut malleated = [0u8; 65];
    malleated[..64].copy_from_slice(&high.to_bytes());
    malleated[64] = if good[64] == 27 { 28 } else { 27 };
    assert!(matches!(
        recover_signer(b"hi", &malleated),
        Err(IdentityError::BadWalletSignature(_))
    ));
    assert!(recover_signer(b"hi", &[0xffu8; 65]).is_err());
}
