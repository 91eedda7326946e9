//! Welcomes that scale: one commit's Welcome split into the part its
//! joiners share and a small part for each.
//!
//! An MLS Welcome is the joiners' encrypted group secrets (one entry each,
//! a few hundred bytes) and one encrypted GroupInfo that every joiner
//! decrypts alike. With the ratchet tree in the GroupInfo, that part grows
//! with the group: about 380 KB at 1,000 members. Sent whole to every
//! joiner, creating a group of N publishes N copies of it, and past about
//! 2,700 members one Welcome no longer fits an envelope.
//!
//! So when it saves more than [`WELCOME_INLINE_SAVINGS`] bytes, or when
//! the Welcome would not fit one part, the committer publishes:
//!
//! - the encrypted GroupInfo **once**, on `welcome-shared/<its SHA-256>`,
//!   cut into parts of at most [`WELCOME_PART_BYTES`] (each part's envelope
//!   body is the raw bytes of that part);
//! - to each joiner's `welcome/<installation>` topic, a
//!   [`WelcomePayload`] whose MLS Welcome holds only that joiner's
//!   secrets and an empty GroupInfo, with a [`SharedWelcome`] naming the
//!   whole by its SHA-256 and each part by its own.
//!
//! A joiner reads the shared topic and keeps, for each part, the first
//! envelope whose SHA-256 is that part's: anyone may publish on the topic,
//! and what a stranger adds there is ignored. The reassembled Welcome is
//! the committer's, byte for byte (so MLS checks it as usual). The shared
//! part is published before the joiners' envelopes, by the same
//! installation on the same node, so a node that serves the one in order
//! serves the other first. Nothing here is published for a commit that
//! lost: the Welcome goes out only once its commit settled.
//!
//! Pure functions over bytes: nothing here is stored.

use openmls::prelude::{
    EncryptedGroupSecrets, MlsMessageBodyIn, MlsMessageIn,
    tls_codec::{Deserialize as _, Serialize as _, Size as _, VLBytes},
};
use sha2::{Digest as _, Sha256};

use super::{
    content::{SharedWelcome, WelcomePayload},
    error::GroupError,
};

/// The most bytes of a shared Welcome one envelope carries: a quarter of
/// the node's default envelope limit (2 MiB), so that a part fits under a
/// node configured tighter than the default, too.
pub const WELCOME_PART_BYTES: usize = 512 * 1024;

/// A Welcome for several joiners is split only when that saves publishing
/// more than this: below it, the extra read a joiner makes costs more
/// than the bytes it saves.
pub const WELCOME_INLINE_SAVINGS: usize = 16 * 1024;

/// The most parts a reference may name: enough for a GroupInfo of 64 MiB,
/// far past any group a node can carry, and a bound on what a forged
/// reference makes a joiner read.
pub const MAX_WELCOME_PARTS: usize = 128;

/// Reassemble a joiner's whole Welcome from `payload` and the bodies read
/// from its [`SharedWelcome::topic`], in any order, strangers' included.
/// `None` while a part is missing; `payload` itself if it was sent whole.
pub fn assemble_welcome<'a>(
    payload: &WelcomePayload,
    bodies: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Option<WelcomePayload>, GroupError> {
    let Some(shared) = &payload.shared else {
        return Ok(Some(payload.clone()));
    };
    if shared.parts.is_empty() || shared.parts.len() > MAX_WELCOME_PARTS {
        return Err(invalid("it names no parts, or too many"));
    }
    let mut found: Vec<Option<&[u8]>> = vec![None; shared.parts.len()];
    for body in bodies {
        let hash: [u8; 32] = Sha256::digest(body).into();
        for (slot, want) in found.iter_mut().zip(&shared.parts) {
            if slot.is_none() && *want == hash {
                *slot = Some(body);
            }
        }
    }
    let Some(parts) = found.into_iter().collect::<Option<Vec<&[u8]>>>() else {
        return Ok(None);
    };
    let group_info = parts.concat();
    if <[u8; 32]>::from(Sha256::digest(&group_info)) != shared.hash {
        return Err(invalid("its parts do not make up the GroupInfo it names"));
    }
    let own = &payload.welcome;
    // The joiner's own Welcome ends in an empty GroupInfo: one zero length
    // byte, replaced by the shared one.
    let Some((0, head)) = own.split_last() else {
        return Err(invalid(
            "the joiner's part does not end in an empty GroupInfo",
        ));
    };
    let mut welcome = head.to_vec();
    VLBytes::new(group_info)
        .tls_serialize(&mut welcome)
        .map_err(|e| invalid(&format!("cannot encode the GroupInfo: {e}")))?;
    parse(&welcome)?;
    Ok(Some(WelcomePayload {
        welcome,
        shared: None,
        ..payload.clone()
    }))
}
/// A Welcome cut for publishing: the shared parts, then each joiner's own.
#[derive(Debug)]
pub(crate) struct SplitWelcome {
    /// The reference each joiner's payload carries.
    pub(crate) shared: SharedWelcome,
    /// The bodies to publish on the shared topic, in order.
    pub(crate) parts: Vec<Vec<u8>>,
    /// Per joiner (in the order of the references given), its own MLS
    /// Welcome: its secrets and an empty GroupInfo.
    pub(crate) own: Vec<Vec<u8>>,
}

