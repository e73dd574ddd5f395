//! Notifications: the side effects of a settled order (a simulated e-mail). A failed
//! send is retried a bounded number of times, then parked in the dead-letter topic
//! (`orders.dlq`) for an operator to replay.

use eddy_core::{async_trait, Envelope, HandlerError};
use eddy_sql::{classify, Migration, Tx, TxHandler};
use rand::Rng;

use crate::contracts::{OrderCancelled, OrderConfirmed};
use crate::service::ServiceDb;

pub const MIGRATIONS: &[Migration] = &[Migration {
    name: "notifications_0001_sent",
    sqlite: SENT,
    postgres: SENT,
}];

const SENT: &str = "CREATE TABLE IF NOT EXISTS notifications (id TEXT PRIMARY KEY, order_id TEXT NOT NULL, kind TEXT NOT NULL, recipient TEXT NOT NULL, sent_at_us BIGINT NOT NULL)";

#[derive(Debug, Clone)]
pub struct Notify {
    pub service: ServiceDb,
    /// Share of sends that fail (simulated mail server trouble).
    pub failure_rate: f64,
}

impl Notify {
    async fn send(
        &self,
        tx: &mut Tx,
        order_id: &str,
        customer_id: &str,
        kind: &str,
    ) -> Result<(), HandlerError> {
        if self.failure_rate > 0.0 && rand::thread_rng().gen_bool(self.failure_rate) {
            return Err(HandlerError::transient(
                "mail server unavailable (simulated)",
            ));
        }
        sqlx::query("INSERT INTO notifications (id, order_id, kind, recipient, sent_at_us) VALUES ($1, $2, $3, $4, $5)")
            .bind(uuid::Uuid::now_v7().to_string())
            .bind(order_id)
            .bind(kind)
            .bind(format!("{customer_id}@customers.example"))
            .bind(self.service.now_us())
            .execute(tx.conn())
            .await
            .map_err(|e| classify("cannot record the notification", e))?;
        tracing::debug!(order_id, kind, "notification sent");
        Ok(())
    }
}

#[async_trait]
impl TxHandler<OrderConfirmed> for Notify {
    async fn handle(
        &self,
        event: OrderConfirmed,
        _: &Envelope,
        tx: &mut Tx,
    ) -> Result<(), HandlerError> {
        self.send(tx, &event.order_id, &event.customer_id, "order_confirmed")
            .await
    }
}

#[async_trait]
impl TxHandler<OrderCancelled> for Notify {
    async fn handle(
        &self,
        event: OrderCancelled,
        _: &Envelope,
        tx: &mut Tx,
    ) -> Result<(), HandlerError> {
        self.send(tx, &event.order_id, &event.customer_id, "order_cancelled")
            .await
    }
}
