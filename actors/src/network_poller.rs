//! `NetworkPoller`: keeps one subscription to the node covering every topic
//! the client follows, and routes each envelope's arrival to the actor that
//! owns its topic as a [`Wake`].
//!
//! A wake only says "there is something new": the owner then reads its
//! topic from its own durable cursor, in canonical order. So a lost push,
//! a duplicate, or a re-subscription that replays old envelopes costs a
//! query, never correctness.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use actix::prelude::*;
use futures::StreamExt as _;
use kith_engine::delivery::{Cursor, NodeId, Topic};
use tracing::Instrument as _;

use crate::{group_actor::Wake, shared::Shared};

/// How long to wait before re-subscribing after the stream ended.
const RESUBSCRIBE_DELAY: Duration = Duration::from_secs(1);
/// Watches arriving together are folded into one re-subscription.
const DEBOUNCE: Duration = Duration::from_millis(5);

/// See the module docs.
pub(crate) struct NetworkPoller {
    shared: Arc<Shared>,
    watched: BTreeMap<Topic, Recipient<Wake>>,
    subscription: Option<SpawnHandle>,
    resubscribe_scheduled: bool,
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
            .field("topics", &self.watched.len())
            .finish_non_exhaustive()
    }
}

impl NetworkPoller {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            watched: BTreeMap::new(),
            subscription: None,
            resubscribe_scheduled: false,
            seen: Arc::default(),
        }
    }

    fn schedule(&mut self, ctx: &mut Context<Self>, delay: Duration) {
        if !self.resubscribe_scheduled {
            self.resubscribe_scheduled = true;
            ctx.run_later(delay, |act, ctx| {
                act.resubscribe_scheduled = false;
                act.resubscribe(ctx);
            });
        }
    }

    fn resubscribe(&mut self, ctx: &mut Context<Self>) {
        if let Some(handle) = self.subscription.take() {
            ctx.cancel_future(handle);
        }
        if self.watched.is_empty() {
            return;
        }
        let store = self.shared.store();
        let topics: Vec<(Topic, Cursor)> = {
            let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            self.watched
                .keys()
                .map(|t| {
                    // Start past both what the owner applied (its stored
                    // cursor) and what was already routed to it, so that a
                    // re-subscription does not replay old envelopes.
                    // Identity topics have only the latter.
                    let stored = store.cursor(t).unwrap_or_default();
                    let cursor = match seen.get(t) {
                        Some(routed) => merge(&stored, routed),
                        None => stored,
                    };
                    (t.clone(), cursor)
                })
                .collect()
        };
        let routes = self.watched.clone();
        let seen = Arc::clone(&self.seen);
        let node = Arc::clone(&self.shared.node);
        let span = tracing::debug_span!("subscription", topics = topics.len());
        let fut = async move {
            match node.subscribe(topics).await {
                Ok(mut stream) => {
                    while let Some(item) = stream.next().await {
                        match item {
                            Ok(envelope) => {
                                let fresh = {
                                    let mut seen =
                                        seen.lock().unwrap_or_else(PoisonError::into_inner);
                                    let cursor = seen.entry(envelope.topic.clone()).or_default();
                                    let fresh = cursor.is_before(&envelope);
                                    cursor.advance(&envelope);
                                    fresh
                                };
                                if fresh && let Some(recipient) = routes.get(&envelope.topic) {
                                    recipient.do_send(Wake);
                                }
                            }
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
        .map(|(), act, ctx| act.schedule(ctx, RESUBSCRIBE_DELAY));
        self.subscription = Some(ctx.spawn(fut));
    }
}

impl Actor for NetworkPoller {
    type Context = Context<Self>;
}

/// Follow `topic`, waking `recipient` on every envelope.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Watch {
    pub(crate) topic: Topic,
    pub(crate) recipient: Recipient<Wake>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("topic", &self.topic).finish()
    }
}

impl Handler<Watch> for NetworkPoller {
    type Result = ();

    fn handle(&mut self, msg: Watch, ctx: &mut Self::Context) {
        if self.watched.insert(msg.topic, msg.recipient).is_none() {
            self.schedule(ctx, DEBOUNCE);
        }
    }
}
