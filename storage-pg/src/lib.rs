//! [`PgNodeStore`]: the delivery-service node's [`NodeStore`] on PostgreSQL,
//! so that several stateless `kith-node` processes can serve one database
//! (`kith-node --database-url postgres://…`).
//!
//! # Client crate
//!
//! The [`NodeStore`] port is synchronous: the node calls it from tokio's
//! blocking pool, and the shared conformance suite calls it from plain
//! threads. So this store uses `postgres`, the synchronous face of
//! `tokio-postgres` (the same wire protocol code), pooled by `r2d2`. An
//! async client (sqlx, or tokio-postgres with deadpool) would have to be
//! driven by `block_on` from those threads, a runtime inside a runtime,
//! for nothing in return. Batching is what makes the store fast, and every
//! write here is one round trip of arrays (`unnest`) per batch.
//!
//! # One strong order over many processes
//!
//! - **Sequence ids** are assigned inside the writing transaction, under a
//!   row lock on the originator's `node_heads` row (`SELECT … FOR UPDATE`),
//!   held until commit. Two processes appending for the same originator
//!   queue on that lock, so ids are gap-free and in commit order: a reader
//!   never sees sequence `n + 1` committed before `n`.
//! - **Subscriptions** on every process learn of envelopes written through
//!   any other from `NOTIFY kith_envelopes`, sent inside each writing
//!   transaction (PostgreSQL delivers it at commit, in commit order). A
//!   listener thread per store turns it into a wake-up
//!   ([`NodeStore::watch_external_appends`]); the node then reads what it
//!   has not announced yet by sequence, so a notification lost while the
//!   listener reconnects costs nothing but latency (it also wakes every few
//!   seconds on its own).
//! - **Key packages** are taken with `DELETE … WHERE id = (SELECT … FOR
//!   UPDATE SKIP LOCKED)`: two processes taking at once take different
//!   packages, and each is handed out once.
//! - **Identity logs** are appended and revised under a transaction-scoped
//!   advisory lock on the inbox, with the log's length checked inside it.
//! - **Node secrets** are inserted once (`ON CONFLICT DO NOTHING`) and read
//!   back, so every process signs and MACs with the same keys.
//! - **Rate limits** hold across the processes: their token buckets are
//!   rows of `rate_buckets`, created if missing and then locked
//!   (`FOR UPDATE`, in key order so that two processes never deadlock),
//!   read, charged by the node and written back in one transaction
//!   ([`NodeStore::charge_buckets`]). A bucket idle long enough to be full
//!   again is forgotten.
//!
//! # Growth and retention
//!
//! `envelopes` is partitioned by range of sequence id
//! ([`ENVELOPE_PARTITION_SIZE`] per partition), created ahead of the
//! writes that need them; a default partition catches nothing in normal
//! operation. Retention is `DROP TABLE envelopes_p<n>` of a partition every
//! subscriber has read past, which frees its space at once instead of
//! leaving dead rows to vacuum. Page queries walk the
//! `(topic, originator, sequence)` index per originator from the cursor,
//! so a topic's cost does not grow with the table.
//!
//! # Schema
//!
//! Versioned migrations (`migrations/*.sql`) are applied at connect, each in
//! one transaction, under an advisory lock so that processes starting
//! together apply each once; `kith_schema_migrations` records them. A
//! database of a newer schema than this build knows is refused.

use std::{
    str::FromStr as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};

use kith_engine::{
    delivery::{
        BucketCharge, Cursor, Envelope, KeyPackagePool, NodeId, NodeStore, Replicated,
        SealedEnvelope, Sealer, SequencedUpdates, StoredKeyPackage, Topic,
    },
    identity::{InboxId, InstallationId},
};
use postgres::{NoTls, Transaction, fallible_iterator::FallibleIterator as _};
use r2d2_postgres::PostgresConnectionManager;

/// The migrations, in order: `(version, SQL)`.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../migrations/0001_node_store.sql")),
    (2, include_str!("../migrations/0002_rate_buckets.sql")),
];

/// Every this many bucket charges, forget the buckets idle long enough to
/// be full again (the table stays the size of the recently active ones).
const BUCKET_SWEEP_EVERY: u64 = 1_024;

/// Sequence ids per partition of `envelopes`.
pub const ENVELOPE_PARTITION_SIZE: i64 = 1_000_000;

/// The channel every envelope write notifies.
const NOTIFY_CHANNEL: &str = "kith_envelopes";

/// Advisory lock keys (two-int form: a namespace, then a key).
const LOCK_SPACE: i32 = 0x6b69_7468; // "kith"
const MIGRATION_LOCK: i32 = 1;
const PARTITION_LOCK: i32 = 2;
/// Identity logs lock in a namespace of their own, keyed by the inbox.
const IDENTITY_LOCK_SPACE: i32 = 0x6b69_7469;

