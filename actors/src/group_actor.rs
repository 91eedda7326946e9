//! `GroupActor`: one per conversation group. It holds the group's engine
//! state, feeds it the group topic in canonical order, and publishes what
//! it outputs.
//!
//! Every handler that touches the group runs as an `AtomicResponse`: the
//! mailbox waits until it is done, so envelopes are applied strictly in
//! order even though fetching them awaits the node. The engine work itself
//! is synchronous and runs on the group threads (never the thread of the
//! `NetworkPoller` or the `Supervisor`), one storage step per input.
//!
//! Envelopes come from the subscription ([`Deliveries`]): those that
//! continue from the stored cursor are applied as they are, the ones that
//! arrived together in one storage step (one fsync) when they all apply;
//! the node is read only to fill a gap, on the timer, and on an explicit
//! sync. This trusts the node's subscription to be complete and in order
//! per originator, as `node.proto` promises: a node that leaves an
//! envelope out of it withholds that envelope, which it could do to a
//! query as well. After publishing, a group waits for the subscription to bring its
//! own envelopes back rather than reading them. With buffered durability,
//! the application hears of a change, and the node sees output, only after
//! the flush that puts it on disk.
//!
//! A panic inside a handler is caught, the step it was in is discarded, and
//! the actor stops; `actix::Supervisor` restarts it, and the restarted actor
//! reloads the group from storage.

use std::{
    collections::HashMap,
    panic::AssertUnwindSafe,
    str::FromStr as _,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use actix::prelude::*;
use futures::FutureExt as _;
use kith_engine::{
    delivery::{Envelope, Topic},
    group::{
        ConversationId, DmVerification, Group, GroupError, GroupEvent, IntentKind, Outgoing,
        StoredMessage, gating::Admission,
    },
    identity::{InboxId, InstallationId},
};
use tracing::Instrument as _;

use crate::{
    Error,
    events::{Event, Metadata},
    network_poller::{Delivered, Deliveries},
    poison::{self, Blame, Tries},
    shared::{IdentityNeed, Shared, now_ms},
};

/// The most rounds of publish-and-sync one command waits for before it
/// reports its change as still pending.
const MAX_ROUNDS: usize = 8;

/// What encrypting a message adds to its body and content type, at most:
/// the message's own fields, MLS framing, signature, tag and padding.
const MESSAGE_OVERHEAD: usize = 4 * 1024;

/// How long a group waits for the subscription to bring back what it
/// published before it reads the node instead.
const ECHO_WAIT: Duration = Duration::from_secs(2);

/// The most envelopes published in one request (fewer if the node's
/// batch limit is lower).
const PUBLISH_CHUNK: usize = 500;

/// Split `batch` into publish requests of at most [`PUBLISH_CHUNK`] and the
/// node's batch limit of envelopes, each fitting the node's message limit.
fn publish_chunks(
    batch: Vec<(Topic, Vec<u8>)>,
    limits: &kith_transport::node::NodeLimits,
) -> Vec<Vec<(Topic, Vec<u8>)>> {
    let count = PUBLISH_CHUNK.min(limits.max_batch_envelopes).max(1);
    let budget = limits
        .max_message_bytes
        .saturating_sub(kith_transport::node::MESSAGE_HEADROOM);
    let mut chunks = Vec::new();
    let (mut chunk, mut bytes) = (Vec::new(), 0);
    for (topic, payload) in batch {
        let size =
            kith_transport::node::envelope_message_bytes(topic.to_string().len(), payload.len());
        if !chunk.is_empty() && (chunk.len() == count || bytes + size > budget) {
            chunks.push(std::mem::take(&mut chunk));
            bytes = 0;
        }
        bytes += size;
        chunk.push((topic, payload));
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    chunks
}

/// A member as [`GroupInfo`] reports it.
pub(crate) type MemberList = Vec<(InboxId, Vec<InstallationId>)>;

/// A snapshot of a group for the API.
#[derive(Debug, Clone)]
pub(crate) struct GroupInfo {
    pub(crate) conversation: ConversationId,
    pub(crate) metadata: Metadata,
    pub(crate) members: MemberList,
    pub(crate) active: bool,
    pub(crate) epoch: u64,
    pub(crate) epoch_authenticator: Vec<u8>,
    pub(crate) verification: Option<DmVerification>,
}

/// How an intent ended: done, or failed with a reason and whether the
/// policy denied it.
type Outcome = Result<(), (String, bool)>;

enum Failure {
    /// The engine needs these identity logs first.
    Need(IdentityNeed),
    /// The engine refused the input for a reason that is the same on every
    /// try ([`Blame::Permanent`]).
    Refused(Error),
    /// Anything else: the store, the node, a missing group.
    Fatal(Error),
}

/// Why one envelope could not be applied.
enum Attempt {
    /// Retry later; never skip it for this (see [`poison`]).
    Transient(Error),
    /// It fails the same way on every try.
    Permanent {
        /// What to report for this sync.
        error: Error,
        /// Why, for the skip event.
        reason: String,
    },
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Fatal(e)
    }
}

/// The group's state, shared between the actor and the futures its
/// handlers run. The mutex is never held across an `.await`.
pub(crate) struct GroupCore {
    shared: Arc<Shared>,
    group_id: Vec<u8>,
    group: Mutex<Option<Group>>,
    /// The count of [`Shared::joins`] when `group` was loaded: older than
    /// the count means a join may have replaced what is stored.
    loaded_at_join: AtomicU64,
    outcomes: Mutex<HashMap<u64, Outcome>>,
    wake_pending: AtomicBool,
    pub(crate) restarts: AtomicU64,
    /// Forked members that asked to be re-added: (installation, its leaf's
    /// encryption key when it asked).
    rejoins: Mutex<Vec<(InstallationId, Vec<u8>)>>,
    /// The envelope syncs keep failing on, and how often.
    tries: Mutex<Tries>,
    /// When to try the node again after it could not be reached.
    retry: Mutex<Retry>,
    /// The group topic's envelopes the subscription handed over, not
    /// applied yet; a change waiting for its commit wakes on their
    /// arrival (the actor reads no `Wake` meanwhile).
    pub(crate) deliveries: Arc<Deliveries>,
    /// The next catch-up reads the topic from the node even if the
    /// deliveries leave no gap: set by the timer and by an explicit sync,
    /// in case the subscription is not delivering.
    read_due: AtomicBool,
}

/// The first wait before trying an unreachable node again; it doubles up
/// to [`RETRY_MAX`] and resets once the node answers.
const RETRY_FIRST: Duration = Duration::from_millis(500);
/// The longest wait between tries of an unreachable node.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The backoff of a group that could not reach the node. What it had to
/// publish stays in the outbox (stored, shown unpublished) and goes out on
/// the first sync that reaches a node.
#[derive(Debug, Default)]
struct Retry {
    /// The current wait; `None` while the node answers.
    wait: Option<Duration>,
    /// A failure since the last retry was scheduled.
    due: bool,
}

impl std::fmt::Debug for GroupCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCore")
            .field("group_id", &hex::encode(&self.group_id))
            .finish_non_exhaustive()
    }
}