/// Split `welcome` (a serialized MLS Welcome message) for the joiners whose
/// key-package references are `refs`, if that saves enough (see the
/// module docs); `None` to send it whole.
pub(crate) fn split(welcome: &[u8], refs: &[Vec<u8>]) -> Result<Option<SplitWelcome>, GroupError> {
    let saves = welcome.len().saturating_mul(refs.len().saturating_sub(1));
    if refs.is_empty() || (saves <= WELCOME_INLINE_SAVINGS && welcome.len() <= WELCOME_PART_BYTES) {
        return Ok(None);
    }
    split_into(welcome, refs, WELCOME_PART_BYTES).map(Some)
}

fn split_into(
    welcome: &[u8],
    refs: &[Vec<u8>],
    part_bytes: usize,
) -> Result<SplitWelcome, GroupError> {
    let parsed = parse(welcome)?;
    // Header (version, wire format), cipher suite, the secrets, then the
    // GroupInfo: the Welcome's last field.
    let secrets_len = parsed.secrets().to_vec().tls_serialized_len();
    let head_len = 6 + secrets_len;
    let group_info = welcome
        .get(head_len..)
        .ok_or_else(|| invalid("shorter than its secrets"))
        .and_then(|rest| {
            VLBytes::tls_deserialize_exact(rest)
                .map_err(|e| invalid(&format!("its GroupInfo does not decode: {e}")))
        })?;
    let group_info = group_info.as_slice();
    let parts: Vec<Vec<u8>> = group_info.chunks(part_bytes).map(<[u8]>::to_vec).collect();
    if parts.len() > MAX_WELCOME_PARTS {
        return Err(invalid("its GroupInfo is too large to publish"));
    }
    let shared = SharedWelcome {
        hash: Sha256::digest(group_info).into(),
        parts: parts.iter().map(|p| Sha256::digest(p).into()).collect(),
    };
    let mut own = Vec::with_capacity(refs.len());
    for reference in refs {
        let secrets: Vec<EncryptedGroupSecrets> = parsed
            .secrets()
            .iter()
            .filter(|s| s.new_member().as_slice() == reference.as_slice())
            .cloned()
            .collect();
        if secrets.len() != 1 {
            return Err(invalid("it holds no secrets for one of its joiners"));
        }
        let mut bytes = welcome[..6].to_vec();
        secrets
            .tls_serialize(&mut bytes)
            .and_then(|_| VLBytes::new(Vec::new()).tls_serialize(&mut bytes))
            .map_err(|e| invalid(&format!("cannot encode a joiner's part: {e}")))?;
        own.push(bytes);
    }
    Ok(SplitWelcome { shared, parts, own })
}

fn parse(welcome: &[u8]) -> Result<openmls::prelude::Welcome, GroupError> {
    let message = MlsMessageIn::tls_deserialize_exact(welcome)
        .map_err(|e| invalid(&format!("not an MLS message: {e}")))?;
    match message.extract() {
        MlsMessageBodyIn::Welcome(welcome) => Ok(welcome),
        _ => Err(invalid("not a Welcome")),
    }
}

fn invalid(reason: &str) -> GroupError {
    GroupError::InvalidInput(format!("split Welcome: {reason}"))
}

#[cfg(test)]
mod tests {
    use openmls::prelude::{
        BasicCredential, Ciphersuite, CredentialWithKey, KeyPackage, MlsGroup,
        MlsGroupCreateConfig, MlsGroupJoinConfig, StagedWelcome,
    };
    use openmls_basic_credential::SignatureKeyPair;
    use openmls_rust_crypto::OpenMlsRustCrypto;
    use openmls_traits::OpenMlsProvider as _;

    use super::*;

    const SUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

    fn identity(name: &str) -> (CredentialWithKey, SignatureKeyPair) {
        let signer = SignatureKeyPair::new(SUITE.signature_algorithm()).expect("keys");
        let credential = CredentialWithKey {
            credential: BasicCredential::new(name.as_bytes().to_vec()).into(),
            signature_key: signer.public().into(),
        };
        (credential, signer)
    }

    /// A group of one that adds `joiners` in one commit: the Welcome, and
    /// per joiner its provider (holding its private keys) and key-package
    /// reference.
    fn welcome_for(joiners: usize) -> (Vec<u8>, Vec<(OpenMlsRustCrypto, Vec<u8>)>) {
        let provider = OpenMlsRustCrypto::default();
        let (credential, signer) = identity("creator");
        let config = MlsGroupCreateConfig::builder()
            .ciphersuite(SUITE)
            .use_ratchet_tree_extension(true)
            .build();
        let mut group = MlsGroup::new(&provider, &signer, &config, credential).expect("group");
        let mut key_packages = Vec::new();
        let mut joined = Vec::new();
        for i in 0..joiners {
            let joiner = OpenMlsRustCrypto::default();
            let (credential, signer) = identity(&format!("joiner {i}"));
            let key_package = KeyPackage::builder()
                .build(SUITE, &joiner, &signer, credential)
                .expect("key package")
                .key_package()
                .clone();
            let reference = key_package
                .hash_ref(joiner.crypto())
                .expect("reference")
                .as_slice()
                .to_vec();
            key_packages.push(key_package);
            joined.push((joiner, reference));
        }
        let (_, welcome, _) = group
            .add_members(&provider, &signer, &key_packages)
            .expect("add");
        let welcome = welcome.tls_serialize_detached().expect("encode");
        (welcome, joined)
    }

