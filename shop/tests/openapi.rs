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
