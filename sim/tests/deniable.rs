//! Deniable DMs on the sans-IO engine, with real sled stores and an
//! in-test node: pseudonymous leaves, bindings that verify between the
//! real installations, messages held until both sides are bound, and
//! bindings that fail (a key package substituted by the node, a member
//! claiming to be an installation whose identity key it lacks), and
//! rollback and replay when both sides commit at once.

use kith_engine::{
    delivery::{Envelope, Topic},
    group::{
        CONTENT_TYPE_BINDING, ClientStore, ConversationKind, Delivery, DeniableAdd, DmVerification,
        Group, GroupConfig, GroupError, GroupEvent, IdentityCache, IntentKind, Me, NewGroup,
        PolicyPreset, ProposalPolicy, RewindPolicy, binding_body,
    },
    identity::{
        BindingClaim, DEFAULT_LIFETIME_SECS, DmMode, InboxId, InstallationId, InstallationKeys,
        LocalWallet, PSEUDONYM_CREDENTIAL_TYPE, UnsignedIdentityUpdate,
        generate_deniable_key_package,
    },
};
use kith_storage::{KithProvider, SledMlsStorage, StorageConfig};
use openmls::prelude::{
    CredentialType, MlsMessageOut, OpenMlsProvider as _, tls_codec::Serialize as _,
};
use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng as _};

/// OpenMLS checks key-package lifetimes against the system clock, so the
/// test's time is the real one.
#[allow(clippy::disallowed_methods)]
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .expect("clock after 1970")
}

/// One installation, with its own sled store.
struct Device {
    provider: KithProvider,
    keys: InstallationKeys,
    inbox: InboxId,
    events: Vec<GroupEvent>,
    group: Option<Group>,
    read: usize,
    /// Added to the clock: lets a test move past the settle window.
    skew_ms: u64,
}

impl Device {
    fn new(keys: InstallationKeys, inbox: InboxId) -> Self {
        Self {
            provider: KithProvider::from_storage(
                SledMlsStorage::from_db(
                    sled::Config::new().temporary(true).open().expect("sled"),
                    StorageConfig::default(),
                )
                .expect("storage"),
            ),
            keys,
            inbox,
            events: Vec::new(),
            group: None,
            read: 0,
            skew_ms: 0,
        }
    }

    fn kv(&self) -> &SledMlsStorage {
        self.provider.storage()
    }

    fn me(&self) -> Me<'_> {
        Me {
            inbox: self.inbox,
            keys: &self.keys,
        }
    }

    /// A deniable key package of this installation, as the node hands it
    /// out; its leaf key is kept in the store, as the key-package manager
    /// keeps it.
    fn deniable_package(&self, rng: &mut ChaCha20Rng) -> DeniableAdd {
        let made = generate_deniable_key_package(
            &self.provider,
            rng,
            now_ms() / 1000,
            DEFAULT_LIFETIME_SECS,
            false,
        )
        .expect("deniable key package");
        ClientStore(self.kv())
            .put_ephemeral_key(&made.leaf_key)
            .expect("keep the leaf key");
        DeniableAdd {
            installation: self.keys.id(),
            key_package: MlsMessageOut::from(made.key_package)
                .tls_serialize_detached()
                .expect("serialize"),
        }
    }

    fn group(&mut self) -> &mut Group {
        self.group.as_mut().expect("in the DM")
    }

    fn advance(&mut self, identities: &IdentityCache) {
        let mut group = self.group.take().expect("in the DM");
        group
            .advance(
                &self.provider,
                self.kv(),
                self.me(),
                identities,
                now_ms() + self.skew_ms,
            )
            .expect("advance");
        self.drain(&mut group);
        self.group = Some(group);
    }

    fn send(&mut self, text: &str) -> [u8; 32] {
        let mut group = self.group.take().expect("in the DM");
        let id = group
            .send_message(
                &self.provider,
                self.kv(),
                self.me(),
                kith_engine::group::Outgoing::new("text/plain", text.as_bytes()),
                now_ms(),
            )
            .expect("send");
        self.drain(&mut group);
        self.group = Some(group);
        id
    }

    fn drain(&mut self, group: &mut Group) {
        while let Some(event) = group.poll_event() {
            self.events.push(event);
        }
    }

    fn verification(&self) -> Option<DmVerification> {
        self.group.as_ref().and_then(Group::verification)
    }

    fn messages(&self) -> Vec<kith_engine::group::StoredMessage> {
        let group = self.group.as_ref().expect("in the DM");
        ClientStore(self.kv())
            .messages(&group.conversation_id())
            .expect("messages")
    }
}

struct Person {
    inbox: InboxId,
    wallet: LocalWallet,
    sequence: u64,
}

impl Person {
    fn new(rng: &mut ChaCha20Rng) -> Self {
        let wallet = LocalWallet::generate(rng);
        Self {
            inbox: wallet.inbox_id(),
            wallet,
            sequence: 0,
        }
    }

    /// A new installation of this inbox, registered in its identity log.
    fn device(&mut self, rng: &mut ChaCha20Rng, identities: &mut IdentityCache) -> Device {
        let keys = InstallationKeys::generate(rng);
        self.sequence += 1;
        let unsigned =
            UnsignedIdentityUpdate::add_installation(self.inbox, &keys, self.sequence, now_ms());
        let signature = self
            .wallet
            .sign_personal(unsigned.signature_text().as_bytes());
        identities
            .extend(self.inbox, [unsigned.sign(signature, Some(&keys))])
            .expect("valid log");
        Device::new(keys, self.inbox)
    }
}

/// The node: ordered topics.
#[derive(Default)]
struct Node {
    envelopes: Vec<Envelope>,
    /// When set, what is published gets this originator time: it sorts
    /// before envelopes published earlier (another node's clock, or
    /// replication lag).
    backdate: Option<u64>,
}

impl Node {
    fn publish(&mut self, topic: &str, payload: Vec<u8>) -> Envelope {
        let sequence = self.envelopes.len() as u64 + 1;
        let envelope = Envelope {
            topic: topic.parse().expect("topic"),
            payload,
            originator_node_id: 1,
            originator_sequence_id: sequence,
            originator_time_ms: self.backdate.unwrap_or(now_ms() + sequence),
        };
        self.envelopes.push(envelope.clone());
        envelope
    }

    /// Publish everything the device's group has queued; returns the
    /// envelopes published on welcome topics.
    fn flush(&mut self, device: &mut Device) -> Vec<Envelope> {
        let mut welcomes = Vec::new();
        let mut group = device.group.take().expect("in the DM");
        while let Some(item) = group.poll_outbound() {
            for topic in &item.topics {
                let envelope = self.publish(topic, item.payload.clone());
                if topic.starts_with("welcome/") {
                    welcomes.push(envelope);
                }
            }
            group.ack_outbound(device.kv(), &item).expect("ack");
        }
        device.group = Some(group);
        welcomes
    }

