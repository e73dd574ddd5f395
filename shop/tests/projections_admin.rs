//! `shop projections rebuild --url …`: a projection rebuilt by a running platform through
//! its admin API, followed until it is swapped in, while the views keep serving.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::spawn_app;
use serde_json::{json, Value};
use shop::config::Secret;

const TOKEN: &str = "projections-admin-test-token-0123456789abcd";

fn shop(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_shop"))
        .args(args)
        .env_remove("EDDY_ADMIN__TOKEN")
        .env_remove("EDDY_ADMIN_URL")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_platform_rebuilds_its_order_views_through_the_admin_api() {
    let app = spawn_app(|config| config.admin.token = Secret::new(TOKEN)).await;
    let product = app.product(300, 20).await;
    let mut ids = Vec::new();
    for customer in ["ida", "jon"] {
        let order = app
            .order(
                customer,
                json!([{"product_id": product, "quantity": 1}]),
                None,
            )
            .await;
        let id = order["id"].as_str().unwrap().to_owned();
        app.settled(&id).await;
        ids.push(id);
    }
    let status = shop(&[
        "projections",
        "status",
        "--url",
        &app.base,
        "--token",
        TOKEN,
        "--json",
    ]);
    assert!(status.status.success(), "{status:?}");
    let before: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(before[0]["name"], "order_views");
    let generation = before[0]["generation"].as_u64().unwrap();

    let rebuilt = shop(&[
        "projections",
        "rebuild",
        "--url",
        &app.base,
        "--token",
        TOKEN,
        "--json",
    ]);
    assert!(rebuilt.status.success(), "{rebuilt:?}");
    let after: Value = serde_json::from_slice(&rebuilt.stdout).unwrap();
    assert_eq!(
        after[0]["generation"].as_u64().unwrap(),
        generation + 1,
        "{after}"
    );
    assert!(after[0]["rebuilding"].is_null(), "{after}");
    assert_eq!(after[0]["position"], after[0]["head"], "{after}");
    // The rebuilt views serve the same orders.
    for id in &ids {
        let (status, order) = app.get_json(&format!("/v1/orders/{id}")).await;
        assert_eq!(status, 200);
        assert_ne!(order["status"], "PENDING");
    }

    // Without the token: refused, an error exit; an unknown projection: 404.
    let refused = shop(&[
        "projections",
        "rebuild",
        "--url",
        &app.base,
        "--token",
        "wrong-token-0123456789abcdef-0123456789",
    ]);
    assert_eq!(refused.status.code(), Some(1));
    let unknown = app
        .http
        .post(format!("{}/admin/projections/nothing/rebuild", app.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    app.stop().await;
}
