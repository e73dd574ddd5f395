//! `shop gateway`: the public HTTP contract in front of one process per service. It
//! routes by path prefix — `/v1/products` to catalog, `/v1/orders` and `/v1/customers` to
//! orders, `/v1/payments` to payments — forwarding the headers the contract uses
//! (`Idempotency-Key`, `eddy-deadline`, trace context) and passing answers through, so a
//! client cannot tell it from the single-process platform.

use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::problem::problem;

/// Request headers passed to the service.
const FORWARDED_REQUEST: [&str; 6] = [
    "authorization",
    "content-type",
    "idempotency-key",
    "eddy-deadline",
    "traceparent",
    "tracestate",
];
/// Response headers passed back to the client.
const FORWARDED_RESPONSE: [&str; 5] = [
    "content-type",
    "retry-after",
    "idempotent-replayed",
    "allow",
    "www-authenticate",
];

#[derive(Debug, Clone)]
struct Gateway {
    http: reqwest::Client,
    catalog: Arc<str>,
    orders: Arc<str>,
    payments: Arc<str>,
    inventory: Arc<str>,
    notifications: Arc<str>,
    body_limit: usize,
}

/// The route label of a request in the gateway's metrics: the service it goes to (or
/// the gateway's own route), never the raw path.
fn route_label(path: &str) -> &'static str {
    match path {
        "/health/live" | "/health/ready" | "/openapi.json" | "/metrics" => "gateway",
        p if p.starts_with("/v1/products") => "catalog",
        p if p.starts_with("/v1/orders") || p.starts_with("/v1/customers") => "orders",
        p if p.starts_with("/v1/payments") => "payments",
        _ => "unmatched",
    }
}

/// Records every request in `http_requests_total` / `http_request_duration_seconds`,
/// labelled by [`route_label`].
async fn record(request: Request, next: axum::middleware::Next) -> Response {
    let route = route_label(request.uri().path());
    let method = request.method().clone();
    let started = std::time::Instant::now();
    let response = crate::platform::http::traced(route, request, |r| next.run(r)).await;
    eddy_telemetry::record_http(route, &method, response.status(), started.elapsed());
    response
}

impl Gateway {
    fn upstream(&self, path: &str) -> Option<&str> {
        if path.starts_with("/v1/products") {
            Some(&self.catalog)
        } else if path.starts_with("/v1/orders") || path.starts_with("/v1/customers") {
            Some(&self.orders)
        } else if path.starts_with("/v1/payments") {
            Some(&self.payments)
        } else {
            None
        }
    }
}

pub fn router(config: &Config) -> anyhow::Result<Router> {
    let gateway = Gateway {
        http: reqwest::Client::builder()
            .timeout(Duration::from_millis(config.gateway.timeout_ms))
            .pool_max_idle_per_host(config.gateway.idle_connections_max)
            .build()?,
        catalog: Arc::from(config.gateway.catalog_url.trim_end_matches('/')),
        orders: Arc::from(config.gateway.orders_url.trim_end_matches('/')),
        payments: Arc::from(config.gateway.payments_url.trim_end_matches('/')),
        inventory: Arc::from(config.gateway.inventory_url.trim_end_matches('/')),
        notifications: Arc::from(config.gateway.notifications_url.trim_end_matches('/')),
        body_limit: config.server.body_limit_bytes,
    };
    // Bad tokens stop here, counted and rate-limited per real client address (behind
    // the gateway, the services see only the gateway's); the services decide who may
    // do what.
    let authenticator = crate::auth::Authenticator::new(&config.auth)?;
    let body = crate::platform::http::BodyLimits::of(config);
    Ok(Router::new()
        .route("/health/live", get(crate::platform::health::live))
        .route("/health/ready", get(ready))
        .route("/openapi.json", get(crate::platform::health::openapi))
        .route("/metrics", get(crate::platform::health::metrics_text))
        .fallback(proxy)
        .method_not_allowed_fallback(crate::platform::method_not_allowed)
        .layer(axum::middleware::from_fn(move |request, next| {
            authenticator.clone().layer(request, next)
        }))
        // The same edge as the services': slow and oversized bodies, problems only.
        .layer(axum::middleware::from_fn(
            move |request, next: axum::middleware::Next| {
                crate::platform::http::read_body(body, request, |r| next.run(r))
            },
        ))
        .layer(axum::middleware::from_fn(
            |request, next: axum::middleware::Next| {
                crate::platform::http::ensure_problem(request, |r| next.run(r))
            },
        ))
        .layer(axum::middleware::from_fn(record))
        .with_state(gateway))
}

