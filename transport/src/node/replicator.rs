//! The pulling half of replication: one task per configured peer subscribes
//! to the envelopes that peer originated, from this node's vector clock,
//! and hands each batch to [`NodeLogic::accept_replicated`], which checks
//! the seals and stores them. The serving half is
//! `NodeLogic::subscribe_originated`.
//!
//! Each peer is pulled over one long-lived gRPC stream (catch-up pages,
//! then live batches), so replication lag is one hop once caught up. The
//! stream is backpressured end to end: the serving node's task waits on a
//! bounded channel, HTTP/2 flow control holds it when this node stops
//! reading, and this node reads the next batch only after it stored the
//! last. A broken stream is retried with capped exponential backoff, from
//! whatever the store then holds, so a restart or a partition heals by
//! itself.

use std::{sync::Arc, time::Duration};

use kith_engine::delivery::NodeStore;
use rand_core::RngCore as _;
use tokio::task::JoinHandle;

use super::{config::Peer, logic::NodeLogic};
use crate::{convert, proto};

/// Delay injected before each replicated batch is stored, to test clients
/// against a slow network on real processes. Zero in production. Each
/// batch is stored its delay after it arrived (the stream is read on
/// meanwhile), so the lag is the delay, not a sum over a burst.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicationDelay {
    /// Added to every batch.
    pub fixed: Duration,
    /// Up to this much more, uniformly at random per batch.
    pub jitter: Duration,
}

impl ReplicationDelay {
    fn sample(&self) -> Duration {
        let jitter_ms = u64::try_from(self.jitter.as_millis()).unwrap_or(u64::MAX);
        let extra = if jitter_ms == 0 {
            0
        } else {
            rand_core::OsRng.next_u64() % (jitter_ms + 1)
        };
        self.fixed + Duration::from_millis(extra)
    }
}

/// The first wait after a failed pull; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between pulls from a peer that is down.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Start pulling from every peer in `logic`'s configuration. The tasks end
/// when the node closes its subscriptions (shutdown).
pub fn spawn_replicators<S: NodeStore + 'static>(
    logic: &Arc<NodeLogic<S>>,
    delay: ReplicationDelay,
) -> Vec<JoinHandle<()>> {
    logic
        .config()
        .peers
        .iter()
        .cloned()
        .map(|peer| tokio::spawn(replicate_from(Arc::clone(logic), peer, delay)))
        .collect()
}

/// Pull `peer`'s envelopes until the node closes.
async fn replicate_from<S: NodeStore + 'static>(
    logic: Arc<NodeLogic<S>>,
    peer: Peer,
    delay: ReplicationDelay,
) {
    let mut closing = logic.closing();
    let mut backoff = FIRST_BACKOFF;
    loop {
        let pulled = tokio::select! {
            _ = closing.wait_for(|closing| *closing) => return,
            pulled = pull(&logic, &peer, delay) => pulled,
        };
        match pulled {
            // The peer ended the stream (it is shutting down): try again
            // soon, from the start of the backoff.
            Ok(stored) => {
                tracing::info!(
                    peer = peer.node_id,
                    stored,
                    "replication stream from peer ended"
                );
                backoff = FIRST_BACKOFF;
            }
            Err(e) => {
                tracing::warn!(peer = peer.node_id, url = %peer.url, error = %e, retry_in = ?backoff, "replication from peer failed");
            }
        }
        tokio::select! {
            _ = closing.wait_for(|closing| *closing) => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One stream from `peer`: connect, subscribe from this node's head for
/// it, store batches until the stream ends. Returns how many envelopes were
/// new.
#[tracing::instrument(skip_all, fields(peer = peer.node_id))]
async fn pull<S: NodeStore + 'static>(
    logic: &NodeLogic<S>,
    peer: &Peer,
    delay: ReplicationDelay,
) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
    let endpoint = tonic::transport::Endpoint::from_shared(peer.url.clone())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    let channel = endpoint.connect().await?;
    // A batch holds at most one envelope over the serving node's byte
    // budget; allow for our own largest envelope and framing.
    let max_message = logic
        .config()
        .limits
        .max_envelope_bytes
        .saturating_mul(2)
        .saturating_add(REPLICATION_FRAME_SLACK)
        .max(REPLICATION_BATCH_BYTES * 2);
    let mut client =
        proto::node_client::NodeClient::new(channel).max_decoding_message_size(max_message);
    let after = logic.heads().await?.get(peer.node_id);
    tracing::debug!(after, "pulling from peer");
    let mut stream = client
        .subscribe_originated(proto::SubscribeOriginatedRequest {
            originator_node_id: peer.node_id,
            after_sequence_id: after,
        })
        .await?
        .into_inner();
    if delay == ReplicationDelay::default() {
        let mut stored = 0;
        while let Some(batch) = stream.message().await? {
            stored += logic.accept_replicated(sealed(batch)?).await?;
        }
        return Ok(stored);
    }
    // With injected delay, each batch is stored its delay after it
    // arrived: a reader keeps taking batches meanwhile, so that the lag
    // stays the delay (plus jitter) instead of adding up over a burst.
    let (tx, mut rx) = tokio::sync::mpsc::channel(DELAYED_BATCHES);
    let mut reader = AbortOnDrop(tokio::spawn(async move {
        while let Some(batch) = stream.message().await? {
            let due = tokio::time::Instant::now() + delay.sample();
            if tx.send((due, batch)).await.is_err() {
                break;
            }
        }
        Ok::<_, tonic::Status>(())
    }));
    let mut stored = 0;
    while let Some((due, batch)) = rx.recv().await {
        tokio::time::sleep_until(due).await;
        match sealed(batch) {
            Ok(batch) => match logic.accept_replicated(batch).await {
                Ok(n) => stored += n,
                Err(e) => return Err(e.into()),
            },
            Err(e) => return Err(e),
        }
    }
    (&mut reader.0).await??;
    Ok(stored)
}

/// A task that ends with the pull that started it (the node closing, or
/// a failed batch), not with the peer's stream.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The envelopes of a pulled batch, checked for form.
fn sealed(
    batch: proto::SubscribeOriginatedResponse,
) -> Result<Vec<kith_engine::delivery::SealedEnvelope>, Box<dyn std::error::Error + Send + Sync>> {
    Ok(batch
        .envelopes
        .into_iter()
        .map(convert::sealed_from_proto)
        .collect::<Result<Vec<_>, _>>()?)
}

/// Batches an injected delay may hold at once.
const DELAYED_BATCHES: usize = 64;

/// How many payload bytes a serving node puts in one replication batch
/// (besides one envelope that alone is larger).
pub(crate) const REPLICATION_BATCH_BYTES: usize = 2 * 1024 * 1024;

/// Room for topics, originator fields and seals in a batch.
const REPLICATION_FRAME_SLACK: usize = 1024 * 1024;
