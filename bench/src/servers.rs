//! The benchmark's own server processes: the raw axum baseline, Eddy (the same
//! handlers behind the platform's HTTP stack, downstream calls behind Eddy's resilience
//! layers), and the downstream stub of S2. Each prints `listening on PORT` when ready.
//!
//! Endpoints (the peers in `bench/peers/` implement the same):
//! - `GET /health`
//! - `GET /orders/{id}` — S1: sleep 15 ms (the simulated store), answer the order JSON;
//! - `GET /aggregate` — S2: three sequential downstream calls (20, 35, 28 ms);
//! - `GET /aggregate-parallel` — S2: the same three calls at once;
//! - `POST /transform` — S3: parse a 2 KB order, compute totals, answer the summary;
//! - `GET /delay/{ms}` — the stub: sleep, answer `{"slept_ms": ms}`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use eddy_resilience::{
    BulkheadLayer, CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer, DeadlineLayer,
    RetryConfig, RetryLayer, RetrySafe,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// raw, eddy, stub, or shop (the platform, configured by EDDY_* variables).
    #[arg(long)]
    pub kind: String,
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    /// Base url of the S2 downstream stub.
    #[arg(long, default_value = "")]
    pub stub_url: String,
}

/// The S1 answer: what the platform's `GET /v1/orders/{id}` returns, give or take.
fn order_json(id: &str) -> Value {
    json!({
        "id": id, "customer_id": "customer-42", "status": "CONFIRMED",
        "lines": [
            {"product_id": "01a2084a-13c6-777b-8067-97378cf31d56", "quantity": 2, "unit_price_cents": 1250},
            {"product_id": "01a2084a-13c6-777b-8067-97378cf31d57", "quantity": 1, "unit_price_cents": 990}
        ],
        "total_cents": 3490, "currency": "EUR",
        "created_at": "2026-11-23T11:56:49.423838Z", "updated_at": "2026-11-23T11:56:49.47134Z"
    })
}

/// The S3 input: a fixed order of about 2 KB.
pub fn transform_input() -> Vec<u8> {
    let lines: Vec<Value> = (0..14)
        .map(|i| json!({"sku": format!("SKU-{i:05}"), "name": format!("Product number {i} with a name"), "quantity": 1 + i % 4, "unit_price_cents": 199 + 37 * i, "tax_rate": 0.2}))
        .collect();
    serde_json::to_vec(&json!({"order_id": "order-123456", "customer": {"id": "customer-42", "name": "Alice Example", "email": "alice@example.com"}, "currency": "eur", "lines": lines}))
        .unwrap_or_default()
}

#[derive(Debug, Deserialize)]
pub struct TransformIn {
    order_id: String,
    customer: Customer,
    currency: String,
    lines: Vec<LineIn>,
}

#[derive(Debug, Deserialize)]
struct Customer {
    id: String,
    name: String,
    #[allow(dead_code)]
    email: String,
}

#[derive(Debug, Deserialize)]
struct LineIn {
    sku: String,
    name: String,
    quantity: i64,
    unit_price_cents: i64,
    tax_rate: f64,
}

#[derive(Debug, Serialize)]
pub struct TransformOut {
    order_id: String,
    customer: String,
    currency: String,
    lines: Vec<LineOut>,
    subtotal_cents: i64,
    tax_cents: i64,
    total_cents: i64,
}

#[derive(Debug, Serialize)]
struct LineOut {
    sku: String,
    name: String,
    amount_cents: i64,
    tax_cents: i64,
}

/// The S3 work: totals, tax, upper-cased codes, lines sorted by amount.
pub fn transform(input: TransformIn) -> TransformOut {
    let mut lines: Vec<LineOut> = input
        .lines
        .into_iter()
        .map(|l| {
            let amount = l.quantity * l.unit_price_cents;
            LineOut {
                sku: l.sku.to_lowercase(),
                name: l.name.to_uppercase(),
                amount_cents: amount,
                tax_cents: (amount as f64 * l.tax_rate).round() as i64,
            }
        })
        .collect();
    lines.sort_by_key(|l| std::cmp::Reverse(l.amount_cents));
    let subtotal = lines.iter().map(|l| l.amount_cents).sum();
    let tax = lines.iter().map(|l| l.tax_cents).sum::<i64>();
    TransformOut {
        order_id: input.order_id,
        customer: format!("{} <{}>", input.customer.name, input.customer.id),
        currency: input.currency.to_uppercase(),
        lines,
        subtotal_cents: subtotal,
        tax_cents: tax,
        total_cents: subtotal + tax,
    }
}

/// A downstream GET as a tower service (so Eddy's layers can wrap it).
#[derive(Debug, Clone)]
struct Get(reqwest::Client);

#[derive(Debug, Clone)]
struct Url(String);

impl RetrySafe for Url {
    fn retry_safe(&self) -> bool {
        true // GET
    }
}

impl Service<Url> for Get {
    type Response = Value;
    type Error = BoxError;
    type Future = futures::future::BoxFuture<'static, Result<Value, BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, url: Url) -> Self::Future {
        let client = self.0.clone();
        Box::pin(async move {
            let response = client.get(url.0).send().await?.error_for_status()?;
            Ok(response.json::<Value>().await?)
        })
    }
}

type Downstream = tower::util::BoxCloneSyncService<Url, Value, BoxError>;

/// The handlers' state, behind one `Arc`: axum clones the state for every request,
/// whatever the route (S1's handler takes none), so a state that is not one pointer
/// charges every request the clone of each field — for Eddy the whole downstream stack
/// (bulkhead, retry, breaker, deadline), allocated and dropped per request. axum's
/// own advice; the same for every variant.
#[derive(Clone)]
struct AppState(Arc<Shared>);

