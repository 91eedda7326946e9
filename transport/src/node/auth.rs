//! The bytes a node request is signed or MACed over (documented in
//! `proto/kith/v1/key_packages.proto`), shared by the node and its clients,
//! and the checks of signature, MAC and timestamp.

use kith_engine::identity::{InboxId, InstallationId, verify_installation_signature};
use sha2::{Digest, Sha256};

use super::error::NodeError;

/// The signed bytes of an `UploadKeyPackages` request.
pub fn upload_signed_bytes(
    timestamp_ms: u64,
    installation: &InstallationId,
    one_time: &[Vec<u8>],
    last_resort: Option<&[u8]>,
) -> Vec<u8> {
    let mut out = b"kith.v1.UploadKeyPackages\n".to_vec();
    out.extend_from_slice(&timestamp_ms.to_be_bytes());
    out.extend_from_slice(installation.as_bytes());
    push_package_digests(&mut out, one_time, last_resort);
    out
}

/// `u32be(count) ‖ sha256 of each one-time package ‖ 0x00`, or `0x01 ‖
/// sha256(last resort)`: how both kinds of upload cover their packages.
fn push_package_digests(out: &mut Vec<u8>, one_time: &[Vec<u8>], last_resort: Option<&[u8]>) {
    out.extend_from_slice(&(one_time.len() as u32).to_be_bytes());
    for package in one_time {
        out.extend_from_slice(&Sha256::digest(package));
    }
    match last_resort {
        None => out.push(0),
        Some(package) => {
            out.push(1);
            out.extend_from_slice(&Sha256::digest(package));
        }
    }
}

/// The signed bytes of a `FetchKeyPackages` request.
pub fn fetch_signed_bytes(
    timestamp_ms: u64,
    requester_inbox: &InboxId,
    requester: &InstallationId,
    targets: &[InstallationId],
) -> Vec<u8> {
    let mut out = b"kith.v1.FetchKeyPackages\n".to_vec();
    out.extend_from_slice(&timestamp_ms.to_be_bytes());
    out.extend_from_slice(requester_inbox.as_bytes());
    out.extend_from_slice(requester.as_bytes());
    out.extend_from_slice(&(targets.len() as u32).to_be_bytes());
    for target in targets {
        out.extend_from_slice(target.as_bytes());
    }
    out
}

/// The MACed bytes of an `UploadDeniableKeyPackages` request.
pub fn deniable_upload_bytes(
    timestamp_ms: u64,
    inbox: &InboxId,
    installation: &InstallationId,
    one_time: &[Vec<u8>],
    last_resort: Option<&[u8]>,
) -> Vec<u8> {
    let mut out = b"kith.v1.UploadDeniableKeyPackages\n".to_vec();
    out.extend_from_slice(&timestamp_ms.to_be_bytes());
    out.extend_from_slice(inbox.as_bytes());
    out.extend_from_slice(installation.as_bytes());
    push_package_digests(&mut out, one_time, last_resort);
    out
}

/// The MACed bytes of a `FetchDeniableKeyPackages` request.
pub fn deniable_fetch_bytes(
    timestamp_ms: u64,
    requester_inbox: &InboxId,
    requester: &InstallationId,
    target: &InboxId,
) -> Vec<u8> {
    let mut out = b"kith.v1.FetchDeniableKeyPackages\n".to_vec();
    out.extend_from_slice(&timestamp_ms.to_be_bytes());
    out.extend_from_slice(requester_inbox.as_bytes());
    out.extend_from_slice(requester.as_bytes());
    out.extend_from_slice(target.as_bytes());
    out
}

/// The bytes a node signs when it forwards a deniable fetch it
/// authenticated to a peer (`ForwardDeniableFetch`).
pub fn forwarded_deniable_fetch_bytes(
    node_id: u32,
    timestamp_ms: u64,
    requester_inbox: &InboxId,
    requester: &InstallationId,
    target: &InboxId,
    installations: &[InstallationId],
) -> Vec<u8> {
    let mut out = b"kith.v1.ForwardDeniableFetch\n".to_vec();
    out.extend_from_slice(&node_id.to_be_bytes());
    out.extend_from_slice(&timestamp_ms.to_be_bytes());
    out.extend_from_slice(requester_inbox.as_bytes());
    out.extend_from_slice(requester.as_bytes());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(&(installations.len() as u32).to_be_bytes());
    for installation in installations {
        out.extend_from_slice(installation.as_bytes());
    }
    out
}

/// Check that `timestamp_ms` is within `window_ms` of `now_ms`: a signed or
/// MACed request outside it may be a replay.
pub(crate) fn check_timestamp(
    timestamp_ms: u64,
    now_ms: u64,
    window_ms: u64,
) -> Result<(), NodeError> {
    if timestamp_ms.abs_diff(now_ms) > window_ms {
        return Err(NodeError::Unauthenticated(format!(
            "request timestamp {timestamp_ms} is more than {window_ms} ms from the node's clock \
             ({now_ms}); check the client's clock and sign a fresh request"
        )));
    }
    Ok(())
}

/// Check that `signature` by `installation` covers `signed` and that
/// `timestamp_ms` is within `window_ms` of `now_ms`.
pub(crate) fn check(
    installation: &InstallationId,
    signed: &[u8],
    signature: &[u8],
    timestamp_ms: u64,
    now_ms: u64,
    window_ms: u64,
) -> Result<(), NodeError> {
    check_timestamp(timestamp_ms, now_ms, window_ms)?;
    let signature: &[u8; 64] = signature.try_into().map_err(|_| {
        NodeError::InvalidArgument(format!(
            "signature must be 64 bytes (Ed25519), got {}",
            signature.len()
        ))
    })?;
    verify_installation_signature(installation, signed, signature).map_err(|_| {
        NodeError::Unauthenticated(format!(
            "signature does not verify for installation {installation}"
        ))
    })
}
