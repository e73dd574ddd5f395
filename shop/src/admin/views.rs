//! The read-only admin routes, each answering JSON about this process.

use axum::extract::State;
use axum::Json;
use eddy_resilience::BreakerState;
use serde::{Deserialize, Serialize};

use super::audit::Entry;
use super::Admin;
use crate::contracts::values::Timestamp;
use crate::problem::{ApiError, ApiQuery};
use crate::projections::Report;

/// Entries `GET /admin/audit` lists when no `limit` is given.
pub const AUDIT_PAGE_LEN_DEFAULT: i64 = 50;
/// Most entries one `GET /admin/audit` lists.
pub const AUDIT_PAGE_LEN_MAX: i64 = 1_000;

/// `GET /admin/outbox`: one service's outbox.
#[derive(Debug, Clone, Serialize)]
pub struct OutboxView {
    pub service: &'static str,
    /// Rows not yet published (the backlog).
    pub pending: u64,
    /// When the oldest unpublished row was written; `null` with no backlog.
    pub oldest_pending_at: Option<Timestamp>,
    /// How long ago that was, in seconds; `null` with no backlog.
    pub oldest_pending_age_seconds: Option<f64>,
    /// Rows parked because they can never be published.
    pub parked: u64,
    /// Published rows kept until `relay.retention_secs` ends.
    pub published_kept: u64,
}

/// `{"services": [{"service", "pending", "oldest_pending_at", "oldest_pending_age_seconds",
/// "parked", "published_kept"}]}`, for each service this process runs.
pub async fn outbox(State(admin): State<Admin>) -> Result<Json<serde_json::Value>, ApiError> {
    let mut services = Vec::with_capacity(admin.services.len());
    for service in &admin.services {
        let state = service.outbox.state().await?;
        let now_us = service.now().micros();
        services.push(OutboxView {
            service: service.name.as_str(),
            pending: state.pending_len,
            oldest_pending_at: state.oldest_pending_at_us.map(Timestamp::from_micros),
            oldest_pending_age_seconds: state
                .oldest_pending_at_us
                .map(|at| now_us.saturating_sub(at).max(0) as f64 / 1e6),
            parked: state.parked_len,
            published_kept: state.published_len,
        });
    }
    Ok(Json(serde_json::json!({ "services": services })))
}

/// `GET /admin/lag`: the lag monitor's snapshot, the same document as `GET /lag`
/// (`{"groups": [{"group", "status", "lag_messages", "lag_seconds", "topics": […]}]}`).
pub async fn lag(State(admin): State<Admin>) -> Json<eddy_telemetry::LagSnapshot> {
    Json(admin.lag.snapshot())
}

/// One circuit breaker.
#[derive(Debug, Clone, Serialize)]
pub struct BreakerView {
    pub name: String,
    /// `closed`, `open` or `half_open` (the `state` label of `circuit_breaker_state`).
    pub state: &'static str,
}

/// `GET /admin/breakers`: `{"breakers": [{"name", "state"}]}`, every breaker of the
/// services this process runs (an open one whose time is up reads `half_open`).
pub async fn breakers(State(admin): State<Admin>) -> Json<serde_json::Value> {
    let breakers: Vec<BreakerView> = admin
        .breakers
        .iter()
        .map(|breaker| BreakerView {
            name: breaker.name().to_owned(),
            state: match breaker.state() {
                BreakerState::Closed => "closed",
                BreakerState::Open => "open",
                BreakerState::HalfOpen => "half_open",
            },
        })
        .collect();
    Json(serde_json::json!({ "breakers": breakers }))
}

/// `GET /admin/projections`: `{"projections": [{"name", "generation", "position", "head",
/// "rebuilding"}]}`, each item as `shop projections status --json` prints it, for the
/// projections of the services this process runs.
pub async fn projections(State(admin): State<Admin>) -> Result<Json<serde_json::Value>, ApiError> {
    let mut reports: Vec<Report> = Vec::with_capacity(admin.projectors.len());
    for projector in &admin.projectors {
        let status = projector.status().await?;
        reports.push(crate::projections::report(projector.name(), status, None));
    }
    Ok(Json(serde_json::json!({ "projections": reports })))
}

/// Rebuilds running in this process, by projection name: a second request for one
/// that runs is refused here (the store refuses one from another process).
static REBUILDING: std::sync::LazyLock<std::sync::Mutex<std::collections::HashSet<String>>> =
    std::sync::LazyLock::new(Default::default);

/// `POST /admin/projections/{name}/rebuild`: starts rebuilding projection `name` in the
/// background (the live views keep serving until the rebuilt ones are swapped in; a
/// stopped rebuild resumes) and answers 202 with its status; `GET /admin/projections`
/// follows it (`rebuilding` until the swap). 404 for a projection this process does not
/// keep, 409 while one runs.
pub async fn rebuild_projection(
    State(admin): State<Admin>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<(axum::http::StatusCode, Json<serde_json::Value>), ApiError> {
    let Some(projector) = admin.projectors.iter().find(|p| p.name() == name).cloned() else {
        return Err(ApiError::NotFound("projection"));
    };
    {
        let mut running = REBUILDING.lock().unwrap_or_else(|p| p.into_inner());
        if !running.insert(name.clone()) {
            return Err(ApiError::Conflict(
                "rebuild-running",
                format!("projection {name} is being rebuilt already"),
            ));
        }
    }
    let status = projector.status().await;
    let report = status.map(|status| crate::projections::report(projector.name(), status, None));
    tokio::spawn(async move {
        match projector.rebuild(|_| {}).await {
            Ok(events) => {
                tracing::info!(projection = %name, events, "projection rebuilt and swapped in")
            }
            Err(error) => {
                tracing::warn!(projection = %name, %error, "projection rebuild stopped; start it again to resume")
            }
        }
        REBUILDING
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&name);
    });
    Ok((
        axum::http::StatusCode::ACCEPTED,
        Json(serde_json::json!({ "projection": report? })),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    limit: Option<i64>,
}

/// `GET /admin/audit?limit=N`: `{"items": [{"id", "at", "who", "client", "method", "path",
/// "status"}]}`, the newest N entries (default 50, 1 to 1,000), newest first.
pub async fn audit(
    State(admin): State<Admin>,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = query.limit.unwrap_or(AUDIT_PAGE_LEN_DEFAULT);
    if !(1..=AUDIT_PAGE_LEN_MAX).contains(&limit) {
        return Err(ApiError::BadRequest(
            "invalid-limit",
            format!("limit must be 1 to {AUDIT_PAGE_LEN_MAX}"),
        ));
    }
    let items: Vec<Entry> = admin.audit.recent(limit).await?;
    Ok(Json(serde_json::json!({ "items": items })))
}
