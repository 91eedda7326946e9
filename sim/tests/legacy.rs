//! A migrated conversation's legacy id is part of the immutable metadata:
//! a member whose client was altered to change it (or to drop it) commits
//! in vain, since every other member rejects the commit and keeps the id,
//! and the group goes on.

use std::collections::BTreeMap;

use kith_engine::group::{GroupConfig, GroupEvent, LegacyConversation};
use kith_sim::world::World;

fn legacy(id: &str) -> LegacyConversation {
    LegacyConversation {
        id: id.into(),
        metadata: BTreeMap::from([("topic".into(), format!("/xmtp/0/m-{id}/proto"))]),
    }
}

/// `forger` publishes a commit that sets the legacy conversation to
/// `forged`, and every member (the forger too) handles it.
fn forge(w: &mut World, forger: usize, forged: Option<LegacyConversation>, sequence: u64) {
    let mut metadata = w.group(forger).metadata().clone();
    metadata.immutable.legacy = forged;
    let inbox = w.clients[forger].inbox;
    let keys = w.clients[forger].keys.clone();
    let commit = w.clients[forger]
        .step(|group, provider, _| {
            let me = kith_engine::group::Me { inbox, keys: &keys };
            Ok(group.forged_metadata_commit_for_tests(provider, me, &metadata)?)
        })
        .expect("forge the commit");
    let envelope = w.env(100 + sequence, 1, sequence, commit);
    for member in 0..w.clients.len() {
        w.handle(member, &envelope, 100 + sequence);
    }
}

#[test]
fn a_commit_that_changes_or_drops_the_legacy_id_is_rejected_by_every_member() {
    let mut w = World::migrated(
        23,
        1_000_000,
        3,
        3,
        GroupConfig::default(),
        Some(legacy("v2-1")),
    );
    let epoch = w.state(0).0;
    for (sequence, forged) in [(11, Some(legacy("v2-evil"))), (12, None)] {
        forge(&mut w, 2, forged, sequence);
        for member in 0..2 {
            assert_eq!(
                w.group(member).metadata().immutable.legacy,
                Some(legacy("v2-1")),
                "member {member} kept the legacy id"
            );
            assert_eq!(
                w.state(member).0,
                epoch,
                "member {member} stayed at its epoch"
            );
            assert!(
                w.events(member).iter().any(|e| matches!(
                    e,
                    GroupEvent::CommitRejected { reason } if reason.contains("immutable metadata")
                )),
                "member {member} reported the rejected commit: {:?}",
                w.events(member)
            );
        }
    }
    // The group goes on: a message sent after the forgeries reads at
    // every member, the forger included.
    w.send(0, "still here", 200);
    for item in w.outbox(0) {
        let envelope = w.env(200, 1, 20, item.payload);
        for member in 1..3 {
            w.handle(member, &envelope, 200);
        }
    }
    for member in 1..3 {
        assert!(
            w.events(member).iter().any(|e| matches!(
                e,
                GroupEvent::Message(m) if m.body == b"still here"
            )),
            "member {member} read the message after the forgeries"
        );
    }
}
