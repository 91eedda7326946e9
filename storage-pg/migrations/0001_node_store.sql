-- The Kith node's store, version 1. Applied once, in one transaction, by
-- PgNodeStore::connect; see src/lib.rs for the reasoning.

-- Per originator: the last sequence id and originator time stored. The
-- row of an originator is locked (FOR UPDATE) by every writer of its
-- envelopes, so that sequence ids are gap-free and in commit order.
CREATE TABLE node_heads (
    originator    bigint  PRIMARY KEY,
    last_sequence bigint  NOT NULL,
    last_time_ms  bigint  NOT NULL
);

-- Envelopes, partitioned by sequence range (ENVELOPE_PARTITION_SIZE ids per
-- partition, made on demand; the default partition only catches what a
-- missing partition would have refused). Retention drops whole partitions.
CREATE TABLE envelopes (
    originator bigint  NOT NULL,
    sequence   bigint  NOT NULL,
    topic      text    NOT NULL,
    time_ms    bigint  NOT NULL,
    payload    bytea   NOT NULL,
    seal       bytea   NOT NULL,
    PRIMARY KEY (originator, sequence)
) PARTITION BY RANGE (sequence);
CREATE TABLE envelopes_default PARTITION OF envelopes DEFAULT;
-- A topic's envelopes per originator in sequence order: the page query
-- walks it per originator from the cursor.
CREATE INDEX envelopes_by_topic ON envelopes (topic, originator, sequence) INCLUDE (time_ms);

CREATE TABLE identity_updates (
    inbox    bytea  NOT NULL,
    sequence bigint NOT NULL,
    body     bytea  NOT NULL,
    PRIMARY KEY (inbox, sequence)
);

-- One-time key packages, handed out oldest first and deleted as they go.
CREATE TABLE key_packages (
    id           bigserial PRIMARY KEY,
    pool         smallint NOT NULL,
    installation bytea    NOT NULL,
    bytes        bytea    NOT NULL
);
CREATE INDEX key_packages_by_installation ON key_packages (pool, installation, id);

CREATE TABLE last_resort_key_packages (
    pool         smallint NOT NULL,
    installation bytea    NOT NULL,
    bytes        bytea    NOT NULL,
    PRIMARY KEY (pool, installation)
);

-- The node's secrets: shared by every process over this database.
CREATE TABLE node_keys (
    name  text  PRIMARY KEY,
    value bytea NOT NULL
);
