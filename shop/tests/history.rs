//! Orders as event streams: an order's history, the order as it was at a moment, the
//! order views rebuilt while orders keep coming, and orders kept before event sourcing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{spawn_app, test_config};
use serde_json::{json, Value};
use shop::config::Database;
use shop::service::ServiceName;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_tells_its_history_and_reads_as_it_was_after_each_step() {
    let app = spawn_app(|_| {}).await;
    let product = app.product(1250, 5).await;
    let order = app
        .order(
            "alice",
            json!([{"product_id": product, "quantity": 2}]),
            None,
        )
        .await;
    let id = order["id"].as_str().unwrap();
    let settled = app.settled(id).await;
    assert_eq!(settled["status"], "CONFIRMED");
    // The placement's reply (made from the appended event) is the order as the views
    // have it, but for what settling changed.
    for field in [
        "id",
        "customer_id",
        "lines",
        "total_cents",
        "currency",
        "created_at",
    ] {
        assert_eq!(order[field], settled[field], "{field}");
    }

    let (status, history) = app.get_json(&format!("/v1/orders/{id}/history")).await;
    assert_eq!(status, 200, "{history}");
    assert_eq!(history["order_id"], id);
    let items = history["items"].as_array().unwrap();
    let types: Vec<&str> = items
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    // Inventory's and payments' answers come on two topics, so the order may hear of
    // the capture before the reservation it followed: the reservation's place in the
    // stream varies; the capture and the confirmation it caused are one append.
    assert_eq!(types.len(), 4, "{types:?}");
    assert_eq!(types[0], "orders.OrderPlaced");
    let captured = types
        .iter()
        .position(|t| *t == "payments.PaymentCaptured")
        .expect("the capture is recorded");
    assert_eq!(types[captured + 1], "orders.OrderConfirmed", "{types:?}");
    assert!(types.contains(&"inventory.StockReserved"), "{types:?}");
    let versions: Vec<u64> = items
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, vec![1, 2, 3, 4]);
    assert!(items
        .iter()
        .all(|e| e["schema_version"].as_u64() >= Some(1)));

    // As of each recorded step: pending until the confirmation, confirmed from it. A
    // fact and the decision it caused are one append, recorded at one moment.
    assert_eq!(
        items[captured]["recorded_at"],
        items[captured + 1]["recorded_at"],
        "{history}"
    );
    for (i, entry) in items.iter().enumerate() {
        let at = entry["recorded_at"].as_str().unwrap();
        let (status, then) = app
            .get_json(&format!("/v1/orders/{id}?as_of={}", urlencode(at)))
            .await;
        assert_eq!(status, 200, "{then}");
        let expected = if i >= captured {
            "CONFIRMED"
        } else {
            "PENDING"
        };
        assert_eq!(then["status"], expected, "as of step {}", i + 1);
        assert_eq!(then["total_cents"], 2500);
    }
    // Before it was placed it did not exist; a malformed moment is a 400 problem.
    let placed = time::OffsetDateTime::parse(
        items[0]["recorded_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let before = (placed - time::Duration::milliseconds(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (status, _) = app
        .get_json(&format!("/v1/orders/{id}?as_of={}", urlencode(&before)))
        .await;
    assert_eq!(status, 404);
    let (status, problem) = app
        .get_json(&format!("/v1/orders/{id}?as_of=yesterday"))
        .await;
    assert_eq!(status, 400);
    assert!(
        problem["type"].as_str().unwrap().ends_with("invalid-as-of"),
        "{problem}"
    );
    let (status, _) = app
        .get_json("/v1/orders/0190f1c2-0000-7000-8000-000000000000/history")
        .await;
    assert_eq!(status, 404);
    app.stop().await;
}

fn urlencode(text: &str) -> String {
    text.replace('+', "%2B").replace(':', "%3A")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_views_rebuilt_while_orders_keep_coming_equal_the_orders_streams() {
    let app = spawn_app(|_| {}).await;
    let product = app.product(300, 1_000).await;
    let mut ids = Vec::new();
    for n in 0..20 {
        let order = app
            .order(
                &format!("c{}", n % 3),
                json!([{"product_id": product, "quantity": 1}]),
                None,
            )
            .await;
        ids.push(order["id"].as_str().unwrap().to_owned());
    }
    // Orders keep coming while the rebuild runs.
    let placing = tokio::spawn({
        let (http, base, product) = (app.http.clone(), app.base.clone(), product.clone());
        async move {
            let mut placed = Vec::new();
            for n in 0..30 {
                let response = http
                    .post(format!("{base}/v1/orders"))
                    .json(&json!({"customer_id": format!("c{}", n % 3), "lines": [{"product_id": product, "quantity": 1}]}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 202);
                let order: Value = response.json().await.unwrap();
                placed.push(order["id"].as_str().unwrap().to_owned());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            placed
        }
    });
    let mut config = test_config(app.data_dir());
    config.orders.projection_batch_len_max = 7;
    let projectors = shop::projections::open(&config, Some("order_views"))
        .await
        .unwrap();
    let mut reports = Vec::new();
    let report = shop::projections::rebuild(&projectors[0], |p| reports.push(p))
        .await
        .unwrap();
    assert_eq!(report.generation, 2);
    assert!(reports.len() > 1, "progress after every batch: {reports:?}");
    ids.extend(placing.await.unwrap());

    // Every order the views show equals its stream folded (as of now), and every
    // customer's list has all of theirs.
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    for id in &ids {
        let settled = app.settled(id).await;
        let (_, folded) = app
            .get_json(&format!("/v1/orders/{id}?as_of={}", urlencode(&now)))
            .await;
        let (_, view) = app.get_json(&format!("/v1/orders/{id}")).await;
        assert_eq!(view["id"], *id);
        if folded["status"] == settled["status"] {
            assert_eq!(view, folded);
        }
    }
    let mut listed = 0;
    for customer in ["c0", "c1", "c2"] {
        listed += common::all_orders(&app.http, &app.base, customer)
            .await
            .len();
    }
    assert_eq!(listed, ids.len());
    let status = projectors[0].status().await.unwrap();
    assert_eq!((status.generation, status.rebuilding), (2, None));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_kept_before_event_sourcing_become_streams_at_start_up() {
    let app = spawn_app(|_| {}).await;
    // Rows as orders kept them before (nothing reads those tables now).
    let config = test_config(app.data_dir());
    let db = eddy_sql::Db::connect(&eddy_sql::DbConfig::new(
        config.database_url(Database::Of(ServiceName::Orders)),
    ))
    .await
    .unwrap();
    for sql in [
        "INSERT INTO orders (id, customer_id, status, total_cents, currency, cancel_reason, created_at_us, updated_at_us) VALUES ('0190f1c2-0000-7000-8000-000000000001', 'old', 'CANCELLED', 990, 'EUR', 'out_of_stock', 1700000000000000, 1700000001000000)",
        "INSERT INTO order_lines (order_id, line_no, product_id, quantity, unit_price_cents) VALUES ('0190f1c2-0000-7000-8000-000000000001', 0, 'p-1', 1, 990)",
    ] {
        sqlx::query(sql).execute(db.pool()).await.unwrap();
    }
    db.close().await;
    let app = app.restart(|_| {}).await;
    let id = "0190f1c2-0000-7000-8000-000000000001";
    let (status, order) = app.get_json(&format!("/v1/orders/{id}")).await;
    assert_eq!(status, 200, "{order}");
    assert_eq!(order["status"], "CANCELLED");
    assert_eq!(order["cancel_reason"], "out_of_stock");
    assert_eq!(order["lines"][0]["product_id"], "p-1");
    assert_eq!(order["created_at"], "2023-11-14T22:13:20Z");
    let (_, history) = app.get_json(&format!("/v1/orders/{id}/history")).await;
    let types: Vec<&str> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, vec!["orders.OrderPlaced", "orders.OrderCancelled"]);
    let (_, listed) = app.get_json("/v1/customers/old/orders").await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    app.stop().await;
}
