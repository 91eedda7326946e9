//! A lying node: what a client takes from the node, and the node's own
//! topics (issue 18, findings 4 to 6).
//!
//! Each test puts a [`Liar`] between one honest client and the real
//! `LocalNode` (over a sled node store; every client on its own sled
//! store). The liar forwards every call and tampers with the answers a test
//! asks it to. After the attack, the client has refused or ignored it, and
//! the conversation goes on once the node answers honestly again.
//!
//! What a node can always do, and no test here expects the client to
//! notice, is withhold: leave out envelopes, identity updates or key
//! packages. These tests check that everything else is refused.

mod common;

use std::{
    collections::{BTreeSet, VecDeque},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    task::Poll,
    time::Duration,
};

use common::{Net, group_with, joined, texts, wallet};
use futures::{Stream, StreamExt as _};
use kith::{
    Client, ClientConfig, Conversation, Error, Event, GroupOptions, InboxId, InstallationId,
    LocalWallet, Node,
};
use kith_engine::{
    delivery::{Cursor, Envelope, Topic},
    identity::IdentityUpdate,
};
use kith_storage::SledNodeStore;
use kith_transport::{
    client::{ClientError, DeliveryClient, EnvelopeStream, LocalNode, NodeInfo, QueryPage},
    node::{
        DeniableKeyPackageFetch, DeniableKeyPackageUpload, FetchedKeyPackage, KeyPackageFetch,
        KeyPackageUpload, NodeError,
    },
};

/// What the liar does to the answers passing through it.
#[derive(Default)]
struct Tamper {
    /// Every page of a group topic has its last envelope's sequence id
    /// raised to `u64::MAX`.
    max_sequence: bool,
    /// Every page of a group topic gets this envelope (of another topic)
    /// first.
    foreign_envelope: Option<Envelope>,
    /// Every key-package answer (ordinary or deniable) comes twice.
    double_key_packages: bool,
    /// Ordinary key-package fetches are answered with this instead.
    substitute_key_package: Option<FetchedKeyPackage>,
    /// Deniable key packages are handed out as this installation's.
    relabel_deniable: Option<InstallationId>,
    /// The answer for this inbox is left out of identity answers.
    withhold_entry: Option<InboxId>,
    /// Identity answers are filed under each other's inboxes.
    swap_entries: bool,
    /// This inbox's identity log is served only up to this sequence.
    truncate_log: Option<(InboxId, u64)>,
    /// Identity queries fail as if the node were down.
    identities_down: bool,
    /// Group-topic envelopes are left out of subscriptions (pushes lost),
    /// so that the client reads them by query.
    silent_pushes: bool,
}

/// A subscription the liar can slip envelopes into.
struct Injector {
    topics: BTreeSet<Topic>,
    queue: Arc<Mutex<VecDeque<Envelope>>>,
    waker: Arc<futures::task::AtomicWaker>,
}

/// A node that forwards to the real one and lies where told to.
struct Liar {
    inner: LocalNode<SledNodeStore>,
    tamper: Arc<Mutex<Tamper>>,
    /// Every ordinary key package it handed out.
    captured: Mutex<Vec<FetchedKeyPackage>>,
    /// Identity queries answered.
    identity_calls: AtomicUsize,
    /// The subscriptions made through it.
    injectors: Mutex<Vec<Injector>>,
    /// Injected envelopes the subscriber took and moved on from (it asked
    /// for the next item after each).
    consumed: Arc<AtomicUsize>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Liar {
    fn new(net: &Net) -> Arc<Self> {
        Arc::new(Self {
            inner: net.node.clone(),
            tamper: Arc::default(),
            captured: Mutex::new(Vec::new()),
            identity_calls: AtomicUsize::new(0),
            injectors: Mutex::new(Vec::new()),
            consumed: Arc::new(AtomicUsize::new(0)),
        })
    }

    fn set(&self, change: impl FnOnce(&mut Tamper)) {
        change(&mut lock(&self.tamper));
    }

    fn honest(&self) {
        *lock(&self.tamper) = Tamper::default();
    }

    fn subscribed(&self, topic: &Topic) -> bool {
        lock(&self.injectors)
            .iter()
            .any(|i| i.topics.contains(topic))
    }

    /// Slip `envelope` into the live subscriptions that include `into`.
    fn inject(&self, into: &Topic, envelope: Envelope) {
        let injectors = lock(&self.injectors);
        let mut found = false;
        for injector in injectors.iter().filter(|i| i.topics.contains(into)) {
            lock(&injector.queue).push_back(envelope.clone());
            injector.waker.wake();
            found = true;
        }
        assert!(found, "no subscription includes {into}");
    }
}

#[async_trait::async_trait]
impl DeliveryClient for Liar {
    async fn publish(&self, batch: Vec<(Topic, Vec<u8>)>) -> Result<Vec<Envelope>, ClientError> {
        self.inner.publish(batch).await
    }

