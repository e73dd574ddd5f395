//! The HTTP stack every platform request passes: metrics, the body read (time and size
//! limits), deadline propagation and load shedding (bulkhead), with their errors as
//! problem responses.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tracing::Instrument;

use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Router;
use eddy_resilience::{Bulkhead, BulkheadLayer, Deadline, Overloaded};
use futures::StreamExt;
use tower::{Layer, Service, ServiceExt};

use crate::config::Config;
use crate::problem::problem;

/// What the body reader allows a request.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Largest body accepted.
    pub len_max: usize,
    /// Time to receive it.
    pub read_timeout: Duration,
    /// Most of an oversized body read and thrown away before the 413.
    pub drain_max: u64,
}

impl BodyLimits {
    pub fn of(config: &Config) -> Self {
        Self {
            len_max: config.server.body_limit_bytes,
            read_timeout: Duration::from_millis(config.server.body_read_timeout_ms),
            drain_max: config.server.oversized_drain_max_bytes,
        }
    }
}

/// `api` inside the platform's layers. Public so the benchmark measures exactly this
/// stack. Outermost first: metrics (every answer counted, under its route template),
/// the body read (408 for a slow body, 413 for a large one — before any budget starts),
/// the deadline (the caller's or our budget, whichever is sooner; probes ignore the
/// caller's), load shedding. Between the body and the deadline, authentication (the
/// [`crate::auth::Caller`] every handler asks); an unusable key is an error.
pub fn platform_layers(api: Router, config: &Config) -> anyhow::Result<Router> {
    let authenticator = crate::auth::Authenticator::new(&config.auth)?;
    Ok(stack(api, config, "http", Some(authenticator)))
}

/// The admin API (`/admin/…`, [`crate::admin`]) inside the same layers as the public
/// API but two: no JWT authentication — the admin API checks its own token, and a
/// JWT layer would refuse the admin token as a malformed JWT when `[auth]` is on —
/// and a bulkhead of its own (`admin`), so a flood of public requests cannot shed the
/// requests of the operator looking into it.
pub(crate) fn admin_layers(api: Router, config: &Config) -> Router {
    stack(api, config, "admin", None)
}

/// The layers of [`platform_layers`], with `authenticator` when one is given and the
/// bulkhead named `bulkhead`.
fn stack(
    api: Router,
    config: &Config,
    bulkhead: &str,
    authenticator: Option<crate::auth::Authenticator>,
) -> Router {
    // The metrics are part of the stack (and of what S1 measures): make sure they record.
    eddy_telemetry::prometheus();
    let edge = Edge(Arc::new(EdgeShared {
        body: BodyLimits::of(config),
        budget: config.request_timeout(),
        authenticator,
        // Load shedding: beyond the limit and an equal queue, answer 503 at once.
        bulkhead: BulkheadLayer::new(
            bulkhead,
            config.server.concurrency_limit,
            config.server.concurrency_limit,
        ),
    }));
    api.layer(edge).layer(axum::extract::DefaultBodyLimit::max(
        config.server.body_limit_bytes,
    ))
}

/// The platform's edge as one layer: the steps of [`platform_layers`] run in one future
/// per request. (As five `from_fn` layers and an error handler, each step cloned the
/// inner service and boxed a future of its own: half of the stack's cost in S1.)
#[derive(Clone)]
struct Edge(Arc<EdgeShared>);

struct EdgeShared {
    body: BodyLimits,
    budget: Duration,
    authenticator: Option<crate::auth::Authenticator>,
    bulkhead: BulkheadLayer,
}

impl<S> Layer<S> for Edge {
    type Service = EdgeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EdgeService {
            inner: self.0.bulkhead.layer(inner),
            shared: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct EdgeService<S> {
    inner: Bulkhead<S>,
    shared: Arc<EdgeShared>,
}

impl<S> Service<Request> for EdgeService<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Infallible>> {
        // Readiness is the bulkhead's decision, made per request (it sheds, never waits
        // here).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let inner = self.inner.clone();
        let shared = self.shared.clone();
        Box::pin(async move { Ok(shared.serve(request, inner).await) })
    }
}

impl EdgeShared {
    /// Outermost first: metrics, problems for every error, the server span, the body
    /// read, authentication, the deadline, load shedding, the route. One flat future:
    /// the steps before the route are checks that answer at once or let the request
    /// through, and the rare slow paths (a body to read, an error to rewrite) are boxed
    /// apart, so the future every request allocates and moves stays small.
    async fn serve<S>(&self, request: Request, inner: Bulkhead<S>) -> Response
    where
        S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        let route = request.extensions().get::<MatchedPath>().cloned();
        let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
        let method = request.method().clone();
        let started = std::time::Instant::now();
        let response = traced(route, request, |request| self.respond(request, inner)).await;
        let response = if is_plain_error(&response) {
            Box::pin(as_problem(response)).await
        } else {
            response
        };
        eddy_telemetry::record_http(route, &method, response.status(), started.elapsed());
        response
    }

