//! S8: the whole platform — catalog, orders, inventory, payments, notifications, the
//! payment provider — in one process of its own (`serve --kind shop`), under the demo's
//! mixed traffic (`shop::load`: 80 % reads of orders and products, 20 % placements of
//! 1–3 lines).
//!
//! Per variant: a closed loop for the maximum, then an open loop at half of it for the
//! latency (measured from each request's intended send time). After each loop every
//! order placed is checked: terminal (confirmed or cancelled), one captured charge per
//! confirmed order and none per cancelled one, and each product's stock equal to its
//! initial stock less what the confirmed orders took. Also recorded: the platform's peak
//! RSS and its CPU per request, and the load generator's (this process) CPU per request.
//!
//! Variants: `embedded` (the defaults: SQLite files and the embedded log, in a temporary
//! directory) and `postgres-nats` (a PostgreSQL database per service and the log's, events
//! on NATS JetStream under a stream prefix of the run's own; all dropped afterwards).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{bail, Context};
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Variants to run, comma-separated: embedded, postgres-nats.
    #[arg(long, default_value = "embedded,postgres-nats")]
    pub variants: String,
    /// Seconds of each loop (closed, then open).
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Products each loop creates (their stock is checked afterwards).
    #[arg(long, default_value_t = 20)]
    pub products: usize,
    /// PostgreSQL server url (databases are created and dropped).
    #[arg(
        long,
        env = "EDDY_BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    pub postgres_url: String,
    /// NATS server of the postgres-nats variant.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Write the results as JSON to this file (and the chart beside it).
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// Each product's stock: large, so that no placement is cancelled for want of stock and
/// the check is about lost or doubled effects.
const STOCK: i64 = 1_000_000;

/// Concurrent requests of the check after each loop.
const CHECK_CONCURRENCY: usize = 32;

#[derive(Debug, Clone, Serialize)]
pub struct Loop {
    pub requests: u64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub errors: u64,
    pub rejected_4xx: u64,
    pub platform_cpu_us_per_request: f64,
    pub load_generator_cpu_us_per_request: f64,
    pub check: Check,
}

/// What the check after a loop found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Check {
    pub orders: usize,
    pub confirmed: usize,
    pub cancelled: usize,
    /// Neither confirmed nor cancelled a minute after the loop.
    pub not_terminal: usize,
    /// Confirmed with no captured charge, or with more than one.
    pub confirmed_without_one_capture: usize,
    /// Cancelled, yet a charge was captured.
    pub cancelled_with_capture: usize,
    /// Products whose stock is not the initial stock less what confirmed orders took.
    pub stock_mismatches: usize,
}