/// How long a call waits for a pooled connection before it reports the
/// database unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the listener wakes the node without a notification, in case
/// one was lost while it reconnected.
const LISTEN_POLL: Duration = Duration::from_secs(2);

/// Why a PostgreSQL store call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PgStoreError {
    /// The database could not be reached, or the connection broke: retry
    /// when it is back. Nothing was changed by the failed call (each call
    /// is one transaction).
    #[error("PostgreSQL is unavailable: {0}")]
    Unavailable(String),
    /// The database refused a statement.
    #[error("PostgreSQL: {0}")]
    Database(String),
    /// The database holds a newer schema than this build knows.
    #[error(
        "the database has Kith schema version {found}; this kith-node knows up to {known}: \
         run a newer kith-node"
    )]
    NewerSchema {
        /// The version found.
        found: i32,
        /// The newest this build knows.
        known: i32,
    },
    /// A row holds something this store never writes.
    #[error("corrupt row in the node database: {0}")]
    Corrupt(String),
    /// The database URL does not parse.
    #[error("database URL: {0}")]
    Config(String),
}

impl PgStoreError {
    /// Whether retrying later may succeed (the database is down or was
    /// restarted), as opposed to a refusal that will repeat.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl From<postgres::Error> for PgStoreError {
    fn from(e: postgres::Error) -> Self {
        // No SQL state: the connection itself failed (closed, refused,
        // reset, or the server shut down under it).
        let shutting_down = e.code().is_some_and(|code| {
            code == &postgres::error::SqlState::ADMIN_SHUTDOWN
                || code == &postgres::error::SqlState::CRASH_SHUTDOWN
                || code == &postgres::error::SqlState::CANNOT_CONNECT_NOW
        });
        if e.is_closed() || e.code().is_none() || shutting_down {
            Self::Unavailable(e.to_string())
        } else {
            Self::Database(e.to_string())
        }
    }
}

impl From<r2d2::Error> for PgStoreError {
    fn from(e: r2d2::Error) -> Self {
        Self::Unavailable(e.to_string())
    }
}

type Pool = r2d2::Pool<PostgresConnectionManager<NoTls>>;

/// The node's store on PostgreSQL. See the module docs.
pub struct PgNodeStore {
    /// `None` only while dropping (see `Drop`).
    pool: Option<Pool>,
    config: postgres::Config,
    /// The highest partition index this process knows to exist.
    partitions: AtomicI64,
    /// Set on drop: the listener thread ends.
    closed: Arc<AtomicBool>,
    /// Bucket charges so far, to sweep idle buckets now and then.
    charges: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for PgNodeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgNodeStore").finish_non_exhaustive()
    }
}

impl Drop for PgNodeStore {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
        // Closing a synchronous client blocks on its own runtime, which
        // panics on a thread that drives async tasks (the node drops its
        // store from one): close the pool on a thread of its own.
        if let Some(pool) = self.pool.take() {
            let _ = std::thread::spawn(move || drop(pool)).join();
        }
    }
}

fn corrupt(what: impl std::fmt::Display) -> PgStoreError {
    PgStoreError::Corrupt(what.to_string())
}

fn to_i64(value: u64, what: &str) -> Result<i64, PgStoreError> {
    i64::try_from(value).map_err(|_| PgStoreError::Database(format!("{what} {value} is too large")))
}

fn to_u64(value: i64, what: &str) -> Result<u64, PgStoreError> {
    u64::try_from(value).map_err(|_| corrupt(format!("negative {what} {value}")))
}

fn pool_code(pool: KeyPackagePool) -> i16 {
    match pool {
        KeyPackagePool::Ordinary => 0,
        KeyPackagePool::Deniable => 1,
    }
}

fn partition_of(sequence: i64) -> i64 {
    sequence / ENVELOPE_PARTITION_SIZE
}

fn envelope_row(row: &postgres::Row) -> Result<SealedEnvelope, PgStoreError> {
    let originator: i64 = row.try_get(0)?;
    let sequence: i64 = row.try_get(1)?;
    let topic: &str = row.try_get(2)?;
    let time_ms: i64 = row.try_get(3)?;
    Ok(SealedEnvelope {
        envelope: Envelope {
            topic: Topic::from_str(topic).map_err(|e| corrupt(format!("topic {topic:?}: {e}")))?,
            payload: row.try_get(4)?,
            originator_node_id: NodeId::try_from(originator)
                .map_err(|_| corrupt(format!("originator {originator}")))?,
            originator_sequence_id: to_u64(sequence, "sequence")?,
            originator_time_ms: to_u64(time_ms, "time")?,
        },
        seal: row.try_get(5)?,
    })
}

