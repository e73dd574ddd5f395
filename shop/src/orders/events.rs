//! What orders publishes (`OrderPlaced`, `OrderConfirmed`, `OrderCancelled` on `orders`)
//! and consumes: the catalog's products (its price copy), inventory's rejections and
//! payments' outcomes.

use eddy_core::{async_trait, Envelope, HandlerError};
use eddy_sql::{Tx, TxHandler};

use super::domain::{CancelReason, Outcome, PricedOrder};
use super::store;
use crate::contracts::values::{OrderId, Timestamp};
use crate::contracts::{
    OrderCancelled, OrderConfirmed, OrderLine, OrderPlaced, PaymentCaptured, PaymentDeclined,
    ProductUpserted, StockRejected, CATALOG_TOPIC, INVENTORY_TOPIC, ORDERS_TOPIC, PAYMENTS_TOPIC,
};
use crate::service::{ServiceContext, ServiceDb, Subscription};

/// The announcement of a placed order.
pub fn placed(id: &OrderId, order: &PricedOrder) -> OrderPlaced {
    OrderPlaced {
        order_id: id.as_str().to_owned(),
        customer_id: order.customer_id.as_str().to_owned(),
        lines: order
            .lines
            .iter()
            .map(|l| OrderLine {
                product_id: l.product_id.as_str().to_owned(),
                quantity: l.quantity.units(),
                unit_price_cents: l.unit_price.cents(),
            })
            .collect(),
        total_cents: order.total.cents(),
        currency: order.total.currency().as_str().to_owned(),
    }
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
        let at = Timestamp::from_micros(envelope.occurred_at_micros());
        store::upsert_catalog_copy(
            tx,
            &event.product_id,
            &event.name,
            event.price_cents,
            &event.currency,
            at,
        )
        .await?;
        Ok(())
    }
}

/// Confirms or cancels a pending order, announcing the outcome. A settled order stays
/// as it is (a late or repeated outcome changes nothing).
#[derive(Debug, Clone)]
pub struct Settle {
    pub service: ServiceDb,
}

impl Settle {
    async fn settle(
        &self,
        tx: &mut Tx,
        order_id: &str,
        outcome: Outcome,
        cause: &Envelope,
    ) -> Result<(), HandlerError> {
        let Some(settled) = store::settle(tx, order_id, &outcome, self.service.now()).await? else {
            return Ok(());
        };
        let order_id = order_id.to_owned();
        match outcome {
            Outcome::Confirmed => {
                let event = OrderConfirmed {
                    order_id,
                    customer_id: settled.customer_id,
                    total_cents: settled.total_cents,
                    currency: settled.currency,
                };
                self.service
                    .emit(tx, ORDERS_TOPIC, &event, Some(cause))
                    .await?;
            }
            Outcome::Cancelled(reason) => {
                let event = OrderCancelled {
                    order_id,
                    customer_id: settled.customer_id,
                    reason: reason.as_str().to_owned(),
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
        // Events from before the field was added meant out of stock.
        let reason = event
            .reason
            .as_deref()
            .map_or(CancelReason::OutOfStock, CancelReason::parse);
        self.settle(tx, &event.order_id, Outcome::Cancelled(reason), envelope)
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
        self.settle(tx, &event.order_id, Outcome::Confirmed, envelope)
            .await
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
        let reason = CancelReason::parse(&event.reason);
        self.settle(tx, &event.order_id, Outcome::Cancelled(reason), envelope)
            .await
    }
}

pub fn subscriptions(ctx: &ServiceContext<'_>) -> anyhow::Result<Vec<Subscription>> {
    let settle = || Settle {
        service: ctx.service.clone(),
    };
    Ok(vec![
        Subscription {
            topic: CATALOG_TOPIC,
            router: eddy_runtime::Router::new()
                .route::<ProductUpserted, _>(ctx.idempotent(OnProductUpserted)?),
        },
        Subscription {
            topic: INVENTORY_TOPIC,
            router: eddy_runtime::Router::new()
                .route::<StockRejected, _>(ctx.idempotent(settle())?),
        },
        Subscription {
            topic: PAYMENTS_TOPIC,
            router: eddy_runtime::Router::new()
                .route::<PaymentCaptured, _>(ctx.idempotent(settle())?)
                .route::<PaymentDeclined, _>(ctx.idempotent(settle())?),
        },
    ])
}
