//! The receive path reads each envelope once: the subscription hands a
//! group's envelopes to the group, which applies them without querying the
//! node; a query only fills a gap the subscription left.

mod common;

use std::{pin::Pin, sync::Arc, time::Duration};

use common::{
    Net, joined,
    tap::{self, Tap},
    texts, wallet,
};
use kith::{Client, ClientConfig, Conversation, Event, GroupOptions, LocalWallet};

async fn tapped_client(net: &Net, name: &str, wallet: &LocalWallet, tap: &Arc<Tap>) -> Client {
    let client = Client::builder()
        .wallet(wallet.clone())
        .data_dir(net.path(name))
        .node(tap::node(tap))
        .config(ClientConfig {
            // Only pushes drive the receiver: no timer reads.
            sync_interval: Duration::from_secs(3600),
            ..ClientConfig::default()
        })
        .build()
        .await
        .expect("client");
    client.register().await.expect("register");
    client
}

/// Alice on the node, Bob on a tap of it, in a group together; Bob's
/// events from after he joined.
struct Pair {
    tap: Arc<Tap>,
    group: Conversation,
    bob_group: Conversation,
    events: Pin<Box<dyn futures::Stream<Item = Event> + Send>>,
    // Kept alive for the test's length; the clients go before the net.
    _clients: (Client, Client),
    _net: Net,
}

async fn pair() -> Pair {
    let net = Net::new();
    let (aw, bw) = (wallet(), wallet());
    let alice = net.client("alice", &aw).await;
    let tap = Tap::new(Arc::new(net.node.clone()));
    let bob = tapped_client(&net, "bob", &bw, &tap).await;
    let group = alice
        .create_group(&[bob.inbox_id()], GroupOptions::default())
        .await
        .expect("create");
    let bob_group = joined(&bob, group.id()).await;
    let events = Box::pin(bob.stream_events());
    Pair {
        tap,
        group,
        bob_group,
        events,
        _clients: (alice, bob),
        _net: net,
    }
}

/// Wait for `count` message events on `events`.
async fn messages(
    events: &mut (impl futures::Stream<Item = Event> + Unpin),
    count: usize,
) -> Vec<String> {
    use futures::StreamExt as _;
    let mut texts = Vec::new();
    while texts.len() < count {
        let event = tokio::time::timeout(Duration::from_secs(20), events.next())
            .await
            .expect("messages arrive by push")
            .expect("the stream goes on");
        if let Event::Message(message) = event {
            texts.push(message.text().unwrap_or("<not text>").to_owned());
        }
    }
    texts
}

/// Twenty messages reach Bob by push alone: every group envelope he reads
/// comes from the subscription, none from a query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_envelopes_are_applied_without_reading_them_again() {
    let Pair {
        tap,
        group,
        bob_group,
        mut events,
        _clients,
        _net,
    } = pair().await;
    let (queried, streamed) = (tap.queried(), tap.streamed());

    let sent: Vec<String> = (0..20).map(|i| format!("message {i}")).collect();
    for text in &sent {
        group.send_text(text).await.expect("send");
    }
    assert_eq!(messages(&mut events, 20).await, sent);
    assert_eq!(
        tap.queried() - queried,
        0,
        "no group envelope was read by query"
    );
    assert!(
        tap.streamed() - streamed >= 20,
        "each came by subscription: {}",
        tap.streamed() - streamed
    );
    // Bob's own sends wait for the subscription to bring them back.
    let queried = tap.queried();
    bob_group.send_text("and back").await.expect("send");
    assert_eq!(tap.queried(), queried, "Bob read his own message by push");
    assert_eq!(
        texts(&group).await.last().map(String::as_str),
        Some("and back")
    );
}

/// A subscription that breaks is made again from where it left off: what
/// was sent meanwhile arrives by the new one's catch-up, and nothing is
/// read by query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_subscription_resumes_where_it_left_off() {
    let Pair {
        tap,
        group,
        mut events,
        _clients,
        _net,
        ..
    } = pair().await;

    group.send_text("one").await.expect("send");
    assert_eq!(messages(&mut events, 1).await, ["one"]);
    let queried = tap.queried();
    tap.break_streams();
    for text in ["two", "three", "four"] {
        group.send_text(text).await.expect("send");
    }
    assert_eq!(messages(&mut events, 3).await, ["two", "three", "four"]);
    assert_eq!(tap.queried(), queried, "the new subscription caught up");
}
