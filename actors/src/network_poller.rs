//! `NetworkPoller`: follows every topic the client cares about and routes
//! each envelope's arrival to the actor that owns its topic as a [`Wake`].
//!
//! A group's envelopes are handed over with the wake ([`Deliveries`]), each
//! with the position the subscription had reached before it, so that the
//! group applies them without reading them again. The owner's durable
//! cursor stays the truth: a delivery that does not continue from it (a
//! lost push, a queue that overflowed, a rejoin that moved the cursor back)
//! makes the owner read its topic from the cursor, and one it already
//! applied is dropped. Welcome and identity topics get a bare wake, and
//! their owners read. So a lost push, a duplicate, or a re-subscription
//! that replays old envelopes costs a query, never correctness.
//!
//! Identity topics are the node's mirror of the identity updates it
//! verified, but a node may let anyone publish there, and may lie itself:
//! an envelope on one wakes discovery only if it is a verified update of
//! that inbox that the client does not hold yet
//! ([`Shared::identity_push`]).
//!
//! Topics arrive over time (one per new group, one per member inbox), so
//! they are subscribed in batches: each batch of newly watched topics gets
//! a subscription of its own, and a batch whose stream ends is subscribed
//! again after a delay. Adding a group never re-subscribes the others.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use actix::prelude::*;
use futures::StreamExt as _;
use kith_engine::delivery::{Cursor, NodeId, Topic};
use tokio::sync::Notify;
use tracing::Instrument as _;

use crate::{
    group_actor::Wake,
    shared::{IdentityPush, Shared},
};

/// How long to wait before re-subscribing after a stream ended.
const RESUBSCRIBE_DELAY: Duration = Duration::from_secs(1);
/// Watches arriving together are folded into one subscription.
const DEBOUNCE: Duration = Duration::from_millis(5);

/// Per topic: the actor to wake, and where its envelopes are handed over
/// (for groups).
type Routes = Arc<Mutex<BTreeMap<Topic, (Recipient<Wake>, Option<Arc<Deliveries>>)>>>;

/// The most envelopes waiting for one group. Past it the queue is dropped:
/// the next delivery then does not continue from the group's cursor, and
/// the group reads what it missed from the node.
const MAX_QUEUED: usize = 4_096;

/// Envelopes the subscription handed to a group and it has not applied
/// yet, and the notification a command of that group waiting for the
/// network waits on (an actor busy with one command reads no `Wake` until
/// it is done, but it can take what was queued here).
#[derive(Debug, Default)]
pub(crate) struct Deliveries {
    queue: Mutex<Vec<Delivered>>,
    /// Notified on every delivery.
    pub(crate) arrived: Notify,
}

/// One envelope, and the subscription's position on its topic before it:
/// every envelope up to that position was delivered before this one, or
/// was behind the cursor the subscription started from.
#[derive(Debug, Clone)]
pub(crate) struct Delivered {
    pub(crate) after: Cursor,
    pub(crate) envelope: kith_engine::delivery::Envelope,
}

impl Deliveries {
    fn push(&self, delivered: Delivered) {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if queue.len() >= MAX_QUEUED {
            queue.clear();
        }
        queue.push(delivered);
        drop(queue);
        self.arrived.notify_one();
    }

