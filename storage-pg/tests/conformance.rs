//! The node-store conformance suite (`kith_engine::delivery::test_suite`),
//! unchanged, against PostgreSQL; and the schema's versioning.

mod common;

use common::TestDatabase;
use kith_engine::delivery::test_suite::node_store_suite;
use kith_storage_pg::{PgNodeStore, PgStoreError};

#[test]
fn the_node_store_suite_passes_on_postgres() {
    let Some(db) = TestDatabase::create("the_node_store_suite_passes_on_postgres") else {
        return;
    };
    let store = PgNodeStore::connect(&db.url).expect("connect");
    node_store_suite(&store);
}

#[test]
fn migrations_apply_once_and_a_newer_schema_is_refused() {
    let Some(db) = TestDatabase::create("migrations_apply_once_and_a_newer_schema_is_refused")
    else {
        return;
    };
    // Twice, as two processes starting one after the other would.
    drop(PgNodeStore::connect(&db.url).expect("first connect migrates"));
    drop(PgNodeStore::connect(&db.url).expect("second connect finds it done"));
    let mut client = postgres::Client::connect(&db.url, postgres::NoTls).expect("connect");
    let versions: Vec<i32> = client
        .query(
            "SELECT version FROM kith_schema_migrations ORDER BY version",
            &[],
        )
        .expect("read the migrations")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(versions, vec![1, 2]);
    client
        .execute(
            "INSERT INTO kith_schema_migrations (version) VALUES (999)",
            &[],
        )
        .expect("pretend a newer kith-node migrated");
    match PgNodeStore::connect(&db.url) {
        Err(PgStoreError::NewerSchema {
            found: 999,
            known: 2,
        }) => {}
        other => panic!("expected NewerSchema, got {other:?}"),
    }
}

#[test]
fn an_unreachable_database_is_reported_unavailable() {
    // A loopback port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let error = PgNodeStore::connect(&format!("postgres://postgres@127.0.0.1:{port}/kith"))
        .expect_err("nothing listens there");
    assert!(error.is_unavailable(), "{error}");
}
