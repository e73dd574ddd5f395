//! The live status page: `GET /status`, one HTML page with a little plain JavaScript,
//! embedded in the binary (`page.html`, no build step, nothing loaded from elsewhere).
//!
//! The page itself holds no data, so it is public. It asks for the admin token (kept in
//! the tab's `sessionStorage`) and reads everything through the admin API with
//! `Authorization: Bearer` — behind the same guard (rate limit, token, audit) as every
//! admin route. With the admin API off (no `admin.token`) the page says so and asks
//! for nothing.
//!
//! Admin routes ([`routes`], mounted by [`crate::admin::extend`]):
//!
//! | route | what |
//! |---|---|
//! | `GET /admin/status` | one [`snapshot::Snapshot`] |
//! | `GET /admin/status/stream` | server-sent events: a snapshot every [`STREAM_INTERVAL`] (`event: snapshot`), a `problem` event when one cannot be taken |
//! | `GET /admin/orders/{id}/events` | an order (from the orders read model) and its events with their headers and trace id |
//! | `GET /admin/search/{id}` | the same for an order id or the id of any event in an order's stream (the event store's unique index on event ids), with `"matched": "order"` or `"event"` |
//!
//! The stream is fetched, not opened with `EventSource`, which cannot send a header.
//! It is bounded: at most [`STREAMS_MAX`] at once in a process (then 429), one snapshot
//! per interval whatever the client reads (a slow reader holds the stream, never a
//! queue), and each stream ends after half the server's idle timeout (at most
//! [`STREAM_DURATION_MAX`]) — the server counts a streaming answer as an idle
//! connection and would cut it — and with the platform, whose server drops its
//! connections when it stops. The page reconnects when a stream ends.
//!
//! Search is by order id or by event id — of any event in an order's stream, which
//! holds the saga's events from every service (inventory's, payments'); an event of
//! no order (a product's) is not found.
//!
//! Layout: [`snapshot`] (what a snapshot holds and where each number comes from), this
//! module (the routes), `page.html` (the page).

pub mod snapshot;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use eddy_eventstore::{EventStore, Until};
use serde::Serialize;
use sqlx::Row;
use tokio::sync::{OnceCell, Semaphore};

use crate::admin::Admin;
use crate::contracts::values::{OrderId, Timestamp};
use crate::problem::{problem, ApiError, ApiPath};
use crate::service::{ServiceDb, ServiceName};

pub use snapshot::{Sampler, Snapshot};

/// The page, as it is served.
const PAGE: &str = include_str!("page.html");
/// Where the page learns whether the admin API is on (replaced when served).
const ADMIN_MARK: &str = "data-admin=\"?\"";
/// How often a stream sends a snapshot.
pub const STREAM_INTERVAL: Duration = Duration::from_secs(1);
/// Streams open at once in one process; more are refused with 429.
pub const STREAMS_MAX: usize = 8;
/// Longest a stream runs before it ends (the page then opens another).
pub const STREAM_DURATION_MAX: Duration = Duration::from_secs(300);
/// Most events `GET /admin/orders/{id}/events` lists.
pub const ORDER_EVENTS_LEN_MAX: usize = 1_000;

/// `GET /status`, the page, for the public router: `admin_on` tells the page whether
/// to ask for a token or say that the admin API is off.
pub fn page<S: Clone + Send + Sync + 'static>(admin_on: bool) -> Router<S> {
    let html = PAGE.replacen(
        ADMIN_MARK,
        if admin_on {
            "data-admin=\"on\""
        } else {
            "data-admin=\"off\""
        },
        1,
    );
    let html: Arc<str> = html.into();
    Router::new().route(
        "/status",
        get(move || {
            let html = html.clone();
            async move {
                (
                    // The page loads nothing from elsewhere and may not be framed.
                    [
                        (
                            header::CONTENT_SECURITY_POLICY,
                            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; frame-ancestors 'none'",
                        ),
                        (header::CACHE_CONTROL, "no-store"),
                    ],
                    Html(html.to_string()),
                )
            }
        }),
    )
}

/// What the status routes keep between requests.
#[derive(Clone)]
struct Status {
    sampler: Sampler,
    streams: Arc<Semaphore>,
    orders: Option<ServiceDb>,
    /// The orders event store, opened on first use (opening runs its migrations).
    events: Arc<OnceCell<EventStore>>,
}

