//! The order saga end to end, through HTTP only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::spawn_app;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_order_is_confirmed_and_its_stock_stays_taken() {
    let app = spawn_app(|_| {}).await;
    let product = app.product(1250, 5).await;
    let order = app
        .order(
            "alice",
            json!([{"product_id": product, "quantity": 2}]),
            None,
        )
        .await;
    assert_eq!(order["status"], "PENDING");
    assert_eq!(order["total_cents"], 2500);
    assert_eq!(order["lines"][0]["unit_price_cents"], 1250);

    let settled = app.settled(order["id"].as_str().unwrap()).await;
    assert_eq!(settled["status"], "CONFIRMED");
    assert!(settled.get("cancel_reason").is_none());
    let charges = app.charges(order["id"].as_str().unwrap()).await;
    assert_eq!(charges.len(), 1);
    assert_eq!(charges[0]["status"], "captured");
    assert_eq!(charges[0]["amount_cents"], 2500);
    app.wait_stock(&product, 3).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_beyond_the_stock_is_cancelled_out_of_stock() {
    let app = spawn_app(|_| {}).await;
    let product = app.product(100, 1).await;
    let order = app
        .order("bob", json!([{"product_id": product, "quantity": 2}]), None)
        .await;
    let settled = app.settled(order["id"].as_str().unwrap()).await;
    assert_eq!(settled["status"], "CANCELLED");
    assert_eq!(settled["cancel_reason"], "out_of_stock");
    assert!(
        app.charges(order["id"].as_str().unwrap()).await.is_empty(),
        "nothing charged"
    );
    app.wait_stock(&product, 1).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_payment_cancels_the_order_and_gives_the_stock_back() {
    let app = spawn_app(|config| config.provider.decline_rate = 1.0).await;
    let product = app.product(700, 10).await;
    let other = app.product(300, 4).await;
    let order = app
        .order(
            "carol",
            json!([{"product_id": product, "quantity": 3}, {"product_id": other, "quantity": 4}]),
            None,
        )
        .await;
    let settled = app.settled(order["id"].as_str().unwrap()).await;
    assert_eq!(settled["status"], "CANCELLED");
    assert_eq!(settled["cancel_reason"], "payment_declined");
    let charges = app.charges(order["id"].as_str().unwrap()).await;
    assert_eq!(charges.len(), 1);
    assert_eq!(charges[0]["status"], "declined");
    app.wait_stock(&product, 10).await;
    app.wait_stock(&other, 4).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_duplicates_with_one_key_make_one_order_and_one_charge() {
    let app = spawn_app(|_| {}).await;
    let product = app.product(990, 100).await;
    // Make sure orders knows the product before the race starts.
    app.order(
        "warmup",
        json!([{"product_id": product, "quantity": 1}]),
        None,
    )
    .await;
    let body = json!({"customer_id": "dave", "lines": [{"product_id": product, "quantity": 1}]});
    let requests = (0..16).map(|_| {
        app.http
            .post(format!("{}/v1/orders", app.base))
            .header("idempotency-key", "dave-cart-1")
            .json(&body)
            .send()
    });
    let responses = futures::future::join_all(requests).await;
    let mut ids = std::collections::BTreeSet::new();
    for response in responses {
        let response = response.unwrap();
        assert_eq!(response.status(), 202);
        let order: serde_json::Value = response.json().await.unwrap();
        ids.insert(order["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1, "every duplicate got the same order");
    let order_id = ids.into_iter().next().unwrap();
    assert_eq!(app.settled(&order_id).await["status"], "CONFIRMED");
    let (_, page) = app.get_json("/v1/customers/dave/orders").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "one order");
    assert_eq!(app.charges(&order_id).await.len(), 1, "one charge");

    let different = app
        .http
        .post(format!("{}/v1/orders", app.base))
        .header("idempotency-key", "dave-cart-1")
        .json(&json!({"customer_id": "dave", "lines": [{"product_id": product, "quantity": 2}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(different.status(), 422, "same key, different body");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_price_change_after_ordering_leaves_the_snapshot_intact() {
    let app = spawn_app(|_| {}).await;
    let product = app.product(1000, 50).await;
    let first = app
        .order(
            "erin",
            json!([{"product_id": product, "quantity": 1}]),
            None,
        )
        .await;
    let response = app
        .http
        .put(format!("{}/v1/products/{product}", app.base))
        .json(&json!({"price_cents": 1500}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let settled = app.settled(first["id"].as_str().unwrap()).await;
    assert_eq!(settled["lines"][0]["unit_price_cents"], 1000);
    assert_eq!(settled["total_cents"], 1000);
    // New orders see the new price once orders has heard of it.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let order = app
            .order(
                "erin",
                json!([{"product_id": product, "quantity": 1}]),
                None,
            )
            .await;
        if order["lines"][0]["unit_price_cents"] == 1500 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new price never reached orders"
        );
    }
    let (_, again) = app
        .get_json(&format!("/v1/orders/{}", first["id"].as_str().unwrap()))
        .await;
    assert_eq!(
        again["lines"][0]["unit_price_cents"], 1000,
        "still the price at purchase time"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customers_orders_come_newest_first_in_pages() {
    let app = spawn_app(|_| {}).await;
    let product = app.product(100, 1000).await;
    let mut placed = Vec::new();
    for _ in 0..5 {
        placed.push(
            app.order(
                "frank",
                json!([{"product_id": product, "quantity": 1}]),
                None,
            )
            .await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/customers/frank/orders?limit=2&cursor={c}"),
            None => "/v1/customers/frank/orders?limit=2".to_owned(),
        };
        let (status, page) = app.get_json(&path).await;
        assert_eq!(status, 200);
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|o| o["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    placed.reverse();
    assert_eq!(seen, placed, "newest first, each once");
    let (status, _) = app
        .get_json("/v1/customers/frank/orders?cursor=garbage")
        .await;
    assert_eq!(status, 400);
    // The document says limit is at most 100: beyond it is refused, not clamped.
    let (status, _) = app
        .get_json("/v1/customers/frank/orders?limit=100000")
        .await;
    assert_eq!(status, 400);
    let (_, all) = app.get_json("/v1/customers/frank/orders?limit=100").await;
    assert_eq!(all["items"].as_array().unwrap().len(), 5);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_the_api_document_are_served() {
    let app = spawn_app(|_| {}).await;
    assert_eq!(app.get_json("/health/live").await.0, 200);
    assert_eq!(app.get_json("/health/ready").await.0, 200);
    let (status, doc) = app.get_json("/openapi.json").await;
    assert_eq!(status, 200);
    // Generated by utoipa 5, which writes OpenAPI 3.1 (the hand-written file was 3.0.3).
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/v1/orders"]["post"].is_object());
    let product = app.product(100, 10).await;
    let order = app
        .order(
            "gina",
            json!([{"product_id": product, "quantity": 1}]),
            None,
        )
        .await;
    app.settled(order["id"].as_str().unwrap()).await;
    let metrics = app.metrics().await;
    assert!(metrics.contains("http_requests_total"), "{metrics}");
    assert!(
        metrics.contains("event_processing_duration_seconds"),
        "{metrics}"
    );
    let (status, problem) = app.get_json("/v1/orders/nope").await;
    assert_eq!(status, 404);
    assert_eq!(problem["status"], 404);
    app.stop().await;
}
