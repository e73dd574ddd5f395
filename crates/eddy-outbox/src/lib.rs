//! # eddy-outbox — the transactional outbox and its relay
//!
//! A service that changes its data and announces it must not do one without the
//! other. [`Outbox::append`] writes events into `eddy_outbox` inside the caller's own
//! transaction, so they exist if and only if the business change committed. The
//! [`Relay`] then publishes them to any [`eddy_core::Publisher`] (the embedded log in
//! another database, Kafka, NATS) and marks them published.
//!
//! Layout:
//!
//! - [`outbox`] — [`Outbox`]: the table, appends, state for operators.
//! - [`relay`] — [`Relay`] and [`RelayConfig`]: batches, wake-ups, retries, cleanup.
//!
//! The guarantees, and why they hold:
//!
//! - **No skipped rows.** The relay never remembers a high-water mark; each batch is
//!   "the oldest unpublished rows", and it marks exactly the ids it published. A row
//!   whose transaction commits after a higher-numbered row was already relayed is
//!   simply found by the next batch. (Relays that keep `last_id` and read `id > last_id`
//!   lose such rows: ids are allocated at insert, visibility comes at commit.)
//! - **Order per key.** Rows are published in id order, one batch after another. Ids
//!   follow insertion order, so two writes of one key made one after the other (the
//!   second transaction saw the first, for example through the aggregate's row lock)
//!   are relayed in that order. One relay is active per database: on PostgreSQL each
//!   batch runs under a transaction-scoped advisory lock; standby relays wait.
//! - **At least once.** Rows are marked only after the publisher accepted the whole
//!   batch. If the relay or the broker fails mid-batch, the batch is published again;
//!   consumers deduplicate by event id.
//! - **Woken at once.** Appends signal their commit (in-process, and `NOTIFY` on
//!   PostgreSQL); the relay polls only as a slow fallback.
//! - **Bounded growth.** Published rows are deleted after `retention`, in bounded
//!   batches.

pub mod outbox;
pub mod relay;

pub use outbox::{Outbox, OutboxState};
pub use relay::{Relay, RelayConfig, RelayStats};