    async fn query(
        &self,
        topic: &Topic,
        cursor: &Cursor,
        limit: u32,
    ) -> Result<QueryPage, ClientError> {
        let mut page = self.inner.query(topic, cursor, limit).await?;
        if matches!(topic, Topic::Group(_)) {
            let tamper = lock(&self.tamper);
            if tamper.max_sequence
                && let Some(last) = page.envelopes.last_mut()
            {
                last.originator_sequence_id = u64::MAX;
                page.next_cursor.advance(last);
            }
            if let Some(foreign) = &tamper.foreign_envelope {
                page.envelopes.insert(0, foreign.clone());
            }
        }
        Ok(page)
    }

    async fn subscribe(&self, topics: Vec<(Topic, Cursor)>) -> Result<EnvelopeStream, ClientError> {
        let names: BTreeSet<Topic> = topics.iter().map(|(t, _)| t.clone()).collect();
        let mut inner = self.inner.subscribe(topics).await?;
        let queue = Arc::new(Mutex::new(VecDeque::new()));
        let waker = Arc::new(futures::task::AtomicWaker::new());
        lock(&self.injectors).push(Injector {
            topics: names,
            queue: Arc::clone(&queue),
            waker: Arc::clone(&waker),
        });
        let consumed = Arc::clone(&self.consumed);
        let tamper = Arc::clone(&self.tamper);
        let mut gave_injected = false;
        Ok(Box::pin(futures::stream::poll_fn(move |cx| {
            // Asked for the next item: the one injected before was taken.
            if std::mem::take(&mut gave_injected) {
                consumed.fetch_add(1, Ordering::SeqCst);
            }
            waker.register(cx.waker());
            if let Some(envelope) = lock(&queue).pop_front() {
                gave_injected = true;
                return Poll::Ready(Some(Ok(envelope)));
            }
            loop {
                match inner.poll_next_unpin(cx) {
                    Poll::Ready(Some(Ok(envelope)))
                        if lock(&tamper).silent_pushes
                            && matches!(envelope.topic, Topic::Group(_)) => {}
                    other => return other,
                }
            }
        })))
    }

    async fn publish_identity_update(&self, update: IdentityUpdate) -> Result<u64, ClientError> {
        self.inner.publish_identity_update(update).await
    }

    async fn identity_updates(
        &self,
        requests: Vec<(InboxId, u64)>,
    ) -> Result<Vec<Vec<IdentityUpdate>>, ClientError> {
        self.identity_calls.fetch_add(1, Ordering::SeqCst);
        if lock(&self.tamper).identities_down {
            return Err(ClientError::Unavailable("connection refused".into()));
        }
        let mut answers = self.inner.identity_updates(requests.clone()).await?;
        let tamper = lock(&self.tamper);
        if let Some((inbox, up_to)) = tamper.truncate_log {
            for ((asked, _), updates) in requests.iter().zip(answers.iter_mut()) {
                if *asked == inbox {
                    updates.retain(|u| u.unsigned.sequence <= up_to);
                }
            }
        }
        if let Some(inbox) = tamper.withhold_entry
            && let Some(at) = requests.iter().position(|(i, _)| *i == inbox)
        {
            answers.remove(at);
        }
        if tamper.swap_entries {
            answers.reverse();
        }
        Ok(answers)
    }

