//! Behaviour every [`NodeStore`] must have. The in-memory store runs it in
//! this crate's tests; `kith-storage` runs it against sled (feature
//! `test-suite`).

use std::collections::BTreeSet;

use super::{Cursor, Envelope, KeyPackagePool, NodeStore, SealedEnvelope, Topic};
use crate::identity::{InboxId, InstallationId};

fn group(n: u8) -> Topic {
    Topic::Group(vec![n; 4])
}

/// A stand-in seal that names what it sealed, so the suite can check that
/// each envelope is stored and served with its own.
fn test_seal(envelope: &Envelope) -> Vec<u8> {
    let mut seal = b"seal".to_vec();
    seal.extend_from_slice(&envelope.originator_node_id.to_be_bytes());
    seal.extend_from_slice(&envelope.originator_sequence_id.to_be_bytes());
    seal
}

/// An envelope stamped by another originator, as replication brings it.
fn foreign(node: u32, sequence: u64, time: u64, topic: Topic, payload: &[u8]) -> SealedEnvelope {
    let envelope = Envelope {
        topic,
        payload: payload.to_vec(),
        originator_node_id: node,
        originator_sequence_id: sequence,
        originator_time_ms: time,
    };
    SealedEnvelope {
        seal: test_seal(&envelope),
        envelope,
    }
}

/// Run every check below against `store`, which must be empty.
///
/// # Panics
/// When the store misbehaves.
pub fn node_store_suite<S: NodeStore>(store: &S) {
    envelopes_are_sequenced_ordered_and_paged(store);
    identity_logs_append_only_in_sequence(store);
    identity_logs_are_revised_only_from_the_end_expected(store);
    key_packages_are_handed_out_once_then_last_resort(store);
    key_package_pools_are_apart(store);
    node_secret_is_set_once(store);
    replicated_envelopes_keep_their_fields_once_and_in_sequence(store);
}

