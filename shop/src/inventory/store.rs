//! Inventory's tables and SQL: stock per product and reservations per order.

use eddy_core::Error;
use eddy_sql::{classify, Migration, Tx};
use sqlx::Row;

use super::domain::ReservationState;

macro_rules! inventory_schema {
    () => {
        concat!(
            "CREATE TABLE IF NOT EXISTS stock (product_id TEXT PRIMARY KEY, available BIGINT NOT NULL, version BIGINT NOT NULL);",
            "CREATE TABLE IF NOT EXISTS reservations (order_id TEXT NOT NULL, product_id TEXT NOT NULL, quantity BIGINT NOT NULL, state TEXT NOT NULL, PRIMARY KEY (order_id, product_id))"
        )
    };
}

pub const MIGRATIONS: &[Migration] = &[Migration {
    name: "inventory_0001_tables",
    sqlite: inventory_schema!(),
    postgres: inventory_schema!(),
}];

/// A product's stock after a change: the figure and its version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockLevel {
    pub available: i64,
    pub version: i64,
}

/// Whether inventory has heard of `product_id`.
pub async fn knows(tx: &mut Tx, product_id: &str) -> Result<bool, Error> {
    let version: Option<i64> =
        sqlx::query_scalar("SELECT version FROM stock WHERE product_id = $1")
            .bind(product_id)
            .fetch_optional(tx.conn())
            .await
            .map_err(|e| classify("cannot read stock", e))?;
    Ok(version.is_some())
}

/// Starts tracking `product_id` with nothing available (no-op when tracked).
pub async fn track(tx: &mut Tx, product_id: &str) -> Result<(), Error> {
    sqlx::query("INSERT INTO stock (product_id, available, version) VALUES ($1, 0, 0) ON CONFLICT DO NOTHING")
        .bind(product_id)
        .execute(tx.conn())
        .await
        .map_err(|e| classify("cannot create stock", e))?;
    Ok(())
}

fn level(row: &sqlx::any::AnyRow) -> Result<StockLevel, Error> {
    let column = |e| classify("stock row", e);
    Ok(StockLevel {
        available: row.try_get("available").map_err(column)?,
        version: row.try_get("version").map_err(column)?,
    })
}

/// Sets the available figure an operator gave.
pub async fn set(tx: &mut Tx, product_id: &str, available: i64) -> Result<StockLevel, Error> {
    let row = sqlx::query("UPDATE stock SET available = $1, version = version + 1 WHERE product_id = $2 RETURNING available, version")
        .bind(available)
        .bind(product_id)
        .fetch_one(tx.conn())
        .await
        .map_err(|e| classify("cannot set stock", e))?;
    level(&row)
}

/// Adds an operator's `delta` to the available stock, stopping at 0 (an operator
/// taking away more than is left leaves none).
pub async fn add_clamped(tx: &mut Tx, product_id: &str, delta: i64) -> Result<StockLevel, Error> {
    let row = sqlx::query("UPDATE stock SET available = CASE WHEN available + $1 < 0 THEN 0 ELSE available + $1 END, version = version + 1 WHERE product_id = $2 RETURNING available, version")
        .bind(delta)
        .bind(product_id)
        .fetch_one(tx.conn())
        .await
        .map_err(|e| classify("cannot change stock", e))?;
    level(&row)
}

/// Adds `delta` to the available stock if the result stays ≥ 0 (one statement, so two
/// orders racing for the last unit cannot both take it); `None` when stock is short.
pub async fn adjust(
    tx: &mut Tx,
    product_id: &str,
    delta: i64,
) -> Result<Option<StockLevel>, Error> {
    let row = sqlx::query("UPDATE stock SET available = available + $1, version = version + 1 WHERE product_id = $2 AND available + $1 >= 0 RETURNING available, version")
        .bind(delta)
        .bind(product_id)
        .fetch_optional(tx.conn())
        .await
        .map_err(|e| classify("cannot adjust stock", e))?;
    row.as_ref().map(level).transpose()
}

/// Records that `order_id` holds `quantity` of `product_id`.
pub async fn reserve(
    tx: &mut Tx,
    order_id: &str,
    product_id: &str,
    quantity: i64,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO reservations (order_id, product_id, quantity, state) VALUES ($1, $2, $3, $4)",
    )
    .bind(order_id)
    .bind(product_id)
    .bind(quantity)
    .bind(ReservationState::Reserved.as_str())
    .execute(tx.conn())
    .await
    .map_err(|e| classify("cannot reserve", e))?;
    Ok(())
}

/// Moves every reservation of `order_id` from reserved to `to`; returns what moved
/// (nothing the second time).
pub async fn finish_reservations(
    tx: &mut Tx,
    order_id: &str,
    to: ReservationState,
) -> Result<Vec<(String, i64)>, Error> {
    let rows = sqlx::query("UPDATE reservations SET state = $1 WHERE order_id = $2 AND state = $3 RETURNING product_id, quantity")
        .bind(to.as_str())
        .bind(order_id)
        .bind(ReservationState::Reserved.as_str())
        .fetch_all(tx.conn())
        .await
        .map_err(|e| classify("cannot update reservations", e))?;
    rows.iter()
        .map(|r| Ok((r.try_get("product_id")?, r.try_get("quantity")?)))
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(|e| classify("reservation row", e))
}

/// What came first for an order: its placement or its cancellation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum First {
    Placed,
    Cancelled,
}

impl First {
    const fn state(self) -> &'static str {
        match self {
            First::Placed => "placed",
            First::Cancelled => "cancelled",
        }
    }
}

/// Claims `order_id` for `what` (a row of no product and no quantity, unique per
/// order); false when the other came first. Placement and cancellation both claim, so
/// whichever runs second sees it — also when the two run at once (the second waits on
/// the unique key) or arrive out of order (a redriven placement after a timeout).
pub async fn claim(tx: &mut Tx, order_id: &str, what: First) -> Result<bool, Error> {
    let claimed = sqlx::query("INSERT INTO reservations (order_id, product_id, quantity, state) VALUES ($1, '', 0, $2) ON CONFLICT DO NOTHING")
        .bind(order_id)
        .bind(what.state())
        .execute(tx.conn())
        .await
        .map_err(|e| classify("cannot claim the order", e))?;
    Ok(claimed.rows_affected() == 1)
}
