//! Multi-client scenarios through a real `LocalNode`, on real sled stores.

mod common;

use std::collections::BTreeSet;

use common::{Net, eventually, group_with, joined, texts, wallet};
use futures::StreamExt as _;
use kith::{ConversationKind, DmMode, Error, Event, GroupOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_installation_receives_and_discovery_follows_the_identity_logs() {
    let net = Net::new();
    let (aw, bw, cw) = (wallet(), wallet(), wallet());
    let a1 = net.client("a1", &aw).await;
    let a2 = net.client("a2", &aw).await;
    let b1 = net.client("b1", &bw).await;
    let b2 = net.client("b2", &bw).await;
    let c1 = net.client("c1", &cw).await;
    let c2 = net.client("c2", &cw).await;

    let group = a1
        .create_group(
            &[bw.inbox_id(), cw.inbox_id()],
            GroupOptions::default().name("six"),
        )
        .await
        .expect("create");
    // The first send checks installations first, which brings in Alice's
    // own second installation.
    group.send_text("hello").await.expect("send");
    let members = group.members().await.expect("members");
    let installations: usize = members.iter().map(|m| m.installations.len()).sum();
    assert_eq!(members.len(), 3);
    assert_eq!(installations, 6, "all installations of all three inboxes");
    for client in [&a2, &b1, &b2, &c1, &c2] {
        let conversation = joined(client, group.id()).await;
        assert_eq!(texts(&conversation).await, ["hello"], "{client:?}");
    }

    // Bob adds a third installation; discovery adds it to the group.
    let b3 = net.client("b3", &bw).await;
    a1.discover_installations().await.expect("discovery");
    let b3_group = joined(&b3, group.id()).await;
    group.send_text("welcome, b3").await.expect("send");
    assert_eq!(texts(&b3_group).await, ["welcome, b3"]);

    // Carol revokes c2; discovery removes it, and it cannot read on.
    let c2_group = c2.conversation(group.id()).await.expect("c2 group");
    c1.revoke_installation(c2.installation_id())
        .await
        .expect("revoke");
    a1.discover_installations().await.expect("discovery");
    let members = group.members().await.expect("members");
    let carol = members
        .iter()
        .find(|m| m.inbox == cw.inbox_id())
        .expect("carol is still a member");
    assert_eq!(carol.installations, vec![c1.installation_id()]);
    group.send_text("after the revocation").await.expect("send");
    let seen_by_c2 = texts(&c2_group).await;
    assert!(!seen_by_c2.iter().any(|t| t == "after the revocation"));
    assert!(!c2_group.is_active().await.expect("state"));
    let c1_group = c1.conversation(group.id()).await.expect("c1 group");
    assert!(
        texts(&c1_group)
            .await
            .iter()
            .any(|t| t == "after the revocation")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_sees_name_description_and_admins() {
    let net = Net::new();
    let (aw, bw, dw) = (wallet(), wallet(), wallet());
    let alice = net.client("alice", &aw).await;
    let bob = net.client("bob", &bw).await;
    let dave = net.client("dave", &dw).await;
    let group = alice
        .create_group(
            &[bw.inbox_id()],
            GroupOptions::default()
                .name("Book club")
                .description("One book a month"),
        )
        .await
        .expect("create");
    group.add_admin(bw.inbox_id()).await.expect("admin");
    group
        .update_description("Two books a month")
        .await
        .expect("description");
    group.add_members(&[dw.inbox_id()]).await.expect("add dave");

    let late = joined(&dave, group.id()).await;
    let metadata = late.metadata().await.expect("metadata");
    assert_eq!(metadata.name.as_deref(), Some("Book club"));
    assert_eq!(metadata.description.as_deref(), Some("Two books a month"));
    assert_eq!(metadata.admins, BTreeSet::from([bw.inbox_id()]));
    assert_eq!(metadata.super_admins, BTreeSet::from([aw.inbox_id()]));
    assert_eq!(metadata.kind, ConversationKind::Group);
    // Bob sees the same epoch as the joiner.
    let bob_group = joined(&bob, group.id()).await;
    assert_eq!(
        bob_group.epoch_state().await.expect("epoch"),
        late.epoch_state().await.expect("epoch")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_client_loses_and_duplicates_nothing() {
    let net = Net::new();
    let (aw, bw) = (wallet(), wallet());
    let alice = net.client("alice", &aw).await;
    let bob = net.client("bob", &bw).await;
    let (group, mut views) = group_with(&alice, &[&bob], GroupOptions::default()).await;
    let bob_group = views.remove(0);
    group.send_text("one").await.expect("send");
    bob_group.send_text("two").await.expect("send");
    assert_eq!(texts(&bob_group).await, ["one", "two"]);

    drop(bob_group);
    bob.shutdown().await.expect("shutdown");
    group.send_text("three").await.expect("send");
    group.send_text("four").await.expect("send");

    let bob = net.open("bob", &bw).await;
    let bob_group = bob.conversation(group.id()).await.expect("still there");
    assert_eq!(texts(&bob_group).await, ["one", "two", "three", "four"]);
    // Syncing again fetches nothing twice.
    assert_eq!(texts(&bob_group).await.len(), 4);
    bob_group
        .send_text("five")
        .await
        .expect("send after restart");
    assert_eq!(texts(&group).await, ["one", "two", "three", "four", "five"]);
    let ids: BTreeSet<_> = bob_group
        .messages()
        .await
        .expect("messages")
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(ids.len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dms_created_at_once_become_one_conversation() {
    let net = Net::new();
    let (aw, bw) = (wallet(), wallet());
    let alice = net.client("alice", &aw).await;
    let bob = net.client("bob", &bw).await;
    // The merge of concurrent DMs is the same in either mode; deniable DMs
    // add bindings on top (tests/deniable_dms.rs).
    let (a, b) = tokio::join!(
        alice.find_or_create_dm_with(bw.inbox_id(), DmMode::NonRepudiable),
        bob.find_or_create_dm_with(aw.inbox_id(), DmMode::NonRepudiable)
    );
    let (a, b) = (a.expect("alice's dm"), b.expect("bob's dm"));
    assert_eq!(a.id(), b.id(), "both sides derive the same DM id");
    alice.sync().await.expect("sync");
    bob.sync().await.expect("sync");
    for client in [&alice, &bob] {
        let conversations = client.conversations().await.expect("list");
        assert_eq!(conversations.len(), 1, "exactly one DM");
    }
    a.send_text("hi bob").await.expect("send");
    b.sync().await.expect("sync");
    b.send_text("hi alice").await.expect("send");
    assert_eq!(texts(&a).await, ["hi bob", "hi alice"]);
    assert_eq!(texts(&b).await, ["hi bob", "hi alice"]);
    // A DM takes nobody else.
    let carol = net.client("carol", &wallet()).await;
    let third = a.add_members(&[carol.inbox_id()]).await;
    assert!(
        matches!(&third, Err(Error::NotPermitted(reason)) if reason.contains("a DM cannot take other inboxes")),
        "{third:?}"
    );
    // Asking again finds it.
    let again = alice.find_or_create_dm(bw.inbox_id()).await.expect("dm");
    assert_eq!(again.id(), a.id());
    assert_eq!(
        a.metadata().await.expect("metadata").kind,
        ConversationKind::Dm
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_group_actor_restarts_from_storage() {
    let net = Net::new();
    let (aw, bw) = (wallet(), wallet());
    let alice = net.client("alice", &aw).await;
    let bob = net.client("bob", &bw).await;
    let group = alice
        .create_group(&[bw.inbox_id()], GroupOptions::default())
        .await
        .expect("create");
    group.send_text("before").await.expect("send");
    let error = group.inject_actor_panic().await;
    assert!(matches!(error, Error::Restarted(_)), "{error:?}");
    group
        .send_text("after")
        .await
        .expect("send after the restart");
    assert_eq!(group.actor_restarts().await.expect("restarts"), 1);
    let bob_group = joined(&bob, group.id()).await;
    assert_eq!(texts(&bob_group).await, ["before", "after"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stream_messages_members_and_metadata() {
    let net = Net::new();
    let (aw, bw, cw) = (wallet(), wallet(), wallet());
    let alice = net.client("alice", &aw).await;
    let bob = net.client("bob", &bw).await;
    let carol = net.client("carol", &cw).await;
    let mut events = bob.stream_events();
    let group = alice
        .create_group(&[bw.inbox_id()], GroupOptions::default())
        .await
        .expect("create");
    let bob_group = joined(&bob, group.id()).await;
    group.update_name("renamed").await.expect("rename");
    group.send_text("hello").await.expect("send");
    group
        .add_members(&[cw.inbox_id()])
        .await
        .expect("add carol");
    bob_group.sync().await.expect("sync");
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let event = tokio::time::timeout(std::time::Duration::from_secs(10), events.next())
            .await
            .expect("an event in time")
            .expect("stream open");
        // The transcript's entries come as messages too; its own test is
        // in content_types.rs.
        if !matches!(&event, Event::Message(m) if m.content_type == kith::content::GROUP_UPDATED) {
            seen.push(event);
        }
    }
    assert!(matches!(&seen[0], Event::Joined { conversation } if conversation == group.id()));
    assert!(
        matches!(&seen[1], Event::MetadataChanged { metadata, by, .. } if metadata.name.as_deref() == Some("renamed") && *by == aw.inbox_id())
    );
    assert!(matches!(&seen[2], Event::Message(m) if m.text() == Some("hello")));
    assert!(
        matches!(
            &seen[3],
            Event::MembersChanged { conversation, by, added, removed }
                if conversation == group.id()
                    && *by == aw.inbox_id()
                    && *added == [(cw.inbox_id(), carol.installation_id())]
                    && removed.is_empty()
        ),
        "{:?}",
        seen[3]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_installation_is_added_on_the_identity_push_alone() {
    let net = Net::new();
    let (aw, bw) = (wallet(), wallet());
    let alice = net.client("alice", &aw).await;
    let _bob = net.client("bob", &bw).await;
    let group = alice
        .create_group(&[bw.inbox_id()], GroupOptions::default())
        .await
        .expect("create");
    // No explicit discovery: Alice follows Bob's identity topic, and the
    // announcement of Bob's new installation triggers it.
    let bob_phone = net.client("bob-phone", &bw).await;
    eventually(&bob_phone, "the new installation joined", || async {
        bob_phone.conversation(group.id()).await.is_ok()
    })
    .await;
    group.send_text("hello, phone").await.expect("send");
    let phone_group = bob_phone.conversation(group.id()).await.expect("joined");
    assert_eq!(texts(&phone_group).await, ["hello, phone"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_who_leaves_is_removed_by_the_next_commit() {
    let net = Net::new();
    let (aw, bw, cw) = (wallet(), wallet(), wallet());
    let alice = net.client("alice", &aw).await;
    let bob = net.client("bob", &bw).await;
    let carol = net.client("carol", &cw).await;
    let (group, views) = group_with(&alice, &[&bob, &carol], GroupOptions::default()).await;
    let [bob_group, carol_group] = [&views[0], &views[1]];
    carol_group.leave().await.expect("leave");
    // Alice and Bob both see the proposal; whoever commits first removes
    // Carol, and the other's commit for the same epoch is dropped.
    group.sync().await.expect("sync");
    bob_group.sync().await.expect("sync");
    group.sync().await.expect("sync");
    carol_group.sync().await.expect("sync");
    assert!(!carol_group.is_active().await.expect("state"));
    let inboxes: Vec<_> = group
        .members()
        .await
        .expect("members")
        .into_iter()
        .map(|m| m.inbox)
        .collect();
    assert!(!inboxes.contains(&cw.inbox_id()));
    assert_eq!(inboxes.len(), 2);
    assert_eq!(
        group.epoch_state().await.expect("epoch"),
        bob_group.epoch_state().await.expect("epoch")
    );
    group.send_text("just us").await.expect("send");
    assert_eq!(texts(bob_group).await, ["just us"]);
    assert!(texts(carol_group).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_and_a_non_member_get_clear_errors() {
    let net = Net::new();
    let (aw, bw, cw) = (wallet(), wallet(), wallet());
    let alice = net.client("alice", &aw).await;
    let bob = net.client("bob", &bw).await;
    let (group, views) = group_with(&alice, &[&bob], GroupOptions::default()).await;
    let bob_group = &views[0];
    // Carol never registered: she has no installations to add.
    let unregistered = group.add_members(&[cw.inbox_id()]).await;
    assert!(
        matches!(unregistered, Err(Error::InvalidInput(_))),
        "{unregistered:?}"
    );
    let not_member = group.remove_members(&[cw.inbox_id()]).await;
    assert!(
        matches!(not_member, Err(Error::InvalidInput(_))),
        "{not_member:?}"
    );
    group
        .remove_members(&[bw.inbox_id()])
        .await
        .expect("remove bob");
    bob_group.sync().await.expect("sync");
    let after = bob_group.send_text("am I still here?").await;
    assert!(matches!(after, Err(Error::NotMember)), "{after:?}");
    // The removal settled at that sync, so Bob's copy of the group's
    // secrets is gone; the conversation stays, read-only, and still
    // answers (a sync, its state, its last members, its messages).
    bob_group.sync().await.expect("a sync of a left group");
    assert!(!bob_group.is_active().await.expect("state"));
    let members = bob_group.members().await.expect("its last members");
    assert!(members.iter().any(|m| m.inbox == aw.inbox_id()));
    assert!(bob_group.messages().await.is_ok());
    let again = bob_group.send_text("still not").await;
    assert!(matches!(again, Err(Error::NotMember)), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_wallet_signs_through_a_callback() {
    let net = Net::new();
    let external = wallet();
    let inbox = external.inbox_id();
    // The callback stands in for a wallet elsewhere; it refuses first.
    let refuse = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let gate = std::sync::Arc::clone(&refuse);
    let client = kith::Client::builder()
        .wallet_callback(inbox, move |text: String| {
            let external = external.clone();
            let refused = gate.load(std::sync::atomic::Ordering::SeqCst);
            async move {
                if refused {
                    Err("the user declined".to_owned())
                } else {
                    Ok(external.sign_personal(text.as_bytes()))
                }
            }
        })
        .data_dir(net.path("external"))
        .node(net.node.clone())
        .build()
        .await
        .expect("client");
    let declined = client.register().await;
    assert!(matches!(declined, Err(Error::Wallet(_))), "{declined:?}");
    let alice = net.client("alice", &wallet()).await;
    let nobody = alice.create_group(&[inbox], GroupOptions::default()).await;
    assert!(
        matches!(nobody, Err(Error::InvalidInput(_))),
        "nothing was registered: {nobody:?}"
    );
    assert!(
        alice.conversations().await.expect("list").is_empty(),
        "a refused creation leaves no group behind"
    );
    refuse.store(false, std::sync::atomic::Ordering::SeqCst);
    client.register().await.expect("register");
    let group = alice
        .create_group(&[inbox], GroupOptions::default())
        .await
        .expect("the external inbox can be added now");
    assert_eq!(client.inbox_id(), inbox);
    assert!(
        joined(&client, group.id())
            .await
            .is_active()
            .await
            .expect("state")
    );
}

/// A body that cannot fit in one envelope is refused before anything is
/// queued, with a message that says the limit; a body that fits is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_too_large_for_an_envelope_is_refused_before_it_is_queued() {
    let net = Net::new();
    let (aw, bw) = (wallet(), wallet());
    let alice = net.client("alice", &aw).await;
    let _bob = net.client("bob", &bw).await;
    let group = alice
        .create_group(&[bw.inbox_id()], GroupOptions::default())
        .await
        .expect("create");
    let refused = group
        .send("application/octet-stream", &vec![0u8; 2 * 1024 * 1024])
        .await
        .expect_err("a 2 MiB body leaves no room for encryption");
    match refused {
        kith::Error::InvalidInput(message) => {
            assert!(message.contains("does not fit"), "{message}");
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    assert!(
        group
            .messages()
            .await
            .expect("messages")
            .iter()
            .all(|m| m.content_type == kith::content::GROUP_UPDATED),
        "nothing was queued"
    );
    // Small enough to keep sled 0.34's IO threads clear of the stall that
    // large values can cause (see storage/src/mls_storage.rs).
    group
        .send("application/octet-stream", &vec![0u8; 64 * 1024])
        .await
        .expect("64 KiB fits");
    let sent: Vec<_> = group
        .messages()
        .await
        .expect("messages")
        .into_iter()
        .filter(|m| m.content_type != kith::content::GROUP_UPDATED)
        .collect();
    assert_eq!(sent.len(), 1);
}

/// Identity logs are asked for in requests the node accepts: against a
/// node that answers at most two inboxes at once, a group of five is
/// made, and a member joins it (it reads every member's log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_logs_are_fetched_in_requests_within_the_nodes_limit() {
    use kith_transport::node::{NodeConfig, NodeLimits};
    let net = Net::with_config(NodeConfig {
        limits: NodeLimits {
            max_identity_inboxes: 2,
            ..NodeLimits::default()
        },
        ..NodeConfig::new(1)
    });
    let wallets: Vec<_> = (0..5).map(|_| wallet()).collect();
    let mut clients = Vec::new();
    for (i, w) in wallets.iter().enumerate() {
        clients.push(net.client(&format!("c{i}"), w).await);
    }
    let others: Vec<_> = clients[1..].iter().collect();
    let (group, views) = group_with(&clients[0], &others, GroupOptions::default()).await;
    group.send_text("five").await.expect("send");
    for view in &views {
        assert_eq!(texts(view).await, ["five"]);
    }
}
