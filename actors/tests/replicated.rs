//! Kith on replicating nodes, as real processes: three `kith-node`s that
//! replicate over loopback (through links a test can cut) with injected
//! delay and jitter, and six clients of the actor API spread over them.
//!
//! - Racing commits reach members in different orders: members roll back
//!   and replay, and everyone ends on one state with every message once.
//! - A node killed with SIGKILL mid-run: its clients move to another node,
//!   and the node catches up when it is back.
//! - A node cut off for longer than the settle window: its clients fork,
//!   find it once the partition heals, ask to be re-added, and what they
//!   wrote on the fork goes out again.
//!
//! The scenarios run one at a time: each runs three nodes and six clients,
//! and the machine has two cores.

#[path = "../../transport/tests/common/cluster.rs"]
mod cluster;
mod common;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use cluster::{Link, Node, cluster, kill, start_via};
use common::{remote_client, wallet};
use futures::StreamExt as _;
use kith::{Client, Conversation, ConversationId, Event, GroupOptions, LocalWallet};

/// Replication between the nodes: a fixed delay, up to so much jitter,
/// and the settle window the nodes announce (well above both).
#[derive(Clone, Copy)]
struct Lag {
    delay_ms: u64,
    jitter_ms: u64,
    settle_ms: u64,
}

/// A network that is slow but keeps its promise.
const LAG: Lag = Lag {
    delay_ms: 40,
    jitter_ms: 60,
    settle_ms: 500,
};
/// How long the test waits for the members to agree.
const CONVERGE: Duration = Duration::from_secs(90);
/// Three nodes and six clients at a time are enough for two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Every event a client emits, kept for the asserts.
type Recorded = Arc<Mutex<Vec<Event>>>;

fn record(client: &Client) -> Recorded {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    let mut stream = client.stream_events();
    tokio::spawn(async move {
        while let Some(event) = stream.next().await {
            sink.lock().expect("events").push(event);
        }
    });
    events
}

/// Retry `f` until it succeeds (a peer's identity log or key packages may
/// still be on their way between nodes).
async fn eventually<T, E: std::fmt::Debug, F: std::future::Future<Output = Result<T, E>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + CONVERGE;
    loop {
        match f().await {
            Ok(value) => return value,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(?e, "{what}: not yet");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{what}: {e:?}"),
        }
    }
}

/// Three replicating nodes, each reaching each peer through its own
/// [`Link`], and six clients in one group: client `i` is at home on node
/// `i % 3` and knows the other two as fallbacks.
struct Scenario {
    root: tempfile::TempDir,
    nodes: Vec<Node>,
    /// `(puller, peer)` node ids to the link the puller reaches the peer by.
    links: BTreeMap<(u32, u32), Link>,
    clients: Vec<Client>,
    events: Vec<Recorded>,
    group: ConversationId,
    lag: Lag,
}

impl Scenario {
    async fn start(lag: Lag) -> Self {
        common::init_tracing();
        let root = tempfile::tempdir().expect("temporary directory");
        let nodes: Vec<Node> = cluster(&root.path().join("nodes"), 3);
        let mut links = BTreeMap::new();
        for puller in &nodes {
            for peer in nodes.iter().filter(|p| p.id != puller.id) {
                links.insert((puller.id, peer.id), Link::open(peer.port).await);
            }
        }
        let mut scenario = Self {
            root,
            nodes,
            links,
            clients: Vec::new(),
            events: Vec::new(),
            group: ConversationId(Vec::new()),
            lag,
        };
        for i in 0..scenario.nodes.len() {
            scenario.start_node(i);
        }
        let wallets: Vec<LocalWallet> = (0..6).map(|_| wallet()).collect();
        for (i, w) in wallets.iter().enumerate() {
            let urls = scenario.urls(i % 3);
            let client = remote_client(scenario.root.path(), &format!("c{i}"), w, urls).await;
            scenario.events.push(record(&client));
            scenario.clients.push(client);
        }
        let others: Vec<_> = wallets[1..].iter().map(LocalWallet::inbox_id).collect();
        let creator = &scenario.clients[0];
        let group = eventually("create the group", || {
            creator.create_group(&others, GroupOptions::default().name("start"))
        })
        .await;
        scenario.group = group.id().clone();
        for client in &scenario.clients[1..] {
            let id = &scenario.group;
            eventually("join", || async {
                client.sync().await?;
                client.conversation(id).await
            })
            .await;
        }
        scenario.converge().await;
        scenario
    }

