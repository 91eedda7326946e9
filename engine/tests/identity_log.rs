//! Identity logs: what is accepted, and every way a forged or broken update
//! is rejected (each with its own error, and without changing the state).

use kith_engine::identity::{
    IdentityConfig, IdentityError, IdentityState, IdentityUpdate, InstallationKeys, LocalWallet,
    UnsignedIdentityUpdate, UpdateAction,
};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

struct World {
    rng: ChaCha20Rng,
    wallet: LocalWallet,
}

impl World {
    fn new(seed: u64) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let wallet = LocalWallet::generate(&mut rng);
        Self { rng, wallet }
    }

    fn installation(&mut self) -> InstallationKeys {
        InstallationKeys::generate(&mut self.rng)
    }

    fn add(&self, keys: &InstallationKeys, sequence: u64, time_ms: u64) -> IdentityUpdate {
        let request = UnsignedIdentityUpdate::add_installation(
            self.wallet.inbox_id(),
            keys,
            sequence,
            time_ms,
        );
        let signature = self
            .wallet
            .sign_personal(request.signature_text().as_bytes());
        request.sign(signature, Some(keys))
    }

    fn revoke(&self, keys: &InstallationKeys, sequence: u64, time_ms: u64) -> IdentityUpdate {
        let request = UnsignedIdentityUpdate::revoke_installation(
            self.wallet.inbox_id(),
            keys.id(),
            keys.identity_public_key(),
            sequence,
            time_ms,
        );
        let signature = self
            .wallet
            .sign_personal(request.signature_text().as_bytes());
        request.sign(signature, None)
    }

    fn state(&self) -> IdentityState {
        IdentityState::new(self.wallet.inbox_id())
    }
}

/// Apply `update` to `state`, which must reject it and stay unchanged.
fn rejected(state: &mut IdentityState, update: &IdentityUpdate) -> IdentityError {
    let before = state.clone();
    let error = state.apply(update).expect_err("must be rejected");
    assert_eq!(*state, before, "a rejected update changed the state");
    // The same update also fails through the wire encoding.
    let decoded = IdentityUpdate::from_bytes(&update.to_bytes()).expect("decodes");
    assert_eq!(&decoded, update);
    error
}

#[test]
fn a_valid_log_adds_and_revokes_installations() {
    let mut w = World::new(1);
    let (phone, laptop) = (w.installation(), w.installation());
    let log = vec![
        w.add(&phone, 1, 1_000),
        w.add(&laptop, 2, 2_000),
        w.revoke(&phone, 3, 3_000),
    ];
    let state = IdentityState::from_log(w.wallet.inbox_id(), IdentityConfig::default(), &log)
        .expect("valid log");
    assert_eq!(state.sequence(), 3);
    assert!(!state.is_active(&phone.id()));
    assert!(state.is_revoked(&phone.id()));
    assert!(state.is_active(&laptop.id()));
    assert_eq!(
        state
            .installation(&laptop.id())
            .expect("active")
            .identity_key,
        laptop.identity_public_key()
    );
    assert_eq!(state.active_installations().count(), 1);

    // The wire form round-trips and verifies the same.
    let decoded: Vec<IdentityUpdate> = log
        .iter()
        .map(|u| IdentityUpdate::from_bytes(&u.to_bytes()).expect("decodes"))
        .collect();
    assert_eq!(decoded, log);
    assert_eq!(
        IdentityState::from_log(w.wallet.inbox_id(), IdentityConfig::default(), &decoded)
            .expect("valid"),
        state
    );
}

#[test]
fn the_signature_text_names_everything() {
    let mut w = World::new(2);
    let keys = w.installation();
    let update = w.add(&keys, 1, 1_795_716_485_000);
    let text = update.unsigned.signature_text();
    assert!(text.starts_with("Kith identity update (v1)\nAction: AddInstallation\n"));
    assert!(text.contains(&format!("Inbox: {}\n", w.wallet.inbox_id())));
    assert!(text.contains(&format!("Installation key: {}\n", keys.id())));
    assert!(text.contains(&format!(
        "Identity key: {}\n",
        hex::encode(keys.identity_public_key())
    )));
    assert!(text.contains("Sequence: 1\n"));
    assert!(text.ends_with("Time (unix ms): 1795716485000"));
    println!("{text}");
}

