//! What the platform keeps only for a while is purged: every service's record of the
//! events it processed, and orders' idempotency keys — each past its own retention,
//! nothing younger.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use eddy_testkit::TestDb;
use shop::config::Config;
use shop::platform::services;
use shop::service::{ServiceDb, ServiceName};

async fn count(db: &eddy_sql::Db, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(db.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn processed_events_and_idempotency_keys_are_purged_past_their_retention() {
    let test_db = TestDb::sqlite().await;
    let db = test_db.db().clone();
    db.migrate(services::migrations(ServiceName::Orders))
        .await
        .unwrap();
    let orders = ServiceDb::open(ServiceName::Orders, db.clone())
        .await
        .unwrap();
    let now = orders.now().micros();
    let day = 86_400_000_000i64;
    for (id, age_days) in [("old", 20), ("young", 1)] {
        sqlx::query("INSERT INTO eddy_processed_events (consumer, event_id, processed_at_us) VALUES ('orders', $1, $2)")
            .bind(id)
            .bind(now - age_days * day)
            .execute(db.pool())
            .await
            .unwrap();
    }
    for (key, age_hours) in [("stale-key", 30), ("fresh-key", 2)] {
        sqlx::query("INSERT INTO idempotency_keys (idempotency_key, request, order_id, created_at_us) VALUES ($1, '{}', 'o', $2)")
            .bind(key)
            .bind(now - age_hours * 3_600_000_000)
            .execute(db.pool())
            .await
            .unwrap();
    }
    let config = Config::default();
    assert_eq!(services::purge(&orders, &config, 1000).await.unwrap(), 2);
    assert_eq!(count(&db, "eddy_processed_events").await, 1);
    assert_eq!(count(&db, "idempotency_keys").await, 1);
    assert_eq!(
        services::purge(&orders, &config, 1000).await.unwrap(),
        0,
        "what is young stays"
    );
}