    /// Deliver the group topic's envelopes the device has not read.
    fn deliver(&self, device: &mut Device, identities: &IdentityCache) {
        let mut group = device.group.take().expect("in the DM");
        let topic = Topic::Group(group.group_id().to_vec());
        let new: Vec<&Envelope> = self
            .envelopes
            .iter()
            .filter(|e| e.topic == topic)
            .skip(device.read)
            .collect();
        device.read += new.len();
        for envelope in new {
            group
                .handle_envelope(
                    &device.provider,
                    device.kv(),
                    identities,
                    envelope,
                    now_ms() + device.skew_ms,
                )
                .expect("handle");
        }
        device.drain(&mut group);
        device.group = Some(group);
    }

    /// Flush, deliver and advance every device until nothing moves.
    fn settle(&mut self, devices: &mut [&mut Device], identities: &IdentityCache) {
        for _ in 0..4 {
            for device in devices.iter_mut() {
                self.flush(device);
            }
            for device in devices.iter_mut() {
                self.deliver(device, identities);
                device.advance(identities);
            }
        }
        for device in devices.iter_mut() {
            self.flush(device);
        }
    }
}

fn join(device: &mut Device, welcome: &Envelope, identities: &IdentityCache) {
    join_with(device, welcome, identities, Group::join);
}

type JoinFn = fn(
    &KithProvider,
    &SledMlsStorage,
    Me<'_>,
    &IdentityCache,
    &[u8],
    u64,
) -> Result<Option<Group>, GroupError>;

fn join_with(device: &mut Device, welcome: &Envelope, identities: &IdentityCache, join: JoinFn) {
    let mut group = join(
        &device.provider,
        device.kv(),
        device.me(),
        identities,
        &welcome.payload,
        now_ms(),
    )
    .expect("join")
    .expect("a new group");
    device.drain(&mut group);
    // The group ignores what its Welcome's cursor has passed.
    device.read = 0;
    device.group = Some(group);
}

/// `creator` makes a deniable DM with `peer`'s inbox and adds `packages`.
fn create_dm(
    node: &mut Node,
    creator: &mut Device,
    peer: InboxId,
    packages: Vec<DeniableAdd>,
    identities: &IdentityCache,
) -> Vec<Envelope> {
    let group = Group::create(
        &creator.provider,
        creator.kv(),
        creator.me(),
        identities,
        NewGroup {
            kind: ConversationKind::Dm,
            dm_peer: Some(peer),
            dm_mode: DmMode::Deniable,
            attributes: Default::default(),
            preset: PolicyPreset::Default,
            now_ms: now_ms(),
            legacy: None,
            gating: Default::default(),
        },
    )
    .expect("create");
    creator.group = Some(group);
    let sequence = identities.sequence(&peer);
    let mut group = creator.group.take().expect("created");
    group
        .queue_intent(
            creator.kv(),
            IntentKind::AddDeniable {
                key_packages: packages,
                sequences: vec![(peer, sequence)],
            },
        )
        .expect("queue");
    creator.group = Some(group);
    creator.advance(identities);
    node.flush(creator);
    node.deliver(creator, identities);
    node.flush(creator)
}

#[test]
fn a_deniable_dm_binds_both_sides_and_holds_messages_until_then() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut identities = IdentityCache::new();
    let (mut alice_person, mut bob_person) = (Person::new(&mut rng), Person::new(&mut rng));
    let mut alice = alice_person.device(&mut rng, &mut identities);
    let mut bob = bob_person.device(&mut rng, &mut identities);
    let mut node = Node::default();

    let package = bob.deniable_package(&mut rng);
    let welcomes = create_dm(&mut node, &mut alice, bob.inbox, vec![package], &identities);
    assert_eq!(welcomes.len(), 1, "one Welcome, to Bob's installation");
    assert_eq!(
        welcomes[0].topic,
        Topic::Welcome(bob.keys.id()),
        "the Welcome goes to the installation the package was fetched for"
    );

    // Nothing in the tree names a person or an installation.
    let a = alice.group();
    assert!(a.is_deniable());
    let installations = [alice.keys.id(), bob.keys.id()];
    let leaves = alice.group.as_ref().map(Group::leaves).unwrap_or_default();
    assert_eq!(leaves.len(), 2);
    for (credential, key) in &leaves {
        assert_eq!(
            credential.credential_type(),
            CredentialType::Other(PSEUDONYM_CREDENTIAL_TYPE)
        );
        assert!(
            installations
                .iter()
                .all(|i| i.as_bytes().as_slice() != key.as_slice())
        );
    }

    // The engine's control content types are not the application's to send.
    let mut group = alice.group.take().expect("in the DM");
    let refused = group.send_message(
        &alice.provider,
        alice.kv(),
        alice.me(),
        kith_engine::group::Outgoing::new(CONTENT_TYPE_BINDING, b"a binding made by hand"),
        now_ms(),
    );
    assert!(
        matches!(refused, Err(GroupError::InvalidInput(_))),
        "{refused:?}"
    );
    alice.group = Some(group);

    // Alice has sent her binding, but Bob's leaf is not bound: her message
    // is stored, not sent.
    assert_eq!(alice.verification(), Some(DmVerification::Pending));
    let held = alice.send("hello before the bindings");
    let held_after: Vec<[u8; 32]> = ["second", "third", "fourth"]
        .into_iter()
        .map(|text| alice.send(text))
        .collect();
    let pending_out = alice.group().pending_outbound().count();
    assert_eq!(pending_out, 0, "the message is held, not queued");

    // Her binding goes out at her next advance; the message still waits,
    // however often she advances, until Bob's leaf is bound.
    let topic = Topic::Group(alice.group().group_id().to_vec());
    let on_topic = |node: &Node| node.envelopes.iter().filter(|e| e.topic == topic).count();
    let unpublished = |device: &Device| {
        device
            .messages()
            .iter()
            .any(|m| m.message_id == held && m.delivery == Delivery::Unpublished)
    };
    alice.advance(&identities);
    node.flush(&mut alice);
    // Her commit, the epoch digest a committer sends, and her binding.
    let published = on_topic(&node);
    assert_eq!(published, 3);
    for _ in 0..3 {
        alice.advance(&identities);
        node.flush(&mut alice);
    }
    assert_eq!(on_topic(&node), published, "nothing more");
    assert!(unpublished(&alice));

    join(&mut bob, &welcomes[0], &identities);
    assert_eq!(bob.verification(), Some(DmVerification::Pending));
    assert_eq!(
        bob.group().metadata().immutable.dm_mode,
        Some(DmMode::Deniable)
    );

    // Bob binds Alice and sends his binding; Alice has not read it yet.
    node.deliver(&mut bob, &identities);
    bob.advance(&identities);
    node.flush(&mut bob);
    assert_eq!(on_topic(&node), published + 1, "and Bob's binding");
    alice.advance(&identities);
    node.flush(&mut alice);
    assert_eq!(on_topic(&node), published + 1);
    assert!(
        unpublished(&alice),
        "Alice holds her message until she read it"
    );

    node.settle(&mut [&mut alice, &mut bob], &identities);

    assert_eq!(alice.verification(), Some(DmVerification::Verified));
    assert_eq!(bob.verification(), Some(DmVerification::Verified));
    assert!(bob.events.contains(&GroupEvent::MemberVerified {
        inbox: alice.inbox,
        installation: alice.keys.id(),
    }));
    assert!(alice.events.contains(&GroupEvent::MemberVerified {
        inbox: bob.inbox,
        installation: bob.keys.id(),
    }));
    // The held message went out once both were bound, and Bob shows it
    // as Alice's, verified.
    let at_bob = bob.messages();
    let received = at_bob
        .iter()
        .find(|m| m.message_id == held)
        .expect("the held message arrived");
    assert!(received.is_verified());
    assert_eq!(received.sender_inbox, alice.inbox);
    assert_eq!(received.sender_installation, alice.keys.id());
    assert_eq!(received.body, b"hello before the bindings");
    // Held messages go out in the order she wrote them.
    let order: Vec<[u8; 32]> = at_bob
        .iter()
        .filter(|m| m.sender_inbox == alice.inbox)
        .map(|m| m.message_id)
        .collect();
    let mut written = vec![held];
    written.extend(held_after);
    assert_eq!(order, written);

    // And the other way, now without holding.
    let reply = bob.send("hi");
    assert_eq!(bob.group().pending_outbound().count(), 1);
    node.settle(&mut [&mut alice, &mut bob], &identities);
    let at_alice = alice.messages();
    let reply = at_alice
        .iter()
        .find(|m| m.message_id == reply)
        .expect("the reply arrived");
    assert!(reply.is_verified());
    assert_eq!(reply.sender_installation, bob.keys.id());
    assert_eq!(
        alice.group().members().get(&bob.inbox).map(|s| s.len()),
        Some(1),
        "Bob's installation is a member once bound"
    );
    assert!(
        !alice
            .events
            .iter()
            .any(|e| matches!(e, GroupEvent::BindingFailed { .. }))
    );
}

