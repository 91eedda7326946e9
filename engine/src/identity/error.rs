//! Identity errors. Most describe data that came from someone else (a peer,
//! the node, a wallet) and say precisely which rule it broke, so that a
//! rejection can be logged and acted on.

/// Why an identity operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A private key given as hex is not a valid secp256k1 scalar.
    #[error("invalid wallet private key: {0}")]
    InvalidPrivateKey(String),
    /// A string is not a 20-byte hex Ethereum address.
    #[error("not an Ethereum address: {0}")]
    InvalidAddress(String),
    /// A mixed-case address whose EIP-55 checksum does not match.
    #[error("address {0} has a wrong EIP-55 checksum")]
    BadChecksum(String),
    /// A 65-byte signature that does not recover to any public key.
    #[error("wallet signature is malformed or does not recover: {0}")]
    BadWalletSignature(String),
    /// A valid signature, but by another wallet than the update's inbox.
    #[error("wallet signature is by {signer}, not by inbox {inbox}")]
    ForeignWalletSignature {
        /// The inbox the update is for.
        inbox: String,
        /// Who actually signed.
        signer: String,
    },
    /// An `AddInstallation` without the new installation's signature.
    #[error("AddInstallation carries no proof of possession")]
    MissingProofOfPossession,
    /// The installation's signature over the update text does not verify.
    #[error("the installation's proof of possession does not verify")]
    BadProofOfPossession,
    /// A `RevokeInstallation` carrying an installation signature: revocation
    /// is the wallet's decision alone, so this is malformed.
    #[error("RevokeInstallation must not carry an installation signature")]
    UnexpectedInstallationSignature,
    /// The update's sequence number skips ahead.
    #[error("sequence gap: expected update {expected}, got {got}")]
    SequenceGap {
        /// The next sequence number the log accepts.
        expected: u64,
        /// The one the update carries.
        got: u64,
    },
    /// The update's sequence number was already used: a replay.
    #[error("replayed update: sequence {got} is already in the log (next is {expected})")]
    Replay {
        /// The next sequence number the log accepts.
        expected: u64,
        /// The one the update carries.
        got: u64,
    },
    /// The update's time is earlier than the previous update's.
    #[error("update time {got_ms} ms is before the previous update's {previous_ms} ms")]
    TimeWentBackwards {
        /// The previous update's time.
        previous_ms: u64,
        /// This update's time.
        got_ms: u64,
    },
    /// `AddInstallation` for an installation that is already active.
    #[error("installation {0} is already active")]
    DuplicateInstallation(String),
    /// `AddInstallation` for an installation that was revoked: revocation is
    /// final.
    #[error("installation {0} was revoked and cannot be added again")]
    InstallationRevoked(String),
    /// `RevokeInstallation` for an installation that is not active.
    #[error("installation {0} is not an active installation of this inbox")]
    UnknownInstallation(String),
    /// A revocation names an identity key other than the installation's.
    #[error("revocation of {0} names the wrong identity key")]
    IdentityKeyMismatch(String),
    /// The inbox already has the maximum number of active installations.
    #[error("inbox already has {limit} active installations, the maximum")]
    TooManyInstallations {
        /// The configured limit.
        limit: usize,
    },
    /// The update is for another inbox than the log it was applied to.
    #[error("update is for inbox {update}, but this log is inbox {log}")]
    WrongInbox {
        /// The log's inbox.
        log: String,
        /// The update's inbox.
        update: String,
    },
    /// Bytes that do not decode as an identity update.
    #[error("malformed identity update: {0}")]
    Malformed(String),
    /// A key that is not a valid Ed25519 or X25519 public key.
    #[error("invalid installation key: {0}")]
    InvalidKey(String),
}
