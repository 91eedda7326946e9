//! Behaviour every implementation of the client-store port must have. The
//! in-memory store runs it in this crate's tests; `kith-storage` runs it
//! against sled (feature `test-suite`).

use rand_core::SeedableRng as _;

use super::{
    intent::{Intent, IntentKind, IntentState},
    records::{
        ConversationId, ConversationRecord, ConversationState, Delivery, Outbound, StoredMessage,
    },
    store::{ClientStore, KvStore},
};
use crate::{
    delivery::{Cursor, Topic},
    identity::{InstallationKeys, LocalWallet, UnsignedIdentityUpdate},
};

fn message(conversation: &ConversationId, id: u8, time_ms: u64) -> StoredMessage {
    StoredMessage {
        conversation_id: conversation.clone(),
        group_id: vec![1, 2, 3],
        message_id: [id; 32],
        sender_inbox: crate::identity::InboxId::from_bytes([9; 20]),
        sender_installation: crate::identity::InstallationId([8; 32]),
        content_type: "text/plain".into(),
        body: vec![id],
        sent_at_ms: time_ms,
        time_ms,
        delivery: Delivery::Published,
        // Some unverified, so that the field's round trip is checked too.
        unbound_leaf: id.is_multiple_of(2).then_some([id; 32]),
    }
}

/// Conversations, messages (ordered by time, de-duplicated by id),
/// cursors, intents, the outbox and the identity cache round-trip, and one
/// conversation's records never show up under another's.
///
/// # Panics
/// When the store misbehaves.
pub fn client_store_suite<S: KvStore>(kv: &S) {
    let store = ClientStore(kv);
    let a = ConversationId(vec![0xaa]);
    // A prefix of `a`'s id must not see `a`'s records.
    let b = ConversationId(vec![0xaa, 0x01]);
    assert!(store.conversations().expect("list").is_empty());
    let record = ConversationRecord {
        id: a.clone(),
        dm_peer: None,
        group_ids: vec![vec![1, 2, 3]],
        created_at_ms: 5,
        state: ConversationState::Active,
        dm_mode: None,
    };
    store.put_conversation(&record).expect("put");
    assert_eq!(store.conversation(&a).expect("get"), Some(record.clone()));
    assert_eq!(store.conversation(&b).expect("get"), None);

    // Stored out of order, read back by time; a repeat is refused.
    for (id, time) in [(2, 20), (1, 10), (3, 30)] {
        assert!(
            store
                .insert_message(&message(&a, id, time))
                .expect("insert")
        );
    }
    assert!(
        !store.insert_message(&message(&a, 1, 99)).expect("insert"),
        "a message id is stored once per conversation"
    );
    assert!(store.insert_message(&message(&b, 1, 1)).expect("insert"));
    let bodies: Vec<Vec<u8>> = store
        .messages(&a)
        .expect("messages")
        .into_iter()
        .map(|m| m.body)
        .collect();
    assert_eq!(bodies, [vec![1], vec![2], vec![3]]);
    let mut updated = message(&a, 2, 20);
    updated.delivery = Delivery::Unpublished;
    store.update_message(&updated).expect("update");
    assert_eq!(
        store.message(&a, &[2; 32]).expect("get"),
        Some(updated),
        "an update replaces the message in place"
    );
    assert_eq!(store.messages(&b).expect("messages").len(), 1);

    let topic = Topic::Group(vec![1, 2, 3]);
    assert_eq!(store.cursor(&topic).expect("cursor"), Cursor::new());
    let cursor: Cursor = [(1, 7), (2, 3)].into_iter().collect();
    store.put_cursor(&topic, &cursor).expect("put");
    assert_eq!(store.cursor(&topic).expect("cursor"), cursor);

    let group = [1u8, 2, 3];
    for id in [2, 0, 1] {
        store
            .put_intent(
                &group,
                &Intent {
                    id,
                    kind: IntentKind::UpdateKeys,
                    state: IntentState::ToPublish,
                },
            )
            .expect("put");
    }
    store.remove_intent(&group, 1).expect("remove");
    let ids: Vec<u64> = store
        .intents(&group)
        .expect("intents")
        .iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(ids, [0, 2], "intents come back oldest first");
    assert!(store.intents(&[1, 2]).expect("intents").is_empty());

    let item = Outbound {
        id: 4,
        topics: vec![topic.to_string()],
        payload: vec![7; 10],
        message_id: Some([2; 32]),
    };
    store.push_outbox(&group, &item).expect("push");
    assert_eq!(store.outbox(&group).expect("outbox"), [item]);
    store.remove_outbox(&group, 4).expect("remove");
    assert!(store.outbox(&group).expect("outbox").is_empty());

    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
    let wallet = LocalWallet::generate(&mut rng);
    let keys = InstallationKeys::generate(&mut rng);
    let unsigned = UnsignedIdentityUpdate::add_installation(wallet.inbox_id(), &keys, 1, 1);
    let signature = wallet.sign_personal(unsigned.signature_text().as_bytes());
    let update = unsigned.sign(signature, Some(&keys));
    assert!(
        store
            .identity_updates(&wallet.inbox_id())
            .expect("identity")
            .is_empty()
    );
    store
        .put_identity_updates(&wallet.inbox_id(), std::slice::from_ref(&update))
        .expect("put");
    assert_eq!(
        store
            .identity_updates(&wallet.inbox_id())
            .expect("identity"),
        std::slice::from_ref(&update)
    );
    assert_eq!(store.all_identity_updates().expect("all"), [vec![update]]);
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_client_store() {
        super::client_store_suite(&crate::group::store::MemoryKvStore::default());
    }
}