    /// Take everything delivered so far, oldest first.
    pub(crate) fn take(&self) -> Vec<Delivered> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// See the module docs.
pub(crate) struct NetworkPoller {
    shared: Arc<Shared>,
    /// Who owns each watched topic.
    routes: Routes,
    /// Topics watched but not yet subscribed.
    pending: Vec<Topic>,
    flush_scheduled: bool,
    /// Per topic, the envelopes already routed.
    seen: Arc<Mutex<BTreeMap<Topic, Cursor>>>,
}

/// The entry-wise maximum of two cursors.
fn merge(a: &Cursor, b: &Cursor) -> Cursor {
    let mut out: BTreeMap<NodeId, u64> = a.entries().collect();
    for (node, sequence) in b.entries() {
        let entry = out.entry(node).or_insert(0);
        *entry = (*entry).max(sequence);
    }
    out.into_iter().collect()
}

impl std::fmt::Debug for NetworkPoller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkPoller")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl NetworkPoller {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            routes: Arc::default(),
            pending: Vec::new(),
            flush_scheduled: false,
            seen: Arc::default(),
        }
    }

    fn schedule_flush(&mut self, ctx: &mut Context<Self>) {
        if !self.flush_scheduled {
            self.flush_scheduled = true;
            ctx.run_later(DEBOUNCE, |act, ctx| {
                act.flush_scheduled = false;
                let batch = std::mem::take(&mut act.pending);
                act.subscribe(batch, ctx);
            });
        }
    }

    /// Subscribe to `batch`, starting past what each topic's owner applied
    /// and what was already routed, and re-subscribe it when the stream
    /// ends.
    fn subscribe(&mut self, batch: Vec<Topic>, ctx: &mut Context<Self>) {
        if batch.is_empty() {
            return;
        }
        let store = self.shared.store();
        let topics: Vec<(Topic, Cursor)> = {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            batch
                .iter()
                .map(|t| {
                    // Identity topics have no stored cursor: only what was
                    // routed keeps them from replaying.
                    let stored = store.cursor(t).unwrap_or_default();
                    let cursor = match seen.get(t) {
                        Some(routed) => merge(&stored, routed),
                        None => stored,
                    };
                    // The stream starts here: a delivery's position counts
                    // from it.
                    seen.insert(t.clone(), cursor.clone());
                    (t.clone(), cursor)
                })
                .collect()
        };
        let routes = Arc::clone(&self.routes);
        let seen = Arc::clone(&self.seen);
        let shared = Arc::clone(&self.shared);
        let node = Arc::clone(&self.shared.node);
        let span = tracing::debug_span!("subscription", topics = topics.len());
        let fut = async move {
            match node.subscribe(topics).await {
                Ok(mut stream) => {
                    while let Some(item) = stream.next().await {
                        match item {
                            Ok(envelope) => route(&shared, &routes, &seen, &envelope),
                            Err(e) => {
                                tracing::warn!(error = %e, "subscription failed");
                                break;
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot subscribe"),
            }
        }
        .instrument(span)
        .into_actor(self)
        .map(move |(), _, ctx: &mut Context<Self>| {
            ctx.run_later(RESUBSCRIBE_DELAY, move |act, ctx| act.subscribe(batch, ctx));
        });
        ctx.spawn(fut);
    }
}

/// Wake the owner of `envelope`'s topic, unless it was routed before or
/// (on an identity topic) it is not a new, verified identity update.
fn route(
    shared: &Shared,
    routes: &Routes,
    seen: &Mutex<BTreeMap<Topic, Cursor>>,
    envelope: &kith_engine::delivery::Envelope,
) {
    let (fresh, after) = {
        let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
        let cursor = seen.entry(envelope.topic.clone()).or_default();
        let fresh = cursor.is_before(envelope);
        let after = cursor.clone();
        cursor.advance(envelope);
        (fresh, after)
    };
    let wanted = match &envelope.topic {
        Topic::Identity(inbox) if fresh => match shared.identity_push(inbox, &envelope.payload) {
            IdentityPush::New => true,
            IdentityPush::Known => false,
            IdentityPush::Revised => {
                tracing::info!(%inbox, "an identity update that revises a cached log; reading it again");
                shared.note_revised(*inbox);
                true
            }
            IdentityPush::Forged(reason) => {
                tracing::warn!(
                    topic = %envelope.topic,
                    sequence = envelope.originator_sequence_id,
                    %reason,
                    "ignoring an envelope on an identity topic"
                );
                false
            }
        },
        _ => fresh,
    };
    if wanted {
        let routes = routes.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((recipient, deliveries)) = routes.get(&envelope.topic) {
            if let Some(deliveries) = deliveries {
                deliveries.push(Delivered {
                    after,
                    envelope: envelope.clone(),
                });
            }
            recipient.do_send(Wake);
        }
    }
}

impl Actor for NetworkPoller {
    type Context = Context<Self>;
}

/// Follow `topic`, waking `recipient` on every envelope (and handing it
/// to `deliveries`, if given).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Watch {
    pub(crate) topic: Topic,
    pub(crate) recipient: Recipient<Wake>,
    pub(crate) deliveries: Option<Arc<Deliveries>>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("topic", &self.topic).finish()
    }
}

impl Handler<Watch> for NetworkPoller {
    type Result = ();

    fn handle(&mut self, msg: Watch, ctx: &mut Self::Context) {
        let new = self
            .routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(msg.topic.clone(), (msg.recipient, msg.deliveries))
            .is_none();
        if new {
            self.pending.push(msg.topic);
            self.schedule_flush(ctx);
        }
    }
}