/// Ready when every service process is: the five, inventory and notifications
/// included (they serve no public route, but the saga stops without them). The problem
/// names each one that is not, with the url asked.
async fn ready(State(gateway): State<Gateway>) -> Response {
    let mut failing = Vec::new();
    for (name, base) in [
        ("catalog", &gateway.catalog),
        ("orders", &gateway.orders),
        ("inventory", &gateway.inventory),
        ("payments", &gateway.payments),
        ("notifications", &gateway.notifications),
    ] {
        let url = format!("{base}/health/ready");
        let ok = gateway
            .http
            .get(&url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if !ok {
            failing.push(format!("{name} ({url})"));
        }
    }
    let failing: Vec<&str> = failing.iter().map(String::as_str).collect();
    crate::platform::health::readiness_answer(&failing)
}

async fn proxy(State(gateway): State<Gateway>, request: Request) -> Response {
    let path_and_query = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let Some(upstream) = gateway.upstream(request.uri().path()) else {
        return problem(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            Some("no such route".to_owned()),
        );
    };
    let url = format!("{upstream}{path_and_query}");
    let method = request.method().clone();
    let headers = request.headers().clone();
    // `read_body`, a layer of this router, has read the body within this limit already
    // and answered 413/408 itself: an error here is not the client's.
    let body = match axum::body::to_bytes(request.into_body(), gateway.body_limit).await {
        Ok(body) => body,
        Err(error) => {
            return crate::problem::ApiError::Unexpected(anyhow::Error::new(error)).into_response()
        }
    };
    let call = eddy_trace::client_span(&format!("{method} {upstream}"), upstream);
    let mut outbound = gateway.http.request(method, &url).body(body);
    let context = eddy_trace::context_of(&call);
    for name in FORWARDED_REQUEST {
        // The service's span is the child of this call's, not of the client's.
        if context.is_some() && (name == "traceparent" || name == "tracestate") {
            continue;
        }
        if let Some(value) = headers.get(name) {
            outbound = outbound.header(name, value);
        }
    }
    if let Some(context) = &context {
        outbound = outbound.header("traceparent", eddy_trace::traceparent(context));
        let state = context.trace_state().header();
        if !state.is_empty() {
            outbound = outbound.header("tracestate", state);
        }
    }
    let sent = outbound.send().instrument(call.clone()).await;
    if let Ok(answer) = &sent {
        call.record("http.response.status_code", answer.status().as_u16());
    }
    match sent {
        Ok(answer) => pass_back(answer).await,
        Err(error) => {
            tracing::warn!(%url, %error, "upstream unreachable");
            let mut response = problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream-unavailable",
                "The service behind this route is unavailable",
                Some(format!("{upstream} did not answer")),
            );
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
            response
        }
    }
}

/// The service's answer as the client's: its status, the forwarded headers, its body.
async fn pass_back(answer: reqwest::Response) -> Response {
    let status = answer.status();
    let mut forwarded = Vec::new();
    for name in FORWARDED_RESPONSE {
        if let Some(value) = answer.headers().get(name) {
            forwarded.push((HeaderName::from_static(name), value.clone()));
        }
    }
    let body = match answer.bytes().await {
        Ok(body) => body,
        Err(_) => {
            return problem(
                StatusCode::BAD_GATEWAY,
                "bad-upstream-answer",
                "The service's answer was cut off",
                None,
            )
        }
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    for (name, value) in forwarded {
        response.headers_mut().insert(name, value);
    }
    response
}

/// Serves the gateway until `stop`.
pub async fn run(config: Config, stop: CancellationToken) -> anyhow::Result<()> {
    eddy_telemetry::prometheus();
    let listener = tokio::net::TcpListener::bind(config.gateway.listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    crate::platform::server::serve(
        listener,
        router(&config)?,
        config.connection_limits(),
        stop,
        "gateway",
    )
    .await?;
    Ok(())
}