    /// Start (or restart) node `i`, its peers reached through its links.
    fn start_node(&mut self, i: usize) {
        let me = self.nodes[i].id;
        let peer_urls: BTreeMap<u32, String> = self
            .links
            .iter()
            .filter(|((puller, _), _)| *puller == me)
            .map(|((_, peer), link)| (*peer, link.url()))
            .collect();
        let (settle, delay, jitter) = (
            self.lag.settle_ms.to_string(),
            self.lag.delay_ms.to_string(),
            self.lag.jitter_ms.to_string(),
        );
        let flags = [
            "--settle-window-ms",
            &settle,
            "--replication-delay-ms",
            &delay,
            "--replication-jitter-ms",
            &jitter,
        ];
        start_via(&mut self.nodes, i, &flags, |peer| {
            peer_urls[&peer.id].clone()
        });
    }

    /// Node `home` first, then the others.
    fn urls(&self, home: usize) -> Vec<String> {
        (0..self.nodes.len())
            .map(|k| self.nodes[(home + k) % self.nodes.len()].url())
            .collect()
    }

    /// Cut node `i` off from its peers (its clients still reach it), or
    /// join it to them again.
    fn partition(&self, i: usize, cut: bool) {
        let id = self.nodes[i].id;
        for ((puller, peer), link) in &self.links {
            if *puller == id || *peer == id {
                if cut { link.cut() } else { link.heal() }
            }
        }
    }

    async fn conversation(&self, client: usize) -> Conversation {
        self.clients[client]
            .conversation(&self.group)
            .await
            .expect("a member")
    }

