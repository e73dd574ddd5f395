//! `/health/live`, `/health/ready`, `/metrics`, `/lag` and `/openapi.json`.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::broker::Broker;
use crate::problem::problem;
use crate::service::ServiceDb;

/// What readiness checks: every database of the process and the broker.
#[derive(Debug, Clone)]
pub struct Readiness {
    pub services: Vec<ServiceDb>,
    pub broker: Broker,
    /// The relays and consumers: one that is down (between a failure and its
    /// restart) makes the process not ready.
    pub workers: eddy_runtime::Workers,
    pub timeout: Duration,
    /// The consumer lag monitor `/lag` reads.
    pub lag: eddy_telemetry::LagMonitor,
}

/// The operational routes, documented.
pub fn router() -> OpenApiRouter<Readiness> {
    OpenApiRouter::new()
        .routes(routes!(live))
        .routes(routes!(ready))
        .routes(routes!(metrics_text))
        .routes(routes!(lag))
        .routes(routes!(openapi))
}

/// The process is up.
#[utoipa::path(get, path = "/health/live", tag = "operations",
    responses((status = 200, description = "Live", body = Object, example = json!({"status": "live"}))))]
pub async fn live() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "live"}))
}

/// Every database of the process and the broker answer.
#[utoipa::path(get, path = "/health/ready", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Object, example = json!({"status": "ready"})),
        (status = 503, description = "Something this process needs is unreachable, or one of its workers is down (named in `detail`)", body = crate::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn ready(State(readiness): State<Readiness>) -> Response {
    let mut failing = Vec::new();
    if !readiness.broker.reachable(readiness.timeout).await {
        failing.push("broker");
    }
    for service in &readiness.services {
        if !answers(&service.db, readiness.timeout).await {
            failing.push(service.name.as_str());
        }
    }
    let down: Vec<String> = readiness
        .workers
        .down()
        .into_iter()
        .map(|worker| format!("{worker} (down, restarting)"))
        .collect();
    failing.extend(down.iter().map(String::as_str));
    readiness_answer(&failing)
}

/// Whether `db` runs a statement within `timeout`.
pub async fn answers(db: &eddy_sql::Db, timeout: Duration) -> bool {
    let ping = tokio::time::timeout(timeout, sqlx::query("SELECT 1").execute(db.pool())).await;
    matches!(ping, Ok(Ok(_)))
}

/// 200 `{"status": "ready"}`, or 503 naming what is unreachable.
pub fn readiness_answer(failing: &[&str]) -> Response {
    if failing.is_empty() {
        Json(serde_json::json!({"status": "ready"})).into_response()
    } else {
        problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            "Not ready",
            Some(format!("unreachable: {}", failing.join(", "))),
        )
    }
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "The metrics", body = String, content_type = "text/plain")))]
pub async fn metrics_text() -> Response {
    match eddy_telemetry::prometheus() {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-metrics",
            "Metrics are not available",
            None,
        ),
    }
}

/// Consumer lag as the lag monitor judges it: per group, topic and partition, lag in
/// messages and seconds, rates, the time to catch up and a status (OK, WARNING,
/// CRITICAL, GROWING, STALLED, STOPPED; docs/lag.md). Sampled every `lag.interval_secs`.
#[utoipa::path(get, path = "/lag", tag = "operations",
    responses((status = 200, description = "Every watched group, its topics and partitions", body = Object, content_type = "application/json")))]
pub async fn lag(State(readiness): State<Readiness>) -> Json<eddy_telemetry::LagSnapshot> {
    Json(readiness.lag.snapshot())
}

/// This document: the public API, generated from the handlers.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document", body = Object, content_type = "application/json")))]
pub async fn openapi() -> Response {
    match crate::openapi::document_json() {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(error) => {
            tracing::error!(%error, "cannot write the OpenAPI document");
            problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal server error",
                None,
            )
        }
    }
}
