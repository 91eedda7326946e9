//! Conversations migrated from an older protocol (issue 23, item 1): the
//! legacy conversation id and its metadata, fixed at creation, seen by
//! every member, and found by the id; a legacy DM migrated by both of its
//! sides at once ends as one conversation.

mod common;

use std::collections::BTreeMap;

use common::{Net, group_with, texts, wallet};
use kith::{ConversationKind, DmMode, Error, GroupOptions, LegacyConversation};

fn legacy(id: &str) -> LegacyConversation {
    LegacyConversation {
        id: id.into(),
        metadata: BTreeMap::from([
            ("conversation_type".into(), "v2".into()),
            ("topic".into(), format!("/xmtp/0/m-{id}/proto")),
        ]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migrated_group_carries_its_legacy_id_and_is_found_by_it() {
    let net = Net::new();
    let alice = net.client("alice", &wallet()).await;
    let bob = net.client("bob", &wallet()).await;
    let carol = net.client("carol", &wallet()).await;
    let (group, views) = group_with(
        &alice,
        &[&bob],
        GroupOptions::default()
            .name("Old friends")
            .migrated_from(legacy("v2-group-7")),
    )
    .await;
    // Every member sees the legacy id and metadata, as created.
    for (who, conversation) in [("alice", &group), ("bob", &views[0])] {
        let metadata = conversation.metadata().await.expect("metadata");
        assert_eq!(metadata.legacy, Some(legacy("v2-group-7")), "{who}");
        assert_eq!(metadata.name.as_deref(), Some("Old friends"), "{who}");
    }
    // Both find it by the legacy id; an id nobody migrated finds nothing.
    for client in [&alice, &bob] {
        let found = client
            .conversation_by_legacy_id("v2-group-7")
            .await
            .expect("lookup")
            .expect("found by its legacy id");
        assert_eq!(found.id(), group.id());
        assert!(
            client
                .conversation_by_legacy_id("v2-group-8")
                .await
                .expect("lookup")
                .is_none()
        );
    }
    // A later member (added by a commit, joining from a Welcome) sees it
    // too: it is in the group context every Welcome carries.
    group
        .add_members(&[carol.inbox_id()])
        .await
        .expect("add carol");
    carol.sync().await.expect("sync");
    let carols = carol
        .conversation_by_legacy_id("v2-group-7")
        .await
        .expect("lookup")
        .expect("carol finds it");
    assert_eq!(
        carols.metadata().await.expect("metadata").legacy,
        Some(legacy("v2-group-7"))
    );
    // Changing attributes leaves it alone.
    group.update_name("Older friends").await.expect("rename");
    views[0].sync().await.expect("sync");
    let metadata = views[0].metadata().await.expect("metadata");
    assert_eq!(metadata.name.as_deref(), Some("Older friends"));
    assert_eq!(metadata.legacy, Some(legacy("v2-group-7")));
    // A group that migrated nothing has no legacy id.
    let plain = alice
        .create_group(&[bob.inbox_id()], GroupOptions::default())
        .await
        .expect("create");
    assert_eq!(plain.metadata().await.expect("metadata").legacy, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_migrating_a_legacy_dm_at_once_end_in_one_conversation() {
    let net = Net::new();
    let (aw, bw) = (wallet(), wallet());
    let alice = net.client("alice", &aw).await;
    let bob = net.client("bob", &bw).await;
    let (a, b) = tokio::join!(
        alice.migrate_dm(bw.inbox_id(), DmMode::NonRepudiable, legacy("v2-dm-1")),
        bob.migrate_dm(aw.inbox_id(), DmMode::NonRepudiable, legacy("v2-dm-1"))
    );
    let (a, b) = (a.expect("alice migrates"), b.expect("bob migrates"));
    assert_eq!(a.id(), b.id(), "one conversation id for the pair");
    alice.sync().await.expect("sync");
    bob.sync().await.expect("sync");
    for client in [&alice, &bob] {
        let conversations = client.conversations().await.expect("list");
        assert_eq!(conversations.len(), 1, "exactly one conversation");
        let metadata = conversations[0].metadata().await.expect("metadata");
        assert_eq!(metadata.kind, ConversationKind::Dm);
        assert_eq!(metadata.legacy, Some(legacy("v2-dm-1")));
        let found = client
            .conversation_by_legacy_id("v2-dm-1")
            .await
            .expect("lookup")
            .expect("found");
        assert_eq!(found.id(), a.id());
    }
    a.send_text("migrated!").await.expect("send");
    b.sync().await.expect("sync");
    b.send_text("here too").await.expect("send");
    assert_eq!(texts(&a).await, ["migrated!", "here too"]);
    assert_eq!(texts(&b).await, ["migrated!", "here too"]);
    // Migrating again finds the same conversation.
    let again = alice
        .migrate_dm(bw.inbox_id(), DmMode::NonRepudiable, legacy("v2-dm-1"))
        .await
        .expect("again");
    assert_eq!(again.id(), a.id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_id_out_of_bounds_is_refused_before_anything_is_sent() {
    let net = Net::new();
    let alice = net.client("alice", &wallet()).await;
    let bob = net.client("bob", &wallet()).await;
    for bad in [
        LegacyConversation {
            id: String::new(),
            metadata: BTreeMap::new(),
        },
        LegacyConversation {
            id: "x".repeat(257),
            metadata: BTreeMap::new(),
        },
        LegacyConversation {
            id: "ok".into(),
            metadata: BTreeMap::from([("k".into(), "v".repeat(1025))]),
        },
    ] {
        let refused = alice
            .create_group(
                &[bob.inbox_id()],
                GroupOptions::default().migrated_from(bad.clone()),
            )
            .await;
        assert!(
            matches!(&refused, Err(Error::InvalidInput(_))),
            "{bad:?}: {refused:?}"
        );
    }
    assert!(alice.conversations().await.expect("list").is_empty());
}