    async fn upload_key_packages(&self, upload: KeyPackageUpload) -> Result<usize, ClientError> {
        self.inner.upload_key_packages(upload).await
    }

    async fn fetch_key_packages(
        &self,
        fetch: KeyPackageFetch,
    ) -> Result<Vec<FetchedKeyPackage>, ClientError> {
        let substitute = lock(&self.tamper).substitute_key_package.clone();
        if let Some(substitute) = substitute {
            return Ok(vec![substitute]);
        }
        let mut answer = self.inner.fetch_key_packages(fetch).await?;
        lock(&self.captured).extend(answer.iter().cloned());
        if lock(&self.tamper).double_key_packages {
            answer.extend(answer.clone());
        }
        Ok(answer)
    }

    async fn upload_deniable_key_packages(
        &self,
        upload: DeniableKeyPackageUpload,
    ) -> Result<usize, ClientError> {
        self.inner.upload_deniable_key_packages(upload).await
    }

    async fn fetch_deniable_key_packages(
        &self,
        fetch: DeniableKeyPackageFetch,
    ) -> Result<Vec<FetchedKeyPackage>, ClientError> {
        let mut answer = self.inner.fetch_deniable_key_packages(fetch).await?;
        let tamper = lock(&self.tamper);
        if tamper.double_key_packages {
            answer.extend(answer.clone());
        }
        if let Some(installation) = tamper.relabel_deniable {
            for fetched in &mut answer {
                fetched.installation = installation;
            }
        }
        Ok(answer)
    }

    async fn node_info(&self) -> Result<NodeInfo, ClientError> {
        self.inner.node_info().await
    }
}

/// A client for `wallet` (store `name`) that reaches the node through
/// `liar`, registered.
async fn client_via(net: &Net, liar: &Arc<Liar>, name: &str, wallet: &LocalWallet) -> Client {
    let node: Arc<dyn DeliveryClient> = Arc::clone(liar) as Arc<dyn DeliveryClient>;
    let client = Client::builder()
        .wallet(wallet.clone())
        .data_dir(net.path(name))
        .node(Node::Client(node))
        .config(ClientConfig {
            // Tests sync explicitly; keep background timers out of the way.
            sync_interval: Duration::from_secs(3600),
            discovery_retry: Duration::from_millis(200),
            ..ClientConfig::default()
        })
        .build()
        .await
        .expect("client");
    client.register().await.expect("register");
    client
}

/// A registered client on the honest node that does not run discovery on
/// pushes: an installation of a member inbox that must not make the
/// installation changes a test expects the client under attack to make
/// (any member may make them).
async fn quiet_client(net: &Net, name: &str, wallet: &LocalWallet) -> Client {
    let client = Client::builder()
        .wallet(wallet.clone())
        .data_dir(net.path(name))
        .node(net.node.clone())
        .config(ClientConfig {
            sync_interval: Duration::from_secs(3600),
            discovery_on_push: false,
            ..ClientConfig::default()
        })
        .build()
        .await
        .expect("client");
    client.register().await.expect("register");
    client
}

/// Every event `events` yields within `wait`.
async fn events_within(
    events: &mut (impl Stream<Item = Event> + Unpin),
    wait: Duration,
) -> Vec<Event> {
    let mut seen = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(wait, events.next()).await {
        seen.push(event);
    }
    seen
}

/// The installations of `inbox` in `conversation`.
async fn installations_of(conversation: &Conversation, inbox: InboxId) -> BTreeSet<[u8; 32]> {
    conversation
        .members()
        .await
        .expect("members")
        .into_iter()
        .filter(|m| m.inbox == inbox)
        .flat_map(|m| m.installations.into_iter().map(|i| i.0))
        .collect()
}

fn network_error(result: Result<(), Error>, what: &str) -> String {
    match result {
        Err(Error::Network(message)) => message,
        other => panic!("{what}: expected a refusal of the node's answer, got {other:?}"),
    }
}

/// An `originator_sequence_id` of `u64::MAX` in a query answer would move
/// the member's cursor past everything the node stores later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_id_of_u64_max_is_refused_and_later_messages_still_arrive() {
    let net = Net::new();
    let (aw, bw) = (wallet(), wallet());
    let alice = net.client("alice", &aw).await;
    let liar = Liar::new(&net);
    let bob = client_via(&net, &liar, "bob", &bw).await;
    let (group, views) = group_with(&alice, &[&bob], GroupOptions::default()).await;
    let bob_group = &views[0];

