//! # eddy-eventstore — streams of events with optimistic concurrency
//!
//! An append-only store of [`eddy_core::Envelope`]s in the service's own SQLite or
//! PostgreSQL database (through `eddy-sql`), for event-sourced aggregates:
//!
//! - **Streams**: each aggregate's events, numbered 1, 2, … (its *version*).
//!   [`EventStore::append`] takes the version the writer expects ([`Expected`]); a
//!   writer that lost a race gets [`AppendError::Conflict`] with the version it met.
//! - **Idempotent**: appending events whose ids are already in the stream is a no-op that
//!   answers where they are, so a retried command does not write twice.
//! - **Global position**: every event also gets a position in one sequence over all
//!   streams. Appends take the sequence's row lock until their transaction ends, so
//!   positions become visible in commit order: a follower reading "after position p"
//!   never passes an append that commits later with a lower position (there is none).
//!   The price: appends to different streams serialise on that row while their
//!   transactions run — keep them short.
//! - **In the business transaction**: [`EventStore::append_in`] writes into a caller's
//!   [`eddy_sql::Tx`], so the same transaction can hold the service's other writes and
//!   its outbox rows.
//! - **Point in time**: [`EventStore::read_stream`] reads a stream up to a version or up
//!   to the moment the store recorded its events ([`Until`]); [`EventStore::load`] folds
//!   an [`Aggregate`] as of either, from the nearest snapshot at or before it.
//! - **Snapshots**: [`EventStore::snapshot_if_due`] keeps an aggregate's state every N
//!   events ([`SnapshotPolicy`]), tagged with its format's version; a snapshot of
//!   another format is upcast by the aggregate or ignored (the events are the truth).
//! - **Projections**: read models fed in global order with their checkpoint in the same
//!   transaction as their writes, inline (in the appending transaction) or catching up
//!   on their own, rebuilt into a new generation of tables and swapped in while the
//!   live one serves ([`projection`]).

mod aggregate;
pub mod projection;
mod schema;
mod store;

pub use aggregate::{Aggregate, Loaded, SnapshotPolicy};
pub use projection::{Progress, Projection, Projector, ProjectorConfig, Status, Target};
pub use schema::MIGRATIONS;
pub use store::{AppendError, Appended, EventStore, Expected, Recorded, Until};

/// The commit signal of appends (see [`eddy_sql::Tx::signal_on_commit`]).
pub const SIGNAL: &str = "eddy_es";
