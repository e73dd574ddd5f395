//! Access control through a real socket: who may do what (a table of role × route ×
//! status), what a bad token gets, that failures are counted and rate-limited, and that
//! an open platform on a public address refuses to start.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::spawn_app;
use serde_json::{json, Value};
use shop::auth::{mint, Role};
use shop::config::{AuthConfig, Secret, TokenAlgorithm};

const SECRET: &str = "an-hs256-test-secret-of-32-bytes-or-more";

fn hs256() -> AuthConfig {
    AuthConfig {
        enabled: true,
        secret: Secret::new(SECRET),
        ..AuthConfig::default()
    }
}

fn token(auth: &AuthConfig, role: Role, subject: &str) -> String {
    mint(auth, role, subject).unwrap()
}

/// Who sends a request in the table.
#[derive(Debug, Clone, Copy)]
enum Who {
    Nobody,
    Alice,
    Bob,
    Operator,
}

async fn send(
    app: &common::TestApp,
    auth: &AuthConfig,
    who: Who,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = app.http.request(
        reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
        format!("{}{path}", app.base),
    );
    let bearer = match who {
        Who::Nobody => None,
        Who::Alice => Some(token(auth, Role::Customer, "alice")),
        Who::Bob => Some(token(auth, Role::Customer, "bob")),
        Who::Operator => Some(token(auth, Role::Operator, "ops")),
    };
    if let Some(bearer) = bearer {
        request = request.bearer_auth(bearer);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    if status >= 400 {
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{method} {path} as {who:?}"
        );
    }
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_may_do_what_role_by_route() {
    let auth = hs256();
    let app = spawn_app(|c| c.auth = hs256()).await;
    // Set up as the operator and as alice: a product, and an order of alice's.
    let (status, product) = send(&app, &auth, Who::Operator, "POST", "/v1/products",
        Some(json!({"sku": "auth-1", "name": "Thing", "price_cents": 100, "currency": "EUR", "stock": 100}))).await;
    assert_eq!(status, 201);
    let product = product["id"].as_str().unwrap().to_owned();
    let line = json!([{"product_id": product, "quantity": 1}]);
    let order = loop {
        let (status, order) = send(
            &app,
            &auth,
            Who::Alice,
            "POST",
            "/v1/orders",
            Some(json!({"customer_id": "alice", "lines": line})),
        )
        .await;
        if status == 202 {
            break order["id"].as_str().unwrap().to_owned();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Settled (its charge recorded) before the table reads it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, seen) = send(
            &app,
            &auth,
            Who::Operator,
            "GET",
            &format!("/v1/orders/{order}"),
            None,
        )
        .await;
        if seen["status"] != "PENDING" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the order never settled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let new_product = || {
        Some(
            json!({"sku": format!("auth-{}", uuid::Uuid::now_v7().simple()), "name": "T", "price_cents": 1, "currency": "EUR", "stock": 1}),
        )
    };
    let place_for = |customer: &str| Some(json!({"customer_id": customer, "lines": line}));
    let orders_of = |customer: &str| format!("/v1/customers/{customer}/orders");
    let product_path = format!("/v1/products/{product}");
    let order_path = format!("/v1/orders/{order}");
    let charges_path = format!("/v1/payments?order_id={order}");
    let reprice = || Some(json!({"price_cents": 120}));
    use Who::*;
    let table: Vec<(Who, &str, String, Option<Value>, u16)> = vec![
        // Product reads are public; writes are the operator's.
        (Nobody, "GET", product_path.clone(), None, 200),
        (Alice, "GET", product_path.clone(), None, 200),
        (Nobody, "POST", "/v1/products".into(), new_product(), 401),
        // Without the right, the body is not even looked at: 401/403, not 422.
        (Nobody, "POST", "/v1/products".into(), Some(json!({})), 401),
        (Alice, "POST", "/v1/products".into(), Some(json!({})), 403),
        (Nobody, "POST", "/v1/orders".into(), Some(json!({})), 401),
        (Nobody, "GET", "/v1/payments".into(), None, 401),
        (Alice, "POST", "/v1/products".into(), new_product(), 403),
        (Operator, "POST", "/v1/products".into(), new_product(), 201),
        (Nobody, "PUT", product_path.clone(), reprice(), 401),
        (Bob, "PUT", product_path.clone(), reprice(), 403),
        (Operator, "PUT", product_path.clone(), reprice(), 200),
        // Orders: a customer places and reads their own.
        (Nobody, "POST", "/v1/orders".into(), place_for("alice"), 401),
        (Alice, "POST", "/v1/orders".into(), place_for("alice"), 202),
        (Bob, "POST", "/v1/orders".into(), place_for("alice"), 403),
        (
            Operator,
            "POST",
            "/v1/orders".into(),
            place_for("carol"),
            202,
        ),
        (Nobody, "GET", order_path.clone(), None, 401),
        (Alice, "GET", order_path.clone(), None, 200),
        // Another customer's order is as absent as a missing one: no existence leak.
        (Bob, "GET", order_path.clone(), None, 404),
        (Operator, "GET", order_path.clone(), None, 200),
        (Nobody, "GET", orders_of("alice"), None, 401),
        (Alice, "GET", orders_of("alice"), None, 200),
        (Bob, "GET", orders_of("alice"), None, 403),
        (Operator, "GET", orders_of("alice"), None, 200),
        // Charges.
        (Nobody, "GET", charges_path.clone(), None, 401),
        (Alice, "GET", charges_path.clone(), None, 200),
        (Bob, "GET", charges_path.clone(), None, 200),
        (Operator, "GET", charges_path.clone(), None, 200),
        // Operations stay open.
        (Nobody, "GET", "/health/live".into(), None, 200),
        (Nobody, "GET", "/health/ready".into(), None, 200),
        (Nobody, "GET", "/metrics".into(), None, 200),
        (Nobody, "GET", "/openapi.json".into(), None, 200),
    ];
    for (who, method, path, body, expected) in table {
        let (status, answer) = send(&app, &auth, who, method, &path, body).await;
        assert_eq!(status, expected, "{method} {path} as {who:?}: {answer}");
    }
    // Bob's view of alice's charges is empty; alice's and the operator's are not.
    let charges = |who| {
        let (app, auth, path) = (&app, &auth, charges_path.clone());
        async move {
            send(app, auth, who, "GET", &path, None).await.1["items"]
                .as_array()
                .unwrap()
                .len()
        }
    };
    assert_eq!(charges(Alice).await, 1);
    assert_eq!(charges(Operator).await, 1);
    assert_eq!(charges(Bob).await, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_401_are_counted_and_rate_limited_and_never_shown() {
    let auth = AuthConfig {
        failures_per_minute_max: 5,
        ..hs256()
    };
    let limits = auth.clone();
    let app = spawn_app(move |c| c.auth = limits).await;
    let path = "/v1/customers/alice/orders";
    // Expired long ago (beyond jsonwebtoken's 60 s of leeway).
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "alice", "role": "customer", "exp": 1_000}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap();
    let other_key = token(
        &AuthConfig {
            secret: Secret::new("another-secret-that-is-also-32-bytes-long"),
            ..auth.clone()
        },
        Role::Operator,
        "mallory",
    );
    let unknown_role = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "alice", "role": "admin", "exp": u64::MAX / 2}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap();
    let cases = [
        (format!("Bearer {expired}"), "expired"),
        (format!("Bearer {other_key}"), "not valid"),
        (format!("Bearer {unknown_role}"), "Bearer"),
        ("Basic YWxpY2U6cHc=".to_owned(), "Bearer"),
        ("Bearer not.a.jwt".to_owned(), "Bearer"),
    ];
    for (header, says) in &cases {
        let response = app
            .http
            .get(format!("{}{path}", app.base))
            .header("authorization", header)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{header}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let problem: Value = response.json().await.unwrap();
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.contains(says) || *says == "Bearer",
            "{header}: {detail}"
        );
        assert!(
            !detail.contains(header.trim_start_matches("Bearer ")),
            "the token is echoed"
        );
    }
    // Five failures from this address: the next attempt, even with a good token, waits.
    let good = token(&auth, Role::Customer, "alice");
    let response = app
        .http
        .get(format!("{}{path}", app.base))
        .bearer_auth(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "60");
    // Anonymous reads of public routes are not affected.
    assert_eq!(app.get_json("/health/live").await.0, 200);

    let metrics = app.metrics().await;
    for reason in ["expired", "invalid", "malformed", "rate_limited"] {
        assert!(
            metrics.contains(&format!("http_auth_failures_total{{reason=\"{reason}\"}}")),
            "{reason} not counted"
        );
    }
    assert!(!metrics.contains(SECRET) && !metrics.contains(&good) && !metrics.contains(&other_key));
    app.stop().await;
}

const ED25519_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIGGiBUrMfbFWCFBlm0ljJJ9eEgR8zLF/0IAHN3SnPQUw
-----END PRIVATE KEY-----
";
const ED25519_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAzVRWHhfWYpFPmKkCKLorIjxpZ3NpWprhixc82dQp8CY=
-----END PUBLIC KEY-----
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eddsa_tokens_verify_with_the_public_key_and_the_issuer_is_checked() {
    let keys = tempfile::tempdir().unwrap();
    let public = keys.path().join("public.pem");
    let private = keys.path().join("private.pem");
    std::fs::write(&public, ED25519_PUBLIC).unwrap();
    std::fs::write(&private, ED25519_PRIVATE).unwrap();
    let auth = AuthConfig {
        enabled: true,
        algorithm: TokenAlgorithm::EdDSA,
        public_key_file: public.clone(),
        private_key_file: private,
        issuer: "eddy-tests".to_owned(),
        ..AuthConfig::default()
    };
    // The platform holds only the public key.
    let verifying = AuthConfig {
        private_key_file: Default::default(),
        ..auth.clone()
    };
    let app = spawn_app(move |c| c.auth = verifying).await;
    let (status, _) = send(&app, &auth, Who::Operator, "POST", "/v1/products",
        Some(json!({"sku": "ed-1", "name": "Thing", "price_cents": 100, "currency": "EUR", "stock": 1}))).await;
    assert_eq!(status, 201);
    let elsewhere = AuthConfig {
        issuer: "someone-else".to_owned(),
        ..auth.clone()
    };
    let (status, _) = send(&app, &elsewhere, Who::Operator, "POST", "/v1/products",
        Some(json!({"sku": "ed-2", "name": "Thing", "price_cents": 100, "currency": "EUR", "stock": 1}))).await;
    assert_eq!(status, 401, "a token from another issuer");
    let hs = hs256();
    let (status, _) = send(&app, &hs, Who::Operator, "POST", "/v1/products",
        Some(json!({"sku": "ed-3", "name": "Thing", "price_cents": 100, "currency": "EUR", "stock": 1}))).await;
    assert_eq!(status, 401, "an HS256 token where EdDSA is configured");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_platform_on_a_public_address_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    config.server.listen = "0.0.0.0:0".parse().unwrap();
    let refused = config.validate().unwrap_err().to_string();
    assert!(
        refused.contains("server.listen (0.0.0.0:0) is not a loopback address and auth is off"),
        "{refused}"
    );
    assert!(refused.contains("auth.allow_open_network"), "{refused}");
    let started = shop::platform::start(config.clone()).await;
    assert!(started.is_err(), "the platform started open on 0.0.0.0");

    // Explicitly allowed, or with auth on, it starts.
    config.auth.allow_open_network = true;
    let platform = shop::platform::start(config.clone()).await.unwrap();
    platform.stop().await.unwrap();
    config.auth = hs256();
    config.validate().unwrap();

    // Auth on without a usable key is refused too.
    config.auth.secret = Secret::new("short");
    let refused = config.validate().unwrap_err().to_string();
    assert!(
        refused.contains("auth.secret must be at least 32 bytes"),
        "{refused}"
    );
}