#[test]
fn a_signature_by_another_wallet_is_rejected() {
    let mut w = World::new(3);
    let keys = w.installation();
    let mallory = LocalWallet::generate(&mut w.rng);
    let request = UnsignedIdentityUpdate::add_installation(w.wallet.inbox_id(), &keys, 1, 1);
    let forged = request.clone().sign(
        mallory.sign_personal(request.signature_text().as_bytes()),
        Some(&keys),
    );
    let mut state = w.state();
    match rejected(&mut state, &forged) {
        IdentityError::ForeignWalletSignature { signer, .. } => {
            assert_eq!(signer, mallory.inbox_id().to_string());
        }
        other => panic!("expected ForeignWalletSignature, got {other:?}"),
    }
}

#[test]
fn a_malformed_or_mismatched_wallet_signature_is_rejected() {
    let mut w = World::new(4);
    let keys = w.installation();
    let mut state = w.state();

    let mut bad_v = w.add(&keys, 1, 1);
    bad_v.wallet_signature[64] = 3;
    assert!(matches!(
        rejected(&mut state, &bad_v),
        IdentityError::BadWalletSignature(_)
    ));

    let mut zero = w.add(&keys, 1, 1);
    zero.wallet_signature = [0; 65];
    assert!(matches!(
        rejected(&mut state, &zero),
        IdentityError::BadWalletSignature(_)
    ));

    // A valid signature over a different text (time changed after signing).
    let mut edited = w.add(&keys, 1, 1);
    edited.unsigned.time_ms = 2;
    assert!(matches!(
        rejected(&mut state, &edited),
        IdentityError::ForeignWalletSignature { .. } | IdentityError::BadWalletSignature(_)
    ));
}

#[test]
fn proof_of_possession_is_required_and_checked() {
    let mut w = World::new(5);
    let keys = w.installation();
    let other = w.installation();
    let mut state = w.state();

    let mut missing = w.add(&keys, 1, 1);
    missing.installation_signature = None;
    assert_eq!(
        rejected(&mut state, &missing),
        IdentityError::MissingProofOfPossession
    );

    // Signed by a different installation key than the one being added.
    let request = UnsignedIdentityUpdate::add_installation(w.wallet.inbox_id(), &keys, 1, 1);
    let wallet_signature = w.wallet.sign_personal(request.signature_text().as_bytes());
    let mut wrong_key = request.clone().sign(wallet_signature, Some(&keys));
    wrong_key.installation_signature = Some(other.sign(request.signature_text().as_bytes()));
    assert_eq!(
        rejected(&mut state, &wrong_key),
        IdentityError::BadProofOfPossession
    );

    // A revocation must not carry one.
    state.apply(&w.add(&keys, 1, 1)).expect("add");
    let mut revoke = w.revoke(&keys, 2, 2);
    revoke.installation_signature = Some(keys.sign(b"anything"));
    assert_eq!(
        rejected(&mut state, &revoke),
        IdentityError::UnexpectedInstallationSignature
    );
}

#[test]
fn sequence_gaps_replays_and_time_travel_are_rejected() {
    let mut w = World::new(6);
    let (a, b) = (w.installation(), w.installation());
    let mut state = w.state();
    let first = w.add(&a, 1, 100);
    state.apply(&first).expect("first");

    assert_eq!(
        rejected(&mut state, &w.add(&b, 3, 200)),
        IdentityError::SequenceGap {
            expected: 2,
            got: 3
        }
    );
    assert_eq!(
        rejected(&mut state, &first),
        IdentityError::Replay {
            expected: 2,
            got: 1
        }
    );
    assert_eq!(
        rejected(&mut state, &w.add(&b, 0, 200)),
        IdentityError::Replay {
            expected: 2,
            got: 0
        }
    );
    assert_eq!(
        rejected(&mut state, &w.add(&b, 2, 99)),
        IdentityError::TimeWentBackwards {
            previous_ms: 100,
            got_ms: 99
        }
    );
    state.apply(&w.add(&b, 2, 100)).expect("same time is fine");
}

