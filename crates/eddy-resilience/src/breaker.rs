//! The circuit breaker.
//!
//! States: **closed** (calls pass; outcomes are recorded in a sliding time window),
//! **open** (calls fail at once with [`CircuitOpen`] for `open_duration`), **half-open**
//! (up to `half_open_probes` calls pass; if they all succeed the breaker closes, if one
//! fails it opens again). The breaker opens when, within `window`:
//!
//! - failures reach `failures_max` (the seeds' "5 failures in 60 s"), or
//! - at least `calls_min` calls were made and the failure rate reaches
//!   `failure_rate_max`, or the rate of calls slower than `slow_call` reaches
//!   `slow_call_rate_max`.
//!
//! Which results are failures is decided by the wrapped call's classification: every
//! `Err` counts, except errors the caller caused (see [`CircuitBreakerLayer::classify`]);
//! an HTTP client maps 5xx, timeouts and connection errors to `Err` and 4xx to `Ok`.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::{BoxError, Layer, Service};

/// Settings of a breaker. Every field has a documented default.
#[derive(Debug, Clone)]
pub struct CircuitBreakerConfig {
    /// Names the breaker in logs and metrics.
    pub name: String,
    /// The sliding window outcomes are counted in. Default 60 s.
    pub window: Duration,
    /// Failures within the window that open the breaker. Default 5.
    pub failures_max: u32,
    /// Calls within the window before rates are judged. Default 20.
    pub calls_min: u32,
    /// Failure rate (0–1) that opens the breaker once `calls_min` is reached. Default 0.5.
    pub failure_rate_max: f64,
    /// A call slower than this is a slow call. Default 2 s.
    pub slow_call: Duration,
    /// Slow-call rate (0–1) that opens the breaker once `calls_min` is reached. Default 0.8.
    pub slow_call_rate_max: f64,
    /// How long the breaker stays open before it lets probes through. Default 30 s.
    pub open_duration: Duration,
    /// Calls let through at once when half-open; all must succeed to close. Default 1.
    pub half_open_probes: u32,
    /// Outcomes kept at most, whatever the window (memory bound). Default 10,000.
    pub window_calls_max: usize,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            name: "default".to_owned(),
            window: Duration::from_secs(60),
            failures_max: 5,
            calls_min: 20,
            failure_rate_max: 0.5,
            slow_call: Duration::from_secs(2),
            slow_call_rate_max: 0.8,
            open_duration: Duration::from_secs(30),
            half_open_probes: 1,
            window_calls_max: 10_000,
        }
    }
}

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// `circuit_breaker_state{breaker, state}` as a state set: 1 for `state`, 0 for the
/// other two — so a dashboard and an alert read the state directly, with no arithmetic
/// over transition counters (which restart with the process).
fn export_state(breaker: &str, state: BreakerState) {
    for each in [
        BreakerState::Closed,
        BreakerState::Open,
        BreakerState::HalfOpen,
    ] {
        metrics::gauge!("circuit_breaker_state", "breaker" => breaker.to_owned(), "state" => each.as_str())
            .set(if each == state { 1.0 } else { 0.0 });
    }
}

/// The call was not made: the breaker is open (or its half-open probes are taken).
#[derive(Debug, Clone)]
pub struct CircuitOpen {
    pub name: String,
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "circuit breaker {} is open", self.name)
    }
}

impl std::error::Error for CircuitOpen {}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    /// The window's outcomes: (when, failed, slow).
    outcomes: VecDeque<(Instant, bool, bool)>,
    /// Failed and slow outcomes in `outcomes`, kept as they come and go (a call's
    /// record must not scan the window: it holds up to `window_calls_max`).
    failures: u32,
    slows: u32,
    opened_at: Instant,
    probes_in_flight: u32,
    probes_succeeded: u32,
}

/// A breaker's shared state: clone it to watch or share one breaker between services.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    config: Arc<CircuitBreakerConfig>,
    inner: Arc<Mutex<Inner>>,
}

/// Permission to make one call; report how it went with [`Permit::record`].
#[derive(Debug)]
pub struct Permit {
    breaker: CircuitBreaker,
    started: Instant,
    probe: bool,
    recorded: bool,
}

