//! Stock set by an operator composes with reservations in flight: the catalog sends the
//! difference its change made, inventory applies it, and nothing reserved is lost or
//! counted twice — also when the catalog's figure is behind inventory's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use eddy_testkit::TestDb;
use shop::catalog::domain::{NewProduct, ProductChange};
use shop::catalog::store as catalog;
use shop::contracts::values::{ProductId, Timestamp};
use shop::inventory::store as inventory;

async fn available(db: &eddy_sql::Db, product: &str) -> i64 {
    sqlx::query_scalar("SELECT available FROM stock WHERE product_id = $1")
        .bind(product)
        .fetch_one(db.pool())
        .await
        .unwrap()
}

/// Stock 5; an order reserves 2 (the catalog has not yet heard: it still shows 5); the
/// operator sets 5 again; the order is cancelled. With the figure sent as an absolute
/// value the cancel made it 7; as the difference (0) it is 5 again, as it should.
#[tokio::test]
async fn a_stock_change_keeps_the_reservations_in_flight() {
    let db = TestDb::sqlite().await;
    let db = db.db().clone();
    db.migrate(catalog::MIGRATIONS).await.unwrap();
    db.migrate(inventory::MIGRATIONS).await.unwrap();
    let now = Timestamp::from_micros(1);
    let id = ProductId::generate();
    let product = id.as_str();

    let mut tx = db.begin().await.unwrap();
    let new = NewProduct::parse("sku-1", "Thing", 100, "EUR", 5).unwrap();
    assert!(catalog::insert(&mut tx, &id, &new, now).await.unwrap());
    inventory::track(&mut tx, product).await.unwrap();
    inventory::add_clamped(&mut tx, product, 5).await.unwrap();
    tx.commit().await.unwrap();

    // An order reserves 2.
    let mut tx = db.begin().await.unwrap();
    inventory::adjust(&mut tx, product, -2)
        .await
        .unwrap()
        .unwrap();
    tx.commit().await.unwrap();

    // The operator, looking at the catalog's 5, sets 5.
    let mut tx = db.begin().await.unwrap();
    let change = ProductChange::parse(None, Some(5), None).unwrap();
    let delta = catalog::update(&mut tx, product, &change, now)
        .await
        .unwrap()
        .expect("the product exists");
    assert_eq!(delta, 0, "the figure the operator saw did not change");
    inventory::add_clamped(&mut tx, product, delta)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // The order is cancelled: its 2 come back.
    let mut tx = db.begin().await.unwrap();
    inventory::adjust(&mut tx, product, 2)
        .await
        .unwrap()
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(available(&db, product).await, 5);

    // A real change is a real difference: 5 → 8 adds 3, 8 → 1 takes 7.
    for (figure, expected_delta, expected_available) in [(8, 3, 8), (1, -7, 1)] {
        let mut tx = db.begin().await.unwrap();
        let change = ProductChange::parse(None, Some(figure), None).unwrap();
        let delta = catalog::update(&mut tx, product, &change, now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(delta, expected_delta);
        inventory::add_clamped(&mut tx, product, delta)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(available(&db, product).await, expected_available);
    }

    // A change of price alone leaves the stock alone.
    let mut tx = db.begin().await.unwrap();
    let change = ProductChange::parse(Some(250), None, None).unwrap();
    let delta = catalog::update(&mut tx, product, &change, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(delta, 0);
    tx.commit().await.unwrap();
    // Taking more than is left leaves none, never a negative figure.
    let mut tx = db.begin().await.unwrap();
    let level = inventory::add_clamped(&mut tx, product, -10).await.unwrap();
    assert_eq!(level.available, 0);
    tx.commit().await.unwrap();
}