    liar.set(|t| {
        t.max_sequence = true;
        t.silent_pushes = true;
    });
    group.send_text("one").await.expect("send");
    let message = network_error(bob_group.sync().await, "a page with sequence u64::MAX");
    assert!(message.contains("sequence"), "{message}");

    // Honest pages again (pushes still withheld, so that Bob reads them).
    liar.set(|t| t.max_sequence = false);
    group.send_text("two").await.expect("send");
    assert_eq!(texts(bob_group).await, ["one", "two"]);
    liar.honest();
    bob_group.send_text("three").await.expect("send");
    assert_eq!(texts(&group).await, ["one", "two", "three"]);
}

/// The same lie on a subscription: the poller's routing cursor must not
/// jump, or pushes stop waking the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_envelope_with_sequence_u64_max_does_not_silence_pushes() {
    let net = Net::new();
    let (aw, bw) = (wallet(), wallet());
    let alice = net.client("alice", &aw).await;
    let liar = Liar::new(&net);
    let bob = client_via(&net, &liar, "bob", &bw).await;
    let (group, views) = group_with(&alice, &[&bob], GroupOptions::default()).await;
    let bob_group = &views[0];
    let topic = Topic::Group(group.id().0.clone());
    for _ in 0..100 {
        if liar.subscribed(&topic) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    group.send_text("one").await.expect("send");
    assert_eq!(texts(bob_group).await, ["one"]);
    let last = net
        .node
        .query(&topic, &Cursor::new(), 0)
        .await
        .expect("query")
        .envelopes
        .pop()
        .expect("an envelope");

    let mut events = bob.stream_events();
    liar.inject(
        &topic,
        Envelope {
            originator_sequence_id: u64::MAX,
            ..last
        },
    );
    group.send_text("two").await.expect("send");
    // No sync by hand: only a push can bring it.
    let arrived = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(event) = events.next().await {
            if let Event::Message(m) = event
                && m.text() == Some("two")
            {
                return;
            }
        }
    })
    .await;
    assert!(
        arrived.is_ok(),
        "after a pushed envelope with sequence u64::MAX, pushes no longer wake the group"
    );
}

/// An envelope of another topic in a query answer is refused at the node
/// boundary, before it reaches the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_answer_with_an_envelope_of_another_topic_is_refused() {
    let net = Net::new();
    let (aw, bw) = (wallet(), wallet());
    let alice = net.client("alice", &aw).await;
    let liar = Liar::new(&net);
    let bob = client_via(&net, &liar, "bob", &bw).await;
    let (group, views) = group_with(&alice, &[&bob], GroupOptions::default()).await;
    let bob_group = &views[0];
    let epoch = bob_group.epoch_state().await.expect("epoch");

    // A real envelope of Alice's own Welcome topic, handed out as part of
    // the group topic.
    let foreign = net
        .node
        .publish(vec![(
            Topic::Welcome(alice.installation_id()),
            vec![1, 2, 3],
        )])
        .await
        .expect("publish")
        .remove(0);
    liar.set(|t| t.foreign_envelope = Some(foreign));
    group.send_text("one").await.expect("send");
    let message = network_error(bob_group.sync().await, "a page with another topic");
    assert!(message.contains("topic"), "{message}");
    assert_eq!(bob_group.epoch_state().await.expect("epoch"), epoch);

    liar.honest();
    assert_eq!(texts(bob_group).await, ["one"]);
    bob_group.send_text("two").await.expect("send");
    assert_eq!(texts(&group).await, ["one", "two"]);
}

