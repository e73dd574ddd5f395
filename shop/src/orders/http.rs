//! `/v1/orders` and `/v1/customers/{id}/orders`: place orders (idempotent per
//! `Idempotency-Key`) and read them — as they are, as they were at a moment, and their
//! history.

use axum::extract::{FromRef, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use eddy_cache::Cache;
use eddy_eventstore::{Aggregate, Expected, Until};
use eddy_sql::Tx;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::domain::{self, Cursor, IdempotencyKey, OrderRequest};
use super::ledger::Ledger;
use super::{aggregate, events, store};
use crate::auth::Authenticated;
use crate::contracts::values::{OrderId, Timestamp};
use crate::platform::cache::read_through;
use crate::problem::{page_len, ApiError, ApiJson, ApiPath, ApiQuery, Problem};
use crate::service::ServiceDb;

pub use crate::problem::{PAGE_LEN_DEFAULT, PAGE_LEN_MAX};

/// What orders' routes share: the service with its event store, and its order cache.
#[derive(Debug, Clone)]
pub struct OrdersState {
    pub ledger: Ledger,
    /// `GET /v1/orders/{id}` reads through it; every status change invalidates it after
    /// its commit. `None` when `cache.enabled` is off.
    pub orders: Option<Cache<OrderView>>,
}

impl FromRef<OrdersState> for ServiceDb {
    fn from_ref(state: &OrdersState) -> Self {
        state.ledger.service.clone()
    }
}

impl FromRef<OrdersState> for Ledger {
    fn from_ref(state: &OrdersState) -> Self {
        state.ledger.clone()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    #[schema(min_length = 1, max_length = 100, pattern = "\\S")]
    pub customer_id: String,
    #[schema(min_items = 1, max_items = 50)]
    pub lines: Vec<NewLine>,
}

#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewLine {
    #[schema(min_length = 1, max_length = 64, pattern = "\\S")]
    pub product_id: String,
    #[schema(minimum = 1, maximum = 1000)]
    pub quantity: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderView {
    pub id: String,
    pub customer_id: String,
    /// `PENDING`, `CONFIRMED` or `CANCELLED`.
    pub status: String,
    pub lines: Vec<LineView>,
    pub total_cents: i64,
    pub currency: String,
    /// `out_of_stock`, `unknown_product`, `payment_declined` or `payment_failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LineView {
    pub product_id: String,
    pub quantity: i64,
    pub unit_price_cents: i64,
}

impl From<domain::Order> for OrderView {
    fn from(order: domain::Order) -> Self {
        Self {
            id: order.id.as_str().to_owned(),
            customer_id: order.customer_id,
            status: order.status.as_str().to_owned(),
            lines: order
                .lines
                .into_iter()
                .map(|l| LineView {
                    product_id: l.product_id,
                    quantity: l.quantity,
                    unit_price_cents: l.unit_price_cents,
                })
                .collect(),
            total_cents: order.total_cents,
            currency: order.currency.as_str().to_owned(),
            cancel_reason: order.cancel_reason.map(|r| r.as_str().to_owned()),
            created_at: order.created_at,
            updated_at: order.updated_at,
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Orders per page (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page {
    pub items: Vec<OrderView>,
    /// Absent on the last page.
    pub next_cursor: Option<String>,
}

/// The routes with their documentation (see [`crate::openapi`]).
pub fn router() -> OpenApiRouter<OrdersState> {
    OpenApiRouter::new()
        .routes(routes!(place))
        .routes(routes!(read))
        .routes(routes!(history))
        .routes(routes!(list_for_customer))
}

fn accepted(order: domain::Order, replayed: bool) -> Response {
    let mut response = (StatusCode::ACCEPTED, Json(OrderView::from(order))).into_response();
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        // Which one would the client mean? Guessing could place a second order.
        return Err(ApiError::BadRequest(
            "invalid-idempotency-key",
            "give Idempotency-Key once".to_owned(),
        ));
    }
    let text = value.to_str().map_err(|_| {
        ApiError::BadRequest(
            "invalid-idempotency-key",
            "Idempotency-Key must be visible ASCII".to_owned(),
        )
    })?;
    IdempotencyKey::parse(text)
        .map(Some)
        .map_err(ApiError::bad_request)
}

/// Place an order: priced from orders' copy of the catalog, stored with its
/// `OrderPlaced` in one transaction. The saga settles it a moment later.
#[utoipa::path(post, path = "/v1/orders", security((), ("bearer" = [])), tag = "orders", request_body = NewOrder,
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 200, description = "Repeat a request with the same key to get the same order back. Visible ASCII; give it at most once")),
    responses(
        (status = 401, description = "No valid bearer token (when auth is on)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A customer's token, for another customer", body = Problem, content_type = "application/problem+json"),
        (status = 202, description = "Placed (PENDING); with `idempotent-replayed: true` when the key was used before", body = OrderView),
        (status = 400, description = "A malformed Idempotency-Key", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "An invalid order, an unknown product, or a key reused with another request", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "A request with this key is in progress", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn place(
    State(ledger): State<Ledger>,
    Authenticated(caller): Authenticated,
    headers: HeaderMap,
    ApiJson(new): ApiJson<NewOrder>,
) -> Result<Response, ApiError> {
    caller.acts_for(&new.customer_id)?;
    let request = OrderRequest::parse(
        &new.customer_id,
        new.lines
            .iter()
            .map(|l| (l.product_id.as_str(), l.quantity)),
    )?;
    let key = idempotency_key(&headers)?;
    // The request as it will be compared with a replay: canonical JSON of what was parsed.
    let canonical = serde_json::to_string(&new).map_err(|e| ApiError::Unexpected(e.into()))?;
    let service = &ledger.service;
    let mut tx = service.db.begin().await?;
    if let Some(key) = &key {
        if let Some(order) = replay(&mut tx, key, &canonical).await? {
            tx.rollback().await?;
            return Ok(accepted(order, true));
        }
    }
    let prices = store::prices(&mut tx, &request.product_ids()).await?;
    let order = domain::price(&request, &prices)?;
    let id = OrderId::generate();
    let now = service.now();
    if let Some(key) = &key {
        if !store::claim_key(&mut tx, key, &canonical, &id, now).await? {
            // A concurrent request with this key committed first (PostgreSQL waited for it).
            if let Some(order) = replay(&mut tx, key, &canonical).await? {
                tx.rollback().await?;
                return Ok(accepted(order, true));
            }
            return Err(ApiError::Unavailable(
                "a request with this Idempotency-Key is in progress".to_owned(),
            ));
        }
    }
    // The order's first event, published as well; the views move with it.
    let placed = service.envelope(&events::placed(&id, &order), None)?;
    let placed = std::slice::from_ref(&placed);
    ledger
        .record(&mut tx, id.as_str(), Expected::NoStream, placed, placed)
        .await?;
    // The reply is the order as the views now have it, made from what was appended
    // rather than read back.
    let at = Timestamp::from_micros(placed[0].occurred_at_micros());
    let pending = domain::Order {
        id,
        customer_id: order.customer_id.as_str().to_owned(),
        status: domain::OrderStatus::Pending,
        lines: order
            .lines
            .iter()
            .map(|l| domain::OrderLineRecord {
                product_id: l.product_id.as_str().to_owned(),
                quantity: l.quantity.units(),
                unit_price_cents: l.unit_price.cents(),
            })
            .collect(),
        total_cents: order.total.cents(),
        currency: order.total.currency(),
        cancel_reason: None,
        created_at: at,
        updated_at: at,
    };
    tx.commit().await?;
    Ok(accepted(pending, false))
}

/// The order `key` placed before: the same order again, or 422 for a different request.
async fn replay(
    tx: &mut Tx,
    key: &IdempotencyKey,
    request: &str,
) -> Result<Option<domain::Order>, ApiError> {
    let Some((stored, order_id)) = store::claimed_key(tx, key).await? else {
        return Ok(None);
    };
    if stored != request {
        return Err(ApiError::Unprocessable(
            "idempotency-key-reused",
            "this Idempotency-Key was used with a different request".to_owned(),
        ));
    }
    store::load(tx.conn(), &order_id)
        .await?
        .map(Some)
        .ok_or(ApiError::NotFound("order"))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadQuery {
    /// An RFC 3339 moment: the order as it was then (as orders had recorded it by that
    /// moment), read from its events rather than the current view.
    pub as_of: Option<String>,
}

/// Read an order (now, or as it was at a moment).
#[utoipa::path(get, path = "/v1/orders/{id}", security((), ("bearer" = [])), tag = "orders",
    params(("id" = String, Path, description = "The order's id"), ReadQuery),
    responses(
        (status = 401, description = "No valid bearer token (when auth is on)", body = Problem, content_type = "application/problem+json"),
        (status = 200, description = "The order", body = OrderView),
        (status = 400, description = "An `as_of` that is not an RFC 3339 time", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order (or not placed yet at `as_of`)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn read(
    State(OrdersState { ledger, orders }): State<OrdersState>,
    Authenticated(caller): Authenticated,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<ReadQuery>,
) -> Result<Json<OrderView>, ApiError> {
    // Only a well-formed id can name an order: anything else is absent without a
    // database read or a cache entry.
    if OrderId::parse(&id).is_err() {
        return Err(ApiError::NotFound("order"));
    }
    let found = match query.as_of.as_deref() {
        Some(text) => {
            let at = time::OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
                ApiError::BadRequest(
                    "invalid-as-of",
                    format!(
                        "as_of must be an RFC 3339 time such as 2026-12-03T10:00:00Z, got {text:?}"
                    ),
                )
            })?;
            ledger.as_of(&id, at).await?.map(OrderView::from)
        }
        None => {
            read_through(
                orders.as_ref(),
                &ledger.service.db,
                &id,
                |db, id| async move {
                    let mut conn = crate::problem::read_conn(&db).await?;
                    Ok(store::load(&mut conn, &id).await?.map(OrderView::from))
                },
            )
            .await?
        }
    };
    found
        // Another customer's order is as absent as one that does not exist.
        .filter(|order| caller.sees(Some(order.customer_id.as_str())))
        .map(Json)
        .ok_or(ApiError::NotFound("order"))
}

/// Most events `GET /v1/orders/{id}/history` returns (an order has about eight).
pub const HISTORY_LEN_MAX: usize = 1_000;

/// One event of an order's history.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    /// Its place in the order's stream, from 1.
    pub version: u64,
    /// `orders.OrderPlaced`, `inventory.StockReserved`, `payments.PaymentCaptured`, …
    pub event_type: String,
    pub schema_version: u32,
    pub event_id: String,
    /// When it happened (the clock of the service that announced it).
    #[schema(value_type = String, format = DateTime)]
    pub occurred_at: Timestamp,
    /// When orders recorded it (what `as_of` reads by).
    #[schema(value_type = String, format = DateTime)]
    pub recorded_at: Timestamp,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct History {
    pub order_id: String,
    /// Oldest first; at most 1,000.
    pub items: Vec<HistoryEntry>,
}

/// An order's history: every event of its stream, oldest first.
#[utoipa::path(get, path = "/v1/orders/{id}/history", security((), ("bearer" = [])), tag = "orders",
    params(("id" = String, Path, description = "The order's id")),
    responses(
        (status = 401, description = "No valid bearer token (when auth is on)", body = Problem, content_type = "application/problem+json"),
        (status = 200, description = "The order's events", body = History),
        (status = 404, description = "No such order", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn history(
    State(ledger): State<Ledger>,
    Authenticated(caller): Authenticated,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<History>, ApiError> {
    if OrderId::parse(&id).is_err() {
        return Err(ApiError::NotFound("order"));
    }
    let events = ledger
        .store
        .read_stream(&aggregate::stream(&id), 1, Until::End, HISTORY_LEN_MAX)
        .await?;
    let mut order = aggregate::OrderState::default();
    for event in &events {
        order.apply(event)?;
    }
    let customer = order.placed.as_ref().map(|p| p.customer_id.as_str());
    if customer.is_none() || !caller.sees(customer) {
        return Err(ApiError::NotFound("order"));
    }
    let items = events
        .iter()
        .map(|event| HistoryEntry {
            version: event.version,
            event_type: event.envelope.event_type.clone(),
            schema_version: event.envelope.schema_version,
            event_id: event.envelope.id.to_string(),
            occurred_at: Timestamp::from_micros(event.envelope.occurred_at_micros()),
            recorded_at: Timestamp::from_micros(eddy_core::envelope::to_micros(event.recorded_at)),
        })
        .collect();
    Ok(Json(History {
        order_id: id,
        items,
    }))
}

/// A customer's orders, newest first, a page at a time.
#[utoipa::path(get, path = "/v1/customers/{id}/orders", security((), ("bearer" = [])), tag = "orders",
    params(("id" = String, Path, description = "The customer's id"), PageQuery),
    responses(
        (status = 401, description = "No valid bearer token (when auth is on)", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "A customer's token, for another customer", body = Problem, content_type = "application/problem+json"),
        (status = 200, description = "A page of orders", body = Page),
        (status = 400, description = "A bad limit or cursor", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_for_customer(
    State(service): State<ServiceDb>,
    Authenticated(caller): Authenticated,
    ApiPath(customer_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<Page>, ApiError> {
    caller.acts_for(&customer_id)?;
    let limit = page_len(query.limit)?;
    let cursor = query
        .cursor
        .as_deref()
        .map(Cursor::parse)
        .transpose()
        .map_err(ApiError::bad_request)?;
    let mut conn = service.db.pool().acquire().await?;
    let (orders, more) = store::page(&mut conn, &customer_id, cursor.as_ref(), limit).await?;
    let next_cursor = if more {
        orders.last().map(|o| Cursor::after(o).to_string())
    } else {
        None
    };
    Ok(Json(Page {
        items: orders.into_iter().map(OrderView::from).collect(),
        next_cursor,
    }))
}
