//! Transcript entries are the engine's own record of checked commits: a
//! member whose client was altered to send one as a message (claiming a
//! change nobody made) is skipped by every other member, with a reason,
//! and nothing is stored.

use kith_engine::group::{
    CONTENT_TYPE_GROUP_UPDATED, ClientStore, FieldChangeWire, GroupConfig, GroupEvent,
    GroupUpdateWire,
};
use kith_sim::world::World;
use prost::Message as _;

#[test]
fn a_transcript_entry_sent_as_a_message_is_skipped_by_every_member() {
    let mut w = World::at(41, 1_000_000, 3, 3, GroupConfig::default());
    let forged = GroupUpdateWire {
        by: w.clients[0].inbox.as_bytes().to_vec(),
        added: Vec::new(),
        removed: vec![w.clients[1].inbox.as_bytes().to_vec()],
        changes: vec![FieldChangeWire {
            field: "name".into(),
            old: None,
            new: Some("taken over".into()),
        }],
    }
    .encode_to_vec();
    let (inbox, keys) = (w.clients[2].inbox, w.clients[2].keys.clone());
    w.clients[2]
        .step(|group, provider, storage| {
            let me = kith_engine::group::Me { inbox, keys: &keys };
            Ok(group.send_unchecked_for_tests(
                provider,
                storage,
                me,
                CONTENT_TYPE_GROUP_UPDATED,
                &forged,
                1_000_100,
            )?)
        })
        .expect("send");
    // It goes out like a control message (no message id of its own), which
    // `World::outbox` leaves out: take it from the group directly.
    let out: Vec<Vec<u8>> = w
        .group(2)
        .pending_outbound()
        .map(|item| item.payload.clone())
        .collect();
    assert_eq!(out.len(), 1);
    let envelope = w.env(100, 1, 11, out[0].clone());
    for member in 0..2 {
        let before = stored_entries(&w, member);
        w.handle(member, &envelope, 100);
        assert_eq!(
            stored_entries(&w, member),
            before,
            "member {member} stored nothing"
        );
        assert!(
            w.events(member).iter().any(|e| matches!(
                e,
                GroupEvent::EnvelopeSkipped { reason } if reason.contains("control message")
            )),
            "member {member}: {:?}",
            w.events(member)
        );
    }
}

fn stored_entries(w: &World, member: usize) -> usize {
    let conversation = w.group(member).conversation_id();
    ClientStore(w.clients[member].storage())
        .messages(&conversation)
        .expect("messages")
        .iter()
        .filter(|m| m.content_type == CONTENT_TYPE_GROUP_UPDATED)
        .count()
}