/// More key packages than installations asked for: the reconcile
/// subtraction underflowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_key_packages_than_requested_are_refused() {
    let net = Net::new();
    let (aw, bw, cw) = (wallet(), wallet(), wallet());
    let liar = Liar::new(&net);
    let alice = client_via(&net, &liar, "alice", &aw).await;
    let b1 = quiet_client(&net, "b1", &bw).await;
    let _carol = net.client("carol", &cw).await;
    let (group, _) = group_with(&alice, &[&b1], GroupOptions::default()).await;
    // Armed before Bob's second installation registers: its push makes
    // Alice's discovery reconcile in the background too.
    liar.set(|t| t.double_key_packages = true);
    let b2 = quiet_client(&net, "b2", &bw).await;
    let message = network_error(
        group.reconcile_installations().await,
        "twice as many key packages as installations",
    );
    assert!(message.contains("key package"), "{message}");
    assert_eq!(
        installations_of(&group, bw.inbox_id()).await,
        BTreeSet::from([b1.installation_id().0])
    );
    // The deniable pool too: a DM with Carol is not made from doubled
    // packages.
    let before = alice.conversations().await.expect("list").len();
    let refused = alice.find_or_create_dm(cw.inbox_id()).await;
    assert!(
        matches!(&refused, Err(Error::Network(m)) if m.contains("key package")),
        "{:?}",
        refused.map(|c| c.id().clone())
    );
    assert_eq!(alice.conversations().await.expect("list").len(), before);

    liar.honest();
    group.reconcile_installations().await.expect("reconcile");
    assert_eq!(
        installations_of(&group, bw.inbox_id()).await,
        BTreeSet::from([b1.installation_id().0, b2.installation_id().0])
    );
    let b2_group = joined(&b2, group.id()).await;
    group.send_text("welcome, b2").await.expect("send");
    assert_eq!(texts(&b2_group).await, ["welcome, b2"]);
}

/// A key package for an installation that was not asked for: refused at
/// fetch time with a clear error, and nothing is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_package_of_an_installation_not_asked_for_is_refused_at_fetch() {
    let net = Net::new();
    let (aw, bw, cw) = (wallet(), wallet(), wallet());
    let liar = Liar::new(&net);
    let alice = client_via(&net, &liar, "alice", &aw).await;
    let bob = net.client("bob", &bw).await;
    let carol = net.client("carol", &cw).await;
    // Alice fetches one of Carol's packages, which the liar keeps.
    let (_with_carol, _) = group_with(&alice, &[&carol], GroupOptions::default()).await;
    let carols = lock(&liar.captured)
        .iter()
        .find(|f| f.installation == carol.installation_id())
        .cloned()
        .expect("Carol's key package");
    let before = alice.conversations().await.expect("list").len();

    // Carol's package, named as hers, for a request for Bob's.
    liar.set(|t| t.substitute_key_package = Some(carols.clone()));
    let refused = alice
        .create_group(&[bw.inbox_id()], GroupOptions::default())
        .await;
    let Err(Error::Network(message)) = &refused else {
        panic!("expected the fetch to be refused, got {refused:?}");
    };
    assert!(message.contains("not asked for"), "{message}");
    assert_eq!(alice.conversations().await.expect("list").len(), before);

    // Carol's package, named as Bob's.
    liar.set(|t| {
        t.substitute_key_package = Some(FetchedKeyPackage {
            installation: bob.installation_id(),
            ..carols
        })
    });
    let refused = alice
        .create_group(&[bw.inbox_id()], GroupOptions::default())
        .await;
    let Err(Error::Network(message)) = &refused else {
        panic!("expected the fetch to be refused, got {refused:?}");
    };
    assert!(message.contains("belongs to"), "{message}");
    assert_eq!(alice.conversations().await.expect("list").len(), before);

    liar.honest();
    let group = alice
        .create_group(&[bw.inbox_id()], GroupOptions::default())
        .await
        .expect("create");
    let bob_group = joined(&bob, group.id()).await;
    group.send_text("hi").await.expect("send");
    assert_eq!(texts(&bob_group).await, ["hi"]);
}

