//! The served OpenAPI document and the router agree: every documented operation is a
//! route the platform answers, every documented path refuses the methods it does not
//! document, and every schema the document refers to is in it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::spawn_app;
use serde_json::Value;

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// `path` with each `{param}` filled in.
fn concrete(path: &str) -> String {
    path.replace("{id}", "no-such-id")
}

/// Every `$ref` in `value`.
fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                if k == "$ref" {
                    out.push(v.as_str().unwrap().to_owned());
                }
                refs(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_document_matches_the_routes_the_router_has() {
    let app = spawn_app(|_| {}).await;
    let (status, document) = app.get_json("/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(document["info"]["title"], "Eddy shop");
    let paths = document["paths"].as_object().unwrap();
    for expected in [
        "/v1/products",
        "/v1/products/{id}",
        "/v1/orders",
        "/v1/orders/{id}",
        "/v1/customers/{id}/orders",
        "/v1/payments",
        "/health/live",
        "/health/ready",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(paths.contains_key(expected), "{expected} is documented");
    }
    for (path, item) in paths {
        let url = format!("{}{}", app.base, concrete(path));
        for method in METHODS {
            let documented = item.get(method).is_some();
            let request = app
                .http
                .request(method.to_uppercase().parse().unwrap(), &url)
                .header("content-type", "application/json")
                .body("{}");
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let fallback = status == 404 && body["detail"] == "no such route";
            if documented {
                assert!(
                    !fallback && status != 405,
                    "{method} {path} is documented but not routed: {status} {body}"
                );
                let operation = &item[method];
                assert!(operation["responses"]
                    .as_object()
                    .is_some_and(|r| !r.is_empty()));
                assert!(
                    operation["summary"].is_string() || operation["description"].is_string(),
                    "{method} {path} says what it does"
                );
            } else {
                assert_eq!(
                    status, 405,
                    "{method} {path} is not documented, so not routed"
                );
            }
        }
    }
    let mut referenced = Vec::new();
    refs(&document, &mut referenced);
    assert!(!referenced.is_empty());
    for reference in referenced {
        let name = reference.strip_prefix("#/components/schemas/").unwrap();
        assert!(
            document["components"]["schemas"].get(name).is_some(),
            "{reference} is defined"
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undocumented_path_is_not_routed() {
    let app = spawn_app(|_| {}).await;
    let (status, body) = app.get_json("/v1/refunds").await;
    assert_eq!(status, 404);
    assert_eq!(body["detail"], "no such route");
    app.stop().await;
}

/// The schema `name` of the document's components.
fn schema<'a>(document: &'a Value, name: &str) -> &'a Value {
    &document["components"]["schemas"][name]
}

/// Boundary values of a property as the document states them: (value, accepted).
fn boundaries(property: &Value) -> Vec<(Value, bool)> {
    let mut cases = Vec::new();
    if let Some(max) = property["maxLength"].as_u64() {
        // Characters, not bytes: two bytes each.
        cases.push((Value::from("é".repeat(max as usize)), true));
        cases.push((Value::from("é".repeat(max as usize + 1)), false));
    }
    if property["minLength"].as_u64() == Some(1) {
        cases.push((Value::from(""), false));
    }
    if property["pattern"].as_str() == Some("\\S") {
        cases.push((Value::from("   "), false));
    }
    if let Some(min) = property["minimum"].as_i64() {
        cases.push((Value::from(min), true));
        cases.push((Value::from(min - 1), false));
    }
    if let Some(max) = property["maximum"].as_i64() {
        cases.push((Value::from(max), true));
        cases.push((Value::from(max + 1), false));
    }
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_and_the_server_agree_on_every_limit() {
    let app = spawn_app(|_| {}).await;
    let (_, document) = app.get_json("/openapi.json").await;

    // Products: every documented bound of every field, at and past it.
    let fields = schema(&document, "NewProduct")["properties"]
        .as_object()
        .unwrap()
        .clone();
    let mut checked = 0;
    for (field, property) in &fields {
        for (value, accepted) in boundaries(property) {
            let mut product = serde_json::json!({
                "sku": format!("sku-{}", uuid::Uuid::now_v7().simple()),
                "name": "Thing", "price_cents": 100, "currency": "EUR", "stock": 1,
            });
            product[field] = value.clone();
            let status = app.post("/v1/products", &product).await.status().as_u16();
            assert_eq!(
                status,
                if accepted { 201 } else { 422 },
                "{field} = {value}: the document says {}",
                if accepted { "accepted" } else { "refused" }
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 12,
        "only {checked} bounds documented for NewProduct"
    );

    // A change may leave a field out, but not send null (the document says not nullable).
    let product = app.product(100, 1).await;
    let update = schema(&document, "ProductUpdate");
    for (field, property) in update["properties"].as_object().unwrap() {
        let nullable = property["type"]
            .as_array()
            .is_some_and(|types| types.iter().any(|t| t == "null"));
        assert!(!nullable, "{field} is documented as nullable");
        let response = app
            .http
            .put(format!("{}/v1/products/{product}", app.base))
            .json(&serde_json::json!({ field: null }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 422, "{field}: null");
    }

    // Orders: the customer, the lines and the quantity.
    let order = schema(&document, "NewOrder");
    let line = schema(&document, "NewLine");
    let place = |body: Value| {
        let app = &app;
        async move { app.post("/v1/orders", &body).await.status().as_u16() }
    };
    let known = app.product(100, 10_000).await;
    // Wait until orders knows the product.
    app.order(
        "agree",
        serde_json::json!([{"product_id": known, "quantity": 1}]),
        None,
    )
    .await;
    for (value, accepted) in boundaries(&order["properties"]["customer_id"]) {
        let body = serde_json::json!({"customer_id": value, "lines": [{"product_id": known, "quantity": 1}]});
        assert_eq!(
            place(body).await,
            if accepted { 202 } else { 422 },
            "customer_id = {value}"
        );
    }
    for (value, accepted) in boundaries(&line["properties"]["quantity"]) {
        let body = serde_json::json!({"customer_id": "agree", "lines": [{"product_id": known, "quantity": value}]});
        assert_eq!(
            place(body).await,
            if accepted { 202 } else { 422 },
            "quantity = {value}"
        );
    }
    let lines = &order["properties"]["lines"];
    let (min, max) = (
        lines["minItems"].as_u64().unwrap() as usize,
        lines["maxItems"].as_u64().unwrap() as usize,
    );
    for (len, accepted) in [(min - 1, false), (min, true), (max, true), (max + 1, false)] {
        let body = serde_json::json!({"customer_id": "agree", "lines": vec![serde_json::json!({"product_id": known, "quantity": 1}); len]});
        assert_eq!(
            place(body).await,
            if accepted { 202 } else { 422 },
            "{len} lines"
        );
    }

    // The page size and the Idempotency-Key header.
    let parameters = |path: &str, method: &str| {
        document["paths"][path][method]["parameters"]
            .as_array()
            .unwrap()
            .clone()
    };
    let limit = parameters("/v1/customers/{id}/orders", "get")
        .into_iter()
        .find(|p| p["name"] == "limit")
        .unwrap();
    for (value, accepted) in boundaries(&limit["schema"]) {
        let (status, _) = app
            .get_json(&format!("/v1/customers/agree/orders?limit={value}"))
            .await;
        assert_eq!(status, if accepted { 200 } else { 400 }, "limit = {value}");
    }
    let limit = parameters("/v1/products", "get")
        .into_iter()
        .find(|p| p["name"] == "limit")
        .unwrap();
    for (value, accepted) in boundaries(&limit["schema"]) {
        let (status, _) = app.get_json(&format!("/v1/products?limit={value}")).await;
        assert_eq!(
            status,
            if accepted { 200 } else { 400 },
            "products limit = {value}"
        );
    }
    let key = parameters("/v1/orders", "post")
        .into_iter()
        .find(|p| p["name"] == "Idempotency-Key")
        .unwrap();
    let max = key["schema"]["maxLength"].as_u64().unwrap() as usize;
    assert_eq!(key["schema"]["minLength"], 1);
    for (value, accepted) in [
        (String::new(), false),
        ("k".repeat(max), true),
        ("k".repeat(max + 1), false),
    ] {
        let status = app
            .http
            .post(format!("{}/v1/orders", app.base))
            .header("idempotency-key", value.as_str())
            .json(&serde_json::json!({"customer_id": "agree", "lines": [{"product_id": known, "quantity": 1}]}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(
            status,
            if accepted { 202 } else { 400 },
            "key of {} characters",
            value.len()
        );
    }
    // Given twice: refused, whichever the client meant.
    let status = app
        .http
        .post(format!("{}/v1/orders", app.base))
        .header("idempotency-key", "first")
        .header("idempotency-key", "second")
        .json(&serde_json::json!({"customer_id": "agree", "lines": [{"product_id": known, "quantity": 1}]}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 400);
    app.stop().await;
}
