//! Announcing envelopes that other processes stored, for a node whose
//! store is shared with them (several `kith-node`s over one PostgreSQL).
//!
//! A node announces what it stores on its `live` channel, and every
//! subscription skips what its cursor already covers. Over a shared store
//! other processes store envelopes too, so this process also has to
//! announce theirs, and in a way that never skips one: a subscription
//! whose cursor moved past an envelope never sees it. So, per originator,
//! the node remembers the last sequence id it announced and only ever
//! announces the next one. Its own batch is announced directly when it
//! continues from there; otherwise, and whenever the store's listener
//! wakes it ([`NodeStore::watch_external_appends`]), it reads what follows
//! from the store ([`NodeStore::originated_envelopes`]), in sequence order,
//! under `publish_order`.

use std::sync::{
    Arc, Mutex, PoisonError,
    atomic::{AtomicBool, Ordering},
};

use kith_engine::delivery::{Cursor, NodeStore, SealedEnvelope};
use tokio::sync::Notify;

use super::{NodeLogic, store_error};

/// Envelopes read per page when catching up on other processes' writes.
const FEED_PAGE: usize = 1_000;

/// The state of announcing a shared store's envelopes. See the module docs.
pub(super) struct SharedFeed {
    /// Per originator, the last sequence id announced.
    announced: Mutex<Cursor>,
    /// Woken by the store's listener.
    wake: Arc<Notify>,
    /// Whether the task that waits for wake-ups runs.
    started: AtomicBool,
}

impl SharedFeed {
    /// The feed of `store`, if other processes write it; registers the
    /// wake-up with the store. Starts from what the store holds now: what
    /// was stored before this process started is for catch-up reads, not
    /// for announcing.
    pub(super) fn watch<S: NodeStore>(store: &S) -> Option<Self> {
        let wake = Arc::new(Notify::new());
        let notify = Arc::clone(&wake);
        if !store.watch_external_appends(Box::new(move || notify.notify_one())) {
            return None;
        }
        let announced = store.heads().unwrap_or_else(|e| {
            tracing::warn!(
                error = %e,
                "cannot read the store's heads; announcing other processes' envelopes from the start"
            );
            Cursor::new()
        });
        Some(Self {
            announced: Mutex::new(announced),
            wake,
            started: AtomicBool::new(false),
        })
    }

    fn announced(&self) -> std::sync::MutexGuard<'_, Cursor> {
        self.announced
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl<S: NodeStore + 'static> NodeLogic<S> {
    /// Tell subscriptions of newly stored envelopes, in sequence order per
    /// originator and without a gap. Called with `publish_order` held.
    pub(super) async fn announce(&self, stored: &[SealedEnvelope]) {
        let Some(feed) = &self.shared else {
            for sealed in stored {
                // No subscriber is not an error.
                let _ = self.live.send(Arc::new(sealed.clone()));
            }
            return;
        };
        let continues = {
            let mut announced = feed.announced();
            let mut all = true;
            for sealed in stored {
                let envelope = &sealed.envelope;
                let last = announced.get(envelope.originator_node_id);
                if envelope.originator_sequence_id <= last {
                    continue;
                }
                if envelope.originator_sequence_id != last + 1 {
                    all = false;
                    break;
                }
                announced.advance(envelope);
                let _ = self.live.send(Arc::new(sealed.clone()));
            }
            all
        };
        if !continues {
            // Another process stored envelopes in between: read them (and
            // the rest of this batch) in order.
            self.announce_from_store().await;
        }
    }

    /// Announce everything the store holds beyond what was announced, per
    /// originator in sequence order. Called with `publish_order` held.
    async fn announce_from_store(&self) {
        let Some(feed) = &self.shared else { return };
        let heads = match self
            .blocking(|store| store.heads().map_err(store_error::<S>))
            .await
        {
            Ok(heads) => heads,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the store's heads; announcing later");
                return;
            }
        };
        for (originator, head) in heads.entries() {
            loop {
                let after = feed.announced().get(originator);
                if after >= head {
                    break;
                }
                let page = self
                    .blocking(move |store| {
                        store
                            .originated_envelopes(originator, after, FEED_PAGE)
                            .map_err(store_error::<S>)
                    })
                    .await;
                let page = match page {
                    Ok(page) if !page.is_empty() => page,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read other processes' envelopes; announcing later");
                        return;
                    }
                };
                let mut announced = feed.announced();
                for sealed in page {
                    if sealed.envelope.originator_sequence_id != announced.get(originator) + 1 {
                        break;
                    }
                    announced.advance(&sealed.envelope);
                    let _ = self.live.send(Arc::new(sealed));
                }
            }
        }
    }

    /// Start waiting for the store's wake-ups, once, on the current tokio
    /// runtime (subscriptions are what need them, so they start it).
    pub(super) fn start_feed(self: &Arc<Self>) {
        let Some(feed) = &self.shared else { return };
        if feed.started.swap(true, Ordering::SeqCst) {
            return;
        }
        let wake = Arc::clone(&feed.wake);
        let node = Arc::downgrade(self);
        let mut closing = self.closing.subscribe();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = wake.notified() => {}
                    _ = closing.wait_for(|closing| *closing) => return,
                }
                let Some(node) = node.upgrade() else { return };
                let _order = node.publish_order.lock().await;
                node.announce_from_store().await;
            }
        });
    }
}