/// A deniable key package cannot be tied to its installation, but the
/// installation it is handed out for must be in the target's identity log:
/// one for an installation that does not exist is left out, and a DM is not
/// made with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deniable_key_package_for_an_unknown_installation_is_left_out() {
    let net = Net::new();
    let (aw, cw) = (wallet(), wallet());
    let liar = Liar::new(&net);
    let alice = client_via(&net, &liar, "alice", &aw).await;
    let carol = net.client("carol", &cw).await;

    liar.set(|t| t.relabel_deniable = Some(InstallationId([9; 32])));
    let refused = alice.find_or_create_dm(cw.inbox_id()).await;
    let Err(Error::InvalidInput(message)) = &refused else {
        panic!(
            "expected no usable deniable package, got {:?}",
            refused.map(|c| c.id().clone())
        );
    };
    assert!(message.contains("deniable key package"), "{message}");
    assert!(alice.conversations().await.expect("list").is_empty());

    liar.honest();
    let dm = alice.find_or_create_dm(cw.inbox_id()).await.expect("DM");
    let carols = joined(&carol, dm.id()).await;
    assert_eq!(carols.id(), dm.id());
}

/// Identity answers must cover every inbox asked for, each under its own
/// inbox: a `zip` over them hid a withheld revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_answers_that_leave_out_or_mix_up_an_inbox_are_refused() {
    let net = Net::new();
    let (aw, bw) = (wallet(), wallet());
    let liar = Liar::new(&net);
    let alice = client_via(&net, &liar, "alice", &aw).await;
    let b1 = quiet_client(&net, "b1", &bw).await;
    let b2 = quiet_client(&net, "b2", &bw).await;
    let (group, _) = group_with(&alice, &[&b1], GroupOptions::default()).await;
    assert_eq!(
        installations_of(&group, bw.inbox_id()).await,
        BTreeSet::from([b1.installation_id().0, b2.installation_id().0])
    );
    // Armed before the revocation: its push makes Alice's discovery run in
    // the background too.
    liar.set(|t| t.withhold_entry = Some(bw.inbox_id()));
    b1.revoke_installation(b2.installation_id())
        .await
        .expect("revoke");
    let message = network_error(
        alice.discover_installations().await,
        "an identity answer without Bob's entry",
    );
    assert!(message.contains("inbox"), "{message}");
    liar.set(|t| {
        t.withhold_entry = None;
        t.swap_entries = true;
    });
    let message = network_error(
        alice.discover_installations().await,
        "identity answers filed under each other's inbox",
    );
    assert!(message.contains("inbox"), "{message}");
    assert_eq!(
        installations_of(&group, bw.inbox_id()).await.len(),
        2,
        "nothing was decided from a refused answer"
    );

    liar.honest();
    alice.discover_installations().await.expect("discovery");
    assert_eq!(
        installations_of(&group, bw.inbox_id()).await,
        BTreeSet::from([b1.installation_id().0])
    );
}