/// Send, from `sender`'s leaf and past every hold, a binding that claims
/// `claimed_inbox` and `claimed` for that leaf, its tags keyed with the
/// identity secret of `keyed_with` (a forger has only its own) and each
/// recipient's public identity key.
fn send_binding_as(
    sender: &mut Device,
    keyed_with: &InstallationKeys,
    claimed_inbox: InboxId,
    claimed: InstallationId,
    recipients: &[(InstallationId, [u8; 32])],
) {
    let forger = sender;
    let group = forger.group.take().expect("in the DM");
    let exporter = group
        .binding_exporter_for_tests(&forger.provider)
        .expect("exporter");
    let leaf_key: [u8; 32] = group
        .leaves()
        .into_iter()
        .nth(group.own_leaf_index() as usize)
        .and_then(|(_, key)| key.try_into().ok())
        .expect("own leaf key");
    let group_id = group.group_id().to_vec();
    let body = binding_body(
        group.epoch(),
        &BindingClaim {
            ephemeral_key: &leaf_key,
            group_id: &group_id,
            inbox: claimed_inbox,
            installation: claimed,
        },
        keyed_with.identity_secret(),
        &exporter,
        recipients.iter().copied(),
    )
    .expect("binding body");
    let mut group = group;
    group
        .send_unchecked_for_tests(
            &forger.provider,
            forger.kv(),
            forger.me(),
            CONTENT_TYPE_BINDING,
            &body,
            now_ms(),
        )
        .expect("send");
    forger.group = Some(group);
}

fn failed(device: &Device) -> bool {
    matches!(device.verification(), Some(DmVerification::Failed(_)))
        && device
            .events
            .iter()
            .any(|e| matches!(e, GroupEvent::BindingFailed { .. }))
}

/// The node hands Alice a key package of its own (Mallory's, who has a
/// valid wallet and installation) as Bob's. Mallory joins, but cannot bind
/// as Bob: whether she claims Bob (her tag is keyed with her identity key,
/// not his) or herself (her inbox is not in the DM), Alice's DM fails, and
/// nothing Alice wrote goes out.
#[test]
fn a_key_package_substituted_by_the_node_fails_the_binding() {
    for claims_bob in [true, false] {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let mut identities = IdentityCache::new();
        let mut people: Vec<Person> = (0..3).map(|_| Person::new(&mut rng)).collect();
        let mut alice = people[0].device(&mut rng, &mut identities);
        let bob = people[1].device(&mut rng, &mut identities);
        let mut mallory = people[2].device(&mut rng, &mut identities);
        let mut node = Node::default();

        let mut substituted = mallory.deniable_package(&mut rng);
        substituted.installation = bob.keys.id();
        let welcomes = create_dm(
            &mut node,
            &mut alice,
            bob.inbox,
            vec![substituted],
            &identities,
        );
        let held = alice.send("for Bob only");

        // The Welcome goes to Bob's topic, but the node reads it too. An
        // honest client refuses a DM that is not its own; Mallory's skips
        // that check.
        join_with(
            &mut mallory,
            &welcomes[0],
            &identities,
            Group::join_unchecked_for_tests,
        );
        if claims_bob {
            let alice_key = identities
                .state(&alice.inbox)
                .and_then(|log| log.installation(&alice.keys.id()))
                .map(|active| active.identity_key)
                .expect("Alice's identity key is public");
            let keys = mallory.keys.clone();
            send_binding_as(
                &mut mallory,
                &keys,
                bob.inbox,
                bob.keys.id(),
                &[(alice.keys.id(), alice_key)],
            );
            node.flush(&mut mallory);
        } else {
            node.settle(&mut [&mut mallory], &identities);
        }
        node.settle(&mut [&mut alice, &mut mallory], &identities);

        assert!(
            failed(&alice),
            "claims Bob: {claims_bob}: {:?}",
            alice.verification()
        );
        let Some(DmVerification::Failed(reason)) = alice.verification() else {
            unreachable!("checked above");
        };
        if claims_bob {
            assert!(reason.contains("does not verify"), "{reason}");
        } else {
            assert!(reason.contains("not in this DM"), "{reason}");
        }
        assert!(
            !alice
                .events
                .iter()
                .any(|e| matches!(e, GroupEvent::MemberVerified { .. })),
            "nobody was bound"
        );
        assert!(
            !mallory.messages().iter().any(|m| m.message_id == held),
            "Alice's message never reached Mallory"
        );
        let stored = alice
            .messages()
            .into_iter()
            .find(|m| m.message_id == held)
            .expect("kept at Alice");
        assert_eq!(stored.delivery, Delivery::Unpublished);
    }
}

