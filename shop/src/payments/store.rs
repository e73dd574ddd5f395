//! Payments' table and SQL: one charge row per order.

use eddy_core::Error;
use eddy_sql::{classify, Migration, Tx};
use sqlx::any::AnyRow;
use sqlx::Row;

use super::domain::{ChargeStatus, Settlement};
use crate::contracts::values::Timestamp;

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        name: "payments_0001_charges",
        sqlite: CHARGES,
        postgres: CHARGES,
    },
    // Whose charge it is, so a customer reads only their own. Charges recorded before
    // have none: only an operator sees those.
    Migration {
        name: "payments_0002_charge_customer",
        sqlite: CHARGE_CUSTOMER,
        postgres: CHARGE_CUSTOMER,
    },
];

const CHARGE_CUSTOMER: &str = "ALTER TABLE charges ADD COLUMN customer_id TEXT";

const CHARGES: &str = "CREATE TABLE IF NOT EXISTS charges (id TEXT PRIMARY KEY, order_id TEXT NOT NULL UNIQUE, amount_cents BIGINT NOT NULL, currency TEXT NOT NULL, status TEXT NOT NULL, provider_charge_id TEXT, reason TEXT, created_at_us BIGINT NOT NULL, updated_at_us BIGINT NOT NULL)";

/// A charge as payments holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    pub id: String,
    pub order_id: String,
    /// Absent on charges recorded before payments kept it.
    pub customer_id: Option<String>,
    pub amount_cents: i64,
    pub currency: String,
    pub status: ChargeStatus,
    pub provider_charge_id: Option<String>,
    pub reason: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

fn charge(row: &AnyRow) -> Result<Charge, Error> {
    let column = |e| classify("charge row", e);
    let status: String = row.try_get("status").map_err(column)?;
    Ok(Charge {
        id: row.try_get("id").map_err(column)?,
        order_id: row.try_get("order_id").map_err(column)?,
        customer_id: row.try_get("customer_id").map_err(column)?,
        amount_cents: row.try_get("amount_cents").map_err(column)?,
        currency: row.try_get("currency").map_err(column)?,
        status: ChargeStatus::parse(&status)
            .map_err(|e| Error::permanent(format!("stored charge is invalid: {e}")))?,
        provider_charge_id: row.try_get("provider_charge_id").map_err(column)?,
        reason: row.try_get("reason").map_err(column)?,
        created_at: Timestamp::from_micros(row.try_get("created_at_us").map_err(column)?),
        updated_at: Timestamp::from_micros(row.try_get("updated_at_us").map_err(column)?),
    })
}

/// The columns [`charge`] reads, in statements written once at compile time.
macro_rules! select_charges {
    ($rest:literal) => {
        concat!(
            "SELECT id, order_id, customer_id, amount_cents, currency, status, provider_charge_id, reason, created_at_us, updated_at_us FROM charges ",
            $rest
        )
    };
}

/// Records a pending charge for `order_id` unless it has one, and returns the order's
/// charge (new or earlier).
pub async fn record(
    tx: &mut Tx,
    order_id: &str,
    customer_id: &str,
    amount_cents: i64,
    currency: &str,
    now: Timestamp,
) -> Result<Charge, Error> {
    sqlx::query("INSERT INTO charges (id, order_id, customer_id, amount_cents, currency, status, created_at_us, updated_at_us) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT (order_id) DO NOTHING")
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(order_id)
        .bind(customer_id)
        .bind(amount_cents)
        .bind(currency)
        .bind(ChargeStatus::Pending.as_str())
        .bind(now.micros())
        .execute(tx.conn())
        .await
        .map_err(|e| classify("cannot record the charge", e))?;
    let row = sqlx::query(select_charges!("WHERE order_id = $1"))
        .bind(order_id)
        .fetch_one(tx.conn())
        .await
        .map_err(|e| classify("cannot read the charge", e))?;
    charge(&row)
}

