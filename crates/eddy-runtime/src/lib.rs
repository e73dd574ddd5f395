//! # eddy-runtime — the consumer runtime
//!
//! Turns a [`eddy_core::Subscription`] into handler calls with the guarantees the
//! failure stories ask for: per-key order, concurrency across keys, bounded work,
//! retries that do not block other keys, dead letters with their origin, and commits
//! that never move past an unfinished message.
//!
//! Layout:
//!
//! - [`router`] — [`Router`]: event type → typed [`eddy_core::Handler`].
//! - [`config`] — [`ConsumerConfig`] and [`RetryPolicy`], every limit named and bounded.
//! - [`tracker`] — [`tracker::OffsetTracker`]: gap-aware commit positions per partition.
//! - [`dead_letter`] — how a failed message becomes a dead letter (headers and all).
//! - [`decision`] — [`decision::decide`]: retry, pause or dead-letter after a failed
//!   attempt, a pure function of the error kind, the attempt and the policy.
//! - [`keys`] — [`keys::KeyQueues`]: per-key scheduling (a key's messages one after
//!   another, keys at once).
//! - [`consumer`] — [`Consumer`]: the fetch loop, handler attempts, the commit loop and
//!   the drain on shutdown.
//! - [`supervisor`] — [`supervise`]: a worker that ends early is started again, and
//!   [`Workers`] says which are down ([`supervise_until_up`]: down until the worker says
//!   it works, as a consumer once subscribed).
//!
//! How a message flows: the fetcher takes an in-flight permit per message (at most
//! `in_flight_max`; when none is left it stops fetching — backpressure), records the
//! offset as pending, and hands the message to its key's queue. Each key with work has
//! one task, so a key's messages run one after another while different keys run at
//! once, up to `concurrency` handler calls. A transient failure sleeps (full-jitter
//! backoff) without holding a concurrency slot, so only that key waits. When a message
//! is done — handled, skipped or dead-lettered — its offset leaves the pending set, and
//! the commit loop commits, per partition, up to the lowest offset still pending.

pub mod config;
pub mod consumer;
pub mod dead_letter;
pub mod decision;
pub mod keys;
pub mod router;
pub mod supervisor;
pub mod tracker;

pub use config::{ConsumerConfig, RetryPolicy};
pub use consumer::{Consumer, ConsumerStats};
pub use router::{EnvelopeHandler, Router};
pub use supervisor::{supervise, supervise_until_up, RestartPolicy, Up, WorkerState, Workers};