/// A member (Bob) adds a leaf he controls and claims it is Alice's second
/// installation. He has neither of the identity secrets that key the pair
/// (Alice's two installations), so Alice's installation refuses it.
#[test]
fn a_member_cannot_forge_the_other_sides_binding() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let mut identities = IdentityCache::new();
    let (mut alice_person, mut bob_person) = (Person::new(&mut rng), Person::new(&mut rng));
    let mut alice = alice_person.device(&mut rng, &mut identities);
    let alice_second = alice_person.device(&mut rng, &mut identities);
    let mut bob = bob_person.device(&mut rng, &mut identities);
    let mut node = Node::default();

    let package = bob.deniable_package(&mut rng);
    let welcomes = create_dm(&mut node, &mut alice, bob.inbox, vec![package], &identities);
    join(&mut bob, &welcomes[0], &identities);
    node.settle(&mut [&mut alice, &mut bob], &identities);
    assert_eq!(alice.verification(), Some(DmVerification::Verified));

    // Bob's second store plays the leaf he passes off as Alice's second
    // installation.
    let mut puppet = Device::new(bob.keys.clone(), bob.inbox);
    let mut package = puppet.deniable_package(&mut rng);
    package.installation = alice_second.keys.id();
    let sequence = identities.sequence(&alice.inbox);
    let mut group = bob.group.take().expect("in the DM");
    group
        .queue_intent(
            bob.kv(),
            IntentKind::AddDeniable {
                key_packages: vec![package],
                sequences: vec![(alice.inbox, sequence)],
            },
        )
        .expect("queue");
    bob.group = Some(group);
    bob.advance(&identities);
    node.flush(&mut bob);
    node.deliver(&mut bob, &identities);
    let welcomes = node.flush(&mut bob);
    join(&mut puppet, &welcomes[0], &identities);

    let recipients: Vec<(InstallationId, [u8; 32])> = identities
        .state(&alice.inbox)
        .into_iter()
        .flat_map(|log| log.active_installations())
        .map(|(installation, active)| (*installation, active.identity_key))
        .collect();
    let keys = puppet.keys.clone();
    send_binding_as(
        &mut puppet,
        &keys,
        alice.inbox,
        alice_second.keys.id(),
        &recipients,
    );
    node.flush(&mut puppet);
    node.settle(&mut [&mut alice, &mut bob], &identities);

    assert!(failed(&alice), "{:?}", alice.verification());
    assert!(!alice.events.contains(&GroupEvent::MemberVerified {
        inbox: alice.inbox,
        installation: alice_second.keys.id(),
    }));
    // What Alice writes now stays with her.
    let held = alice.send("after the forgery");
    node.settle(&mut [&mut alice, &mut bob], &identities);
    assert!(!bob.messages().iter().any(|m| m.message_id == held));
}

/// With two installations on each side, every pair binds, and a message
/// from either of Alice's installations shows at each of Bob's as hers.
#[test]
fn every_installation_pair_is_bound() {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let mut identities = IdentityCache::new();
    let (mut alice_person, mut bob_person) = (Person::new(&mut rng), Person::new(&mut rng));
    let mut a1 = alice_person.device(&mut rng, &mut identities);
    let mut a2 = alice_person.device(&mut rng, &mut identities);
    let mut b1 = bob_person.device(&mut rng, &mut identities);
    let mut b2 = bob_person.device(&mut rng, &mut identities);
    let mut node = Node::default();

    let packages = vec![
        b1.deniable_package(&mut rng),
        b2.deniable_package(&mut rng),
        a2.deniable_package(&mut rng),
    ];
    let welcomes = create_dm(&mut node, &mut a1, b1.inbox, packages, &identities);
    assert_eq!(welcomes.len(), 3);
    for (device, welcome) in [&mut b1, &mut b2, &mut a2].into_iter().zip(&welcomes) {
        join(device, welcome, &identities);
    }
    node.settle(&mut [&mut a1, &mut a2, &mut b1, &mut b2], &identities);

    for device in [&a1, &a2, &b1, &b2] {
        assert_eq!(
            device.verification(),
            Some(DmVerification::Verified),
            "{:?}",
            device.events
        );
        let members = device.group.as_ref().expect("in the DM").members();
        assert_eq!(members.get(&a1.inbox).map(|s| s.len()), Some(2));
        assert_eq!(members.get(&b1.inbox).map(|s| s.len()), Some(2));
    }
    let from_a2 = a2.send("from Alice's second device");
    node.settle(&mut [&mut a1, &mut a2, &mut b1, &mut b2], &identities);
    for device in [&b1, &b2, &a1] {
        let message = device
            .messages()
            .into_iter()
            .find(|m| m.message_id == from_a2)
            .expect("arrived");
        assert!(message.is_verified());
        assert_eq!(message.sender_inbox, a2.inbox);
        assert_eq!(message.sender_installation, a2.keys.id());
    }
}

