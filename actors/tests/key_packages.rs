//! The KeyPackageManager keeps the pool on the node at its target: it asks
//! the node for the count instead of assuming an empty pool, so restarts do
//! not pile up packages (each of which keeps a private key on the device).

mod common;

use common::{Net, wallet};
use kith_engine::identity::InstallationStore as _;
use kith_storage::KithProvider;
use kith_transport::{
    client::DeliveryClient as _,
    node::{KeyPackageUpload, upload_signed_bytes},
};
use openmls_traits::OpenMlsProvider as _;

/// The one-time packages the node holds for the installation stored in
/// `dir` (an empty, signed upload answers with the count).
async fn pool(net: &Net, name: &str) -> usize {
    let keys = {
        let provider = KithProvider::open(net.path(name).join("kith.sled")).expect("open");
        provider
            .storage()
            .load_installation()
            .expect("keys")
            .expect("stored")
    };
    #[allow(clippy::disallowed_methods)]
    let timestamp_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .expect("clock");
    let signed = upload_signed_bytes(timestamp_ms, &keys.id(), &[], None);
    net.node
        .upload_key_packages(KeyPackageUpload {
            installation: keys.id(),
            one_time: Vec::new(),
            last_resort: None,
            timestamp_ms,
            signature: keys.sign(&signed).to_vec(),
        })
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_again_and_restarting_keep_the_pool_at_its_target() {
    let net = Net::new();
    let aw = wallet();
    let alice = net.client("alice", &aw).await;
    alice.register().await.expect("register again");
    alice.shutdown().await.expect("shutdown");
    assert_eq!(pool(&net, "alice").await, 100);

    let alice = net.open("alice", &aw).await;
    alice.register().await.expect("register after a restart");
    alice.shutdown().await.expect("shutdown");
    assert_eq!(pool(&net, "alice").await, 100, "no second hundred");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_used_last_resort_package_is_rotated_and_the_old_key_kept_for_its_grace() {
    use kith::{ClientConfig, GroupOptions};
    use kith_engine::identity::{KeyPackageInventoryStore as _, KeyPackagePolicy};

    let net = Net::new();
    let (aw, bw) = (wallet(), wallet());
    let alice = net.client("alice", &aw).await;
    // Bob keeps no one-time packages, so every Welcome to him uses his
    // last-resort package, and he rotates it as soon as it was used.
    let bob = kith::Client::builder()
        .wallet(bw.clone())
        .data_dir(net.path("bob"))
        .node(net.node.clone())
        .config(ClientConfig {
            key_packages: KeyPackagePolicy {
                target_pool: 0,
                refill_below: 0,
                rotate_after_use_ms: 0,
                ..KeyPackagePolicy::default()
            },
            ..ClientConfig::default()
        })
        .build()
        .await
        .expect("bob");
    bob.register().await.expect("register");
    let first = alice
        .create_group(&[bw.inbox_id()], GroupOptions::default())
        .await
        .expect("first group");
    common::eventually(&bob, "bob joined and rotated", || async {
        bob.conversation(first.id()).await.is_ok()
    })
    .await;
    // The Welcome's arrival also asked the KeyPackageManager to refill;
    // a second group reaches Bob through the new last-resort package.
    bob.sync().await.expect("sync");
    let second = alice
        .create_group(&[bw.inbox_id()], GroupOptions::default())
        .await
        .expect("second group");
    common::eventually(&bob, "bob joined the second group", || async {
        bob.conversation(second.id()).await.is_ok()
    })
    .await;
    bob.shutdown().await.expect("shutdown");

    let provider = KithProvider::open(net.path("bob").join("kith.sled")).expect("open");
    let inventory = provider.storage().load_inventory().expect("inventory");
    let current = inventory.last_resort.expect("a last-resort package");
    assert!(
        !inventory.retired.is_empty(),
        "the used package was retired and its key kept for the grace period"
    );
    assert!(
        inventory
            .retired
            .iter()
            .all(|r| r.hash_ref != current.hash_ref),
        "the current package is a new one"
    );
}

/// A node lets a requester fetch two packages at once, refilled at ten a
/// second. Creating a group of five fetches them in pieces of two, and the
/// pieces the node refuses for now wait as long as its `retry-after` says:
/// the group is made, with everyone in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adds_are_fetched_in_pieces_that_fit_the_nodes_limits() {
    let mut config = kith_transport::node::NodeConfig::new(1);
    config.limits.fetch_per_requester = kith_transport::node::BucketLimit {
        burst: 2,
        per_minute: 600,
    };
    let net = common::Net::with_config(config);
    let alice = net.client("alice", &common::wallet()).await;
    let mut inboxes = Vec::new();
    for i in 0..5 {
        let w = common::wallet();
        net.client(&format!("member{i}"), &w).await;
        inboxes.push(w.inbox_id());
    }
    let group = alice
        .create_group(&inboxes, kith::GroupOptions::default())
        .await
        .expect("created in fetches that fit the limits");
    let mut members: Vec<_> = group
        .members()
        .await
        .expect("members")
        .into_iter()
        .map(|m| m.inbox)
        .collect();
    members.sort();
    let mut expected = inboxes.clone();
    expected.push(alice.inbox_id());
    expected.sort();
    assert_eq!(members, expected);
}