    async fn respond<S>(&self, request: Request, inner: Bulkhead<S>) -> Response
    where
        S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send + 'static,
    {
        let request = if has_no_body(&request) {
            request
        } else {
            match Box::pin(read_whole(self.body, request)).await {
                Ok(request) => request,
                Err(refused) => return refused,
            }
        };
        let (request, watch) = match &self.authenticator {
            Some(authenticator) => match authenticator.admit(request) {
                Ok(admitted) => admitted,
                Err(refused) => return *refused,
            },
            None => (request, crate::auth::Watch::Nothing),
        };
        let (deadline, callers) = match deadline_of(self.budget, &request) {
            Ok(deadline) => deadline,
            Err(refused) => return *refused,
        };
        let response = match tokio::time::timeout(
            deadline.remaining(),
            deadline.scope(inner.oneshot(request)),
        )
        .await
        {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => layer_error(&error),
            Err(_) => out_of_time(callers, self.budget),
        };
        watch.count(&response);
        response
    }
}

/// The problem for a request the bulkhead shed or the timeout cut.
fn layer_error(error: &tower::BoxError) -> Response {
    if error.is::<Overloaded>() {
        let mut response = problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "Too many requests in progress; try again shortly",
            None,
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        response
    } else {
        problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Temporarily unavailable",
            None,
        )
    }
}

/// Reads the whole body before the handler runs, within the body limits: a client too
/// slow to send it gets 408; a body over the limit is read and thrown away up to
/// `drain_max` (a client that sends everything before it reads would otherwise see its
/// connection reset instead of the answer), then gets 413. Both close the connection.
pub(crate) async fn read_body<N, F>(limits: BodyLimits, request: Request, next: N) -> Response
where
    N: FnOnce(Request) -> F,
    F: Future<Output = Response>,
{
    if has_no_body(&request) {
        return next(request).await;
    }
    match read_whole(limits, request).await {
        Ok(request) => next(request).await,
        Err(refused) => refused,
    }
}

/// Whether the request says it has no body (nothing to read).
fn has_no_body(request: &Request) -> bool {
    use axum::body::HttpBody;
    request.body().size_hint().exact() == Some(0)
}

/// The request with its whole body read (see [`read_body`]), or the answer refusing it.
/// For a request that may have one (callers skip it when [`has_no_body`]).
async fn read_whole(limits: BodyLimits, request: Request) -> Result<Request, Response> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (parts, body) = request.into_parts();
    let started = tokio::time::Instant::now();
    let deadline = started + limits.read_timeout;
    let limit = limits.len_max as u64;
    if let Some(declared) = declared.filter(|&d| d > limit) {
        if declared <= limits.drain_max {
            drain(body, limits.drain_max, deadline).await;
        }
        return Err(closing(too_large(Some(declared), limit)));
    }
    let mut stream = body.into_data_stream();
    let mut received = Vec::with_capacity(declared.map_or(0, |d| d as usize));
    loop {
        let frame = match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => return Err(closing(too_slow(limits.read_timeout))),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(closing(unreadable())),
            Ok(Some(Ok(frame))) => frame,
        };
        if (received.len() + frame.len()) as u64 > limit {
            let read = received.len() as u64 + frame.len() as u64;
            drain(
                axum::body::Body::from_stream(stream),
                limits.drain_max.saturating_sub(read),
                deadline,
            )
            .await;
            return Err(closing(too_large(None, limit)));
        }
        received.extend_from_slice(&frame);
    }
    Ok(Request::from_parts(parts, axum::body::Body::from(received)))
}

/// Reads and discards `body` until its end, `max` bytes or `deadline`.
async fn drain(body: axum::body::Body, max: u64, deadline: tokio::time::Instant) {
    let mut stream = body.into_data_stream();
    let mut read = 0u64;
    while read <= max {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(frame))) => read += frame.len() as u64,
            _ => return,
        }
    }
}

fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn too_large(declared: Option<u64>, limit: u64) -> Response {
    let detail = match declared {
        Some(declared) => format!("the body is {declared} bytes; at most {limit} are accepted"),
        None => format!("the body is over the limit of {limit} bytes"),
    };
    problem(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body-too-large",
        "The request body was rejected",
        Some(detail),
    )
}

fn too_slow(timeout: Duration) -> Response {
    problem(
        StatusCode::REQUEST_TIMEOUT,
        "body-timeout",
        "The request body did not arrive in time",
        Some(format!(
            "the whole body must arrive within {} ms",
            timeout.as_millis()
        )),
    )
}