/// Both sides commit at once in a fresh deniable DM: Alice adds her second
/// installation (so she owes a new binding, which she sends on her branch),
/// Bob updates his keys with a commit that sorts first. Each member applies
/// what arrives, rolls back when Bob's commit turns up, and replays: both
/// end on Bob's branch, Alice's binding from the losing branch is dropped
/// (not failed) and sent again, her add is regenerated, and the message she
/// sent on the losing branch reaches Bob, verified.
#[test]
fn concurrent_first_commits_in_a_deniable_dm_roll_back_and_replay() {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let mut identities = IdentityCache::new();
    let (mut alice_person, mut bob_person) = (Person::new(&mut rng), Person::new(&mut rng));
    let mut alice = alice_person.device(&mut rng, &mut identities);
    let mut a2 = alice_person.device(&mut rng, &mut identities);
    let mut bob = bob_person.device(&mut rng, &mut identities);
    let mut node = Node::default();
    let policy = GroupConfig {
        rewind: RewindPolicy {
            settle_window_ms: 60_000,
            ..RewindPolicy::default()
        },
        proposals: ProposalPolicy {
            propose_first: false,
            ..ProposalPolicy::default()
        },
        ..GroupConfig::default()
    };

    let package = bob.deniable_package(&mut rng);
    let welcomes = create_dm(&mut node, &mut alice, bob.inbox, vec![package], &identities);
    alice.group().set_config(policy);
    join(&mut bob, &welcomes[0], &identities);
    bob.group().set_config(policy);
    node.settle(&mut [&mut alice, &mut bob], &identities);
    assert_eq!(alice.verification(), Some(DmVerification::Verified));
    assert_eq!(bob.verification(), Some(DmVerification::Verified));
    let epoch = alice.group().epoch();

    // Alice's commit goes out first; Bob's, sent at the same time through
    // a node whose clock is behind, sorts before it.
    let a2_package = a2.deniable_package(&mut rng);
    let sequence = identities.sequence(&alice.inbox);
    let mut group = alice.group.take().expect("in the DM");
    group
        .queue_intent(
            alice.kv(),
            IntentKind::AddDeniable {
                key_packages: vec![a2_package],
                sequences: vec![(alice.inbox, sequence)],
            },
        )
        .expect("queue");
    alice.group = Some(group);
    alice.advance(&identities);
    let alice_commit = node.envelopes.len();
    node.flush(&mut alice);
    let alice_time = node.envelopes[alice_commit].originator_time_ms;
    let mut group = bob.group.take().expect("in the DM");
    group
        .queue_intent(bob.kv(), IntentKind::UpdateKeys)
        .expect("queue");
    bob.group = Some(group);
    bob.advance(&identities);
    node.backdate = Some(alice_time - 1);
    node.flush(&mut bob);
    node.backdate = None;

    // Alice merges her own commit first and, owing her new leaf a binding,
    // binds and writes on that branch before Bob's commit reaches her.
    node.deliver(&mut alice, &identities);
    let on_losing_branch = alice.send("written on the losing branch");
    node.flush(&mut alice);
    node.settle(&mut [&mut alice, &mut bob], &identities);

    for device in [&alice, &bob] {
        assert!(
            device
                .events
                .iter()
                .any(|e| matches!(e, GroupEvent::RolledBack { .. })),
            "a rollback on each side"
        );
        assert!(
            !device
                .events
                .iter()
                .any(|e| matches!(e, GroupEvent::BindingFailed { .. })),
            "a binding of the losing branch is dropped, not failed: {:?}",
            device.events
        );
    }
    // Past the settle window, Alice's regenerated add is committed and its
    // Welcome goes out; her second installation joins and binds.
    alice.skew_ms = 120_000;
    bob.skew_ms = 120_000;
    node.settle(&mut [&mut alice, &mut bob], &identities);
    let welcome = node
        .envelopes
        .iter()
        .rev()
        .find(|e| e.topic == Topic::Welcome(a2.keys.id()))
        .cloned()
        .expect("a Welcome for Alice's second installation");
    join(&mut a2, &welcome, &identities);
    a2.group().set_config(policy);
    a2.skew_ms = 120_000;
    node.settle(&mut [&mut alice, &mut bob, &mut a2], &identities);

    assert!(alice.group().epoch() > epoch + 1);
    assert_eq!(alice.group().epoch(), bob.group().epoch());
    assert_eq!(
        alice.group().epoch_authenticator(),
        bob.group().epoch_authenticator()
    );
    for device in [&alice, &bob, &a2] {
        assert_eq!(
            device.verification(),
            Some(DmVerification::Verified),
            "{:?}",
            device.events
        );
    }
    let message = bob
        .messages()
        .into_iter()
        .find(|m| m.message_id == on_losing_branch)
        .expect("the message of the losing branch was sent again");
    assert!(message.is_verified());
    assert_eq!(message.sender_installation, alice.keys.id());
}

// ----- deniability, shown: forgery and a public-data verifier -------------

/// A DM transcript as its holder could hand it to a third party: the
/// Welcome the holder joined from, every envelope of the group topic, and
/// the one secret without which none of it opens: the private keys of the
/// holder's key package that the Welcome used (here, a copy of the holder's
/// store taken before it joined).
struct Transcript {
    opener: KithProvider,
    welcome: Vec<u8>,
    envelopes: Vec<Envelope>,
}

/// What the verifier concluded: who the transcript's own bindings claim
/// the other side is, and what that side wrote.
#[derive(Debug, PartialEq, Eq)]
struct Verdict {
    /// The inboxes and installations the other side's bindings claim.
    claimed: Vec<(InboxId, InstallationId)>,
    /// The other side's text messages.
    texts: Vec<String>,
    /// The holder's own messages: MLS gives a member no key to open its own
    /// messages, so nobody can check these but the other side.
    own_messages: usize,
}

/// A copy of a store as it is now.
fn store_copy(store: &SledMlsStorage) -> KithProvider {
    let db = sled::Config::new().temporary(true).open().expect("sled");
    db.import(store.db().export());
    KithProvider::from_storage(SledMlsStorage::from_db(db, store.config()).expect("storage"))
}

