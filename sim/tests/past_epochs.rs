//! How many past epochs' secrets a member keeps follows the group's size
//! (`past_epochs_for`), on the committer, on a member that merges the
//! commit and on a joiner; a message sent that many commits back still
//! decrypts, and one sent a commit further back is skipped with a reason,
//! without wedging the group. A removal that shrinks the group gives the
//! epochs back.
//!
//! The group is a creator, Bob, and 258 installations that exist only as
//! key packages (their owners never read): 260 installations, just past
//! the size at which the budget starts to bite.

use kith_engine::{
    delivery::{Envelope, Topic},
    group::{
        ConversationKind, Group, GroupConfig, GroupEvent, IdentityCache, IntentKind,
        MAX_PAST_EPOCHS, Me, NewGroup, PolicyPreset, ProposalPolicy, past_epochs_for,
    },
    identity::{
        DEFAULT_LIFETIME_SECS, InboxId, InstallationKeys, LocalWallet, UnsignedIdentityUpdate,
        generate_key_package,
    },
};
use kith_storage::{KithProvider, SledMlsStorage, StorageConfig};
use openmls::prelude::{MlsMessageOut, OpenMlsProvider as _, tls_codec::Serialize as _};
use rand_chacha::{ChaCha20Rng, rand_core::SeedableRng as _};

const GROUP_SIZE: usize = 260;

/// OpenMLS checks key-package lifetimes against the system clock.
#[allow(clippy::disallowed_methods)]
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .expect("clock after 1970")
}

fn provider() -> KithProvider {
    KithProvider::from_storage(
        SledMlsStorage::from_db(
            sled::Config::new().temporary(true).open().expect("sled"),
            StorageConfig::default(),
        )
        .expect("storage"),
    )
}

/// An installation: its keys, its inbox, and its provider (where its key
/// packages' private keys live).
struct Installation {
    provider: KithProvider,
    keys: InstallationKeys,
    inbox: InboxId,
}

