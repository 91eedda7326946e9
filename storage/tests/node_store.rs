//! The node's store on sled: the shared `NodeStore` suite, and that what was
//! acknowledged is there after reopening.

use kith_engine::delivery::{Cursor, NodeStore, Topic, test_suite::node_store_suite};
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
                    .append_envelopes(5, vec![(topic.clone(), vec![i])], 1_000 + u64::from(i))
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
        .append_envelopes(5, vec![(topic, vec![99])], 0)
        .expect("append");
    assert_eq!(next[0].originator_sequence_id, 21);
    assert_eq!(next[0].originator_time_ms, 1_019, "time never goes back");
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
