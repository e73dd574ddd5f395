//! What orders publishes (`OrderPlaced`, `OrderConfirmed`, `OrderCancelled` on `orders`)
//! and consumes: the catalog's products (its price copy), inventory's reservations and
//! rejections and payments' outcomes (recorded in the order's stream).

use std::sync::Arc;

use eddy_core::{async_trait, Envelope, HandlerError};
use eddy_sql::{Tx, TxHandler};

use super::domain::{CancelReason, Outcome, PricedOrder};
use super::ledger::Ledger;
use super::store;
use crate::contracts::values::{OrderId, Timestamp};
use crate::contracts::{
    OrderLine, OrderPlaced, PaymentCaptured, PaymentDeclined, ProductUpserted, StockRejected,
    StockReserved, CATALOG_TOPIC, INVENTORY_TOPIC, PAYMENTS_TOPIC,
};
use crate::service::{ServiceContext, Subscription, Sweep};

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

/// Records in an order's stream what inventory and payments announced about it and
/// confirms or cancels it when pending, announcing the outcome. A settled order stays as
/// it is (a late or repeated outcome changes nothing but its history).
#[derive(Debug, Clone)]
pub struct Settle {
    pub ledger: Ledger,
    /// The order's cached view, dropped once a settlement commits.
    pub orders: Option<eddy_cache::Cache<super::http::OrderView>>,
}

impl Settle {
    async fn settle(
        &self,
        tx: &mut Tx,
        order_id: &str,
        outcome: Option<Outcome>,
        cause: Option<&Envelope>,
    ) -> Result<(), HandlerError> {
        if self.ledger.settle(tx, order_id, outcome, cause).await? {
            crate::platform::cache::invalidate_on_commit(
                &self.orders,
                tx,
                order_id,
                eddy_cache::Source::Write,
            );
        }
        Ok(())
    }
}

#[async_trait]
impl TxHandler<StockReserved> for Settle {
    async fn handle(
        &self,
        event: StockReserved,
        envelope: &Envelope,
        tx: &mut Tx,
    ) -> Result<(), HandlerError> {
        // Only history: payments decides what follows.
        self.settle(tx, &event.order_id, None, Some(envelope)).await
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
        // Version 1 events without a reason are upcast to `out_of_stock`.
        let reason = CancelReason::parse(&event.reason);
        self.settle(
            tx,
            &event.order_id,
            Some(Outcome::Cancelled(reason)),
            Some(envelope),
        )
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
        self.settle(
            tx,
            &event.order_id,
            Some(Outcome::Confirmed),
            Some(envelope),
        )
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
        self.settle(
            tx,
            &event.order_id,
            Some(Outcome::Cancelled(reason)),
            Some(envelope),
        )
        .await
    }
}

/// Cancels orders still pending `orders.pending_timeout_secs` after they were placed
/// (`timed_out`), each in its own transaction with its `OrderCancelled`: inventory then
/// releases the stock and payments refunds or voids the charge. Returns how many.
pub async fn time_out_overdue(
    settle: &Settle,
    timeout: std::time::Duration,
    limit: i64,
) -> Result<u64, eddy_core::Error> {
    let service = &settle.ledger.service;
    let age = i64::try_from(timeout.as_micros()).unwrap_or(i64::MAX);
    let before = Timestamp::from_micros(service.now().micros().saturating_sub(age));
    let overdue = {
        let mut conn = service
            .db
            .pool()
            .acquire()
            .await
            .map_err(|e| eddy_sql::classify("cannot look for overdue orders", e))?;
        store::overdue(&mut conn, before, limit).await?
    };
    let mut cancelled = 0;
    for order_id in overdue {
        let mut tx = service.db.begin().await?;
        settle
            .settle(
                &mut tx,
                &order_id,
                Some(Outcome::Cancelled(CancelReason::TimedOut)),
                None,
            )
            .await
            .map_err(|e| {
                eddy_core::Error::transient(format!("cannot time out order {order_id}: {e}"))
            })?;
        tx.commit().await?;
        tracing::warn!(%order_id, "order still pending after its timeout; cancelled (timed_out)");
        cancelled += 1;
    }
    Ok(cancelled)
}

/// Orders' sweep: [`time_out_overdue`] every `maintenance.saga_sweep_interval_secs`.
pub fn sweeps(ctx: &ServiceContext<'_>, settle: Settle) -> Vec<Sweep> {
    let timeout = std::time::Duration::from_secs(ctx.config.orders.pending_timeout_secs);
    let limit = i64::try_from(ctx.config.maintenance.saga_sweep_len_max).unwrap_or(i64::MAX);
    vec![Sweep {
        name: "orders timeout",
        interval: std::time::Duration::from_secs(ctx.config.maintenance.saga_sweep_interval_secs),
        run: Arc::new(move || {
            let settle = settle.clone();
            Box::pin(async move { time_out_overdue(&settle, timeout, limit).await })
        }),
    }]
}

pub fn subscriptions(
    ctx: &ServiceContext<'_>,
    settle: &Settle,
) -> anyhow::Result<Vec<Subscription>> {
    let settle = || settle.clone();
    Ok(vec![
        Subscription {
            topic: CATALOG_TOPIC,
            router: eddy_runtime::Router::new()
                .route::<ProductUpserted, _>(ctx.idempotent(OnProductUpserted)?),
        },
        Subscription {
            topic: INVENTORY_TOPIC,
            router: eddy_runtime::Router::new()
                .route::<StockReserved, _>(ctx.idempotent(settle())?)
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