impl GroupCore {
    pub(crate) fn new(shared: Arc<Shared>, group_id: Vec<u8>) -> Self {
        Self {
            shared,
            group_id,
            group: Mutex::new(None),
            loaded_at_join: AtomicU64::new(0),
            outcomes: Mutex::new(HashMap::new()),
            wake_pending: AtomicBool::new(false),
            restarts: AtomicU64::new(0),
            rejoins: Mutex::new(Vec::new()),
            tries: Mutex::new(Tries::default()),
            retry: Mutex::new(Retry::default()),
            deliveries: Arc::default(),
            // What was stored while the client was away comes with the
            // subscription's catch-up: no read at start (a bot in 1,000
            // groups made 1,000 queries for what its subscription brought).
            read_due: AtomicBool::new(false),
        }
    }

    /// Whether the last exchange with the node went through: a failure
    /// makes a retry due (see [`Retry`]), a success resets the backoff.
    fn reached_node(&self, reached: bool) {
        let mut retry = self.retry.lock().unwrap_or_else(PoisonError::into_inner);
        if reached {
            *retry = Retry::default();
        } else {
            let wait = retry
                .wait
                .map_or(RETRY_FIRST, |w| w.saturating_mul(2).min(RETRY_MAX));
            *retry = Retry {
                wait: Some(wait),
                due: true,
            };
        }
    }

