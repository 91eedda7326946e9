//! Groups of 1,000 and 10,000 installations over a `kith-node` process
//! started with its default limits (only `--listen` and `--data-dir`), and
//! a bot in 1,000 groups, each against raw OpenMLS in the same run
//! (issue 20).
//!
//! ```text
//! KITH_SCALE=1000        cargo bench -p kith-benches --bench scale   (the default)
//! KITH_SCALE=1000,10000  cargo bench -p kith-benches --bench scale
//! KITH_BOT_GROUPS=1000   (the default; 0 skips the bot)
//! KITH_SCALE=0           the bot alone
//! ```
//!
//! Per size N, printed and recorded:
//! - creating the group of N installations (once: it takes a while), with
//!   the bytes the creator published and the commits it took;
//! - the bytes a new member downloads to join it (from its registration to
//!   the `Joined` event), against the size of the tree (the shared
//!   GroupInfo);
//! - adding one member, end to end: from `add_members` until the new
//!   member has joined (and, apart, until `add_members` returns), against
//!   raw OpenMLS creating the commit, merging it and the joiner processing
//!   its Welcome;
//! - a member processing one commit (a rename, which carries the
//!   committer's path), with nothing else running: from the instant its
//!   subscription delivers the commit to the instant the client reports
//!   the change (actor hop, engine checks, storage step and fsync
//!   included), against raw OpenMLS `process_message` + merge of an update
//!   commit with a path.
//!
//! The members other than the creator, the measured member and the
//! joiners are installations registered straight over gRPC (an identity
//! update and key packages), with no client behind them.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use criterion::{Criterion, SamplingMode};
use futures::StreamExt as _;
use kith::{Client, ClientConfig, Event, GroupOptions, GrpcClient, InboxId, LocalWallet, Node};
use kith_benches::{Member, Recorder, bench_timed, join_config, virtual_member};
use kith_engine::{
    delivery::{Cursor, Envelope, Topic},
    group::WelcomePayload,
    identity::IdentityUpdate,
};
use kith_storage::{Durability, StorageConfig};
use kith_transport::{
    client::{ClientError, DeliveryClient, EnvelopeStream, NodeInfo, QueryPage},
    node::{
        DeniableKeyPackageFetch, DeniableKeyPackageUpload, FetchedKeyPackage, KeyPackageFetch,
        KeyPackageUpload,
    },
};
use openmls::prelude::{
    MlsMessageBodyIn, MlsMessageIn, ProcessedMessageContent, StagedWelcome,
    tls_codec::{Deserialize as _, Serialize as _},
};
use openmls_rust_crypto::OpenMlsRustCrypto;

const KITH: &str = "kith, gRPC to kith-node";
const RAW: &str = "raw openmls (memory)";
const KITH_BUFFERED: &str = "kith, buffered durability";

/// A `kith-node` process, killed on drop.
struct NodeProcess {
    child: Child,
    url: String,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The release `kith-node`, built if it is missing or stale.
fn node_binary() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "-p",
            "kith-transport",
            "--bin",
            "kith-node",
        ])
        .status()
        .expect("run cargo");
    assert!(status.success(), "building kith-node failed");
    let exe = std::env::current_exe().expect("bench executable");
    exe.parent()
        .and_then(Path::parent)
        .expect("target directory")
        .join("kith-node")
}

/// `kith-node` on a free loopback port with `extra` flags (none: its
/// defaults).
fn start_node(dir: &Path, extra: &[&str]) -> NodeProcess {
    let mut child = Command::new(node_binary())
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kith-node");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the listening line");
    let address = line
        .trim()
        .strip_prefix("kith-node listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    NodeProcess {
        child,
        url: format!("http://{address}"),
    }
}

/// Passes everything to the node and counts payload bytes both ways;
/// notes when a subscription delivers a commit (any group envelope).
struct Counting {
    inner: Arc<dyn DeliveryClient>,
    published: AtomicU64,
    downloaded: Arc<AtomicU64>,
    /// When each group envelope arrived by subscription.
    arrivals: Arc<Mutex<Vec<Instant>>>,
}

