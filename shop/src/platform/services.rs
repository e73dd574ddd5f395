//! The five services, plugged in by one loop over [`ServiceName`]: each brings its
//! migrations and, given its context, its routes and subscriptions.

use eddy_sql::Migration;

use crate::config::Config;
use crate::service::{Contribution, ServiceContext, ServiceDb, ServiceName};
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
pub async fn contribute(ctx: &ServiceContext<'_>) -> anyhow::Result<Contribution> {
    match ctx.service.name {
        ServiceName::Catalog => catalog::contribute(ctx),
        ServiceName::Orders => orders::contribute(ctx).await,
        ServiceName::Inventory => inventory::contribute(ctx),
        ServiceName::Payments => payments::contribute(ctx),
        ServiceName::Notifications => notifications::contribute(ctx),
    }
}

/// Deletes what `service` keeps past its retention: the processed-event records every
/// service has, and orders' idempotency keys. At most `batch_len_max` of each; returns
/// how many went.
pub async fn purge(
    service: &ServiceDb,
    config: &Config,
    batch_len_max: i64,
) -> Result<u64, eddy_core::Error> {
    let now = service.now();
    let before = |secs: u64| {
        let age = i64::try_from(secs.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
        now.micros().saturating_sub(age)
    };
    let maintenance = &config.maintenance;
    let mut purged = eddy_sql::idempotency::purge_processed(
        &service.db,
        before(maintenance.processed_events_retention_secs),
        batch_len_max,
    )
    .await?;
    purged += service
        .dead_letters
        .expire_resolved(std::time::Duration::from_secs(
            config.dead_letters.resolved_retention_secs,
        ))
        .await?;
    if service.name == ServiceName::Orders {
        let keys_before = crate::contracts::values::Timestamp::from_micros(before(
            maintenance.idempotency_keys_retention_secs,
        ));
        purged +=
            orders::store::purge_idempotency_keys(&service.db, keys_before, batch_len_max).await?;
    }
    Ok(purged)
}