    /// How long to wait before the next try, once per failure.
    fn retry_due(&self) -> Option<Duration> {
        let mut retry = self.retry.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut retry.due)
            .then_some(retry.wait)
            .flatten()
    }

    fn topic(&self) -> Topic {
        Topic::Group(self.group_id.clone())
    }

    /// Forget the in-memory state; the next use reloads it from storage.
    fn reset(&self) {
        *self.group.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Run `f` on the group in one storage step. On failure the step is
    /// discarded and the in-memory group dropped, so the next call reloads
    /// exactly what is stored.
    fn with_group<T>(
        &self,
        f: impl FnOnce(&mut Group, &Shared) -> Result<T, GroupError>,
    ) -> Result<T, Failure> {
        let shared = &*self.shared;
        // Held until the step is committed: no join replaces the stored
        // group meanwhile.
        let joins = shared.joins.read().unwrap_or_else(PoisonError::into_inner);
        let mut slot = self.group.lock().unwrap_or_else(PoisonError::into_inner);
        if self.loaded_at_join.load(Ordering::SeqCst) != *joins {
            *slot = None;
        }
        if slot.is_none() {
            self.loaded_at_join.store(*joins, Ordering::SeqCst);
            let loaded = Group::load(&shared.provider, shared.storage(), &self.group_id)
                .map_err(|e| Failure::Fatal(e.into()))?
                .map(|mut group| {
                    group.set_config(shared.group_config);
                    group
                });
            *slot = Some(loaded.ok_or_else(|| {
                Failure::Fatal(Error::UnknownConversation(hex::encode(&self.group_id)))
            })?);
        }
        let Some(group) = slot.as_mut() else {
            return Err(Failure::Fatal(Error::Storage("group vanished".into())));
        };
        let mut need = None;
        let mut refused = false;
        let result = shared.step(|| match f(group, shared) {
            Err(e) => {
                need = IdentityNeed::of(&e);
                refused = need.is_none() && poison::blame(&e) == Blame::Permanent;
                Err(e)
            }
            other => other,
        });
        match result {
            Ok(value) => {
                let conversation = group.conversation_id();
                let events: Vec<GroupEvent> = std::iter::from_fn(|| group.poll_event()).collect();
                // What the application hears of is on disk first (with
                // buffered durability, one flush covers a whole batch).
                if !events.is_empty()
                    && let Err(e) = shared.flush_before_output()
                {
                    *slot = None;
                    return Err(Failure::Fatal(e));
                }
                for event in events {
                    self.observe(&conversation, event);
                }
                Ok(value)
            }
            Err(e) => {
                *slot = None;
                match need {
                    Some(need) => Err(Failure::Need(need)),
                    None if refused => Err(Failure::Refused(e)),
                    None => Err(Failure::Fatal(e)),
                }
            }
        }
    }

    fn observe(&self, conversation: &ConversationId, event: GroupEvent) {
        match &event {
            GroupEvent::IntentDone { id } => {
                self.outcomes
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(*id, Ok(()));
            }
            GroupEvent::IntentFailed { id, reason, denied } => {
                self.outcomes
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(*id, Err((reason.clone(), *denied)));
            }
            GroupEvent::EnvelopeSkipped { reason } => {
                tracing::debug!(group = %hex::encode(&self.group_id), %reason, "envelope skipped");
            }
            GroupEvent::CommitRejected { reason } => {
                tracing::warn!(group = %hex::encode(&self.group_id), %reason, "commit rejected");
            }
            GroupEvent::RolledBack {
                to_epoch,
                replayed,
                stats,
            } => {
                tracing::info!(
                    group = %hex::encode(&self.group_id),
                    to_epoch,
                    replayed,
                    rollbacks = stats.rollbacks,
                    envelopes_replayed = stats.replayed,
                    max_snapshot_age_ms = stats.max_snapshot_age_ms,
                    "rolled back and replayed"
                );
            }
            GroupEvent::Settled { stats } => {
                tracing::debug!(
                    group = %hex::encode(&self.group_id),
                    rollbacks = stats.rollbacks,
                    envelopes_replayed = stats.replayed,
                    max_snapshot_age_ms = stats.max_snapshot_age_ms,
                    dropped_settled = stats.dropped_settled,
                    "epochs settled"
                );
            }
            GroupEvent::Forked { epoch, reason } => {
                tracing::warn!(group = %hex::encode(&self.group_id), epoch, %reason, "on a fork; asking to be re-added");
            }
            GroupEvent::RejoinRequested {
                installation,
                stale_leaf,
                ..
            } => {
                self.rejoins
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((*installation, stale_leaf.clone()));
            }
            _ => {}
        }
        if let Some(event) = Event::from_group(conversation, event) {
            self.shared.emit(event);
        }
    }

    /// [`GroupCore::with_group`], fetching identity logs the engine asks
    /// for and retrying.
    async fn apply<T>(
        &self,
        mut f: impl FnMut(&mut Group, &Shared) -> Result<T, GroupError>,
    ) -> Result<T, Error> {
        let mut fetches = self.shared.identity_fetches();
        for _ in 0..poison::IDENTITY_FETCHES {
            match self.with_group(&mut f) {
                Ok(value) => return Ok(value),
                Err(Failure::Fatal(e) | Failure::Refused(e)) => return Err(e),
                Err(Failure::Need(need)) => fetches.fetch(need).await?,
            }
        }
        Err(Error::Network(
            "the node's identity logs do not cover what the group refers to".into(),
        ))
    }

    /// Apply what the subscription delivered, then read the group topic
    /// from the stored cursor for anything else: what an explicit sync
    /// does, and the timer's safety net.
    pub(crate) async fn sync(&self) -> Result<(), Error> {
        self.apply_delivered().await?;
        self.read_node().await
    }

    /// Apply what the subscription delivered; read the node only to fill
    /// a gap (or when a read is due). Each envelope is read from the node
    /// once.
    pub(crate) async fn catch_up(&self) -> Result<(), Error> {
        let continuous = self.apply_delivered().await?;
        if !continuous || self.read_due.swap(false, Ordering::SeqCst) {
            self.read_node().await?;
        }
        Ok(())
    }

    /// A read is due on the next catch-up.
    pub(crate) fn read_soon(&self) {
        self.read_due.store(true, Ordering::SeqCst);
    }

    /// Apply the delivered envelopes that continue from the stored cursor,
    /// all in one storage step when they all apply (one fsync), else one
    /// step each. `false` if a delivery did not continue from the cursor:
    /// something was missed, for the caller to read from the node.
    async fn apply_delivered(&self) -> Result<bool, Error> {
        let delivered = self.deliveries.take();
        if delivered.is_empty() {
            return Ok(true);
        }
        let mut cursor = self.shared.store().cursor(&self.topic())?;
        let mut run = Vec::with_capacity(delivered.len());
        let mut continuous = true;
        for Delivered { after, envelope } in delivered {
            if !cursor.is_before(&envelope) {
                continue;
            }
            let node = envelope.originator_node_id;
            if after.get(node) > cursor.get(node) {
                continuous = false;
                break;
            }
            cursor.advance(&envelope);
            run.push(envelope);
        }
        if run.len() > 1 {
            let together = self.with_group(|group, shared| {
                let identities = shared.identities();
                for envelope in &run {
                    group.handle_envelope(
                        &shared.provider,
                        shared.storage(),
                        &identities,
                        envelope,
                        now_ms(),
                    )?;
                }
                Ok(())
            });
            if together.is_ok() {
                self.tries_mut().clear();
                return Ok(continuous);
            }
            // Nothing of the run was kept: one step each, with the usual
            // identity fetches, retries and skips.
        }
        for envelope in &run {
            if let Err(e) = self.receive(envelope).await {
                // The rest of the run left the queue: read it from the
                // node on the next catch-up.
                self.read_soon();
                return Err(e);
            }
        }
        Ok(continuous)
    }

    /// Read the group topic from the stored cursor and apply every
    /// envelope, one step each. A read stops at the first envelope that
    /// fails; one that fails for good is skipped after a few reads
    /// ([`poison`]).
    async fn read_node(&self) -> Result<(), Error> {
        let topic = self.topic();
        loop {
            let cursor = self.shared.store().cursor(&topic)?;
            let page = self.shared.node.query(&topic, &cursor, 0).await?;
            for envelope in &page.envelopes {
                self.receive(envelope).await?;
            }
            if !page.more || page.envelopes.is_empty() {
                return Ok(());
            }
        }
    }

    /// Wait until the stored cursor covers `published` (the subscription
    /// brings them back, with whatever came before them), applying
    /// deliveries as they come; read the node if they do not come within
    /// [`ECHO_WAIT`].
    async fn await_published(&self, published: &[Envelope]) -> Result<(), Error> {
        let topic = self.topic();
        let deadline = tokio::time::Instant::now() + ECHO_WAIT;
        loop {
            // Registered before the check, so that a delivery between the
            // two is not missed.
            let arrived = self.deliveries.arrived.notified();
            if !self.apply_delivered().await? {
                break;
            }
            let cursor = self.shared.store().cursor(&topic)?;
            if !published
                .iter()
                .any(|e| e.topic == topic && cursor.is_before(e))
            {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                break;
            }
        }
        self.read_node().await
    }

    /// Apply one envelope of the group topic, or count a failure on it and,
    /// once it has failed for good often enough, skip it.
    async fn receive(&self, envelope: &Envelope) -> Result<(), Error> {
        let (error, reason) = match self.try_envelope(envelope).await {
            Ok(()) => {
                self.tries_mut().clear();
                return Ok(());
            }
            Err(Attempt::Transient(error)) => return Err(error),
            Err(Attempt::Permanent { error, reason }) => (error, reason),
        };
        let tries = self.tries_mut().failed(envelope);
        let settle_window_ms = self.shared.group_config.rewind.settle_window_ms;
        if !poison::give_up(tries, envelope, settle_window_ms, now_ms()) {
            tracing::warn!(
                group = %hex::encode(&self.group_id),
                sequence = envelope.originator_sequence_id,
                tries,
                %reason,
                "an envelope failed; it is tried again on the next sync"
            );
            return Err(error);
        }
        let reason = format!("{reason} (failed on {tries} syncs)");
        tracing::warn!(
            group = %hex::encode(&self.group_id),
            sequence = envelope.originator_sequence_id,
            %reason,
            "skipping an envelope that fails for good"
        );
        self.apply(|group, shared| group.skip_envelope(shared.storage(), envelope, reason.clone()))
            .await?;
        self.tries_mut().clear();
        Ok(())
    }

    /// One try at `envelope`: apply it, fetching the identity logs the
    /// engine asks for; say whether a failure can go away.
    async fn try_envelope(&self, envelope: &Envelope) -> Result<(), Attempt> {
        let mut needed = Vec::new();
        let mut fetches = self.shared.identity_fetches();
        for _ in 0..poison::IDENTITY_FETCHES {
            let applied = self.with_group(|group, shared| {
                let identities = shared.identities();
                group.handle_envelope(
                    &shared.provider,
                    shared.storage(),
                    &identities,
                    envelope,
                    now_ms(),
                )
            });
            match applied {
                Ok(()) => return Ok(()),
                Err(Failure::Fatal(error)) => return Err(Attempt::Transient(error)),
                Err(Failure::Refused(error)) => {
                    let reason = error.to_string();
                    return Err(Attempt::Permanent { error, reason });
                }
                Err(Failure::Need(need)) => {
                    needed = need.inboxes().to_vec();
                    // The node down or lying is not the envelope's fault.
                    fetches.fetch(need).await.map_err(Attempt::Transient)?;
                }
            }
        }
        let inboxes: Vec<String> = needed.iter().map(ToString::to_string).collect();
        Err(Attempt::Permanent {
            error: Error::Network(
                "the node's identity logs do not cover what the group refers to".into(),
            ),
            reason: format!(
                "it refers to identity log updates of {} that the node does not serve",
                inboxes.join(", ")
            ),
        })
    }

    fn tries_mut(&self) -> std::sync::MutexGuard<'_, Tries> {
        self.tries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Turn waiting intents into commits and publish everything queued,
    /// syncing after each publish so our commits are seen back (and merged)
    /// or lose to another member's.
    async fn flush(&self) -> Result<(), Error> {
        for _ in 0..MAX_ROUNDS {
            let pending = self
                .apply(|group, shared| {
                    let identities = shared.identities();
                    group.advance(
                        &shared.provider,
                        shared.storage(),
                        shared.me(),
                        &identities,
                        now_ms(),
                    )?;
                    Ok(group.pending_outbound().cloned().collect::<Vec<_>>())
                })
                .await?;
            if pending.is_empty() {
                return Ok(());
            }
            let mut batch = Vec::with_capacity(pending.len());
            for item in &pending {
                for topic in &item.topics {
                    let topic = Topic::from_str(topic)
                        .map_err(|e| Error::Storage(format!("outbox topic: {e}")))?;
                    batch.push((topic, item.payload.clone()));
                }
            }
            // A Welcome to many joiners is many envelopes: publish them in
            // requests that fit the node's batch and message limits (a
            // chunk that fails is re-published whole, and joiners ignore a
            // Welcome they already used).
            let limits = self.shared.node_limits().await?;
            // What is published was made by steps that must be on disk
            // first (the ratchet a ciphertext used must not roll back).
            self.shared.flush_before_output()?;
            let mut published = Vec::new();
            for chunk in publish_chunks(batch, &limits) {
                published.extend(self.shared.node.publish(chunk).await?);
            }
            self.apply(|group, shared| {
                for item in &pending {
                    group.ack_outbound(shared.storage(), item)?;
                }
                Ok(())
            })
            .await?;
            self.await_published(&published).await?;
        }
        Ok(())
    }

    async fn drive(&self) -> Result<(), Error> {
        self.catch_up().await?;
        self.rejoin_deferred().await?;
        self.answer_rejoins().await?;
        self.flush().await
    }

    /// Once this installation needs a rejoin (removed, or on a fork), join
    /// again from a Welcome the engine kept while it was still a member:
    /// several members may answer one rejoin request, and the Welcome of the
    /// re-add that counts can arrive before the commit that makes it needed.
    async fn rejoin_deferred(&self) -> Result<(), Error> {
        // Loaded by the sync just before; no step needed to look.
        let needs = self
            .group
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(Group::needs_rejoin);
        if !needs {
            return Ok(());
        }
        let mut fetches = self.shared.identity_fetches();
        for _ in 0..3 {
            let shared = &*self.shared;
            let mut need = None;
            // A join, like the supervisor's: ordered against other steps.
            let result = {
                let mut joins = shared.joins.write().unwrap_or_else(PoisonError::into_inner);
                let result = shared.step(|| {
                    Group::rejoin_deferred(
                        &shared.provider,
                        shared.storage(),
                        shared.me(),
                        &shared.identities(),
                        &self.group_id,
                        now_ms(),
                    )
                    .inspect_err(|e| need = IdentityNeed::of(e))
                });
                if let Ok(Some(mut group)) = result {
                    *joins += 1;
                    group.set_config(shared.group_config);
                    let conversation = group.conversation_id();
                    while let Some(event) = group.poll_event() {
                        self.observe(&conversation, event);
                    }
                    *self.group.lock().unwrap_or_else(PoisonError::into_inner) = Some(group);
                    self.loaded_at_join.store(*joins, Ordering::SeqCst);
                    return Ok(());
                }
                result
            };
            match (result, need) {
                (Ok(_), _) => return Ok(()),
                (Err(_), Some(need)) => fetches.fetch(need).await?,
                (Err(e), None) => return Err(e),
            }
        }
        Err(Error::Network(
            "the node's identity logs do not cover the members of a kept Welcome".into(),
        ))
    }

    /// Re-add the forked members that asked: fetch a fresh key package of
    /// each installation and queue the re-add (DESIGN.md section 7).
    async fn answer_rejoins(&self) -> Result<(), Error> {
        let requests =
            std::mem::take(&mut *self.rejoins.lock().unwrap_or_else(PoisonError::into_inner));
        if requests.is_empty() {
            return Ok(());
        }
        let fetched = self
            .shared
            .fetch_key_packages(requests.iter().map(|(i, _)| *i).collect())
            .await?;
        for (installation, stale_leaf) in requests {
            let Some(key_package) = fetched
                .iter()
                .find(|f| f.installation == installation)
                .and_then(|f| f.key_package.as_ref())
                .map(|k| k.bytes.clone())
            else {
                tracing::warn!(%installation, "a forked member has no key package to be re-added with");
                continue;
            };
            let kind = IntentKind::Readd {
                installation,
                key_package,
                stale_leaf,
            };
            self.apply(|group, shared| group.queue_intent(shared.storage(), kind.clone()))
                .await?;
        }
        Ok(())
    }

    /// Queue `kind` and drive it to its outcome.
    async fn change(&self, kind: IntentKind) -> Result<(), Error> {
        let synced = offline(self.catch_up().await)?;
        let id = self
            .apply(|group, shared| group.queue_intent(shared.storage(), kind.clone()))
            .await?;
        if let Err(reason) = synced {
            self.reached_node(false);
            return Err(Error::Pending(format!(
                "no node could be reached ({reason}); the change is stored and goes out \
                 when one answers"
            )));
        }
        // With a settle window, a change is done only once its commit
        // settled (its Welcomes go out then): wait that long, not just a
        // few rounds, before calling it pending.
        let window = Duration::from_millis(self.shared.group_config.rewind.settle_window_ms);
        let settled_by = std::time::Instant::now() + window.saturating_mul(3);
        let mut rounds = 0;
        loop {
            rounds += 1;
            if rounds > MAX_ROUNDS && std::time::Instant::now() >= settled_by {
                break;
            }
            if let Err(reason) = offline(self.flush().await)? {
                self.reached_node(false);
                return Err(Error::Pending(format!(
                    "no node could be reached ({reason}); the change is stored and goes \
                     out when one answers"
                )));
            }
            let outcome = self
                .outcomes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&id);
            match outcome {
                Some(Ok(())) => return Ok(()),
                Some(Err((reason, true))) => return Err(Error::NotPermitted(reason)),
                Some(Err((reason, false))) => return Err(Error::InvalidInput(reason)),
                None if rounds >= MAX_ROUNDS && !window.is_zero() => {
                    // Until something arrives (a rival commit, our own
                    // coming back), or a while has passed all the same.
                    let arrived = self.deliveries.arrived.notified();
                    match tokio::time::timeout(window / 4, arrived).await {
                        Ok(()) => self.catch_up().await?,
                        Err(_) => self.sync().await?,
                    }
                }
                None => self.catch_up().await?,
            }
        }
        Err(Error::Pending(
            "other members' commits kept winning; it is retried on the next sync".into(),
        ))
    }

    async fn add_members(
        &self,
        inboxes: Vec<InboxId>,
        refresh: bool,
        admissions: Vec<Admission>,
    ) -> Result<(), Error> {
        if refresh {
            self.shared
                .refresh_identities(inboxes.iter().copied())
                .await?;
        }
        let deniable = self.apply(|group, _| Ok(group.is_deniable())).await?;
        let mut intents = self.shared.member_adds(&inboxes, deniable).await?;
        crate::gating::attach(&mut intents, &admissions);
        for kind in intents {
            self.change(kind).await?;
        }
        Ok(())
    }

    /// Bring the group's installations in line with the identity logs.
    /// With `refresh`, fetch the members' logs first (one request).
    pub(crate) async fn reconcile(&self, refresh: bool) -> Result<(), Error> {
        self.catch_up().await?;
        let members: Vec<InboxId> = self
            .apply(|group, _| Ok(group.members().into_keys().collect()))
            .await?;
        if refresh {
            self.shared.refresh_identities(members).await?;
        }
        let plan = self
            .apply(|group, shared| Ok(group.reconcile_plan(&shared.identities())))
            .await?;
        let mut missing = 0;
        if !plan.is_empty() {
            let fetched = self
                .shared
                .fetch_key_packages(plan.add.iter().map(|(_, x)| *x).collect())
                .await?;
            let key_packages: Vec<Vec<u8>> = fetched
                .into_iter()
                .filter_map(|f| f.key_package.map(|k| k.bytes))
                .collect();
            // CheckedClient allows at most one package per installation
            // asked for; saturate all the same, a count must not panic.
            missing = plan.add.len().saturating_sub(key_packages.len());
            self.change(IntentKind::Reconcile {
                key_packages,
                remove: plan.remove,
                sequences: plan.sequences,
            })
            .await?;
        }
        self.apply(|group, shared| group.mark_reconciled(shared.storage(), now_ms()))
            .await?;
        if missing > 0 {
            // A new installation publishes its identity update before its
            // key packages (the node only takes packages from registered
            // installations), so a push can arrive too early.
            return Err(Error::Pending(format!(
                "{missing} new installation(s) have no key packages on the node yet"
            )));
        }
        Ok(())
    }

    async fn send(&self, msg: Send) -> Result<[u8; 32], Error> {
        let Send {
            content_type,
            body,
            fallback,
        } = msg;
        // A body that cannot fit in one envelope would be queued and then
        // refused by the node on every try: say so now, queuing nothing.
        // Offline, the node's limits may be unknown: the defaults apply.
        let limits = self.shared.node_limits().await.unwrap_or_default();
        let room = limits.max_envelope_bytes.saturating_sub(MESSAGE_OVERHEAD);
        let fallback_len = fallback.as_ref().map_or(0, String::len);
        if body.len() + content_type.len() + fallback_len > room {
            return Err(Error::InvalidInput(format!(
                "a message body of {} bytes does not fit: the node takes envelopes of up to {} \
                 bytes, which leaves {room} bytes for the body and its content type",
                body.len(),
                limits.max_envelope_bytes
            )));
        }
        let stale = {
            let last = self
                .apply(|group, _| Ok(group.last_reconciled_ms()))
                .await?;
            let threshold = u64::try_from(self.shared.config.discovery_before_send.as_millis())
                .unwrap_or(u64::MAX);
            now_ms().saturating_sub(last) > threshold
        };
        if stale {
            // A failed or incomplete check must not stop the message; it
            // is retried.
            if let Err(e) = self.reconcile(true).await {
                tracing::warn!(error = %e, "installation check before send failed");
            }
        }
        // Written while no node answers, the message is stored all the
        // same (shown unpublished) and goes out with the next sync that
        // reaches one: the outbox publishes it once.
        let mut reached = offline(self.catch_up().await)?.is_ok();
        let id = self
            .apply(|group, shared| {
                group.send_message(
                    &shared.provider,
                    shared.storage(),
                    shared.me(),
                    Outgoing {
                        content_type: &content_type,
                        body: &body,
                        fallback: fallback.as_deref(),
                    },
                    now_ms(),
                )
            })
            .await?;
        if reached {
            reached = offline(self.flush().await)?.is_ok();
        }
        self.reached_node(reached);
        Ok(id)
    }

    fn info(&self) -> Result<GroupInfo, Error> {
        self.with_group(|group, _| {
            Ok(GroupInfo {
                conversation: group.conversation_id(),
                metadata: Metadata::from(group.metadata()),
                members: group
                    .members()
                    .into_iter()
                    .map(|(i, set)| (i, set.into_iter().collect()))
                    .collect(),
                active: group.is_active(),
                epoch: group.epoch(),
                epoch_authenticator: group.epoch_authenticator(),
                verification: group.verification(),
            })
        })
        .map_err(|f| match f {
            Failure::Fatal(e) | Failure::Refused(e) => e,
            Failure::Need(_) => Error::Storage("unexpected identity request".into()),
        })
    }
}

