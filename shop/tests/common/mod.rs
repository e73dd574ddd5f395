//! Black-box helpers: the platform on port 0 with a fresh data directory per test.

#![allow(dead_code)]

use std::time::Duration;

use serde_json::{json, Value};
use shop::config::Config;
use shop::platform::Platform;

pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    platform: Option<Platform>,
    _dir: tempfile::TempDir,
    /// PostgreSQL databases (one per service and one for the log), dropped after the app.
    _databases: Vec<eddy_testkit::TestDb>,
    _streams: Option<NatsStreams>,
}

/// Deletes a test's JetStream streams when dropped (also when the test failed).
pub struct NatsStreams {
    config: eddy_nats::NatsConfig,
}

impl NatsStreams {
    pub fn new(config: eddy_nats::NatsConfig) -> Self {
        Self { config }
    }
}

impl Drop for NatsStreams {
    fn drop(&mut self) {
        let config = self.config.clone();
        eddy_testkit::block_on_own_runtime(async move {
            if let Ok(nats) = eddy_nats::Nats::connect(config).await {
                for topic in ["catalog", "orders", "inventory", "payments"] {
                    let _ = nats.delete_topic(topic).await;
                    let _ = nats.delete_topic(&format!("{topic}.dlq")).await;
                }
            }
        });
    }
}

/// Test settings: port 0 everywhere, a fast provider that never declines, quick retries.
pub fn test_config(dir: &std::path::Path) -> Config {
    let mut config = Config {
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.provider.listen = "127.0.0.1:0".parse().unwrap();
    config.provider.latency_ms = 1;
    config.provider.decline_rate = 0.0;
    config.consumer.backoff_initial_ms = 20;
    config.consumer.backoff_max_ms = 200;
    config.databases.sqlite_synchronous = shop::config::SqliteSync::Normal;
    config.log_level = "warn".to_owned();
    config
}

pub async fn spawn_app(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    tweak(&mut config);
    let platform = shop::platform::start(config)
        .await
        .expect("the platform starts");
    TestApp {
        base: format!("http://{}", platform.api_addr),
        http: reqwest::Client::new(),
        platform: Some(platform),
        _dir: dir,
        _databases: Vec::new(),
        _streams: None,
    }
    .ready()
    .await
}

/// The platform with every service on its own PostgreSQL database, events on NATS
/// JetStream (streams under a prefix of this test's own).
pub async fn spawn_app_on_postgres_and_nats(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let prefix = format!("t{}", uuid::Uuid::now_v7().simple());
    let streams = NatsStreams {
        config: eddy_nats::NatsConfig {
            url: std::env::var("EDDYTEST_NATS_URL")
                .unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned()),
            stream_prefix: format!("SHOPTEST_{prefix}"),
            subject_prefix: format!("shoptest.{prefix}"),
            ..eddy_nats::NatsConfig::default()
        },
    };
    let nats = streams.config.clone();
    let mut app = spawn_app_on_postgres(move |config| {
        config.broker.kind = shop::config::BrokerKind::Nats;
        config.broker.nats_url = nats.url.clone();
        config.broker.nats_stream_prefix = nats.stream_prefix.clone();
        config.broker.nats_subject_prefix = nats.subject_prefix.clone();
        tweak(config);
    })
    .await;
    app._streams = Some(streams);
    app
}

/// The platform with every service on its own fresh PostgreSQL database (and the log on
/// another), as in scale-out mode.
pub async fn spawn_app_on_postgres(tweak: impl FnOnce(&mut Config)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    let mut databases = Vec::new();
    for _ in 0..6 {
        databases.push(eddy_testkit::TestDb::postgres().await);
    }
    let url = |i: usize| databases[i].url().to_owned();
    config.databases.catalog = url(0);
    config.databases.orders = url(1);
    config.databases.inventory = url(2);
    config.databases.payments = url(3);
    config.databases.notifications = url(4);
    config.databases.log = url(5);
    tweak(&mut config);
    let platform = shop::platform::start(config)
        .await
        .expect("the platform starts on PostgreSQL");
    TestApp {
        base: format!("http://{}", platform.api_addr),
        http: reqwest::Client::new(),
        platform: Some(platform),
        _dir: dir,
        _databases: databases,
        _streams: None,
    }
    .ready()
    .await
}

impl TestApp {
    /// The url of a service's PostgreSQL database (apps from [`spawn_app_on_postgres`]).
    pub fn database_url(&self, service: &str) -> &str {
        let index = [
            "catalog",
            "orders",
            "inventory",
            "payments",
            "notifications",
            "log",
        ]
        .iter()
        .position(|s| *s == service)
        .expect("a service name");
        self._databases[index].url()
    }

    pub fn data_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// Stops this platform and starts another on the same data directory (SQLite
    /// files and embedded log), configured by `tweak` over the test settings: the same
    /// installation with other services, or after a restart.
    pub async fn restart(mut self, tweak: impl FnOnce(&mut Config)) -> TestApp {
        if let Some(platform) = self.platform.take() {
            platform.stop().await.expect("a clean shutdown");
        }
        let mut config = test_config(self._dir.path());
        tweak(&mut config);
        let platform = shop::platform::start(config)
            .await
            .expect("the platform starts again");
        self.base = format!("http://{}", platform.api_addr);
        self.platform = Some(platform);
        self.ready().await
    }