impl Installation {
    fn new(rng: &mut ChaCha20Rng, identities: &mut IdentityCache, provider: KithProvider) -> Self {
        let wallet = LocalWallet::generate(rng);
        let keys = InstallationKeys::generate(rng);
        let unsigned =
            UnsignedIdentityUpdate::add_installation(wallet.inbox_id(), &keys, 1, now_ms());
        let signature = wallet.sign_personal(unsigned.signature_text().as_bytes());
        identities
            .extend(wallet.inbox_id(), [unsigned.sign(signature, Some(&keys))])
            .expect("valid log");
        Self {
            provider,
            keys,
            inbox: wallet.inbox_id(),
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

    fn key_package(&self) -> Vec<u8> {
        encode(generate_key_package(
            &self.provider,
            &self.keys,
            self.inbox,
            now_ms() / 1000,
            DEFAULT_LIFETIME_SECS,
            false,
        ))
    }
}

/// An installation that exists only as a registered inbox and a key
/// package in `provider`.
fn bare_installation(
    rng: &mut ChaCha20Rng,
    identities: &mut IdentityCache,
    provider: &KithProvider,
) -> (InboxId, Vec<u8>) {
    let wallet = LocalWallet::generate(rng);
    let keys = InstallationKeys::generate(rng);
    let unsigned = UnsignedIdentityUpdate::add_installation(wallet.inbox_id(), &keys, 1, now_ms());
    let signature = wallet.sign_personal(unsigned.signature_text().as_bytes());
    identities
        .extend(wallet.inbox_id(), [unsigned.sign(signature, Some(&keys))])
        .expect("valid log");
    (
        wallet.inbox_id(),
        encode(generate_key_package(
            provider,
            &keys,
            wallet.inbox_id(),
            now_ms() / 1000,
            DEFAULT_LIFETIME_SECS,
            false,
        )),
    )
}

fn encode<E: std::fmt::Debug>(key_package: Result<openmls::prelude::KeyPackage, E>) -> Vec<u8> {
    MlsMessageOut::from(key_package.expect("key package"))
        .tls_serialize_detached()
        .expect("serialize")
}

/// The node: one ordered topic per group, and a Welcome topic each.
#[derive(Default)]
struct Node {
    envelopes: Vec<Envelope>,
}

impl Node {
    fn publish(&mut self, sealed: Vec<(String, Vec<u8>)>) -> Vec<Envelope> {
        sealed
            .into_iter()
            .map(|(topic, payload)| {
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
            })
            .collect()
    }

    /// Publish everything `group` has queued.
    fn flush(&mut self, group: &mut Group, member: &Installation) -> Vec<Envelope> {
        let mut sealed = Vec::new();
        while let Some(item) = group.poll_outbound() {
            for topic in &item.topics {
                sealed.push((topic.clone(), item.payload.clone()));
            }
            group.ack_outbound(member.kv(), &item).expect("ack");
        }
        self.publish(sealed)
    }
}

fn handle(
    group: &mut Group,
    member: &Installation,
    identities: &IdentityCache,
    envelopes: &[Envelope],
) -> Vec<GroupEvent> {
    let topic = Topic::Group(group.group_id().to_vec());
    for envelope in envelopes.iter().filter(|e| e.topic == topic) {
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
    std::iter::from_fn(|| group.poll_event()).collect()
}

/// `who` commits `intent`; the commit comes back to it and reaches `bob`.
fn commit(
    node: &mut Node,
    identities: &IdentityCache,
    (creator, alice): (&mut Group, &Installation),
    bob: Option<(&mut Group, &Installation)>,
    intent: IntentKind,
) -> Vec<Envelope> {
    let epoch = creator.epoch();
    creator.queue_intent(alice.kv(), intent).expect("queue");
    creator
        .advance(
            &alice.provider,
            alice.kv(),
            alice.me(),
            identities,
            now_ms(),
        )
        .expect("advance");
    let out = node.flush(creator, alice);
    handle(creator, alice, identities, &out);
    assert_eq!(creator.epoch(), epoch + 1, "the commit was merged");
    if let Some((group, member)) = bob {
        handle(group, member, identities, &out);
        assert_eq!(group.epoch(), epoch + 1, "bob merged it too");
    }
    // The Welcome, if any, goes out after the merge.
    node.flush(creator, alice)
}

/// `member` encrypts `text` now; its envelope reaches the node only when
/// the test publishes what this returns (a sender that had not seen the
/// latest commits yet, or a slow link).
fn seal(group: &mut Group, member: &Installation, text: &str) -> Vec<(String, Vec<u8>)> {
    group
        .send_message(
            &member.provider,
            member.kv(),
            member.me(),
            "text/plain",
            text.as_bytes(),
            now_ms(),
        )
        .expect("send");
    let mut sealed = Vec::new();
    while let Some(item) = group.poll_outbound() {
        for topic in &item.topics {
            sealed.push((topic.clone(), item.payload.clone()));
        }
        group.ack_outbound(member.kv(), &item).expect("ack");
    }
    sealed
}

fn texts(events: &[GroupEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            GroupEvent::Message(m) => Some(String::from_utf8_lossy(&m.body).into_owned()),
            _ => None,
        })
        .collect()
}

#[test]
fn past_epochs_follow_the_group_size_and_late_messages_within_them_decrypt() {
    let mut rng = ChaCha20Rng::seed_from_u64(20);
    let mut identities = IdentityCache::new();
    let alice = Installation::new(&mut rng, &mut identities, provider());
    let bob = Installation::new(&mut rng, &mut identities, provider());
    // The bare installations share one provider: they only hold key packages.
    let bare_provider = provider();
    let bare: Vec<(InboxId, Vec<u8>)> = (0..GROUP_SIZE - 2)
        .map(|_| bare_installation(&mut rng, &mut identities, &bare_provider))
        .collect();
    let removed: Vec<InboxId> = bare[..GROUP_SIZE - 256].iter().map(|(i, _)| *i).collect();
    let mut node = Node::default();
    let commits_only = GroupConfig {
        proposals: ProposalPolicy {
            propose_first: false,
            ..ProposalPolicy::default()
        },
        ..GroupConfig::default()
    };

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
        },
    )
    .expect("create");
    a.set_config(commits_only);
    assert_eq!(a.past_epochs_kept_for_tests(), Some(MAX_PAST_EPOCHS));

