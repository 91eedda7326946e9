-- Version 2: the rate limits' token buckets, shared by every process over
-- this database (NodeStore::charge_buckets). The state is the node's own
-- encoding; touched_ms lets idle buckets, full again, be forgotten.
CREATE TABLE rate_buckets (
    key        bytea  PRIMARY KEY,
    state      bytea,
    touched_ms bigint NOT NULL
);
CREATE INDEX rate_buckets_by_touch ON rate_buckets (touched_ms);
