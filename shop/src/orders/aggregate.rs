//! The order as an event-sourced aggregate: its stream (`order-<id>` in orders' event
//! store) holds what orders decided (`OrderPlaced`, `OrderConfirmed`, `OrderCancelled`
//! — the same envelopes it publishes) and the facts it was told (inventory's
//! `StockReserved` / `StockRejected`, payments' `PaymentCaptured` / `PaymentDeclined`,
//! as received). Folding the stream gives the order at any version or moment.

use eddy_core::{Error, Event, JsonCodec};
use eddy_eventstore::{Aggregate, Recorded};
use serde::{Deserialize, Serialize};

use super::domain::{CancelReason, Order, OrderLineRecord, OrderStatus};
use crate::contracts::values::{Currency, OrderId, Timestamp};
use crate::contracts::{
    OrderCancelled, OrderConfirmed, OrderPlaced, PaymentCaptured, PaymentDeclined, StockRejected,
    StockReserved,
};

/// The stream of order `id`.
pub fn stream(id: &str) -> String {
    format!("order-{id}")
}

/// What the stream says of one order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderState {
    pub placed: Option<OrderPlaced>,
    pub created_at_us: i64,
    pub updated_at_us: i64,
    /// `None` while pending; the outcome once settled.
    pub settled: Option<Settled>,
    /// `reserved` or `rejected`, once inventory answered.
    pub stock: Option<String>,
    /// `captured` or `declined`, once payments answered.
    pub payment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Settled {
    Confirmed,
    Cancelled { reason: String },
}

impl OrderState {
    pub fn status(&self) -> OrderStatus {
        match self.settled {
            None => OrderStatus::Pending,
            Some(Settled::Confirmed) => OrderStatus::Confirmed,
            Some(Settled::Cancelled { .. }) => OrderStatus::Cancelled,
        }
    }

    /// The order as the API shows it; `None` before it was placed.
    pub fn order(&self) -> Result<Option<Order>, Error> {
        let Some(placed) = &self.placed else {
            return Ok(None);
        };
        let invalid = |what: &str, e: crate::contracts::values::Invalid| {
            Error::permanent(format!("order stream holds an invalid {what}: {e}"))
        };
        Ok(Some(Order {
            id: OrderId::parse(&placed.order_id).map_err(|e| invalid("order id", e))?,
            customer_id: placed.customer_id.clone(),
            status: self.status(),
            lines: placed
                .lines
                .iter()
                .map(|l| OrderLineRecord {
                    product_id: l.product_id.clone(),
                    quantity: l.quantity,
                    unit_price_cents: l.unit_price_cents,
                })
                .collect(),
            total_cents: placed.total_cents,
            currency: Currency::parse(&placed.currency).map_err(|e| invalid("currency", e))?,
            cancel_reason: match &self.settled {
                Some(Settled::Cancelled { reason }) => Some(CancelReason::parse(reason)),
                _ => None,
            },
            created_at: Timestamp::from_micros(self.created_at_us),
            updated_at: Timestamp::from_micros(self.updated_at_us),
        }))
    }
}

impl Aggregate for OrderState {
    const SNAPSHOT_VERSION: u32 = 1;

    fn apply(&mut self, event: &Recorded) -> Result<(), Error> {
        let envelope = &event.envelope;
        let at = envelope.occurred_at_micros();
        match envelope.event_type.as_str() {
            OrderPlaced::TYPE => {
                self.placed = Some(JsonCodec::decode(envelope)?);
                self.created_at_us = at;
                self.updated_at_us = at;
            }
            OrderConfirmed::TYPE => {
                self.settled = Some(Settled::Confirmed);
                self.updated_at_us = at;
            }
            OrderCancelled::TYPE => {
                let cancelled: OrderCancelled = JsonCodec::decode(envelope)?;
                self.settled = Some(Settled::Cancelled {
                    reason: cancelled.reason,
                });
                self.updated_at_us = at;
            }
            StockReserved::TYPE => self.stock = Some("reserved".to_owned()),
            StockRejected::TYPE => self.stock = Some("rejected".to_owned()),
            PaymentCaptured::TYPE => self.payment = Some("captured".to_owned()),
            PaymentDeclined::TYPE => self.payment = Some("declined".to_owned()),
            other => {
                return Err(Error::permanent(format!(
                    "order stream {} holds an event orders does not know: {other} (version {})",
                    event.stream, event.version
                )))
            }
        }
        Ok(())
    }
}