/// The actor around a [`GroupCore`].
#[derive(Debug)]
pub(crate) struct GroupActor {
    core: Arc<GroupCore>,
}

impl GroupActor {
    pub(crate) fn new(core: Arc<GroupCore>) -> Self {
        Self { core }
    }
}

impl Actor for GroupActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let interval = self.core.shared.config.sync_interval;
        ctx.run_interval(interval, |act, ctx| {
            act.core.read_soon();
            ctx.notify(Wake);
        });
        // Publish anything a crash left in the outbox (what arrived while
        // the client was away comes by subscription).
        ctx.notify(Wake);
    }
}

impl actix::Supervised for GroupActor {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.core.restarts.fetch_add(1, Ordering::SeqCst);
        self.core.reset();
        tracing::warn!(group = %hex::encode(&self.core.group_id), "group actor restarted from storage");
    }
}

/// Split a result of talking to the node: `Ok(Err(reason))` when no node
/// could be reached (or it refused), for the caller to carry on offline;
/// any other error stays one.
fn offline(result: Result<(), Error>) -> Result<Result<(), String>, Error> {
    match result {
        Ok(()) => Ok(Ok(())),
        Err(Error::Network(reason)) => Ok(Err(reason)),
        Err(e) => Err(e),
    }
}

/// Run `fut` atomically on the actor; a panic inside it stops the actor
/// (to be restarted from storage) and is reported as [`Error::Restarted`].
fn guarded<T: 'static>(
    span: tracing::Span,
    fut: impl Future<Output = Result<T, Error>> + 'static,
) -> AtomicResponse<GroupActor, Result<T, Error>> {
    AtomicResponse::new(Box::pin(
        actix::fut::wrap_future::<_, GroupActor>(
            AssertUnwindSafe(fut.instrument(span)).catch_unwind(),
        )
        .map(
            |result, act: &mut GroupActor, ctx: &mut Context<GroupActor>| match result {
                Ok(value) => {
                    if let Some(wait) = act.core.retry_due() {
                        ctx.notify_later(Wake, wait);
                    }
                    value
                }
                Err(panic) => {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "panic".into());
                    tracing::error!(%what, "group actor panicked");
                    ctx.stop();
                    Err(Error::Restarted(what))
                }
            },
        ),
    ))
}