/// The rows of a batch of envelopes, as the arrays one `unnest` insert
/// takes.
#[derive(Default)]
struct Rows {
    originators: Vec<i64>,
    sequences: Vec<i64>,
    topics: Vec<String>,
    times: Vec<i64>,
    payloads: Vec<Vec<u8>>,
    seals: Vec<Vec<u8>>,
}

impl Rows {
    fn push(&mut self, sealed: &SealedEnvelope) -> Result<(), PgStoreError> {
        let envelope = &sealed.envelope;
        self.originators
            .push(i64::from(envelope.originator_node_id));
        self.sequences
            .push(to_i64(envelope.originator_sequence_id, "sequence")?);
        self.topics.push(envelope.topic.to_string());
        self.times
            .push(to_i64(envelope.originator_time_ms, "time")?);
        self.payloads.push(envelope.payload.clone());
        self.seals.push(sealed.seal.clone());
        Ok(())
    }

    fn insert(&self, tx: &mut Transaction<'_>) -> Result<(), PgStoreError> {
        if self.sequences.is_empty() {
            return Ok(());
        }
        tx.execute(
            "INSERT INTO envelopes (originator, sequence, topic, time_ms, payload, seal) \
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], \
                                  $5::bytea[], $6::bytea[])",
            &[
                &self.originators,
                &self.sequences,
                &self.topics,
                &self.times,
                &self.payloads,
                &self.seals,
            ],
        )?;
        Ok(())
    }
}

impl PgNodeStore {
    /// Connect to the database at `url` (`postgres://user@host:port/db`),
    /// and bring its schema up to date.
    pub fn connect(url: &str) -> Result<Self, PgStoreError> {
        let config: postgres::Config = url
            .parse()
            .map_err(|e: postgres::Error| PgStoreError::Config(e.to_string()))?;
        let manager = PostgresConnectionManager::new(config.clone(), NoTls);
        let pool = r2d2::Pool::builder()
            .max_size(16)
            .min_idle(Some(1))
            .connection_timeout(CONNECT_TIMEOUT)
            .build(manager)?;
        let store = Self {
            pool: Some(pool),
            config,
            partitions: AtomicI64::new(-1),
            closed: Arc::new(AtomicBool::new(false)),
            charges: std::sync::atomic::AtomicU64::new(0),
        };
        store.migrate()?;
        Ok(store)
    }

    fn pool(&self) -> Result<&Pool, PgStoreError> {
        self.pool
            .as_ref()
            .ok_or_else(|| PgStoreError::Unavailable("the store is closing".into()))
    }

