//! Property: random valid identity logs verify, and flipping any single byte
//! of any signature or of any signed field makes verification fail.

use kith_engine::identity::{
    IdentityConfig, IdentityState, IdentityUpdate, InboxId, InstallationId, InstallationKeys,
    LocalWallet, UnsignedIdentityUpdate, UpdateAction,
};
use std::collections::BTreeMap;

use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// Build a valid log from a seed and a list of choices: `true` adds a new
/// installation (if there is room), `false` revokes the oldest active one.
/// Returns it with the installations it leaves active, each with its
/// identity key.
fn valid_log(
    seed: u64,
    choices: &[bool],
) -> (
    InboxId,
    Vec<IdentityUpdate>,
    BTreeMap<InstallationId, [u8; 32]>,
) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let wallet = LocalWallet::generate(&mut rng);
    let inbox = wallet.inbox_id();
    let mut active: Vec<InstallationKeys> = Vec::new();
    let mut log = Vec::new();
    let mut time = 1_700_000_000_000u64;
    for &add in choices {
        let sequence = log.len() as u64 + 1;
        time += 1_000;
        let request = if add || active.is_empty() {
            if active.len() >= 10 {
                continue;
            }
            let keys = InstallationKeys::generate(&mut rng);
            let request = UnsignedIdentityUpdate::add_installation(inbox, &keys, sequence, time);
            let signature = wallet.sign_personal(request.signature_text().as_bytes());
            log.push(request.sign(signature, Some(&keys)));
            active.push(keys);
            continue;
        } else {
            let keys = active.remove(0);
            UnsignedIdentityUpdate::revoke_installation(
                inbox,
                keys.id(),
                keys.identity_public_key(),
                sequence,
                time,
            )
        };
        let signature = wallet.sign_personal(request.signature_text().as_bytes());
        log.push(request.sign(signature, None));
    }
    let active = active
        .iter()
        .map(|keys| (keys.id(), keys.identity_public_key()))
        .collect();
    (inbox, log, active)
}

/// The byte-addressable fields of an update: the signatures and every
/// signed field.
const FIELDS: usize = 8;

fn field_len(update: &IdentityUpdate, field: usize) -> usize {
    match field {
        0 => 65,
        1 => usize::from(update.installation_signature.is_some()) * 64,
        2 => 20,
        3 => 32,
        4 => 32,
        5 => 8,
        6 => 8,
        _ => 1,
    }
}

/// XOR `mask` into byte `at` of `field`.
fn flip(update: &mut IdentityUpdate, field: usize, at: usize, mask: u8) {
    let u = &mut update.unsigned;
    match field {
        0 => update.wallet_signature[at] ^= mask,
        1 => {
            if let Some(signature) = &mut update.installation_signature {
                signature[at] ^= mask;
            }
        }
        2 => {
            let mut bytes = *u.inbox.as_bytes();
            bytes[at] ^= mask;
            u.inbox = InboxId::from_bytes(bytes);
        }
        3 => {
            let mut bytes = u.installation.0;
            bytes[at] ^= mask;
            u.installation = InstallationId(bytes);
        }
        4 => u.identity_key[at] ^= mask,
        5 => {
            let mut bytes = u.sequence.to_be_bytes();
            bytes[at] ^= mask;
            u.sequence = u64::from_be_bytes(bytes);
        }
        6 => {
            let mut bytes = u.time_ms.to_be_bytes();
            bytes[at] ^= mask;
            u.time_ms = u64::from_be_bytes(bytes);
        }
        // The action is one signed "byte" with two values: any flip swaps it.
        _ => {
            u.action = match u.action {
                UpdateAction::AddInstallation => UpdateAction::RevokeInstallation,
                UpdateAction::RevokeInstallation => UpdateAction::AddInstallation,
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_valid_logs_verify(seed in any::<u64>(), choices in prop::collection::vec(any::<bool>(), 1..16)) {
        let (inbox, log, expected) = valid_log(seed, &choices);
        let state = IdentityState::from_log(inbox, IdentityConfig::default(), &log);
        prop_assert!(state.is_ok(), "{:?}", state.err());
        let state = state.expect("checked");
        prop_assert_eq!(state.sequence(), log.len() as u64);
        // Exactly the installations added and not revoked since, with the
        // identity keys they were added with.
        let active: BTreeMap<InstallationId, [u8; 32]> = state
            .active_installations()
            .map(|(installation, active)| (*installation, active.identity_key))
            .collect();
        prop_assert_eq!(&active, &expected);
        for installation in expected.keys() {
            prop_assert!(state.is_active(installation));
        }
        // Through the wire encoding too.
        let decoded: Vec<IdentityUpdate> = log
            .iter()
            .map(|u| IdentityUpdate::from_bytes(&u.to_bytes()).expect("decodes"))
            .collect();
        prop_assert!(IdentityState::from_log(inbox, IdentityConfig::default(), &decoded).is_ok());
    }

    #[test]
    fn any_single_byte_flip_fails_verification(
        seed in any::<u64>(),
        choices in prop::collection::vec(any::<bool>(), 1..12),
        which in any::<prop::sample::Index>(),
        field in 0..FIELDS,
        at in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let (inbox, mut log, _) = valid_log(seed, &choices);
        let index = which.index(log.len());
        let len = field_len(&log[index], field);
        // Revocations carry no installation signature: nothing to flip.
        prop_assume!(len > 0);
        flip(&mut log[index], field, at.index(len), mask);
        let result = IdentityState::from_log(inbox, IdentityConfig::default(), &log);
        prop_assert!(result.is_err(), "a flipped byte (update {}, field {}) still verified", index, field);
        prop_assert_eq!(result.expect_err("checked").index, index);
    }
}