impl Counting {
    fn new(inner: Arc<dyn DeliveryClient>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            published: AtomicU64::new(0),
            downloaded: Arc::default(),
            arrivals: Arc::default(),
        })
    }
}

fn payload_bytes(envelopes: &[Envelope]) -> u64 {
    envelopes.iter().map(|e| e.payload.len() as u64).sum()
}

#[async_trait::async_trait]
impl DeliveryClient for Counting {
    async fn publish(&self, batch: Vec<(Topic, Vec<u8>)>) -> Result<Vec<Envelope>, ClientError> {
        let bytes: u64 = batch.iter().map(|(_, p)| p.len() as u64).sum();
        self.published.fetch_add(bytes, Ordering::SeqCst);
        self.inner.publish(batch).await
    }

    async fn query(
        &self,
        topic: &Topic,
        cursor: &Cursor,
        limit: u32,
    ) -> Result<QueryPage, ClientError> {
        let page = self.inner.query(topic, cursor, limit).await?;
        self.downloaded
            .fetch_add(payload_bytes(&page.envelopes), Ordering::SeqCst);
        Ok(page)
    }

    async fn subscribe(&self, topics: Vec<(Topic, Cursor)>) -> Result<EnvelopeStream, ClientError> {
        let stream = self.inner.subscribe(topics).await?;
        let (downloaded, arrivals) = (Arc::clone(&self.downloaded), Arc::clone(&self.arrivals));
        Ok(Box::pin(stream.inspect(move |item| {
            if let Ok(envelope) = item {
                downloaded.fetch_add(envelope.payload.len() as u64, Ordering::SeqCst);
                if matches!(envelope.topic, Topic::Group(_)) {
                    arrivals.lock().expect("arrivals").push(Instant::now());
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
        let logs = self.inner.identity_updates(requests).await?;
        let bytes: u64 = logs
            .iter()
            .flatten()
            .map(|u| u.to_bytes().len() as u64)
            .sum();
        self.downloaded.fetch_add(bytes, Ordering::SeqCst);
        Ok(logs)
    }

    async fn upload_key_packages(&self, upload: KeyPackageUpload) -> Result<usize, ClientError> {
        self.inner.upload_key_packages(upload).await
    }

    async fn fetch_key_packages(
        &self,
        fetch: KeyPackageFetch,
    ) -> Result<Vec<FetchedKeyPackage>, ClientError> {
        self.inner.fetch_key_packages(fetch).await
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
        self.inner.fetch_deniable_key_packages(fetch).await
    }

    async fn node_info(&self) -> Result<NodeInfo, ClientError> {
        self.inner.node_info().await
    }
}

/// A registered client whose node traffic is counted.
async fn counted_client(dir: &Path, name: &str, node: &Arc<Counting>) -> Client {
    let client = Client::builder()
        .wallet(LocalWallet::generate(&mut rand_core::OsRng))
        .data_dir(dir.join(name))
        .node(Node::Client(Arc::clone(node) as Arc<dyn DeliveryClient>))
        .config(ClientConfig {
            // Background timers stay out of the measurement; pushes and
            // the commands themselves drive everything.
            sync_interval: Duration::from_secs(3600),
            discovery_before_send: Duration::from_secs(3600),
            ..ClientConfig::default()
        })
        .build()
        .await
        .expect("client");
    client.register().await.expect("register");
    client
}

fn grpc(url: &str) -> Arc<dyn DeliveryClient> {
    Arc::new(GrpcClient::connect_lazy(url).expect("client"))
}

/// Wait for an event `pick` accepts.
async fn wait_for(
    events: &mut (impl futures::Stream<Item = Event> + Unpin),
    what: &str,
    mut pick: impl FnMut(&Event) -> bool,
) -> Instant {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(600), events.next())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .expect("events go on");
        if pick(&event) {
            return Instant::now();
        }
    }
}

/// The bytes of the tree a joiner of `client`'s Welcome received: the
/// shared GroupInfo of its split Welcome (or its whole Welcome).
async fn tree_bytes(node: &dyn DeliveryClient, client: &Client) -> u64 {
    let own = node
        .query(&Topic::Welcome(client.installation_id()), &Cursor::new(), 0)
        .await
        .expect("query");
    let payload = &own.envelopes.last().expect("a Welcome").payload;
    let welcome = WelcomePayload::from_bytes(payload).expect("a Welcome payload");
    let Some(shared) = welcome.shared else {
        return welcome.welcome.len() as u64;
    };
    let (mut cursor, mut bytes) = (Cursor::new(), 0);
    loop {
        let page = node
            .query(&shared.topic(), &cursor, 0)
            .await
            .expect("query");
        bytes += payload_bytes(&page.envelopes);
        cursor = page.next_cursor;
        if !page.more {
            return bytes;
        }
    }
}

/// Raw OpenMLS at `n` installations: a creator, a member that processes
/// every commit, and `n - 2` members that never read.
struct RawGroup {
    creator: Member<OpenMlsRustCrypto>,
    group: openmls::prelude::MlsGroup,
    member: Member<OpenMlsRustCrypto>,
    member_group: openmls::prelude::MlsGroup,
}

impl RawGroup {
    fn new(n: usize) -> Self {
        let creator = Member::new("creator", OpenMlsRustCrypto::default());
        let member = Member::new("member", OpenMlsRustCrypto::default());
        let mut key_packages = vec![member.key_package()];
        key_packages.extend(kith_benches::key_packages(n - 2));
        let (group, welcome) = creator.create_and_add_with_welcome(b"scale", &key_packages);
        let welcome = welcome.tls_serialize_detached().expect("encode");
        let member_group = join(
            &member.provider,
            MlsMessageIn::tls_deserialize_exact(&welcome).expect("decode"),
        );
        Self {
            creator,
            group,
            member,
            member_group,
        }
    }

    /// Add one member: (the creator's commit and merge, that plus the
    /// joiner processing its Welcome).
    fn add_one(&mut self) -> (Duration, Duration) {
        let joiner = Member::new("joiner", OpenMlsRustCrypto::default());
        let key_package = joiner.key_package();
        let start = Instant::now();
        let (commit, welcome, _) = self
            .group
            .add_members(&self.creator.provider, &self.creator.signer, &[key_package])
            .expect("add");
        self.group
            .merge_pending_commit(&self.creator.provider)
            .expect("merge");
        let committed = start.elapsed();
        let welcome = welcome.tls_serialize_detached().expect("encode");
        let welcome = MlsMessageIn::tls_deserialize_exact(&welcome).expect("decode");
        let _joined = join(&joiner.provider, welcome);
        let add = start.elapsed();
        // The member follows, untimed here.
        self.process(&commit.tls_serialize_detached().expect("encode"));
        (committed, add)
    }

    /// The creator commits an update with its path (untimed); the member
    /// processes and merges it (timed).
    fn update_and_process(&mut self) -> Duration {
        let bundle = self
            .group
            .self_update(
                &self.creator.provider,
                &self.creator.signer,
                openmls::prelude::LeafNodeParameters::default(),
            )
            .expect("update");
        self.group
            .merge_pending_commit(&self.creator.provider)
            .expect("merge");
        let commit = bundle.commit().tls_serialize_detached().expect("encode");
        let start = Instant::now();
        self.process(&commit);
        start.elapsed()
    }

    fn process(&mut self, commit: &[u8]) {
        let message = MlsMessageIn::tls_deserialize_exact(commit)
            .expect("decode")
            .try_into_protocol_message()
            .expect("protocol message");
        let processed = self
            .member_group
            .process_message(&self.member.provider, message)
            .expect("process");
        let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
            panic!("not a commit");
        };
        self.member_group
            .merge_staged_commit(&self.member.provider, *staged)
            .expect("merge");
    }
}

fn join(provider: &OpenMlsRustCrypto, welcome: MlsMessageIn) -> openmls::prelude::MlsGroup {
    let MlsMessageBodyIn::Welcome(welcome) = welcome.extract() else {
        panic!("not a Welcome");
    };
    StagedWelcome::new_from_welcome(provider, &join_config(), welcome, None)
        .expect("stage")
        .into_group(provider)
        .expect("join")
}

fn scale(c: &mut Criterion, runtime: &tokio::runtime::Runtime, recorder: &Recorder, n: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(&dir.path().join("node"), &[]);
    let setup = Instant::now();
    let bare = runtime.block_on(async {
        let grpc = GrpcClient::connect_lazy(&node.url).expect("client");
        futures::stream::iter(0..n - 2)
            .map(|_| async { virtual_member(&grpc, 1).await.0 })
            .buffer_unordered(8)
            .collect::<Vec<InboxId>>()
            .await
    });
    println!(
        "[{n}] registered {} bare installations in {:.1} s",
        bare.len(),
        setup.elapsed().as_secs_f64()
    );
    let creator_node = Counting::new(grpc(&node.url));
    let member_node = Counting::new(grpc(&node.url));
    let (creator, member) = runtime.block_on(async {
        (
            counted_client(dir.path(), "creator", &creator_node).await,
            counted_client(dir.path(), "member", &member_node).await,
        )
    });

    // Create, once.
    let mut inboxes = vec![member.inbox_id()];
    inboxes.extend(bare);
    let start = Instant::now();
    let group = runtime
        .block_on(creator.create_group(&inboxes, GroupOptions::default()))
        .expect("create the group");
    let created = start.elapsed();
    let epoch = runtime.block_on(group.epoch_state()).expect("epoch").0;
    println!(
        "[{n}] created a group of {n} installations in {:.2} s ({} commits); the creator \
         published {:.1} MB",
        created.as_secs_f64(),
        epoch,
        creator_node.published.load(Ordering::SeqCst) as f64 / 1e6
    );
    recorder.record(&format!("create a group of {n} (n=1)"), KITH, created, 1);

    // Add one member, end to end; the member processes each commit.
    let mut member_events = member.stream_events();
    let mut adds = c.benchmark_group(format!("add 1 member at {n}"));
    adds.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1));
    let add_op = format!("add 1 member at {n}, end to end");
    let returned_op = format!("add 1 member at {n}: add_members returns");
    let mut joiners = 0;
    let mut joins: Vec<(u64, u64)> = Vec::new();
    bench_timed(&mut adds, recorder, (&add_op, KITH), || {
        joiners += 1;
        runtime.block_on(async {
            let joiner_node = Counting::new(grpc(&node.url));
            let joiner =
                counted_client(dir.path(), &format!("joiner-{joiners}"), &joiner_node).await;
            let mut joiner_events = joiner.stream_events();
            let registered = joiner_node.downloaded.load(Ordering::SeqCst);
            let start = Instant::now();
            group
                .add_members(&[joiner.inbox_id()])
                .await
                .expect("add one");
            let returned = start.elapsed();
            recorder.record(&returned_op, KITH, returned, 1);
            let joined = wait_for(&mut joiner_events, "the joiner to join", |e| {
                matches!(e, Event::Joined { .. })
            })
            .await;
            let downloaded = joiner_node.downloaded.load(Ordering::SeqCst) - registered;
            let tree = tree_bytes(joiner_node.inner.as_ref(), &joiner).await;
            joins.push((downloaded, tree));
            // The member has applied the add before the next sample.
            wait_for(&mut member_events, "the member to see the add", |e| {
                matches!(e, Event::MembersChanged { .. })
            })
            .await;
            joiner.shutdown().await.expect("shutdown");
            joined - start
        })
    });
    let mut raw = RawGroup::new(n);
    bench_timed(&mut adds, recorder, (&add_op, RAW), || {
        let (committed, add) = raw.add_one();
        recorder.record(&returned_op, RAW, committed, 1);
        add
    });
    adds.finish();
    if let Some((downloaded, tree)) = joins.last() {
        println!(
            "[{n}] a joiner downloaded {:.2} MB to join (Welcome, tree, identity logs and the \
             group's messages since); the tree (shared GroupInfo) is {:.2} MB ({:.2}x)",
            *downloaded as f64 / 1e6,
            *tree as f64 / 1e6,
            *downloaded as f64 / (*tree).max(1) as f64
        );
    }

    // A member processes one commit (a rename, with the committer's
    // path), with nothing else running: from the instant its subscription
    // delivers the commit until the client reports the change.
    let process_op = format!("a member processes one commit at {n}");
    let mut commits = c.benchmark_group(format!("process one commit at {n}"));
    commits
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(1));
    let mut renames = 0;
    bench_timed(&mut commits, recorder, (&process_op, KITH), || {
        renames += 1;
        runtime.block_on(async {
            member_node.arrivals.lock().expect("arrivals").clear();
            group
                .update_name(&format!("rename {renames}"))
                .await
                .expect("rename");
            let done = wait_for(&mut member_events, "the member to see the rename", |e| {
                matches!(e, Event::MetadataChanged { .. })
            })
            .await;
            let arrived = member_node
                .arrivals
                .lock()
                .expect("arrivals")
                .first()
                .copied()
                .expect("the commit arrived by subscription");
            done.saturating_duration_since(arrived)
        })
    });
    bench_timed(&mut commits, recorder, (&process_op, RAW), || {
        raw.update_and_process()
    });
    commits.finish();
    drop(group);
    runtime.block_on(async {
        creator.shutdown().await.expect("shutdown");
        member.shutdown().await.expect("shutdown");
    });
}

