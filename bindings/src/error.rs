//! The errors foreign code sees: [`KithError`], which mirrors
//! `kith::Error` variant for variant, [`SignerError`], which a foreign
//! wallet raises, and [`VerifierError`], which a foreign gating verifier
//! raises.

/// Why a call failed. Each variant is the `kith::Error` of the same name
/// and carries its message; `Internal` is a failure of this layer itself.
///
/// In Python these are `KithError.UnknownConversation` and so on, in
/// Kotlin `KithException.UnknownConversation`, in Swift
/// `KithError.UnknownConversation`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum KithError {
    /// The options are missing something, or hold something invalid.
    #[error("client configuration: {0}")]
    Config(String),
    /// The node refused the request or could not be reached. Work stored
    /// locally is retried later.
    #[error("node: {0}")]
    Network(String),
    /// The group's policy does not allow this.
    #[error("not permitted: {0}")]
    NotPermitted(String),
    /// The request does not fit (a malformed id, removing a non-member).
    #[error("invalid request: {0}")]
    InvalidInput(String),
    /// No conversation with this id.
    #[error("unknown conversation {0}")]
    UnknownConversation(String),
    /// This installation is no longer a member of the conversation.
    #[error("this installation is no longer a member of the conversation")]
    NotMember,
    /// The wallet did not sign.
    #[error("wallet: {0}")]
    Wallet(String),
    /// The local store failed or is corrupt.
    #[error("storage: {0}")]
    Storage(String),
    /// The change is queued but other members' commits kept winning; it is
    /// retried on the next sync.
    #[error("the change is still pending: {0}")]
    Pending(String),
    /// An internal actor failed and was restarted from storage; retry.
    #[error("internal failure, restarted from storage: {0}")]
    Restarted(String),
    /// The client has shut down.
    #[error("the client has shut down")]
    Shutdown,
    /// The group is token-gated and this inbox does not satisfy its rules
    /// (the verifier said so, or it is not on the allowlist): nothing was
    /// added.
    #[error("{inbox_id} does not satisfy the group's gating rules: {reason}")]
    GatingRefused {
        /// The inbox refused.
        inbox_id: String,
        /// Why.
        reason: String,
    },
    /// The group is token-gated and its rules could not be checked (no
    /// gating verifier, a verifier that raised, a rule this version does
    /// not know). Nothing was added; try again.
    #[error("gating: {0}")]
    GatingUnavailable(String),
    /// Content that does not encode, decode or decrypt (over a limit, a
    /// reply to a reply, a remote attachment URL without `https`, a
    /// download that is not the file sent). Nothing was sent.
    #[error("content: {0}")]
    Content(String),
    /// This layer failed (a call panicked); nothing was changed by it
    /// that the client's own steps did not make durable.
    #[error("kith-ffi internal error: {0}")]
    Internal(String),
}

impl From<kith::Error> for KithError {
    fn from(e: kith::Error) -> Self {
        match e {
            kith::Error::Config(m) => Self::Config(m),
            kith::Error::Network(m) => Self::Network(m),
            kith::Error::NotPermitted(m) => Self::NotPermitted(m),
            kith::Error::InvalidInput(m) => Self::InvalidInput(m),
            kith::Error::UnknownConversation(m) => Self::UnknownConversation(m),
            kith::Error::NotMember => Self::NotMember,
            kith::Error::Wallet(m) => Self::Wallet(m),
            kith::Error::Storage(m) => Self::Storage(m),
            kith::Error::Pending(m) => Self::Pending(m),
            kith::Error::Restarted(m) => Self::Restarted(m),
            kith::Error::Shutdown => Self::Shutdown,
            kith::Error::GatingRefused { inbox, reason } => Self::GatingRefused {
                inbox_id: inbox.to_string(),
                reason,
            },
            kith::Error::GatingUnavailable(m) => Self::GatingUnavailable(m),
            kith::Error::Content(e) => e.into(),
            // `kith::Error` is non-exhaustive: a variant added there shows
            // here with its message until it gets a variant of its own.
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<kith::ContentError> for KithError {
    fn from(e: kith::ContentError) -> Self {
        Self::Content(e.to_string())
    }
}

/// What a foreign [`WalletSigner`](crate::WalletSigner) raises when it
/// does not sign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
pub enum SignerError {
    /// The wallet (or its user) refused to sign.
    #[error("the wallet refused to sign: {reason}")]
    Refused {
        /// Why, for the user.
        reason: String,
    },
}

impl From<uniffi::UnexpectedUniFFICallbackError> for SignerError {
    /// A foreign signer that raised something other than a `SignerError`.
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        Self::Refused {
            reason: format!("the signer failed: {}", e.reason),
        }
    }
}

/// What a foreign [`GatingVerifier`](crate::GatingVerifier) raises when
/// it cannot tell whether an inbox satisfies a rule (its chain endpoint is
/// down, say). The add is then refused with `KithError::GatingUnavailable`
/// and nothing changes; it can be tried again. An inbox that does not
/// satisfy the rule is a verdict, `GatingVerdict::NotSatisfied`, not this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
pub enum VerifierError {
    /// The verifier could not answer.
    #[error("the gating verifier could not answer: {reason}")]
    Unavailable {
        /// Why, for the user.
        reason: String,
    },
}

impl From<uniffi::UnexpectedUniFFICallbackError> for VerifierError {
    /// A foreign verifier that raised something other than a
    /// `VerifierError`.
    fn from(e: uniffi::UnexpectedUniFFICallbackError) -> Self {
        Self::Unavailable {
            reason: format!("the verifier failed: {}", e.reason),
        }
    }
}
