//! Deadline budgets: an absolute time by which the work must be done, carried along the
//! call chain so that every hop's timeouts add up to the original budget.
//!
//! Inside a process the deadline is a task-local ([`Deadline::scope`], [`Deadline::current`]);
//! across processes it is the RFC 3339 header [`HEADER`] (`eddy-deadline`), on HTTP
//! requests and in event envelopes. [`DeadlineLayer`] guards outbound calls: work whose
//! deadline has passed is not started ([`DeadlineExceeded`]), and a call may use at most
//! `share` of the time left (and never more than `call_max`), so one slow call cannot
//! spend the budget of the calls after it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use time::OffsetDateTime;
use tokio::task::futures::TaskLocalFuture;
use tokio::time::Instant;
use tower::{BoxError, Layer, Service};

/// The header (and envelope header) that carries a deadline between processes.
pub const HEADER: &str = "eddy-deadline";

/// The latest moment RFC 3339 can write.
const FAR_FUTURE: &str = "9999-12-31T23:59:59Z";

tokio::task_local! {
    static CURRENT: Deadline;
}

/// An absolute deadline on the tokio clock (so paused-time tests control it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Deadline(Instant);

/// The deadline passed before (or while) the work ran.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineExceeded;

impl fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("deadline exceeded")
    }
}

impl std::error::Error for DeadlineExceeded {}

/// One call used up its share of the budget; the overall deadline has not passed, so a
/// retry within what is left may still succeed.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallTimedOut;

impl fmt::Display for CallTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("call timed out within its share of the deadline")
    }
}

impl std::error::Error for CallTimedOut {}

impl Deadline {
    /// `budget` from now.
    pub fn after(budget: Duration) -> Self {
        Self(Instant::now() + budget)
    }

    pub fn at(instant: Instant) -> Self {
        Self(instant)
    }

    pub fn instant(&self) -> Instant {
        self.0
    }

    /// Time left (zero once passed).
    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    pub fn is_expired(&self) -> bool {
        self.remaining().is_zero()
    }

    /// The deadline of the current task, if one was set with [`Deadline::scope`].
    pub fn current() -> Option<Deadline> {
        CURRENT.try_with(|d| *d).ok()
    }

    /// Runs `work` with this deadline as the current one — or the current one if that is
    /// sooner: an inner scope can shorten the budget, never extend it.
    pub fn scope<F: Future>(self, work: F) -> TaskLocalFuture<Deadline, F> {
        let effective = match Deadline::current() {
            Some(outer) if outer < self => outer,
            _ => self,
        };
        CURRENT.scope(effective, work)
    }

    /// The header value: the deadline as UTC wall-clock time, RFC 3339.
    pub fn to_header(&self) -> String {
        let wall = OffsetDateTime::now_utc() + self.remaining();
        // Only a deadline past the year 9999 cannot be written: it is as good as none,
        // and the latest writable moment says so to the next hop.
        wall.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| FAR_FUTURE.to_owned())
    }

    /// Reads a header value; `None` if malformed. A deadline in the past is returned as
    /// already expired (the work must then not start).
    pub fn from_header(value: &str) -> Option<Deadline> {
        let wall =
            OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339).ok()?;
        let left = wall - OffsetDateTime::now_utc();
        let left = Duration::try_from(left).unwrap_or(Duration::ZERO);
        Some(Deadline::after(left))
    }
}

/// Guards calls with the current deadline.
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    /// The budget when no deadline is set. Default 5 s.
    pub default_budget: Duration,
    /// The share (0–1] of the time left one call may use. Default 1.
    pub share: f64,
    /// The longest a single call may take whatever is left. Default 2 s.
    pub call_max: Duration,
}

impl Default for DeadlineLayer {
    fn default() -> Self {
        Self {
            default_budget: Duration::from_secs(5),
            share: 1.0,
            call_max: Duration::from_secs(2),
        }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService {
            inner,
            config: *self,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DeadlineService<S> {
    inner: S,
    config: DeadlineLayer,
}

impl<S, Req> Service<Req> for DeadlineService<S>
where
    S: Service<Req>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let deadline =
            Deadline::current().unwrap_or_else(|| Deadline::after(self.config.default_budget));
        if deadline.is_expired() {
            return DeadlineFuture::Expired;
        }
        let allowed = deadline
            .remaining()
            .mul_f64(self.config.share.clamp(0.0, 1.0))
            .min(self.config.call_max);
        DeadlineFuture::Calling {
            call: tokio::time::timeout(allowed, deadline.scope(self.inner.call(request))),
            deadline,
        }
    }
}

pin_project! {
    /// The future of a call behind a [`DeadlineService`]: the call runs under the
    /// deadline and is cut when its share of the time left runs out.
    #[project = DeadlineProj]
    pub enum DeadlineFuture<F> {
        /// The deadline had passed: the call was not made.
        Expired,
        Calling {
            #[pin]
            call: tokio::time::Timeout<TaskLocalFuture<Deadline, F>>,
            deadline: Deadline,
        },
    }
}

impl<F> fmt::Debug for DeadlineFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeadlineFuture::Expired => f.write_str("DeadlineFuture::Expired"),
            DeadlineFuture::Calling { deadline, .. } => f
                .debug_struct("DeadlineFuture::Calling")
                .field("deadline", deadline)
                .finish_non_exhaustive(),
        }
    }
}

impl<F, T, E> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            DeadlineProj::Expired => Poll::Ready(Err(BoxError::from(DeadlineExceeded))),
            DeadlineProj::Calling { call, deadline } => Poll::Ready(match ready!(call.poll(cx)) {
                Ok(result) => result.map_err(Into::into),
                Err(_) if deadline.is_expired() => Err(BoxError::from(DeadlineExceeded)),
                Err(_) => Err(BoxError::from(CallTimedOut)),
            }),
        }
    }
}
