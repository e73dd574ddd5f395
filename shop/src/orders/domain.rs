//! The rules of an order: what a valid request is, how it is priced, and the state
//! machine (PENDING → CONFIRMED | CANCELLED, and nothing after).

use std::collections::HashMap;
use std::fmt;

use crate::contracts::values::{
    Currency, CustomerId, Invalid, Money, OrderId, ProductId, Timestamp,
};

/// Most lines in one order.
pub const LINES_MAX: usize = 50;
/// Most units of one product on one line.
pub const QUANTITY_MAX: i64 = 1_000;
/// Longest `Idempotency-Key`, in characters (visible ASCII: one byte each).
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 200;

/// Units of a product on one line: 1 to [`QUANTITY_MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Quantity(i64);

impl Quantity {
    pub fn parse(units: i64) -> Result<Self, Invalid> {
        if !(1..=QUANTITY_MAX).contains(&units) {
            return Err(Invalid::new(
                "invalid-quantity",
                format!("quantity must be between 1 and {QUANTITY_MAX}"),
            ));
        }
        Ok(Self(units))
    }

    pub fn units(self) -> i64 {
        self.0
    }
}

/// The client's name for one attempt to place an order: the same key gets the same
/// order back.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// 1 to [`IDEMPOTENCY_KEY_LEN_MAX`] characters of header text.
    pub fn parse(text: &str) -> Result<Self, Invalid> {
        if text.is_empty() || text.len() > IDEMPOTENCY_KEY_LEN_MAX {
            return Err(Invalid::new(
                "invalid-idempotency-key",
                format!("Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_LEN_MAX} characters"),
            ));
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One line as the customer asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedLine {
    pub product_id: ProductId,
    pub quantity: Quantity,
}

/// A well-formed request for an order, not yet priced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderRequest {
    customer_id: CustomerId,
    lines: Vec<RequestedLine>,
}

impl OrderRequest {
    /// `lines` as `(product id, quantity)`; the first problem found is reported. A
    /// malformed product id is reported as unknown: no product has it.
    pub fn parse<'a>(
        customer_id: &str,
        lines: impl ExactSizeIterator<Item = (&'a str, i64)>,
    ) -> Result<Self, Invalid> {
        let customer_id = CustomerId::parse(customer_id)?;
        if lines.len() == 0 {
            return Err(Invalid::new("no-lines", "an order needs at least one line"));
        }
        if lines.len() > LINES_MAX {
            return Err(Invalid::new(
                "too-many-lines",
                format!("an order has at most {LINES_MAX} lines"),
            ));
        }
        let lines = lines
            .map(|(product_id, quantity)| {
                let quantity = Quantity::parse(quantity)?;
                let product_id = ProductId::parse(product_id).map_err(|_| unknown(product_id))?;
                Ok(RequestedLine {
                    product_id,
                    quantity,
                })
            })
            .collect::<Result<Vec<_>, Invalid>>()?;
        Ok(Self { customer_id, lines })
    }

    pub fn customer_id(&self) -> &CustomerId {
        &self.customer_id
    }

    pub fn lines(&self) -> &[RequestedLine] {
        &self.lines
    }

    /// The products to look up prices for, each once.
    pub fn product_ids(&self) -> Vec<&ProductId> {
        let mut ids: Vec<&ProductId> = self.lines.iter().map(|l| &l.product_id).collect();
        ids.sort();
        ids.dedup();
        ids
    }
}

fn unknown(product_id: &str) -> Invalid {
    Invalid::new("unknown-product", format!("unknown product {product_id:?}"))
}

/// A line with the price it was sold at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricedLine {
    pub product_id: ProductId,
    pub quantity: Quantity,
    pub unit_price: Money,
}

/// An order priced from the catalog as orders knows it: the prices are a snapshot, so
/// a later price change never alters it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PricedOrder {
    pub customer_id: CustomerId,
    pub lines: Vec<PricedLine>,
    pub total: Money,
}

/// Prices `request` with `prices` (what orders knows of each product). Every product
/// must be known, all in one currency, and the total within [`Money`]'s bounds.
pub fn price(
    request: &OrderRequest,
    prices: &HashMap<ProductId, Money>,
) -> Result<PricedOrder, Invalid> {
    let mut lines = Vec::with_capacity(request.lines.len());
    let mut total: Option<Money> = None;
    for line in &request.lines {
        let unit_price = *prices
            .get(&line.product_id)
            .ok_or_else(|| unknown(line.product_id.as_str()))?;
        if unit_price.cents() == 0 {
            // Catalog refuses price 0 now; a product priced 0 before that rule cannot be
            // paid for (the provider refuses a charge of 0), so it is not for sale.
            return Err(Invalid::new(
                "not-for-sale",
                format!(
                    "product {} has no price and cannot be ordered",
                    line.product_id
                ),
            ));
        }
        if total.is_some_and(|t| t.currency() != unit_price.currency()) {
            return Err(Invalid::new(
                "mixed-currencies",
                "all lines of an order must share one currency",
            ));
        }
        let amount = unit_price.times(line.quantity.units());
        let sum = match (total, amount) {
            (None, amount) => amount,
            (Some(total), Some(amount)) => total.plus(amount),
            (Some(_), None) => None,
        };
        total = Some(
            sum.ok_or_else(|| Invalid::new("total-too-large", "the order total is too large"))?,
        );
        lines.push(PricedLine {
            product_id: line.product_id.clone(),
            quantity: line.quantity,
            unit_price,
        });
    }
    let total =
        total.ok_or_else(|| Invalid::new("no-lines", "an order needs at least one line"))?;
    Ok(PricedOrder {
        customer_id: request.customer_id.clone(),
        lines,
        total,
    })
}

