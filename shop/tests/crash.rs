//! The platform killed with SIGKILL while 200 orders are in flight, then started again
//! on the same data: every order ends CONFIRMED or CANCELLED, none is charged twice,
//! and stock adds up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

async fn start(data: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shop"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .env("EDDY_PROVIDER__LISTEN", "127.0.0.1:0")
        .env("EDDY_PROVIDER__LATENCY_MS", "5")
        .env("EDDY_PROVIDER__DECLINE_RATE", "0.1")
        .env("EDDY_CONSUMER__BACKOFF_INITIAL_MS", "20")
        .env("EDDY_CONSUMER__BACKOFF_MAX_MS", "200")
        .env("EDDY_LOG_LEVEL", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the shop binary starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(base) = line.strip_prefix("listening on ") {
                return base.trim().to_owned();
            }
        }
        panic!("the platform exited before listening");
    })
    .await
    .expect("the platform listens within a minute");
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hard_kill_mid_flight_loses_nothing_and_charges_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let (mut child, base) = start(dir.path()).await;

    let mut stock_at_start = HashMap::new();
    let mut products = Vec::new();
    for (i, stock) in [120i64, 1000].into_iter().enumerate() {
        let body = json!({"sku": format!("crash-{i}"), "name": "Thing", "price_cents": 250, "currency": "EUR", "stock": stock});
        let product: Value = http
            .post(format!("{base}/v1/products"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let id = product["id"].as_str().unwrap().to_owned();
        stock_at_start.insert(id.clone(), stock);
        products.push(id);
    }
    // Wait until orders knows both products (a probe order per product).
    for product in &products {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let response = http
                .post(format!("{base}/v1/orders"))
                .json(&json!({"customer_id": "crash", "lines": [{"product_id": product, "quantity": 1}]}))
                .send()
                .await
                .unwrap();
            if response.status() == 202 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // 200 orders at once; the process dies while they are in flight.
    let (accepted_tx, mut accepted_rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..200 {
        let (http, base, accepted_tx) = (http.clone(), base.clone(), accepted_tx.clone());
        let product = products[i % 2].clone();
        tokio::spawn(async move {
            let response = http
                .post(format!("{base}/v1/orders"))
                .header("idempotency-key", format!("crash-{i}"))
                .json(&json!({"customer_id": "crash", "lines": [{"product_id": product, "quantity": 1 + (i % 3)}]}))
                .send()
                .await;
            if let Ok(response) = response {
                if response.status() == 202 {
                    let _ = accepted_tx.send(());
                }
            }
        });
    }
    drop(accepted_tx);
    for _ in 0..60 {
        accepted_rx.recv().await;
    }
    child.kill().await.unwrap(); // SIGKILL: no drain, no goodbye
    let _ = child.wait().await;

    let (mut child, base) = start(dir.path()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let orders = loop {
        let orders = common::all_orders(&http, &base, "crash").await;
        if orders.iter().all(|o| o["status"] != "PENDING") {
            break orders;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "orders still pending after restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        orders.len() >= 62,
        "the accepted orders survived: {}",
        orders.len()
    );

    let (confirmed, cancelled) =
        common::check_outcomes(&http, &base, &orders, &stock_at_start).await;
    eprintln!(
        "{} orders: {confirmed} confirmed, {cancelled} cancelled",
        orders.len()
    );
    assert!(confirmed > 0 && cancelled > 0, "both outcomes occurred");
    child.kill().await.unwrap();
}
