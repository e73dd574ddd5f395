//! Orders' tables and SQL: the order views (a projection of the orders' event streams,
//! [`OrderViews`]), orders' copy of the catalog, and the idempotency keys of placements.

use std::collections::HashMap;

use eddy_core::{async_trait, Error, Event, JsonCodec};
use eddy_eventstore::{Projection, Recorded, Target};
use eddy_sql::{classify, Migration, Tx};
use sqlx::{AnyConnection, Row};

use super::domain::{CancelReason, Cursor, IdempotencyKey, Order, OrderLineRecord, OrderStatus};
use crate::contracts::values::{Currency, Money, OrderId, ProductId, Timestamp};
use crate::contracts::{OrderCancelled, OrderConfirmed, OrderPlaced};

// `orders` and `order_lines` are where orders were kept before they became event
// streams: kept (never written now) so `import_legacy` can turn them into streams.
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

/// A stored value that breaks a rule the code guarantees on the way in.
fn corrupt(what: &str, detail: impl std::fmt::Display) -> Error {
    Error::permanent(format!("stored {what} is invalid: {detail}"))
}

fn read(context: &'static str) -> impl Fn(sqlx::Error) -> Error {
    move |e| classify(context, e)
}

/// The order views: `order_view` (one row per order, by id, by customer and by status)
/// and `order_view_lines`, folded from the `OrderPlaced`, `OrderConfirmed` and
/// `OrderCancelled` of every order stream. Kept inline (in the transaction that appends
/// the events) so a command's caller reads its own write; `shop projections rebuild`
/// rebuilds them while they serve. The customer's order list is read from the same
/// view, through its `(customer_id, created_at_us, id)` index.
#[derive(Debug, Clone, Copy)]
pub struct OrderViews;

#[async_trait]
impl Projection for OrderViews {
    fn name(&self) -> &'static str {
        "order_views"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["order_view", "order_view_lines"]
    }

    async fn create(&self, tx: &mut Tx, target: &Target) -> Result<(), Error> {
        let (view, lines) = (target.table("order_view"), target.table("order_view_lines"));
        let by_customer = target.table("order_view_by_customer");
        let by_status = target.table("order_view_by_status");
        for sql in [
            format!("CREATE TABLE IF NOT EXISTS {view} (id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, status TEXT NOT NULL, total_cents BIGINT NOT NULL, currency TEXT NOT NULL, cancel_reason TEXT, created_at_us BIGINT NOT NULL, updated_at_us BIGINT NOT NULL)"),
            format!("CREATE INDEX IF NOT EXISTS {by_customer} ON {view} (customer_id, created_at_us DESC, id DESC)"),
            format!("CREATE INDEX IF NOT EXISTS {by_status} ON {view} (status, created_at_us)"),
            format!("CREATE TABLE IF NOT EXISTS {lines} (order_id TEXT NOT NULL, line_no BIGINT NOT NULL, product_id TEXT NOT NULL, quantity BIGINT NOT NULL, unit_price_cents BIGINT NOT NULL, PRIMARY KEY (order_id, line_no))"),
        ] {
            sqlx::query(&sql)
                .execute(tx.conn())
                .await
                .map_err(read("cannot create the order views"))?;
        }
        Ok(())
    }

    async fn apply(&self, tx: &mut Tx, target: &Target, event: &Recorded) -> Result<(), Error> {
        let envelope = &event.envelope;
        let at = envelope.occurred_at_micros();
        match envelope.event_type.as_str() {
            OrderPlaced::TYPE => {
                let placed: OrderPlaced = JsonCodec::decode(envelope)?;
                sqlx::query(&format!("INSERT INTO {} (id, customer_id, status, total_cents, currency, cancel_reason, created_at_us, updated_at_us) VALUES ($1, $2, $3, $4, $5, NULL, $6, $6)", target.table("order_view")))
                    .bind(&placed.order_id)
                    .bind(&placed.customer_id)
                    .bind(OrderStatus::Pending.as_str())
                    .bind(placed.total_cents)
                    .bind(&placed.currency)
                    .bind(at)
                    .execute(tx.conn())
                    .await
                    .map_err(read("cannot insert an order view"))?;
                let insert_line = format!("INSERT INTO {} (order_id, line_no, product_id, quantity, unit_price_cents) VALUES ($1, $2, $3, $4, $5)", target.table("order_view_lines"));
                for (line_no, line) in placed.lines.iter().enumerate() {
                    sqlx::query(&insert_line)
                        .bind(&placed.order_id)
                        .bind(line_no as i64)
                        .bind(&line.product_id)
                        .bind(line.quantity)
                        .bind(line.unit_price_cents)
                        .execute(tx.conn())
                        .await
                        .map_err(read("cannot insert an order line view"))?;
                }
            }
            OrderConfirmed::TYPE => {
                let confirmed: OrderConfirmed = JsonCodec::decode(envelope)?;
                settle_view(
                    tx,
                    target,
                    &confirmed.order_id,
                    OrderStatus::Confirmed,
                    None,
                    at,
                )
                .await?;
            }
            OrderCancelled::TYPE => {
                let cancelled: OrderCancelled = JsonCodec::decode(envelope)?;
                let reason = Some(cancelled.reason.as_str());
                settle_view(
                    tx,
                    target,
                    &cancelled.order_id,
                    OrderStatus::Cancelled,
                    reason,
                    at,
                )
                .await?;
            }
            // The facts an order was told change nothing the views show.
            _ => {}
        }
        Ok(())
    }
}