/// Where an order is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderStatus {
    /// Placed; waiting for stock and payment.
    Pending,
    Confirmed,
    Cancelled,
}

impl OrderStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "PENDING",
            OrderStatus::Confirmed => "CONFIRMED",
            OrderStatus::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(text: &str) -> Result<Self, Invalid> {
        match text {
            "PENDING" => Ok(OrderStatus::Pending),
            "CONFIRMED" => Ok(OrderStatus::Confirmed),
            "CANCELLED" => Ok(OrderStatus::Cancelled),
            other => Err(Invalid::new(
                "invalid-status",
                format!("unknown order status {other:?}"),
            )),
        }
    }

    /// The status `outcome` moves an order in this status to: only a pending order
    /// settles, and a settled one stays as it is (a late or repeated outcome changes
    /// nothing).
    pub fn settle(self, outcome: &Outcome) -> Option<OrderStatus> {
        match (self, outcome) {
            (OrderStatus::Pending, Outcome::Confirmed) => Some(OrderStatus::Confirmed),
            (OrderStatus::Pending, Outcome::Cancelled(_)) => Some(OrderStatus::Cancelled),
            (OrderStatus::Confirmed | OrderStatus::Cancelled, _) => None,
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an order was cancelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelReason {
    OutOfStock,
    /// The product never reached inventory.
    UnknownProduct,
    PaymentDeclined,
    /// The provider could not be asked, or refused the request itself.
    PaymentFailed,
    /// Still pending after `orders.pending_timeout_secs`: an event of its saga was
    /// dead-lettered or lost.
    TimedOut,
    /// A reason a newer service sent that this version does not know; kept as sent
    /// (a tolerant reader: the order is cancelled all the same).
    Other(String),
}

impl CancelReason {
    /// The reason as the events and the API write it.
    pub fn parse(text: &str) -> Self {
        match text {
            "out_of_stock" => CancelReason::OutOfStock,
            "unknown_product" => CancelReason::UnknownProduct,
            "payment_declined" => CancelReason::PaymentDeclined,
            "payment_failed" => CancelReason::PaymentFailed,
            "timed_out" => CancelReason::TimedOut,
            other => CancelReason::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            CancelReason::OutOfStock => "out_of_stock",
            CancelReason::UnknownProduct => "unknown_product",
            CancelReason::PaymentDeclined => "payment_declined",
            CancelReason::PaymentFailed => "payment_failed",
            CancelReason::TimedOut => "timed_out",
            CancelReason::Other(text) => text,
        }
    }
}

/// How the saga ended for an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Confirmed,
    Cancelled(CancelReason),
}

impl Outcome {
    pub fn cancel_reason(&self) -> Option<&CancelReason> {
        match self {
            Outcome::Confirmed => None,
            Outcome::Cancelled(reason) => Some(reason),
        }
    }
}

/// An order as orders holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    pub id: OrderId,
    pub customer_id: String,
    pub status: OrderStatus,
    pub lines: Vec<OrderLineRecord>,
    pub total_cents: i64,
    pub currency: Currency,
    pub cancel_reason: Option<CancelReason>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A stored line of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLineRecord {
    pub product_id: String,
    pub quantity: i64,
    pub unit_price_cents: i64,
}

/// A position in a customer's orders, newest first: the last item's creation time and
/// id. Written `<micros>_<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub before_us: i64,
    pub before_id: String,
}

impl Cursor {
    pub fn parse(text: &str) -> Result<Self, Invalid> {
        text.split_once('_')
            .and_then(|(at, id)| {
                Some(Cursor {
                    before_us: at.parse().ok()?,
                    before_id: id.to_owned(),
                })
            })
            .ok_or_else(|| Invalid::new("invalid-cursor", "cursor is not one this API returned"))
    }

