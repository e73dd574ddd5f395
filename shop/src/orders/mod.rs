//! Orders: placing an order (validated, priced from orders' own event-fed copy of the
//! catalog, stored with its `OrderPlaced` event in one transaction, idempotent per
//! `Idempotency-Key`), reading orders, and settling them on stock and payment outcomes.
//!
//! [`domain`] holds the rules (validation, pricing, the state machine), [`http`] the
//! routes, [`store`] the SQL, [`events`] what it publishes and consumes.

pub mod domain;
pub mod events;
pub mod http;
pub mod store;

pub use store::MIGRATIONS;

use crate::service::{Contribution, ServiceContext};

/// Orders' routes and consumers.
pub fn contribute(ctx: &ServiceContext<'_>) -> anyhow::Result<Contribution> {
    Ok(Contribution {
        routes: Some(http::router().with_state(ctx.service.clone())),
        subscriptions: events::subscriptions(ctx)?,
        sweeps: events::sweeps(ctx),
    })
}
