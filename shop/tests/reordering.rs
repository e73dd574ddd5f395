//! The shop's handlers do not depend on per-key order where a broker may not keep it
//! (NATS hands a message back behind newer ones, see eddy-nats): an order's
//! cancellation reaching inventory before its placement leaves no stock reserved.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use eddy_core::{Clock, JsonCodec, SystemClock};
use eddy_sql::TxHandler;
use eddy_testkit::TestDb;
use shop::contracts::{OrderCancelled, OrderLine, OrderPlaced};
use shop::inventory::domain::UnknownProducts;
use shop::inventory::events::Inventory;
use shop::inventory::store;
use shop::platform::services;
use shop::service::{ServiceDb, ServiceName};

#[tokio::test]
async fn a_cancellation_before_its_placement_reserves_nothing() {
    let test_db = TestDb::sqlite().await;
    let db = test_db.db().clone();
    db.migrate(services::migrations(ServiceName::Inventory))
        .await
        .unwrap();
    let inventory = Inventory {
        service: ServiceDb::open(ServiceName::Inventory, db.clone())
            .await
            .unwrap(),
        unknown: UnknownProducts::new(Duration::from_secs(1)),
    };
    let mut tx = db.begin().await.unwrap();
    store::track(&mut tx, "p-1").await.unwrap();
    store::add_clamped(&mut tx, "p-1", 5).await.unwrap();
    tx.commit().await.unwrap();

    let clock: &dyn Clock = &SystemClock;
    let cancelled = OrderCancelled {
        order_id: "o-1".to_owned(),
        customer_id: "c".to_owned(),
        reason: "timed_out".to_owned(),
    };
    let placed = OrderPlaced {
        order_id: "o-1".to_owned(),
        customer_id: "c".to_owned(),
        lines: vec![OrderLine {
            product_id: "p-1".to_owned(),
            quantity: 2,
            unit_price_cents: 100,
        }],
        total_cents: 200,
        currency: "EUR".to_owned(),
    };
    let mut tx = db.begin().await.unwrap();
    let envelope = JsonCodec::encode(&cancelled, clock).unwrap();
    TxHandler::handle(&inventory, cancelled, &envelope, &mut tx)
        .await
        .unwrap();
    let envelope = JsonCodec::encode(&placed, clock).unwrap();
    TxHandler::handle(&inventory, placed, &envelope, &mut tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let available: i64 = sqlx::query_scalar("SELECT available FROM stock WHERE product_id = 'p-1'")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(
        available, 5,
        "the late placement of a cancelled order took stock"
    );
    let reserved: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM reservations WHERE order_id = 'o-1' AND state = 'reserved'",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(reserved, 0);
}
