//! Deniable DMs through the client and a real `LocalNode` on sled: the
//! node's deniable pools, creation from them, bindings between every
//! installation pair, held and released messages, and the mode and
//! verification state on the conversation.

mod common;

use std::time::Duration;

use common::{Net, texts, wallet};
use futures::StreamExt as _;
use kith::{Client, Conversation, DmMode, DmVerification, Error, Event};
use kith_engine::identity::{InstallationKeys, UnsignedIdentityUpdate};
use kith_transport::client::DeliveryClient as _;

/// Sync every client until `done` holds (bindings take a few round trips).
async fn until<F, Fut>(clients: &[&Client], what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        for client in clients {
            client.sync().await.expect("sync");
        }
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

async fn verified(conversation: &Conversation) -> bool {
    conversation.verification().await.expect("verification") == Some(DmVerification::Verified)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deniable_dm_binds_every_installation_then_delivers() {
    let net = Net::new();
    let (aw, bw) = (wallet(), wallet());
    let alice = net.client("alice", &aw).await;
    // Bob's installations register (and upload their packages), then stay
    // offline until Alice has written, so that none can bind before.
    for name in ["bob", "bob-phone"] {
        let offline = net.client(name, &bw).await;
        offline.shutdown().await.expect("shutdown");
    }
    let mut alice_events = alice.stream_events();

    // Deniable is the default for DMs.
    let dm = alice.find_or_create_dm(bw.inbox_id()).await.expect("dm");
    assert_eq!(dm.dm_mode().await.expect("mode"), Some(DmMode::Deniable));
    assert_eq!(
        dm.verification().await.expect("verification"),
        Some(DmVerification::Pending)
    );
    // Written before Bob's installations proved who they are: held.
    dm.send_text("hi bob").await.expect("send");
    let held = dm.messages().await.expect("messages");
    assert_eq!(held.len(), 1);
    assert!(!held[0].published, "held until every leaf is bound");
    let bob = net.open("bob", &bw).await;
    let bob_phone = net.open("bob-phone", &bw).await;

    let clients = [&alice, &bob, &bob_phone];
    until(
        &clients,
        "both of Bob's installations have the message",
        || async {
            for client in [&bob, &bob_phone] {
                let Ok(view) = client.conversation(dm.id()).await else {
                    return false;
                };
                let messages = view.messages().await.expect("messages");
                if !verified(&view).await || messages.len() != 1 || !messages[0].verified {
                    return false;
                }
            }
            verified(&dm).await
        },
    )
    .await;

    for client in [&bob, &bob_phone] {
        let view = client.conversation(dm.id()).await.expect("joined");
        assert_eq!(view.dm_mode().await.expect("mode"), Some(DmMode::Deniable));
        let messages = view.messages().await.expect("messages");
        assert_eq!(messages[0].text(), Some("hi bob"));
        assert_eq!(messages[0].sender, aw.inbox_id(), "the sender, once bound");
        assert_eq!(messages[0].sender_installation, alice.installation_id());
    }
    assert!(dm.messages().await.expect("messages")[0].published);
    // Members are known through their bindings: both inboxes, and Bob's
    // two installations.
    let members = dm.members().await.expect("members");
    assert_eq!(members.len(), 2);
    let bobs = members
        .iter()
        .find(|m| m.inbox == bw.inbox_id())
        .expect("bob is a member");
    assert_eq!(
        bobs.installations.len(),
        2,
        "every installation of Bob is in the DM"
    );

    // Bob answers from his phone; Alice sees it, verified.
    let phone_view = bob_phone.conversation(dm.id()).await.expect("joined");
    phone_view.send_text("hi alice").await.expect("send");
    assert_eq!(texts(&dm).await, ["hi bob", "hi alice"]);
    let answer = &dm.messages().await.expect("messages")[1];
    assert!(answer.verified);
    assert_eq!(answer.sender_installation, bob_phone.installation_id());

    // Alice was told each of Bob's installations verified, once: a message
    // she sends afterwards is her marker, and nothing else of the kind
    // comes before it.
    dm.send_text("marker").await.expect("send");
    let mut seen = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), alice_events.next())
            .await
            .expect("events until the marker")
            .expect("stream open");
        match event {
            Event::MemberVerified {
                conversation,
                inbox,
                installation,
            } => {
                assert_eq!(&conversation, dm.id());
                assert_eq!(inbox, bw.inbox_id());
                seen.push(installation);
            }
            Event::Message(message) if message.text() == Some("marker") => break,
            _ => {}
        }
    }
    seen.sort();
    let mut expected = vec![bob.installation_id(), bob_phone.installation_id()];
    expected.sort();
    assert_eq!(seen, expected);

    // Asking again finds the same DM, whatever mode is asked for.
    let again = alice
        .find_or_create_dm_with(bw.inbox_id(), DmMode::NonRepudiable)
        .await
        .expect("dm");
    assert_eq!(again.id(), dm.id());
    assert_eq!(again.dm_mode().await.expect("mode"), Some(DmMode::Deniable));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_repudiable_dm_is_chosen_explicitly_and_needs_no_bindings() {
    let net = Net::new();
    let (aw, bw) = (wallet(), wallet());
    let alice = net.client("alice", &aw).await;
    let bob = net.client("bob", &bw).await;
    let dm = alice
        .find_or_create_dm_with(bw.inbox_id(), DmMode::NonRepudiable)
        .await
        .expect("dm");
    assert_eq!(
        dm.dm_mode().await.expect("mode"),
        Some(DmMode::NonRepudiable)
    );
    assert_eq!(dm.verification().await.expect("verification"), None);
    dm.send_text("signed").await.expect("send");
    assert!(
        dm.messages().await.expect("messages")[0].published,
        "nothing to wait for"
    );
    let view = common::joined(&bob, dm.id()).await;
    assert_eq!(texts(&view).await, ["signed"]);
    assert!(view.messages().await.expect("messages")[0].verified);
    // A group is neither.
    let group = alice
        .create_group(&[bw.inbox_id()], kith::GroupOptions::default())
        .await
        .expect("group");
    assert_eq!(group.dm_mode().await.expect("mode"), None);
    assert_eq!(group.verification().await.expect("verification"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dm_with_a_peer_without_key_packages_fails_and_leaves_nothing() {
    let net = Net::new();
    let alice = net.client("alice", &wallet()).await;
    // Bob's installation is in his identity log, but it never uploaded a
    // key package of either kind (an old client, say).
    let bw = wallet();
    let keys = InstallationKeys::generate(&mut rand_core::OsRng);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64;
    let update = UnsignedIdentityUpdate::add_installation(bw.inbox_id(), &keys, 1, now_ms);
    let signature = bw.sign_personal(update.signature_text().as_bytes());
    net.node
        .publish_identity_update(update.sign(signature, Some(&keys)))
        .await
        .expect("register bob's installation");

    for mode in [DmMode::Deniable, DmMode::NonRepudiable] {
        let refused = alice.find_or_create_dm_with(bw.inbox_id(), mode).await;
        assert!(
            matches!(&refused, Err(Error::InvalidInput(m)) if m.contains("key package")),
            "{mode:?}: {refused:?}"
        );
    }
    assert!(
        alice.conversations().await.expect("list").is_empty(),
        "no half-made DM is left for find_or_create_dm to find"
    );
}