/// A push for the group topic arrived (or the timer fired): sync soon.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Wake;

impl Handler<Wake> for GroupActor {
    type Result = ();

    fn handle(&mut self, _: Wake, ctx: &mut Self::Context) {
        if !self.core.wake_pending.swap(true, Ordering::SeqCst) {
            ctx.notify(Sync { read_node: false });
        }
    }
}

/// The group was joined again (after a fork): drop the loaded state and
/// sync from the store.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct Reload;

impl Handler<Reload> for GroupActor {
    type Result = ();

    fn handle(&mut self, _: Reload, ctx: &mut Self::Context) {
        *self
            .core
            .group
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        ctx.notify(Wake);
    }
}

/// Apply what arrived and publish what is queued.
#[derive(Message, Debug)]
#[rtype(result = "Result<(), Error>")]
pub(crate) struct Sync {
    /// Read the group topic from the node too, even if the subscription
    /// left no gap (an explicit sync).
    pub(crate) read_node: bool,
}

impl Handler<Sync> for GroupActor {
    type Result = AtomicResponse<Self, Result<(), Error>>;

    fn handle(&mut self, msg: Sync, _: &mut Self::Context) -> Self::Result {
        let core = Arc::clone(&self.core);
        if msg.read_node {
            core.read_soon();
        }
        let span = tracing::debug_span!("group_sync", group = %hex::encode(&core.group_id));
        guarded(span, async move {
            core.wake_pending.store(false, Ordering::SeqCst);
            let driven = core.drive().await;
            core.reached_node(!matches!(driven, Err(Error::Network(_))));
            driven
        })
    }
}