/// A bot in `groups` groups catches up on one message in each after being
/// offline: messages received and stored per second, against raw OpenMLS
/// decrypting the same number of messages.
fn bot(runtime: &tokio::runtime::Runtime, recorder: &Recorder, groups: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    // One sender adds the bot to every group, which the per-target and
    // per-pair fetch limits exist to stop; they are lifted here, and only
    // here. What is measured (receiving) does not touch them.
    let node = start_node(
        &dir.path().join("node"),
        &[
            "--fetch-burst-per-target",
            "1000000",
            "--fetch-per-minute-per-target",
            "1000000",
            "--fetch-burst-per-pair",
            "1000000",
            "--fetch-per-minute-per-pair",
            "1000000",
        ],
    );
    let bot_node = Counting::new(grpc(&node.url));
    let sender_node = Counting::new(grpc(&node.url));
    let bot_wallet = LocalWallet::generate(&mut rand_core::OsRng);
    let open_bot = |wallet: LocalWallet, durability: Durability| {
        Client::builder()
            .wallet(wallet)
            .data_dir(dir.path().join("bot"))
            .node(Node::Client(
                Arc::clone(&bot_node) as Arc<dyn DeliveryClient>
            ))
            .config(ClientConfig {
                sync_interval: Duration::from_secs(3600),
                discovery_before_send: Duration::from_secs(3600),
                ..ClientConfig::default()
            })
            .storage(StorageConfig {
                durability,
                ..StorageConfig::default()
            })
            .build()
    };
    let setup = Instant::now();
    let conversations = runtime.block_on(async {
        let bot = open_bot(bot_wallet.clone(), Durability::Sync)
            .await
            .expect("bot");
        bot.register().await.expect("register");
        let sender = counted_client(dir.path(), "sender", &sender_node).await;
        let mut conversations = Vec::new();
        for _ in 0..groups {
            conversations.push(
                sender
                    .create_group(&[bot.inbox_id()], GroupOptions::default())
                    .await
                    .expect("create"),
            );
        }
        bot.sync().await.expect("join");
        assert_eq!(bot.conversations().await.expect("list").len(), groups);
        bot.shutdown().await.expect("shutdown");
        for conversation in &conversations {
            conversation.send_text("hello, bot").await.expect("send");
        }
        (sender, conversations)
    });
    println!(
        "[bot] {groups} groups made and one message sent in each in {:.1} s",
        setup.elapsed().as_secs_f64()
    );
    // The bot catches up twice: with an fsync per step (the default), and
    // with buffered durability, where it flushes once before anything it
    // received is reported (one more message per group, sent while it was
    // offline again).
    let rounds = [
        (Durability::Sync, KITH),
        (
            Durability::Buffered {
                flush_every_ms: 500,
            },
            KITH_BUFFERED,
        ),
    ];
    for (round, (durability, backend)) in rounds.into_iter().enumerate() {
        if round > 0 {
            runtime.block_on(async {
                for conversation in &conversations.1 {
                    conversation.send_text("hello again").await.expect("send");
                }
            });
        }
        let start = Instant::now();
        runtime.block_on(async {
            let bot = open_bot(bot_wallet.clone(), durability).await.expect("bot");
            let mut events = bot.stream_events();
            let mut received = 0;
            while received < groups {
                wait_for(&mut events, "the bot's messages", |e| {
                    matches!(e, Event::Message(_))
                })
                .await;
                received += 1;
            }
            let elapsed = start.elapsed();
            let mut stored = 0;
            for conversation in bot.conversations().await.expect("list") {
                stored += conversation.messages().await.expect("messages").len();
            }
            assert_eq!(stored, groups * (round + 1), "each message is stored once");
            recorder.record(
                &format!("bot: receive and store {groups} messages in {groups} groups"),
                backend,
                elapsed,
                1,
            );
            println!(
                "[bot] {backend}: received and stored {groups} messages in {:.2} s: {:.0} \
                 messages/s",
                elapsed.as_secs_f64(),
                groups as f64 / elapsed.as_secs_f64()
            );
            bot.shutdown().await.expect("shutdown");
        });
    }
    drop(conversations);

    // Raw OpenMLS: decrypt the same number of messages (one group, the
    // messages made beforehand, untimed).
    let mut pair = kith_benches::Pair::new(
        OpenMlsRustCrypto::default(),
        OpenMlsRustCrypto::default(),
        b"bot",
        &[],
    );
    let messages: Vec<Vec<u8>> = (0..groups)
        .map(|_| {
            pair.group_a
                .create_message(&pair.a.provider, &pair.a.signer, b"hello, bot")
                .expect("encrypt")
                .tls_serialize_detached()
                .expect("encode")
        })
        .collect();
    let start = Instant::now();
    for message in &messages {
        let message = MlsMessageIn::tls_deserialize_exact(message)
            .expect("decode")
            .try_into_protocol_message()
            .expect("protocol message");
        let processed = pair
            .group_b
            .process_message(&pair.b.provider, message)
            .expect("decrypt");
        assert!(matches!(
            processed.into_content(),
            ProcessedMessageContent::ApplicationMessage(_)
        ));
    }
    let raw = start.elapsed();
    recorder.record(
        &format!("bot: receive and store {groups} messages in {groups} groups"),
        RAW,
        raw,
        1,
    );
    println!(
        "[bot] raw OpenMLS decrypts {groups} messages in {:.3} s: {:.0} messages/s",
        raw.as_secs_f64(),
        groups as f64 / raw.as_secs_f64()
    );
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // gRPC channels are made outside `block_on` too.
    let _entered = runtime.enter();
    let recorder = Recorder::default();
    let sizes: Vec<usize> = std::env::var("KITH_SCALE")
        .unwrap_or_else(|_| "1000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("KITH_SCALE: sizes like 1000,10000"))
        .filter(|n| *n > 0)
        .collect();
    for n in sizes {
        scale(&mut c, &runtime, &recorder, n);
    }
    let groups: usize = std::env::var("KITH_BOT_GROUPS")
        .unwrap_or_else(|_| "1000".into())
        .parse()
        .expect("KITH_BOT_GROUPS: a number");
    if groups > 0 {
        bot(&runtime, &recorder, groups);
    }
    recorder.print_ratios(RAW);
    c.final_summary();
}
