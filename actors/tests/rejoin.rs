//! Fork healing through the actors: a member's rejoin request reaches the
//! group actor of another member, which fetches a key package for it and
//! re-adds it; the requester's actors join again from the Welcome, and the
//! conversation goes on.
//!
//! A single `LocalNode` orders strongly, so no member forks by itself here:
//! the test publishes the request Bob's installation would send from a
//! fork, signed with his installation key, naming the commit that Alice
//! applied (what a forked member names). Everything after that is the
//! actors' own doing.

mod common;

use std::time::Duration;

use common::{Net, group_with, texts, wallet};
use futures::StreamExt as _;
use kith::{Client, ConversationId, Event};
use kith_engine::{
    delivery::{Cursor, Topic},
    group::{ClientStore, Group, IdentityCache, Me, RejoinRequest},
    identity::{InboxId, InstallationKeys, InstallationStore as _},
};
use kith_storage::KithProvider;
use kith_transport::client::DeliveryClient as _;
use openmls::prelude::{ContentType, MlsMessageIn, tls_codec::Deserialize as _};
use openmls_traits::OpenMlsProvider as _;

/// Bob's installation keys, read from his store while his client is down.
fn installation_keys(net: &Net, name: &str) -> InstallationKeys {
    KithProvider::open(net.path(name).join("kith.sled"))
        .expect("open the store")
        .storage()
        .load_installation()
        .expect("read")
        .expect("keys stored")
}

/// The rejoin request Bob's installation would send from a fork: signed
/// with `keys`, naming the commit that left epoch 0 (the one that added
/// him, which every member on the canonical branch applied).
async fn rejoin_request(
    net: &Net,
    group_id: &[u8],
    inbox: InboxId,
    keys: &InstallationKeys,
    epoch: u64,
) -> Vec<u8> {
    let topic = Topic::Group(group_id.to_vec());
    let page = net
        .node
        .query(&topic, &Cursor::new(), 0)
        .await
        .expect("query");
    let commit = page
        .envelopes
        .iter()
        .find(|e| {
            MlsMessageIn::tls_deserialize_exact(e.payload.as_slice())
                .ok()
                .and_then(|m| m.try_into_protocol_message().ok())
                .is_some_and(|p| p.content_type() == ContentType::Commit && p.epoch().as_u64() == 0)
        })
        .expect("the commit that added Bob");
    #[allow(clippy::disallowed_methods)]
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .expect("clock");
    RejoinRequest {
        group_id: group_id.to_vec(),
        inbox,
        installation: keys.id(),
        epoch,
        time_ms: now_ms,
        evidence_epoch: 0,
        evidence_key: commit.order_key(),
    }
    .sign(keys)
}

