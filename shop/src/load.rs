//! `shop demo`: realistic traffic against a running platform, then a report.
//!
//! Creates a few products, then sends a mix of order placements and reads for a given
//! time. With `--rate` it is an open loop: request *i* is due at `start + i/rate` and its
//! latency is measured from that due time, so a slow server cannot hide its queueing
//! (no coordinated omission); `--concurrency` bounds requests in flight. With `--rate 0`
//! it is a closed loop of `--concurrency` workers. At the end it waits for the placed
//! orders to settle and counts how they ended.

use reqwest::header::{HeaderValue, AUTHORIZATION};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use rand::Rng;
use serde_json::{json, Value};

/// Settings of a demo run.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Base url of the platform.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub target: String,
    /// Requests per second (open loop); 0 runs a closed loop as fast as it goes.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// How long to send, in seconds.
    #[arg(long, default_value_t = 20)]
    pub duration_secs: u64,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Share of requests that are reads (GET order / GET product), 0–1.
    #[arg(long, default_value_t = 0.8)]
    pub read_ratio: f64,
    /// Products to create for the run.
    #[arg(long, default_value_t = 20)]
    pub products: usize,
    /// Stock of each product (low values exercise out-of-stock cancellations).
    #[arg(long, default_value_t = 1_000_000)]
    pub stock: i64,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// The platform's configuration file: with `[auth]` on, the demo signs its own
    /// tokens with its key (an operator's for products and reads, each customer's for
    /// their orders). `EDDY_AUTH__*` variables work as for the platform.
    #[arg(long, short)]
    pub config: Option<std::path::PathBuf>,
}

/// Customers the demo places orders for.
const CUSTOMERS: usize = 1000;

/// `Authorization` values, when the platform wants them.
#[derive(Debug, Clone, Default)]
struct Tokens {
    operator: Option<HeaderValue>,
    /// One per customer index.
    customers: Arc<Vec<HeaderValue>>,
}

fn bearer(token: &str) -> anyhow::Result<HeaderValue> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))?;
    value.set_sensitive(true);
    Ok(value)
}

impl Tokens {
    fn of(config: &crate::config::Config, run_id: &str) -> anyhow::Result<Self> {
        use crate::auth::{mint, Role};
        if !config.auth.enabled {
            return Ok(Self::default());
        }
        let operator = bearer(&mint(&config.auth, Role::Operator, "demo-operator")?)?;
        let customers = (0..CUSTOMERS)
            .map(|i| bearer(&mint(&config.auth, Role::Customer, &customer(run_id, i))?))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self {
            operator: Some(operator),
            customers: Arc::new(customers),
        })
    }
}

fn customer(run_id: &str, i: usize) -> String {
    format!("demo-{run_id}-{i}")
}

/// The demo's traffic: reads of orders and products, and placements of 1–3 lines.
#[derive(Debug, Clone)]
struct Mix {
    http: reqwest::Client,
    base: String,
    run_id: String,
    read_ratio: f64,
    products: Arc<Vec<String>>,
    /// Orders placed so far (reads pick among them).
    orders: Arc<Mutex<Vec<String>>>,
    tokens: Tokens,
}

impl Mix {
    async fn send(self) -> eddy_load::Answer {
        let read = rand::thread_rng().gen_bool(self.read_ratio);
        let request = if read { self.read() } else { self.place() };
        match request.send().await {
            Ok(response) if response.status().is_success() => {
                if !read {
                    if let Ok(body) = response.json::<Value>().await {
                        if let Some(id) = body["id"].as_str() {
                            self.orders
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(id.to_owned());
                        }
                    }
                }
                eddy_load::Answer::Ok
            }
            Ok(response) if response.status().is_client_error() => eddy_load::Answer::Rejected,
            _ => eddy_load::Answer::Failed,
        }
    }

    fn read(&self) -> reqwest::RequestBuilder {
        let mut rng = rand::thread_rng();
        if rng.gen_bool(0.5) {
            let order = {
                let orders = self.orders.lock().unwrap_or_else(|p| p.into_inner());
                orders[rng.gen_range(0..orders.len())].clone()
            };
            self.http.get(format!("{}/v1/orders/{order}", self.base))
        } else {
            let product = &self.products[rng.gen_range(0..self.products.len())];
            self.http
                .get(format!("{}/v1/products/{product}", self.base))
        }
    }