async fn settle_view(
    tx: &mut Tx,
    target: &Target,
    order_id: &str,
    status: OrderStatus,
    reason: Option<&str>,
    at: i64,
) -> Result<(), Error> {
    sqlx::query(&format!(
        "UPDATE {} SET status = $1, cancel_reason = $2, updated_at_us = $3 WHERE id = $4",
        target.table("order_view")
    ))
    .bind(status.as_str())
    .bind(reason)
    .bind(at)
    .bind(order_id)
    .execute(tx.conn())
    .await
    .map_err(read("cannot settle an order view"))?;
    Ok(())
}

/// The order with id `id`, with its lines, from the order views.
pub async fn load(conn: &mut AnyConnection, id: &str) -> Result<Option<Order>, Error> {
    load_from(conn, id, "order_view", "order_view_lines").await
}

/// Up to `limit` orders kept in the tables of before orders were event-sourced that
/// have no stream yet, oldest first.
pub async fn legacy_orders(conn: &mut AnyConnection, limit: i64) -> Result<Vec<Order>, Error> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM orders WHERE NOT EXISTS (SELECT 1 FROM eddy_es_streams WHERE stream = 'order-' || orders.id) ORDER BY created_at_us, id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(&mut *conn)
    .await
    .map_err(read("cannot look for orders kept before event sourcing"))?;
    let mut orders = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(order) = load_from(conn, &id, "orders", "order_lines").await? {
            orders.push(order);
        }
    }
    Ok(orders)
}

