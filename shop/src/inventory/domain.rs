//! Inventory's rules: a reservation takes every line of an order or none, moves from
//! reserved to released (cancelled order) or consumed (confirmed order) once, and an
//! order may wait a bounded time for a product inventory has not heard of yet.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// Where a reservation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationState {
    Reserved,
    /// Given back: the order was cancelled.
    Released,
    /// Shipped: the order was confirmed.
    Consumed,
}

impl ReservationState {
    pub const fn as_str(self) -> &'static str {
        match self {
            ReservationState::Reserved => "reserved",
            ReservationState::Released => "released",
            ReservationState::Consumed => "consumed",
        }
    }
}

/// Units wanted per product, lines of the same product merged (so a product is
/// adjusted once per order, and in a fixed order: no two orders lock in opposite
/// orders).
pub fn wanted<'a>(lines: impl IntoIterator<Item = (&'a str, i64)>) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    for (product_id, quantity) in lines {
        *out.entry(product_id.to_owned()).or_insert(0) += quantity;
    }
    out
}

/// What happened to one order's reservation attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// Every line is reserved.
    Reserved,
    /// `product_id` lacked stock; nothing is reserved.
    OutOfStock { product_id: String },
}

/// Orders waiting for a product's `ProductUpserted`.
///
/// Orders and inventory learn of a product from the same catalog event, each through
/// its own consumer, so an order may reach inventory before the product does. Such an
/// order waits — retried as "unavailable", spending none of its attempts — for up to
/// `wait`, counted from when inventory first saw it; after that it is rejected as
/// `unknown_product` (its order is cancelled) rather than left pending for ever.
///
/// Time is tokio's, so tests move it with `tokio::time::pause()`/`advance`.
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
    pub fn waited_out(&self, order_id: &str) -> bool {
        let now = Instant::now();
        let mut since = self.entries();
        // Orders abandoned mid-wait (a shutdown) would linger: forget stale clocks.
        // The map holds at most the consumer's in-flight messages.
        since.retain(|_, at| now.duration_since(*at) <= self.wait * 2);
        let first = *since.entry(order_id.to_owned()).or_insert(now);
        now.duration_since(first) >= self.wait
    }

    /// `order_id` no longer waits.
    pub fn settled(&self, order_id: &str) {
        self.entries().remove(order_id);
    }

    /// Orders whose clock is running.
    pub fn waiting_len(&self) -> usize {
        self.entries().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_one_product_are_merged() {
        let wanted = wanted([("b", 1), ("a", 2), ("b", 3)]);
        assert_eq!(
            wanted.into_iter().collect::<Vec<_>>(),
            [("a".to_owned(), 2), ("b".to_owned(), 4)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_order_waits_for_its_product_then_gives_up() {
        let unknown = UnknownProducts::new(Duration::from_secs(10));
        assert!(
            !unknown.waited_out("o1"),
            "the first sight starts the clock"
        );
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!unknown.waited_out("o1"));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(unknown.waited_out("o1"));
        assert!(!unknown.waited_out("o2"), "each order has its own clock");
    }

    #[tokio::test(start_paused = true)]
    async fn abandoned_clocks_are_forgotten() {
        let unknown = UnknownProducts::new(Duration::from_secs(10));
        unknown.waited_out("abandoned");
        unknown.waited_out("settled");
        unknown.settled("settled");
        assert_eq!(unknown.waiting_len(), 1);
        tokio::time::advance(Duration::from_secs(21)).await;
        unknown.waited_out("new");
        assert_eq!(
            unknown.waiting_len(),
            1,
            "only the new order's clock is left"
        );
    }
}