impl Check {
    pub fn clean(&self) -> bool {
        self.not_terminal == 0
            && self.confirmed_without_one_capture == 0
            && self.cancelled_with_capture == 0
            && self.stock_mismatches == 0
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Variant {
    pub variant: String,
    pub closed: Loop,
    /// At half of the closed loop's rate.
    pub open: Loop,
    pub open_rate: f64,
    pub platform_rss_peak_mb: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub machine: String,
    pub date: String,
    pub seconds: u64,
    pub connections: usize,
    pub read_ratio: f64,
    pub variants: Vec<Variant>,
}

pub async fn run(args: &Args) -> anyhow::Result<Results> {
    let mut variants = Vec::new();
    for variant in args.variants.split(',').map(str::trim) {
        let result = match variant {
            "embedded" => {
                let dir = tempfile::tempdir()?;
                let env = vec![("EDDY_DATA_DIR".to_owned(), dir.path().display().to_string())];
                run_variant(args, variant, env).await?
            }
            "postgres-nats" => postgres_nats(args).await?,
            other => bail!("unknown variant {other} (embedded, postgres-nats)"),
        };
        variants.push(result);
    }
    Ok(Results {
        machine: crate::toolkit::machine(),
        date: time::OffsetDateTime::now_utc().date().to_string(),
        seconds: args.seconds,
        connections: args.connections,
        read_ratio: 0.8,
        variants,
    })
}

const SERVICES: [&str; 6] = [
    "catalog",
    "orders",
    "inventory",
    "payments",
    "notifications",
    "log",
];

/// The postgres-nats variant: its databases and streams exist only while it runs.
async fn postgres_nats(args: &Args) -> anyhow::Result<Variant> {
    let server = args.postgres_url.trim_end_matches('/').to_owned();
    let admin = eddy_sql::Db::connect(&eddy_sql::DbConfig::new(format!("{server}/postgres")))
        .await
        .context("PostgreSQL is not reachable")?;
    let run = uuid::Uuid::now_v7().simple().to_string();
    let mut env = Vec::new();
    let mut databases = Vec::new();
    for service in SERVICES {
        let name = format!("s8_{run}_{service}");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(admin.pool())
            .await?;
        databases.push(name.clone());
        env.push((
            format!("EDDY_DATABASES__{}", service.to_uppercase()),
            format!("{server}/{name}"),
        ));
    }
    let nats = eddy_nats::NatsConfig {
        url: args.nats_url.clone(),
        stream_prefix: format!("S8_{run}"),
        subject_prefix: format!("s8.{run}"),
        ..eddy_nats::NatsConfig::default()
    };
    env.extend([
        ("EDDY_BROKER__KIND".to_owned(), "nats".to_owned()),
        ("EDDY_BROKER__NATS_URL".to_owned(), nats.url.clone()),
        (
            "EDDY_BROKER__NATS_STREAM_PREFIX".to_owned(),
            nats.stream_prefix.clone(),
        ),
        (
            "EDDY_BROKER__NATS_SUBJECT_PREFIX".to_owned(),
            nats.subject_prefix.clone(),
        ),
    ]);
    let result = run_variant(args, "postgres-nats", env).await;
    // Cleaned up whatever the run's outcome.
    match eddy_nats::Nats::connect(nats).await {
        Ok(nats) => {
            for topic in shop::contracts::TOPICS {
                for topic in [topic.to_owned(), format!("{topic}.dlq")] {
                    // A topic nothing wrote to has no stream: nothing to delete.
                    let _ = nats.delete_topic(&topic).await;
                }
            }
        }
        Err(error) => eprintln!("S8: the run's NATS streams were not deleted: {error}"),
    }
    for name in databases {
        if let Err(error) = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(admin.pool())
            .await
        {
            eprintln!("S8: database {name} was not dropped: {error}");
        }
    }
    result
}

async fn run_variant(
    args: &Args,
    variant: &str,
    env: Vec<(String, String)>,
) -> anyhow::Result<Variant> {
    let (mut child, base) = start_platform(&env).await?;
    let pid = child.id().context("the platform has no pid")?;
    eprintln!("S8 {variant}: closed loop, {} s", args.seconds);
    let closed = measure(args, &base, pid, 0.0).await;
    let closed = match closed {
        Ok(closed) => closed,
        Err(error) => {
            let _ = child.kill().await;
            return Err(error);
        }
    };
    let open_rate = (closed.rps / 2.0).max(1.0);
    eprintln!(
        "S8 {variant}: open loop at {open_rate:.0} req/s, {} s",
        args.seconds
    );
    let open = measure(args, &base, pid, open_rate).await;
    let rss = peak_rss_mb(pid);
    let _ = child.kill().await;
    Ok(Variant {
        variant: variant.to_owned(),
        closed,
        open: open?,
        open_rate,
        platform_rss_peak_mb: rss,
    })
}

/// Starts the platform in its own process with `env` over the defaults; returns it and
/// its base url once it listens.
async fn start_platform(
    env: &[(String, String)],
) -> anyhow::Result<(tokio::process::Child, String)> {
    let (child, base) = crate::servers::spawn_shop(env, Duration::from_secs(120)).await?;
    // Traffic only once every consumer has subscribed, as a load balancer would.
    let http = reqwest::Client::new();
    let ready_by = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ready = http
            .get(format!("{base}/health/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return Ok((child, base));
        }
        if tokio::time::Instant::now() > ready_by {
            bail!("the platform at {base} did not become ready within a minute");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One loop (closed when `rate` is 0, else open at `rate`), then its check.
async fn measure(args: &Args, base: &str, pid: u32, rate: f64) -> anyhow::Result<Loop> {
    let load = shop::load::LoadArgs {
        target: base.to_owned(),
        rate,
        duration_secs: args.seconds,
        concurrency: args.connections,
        read_ratio: 0.8,
        products: args.products,
        stock: STOCK,
        quiet: true,
        config: None,
    };
    let platform_before = crate::suite::cpu_seconds_of(pid);
    let own_before = crate::suite::cpu_seconds_of(std::process::id());
    let report = shop::load::run(load).await?;
    let platform_cpu = crate::suite::cpu_seconds_of(pid)
        .zip(platform_before)
        .map(|(after, before)| after - before);
    let own_cpu = crate::suite::cpu_seconds_of(std::process::id())
        .zip(own_before)
        .map(|(after, before)| after - before);
    // Both include the settling wait after the loop (a few ms of idle work per second).
    let per_request =
        |cpu: Option<f64>| cpu.map_or(f64::NAN, |cpu| cpu * 1e6 / (report.requests.max(1) as f64));
    let check = check(base, &report).await?;
    let q = |p: f64| report.latency_us.value_at_quantile(p) as f64 / 1000.0;
    Ok(Loop {
        requests: report.requests,
        rps: report.requests as f64 / report.elapsed.as_secs_f64(),
        p50_ms: q(0.5),
        p99_ms: q(0.99),
        p999_ms: q(0.999),
        errors: report.errors,
        rejected_4xx: report.rejected_4xx,
        platform_cpu_us_per_request: per_request(platform_cpu),
        load_generator_cpu_us_per_request: per_request(own_cpu),
        check,
    })
}

/// Checks every order of `report` and the stock of its products (see the module doc).
async fn check(base: &str, report: &shop::load::Report) -> anyhow::Result<Check> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let get = |url: String| {
        let http = http.clone();
        async move {
            let answer = http.get(&url).send().await?.error_for_status()?;
            anyhow::Ok(answer.json::<Value>().await?)
        }
    };
    let looked_up: Vec<anyhow::Result<(Value, Value)>> =
        futures::stream::iter(report.placed.iter().map(|id| {
            let (order, charges) = (
                get(format!("{base}/v1/orders/{id}")),
                get(format!("{base}/v1/payments?order_id={id}")),
            );
            async move { Ok((order.await?, charges.await?)) }
        }))
        .buffer_unordered(CHECK_CONCURRENCY)
        .collect()
        .await;
    let mut check = Check {
        orders: report.placed.len(),
        ..Check::default()
    };
    let mut taken: HashMap<String, i64> = HashMap::new();
    for answer in looked_up {
        let (order, charges) = answer.context("the check could not read an order")?;
        let captures = charges["items"].as_array().map_or(0, |items| {
            items.iter().filter(|c| c["status"] == "captured").count()
        });
        match order["status"].as_str() {
            Some("CONFIRMED") => {
                check.confirmed += 1;
                if captures != 1 {
                    check.confirmed_without_one_capture += 1;
                }
                for line in order["lines"].as_array().into_iter().flatten() {
                    if let (Some(product), Some(quantity)) =
                        (line["product_id"].as_str(), line["quantity"].as_i64())
                    {
                        *taken.entry(product.to_owned()).or_default() += quantity;
                    }
                }
            }
            Some("CANCELLED") => {
                check.cancelled += 1;
                if captures > 0 {
                    check.cancelled_with_capture += 1;
                }
            }
            _ => check.not_terminal += 1,
        }
    }
    // The catalog learns of stock changes by event: wait a little for it to agree.
    let agree_by = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut mismatches = 0;
        for product in &report.products {
            let stock = get(format!("{base}/v1/products/{product}")).await?["stock"]
                .as_i64()
                .context("a product without stock")?;
            if stock != STOCK - taken.get(product).copied().unwrap_or(0) {
                mismatches += 1;
            }
        }
        if mismatches == 0 || tokio::time::Instant::now() > agree_by {
            check.stock_mismatches = mismatches;
            return Ok(check);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The process's peak resident set (VmHWM), in MB.
fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn verdict(check: &Check) -> String {
    if check.clean() {
        format!(
            "✓ {} orders: {} confirmed, {} cancelled; captures and stock add up",
            check.orders, check.confirmed, check.cancelled
        )
    } else {
        format!(
            "✗ {} orders: {} not terminal, {} confirmed without exactly one capture, {} cancelled with a capture, {} products with wrong stock",
            check.orders,
            check.not_terminal,
            check.confirmed_without_one_capture,
            check.cancelled_with_capture,
            check.stock_mismatches
        )
    }
}

pub fn markdown(results: &Results) -> String {
    let mut out = format!(
        "# S8: the whole platform, 80 % reads / 20 % placements\n\nMachine: {}. Date: {}. {} s per loop, {} connections; the platform in its own process, the load generator in this one.\n\n",
        results.machine, results.date, results.seconds, results.connections
    );
    out.push_str("| variant | closed loop | p99 (closed) | open loop at 50 % | p99 (open) | errors | platform CPU/req | load generator CPU/req | platform RSS peak | effects |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for v in &results.variants {
        out.push_str(&format!(
            "| {} | {:.0} req/s | {:.1} ms | {:.0} req/s | {:.1} ms | {} | {:.0} µs | {:.0} µs | {} | closed: {}; open: {} |\n",
            v.variant,
            v.closed.rps,
            v.closed.p99_ms,
            v.open.rps,
            v.open.p99_ms,
            v.closed.errors + v.open.errors,
            v.closed.platform_cpu_us_per_request,
            v.closed.load_generator_cpu_us_per_request,
            v.platform_rss_peak_mb
                .map_or("—".to_owned(), |mb| format!("{mb:.0} MB")),
            verdict(&v.closed.check),
            verdict(&v.open.check),
        ));
    }
    out.push_str("\nTarget (shared/BENCHMARKS.md): 25,000 req/s on 2 cores, p99 ≤ 50 ms at 50 % load, zero lost or duplicated effects, RSS ≤ 300 MB.\n");
    out
}

/// Each variant's closed-loop rate against the 25,000 req/s target (dashed).
pub fn chart(results: &Results) -> String {
    crate::chart::svg(
        &format!("S8: the whole platform ({})", results.machine),
        &[crate::chart::Group {
            title: "80/20 mix, closed loop; dashed: the 25,000 req/s target".to_owned(),
            reference: 25_000.0,
            bars: results
                .variants
                .iter()
                .map(|v| crate::chart::Bar {
                    label: format!("eddy {}", v.variant),
                    value: v.closed.rps,
                    text: format!(
                        "{:.0} req/s · p99 {:.1} ms (open loop at 50 %: {:.1} ms)",
                        v.closed.rps, v.closed.p99_ms, v.open.p99_ms
                    ),
                })
                .collect(),
        }],
    )
}