async fn load_from(
    conn: &mut AnyConnection,
    id: &str,
    table: &str,
    lines_table: &str,
) -> Result<Option<Order>, Error> {
    let Some(row) = sqlx::query(&format!("SELECT id, customer_id, status, total_cents, currency, cancel_reason, created_at_us, updated_at_us FROM {table} WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(read("cannot read the order"))?
    else {
        return Ok(None);
    };
    let lines = sqlx::query(&format!("SELECT product_id, quantity, unit_price_cents FROM {lines_table} WHERE order_id = $1 ORDER BY line_no"))
        .bind(id)
        .fetch_all(&mut *conn)
        .await
        .map_err(read("cannot read the order's lines"))?
        .into_iter()
        .map(|l| {
            Ok(OrderLineRecord {
                product_id: l.try_get("product_id")?,
                quantity: l.try_get("quantity")?,
                unit_price_cents: l.try_get("unit_price_cents")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(read("order line row"))?;
    let column = read("order row");
    let id: String = row.try_get("id").map_err(&column)?;
    let status: String = row.try_get("status").map_err(&column)?;
    let currency: String = row.try_get("currency").map_err(&column)?;
    let reason: Option<String> = row.try_get("cancel_reason").map_err(&column)?;
    Ok(Some(Order {
        id: OrderId::parse(&id).map_err(|e| corrupt("order id", e))?,
        customer_id: row.try_get("customer_id").map_err(&column)?,
        status: OrderStatus::parse(&status).map_err(|e| corrupt("order status", e))?,
        lines,
        total_cents: row.try_get("total_cents").map_err(&column)?,
        currency: Currency::parse(&currency).map_err(|e| corrupt("currency", e))?,
        cancel_reason: reason.as_deref().map(CancelReason::parse),
        created_at: Timestamp::from_micros(row.try_get("created_at_us").map_err(&column)?),
        updated_at: Timestamp::from_micros(row.try_get("updated_at_us").map_err(&column)?),
    }))
}

/// What orders knows of each of `products`' prices (absent: never heard of).
pub async fn prices(
    tx: &mut Tx,
    products: &[&ProductId],
) -> Result<HashMap<ProductId, Money>, Error> {
    let mut prices = HashMap::with_capacity(products.len());
    for product in products {
        let row =
            sqlx::query("SELECT price_cents, currency FROM catalog_copy WHERE product_id = $1")
                .bind(product.as_str())
                .fetch_optional(tx.conn())
                .await
                .map_err(read("cannot read the catalog copy"))?;
        let Some(row) = row else { continue };
        let column = read("catalog copy row");
        let currency: String = row.try_get("currency").map_err(&column)?;
        let currency = Currency::parse(&currency).map_err(|e| corrupt("currency", e))?;
        let price = Money::new(row.try_get("price_cents").map_err(&column)?, currency)
            .map_err(|e| corrupt("price", e))?;
        prices.insert((*product).clone(), price);
    }
    Ok(prices)
}

/// The order id and request a key was first used with.
pub async fn claimed_key(
    tx: &mut Tx,
    key: &IdempotencyKey,
) -> Result<Option<(String, String)>, Error> {
    let row =
        sqlx::query("SELECT request, order_id FROM idempotency_keys WHERE idempotency_key = $1")
            .bind(key.as_str())
            .fetch_optional(tx.conn())
            .await
            .map_err(read("cannot read the idempotency key"))?;
    row.map(|row| Ok((row.try_get("request")?, row.try_get("order_id")?)))
        .transpose()
        .map_err(read("idempotency key row"))
}

/// Claims `key` for `order_id`; false when another request claimed it first (on
/// PostgreSQL this waits for that request's transaction).
pub async fn claim_key(
    tx: &mut Tx,
    key: &IdempotencyKey,
    request: &str,
    order_id: &OrderId,
    now: Timestamp,
) -> Result<bool, Error> {
    let claimed = sqlx::query("INSERT INTO idempotency_keys (idempotency_key, request, order_id, created_at_us) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
        .bind(key.as_str())
        .bind(request)
        .bind(order_id.as_str())
        .bind(now.micros())
        .execute(tx.conn())
        .await
        .map_err(read("cannot claim the idempotency key"))?;
    Ok(claimed.rows_affected() == 1)
}

/// Forgets idempotency keys claimed before `before`, at most `batch_len_max`; returns
/// how many went.
pub async fn purge_idempotency_keys(
    db: &eddy_sql::Db,
    before: Timestamp,
    batch_len_max: i64,
) -> Result<u64, Error> {
    let purged = sqlx::query("DELETE FROM idempotency_keys WHERE idempotency_key IN (SELECT idempotency_key FROM idempotency_keys WHERE created_at_us < $1 LIMIT $2)")
        .bind(before.micros())
        .bind(batch_len_max)
        .execute(db.pool())
        .await
        .map_err(read("cannot purge idempotency keys"))?;
    Ok(purged.rows_affected())
}

/// Up to `limit` ids of orders still pending that were placed before `before`, oldest
/// first.
pub async fn overdue(
    conn: &mut AnyConnection,
    before: Timestamp,
    limit: i64,
) -> Result<Vec<String>, Error> {
    sqlx::query_scalar(
        "SELECT id FROM order_view WHERE status = $1 AND created_at_us < $2 ORDER BY created_at_us LIMIT $3",
    )
    .bind(OrderStatus::Pending.as_str())
    .bind(before.micros())
    .bind(limit)
    .fetch_all(conn)
    .await
    .map_err(read("cannot look for overdue orders"))
}

/// Up to `limit` orders of `customer_id` older than `cursor` (or the newest), newest
/// first, and whether more follow.
pub async fn page(
    conn: &mut AnyConnection,
    customer_id: &str,
    cursor: Option<&Cursor>,
    limit: i64,
) -> Result<(Vec<Order>, bool), Error> {
    let (before_us, before_id) = match cursor {
        Some(c) => (c.before_us, c.before_id.as_str()),
        // Above every id: the newest page.
        None => (i64::MAX, "\u{10FFFF}"),
    };
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM order_view WHERE customer_id = $1 AND (created_at_us < $2 OR (created_at_us = $2 AND id < $3)) ORDER BY created_at_us DESC, id DESC LIMIT $4")
        .bind(customer_id)
        .bind(before_us)
        .bind(before_id)
        .bind(limit + 1)
        .fetch_all(&mut *conn)
        .await
        .map_err(read("cannot list the customer's orders"))?;
    let more = ids.len() as i64 > limit;
    let mut orders = Vec::with_capacity(ids.len());
    for id in ids.iter().take(limit as usize) {
        if let Some(order) = load(conn, id).await? {
            orders.push(order);
        }
    }
    Ok((orders, more))
}

/// Keeps orders' copy of a product's price, ignoring news older than what it has.
pub async fn upsert_catalog_copy(
    tx: &mut Tx,
    product_id: &str,
    name: &str,
    price_cents: i64,
    currency: &str,
    at: Timestamp,
) -> Result<(), Error> {
    sqlx::query("INSERT INTO catalog_copy (product_id, name, price_cents, currency, updated_at_us) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (product_id) DO UPDATE SET name = excluded.name, price_cents = excluded.price_cents, currency = excluded.currency, updated_at_us = excluded.updated_at_us WHERE catalog_copy.updated_at_us <= excluded.updated_at_us")
        .bind(product_id)
        .bind(name)
        .bind(price_cents)
        .bind(currency)
        .bind(at.micros())
        .execute(tx.conn())
        .await
        .map_err(read("cannot update the catalog copy"))?;
    Ok(())
}
