//! Inventory: reserves stock for placed orders (all lines or none), releases it when
//! an order is cancelled (compensation) and consumes it when an order is confirmed.
//! Announces every change of available stock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use eddy_core::{async_trait, Envelope, HandlerError};
use eddy_sql::{classify, Migration, Tx, TxHandler};
use sqlx::Row;

use crate::contracts::{
    OrderCancelled, OrderConfirmed, OrderPlaced, ProductUpserted, StockChanged, StockRejected,
    StockReserved, INVENTORY_TOPIC,
};
use crate::service::ServiceDb;

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

/// The inventory's handlers share its database.
#[derive(Debug, Clone)]
pub struct Inventory {
    pub service: ServiceDb,
    /// Orders for products inventory has not heard of yet, and since when.
    pub unknown: UnknownProducts,
}

/// Orders waiting for a product's `ProductUpserted`.
///
/// Orders and inventory learn of a product from the same catalog event, each through
/// its own consumer, so an order may reach inventory before the product does. Such an
/// order waits — retried as "unavailable", spending none of its attempts — for up to
/// `wait`, counted from when inventory first saw it; after that it is rejected as
/// `unknown_product` (its order is cancelled) rather than left pending for ever.
#[derive(Debug, Clone)]
pub struct UnknownProducts {
    wait: Duration,
    since: Arc<Mutex<HashMap<String, Instant>>>,
}

