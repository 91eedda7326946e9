//! Policies: a member's own client refuses forbidden changes, and commits
//! made by hand that break the rules are rejected by every receiver, whose
//! state stays as it was.

mod common;

use common::{Net, group_with, texts, wallet};
use futures::StreamExt as _;
use kith::{Client, Conversation, Error, Event, GroupOptions};
use kith_engine::{
    delivery::Topic,
    group::{
        GroupMetadata,
        metadata::{ATTRIBUTE_DESCRIPTION, ATTRIBUTE_NAME},
    },
    identity::InstallationStore as _,
};
use kith_storage::KithProvider;
use kith_transport::client::DeliveryClient as _;
use openmls::prelude::{GroupId, KeyPackage, LeafNodeIndex, MlsGroup, tls_codec::Serialize as _};
use openmls_traits::OpenMlsProvider as _;

/// What a hand-made commit carries besides its metadata.
#[derive(Default)]
struct Forged {
    removals: Vec<LeafNodeIndex>,
    adds: Vec<KeyPackage>,
}

/// Make a commit by hand from the state in `dir`: `edit` gets the group
/// and its current metadata, changes the metadata, and says what else the
/// commit carries.
fn forge(
    dir: &std::path::Path,
    group_id: &[u8],
    edit: impl FnOnce(&MlsGroup, &mut GroupMetadata) -> Forged,
) -> Vec<u8> {
    let provider = KithProvider::open(dir.join("kith.sled")).expect("open the store");
    let keys = provider
        .storage()
        .load_installation()
        .expect("keys")
        .expect("keys stored");
    let mut group = MlsGroup::load(provider.storage(), &GroupId::from_slice(group_id))
        .expect("load")
        .expect("group stored");
    let mut metadata = GroupMetadata::from_extensions(group.extensions()).expect("metadata");
    let forged = edit(&group, &mut metadata);
    let bundle = group
        .commit_builder()
        .propose_removals(forged.removals)
        .propose_adds(forged.adds)
        .propose_group_context_extensions(metadata.to_extensions())
        .expect("extensions")
        .load_psks(provider.storage())
        .expect("psks")
        .build(provider.rand(), provider.crypto(), &keys, |_| true)
        .expect("build")
        .stage_commit(&provider)
        .expect("stage");
    bundle.commit().tls_serialize_detached().expect("serialize")
}

/// Publish a hand-made commit to the group and have each receiver sync:
/// every one must stay in the epoch it was in, and say it rejected the
/// commit for a reason containing `why` (not for any other: a forgery that
/// does not even decrypt proves nothing about the policy).
async fn deliver_rejected(
    net: &Net,
    receivers: &[(&Client, &Conversation)],
    commit: Vec<u8>,
    why: &str,
) {
    let group_id = receivers[0].1.id().0.clone();
    let mut before = Vec::new();
    for (client, receiver) in receivers {
        before.push((
            receiver.epoch_state().await.expect("epoch"),
            client.stream_events(),
        ));
    }
    net.node
        .publish(vec![(Topic::Group(group_id), commit)])
        .await
        .expect("publish");
    for ((_, receiver), (before, mut events)) in receivers.iter().zip(before) {
        receiver.sync().await.expect("sync");
        assert_eq!(
            receiver.epoch_state().await.expect("epoch"),
            before,
            "the receiver did not move"
        );
        let reason = loop {
            let event = tokio::time::timeout(std::time::Duration::from_secs(10), events.next())
                .await
                .expect("the rejection is reported")
                .expect("stream open");
            if let Event::CommitRejected {
                conversation,
                reason,
            } = event
                && &conversation == receiver.id()
            {
                break reason;
            }
        };
        assert!(
            reason.contains(why),
            "rejected for {reason:?}, not for {why:?}"
        );
    }
}

