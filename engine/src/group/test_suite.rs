//! Behaviour every implementation of the client-store port must have. The
//! in-memory store runs it in this crate's tests; `kith-storage` runs it
//! against sled (feature `test-suite`).

use rand_core::SeedableRng as _;

use super::{
    intent::{Intent, IntentKind, IntentState},
    records::{
        ConversationId, ConversationRecord, ConversationState, Delivery, Outbound, StoredMessage,
    },
    store::{ClientStore, KvStore, MessageRange},
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
        fallback: id.is_multiple_of(3).then(|| format!("fallback {id}")),
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

/// Pages of messages: by time, in both directions, continued from where
/// the last page ended, filtered, and with same-millisecond messages
/// neither lost nor repeated at a page boundary.
///
/// # Panics
/// When the store misbehaves.
pub fn message_pages_suite<S: KvStore>(kv: &S) {
    let store = ClientStore(kv);
    let a = ConversationId(vec![0x10]);
    // The next id in byte order: its messages must never leak into `a`'s.
    let b = ConversationId(vec![0x11]);
    // 40 messages, two per millisecond from 100 on.
    for id in 0..40u8 {
        store
            .insert_message(&message(&a, id, 100 + u64::from(id / 2)))
            .expect("insert");
    }
    store.insert_message(&message(&b, 99, 0)).expect("insert");
    store
        .insert_message(&message(&b, 98, u64::MAX))
        .expect("insert");
    let ids = |page: &[StoredMessage]| page.iter().map(|m| m.message_id[0]).collect::<Vec<_>>();
    let all = |_: &StoredMessage| true;

    // Every message once, in order, in pages of 7 either way.
    for descending in [false, true] {
        let mut range = MessageRange {
            descending,
            ..MessageRange::default()
        };
        let mut seen = Vec::new();
        loop {
            let page = store
                .messages_in(&a, &range, 7, &mut { all })
                .expect("page");
            assert!(page.len() <= 7);
            let Some(last) = page.last() else { break };
            range.after = Some((last.time_ms, last.message_id));
            seen.extend(ids(&page));
        }
        let mut expected: Vec<u8> = (0..40).collect();
        if descending {
            expected.reverse();
        }
        assert_eq!(seen, expected, "descending: {descending}");
    }

    // Time bounds: since is inclusive, until exclusive.
    let range = MessageRange {
        since_ms: Some(105),
        until_ms: Some(107),
        ..MessageRange::default()
    };
    assert_eq!(
        ids(&store
            .messages_in(&a, &range, 100, &mut { all })
            .expect("page")),
        [10, 11, 12, 13]
    );
    let newest_two = MessageRange {
        descending: true,
        ..MessageRange::default()
    };
    assert_eq!(
        ids(&store
            .messages_in(&a, &newest_two, 2, &mut { all })
            .expect("page")),
        [39, 38]
    );

    // A filter that passes over most of the store still fills the page.
    let mut every_tenth = |m: &StoredMessage| m.message_id[0].is_multiple_of(10);
    assert_eq!(
        ids(&store
            .messages_in(&a, &MessageRange::default(), 3, &mut every_tenth)
            .expect("page")),
        [0, 10, 20]
    );
    assert!(
        store
            .messages_in(&a, &MessageRange::default(), 0, &mut { all })
            .expect("page")
            .is_empty()
    );
    let empty = MessageRange {
        since_ms: Some(500),
        until_ms: Some(400),
        ..MessageRange::default()
    };
    assert!(
        store
            .messages_in(&a, &empty, 5, &mut { all })
            .expect("page")
            .is_empty()
    );
    assert_eq!(
        ids(&store
            .messages_in(&b, &newest_two, 5, &mut { all })
            .expect("page")),
        [98, 99]
    );
}

/// A store that keeps only the required methods of [`KvStore`], so that
/// the default `kv_range` is tested too.
#[cfg(test)]
struct ScanOnly(crate::group::store::MemoryKvStore);

#[cfg(test)]
impl KvStore for ScanOnly {
    type Error = std::convert::Infallible;

    fn kv_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Self::Error> {
        self.0.kv_get(key)
    }

    fn kv_put(&self, key: &[u8], value: &[u8]) -> Result<(), Self::Error> {
        self.0.kv_put(key, value)
    }

    fn kv_delete(&self, key: &[u8]) -> Result<(), Self::Error> {
        self.0.kv_delete(key)
    }

    fn kv_scan(&self, prefix: &[u8]) -> Result<super::store::KvEntries, Self::Error> {
        self.0.kv_scan(prefix)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_client_store() {
        super::client_store_suite(&crate::group::store::MemoryKvStore::default());
    }

    #[test]
    fn memory_message_pages() {
        super::message_pages_suite(&crate::group::store::MemoryKvStore::default());
    }

    #[test]
    fn default_range_message_pages() {
        super::message_pages_suite(&super::ScanOnly(Default::default()));
    }
}
