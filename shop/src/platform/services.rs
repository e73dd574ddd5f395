//! The five services, plugged in by one loop over [`ServiceName`]: each brings its
//! migrations and, given its context, its routes and subscriptions.

use eddy_sql::Migration;

use crate::service::{Contribution, ServiceContext, ServiceName};
use crate::{catalog, inventory, notifications, orders, payments};

/// The tables `service` needs in its own database.
pub fn migrations(service: ServiceName) -> &'static [Migration] {
    match service {
        ServiceName::Catalog => catalog::MIGRATIONS,
        ServiceName::Orders => orders::MIGRATIONS,
        ServiceName::Inventory => inventory::MIGRATIONS,
        ServiceName::Payments => payments::MIGRATIONS,
        ServiceName::Notifications => notifications::MIGRATIONS,
    }
}

/// What `ctx`'s service adds to the platform.
pub fn contribute(ctx: &ServiceContext<'_>) -> anyhow::Result<Contribution> {
    match ctx.service.name {
        ServiceName::Catalog => catalog::contribute(ctx),
        ServiceName::Orders => orders::contribute(ctx),
        ServiceName::Inventory => inventory::contribute(ctx),
        ServiceName::Payments => payments::contribute(ctx),
        ServiceName::Notifications => notifications::contribute(ctx),
    }
}