    // The bulk add: the committer fits its store when it merges.
    commit(
        &mut node,
        &identities,
        (&mut a, &alice),
        None,
        IntentKind::AddMembers {
            sequences: bare.iter().map(|(inbox, _)| (*inbox, 1)).collect(),
            key_packages: bare.into_iter().map(|(_, kp)| kp).collect(),
        },
    );
    let kept = past_epochs_for(GROUP_SIZE - 1);
    assert!(kept < MAX_PAST_EPOCHS, "the budget bites at this size");
    assert_eq!(a.past_epochs_kept_for_tests(), Some(kept));

    // Bob joins: the joiner fits its store when it joins.
    let welcomes = commit(
        &mut node,
        &identities,
        (&mut a, &alice),
        None,
        IntentKind::AddMembers {
            key_packages: vec![bob.key_package()],
            sequences: vec![(bob.inbox, 1)],
        },
    );
    let kept = past_epochs_for(GROUP_SIZE);
    assert_eq!(a.past_epochs_kept_for_tests(), Some(kept));
    let welcome = welcomes
        .iter()
        .find(|e| e.topic == Topic::Welcome(bob.keys.id()))
        .expect("bob's Welcome");
    let mut b = Group::join(
        &bob.provider,
        bob.kv(),
        bob.me(),
        &identities,
        &welcome.payload,
        now_ms(),
    )
    .expect("join")
    .expect("a new group");
    b.set_config(commits_only);
    assert_eq!(b.past_epochs_kept_for_tests(), Some(kept));

    // A message `kept` commits late decrypts.
    let late = seal(&mut a, &alice, "kept commits late");
    for _ in 0..kept {
        commit(
            &mut node,
            &identities,
            (&mut a, &alice),
            Some((&mut b, &bob)),
            IntentKind::UpdateKeys,
        );
    }
    let late = node.publish(late);
    let events = handle(&mut b, &bob, &identities, &late);
    assert_eq!(texts(&events), ["kept commits late"], "{events:?}");

    // One commit later than that, it is skipped with a reason.
    let too_late = seal(&mut a, &alice, "one commit too late");
    for _ in 0..=kept {
        commit(
            &mut node,
            &identities,
            (&mut a, &alice),
            Some((&mut b, &bob)),
            IntentKind::UpdateKeys,
        );
    }
    let too_late = node.publish(too_late);
    let events = handle(&mut b, &bob, &identities, &too_late);
    assert!(texts(&events).is_empty(), "{events:?}");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, GroupEvent::EnvelopeSkipped { .. })),
        "the envelope is skipped with a reason: {events:?}"
    );

    // The group goes on, and a member that merges a removal fits its
    // store again: at 256 installations the budget keeps the most.
    let on_time = seal(&mut a, &alice, "on time");
    let on_time = node.publish(on_time);
    let events = handle(&mut b, &bob, &identities, &on_time);
    assert_eq!(texts(&events), ["on time"]);
    commit(
        &mut node,
        &identities,
        (&mut a, &alice),
        Some((&mut b, &bob)),
        IntentKind::RemoveMembers { inboxes: removed },
    );
    assert_eq!(past_epochs_for(256), MAX_PAST_EPOCHS);
    assert_eq!(a.past_epochs_kept_for_tests(), Some(MAX_PAST_EPOCHS));
    assert_eq!(b.past_epochs_kept_for_tests(), Some(MAX_PAST_EPOCHS));
}
