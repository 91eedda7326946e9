//! The node's errors, sorted by what the caller should do, and their one
//! mapping to gRPC statuses.

/// Why the node refused a request. A refused request changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// Malformed input: fix the request.
    #[error("{0}")]
    InvalidArgument(String),
    /// A signature does not verify or a timestamp is stale.
    #[error("{0}")]
    Unauthenticated(String),
    /// A size limit or a rate limit. `retry_after_ms` is set for rate
    /// limits.
    #[error("{message}")]
    ResourceExhausted {
        /// What was exceeded.
        message: String,
        /// When to retry, for rate limits.
        retry_after_ms: Option<u64>,
    },
    /// A valid request the current state refuses (e.g. not the next step of
    /// an identity log).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The node failed (storage); retrying may help.
    #[error("internal error: {0}")]
    Internal(String),
    /// The node's database cannot be reached right now; retry later.
    /// Nothing was stored by the failed request.
    #[error("the node's database is unavailable: {0}")]
    Unavailable(String),
}

impl NodeError {
    pub(crate) fn too_large(message: impl Into<String>) -> Self {
        Self::ResourceExhausted {
            message: message.into(),
            retry_after_ms: None,
        }
    }
}

impl From<crate::convert::ConvertError> for NodeError {
    fn from(e: crate::convert::ConvertError) -> Self {
        Self::InvalidArgument(e.to_string())
    }
}

/// The trailer that carries a rate limit's retry delay.
pub const RETRY_AFTER_METADATA: &str = "retry-after-ms";

impl From<NodeError> for tonic::Status {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::InvalidArgument(m) => tonic::Status::invalid_argument(m),
            NodeError::Unauthenticated(m) => tonic::Status::unauthenticated(m),
            NodeError::ResourceExhausted {
                message,
                retry_after_ms,
            } => {
                let mut status = tonic::Status::resource_exhausted(message);
                if let Some(ms) = retry_after_ms
                    && let Ok(value) = ms.to_string().parse()
                {
                    status.metadata_mut().insert(RETRY_AFTER_METADATA, value);
                }
                status
            }
            NodeError::FailedPrecondition(m) => tonic::Status::failed_precondition(m),
            NodeError::Internal(m) => tonic::Status::internal(m),
            NodeError::Unavailable(m) => tonic::Status::unavailable(m),
        }
    }
}
