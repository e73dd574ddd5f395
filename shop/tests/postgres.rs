//! The platform with one PostgreSQL database per service: the saga, compensation and
//! idempotency hold there too (relays woken by LISTEN/NOTIFY).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::spawn_app_on_postgres;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_runs_with_a_postgresql_database_per_service() {
    let app = spawn_app_on_postgres(|_| {}).await;
    let product = app.product(1250, 3).await;
    let confirmed = app
        .order(
            "pat",
            json!([{"product_id": product, "quantity": 2}]),
            Some("pat-1"),
        )
        .await;
    let again = app
        .order(
            "pat",
            json!([{"product_id": product, "quantity": 2}]),
            Some("pat-1"),
        )
        .await;
    assert_eq!(
        confirmed["id"], again["id"],
        "the same key gives the same order"
    );
    assert_eq!(
        app.settled(confirmed["id"].as_str().unwrap()).await["status"],
        "CONFIRMED"
    );
    let rejected = app
        .order("pat", json!([{"product_id": product, "quantity": 2}]), None)
        .await;
    let rejected = app.settled(rejected["id"].as_str().unwrap()).await;
    assert_eq!(rejected["status"], "CANCELLED");
    assert_eq!(rejected["cancel_reason"], "out_of_stock");
    assert_eq!(
        app.charges(confirmed["id"].as_str().unwrap()).await.len(),
        1
    );
    app.wait_stock(&product, 1).await;
    app.stop().await;
}

/// Orders and inventory learn of a product through their own consumers, so an order can
/// reach inventory before its product does. Such an order waits for the product (its
/// retries spend no attempts meanwhile) and is rejected as `unknown_product` only once
/// `inventory.unknown_product_wait_ms` has passed — never left pending for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_ahead_of_its_product_waits_for_it_then_is_rejected() {
    let app = spawn_app_on_postgres(|config| {
        config.inventory.unknown_product_wait_ms = 4_000;
        // Retries alone would give up within a second.
        config.consumer.attempts_max = 2;
    })
    .await;
    let inventory = sqlx::PgPool::connect(app.database_url("inventory"))
        .await
        .unwrap();
    // Makes inventory forget `product` (as if its catalog event were still on the way);
    // returns the stock row to put back.
    let forget = |product: String| {
        let inventory = inventory.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            loop {
                let row: Option<(i64, i64)> = sqlx::query_as(
                    "DELETE FROM stock WHERE product_id = $1 RETURNING available, version",
                )
                .bind(&product)
                .fetch_optional(&inventory)
                .await
                .unwrap();
                if let Some(row) = row {
                    return row;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "inventory never learnt of {product}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    // The product arrives two seconds after the order: the order waits, then confirms.
    let late = app.product(800, 5).await;
    let (available, version) = forget(late.clone()).await;
    let order = app
        .order("rae", json!([{"product_id": late, "quantity": 1}]), None)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, pending) = app
        .get_json(&format!("/v1/orders/{}", order["id"].as_str().unwrap()))
        .await;
    assert_eq!(pending["status"], "PENDING", "waiting for the product");
    sqlx::query("INSERT INTO stock (product_id, available, version) VALUES ($1, $2, $3)")
        .bind(&late)
        .bind(available)
        .bind(version)
        .execute(&inventory)
        .await
        .unwrap();
    let settled = app.settled(order["id"].as_str().unwrap()).await;
    assert_eq!(settled["status"], "CONFIRMED");

    // A product that never arrives: the order is cancelled once the wait is over.
    let never = app.product(800, 5).await;
    forget(never.clone()).await;
    let placed = tokio::time::Instant::now();
    let order = app
        .order("rae", json!([{"product_id": never, "quantity": 1}]), None)
        .await;
    let settled = app.settled(order["id"].as_str().unwrap()).await;
    assert_eq!(settled["status"], "CANCELLED");
    assert_eq!(settled["cancel_reason"], "unknown_product");
    assert!(
        placed.elapsed() >= Duration::from_secs(4),
        "rejected only after the wait"
    );
    assert!(app.charges(order["id"].as_str().unwrap()).await.is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_payment_gives_the_stock_back_on_postgresql() {
    let app = spawn_app_on_postgres(|config| config.provider.decline_rate = 1.0).await;
    let product = app.product(500, 7).await;
    let order = app
        .order(
            "quinn",
            json!([{"product_id": product, "quantity": 5}]),
            None,
        )
        .await;
    let settled = app.settled(order["id"].as_str().unwrap()).await;
    assert_eq!(settled["cancel_reason"], "payment_declined");
    app.wait_stock(&product, 7).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_runs_on_postgresql_with_nats_jetstream() {
    let app = common::spawn_app_on_postgres_and_nats(|_| {}).await;
    let product = app.product(800, 4).await;
    let mut orders = Vec::new();
    for i in 0..5 {
        orders.push(
            app.order(
                "ria",
                json!([{"product_id": product, "quantity": 1}]),
                Some(&format!("ria-{i}")),
            )
            .await,
        );
    }
    let mut confirmed = 0;
    for order in &orders {
        let settled = app.settled(order["id"].as_str().unwrap()).await;
        if settled["status"] == "CONFIRMED" {
            confirmed += 1;
            assert_eq!(app.charges(order["id"].as_str().unwrap()).await.len(), 1);
        } else {
            assert_eq!(settled["cancel_reason"], "out_of_stock");
        }
    }
    assert_eq!(confirmed, 4, "four units of stock, four confirmed orders");
    app.wait_stock(&product, 0).await;
    app.stop().await;
}

/// On Kafka (tansu). tansu 0.6.0 does not serve a fetch that starts inside a record
/// batch, which a member does after a rebalance whenever its group committed mid-batch,
/// so the producer writes one record per batch here (`batch.num.messages=1`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_saga_runs_on_postgresql_with_kafka() {
    let tansu = eddy_testkit::tansu::Tansu::start();
    let bootstrap = tansu.bootstrap().to_owned();
    let app = common::spawn_app_on_postgres(move |config| {
        config.broker.kind = shop::config::BrokerKind::Kafka;
        config.broker.kafka_bootstrap_servers = bootstrap;
        config.broker.kafka_partitions = 4;
        config.broker.kafka_producer = [("batch.num.messages".to_owned(), "1".to_owned())].into();
    })
    .await;
    let product = app.product(650, 3).await;
    let first = app
        .order(
            "sam",
            json!([{"product_id": product, "quantity": 2}]),
            Some("sam-1"),
        )
        .await;
    assert_eq!(
        app.settled(first["id"].as_str().unwrap()).await["status"],
        "CONFIRMED"
    );
    let second = app
        .order("sam", json!([{"product_id": product, "quantity": 2}]), None)
        .await;
    assert_eq!(
        app.settled(second["id"].as_str().unwrap()).await["cancel_reason"],
        "out_of_stock"
    );
    assert_eq!(app.charges(first["id"].as_str().unwrap()).await.len(), 1);
    app.wait_stock(&product, 1).await;
    app.stop().await;
    drop(tansu);
}
