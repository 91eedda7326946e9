//! `Supervisor`: the root of a client's actors. It owns the stores (through
//! the shared context), starts the other actors, starts one `GroupActor` per
//! group under `actix::Supervisor` (which restarts it after a panic), and
//! turns Welcomes into new groups.

use std::{collections::HashMap, sync::Arc};

use actix::prelude::*;
use kith_engine::{
    delivery::{Cursor, Topic},
    group::{
        ConversationState, Group, GroupError, GroupEvent, WELCOME_PART_BYTES, WelcomePayload,
        assemble_welcome,
    },
    identity::{InboxId, KeyPackageInventory, KeyPackageInventoryStore as _},
};
use openmls::prelude::{MlsMessageBodyIn, MlsMessageIn, tls_codec::Deserialize as _};
use sha2::{Digest as _, Sha256};
use tracing::Instrument as _;

use crate::{
    Error,
    events::Event,
    group_actor::{GroupActor, GroupCore, Reload, Wake},
    installation_discovery::{InstallationDiscovery, WatchGroup},
    key_package_manager::{Consumed, KeyPackageManager},
    network_poller::{NetworkPoller, Watch},
    shared::{IdentityNeed, Shared, now_ms},
};

/// See the module docs.
pub(crate) struct Supervisor {
    shared: Arc<Shared>,
    /// Threads for group actors, so that their storage work never blocks
    /// the poller or the supervisor.
    arbiters: Vec<Arbiter>,
    groups: HashMap<Vec<u8>, Addr<GroupActor>>,
    poller: Option<Addr<NetworkPoller>>,
    pub(crate) key_packages: Option<Addr<KeyPackageManager>>,
    pub(crate) discovery: Option<Addr<InstallationDiscovery>>,
    /// A Welcome run is queued: further pushes fold into it.
    welcomes_queued: bool,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("groups", &self.groups.len())
            .finish_non_exhaustive()
    }
}