    pub fn after(order: &Order) -> Self {
        Cursor {
            before_us: order.created_at.micros(),
            before_id: order.id.as_str().to_owned(),
        }
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.before_us, self.before_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur(cents: i64) -> Money {
        Money::new(cents, Currency::parse("EUR").unwrap()).unwrap()
    }

    fn request(lines: &[(&str, i64)]) -> Result<OrderRequest, Invalid> {
        OrderRequest::parse("alice", lines.iter().copied())
    }

    fn prices(list: &[(&str, Money)]) -> HashMap<ProductId, Money> {
        list.iter()
            .map(|(id, m)| (ProductId::parse(id).unwrap(), *m))
            .collect()
    }

    #[test]
    fn a_request_needs_lines_within_bounds() {
        assert_eq!(request(&[]).unwrap_err().code, "no-lines");
        let many: Vec<(&str, i64)> = (0..=LINES_MAX).map(|_| ("p", 1)).collect();
        assert_eq!(request(&many).unwrap_err().code, "too-many-lines");
        assert_eq!(request(&[("p", 0)]).unwrap_err().code, "invalid-quantity");
        assert_eq!(request(&[("p", -3)]).unwrap_err().code, "invalid-quantity");
        assert_eq!(
            request(&[("p", QUANTITY_MAX + 1)]).unwrap_err().code,
            "invalid-quantity"
        );
        assert_eq!(request(&[("", 1)]).unwrap_err().code, "unknown-product");
        let long = "p".repeat(65);
        assert_eq!(request(&[(&long, 1)]).unwrap_err().code, "unknown-product");
        assert_eq!(
            OrderRequest::parse(" ", [("p", 1)].into_iter())
                .unwrap_err()
                .code,
            "invalid-customer"
        );
    }

    #[test]
    fn pricing_multiplies_and_sums_in_one_currency() {
        let order = price(
            &request(&[("a", 2), ("b", 1), ("a", 1)]).unwrap(),
            &prices(&[("a", eur(1250)), ("b", eur(99))]),
        )
        .unwrap();
        assert_eq!(order.total, eur(2 * 1250 + 99 + 1250));
        assert_eq!(order.lines.len(), 3);
        assert_eq!(order.lines[1].unit_price, eur(99));
    }

    #[test]
    fn pricing_refuses_unknown_products_mixed_currencies_and_overflow() {
        let known = prices(&[("a", eur(100))]);
        assert_eq!(
            price(&request(&[("x", 1)]).unwrap(), &known)
                .unwrap_err()
                .code,
            "unknown-product"
        );
        let usd = Money::new(100, Currency::parse("USD").unwrap()).unwrap();
        let mixed = prices(&[("a", eur(100)), ("b", usd)]);
        assert_eq!(
            price(&request(&[("a", 1), ("b", 1)]).unwrap(), &mixed)
                .unwrap_err()
                .code,
            "mixed-currencies"
        );
        let dear = prices(&[("a", eur(10_000_000_000))]);
        assert_eq!(
            price(&request(&[("a", 2)]).unwrap(), &dear)
                .unwrap_err()
                .code,
            "total-too-large"
        );
    }

    #[test]
    fn only_a_pending_order_settles() {
        let cancel = Outcome::Cancelled(CancelReason::OutOfStock);
        assert_eq!(
            OrderStatus::Pending.settle(&Outcome::Confirmed),
            Some(OrderStatus::Confirmed)
        );
        assert_eq!(
            OrderStatus::Pending.settle(&cancel),
            Some(OrderStatus::Cancelled)
        );
        for settled in [OrderStatus::Confirmed, OrderStatus::Cancelled] {
            assert_eq!(settled.settle(&Outcome::Confirmed), None);
            assert_eq!(settled.settle(&cancel), None);
        }
    }

    #[test]
    fn statuses_and_reasons_round_trip() {
        for status in [
            OrderStatus::Pending,
            OrderStatus::Confirmed,
            OrderStatus::Cancelled,
        ] {
            assert_eq!(OrderStatus::parse(status.as_str()).unwrap(), status);
        }
        assert!(OrderStatus::parse("SHIPPED").is_err());
        for text in [
            "out_of_stock",
            "unknown_product",
            "payment_declined",
            "payment_failed",
            "fraud",
        ] {
            assert_eq!(CancelReason::parse(text).as_str(), text);
        }
        assert_eq!(
            CancelReason::parse("fraud"),
            CancelReason::Other("fraud".to_owned())
        );
    }

    #[test]
    fn an_idempotency_key_is_bounded() {
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(IDEMPOTENCY_KEY_LEN_MAX + 1)).is_err());
        assert!(IdempotencyKey::parse("cart-42").is_ok());
    }

    #[test]
    fn a_cursor_round_trips_and_refuses_what_it_did_not_write() {
        let cursor = Cursor::parse("1700000000000000_0190-abc").unwrap();
        assert_eq!(cursor.to_string(), "1700000000000000_0190-abc");
        for bad in ["", "abc", "x_y", "_"] {
            assert_eq!(
                Cursor::parse(bad).unwrap_err().code,
                "invalid-cursor",
                "{bad}"
            );
        }
    }
}