impl UnknownProducts {
    pub fn new(wait: Duration) -> Self {
        Self {
            wait,
            since: Arc::default(),
        }
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<String, Instant>> {
        self.since.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `order_id` has waited its time (starting its clock on the first call).
    fn waited_out(&self, order_id: &str) -> bool {
        let now = Instant::now();
        let mut since = self.entries();
        // Orders abandoned mid-wait (a shutdown) would linger: forget stale clocks.
        // The map holds at most the consumer's in-flight messages.
        since.retain(|_, at| now.duration_since(*at) <= self.wait * 2);
        let first = *since.entry(order_id.to_owned()).or_insert(now);
        now.duration_since(first) >= self.wait
    }

    fn settled(&self, order_id: &str) {
        self.entries().remove(order_id);
    }
}

impl Inventory {
    /// Adds `delta` to a product's available stock if the result stays ≥ 0; announces
    /// the new figure. Returns false (and changes nothing) when stock is short.
    async fn adjust(
        &self,
        tx: &mut Tx,
        product_id: &str,
        delta: i64,
        cause: &Envelope,
    ) -> Result<bool, HandlerError> {
        let row = sqlx::query("UPDATE stock SET available = available + $1, version = version + 1 WHERE product_id = $2 AND available + $1 >= 0 RETURNING available, version")
            .bind(delta)
            .bind(product_id)
            .fetch_optional(tx.conn())
            .await
            .map_err(|e| classify("cannot adjust stock", e))?;
        let Some(row) = row else {
            return Ok(false);
        };
        let event = StockChanged {
            product_id: product_id.to_owned(),
            available: row
                .try_get("available")
                .map_err(|e| classify("stock row", e))?,
            version: row
                .try_get("version")
                .map_err(|e| classify("stock row", e))?,
        };
        self.service
            .emit(tx, INVENTORY_TOPIC, &event, Some(cause))
            .await?;
        Ok(true)
    }

    /// Moves every reservation of `order_id` from `reserved` to `to`; returns them.
    async fn finish_reservations(
        &self,
        tx: &mut Tx,
        order_id: &str,
        to: &str,
    ) -> Result<Vec<(String, i64)>, HandlerError> {
        let rows = sqlx::query("UPDATE reservations SET state = $1 WHERE order_id = $2 AND state = 'reserved' RETURNING product_id, quantity")
            .bind(to)
            .bind(order_id)
            .fetch_all(tx.conn())
            .await
            .map_err(|e| classify("cannot update reservations", e))?;
        rows.iter()
            .map(|r| Ok((r.try_get("product_id")?, r.try_get("quantity")?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(|e| classify("reservation row", e).into())
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
        sqlx::query("INSERT INTO stock (product_id, available, version) VALUES ($1, 0, 0) ON CONFLICT DO NOTHING")
            .bind(&event.product_id)
            .execute(tx.conn())
            .await
            .map_err(|e| classify("cannot create stock", e))?;
        if let Some(available) = event.stock {
            let row = sqlx::query("UPDATE stock SET available = $1, version = version + 1 WHERE product_id = $2 RETURNING version")
                .bind(available)
                .bind(&event.product_id)
                .fetch_one(tx.conn())
                .await
                .map_err(|e| classify("cannot set stock", e))?;
            let change = StockChanged {
                product_id: event.product_id.clone(),
                available,
                version: row
                    .try_get("version")
                    .map_err(|e| classify("stock row", e))?,
            };
            self.service
                .emit(tx, INVENTORY_TOPIC, &change, Some(envelope))
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
        let wanted = event.quantities_by_product();
        for product_id in wanted.keys() {
            let known: Option<i64> =
                sqlx::query_scalar("SELECT version FROM stock WHERE product_id = $1")
                    .bind(product_id)
                    .fetch_optional(tx.conn())
                    .await
                    .map_err(|e| classify("cannot read stock", e))?;
            if known.is_some() {
                continue;
            }
            if !self.unknown.waited_out(&event.order_id) {
                // Orders knew the product, so its ProductUpserted is on its way here too.
                return Err(HandlerError::unavailable(format!(
                    "product {product_id} not yet known to inventory"
                )));
            }
            tracing::warn!(order_id = %event.order_id, %product_id, "product never heard of; rejecting the order");
            let rejected = StockRejected {
                order_id: event.order_id.clone(),
                product_id: product_id.clone(),
                reason: Some("unknown_product".to_owned()),
            };
            self.service
                .emit(tx, INVENTORY_TOPIC, &rejected, Some(envelope))
                .await?;
            // The clock stays (pruned later): should this transaction fail, the retry
            // rejects at once instead of waiting again.
            return Ok(());
        }
        self.unknown.settled(&event.order_id);
        let mut taken: Vec<(&String, i64)> = Vec::new();
        let mut short = None;
        for (product_id, quantity) in &wanted {
            if self.adjust(tx, product_id, -quantity, envelope).await? {
                taken.push((product_id, *quantity));
            } else {
                short = Some(product_id.clone());
                break;
            }
        }
        if let Some(product_id) = short {
            // All or nothing: give back what this order took. The announcements of the
            // interim figures are superseded by later versions.
            for (product_id, quantity) in taken {
                self.adjust(tx, product_id, quantity, envelope).await?;
            }
            let rejected = StockRejected {
                order_id: event.order_id,
                product_id,
                reason: Some("out_of_stock".to_owned()),
            };
            return Ok(self
                .service
                .emit(tx, INVENTORY_TOPIC, &rejected, Some(envelope))
                .await?);
        }
        for (product_id, quantity) in &wanted {
            sqlx::query("INSERT INTO reservations (order_id, product_id, quantity, state) VALUES ($1, $2, $3, 'reserved')")
                .bind(&event.order_id)
                .bind(product_id)
                .bind(quantity)
                .execute(tx.conn())
                .await
                .map_err(|e| classify("cannot reserve", e))?;
        }
        let reserved = StockReserved {
            order_id: event.order_id,
            customer_id: event.customer_id,
            total_cents: event.total_cents,
            currency: event.currency,
        };
        Ok(self
            .service
            .emit(tx, INVENTORY_TOPIC, &reserved, Some(envelope))
            .await?)
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
        for (product_id, quantity) in self
            .finish_reservations(tx, &event.order_id, "released")
            .await?
        {
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
        self.finish_reservations(tx, &event.order_id, "consumed")
            .await?;
        Ok(())
    }
}
