//! # eddy-testkit — what Eddy's own tests and adapter authors share
//!
//! - [`db`] — [`TestDb`]: a fresh database per test, a SQLite file in a temporary
//!   folder or a new PostgreSQL database on the local server, dropped afterwards.
//!   PostgreSQL tests fail loudly (never skip) when the server is unreachable.
//! - [`conformance`] — the broker conformance suite: one set of cases, gated by
//!   [`conformance::Capabilities`], that every [`eddy_core::Publisher`] /
//!   [`eddy_core::Subscriber`] adapter must pass. Adapters instantiate it with
//!   [`conformance_tests!`].
//! - [`events`] — small typed events for tests.

pub mod conformance;
pub mod db;
pub mod events;

pub use db::TestDb;
