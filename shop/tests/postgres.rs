//! The platform with one PostgreSQL database per service: the saga, compensation and
//! idempotency hold there too (relays woken by LISTEN/NOTIFY).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

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
        config.broker.kind = "kafka".to_owned();
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