    /// Apply the migrations this database lacks. See the module docs.
    fn migrate(&self) -> Result<(), PgStoreError> {
        let mut client = self.pool()?.get()?;
        let mut tx = client.transaction()?;
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, $2)",
            &[&LOCK_SPACE, &MIGRATION_LOCK],
        )?;
        // Checked first rather than CREATE TABLE IF NOT EXISTS, which has
        // the server send a NOTICE (logged) on every start.
        let exists: bool = tx
            .query_one(
                "SELECT to_regclass('kith_schema_migrations') IS NOT NULL",
                &[],
            )?
            .try_get(0)?;
        if !exists {
            tx.batch_execute(
                "CREATE TABLE kith_schema_migrations (
                     version    integer     PRIMARY KEY,
                     applied_at timestamptz NOT NULL DEFAULT now()
                 )",
            )?;
        }
        let current: i32 = tx
            .query_one(
                "SELECT coalesce(max(version), 0) FROM kith_schema_migrations",
                &[],
            )?
            .try_get(0)?;
        let known = MIGRATIONS.last().map_or(0, |(version, _)| *version);
        if current > known {
            return Err(PgStoreError::NewerSchema {
                found: current,
                known,
            });
        }
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            tx.batch_execute(sql)?;
            tx.execute(
                "INSERT INTO kith_schema_migrations (version) VALUES ($1)",
                &[version],
            )?;
            tracing::info!(version, "applied a node database migration");
        }
        tx.commit()?;
        Ok(())
    }

    /// Run `f` in one transaction on a pooled connection.
    fn transaction<T>(
        &self,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<T, PgStoreError>,
    ) -> Result<T, PgStoreError> {
        let mut client = self.pool()?.get()?;
        let mut tx = client.transaction()?;
        let value = f(&mut tx)?;
        tx.commit()?;
        Ok(value)
    }

    /// Make sure the partitions that sequence ids up to `last` go to exist,
    /// in a transaction of its own: creating a partition locks the parent
    /// table, which a writer holding a head's row lock must not wait for.
    fn ensure_partitions(&self, last: i64) -> Result<(), PgStoreError> {
        let needed = partition_of(last);
        let known = self.partitions.load(Ordering::SeqCst);
        if needed <= known {
            return Ok(());
        }
        self.transaction(|tx| {
            tx.execute(
                "SELECT pg_advisory_xact_lock($1, $2)",
                &[&LOCK_SPACE, &PARTITION_LOCK],
            )?;
            for index in (known + 1).max(0)..=needed {
                let from = index * ENVELOPE_PARTITION_SIZE;
                let to = from + ENVELOPE_PARTITION_SIZE;
                tx.batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS envelopes_p{index} PARTITION OF envelopes \
                     FOR VALUES FROM ({from}) TO ({to})"
                ))?;
            }
            Ok(())
        })?;
        self.partitions.fetch_max(needed, Ordering::SeqCst);
        Ok(())
    }

    /// Lock `originator`'s head row (creating it the first time) and read
    /// it.
    fn lock_head(tx: &mut Transaction<'_>, originator: i64) -> Result<(i64, i64), PgStoreError> {
        const LOCK: &str =
            "SELECT last_sequence, last_time_ms FROM node_heads WHERE originator = $1 FOR UPDATE";
        if let Some(row) = tx.query_opt(LOCK, &[&originator])? {
            return Ok((row.try_get(0)?, row.try_get(1)?));
        }
        tx.execute(
            "INSERT INTO node_heads (originator, last_sequence, last_time_ms) VALUES ($1, 0, 0) \
             ON CONFLICT (originator) DO NOTHING",
            &[&originator],
        )?;
        let row = tx.query_one(LOCK, &[&originator])?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }

    fn set_head(
        tx: &mut Transaction<'_>,
        originator: i64,
        sequence: i64,
        time_ms: i64,
    ) -> Result<(), PgStoreError> {
        tx.execute(
            "UPDATE node_heads SET last_sequence = $2, last_time_ms = $3 WHERE originator = $1",
            &[&originator, &sequence, &time_ms],
        )?;
        Ok(())
    }

    /// Lock `inbox`'s identity log for this transaction and read its length.
    fn lock_identity(tx: &mut Transaction<'_>, inbox: &InboxId) -> Result<i64, PgStoreError> {
        let bytes = inbox.as_bytes();
        let key = i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, $2)",
            &[&IDENTITY_LOCK_SPACE, &key],
        )?;
        Ok(tx
            .query_one(
                "SELECT coalesce(max(sequence), 0) FROM identity_updates WHERE inbox = $1",
                &[&bytes.as_slice()],
            )?
            .try_get(0)?)
    }

    /// Listen for other processes' writes and call `wake` on each, on a
    /// thread of its own, until the store is dropped.
    fn listen(
        config: postgres::Config,
        closed: Arc<AtomicBool>,
        wake: Box<dyn Fn() + Send + Sync>,
    ) {
        while !closed.load(Ordering::SeqCst) {
            match config.connect(NoTls) {
                Ok(mut client) => {
                    if let Err(e) = client.batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}")) {
                        tracing::warn!(error = %e, "LISTEN failed; retrying");
                        std::thread::sleep(LISTEN_POLL);
                        continue;
                    }
                    // Whatever was written while not listening.
                    wake();
                    loop {
                        if closed.load(Ordering::SeqCst) {
                            return;
                        }
                        let mut notifications = client.notifications();
                        let mut batch = notifications.timeout_iter(LISTEN_POLL);
                        match batch.next() {
                            // One wake covers every notification queued.
                            Ok(Some(_)) => {
                                while let Ok(Some(_)) = batch.next() {}
                                wake();
                            }
                            // Quiet: wake anyway, in case one was lost.
                            Ok(None) => wake(),
                            Err(e) => {
                                tracing::warn!(error = %e, "the node database listener lost its connection");
                                break;
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "the node database listener cannot connect yet");
                    std::thread::sleep(LISTEN_POLL);
                }
            }
        }
    }
}

impl NodeStore for PgNodeStore {
    type Error = PgStoreError;

