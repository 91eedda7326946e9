//! The commit flow on the sans-IO engine, with an in-test node: an own
//! commit that loses to another member's is cleared and regenerated, and
//! no sender-ratchet generation is used twice (a receiver would fail with
//! `SecretReuseError`), for messages sent while the commit was pending and
//! after it was cleared, and for a proposal sent afterwards. And a commit
//! that disagrees with a receiver's cached identity log asks for the log to
//! be read again (a replicating node may have revised it) before it is
//! refused.

use kith_engine::{
    delivery::{Envelope, Topic},
    group::{
        ConversationKind, Group, GroupConfig, GroupError, GroupEvent, IdentityCache, IntentKind,
        Me, NewGroup, PolicyPreset, ProposalPolicy,
    },
    identity::{
        DEFAULT_LIFETIME_SECS, InboxId, InstallationKeys, LocalWallet, UnsignedIdentityUpdate,
        generate_key_package,
    },
};
use kith_storage::{KithProvider, SledMlsStorage, StorageConfig};
use openmls::prelude::OpenMlsProvider as _;
use openmls::prelude::{MlsMessageOut, tls_codec::Serialize as _};
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

struct Member {
    provider: KithProvider,
    keys: InstallationKeys,
    inbox: InboxId,
    events: Vec<GroupEvent>,
}

impl Member {
    fn kv(&self) -> &SledMlsStorage {
        self.provider.storage()
    }

    fn me(&self) -> Me<'_> {
        Me {
            inbox: self.inbox,
            keys: &self.keys,
        }
    }

    fn drain(&mut self, group: &mut Group) {
        while let Some(event) = group.poll_event() {
            self.events.push(event);
        }
    }
}

fn member(rng: &mut ChaCha20Rng, identities: &mut IdentityCache) -> Member {
    let wallet = LocalWallet::generate(rng);
    let keys = InstallationKeys::generate(rng);
    let unsigned = UnsignedIdentityUpdate::add_installation(wallet.inbox_id(), &keys, 1, now_ms());
    let signature = wallet.sign_personal(unsigned.signature_text().as_bytes());
    identities
        .extend(wallet.inbox_id(), [unsigned.sign(signature, Some(&keys))])
        .expect("valid log");
    Member {
        provider: KithProvider::from_storage(
            SledMlsStorage::from_db(
                sled::Config::new().temporary(true).open().expect("sled"),
                StorageConfig::default(),
            )
            .expect("storage"),
        ),
        keys,
        inbox: wallet.inbox_id(),
        events: Vec::new(),
    }
}

/// The node: an ordered topic.
#[derive(Default)]
struct Node {
    envelopes: Vec<Envelope>,
}

impl Node {
    fn publish(&mut self, topic: &str, payload: Vec<u8>) -> Envelope {
        let sequence = self.envelopes.len() as u64 + 1;
        let envelope = Envelope {
            topic: topic.parse().expect("topic"),
            payload,
            originator_node_id: 1,
            originator_sequence_id: sequence,
            originator_time_ms: now_ms() + sequence,
        };
        self.envelopes.push(envelope.clone());
        envelope
    }

    /// Publish everything `group` has queued.
    fn flush(&mut self, group: &mut Group, member: &Member) -> Vec<Envelope> {
        let mut out = Vec::new();
        while let Some(item) = group.poll_outbound() {
            for topic in &item.topics {
                out.push(self.publish(topic, item.payload.clone()));
            }
            group.ack_outbound(member.kv(), &item).expect("ack");
        }
        out
    }

    fn deliver(&self, group: &mut Group, member: &mut Member, identities: &IdentityCache) {
        let topic = Topic::Group(group.group_id().to_vec());
        for envelope in self.envelopes.iter().filter(|e| e.topic == topic) {
            group
                .handle_envelope(
                    &member.provider,
                    member.kv(),
                    identities,
                    envelope,
                    now_ms(),
                )
                .expect("handle");
        }
        member.drain(group);
    }
}

fn texts(member: &Member, group: &Group) -> Vec<String> {
    kith_engine::group::ClientStore(member.kv())
        .messages(&group.conversation_id())
        .expect("messages")
        .into_iter()
        .filter(|m| m.content_type == kith_engine::group::CONTENT_TYPE_TEXT)
        .map(|m| String::from_utf8(m.body).expect("utf-8"))
        .collect()
}

