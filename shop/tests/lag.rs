//! The lag monitor wired into the platform: every consumer's group and topic sampled on
//! its timer, judged, served at `/lag` and exported as gauges.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::spawn_app;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_consumer_is_sampled_judged_and_served_at_lag() {
    let app = spawn_app(|config| {
        config.lag.interval_secs = 1;
        config.lag.judge_span_secs = 2;
    })
    .await;
    let product = app.product(500, 10).await;
    let order = app
        .order(
            "lena",
            json!([{"product_id": product, "quantity": 1}]),
            None,
        )
        .await;
    app.settled(order["id"].as_str().unwrap()).await;

    // Orders' consumer of inventory has partitions with a status once sampled, and is
    // caught up once a sample is taken after its last commit: a sample taken between an
    // event's append (inventory may still write after the order settled) and the
    // consumer's commit rightly reads a lag of 1.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let snapshot = loop {
        let (status, body) = app.get_json("/lag").await;
        assert_eq!(status, 200, "{body}");
        let caught_up = topic(&body, "orders", "inventory").is_some_and(|t| {
            !t["partitions"].as_array().unwrap().is_empty() && t["lag_messages"] == 0
        });
        if caught_up {
            break body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never sampled caught up: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Every service's groups are watched, each of its topics.
    let groups: Vec<&str> = snapshot["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["group"].as_str().unwrap())
        .collect();
    for group in [
        "catalog",
        "orders",
        "inventory",
        "payments",
        "notifications",
    ] {
        assert!(groups.contains(&group), "{group} missing from {groups:?}");
    }
    // Caught up: OK with no lag (an idle, caught-up topic is never STOPPED).
    let inventory = topic(&snapshot, "orders", "inventory").unwrap();
    assert_eq!(inventory["status"], "OK", "{inventory}");
    assert_eq!(inventory["lag_messages"], 0);
    // And as gauges.
    let metrics = app.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("consumer_lag_status{")
                && l.contains("group=\"orders\"")
                && l.contains("status=\"OK\"")
                && l.ends_with(" 1")),
        "no consumer_lag_status for orders in /metrics"
    );
    app.stop().await;
}

fn topic<'a>(snapshot: &'a Value, group: &str, topic: &str) -> Option<&'a Value> {
    snapshot["groups"]
        .as_array()?
        .iter()
        .find(|g| g["group"] == group)?["topics"]
        .as_array()?
        .iter()
        .find(|t| t["topic"] == topic)
}
