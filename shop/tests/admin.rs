//! The admin API through a real socket: absent without a token, closed to anyone
//! without the right one, every request audited, rate-limited, each read-only route's
//! JSON, and the public API unchanged beside it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{spawn_app, TestApp};
use serde_json::Value;
use shop::config::{AuthConfig, Secret};

const TOKEN: &str = "admin-test-token-0123456789abcdef-0123456789";
const WRONG: &str = "not-the-admin-token-0123456789abcdef-01234";

fn with_admin(config: &mut shop::config::Config) {
    config.admin.token = Secret::new(TOKEN);
}

/// `GET path` with `token` as the bearer (none for `None`): status, headers, body.
async fn admin_get(
    app: &TestApp,
    path: &str,
    token: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = app.http.get(format!("{}{path}", app.base));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (
        status,
        headers,
        response.json().await.unwrap_or(Value::Null),
    )
}

/// The newest `limit` audit entries, newest first.
async fn audit(app: &TestApp, limit: u32) -> Vec<Value> {
    let (status, _, body) =
        admin_get(app, &format!("/admin/audit?limit={limit}"), Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    body["items"].as_array().unwrap().clone()
}

fn is_problem(headers: &reqwest::header::HeaderMap) -> bool {
    headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes() == b"application/problem+json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_configured_the_admin_routes_do_not_exist() {
    let app = spawn_app(|_| {}).await;
    for path in ["/admin/outbox", "/admin/audit", "/admin/lag", "/admin"] {
        let (status, headers, body) = admin_get(&app, path, Some(TOKEN)).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(is_problem(&headers), "{path}");
        assert!(headers.get("www-authenticate").is_none(), "{path}");
    }
    // The same 404 as any unknown route.
    let (_, _, unknown) = admin_get(&app, "/no/such/route", None).await;
    let (_, _, admin) = admin_get(&app, "/admin/outbox", None).await;
    assert_eq!(admin, unknown);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_admin_token_opens_the_admin_routes_and_every_request_is_audited() {
    let app = spawn_app(with_admin).await;

    // No Authorization: 401 with the Bearer challenge, as a problem.
    let (status, headers, body) = admin_get(&app, "/admin/outbox", None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert!(is_problem(&headers));
    // A wrong token: 401, and nothing of the state.
    let (status, headers, body) = admin_get(&app, "/admin/outbox", Some(WRONG)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert!(body.get("services").is_none());
    // Unknown admin paths are behind the token too: 401 without, 404 with.
    let (status, _, _) = admin_get(&app, "/admin/nothing-here", None).await;
    assert_eq!(status, 401);
    let (status, headers, _) = admin_get(&app, "/admin/nothing-here", Some(TOKEN)).await;
    assert_eq!(status, 404);
    assert!(is_problem(&headers));

    // The right token: each route's JSON.
    let (status, _, outbox) = admin_get(&app, "/admin/outbox", Some(TOKEN)).await;
    assert_eq!(status, 200, "{outbox}");
    let services = outbox["services"].as_array().unwrap();
    let names: Vec<&str> = services
        .iter()
        .map(|s| s["service"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "catalog",
            "orders",
            "inventory",
            "payments",
            "notifications"
        ]
    );
    for service in services {
        assert!(service["pending"].is_u64(), "{service}");
        assert!(service["parked"].is_u64(), "{service}");
        assert!(service["published_kept"].is_u64(), "{service}");
        let has_backlog = service["pending"].as_u64().unwrap() > 0;
        assert_eq!(
            service["oldest_pending_age_seconds"].is_f64(),
            has_backlog,
            "{service}"
        );
        assert_eq!(service["oldest_pending_at"].is_string(), has_backlog);
    }

    let (status, _, lag) = admin_get(&app, "/admin/lag", Some(TOKEN)).await;
    assert_eq!(status, 200, "{lag}");
    assert!(lag["groups"].is_array(), "{lag}");
    // The same document as the public /lag (its groups; samples may differ in time).
    let (_, public_lag) = app.get_json("/lag").await;
    let groups = |v: &Value| -> Vec<String> {
        v["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["group"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(groups(&lag), groups(&public_lag));

    let (status, _, breakers) = admin_get(&app, "/admin/breakers", Some(TOKEN)).await;
    assert_eq!(status, 200, "{breakers}");
    let breakers = breakers["breakers"].as_array().unwrap();
    assert!(
        breakers
            .iter()
            .any(|b| b["name"] == "payment-provider" && b["state"] == "closed"),
        "{breakers:?}"
    );

    let (status, _, projections) = admin_get(&app, "/admin/projections", Some(TOKEN)).await;
    assert_eq!(status, 200, "{projections}");
    let projections = projections["projections"].as_array().unwrap();
    assert_eq!(projections.len(), 1, "{projections:?}");
    let views = &projections[0];
    assert_eq!(views["name"], "order_views");
    for field in ["generation", "position", "head"] {
        assert!(views[field].is_u64(), "{field}: {views}");
    }
    assert!(views["rebuilding"].is_null(), "{views}");

    // One audit entry per request above, newest first: the refused ones anonymous or
    // under the wrong token's fingerprint, the rest under the admin token's.
    let entries = audit(&app, 100).await;
    let seen: Vec<(String, u64)> = entries
        .iter()
        .rev()
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_owned(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, u64)> = [
        ("/admin/outbox", 401),
        ("/admin/outbox", 401),
        ("/admin/nothing-here", 401),
        ("/admin/nothing-here", 404),
        ("/admin/outbox", 200),
        ("/admin/lag", 200),
        ("/admin/breakers", 200),
        ("/admin/projections", 200),
    ]
    .into_iter()
    .map(|(p, s)| (p.to_owned(), s))
    .collect();
    assert_eq!(seen, expected);
    let oldest_first: Vec<&Value> = entries.iter().rev().collect();
    assert_eq!(oldest_first[0]["who"], "anonymous");
    let wrong = oldest_first[1]["who"].as_str().unwrap();
    let right = oldest_first[4]["who"].as_str().unwrap();
    assert!(wrong.starts_with("token:") && right.starts_with("token:"));
    assert_ne!(wrong, right);
    for entry in &entries {
        assert_eq!(entry["method"], "GET");
        assert_eq!(entry["client"], "127.0.0.1");
        assert!(entry["at"].is_string(), "{entry}");
        let text = entry.to_string();
        assert!(!text.contains(TOKEN) && !text.contains(WRONG), "{text}");
    }
    // Reading the audit is audited too (after its answer).
    let entries = audit(&app, 1).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["path"], "/admin/audit");
    assert_eq!(entries[0]["status"], 200);

    // A limit outside its bound is a 400 problem.
    for limit in ["0", "1001", "many"] {
        let (status, headers, body) =
            admin_get(&app, &format!("/admin/audit?limit={limit}"), Some(TOKEN)).await;
        assert_eq!(status, 400, "{limit}: {body}");
        assert!(is_problem(&headers));
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_requests_beyond_the_rate_limit_get_429_with_retry_after() {
    let app = spawn_app(|config| {
        with_admin(config);
        config.admin.requests_per_minute_max = 3;
    })
    .await;
    // Refused requests count too: guessing is bounded.
    let (status, _, _) = admin_get(&app, "/admin/breakers", Some(WRONG)).await;
    assert_eq!(status, 401);
    for _ in 0..2 {
        let (status, _, body) = admin_get(&app, "/admin/breakers", Some(TOKEN)).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, headers, body) = admin_get(&app, "/admin/breakers", Some(TOKEN)).await;
    assert_eq!(status, 429, "{body}");
    assert!(is_problem(&headers));
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    // The public API has no part in the admin budget.
    let (status, _) = app.get_json("/v1/products").await;
    assert_eq!(status, 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_keeps_at_most_its_bound() {
    let app = spawn_app(|config| {
        with_admin(config);
        config.admin.audit_len_max = 3;
    })
    .await;
    for _ in 0..6 {
        let (status, _, _) = admin_get(&app, "/admin/breakers", Some(TOKEN)).await;
        assert_eq!(status, 200);
    }
    let entries = audit(&app, 100).await;
    assert_eq!(entries.len(), 3, "{entries:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_api_is_unchanged_beside_the_admin_api() {
    let app = spawn_app(|config| {
        with_admin(config);
        config.auth = AuthConfig {
            enabled: true,
            secret: Secret::new("an-hs256-test-secret-of-32-bytes-or-more"),
            ..AuthConfig::default()
        };
    })
    .await;
    // Product reads stay open without any token.
    let (status, body) = app.get_json("/v1/products").await;
    assert_eq!(status, 200, "{body}");
    // Writes still want an [auth] JWT; the admin token is not one.
    let response = app
        .http
        .post(format!("{}/v1/products", app.base))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"sku": "x-1", "name": "X", "price_cents": 100, "currency": "EUR", "stock": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    // The admin routes take the admin token even with [auth] on, and no JWT opens them.
    let (status, _, body) = admin_get(&app, "/admin/breakers", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let operator = shop::auth::mint(
        &AuthConfig {
            enabled: true,
            secret: Secret::new("an-hs256-test-secret-of-32-bytes-or-more"),
            ..AuthConfig::default()
        },
        shop::auth::Role::Operator,
        "ops",
    )
    .unwrap();
    let (status, _, _) = admin_get(&app, "/admin/breakers", Some(&operator)).await;
    assert_eq!(status, 401);
    // The public fallbacks are the same: an unknown route is a 404 problem.
    let (status, _) = app.get_json("/no/such/route").await;
    assert_eq!(status, 404);
    app.stop().await;
}
