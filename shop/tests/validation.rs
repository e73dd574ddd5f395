//! Every kind of bad input gets a 4xx problem response and writes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::spawn_app;
use serde_json::{json, Value};

async fn send_raw(
    app: &common::TestApp,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, Value, String) {
    let response = app
        .http
        .post(format!("{}{path}", app.base))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let kind = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, response.json().await.unwrap_or(Value::Null), kind)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_orders_get_a_problem_and_write_nothing() {
    let app = spawn_app(|_| {}).await;
    let product = app.product(100, 10).await;
    app.order(
        "warmup",
        json!([{"product_id": product, "quantity": 1}]),
        None,
    )
    .await;

    let line = |q: Value| json!({"product_id": product, "quantity": q});
    let too_many: Vec<Value> = (0..51).map(|_| line(json!(1))).collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("malformed JSON", b"{\"customer_id\": \"mallory\", ".to_vec()),
        ("wrong type", serde_json::to_vec(&json!({"customer_id": "mallory", "lines": [line(json!("two"))]})).unwrap()),
        ("missing field", serde_json::to_vec(&json!({"customer_id": "mallory"})).unwrap()),
        ("unknown field", serde_json::to_vec(&json!({"customer_id": "mallory", "lines": [line(json!(1))], "discount": 100})).unwrap()),
        ("no lines", serde_json::to_vec(&json!({"customer_id": "mallory", "lines": []})).unwrap()),
        ("zero quantity", serde_json::to_vec(&json!({"customer_id": "mallory", "lines": [line(json!(0))]})).unwrap()),
        ("negative quantity", serde_json::to_vec(&json!({"customer_id": "mallory", "lines": [line(json!(-3))]})).unwrap()),
        ("absurd quantity", serde_json::to_vec(&json!({"customer_id": "mallory", "lines": [line(json!(1_000_000_000))]})).unwrap()),
        ("quantity beyond i64", b"{\"customer_id\": \"mallory\", \"lines\": [{\"product_id\": \"x\", \"quantity\": 99999999999999999999999}]}".to_vec()),
        ("unknown product", serde_json::to_vec(&json!({"customer_id": "mallory", "lines": [{"product_id": "no-such-product", "quantity": 1}]})).unwrap()),
        ("too many lines", serde_json::to_vec(&json!({"customer_id": "mallory", "lines": too_many})).unwrap()),
        ("empty customer", serde_json::to_vec(&json!({"customer_id": "", "lines": [line(json!(1))]})).unwrap()),
        ("oversized body", serde_json::to_vec(&json!({"customer_id": "mallory", "lines": [line(json!(1))], "padding": "x".repeat(200 * 1024)})).unwrap()),
    ];
    for (name, body) in cases {
        let (status, problem, content_type) =
            send_raw(&app, "/v1/orders", "application/json", body).await;
        assert!((400..500).contains(&status), "{name}: got {status}");
        assert_eq!(content_type, "application/problem+json", "{name}");
        assert_eq!(problem["status"], status, "{name}: {problem}");
        assert!(
            problem["type"].is_string() && problem["title"].is_string(),
            "{name}: {problem}"
        );
    }
    let (status, _, _) = send_raw(&app, "/v1/orders", "text/plain", b"hello".to_vec()).await;
    assert_eq!(status, 415);
    let bad_key = app
        .http
        .post(format!("{}/v1/orders", app.base))
        .header("idempotency-key", "k".repeat(500))
        .json(&json!({"customer_id": "mallory", "lines": [line(json!(1))]}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_key.status(), 400);

    let (_, page) = app.get_json("/v1/customers/mallory/orders").await;
    assert_eq!(
        page["items"],
        json!([]),
        "no invalid request wrote an order"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_products_get_a_problem_and_write_nothing() {
    let app = spawn_app(|_| {}).await;
    let valid =
        json!({"sku": "bad-1", "name": "Thing", "price_cents": 100, "currency": "EUR", "stock": 1});
    let with = |field: &str, value: Value| {
        let mut body = valid.clone();
        body[field] = value;
        body
    };
    let cases = [
        ("negative price", with("price_cents", json!(-1))),
        (
            "absurd price",
            with("price_cents", json!(1_000_000_000_000_i64)),
        ),
        ("negative stock", with("stock", json!(-5))),
        ("bad currency", with("currency", json!("euro"))),
        ("empty name", with("name", json!(""))),
        ("empty sku", with("sku", json!(""))),
        ("wrong type", with("stock", json!("many"))),
    ];
    for (name, body) in cases {
        let response = app.post("/v1/products", &body).await;
        assert_eq!(response.status(), 422, "{name}");
    }
    let response = app.post("/v1/products", &valid).await;
    assert_eq!(
        response.status(),
        201,
        "nothing was written under sku bad-1 before"
    );
    assert_eq!(
        app.post("/v1/products", &valid).await.status(),
        409,
        "a sku is unique"
    );
    let product: Value = response.json().await.unwrap();
    let id = product["id"].as_str().unwrap();
    let put = |body: Value| {
        app.http
            .put(format!("{}/v1/products/{id}", app.base))
            .json(&body)
            .send()
    };
    assert_eq!(put(json!({})).await.unwrap().status(), 422);
    assert_eq!(put(json!({"stock": -1})).await.unwrap().status(), 422);
    assert_eq!(put(json!({"colour": "red"})).await.unwrap().status(), 422);
    let (_, unchanged) = app.get_json(&format!("/v1/products/{id}")).await;
    assert_eq!(unchanged["stock"], 1);
    assert_eq!(
        app.http
            .put(format!("{}/v1/products/nope", app.base))
            .json(&json!({"stock": 1}))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_deadline_passed_is_refused_and_writes_nothing() {
    let app = spawn_app(|_| {}).await;
    let response = app
        .http
        .post(format!("{}/v1/products", app.base))
        .header("eddy-deadline", "2001-01-01T00:00:00Z")
        .json(&json!({"sku": "late-1", "name": "Late", "price_cents": 100, "currency": "EUR", "stock": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    let problem: Value = response.json().await.unwrap();
    assert!(problem["type"]
        .as_str()
        .unwrap()
        .ends_with("deadline-exceeded"));
    let retry = app.post("/v1/products", &json!({"sku": "late-1", "name": "Late", "price_cents": 100, "currency": "EUR", "stock": 1})).await;
    assert_eq!(retry.status(), 201, "the refused request wrote nothing");
    app.stop().await;
}
