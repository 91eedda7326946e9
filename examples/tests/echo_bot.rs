//! The echo bot, run in-process against an embedded node on sled, talked
//! to through ordinary clients: it answers in a group and in a DM, and
//! across restarts it answers what it missed, once.

use std::{path::Path, sync::Arc, time::Duration};

use futures::{Stream, StreamExt as _};
use kith::{Client, ConversationId, Event, GroupOptions, InboxId, LocalNode, LocalWallet, Message};
use kith_examples::{
    echo_bot::{EchoBot, EchoBotConfig, EchoBotHandle, replied_to, reply_text},
    wallet_file,
};
use kith_storage::SledNodeStore;
use kith_transport::node::{NodeConfig, NodeLogic};

/// How long a reply may take (bindings of a deniable DM take a few round
/// trips).
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Logs to standard error at `RUST_LOG`, off by default.
fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_writer(std::io::stderr)
        .try_init();
}

fn node(dir: &Path) -> LocalNode<SledNodeStore> {
    let store = SledNodeStore::open(dir.join("node")).expect("node store");
    LocalNode::new(Arc::new(NodeLogic::new(NodeConfig::new(1), store)))
}

async fn user(dir: &Path, name: &str, node: &LocalNode<SledNodeStore>) -> Client {
    let client = Client::builder()
        .wallet(LocalWallet::generate(&mut rand_core::OsRng))
        .data_dir(dir.join(name))
        .node(node.clone())
        .build()
        .await
        .expect("client");
    client.register().await.expect("register");
    client
}

async fn start_bot(dir: &Path, node: &LocalNode<SledNodeStore>) -> (EchoBotHandle, InboxId) {
    let bot = EchoBot::start(EchoBotConfig::new(dir.join("bot"), node.clone()))
        .await
        .expect("the bot starts");
    let inbox = bot.inbox_id();
    (bot, inbox)
}

/// The next message from `from` in `conversation`, within the timeout.
async fn next_from(
    events: &mut (impl Stream<Item = Event> + Unpin),
    from: InboxId,
    conversation: &ConversationId,
) -> Message {
    let wait = async {
        while let Some(event) = events.next().await {
            if let Event::Message(message) = event
                && message.sender == from
                && &message.conversation == conversation
            {
                return message;
            }
        }
        panic!("the event stream ended");
    };
    tokio::time::timeout(REPLY_TIMEOUT, wait)
        .await
        .expect("a reply from the bot in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bot_answers_in_a_group_and_only_once_across_restarts() {
    init_tracing();
    let dir = tempfile::tempdir().expect("temporary directory");
    let node = node(dir.path());
    let alice = user(dir.path(), "alice", &node).await;
    let (bot, bot_inbox) = start_bot(dir.path(), &node).await;
    let mut events = alice.stream_events();

    let group = alice
        .create_group(&[bot_inbox], GroupOptions::default().name("Echo"))
        .await
        .expect("create");
    let hello = group.send_text("hello").await.expect("send");
    let reply = next_from(&mut events, bot_inbox, group.id()).await;
    assert_eq!(reply.text(), Some(reply_text("hello", &hello).as_str()));
    assert_eq!(
        reply.text().and_then(|t| t.lines().next()),
        Some("echo: hello")
    );
    bot.stop().await.expect("the bot stops");

    // While the bot is down: one message reaches its store but is never
    // answered (its client alone receives it, as if the bot crashed before
    // replying), and one is only on the node.
    let received = group
        .send_text("received, not answered")
        .await
        .expect("send");
    let wallet = wallet_file::load_or_create(&dir.path().join("bot")).expect("the bot's wallet");
    let bare = Client::builder()
        .wallet(wallet)
        .data_dir(dir.path().join("bot").join("client"))
        .node(node.clone())
        .build()
        .await
        .expect("the bot's client alone");
    bare.sync().await.expect("sync");
    let stored = bare
        .conversation(group.id())
        .await
        .expect("the bot is in the group")
        .messages()
        .await
        .expect("messages");
    assert!(
        stored.iter().any(|m| m.id == received),
        "the bot's store holds the message"
    );
    bare.shutdown().await.expect("shutdown");
    let offline = group.send_text("sent while down").await.expect("send");

    // The same data directory: the same inbox, and the missed messages
    // answered once each.
    let (bot, again) = start_bot(dir.path(), &node).await;
    assert_eq!(again, bot_inbox, "the bot reopened its inbox");
    let mut answered = Vec::new();
    for _ in 0..2 {
        let reply = next_from(&mut events, bot_inbox, group.id()).await;
        answered.push(reply.text().map(str::to_owned).expect("text"));
    }
    answered.sort();
    let mut expected = vec![
        reply_text("received, not answered", &received),
        reply_text("sent while down", &offline),
    ];
    expected.sort();
    assert_eq!(answered, expected);

    // A last message: the bot handles one event at a time, after its
    // start-up scan, so once this reply is in, any second reply to an
    // earlier message would have come before it.
    let last = group.send_text("last").await.expect("send");
    let reply = next_from(&mut events, bot_inbox, group.id()).await;
    assert_eq!(reply.text(), Some(reply_text("last", &last).as_str()));
    bot.stop().await.expect("the bot stops");

    let mut replies: Vec<_> = group
        .messages()
        .await
        .expect("messages")
        .into_iter()
        .filter(|m| m.sender == bot_inbox)
        .filter_map(|m| m.text().and_then(replied_to))
        .collect();
    replies.sort();
    let mut every = vec![hello, received, offline, last];
    every.sort();
    assert_eq!(replies, every, "exactly one reply to each message");
    drop(group);
    alice.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bot_answers_a_dm() {
    init_tracing();
    let dir = tempfile::tempdir().expect("temporary directory");
    let node = node(dir.path());
    let (bot, bot_inbox) = start_bot(dir.path(), &node).await;
    let bob = user(dir.path(), "bob", &node).await;
    let mut events = bob.stream_events();

    // A deniable DM (the default): messages wait for both sides' bindings.
    let dm = bob.find_or_create_dm(bot_inbox).await.expect("dm");
    let hi = dm.send_text("hi bot").await.expect("send");
    let reply = next_from(&mut events, bot_inbox, dm.id()).await;
    assert_eq!(reply.text(), Some(reply_text("hi bot", &hi).as_str()));
    assert!(reply.verified, "the reply's sender is the bot, verified");
    assert_eq!(reply.sender, bot_inbox);

    bot.stop().await.expect("the bot stops");
    drop(dm);
    bob.shutdown().await.expect("shutdown");
}
