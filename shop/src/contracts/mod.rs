//! The events the services exchange: the only thing they share.
//!
//! Each event names its topic (one topic per publishing service) and is keyed so that
//! everything about one order (or one product) stays in order. Schema changes follow
//! the rules in `docs/events.md`: never remove or retype a field, never make an optional
//! one required; new fields are optional or have a default; a breaking change is a new
//! `SCHEMA_VERSION` with an upcaster. [`schemas`] checks them against the snapshots
//! committed under `shop/schemas/`.

use eddy_core::upcast::UpcastResult;
use eddy_core::{Event, Upcast};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const CATALOG_TOPIC: &str = "catalog";
pub const ORDERS_TOPIC: &str = "orders";
pub const INVENTORY_TOPIC: &str = "inventory";
pub const PAYMENTS_TOPIC: &str = "payments";
/// Every topic of the platform (each has its `<topic>.dlq`).
pub const TOPICS: [&str; 4] = [CATALOG_TOPIC, ORDERS_TOPIC, INVENTORY_TOPIC, PAYMENTS_TOPIC];

pub mod schemas;
pub mod values;

/// A product was created or changed. `stock`, when present, is the figure an operator
/// set, and `stock_delta` the difference it made to the figure the catalog showed:
/// inventory applies the difference, so reservations in flight are kept (an absolute
/// figure would overwrite them: stock 5, reserve 2, set 5, cancel → 7). Events from
/// before `stock_delta` carry only `stock`, which inventory then sets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProductUpserted {
    pub product_id: String,
    pub sku: String,
    pub name: String,
    pub price_cents: i64,
    pub currency: String,
    #[serde(default)]
    pub stock: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stock_delta: Option<i64>,
}

impl Event for ProductUpserted {
    const TYPE: &'static str = "catalog.ProductUpserted";
    fn key(&self) -> String {
        self.product_id.clone()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderLine {
    pub product_id: String,
    pub quantity: i64,
    pub unit_price_cents: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderPlaced {
    pub order_id: String,
    pub customer_id: String,
    pub lines: Vec<OrderLine>,
    pub total_cents: i64,
    pub currency: String,
}

impl Event for OrderPlaced {
    const TYPE: &'static str = "orders.OrderPlaced";
    fn key(&self) -> String {
        self.order_id.clone()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderConfirmed {
    pub order_id: String,
    pub customer_id: String,
    pub total_cents: i64,
    pub currency: String,
}

impl Event for OrderConfirmed {
    const TYPE: &'static str = "orders.OrderConfirmed";
    fn key(&self) -> String {
        self.order_id.clone()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OrderCancelled {
    pub order_id: String,
    pub customer_id: String,
    pub reason: String,
}

impl Event for OrderCancelled {
    const TYPE: &'static str = "orders.OrderCancelled";
    fn key(&self) -> String {
        self.order_id.clone()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockReserved {
    pub order_id: String,
    pub customer_id: String,
    pub total_cents: i64,
    pub currency: String,
}

impl Event for StockReserved {
    const TYPE: &'static str = "inventory.StockReserved";
    fn key(&self) -> String {
        self.order_id.clone()
    }
}

/// Inventory could not reserve an order's stock. Version 2 requires `reason`; version 1
/// had it optional, absent in events from before the field, which meant out of stock
/// (its upcaster says so).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockRejected {
    pub order_id: String,
    /// The first product that lacked stock (or that inventory never heard of).
    pub product_id: String,
    /// Why: `out_of_stock` or `unknown_product`.
    pub reason: String,
}

impl Event for StockRejected {
    const TYPE: &'static str = "inventory.StockRejected";
    const SCHEMA_VERSION: u32 = 2;
    const UPCASTS: &'static [Upcast] = &[Upcast::new(1, stock_rejected_reason_required)];
    fn key(&self) -> String {
        self.order_id.clone()
    }
}

/// `StockRejected` 1 → 2: a missing (or null) `reason` was `out_of_stock`.
fn stock_rejected_reason_required(mut payload: Value) -> UpcastResult {
    let fields = payload
        .as_object_mut()
        .ok_or("a StockRejected payload is an object")?;
    if fields.get("reason").is_none_or(Value::is_null) {
        fields.insert("reason".to_owned(), Value::from("out_of_stock"));
    }
    Ok(payload)
}

/// The available quantity of a product changed. `version` grows with every change, so
/// a reader can ignore an older value that arrives late.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockChanged {
    pub product_id: String,
    pub available: i64,
    pub version: i64,
}

impl Event for StockChanged {
    const TYPE: &'static str = "inventory.StockChanged";
    fn key(&self) -> String {
        self.product_id.clone()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentCaptured {
    pub order_id: String,
    pub charge_id: String,
    pub amount_cents: i64,
}

impl Event for PaymentCaptured {
    const TYPE: &'static str = "payments.PaymentCaptured";
    fn key(&self) -> String {
        self.order_id.clone()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentDeclined {
    pub order_id: String,
    pub charge_id: String,
    /// `payment_declined` (the provider said no) or `payment_failed` (it could not be asked).
    pub reason: String,
}

impl Event for PaymentDeclined {
    const TYPE: &'static str = "payments.PaymentDeclined";
    fn key(&self) -> String {
        self.order_id.clone()
    }
}

/// A captured charge was refunded because its order was cancelled (it timed out while
/// the payment went through).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentRefunded {
    pub order_id: String,
    pub charge_id: String,
    pub amount_cents: i64,
}

impl Event for PaymentRefunded {
    const TYPE: &'static str = "payments.PaymentRefunded";
    fn key(&self) -> String {
        self.order_id.clone()
    }
}

#[cfg(test)]
mod tests {
    use eddy_core::{Envelope, JsonCodec, OffsetDateTime};
    use serde_json::json;

    use super::*;

    fn stock_rejected(version: u32, payload: Value) -> Result<StockRejected, eddy_core::Error> {
        let envelope = Envelope::new(
            StockRejected::TYPE,
            version,
            "o-1",
            payload.to_string().into_bytes(),
            OffsetDateTime::UNIX_EPOCH,
        );
        JsonCodec::decode(&envelope)
    }

    #[test]
    fn a_version_1_stock_rejected_without_a_reason_was_out_of_stock() {
        for v1 in [
            json!({"order_id": "o-1", "product_id": "p-1"}),
            json!({"order_id": "o-1", "product_id": "p-1", "reason": null}),
        ] {
            assert_eq!(stock_rejected(1, v1).unwrap().reason, "out_of_stock");
        }
        let with_reason =
            json!({"order_id": "o-1", "product_id": "p-1", "reason": "unknown_product"});
        assert_eq!(
            stock_rejected(1, with_reason).unwrap().reason,
            "unknown_product"
        );
        assert!(
            stock_rejected(2, json!({"order_id": "o-1", "product_id": "p-1"})).is_err(),
            "version 2 requires it"
        );
    }
}
