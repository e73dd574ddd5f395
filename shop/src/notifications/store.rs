//! Notifications' table: what was sent.

use eddy_core::Error;
use eddy_sql::{classify, Migration, Tx};

use super::domain::NotificationKind;
use crate::contracts::values::Timestamp;

pub const MIGRATIONS: &[Migration] = &[Migration {
    name: "notifications_0001_sent",
    sqlite: SENT,
    postgres: SENT,
}];

const SENT: &str = "CREATE TABLE IF NOT EXISTS notifications (id TEXT PRIMARY KEY, order_id TEXT NOT NULL, kind TEXT NOT NULL, recipient TEXT NOT NULL, sent_at_us BIGINT NOT NULL)";

/// Records a sent notification.
pub async fn record(
    tx: &mut Tx,
    order_id: &str,
    kind: NotificationKind,
    recipient: &str,
    at: Timestamp,
) -> Result<(), Error> {
    sqlx::query("INSERT INTO notifications (id, order_id, kind, recipient, sent_at_us) VALUES ($1, $2, $3, $4, $5)")
        .bind(uuid::Uuid::now_v7().to_string())
        .bind(order_id)
        .bind(kind.as_str())
        .bind(recipient)
        .bind(at.micros())
        .execute(tx.conn())
        .await
        .map_err(|e| classify("cannot record the notification", e))?;
    Ok(())
}