/// A commit whose membership is beyond the identity log the node serves
/// fails for good: after a bounded number of syncs it is skipped with an
/// event, and the member is no longer stuck on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_beyond_the_served_identity_log_is_skipped_after_bounded_tries() {
    let net = Net::new();
    let (aw, bw, cw) = (wallet(), wallet(), wallet());
    let alice = net.client("alice", &aw).await;
    let b1 = quiet_client(&net, "b1", &bw).await;
    let liar = Liar::new(&net);
    let carol = client_via(&net, &liar, "carol", &cw).await;
    let (group, views) = group_with(&alice, &[&b1, &carol], GroupOptions::default()).await;
    let carol_group = &views[1];

    // Bob's second installation registers; Carol's node keeps that update
    // from her, so Alice's commit adding it refers to a log she cannot get.
    // Carol's group may sync in the background on the push of the commit:
    // listen from before.
    let mut events = carol.stream_events();
    liar.set(|t| t.truncate_log = Some((bw.inbox_id(), 1)));
    let b2 = quiet_client(&net, "b2", &bw).await;
    group.reconcile_installations().await.expect("reconcile");
    let mut failures = Vec::new();
    let mut skipped = None;
    for _ in 0..3 {
        match carol_group.sync().await {
            Ok(()) => {}
            Err(e) => failures.push(e.to_string()),
        }
        skipped = events_within(&mut events, Duration::from_millis(100))
            .await
            .into_iter()
            .find_map(|e| match e {
                Event::EnvelopeSkipped {
                    conversation,
                    reason,
                } if conversation == *carol_group.id() => Some(reason),
                _ => None,
            });
        if skipped.is_some() {
            break;
        }
    }
    let reason = skipped.unwrap_or_else(|| {
        panic!("no EnvelopeSkipped within three syncs; they failed with {failures:?}")
    });
    assert!(reason.contains("identity"), "{reason}");
    // Not stuck any more.
    carol_group.sync().await.expect("sync after the skip");

    // The honest answers come back: the group goes on.
    liar.honest();
    let b2_group = joined(&b2, group.id()).await;
    group.send_text("after").await.expect("send");
    assert_eq!(texts(&b2_group).await, ["after"]);
    let b1_group = joined(&b1, group.id()).await;
    assert_eq!(texts(&b1_group).await, ["after"]);
    carol_group.send_text("from carol").await.expect("send");
    carol_group.sync().await.expect("sync");
    assert!(
        texts(&group).await.iter().any(|t| t == "from carol"),
        "Alice reads Carol"
    );
    // Carol herself stays in the epoch before the skipped commit, as if the
    // node had withheld it, and does not read the others' new messages: no
    // rejoin follows a skipped commit yet; that is for the engine to start.
}

/// The node being down is not a reason to skip: the envelope waits, for as
/// many syncs as it takes, and is applied once the node answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_is_down_never_makes_a_member_skip() {
    let net = Net::new();
    let (aw, bw, cw) = (wallet(), wallet(), wallet());
    let alice = net.client("alice", &aw).await;
    let b1 = quiet_client(&net, "b1", &bw).await;
    let liar = Liar::new(&net);
    let carol = client_via(&net, &liar, "carol", &cw).await;
    let (group, views) = group_with(&alice, &[&b1, &carol], GroupOptions::default()).await;
    let carol_group = &views[1];

    let mut events = carol.stream_events();
    liar.set(|t| t.identities_down = true);
    let _b2 = quiet_client(&net, "b2", &bw).await;
    group.reconcile_installations().await.expect("reconcile");
    for attempt in 0..6 {
        assert!(
            carol_group.sync().await.is_err(),
            "sync {attempt} cannot succeed while identities are unavailable"
        );
    }
    let skipped: Vec<Event> = events_within(&mut events, Duration::from_millis(200))
        .await
        .into_iter()
        .filter(|e| matches!(e, Event::EnvelopeSkipped { .. }))
        .collect();
    assert!(skipped.is_empty(), "{skipped:?}");

    liar.honest();
    group.send_text("after").await.expect("send");
    assert_eq!(texts(carol_group).await, ["after"]);
    assert_eq!(
        carol_group.epoch_state().await.expect("epoch"),
        group.epoch_state().await.expect("epoch")
    );
}

