//! # eddy-sim — a seeded simulation that looks for the next reliability defect
//!
//! One run = one seed. The seed decides everything: how many partitions and keys, the
//! consumer's limits (concurrency, in-flight, fetch size, commit interval, drain
//! timeout, backoff), and a schedule of publishes (some sent twice, as an outbox relay
//! may), members joining, crashing (their task aborted mid-work) and restarting
//! (graceful shutdown with retries pending), retention runs, and fault rates: failed
//! fetches (transient and permanent), failed commits, handlers that fail transiently,
//! report their dependency unavailable, panic, or meet poison. Then faults stop, and the
//! group must drain. The code under test is the real consumer runtime
//! ([`eddy_runtime::Consumer`]): per-key scheduling, retries, dead letters, gap-aware
//! commits, the drain; the broker ([`broker::SimBroker`]) and the handlers' idempotent
//! store are simulated.
//!
//! Invariants, after every run: no event lost (each applied, or dead-lettered), no
//! poison applied, per-key order of first applications, no two calls of one key at once
//! in one consumer, every partition served (committed to its end once faults stop), and
//! no consumer ending before it is told to.
//!
//! Determinism: a single-threaded tokio runtime with paused time (timers fire in
//! simulated time, in deadline order), every random draw from the seed, and a runtime
//! whose `select!`s are `biased` — so a seed replays exactly: [`Report::trace_hash`]
//! fingerprints the run, and a failing seed prints the command that replays it.
//!
//! What it cannot reach: code that needs a real database or broker — the embedded log's
//! membership and retention, the relay, the NATS and Kafka adapters. Those defects have
//! tests of their own (`docs/failure-modes.md`).

pub mod broker;
mod world;

pub use world::{simulate, Failure, Report, Step};

/// Runs seeds `from .. from + count`; the failures, each with its seed.
pub fn simulate_many(from: u64, count: u64) -> (Vec<Report>, Vec<Failure>) {
    let mut reports = Vec::new();
    let mut failures = Vec::new();
    for seed in from..from.saturating_add(count) {
        match simulate(seed) {
            Ok(report) => reports.push(report),
            Err(failure) => failures.push(failure),
        }
    }
    (reports, failures)
}