    fn place(&self) -> reqwest::RequestBuilder {
        let mut rng = rand::thread_rng();
        let lines: Vec<Value> = (0..rng.gen_range(1..=3))
            .map(|_| json!({"product_id": self.products[rng.gen_range(0..self.products.len())], "quantity": rng.gen_range(1..=3)}))
            .collect();
        let index = rng.gen_range(0..CUSTOMERS);
        let mut request = self
            .http
            .post(format!("{}/v1/orders", self.base))
            .header("idempotency-key", uuid::Uuid::now_v7().to_string())
            .json(&json!({"customer_id": customer(&self.run_id, index), "lines": lines}));
        if let Some(token) = self.tokens.customers.get(index) {
            request = request.header(AUTHORIZATION, token.clone());
        }
        request
    }
}

#[derive(Debug)]
pub struct Report {
    pub requests: u64,
    pub elapsed: Duration,
    pub errors: u64,
    pub rejected_4xx: u64,
    pub latency_us: Histogram<u64>,
    pub orders_placed: usize,
    pub confirmed: usize,
    pub cancelled: usize,
    pub pending: usize,
    /// The ids of the orders placed (for a caller that checks their effects).
    pub placed: Vec<String>,
    /// The ids of the products the run created, each with `stock` units.
    pub products: Vec<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let q = |p: f64| self.latency_us.value_at_quantile(p) as f64 / 1000.0;
        writeln!(
            f,
            "requests      {} in {:.1}s = {:.0} req/s",
            self.requests,
            self.elapsed.as_secs_f64(),
            self.requests as f64 / self.elapsed.as_secs_f64()
        )?;
        writeln!(f, "latency       p50 {:.2} ms · p90 {:.2} ms · p99 {:.2} ms · p99.9 {:.2} ms · max {:.2} ms", q(0.5), q(0.9), q(0.99), q(0.999), self.latency_us.max() as f64 / 1000.0)?;
        writeln!(
            f,
            "errors        {} (5xx or transport) · {} rejected (4xx)",
            self.errors, self.rejected_4xx
        )?;
        write!(
            f,
            "orders        {} placed → {} confirmed · {} cancelled · {} still pending",
            self.orders_placed, self.confirmed, self.cancelled, self.pending
        )
    }
}

/// How long the demo waits for its products to reach orders, and then for its orders
/// to settle.
const PRODUCTS_ORDERABLE_WAIT: Duration = Duration::from_secs(30);
const ORDERS_SETTLE_WAIT: Duration = Duration::from_secs(60);

