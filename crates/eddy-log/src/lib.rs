//! # eddy-log — the embedded durable log
//!
//! The single-node default broker: Kafka's model (topics split into partitions by key,
//! consumer groups with committed offsets, redelivery of uncommitted messages, time
//! retention) kept in five SQL tables of the service's own SQLite or PostgreSQL
//! database. No server to install, and when a service's writes and its events share
//! the database, publishing *is* the insert: [`Log::append`] runs inside the business
//! transaction, so no outbox relay hop is needed.
//!
//! Layout:
//!
//! - [`schema`] — the tables and their migrations.
//! - [`log`] — [`Log`]: topics, [`Log::append`] in a caller's transaction, the
//!   [`eddy_core::Publisher`] and [`eddy_core::Subscriber`] implementations, retention,
//!   and consumer lag ([`Log::lag`], counted as Kafka counts it).
//! - [`subscription`] — one member of a consumer group: partition leases, fetching,
//!   commits, hand-over of partitions when members join or leave.
//!
//! Ordering: appends to one partition take that partition's row lock until their
//! transaction ends, so offsets become visible in commit order and a consumer reading
//! "offsets from N on" never skips a record committed late.

pub mod log;
pub mod schema;
pub mod subscription;

pub use log::{partition_for_key, Log, LogConfig, LogStats};
pub use subscription::LogSubscription;
