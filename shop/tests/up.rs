//! `shop up --per-service` as a user runs it: the real binary supervising the five
//! services, the provider and the gateway on PostgreSQL; an order goes through, a child
//! killed with SIGKILL is restarted, and SIGTERM stops every process cleanly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use sqlx::Connection as _;

mod common;

use eddy_testkit::db::postgres_server_url as postgres;

/// A base port whose +0, +1 and +11…+15 are free.
fn free_base() -> u16 {
    for _ in 0..200 {
        let base = 20_000 + (uuid::Uuid::now_v7().as_u128() % 20_000) as u16;
        let free = [0u16, 1, 11, 12, 13, 14, 15]
            .iter()
            .all(|o| std::net::TcpListener::bind(("127.0.0.1", base + o)).is_ok());
        if free {
            return base;
        }
    }
    panic!("no free ports");
}

/// Drops the run's databases when dropped, also when the test failed.
struct Databases(String);

impl Drop for Databases {
    fn drop(&mut self) {
        let prefix = self.0.clone();
        eddy_testkit::block_on_own_runtime(async move { drop_databases(&prefix).await });
    }
}

async fn drop_databases(prefix: &str) {
    let mut admin = sqlx::PgConnection::connect(&format!("{}/postgres", postgres()))
        .await
        .unwrap();
    for name in [
        "catalog",
        "orders",
        "inventory",
        "payments",
        "notifications",
        "log",
    ] {
        let _ = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"{prefix}{name}\" WITH (FORCE)"
        ))
        .execute(&mut admin)
        .await;
    }
}

async fn ready(http: &reqwest::Client, base: &str, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if let Ok(answer) = http.get(format!("{base}/health/ready")).send().await {
            if answer.status() == 200 {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

fn pids_listening_on(port: u16) -> Vec<String> {
    let out = std::process::Command::new("pgrep")
        .args(["-f", "--", &format!("--listen 127.0.0.1:{port}")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shop_up_runs_restarts_and_stops_every_process() {
    let prefix = format!("up_{}_", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let _databases = Databases(prefix.clone());
    let base = free_base();
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("up.log")).unwrap();
    let mut up = tokio::process::Command::new(env!("CARGO_BIN_EXE_shop"))
        .args(["up", "--per-service", "--port", &base.to_string()])
        .args(["--postgres", &postgres(), "--database-prefix", &prefix])
        .env("EDDY_LOG_LEVEL", "warn")
        .current_dir(dir.path())
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let output = || std::fs::read_to_string(dir.path().join("up.log")).unwrap_or_default();
    let gateway = format!("http://127.0.0.1:{base}");
    let http = reqwest::Client::new();
    assert!(
        ready(&http, &gateway, Duration::from_secs(180)).await,
        "not ready: {}",
        output()
    );

    // An order through the gateway settles.
    let product: Value = http
        .post(format!("{gateway}/v1/products"))
        .json(&json!({"sku": "up-1", "name": "Thing", "price_cents": 100, "currency": "EUR", "stock": 5}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let line = json!({"customer_id": "u", "lines": [{"product_id": product["id"], "quantity": 1}]});
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let order: Value = loop {
        let answer = http
            .post(format!("{gateway}/v1/orders"))
            .json(&line)
            .send()
            .await
            .unwrap();
        if answer.status() == 202 {
            break answer.json().await.unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "orders never knew the product"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let settled = common::try_settled_orders(&http, &gateway, "u", Duration::from_secs(60)).await;
    assert!(settled.is_ok(), "the order never settled: {}", output());
    assert_eq!(settled.unwrap_or_default()[0]["id"], order["id"]);

    // The orders process dies: it is restarted, and the platform is ready again.
    let orders_port = base + 12;
    let victims = pids_listening_on(orders_port);
    assert_eq!(victims.len(), 1, "{victims:?}");
    std::process::Command::new("kill")
        .args(["-KILL", &victims[0]])
        .status()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        ready(&http, &gateway, Duration::from_secs(120)).await,
        "{}",
        output()
    );
    let again = pids_listening_on(orders_port);
    assert_eq!(again.len(), 1);
    assert_ne!(again, victims, "a new orders process");
    assert!(output().contains("[orders] exited"), "{}", output());

    // SIGTERM stops everything, cleanly.
    let pid = up.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), up.wait())
        .await
        .expect("shop up stops")
        .unwrap();
    assert!(status.success(), "{status}: {}", output());
    assert!(
        output().contains("stopped every process cleanly"),
        "{}",
        output()
    );
    for offset in [1u16, 11, 12, 13, 14, 15] {
        assert!(
            pids_listening_on(base + offset).is_empty(),
            "a child on +{offset} survived"
        );
    }
}