#[test]
fn a_lost_commit_is_regenerated_and_no_generation_is_reused() {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let mut identities = IdentityCache::new();
    let mut alice = member(&mut rng, &mut identities);
    let mut bob = member(&mut rng, &mut identities);
    let mut node = Node::default();

    let mut a = Group::create(
        &alice.provider,
        alice.kv(),
        alice.me(),
        &identities,
        NewGroup {
            kind: ConversationKind::Group,
            dm_peer: None,
            dm_mode: kith_engine::identity::DmMode::NonRepudiable,
            attributes: Default::default(),
            preset: PolicyPreset::Default,
            now_ms: now_ms(),
            legacy: None,
            gating: Default::default(),
        },
    )
    .expect("create");
    // Changes go out as commits here: this test is about racing commits
    // (proposals first has tests of its own, in `proposals.rs`).
    let commits_only = GroupConfig {
        proposals: ProposalPolicy {
            propose_first: false,
            ..ProposalPolicy::default()
        },
        ..GroupConfig::default()
    };
    a.set_config(commits_only);
    let key_package = generate_key_package(
        &bob.provider,
        &bob.keys,
        bob.inbox,
        now_ms() / 1000,
        DEFAULT_LIFETIME_SECS,
        false,
    )
    .expect("key package");
    let key_package = MlsMessageOut::from(key_package)
        .tls_serialize_detached()
        .expect("serialize");
    a.queue_intent(
        alice.kv(),
        IntentKind::AddMembers {
            key_packages: vec![key_package],
            sequences: vec![(bob.inbox, 1)],
            admissions: Vec::new(),
        },
    )
    .expect("queue");
    a.advance(
        &alice.provider,
        alice.kv(),
        alice.me(),
        &identities,
        now_ms(),
    )
    .expect("advance");
    assert!(a.has_pending_commit());
    assert_eq!(a.epoch(), 0, "staging a commit does not move the epoch");
    node.flush(&mut a, &alice);
    node.deliver(&mut a, &mut alice, &identities);
    assert_eq!(
        a.epoch(),
        1,
        "the own commit came back first and was merged"
    );
    let welcomes = node.flush(&mut a, &alice);
    assert_eq!(welcomes.len(), 1, "the Welcome goes out after the merge");
    let mut b = Group::join(
        &bob.provider,
        bob.kv(),
        bob.me(),
        &identities,
        &welcomes[0].payload,
        now_ms(),
    )
    .expect("join")
    .expect("new group");
    b.set_config(commits_only);

    // Bob commits first; Alice stages a commit and sends while it pends.
    b.queue_intent(bob.kv(), IntentKind::UpdateKeys)
        .expect("queue");
    b.advance(&bob.provider, bob.kv(), bob.me(), &identities, now_ms())
        .expect("advance");
    node.flush(&mut b, &bob);
    a.queue_intent(
        alice.kv(),
        IntentKind::UpdateAttributes {
            changes: vec![("name".into(), Some("mine".into()))],
        },
    )
    .expect("queue");
    a.advance(
        &alice.provider,
        alice.kv(),
        alice.me(),
        &identities,
        now_ms(),
    )
    .expect("advance");
    for text in ["pending 1", "pending 2"] {
        a.send_message(
            &alice.provider,
            alice.kv(),
            alice.me(),
            kith_engine::group::Outgoing::new("text/plain", text.as_bytes()),
            now_ms(),
        )
        .expect("send while pending");
    }
    node.flush(&mut a, &alice);

    // Alice sees Bob's commit first: hers is cleared and regenerated.
    node.deliver(&mut a, &mut alice, &identities);
    assert_eq!(a.epoch(), 2);
    assert_eq!(a.metadata().name(), None, "her change is not in yet");
    a.advance(
        &alice.provider,
        alice.kv(),
        alice.me(),
        &identities,
        now_ms(),
    )
    .expect("regenerate");
    assert!(a.has_pending_commit(), "regenerated on the new epoch");
    a.send_message(
        &alice.provider,
        alice.kv(),
        alice.me(),
        kith_engine::group::Outgoing::new("text/plain", b"after clearing"),
        now_ms(),
    )
    .expect("send");
    node.flush(&mut a, &alice);
    node.deliver(&mut a, &mut alice, &identities);
    assert_eq!(a.epoch(), 3);
    assert_eq!(a.metadata().name(), Some("mine"));
    a.send_message(
        &alice.provider,
        alice.kv(),
        alice.me(),
        kith_engine::group::Outgoing::new("text/plain", b"epoch 3"),
        now_ms(),
    )
    .expect("send");
    // A proposal after the commit: Alice leaves.
    a.queue_intent(alice.kv(), IntentKind::Leave)
        .expect("queue");
    a.advance(
        &alice.provider,
        alice.kv(),
        alice.me(),
        &identities,
        now_ms(),
    )
    .expect("propose");
    node.flush(&mut a, &alice);

    node.deliver(&mut b, &mut bob, &identities);
    assert_eq!(b.epoch(), 3);
    assert_eq!(b.epoch_authenticator(), a.epoch_authenticator());
    assert_eq!(
        texts(&bob, &b),
        ["pending 1", "pending 2", "after clearing", "epoch 3"]
    );
    let skipped: Vec<&String> = bob
        .events
        .iter()
        .filter_map(|e| match e {
            GroupEvent::EnvelopeSkipped { reason } => Some(reason),
            _ => None,
        })
        .collect();
    // Only Alice's lost commit (of a past epoch) is skipped; nothing failed
    // for a reused generation.
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(!skipped[0].contains("SecretReuse"), "{skipped:?}");
    // Bob holds Alice's leave proposal and will commit it.
    b.advance(&bob.provider, bob.kv(), bob.me(), &identities, now_ms())
        .expect("commit the leave");
    node.flush(&mut b, &bob);
    node.deliver(&mut b, &mut bob, &identities);
    assert_eq!(b.members().len(), 1, "Alice left");
    node.deliver(&mut a, &mut alice, &identities);
    assert!(!a.is_active());
    assert!(alice.events.contains(&GroupEvent::Removed));
}

