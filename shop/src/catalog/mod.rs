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
    let products = crate::platform::cache::build(
        &ctx.config.cache,
        "products",
        ctx.config.cache.products_ttl_secs,
    )?;
    let state = http::CatalogState {
        service: ctx.service.clone(),
        products: products.clone(),
    };
    Ok(Contribution {
        routes: Some(http::router().with_state(state)),
        subscriptions: events::subscriptions(ctx, products)?,
        sweeps: Vec::new(),
        breakers: Vec::new(),
    })
}