pub async fn run(args: LoadArgs) -> anyhow::Result<Report> {
    if !(0.0..=1.0).contains(&args.read_ratio) {
        bail!("--read-ratio must be between 0 and 1");
    }
    if args.concurrency == 0 || args.products == 0 {
        bail!("--concurrency and --products must be at least 1");
    }
    let config = crate::config::Config::load(args.config.as_deref())?;
    let run_id = uuid::Uuid::now_v7().simple().to_string();
    let tokens = Tokens::of(&config, &run_id)?;
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(operator) = &tokens.operator {
        // Requests that set their own (a customer's) keep it.
        headers.insert(AUTHORIZATION, operator.clone());
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(args.concurrency)
        .default_headers(headers)
        .build()?;
    let base = args.target.trim_end_matches('/').to_owned();
    http.get(format!("{base}/health/ready"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("the platform at {base} is not ready"))?;
    let products = create_products(&http, &base, &run_id, &args).await?;
    let probe = first_order(&http, &base, &run_id, &products).await?;
    let products = Arc::new(products);
    let mix = Mix {
        http: http.clone(),
        base: base.clone(),
        run_id,
        read_ratio: args.read_ratio,
        products: products.clone(),
        orders: Arc::new(Mutex::new(vec![probe])),
        tokens,
    };
    let orders = mix.orders.clone();
    let tally = send_traffic(mix, &args).await;
    // Let the sagas finish, then count outcomes.
    let placed: Vec<String> = orders.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let (confirmed, cancelled, pending) = outcomes(&http, &base, &placed).await;
    Ok(Report {
        requests: tally.requests(),
        elapsed: tally.elapsed,
        errors: tally.failed,
        rejected_4xx: tally.rejected,
        latency_us: tally.latency_us,
        orders_placed: placed.len(),
        confirmed,
        cancelled,
        pending,
        placed,
        products: products.to_vec(),
    })
}

/// The demo's products, each with `args.stock` units.
async fn create_products(
    http: &reqwest::Client,
    base: &str,
    run_id: &str,
    args: &LoadArgs,
) -> anyhow::Result<Vec<String>> {
    let mut products = Vec::with_capacity(args.products);
    for i in 0..args.products {
        let body = json!({"sku": format!("demo-{run_id}-{i}"), "name": format!("Demo product {i}"), "price_cents": 500 + 100 * i as i64, "currency": "EUR", "stock": args.stock});
        let created: Value = http
            .post(format!("{base}/v1/products"))
            .json(&body)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let id = created["id"]
            .as_str()
            .with_context(|| format!("the created product has no id: {created}"))?;
        products.push(id.to_owned());
    }
    Ok(products)
}

/// Orders learn of products through events: places a first order as soon as the last
/// product is orderable, and returns its id.
async fn first_order(
    http: &reqwest::Client,
    base: &str,
    run_id: &str,
    products: &[String],
) -> anyhow::Result<String> {
    let last = products.last().context("no products")?;
    let probe = json!({"customer_id": format!("demo-{run_id}-probe"), "lines": [{"product_id": last, "quantity": 1}]});
    let ready_by = Instant::now() + PRODUCTS_ORDERABLE_WAIT;
    loop {
        let response = http
            .post(format!("{base}/v1/orders"))
            .json(&probe)
            .send()
            .await?;
        if response.status().is_success() {
            let order: Value = response.json().await?;
            let id = order["id"]
                .as_str()
                .with_context(|| format!("the placed order has no id: {order}"))?;
            return Ok(id.to_owned());
        }
        if Instant::now() > ready_by {
            let answer = response.text().await.unwrap_or_else(|e| e.to_string());
            bail!("products never became orderable: {answer}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The traffic itself, with a progress bar unless `--quiet`.
async fn send_traffic(mix: Mix, args: &LoadArgs) -> eddy_load::Tally {
    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(args.duration_secs)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len}s {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let plan = eddy_load::Plan {
        pace: if args.rate > 0.0 {
            eddy_load::Pace::Open { rate: args.rate }
        } else {
            eddy_load::Pace::Closed
        },
        in_flight_max: args.concurrency,
        warmup: Duration::ZERO,
        duration: Duration::from_secs(args.duration_secs),
    };
    let duration_secs = args.duration_secs;
    let tally = eddy_load::drive(
        plan,
        move |_| mix.clone().send(),
        |elapsed, sent| {
            bar.set_position(elapsed.as_secs().min(duration_secs));
            bar.set_message(format!("{sent} requests"));
        },
    )
    .await;
    // Full and with the final count, left on screen above the report.
    bar.finish();
    tally
}

/// Confirmed, cancelled and still pending among `placed`, once all settled or after
/// [`ORDERS_SETTLE_WAIT`].
async fn outcomes(http: &reqwest::Client, base: &str, placed: &[String]) -> (usize, usize, usize) {
    let settle_by = Instant::now() + ORDERS_SETTLE_WAIT;
    loop {
        let (mut confirmed, mut cancelled, mut pending) = (0, 0, 0);
        for id in placed {
            let status = match http.get(format!("{base}/v1/orders/{id}")).send().await {
                Ok(r) => r
                    .json::<Value>()
                    .await
                    .ok()
                    .and_then(|v| v["status"].as_str().map(str::to_owned)),
                Err(_) => None,
            };
            match status.as_deref() {
                Some("CONFIRMED") => confirmed += 1,
                Some("CANCELLED") => cancelled += 1,
                _ => pending += 1,
            }
        }
        if pending == 0 || Instant::now() > settle_by {
            return (confirmed, cancelled, pending);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