/// The status page's admin routes, for the admin router (behind its guard).
pub fn routes(services: &[ServiceDb]) -> Router<Admin> {
    let status = Status {
        sampler: Sampler::default(),
        streams: Arc::new(Semaphore::new(STREAMS_MAX)),
        orders: services
            .iter()
            .find(|s| s.name == ServiceName::Orders)
            .cloned(),
        events: Arc::new(OnceCell::new()),
    };
    Router::new()
        .route("/admin/status", get(one))
        .route("/admin/status/stream", get(stream))
        .route("/admin/orders/{id}/events", get(order_events))
        .route("/admin/search/{id}", get(search))
        .layer(Extension(status))
}

async fn one(
    State(admin): State<Admin>,
    Extension(status): Extension<Status>,
) -> Result<Json<Snapshot>, ApiError> {
    snapshot::take(&admin, &status.sampler).await.map(Json)
}

async fn stream(State(admin): State<Admin>, Extension(status): Extension<Status>) -> Response {
    let Ok(permit) = status.streams.clone().try_acquire_owned() else {
        let mut refused = problem(
            StatusCode::TOO_MANY_REQUESTS,
            "too-many-streams",
            "Too many status streams are open",
            Some(format!("at most {STREAMS_MAX} at once in one process")),
        );
        refused
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        return refused;
    };
    let idle = Duration::from_millis(admin.config.server.idle_timeout_ms);
    let lasts = (idle / 2).clamp(STREAM_INTERVAL, STREAM_DURATION_MAX);
    let ends = tokio::time::Instant::now() + lasts;
    let mut tick = tokio::time::interval(STREAM_INTERVAL);
    // A reader slower than the interval gets the next snapshot when it is ready: no
    // burst of the ticks it missed.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let sampler = status.sampler.clone();
    let events = futures::stream::unfold(
        (admin, sampler, tick, permit),
        move |(admin, sampler, mut tick, permit)| async move {
            tick.tick().await;
            if tokio::time::Instant::now() >= ends {
                return None;
            }
            let event = match snapshot::take(&admin, &sampler).await {
                Ok(snapshot) => Event::default()
                    .event("snapshot")
                    .json_data(&snapshot)
                    .unwrap_or_else(|_| Event::default().event("problem").data("unencodable")),
                Err(error) => {
                    tracing::warn!(%error, "status snapshot failed");
                    Event::default()
                        .event("problem")
                        .data("a snapshot could not be taken; see the platform's log")
                }
            };
            Some((Ok::<_, Infallible>(event), (admin, sampler, tick, permit)))
        },
    );
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// One event of an order, with what the public history leaves out: its headers.
#[derive(Debug, Serialize)]
struct EventView {
    version: u64,
    event_type: String,
    event_id: String,
    occurred_at: Timestamp,
    recorded_at: Timestamp,
    correlation_id: String,
    causation_id: Option<String>,
    /// The W3C trace id of the event's `traceparent` header, when it carries one.
    trace_id: Option<String>,
    headers: BTreeMap<String, String>,
}

impl Status {
    fn orders(&self) -> Result<&ServiceDb, ApiError> {
        self.orders.as_ref().ok_or(ApiError::NotFound(
            "orders service in this process (search where orders runs)",
        ))
    }

    async fn store(&self) -> Result<&EventStore, ApiError> {
        let orders = self.orders()?.db.clone();
        Ok(self
            .events
            .get_or_try_init(|| EventStore::open(orders))
            .await?)
    }
}

/// The trace id of a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`), when valid.
fn trace_id(traceparent: &str) -> Option<String> {
    let mut parts = traceparent.split('-');
    let (_version, trace) = (parts.next()?, parts.next()?);
    let valid = trace.len() == 32
        && trace.bytes().all(|b| b.is_ascii_hexdigit())
        && trace.bytes().any(|b| b != b'0');
    valid.then(|| trace.to_ascii_lowercase())
}

/// `GET /admin/orders/{id}/events`: `{"order": {…} | null, "events": [EventView]}`.
async fn order_events(
    Extension(status): Extension<Status>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if OrderId::parse(&id).is_err() {
        return Err(ApiError::NotFound("order"));
    }
    let store = status.store().await?;
    let recorded = store
        .read_stream(
            &crate::orders::aggregate::stream(&id),
            1,
            Until::End,
            ORDER_EVENTS_LEN_MAX,
        )
        .await?;
    if recorded.is_empty() {
        return Err(ApiError::NotFound("order"));
    }
    let events: Vec<EventView> = recorded
        .iter()
        .map(|event| {
            let envelope = &event.envelope;
            let headers: BTreeMap<String, String> = envelope
                .headers
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            EventView {
                version: event.version,
                event_type: envelope.event_type.clone(),
                event_id: envelope.id.to_string(),
                occurred_at: Timestamp::from_micros(envelope.occurred_at_micros()),
                recorded_at: Timestamp::from_micros(eddy_core::envelope::to_micros(
                    event.recorded_at,
                )),
                correlation_id: envelope.correlation_id.to_string(),
                causation_id: envelope.causation_id.map(|c| c.to_string()),
                trace_id: envelope
                    .headers
                    .get(eddy_core::Headers::TRACEPARENT)
                    .and_then(trace_id),
                headers,
            }
        })
        .collect();
    let order = order_row(status.orders()?, &id).await?;
    Ok(Json(
        serde_json::json!({ "order_id": id, "order": order, "events": events }),
    ))
}

/// The order's row of the read model (`null` while a rebuild has not reached it).
async fn order_row(orders: &ServiceDb, id: &str) -> Result<serde_json::Value, ApiError> {
    let row = sqlx::query(
        "SELECT customer_id, status, total_cents, currency, cancel_reason, created_at_us FROM order_view WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(orders.db.pool())
    .await
    .map_err(|e| eddy_sql::classify("cannot read the order", e))?;
    let Some(row) = row else {
        return Ok(serde_json::Value::Null);
    };
    let column = |e: sqlx::Error| eddy_sql::classify("cannot read the order", e);
    Ok(serde_json::json!({
        "id": id,
        "customer_id": row.try_get::<String, _>("customer_id").map_err(column)?,
        "status": row.try_get::<String, _>("status").map_err(column)?,
        "total_cents": row.try_get::<i64, _>("total_cents").map_err(column)?,
        "currency": row.try_get::<String, _>("currency").map_err(column)?,
        "cancel_reason": row.try_get::<Option<String>, _>("cancel_reason").map_err(column)?,
        "created_at": Timestamp::from_micros(row.try_get::<i64, _>("created_at_us").map_err(column)?),
    }))
}

/// `GET /admin/search/{id}`: the answer of `GET /admin/orders/{order}/events` for the
/// order `id` names — an event's id (found by the event store's unique index on event
/// ids: any event of an order's stream, the other services' included) or else an
/// order's id — with `"matched": "event"` or `"order"`. 404 when it names neither.
async fn search(
    Extension(status): Extension<Status>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let store = status.store().await?;
    // Event ids are UUIDs: anything else is not looked up as one.
    let by_event = match uuid::Uuid::parse_str(&id) {
        Ok(event) => {
            sqlx::query_scalar::<_, String>("SELECT stream FROM eddy_es_events WHERE event_id = $1")
                .bind(event.to_string())
                .fetch_optional(store.db().pool())
                .await
                .map_err(|e| eddy_sql::classify("cannot look the event up", e))?
                .and_then(|stream| stream.strip_prefix("order-").map(str::to_owned))
        }
        Err(_) => None,
    };
    let (matched, order_id) = match by_event {
        Some(order_id) => ("event", order_id),
        None => ("order", id),
    };
    let mut found = order_events(Extension(status), ApiPath(order_id)).await?;
    found.0["matched"] = serde_json::Value::from(matched);
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_id_is_read_from_a_valid_traceparent_only() {
        assert_eq!(
            trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            trace_id("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(trace_id("garbage"), None);
    }

    #[test]
    fn the_page_is_told_whether_the_admin_api_is_on() {
        assert!(PAGE.contains(ADMIN_MARK));
        assert!(!PAGE.contains("http://") && !PAGE.contains("https://"));
    }
}
