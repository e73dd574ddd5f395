//! Payments: charges an order once its stock is reserved, through the external payment
//! provider over HTTP, and never twice (see [`events`] for why).
//!
//! [`domain`] holds the charge's states, [`provider_client`] the provider behind the
//! resilience layers, [`http`] the `/v1/payments` route, [`store`] the SQL, [`events`]
//! the handler.

pub mod domain;
pub mod events;
pub mod http;
pub mod provider_client;
pub mod store;

pub use store::MIGRATIONS;

use crate::service::{Contribution, ServiceContext};

/// Payments' route and consumer, and the payment provider's breaker.
pub fn contribute(ctx: &ServiceContext<'_>) -> anyhow::Result<Contribution> {
    let provider = events::provider(ctx)?;
    Ok(Contribution {
        routes: Some(http::router().with_state(ctx.service.clone())),
        subscriptions: events::subscriptions(ctx, &provider),
        sweeps: events::sweeps(ctx, &provider),
        breakers: vec![provider.breaker().clone()],
    })
}
