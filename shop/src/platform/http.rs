//! The HTTP stack every platform request passes: metrics, deadline propagation, load
//! shedding (bulkhead), a timeout backstop and the body limit, with their errors as
//! problem responses.

use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::{MatchedPath, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use eddy_resilience::{BulkheadLayer, Deadline, Overloaded};
use tower::ServiceBuilder;

use crate::config::Config;
use crate::problem::problem;

/// Most of an oversized body read (and thrown away) before it is refused.
pub const OVERSIZED_DRAIN_MAX: u64 = 1 << 20;

/// `api` inside the platform's layers. Public so the benchmark measures exactly this
/// stack.
pub fn platform_layers(api: Router, config: &Config) -> Router {
    // The metrics are part of the stack (and of what S1 measures): make sure they record.
    eddy_telemetry::prometheus();
    let body_limit = config.server.body_limit_bytes;
    let api = api
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            refuse_oversized(body_limit, request, next)
        }))
        .layer(middleware::from_fn(record_http));
    let budget = config.request_timeout();
    api.layer(middleware::from_fn(move |request: Request, next: Next| {
        propagate_deadline(budget, request, next)
    }))
    .layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(|error: tower::BoxError| async move {
                layer_error(&error)
            }))
            // Load shedding: beyond the limit and an equal queue, answer 503 at once.
            .layer(BulkheadLayer::new(
                "http",
                config.server.concurrency_limit,
                config.server.concurrency_limit,
            ))
            .timeout(config.request_timeout())
            .layer(axum::extract::DefaultBodyLimit::max(
                config.server.body_limit_bytes,
            )),
    )
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
    } else if error.is::<tower::timeout::error::Elapsed>() {
        problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "The request ran out of time",
            None,
        )
    } else {
        problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Temporarily unavailable",
            None,
        )
    }
}

/// Refuses a body whose declared length exceeds `limit` with 413 before any handler runs,
/// and reads the rest of it first (up to [`OVERSIZED_DRAIN_MAX`]): a server that answers
/// and closes while the client is still sending resets the connection, and the client
/// sees a transport error instead of the problem response. Beyond that bound it answers
/// at once and closes the connection. Bodies without a length are still limited by the
/// extractors (`DefaultBodyLimit`).
async fn refuse_oversized(limit: usize, request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(declared) = declared.filter(|&d| d > limit as u64) else {
        return next.run(request).await;
    };
    let mut response = problem(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body-too-large",
        "The request body was rejected",
        Some(format!(
            "the body is {declared} bytes; at most {limit} are accepted"
        )),
    );
    if declared <= OVERSIZED_DRAIN_MAX {
        use futures::StreamExt;
        let mut body = request.into_body().into_data_stream();
        while let Some(Ok(_)) = body.next().await {}
    } else {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Runs the request under its deadline: the caller's `eddy-deadline` header or our own
/// request budget, whichever is sooner. Work whose deadline already passed is refused.
async fn propagate_deadline(budget: Duration, request: Request, next: Next) -> Response {
    let own = Deadline::after(budget);
    let deadline = request
        .headers()
        .get(eddy_resilience::deadline::HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(Deadline::from_header)
        .map_or(own, |theirs| theirs.min(own));
    if deadline.is_expired() {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "deadline-exceeded",
            "The request's deadline has passed",
            None,
        );
    }
    deadline.scope(next.run(request)).await
}

/// Counts the request under its route template (`unmatched` for none: never the raw
/// path, which would make a label per URL).
async fn record_http(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    eddy_telemetry::record_http(
        route.as_ref().map_or("unmatched", MatchedPath::as_str),
        &method,
        response.status(),
        started.elapsed(),
    );
    response
}
