//! The node's store on sled: the shared `NodeStore` suite, and that what was
//! acknowledged is there after reopening.

use kith_engine::delivery::{
    Cursor, Envelope, NodeStore, SealedEnvelope, Topic, test_suite::node_store_suite,
};
use kith_storage::SledNodeStore;

#[test]
fn sled_node_store_passes_the_suite() {
    let dir = tempfile::tempdir().expect("tempdir");
    node_store_suite(&SledNodeStore::open(dir.path().join("node")).expect("open"));
}

#[test]
fn acknowledged_envelopes_survive_reopening_with_their_cursors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("node");
    let topic = Topic::Group(b"g".to_vec());
    let acknowledged = {
        let store = SledNodeStore::open(&path).expect("open");
        let mut all = Vec::new();
        for i in 0..20u8 {
            all.extend(
                store
                    .append_envelopes(
                        5,
                        vec![(topic.clone(), vec![i])],
                        1_000 + u64::from(i),
                        &seal,
                    )
                    .expect("append"),
            );
        }
        all
    };
    let store = SledNodeStore::open(&path).expect("reopen");
    let found = store
        .query_envelopes(&topic, &Cursor::new(), 100)
        .expect("query");
    assert_eq!(found, acknowledged);
    // Sequence ids continue where they stopped.
    let next = store
        .append_envelopes(5, vec![(topic, vec![99])], 0, &seal)
        .expect("append");
    assert_eq!(next[0].envelope.originator_sequence_id, 21);
    assert_eq!(
        next[0].envelope.originator_time_ms, 1_019,
        "time never goes back"
    );
    assert_eq!(
        store
            .originated_envelopes(5, 0, 100)
            .expect("originated")
            .len(),
        21,
        "the by-originator index survives too"
    );
}

fn seal(envelope: &Envelope) -> Vec<u8> {
    envelope.originator_sequence_id.to_le_bytes().to_vec()
}

/// A store written before seals existed (schema 1: `time | payload`, no
/// by-originator index, no version key) is upgraded when opened, and
/// nothing in it is lost.
#[test]
fn a_store_from_before_seals_is_upgraded_without_loss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("node");
    let topic = Topic::Group(b"old".to_vec());
    {
        let db = sled::open(&path).expect("sled");
        let tree = db.open_tree("kith-node").expect("tree");
        let topic_key = topic.to_key();
        for sequence in 1..=3u64 {
            let mut key = vec![b'e'];
            key.extend_from_slice(&u16::try_from(topic_key.len()).expect("short").to_be_bytes());
            key.extend_from_slice(&topic_key);
            key.extend_from_slice(&1u32.to_be_bytes());
            key.extend_from_slice(&sequence.to_be_bytes());
            let mut value = (500 + sequence).to_be_bytes().to_vec();
            value.extend_from_slice(format!("payload {sequence}").as_bytes());
            tree.insert(key, value).expect("insert");
        }
        let mut head = 3u64.to_be_bytes().to_vec();
        head.extend_from_slice(&503u64.to_be_bytes());
        let mut head_key = vec![b'h'];
        head_key.extend_from_slice(&1u32.to_be_bytes());
        tree.insert(head_key, head).expect("insert");
        db.flush().expect("flush");
    }
    let expected: Vec<SealedEnvelope> = (1..=3u64)
        .map(|sequence| SealedEnvelope {
            envelope: Envelope {
                topic: topic.clone(),
                payload: format!("payload {sequence}").into_bytes(),
                originator_node_id: 1,
                originator_sequence_id: sequence,
                originator_time_ms: 500 + sequence,
            },
            seal: Vec::new(),
        })
        .collect();
    for _ in 0..2 {
        // Twice: the upgrade happens once, and a second open leaves it.
        let store = SledNodeStore::open(&path).expect("open and upgrade");
        assert_eq!(
            store
                .query_envelopes(&topic, &Cursor::new(), 100)
                .expect("query"),
            expected
        );
        assert_eq!(
            store.originated_envelopes(1, 0, 100).expect("originated"),
            expected
        );
        assert_eq!(store.heads().expect("heads").get(1), 3);
    }
    let store = SledNodeStore::open(&path).expect("open");
    let next = store
        .append_envelopes(1, vec![(topic, b"new".to_vec())], 400, &seal)
        .expect("append");
    assert_eq!(next[0].envelope.originator_sequence_id, 4);
    assert_eq!(next[0].envelope.originator_time_ms, 503);
}

#[test]
fn the_node_secret_survives_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("node");
    let first = SledNodeStore::open(&path)
        .expect("open")
        .node_secret([1; 32])
        .expect("secret");
    let again = SledNodeStore::open(&path)
        .expect("reopen")
        .node_secret([2; 32])
        .expect("secret");
    assert_eq!(again, first);
    assert_eq!(first, [1; 32]);
}