impl CircuitBreaker {
    pub fn new(config: CircuitBreakerConfig) -> Self {
        export_state(&config.name, BreakerState::Closed);
        Self {
            config: Arc::new(config),
            inner: Arc::new(Mutex::new(Inner {
                state: BreakerState::Closed,
                outcomes: VecDeque::new(),
                failures: 0,
                slows: 0,
                opened_at: Instant::now(),
                probes_in_flight: 0,
                probes_succeeded: 0,
            })),
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current state (an open breaker whose time is up reports half-open).
    pub fn state(&self) -> BreakerState {
        let mut inner = self.lock();
        self.refresh(&mut inner);
        inner.state
    }

    fn refresh(&self, inner: &mut Inner) {
        if inner.state == BreakerState::Open
            && inner.opened_at.elapsed() >= self.config.open_duration
        {
            self.transition(inner, BreakerState::HalfOpen);
        }
    }

    fn transition(&self, inner: &mut Inner, to: BreakerState) {
        let from = inner.state;
        if from == to {
            return;
        }
        inner.state = to;
        match to {
            BreakerState::Open => inner.opened_at = Instant::now(),
            BreakerState::HalfOpen => {
                inner.probes_in_flight = 0;
                inner.probes_succeeded = 0;
            }
            BreakerState::Closed => {
                inner.outcomes.clear();
                inner.failures = 0;
                inner.slows = 0;
            }
        }
        tracing::warn!(breaker = %self.config.name, from = from.as_str(), to = to.as_str(), "circuit breaker changed state");
        metrics::counter!("circuit_breaker_state_changes", "breaker" => self.config.name.clone(), "from" => from.as_str(), "to" => to.as_str())
            .increment(1);
        export_state(&self.config.name, to);
    }

    /// Whether a failed call through this breaker means the dependency is down (the
    /// breaker refused it, or is no longer closed after it) rather than that one request
    /// failed. Consumers pause on the former instead of spending retries.
    pub fn is_dependency_down(&self, error: &BoxError) -> bool {
        error.is::<CircuitOpen>() || self.state() != BreakerState::Closed
    }

    /// Asks to make a call: a permit, or [`CircuitOpen`].
    pub fn try_acquire(&self) -> Result<Permit, CircuitOpen> {
        let mut inner = self.lock();
        self.refresh(&mut inner);
        let probe = match inner.state {
            BreakerState::Closed => false,
            BreakerState::Open => {
                return Err(CircuitOpen {
                    name: self.config.name.clone(),
                })
            }
            BreakerState::HalfOpen => {
                if inner.probes_in_flight + inner.probes_succeeded >= self.config.half_open_probes {
                    return Err(CircuitOpen {
                        name: self.config.name.clone(),
                    });
                }
                inner.probes_in_flight += 1;
                true
            }
        };
        Ok(Permit {
            breaker: self.clone(),
            started: Instant::now(),
            probe,
            recorded: false,
        })
    }

    fn record(&self, started: Instant, probe: bool, failed: bool) {
        let now = Instant::now();
        let slow = now.duration_since(started) >= self.config.slow_call;
        let mut inner = self.lock();
        if probe {
            inner.probes_in_flight = inner.probes_in_flight.saturating_sub(1);
            if inner.state != BreakerState::HalfOpen {
                return;
            }
            if failed {
                self.transition(&mut inner, BreakerState::Open);
            } else {
                inner.probes_succeeded += 1;
                if inner.probes_succeeded >= self.config.half_open_probes {
                    self.transition(&mut inner, BreakerState::Closed);
                }
            }
            return;
        }
        if inner.state != BreakerState::Closed {
            return; // a call admitted before the breaker opened
        }
        inner.outcomes.push_back((now, failed, slow));
        inner.failures += u32::from(failed);
        inner.slows += u32::from(slow);
        while inner.outcomes.len() > self.config.window_calls_max
            || inner
                .outcomes
                .front()
                .is_some_and(|(at, _, _)| now.duration_since(*at) > self.config.window)
        {
            if let Some((_, failed, slow)) = inner.outcomes.pop_front() {
                inner.failures -= u32::from(failed);
                inner.slows -= u32::from(slow);
            }
        }
        let calls = inner.outcomes.len() as u32;
        let (failures, slows) = (inner.failures, inner.slows);
        let rate = |n: u32| f64::from(n) / f64::from(calls.max(1));
        let open = failures >= self.config.failures_max
            || (calls >= self.config.calls_min
                && (rate(failures) >= self.config.failure_rate_max
                    || rate(slows) >= self.config.slow_call_rate_max));
        if open {
            self.transition(&mut inner, BreakerState::Open);
        }
    }
}

impl Permit {
    /// Reports the call's outcome.
    pub fn record(mut self, failed: bool) {
        self.recorded = true;
        self.breaker.record(self.started, self.probe, failed);
    }
}

impl Drop for Permit {
    /// A call abandoned without an outcome (its future was dropped) counts as a failure:
    /// a caller that gave up waiting saw the dependency as failing.
    fn drop(&mut self) {
        if !self.recorded {
            self.breaker.record(self.started, self.probe, true);
        }
    }
}

/// Wraps a service in a [`CircuitBreaker`].
#[derive(Clone)]
pub struct CircuitBreakerLayer {
    breaker: CircuitBreaker,
    classify: Arc<dyn Fn(&BoxError) -> bool + Send + Sync>,
}

impl fmt::Debug for CircuitBreakerLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl CircuitBreakerLayer {
    pub fn new(breaker: CircuitBreaker) -> Self {
        Self {
            breaker,
            classify: Arc::new(|_| true),
        }
    }

    /// Decides which errors count as failures of the dependency (default: all). Errors
    /// the caller caused — a rejected request, an expired deadline — should not.
    pub fn classify(
        mut self,
        is_failure: impl Fn(&BoxError) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.classify = Arc::new(is_failure);
        self
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreakerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService {
            inner,
            breaker: self.breaker.clone(),
            classify: self.classify.clone(),
        }
    }
}

/// A service behind a circuit breaker.
#[derive(Clone)]
pub struct CircuitBreakerService<S> {
    inner: S,
    breaker: CircuitBreaker,
    classify: Arc<dyn Fn(&BoxError) -> bool + Send + Sync>,
}

impl<S> fmt::Debug for CircuitBreakerService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerService")
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl<S, Req> Service<Req> for CircuitBreakerService<S>
where
    S: Service<Req> + Send,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = CircuitBreakerFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        match self.breaker.try_acquire() {
            Ok(permit) => CircuitBreakerFuture::Calling {
                call: self.inner.call(request),
                permit: Some(permit),
                classify: self.classify.clone(),
            },
            Err(open) => CircuitBreakerFuture::Refused { open: Some(open) },
        }
    }
}

