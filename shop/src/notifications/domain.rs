//! Notifications' rules: what is sent for a settled order, to whom, and how often the
//! simulated mail server fails.

use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What a notification tells the customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotificationKind {
    OrderConfirmed,
    OrderCancelled,
}

impl NotificationKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            NotificationKind::OrderConfirmed => "order_confirmed",
            NotificationKind::OrderCancelled => "order_cancelled",
        }
    }
}

/// Where a customer's mail goes (the simulation has no address book).
pub fn recipient(customer_id: &str) -> String {
    format!("{customer_id}@customers.example")
}

/// The simulated mail server: fails a share of sends. Its randomness is seeded, so a
/// test can replay the same failures.
#[derive(Debug, Clone)]
pub struct MailServer {
    failure_rate: f64,
    rng: Arc<Mutex<StdRng>>,
}

impl MailServer {
    /// `failure_rate` in 0–1 (validated with the configuration).
    pub fn new(failure_rate: f64, seed: u64) -> Self {
        Self {
            failure_rate: failure_rate.clamp(0.0, 1.0),
            rng: Arc::new(Mutex::new(StdRng::seed_from_u64(seed))),
        }
    }

    /// Whether this send fails.
    pub fn fails(&self) -> bool {
        self.failure_rate > 0.0
            && self
                .rng
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .gen_bool(self.failure_rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failure_rate_holds_and_a_seed_replays() {
        let server = MailServer::new(0.25, 7);
        let failures: Vec<bool> = (0..4_000).map(|_| server.fails()).collect();
        let share = failures.iter().filter(|f| **f).count() as f64 / 4_000.0;
        assert!((0.22..0.28).contains(&share), "{share}");
        let again = MailServer::new(0.25, 7);
        assert!(failures.iter().all(|f| *f == again.fails()));
        assert!(!(0..1_000).any(|_| MailServer::new(0.0, 1).fails()));
    }
}