/// Settles the charge of `order_id` from pending; false when it was settled before.
pub async fn settle(
    tx: &mut Tx,
    order_id: &str,
    settlement: &Settlement<'_>,
    now: Timestamp,
) -> Result<bool, Error> {
    let settled = sqlx::query("UPDATE charges SET status = $1, provider_charge_id = $2, reason = $3, updated_at_us = $4 WHERE order_id = $5 AND status = $6")
        .bind(settlement.status.as_str())
        .bind(settlement.provider_id)
        .bind(settlement.declined.map(|r| r.as_str()))
        .bind(now.micros())
        .bind(order_id)
        .bind(ChargeStatus::Pending.as_str())
        .execute(tx.conn())
        .await
        .map_err(|e| classify("cannot settle the charge", e))?;
    Ok(settled.rows_affected() == 1)
}

/// The charges of `order_id`, oldest first (a voided one is the record that it never
/// will be charged, not a charge: left out).
pub async fn of_order(pool: &sqlx::AnyPool, order_id: &str) -> Result<Vec<Charge>, Error> {
    let rows = sqlx::query(select_charges!(
        "WHERE order_id = $1 AND status <> $2 ORDER BY created_at_us"
    ))
    .bind(order_id)
    .bind(ChargeStatus::Voided.as_str())
    .fetch_all(pool)
    .await
    .map_err(|e| classify("cannot list charges", e))?;
    rows.iter().map(charge).collect()
}

/// The charge of `order_id`, if it has one.
pub async fn find(tx: &mut Tx, order_id: &str) -> Result<Option<Charge>, Error> {
    let row = sqlx::query(select_charges!("WHERE order_id = $1"))
        .bind(order_id)
        .fetch_optional(tx.conn())
        .await
        .map_err(|e| classify("cannot read the charge", e))?;
    row.as_ref().map(charge).transpose()
}

/// Up to `limit` charges still pending that were recorded before `before`, oldest
/// first: the reconciler's work.
pub async fn pending_before(
    pool: &sqlx::AnyPool,
    before: Timestamp,
    limit: i64,
) -> Result<Vec<Charge>, Error> {
    let rows = sqlx::query(select_charges!(
        "WHERE status = $1 AND created_at_us < $2 ORDER BY created_at_us LIMIT $3"
    ))
    .bind(ChargeStatus::Pending.as_str())
    .bind(before.micros())
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(|e| classify("cannot look for pending charges", e))?;
    rows.iter().map(charge).collect()
}

/// Records that `order_id` must never be charged (it was cancelled first); false when
/// it already has a charge.
pub async fn void(tx: &mut Tx, order_id: &str, now: Timestamp) -> Result<bool, Error> {
    let voided = sqlx::query("INSERT INTO charges (id, order_id, amount_cents, currency, status, reason, created_at_us, updated_at_us) VALUES ($1, $2, 0, '', $3, 'order_cancelled', $4, $4) ON CONFLICT (order_id) DO NOTHING")
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(order_id)
        .bind(ChargeStatus::Voided.as_str())
        .bind(now.micros())
        .execute(tx.conn())
        .await
        .map_err(|e| classify("cannot void the charge", e))?;
    Ok(voided.rows_affected() == 1)
}

/// Moves the charge of `order_id` from `from` to `to`; false when it was not in `from`.
pub async fn transition(
    tx: &mut Tx,
    order_id: &str,
    from: ChargeStatus,
    to: ChargeStatus,
    now: Timestamp,
) -> Result<bool, Error> {
    let moved = sqlx::query(
        "UPDATE charges SET status = $1, updated_at_us = $2 WHERE order_id = $3 AND status = $4",
    )
    .bind(to.as_str())
    .bind(now.micros())
    .bind(order_id)
    .bind(from.as_str())
    .execute(tx.conn())
    .await
    .map_err(|e| classify("cannot update the charge", e))?;
    Ok(moved.rows_affected() == 1)
}
