//! Budgeted retries.
//!
//! A failed call is retried only if all of these hold: the error is worth retrying (not
//! an open breaker, a passed deadline, a shed call, or a failure a lower layer already
//! retried — [`DoNotRetry`]); the request is safe to repeat ([`RetrySafe`]); attempts
//! remain (`attempts_max`, 2 by default: one retry); and the retry budget has a token.
//! The budget (tower's `TpsBudget`) earns `budget_ratio` of a token per call and spends
//! one per retry, so retries stay a bounded fraction of the traffic however bad things
//! get. Before retrying it sleeps a full-jitter backoff: uniform in
//! `[0, min(backoff_max, backoff_initial × 2^(attempt−1))]`.
//!
//! When it gives up, the error is wrapped in [`DoNotRetry`] so a caller further up the
//! chain does not retry it again: that multiplication (3 × 3 = 9 calls per request) is
//! the retry storm.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower::retry::budget::{Budget, TpsBudget};
use tower::retry::{Policy, Retry};
use tower::{BoxError, Layer};

use crate::{CircuitOpen, DeadlineExceeded, Overloaded};

/// Whether repeating a request cannot cause a second effect.
pub trait RetrySafe {
    /// True for idempotent requests and for requests carrying an idempotency key.
    fn retry_safe(&self) -> bool;
}

/// A failure that must not be retried by any caller above (it was retried, or refused
/// on purpose, below).
#[derive(Debug)]
pub struct DoNotRetry {
    pub source: BoxError,
}

impl fmt::Display for DoNotRetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (not retried further)", self.source)
    }
}

impl std::error::Error for DoNotRetry {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

impl DoNotRetry {
    /// Whether `error` is, or wraps, a failure no caller should retry.
    pub fn applies_to(error: &BoxError) -> bool {
        error.is::<DoNotRetry>()
            || error.is::<CircuitOpen>()
            || error.is::<DeadlineExceeded>()
            || error.is::<Overloaded>()
    }
}

/// Settings of a [`RetryLayer`]. Every field has a documented default.
#[derive(Debug, Clone)]
pub struct RetryConfig {
    /// Attempts in all, the first included. Default 2.
    pub attempts_max: u32,
    /// Default 100 ms.
    pub backoff_initial: Duration,
    /// Default 2 s.
    pub backoff_max: Duration,
    /// Retries allowed per call, on average over `budget_window`. Default 0.1 (10 %).
    pub budget_ratio: f32,
    /// Retries allowed per second regardless of traffic (for quiet clients). Default 1.
    pub budget_min_per_sec: u32,
    /// How long earned retry tokens last (1–60 s). Default 10 s.
    pub budget_window: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts_max: 2,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            budget_ratio: 0.1,
            budget_min_per_sec: 1,
            budget_window: Duration::from_secs(10),
        }
    }
}

/// Retries with a shared budget. Services made from one layer share its budget.
#[derive(Clone)]
pub struct RetryLayer {
    policy: BudgetPolicy,
}

impl fmt::Debug for RetryLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("config", &self.policy.config)
            .finish_non_exhaustive()
    }
}

impl RetryLayer {
    pub fn new(config: RetryConfig) -> Self {
        let window = config
            .budget_window
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        let budget = TpsBudget::new(
            window,
            config.budget_min_per_sec,
            config.budget_ratio.clamp(0.0, 1000.0),
        );
        Self {
            policy: BudgetPolicy {
                config: Arc::new(config),
                budget: Arc::new(budget),
                attempt: 0,
            },
        }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<BudgetPolicy, S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::new(self.policy.clone(), inner)
    }
}

/// The retry decision; one copy per request tracks its attempts.
#[derive(Clone)]
pub struct BudgetPolicy {
    config: Arc<RetryConfig>,
    budget: Arc<TpsBudget>,
    attempt: u32,
}

impl fmt::Debug for BudgetPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BudgetPolicy")
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl BudgetPolicy {
    fn backoff(&self) -> Duration {
        eddy_core::Backoff::new(self.config.backoff_initial, self.config.backoff_max)
            .jittered(self.attempt, rand::random::<f64>())
    }
}

fn give_up<Res>(result: &mut Result<Res, BoxError>) {
    if let Err(error) = result {
        if !error.is::<DoNotRetry>() {
            let source = std::mem::replace(error, BoxError::from("retry placeholder"));
            *error = BoxError::from(DoNotRetry { source });
        }
    }
}

impl<Req, Res> Policy<Req, Res, BoxError> for BudgetPolicy
where
    Req: Clone + RetrySafe,
{
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        request: &mut Req,
        result: &mut Result<Res, BoxError>,
    ) -> Option<Self::Future> {
        let error = result.as_ref().err()?;
        if DoNotRetry::applies_to(error)
            || !request.retry_safe()
            || self.attempt + 1 >= self.config.attempts_max
            || !self.budget.withdraw()
        {
            give_up(result);
            return None;
        }
        self.attempt += 1;
        metrics::counter!("retries_total").increment(1);
        Some(tokio::time::sleep(self.backoff()))
    }

    fn clone_request(&mut self, request: &Req) -> Option<Req> {
        if self.attempt == 0 {
            // A new call (not a retry) earns budget.
            self.budget.deposit();
        }
        Some(request.clone())
    }
}
