//! Orders: placing an order (validated, prices snapshotted from orders' own event-fed
//! copy of the catalog, stored with its `OrderPlaced` event in one transaction,
//! idempotent per `Idempotency-Key`), reading orders, and reacting to stock and payment
//! outcomes by confirming or cancelling.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use eddy_core::{async_trait, Envelope, HandlerError};
use eddy_sql::{classify, Migration, Tx, TxHandler};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::contracts::{
    OrderCancelled, OrderConfirmed, OrderLine, OrderPlaced, PaymentCaptured, PaymentDeclined,
    ProductUpserted, StockRejected, ORDERS_TOPIC,
};
use crate::problem::{ApiError, ApiJson};
use crate::service::{rfc3339, ServiceDb};

macro_rules! orders_schema {
    () => {
        concat!(
            "CREATE TABLE IF NOT EXISTS catalog_copy (product_id TEXT PRIMARY KEY, name TEXT NOT NULL, price_cents BIGINT NOT NULL, currency TEXT NOT NULL, updated_at_us BIGINT NOT NULL);",
            "CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, status TEXT NOT NULL, total_cents BIGINT NOT NULL, currency TEXT NOT NULL, cancel_reason TEXT, created_at_us BIGINT NOT NULL, updated_at_us BIGINT NOT NULL);",
            "CREATE INDEX IF NOT EXISTS orders_by_customer ON orders (customer_id, created_at_us DESC, id DESC);",
            "CREATE TABLE IF NOT EXISTS order_lines (order_id TEXT NOT NULL, line_no BIGINT NOT NULL, product_id TEXT NOT NULL, quantity BIGINT NOT NULL, unit_price_cents BIGINT NOT NULL, PRIMARY KEY (order_id, line_no));",
            "CREATE TABLE IF NOT EXISTS idempotency_keys (idempotency_key TEXT PRIMARY KEY, request TEXT NOT NULL, order_id TEXT NOT NULL, created_at_us BIGINT NOT NULL)"
        )
    };
}

pub const MIGRATIONS: &[Migration] = &[Migration {
    name: "orders_0001_tables",
    sqlite: orders_schema!(),
    postgres: orders_schema!(),
}];

/// Limits of an order request.
pub const LINES_MAX: usize = 50;
pub const QUANTITY_MAX: i64 = 1_000;
pub const CUSTOMER_ID_LEN_MAX: usize = 100;
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 200;
pub const PAGE_LEN_DEFAULT: i64 = 20;
pub const PAGE_LEN_MAX: i64 = 100;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    pub customer_id: String,
    pub lines: Vec<NewLine>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NewLine {
    pub product_id: String,
    pub quantity: i64,
}

#[derive(Debug, Serialize)]
pub struct OrderView {
    pub id: String,
    pub customer_id: String,
    pub status: String,
    pub lines: Vec<LineView>,
    pub total_cents: i64,
    pub currency: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Serialize)]
pub struct LineView {
    pub product_id: String,
    pub quantity: i64,
    pub unit_price_cents: i64,
}

impl NewOrder {
    fn validate(&self) -> Result<(), ApiError> {
        if self.customer_id.trim().is_empty() || self.customer_id.len() > CUSTOMER_ID_LEN_MAX {
            return Err(ApiError::Unprocessable(
                "invalid-customer",
                format!("customer_id must be 1 to {CUSTOMER_ID_LEN_MAX} bytes"),
            ));
        }
        if self.lines.is_empty() {
            return Err(ApiError::Unprocessable(
                "no-lines",
                "an order needs at least one line".to_owned(),
            ));
        }
        if self.lines.len() > LINES_MAX {
            return Err(ApiError::Unprocessable(
                "too-many-lines",
                format!("an order has at most {LINES_MAX} lines"),
            ));
        }
        for line in &self.lines {
            if !(1..=QUANTITY_MAX).contains(&line.quantity) {
                return Err(ApiError::Unprocessable(
                    "invalid-quantity",
                    format!("quantity must be between 1 and {QUANTITY_MAX}"),
                ));
            }
            if line.product_id.is_empty() || line.product_id.len() > 64 {
                return Err(ApiError::Unprocessable(
                    "unknown-product",
                    format!("unknown product {:?}", line.product_id),
                ));
            }
        }
        Ok(())
    }
}

pub fn routes(service: ServiceDb) -> Router {
    Router::new()
        .route("/v1/orders", post(place))
        .route("/v1/orders/{id}", get(read))
        .route("/v1/customers/{id}/orders", get(list_for_customer))
        .with_state(service)
}

