//! The events the services exchange: the only thing they share.
//!
//! Each event names its topic (one topic per publishing service) and is keyed so that
//! everything about one order (or one product) stays in order. Schema changes follow
//! the rules in `docs/`: never remove or retype a field; new fields are optional with a
//! default; a breaking change is a new `SCHEMA_VERSION` with an upcaster.

use eddy_core::Event;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StockRejected {
    pub order_id: String,
    /// The first product that lacked stock (or that inventory never heard of).
    pub product_id: String,
    /// Why: `out_of_stock` (also when absent, as in events from before the field) or
    /// `unknown_product`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Event for StockRejected {
    const TYPE: &'static str = "inventory.StockRejected";
    fn key(&self) -> String {
        self.order_id.clone()
    }
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
