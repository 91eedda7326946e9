//! The adversary suite: a stranger, a malicious member and a malicious
//! node attack conversations of honest clients, each on real sled stores
//! over a real `LocalNode` (docs/security.md names what each test shows).
//!
//! A stranger here needs no key and no registration: anyone can publish to
//! any topic. Each test plays the attack, then checks that the honest
//! members were not moved by it and that the conversation goes on: they
//! still send, receive, and agree on the epoch.

mod common;

use std::time::Duration;

use common::{Net, group_with, texts, wallet};
use futures::StreamExt as _;
use kith::{Client, Conversation, Event, GroupOptions};
use kith_engine::delivery::{Cursor, Topic};
use kith_transport::client::DeliveryClient as _;
use openmls::prelude::{MlsMessageIn, ProtocolMessage, tls_codec::Deserialize as _};

/// Every event `events` yields within `wait`.
async fn events_within(
    events: &mut (impl futures::Stream<Item = Event> + Unpin),
    wait: Duration,
) -> Vec<Event> {
    let mut seen = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(wait, events.next()).await {
        seen.push(event);
    }
    seen
}

/// The group topic of a (non-DM) conversation: its id is the group id.
fn group_topic(conversation: &Conversation) -> Topic {
    Topic::Group(conversation.id().0.clone())
}

/// The authenticated data of an application message on a group topic, and
/// where it sits in the payload; `None` for anything else.
fn authenticated_data(payload: &[u8]) -> Option<(usize, Vec<u8>)> {
    let message = MlsMessageIn::tls_deserialize_exact(payload).ok()?;
    let ProtocolMessage::PrivateMessage(m) = message.try_into_protocol_message().ok()? else {
        return None;
    };
    let aad = m.aad().to_vec();
    if aad.len() < 11 || aad[10] == 0 {
        return None;
    }
    let at = payload.windows(aad.len()).position(|w| w == aad)?;
    Some((at, aad))
}

/// What a stranger makes of a member's application message: the same
/// bytes, with the Kith authenticated data rewritten in place (same
/// length): another epoch digest, and every commit position it names set
/// to zero, so that each reads as an earlier commit than the reader's.
fn forge_fork_claim(payload: &[u8]) -> Option<Vec<u8>> {
    let (at, aad) = authenticated_data(payload)?;
    let mut forged = aad.clone();
    // "k?" | digest (8) | count (1) | count entries of equal size, each
    // epoch (8) | digest (8) | position (20) | anything after.
    for byte in &mut forged[2..10] {
        *byte ^= 0xff;
    }
    let count = usize::from(forged[10]);
    let size = (forged.len() - 11) / count;
    for entry in 0..count {
        let start = 11 + entry * size;
        forged[start + 16..start + 36].fill(0);
    }
    let mut out = payload.to_vec();
    out[at..at + forged.len()].copy_from_slice(&forged);
    Some(out)
}

async fn sync_all(clients: &[&Client]) {
    for client in clients {
        client.sync().await.expect("sync");
    }
}

// ----- 1. forged fork evidence ---------------------------------------------

/// Finding 1: a stranger copies Alice's last application message and
/// rewrites its plaintext authenticated data to claim that her branch left
/// each epoch by a commit that sorts first. Before the fix, that one
/// envelope put Bob on a "fork": his sent messages were marked failed and
/// nothing he sent reached Alice again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strangers_rewritten_fork_claim_forks_nobody() {
    let net = Net::new();
    let alice = net.client("alice", &wallet()).await;
    let bob = net.client("bob", &wallet()).await;
    let (a, views) = group_with(&alice, &[&bob], GroupOptions::default()).await;
    let b = views.into_iter().next().expect("bob's view");
    // A commit both applied, so that messages name one the reader knows.
    a.update_name("before").await.expect("rename");
    b.send_text("delivered before").await.expect("send");
    a.send_text("hello").await.expect("send");
    sync_all(&[&alice, &bob]).await;
    assert_eq!(texts(&b).await, ["delivered before", "hello"]);

    let mut alice_events = alice.stream_events();
    let mut bob_events = bob.stream_events();
    let topic = group_topic(&a);
    let page = net
        .node
        .query(&topic, &Cursor::new(), 0)
        .await
        .expect("query");
    let forged = page
        .envelopes
        .iter()
        .rev()
        .find_map(|e| forge_fork_claim(&e.payload))
        .expect("an application message with a branch history to copy");
    net.node
        .publish(vec![(topic, forged)])
        .await
        .expect("anyone may publish to a group topic");
    sync_all(&[&alice, &bob]).await;

    b.send_text("after the forgery").await.expect("send");
    a.send_text("still here").await.expect("send");
    assert_eq!(
        texts(&a).await,
        [
            "delivered before",
            "hello",
            "after the forgery",
            "still here"
        ],
        "Bob's message reaches Alice"
    );
    assert_eq!(
        texts(&b).await,
        [
            "delivered before",
            "hello",
            "after the forgery",
            "still here"
        ]
    );
    let seen: Vec<Event> = [
        events_within(&mut alice_events, Duration::from_millis(300)).await,
        events_within(&mut bob_events, Duration::from_millis(300)).await,
    ]
    .concat();
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, Event::Forked { .. } | Event::MessageFailed { .. })),
        "no member moves towards a fork, no message fails: {seen:?}"
    );
    // They still change metadata and agree on the epoch.
    b.update_name("after").await.expect("rename");
    sync_all(&[&alice, &bob]).await;
    assert_eq!(
        a.metadata().await.expect("metadata").name.as_deref(),
        Some("after")
    );
    assert_eq!(
        a.epoch_state().await.expect("epoch"),
        b.epoch_state().await.expect("epoch")
    );
}

