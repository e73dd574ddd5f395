//! What inventory consumes (products from `catalog`, orders from `orders`) and publishes
//! on `inventory`: `StockReserved` / `StockRejected` per order, `StockChanged` for every
//! change of available stock.

use std::time::Duration;

use eddy_core::{async_trait, Envelope, HandlerError};
use eddy_sql::{Tx, TxHandler};

use super::domain::{self, Reservation, ReservationState, UnknownProducts};
use super::store::{self, First, StockLevel};
use crate::contracts::{
    OrderCancelled, OrderConfirmed, OrderPlaced, ProductUpserted, StockChanged, StockRejected,
    StockReserved, CATALOG_TOPIC, INVENTORY_TOPIC, ORDERS_TOPIC,
};
use crate::service::{ServiceContext, ServiceDb, Subscription};

/// The inventory's handlers share its database.
#[derive(Debug, Clone)]
pub struct Inventory {
    pub service: ServiceDb,
    /// Orders for products inventory has not heard of yet, and since when.
    pub unknown: UnknownProducts,
}

impl Inventory {
    async fn announce(
        &self,
        tx: &mut Tx,
        product_id: &str,
        level: StockLevel,
        cause: &Envelope,
    ) -> Result<(), HandlerError> {
        let event = StockChanged {
            product_id: product_id.to_owned(),
            available: level.available,
            version: level.version,
        };
        self.service
            .emit(tx, INVENTORY_TOPIC, &event, Some(cause))
            .await?;
        Ok(())
    }

    /// Adds `delta` to a product's stock if it stays ≥ 0, announcing the new figure;
    /// false (nothing changed) when stock is short.
    async fn adjust(
        &self,
        tx: &mut Tx,
        product_id: &str,
        delta: i64,
        cause: &Envelope,
    ) -> Result<bool, HandlerError> {
        let Some(level) = store::adjust(tx, product_id, delta).await? else {
            return Ok(false);
        };
        self.announce(tx, product_id, level, cause).await?;
        Ok(true)
    }

    async fn reject(
        &self,
        tx: &mut Tx,
        order_id: String,
        product_id: String,
        reason: &str,
        cause: &Envelope,
    ) -> Result<(), HandlerError> {
        let rejected = StockRejected {
            order_id,
            product_id,
            reason: reason.to_owned(),
        };
        self.service
            .emit(tx, INVENTORY_TOPIC, &rejected, Some(cause))
            .await?;
        Ok(())
    }

    /// The first product of the order inventory has not heard of, if any.
    async fn first_unknown<'a>(
        &self,
        tx: &mut Tx,
        products: impl Iterator<Item = &'a String>,
    ) -> Result<Option<String>, HandlerError> {
        for product_id in products {
            if !store::knows(tx, product_id).await? {
                return Ok(Some(product_id.clone()));
            }
        }
        Ok(None)
    }

    /// Takes every wanted quantity or, if one is short, gives back what it took.
    async fn take_all(
        &self,
        tx: &mut Tx,
        wanted: &std::collections::BTreeMap<String, i64>,
        cause: &Envelope,
    ) -> Result<Reservation, HandlerError> {
        let mut taken: Vec<(&String, i64)> = Vec::new();
        for (product_id, quantity) in wanted {
            if self.adjust(tx, product_id, -quantity, cause).await? {
                taken.push((product_id, *quantity));
                continue;
            }
            // All or nothing: the announcements of the interim figures are superseded
            // by later versions.
            for (taken_id, quantity) in taken {
                self.adjust(tx, taken_id, quantity, cause).await?;
            }
            return Ok(Reservation::OutOfStock {
                product_id: product_id.clone(),
            });
        }
        Ok(Reservation::Reserved)
    }
}

