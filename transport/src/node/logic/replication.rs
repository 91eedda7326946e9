//! The serving half of replication, on [`NodeLogic`]: a peer pulls the
//! envelopes an originator stamped, by sequence id over all topics, and a
//! node stores what it pulled after checking each seal against the
//! originator's configured key. The pulling half, which connects to peers,
//! is `node::replicator`.
//!
//! A node accepts an envelope only from a configured peer's originator id
//! and under that peer's seal, so a peer (or anything between the nodes)
//! cannot speak in another originator's name, move a payload to another
//! topic, or change an originator field. Per originator, envelopes are
//! stored gap-free in sequence order, so a node's vector clock (its
//! `heads`) says exactly what it still needs.

use std::sync::Arc;

use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use std::collections::BTreeSet;

use kith_engine::{
    delivery::{Cursor, NodeId, NodeStore, Replicated, SealedEnvelope, Topic},
    identity::{IdentityConfig, IdentityState, IdentityUpdate, InboxId},
};
use tokio::sync::{broadcast, mpsc};

use super::{NodeLogic, internal, store_error};
use crate::node::{error::NodeError, replicator::REPLICATION_BATCH_BYTES};

/// Why a replicated batch was refused. The batch changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicationError {
    /// The envelope names an originator that is not a configured peer (or
    /// names this node).
    #[error("envelope {sequence} of originator {originator}: not a configured peer of this node")]
    UnknownOriginator {
        /// The originator it names.
        originator: NodeId,
        /// Its sequence id.
        sequence: u64,
    },
    /// The seal does not verify under the originator's key.
    #[error(
        "envelope {sequence} of originator {originator}: its seal does not verify under the originator's key"
    )]
    BadSeal {
        /// The originator it names.
        originator: NodeId,
        /// Its sequence id.
        sequence: u64,
    },
    /// The payload is over this node's envelope limit.
    #[error(
        "envelope {sequence} of originator {originator}: {bytes} bytes, over this node's limit of {limit}"
    )]
    TooLarge {
        /// The originator it names.
        originator: NodeId,
        /// Its sequence id.
        sequence: u64,
        /// Its payload size.
        bytes: usize,
        /// This node's limit.
        limit: usize,
    },
    /// The batch skips sequence ids of an originator.
    #[error(
        "originator {originator}: after sequence {head} came {sequence}; replication must not skip"
    )]
    Gap {
        /// The originator.
        originator: NodeId,
        /// The last sequence id this node has (or the batch had) of it.
        head: u64,
        /// The sequence id that came next.
        sequence: u64,
    },
}

impl From<ReplicationError> for NodeError {
    fn from(e: ReplicationError) -> Self {
        Self::InvalidArgument(e.to_string())
    }
}

/// The most envelopes one replication page carries.
const REPLICATION_PAGE: usize = 1_000;