/// Verify a transcript with public data only (the identity logs) and the
/// secrets the transcript carries. Every check the third party can make:
///
/// - the Welcome: OpenMLS verifies the GroupInfo signature (by the
///   creator's leaf), the tree and every leaf's signature;
/// - the metadata: a deniable DM between two inboxes, leaves that are all
///   pseudonyms;
/// - every envelope the holder could read: its signature by its sender's
///   leaf (OpenMLS), its content, and each binding's structure and claim
///   (an inbox of the DM, an installation active in its public log);
/// - the holder's own messages parse as messages of the group.
///
/// What it cannot check are the binding tags: only the two ends of a pair
/// can compute their key.
fn verify(transcript: &Transcript, identities: &IdentityCache) -> Result<Verdict, String> {
    use openmls::prelude::{
        MlsGroupJoinConfig, MlsMessageBodyIn, MlsMessageIn, PURE_CIPHERTEXT_WIRE_FORMAT_POLICY,
        ProcessedMessageContent, SenderRatchetConfiguration, StagedWelcome,
        tls_codec::Deserialize as _,
    };
    let provider = &transcript.opener;
    let payload = kith_engine::group::WelcomePayload::from_bytes(&transcript.welcome)
        .map_err(|e| e.to_string())?;
    let message = MlsMessageIn::tls_deserialize_exact(payload.welcome.as_slice())
        .map_err(|e| format!("welcome: {e}"))?;
    let MlsMessageBodyIn::Welcome(welcome) = message.extract() else {
        return Err("not a Welcome".into());
    };
    let config = MlsGroupJoinConfig::builder()
        .sender_ratchet_configuration(SenderRatchetConfiguration::new(128, 1000))
        .use_ratchet_tree_extension(true)
        .wire_format_policy(PURE_CIPHERTEXT_WIRE_FORMAT_POLICY)
        .build();
    let staged = StagedWelcome::new_from_welcome(provider, &config, welcome, None)
        .map_err(|e| format!("the Welcome does not verify: {e:?}"))?;
    let metadata =
        kith_engine::group::GroupMetadata::from_extensions(staged.group_context().extensions())
            .map_err(|e| e.to_string())?;
    if !metadata.immutable.deniable() {
        return Err("not a deniable DM".into());
    }
    let (a, b) = metadata
        .immutable
        .dm_members
        .ok_or("a DM names its two inboxes")?;
    for member in staged.members() {
        kith_engine::identity::check_pseudonym(&member.credential)
            .map_err(|e| format!("a leaf: {e}"))?;
    }
    let mut group = staged.into_group(provider).map_err(|e| format!("{e:?}"))?;
    let topic = Topic::Group(group.group_id().as_slice().to_vec());
    let mut verdict = Verdict {
        claimed: Vec::new(),
        texts: Vec::new(),
        own_messages: 0,
    };
    for envelope in transcript.envelopes.iter().filter(|e| e.topic == topic) {
        let message = MlsMessageIn::tls_deserialize_exact(envelope.payload.as_slice())
            .map_err(|e| format!("an envelope does not parse: {e}"))?;
        let protocol = message
            .try_into_protocol_message()
            .map_err(|e| format!("not a group message: {e:?}"))?;
        if protocol.epoch().as_u64() < group.epoch().as_u64() {
            continue; // before the holder joined: the commit that added it
        }
        let processed = group
            .process_message(provider, protocol)
            .map_err(|e| format!("a message does not verify: {e:?}"))?;
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                let (content, _) = kith_engine::group::Content::decode_checked(&app.into_bytes())
                    .map_err(|e| e.to_string())?;
                if content.content_type == CONTENT_TYPE_BINDING {
                    let binding = kith_engine::group::decode_binding(&content.body)?;
                    if binding.inbox != a && binding.inbox != b {
                        return Err("a binding claims an inbox outside the DM".into());
                    }
                    if identities
                        .state(&binding.inbox)
                        .and_then(|log| log.installation(&binding.installation))
                        .is_none()
                    {
                        return Err("a binding claims an installation not in the logs".into());
                    }
                    verdict.claimed.push((binding.inbox, binding.installation));
                } else if content.content_type == "text/plain" {
                    verdict
                        .texts
                        .push(String::from_utf8(content.body).map_err(|e| e.to_string())?);
                }
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => group
                .merge_staged_commit(provider, *staged)
                .map_err(|e| format!("{e:?}"))?,
            // The holder's own: its sender ratchet only encrypts, so MLS
            // opens only the sender data, which says it is the holder's.
            ProcessedMessageContent::OwnPrivateMessage => verdict.own_messages += 1,
            _ => {}
        }
    }
    Ok(verdict)
}

/// The public data of a person's installation: its inbox, installation id
/// and X25519 identity key, as its identity log shows them.
fn public(device: &Device) -> (InboxId, InstallationId, [u8; 32]) {
    (
        device.inbox,
        device.keys.id(),
        device.keys.identity_public_key(),
    )
}

/// A real DM: `creator` makes it and adds `holder`, both bind, `creator`
/// writes `texts` and `holder` answers. The holder's transcript.
fn real_transcript(
    rng: &mut ChaCha20Rng,
    creator: &mut Device,
    holder: &mut Device,
    identities: &IdentityCache,
    texts: &[&str],
) -> Transcript {
    let mut node = Node::default();
    let package = holder.deniable_package(rng);
    let opener = store_copy(holder.kv());
    let welcomes = create_dm(&mut node, creator, holder.inbox, vec![package], identities);
    join(holder, &welcomes[0], identities);
    for text in texts {
        creator.send(text);
    }
    holder.send("and the holder answers");
    node.settle(&mut [creator, holder], identities);
    Transcript {
        opener,
        welcome: welcomes[0].payload.clone(),
        envelopes: node.envelopes,
    }
}

/// The forgery. Given only the holder's secrets (its installation keys and
/// store) and the victim's public data, make a transcript of a DM in which
/// the victim creates the DM, binds as itself, and writes `texts`.
///
/// It plays the victim on a store of its own, with installation keys it
/// makes up (only the DM's ephemeral keys sign; nothing asks for the
/// victim's), and makes the victim's binding tag for the holder with the
/// holder's identity secret: `X25519(holder, victim) = X25519(victim,
/// holder)`. Also returns where the holder's own envelopes begin. The holder's own client, which checks bindings exactly as it
/// checks real ones, binds the forged leaf to the victim's installation.
fn forge(
    rng: &mut ChaCha20Rng,
    holder: &mut Device,
    victim: (InboxId, InstallationId, [u8; 32]),
    identities: &IdentityCache,
    texts: &[&str],
) -> (Transcript, usize) {
    let (victim_inbox, victim_installation, victim_identity_key) = victim;
    let mut node = Node::default();
    let package = holder.deniable_package(rng);
    let opener = store_copy(holder.kv());
    let mut puppet = Device::new(InstallationKeys::generate(rng), victim_inbox);
    let welcomes = create_dm(
        &mut node,
        &mut puppet,
        holder.inbox,
        vec![package],
        identities,
    );

    // The victim's binding, its tag for the holder keyed with the holder's
    // identity secret.
    send_binding_as(
        &mut puppet,
        &holder.keys,
        victim_inbox,
        victim_installation,
        &[(holder.keys.id(), victim_identity_key)],
    );
    let mut send = |content_type: &str, body: &[u8]| {
        let mut group = puppet.group.take().expect("created");
        group
            .send_unchecked_for_tests(
                &puppet.provider,
                puppet.kv(),
                puppet.me(),
                content_type,
                body,
                now_ms(),
            )
            .expect("send");
        puppet.group = Some(group);
    };
    for text in texts {
        let content = text.as_bytes();
        send("text/plain", content);
    }
    node.flush(&mut puppet);
    let holders_from = node.envelopes.len();

    join(holder, &welcomes[0], identities);
    holder.send("and the holder answers");
    node.settle(&mut [holder], identities);
    (
        Transcript {
            opener,
            welcome: welcomes[0].payload.clone(),
            envelopes: node.envelopes,
        },
        holders_from,
    )
}