// ----- 3. DM hijack and deniability downgrade -------------------------------

/// Finding 3: Alice and Bob have a deniable DM. A second installation of
/// Bob's (or a modified client of his) makes a non-repudiable DM with
/// Alice: same conversation id. Before the fix Alice joined it too, and
/// her sends went to whichever group had the lowest id, signed with her
/// installation key if that was the new one. Now the Welcome is refused
/// with an event, and the DM stays deniable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dm_cannot_be_moved_to_another_mode() {
    let net = Net::new();
    let bob_wallet = wallet();
    let alice = net.client("alice", &wallet()).await;
    let bob = net.client("bob", &bob_wallet).await;
    let dm = alice
        .find_or_create_dm_with(bob.inbox_id(), kith::DmMode::Deniable)
        .await
        .expect("dm");
    bob.sync().await.expect("sync");
    let mut alice_events = alice.stream_events();

    let bob_again = net.client("bob-2", &bob_wallet).await;
    bob_again
        .find_or_create_dm_with(alice.inbox_id(), kith::DmMode::NonRepudiable)
        .await
        .expect("a non-repudiable DM of the same two inboxes");
    alice.sync().await.expect("sync");
    let seen = events_within(&mut alice_events, Duration::from_millis(300)).await;
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, Event::Joined { conversation } if conversation == dm.id())),
        "Alice does not join the other group: {seen:?}"
    );
    assert!(
        seen.iter().any(|e| matches!(
            e, Event::WelcomeRefused { reason } if reason.contains("mode")
        )),
        "and is told: {seen:?}"
    );
    let dm = alice.conversation(dm.id()).await.expect("the DM");
    assert_eq!(
        dm.dm_mode().await.expect("mode"),
        Some(kith::DmMode::Deniable)
    );
}

/// A stranger posts on Bob's Welcome topic a split Welcome whose shared
/// part is nowhere, with junk on the topic it names: Bob refuses it with
/// an event and reads nothing else for it, and a real Welcome after it
/// still brings him in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_welcome_whose_shared_part_never_comes_is_refused_and_blocks_nothing() {
    use kith_engine::group::{SharedWelcome, WelcomePayload};
    let net = Net::new();
    let (aw, bw) = (wallet(), wallet());
    let alice = net.client("alice", &aw).await;
    let bob = net.client("bob", &bw).await;
    let mut events = bob.stream_events();
    let forged = WelcomePayload {
        welcome: vec![0],
        group_id: vec![9; 16],
        cursor: Cursor::new(),
        branch: Vec::new(),
        shared: Some(SharedWelcome {
            hash: [7; 32],
            parts: vec![[8; 32]],
        }),
    };
    net.node
        .publish(vec![
            (Topic::WelcomeShared([7; 32]), vec![1; 100]),
            (Topic::Welcome(bob.installation_id()), forged.to_bytes()),
        ])
        .await
        .expect("anyone may publish");

    let (group, views) = group_with(&alice, &[&bob], GroupOptions::default()).await;
    group.send_text("after").await.expect("send");
    assert_eq!(texts(&views[0]).await, ["after"]);
    let refused: Vec<String> = events_within(&mut events, Duration::from_millis(300))
        .await
        .into_iter()
        .filter_map(|e| match e {
            Event::WelcomeRefused { reason } => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].contains("shared GroupInfo"), "{refused:?}");
    assert_eq!(bob.conversations().await.expect("list").len(), 1);
}