    fn join(provider: &OpenMlsRustCrypto, welcome: &[u8]) -> Result<MlsGroup, String> {
        let message = MlsMessageIn::tls_deserialize_exact(welcome).map_err(|e| e.to_string())?;
        let MlsMessageBodyIn::Welcome(welcome) = message.extract() else {
            return Err("not a Welcome".into());
        };
        StagedWelcome::new_from_welcome(provider, &MlsGroupJoinConfig::default(), welcome, None)
            .and_then(|staged| staged.into_group(provider))
            .map_err(|e| format!("{e:?}"))
    }

    fn payload(welcome: Vec<u8>, shared: Option<SharedWelcome>) -> WelcomePayload {
        WelcomePayload {
            welcome,
            group_id: vec![1],
            cursor: [(1, 7)].into_iter().collect(),
            branch: vec![(0, [3; 8], (10, 1, 7))],
            shared,
        }
    }

    #[test]
    fn each_joiner_reassembles_its_welcome_from_parts_among_strangers_and_joins() {
        let (welcome, joiners) = welcome_for(3);
        let refs: Vec<Vec<u8>> = joiners.iter().map(|(_, r)| r.clone()).collect();
        let split = split_into(&welcome, &refs, 1_000).expect("split");
        assert!(
            split.parts.len() > 1,
            "a part size this small cuts the GroupInfo"
        );
        assert!(split.parts.iter().all(|p| p.len() <= 1_000));
        // Strangers' bodies first, and the parts out of order.
        let mut bodies: Vec<Vec<u8>> = vec![vec![0; 1_000], b"forged".to_vec()];
        bodies.extend(split.parts.iter().rev().cloned());
        for ((provider, _), own) in joiners.iter().zip(&split.own) {
            assert!(
                own.len() < 1_000,
                "a joiner's own part is small: {}",
                own.len()
            );
            let sent = payload(own.clone(), Some(split.shared.clone()));
            let decoded = WelcomePayload::from_bytes(&sent.to_bytes()).expect("decodes");
            assert_eq!(decoded, sent);
            let whole = assemble_welcome(&decoded, bodies.iter().map(Vec::as_slice))
                .expect("assembles")
                .expect("every part is there");
            assert_eq!(whole.shared, None);
            assert_eq!((whole.cursor, whole.branch), (sent.cursor, sent.branch));
            let group = join(provider, &whole.welcome).expect("joins");
            assert_eq!(group.members().count(), 4);
        }
    }

    #[test]
    fn a_missing_or_altered_part_assembles_nothing() {
        let (welcome, joiners) = welcome_for(2);
        let refs: Vec<Vec<u8>> = joiners.iter().map(|(_, r)| r.clone()).collect();
        let split = split_into(&welcome, &refs, 1_000).expect("split");
        let sent = payload(split.own[0].clone(), Some(split.shared.clone()));
        let missing = &split.parts[1..];
        assert_eq!(
            assemble_welcome(&sent, missing.iter().map(Vec::as_slice)).expect("no error"),
            None
        );
        let mut altered = split.parts.clone();
        altered[0][0] ^= 1;
        assert_eq!(
            assemble_welcome(&sent, altered.iter().map(Vec::as_slice)).expect("no error"),
            None,
            "a part whose hash is not named is a stranger's"
        );
        // A reference whose parts do not make up the hash it names.
        let mut lying = split.shared.clone();
        lying.hash = [0; 32];
        let forged = payload(split.own[0].clone(), Some(lying));
        assert!(assemble_welcome(&forged, split.parts.iter().map(Vec::as_slice)).is_err());
        // A whole Welcome passes through.
        let whole = payload(welcome.clone(), None);
        assert_eq!(
            assemble_welcome(&whole, std::iter::empty()).expect("whole"),
            Some(whole)
        );
    }

    #[test]
    fn a_small_welcome_for_few_joiners_is_sent_whole() {
        let (welcome, joiners) = welcome_for(1);
        let refs: Vec<Vec<u8>> = joiners.iter().map(|(_, r)| r.clone()).collect();
        assert!(split(&welcome, &refs).expect("checked").is_none());
        // Many joiners of the same Welcome: splitting saves their copies.
        let many = vec![refs[0].clone(); 64];
        assert!(welcome.len() * 63 > WELCOME_INLINE_SAVINGS);
        let split = split(&welcome, &many).expect("split").expect("worth it");
        assert_eq!(split.own.len(), 64);
        // A reference the Welcome has no secrets for is an error.
        assert!(split_into(&welcome, &[vec![0; 32]], 1_000).is_err());
    }
}
