//! The errors of the `kith` crate, sorted by blame, mapped from the engine,
//! storage and transport errors in one place.

use kith_engine::group::GroupError;

/// Why a `Client` or `Conversation` call failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The builder is missing something, or got something invalid.
    #[error("client configuration: {0}")]
    Config(String),
    /// The node refused the request or could not be reached. Work that was
    /// stored locally (a message, an intent) is retried later.
    #[error("node: {0}")]
    Network(String),
    /// The group's policy does not allow this.
    #[error("not permitted: {0}")]
    NotPermitted(String),
    /// The request does not fit the conversation (e.g. removing a
    /// non-member, adding an inbox with no installations).
    #[error("invalid request: {0}")]
    InvalidInput(String),
    /// No conversation with this id.
    #[error("unknown conversation {0}")]
    UnknownConversation(String),
    /// This installation is no longer a member.
    #[error("this installation is no longer a member of the conversation")]
    NotMember,
    /// The wallet did not sign.
    #[error("wallet: {0}")]
    Wallet(String),
    /// The local store failed or is corrupt.
    #[error("storage: {0}")]
    Storage(String),
    /// The change was queued but other members' commits kept winning;
    /// it stays queued and is retried on the next sync.
    #[error("the change is still pending: {0}")]
    Pending(String),
    /// An internal actor failed and was restarted from storage; retry.
    #[error("internal failure, restarted from storage: {0}")]
    Restarted(String),
    /// The client is shutting down.
    #[error("the client has shut down")]
    Shutdown,
    /// The group is token-gated and `inbox` does not satisfy its rules:
    /// nothing was added.
    #[error("{inbox} does not satisfy the group's gating rules: {reason}")]
    GatingRefused {
        /// The inbox refused.
        inbox: kith_engine::identity::InboxId,
        /// Why (the verifier's reason, or the allowlist).
        reason: String,
    },
    /// The group is token-gated and its rules could not be checked (no
    /// verifier, a verifier that failed, a rule this version does not
    /// know). Nothing was added; try again.
    #[error("gating: {0}")]
    GatingUnavailable(String),
    /// Content that does not encode (over a limit, a reply to a reply, a
    /// remote attachment without `https`, ...). Nothing was sent.
    #[error("content: {0}")]
    Content(#[from] crate::content::ContentError),
}

impl From<GroupError> for Error {
    fn from(e: GroupError) -> Self {
        match e {
            GroupError::NotPermitted(m) => Error::NotPermitted(m),
            GroupError::InvalidInput(m) => Error::InvalidInput(m),
            GroupError::NotMember => Error::NotMember,
            GroupError::KeyPackage(e) => Error::InvalidInput(e.to_string()),
            GroupError::Metadata(e) => Error::InvalidInput(e.to_string()),
            other => Error::Storage(other.to_string()),
        }
    }
}

impl From<kith_transport::client::ClientError> for Error {
    fn from(e: kith_transport::client::ClientError) -> Self {
        Error::Network(e.to_string())
    }
}

impl From<kith_storage::StorageError> for Error {
    fn from(e: kith_storage::StorageError) -> Self {
        Error::Storage(e.to_string())
    }
}

impl From<actix::MailboxError> for Error {
    fn from(_: actix::MailboxError) -> Self {
        Error::Shutdown
    }
}