    /// Sync everyone (the welcome topic too: a forked member joins again
    /// from a Welcome) until all show one epoch, authenticator and name.
    async fn converge(&self) -> (u64, Vec<u8>) {
        let deadline = Instant::now() + CONVERGE;
        loop {
            let mut states = BTreeMap::new();
            for (i, client) in self.clients.iter().enumerate() {
                let _ = client.sync().await;
                let group = self.conversation(i).await;
                let _ = group.sync().await;
                let state = group.epoch_state().await.expect("epoch");
                let name = group.metadata().await.expect("metadata").name;
                states.insert(i, (state, name));
            }
            let first = states[&0].clone();
            if states.values().all(|s| *s == first) {
                return first.0;
            }
            assert!(
                Instant::now() < deadline,
                "the members did not agree within {CONVERGE:?}: {states:?}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Events matching `f`, per client.
    fn count(&self, f: impl Fn(&Event) -> bool) -> Vec<usize> {
        self.events
            .iter()
            .map(|e| e.lock().expect("events").iter().filter(|e| f(e)).count())
            .collect()
    }

    /// Everyone holds exactly the texts `sent`, each once and published,
    /// syncing until they do (a re-sent message may still be on its way).
    async fn assert_every_message_once(&self, sent: &[String]) {
        self.assert_holds_once(0..self.clients.len(), sent).await;
    }

    /// Clients `who` hold exactly the texts `sent`, each once and
    /// published, syncing until they do.
    async fn assert_holds_once(&self, who: impl IntoIterator<Item = usize>, sent: &[String]) {
        let mut sent = sent.to_vec();
        sent.sort();
        let deadline = Instant::now() + CONVERGE;
        for i in who {
            loop {
                let group = self.conversation(i).await;
                let _ = group.sync().await;
                let messages = group.messages().await.expect("messages");
                let mut texts: Vec<String> = messages
                    .iter()
                    .filter_map(|m| m.text().map(str::to_owned))
                    .collect();
                texts.sort();
                // Texts only: a transcript entry of a commit that lost a
                // rollback stays, superseded, as it should.
                let unpublished: Vec<_> = messages
                    .iter()
                    .filter(|m| m.content_type == kith::content::TEXT && !m.published)
                    .collect();
                if texts == sent && unpublished.is_empty() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "client {i} holds {texts:?} (unpublished: {unpublished:?}), not each of \
                     {sent:?} once"
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}

fn is_rolled_back(e: &Event) -> bool {
    matches!(e, Event::RolledBack { .. })
}

/// One round: clients 0 to 2 rename at once (on three nodes) while 3 to 5
/// send; returns the texts sent. Each sender sends once it applied a
/// rename: its node-mate's, most often, which two times in three is a
/// commit that loses, so the message is read on a branch that loses.
async fn race(s: &Scenario, round: usize) -> Vec<String> {
    let groups = futures::future::join_all((0..6).map(|i| s.conversation(i))).await;
    let before = groups[0].epoch_state().await.expect("epoch").0;
    let renames = groups[..3].iter().enumerate().map(|(i, group)| async move {
        // Pending is fine: the change is queued and goes out later.
        let _ = group.update_name(&format!("round {round} by {i}")).await;
    });
    let texts: Vec<String> = (3..6).map(|i| format!("round {round} from {i}")).collect();
    let sends = texts
        .iter()
        .zip(&groups[3..])
        .map(|(text, group)| async move {
            let give_up = Instant::now() + Duration::from_millis(500);
            while Instant::now() < give_up
                && group.epoch_state().await.map_or(0, |(epoch, _)| epoch) <= before
            {
                let _ = group.sync().await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            group.send_text(text).await.expect("send")
        });
    let (_, ids) = tokio::join!(
        futures::future::join_all(renames),
        futures::future::join_all(sends)
    );
    assert_eq!(ids.len(), texts.len());
    texts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn six_clients_on_three_replicating_nodes_race_and_agree() {
    let _one = ONE_AT_A_TIME.lock().await;
    // Slow enough that a sender reads its node-mate's rename and writes
    // before a rival rename that sorts first comes in.
    let s = Scenario::start(Lag {
        delay_ms: 200,
        jitter_ms: 100,
        settle_ms: 1_000,
    })
    .await;
    // Rounds of racing renames while others send, until members rolled
    // back and a message read on a losing branch was confirmed by its
    // re-sent copy (most rounds roll back; a confirmation takes a message
    // read on the branch that lost).
    let mut sent = Vec::new();
    let seen = |s: &Scenario| {
        let rolled_back = s.count(is_rolled_back).iter().sum::<usize>();
        let superseded = s
            .count(|e| matches!(e, Event::MessageSuperseded { .. }))
            .iter()
            .sum::<usize>();
        let confirmed = s
            .count(|e| matches!(e, Event::MessageConfirmed { .. }))
            .iter()
            .sum::<usize>();
        (rolled_back, superseded, confirmed)
    };
    for round in 0..12 {
        sent.extend(race(&s, round).await);
        let (rolled_back, superseded, confirmed) = seen(&s);
        if round >= 1 && rolled_back > 0 && superseded > 0 && confirmed > 0 {
            break;
        }
    }
    let (epoch, _) = s.converge().await;
    s.assert_every_message_once(&sent).await;
    let (rolled_back, superseded, confirmed) = seen(&s);
    eprintln!(
        "replicated race: {} messages, epoch {epoch}, {rolled_back} rollbacks, {superseded} \
         messages superseded and {confirmed} confirmed across the six clients",
        sent.len()
    );
    assert!(epoch > 1, "the renames moved the group on");
    assert!(
        rolled_back > 0,
        "no member rolled back: the commits never raced"
    );
    assert!(
        superseded > 0,
        "no member read a message on a branch that lost"
    );
    assert!(
        confirmed > 0,
        "no superseded message was confirmed by its re-sent copy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_mid_run_loses_nothing_and_catches_up() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut s = Scenario::start(LAG).await;
    let mut sent = Vec::new();
    sent.extend(race(&s, 0).await);
    // SIGKILL node 2 while the next round is under way: clients 1 and 4
    // are at home there and move to another node.
    let pid = s.nodes[1].child.as_ref().expect("node 2 runs").id();
    let kill_soon = async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let status = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "SIGKILL node 2");
    };
    let (texts, ()) = tokio::join!(race(&s, 1), kill_soon);
    sent.extend(texts);
    kill(&mut s.nodes[1]);
    for round in 2..4 {
        sent.extend(race(&s, round).await);
    }
    s.start_node(1);
    for round in 4..6 {
        sent.extend(race(&s, round).await);
    }
    let (epoch, _) = s.converge().await;
    s.assert_every_message_once(&sent).await;

    // The restarted node caught up: a client that knows only node 2 sees
    // the group as everyone does.
    let late = wallet();
    let only_node_2 = remote_client(s.root.path(), "late", &late, s.nodes[1].url()).await;
    let group = s.conversation(0).await;
    let late_inbox = [late.inbox_id()];
    eventually("add a client of node 2", || group.add_members(&late_inbox)).await;
    let (epoch_after, _) = s.converge().await;
    let joined = eventually("the late client joins through node 2", || async {
        only_node_2.sync().await?;
        only_node_2.conversation(&s.group).await
    })
    .await;
    let want = s.converge().await;
    let deadline = Instant::now() + CONVERGE;
    while joined.epoch_state().await.expect("epoch") != want {
        assert!(Instant::now() < deadline, "node 2 did not catch up");
        let _ = joined.sync().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let texts: Vec<String> = joined
        .messages()
        .await
        .expect("messages")
        .iter()
        .filter_map(|m| m.text().map(str::to_owned))
        .collect();
    assert!(
        texts.is_empty(),
        "a joiner reads nothing from before it joined"
    );
    eprintln!(
        "replicated kill: {} messages, epoch {epoch} then {epoch_after}, {} rollbacks",
        sent.len(),
        s.count(is_rolled_back).iter().sum::<usize>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_cut_off_past_the_settle_window_forks_its_clients_who_heal() {
    let _one = ONE_AT_A_TIME.lock().await;
    let s = Scenario::start(LAG).await;
    let groups = futures::future::join_all((0..6).map(|i| s.conversation(i))).await;
    // Node 3 (clients 2 and 5) is cut off. Both sides rename; the
    // majority's commit is first in canonical order (earlier time).
    s.partition(2, true);
    groups[0]
        .update_name("majority")
        .await
        .expect("the majority's rename");
    groups[2]
        .update_name("island")
        .await
        .expect("the island's rename");
    let mut sent = Vec::new();
    for (i, group) in groups.iter().enumerate() {
        let text = format!("during the partition from {i}");
        group.send_text(&text).await.expect("send");
        sent.push(text);
    }
    // Long past the settle window: each side settles its own commit.
    let island_settled = Instant::now() + Duration::from_millis(4 * s.lag.settle_ms);
    while Instant::now() < island_settled {
        for group in &groups {
            let _ = group.sync().await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        groups[5]
            .metadata()
            .await
            .expect("metadata")
            .name
            .as_deref(),
        Some("island"),
        "the island went on by itself"
    );

    s.partition(2, false);
    let (epoch, _) = s.converge().await;
    assert_eq!(
        groups[1]
            .metadata()
            .await
            .expect("metadata")
            .name
            .as_deref(),
        Some("majority"),
        "the commit first in canonical order won"
    );
    // Each side's members read each other's messages; the island's, sent
    // on the fork, go out again once its members are back. What the
    // majority wrote meanwhile, the island's members cannot read: they
    // hold no keys of those epochs (`Event::Rejoined` says so).
    s.assert_holds_once([0, 1, 3, 4], &sent).await;
    let island_wrote: Vec<String> = sent
        .iter()
        .filter(|t| t.ends_with('2') || t.ends_with('5'))
        .cloned()
        .collect();
    s.assert_holds_once([2, 5], &island_wrote).await;
    // And after the heal everyone reads everyone.
    let mut after = Vec::new();
    for (i, group) in groups.iter().enumerate() {
        let text = format!("after the heal from {i}");
        group.send_text(&text).await.expect("send");
        after.push(text);
    }
    let mut majority_holds = sent.clone();
    majority_holds.extend(after.iter().cloned());
    s.assert_holds_once([0, 1, 3, 4], &majority_holds).await;
    let mut island_holds = island_wrote.clone();
    island_holds.extend(after.iter().cloned());
    s.assert_holds_once([2, 5], &island_holds).await;
    let forked = s.count(|e| matches!(e, Event::Forked { .. }));
    let rejoined = s.count(|e| matches!(e, Event::Rejoined { .. }));
    let failed = s.count(|e| matches!(e, Event::MessageFailed { .. }));
    eprintln!(
        "replicated partition: epoch {epoch}; forked {forked:?}, rejoined {rejoined:?}, \
         rollbacks {:?}",
        s.count(is_rolled_back)
    );
    for island in [2, 5] {
        assert!(forked[island] > 0, "client {island} found it was on a fork");
        assert!(rejoined[island] > 0, "client {island} was re-added");
    }
    for majority in [0, 1, 3, 4] {
        assert_eq!(forked[majority], 0, "client {majority} was never on a fork");
    }
    assert_eq!(failed, [0; 6], "nothing anyone wrote failed");
}

/// Two devices of one wallet register at once, each through its own node:
/// both nodes accept sequence 2 from their own device, only one update
/// stays, and the device that lost registers again by itself. Both end
/// active in the one log every node serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_devices_registering_at_once_on_two_nodes_both_end_registered() {
    use kith_transport::client::{DeliveryClient as _, GrpcClient};

    let _one = ONE_AT_A_TIME.lock().await;
    let root = tempfile::tempdir().expect("temporary directory");
    let mut nodes = cluster(&root.path().join("nodes"), 3);
    for i in 0..nodes.len() {
        // The mirrors cross only after each node accepted its own device.
        start_via(
            &mut nodes,
            i,
            &[
                "--settle-window-ms",
                "1000",
                "--replication-delay-ms",
                "300",
            ],
            Node::url,
        );
    }
    let w = wallet();
    // Every signature the wallet makes, to see the losing device sign again.
    let signed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let builder = |name: &str, url: String| {
        let (w, signed) = (w.clone(), Arc::clone(&signed));
        Client::builder()
            .wallet_callback(w.inbox_id(), move |text: String| {
                signed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let signature = w.sign_personal(text.as_bytes());
                async move { Ok(signature) }
            })
            .data_dir(root.path().join(name))
            .node(url)
            .config(kith::ClientConfig {
                sync_interval: Duration::from_secs(3600),
                ..kith::ClientConfig::default()
            })
            .build()
    };
    // The first device, so that the two racing ones both take sequence 2.
    let first = builder("first", nodes[2].url()).await.expect("client");
    first.register().await.expect("register the first device");
    let (phone, laptop) = (
        builder("phone", nodes[0].url()).await.expect("client"),
        builder("laptop", nodes[1].url()).await.expect("client"),
    );
    let before = signed.load(std::sync::atomic::Ordering::SeqCst);
    let (a, b) = tokio::join!(phone.register(), laptop.register());
    a.expect("the phone registers");
    b.expect("the laptop registers");
    assert_eq!(
        signed.load(std::sync::atomic::Ordering::SeqCst) - before,
        3,
        "one of the two lost sequence 2 and signed again"
    );

    let inbox = w.inbox_id();
    let installations = [
        first.installation_id(),
        phone.installation_id(),
        laptop.installation_id(),
    ];
    let deadline = Instant::now() + CONVERGE;
    for node in &nodes {
        let client = GrpcClient::connect_lazy(&node.url()).expect("client");
        loop {
            let log = client
                .identity_updates(vec![(inbox, 0)])
                .await
                .expect("identity log")
                .remove(0);
            let state = kith_engine::identity::IdentityState::from_log(
                inbox,
                kith_engine::identity::IdentityConfig::default(),
                &log,
            )
            .expect("the log verifies");
            // The first device, the winner of sequence 2, the loser again.
            if log.len() == 3 && installations.iter().all(|i| state.is_active(i)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {} serves {} updates; active: {:?}",
                node.id,
                log.len(),
                installations.map(|i| state.is_active(&i))
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Deniable DMs across nodes. Alice's deniable packages live on node 1,
/// where she registered; Bob, on node 2, opens a deniable DM with her, and
/// node 2 fetches her package from node 1 in its own name (it alone can
/// check Bob's MAC). Then node 1 dies and Alice moves to node 2: her
/// requests were MACed for node 1, node 2 refuses the first, and she keys
/// them for node 2 and opens a deniable DM with Carol without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deniable_dms_open_across_nodes_and_after_a_move() {
    let _one = ONE_AT_A_TIME.lock().await;
    common::init_tracing();
    let root = tempfile::tempdir().expect("temporary directory");
    let mut nodes = cluster(&root.path().join("nodes"), 2);
    for i in 0..nodes.len() {
        start_via(&mut nodes, i, &["--settle-window-ms", "500"], Node::url);
    }
    let (aw, bw, cw) = (wallet(), wallet(), wallet());
    let (one, two) = (nodes[0].url(), nodes[1].url());
    let alice = remote_client(root.path(), "alice", &aw, vec![one, two.clone()]).await;
    let bob = remote_client(root.path(), "bob", &bw, vec![two.clone()]).await;
    let carol = remote_client(root.path(), "carol", &cw, vec![two]).await;

    let dm = eventually("Bob opens a deniable DM with Alice through node 2", || {
        bob.find_or_create_dm(aw.inbox_id())
    })
    .await;
    assert_eq!(
        dm.dm_mode().await.expect("mode"),
        Some(kith::DmMode::Deniable)
    );
    dm.send_text("hello from node 2").await.expect("send");
    joins_and_reads(&alice, dm.id(), &["hello from node 2"]).await;

    kill(&mut nodes[0]);
    let to_carol = eventually("Alice, moved to node 2, opens a DM with Carol", || {
        alice.find_or_create_dm(cw.inbox_id())
    })
    .await;
    assert_eq!(
        to_carol.dm_mode().await.expect("mode"),
        Some(kith::DmMode::Deniable)
    );
    to_carol.send_text("after the move").await.expect("send");
    joins_and_reads(&carol, to_carol.id(), &["after the move"]).await;
}

/// Two devices of one inbox take sequence number 2 on two nodes while the
/// first node is cut off. The observer's node first has only the later
/// one (the loser), and the observer adds it to a group. Once the link is
/// healed every node revises the log to the earlier update (the winner);
/// the observer is pushed the winner's update, notices that it differs
/// from the one it cached, reads the log again, and replaces the loser
/// with the winner in the group. The inbox's first device, which cached
/// the loser too, accepts that commit (it reads the disputed log again
/// rather than reject it), and everyone ends on one state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_follows_an_identity_log_its_node_revised() {
    use kith_transport::client::{DeliveryClient as _, GrpcClient};

    let _one = ONE_AT_A_TIME.lock().await;
    common::init_tracing();
    let root = tempfile::tempdir().expect("temporary directory");
    let mut nodes = cluster(&root.path().join("nodes"), 3);
    let mut links = BTreeMap::new();
    for puller in &nodes {
        for peer in nodes.iter().filter(|p| p.id != puller.id) {
            links.insert((puller.id, peer.id), Link::open(peer.port).await);
        }
    }
    for i in 0..nodes.len() {
        let me = nodes[i].id;
        let peer_urls: BTreeMap<u32, String> = links
            .iter()
            .filter(|((puller, _), _)| *puller == me)
            .map(|((_, peer), link)| (*peer, link.url()))
            .collect();
        start_via(&mut nodes, i, &["--settle-window-ms", "500"], |peer| {
            peer_urls[&peer.id].clone()
        });
    }
    let isolate = |id: u32, cut: bool| {
        for ((puller, peer), link) in &links {
            if *puller == id || *peer == id {
                if cut { link.cut() } else { link.heal() }
            }
        }
    };
    let (w, ow) = (wallet(), wallet());
    let first = remote_client(root.path(), "first", &w, nodes[1].url()).await;
    let observer = remote_client(root.path(), "observer", &ow, nodes[2].url()).await;
    let events = [record(&first), record(&observer)];
    let members = [w.inbox_id()];
    let group = eventually("create the group", || {
        observer.create_group(&members, GroupOptions::default())
    })
    .await;
    let first_view = eventually("the first device joins", || async {
        first.sync().await?;
        first.conversation(group.id()).await
    })
    .await;

    let inbox = w.inbox_id();
    isolate(nodes[0].id, true);
    let winner = remote_client(root.path(), "winner", &w, nodes[0].url()).await;
    let loser = remote_client(root.path(), "loser", &w, nodes[1].url()).await;
    let mut with_loser = vec![first.installation_id(), loser.installation_id()];
    with_loser.sort();
    eventually(
        "the observer adds the loser, all its node knows of",
        || async {
            let got = installations_of(
                &observer
                    .conversation(group.id())
                    .await
                    .map_err(|e| e.to_string())?,
                inbox,
            )
            .await?;
            if got == with_loser {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        },
    )
    .await;

    isolate(nodes[0].id, false);
    for node in &nodes {
        let client = GrpcClient::connect_lazy(&node.url()).expect("client");
        eventually("every node revises the log to the winner", || async {
            let log = client
                .identity_updates(vec![(inbox, 0)])
                .await
                .map_err(|e| e.to_string())?
                .remove(0);
            let installations: Vec<_> = log.iter().map(|u| u.unsigned.installation).collect();
            if installations == [first.installation_id(), winner.installation_id()] {
                Ok(())
            } else {
                Err(format!("node {} serves {installations:?}", node.id))
            }
        })
        .await;
    }
    let mut with_winner = vec![first.installation_id(), winner.installation_id()];
    with_winner.sort();
    eventually("the observer follows the revised log", || async {
        let got = installations_of(
            &observer
                .conversation(group.id())
                .await
                .map_err(|e| e.to_string())?,
            inbox,
        )
        .await?;
        if got == with_winner {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await;
    eventually(
        "the first device and the winner agree with the observer",
        || async {
            let views = [
                observer
                    .conversation(group.id())
                    .await
                    .map_err(|e| e.to_string())?,
                first_view.clone(),
                {
                    winner.sync().await.map_err(|e| e.to_string())?;
                    winner
                        .conversation(group.id())
                        .await
                        .map_err(|e| e.to_string())?
                },
            ];
            let mut states = Vec::new();
            for view in views {
                view.sync().await.map_err(|e| e.to_string())?;
                let state = view.epoch_state().await.map_err(|e| e.to_string())?;
                states.push((state, installations_of(&view, inbox).await?));
            }
            if states.iter().all(|s| *s == states[0]) && states[0].1 == with_winner {
                Ok(())
            } else {
                Err(format!("{states:?}"))
            }
        },
    )
    .await;
    for (who, events) in ["first", "observer"].iter().zip(&events) {
        let events = events.lock().expect("events");
        let refused: Vec<_> = events
            .iter()
            .filter(|e| matches!(e, Event::CommitRejected { .. } | Event::Forked { .. }))
            .collect();
        assert!(refused.is_empty(), "{who} refused or forked: {refused:?}");
    }
}

/// The installations of `inbox` in `conversation`, sorted.
async fn installations_of(
    conversation: &Conversation,
    inbox: kith::InboxId,
) -> Result<Vec<kith::InstallationId>, String> {
    let members = conversation.members().await.map_err(|e| e.to_string())?;
    let mut installations = members
        .into_iter()
        .find(|m| m.inbox == inbox)
        .map(|m| m.installations)
        .unwrap_or_default();
    installations.sort();
    Ok(installations)
}

/// `client` joins conversation `id` and holds exactly `texts`, syncing
/// until it does.
async fn joins_and_reads(client: &Client, id: &ConversationId, texts: &[&str]) {
    let view = eventually("join", || async {
        client.sync().await?;
        client.conversation(id).await
    })
    .await;
    eventually("read", || async {
        view.sync().await.map_err(|e| e.to_string())?;
        let held = common::texts(&view).await;
        if held == texts {
            Ok(())
        } else {
            Err(format!("holds {held:?}, not {texts:?}"))
        }
    })
    .await;
}
