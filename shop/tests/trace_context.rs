//! A platform that records no spans (no OTLP endpoint) still carries a caller's trace:
//! an order placed with a `traceparent` keeps that trace on every event of its saga, so
//! the next process that does record continues it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::spawn_app;
use serde_json::{json, Value};
use shop::config::Secret;

const TOKEN: &str = "trace-context-test-token-0123456789abcdef-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_placed_with_a_traceparent_carries_its_trace_through_the_saga() {
    let app = spawn_app(|config| config.admin.token = Secret::new(TOKEN)).await;
    let product = app.product(700, 10).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace}-00f067aa0ba902b7-01");
    let order = app
        .order_with_headers(
            "tess",
            json!([{"product_id": product, "quantity": 1}]),
            &[("traceparent", traceparent.as_str())],
        )
        .await;
    let id = order["id"].as_str().unwrap();
    app.settled(id).await;
    let events: Value = app
        .http
        .get(format!("{}/admin/orders/{id}/events", app.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events = events["events"].as_array().unwrap();
    assert!(events.len() >= 3, "{events:?}");
    for event in events {
        assert_eq!(event["trace_id"], trace, "{event}");
    }
    app.stop().await;
}