    fn append_envelopes(
        &self,
        originator: NodeId,
        batch: Vec<(Topic, Vec<u8>)>,
        now_ms: u64,
        seal: Sealer<'_>,
    ) -> Result<Vec<SealedEnvelope>, Self::Error> {
        let node = i64::from(originator);
        let count = i64::try_from(batch.len()).unwrap_or(i64::MAX);
        // Sequence ids are known only under the head's lock. The partitions
        // they go to are made in a transaction of their own (see
        // `ensure_partitions`): if they are missing, the write lets go,
        // makes them, and tries again (once per partition, not per write).
        let mut needed: Option<i64> = None;
        loop {
            if let Some(last) = needed {
                self.ensure_partitions(last)?;
            }
            let known = self.partitions.load(Ordering::SeqCst);
            let attempt = self.transaction(|tx| {
                let (head, last_time) = Self::lock_head(tx, node)?;
                if partition_of(head + count) > known {
                    return Ok(Err(head + count));
                }
                let time = to_i64(now_ms, "time")?.max(last_time);
                let mut rows = Rows::default();
                let mut stored = Vec::with_capacity(batch.len());
                for (i, (topic, payload)) in batch.iter().enumerate() {
                    let sequence = head + 1 + i64::try_from(i).unwrap_or(i64::MAX);
                    let envelope = Envelope {
                        topic: topic.clone(),
                        payload: payload.clone(),
                        originator_node_id: originator,
                        originator_sequence_id: to_u64(sequence, "sequence")?,
                        originator_time_ms: to_u64(time, "time")?,
                    };
                    let sealed = SealedEnvelope {
                        seal: seal(&envelope),
                        envelope,
                    };
                    rows.push(&sealed)?;
                    stored.push(sealed);
                }
                // The rows, the head and the notification in one statement:
                // one round trip for the whole batch.
                tx.execute(
                    &format!(
                    "WITH inserted AS ( \
                         INSERT INTO envelopes (originator, sequence, topic, time_ms, payload, seal) \
                         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], \
                                              $4::bigint[], $5::bytea[], $6::bytea[])), \
                     head AS ( \
                         UPDATE node_heads SET last_sequence = $8, last_time_ms = $9 \
                         WHERE originator = $7) \
                     SELECT pg_notify('{NOTIFY_CHANNEL}', '')"
                    ),
                    &[
                        &rows.originators,
                        &rows.sequences,
                        &rows.topics,
                        &rows.times,
                        &rows.payloads,
                        &rows.seals,
                        &node,
                        &(head + count),
                        &time,
                    ],
                )?;
                Ok(Ok(stored))
            })?;
            match attempt {
                Ok(stored) => return Ok(stored),
                Err(last) => needed = Some(last),
            }
        }
    }

    fn query_envelopes(
        &self,
        topic: &Topic,
        cursor: &Cursor,
        limit: usize,
    ) -> Result<Vec<SealedEnvelope>, Self::Error> {
        let (nodes, after): (Vec<i64>, Vec<i64>) = cursor
            .entries()
            .map(|(node, sequence)| Ok((i64::from(node), to_i64(sequence, "cursor")?)))
            .collect::<Result<Vec<_>, PgStoreError>>()?
            .into_iter()
            .unzip();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut client = self.pool()?.get()?;
        // Per originator that has envelopes at all, the next `limit` of
        // this topic after the cursor (an index range scan each), then
        // merged in canonical order.
        let rows = client.query(
            "SELECT e.originator, e.sequence, e.topic, e.time_ms, e.payload, e.seal \
             FROM node_heads h \
             CROSS JOIN LATERAL ( \
                 SELECT * FROM envelopes x \
                 WHERE x.topic = $1 AND x.originator = h.originator \
                   AND x.sequence > coalesce(( \
                       SELECT c.after FROM unnest($2::bigint[], $3::bigint[]) AS c(node, after) \
                       WHERE c.node = h.originator), 0) \
                 ORDER BY x.sequence LIMIT $4) e \
             ORDER BY e.time_ms, e.originator, e.sequence LIMIT $4",
            &[&topic.to_string(), &nodes, &after, &limit],
        )?;
        rows.iter().map(envelope_row).collect()
    }