struct Shared {
    downstream: Downstream,
    stub: Arc<str>,
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

async fn s1(Path(id): Path<String>) -> Json<Value> {
    tokio::time::sleep(Duration::from_millis(15)).await;
    Json(order_json(&id))
}

async fn s2_sequential(
    State(state): State<AppState>,
) -> Result<Json<Value>, axum::http::StatusCode> {
    let mut parts = Vec::new();
    for ms in [20, 35, 28] {
        let part = state
            .downstream
            .clone()
            .oneshot(Url(format!("{}/delay/{ms}", state.stub)))
            .await
            .map_err(|_| axum::http::StatusCode::BAD_GATEWAY)?;
        parts.push(part);
    }
    Ok(Json(json!({"parts": parts})))
}

async fn s2_parallel(State(state): State<AppState>) -> Result<Json<Value>, axum::http::StatusCode> {
    let calls = [20, 35, 28].map(|ms| {
        state
            .downstream
            .clone()
            .oneshot(Url(format!("{}/delay/{ms}", state.stub)))
    });
    let parts = futures::future::try_join_all(calls)
        .await
        .map_err(|_| axum::http::StatusCode::BAD_GATEWAY)?;
    Ok(Json(json!({"parts": parts})))
}

async fn s3(Json(input): Json<TransformIn>) -> Json<TransformOut> {
    Json(transform(input))
}

async fn delay(Path(ms): Path<u64>) -> Json<Value> {
    tokio::time::sleep(Duration::from_millis(ms.min(10_000))).await;
    Json(json!({"slept_ms": ms}))
}

fn app(kind: &str, stub_url: &str) -> anyhow::Result<Router> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?;
    let downstream: Downstream = if kind == "eddy" {
        // Eddy's defaults around every downstream call.
        let breaker = CircuitBreaker::new(CircuitBreakerConfig {
            name: "stub".into(),
            ..CircuitBreakerConfig::default()
        });
        tower::util::BoxCloneSyncService::new(
            ServiceBuilder::new()
                .layer(BulkheadLayer::new("stub", 1024, 1024))
                .layer(RetryLayer::new(RetryConfig::default()))
                .layer(CircuitBreakerLayer::new(breaker))
                .layer(DeadlineLayer::default())
                .service(Get(client)),
        )
    } else {
        tower::util::BoxCloneSyncService::new(Get(client))
    };
    let state = AppState(Arc::new(Shared {
        downstream,
        stub: Arc::from(stub_url.trim_end_matches('/')),
    }));
    let router = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/orders/{id}", get(s1))
        .route("/aggregate", get(s2_sequential))
        .route("/aggregate-parallel", get(s2_parallel))
        .route("/transform", post(s3))
        .route("/delay/{ms}", get(delay))
        .with_state(state);
    Ok(match kind {
        "eddy" => {
            let mut config = shop::config::Config::default();
            // The benchmark's load exceeds the platform's default shedding point on purpose
            // only in S1 (1,000 connections); give it room so shedding is not measured.
            config.server.concurrency_limit = 8192;
            shop::platform::platform_layers(router, &config)?
        }
        "raw" | "stub" => router,
        other => anyhow::bail!("unknown server kind {other}"),
    })
}

pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    if args.kind == "shop" {
        // The platform itself, configured by EDDY_* variables (S4 runs its orders service).
        return runtime.block_on(async move {
            let config = shop::config::Config::load(None)?;
            let platform = shop::platform::start(config).await?;
            println!("listening on {}", platform.api_addr.port());
            tokio::signal::ctrl_c().await?;
            platform.stop().await
        });
    }
    // The Eddy stack runs with the telemetry a shop process installs: warnings logged,
    // spans recorded only when EDDY_TRACING__OTLP_ENDPOINT names a collector.
    let _traces = if args.kind == "eddy" {
        let config = shop::config::Config::load(None)?;
        let traces = eddy_telemetry::Traces::for_service("bench", &config.tracing)
            .map_err(anyhow::Error::msg)?;
        eddy_telemetry::init("warn", false, traces.as_ref());
        traces
    } else {
        None
    };
    runtime.block_on(async move {
        let router = app(&args.kind, &args.stub_url)?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", args.port)).await?;
        println!("listening on {}", listener.local_addr()?.port());
        axum::serve(listener, router).await?;
        Ok(())
    })
}

/// Starts the platform (`serve --kind shop`) in a process of its own, configured by
/// `env` (`EDDY_*` variables) over the defaults, on a free port with warnings logged;
/// returns it and its base url once it listens (within `within`).
pub async fn spawn_shop(
    env: &[(String, String)],
    within: Duration,
) -> anyhow::Result<(tokio::process::Child, String)> {
    use anyhow::Context;
    use tokio::io::AsyncBufReadExt;
    let mut command = tokio::process::Command::new(std::env::current_exe()?);
    command
        .args(["serve", "--kind", "shop"])
        .env("EDDY_SERVER__LISTEN", "127.0.0.1:0")
        .env("EDDY_LOG_LEVEL", "warn")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn()?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let port = tokio::time::timeout(within, async {
        while let Some(line) = lines.next_line().await? {
            if let Some(port) = line.strip_prefix("listening on ") {
                return Ok(port.trim().to_owned());
            }
        }
        anyhow::bail!("the platform exited before it listened")
    })
    .await
    .with_context(|| format!("the platform did not listen within {within:?}"))??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, format!("http://127.0.0.1:{port}")))
}