async fn load(conn: &mut sqlx::AnyConnection, id: &str) -> Result<Option<OrderView>, ApiError> {
    let Some(row) = sqlx::query("SELECT id, customer_id, status, total_cents, currency, cancel_reason, created_at_us, updated_at_us FROM orders WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(None);
    };
    let lines = sqlx::query("SELECT product_id, quantity, unit_price_cents FROM order_lines WHERE order_id = $1 ORDER BY line_no")
        .bind(id)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|l| {
            Ok(LineView {
                product_id: l.try_get("product_id")?,
                quantity: l.try_get("quantity")?,
                unit_price_cents: l.try_get("unit_price_cents")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Some(OrderView {
        id: row.try_get("id")?,
        customer_id: row.try_get("customer_id")?,
        status: row.try_get("status")?,
        lines,
        total_cents: row.try_get("total_cents")?,
        currency: row.try_get("currency")?,
        cancel_reason: row.try_get("cancel_reason")?,
        created_at: rfc3339(row.try_get("created_at_us")?),
        updated_at: rfc3339(row.try_get("updated_at_us")?),
    }))
}

fn accepted(view: OrderView, replayed: bool) -> Response {
    let mut response = (StatusCode::ACCEPTED, Json(view)).into_response();
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

async fn place(
    State(service): State<ServiceDb>,
    headers: HeaderMap,
    ApiJson(new): ApiJson<NewOrder>,
) -> Result<Response, ApiError> {
    new.validate()?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => {
            let key = value.to_str().map_err(|_| {
                ApiError::BadRequest(
                    "invalid-idempotency-key",
                    "Idempotency-Key must be visible ASCII".to_owned(),
                )
            })?;
            if key.is_empty() || key.len() > IDEMPOTENCY_KEY_LEN_MAX {
                return Err(ApiError::BadRequest(
                    "invalid-idempotency-key",
                    format!("Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_LEN_MAX} bytes"),
                ));
            }
            Some(key.to_owned())
        }
    };
    // The request as it will be compared with a replay: canonical JSON of what was parsed.
    let request = serde_json::to_string(&new).map_err(|e| ApiError::Unexpected(e.into()))?;
    let mut tx = service.db.begin().await?;
    if let Some(key) = &key {
        if let Some(response) = replay(&mut tx, key, &request).await? {
            tx.rollback().await?;
            return Ok(response);
        }
    }

    // Snapshot prices from orders' own copy of the catalog.
    let mut lines = Vec::with_capacity(new.lines.len());
    let mut currency: Option<String> = None;
    let mut total: i64 = 0;
    for line in &new.lines {
        let row =
            sqlx::query("SELECT price_cents, currency FROM catalog_copy WHERE product_id = $1")
                .bind(&line.product_id)
                .fetch_optional(tx.conn())
                .await?
                .ok_or_else(|| {
                    ApiError::Unprocessable(
                        "unknown-product",
                        format!("unknown product {:?}", line.product_id),
                    )
                })?;
        let price: i64 = row.try_get("price_cents")?;
        let line_currency: String = row.try_get("currency")?;
        match &currency {
            None => currency = Some(line_currency),
            Some(c) if *c != line_currency => {
                return Err(ApiError::Unprocessable(
                    "mixed-currencies",
                    "all lines of an order must share one currency".to_owned(),
                ));
            }
            Some(_) => {}
        }
        total = price
            .checked_mul(line.quantity)
            .and_then(|amount| total.checked_add(amount))
            .ok_or_else(|| {
                ApiError::Unprocessable(
                    "total-too-large",
                    "the order total is too large".to_owned(),
                )
            })?;
        lines.push(OrderLine {
            product_id: line.product_id.clone(),
            quantity: line.quantity,
            unit_price_cents: price,
        });
    }
    let currency = currency.unwrap_or_default();
    let id = uuid::Uuid::now_v7().to_string();
    let now = service.now_us();

    if let Some(key) = &key {
        let claimed = sqlx::query("INSERT INTO idempotency_keys (idempotency_key, request, order_id, created_at_us) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
            .bind(key)
            .bind(&request)
            .bind(&id)
            .bind(now)
            .execute(tx.conn())
            .await?
            .rows_affected();
        if claimed == 0 {
            // A concurrent request with this key committed first (PostgreSQL waited for it).
            if let Some(response) = replay(&mut tx, key, &request).await? {
                tx.rollback().await?;
                return Ok(response);
            }
            return Err(ApiError::Unavailable(
                "a request with this Idempotency-Key is in progress".to_owned(),
            ));
        }
    }
    sqlx::query("INSERT INTO orders (id, customer_id, status, total_cents, currency, cancel_reason, created_at_us, updated_at_us) VALUES ($1, $2, 'PENDING', $3, $4, NULL, $5, $5)")
        .bind(&id)
        .bind(&new.customer_id)
        .bind(total)
        .bind(&currency)
        .bind(now)
        .execute(tx.conn())
        .await?;
    for (line_no, line) in lines.iter().enumerate() {
        sqlx::query("INSERT INTO order_lines (order_id, line_no, product_id, quantity, unit_price_cents) VALUES ($1, $2, $3, $4, $5)")
            .bind(&id)
            .bind(line_no as i64)
            .bind(&line.product_id)
            .bind(line.quantity)
            .bind(line.unit_price_cents)
            .execute(tx.conn())
            .await?;
    }
    let event = OrderPlaced {
        order_id: id.clone(),
        customer_id: new.customer_id,
        lines,
        total_cents: total,
        currency,
    };
    service.emit(&mut tx, ORDERS_TOPIC, &event, None).await?;
    let view = load(tx.conn(), &id)
        .await?
        .ok_or(ApiError::NotFound("order"))?;
    tx.commit().await?;
    Ok(accepted(view, false))
}

/// The stored answer for `key`: the same order again, or 422 for a different body.
async fn replay(tx: &mut Tx, key: &str, request: &str) -> Result<Option<Response>, ApiError> {
    let Some(row) =
        sqlx::query("SELECT request, order_id FROM idempotency_keys WHERE idempotency_key = $1")
            .bind(key)
            .fetch_optional(tx.conn())
            .await?
    else {
        return Ok(None);
    };
    let stored: String = row.try_get("request")?;
    if stored != request {
        return Err(ApiError::Unprocessable(
            "idempotency-key-reused",
            "this Idempotency-Key was used with a different request".to_owned(),
        ));
    }
    let order_id: String = row.try_get("order_id")?;
    let view = load(tx.conn(), &order_id)
        .await?
        .ok_or(ApiError::NotFound("order"))?;
    Ok(Some(accepted(view, true)))
}

async fn read(
    State(service): State<ServiceDb>,
    Path(id): Path<String>,
) -> Result<Json<OrderView>, ApiError> {
    let mut conn = service.db.pool().acquire().await?;
    load(&mut conn, &id)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("order"))
}

#[derive(Debug, Deserialize)]
pub struct PageQuery {
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Page {
    pub items: Vec<OrderView>,
    pub next_cursor: Option<String>,
}

/// Newest first, by `(created_at, id)`; the cursor is the last item's pair.
async fn list_for_customer(
    State(service): State<ServiceDb>,
    Path(customer_id): Path<String>,
    Query(query): Query<PageQuery>,
) -> Result<Json<Page>, ApiError> {
    let limit = query.limit.unwrap_or(PAGE_LEN_DEFAULT);
    if limit < 1 {
        return Err(ApiError::BadRequest(
            "invalid-limit",
            "limit must be at least 1".to_owned(),
        ));
    }
    let limit = limit.min(PAGE_LEN_MAX);
    let (before_us, before_id) = match &query.cursor {
        None => (i64::MAX, String::new()),
        Some(cursor) => {
            let (at, id) = cursor
                .split_once('_')
                .and_then(|(at, id)| Some((at.parse::<i64>().ok()?, id.to_owned())))
                .ok_or_else(|| {
                    ApiError::BadRequest(
                        "invalid-cursor",
                        "cursor is not one this API returned".to_owned(),
                    )
                })?;
            (at, id)
        }
    };
    let mut conn = service.db.pool().acquire().await?;
    let rows = sqlx::query("SELECT id, created_at_us FROM orders WHERE customer_id = $1 AND (created_at_us < $2 OR (created_at_us = $2 AND id < $3)) ORDER BY created_at_us DESC, id DESC LIMIT $4")
        .bind(&customer_id)
        .bind(before_us)
        .bind(if query.cursor.is_some() { before_id } else { "\u{10FFFF}".to_owned() })
        .bind(limit + 1)
        .fetch_all(&mut *conn)
        .await?;
    let more = rows.len() as i64 > limit;
    let mut items = Vec::new();
    let mut last = None;
    for row in rows.iter().take(limit as usize) {
        let id: String = row.try_get("id")?;
        let at: i64 = row.try_get("created_at_us")?;
        if let Some(view) = load(&mut conn, &id).await? {
            items.push(view);
        }
        last = Some(format!("{at}_{id}"));
    }
    Ok(Json(Page {
        items,
        next_cursor: if more { last } else { None },
    }))
}

/// Keeps orders' copy of the catalog (prices at the time of the event).
#[derive(Debug, Clone)]
pub struct OnProductUpserted;

#[async_trait]
impl TxHandler<ProductUpserted> for OnProductUpserted {
    async fn handle(
        &self,
        event: ProductUpserted,
        envelope: &Envelope,
        tx: &mut Tx,
    ) -> Result<(), HandlerError> {
        sqlx::query("INSERT INTO catalog_copy (product_id, name, price_cents, currency, updated_at_us) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (product_id) DO UPDATE SET name = excluded.name, price_cents = excluded.price_cents, currency = excluded.currency, updated_at_us = excluded.updated_at_us WHERE catalog_copy.updated_at_us <= excluded.updated_at_us")
            .bind(&event.product_id)
            .bind(&event.name)
            .bind(event.price_cents)
            .bind(&event.currency)
            .bind(envelope.occurred_at_micros())
            .execute(tx.conn())
            .await
            .map_err(|e| classify("cannot update the catalog copy", e))?;
        Ok(())
    }
}

/// Confirms or cancels a pending order, announcing the outcome. A settled order stays
/// as it is (a late or repeated outcome changes nothing).
pub struct Settle {
    pub service: ServiceDb,
}

impl std::fmt::Debug for Settle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Settle")
    }
}

impl Settle {
    async fn settle(
        &self,
        tx: &mut Tx,
        order_id: &str,
        outcome: Result<(), &str>,
        cause: &Envelope,
    ) -> Result<(), HandlerError> {
        let (status, reason) = match outcome {
            Ok(()) => ("CONFIRMED", None),
            Err(reason) => ("CANCELLED", Some(reason)),
        };
        let row = sqlx::query("UPDATE orders SET status = $1, cancel_reason = $2, updated_at_us = $3 WHERE id = $4 AND status = 'PENDING' RETURNING customer_id, total_cents, currency")
            .bind(status)
            .bind(reason)
            .bind(self.service.now_us())
            .bind(order_id)
            .fetch_optional(tx.conn())
            .await
            .map_err(|e| classify("cannot settle the order", e))?;
        let Some(row) = row else {
            return Ok(());
        };
        let customer_id: String = row
            .try_get("customer_id")
            .map_err(|e| classify("order row", e))?;
        match reason {
            None => {
                let event = OrderConfirmed {
                    order_id: order_id.to_owned(),
                    customer_id,
                    total_cents: row
                        .try_get("total_cents")
                        .map_err(|e| classify("order row", e))?,
                    currency: row
                        .try_get("currency")
                        .map_err(|e| classify("order row", e))?,
                };
                self.service
                    .emit(tx, ORDERS_TOPIC, &event, Some(cause))
                    .await?;
            }
            Some(reason) => {
                let event = OrderCancelled {
                    order_id: order_id.to_owned(),
                    customer_id,
                    reason: reason.to_owned(),
                };
                self.service
                    .emit(tx, ORDERS_TOPIC, &event, Some(cause))
                    .await?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl TxHandler<StockRejected> for Settle {
    async fn handle(
        &self,
        event: StockRejected,
        envelope: &Envelope,
        tx: &mut Tx,
    ) -> Result<(), HandlerError> {
        let reason = event.reason.as_deref().unwrap_or("out_of_stock");
        self.settle(tx, &event.order_id, Err(reason), envelope)
            .await
    }
}

#[async_trait]
impl TxHandler<PaymentCaptured> for Settle {
    async fn handle(
        &self,
        event: PaymentCaptured,
        envelope: &Envelope,
        tx: &mut Tx,
    ) -> Result<(), HandlerError> {
        self.settle(tx, &event.order_id, Ok(()), envelope).await
    }
}

#[async_trait]
impl TxHandler<PaymentDeclined> for Settle {
    async fn handle(
        &self,
        event: PaymentDeclined,
        envelope: &Envelope,
        tx: &mut Tx,
    ) -> Result<(), HandlerError> {
        self.settle(tx, &event.order_id, Err(event.reason.as_str()), envelope)
            .await
    }
}