/// Identity topics are the node's own: a stranger cannot publish to them,
/// and the node's mirror of identity updates still lands there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strangers_publish_to_an_identity_topic_is_refused() {
    let net = Net::new();
    let bw = wallet();
    let bob = net.client("bob", &bw).await;
    let topic = Topic::Identity(bw.inbox_id());

    let refused = net
        .node
        .publish(vec![(topic.clone(), b"not an identity update".to_vec())])
        .await;
    let Err(ClientError::Refused(NodeError::InvalidArgument(message))) = &refused else {
        panic!("expected the publish to be refused, got {refused:?}");
    };
    assert!(message.contains("identity"), "{message}");
    // Not even in a batch with an envelope of an open topic.
    let refused = net
        .node
        .publish(vec![
            (Topic::Welcome(bob.installation_id()), vec![1]),
            (topic.clone(), vec![2]),
        ])
        .await;
    assert!(refused.is_err(), "{refused:?}");

    let mirrored = net
        .node
        .query(&topic, &Cursor::new(), 0)
        .await
        .expect("query")
        .envelopes;
    assert_eq!(mirrored.len(), 1, "the node's own mirror of Bob's update");
    let update = IdentityUpdate::from_bytes(&mirrored[0].payload).expect("an identity update");
    assert_eq!(update.unsigned.inbox, bw.inbox_id());
    assert_eq!(update.unsigned.installation, bob.installation_id());
}

/// A client that follows an identity topic checks what arrives on it: a
/// forged entry (not an update, another inbox's update, an update it has)
/// wakes nothing; a real new update does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_ignores_forged_entries_on_an_identity_topic() {
    let net = Net::new();
    let (aw, bw, cw) = (wallet(), wallet(), wallet());
    let liar = Liar::new(&net);
    let alice = client_via(&net, &liar, "alice", &aw).await;
    let b1 = quiet_client(&net, "b1", &bw).await;
    let _carol = net.client("carol", &cw).await;
    let (group, _) = group_with(&alice, &[&b1], GroupOptions::default()).await;
    let topic = Topic::Identity(bw.inbox_id());
    // Discovery follows the identity topics of every member it checks.
    alice.discover_installations().await.expect("discovery");
    for _ in 0..100 {
        if liar.subscribed(&topic) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        liar.subscribed(&topic),
        "Alice follows Bob's identity topic"
    );
    // Let the catch-up of the subscription, and what it woke, finish.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let stored = |t: &Topic| {
        let node = net.node.clone();
        let t = t.clone();
        async move {
            node.query(&t, &Cursor::new(), 0)
                .await
                .expect("query")
                .envelopes
                .remove(0)
        }
    };
    let bobs = stored(&topic).await;
    let carols = stored(&Topic::Identity(cw.inbox_id())).await;
    let forged = [
        b"not an identity update".to_vec(),
        carols.payload.clone(),
        bobs.payload.clone(),
    ];
    let calls = liar.identity_calls.load(Ordering::SeqCst);
    let consumed = liar.consumed.load(Ordering::SeqCst);
    for (i, payload) in forged.iter().enumerate() {
        liar.inject(
            &topic,
            Envelope {
                topic: topic.clone(),
                payload: payload.clone(),
                originator_node_id: bobs.originator_node_id,
                // After what the subscription delivered, and below every
                // real envelope to come (sequence ids are node-wide).
                originator_sequence_id: bobs.originator_sequence_id + 1 + i as u64,
                originator_time_ms: bobs.originator_time_ms,
            },
        );
    }
    for _ in 0..100 {
        if liar.consumed.load(Ordering::SeqCst) >= consumed + forged.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(liar.consumed.load(Ordering::SeqCst) >= consumed + forged.len());
    // A discovery run would ask for identities within milliseconds.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        liar.identity_calls.load(Ordering::SeqCst),
        calls,
        "a forged identity-topic entry made Alice fetch identities"
    );

    // The control: Bob's real new installation, pushed by the node, is
    // noticed without any call by hand.
    let b2 = quiet_client(&net, "b2", &bw).await;
    for _ in 0..100 {
        if installations_of(&group, bw.inbox_id()).await.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(liar.identity_calls.load(Ordering::SeqCst) > calls);
    assert_eq!(
        installations_of(&group, bw.inbox_id()).await,
        BTreeSet::from([b1.installation_id().0, b2.installation_id().0])
    );
}