/// Read `events` until the group's `Rejoined`, syncing `client` between
/// tries; returns the epoch it rejoined at and whether `Removed` came
/// first.
async fn until_rejoined(
    client: &Client,
    events: &mut (impl futures::Stream<Item = Event> + Unpin),
    id: &ConversationId,
) -> (u64, bool) {
    let mut removed = false;
    loop {
        client.sync().await.expect("sync");
        let event = tokio::time::timeout(Duration::from_secs(10), events.next())
            .await
            .expect("events until the rejoin")
            .expect("stream open");
        match event {
            Event::Removed { conversation } if conversation == *id => removed = true,
            Event::Rejoined {
                conversation,
                epoch,
            } if conversation == *id => return (epoch, removed),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_asks_is_re_added_and_joins_again() {
    let net = Net::new();
    let (aw, bw) = (wallet(), wallet());
    let alice = net.client("alice", &aw).await;
    let bob = net.client("bob", &bw).await;
    let (group, views) = group_with(&alice, &[&bob], Default::default()).await;
    let group_id = group.id().0.clone();
    drop(views);

    // Bob's installation key, from his store (his client is down while it
    // is read, and comes back with the same store).
    bob.shutdown().await.expect("shutdown");
    let keys = installation_keys(&net, "bob");
    let bob = net.open("bob", &bw).await;
    let mut bob_events = bob.stream_events();
    let (before_epoch, _) = group.epoch_state().await.expect("epoch");
    let request = rejoin_request(&net, &group_id, bw.inbox_id(), &keys, before_epoch).await;
    let topic = Topic::Group(group_id.clone());
    net.node
        .publish(vec![(topic, request)])
        .await
        .expect("publish the request");

    // Alice's group actor hears it, fetches a key package of Bob's and
    // re-adds him: his leaf is replaced in one commit.
    group.sync().await.expect("sync");
    let (after_epoch, _) = group.epoch_state().await.expect("epoch");
    assert_eq!(after_epoch, before_epoch + 1, "one commit re-added Bob");
    let members = group.members().await.expect("members");
    let bobs = members
        .iter()
        .find(|m| m.inbox == bw.inbox_id())
        .expect("Bob is still a member");
    assert_eq!(bobs.installations, vec![keys.id()]);

    // Bob's actors process the commit that removed his old leaf and the
    // Welcome into the new one, in whatever order they come, and he is in
    // the group again.
    let (rejoined_at, removed) = until_rejoined(&bob, &mut bob_events, group.id()).await;
    assert!(removed, "the re-add removed the leaf Bob had");
    assert_eq!(rejoined_at, after_epoch);
    let bob_group = bob.conversation(group.id()).await.expect("Bob's view");
    assert!(bob_group.is_active().await.expect("state"));
    assert_eq!(
        bob_group.epoch_state().await.expect("epoch"),
        group.epoch_state().await.expect("epoch")
    );

    // The conversation goes on, both ways.
    group.send_text("welcome back").await.expect("send");
    assert_eq!(texts(&bob_group).await, ["welcome back"]);
    bob_group.send_text("thanks").await.expect("send");
    assert_eq!(texts(&group).await, ["welcome back", "thanks"]);

    // The request is answered once: heard again (a replay), it is skipped.
    let again = net
        .node
        .query(&Topic::Group(group_id.clone()), &Cursor::new(), 0)
        .await
        .expect("query")
        .envelopes
        .into_iter()
        .find(|e| RejoinRequest::is_request(&e.payload))
        .expect("the request");
    net.node
        .publish(vec![(Topic::Group(group_id), again.payload)])
        .await
        .expect("replay the request");
    group.sync().await.expect("sync");
    assert_eq!(
        group.epoch_state().await.expect("epoch").0,
        after_epoch,
        "a request the re-add answered is not answered again"
    );
}

/// The re-add's Welcome reaches Bob while his old leaf is still in use (the
/// commit that removes it comes later): he keeps it, and once the commit
/// removes him, his group actor joins again from the kept Welcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_welcome_that_came_first_rejoins_through_the_group_actor() {
    let net = Net::new();
    let (aw, bw) = (wallet(), wallet());
    let alice = net.client("alice", &aw).await;
    let bob = net.client("bob", &bw).await;
    let (group, views) = group_with(&alice, &[&bob], Default::default()).await;
    let group_id = group.id().0.clone();
    drop(views);
    bob.shutdown().await.expect("shutdown");
    let keys = installation_keys(&net, "bob");
    let (before_epoch, _) = group.epoch_state().await.expect("epoch");
    let request = rejoin_request(&net, &group_id, bw.inbox_id(), &keys, before_epoch).await;
    net.node
        .publish(vec![(Topic::Group(group_id.clone()), request)])
        .await
        .expect("publish the request");
    group.sync().await.expect("sync");
    assert_eq!(
        group.epoch_state().await.expect("epoch").0,
        before_epoch + 1
    );

    // While Bob's client is down, his engine meets the Welcome first, on
    // his own store: he is still a member, so it is kept for later.
    {
        let provider = KithProvider::open(net.path("bob").join("kith.sled")).expect("open");
        let storage = provider.storage();
        let store = ClientStore(storage);
        let mut identities = IdentityCache::new();
        for log in store.all_identity_updates().expect("logs") {
            let inbox = log[0].unsigned.inbox;
            identities.extend(inbox, log).expect("verified before");
        }
        let topic = Topic::Welcome(keys.id());
        let mut cursor = store.cursor(&topic).expect("cursor");
        let page = net.node.query(&topic, &cursor, 0).await.expect("query");
        let welcome = page.envelopes.last().expect("the re-add's Welcome");
        let step = storage.begin_step().expect("step");
        let me = Me {
            inbox: bw.inbox_id(),
            keys: &keys,
        };
        let joined = Group::join(
            &provider,
            storage,
            me,
            &identities,
            &welcome.payload,
            welcome.originator_time_ms,
        )
        .expect("a Welcome for a later epoch");
        assert!(joined.is_none(), "still a member: the Welcome is kept");
        for envelope in &page.envelopes {
            cursor.advance(envelope);
        }
        store.put_cursor(&topic, &cursor).expect("cursor");
        step.commit().expect("commit");
        assert_eq!(
            store.deferred_welcomes(&group_id).expect("kept").len(),
            1,
            "kept for when the leaf is removed"
        );
    }

    // Back online, Bob's group actor reads the commit that removes his
    // leaf, and joins again from the Welcome it kept.
    let bob = net.open("bob", &bw).await;
    let mut bob_events = bob.stream_events();
    let (rejoined_at, removed) = until_rejoined(&bob, &mut bob_events, group.id()).await;
    assert!(removed, "the commit removed the leaf first");
    assert_eq!(rejoined_at, before_epoch + 1);
    let bob_group = bob.conversation(group.id()).await.expect("Bob's view");
    assert_eq!(
        bob_group.epoch_state().await.expect("epoch"),
        group.epoch_state().await.expect("epoch")
    );
    group.send_text("welcome back").await.expect("send");
    assert_eq!(texts(&bob_group).await, ["welcome back"]);
}