fn unreadable() -> Response {
    problem(
        StatusCode::BAD_REQUEST,
        "unreadable-body",
        "The request body could not be read",
        Some("the body ended early or its chunked encoding is malformed".to_owned()),
    )
}

/// Whether a route is an operational one (probes, metrics): these ignore the caller's
/// deadline, so an expired header cannot make a healthy process look dead.
fn operational(route: Option<&MatchedPath>) -> bool {
    route.is_some_and(|r| r.as_str().starts_with("/health/") || r.as_str() == "/metrics")
}

/// The request's deadline — the caller's `eddy-deadline` header or our own request
/// budget, whichever is sooner — and whether it is the caller's; or the answer (504,
/// `deadline-exceeded`) when it passed before the request arrived. Work still running
/// at the deadline is cut: [`out_of_time`].
fn deadline_of(budget: Duration, request: &Request) -> Result<(Deadline, bool), Box<Response>> {
    let own = Deadline::after(budget);
    let theirs = if operational(request.extensions().get::<MatchedPath>()) {
        None
    } else {
        request
            .headers()
            .get(&DEADLINE)
            .and_then(|v| v.to_str().ok())
            .and_then(Deadline::from_header)
    };
    let deadline = theirs.map_or(own, |theirs| theirs.min(own));
    if deadline.is_expired() {
        return Err(Box::new(deadline_exceeded(
            "The request's deadline had passed when it arrived",
        )));
    }
    Ok((deadline, theirs.is_some_and(|theirs| theirs < own)))
}

/// The answer for work cut at its deadline: 504 when it was the caller's, 503
/// `timeout` when it was our own budget.
fn out_of_time(callers: bool, budget: Duration) -> Response {
    if callers {
        deadline_exceeded("The request's deadline passed while it ran")
    } else {
        problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "The request ran out of time",
            Some(format!("the server's budget is {} ms", budget.as_millis())),
        )
    }
}

fn deadline_exceeded(title: &str) -> Response {
    problem(
        StatusCode::GATEWAY_TIMEOUT,
        "deadline-exceeded",
        title,
        Some("the eddy-deadline the caller set was reached".to_owned()),
    )
}

/// Longest plain-text error body carried over into a problem's detail.
const PLAIN_ERROR_LEN_MAX: usize = 4096;

/// Every error the application answers is a problem: one that some layer or extractor
/// wrote as plain text (or with no body) is rewritten as `application/problem+json`,
/// its text (in a client's terms) as the detail.
pub(crate) async fn ensure_problem<N, F>(request: Request, next: N) -> Response
where
    N: FnOnce(Request) -> F,
    F: Future<Output = Response>,
{
    let response = next(request).await;
    if is_plain_error(&response) {
        as_problem(response).await
    } else {
        response
    }
}

/// An error answer that is not a problem yet.
fn is_plain_error(response: &Response) -> bool {
    let status = response.status();
    (status.is_client_error() || status.is_server_error())
        && response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_none_or(|v| v.as_bytes() != b"application/problem+json")
}

/// `response`, a plain error ([`is_plain_error`]), as [`ensure_problem`] answers it.
async fn as_problem(response: Response) -> Response {
    let status = response.status();
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, PLAIN_ERROR_LEN_MAX)
        .await
        .ok()
        .map(|b| crate::problem::readable(String::from_utf8_lossy(&b).trim()))
        .filter(|t| !t.is_empty());
    let title = status.canonical_reason().unwrap_or("Error");
    let kind = title.to_ascii_lowercase().replace(' ', "-");
    let mut rewritten = problem(status, &kind, title, text);
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rewritten.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rewritten
}

/// Header names looked up on every request, made once: a look-up by `&str` parses the
/// name each time.
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
static DEADLINE: HeaderName = HeaderName::from_static(eddy_resilience::deadline::HEADER);

/// Runs `request` in its server span (`{method} {route}`, the child of the caller's
/// `traceparent`), the answer's status recorded on it.
pub(crate) async fn traced<N, F>(route: &str, request: Request, next: N) -> Response
where
    N: FnOnce(Request) -> F,
    F: Future<Output = Response>,
{
    let (span, caller) = {
        let header = |name: &HeaderName| request.headers().get(name).and_then(|v| v.to_str().ok());
        let caller = header(&TRACEPARENT)
            .and_then(|parent| eddy_trace::parse_traceparent(parent, header(&TRACESTATE)));
        let span = eddy_trace::server_span(request.method().as_str(), route, caller.as_ref());
        (span, caller)
    };
    let response = eddy_trace::carrying(caller, next(request))
        .instrument(span.clone())
        .await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        eddy_trace::fail(&span);
    }
    response
}
