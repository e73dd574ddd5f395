//! # eddy-sql — the SQL storage layer shared by Eddy's SQL-backed parts
//!
//! The outbox (`eddy-outbox`), the embedded log (`eddy-log`) and idempotent handlers
//! all keep their state in the service's own database, SQLite by default or
//! PostgreSQL, so that an event, a processed-event record and the business writes
//! commit in one transaction. This crate holds what they share:
//!
//! - [`db`] — [`Db`]: a pool over either backend (through sqlx's `Any` driver, so one
//!   SQL text serves both; placeholders are `$1`, `$2`, …), opened with durable and
//!   concurrency-safe settings, and [`Tx`], a transaction that can wake in-process and
//!   cross-process waiters when it commits (see [`signal`]).
//! - [`signal`] — commit signals: an in-process counter bumped after a commit, plus
//!   PostgreSQL `LISTEN/NOTIFY` so other processes wake too.
//! - [`migrate`] — a tiny migrator: named steps with a SQLite and a PostgreSQL text,
//!   applied once, under a lock.
//! - [`envelope_row`] — how an [`eddy_core::Envelope`] is stored in columns.
//! - [`idempotency`] — [`Transactional`]: runs a handler inside a transaction that
//!   also records the event as processed, so a redelivered event has no second effect.
//! - [`batch`] — [`Batched`]: the same guarantee with group commit — the events being
//!   handled at one moment share one transaction and one multi-row insert.
//! - [`error`] — sqlx errors mapped onto [`eddy_core::ErrorKind`].

pub mod batch;
pub mod db;
pub mod envelope_row;
pub mod error;
pub mod idempotency;
pub mod migrate;
pub mod signal;

pub use batch::{BatchConfig, BatchTxHandler, Batched, EachInTx};
pub use db::{AfterCommit, Backend, Db, DbConfig, SqliteSynchronous, Tx};
pub use error::classify;
pub use idempotency::{Transactional, TxHandler};
pub use migrate::Migration;

/// The sqlx version this crate is built on, re-exported for handler code.
pub use sqlx;
