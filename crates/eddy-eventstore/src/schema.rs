//! The store's tables.
//!
//! - `eddy_es_streams` — each stream's current version; an append locks its row;
//! - `eddy_es_sequence` — the next global position and the last recorded time (one
//!   row); appends lock it first and until they commit, so positions become visible in
//!   order and recorded times never go back;
//! - `eddy_es_events` — the events, by position, unique by (stream, version) and by
//!   event id;
//! - `eddy_es_snapshots` — aggregate states at some versions, with their format's version;
//! - `eddy_es_projections` — each projection's live generation of tables and the
//!   position its checkpoint is at, and the position below which its events are a
//!   replay (events stored before it was added);
//! - `eddy_es_rebuilds` — a rebuild in progress: the generation it builds and how far.

use eddy_sql::Migration;

macro_rules! tables {
    ($blob:literal) => {
        concat!(
            "CREATE TABLE IF NOT EXISTS eddy_es_streams (stream TEXT PRIMARY KEY, version BIGINT NOT NULL);",
            "CREATE TABLE IF NOT EXISTS eddy_es_sequence (id BIGINT PRIMARY KEY, next_position BIGINT NOT NULL);",
            "INSERT INTO eddy_es_sequence (id, next_position) VALUES (1, 1) ON CONFLICT (id) DO NOTHING;",
            "CREATE TABLE IF NOT EXISTS eddy_es_events (position BIGINT PRIMARY KEY, stream TEXT NOT NULL, version BIGINT NOT NULL, recorded_at_us BIGINT NOT NULL, ",
            "event_id TEXT NOT NULL UNIQUE, event_type TEXT NOT NULL, schema_version BIGINT NOT NULL, occurred_at_us BIGINT NOT NULL, correlation_id TEXT NOT NULL, causation_id TEXT, event_key TEXT NOT NULL, headers TEXT NOT NULL, payload ", $blob, " NOT NULL, ",
            "UNIQUE (stream, version))",
        )
    };
}

macro_rules! snapshots {
    ($blob:literal) => {
        concat!(
            "CREATE TABLE IF NOT EXISTS eddy_es_snapshots (stream TEXT NOT NULL, version BIGINT NOT NULL, ",
            "schema_version BIGINT NOT NULL, state ", $blob, " NOT NULL, taken_at_us BIGINT NOT NULL, PRIMARY KEY (stream, version))",
        )
    };
}

macro_rules! projections {
    () => {
        concat!(
            "CREATE TABLE IF NOT EXISTS eddy_es_projections (name TEXT PRIMARY KEY, generation BIGINT NOT NULL, ",
            "position BIGINT NOT NULL, replay_until BIGINT NOT NULL, updated_at_us BIGINT NOT NULL);",
            "CREATE TABLE IF NOT EXISTS eddy_es_rebuilds (name TEXT PRIMARY KEY, generation BIGINT NOT NULL, ",
            "position BIGINT NOT NULL, started_at_us BIGINT NOT NULL)",
        )
    };
}

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        name: "eddy_es_0001_tables",
        sqlite: tables!("BLOB"),
        postgres: tables!("BYTEA"),
    },
    Migration {
        name: "eddy_es_0002_snapshots",
        sqlite: snapshots!("BLOB"),
        postgres: snapshots!("BYTEA"),
    },
    Migration {
        name: "eddy_es_0003_recorded_clock",
        sqlite: "ALTER TABLE eddy_es_sequence ADD COLUMN last_recorded_us BIGINT NOT NULL DEFAULT 0",
        postgres: "ALTER TABLE eddy_es_sequence ADD COLUMN IF NOT EXISTS last_recorded_us BIGINT NOT NULL DEFAULT 0",
    },
    Migration {
        name: "eddy_es_0004_projections",
        sqlite: projections!(),
        postgres: projections!(),
    },
];
