//! `shop gateway` in front of service processes: its readiness covers every service
//! (inventory and notifications too, which have no public routes) and names the one
//! that is not ready; a dead upstream's 503 names its url; it serves `/metrics`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::spawn_app;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// A url nothing listens on.
const DEAD: &str = "http://127.0.0.1:9";

async fn gateway(
    tweak: impl FnOnce(&mut shop::config::GatewayConfig),
) -> (String, CancellationToken) {
    gateway_with(|c| tweak(&mut c.gateway)).await
}

async fn gateway_with(
    tweak: impl FnOnce(&mut shop::config::Config),
) -> (String, CancellationToken) {
    let mut config = shop::config::Config::default();
    config.gateway.listen = "127.0.0.1:0".parse().unwrap();
    tweak(&mut config);
    let listener = tokio::net::TcpListener::bind(config.gateway.listen)
        .await
        .unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = shop::gateway::router(&config).unwrap();
    let stop = CancellationToken::new();
    let stopping = stop.clone();
    shop::platform::server::serve(
        listener,
        router,
        config.connection_limits(),
        stopping,
        "gateway",
    );
    (base, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_is_ready_only_when_every_service_is_and_names_the_one_that_is_not() {
    let app = spawn_app(|_| {}).await;
    let all_here = |g: &mut shop::config::GatewayConfig| {
        for url in [
            &mut g.catalog_url,
            &mut g.orders_url,
            &mut g.inventory_url,
            &mut g.payments_url,
            &mut g.notifications_url,
        ] {
            *url = app.base.clone();
        }
    };
    let (ready, stop_ready) = gateway(all_here).await;
    let http = reqwest::Client::new();
    let answer = http
        .get(format!("{ready}/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let metrics = http.get(format!("{ready}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);

    let (blind, stop_blind) = gateway(|g| {
        all_here(g);
        g.inventory_url = DEAD.to_owned();
    })
    .await;
    let answer = http
        .get(format!("{blind}/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 503, "inventory is down");
    let problem: Value = answer.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("inventory") && detail.contains(DEAD),
        "{detail}"
    );

    let (dead, stop_dead) = gateway(|g| {
        all_here(g);
        g.catalog_url = DEAD.to_owned();
    })
    .await;
    let answer = http
        .get(format!("{dead}/v1/products/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 503);
    let problem: Value = answer.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains(DEAD),
        "the 503 names the url that did not answer: {problem}"
    );
    for stop in [stop_ready, stop_blind, stop_dead] {
        stop.cancel();
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_forwards_tokens_and_stops_bad_ones_itself() {
    use shop::auth::{mint, Role};
    let auth = shop::config::AuthConfig {
        enabled: true,
        secret: shop::config::Secret::new("a-gateway-test-secret-of-32-bytes-at-least"),
        ..shop::config::AuthConfig::default()
    };
    let on_app = auth.clone();
    let app = spawn_app(move |c| c.auth = on_app).await;
    let base = app.base.clone();
    let on_gateway = auth.clone();
    let (gateway, stop) = gateway_with(move |c| {
        c.auth = on_gateway;
        c.gateway.catalog_url = base.clone();
        c.gateway.orders_url = base.clone();
        c.gateway.payments_url = base;
    })
    .await;
    let http = reqwest::Client::new();
    let product = serde_json::json!({"sku": "gw-1", "name": "Thing", "price_cents": 100, "currency": "EUR", "stock": 1});
    let operator = mint(&auth, Role::Operator, "ops").unwrap();
    let created = http
        .post(format!("{gateway}/v1/products"))
        .bearer_auth(&operator)
        .json(&product)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "the token reached catalog");
    let anonymous = http
        .post(format!("{gateway}/v1/products"))
        .json(&product)
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    let forged = http
        .post(format!("{gateway}/v1/products"))
        .bearer_auth("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.AAAA")
        .json(&product)
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    let problem: Value = forged.json().await.unwrap();
    assert_eq!(problem["status"], 401);
    stop.cancel();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_answers_its_own_errors_as_problems() {
    let (gateway, stop) = gateway_with(|c| c.gateway.catalog_url = DEAD.to_owned()).await;
    let http = reqwest::Client::new();
    let wrong_method = http
        .delete(format!("{gateway}/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), 405);
    assert_eq!(
        wrong_method.headers()["content-type"],
        "application/problem+json"
    );
    // Refused before any upstream is asked, readable although sent in full.
    let oversized = http
        .post(format!("{gateway}/v1/products"))
        .header("content-type", "application/json")
        .body(vec![b' '; 6 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(oversized.status(), 413);
    let problem: Value = oversized.json().await.unwrap();
    assert_eq!(problem["status"], 413);
    stop.cancel();
}
