//! `GET /v1/products`: the catalog a page at a time, and a product found by its SKU.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::spawn_app;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn products_come_a_page_at_a_time_and_one_is_found_by_its_sku() {
    let app = spawn_app(|_| {}).await;
    let mut created = Vec::new();
    for i in 0..5 {
        let response = app
            .post("/v1/products", &json!({"sku": format!("page-{i}"), "name": "Thing", "price_cents": 100, "currency": "EUR", "stock": 1}))
            .await;
        assert_eq!(response.status(), 201);
        let product: Value = response.json().await.unwrap();
        created.push(product["id"].as_str().unwrap().to_owned());
    }
    let mut seen = Vec::new();
    let mut path = "/v1/products?limit=2".to_owned();
    loop {
        let (status, page) = app.get_json(&path).await;
        assert_eq!(status, 200, "{page}");
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|p| p["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/products?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, created, "oldest first, each once");

    let (_, found) = app.get_json("/v1/products?sku=page-3").await;
    let items = found["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], created[3].as_str());
    let (_, none) = app.get_json("/v1/products?sku=nope").await;
    assert_eq!(none["items"].as_array().unwrap().len(), 0);

    let (status, problem) = app.get_json("/v1/products?cursor=").await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(app.get_json("/v1/products?limit=0").await.0, 400);
    app.stop().await;
}