#[test]
fn duplicates_re_adds_and_unknown_revocations_are_rejected() {
    let mut w = World::new(7);
    let (a, b) = (w.installation(), w.installation());
    let mut state = w.state();
    state.apply(&w.add(&a, 1, 1)).expect("add a");
    assert!(matches!(
        rejected(&mut state, &w.add(&a, 2, 2)),
        IdentityError::DuplicateInstallation(_)
    ));
    assert!(matches!(
        rejected(&mut state, &w.revoke(&b, 2, 2)),
        IdentityError::UnknownInstallation(_)
    ));
    state.apply(&w.revoke(&a, 2, 2)).expect("revoke a");
    assert!(matches!(
        rejected(&mut state, &w.add(&a, 3, 3)),
        IdentityError::InstallationRevoked(_)
    ));
    assert!(matches!(
        rejected(&mut state, &w.revoke(&a, 3, 3)),
        IdentityError::UnknownInstallation(_)
    ));

    // A revocation that names the wrong identity key.
    state.apply(&w.add(&b, 3, 3)).expect("add b");
    let request = UnsignedIdentityUpdate::revoke_installation(
        w.wallet.inbox_id(),
        b.id(),
        a.identity_public_key(),
        4,
        4,
    );
    let signature = w.wallet.sign_personal(request.signature_text().as_bytes());
    assert!(matches!(
        rejected(&mut state, &request.sign(signature, None)),
        IdentityError::IdentityKeyMismatch(_)
    ));
}

#[test]
fn the_installation_limit_holds_and_is_configurable() {
    let mut w = World::new(8);
    let mut state = w.state();
    let installations: Vec<InstallationKeys> = (0..11).map(|_| w.installation()).collect();
    for (i, keys) in installations.iter().take(10).enumerate() {
        state
            .apply(&w.add(keys, i as u64 + 1, 1))
            .expect("within the limit");
    }
    assert_eq!(
        rejected(&mut state, &w.add(&installations[10], 11, 1)),
        IdentityError::TooManyInstallations { limit: 10 }
    );
    // Revoking one makes room.
    state
        .apply(&w.revoke(&installations[0], 11, 1))
        .expect("revoke");
    state
        .apply(&w.add(&installations[10], 12, 1))
        .expect("room again");

    let mut small = IdentityState::with_config(
        w.wallet.inbox_id(),
        IdentityConfig {
            max_installations: 1,
        },
    );
    small.apply(&w.add(&installations[0], 1, 1)).expect("first");
    assert_eq!(
        rejected(&mut small, &w.add(&installations[1], 2, 1)),
        IdentityError::TooManyInstallations { limit: 1 }
    );
}

#[test]
fn an_update_for_another_inbox_is_rejected() {
    let mut w = World::new(9);
    let keys = w.installation();
    let other = World::new(10);
    let mut state = other.state();
    assert!(matches!(
        rejected(&mut state, &w.add(&keys, 1, 1)),
        IdentityError::WrongInbox { .. }
    ));
}

#[test]
fn a_whole_log_reports_which_update_failed() {
    let mut w = World::new(11);
    let (a, b) = (w.installation(), w.installation());
    let mut bad = w.add(&b, 2, 2);
    bad.wallet_signature[0] ^= 1;
    let log = vec![w.add(&a, 1, 1), bad, w.add(&b, 3, 3)];
    let error = IdentityState::from_log(w.wallet.inbox_id(), IdentityConfig::default(), &log)
        .expect_err("forged");
    assert_eq!(error.index, 1);
}

#[test]
fn malformed_bytes_are_rejected() {
    let mut w = World::new(12);
    let keys = w.installation();
    let good = w.add(&keys, 1, 1).to_bytes();
    for cut in 0..good.len() {
        // A cut on a field boundary can still decode (proto3 fields are
        // optional); it must then fail verification instead.
        if let Ok(update) = IdentityUpdate::from_bytes(&good[..cut]) {
            assert!(
                w.state().apply(&update).is_err(),
                "truncated to {cut} verified"
            );
        }
    }
    assert!(matches!(
        IdentityUpdate::from_bytes(b"\xff\xff\xff"),
        Err(IdentityError::Malformed(_))
    ));
    // Unknown action.
    let mut update = w.add(&keys, 1, 1);
    update.unsigned.action = UpdateAction::RevokeInstallation;
    let mut bytes = update.to_bytes();
    let action_at = bytes
        .windows(2)
        .position(|w| w == [0x10, 0x02])
        .expect("action field");
    bytes[action_at + 1] = 0x07;
    assert!(matches!(
        IdentityUpdate::from_bytes(&bytes),
        Err(IdentityError::Malformed(_))
    ));
}
