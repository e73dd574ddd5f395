//! Inventory: reserves stock for placed orders (all lines or none), releases it when
//! an order is cancelled (compensation) and consumes it when an order is confirmed.
//! Announces every change of available stock. It has no HTTP surface.
//!
//! [`domain`] holds the rules, [`store`] the SQL, [`events`] the handlers.

pub mod domain;
pub mod events;
pub mod store;

pub use store::MIGRATIONS;

use crate::service::{Contribution, ServiceContext};

/// Inventory's consumers.
pub fn contribute(ctx: &ServiceContext<'_>) -> anyhow::Result<Contribution> {
    Ok(Contribution {
        routes: None,
        subscriptions: events::subscriptions(ctx)?,
        sweeps: Vec::new(),
        breakers: Vec::new(),
    })
}