fn envelopes_are_sequenced_ordered_and_paged<S: NodeStore>(store: &S) {
    let first = store
        .append_envelopes(
            1,
            vec![(group(1), b"a".to_vec()), (group(2), b"b".to_vec())],
            1_000,
            &test_seal,
        )
        .expect("append");
    assert_eq!(
        first
            .iter()
            .map(|e| e.envelope.originator_sequence_id)
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    // The clock went backwards: the node's time must not.
    let second = store
        .append_envelopes(1, vec![(group(1), b"c".to_vec())], 900, &test_seal)
        .expect("append");
    assert_eq!(second[0].envelope.originator_sequence_id, 3);
    assert_eq!(second[0].envelope.originator_time_ms, 1_000);
    assert!(
        first
            .iter()
            .chain(&second)
            .all(|e| e.seal == test_seal(&e.envelope)),
        "each envelope is stored with its seal"
    );
    // Another originator (replication) interleaves in canonical order.
    store
        .store_replicated(vec![foreign(2, 1, 950, group(1), b"x")])
        .expect("replicate");
    // An empty batch stores nothing and does not move the sequence.
    assert!(
        store
            .append_envelopes(1, vec![], 2_000, &test_seal)
            .expect("append")
            .is_empty()
    );

    let all = store
        .query_envelopes(&group(1), &Cursor::new(), 100)
        .expect("query");
    assert!(
        all.iter().all(|e| e.seal == test_seal(&e.envelope)),
        "queries serve each envelope with its seal"
    );
    let all: Vec<Envelope> = all.into_iter().map(|e| e.envelope).collect();
    let payloads: Vec<&[u8]> = all.iter().map(|e| e.payload.as_slice()).collect();
    assert_eq!(
        payloads,
        vec![b"x".as_slice(), b"a", b"c"],
        "canonical order"
    );
    assert!(all.windows(2).all(|w| w[0].canonical_cmp(&w[1]).is_lt()));

    // Paging with a vector cursor visits each envelope exactly once.
    let mut cursor = Cursor::new();
    let mut seen = Vec::new();
    loop {
        let page = store.query_envelopes(&group(1), &cursor, 1).expect("query");
        if page.is_empty() {
            break;
        }
        for sealed in page {
            cursor.advance(&sealed.envelope);
            seen.push(sealed.envelope);
        }
    }
    assert_eq!(seen, all);
    assert_eq!(cursor.get(1), 3);
    assert_eq!(cursor.get(2), 1);

    // A cursor filters per originator.
    let after_a = Cursor::from_iter([(1, 1)]);
    let rest = store
        .query_envelopes(&group(1), &after_a, 100)
        .expect("query");
    assert_eq!(rest.len(), 2);
    assert!(
        store
            .query_envelopes(&group(9), &Cursor::new(), 100)
            .expect("query")
            .is_empty()
    );
    let next = store
        .append_envelopes(1, vec![(group(2), b"d".to_vec())], 3_000, &test_seal)
        .expect("append");
    assert_eq!(
        next[0].envelope.originator_sequence_id, 4,
        "empty batches took no ids"
    );
}

fn identity_logs_append_only_in_sequence<S: NodeStore>(store: &S) {
    let inbox = InboxId::from_bytes([7; 20]);
    let other = InboxId::from_bytes([8; 20]);
    assert!(
        !store
            .append_identity_update(&inbox, 2, b"u2".to_vec())
            .expect("append")
    );
    assert!(
        store
            .append_identity_update(&inbox, 1, b"u1".to_vec())
            .expect("append")
    );
    assert!(
        !store
            .append_identity_update(&inbox, 1, b"again".to_vec())
            .expect("append")
    );
    assert!(
        store
            .append_identity_update(&inbox, 2, b"u2".to_vec())
            .expect("append")
    );
    let answers = store
        .identity_updates(&[(inbox, 0), (inbox, 1), (other, 0)], 100)
        .expect("get");
    assert_eq!(
        answers,
        vec![
            vec![(1, b"u1".to_vec()), (2, b"u2".to_vec())],
            vec![(2, b"u2".to_vec())],
            vec![],
        ]
    );
    assert_eq!(
        store.identity_updates(&[(inbox, 0)], 1).expect("get"),
        vec![vec![(1, b"u1".to_vec())]]
    );
}

fn identity_logs_are_revised_only_from_the_end_expected<S: NodeStore>(store: &S) {
    let inbox = InboxId::from_bytes([9; 20]);
    let log = |store: &S| -> Vec<Vec<u8>> {
        store.identity_updates(&[(inbox, 0)], 100).expect("get")[0]
            .iter()
            .map(|(_, u)| u.clone())
            .collect()
    };
    for (sequence, update) in [(1, b"a1"), (2, b"a2"), (3, b"a3")] {
        assert!(
            store
                .append_identity_update(&inbox, sequence, update.to_vec())
                .expect("append")
        );
    }
    // The log ends at 3, not 2: someone appended in between.
    assert!(
        !store
            .revise_identity_log(&inbox, 2, 2, vec![b"b2".to_vec()])
            .expect("revise")
    );
    // No sequence 0, and no gap after the end.
    assert!(
        !store
            .revise_identity_log(&inbox, 3, 0, vec![])
            .expect("revise")
    );
    assert!(
        !store
            .revise_identity_log(&inbox, 3, 5, vec![b"b5".to_vec()])
            .expect("revise")
    );
    assert_eq!(log(store), [b"a1".to_vec(), b"a2".to_vec(), b"a3".to_vec()]);
    // From 2 on: shorter, then longer.
    assert!(
        store
            .revise_identity_log(&inbox, 3, 2, vec![b"b2".to_vec()])
            .expect("revise")
    );
    assert_eq!(log(store), [b"a1".to_vec(), b"b2".to_vec()]);
    assert!(
        store
            .revise_identity_log(&inbox, 2, 2, vec![b"c2".to_vec(), b"c3".to_vec()])
            .expect("revise")
    );
    assert_eq!(log(store), [b"a1".to_vec(), b"c2".to_vec(), b"c3".to_vec()]);
    assert!(
        store
            .append_identity_update(&inbox, 4, b"c4".to_vec())
            .expect("append after a revision")
    );
    assert_eq!(
        store.identity_updates(&[(inbox, 2)], 100).expect("get")[0],
        vec![(3, b"c3".to_vec()), (4, b"c4".to_vec())]
    );
}

fn key_packages_are_handed_out_once_then_last_resort<S: NodeStore>(store: &S) {
    let victim = InstallationId([1; 32]);
    let empty = InstallationId([2; 32]);
    let one_time: Vec<Vec<u8>> = (0..50u8).map(|i| vec![i; 3]).collect();
    store
        .add_key_packages(
            KeyPackagePool::Ordinary,
            &victim,
            one_time.clone(),
            Some(b"last".to_vec()),
        )
        .expect("add");
    assert_eq!(
        store
            .one_time_key_packages_left(KeyPackagePool::Ordinary, &victim)
            .expect("count"),
        50
    );

    // Many concurrent takers: every one-time package exactly once.
    let taken: Vec<Vec<u8>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..5)
            .map(|_| {
                s.spawn(|| {
                    (0..10)
                        .map(|_| {
                            let got = store
                                .take_key_packages(KeyPackagePool::Ordinary, &[victim])
                                .expect("take");
                            let package = got[0].clone().expect("a package");
                            assert!(!package.last_resort);
                            package.bytes
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("taker"))
            .collect()
    });
    let distinct: BTreeSet<&Vec<u8>> = taken.iter().collect();
    assert_eq!(distinct.len(), 50, "no package handed out twice");
    assert_eq!(distinct, one_time.iter().collect());
    assert_eq!(
        store
            .one_time_key_packages_left(KeyPackagePool::Ordinary, &victim)
            .expect("count"),
        0
    );

    // Empty pool: the last-resort package, again and again, marked.
    let got = store
        .take_key_packages(KeyPackagePool::Ordinary, &[victim, empty, victim])
        .expect("take");
    assert_eq!(got[1], None);
    for package in [&got[0], &got[2]] {
        let package = package.as_ref().expect("last resort");
        assert!(package.last_resort);
        assert_eq!(package.bytes, b"last");
    }
    // A new upload refills; one-time packages come first again, oldest first.
    store
        .add_key_packages(
            KeyPackagePool::Ordinary,
            &victim,
            vec![b"n1".to_vec(), b"n2".to_vec()],
            None,
        )
        .expect("add");
    let got = store
        .take_key_packages(KeyPackagePool::Ordinary, &[victim])
        .expect("take");
    assert_eq!(got[0].as_ref().expect("one").bytes, b"n1");
    assert_eq!(
        store
            .one_time_key_packages_left(KeyPackagePool::Ordinary, &victim)
            .expect("count"),
        1
    );
}

fn key_package_pools_are_apart<S: NodeStore>(store: &S) {
    use KeyPackagePool::{Deniable, Ordinary};
    let installation = InstallationId([3; 32]);
    store
        .add_key_packages(
            Ordinary,
            &installation,
            vec![b"o1".to_vec()],
            Some(b"ol".to_vec()),
        )
        .expect("add");
    store
        .add_key_packages(
            Deniable,
            &installation,
            vec![b"d1".to_vec(), b"d2".to_vec()],
            Some(b"dl".to_vec()),
        )
        .expect("add");
    assert_eq!(
        store
            .one_time_key_packages_left(Ordinary, &installation)
            .expect("count"),
        1
    );
    assert_eq!(
        store
            .one_time_key_packages_left(Deniable, &installation)
            .expect("count"),
        2
    );
    // Only a pool with packages counts; asking takes nothing.
    let (only_last_resort, unknown) = (InstallationId([4; 32]), InstallationId([5; 32]));
    store
        .add_key_packages(Ordinary, &only_last_resort, vec![], Some(b"l".to_vec()))
        .expect("add");
    assert_eq!(
        store
            .has_key_packages(Ordinary, &[installation, only_last_resort, unknown])
            .expect("has"),
        [true, true, false]
    );
    assert_eq!(
        store
            .has_key_packages(Deniable, &[installation, only_last_resort])
            .expect("has"),
        [true, false]
    );
    assert_eq!(
        store
            .one_time_key_packages_left(Ordinary, &installation)
            .expect("count"),
        1
    );
    let take = |pool| {
        store
            .take_key_packages(pool, &[installation])
            .expect("take")[0]
            .clone()
            .expect("a package")
            .bytes
    };
    // Purging removes only the one-time packages the predicate names, in
    // the pool asked, and counts what is left.
    store
        .add_key_packages(Ordinary, &installation, vec![b"old".to_vec()], None)
        .expect("add");
    assert_eq!(
        store
            .purge_key_packages(Ordinary, &installation, &|bytes| bytes == b"old")
            .expect("purge"),
        1
    );
    assert_eq!(
        store
            .purge_key_packages(Deniable, &installation, &|bytes| bytes == b"old")
            .expect("purge"),
        2
    );
    assert_eq!(
        store
            .purge_key_packages(Ordinary, &InstallationId([6; 32]), &|_| true)
            .expect("purge nothing"),
        0
    );
    assert_eq!(take(Deniable), b"d1");
    assert_eq!(take(Deniable), b"d2");
    // The deniable pool is empty: its own last resort, never an ordinary one.
    assert_eq!(take(Deniable), b"dl");
    assert_eq!(take(Ordinary), b"o1");
    assert_eq!(take(Ordinary), b"ol");
    assert_eq!(take(Deniable), b"dl");
    // A pool's last resort is replaced only by an upload to that pool.
    store
        .add_key_packages(Ordinary, &installation, Vec::new(), Some(b"ol2".to_vec()))
        .expect("add");
    assert_eq!(take(Deniable), b"dl");
    assert_eq!(take(Ordinary), b"ol2");
}

fn node_secret_is_set_once<S: NodeStore>(store: &S) {
    let first = store.node_secret([7; 32]).expect("secret");
    assert_eq!(first, [7; 32], "an empty store takes the fresh secret");
    assert_eq!(
        store.node_secret([8; 32]).expect("secret"),
        first,
        "a stored secret is never replaced"
    );
}

fn replicated_envelopes_keep_their_fields_once_and_in_sequence<S: NodeStore>(store: &S) {
    let topic = group(40);
    let own = store
        .append_envelopes(
            7,
            vec![
                (topic.clone(), b"own-1".to_vec()),
                (group(41), b"own-2".to_vec()),
            ],
            5_000,
            &test_seal,
        )
        .expect("append");
    let last_own = own[1].envelope.originator_sequence_id;

    // Node 8's envelopes arrive with their own fields, including an
    // earlier time than ours: they sort first.
    let first = foreign(8, 1, 4_000, topic.clone(), b"r1");
    let second = foreign(8, 2, 4_500, group(41), b"r2");
    let third = foreign(8, 3, 6_000, topic.clone(), b"r3");
    let stored = store
        .store_replicated(vec![first.clone(), second.clone()])
        .expect("replicate");
    assert_eq!(stored, vec![first.clone(), second.clone()]);

    // A copy changes nothing; a gap ends the batch before anything after it.
    let beyond = foreign(8, 5, 7_000, topic.clone(), b"r5");
    let stored = store
        .store_replicated(vec![
            second.clone(),
            third.clone(),
            beyond,
            foreign(8, 4, 6_500, topic.clone(), b"r4"),
        ])
        .expect("replicate");
    assert_eq!(
        stored,
        vec![third.clone()],
        "the copy is skipped; the gap ends the batch"
    );

    let heads = store.heads().expect("heads");
    assert_eq!(heads.get(7), last_own);
    assert_eq!(heads.get(8), 3);

    let page = store
        .query_envelopes(&topic, &Cursor::new(), 100)
        .expect("query");
    let payloads: Vec<&[u8]> = page.iter().map(|e| e.envelope.payload.as_slice()).collect();
    assert_eq!(
        payloads,
        vec![b"r1".as_slice(), b"own-1", b"r3"],
        "canonical order across originators"
    );
    assert_eq!(
        page[0], first,
        "replicated fields and seal are kept as they came"
    );

    // By originator, over all topics, in sequence order, after a sequence.
    let originated = store.originated_envelopes(8, 0, 100).expect("originated");
    assert_eq!(originated, vec![first, second.clone(), third.clone()]);
    assert_eq!(
        store.originated_envelopes(8, 1, 1).expect("originated"),
        vec![second]
    );
    assert_eq!(
        store
            .originated_envelopes(7, last_own - 2, 100)
            .expect("originated"),
        own
    );
    assert!(
        store
            .originated_envelopes(99, 0, 100)
            .expect("originated")
            .is_empty()
    );

    // The signing seed is set once, like the X25519 secret.
    let seed = store.node_signing_seed([5; 32]).expect("seed");
    assert_eq!(seed, [5; 32]);
    assert_eq!(store.node_signing_seed([6; 32]).expect("seed"), [5; 32]);
}

#[cfg(test)]
mod tests {
    #[test]
    fn memory_node_store() {
        super::node_store_suite(&super::super::MemoryNodeStore::default());
    }
}
