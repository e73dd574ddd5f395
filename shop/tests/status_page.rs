//! The live status page (`/status`): its admin routes through HTTP, and the page itself in
//! a real headless browser — Debian's `chromium` driven by npm's `playwright-core`
//! (`shop/tests/status_page/status.test.mjs`; `.ci/run` installs both).
//!
//! The browser part needs `node`, `shop/tests/status_page/node_modules` (`npm ci` there)
//! and `/usr/bin/chromium`; missing any of them fails the test, naming what to install —
//! a skipped browser test would pass CI with the page broken.
//!
//! The dead letter is made before the browser starts: a platform whose notifications all
//! fail keeps one letter, then restarts with notifications working. Redriving with the
//! failure still on would fail again and bring a new letter back, so "the button clears
//! the group" could not be told from "the button did nothing"; after the restart a
//! cleared group stays cleared.
//!
//! The screenshot goes to `<target dir>/artifacts/status-page.png` (CI keeps it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{spawn_app, TestApp};
use serde_json::{json, Value};
use shop::config::Secret;

const TOKEN: &str = "status-page-test-token-0123456789abcdef-0123";
/// How long the browser test may take before it counts as hung.
const BROWSER_TEST_MAX: Duration = Duration::from_secs(180);
const CHROMIUM: &str = "/usr/bin/chromium";

async fn admin_get(app: &TestApp, path: &str) -> (u16, Value) {
    let response = app
        .http
        .get(format!("{}{path}", app.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Polls `GET /admin/status` until `ready` holds for its snapshot.
async fn snapshot_until(app: &TestApp, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, snapshot) = admin_get(app, "/admin/status").await;
        assert_eq!(status, 200, "{snapshot}");
        if ready(&snapshot) {
            return snapshot;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never happened: {snapshot}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn test_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/status_page")
}

/// Where the screenshot goes: `<target dir>/artifacts/status-page.png`.
fn screenshot_path() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("artifacts/status-page.png")
}

/// Fails, naming what to install, when the browser test cannot run here.
fn require_browser_tools() {
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.is_ok_and(|o| o.status.success()),
        "the status page test needs node: apt-get install nodejs npm (.ci/run does)"
    );
    assert!(
        test_dir().join("node_modules/playwright-core").is_dir(),
        "the status page test needs playwright-core: (cd shop/tests/status_page && npm ci) (.ci/run does)"
    );
    assert!(
        Path::new(CHROMIUM).exists(),
        "the status page test needs {CHROMIUM}: apt-get install chromium (.ci/run does)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_orders_live_and_redrives_a_dead_letter_in_a_real_browser() {
    require_browser_tools();
    let app = spawn_app(|config| {
        config.admin.token = Secret::new(TOKEN);
        config.notifications.failure_rate = 1.0;
        config.consumer.attempts_max = 2;
    })
    .await;

    // The page is public and holds no data; the admin API is what needs the token.
    let page = app
        .http
        .get(format!("{}/status", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("data-admin=\"on\""));
    let (status, _) = app.get_json("/admin/status").await;
    assert_eq!(status, 401);

    // One order whose notification fails: confirmed in the funnel, one dead letter.
    let product = app.product(500, 100).await;
    let order = app
        .order("ann", json!([{"product_id": product, "quantity": 1}]), None)
        .await;
    app.settled(order["id"].as_str().unwrap()).await;
    let snapshot = snapshot_until(&app, "a dead letter", |s| {
        s["dead_letters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["service"] == "notifications" && d["open"] == 1)
    })
    .await;
    assert_eq!(snapshot["funnel"]["placed"], 1, "{snapshot}");
    assert_eq!(snapshot["funnel"]["confirmed"], 1, "{snapshot}");
    assert!(snapshot["lag"]["groups"].is_array(), "{snapshot}");
    assert!(
        snapshot["outbox"].as_array().unwrap().len() == 5,
        "{snapshot}"
    );
    assert!(snapshot["breakers"].is_array(), "{snapshot}");
    let rates = snapshot_until(&app, "a rate", |s| {
        s["throughput"]["events_handled_per_sec"].is_number()
    })
    .await;
    assert!(rates["throughput"]["orders_placed_per_sec"].is_number());

    // The sender fixed: a redriven letter is delivered and its group stays gone.
    let app = app
        .restart(|config| {
            config.admin.token = Secret::new(TOKEN);
        })
        .await;

    let screenshot = screenshot_path();
    let script = test_dir().join("status.test.mjs");
    let (base, shot) = (app.base.clone(), screenshot.clone());
    let run = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .arg(base)
            .arg(TOKEN)
            .arg(shot)
            .output()
    });
    let output = tokio::time::timeout(BROWSER_TEST_MAX, run)
        .await
        .expect("the browser test finishes in time")
        .unwrap()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the browser test failed ({}):\n{stdout}\n{stderr}\nscreenshot: {}",
        output.status,
        screenshot.display()
    );
    assert!(
        screenshot.is_file(),
        "no screenshot at {}",
        screenshot.display()
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_admin_api_off_the_page_says_so_and_no_status_route_exists() {
    let app = spawn_app(|_| {}).await;
    let page = app
        .http
        .get(format!("{}/status", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("data-admin=\"off\""));
    assert_eq!(app.get_json("/admin/status").await.0, 404);
    assert_eq!(app.get_json("/admin/status/stream").await.0, 404);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_sends_snapshots_and_search_finds_an_order_by_its_event() {
    let app = spawn_app(|config| config.admin.token = Secret::new(TOKEN)).await;
    let product = app.product(500, 100).await;
    let order = app
        .order("bob", json!([{"product_id": product, "quantity": 1}]), None)
        .await;
    let id = order["id"].as_str().unwrap().to_owned();
    app.settled(&id).await;

    // Two snapshots arrive as server-sent events.
    let mut stream = app
        .http
        .get(format!("{}/admin/status/stream", app.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(
        stream.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut text = String::new();
    while text.matches("event: snapshot").count() < 2 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
            .await
            .expect("a snapshot within seconds")
            .unwrap()
            .expect("the stream goes on");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
    let snapshot: Value = serde_json::from_str(data).unwrap();
    assert_eq!(snapshot["funnel"]["confirmed"], 1, "{snapshot}");
    drop(stream);

    // By order id, then by the id of one of its events.
    let (status, found) = admin_get(&app, &format!("/admin/search/{id}")).await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["matched"], "order");
    assert_eq!(found["order"]["status"], "CONFIRMED");
    let event_id = found["events"][1]["event_id"].as_str().unwrap().to_owned();
    let (status, by_event) = admin_get(&app, &format!("/admin/search/{event_id}")).await;
    assert_eq!(status, 200, "{by_event}");
    assert_eq!(by_event["matched"], "event");
    assert_eq!(by_event["order_id"], id.as_str());
    let (status, _) = admin_get(&app, "/admin/search/no-such-thing").await;
    assert_eq!(status, 404);
    app.stop().await;
}