/// Send an application message; returns its id.
#[derive(Message, Debug)]
#[rtype(result = "Result<[u8; 32], Error>")]
pub(crate) struct Send {
    pub(crate) content_type: String,
    pub(crate) body: Vec<u8>,
    pub(crate) fallback: Option<String>,
}

impl Handler<Send> for GroupActor {
    type Result = AtomicResponse<Self, Result<[u8; 32], Error>>;

    fn handle(&mut self, msg: Send, _: &mut Self::Context) -> Self::Result {
        let core = Arc::clone(&self.core);
        let span = tracing::debug_span!("group_send", group = %hex::encode(&core.group_id));
        guarded(span, async move { core.send(msg).await })
    }
}

/// Make a change to the group.
#[derive(Message, Debug)]
#[rtype(result = "Result<(), Error>")]
pub(crate) enum Change {
    /// Add inboxes (all their installations). Without `refresh`, the
    /// identity cache is trusted to be current (the caller just fetched).
    AddMembers {
        /// The inboxes.
        inboxes: Vec<InboxId>,
        /// Fetch their identity logs first.
        refresh: bool,
        /// In a gated group, the verifier's admissions of the inboxes,
        /// obtained before this message (so that a slow verifier never
        /// holds the group's actor).
        admissions: Vec<Admission>,
    },
    /// Bring installations in line with the identity logs.
    Reconcile {
        /// Fetch the members' logs first.
        refresh: bool,
    },
    /// Any other intent.
    Intent(IntentKind),
}

