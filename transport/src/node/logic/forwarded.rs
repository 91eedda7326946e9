//! Deniable key-package fetches passed between nodes, on [`NodeLogic`].
//!
//! An installation's deniable packages live on the node it uploaded them to
//! (its home), like its ordinary ones, so that a one-time package goes out
//! once however many nodes are asked. An ordinary fetch can be forwarded as
//! it is, since the requester signed it. A deniable fetch cannot: its MAC is
//! keyed with the static key of the node the client asked, and nobody else
//! can check it (which is the point: DESIGN.md section 8). So the asked node
//! checks the MAC, and vouches for the request to its peers with its own
//! node key. A peer accepts such a request only from a configured peer, and
//! charges the requester and the targets as if asked directly.
//!
//! The node's signature says only that the node claims the requester asked.
//! The node could claim that, and forge the MAC too, at any time: it holds
//! the MAC key. So the signature adds no evidence about the requester that
//! a third party could not already get from a lying node.

use ed25519_dalek::{Signature, Signer as _, Verifier as _};
use kith_engine::{
    delivery::{NodeId, NodeStore},
    identity::{InboxId, InstallationId},
};

use super::{FetchedKeyPackage, NodeLogic};
use crate::node::{auth, error::NodeError};

/// A deniable fetch a peer node authenticated and passes on, as received
/// (`ForwardDeniableFetch`).
#[derive(Debug, Clone)]
pub struct ForwardedDeniableFetch {
    /// The forwarding node, which checked the requester's MAC.
    pub node_id: NodeId,
    /// When the forwarding node signed it (ms).
    pub timestamp_ms: u64,
    /// The requester's inbox.
    pub requester_inbox: InboxId,
    /// The requesting installation, which gets no package of its own.
    pub requester: InstallationId,
    /// The inbox whose installations' packages are wanted.
    pub target: InboxId,
    /// The installations the forwarding node had no package for.
    pub installations: Vec<InstallationId>,
    /// The forwarding node's Ed25519 signature over
    /// [`auth::forwarded_deniable_fetch_bytes`].
    pub signature: Vec<u8>,
}

impl<S: NodeStore + 'static> NodeLogic<S> {
    /// Vouch for a deniable fetch this node authenticated, to pass it on to
    /// its peers for the `installations` it had no package for.
    pub async fn forward_deniable(
        &self,
        requester_inbox: InboxId,
        requester: InstallationId,
        target: InboxId,
        installations: Vec<InstallationId>,
    ) -> Result<ForwardedDeniableFetch, NodeError> {
        let node_id = self.config.node_id;
        let timestamp_ms = self.clock.now_ms();
        let signed = auth::forwarded_deniable_fetch_bytes(
            node_id,
            timestamp_ms,
            &requester_inbox,
            &requester,
            &target,
            &installations,
        );
        let signature = self.signing_key().await?.sign(&signed).to_bytes().to_vec();
        Ok(ForwardedDeniableFetch {
            node_id,
            timestamp_ms,
            requester_inbox,
            requester,
            target,
            installations,
            signature,
        })
    }

    /// Check a forwarded deniable fetch (a configured peer's signature,
    /// fresh), then charge the requester and hand out one deniable package
    /// for each named installation that is active in the target's log here.
    pub async fn fetch_forwarded_deniable(
        &self,
        forwarded: ForwardedDeniableFetch,
    ) -> Result<Vec<FetchedKeyPackage>, NodeError> {
        let limit = self.config.limits.max_batch_key_packages;
        if forwarded.installations.is_empty() || forwarded.installations.len() > limit {
            return Err(NodeError::InvalidArgument(format!(
                "forward between 1 and {limit} installations, not {}",
                forwarded.installations.len()
            )));
        }
        let peer = self
            .config
            .peer(forwarded.node_id)
            .filter(|_| forwarded.node_id != self.config.node_id)
            .ok_or_else(|| {
                NodeError::Unauthenticated(format!(
                    "node {} is not a configured peer of this node; only peers forward deniable \
                     fetches",
                    forwarded.node_id
                ))
            })?;
        let now_ms = self.clock.now_ms();
        auth::check_timestamp(forwarded.timestamp_ms, now_ms, self.timestamp_window_ms())?;
        let signature = Signature::from_slice(&forwarded.signature).map_err(|_| {
            NodeError::InvalidArgument(format!(
                "signature must be 64 bytes (Ed25519), got {}",
                forwarded.signature.len()
            ))
        })?;
        let signed = auth::forwarded_deniable_fetch_bytes(
            forwarded.node_id,
            forwarded.timestamp_ms,
            &forwarded.requester_inbox,
            &forwarded.requester,
            &forwarded.target,
            &forwarded.installations,
        );
        peer.public_key.verify(&signed, &signature).map_err(|_| {
            NodeError::Unauthenticated(format!(
                "the forwarded fetch is not signed by peer {}'s node key",
                forwarded.node_id
            ))
        })?;
        self.hand_out_deniable(
            forwarded.target,
            forwarded.requester,
            Some(forwarded.installations),
            now_ms,
        )
        .await
    }
}
