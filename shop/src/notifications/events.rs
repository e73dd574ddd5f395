//! Notifications consume `OrderConfirmed` and `OrderCancelled` from `orders`; a failed
//! send is retried a bounded number of times, then parked in `orders.dlq`.

use eddy_core::{async_trait, Envelope, HandlerError};
use eddy_sql::{Tx, TxHandler};

use super::domain::{recipient, MailServer, NotificationKind};
use super::store;
use crate::contracts::{OrderCancelled, OrderConfirmed, ORDERS_TOPIC};
use crate::service::{ServiceContext, ServiceDb, Subscription};

#[derive(Debug, Clone)]
pub struct Notify {
    pub service: ServiceDb,
    pub mail: MailServer,
}

impl Notify {
    async fn send(
        &self,
        tx: &mut Tx,
        order_id: &str,
        customer_id: &str,
        kind: NotificationKind,
    ) -> Result<(), HandlerError> {
        if self.mail.fails() {
            return Err(HandlerError::transient(
                "mail server unavailable (simulated)",
            ));
        }
        store::record(
            tx,
            order_id,
            kind,
            &recipient(customer_id),
            self.service.now(),
        )
        .await?;
        tracing::debug!(order_id, kind = kind.as_str(), "notification sent");
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
        self.send(
            tx,
            &event.order_id,
            &event.customer_id,
            NotificationKind::OrderConfirmed,
        )
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
        self.send(
            tx,
            &event.order_id,
            &event.customer_id,
            NotificationKind::OrderCancelled,
        )
        .await
    }
}

pub fn subscriptions(ctx: &ServiceContext<'_>) -> anyhow::Result<Vec<Subscription>> {
    let notify = Notify {
        service: ctx.service.clone(),
        mail: MailServer::new(ctx.config.notifications.failure_rate, rand::random()),
    };
    Ok(vec![Subscription {
        topic: ORDERS_TOPIC,
        router: eddy_runtime::Router::new()
            .route::<OrderConfirmed, _>(ctx.idempotent(notify.clone())?)
            .route::<OrderCancelled, _>(ctx.idempotent(notify)?),
    }])
}
