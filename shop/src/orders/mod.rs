//! Orders: placing an order (validated, priced from orders' own event-fed copy of the
//! catalog, idempotent per `Idempotency-Key`), reading orders (now, as of a moment, and
//! their history), and settling them on stock and payment outcomes.
//!
//! Each order is an event-sourced aggregate ([`aggregate`]): its stream in orders' event
//! store is the truth, appended in the same transaction as the outbox rows it publishes
//! and the order views it moves ([`ledger`]); the views `GET` and the customer's list
//! read are a projection ([`store::OrderViews`]) that `shop projections rebuild` rebuilds
//! while it serves.
//!
//! [`domain`] holds the rules (validation, pricing, the state machine), [`http`] the
//! routes, [`store`] the SQL, [`events`] what it publishes and consumes.

pub mod aggregate;
pub mod domain;
pub mod events;
pub mod http;
pub mod ledger;
pub mod store;

pub use store::MIGRATIONS;

use crate::service::{Contribution, ServiceContext};

/// Orders' routes and consumers, on its event store (opened here: its views are brought
/// up to date before anything is served).
pub async fn contribute(ctx: &ServiceContext<'_>) -> anyhow::Result<Contribution> {
    let ledger = ledger::Ledger::open(ctx.service.clone(), projector_config(ctx.config)).await?;
    let orders = crate::platform::cache::build(
        &ctx.config.cache,
        "orders",
        ctx.config.cache.orders_ttl_secs,
    )?;
    let settle = events::Settle {
        ledger: ledger.clone(),
        orders: orders.clone(),
    };
    let state = http::OrdersState { ledger, orders };
    Ok(Contribution {
        routes: Some(http::router().with_state(state)),
        subscriptions: events::subscriptions(ctx, &settle)?,
        sweeps: events::sweeps(ctx, settle),
        breakers: Vec::new(),
    })
}

/// How the order views catch up and rebuild.
pub fn projector_config(config: &crate::config::Config) -> eddy_eventstore::ProjectorConfig {
    eddy_eventstore::ProjectorConfig {
        batch_len_max: config.orders.projection_batch_len_max,
        ..eddy_eventstore::ProjectorConfig::default()
    }
}
