//! The catalog: products with prices and stock. Publishes `ProductUpserted`; keeps its
//! view of stock up to date from inventory's `StockChanged`.
//!
//! [`domain`] holds the rules of a product, [`http`] the `/v1/products` routes,
//! [`store`] the SQL, [`events`] what it publishes and consumes.

pub mod domain;
pub mod events;
pub mod http;
pub mod store;

pub use store::MIGRATIONS;

use crate::service::{Contribution, ServiceContext};

/// The catalog's routes and consumers.
pub fn contribute(ctx: &ServiceContext<'_>) -> anyhow::Result<Contribution> {
    Ok(Contribution {
        routes: Some(http::router().with_state(ctx.service.clone())),
        subscriptions: events::subscriptions(ctx)?,
        sweeps: Vec::new(),
    })
}