#[async_trait]
impl TxHandler<ProductUpserted> for Inventory {
    async fn handle(
        &self,
        event: ProductUpserted,
        envelope: &Envelope,
        tx: &mut Tx,
    ) -> Result<(), HandlerError> {
        store::track(tx, &event.product_id).await?;
        let level = match (event.stock_delta, event.stock) {
            (Some(delta), _) => Some(store::add_clamped(tx, &event.product_id, delta).await?),
            // An event from before `stock_delta`: the figure is all there is.
            (None, Some(available)) => Some(store::set(tx, &event.product_id, available).await?),
            (None, None) => None,
        };
        if let Some(level) = level {
            self.announce(tx, &event.product_id, level, envelope)
                .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl TxHandler<OrderPlaced> for Inventory {
    async fn handle(
        &self,
        event: OrderPlaced,
        envelope: &Envelope,
        tx: &mut Tx,
    ) -> Result<(), HandlerError> {
        if !store::claim(tx, &event.order_id, First::Placed).await? {
            // Handled before, or cancelled before it got here (its OrderPlaced was
            // dead-lettered and redriven after the order timed out): nothing to take.
            tracing::info!(order_id = %event.order_id, "order already placed or cancelled here; nothing to reserve");
            return Ok(());
        }
        let wanted = domain::wanted(
            event
                .lines
                .iter()
                .map(|l| (l.product_id.as_str(), l.quantity)),
        );
        if let Some(product_id) = self.first_unknown(tx, wanted.keys()).await? {
            if !self.unknown.waited_out(&event.order_id) {
                // Orders knew the product, so its ProductUpserted is on its way here too.
                return Err(HandlerError::unavailable(format!(
                    "product {product_id} not yet known to inventory"
                )));
            }
            tracing::warn!(order_id = %event.order_id, %product_id, "product never heard of; rejecting the order");
            // The clock stays (pruned later): should this transaction fail, the retry
            // rejects at once instead of waiting again.
            return self
                .reject(tx, event.order_id, product_id, "unknown_product", envelope)
                .await;
        }
        self.unknown.settled(&event.order_id);
        if let Reservation::OutOfStock { product_id } = self.take_all(tx, &wanted, envelope).await?
        {
            return self
                .reject(tx, event.order_id, product_id, "out_of_stock", envelope)
                .await;
        }
        for (product_id, quantity) in &wanted {
            store::reserve(tx, &event.order_id, product_id, *quantity).await?;
        }
        let reserved = StockReserved {
            order_id: event.order_id,
            customer_id: event.customer_id,
            total_cents: event.total_cents,
            currency: event.currency,
        };
        self.service
            .emit(tx, INVENTORY_TOPIC, &reserved, Some(envelope))
            .await?;
        Ok(())
    }
}

#[async_trait]
impl TxHandler<OrderCancelled> for Inventory {
    async fn handle(
        &self,
        event: OrderCancelled,
        envelope: &Envelope,
        tx: &mut Tx,
    ) -> Result<(), HandlerError> {
        // Claim first: a placement running at the same time then waits for this, or
        // this for it (and its reservations are seen below) — never both seeing
        // nothing; a placement arriving later takes nothing. Released either way, for
        // reservations made before claims existed.
        store::claim(tx, &event.order_id, First::Cancelled).await?;
        let released =
            store::finish_reservations(tx, &event.order_id, ReservationState::Released).await?;
        for (product_id, quantity) in released {
            self.adjust(tx, &product_id, quantity, envelope).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl TxHandler<OrderConfirmed> for Inventory {
    async fn handle(
        &self,
        event: OrderConfirmed,
        _: &Envelope,
        tx: &mut Tx,
    ) -> Result<(), HandlerError> {
        store::finish_reservations(tx, &event.order_id, ReservationState::Consumed).await?;
        Ok(())
    }
}

pub fn subscriptions(ctx: &ServiceContext<'_>) -> anyhow::Result<Vec<Subscription>> {
    let inventory = Inventory {
        service: ctx.service.clone(),
        unknown: UnknownProducts::new(Duration::from_millis(
            ctx.config.inventory.unknown_product_wait_ms,
        )),
    };
    Ok(vec![
        Subscription {
            topic: CATALOG_TOPIC,
            router: eddy_runtime::Router::new()
                .route::<ProductUpserted, _>(ctx.idempotent(inventory.clone())?),
        },
        Subscription {
            topic: ORDERS_TOPIC,
            router: eddy_runtime::Router::new()
                .route::<OrderPlaced, _>(ctx.idempotent(inventory.clone())?)
                .route::<OrderCancelled, _>(ctx.idempotent(inventory.clone())?)
                .route::<OrderConfirmed, _>(ctx.idempotent(inventory)?),
        },
    ])
}
