//! Queries and streams through the public API (issue 23, item 4): pages
//! of messages by time, either way, continued from a cursor without losing
//! or repeating a message; filters by content type and delivery state; the
//! conversation list by last activity and kind; a per-conversation event
//! stream; and a stream that says when it fell behind.

mod common;

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use common::{Net, group_with, tap, tap::Tap, test_config, wallet};
use futures::StreamExt as _;
use kith::{
    ClientConfig, Content, Conversation, ConversationKind, ConversationQuery, Delivery, Direction,
    Event, GroupOptions, Message, MessageId, MessageQuery, Reaction, ReactionAction, content,
};

/// Every message of `query` (whose limit is the page size), page by page.
async fn all_pages(conversation: &Conversation, query: MessageQuery) -> (Vec<MessageId>, usize) {
    let (mut ids, mut pages) = (Vec::new(), 0);
    let mut next = query.clone();
    loop {
        let page = conversation.find_messages(&next).await.expect("page");
        pages += 1;
        ids.extend(page.messages.iter().map(|m| m.id));
        match page.next {
            Some(cursor) => next = query.clone().after(cursor),
            None => return (ids, pages),
        }
    }
}

fn texts_only(messages: &[Message]) -> Vec<MessageId> {
    messages
        .iter()
        .filter(|m| m.content_type == content::TEXT)
        .map(|m| m.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_run_both_ways_by_time_without_losing_or_repeating() {
    let net = Net::new();
    let alice = net.client("alice", &wallet()).await;
    let group = alice
        .create_group(&[], GroupOptions::default())
        .await
        .expect("create");
    // Sent back to back: many share a millisecond.
    for n in 0..41 {
        group.send_text(&format!("{n}")).await.expect("send");
    }
    let stored = group.messages().await.expect("messages");
    let all = texts_only(&stored);
    assert_eq!(all.len(), 41);
    let same_ms = stored
        .windows(2)
        .filter(|w| w[0].time_ms == w[1].time_ms)
        .count();
    println!("{same_ms} neighbours share a millisecond");

    let texts = MessageQuery::new().content_types([content::TEXT]).limit(4);
    let (ascending, pages) = all_pages(&group, texts.clone()).await;
    assert_eq!(ascending, all);
    assert_eq!(pages, 11, "ten full pages and a last one");
    let (descending, _) = all_pages(&group, texts.clone().direction(Direction::Descending)).await;
    let mut reversed = all.clone();
    reversed.reverse();
    assert_eq!(descending, reversed);

    // Time bounds: since is inclusive, until exclusive.
    let (from, to) = (stored[10].time_ms, stored[30].time_ms);
    let expected: Vec<MessageId> = stored
        .iter()
        .filter(|m| m.content_type == content::TEXT && m.time_ms >= from && m.time_ms < to)
        .map(|m| m.id)
        .collect();
    let bounded = texts.clone().since_ms(from).until_ms(to);
    assert_eq!(all_pages(&group, bounded).await.0, expected);
    // A page that is not full has no next.
    let page = group
        .find_messages(&texts.clone().limit(100))
        .await
        .expect("page");
    assert_eq!(page.messages.len(), 41);
    assert!(page.next.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_filter_by_content_type_and_delivery_state() {
    let net = Net::new();
    let tap = Tap::new(Arc::new(net.node.clone()));
    let alice = net
        .builder("alice", &wallet())
        .node(tap::node(&tap))
        .build()
        .await
        .expect("client");
    alice.register().await.expect("register");
    let group = alice
        .create_group(&[], GroupOptions::default())
        .await
        .expect("create");
    let hello = group.send_text("hello").await.expect("send");
    group
        .send_content(&Content::Reaction(Reaction {
            reference: hello,
            action: ReactionAction::Added,
            content: "👋".into(),
        }))
        .await
        .expect("react");
    // Written while the node is down: stored, unpublished.
    tap.set_offline(true);
    let waiting = group.send_text("offline").await.expect("stored");
    let query = |q: MessageQuery| {
        let group = group.clone();
        async move {
            group
                .find_messages(&q)
                .await
                .expect("page")
                .messages
                .iter()
                .map(|m| m.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        query(MessageQuery::new().delivery([Delivery::Unpublished])).await,
        [waiting]
    );
    assert_eq!(
        query(
            MessageQuery::new()
                .content_types([content::TEXT])
                .delivery([Delivery::Published])
        )
        .await,
        [hello]
    );
    let reactions = query(MessageQuery::new().content_types([content::REACTION])).await;
    assert_eq!(reactions.len(), 1);
    assert_eq!(
        query(MessageQuery::new().listed_only()).await,
        [hello, waiting],
        "the reaction is not listed"
    );
    assert!(
        query(MessageQuery::new().delivery([Delivery::Failed, Delivery::Superseded]))
            .await
            .is_empty()
    );
    // Back online, the next sync publishes it.
    tap.set_offline(false);
    group.sync().await.expect("sync");
    assert!(
        query(MessageQuery::new().delivery([Delivery::Unpublished]))
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_list_by_last_activity_and_kind() {
    let net = Net::new();
    let alice = net.client("alice", &wallet()).await;
    let bob = net.client("bob", &wallet()).await;
    let carol = net.client("carol", &wallet()).await;
    let pause = || tokio::time::sleep(Duration::from_millis(5));
    let (first, _) = group_with(&alice, &[&bob], GroupOptions::default().name("first")).await;
    pause().await;
    let second = alice
        .create_group(&[], GroupOptions::default().name("second"))
        .await
        .expect("create");
    pause().await;
    let dm = alice.find_or_create_dm(carol.inbox_id()).await.expect("dm");
    pause().await;
    let said = first
        .send_text("the first group speaks last")
        .await
        .expect("send");
    pause().await;
    // A reaction is activity, not a listed message: it moves nothing.
    second
        .send_content(&Content::Reaction(Reaction {
            reference: said,
            action: ReactionAction::Added,
            content: "+1".into(),
        }))
        .await
        .expect("react");

    let list = alice
        .list_conversations(&ConversationQuery::new())
        .await
        .expect("list");
    let ids: Vec<_> = list.iter().map(|i| i.conversation.id().clone()).collect();
    assert_eq!(
        ids,
        [first.id().clone(), dm.id().clone(), second.id().clone()]
    );
    assert_eq!(list[0].last_message.as_ref().map(|m| m.id), Some(said));
    assert!(
        list[2].last_message.is_none(),
        "a reaction is not a last message"
    );
    assert!(
        list.windows(2)
            .all(|w| w[0].last_activity_ms >= w[1].last_activity_ms)
    );
    let groups = alice
        .list_conversations(&ConversationQuery::new().kind(ConversationKind::Group))
        .await
        .expect("list");
    assert_eq!(groups.len(), 2);
    assert!(groups.iter().all(|i| i.kind == ConversationKind::Group));
    let dms = alice
        .list_conversations(&ConversationQuery::new().kind(ConversationKind::Dm))
        .await
        .expect("list");
    assert_eq!(dms.len(), 1);
    assert_eq!(dms[0].conversation.dm_peer(), Some(carol.inbox_id()));
    let top = alice
        .list_conversations(&ConversationQuery::new().limit(1))
        .await
        .expect("list");
    assert_eq!(top[0].conversation.id(), first.id());
    assert_eq!(top.len(), 1);

    // Bob leaves the list once removed, unless asked for inactive ones.
    first
        .remove_members(&[bob.inbox_id()])
        .await
        .expect("remove");
    bob.sync().await.expect("sync");
    let bobs = |q: ConversationQuery| {
        let bob = bob.clone();
        async move { bob.list_conversations(&q).await.expect("list") }
    };
    assert!(bobs(ConversationQuery::new()).await.is_empty());
    let inactive = bobs(ConversationQuery::new().include_inactive()).await;
    assert_eq!(inactive.len(), 1);
    assert!(!inactive[0].active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_stream_carries_only_its_own_events() {
    let net = Net::new();
    let alice = net.client("alice", &wallet()).await;
    let bob = net.client("bob", &wallet()).await;
    let (one, views_one) = group_with(&alice, &[&bob], GroupOptions::default()).await;
    let (two, _) = group_with(&alice, &[&bob], GroupOptions::default()).await;
    let mut stream = views_one[0].stream_events();
    two.send_text("in two").await.expect("send");
    one.send_text("in one").await.expect("send");
    bob.sync().await.expect("sync");
    let event = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an event in time")
        .expect("open");
    assert!(
        matches!(&event, Event::Message(m) if m.text() == Some("in one")),
        "{event:?}"
    );
    assert_eq!(event.conversation(), Some(one.id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_falls_behind_is_told_and_the_store_has_everything() {
    let net = Net::new();
    let bw = wallet();
    let alice = net.client("alice", &wallet()).await;
    let bob = net
        .builder("bob", &bw)
        .config(ClientConfig {
            event_buffer: 8,
            ..test_config()
        })
        .build()
        .await
        .expect("client");
    bob.register().await.expect("register");
    let (group, views) = group_with(&alice, &[&bob], GroupOptions::default()).await;
    let mut stream = bob.stream_events();
    for n in 0..20 {
        group.send_text(&format!("{n}")).await.expect("send");
    }
    bob.sync().await.expect("sync");
    // Eight events fit; the stream says how many it lost, first.
    let first = stream.next().await.expect("open");
    let Event::Lagged { missed } = first else {
        panic!("expected Lagged first, got {first:?}");
    };
    assert!(missed >= 12, "missed {missed}");
    let mut rest = Vec::new();
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(300), stream.next()).await
    {
        rest.push(event);
    }
    assert!(rest.len() <= 8, "{} events after the lag", rest.len());
    // Re-reading the store finds all twenty.
    let stored: BTreeSet<String> = views[0]
        .find_messages(&MessageQuery::new().content_types([content::TEXT]))
        .await
        .expect("page")
        .messages
        .iter()
        .filter_map(|m| m.text().map(str::to_owned))
        .collect();
    assert_eq!(stored.len(), 20);
}