impl<S: NodeStore + 'static> NodeLogic<S> {
    /// This node's vector clock: the last sequence id stored per
    /// originator.
    pub async fn heads(&self) -> Result<Cursor, NodeError> {
        self.blocking(|store| store.heads().map_err(store_error::<S>))
            .await
    }

    /// Up to `limit` envelopes of `originator` after sequence `after`, in
    /// sequence order, sealed.
    pub async fn originated(
        &self,
        originator: NodeId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<SealedEnvelope>, NodeError> {
        let limit = limit.clamp(1, REPLICATION_PAGE);
        let mut page = self
            .blocking(move |store| {
                store
                    .originated_envelopes(originator, after, limit)
                    .map_err(store_error::<S>)
            })
            .await?;
        self.fill_seals(&mut page).await?;
        Ok(page)
    }

    /// Stream the envelopes of `originator` after sequence `after`: what is
    /// stored, in pages, then each new one as it is stored, in batches, with
    /// no gap and no repeat. A peer replicating from this node subscribes
    /// to this node's own id.
    pub fn subscribe_originated(
        self: &Arc<Self>,
        originator: NodeId,
        after: u64,
    ) -> mpsc::Receiver<Result<Vec<SealedEnvelope>, NodeError>> {
        self.start_feed();
        // Register for live envelopes before catching up, as `subscribe`.
        let mut live = self.live.subscribe();
        let mut closing = self.closing.subscribe();
        // Few, large batches: the channel bounds what one slow peer holds.
        let (tx, rx) = mpsc::channel(8);
        let node = Arc::clone(self);
        tokio::spawn(async move {
            let mut last = after;
            if node
                .catch_up_originated(originator, &mut last, &tx)
                .await
                .is_err()
            {
                return;
            }
            loop {
                let next = tokio::select! {
                    () = tx.closed() => return,
                    _ = closing.wait_for(|closing| *closing) => return,
                    next = live.recv() => next,
                };
                match next {
                    Ok(first) => {
                        // Batch what is already waiting, to amortise the
                        // peer's write.
                        let mut batch = LiveBatch::new(originator, last);
                        batch.push(&first);
                        let mut lagged = false;
                        while batch.has_room() {
                            match live.try_recv() {
                                Ok(sealed) => batch.push(&sealed),
                                Err(broadcast::error::TryRecvError::Lagged(_)) => {
                                    lagged = true;
                                    break;
                                }
                                Err(_) => break,
                            }
                        }
                        last = batch.last;
                        let batch = batch.envelopes;
                        if !batch.is_empty() && tx.send(Ok(batch)).await.is_err() {
                            return;
                        }
                        if lagged
                            && node
                                .catch_up_originated(originator, &mut last, &tx)
                                .await
                                .is_err()
                        {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if node
                            .catch_up_originated(originator, &mut last, &tx)
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        rx
    }

    /// Send every stored envelope of `originator` after `last`, advancing
    /// it. `Err` means the subscriber is gone.
    async fn catch_up_originated(
        &self,
        originator: NodeId,
        last: &mut u64,
        tx: &mpsc::Sender<Result<Vec<SealedEnvelope>, NodeError>>,
    ) -> Result<(), ()> {
        loop {
            let page = match self.originated(originator, *last, REPLICATION_PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return Err(());
                }
            };
            let Some(end) = page.last() else {
                return Ok(());
            };
            *last = end.envelope.originator_sequence_id;
            let full = page.len() == REPLICATION_PAGE;
            for batch in by_bytes(page) {
                tx.send(Ok(batch)).await.map_err(|_| ())?;
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// Check and store envelopes replicated from peers, and announce the
    /// new ones to subscriptions. Copies of envelopes already stored change
    /// nothing. Returns how many were new.
    ///
    /// # Errors
    /// [`NodeError::InvalidArgument`] (from [`ReplicationError`]) when an
    /// envelope is not from a configured peer, its seal does not verify, it
    /// is too large, or the batch skips a sequence id; nothing is stored
    /// then.
    pub async fn accept_replicated(&self, batch: Vec<SealedEnvelope>) -> Result<usize, NodeError> {
        if batch.is_empty() {
            return Ok(0);
        }
        let limit = self.config.limits.max_envelope_bytes;
        let keys: Vec<(NodeId, VerifyingKey)> = self
            .config
            .peers
            .iter()
            .map(|peer| (peer.node_id, peer.public_key))
            .collect();
        // Seal checks are CPU work: off the async threads.
        let batch = tokio::task::spawn_blocking(move || {
            for sealed in &batch {
                check_replicated(&keys, limit, sealed)?;
            }
            Ok::<_, ReplicationError>(batch)
        })
        .await
        .map_err(internal)??;
        let order = self.publish_order.lock().await;
        let heads = self.heads().await?;
        check_contiguous(&heads, &batch)?;
        let stored = self
            .blocking(move |store| store.store_replicated(batch).map_err(store_error::<S>))
            .await?;
        // The log first, then the announcement: a client told of a peer's
        // identity update (perhaps one that revises a log it read) and
        // reading the log at once must find it revised already.
        self.apply_replicated_identities(&stored).await;
        self.announce(&stored).await;
        drop(order);
        Ok(stored.len())
    }

    /// A peer's envelopes on `identity/<inbox>` are its mirror of the
    /// identity updates it verified: bring this node's log of each such
    /// inbox up to date with them, so that a client may ask any node.
    async fn apply_replicated_identities(&self, stored: &[SealedEnvelope]) {
        let inboxes: BTreeSet<InboxId> = stored
            .iter()
            .filter_map(|sealed| match &sealed.envelope.topic {
                Topic::Identity(inbox) => Some(*inbox),
                _ => None,
            })
            .collect();
        for inbox in inboxes {
            match self
                .blocking(move |store| sync_identity_log(store, inbox))
                .await
            {
                Ok(0) => {}
                Ok(applied) => tracing::debug!(%inbox, applied, "identity updates from peers"),
                // The envelopes are stored either way; the log catches up
                // on the next mirror of this inbox.
                Err(e) => {
                    tracing::warn!(%inbox, error = %e, "cannot apply a peer's identity updates")
                }
            }
        }
    }
}

/// Bring `inbox`'s identity log to the canonical log of the updates that
/// nodes mirrored on its identity topic, and return how many updates of
/// the stored log changed (appended or replaced).
///
/// Two nodes may each accept a different update with the same sequence
/// number (two devices registering at once, each through its own node).
/// Every node decides between them the same way: the canonical log takes,
/// for each sequence number in turn, the first mirrored update in
/// canonical order `(time, node, sequence)` that verifies on the log
/// before it. An update this node stored but has not mirrored yet (its
/// announcement follows the store) comes after every mirror of its
/// sequence, since its mirror will be later than all of them. Once every
/// node has every mirror, every node holds the same log; a node whose log
/// took the losing update replaces it, with whatever it built on it. The
/// client whose registration lost registers again (`Client::register`).
fn sync_identity_log<S: NodeStore>(store: &S, inbox: InboxId) -> Result<usize, NodeError> {
    // Another peer's batch (or a client's publish) may change the log
    // between reading and writing it: read again, a few times.
    for _ in 0..SYNC_ATTEMPTS {
        if let Some(changed) = sync_identity_log_once(store, inbox)? {
            return Ok(changed);
        }
    }
    tracing::warn!(%inbox, "identity log kept changing while being synced; the next mirror syncs it");
    Ok(0)
}

/// Attempts of [`sync_identity_log`] before it leaves the log to the next
/// mirror.
const SYNC_ATTEMPTS: usize = 8;

/// One attempt of [`sync_identity_log`]: `None` if the log changed under
/// it.
fn sync_identity_log_once<S: NodeStore>(
    store: &S,
    inbox: InboxId,
) -> Result<Option<usize>, NodeError> {
    let topic = Topic::Identity(inbox);
    let mut mirrors = Vec::new();
    let mut cursor = Cursor::new();
    loop {
        let page = store
            .query_envelopes(&topic, &cursor, REPLICATION_PAGE)
            .map_err(store_error::<S>)?;
        let full = page.len() == REPLICATION_PAGE;
        for sealed in &page {
            cursor.advance(&sealed.envelope);
        }
        mirrors.extend(
            page.into_iter()
                .filter_map(|sealed| IdentityUpdate::from_bytes(&sealed.envelope.payload).ok()),
        );
        if !full {
            break;
        }
    }
    let stored: Vec<Vec<u8>> = store
        .identity_updates(&[(inbox, 0)], usize::MAX)
        .map_err(store_error::<S>)?
        .pop()
        .unwrap_or_default()
        .into_iter()
        .map(|(_, bytes)| bytes)
        .collect();
    let canonical = canonical_log(inbox, &mirrors, &stored)?;
    let same = stored
        .iter()
        .zip(&canonical)
        .take_while(|(a, b)| a == b)
        .count();
    let last = stored.len() as u64;
    if same == stored.len() {
        let mut appended = 0;
        for (sequence, update) in (last + 1..).zip(&canonical[same..]) {
            if !store
                .append_identity_update(&inbox, sequence, update.clone())
                .map_err(store_error::<S>)?
            {
                return Ok(None);
            }
            appended += 1;
        }
        return Ok(Some(appended));
    }
    let from = same as u64 + 1;
    let revised = canonical[same..].to_vec();
    let changed = revised.len().max(stored.len() - same);
    if !store
        .revise_identity_log(&inbox, last, from, revised)
        .map_err(store_error::<S>)?
    {
        return Ok(None);
    }
    tracing::info!(
        %inbox,
        from,
        dropped = stored.len() - same,
        kept = canonical.len() - same,
        "identity log revised: another node's update with the same sequence comes first"
    );
    Ok(Some(changed))
}

/// The canonical log of `inbox` (see [`sync_identity_log`]): per sequence,
/// the first of `mirrors` (in canonical order) that verifies on the log so
/// far, else the update `stored` at that sequence if it verifies.
fn canonical_log(
    inbox: InboxId,
    mirrors: &[IdentityUpdate],
    stored: &[Vec<u8>],
) -> Result<Vec<Vec<u8>>, NodeError> {
    let mut state = IdentityState::from_log(inbox, IdentityConfig::default(), &[])
        .map_err(|e| internal(format!("empty identity log of {inbox}: {e}")))?;
    let mut log: Vec<Vec<u8>> = Vec::new();
    loop {
        let next = log.len() as u64 + 1;
        let own = usize::try_from(next - 1)
            .ok()
            .and_then(|i| stored.get(i))
            .and_then(|bytes| IdentityUpdate::from_bytes(bytes).ok());
        let mut candidates = mirrors
            .iter()
            .filter(|update| update.unsigned.sequence == next)
            .chain(own.iter());
        let Some((update, extended)) = candidates.find_map(|update| {
            let mut extended = state.clone();
            extended.apply(update).ok().map(|()| (update, extended))
        }) else {
            return Ok(log);
        };
        log.push(update.to_bytes());
        state = extended;
    }
}

/// A batch of live envelopes of one originator, bounded by count and
/// bytes.
struct LiveBatch {
    originator: NodeId,
    /// The last sequence id taken (or sent before).
    last: u64,
    envelopes: Vec<SealedEnvelope>,
    bytes: usize,
}

impl LiveBatch {
    fn new(originator: NodeId, last: u64) -> Self {
        Self {
            originator,
            last,
            envelopes: Vec::new(),
            bytes: 0,
        }
    }

    /// Take `sealed` if it is the originator's and new.
    fn push(&mut self, sealed: &SealedEnvelope) {
        let envelope = &sealed.envelope;
        if envelope.originator_node_id == self.originator
            && envelope.originator_sequence_id > self.last
        {
            self.last = envelope.originator_sequence_id;
            self.bytes += envelope.payload.len();
            self.envelopes.push(sealed.clone());
        }
    }

    fn has_room(&self) -> bool {
        self.envelopes.len() < REPLICATION_PAGE && self.bytes < REPLICATION_BATCH_BYTES
    }
}

/// Split a page into batches of at most [`REPLICATION_BATCH_BYTES`] of
/// payload (an envelope larger than that alone makes a batch), so that a
/// batch fits the puller's message limit.
fn by_bytes(page: Vec<SealedEnvelope>) -> Vec<Vec<SealedEnvelope>> {
    let mut batches = Vec::new();
    let mut batch = Vec::new();
    let mut bytes = 0;
    for sealed in page {
        let size = sealed.envelope.payload.len();
        if !batch.is_empty() && bytes + size > REPLICATION_BATCH_BYTES {
            batches.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += size;
        batch.push(sealed);
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    batches
}

/// One replicated envelope: a configured peer's, sealed by it, within
/// this node's limits. (Its topic was parsed by the wire conversion.)
fn check_replicated(
    keys: &[(NodeId, VerifyingKey)],
    limit: usize,
    sealed: &SealedEnvelope,
) -> Result<(), ReplicationError> {
    let envelope = &sealed.envelope;
    let (originator, sequence) = (envelope.originator_node_id, envelope.originator_sequence_id);
    let Some((_, key)) = keys.iter().find(|(id, _)| *id == originator) else {
        return Err(ReplicationError::UnknownOriginator {
            originator,
            sequence,
        });
    };
    let bad_seal = || ReplicationError::BadSeal {
        originator,
        sequence,
    };
    let signature = Signature::from_slice(&sealed.seal).map_err(|_| bad_seal())?;
    key.verify(&envelope.seal_input(), &signature)
        .map_err(|_| bad_seal())?;
    if envelope.payload.len() > limit {
        return Err(ReplicationError::TooLarge {
            originator,
            sequence,
            bytes: envelope.payload.len(),
            limit,
        });
    }
    Ok(())
}

/// Per originator, the batch continues this node's heads without a gap
/// (copies of what is stored are allowed).
fn check_contiguous(heads: &Cursor, batch: &[SealedEnvelope]) -> Result<(), ReplicationError> {
    let mut next: std::collections::BTreeMap<NodeId, u64> = std::collections::BTreeMap::new();
    for sealed in batch {
        let envelope = &sealed.envelope;
        let originator = envelope.originator_node_id;
        let head = next
            .entry(originator)
            .or_insert_with(|| heads.get(originator));
        let sequence = envelope.originator_sequence_id;
        match Replicated::classify(*head, sequence) {
            Replicated::Copy => {}
            Replicated::Next => *head = sequence,
            Replicated::Gap => {
                return Err(ReplicationError::Gap {
                    originator,
                    head: *head,
                    sequence,
                });
            }
        }
    }
    Ok(())
}
