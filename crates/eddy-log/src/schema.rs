//! The log's tables.
//!
//! - `eddy_log_topics` — one row per topic with its partition count (fixed at creation);
//! - `eddy_log_partitions` — the next offset of each partition; appends lock this row;
//! - `eddy_log_records` — the records, keyed by (topic, partition, offset);
//! - `eddy_log_offsets` — each consumer group's committed position per partition;
//! - `eddy_log_members` / `eddy_log_leases` — live group members and which member
//!   owns which partition until when.

use eddy_sql::Migration;

/// The DDL of both backends differs only in the name of the byte-string type.
macro_rules! tables {
    ($blob:literal) => {
        concat!(
        "CREATE TABLE IF NOT EXISTS eddy_log_topics (topic TEXT PRIMARY KEY, partitions BIGINT NOT NULL, created_at_us BIGINT NOT NULL);",
        "CREATE TABLE IF NOT EXISTS eddy_log_partitions (topic TEXT NOT NULL, partition BIGINT NOT NULL, next_offset BIGINT NOT NULL, PRIMARY KEY (topic, partition));",
        "CREATE TABLE IF NOT EXISTS eddy_log_records (topic TEXT NOT NULL, partition BIGINT NOT NULL, record_offset BIGINT NOT NULL, ",
        "event_id TEXT NOT NULL, event_type TEXT NOT NULL, schema_version BIGINT NOT NULL, occurred_at_us BIGINT NOT NULL, correlation_id TEXT NOT NULL, causation_id TEXT, event_key TEXT NOT NULL, headers TEXT NOT NULL, payload ", $blob, " NOT NULL, ",
        "appended_at_us BIGINT NOT NULL, PRIMARY KEY (topic, partition, record_offset));",
        "CREATE INDEX IF NOT EXISTS eddy_log_records_age ON eddy_log_records (appended_at_us);",
        "CREATE TABLE IF NOT EXISTS eddy_log_offsets (consumer_group TEXT NOT NULL, topic TEXT NOT NULL, partition BIGINT NOT NULL, next_offset BIGINT NOT NULL, updated_at_us BIGINT NOT NULL, PRIMARY KEY (consumer_group, topic, partition));",
        "CREATE TABLE IF NOT EXISTS eddy_log_members (consumer_group TEXT NOT NULL, topic TEXT NOT NULL, member_id TEXT NOT NULL, heartbeat_at_us BIGINT NOT NULL, PRIMARY KEY (consumer_group, topic, member_id));",
        "CREATE TABLE IF NOT EXISTS eddy_log_leases (consumer_group TEXT NOT NULL, topic TEXT NOT NULL, partition BIGINT NOT NULL, member_id TEXT NOT NULL, expires_at_us BIGINT NOT NULL, PRIMARY KEY (consumer_group, topic, partition))",
        )
    };
}

pub const MIGRATIONS: &[Migration] = &[Migration {
    name: "eddy_log_0001_tables",
    sqlite: tables!("BLOB"),
    postgres: tables!("BYTEA"),
}];
