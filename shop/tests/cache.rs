//! Product and order reads through the cache: every write and every event that changes
//! a product or an order reaches the next read at once (TTLs set far beyond the test's
//! length, so only invalidation can explain a fresh value), values land in Redis, and
//! a second node sharing the Redis sees a write within milliseconds.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::spawn_app;
use eddy_cache::Cache;
use serde_json::json;
use shop::catalog::http::ProductView;

fn hits(metrics: &str, cache: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with("cache_requests_total{")
                && l.contains(&format!("cache=\"{cache}\""))
                && l.contains("level=\"l1\"")
                && l.contains("result=\"hit\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The sum of the `prefix` series of `cache` whose labels include `label`.
fn counter(metrics: &str, prefix: &str, cache: &str, label: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.starts_with(prefix) && l.contains(&format!("cache=\"{cache}\"")) && l.contains(label)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_come_from_the_cache_and_every_change_reaches_them_at_once() {
    let redis_url = eddy_testkit::redis::redis_url();
    let prefix = format!("t{}", uuid::Uuid::now_v7().simple());
    let app = spawn_app(|c| {
        c.cache.redis_url = redis_url.clone();
        c.cache.key_prefix = prefix.clone();
        c.cache.products_ttl_secs = 3600;
        c.cache.orders_ttl_secs = 3600;
        c.cache.stale_max_secs = 7200;
        // Slow enough that the order below is read (and cached) while still pending.
        c.provider.latency_ms = 300;
    })
    .await;
    let product = app.product(500, 10).await;
    let path = format!("/v1/products/{product}");
    assert_eq!(app.get_json(&path).await.1["price_cents"], 500);
    // Inventory answers the product's creation with its stock (`StockChanged`), which
    // invalidates the product once, a moment later: wait for that first.
    let deadline = Instant::now() + Duration::from_secs(10);
    while counter(
        &app.metrics().await,
        "cache_invalidations_total{",
        "products",
        "source=\"event\"",
    ) < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the stock event never invalidated the product"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app.get_json(&path).await.1["price_cents"], 500);
    let before = hits(&app.metrics().await, "products");
    for _ in 0..5 {
        assert_eq!(app.get_json(&path).await.1["price_cents"], 500);
    }
    assert!(
        hits(&app.metrics().await, "products") >= before + 5.0,
        "reads came from L1"
    );

    // The value is in Redis for other nodes.
    let client = redis::Client::open(redis_url.as_str()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{prefix}:products:v:{product}");
    let stored: Option<String> = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(stored.unwrap().contains("\"price_cents\":500"));

    // A second node: its own L1, the same Redis; it loads over HTTP if it must.
    let node_b: Cache<ProductView> = Cache::redis(
        shop::platform::cache::cache_config(
            &shop::config::CacheSettings {
                redis_url: redis_url.clone(),
                key_prefix: prefix.clone(),
                stale_max_secs: 7200,
                ..Default::default()
            },
            "products",
            3600,
        ),
        &redis_url,
    )
    .unwrap();
    // Node b loads from the catalog's database, as another catalog process would.
    let catalog_url = common::test_config(app.data_dir()).database_url(shop::config::Database::Of(
        shop::service::ServiceName::Catalog,
    ));
    let db = eddy_sql::Db::connect(&eddy_sql::DbConfig::new(catalog_url))
        .await
        .unwrap();
    let loads = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let read_b = |product: String| {
        let node_b = node_b.clone();
        let loads = loads.clone();
        let db = db.clone();
        async move {
            let key = product.clone();
            node_b
                .get_or_load(&product, move || async move {
                    loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let mut conn = shop::problem::read_conn(&db).await?;
                    let found = shop::catalog::store::load(&mut conn, &key).await?;
                    Ok::<_, eddy_core::Error>(found.map(ProductView::from))
                })
                .await
                .unwrap()
                .unwrap()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !node_b.backplane_connected() {
        assert!(
            Instant::now() < deadline,
            "node b's backplane never came up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Inventory's first StockChanged invalidates the product once after its creation:
    // wait for the catalog's copy to settle, read it here, and node b finds it in Redis.
    app.wait_stock(&product, 10).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.get_json(&path).await.1["price_cents"], 500);
    assert_eq!(read_b(product.clone()).await.price_cents, 500);
    assert_eq!(
        loads.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "node b read the platform's value from Redis"
    );

    // An operator's write: the next read here is the new value, and node b follows.
    let response = app
        .http
        .put(format!("{}{path}", app.base))
        .json(&json!({"price_cents": 700}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        app.get_json(&path).await.1["price_cents"],
        700,
        "the writer reads its own write"
    );
    let written = Instant::now();
    loop {
        if read_b(product.clone()).await.price_cents == 700 {
            break;
        }
        assert!(
            written.elapsed() < Duration::from_secs(2),
            "node b kept the old price"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    println!(
        "node b saw the new price {:?} after the write returned",
        written.elapsed()
    );

    // An event: an order reserves stock, inventory says so, the catalog's view follows;
    // the order's status changes reach its reads the same way.
    let order = app
        .order(
            "carol",
            json!([{"product_id": product, "quantity": 3}]),
            None,
        )
        .await;
    let order_id = order["id"].as_str().unwrap().to_owned();
    assert_eq!(
        app.get_json(&format!("/v1/orders/{order_id}")).await.1["status"],
        "PENDING"
    );
    let settled = app.settled(&order_id).await;
    assert_eq!(settled["status"], "CONFIRMED", "{settled}");
    app.wait_stock(&product, 7).await;
    let _: i64 = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_cache_off_reads_go_to_the_database() {
    let app = spawn_app(|c| c.cache.enabled = false).await;
    let product = app.product(500, 10).await;
    let path = format!("/v1/products/{product}");
    for _ in 0..3 {
        assert_eq!(app.get_json(&path).await.1["price_cents"], 500);
    }
    // A change behind the platform's back shows at once: nothing kept the old value.
    let catalog_url = common::test_config(app.data_dir()).database_url(shop::config::Database::Of(
        shop::service::ServiceName::Catalog,
    ));
    let db = eddy_sql::Db::connect(&eddy_sql::DbConfig::new(catalog_url))
        .await
        .unwrap();
    sqlx::query("UPDATE products SET price_cents = 900 WHERE id = $1")
        .bind(&product)
        .execute(db.pool())
        .await
        .unwrap();
    assert_eq!(app.get_json(&path).await.1["price_cents"], 900);
    assert_eq!(app.get_json("/v1/products/not-an-id").await.0, 404);
    app.stop().await;
}
