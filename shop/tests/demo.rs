//! `shop demo` against a running platform, with auth on: it signs its own tokens (an
//! operator's for products and reads, each customer's for their orders) and nothing is
//! refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::spawn_app;
use shop::config::{AuthConfig, Secret};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_with_auth_on_using_its_own_tokens() {
    let secret = "a-demo-test-secret-that-is-32-bytes-long";
    let app = spawn_app(|c| {
        c.auth = AuthConfig {
            enabled: true,
            secret: Secret::new(secret),
            ..AuthConfig::default()
        };
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shop.toml");
    std::fs::write(
        &file,
        format!("[auth]\nenabled = true\nsecret = \"{secret}\"\n"),
    )
    .unwrap();
    let report = shop::load::run(shop::load::LoadArgs {
        target: app.base.clone(),
        rate: 100.0,
        duration_secs: 2,
        concurrency: 8,
        read_ratio: 0.5,
        products: 3,
        stock: 1_000_000,
        quiet: true,
        config: Some(file),
    })
    .await
    .unwrap();
    assert!(report.orders_placed > 10, "{report}");
    assert_eq!(report.rejected_4xx, 0, "{report}");
    assert_eq!(report.errors, 0, "{report}");
    assert_eq!(report.pending, 0, "{report}");

    // Without the key, the demo is refused at its first write.
    let refused = shop::load::run(shop::load::LoadArgs {
        target: app.base.clone(),
        rate: 10.0,
        duration_secs: 1,
        concurrency: 1,
        read_ratio: 0.5,
        products: 1,
        stock: 1,
        quiet: true,
        config: None,
    })
    .await;
    assert!(refused.unwrap_err().to_string().contains("401"));
    app.stop().await;
}
