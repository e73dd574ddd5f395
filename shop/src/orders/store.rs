//! Orders' tables and SQL: orders and their lines, orders' copy of the catalog, and the
//! idempotency keys of placements.

use std::collections::HashMap;

use eddy_core::Error;
use eddy_sql::{classify, Migration, Tx};
use sqlx::{AnyConnection, Row};

use super::domain::{
    CancelReason, Cursor, IdempotencyKey, Order, OrderLineRecord, OrderStatus, Outcome, PricedOrder,
};
use crate::contracts::values::{Currency, Money, OrderId, ProductId, Timestamp};

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

/// The order with id `id`, with its lines.
pub async fn load(conn: &mut AnyConnection, id: &str) -> Result<Option<Order>, Error> {
    let Some(row) = sqlx::query("SELECT id, customer_id, status, total_cents, currency, cancel_reason, created_at_us, updated_at_us FROM orders WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(read("cannot read the order"))?
    else {
        return Ok(None);
    };
    let lines = sqlx::query("SELECT product_id, quantity, unit_price_cents FROM order_lines WHERE order_id = $1 ORDER BY line_no")
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

/// Stores a new, pending order and its lines.
pub async fn insert(
    tx: &mut Tx,
    id: &OrderId,
    order: &PricedOrder,
    now: Timestamp,
) -> Result<(), Error> {
    sqlx::query("INSERT INTO orders (id, customer_id, status, total_cents, currency, cancel_reason, created_at_us, updated_at_us) VALUES ($1, $2, $3, $4, $5, NULL, $6, $6)")
        .bind(id.as_str())
        .bind(order.customer_id.as_str())
        .bind(OrderStatus::Pending.as_str())
        .bind(order.total.cents())
        .bind(order.total.currency().as_str())
        .bind(now.micros())
        .execute(tx.conn())
        .await
        .map_err(read("cannot insert the order"))?;
    for (line_no, line) in order.lines.iter().enumerate() {
        sqlx::query("INSERT INTO order_lines (order_id, line_no, product_id, quantity, unit_price_cents) VALUES ($1, $2, $3, $4, $5)")
            .bind(id.as_str())
            .bind(line_no as i64)
            .bind(line.product_id.as_str())
            .bind(line.quantity.units())
            .bind(line.unit_price.cents())
            .execute(tx.conn())
            .await
            .map_err(read("cannot insert an order line"))?;
    }
    Ok(())
}

/// A settled order's facts its announcement needs.
#[derive(Debug)]
pub struct Settled {
    pub customer_id: String,
    pub total_cents: i64,
    pub currency: String,
}

/// Moves order `id` from PENDING to the status `outcome` gives it ([`OrderStatus::settle`]:
/// only a pending order settles). `None` when the order was not pending (or unknown).
/// The condition is in the statement, so two racing outcomes settle it once.
pub async fn settle(
    tx: &mut Tx,
    id: &str,
    outcome: &Outcome,
    now: Timestamp,
) -> Result<Option<Settled>, Error> {
    let Some(to) = OrderStatus::Pending.settle(outcome) else {
        return Ok(None);
    };
    let row = sqlx::query("UPDATE orders SET status = $1, cancel_reason = $2, updated_at_us = $3 WHERE id = $4 AND status = $5 RETURNING customer_id, total_cents, currency")
        .bind(to.as_str())
        .bind(outcome.cancel_reason().map(CancelReason::as_str))
        .bind(now.micros())
        .bind(id)
        .bind(OrderStatus::Pending.as_str())
        .fetch_optional(tx.conn())
        .await
        .map_err(read("cannot settle the order"))?;
    row.map(|row| {
        Ok(Settled {
            customer_id: row.try_get("customer_id")?,
            total_cents: row.try_get("total_cents")?,
            currency: row.try_get("currency")?,
        })
    })
    .transpose()
    .map_err(read("order row"))
}

/// Up to `limit` ids of orders still pending that were placed before `before`, oldest
/// first.
pub async fn overdue(
    conn: &mut AnyConnection,
    before: Timestamp,
    limit: i64,
) -> Result<Vec<String>, Error> {
    sqlx::query_scalar(
        "SELECT id FROM orders WHERE status = $1 AND created_at_us < $2 ORDER BY created_at_us LIMIT $3",
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
    let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM orders WHERE customer_id = $1 AND (created_at_us < $2 OR (created_at_us = $2 AND id < $3)) ORDER BY created_at_us DESC, id DESC LIMIT $4")
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