impl Change {
    fn name(&self) -> &'static str {
        match self {
            Change::AddMembers { .. } => "add members",
            Change::Reconcile { .. } => "reconcile installations",
            Change::Intent(IntentKind::AddMembers { .. }) => "add members",
            Change::Intent(IntentKind::AddDeniable { .. }) => "add to a deniable DM",
            Change::Intent(IntentKind::RemoveMembers { .. }) => "remove members",
            Change::Intent(IntentKind::UpdateAttributes { .. }) => "update attributes",
            Change::Intent(IntentKind::UpdateAdmins { .. }) => "update admins",
            Change::Intent(IntentKind::SetPolicies { .. }) => "set policies",
            Change::Intent(IntentKind::SetGating { .. }) => "set gating rules",
            Change::Intent(IntentKind::Leave) => "leave",
            Change::Intent(_) => "other",
        }
    }
}

impl Handler<Change> for GroupActor {
    type Result = AtomicResponse<Self, Result<(), Error>>;

    fn handle(&mut self, msg: Change, _: &mut Self::Context) -> Self::Result {
        let core = Arc::clone(&self.core);
        let span = tracing::info_span!(
            "group_change",
            group = %hex::encode(&core.group_id),
            change = msg.name()
        );
        guarded(span, async move {
            match msg {
                Change::AddMembers {
                    inboxes,
                    refresh,
                    admissions,
                } => core.add_members(inboxes, refresh, admissions).await,
                Change::Reconcile { refresh } => core.reconcile(refresh).await,
                Change::Intent(kind) => core.change(kind).await,
            }
        })
    }
}