/// Whether `result` is the client's own refusal, for a reason containing
/// `why`.
fn refused_for(result: &Result<(), Error>, why: &str) -> bool {
    matches!(result, Err(Error::NotPermitted(reason)) if reason.contains(why))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_admin_cannot_remove_in_an_admins_only_group() {
    let net = Net::new();
    let (aw, bw, cw) = (wallet(), wallet(), wallet());
    let alice = net.client("alice", &aw).await;
    let bob = net.client("bob", &bw).await;
    let carol = net.client("carol", &cw).await;
    let (group, mut views) = group_with(
        &alice,
        &[&bob, &carol],
        GroupOptions::default().admins_only(),
    )
    .await;
    let (carol_group, bob_group) = (views.remove(1), views.remove(0));
    let before = group.epoch_state().await.expect("epoch");

    // Bob's own client refuses, and publishes nothing.
    let refused = bob_group.remove_members(&[cw.inbox_id()]).await;
    assert!(
        refused_for(&refused, "may not remove members"),
        "{refused:?}"
    );
    assert_eq!(group.epoch_state().await.expect("epoch"), before);

    // A commit Bob makes by hand is rejected by everyone else.
    drop(bob_group);
    bob.shutdown().await.expect("shutdown");
    let carol_leaf = |group: &MlsGroup| {
        group
            .members()
            .find(|m| m.signature_key == carol.installation_id().as_bytes().to_vec())
            .expect("carol's leaf")
            .index
    };
    let mut alice_events = alice.stream_events();
    let commit = forge(&net.path("bob"), &group.id().0, |g, metadata| {
        metadata.membership.remove(&cw.inbox_id());
        Forged {
            removals: vec![carol_leaf(g)],
            ..Forged::default()
        }
    });
    deliver_rejected(
        &net,
        &[(&alice, &group), (&carol, &carol_group)],
        commit,
        "may not remove members",
    )
    .await;
    assert_eq!(group.epoch_state().await.expect("epoch"), before);
    assert!(carol_group.is_active().await.expect("state"));
    let event = tokio::time::timeout(std::time::Duration::from_secs(10), alice_events.next())
        .await
        .expect("an event")
        .expect("stream");
    assert!(
        matches!(&event, Event::CommitRejected { reason, .. } if reason.contains("may not remove")),
        "{event:?}"
    );
    // The group goes on.
    group.send_text("still here").await.expect("send");
    assert_eq!(texts(&carol_group).await, ["still here"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_mixing_allowed_and_forbidden_changes_is_rejected_whole() {
    let net = Net::new();
    let (aw, bw, cw) = (wallet(), wallet(), wallet());
    let alice = net.client("alice", &aw).await;
    let bob = net.client("bob", &bw).await;
    let carol = net.client("carol", &cw).await;
    // Default policies: any member may edit attributes; only super admins
    // manage admins.
    let (group, mut views) = group_with(
        &alice,
        &[&bob, &carol],
        GroupOptions::default().name("club").description("original"),
    )
    .await;
    let (carol_group, bob_group) = (views.remove(1), views.remove(0));
    let refused = bob_group.add_admin(bw.inbox_id()).await;
    assert!(
        refused_for(&refused, "may not manage admins"),
        "{refused:?}"
    );
    drop(bob_group);
    bob.shutdown().await.expect("shutdown");

    // Bob's hand-made commit: a description change he may make, plus
    // making himself an admin, which he may not.
    let commit = forge(&net.path("bob"), &group.id().0, |_, metadata| {
        metadata
            .mutable
            .attributes
            .insert(ATTRIBUTE_DESCRIPTION.into(), "rewritten".into());
        metadata.mutable.admins.insert(bw.inbox_id());
        Forged::default()
    });
    deliver_rejected(
        &net,
        &[(&alice, &group), (&carol, &carol_group)],
        commit,
        "may not manage admins",
    )
    .await;
    for conversation in [&group, &carol_group] {
        let metadata = conversation.metadata().await.expect("metadata");
        assert_eq!(metadata.description.as_deref(), Some("original"));
        assert!(metadata.admins.is_empty());
    }
    // The allowed change alone goes through, from a member's own client.
    carol_group
        .update_description("rewritten by carol")
        .await
        .expect("members may edit attributes");
    group.sync().await.expect("sync");
    assert_eq!(
        group
            .metadata()
            .await
            .expect("metadata")
            .description
            .as_deref(),
        Some("rewritten by carol")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_metadata_change_is_rejected_by_every_receiver() {
    let net = Net::new();
    let (aw, bw, cw) = (wallet(), wallet(), wallet());
    let alice = net.client("alice", &aw).await;
    let bob = net.client("bob", &bw).await;
    let carol = net.client("carol", &cw).await;
    let (group, mut views) = group_with(
        &alice,
        &[&bob, &carol],
        GroupOptions::default().name("official").admins_only(),
    )
    .await;
    let (carol_group, bob_group) = (views.remove(1), views.remove(0));
    let refused = bob_group.update_name("hijacked").await;
    assert!(
        refused_for(&refused, "may not change the attribute \"name\""),
        "{refused:?}"
    );
    let too_long = group.update_name(&"n".repeat(257)).await;
    assert!(
        matches!(too_long, Err(Error::InvalidInput(_))),
        "{too_long:?}"
    );
    drop(bob_group);
    bob.shutdown().await.expect("shutdown");

    let commit = forge(&net.path("bob"), &group.id().0, |_, metadata| {
        metadata
            .mutable
            .attributes
            .insert(ATTRIBUTE_NAME.into(), "hijacked".into());
        Forged::default()
    });
    deliver_rejected(
        &net,
        &[(&alice, &group), (&carol, &carol_group)],
        commit,
        "may not change the attribute \"name\"",
    )
    .await;
    for conversation in [&group, &carol_group] {
        let metadata = conversation.metadata().await.expect("metadata");
        assert_eq!(metadata.name.as_deref(), Some("official"));
    }
    // A legitimate change still goes through afterwards.
    group.update_name("official, v2").await.expect("rename");
    carol_group.sync().await.expect("sync");
    assert_eq!(
        carol_group
            .metadata()
            .await
            .expect("metadata")
            .name
            .as_deref(),
        Some("official, v2")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn super_admins_change_policies_and_others_cannot() {
    use kith::{Permission, Policies, PolicyPreset};

    let net = Net::new();
    let (aw, bw, cw) = (wallet(), wallet(), wallet());
    let alice = net.client("alice", &aw).await;
    let bob = net.client("bob", &bw).await;
    let carol = net.client("carol", &cw).await;
    let (group, mut views) = group_with(&alice, &[&bob], GroupOptions::default()).await;
    let bob_group = views.remove(0);

    // Bob may not change the policies; Alice (the super admin) may.
    let mut open = Policies::preset(PolicyPreset::Default);
    open.remove_member = Permission::Allow;
    let refused = bob_group.set_policies(open.clone()).await;
    assert!(
        refused_for(&refused, "may not change policies"),
        "{refused:?}"
    );
    let mut closed = Policies::preset(PolicyPreset::Default);
    closed.add_member = Permission::SuperAdminOnly;
    group.set_policies(closed).await.expect("super admin");
    bob_group.sync().await.expect("sync");
    // Under the new policy Bob can no longer add anyone.
    let refused = bob_group.add_members(&[carol.inbox_id()]).await;
    assert!(refused_for(&refused, "may not add members"), "{refused:?}");
    group
        .add_members(&[carol.inbox_id()])
        .await
        .expect("alice adds");
    assert_eq!(group.members().await.expect("members").len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cannot_slip_in_a_device_that_is_not_in_the_identity_log() {
    use kith_engine::identity::{DEFAULT_LIFETIME_SECS, InstallationKeys, generate_key_package};

    let net = Net::new();
    let (aw, bw, cw) = (wallet(), wallet(), wallet());
    let alice = net.client("alice", &aw).await;
    let bob = net.client("bob", &bw).await;
    let carol = net.client("carol", &cw).await;
    let (group, views) = group_with(&alice, &[&bob, &carol], GroupOptions::default()).await;
    drop(views);
    bob.shutdown().await.expect("shutdown");

    // Bob makes a key package that claims to be one of Carol's devices, for
    // a key that Carol's wallet never registered, and commits it.
    let rogue = InstallationKeys::generate(&mut rand_core::OsRng);
    #[allow(clippy::disallowed_methods)]
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .expect("clock");
    let provider = openmls_rust_crypto::OpenMlsRustCrypto::default();
    let key_package = generate_key_package(
        &provider,
        &rogue,
        cw.inbox_id(),
        now,
        DEFAULT_LIFETIME_SECS,
        false,
    )
    .expect("key package");
    let commit = forge(&net.path("bob"), &group.id().0, |_, _| Forged {
        adds: vec![key_package],
        ..Forged::default()
    });
    let mut events = alice.stream_events();
    deliver_rejected(
        &net,
        &[(&alice, &group)],
        commit,
        "is not active in the identity log",
    )
    .await;
    let members = group.members().await.expect("members");
    let carol_devices = members
        .iter()
        .find(|m| m.inbox == cw.inbox_id())
        .map(|m| m.installations.clone())
        .expect("carol");
    assert_eq!(carol_devices, vec![carol.installation_id()]);
    let event = tokio::time::timeout(std::time::Duration::from_secs(10), events.next())
        .await
        .expect("an event")
        .expect("stream");
    assert!(
        matches!(&event, Event::CommitRejected { reason, .. }
            if reason.contains("not active in the identity log")),
        "{event:?}"
    );
}
