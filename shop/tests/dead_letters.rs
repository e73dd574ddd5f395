//! Dead letters in the platform, through the admin API and `shop dlq`: a notification
//! that cannot be sent is dead-lettered and kept by the notifications service, grouped
//! by fingerprint; once the sender is fixed, `shop dlq redrive --rate 50/s` hands each
//! back exactly once and the group empties; every operation is in the audit. And the
//! other operations commands (`shop outbox`, `shop lag`, `shop breakers`) on the same
//! platform.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{spawn_app, TestApp};
use serde_json::{json, Value};
use shop::config::Secret;

const TOKEN: &str = "dead-letter-test-token-0123456789abcdef-0123";

/// `shop dlq --json …` against `app`; its exit code and JSON.
fn dlq(app: &TestApp, args: &[&str]) -> (i32, Value) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_shop"))
        .args(["dlq", "--url", &app.base, "--token", TOKEN, "--json"])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let value = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    assert!(
        output.status.success() || value.is_null(),
        "{args:?}: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), value)
}

/// Notifications sent, per order, read from the notifications service's database.
async fn notifications_per_order(app: &TestApp) -> Vec<(String, i64)> {
    let url = format!("sqlite://{}/notifications.db", app.data_dir().display());
    let db = eddy_sql::Db::connect(&eddy_sql::DbConfig::new(url))
        .await
        .unwrap();
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT order_id, COUNT(*) FROM notifications GROUP BY order_id ORDER BY order_id",
    )
    .fetch_all(db.pool())
    .await
    .unwrap();
    db.close().await;
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_notification_is_kept_grouped_and_redriven_once_when_fixed() {
    let app = spawn_app(|config| {
        config.admin.token = Secret::new(TOKEN);
        config.notifications.failure_rate = 1.0;
        config.consumer.attempts_max = 2;
    })
    .await;
    let product = app.product(500, 100).await;
    let mut orders = Vec::new();
    for customer in ["ann", "bob", "cat"] {
        let order = app
            .order(
                customer,
                json!([{"product_id": product, "quantity": 1}]),
                None,
            )
            .await;
        let id = order["id"].as_str().unwrap().to_owned();
        app.settled(&id).await;
        orders.push(id);
    }
    orders.sort();

    // Three letters, one failure: one group in the overview and in `shop dlq groups`.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let groups = loop {
        let (status, groups) = dlq(&app, &["groups", "--service", "notifications"]);
        assert_eq!(status, 0);
        if groups["groups"][0]["count"] == 3 {
            break groups;
        }
        assert!(tokio::time::Instant::now() < deadline, "{groups}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let groups = groups["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_eq!(groups[0]["group"], "notifications");
    let fingerprint = groups[0]["fingerprint"].as_str().unwrap().to_owned();
    let (_, listed) = dlq(
        &app,
        &[
            "list",
            "--service",
            "notifications",
            "--fingerprint",
            &fingerprint,
        ],
    );
    let letters = listed["letters"].as_array().unwrap();
    assert_eq!(letters.len(), 3);
    assert!(letters.iter().all(|l| l["origin_topic"] == "orders"));
    assert!(notifications_per_order(&app).await.is_empty());

    // Unknown services and letters are problems, not panics; without the token, 401.
    let (status, _) = dlq(
        &app,
        &["show", "--service", "notifications", "no-such-letter"],
    );
    assert_eq!(status, 1);
    let (status, _) = dlq(&app, &["list", "--service", "billing"]);
    assert_eq!(status, 1);
    let refused = app
        .http
        .get(format!("{}/admin/dead-letters", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    // The sender fixed (a restart without failures), the group redriven at 50/s.
    let app = app
        .restart(|config| {
            config.admin.token = Secret::new(TOKEN);
        })
        .await;
    let (_, dry) = dlq(
        &app,
        &[
            "redrive",
            "--service",
            "notifications",
            "--fingerprint",
            &fingerprint,
            "--dry-run",
        ],
    );
    assert_eq!(dry["redriven"], 3, "{dry}");
    let (status, report) = dlq(
        &app,
        &[
            "redrive",
            "--service",
            "notifications",
            "--fingerprint",
            &fingerprint,
            "--rate",
            "50/s",
        ],
    );
    assert_eq!(status, 0);
    assert_eq!(report["state"], "done", "{report}");
    assert_eq!(report["redriven"], 3, "{report}");
    // A finished job stays finished whatever it is asked.
    let job = report["job"].as_str().unwrap().to_owned();
    let (status, cancelled) = dlq(&app, &["cancel", "--service", "notifications", &job]);
    assert_eq!(
        (status, &cancelled["state"]),
        (0, &json!("done")),
        "{cancelled}"
    );

    // Each order notified exactly once; the group is empty; a second redrive sends none.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let sent = notifications_per_order(&app).await;
        if sent.len() == 3 {
            assert!(sent.iter().all(|(_, n)| *n == 1), "{sent:?}");
            assert_eq!(
                sent.iter().map(|(o, _)| o.clone()).collect::<Vec<_>>(),
                orders
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{sent:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, overview) = dlq(&app, &["overview"]);
    let notifications = overview["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "notifications")
        .unwrap();
    assert_eq!(notifications["open"], 0, "{overview}");
    let (_, again) = dlq(
        &app,
        &["redrive", "--service", "notifications", "--rate", "50"],
    );
    assert_eq!(again["redriven"], 0, "{again}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(notifications_per_order(&app)
        .await
        .iter()
        .all(|(_, n)| *n == 1));

    // The other operations commands read the same admin API.
    for (command, list) in [
        ("outbox", "services"),
        ("lag", "groups"),
        ("breakers", "breakers"),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_shop"))
            .args([command, "--url", &app.base, "--token", TOKEN, "--json"])
            .output()
            .unwrap();
        assert!(output.status.success(), "shop {command}: {output:?}");
        let value: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert!(value[list].is_array(), "shop {command}: {value}");
    }
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_shop"))
        .args([
            "outbox",
            "--url",
            &app.base,
            "--token",
            "wrong-token-0123456789abcdef-0123456789",
        ])
        .output()
        .unwrap();
    assert_eq!(
        refused.status.code(),
        Some(1),
        "a wrong token is an error exit"
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));

    // Audited: the dry run and the redrives, by the CLI's user.
    let (_, audit) = dlq(&app, &["audit", "--service", "notifications"]);
    let operations: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["operation"].as_str().unwrap())
        .collect();
    assert!(operations.contains(&"redrive-dry-run"), "{operations:?}");
    assert_eq!(operations.iter().filter(|o| **o == "redrive").count(), 2);
    assert!(audit["entries"][0]["actor"]
        .as_str()
        .unwrap()
        .ends_with("(shop dlq)"));
    app.stop().await;
}