/// A snapshot of the group.
#[derive(Message, Debug)]
#[rtype(result = "Result<GroupInfo, Error>")]
pub(crate) struct Info;

impl Handler<Info> for GroupActor {
    type Result = Result<GroupInfo, Error>;

    fn handle(&mut self, _: Info, _: &mut Self::Context) -> Self::Result {
        self.core.info()
    }
}

/// Messages stored for the group's conversation (read here so that the
/// read sees a consistent state between steps).
#[derive(Message, Debug)]
#[rtype(result = "Result<Vec<StoredMessage>, Error>")]
pub(crate) struct Messages(pub(crate) ConversationId);

impl Handler<Messages> for GroupActor {
    type Result = Result<Vec<StoredMessage>, Error>;

    fn handle(&mut self, msg: Messages, _: &mut Self::Context) -> Self::Result {
        Ok(self.core.shared.store().messages(&msg.0)?)
    }
}

/// Fault injection for tests of supervision: panic inside a storage step.
#[derive(Message, Debug)]
#[rtype(result = "Result<(), Error>")]
pub(crate) struct InjectPanic;

impl Handler<InjectPanic> for GroupActor {
    type Result = AtomicResponse<Self, Result<(), Error>>;

    fn handle(&mut self, _: InjectPanic, _: &mut Self::Context) -> Self::Result {
        let core = Arc::clone(&self.core);
        let span = tracing::info_span!("group_inject_panic");
        guarded(span, async move {
            core.apply(|group, shared| {
                // Write something first, so the test can see that the
                // step's writes were discarded.
                group.mark_reconciled(shared.storage(), 1)?;
                panic!("injected panic in a group step");
            })
            .await
        })
    }
}

/// How often the actor was restarted.
#[derive(Message, Debug)]
#[rtype(result = "u64")]
pub(crate) struct Restarts;

impl Handler<Restarts> for GroupActor {
    type Result = u64;

    fn handle(&mut self, _: Restarts, _: &mut Self::Context) -> u64 {
        self.core.restarts.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use kith_transport::node::NodeLimits;

    use super::*;

    fn envelopes(sizes: &[usize]) -> Vec<(Topic, Vec<u8>)> {
        sizes
            .iter()
            .map(|size| (Topic::Group(vec![1]), vec![0; *size]))
            .collect()
    }

    #[test]
    fn publishes_are_cut_by_count_and_by_bytes() {
        let limits = NodeLimits {
            max_batch_envelopes: 3,
            max_message_bytes: kith_transport::node::MESSAGE_HEADROOM + 10_000,
            ..NodeLimits::default()
        };
        let sizes = |chunks: Vec<Vec<(Topic, Vec<u8>)>>| -> Vec<Vec<usize>> {
            chunks
                .iter()
                .map(|c| c.iter().map(|(_, p)| p.len()).collect())
                .collect()
        };
        // By count: the node's batch limit of 3.
        assert_eq!(
            sizes(publish_chunks(envelopes(&[1; 7]), &limits)),
            [vec![1; 3], vec![1; 3], vec![1]]
        );
        // By bytes: 4,000 + 4,000 fit in 10,000, a third does not.
        assert_eq!(
            sizes(publish_chunks(envelopes(&[4_000; 5]), &limits)),
            [vec![4_000; 2], vec![4_000; 2], vec![4_000]]
        );
        // One envelope over the budget still goes, alone (the node says
        // whether it takes it).
        assert_eq!(
            sizes(publish_chunks(envelopes(&[20_000, 1]), &limits)),
            [vec![20_000], vec![1]]
        );
        assert!(publish_chunks(Vec::new(), &limits).is_empty());
    }
}