    fn originated_envelopes(
        &self,
        originator: NodeId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<SealedEnvelope>, Self::Error> {
        let mut client = self.pool()?.get()?;
        let rows = client.query(
            "SELECT originator, sequence, topic, time_ms, payload, seal FROM envelopes \
             WHERE originator = $1 AND sequence > $2 ORDER BY sequence LIMIT $3",
            &[
                &i64::from(originator),
                &to_i64(after, "sequence")?,
                &i64::try_from(limit).unwrap_or(i64::MAX),
            ],
        )?;
        rows.iter().map(envelope_row).collect()
    }

    fn store_replicated(
        &self,
        batch: Vec<SealedEnvelope>,
    ) -> Result<Vec<SealedEnvelope>, Self::Error> {
        if let Some(last) = batch
            .iter()
            .map(|s| s.envelope.originator_sequence_id)
            .max()
        {
            self.ensure_partitions(to_i64(last, "sequence")?)?;
        }
        self.transaction(|tx| {
            let mut heads = std::collections::BTreeMap::new();
            let mut rows = Rows::default();
            let mut stored = Vec::new();
            for sealed in batch {
                let node = i64::from(sealed.envelope.originator_node_id);
                let head = match heads.get(&node) {
                    Some(head) => *head,
                    None => {
                        let (head, time) = Self::lock_head(tx, node)?;
                        heads.insert(node, (head, time));
                        (head, time)
                    }
                };
                let sequence = sealed.envelope.originator_sequence_id;
                match Replicated::classify(to_u64(head.0, "head")?, sequence) {
                    Replicated::Copy => {}
                    Replicated::Next => {
                        rows.push(&sealed)?;
                        let time = to_i64(sealed.envelope.originator_time_ms, "time")?;
                        heads.insert(node, (to_i64(sequence, "sequence")?, time));
                        stored.push(sealed);
                    }
                    Replicated::Gap => break,
                }
            }
            rows.insert(tx)?;
            for (node, (sequence, time)) in heads {
                Self::set_head(tx, node, sequence, time)?;
            }
            if !stored.is_empty() {
                tx.batch_execute(&format!("NOTIFY {NOTIFY_CHANNEL}"))?;
            }
            Ok(stored)
        })
    }

    fn heads(&self) -> Result<Cursor, Self::Error> {
        let mut client = self.pool()?.get()?;
        client
            .query(
                "SELECT originator, last_sequence FROM node_heads WHERE last_sequence > 0",
                &[],
            )?
            .iter()
            .map(|row| {
                let node: i64 = row.try_get(0)?;
                let sequence: i64 = row.try_get(1)?;
                Ok((
                    NodeId::try_from(node).map_err(|_| corrupt(format!("originator {node}")))?,
                    to_u64(sequence, "sequence")?,
                ))
            })
            .collect()
    }

    fn identity_updates(
        &self,
        requests: &[(InboxId, u64)],
        limit: usize,
    ) -> Result<Vec<SequencedUpdates>, Self::Error> {
        let inboxes: Vec<&[u8]> = requests
            .iter()
            .map(|(i, _)| i.as_bytes().as_slice())
            .collect();
        let after = requests
            .iter()
            .map(|(_, a)| to_i64(*a, "sequence"))
            .collect::<Result<Vec<_>, _>>()?;
        let mut client = self.pool()?.get()?;
        let rows = client.query(
            "SELECT r.idx, u.sequence, u.body \
             FROM unnest($1::bytea[], $2::bigint[]) WITH ORDINALITY AS r(inbox, after, idx) \
             CROSS JOIN LATERAL ( \
                 SELECT sequence, body FROM identity_updates \
                 WHERE inbox = r.inbox AND sequence > r.after \
                 ORDER BY sequence LIMIT $3) u \
             ORDER BY r.idx, u.sequence",
            &[&inboxes, &after, &i64::try_from(limit).unwrap_or(i64::MAX)],
        )?;
        let mut out: Vec<SequencedUpdates> = vec![Vec::new(); requests.len()];
        for row in rows {
            let idx: i64 = row.try_get(0)?;
            let sequence: i64 = row.try_get(1)?;
            let slot = usize::try_from(idx - 1)
                .ok()
                .and_then(|i| out.get_mut(i))
                .ok_or_else(|| corrupt(format!("request index {idx}")))?;
            slot.push((to_u64(sequence, "sequence")?, row.try_get(2)?));
        }
        Ok(out)
    }

    fn append_identity_update(
        &self,
        inbox: &InboxId,
        sequence: u64,
        update: Vec<u8>,
    ) -> Result<bool, Self::Error> {
        // An append is a revision from the end that replaces nothing.
        match sequence.checked_sub(1) {
            Some(last) => self.revise_identity_log(inbox, last, sequence, vec![update]),
            None => Ok(false),
        }
    }

    fn revise_identity_log(
        &self,
        inbox: &InboxId,
        last: u64,
        from: u64,
        updates: Vec<Vec<u8>>,
    ) -> Result<bool, Self::Error> {
        let last = to_i64(last, "sequence")?;
        let from = to_i64(from, "sequence")?;
        self.transaction(|tx| {
            let length = Self::lock_identity(tx, inbox)?;
            if length != last || from == 0 || from > last + 1 {
                return Ok(false);
            }
            let bytes = inbox.as_bytes().as_slice();
            tx.execute(
                "DELETE FROM identity_updates WHERE inbox = $1 AND sequence >= $2",
                &[&bytes, &from],
            )?;
            let sequences: Vec<i64> = (0..updates.len())
                .map(|i| from + i64::try_from(i).unwrap_or(i64::MAX))
                .collect();
            tx.execute(
                "INSERT INTO identity_updates (inbox, sequence, body) \
                 SELECT $1, * FROM unnest($2::bigint[], $3::bytea[])",
                &[&bytes, &sequences, &updates],
            )?;
            Ok(true)
        })
    }

    fn add_key_packages(
        &self,
        pool: KeyPackagePool,
        installation: &InstallationId,
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> Result<(), Self::Error> {
        let installation = installation.as_bytes().as_slice();
        let pool = pool_code(pool);
        self.transaction(|tx| {
            if !one_time.is_empty() {
                tx.execute(
                    "INSERT INTO key_packages (pool, installation, bytes) \
                     SELECT $1, $2, * FROM unnest($3::bytea[])",
                    &[&pool, &installation, &one_time],
                )?;
            }
            if let Some(bytes) = &last_resort {
                tx.execute(
                    "INSERT INTO last_resort_key_packages (pool, installation, bytes) \
                     VALUES ($1, $2, $3) \
                     ON CONFLICT (pool, installation) DO UPDATE SET bytes = excluded.bytes",
                    &[&pool, &installation, bytes],
                )?;
            }
            Ok(())
        })
    }

    fn take_key_packages(
        &self,
        pool: KeyPackagePool,
        installations: &[InstallationId],
    ) -> Result<Vec<Option<StoredKeyPackage>>, Self::Error> {
        let pool = pool_code(pool);
        self.transaction(|tx| {
            let take = tx.prepare(
                "DELETE FROM key_packages WHERE id = ( \
                     SELECT id FROM key_packages WHERE pool = $1 AND installation = $2 \
                     ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) \
                 RETURNING bytes",
            )?;
            let fallback = tx.prepare(
                "SELECT bytes FROM last_resort_key_packages WHERE pool = $1 AND installation = $2",
            )?;
            let mut out = Vec::with_capacity(installations.len());
            for installation in installations {
                let id = installation.as_bytes().as_slice();
                if let Some(row) = tx.query_opt(&take, &[&pool, &id])? {
                    out.push(Some(StoredKeyPackage {
                        bytes: row.try_get(0)?,
                        last_resort: false,
                    }));
                } else {
                    out.push(
                        tx.query_opt(&fallback, &[&pool, &id])?
                            .map(|row| {
                                Ok::<_, PgStoreError>(StoredKeyPackage {
                                    bytes: row.try_get(0)?,
                                    last_resort: true,
                                })
                            })
                            .transpose()?,
                    );
                }
            }
            Ok(out)
        })
    }

    fn has_key_packages(
        &self,
        pool: KeyPackagePool,
        installations: &[InstallationId],
    ) -> Result<Vec<bool>, Self::Error> {
        let ids: Vec<&[u8]> = installations
            .iter()
            .map(|i| i.as_bytes().as_slice())
            .collect();
        let mut client = self.pool()?.get()?;
        let rows = client.query(
            "SELECT r.idx, \
                    EXISTS (SELECT 1 FROM key_packages k WHERE k.pool = $1 AND k.installation = r.id) \
                    OR EXISTS (SELECT 1 FROM last_resort_key_packages l \
                               WHERE l.pool = $1 AND l.installation = r.id) \
             FROM unnest($2::bytea[]) WITH ORDINALITY AS r(id, idx) ORDER BY r.idx",
            &[&pool_code(pool), &ids],
        )?;
        rows.iter().map(|row| Ok(row.try_get(1)?)).collect()
    }

    fn one_time_key_packages_left(
        &self,
        pool: KeyPackagePool,
        installation: &InstallationId,
    ) -> Result<usize, Self::Error> {
        let mut client = self.pool()?.get()?;
        let count: i64 = client
            .query_one(
                "SELECT count(*) FROM key_packages WHERE pool = $1 AND installation = $2",
                &[&pool_code(pool), &installation.as_bytes().as_slice()],
            )?
            .try_get(0)?;
        Ok(usize::try_from(count).unwrap_or(0))
    }

    fn purge_key_packages(
        &self,
        pool: KeyPackagePool,
        installation: &InstallationId,
        expired: &dyn Fn(&[u8]) -> bool,
    ) -> Result<usize, Self::Error> {
        let pool = pool_code(pool);
        let id = installation.as_bytes().as_slice();
        self.transaction(|tx| {
            let rows = tx.query(
                "SELECT id, bytes FROM key_packages WHERE pool = $1 AND installation = $2 \
                 FOR UPDATE SKIP LOCKED",
                &[&pool, &id],
            )?;
            let mut gone = Vec::new();
            for row in &rows {
                let bytes: &[u8] = row.try_get(1)?;
                if expired(bytes) {
                    gone.push(row.try_get::<_, i64>(0)?);
                }
            }
            if !gone.is_empty() {
                tx.execute("DELETE FROM key_packages WHERE id = ANY($1)", &[&gone])?;
            }
            let left: i64 = tx
                .query_one(
                    "SELECT count(*) FROM key_packages WHERE pool = $1 AND installation = $2",
                    &[&pool, &id],
                )?
                .try_get(0)?;
            Ok(usize::try_from(left).unwrap_or(0))
        })
    }

    fn node_secret(&self, fresh: [u8; 32]) -> Result<[u8; 32], Self::Error> {
        self.node_key("x25519-secret", fresh)
    }

    fn node_signing_seed(&self, fresh: [u8; 32]) -> Result<[u8; 32], Self::Error> {
        self.node_key("ed25519-seed", fresh)
    }

    fn charge_buckets(
        &self,
        keys: &[Vec<u8>],
        now_ms: u64,
        forget_after_ms: Option<u64>,
        charge: BucketCharge<'_>,
    ) -> Option<Result<bool, Self::Error>> {
        Some((|| {
            let now = to_i64(now_ms, "time")?;
            let forget = forget_after_ms
                .map(|ms| now.saturating_sub(to_i64(ms, "time").unwrap_or(i64::MAX)));
            let mut sorted: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
            sorted.sort_unstable();
            sorted.dedup();
            let kept = self.transaction(|tx| {
                // Missing rows first (in key order), so that every bucket
                // is locked below, even one never charged.
                tx.execute(
                    "INSERT INTO rate_buckets (key, state, touched_ms) \
                     SELECT k, NULL, $2 FROM unnest($1::bytea[]) AS k \
                     ON CONFLICT (key) DO NOTHING",
                    &[&sorted, &now],
                )?;
                let rows = tx.query(
                    "SELECT key, state, touched_ms FROM rate_buckets WHERE key = ANY($1) \
                     ORDER BY key FOR UPDATE",
                    &[&sorted],
                )?;
                let mut stored = std::collections::HashMap::new();
                for row in &rows {
                    let key: Vec<u8> = row.try_get(0)?;
                    let state: Option<Vec<u8>> = row.try_get(1)?;
                    let touched: i64 = row.try_get(2)?;
                    let idle = forget.is_some_and(|forget| touched < forget);
                    stored.insert(key, if idle { None } else { state });
                }
                let mut states: Vec<Option<Vec<u8>>> = keys
                    .iter()
                    .map(|key| stored.get(key).cloned().flatten())
                    .collect();
                if !charge(&mut states) {
                    return Ok(false);
                }
                let (written, values): (Vec<&[u8]>, Vec<Option<Vec<u8>>>) =
                    keys.iter().map(Vec::as_slice).zip(states).unzip();
                tx.execute(
                    "UPDATE rate_buckets SET state = x.state, touched_ms = $3 \
                     FROM unnest($1::bytea[], $2::bytea[]) AS x(key, state) \
                     WHERE rate_buckets.key = x.key",
                    &[&written, &values, &now],
                )?;
                Ok(true)
            })?;
            let count = self.charges.fetch_add(1, Ordering::Relaxed);
            if let Some(forget) = forget
                && count.is_multiple_of(BUCKET_SWEEP_EVERY)
            {
                let mut client = self.pool()?.get()?;
                client.execute("DELETE FROM rate_buckets WHERE touched_ms < $1", &[&forget])?;
            }
            Ok(kept)
        })())
    }

    fn is_unavailable(error: &Self::Error) -> bool {
        error.is_unavailable()
    }

    fn watch_external_appends(&self, wake: Box<dyn Fn() + Send + Sync>) -> bool {
        let config = self.config.clone();
        let closed = Arc::clone(&self.closed);
        let started = std::thread::Builder::new()
            .name("kith-pg-listen".into())
            .spawn(move || Self::listen(config, closed, wake));
        match started {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the node database listener");
                false
            }
        }
    }
}

impl PgNodeStore {
    /// The key stored under `name`, or `fresh`, stored, if there is none.
    fn node_key(&self, name: &str, fresh: [u8; 32]) -> Result<[u8; 32], PgStoreError> {
        let mut client = self.pool()?.get()?;
        let row = client.query_one(
            "INSERT INTO node_keys (name, value) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET value = node_keys.value \
             RETURNING value",
            &[&name, &fresh.as_slice()],
        )?;
        let value: Vec<u8> = row.try_get(0)?;
        value
            .try_into()
            .map_err(|v: Vec<u8>| corrupt(format!("node key {name} is {} bytes", v.len())))
    }
}
