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
    let orders = crate::platform::cache::build(
        &ctx.config.cache,
        "orders",
        ctx.config.cache.orders_ttl_secs,
    )?;
    let settle = events::Settle {
        service: ctx.service.clone(),
        orders: orders.clone(),
    };
    let state = http::OrdersState {
        service: ctx.service.clone(),
        orders,
    };
    Ok(Contribution {
        routes: Some(http::router().with_state(state)),
        subscriptions: events::subscriptions(ctx, &settle)?,
        sweeps: events::sweeps(ctx, settle),
    })
}