pin_project! {
    /// The future of a call behind a [`CircuitBreakerService`]: the call's outcome is
    /// recorded with the breaker when it ends.
    #[project = CircuitBreakerProj]
    pub enum CircuitBreakerFuture<F> {
        /// The breaker refused the call.
        Refused { open: Option<CircuitOpen> },
        Calling {
            #[pin]
            call: F,
            permit: Option<Permit>,
            classify: Arc<dyn Fn(&BoxError) -> bool + Send + Sync>,
        },
    }
}

impl<F> fmt::Debug for CircuitBreakerFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CircuitBreakerFuture::Refused { .. } => "CircuitBreakerFuture::Refused",
            CircuitBreakerFuture::Calling { .. } => "CircuitBreakerFuture::Calling",
        })
    }
}

impl<F, T, E> Future for CircuitBreakerFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            CircuitBreakerProj::Refused { open } => Poll::Ready(Err(match open.take() {
                Some(open) => BoxError::from(open),
                None => BoxError::from("circuit breaker future polled after completion"),
            })),
            CircuitBreakerProj::Calling {
                call,
                permit,
                classify,
            } => {
                let result = ready!(call.poll(cx)).map_err(Into::into);
                let failed = match &result {
                    Ok(_) => false,
                    Err(error) => classify(error),
                };
                if let Some(permit) = permit.take() {
                    permit.record(failed);
                }
                Poll::Ready(result)
            }
        }
    }
}
