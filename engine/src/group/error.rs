//! The group engine's errors, sorted by blame: the caller's (`NotPermitted`,
//! `InvalidInput`), missing inputs the driver must fetch (`NeedIdentities`,
//! `IdentitiesDisputed`), and our own storage or library failures.

use crate::identity::{InboxId, KeyPackageError};

/// Why a group operation failed. After any error the driver discards the
/// storage step and reloads the group, so nothing of the failed operation
/// remains.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    /// The identity logs of these inboxes must be fetched (up to at least
    /// the given sequence numbers) before the input can be processed; fetch
    /// them, extend the cache and retry.
    #[error("identity logs needed for {0:?}")]
    NeedIdentities(Vec<(InboxId, u64)>),
    /// The input disagrees with the cached identity logs of these inboxes
    /// at a sequence the cache holds (an installation added that the log
    /// does not have, or removed while the log has it), and the cache
    /// allows revisions ([`IdentityCache::allow_revisions`]): a replicating
    /// node may have revised such a log since it was read (two devices
    /// registered with one sequence number). Read each whole log again
    /// ([`IdentityCache::replace`]), [`IdentityCache::mark_reread`] it, and
    /// retry. The retry rejects the input if the logs still disagree.
    ///
    /// [`IdentityCache::allow_revisions`]: crate::group::IdentityCache::allow_revisions
    /// [`IdentityCache::replace`]: crate::group::IdentityCache::replace
    /// [`IdentityCache::mark_reread`]: crate::group::IdentityCache::mark_reread
    #[error("the identity logs of {0:?} disagree with the input; read them again")]
    IdentitiesDisputed(Vec<InboxId>),
    /// The group's policy does not let this member do that.
    #[error("not permitted: {0}")]
    NotPermitted(String),
    /// The request makes no sense for this group (e.g. removing a non-member).
    #[error("invalid request: {0}")]
    InvalidInput(String),
    /// This installation is no longer a member.
    #[error("this installation is not a member of the group")]
    NotMember,
    /// The group's metadata is invalid.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// A key package was refused.
    #[error(transparent)]
    KeyPackage(#[from] KeyPackageError),
    /// The store failed.
    #[error("client store failed: {0}")]
    Store(String),
    /// A stored record does not decode.
    #[error("client store is corrupt: {0}")]
    Corrupt(String),
    /// OpenMLS failed on our own state (not on peer input).
    #[error("MLS operation failed: {0}")]
    Mls(String),
}

impl GroupError {
    pub(crate) fn store(e: impl std::fmt::Display) -> Self {
        Self::Store(e.to_string())
    }

    pub(crate) fn mls(e: impl std::fmt::Debug) -> Self {
        Self::Mls(format!("{e:?}"))
    }
}

/// Why group metadata was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetadataError {
    /// A required Kith extension is absent from the group context.
    #[error("the group context lacks the {0} extension")]
    Missing(&'static str),
    /// An extension does not decode.
    #[error("the {extension} extension is malformed: {reason}")]
    Malformed {
        /// Which extension.
        extension: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A value exceeds its documented limit.
    #[error("{what} is {len}, over the limit of {limit}")]
    TooLong {
        /// What is too long.
        what: String,
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
}