    /// Waits until `/health/ready` answers 200 — every consumer subscribed — as a load
    /// balancer would before sending traffic (at most 60 s).
    pub async fn ready(self) -> TestApp {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let (status, body) = self.get_json("/health/ready").await;
            if status == 200 {
                return self;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the platform never became ready: {body}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(mut self) {
        if let Some(platform) = self.platform.take() {
            platform.stop().await.expect("a clean shutdown");
        }
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// The `/metrics` page.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Creates a product and waits until orders accept it (orders learn of it by event).
    pub async fn product(&self, price_cents: i64, stock: i64) -> String {
        let sku = format!("sku-{}", uuid::Uuid::now_v7().simple());
        let response = self
            .post("/v1/products", &json!({"sku": sku, "name": "Thing", "price_cents": price_cents, "currency": "EUR", "stock": stock}))
            .await;
        assert_eq!(response.status(), 201);
        let product: Value = response.json().await.unwrap();
        product["id"].as_str().unwrap().to_owned()
    }

    /// Places an order, retrying while the product is not yet known to orders.
    pub async fn order(&self, customer: &str, lines: Value, key: Option<&str>) -> Value {
        let headers: Vec<(&str, &str)> = key.map(|k| ("idempotency-key", k)).into_iter().collect();
        self.order_with_headers(customer, lines, &headers).await
    }

    /// [`TestApp::order`] with these request headers (an idempotency key, a
    /// `traceparent`, …).
    pub async fn order_with_headers(
        &self,
        customer: &str,
        lines: Value,
        headers: &[(&str, &str)],
    ) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let mut request = self
                .http
                .post(format!("{}/v1/orders", self.base))
                .json(&json!({"customer_id": customer, "lines": lines}));
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            if status == 202 {
                return body;
            }
            assert!(
                status == 422
                    && body["type"]
                        .as_str()
                        .unwrap_or("")
                        .ends_with("unknown-product")
                    && tokio::time::Instant::now() < deadline,
                "order rejected: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls the order until it leaves PENDING.
    pub async fn settled(&self, order_id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (status, order) = self.get_json(&format!("/v1/orders/{order_id}")).await;
            assert_eq!(status, 200);
            if order["status"] != "PENDING" {
                return order;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "order {order_id} never settled"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls until the product shows `stock`.
    pub async fn wait_stock(&self, product_id: &str, stock: i64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let (_, product) = self.get_json(&format!("/v1/products/{product_id}")).await;
            if product["stock"] == stock {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "stock stayed {} instead of {stock}",
                product["stock"]
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn charges(&self, order_id: &str) -> Vec<Value> {
        let (status, body) = self
            .get_json(&format!("/v1/payments?order_id={order_id}"))
            .await;
        assert_eq!(status, 200);
        body["items"].as_array().unwrap().clone()
    }
}

/// Every order of `customer`, through the paginated listing at `base`.
pub async fn all_orders(http: &reqwest::Client, base: &str, customer: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/customers/{customer}/orders?limit=100");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = http.get(url).send().await.unwrap().json().await.unwrap();
        out.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return out,
        }
    }
}

/// Waits until no order of `customer` is PENDING; after `patience`, the pending ones.
pub async fn try_settled_orders(
    http: &reqwest::Client,
    base: &str,
    customer: &str,
    patience: Duration,
) -> Result<Vec<Value>, Vec<Value>> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let orders = all_orders(http, base, customer).await;
        if orders.iter().all(|o| o["status"] != "PENDING") {
            return Ok(orders);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(orders
                .into_iter()
                .filter(|o| o["status"] == "PENDING")
                .collect());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The invariants after a storm: every order is settled; a confirmed order has exactly
/// one captured charge and a cancelled one none; and each product's stock equals its
/// starting stock minus what confirmed orders took. Returns (confirmed, cancelled).
pub async fn check_outcomes(
    http: &reqwest::Client,
    base: &str,
    orders: &[Value],
    stock_at_start: &std::collections::HashMap<String, i64>,
) -> (usize, usize) {
    let mut taken: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
    let (mut confirmed, mut cancelled) = (0, 0);
    for order in orders {
        let id = order["id"].as_str().unwrap();
        let charges: Value = http
            .get(format!("{base}/v1/payments?order_id={id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let captured = charges["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["status"] == "captured")
            .count();
        assert!(captured <= 1, "order {id} charged {captured} times");
        match order["status"].as_str().unwrap() {
            "CONFIRMED" => {
                confirmed += 1;
                assert_eq!(captured, 1, "confirmed order {id} has its charge");
                for line in order["lines"].as_array().unwrap() {
                    *taken
                        .entry(line["product_id"].as_str().unwrap().to_owned())
                        .or_default() += line["quantity"].as_i64().unwrap();
                }
            }
            "CANCELLED" => {
                cancelled += 1;
                assert_eq!(captured, 0, "cancelled order {id} was not charged");
            }
            other => panic!("order {id} is {other}"),
        }
    }
    for (product, start) in stock_at_start {
        let expected = start - taken.get(product).copied().unwrap_or(0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let p: Value = http
                .get(format!("{base}/v1/products/{product}"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if p["stock"] == expected {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "product {product}: stock {} but {expected} expected",
                p["stock"]
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    (confirmed, cancelled)
}