impl Supervisor {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        let threads = shared.config.group_threads.max(1);
        Self {
            arbiters: (0..threads).map(|_| Arbiter::new()).collect(),
            shared,
            groups: HashMap::new(),
            poller: None,
            key_packages: None,
            discovery: None,
            welcomes_queued: false,
        }
    }

    fn start_group(&mut self, group_id: Vec<u8>) -> Addr<GroupActor> {
        if let Some(addr) = self.groups.get(&group_id) {
            return addr.clone();
        }
        let index = group_id
            .iter()
            .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(*b as usize))
            % self.arbiters.len();
        let core = Arc::new(GroupCore::new(Arc::clone(&self.shared), group_id.clone()));
        let deliveries = Arc::clone(&core.deliveries);
        let addr = actix::Supervisor::start_in_arbiter(&self.arbiters[index].handle(), move |_| {
            GroupActor::new(core)
        });
        if let Some(poller) = &self.poller {
            poller.do_send(Watch {
                topic: Topic::Group(group_id.clone()),
                recipient: addr.clone().recipient(),
                deliveries: Some(deliveries),
            });
        }
        if let Some(discovery) = &self.discovery {
            discovery.do_send(WatchGroup(addr.clone()));
        }
        self.groups.insert(group_id, addr.clone());
        addr
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let poller = NetworkPoller::new(Arc::clone(&self.shared)).start();
        poller.do_send(Watch {
            topic: Topic::Welcome(self.shared.keys.id()),
            recipient: ctx.address().recipient(),
            deliveries: None,
        });
        self.poller = Some(poller.clone());
        self.key_packages = Some(KeyPackageManager::new(Arc::clone(&self.shared)).start());
        self.discovery = Some(
            InstallationDiscovery::new(Arc::clone(&self.shared), ctx.address(), poller).start(),
        );
        match self.shared.store().conversations() {
            Ok(conversations) => {
                for conversation in conversations {
                    if conversation.state == ConversationState::Active {
                        for group_id in conversation.group_ids {
                            self.start_group(group_id);
                        }
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot read the conversation list"),
        }
    }

    fn stopping(&mut self, _: &mut Self::Context) -> Running {
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
        Running::Stop
    }
}

/// The actor of a group, started if needed.
#[derive(Message, Debug)]
#[rtype(result = "Result<Addr<GroupActor>, Error>")]
pub(crate) struct GetGroup(pub(crate) Vec<u8>);

impl Handler<GetGroup> for Supervisor {
    type Result = Result<Addr<GroupActor>, Error>;

    fn handle(&mut self, msg: GetGroup, _: &mut Self::Context) -> Self::Result {
        if let Some(addr) = self.groups.get(&msg.0) {
            return Ok(addr.clone());
        }
        let known = self
            .shared
            .store()
            .conversations()?
            .iter()
            .any(|c| c.group_ids.contains(&msg.0));
        if !known {
            return Err(Error::UnknownConversation(hex::encode(&msg.0)));
        }
        Ok(self.start_group(msg.0))
    }
}

/// Every running group actor.
#[derive(Message, Debug)]
#[rtype(result = "Vec<(Vec<u8>, Addr<GroupActor>)>")]
pub(crate) struct Groups;

impl Handler<Groups> for Supervisor {
    type Result = MessageResult<Groups>;

    fn handle(&mut self, _: Groups, _: &mut Self::Context) -> Self::Result {
        MessageResult(
            self.groups
                .iter()
                .map(|(id, addr)| (id.clone(), addr.clone()))
                .collect(),
        )
    }
}

impl Handler<Wake> for Supervisor {
    type Result = ();

    fn handle(&mut self, _: Wake, ctx: &mut Self::Context) {
        if !self.welcomes_queued {
            self.welcomes_queued = true;
            ctx.notify(ProcessWelcomes);
        }
    }
}

/// Join the groups of new Welcomes; returns the ids of the joined groups.
#[derive(Message, Debug)]
#[rtype(result = "Result<Vec<Vec<u8>>, Error>")]
pub(crate) struct ProcessWelcomes;

/// Join one Welcome off the actor threads, fetching identity logs the
/// engine asks for. `Ok(None)`: already joined, or the Welcome is bad (it
/// is logged and skipped, never retried forever).
async fn join(shared: &Arc<Shared>, payload: Vec<u8>) -> Result<Option<Vec<u8>>, Error> {
    let mut fetches = shared.identity_fetches();
    for _ in 0..3 {
        let task_shared = Arc::clone(shared);
        let task_payload = payload.clone();
        let result = tokio::task::spawn_blocking(move || {
            let shared = &*task_shared;
            // A join may replace a group a running actor holds: no group
            // step runs meanwhile, and the actor reloads afterwards.
            let mut joins = shared
                .joins
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let storage = shared.storage();
            let step = storage.begin_step()?;
            note_last_resort_use(shared, &task_payload)?;
            let joined = Group::join(
                &shared.provider,
                storage,
                shared.me(),
                &shared.identities(),
                &task_payload,
                now_ms(),
            );
            match joined {
                Ok(group) => {
                    step.commit()?;
                    *joins += 1;
                    // What joining told the application (a rejoin after a
                    // fork says so) goes out with the join.
                    Ok(Ok(group.map(|mut g| {
                        let events: Vec<GroupEvent> =
                            std::iter::from_fn(|| g.poll_event()).collect();
                        (g.group_id().to_vec(), g.conversation_id(), events)
                    })))
                }
                Err(e) => Ok(Err(e)),
            }
        })
        .await
        .map_err(|e| Error::Storage(format!("joining: {e}")))?;
        match result {
            Err(e) => return Err(e),
            Ok(Ok(Some((group_id, conversation, events)))) => {
                let rejoined = events
                    .iter()
                    .any(|e| matches!(e, GroupEvent::Rejoined { .. }));
                if !rejoined {
                    shared.emit(Event::Joined {
                        conversation: conversation.clone(),
                    });
                }
                for event in events {
                    if let Some(event) = Event::from_group(&conversation, event) {
                        shared.emit(event);
                    }
                }
                return Ok(Some(group_id));
            }
            Ok(Ok(None)) => return Ok(None),
            Ok(Err(e)) => match (IdentityNeed::of(&e), e) {
                (Some(need), _) => fetches.fetch(need).await?,
                (None, e @ (GroupError::Store(_) | GroupError::Corrupt(_))) => {
                    return Err(e.into());
                }
                (None, GroupError::NotPermitted(reason)) => {
                    tracing::warn!(%reason, "refusing a Welcome");
                    shared.emit(Event::WelcomeRefused { reason });
                    return Ok(None);
                }
                (None, e) => {
                    tracing::warn!(error = %e, "skipping a Welcome that cannot be used");
                    return Ok(None);
                }
            },
        }
    }
    tracing::warn!("skipping a Welcome whose members' identity logs the node does not serve");
    Ok(None)
}

/// A Welcome whose GroupInfo was published apart (once for all its
/// joiners, on a `welcome-shared/` topic), made whole; any other payload
/// as it is (the join checks it). `Ok(None)`: the shared part is not on the
/// node, or does not match; the Welcome is skipped with a
/// [`Event::WelcomeRefused`]. The committer publishes the shared part
/// first, through the same node, so an honest node never serves the one
/// without the other: waiting would only let a forged reference hold up
/// the Welcomes behind it.
async fn whole_welcome(shared: &Shared, payload: Vec<u8>) -> Result<Option<Vec<u8>>, Error> {
    let Ok(decoded) = WelcomePayload::from_bytes(&payload) else {
        return Ok(Some(payload));
    };
    let Some(reference) = &decoded.shared else {
        return Ok(Some(payload));
    };
    let topic = reference.topic();
    let mut cursor = Cursor::new();
    // Only bodies that are one of the parts are kept: anyone may publish
    // on the topic.
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    let refused = |reason: String| {
        tracing::warn!(%topic, %reason, "skipping a split Welcome");
        shared.emit(Event::WelcomeRefused { reason });
        Ok(None)
    };
    // Each part fits a page, so an honest topic needs about one page a
    // part; a topic flooded by strangers is not read to its end.
    for _ in 0..reference.parts.len() + 8 {
        let page = shared.node.query(&topic, &cursor, 0).await?;
        for envelope in &page.envelopes {
            cursor.advance(envelope);
            let hash: [u8; 32] = Sha256::digest(&envelope.payload).into();
            if envelope.payload.len() <= WELCOME_PART_BYTES && reference.parts.contains(&hash) {
                bodies.push(envelope.payload.clone());
            }
        }
        match assemble_welcome(&decoded, bodies.iter().map(Vec::as_slice)) {
            Ok(Some(whole)) => return Ok(Some(whole.to_bytes())),
            Ok(None) if page.more && !page.envelopes.is_empty() => {}
            Ok(None) => return refused("its shared GroupInfo is not on the node".into()),
            Err(e) => return refused(e.to_string()),
        }
    }
    refused("the topic of its shared GroupInfo holds too much that is not it".into())
}

/// If the Welcome was made for our last-resort package, record its first
/// use so that the package is rotated (DESIGN.md section 4). Runs inside
/// the join's step.
fn note_last_resort_use(shared: &Shared, payload: &[u8]) -> Result<(), Error> {
    // A payload that does not decode is refused by the join itself.
    let Ok(payload) = WelcomePayload::from_bytes(payload) else {
        return Ok(());
    };
    let Ok(message) = MlsMessageIn::tls_deserialize_exact(payload.welcome.as_slice()) else {
        return Ok(());
    };
    let MlsMessageBodyIn::Welcome(welcome) = message.extract() else {
        return Ok(());
    };
    let storage = shared.storage();
    let used = |inventory: &mut KeyPackageInventory| {
        let Some(current) = inventory.last_resort.as_ref().map(|r| r.hash_ref.clone()) else {
            return false;
        };
        let used = welcome
            .secrets()
            .iter()
            .any(|s| s.new_member().as_slice() == current.as_slice());
        if used {
            inventory.note_last_resort_used(&current, now_ms());
        }
        used
    };
    // Either pool's last-resort package may be the one.
    let mut inventory = storage.load_inventory()?;
    if used(&mut inventory) {
        storage.save_inventory(&inventory)?;
        return Ok(());
    }
    let mut deniable = storage.load_deniable_inventory()?;
    if used(&mut deniable) {
        storage.save_deniable_inventory(&deniable)?;
    }
    Ok(())
}

impl Handler<ProcessWelcomes> for Supervisor {
    type Result = AtomicResponse<Self, Result<Vec<Vec<u8>>, Error>>;

    fn handle(&mut self, _: ProcessWelcomes, _: &mut Self::Context) -> Self::Result {
        self.welcomes_queued = false;
        let shared = Arc::clone(&self.shared);
        let fut = async move {
            let topic = Topic::Welcome(shared.keys.id());
            let mut joined = Vec::new();
            loop {
                let cursor = shared.store().cursor(&topic)?;
                let page = shared.node.query(&topic, &cursor, 0).await?;
                for envelope in &page.envelopes {
                    if let Some(payload) = whole_welcome(&shared, envelope.payload.clone()).await?
                        && let Some(group_id) = join(&shared, payload).await?
                    {
                        joined.push(group_id);
                    }
                    let mut cursor = shared.store().cursor(&topic)?;
                    cursor.advance(envelope);
                    shared.store().put_cursor(&topic, &cursor)?;
                }
                if !page.more || page.envelopes.is_empty() {
                    return Ok(joined);
                }
            }
        };
        let span = tracing::debug_span!("process_welcomes");
        AtomicResponse::new(Box::pin(actix::fut::wrap_future(fut.instrument(span)).map(
            |result: Result<Vec<Vec<u8>>, Error>, act: &mut Self, _| {
                let joined = result?;
                for group_id in &joined {
                    // Joined again after a fork: the running actor holds
                    // the forked state.
                    let rejoined = act.groups.contains_key(group_id);
                    let addr = act.start_group(group_id.clone());
                    if rejoined {
                        addr.do_send(Reload);
                    }
                }
                if !joined.is_empty()
                    && let Some(kpm) = &act.key_packages
                {
                    for _ in &joined {
                        kpm.do_send(Consumed);
                    }
                }
                Ok(joined)
            },
        )))
    }
}

/// Stop the group threads and hand them back, so that the caller can wait
/// for them (and the store handles they hold) to be gone.
#[derive(Message, Debug)]
#[rtype(result = "Vec<Arbiter>")]
pub(crate) struct Shutdown;

impl Handler<Shutdown> for Supervisor {
    type Result = MessageResult<Shutdown>;

    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) -> Self::Result {
        self.groups.clear();
        let arbiters = std::mem::take(&mut self.arbiters);
        for arbiter in &arbiters {
            arbiter.stop();
        }
        ctx.stop();
        MessageResult(arbiters)
    }
}

/// Start the actor of a group this client just created.
#[derive(Message, Debug)]
#[rtype(result = "Addr<GroupActor>")]
pub(crate) struct Adopt(pub(crate) Vec<u8>);

impl Handler<Adopt> for Supervisor {
    type Result = MessageResult<Adopt>;

    fn handle(&mut self, msg: Adopt, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.start_group(msg.0))
    }
}

/// Follow an identity topic (for this client's own inbox, so that its own
/// new installations are discovered too).
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub(crate) struct WatchIdentity(pub(crate) InboxId);

impl Handler<WatchIdentity> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: WatchIdentity, _: &mut Self::Context) {
        if let (Some(poller), Some(discovery)) = (&self.poller, &self.discovery) {
            poller.do_send(Watch {
                topic: Topic::Identity(msg.0),
                recipient: discovery.clone().recipient(),
                deliveries: None,
            });
        }
    }
}