/// `member` handles `envelope` in one storage step: kept if it succeeds,
/// discarded if it fails.
fn handle_in_step(
    member: &Member,
    group: &mut Group,
    identities: &IdentityCache,
    envelope: &Envelope,
) -> Result<(), GroupError> {
    let step = member.kv().begin_step().expect("step");
    group.handle_envelope(
        &member.provider,
        member.kv(),
        identities,
        envelope,
        now_ms(),
    )?;
    step.commit().expect("commit the step");
    Ok(())
}

/// A key package of `keys` for `inbox`, serialized.
fn key_package(member: &Member, keys: &InstallationKeys, inbox: InboxId) -> Vec<u8> {
    let key_package = generate_key_package(
        &member.provider,
        keys,
        inbox,
        now_ms() / 1000,
        DEFAULT_LIFETIME_SECS,
        false,
    )
    .expect("key package");
    MlsMessageOut::from(key_package)
        .tls_serialize_detached()
        .expect("serialize")
}

/// Bob's inbox has a first device at sequence 1, and two devices took
/// sequence 2 on two replicating nodes. Alice's node settled on the winner
/// and she adds it; Dave and Erin had read the loser. Dave's cache allows
/// revisions: the commit disputes his log, he reads it again (the node has
/// revised it by now) and merges. Erin reads it again too but her node
/// still serves the loser: the commit is refused, as it always is where a
/// cached log is final.
#[test]
fn a_commit_that_disputes_a_cached_log_asks_for_it_again_before_it_is_refused() {
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let mut identities = IdentityCache::new();
    let mut alice = member(&mut rng, &mut identities);
    let dave = member(&mut rng, &mut identities);
    let mut erin = member(&mut rng, &mut identities);
    let bob_wallet = LocalWallet::generate(&mut rng);
    let bob = bob_wallet.inbox_id();
    let add = |keys: &InstallationKeys, sequence: u64| {
        let unsigned = UnsignedIdentityUpdate::add_installation(bob, keys, sequence, now_ms());
        let signature = bob_wallet.sign_personal(unsigned.signature_text().as_bytes());
        unsigned.sign(signature, Some(keys))
    };
    let (first, loser, winner) = (
        InstallationKeys::generate(&mut rng),
        InstallationKeys::generate(&mut rng),
        InstallationKeys::generate(&mut rng),
    );
    identities
        .extend(bob, [add(&first, 1), add(&winner, 2)])
        .expect("the winning log");
    let mut stale = identities.clone();
    assert!(
        stale
            .replace(bob, vec![add(&first, 1), add(&loser, 2)])
            .expect("the losing log")
    );
    stale.allow_revisions();
    let mut node = Node::default();

    let mut a = Group::create(
        &alice.provider,
        alice.kv(),
        alice.me(),
        &identities,
        NewGroup {
            kind: ConversationKind::Group,
            dm_peer: None,
            dm_mode: kith_engine::identity::DmMode::NonRepudiable,
            attributes: Default::default(),
            preset: PolicyPreset::Default,
            now_ms: now_ms(),
            legacy: None,
            gating: Default::default(),
        },
    )
    .expect("create");
    let commits_only = GroupConfig {
        proposals: ProposalPolicy {
            propose_first: false,
            ..ProposalPolicy::default()
        },
        ..GroupConfig::default()
    };
    a.set_config(commits_only);
    let add_members = |a: &mut Group, alice: &mut Member, node: &mut Node, intent| {
        a.queue_intent(alice.kv(), intent).expect("queue");
        a.advance(
            &alice.provider,
            alice.kv(),
            alice.me(),
            &identities,
            now_ms(),
        )
        .expect("advance");
        node.flush(a, alice);
        node.deliver(a, alice, &identities);
        node.flush(a, alice)
    };
    let welcomes = add_members(
        &mut a,
        &mut alice,
        &mut node,
        IntentKind::AddMembers {
            key_packages: vec![
                key_package(&dave, &dave.keys, dave.inbox),
                key_package(&erin, &erin.keys, erin.inbox),
            ],
            sequences: vec![(dave.inbox, 1), (erin.inbox, 1)],
            admissions: Vec::new(),
        },
    );
    let join = |who: &Member, cache: &IdentityCache| {
        let mut group = welcomes
            .iter()
            .find_map(|w| {
                Group::join(
                    &who.provider,
                    who.kv(),
                    who.me(),
                    cache,
                    &w.payload,
                    now_ms(),
                )
                .ok()
                .flatten()
            })
            .expect("joined");
        group.set_config(commits_only);
        group
    };
    let (mut d, mut e) = (join(&dave, &identities), join(&erin, &identities));
    assert_eq!(d.epoch(), a.epoch());

    let before = a.epoch();
    let winner_package = key_package(&alice, &winner, bob);
    add_members(
        &mut a,
        &mut alice,
        &mut node,
        IntentKind::AddMembers {
            key_packages: vec![winner_package],
            sequences: vec![(bob, 2)],
            admissions: Vec::new(),
        },
    );
    assert_eq!(a.epoch(), before + 1, "Alice merged her commit");
    let topic = Topic::Group(a.group_id().to_vec());
    let commit = node
        .envelopes
        .iter()
        .rfind(|e| e.topic == topic)
        .expect("the commit")
        .clone();

    // Dave: the commit disputes his cached log; nothing changes.
    let disputed = handle_in_step(&dave, &mut d, &stale, &commit);
    match disputed {
        Err(GroupError::IdentitiesDisputed(inboxes)) => assert_eq!(inboxes, [bob]),
        other => panic!("expected a dispute over Bob's log, got {other:?}"),
    }
    let mut d = Group::load(&dave.provider, dave.kv(), a.group_id())
        .expect("load")
        .expect("Dave's group");
    d.set_config(commits_only);
    assert_eq!(d.epoch(), before, "a dispute changes nothing");
    // He reads the log again: his node has revised it.
    let mut reread = stale.clone();
    assert!(
        reread
            .replace(bob, identities.updates(&bob).to_vec())
            .expect("revised")
    );
    reread.mark_reread(bob);
    handle_in_step(&dave, &mut d, &reread, &commit).expect("merged after reading the log again");
    assert_eq!(d.epoch(), a.epoch());
    assert_eq!(d.epoch_authenticator(), a.epoch_authenticator());

    // Erin: read again, her node still serves the loser; refused.
    let mut still_stale = stale.clone();
    still_stale.mark_reread(bob);
    handle_in_step(&erin, &mut e, &still_stale, &commit).expect("a refused commit is handled");
    erin.drain(&mut e);
    assert_eq!(e.epoch(), before, "the commit was not merged");
    assert!(
        erin.events
            .iter()
            .any(|event| matches!(event, GroupEvent::CommitRejected { .. })),
        "{:?}",
        erin.events
    );
}