/// Bob forges Alice, and Alice forges Bob: from one side's secrets and the
/// other's public data, a transcript that the public-data verifier accepts
/// exactly as it accepts a real one, attributing the same words to the
/// same installation; and the forger's own client shows the forged side as
/// verified. That is the claim of docs/deniable-dms.md, with the real
/// crypto.
#[test]
fn either_side_can_forge_a_transcript_that_verifies_like_a_real_one() {
    let texts = ["I will pay you back on Friday", "tell nobody"];
    for holder_is_bob in [true, false] {
        let mut rng = ChaCha20Rng::seed_from_u64(6);
        let mut identities = IdentityCache::new();
        let (mut alice_person, mut bob_person) = (Person::new(&mut rng), Person::new(&mut rng));
        let mut alice = alice_person.device(&mut rng, &mut identities);
        let mut bob = bob_person.device(&mut rng, &mut identities);
        let (holder, victim) = if holder_is_bob {
            (&mut bob, &mut alice)
        } else {
            (&mut alice, &mut bob)
        };
        let victim_public = public(victim);

        let real = real_transcript(&mut rng, victim, holder, &identities, &texts);
        let real = verify(&real, &identities).expect("the real transcript verifies");

        // A fresh installation state for the forgery: the holder's keys, a
        // new store (its DM with the real victim must not help).
        let mut forger = Device::new(holder.keys.clone(), holder.inbox);
        let (forged, holders_from) =
            forge(&mut rng, &mut forger, victim_public, &identities, &texts);
        // The verifier is not a rubber stamp: any byte changed in the other
        // side's messages, or in the Welcome, is refused. (The holder's own
        // are opened by nobody but the other side.)
        let group_envelopes: Vec<usize> = forged
            .envelopes
            .iter()
            .enumerate()
            .take(holders_from)
            .filter(|(_, e)| matches!(e.topic, Topic::Group(_)))
            .map(|(i, _)| i)
            .skip(1) // the commit that added the holder, from before it joined
            .collect();
        assert_eq!(
            group_envelopes.len(),
            1 + texts.len(),
            "a binding and the texts"
        );
        for i in group_envelopes {
            let mut envelopes = forged.envelopes.clone();
            let last = envelopes[i].payload.len() - 1;
            envelopes[i].payload[last] ^= 1;
            let tampered = Transcript {
                opener: store_copy(forged.opener.storage()),
                welcome: forged.welcome.clone(),
                envelopes,
            };
            assert!(verify(&tampered, &identities).is_err(), "envelope {i}");
        }
        let mut welcome = kith_engine::group::WelcomePayload::from_bytes(&forged.welcome)
            .expect("welcome payload");
        let middle = welcome.welcome.len() / 2;
        welcome.welcome[middle] ^= 1;
        let tampered = Transcript {
            opener: store_copy(forged.opener.storage()),
            welcome: welcome.to_bytes(),
            envelopes: forged.envelopes.clone(),
        };
        assert!(verify(&tampered, &identities).is_err(), "the Welcome");

        let forged = verify(&forged, &identities).expect("the forged transcript verifies");

        let victim_claim = (victim_public.0, victim_public.1);
        assert_eq!(
            real.claimed,
            vec![victim_claim],
            "holder is Bob: {holder_is_bob}"
        );
        assert_eq!(forged.claimed, real.claimed);
        assert_eq!(forged.texts, real.texts);
        assert_eq!(forged.texts, texts);
        assert_eq!(forged.own_messages, real.own_messages);
        assert!(real.own_messages > 0);

        // The forger's own client was convinced too.
        assert!(forger.events.contains(&GroupEvent::MemberVerified {
            inbox: victim_public.0,
            installation: victim_public.1,
        }));
        assert_eq!(forger.verification(), Some(DmVerification::Verified));
        let mut shown: Vec<_> = forger
            .messages()
            .into_iter()
            .filter(|m| m.sender_installation == victim_public.1 && m.is_verified())
            .map(|m| String::from_utf8(m.body).expect("utf-8"))
            .collect();
        shown.sort();
        let mut expected = texts.to_vec();
        expected.sort_unstable();
        assert_eq!(shown, expected);
    }
}

// ----- injection ------------------------------------------------------------

/// What a member's DM looks like from outside its store: epoch,
/// authenticator, messages and verification. An injection that is refused
/// leaves all of it as it was.
fn fingerprint(device: &Device) -> (u64, Vec<u8>, usize, Option<DmVerification>) {
    let group = device.group.as_ref().expect("in the DM");
    (
        group.epoch(),
        group.epoch_authenticator(),
        device.messages().len(),
        group.verification(),
    )
}

