//! # eddy-resilience — defences for every outbound call, as tower layers
//!
//! The seeds' worst incident was a retry storm: three retries at the gateway times
//! three at the next service turned a slowdown into nine times the load, and timeouts
//! did not add up along the call chain. These layers are the defences, each shaped like
//! tower's own (`Layer`, `Service`, an error type):
//!
//! - [`breaker`] — [`CircuitBreaker`]: a sliding time window of outcomes; opens on too
//!   many failures (by default 5 within 60 s), a failure rate or a slow-call rate; fails
//!   fast while open; admits a bounded number of probes when half-open. State changes are
//!   logged and counted in `circuit_breaker_state_changes`. Its handle tells consumers
//!   whether to pause.
//! - [`deadline`] — [`Deadline`]: an absolute time budget that travels with the work (a
//!   task-local here, the `eddy-deadline` header over HTTP and in event envelopes).
//!   [`DeadlineLayer`] refuses to start work whose deadline has passed and bounds each call
//!   by what is left.
//! - [`retry`] — [`RetryLayer`]: exponential backoff with full jitter, 2 attempts by
//!   default, and a retry budget (retries at most a fraction of calls, 10 % by default);
//!   only calls marked safe (idempotent, or carrying an idempotency key) are retried; and
//!   a caller never retries a failure that a layer below already retried or refused
//!   ([`DoNotRetry`]), so retries do not multiply along a chain.
//! - [`bulkhead`] — [`BulkheadLayer`]: a concurrency limit per dependency with a bounded
//!   queue; what exceeds both is shed at once with [`Overloaded`].
//!
//! Errors are boxed (`tower::BoxError`) as in tower; test them with `is::<T>()`.

pub mod breaker;
pub mod bulkhead;
pub mod deadline;
pub mod retry;

pub use breaker::{
    BreakerState, CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer, CircuitOpen,
};
pub use bulkhead::{Bulkhead, BulkheadLayer, Overloaded};
pub use deadline::{Deadline, DeadlineExceeded, DeadlineLayer};
pub use retry::{DoNotRetry, RetryConfig, RetryLayer, RetrySafe};