/// Mallory has a valid wallet and installation, and a deniable DM of her
/// own with Alice, whose ephemeral key there leaks to her. None of it gets
/// a message into Alice and Bob's DM: forged ciphertexts, envelopes
/// replayed from her DM, and messages signed with Alice's leaked key (as
/// ciphertext under secrets she made up, and as a plaintext message) are
/// all refused, and Bob's DM is exactly as it was.
#[test]
fn a_non_member_cannot_inject_into_a_deniable_dm() {
    use openmls::prelude::{
        CredentialWithKey, GroupId, MIXED_PLAINTEXT_WIRE_FORMAT_POLICY, MlsGroup,
        PURE_CIPHERTEXT_WIRE_FORMAT_POLICY, WireFormatPolicy,
    };

    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let mut identities = IdentityCache::new();
    let mut people: Vec<Person> = (0..3).map(|_| Person::new(&mut rng)).collect();
    let mut alice = people[0].device(&mut rng, &mut identities);
    let mut bob = people[1].device(&mut rng, &mut identities);
    let mut mallory = people[2].device(&mut rng, &mut identities);
    let mut node = Node::default();

    let package = bob.deniable_package(&mut rng);
    let welcomes = create_dm(&mut node, &mut alice, bob.inbox, vec![package], &identities);
    join(&mut bob, &welcomes[0], &identities);
    alice.send("the real one");
    node.settle(&mut [&mut alice, &mut bob], &identities);
    assert_eq!(bob.verification(), Some(DmVerification::Verified));
    let dm = bob.group().group_id().to_vec();
    let dm_topic = Topic::Group(dm.clone()).to_string();

    // Mallory's own DM with Alice, on the same node.
    let mut alice_elsewhere = Device::new(alice.keys.clone(), alice.inbox);
    let package = alice_elsewhere.deniable_package(&mut rng);
    let welcomes = create_dm(
        &mut node,
        &mut mallory,
        alice.inbox,
        vec![package],
        &identities,
    );
    join(&mut alice_elsewhere, &welcomes[0], &identities);
    alice_elsewhere.send("to Mallory");
    node.settle(&mut [&mut mallory, &mut alice_elsewhere], &identities);
    let other_topic = Topic::Group(mallory.group().group_id().to_vec());
    let replayed: Vec<Vec<u8>> = node
        .envelopes
        .iter()
        .filter(|e| e.topic == other_topic)
        .map(|e| e.payload.clone())
        .collect();
    let leaked_public: [u8; 32] = alice_elsewhere
        .group()
        .leaves()
        .into_iter()
        .nth(alice_elsewhere.group().own_leaf_index() as usize)
        .and_then(|(_, key)| key.try_into().ok())
        .expect("Alice's leaf key there");
    let leaked = ClientStore(alice_elsewhere.kv())
        .ephemeral_key(&leaked_public)
        .expect("store")
        .expect("the key leaks");

    let before = fingerprint(&bob);
    bob.events.clear();
    let mut injected = Vec::new();

    // Forged ciphertexts: a real envelope of the DM with its ciphertext
    // changed, and bytes that are not MLS at all.
    let real = node
        .envelopes
        .iter()
        .rev()
        .find(|e| e.topic.to_string() == dm_topic)
        .expect("a DM envelope")
        .payload
        .clone();
    for at in [real.len() / 2, real.len() - 1] {
        let mut forged = real.clone();
        forged[at] ^= 0x40;
        injected.push(forged);
    }
    injected.push(vec![0x00, 0x01, 0x02, 0x03]);
    // Replays from her own DM.
    injected.extend(replayed);
    // Alice's leaked key signing, in a group Mallory makes up with the DM's
    // group id: once encrypted, once as a plaintext message.
    for policy in [
        PURE_CIPHERTEXT_WIRE_FORMAT_POLICY,
        MIXED_PLAINTEXT_WIRE_FORMAT_POLICY,
    ] {
        let policy: WireFormatPolicy = policy;
        // A scratch store each time: one store holds one group per id.
        let scratch = Device::new(mallory.keys.clone(), mallory.inbox);
        let mut fake = MlsGroup::builder()
            .with_group_id(GroupId::from_slice(&dm))
            .ciphersuite(kith_engine::identity::CIPHERSUITE)
            .with_capabilities(kith_engine::identity::deniable_capabilities())
            .with_wire_format_policy(policy)
            .build(
                &scratch.provider,
                &leaked,
                CredentialWithKey {
                    credential: kith_engine::identity::pseudonym_credential(&mut rng),
                    signature_key: leaked_public.to_vec().into(),
                },
            )
            .expect("a made-up group");
        // At the DM's epoch, so that Bob does not set it aside as older
        // than his join.
        while fake.epoch().as_u64() < before.0 {
            fake.self_update(
                &scratch.provider,
                &leaked,
                openmls::prelude::LeafNodeParameters::default(),
            )
            .expect("commit");
            fake.merge_pending_commit(&scratch.provider).expect("merge");
        }
        let content = kith_engine::group::Content {
            content_type: "text/plain".into(),
            message_id: vec![9; 32],
            body: b"injected".to_vec(),
            sent_at_ms: now_ms(),
            fallback: None,
        };
        let message = fake
            .create_message(
                &scratch.provider,
                &leaked,
                &prost::Message::encode_to_vec(&content),
            )
            .expect("encrypt");
        injected.push(message.tls_serialize_detached().expect("serialize"));
    }
    for payload in injected.iter() {
        node.publish(&dm_topic, payload.clone());
    }
    node.deliver(&mut bob, &identities);
    bob.advance(&identities);

    assert_eq!(fingerprint(&bob), before, "nothing changed");
    let skipped = bob
        .events
        .iter()
        .filter(|e| matches!(e, GroupEvent::EnvelopeSkipped { .. }))
        .count();
    assert_eq!(
        skipped,
        injected.len(),
        "each one refused: {:?}",
        bob.events
    );
    assert!(
        !bob.events
            .iter()
            .any(|e| matches!(e, GroupEvent::Message(_) | GroupEvent::BindingFailed { .. }))
    );

    // The DM still works.
    let after = alice.send("still here");
    node.settle(&mut [&mut alice, &mut bob], &identities);
    assert!(
        bob.messages()
            .iter()
            .any(|m| m.message_id == after && m.is_verified())
    );
}

/// An installation that leaves a deniable DM deletes its per-conversation
/// leaf key along with the group's MLS state, once its removal settled
/// (issue 18, item 7): the key signed its leaf, and a copy kept after it
/// left would let whoever takes the device sign as that leaf. The others
/// go on in the DM.
#[test]
fn a_device_that_leaves_a_deniable_dm_deletes_its_leaf_key() {
    use kith_engine::group::KvStore as _;

    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let mut identities = IdentityCache::new();
    let (mut alice_person, mut bob_person) = (Person::new(&mut rng), Person::new(&mut rng));
    let mut a1 = alice_person.device(&mut rng, &mut identities);
    let mut a2 = alice_person.device(&mut rng, &mut identities);
    let mut b1 = bob_person.device(&mut rng, &mut identities);
    let mut node = Node::default();
    let packages = vec![b1.deniable_package(&mut rng), a2.deniable_package(&mut rng)];
    let welcomes = create_dm(&mut node, &mut a1, b1.inbox, packages, &identities);
    for (device, welcome) in [&mut b1, &mut a2].into_iter().zip(&welcomes) {
        join(device, welcome, &identities);
    }
    node.settle(&mut [&mut a1, &mut a2, &mut b1], &identities);
    assert_eq!(a2.verification(), Some(DmVerification::Verified));
    let group_id =
        openmls::prelude::GroupId::from_slice(a2.group.as_ref().expect("in the DM").group_id());
    let leaf_keys = |d: &Device| d.kv().kv_scan(b"e").expect("scan").len();
    assert!(leaf_keys(&a2) > 0, "a2 keeps its leaf key while a member");

    let mut group = a2.group.take().expect("in the DM");
    group
        .queue_intent(a2.kv(), IntentKind::Leave)
        .expect("leave");
    a2.group = Some(group);
    node.settle(&mut [&mut a2, &mut a1, &mut b1], &identities);

    let left = a2.group.as_ref().expect("kept, read-only");
    assert!(!left.is_active(), "{:?}", a2.events);
    assert_eq!(leaf_keys(&a2), 0, "the leaf key is deleted");
    assert!(
        a2.kv()
            .raw_group_entries(&group_id)
            .expect("read")
            .is_empty(),
        "and the MLS state"
    );
    let members = a1.group.as_ref().expect("in the DM").members();
    assert_eq!(members.get(&a1.inbox).map(|s| s.len()), Some(1));
    let id = b1.send("still here");
    node.settle(&mut [&mut a1, &mut b1], &identities);
    assert!(a1.messages().iter().any(|m| m.message_id == id));
}
