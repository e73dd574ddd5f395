//! # eddy-bench — Eddy's benchmark program
//!
//! "Fast" is a ratio measured side by side in one run (see `shared/BENCHMARKS.md`):
//!
//! - `suite` runs the HTTP scenarios S1–S3 against their limits and peers: raw axum
//!   (the baseline), Eddy (the platform's HTTP stack and resilience layers), fastify and
//!   FastAPI, interleaved and repeated, and writes JSON, a markdown report and an SVG
//!   chart. `--quick` finishes in a few minutes.
//! - `toolkit` measures the storage paths (outbox append, relay, consumer; S4/S7-style)
//!   on SQLite and PostgreSQL against raw sqlx.
//! - `brokers` is S5: publish and consume through the NATS and Kafka adapters next to
//!   the raw clients on the same broker, at 16 B, 256 B and 1 KB.
//! - `orders` is S4: `POST /v1/orders` on PostgreSQL with the relay publishing to NATS,
//!   against pgbench running the same statements at the same concurrency.
//! - `cache` is S6: the two-level cache in front of a 15 ms store with Redis shared,
//!   against Σ(share × tier latency), a 3,000-way herd, and L1 gets against raw moka.
//! - `platform` is S8: the whole platform in its own process under 80 % reads / 20 %
//!   placements, closed loop then open loop at half the rate, on embedded defaults and
//!   on PostgreSQL + NATS, with every order's effects checked afterwards.
//! - `serve` is internal: the server processes the suite starts.
//!
//! `all` runs every one of them in turn and writes each report (markdown, JSON, SVG) into
//! `--out` (default `bench/results/`); `all --quick` takes about 6 minutes.
//!
//! ```text
//! bench/peers/setup.sh                       # peers into bench/.venv and bench/peers/node
//! cargo run --release -p eddy-bench -- all --quick
//! cargo run --release -p eddy-bench -- suite --quick
//! cargo run --release -p eddy-bench -- toolkit --events 20000 --repeat 3
//! ```

/// mimalloc, as in the `shop` binary: glibc's allocator spent about a quarter of the
/// consumer benchmarks' CPU in `malloc`/`free` and heap consolidation (perf, S7 on NATS).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod brokers;
mod cache;
mod chart;
mod eventstore;
mod loadgen;
mod orders;
mod peers;
mod platform;
mod servers;
mod suite;
mod toolkit;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(about = "Eddy's benchmark program")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every scenario that exists (S1–S8 and the event store): suite, orders, brokers, toolkit, cache, eventstore, platform, one after
    /// another; reports into `--out`.
    All(AllArgs),
    /// HTTP scenarios S1–S3 against limits and peers.
    Suite(suite::SuiteArgs),
    /// Outbox append, relay and consumer throughput on SQLite and PostgreSQL; S7.
    Toolkit(toolkit::Args),
    /// S5: publish and consume through each broker adapter against the raw client.
    Brokers(brokers::Args),
    /// S4: POST /v1/orders on PostgreSQL with the relay running, against pgbench.
    Orders(orders::Args),
    /// S6: the two-level cache against its tiers' latencies, a herd, and raw moka.
    Cache(cache::Args),
    /// The event store on PostgreSQL: appends vs raw inserts, loads with and without
    /// snapshots, a projection rebuild vs a raw scan, and Python's eventsourcing.
    Eventstore(eventstore::Args),
    /// S8: the whole platform under 80 % reads / 20 % placements, on embedded defaults
    /// and on PostgreSQL + NATS, every saga's effects checked afterwards.
    Platform(platform::Args),
    /// (internal) Run one benchmark server.
    Serve(servers::ServeArgs),
}

#[derive(Debug, clap::Args)]
struct AllArgs {
    /// Short runs, one round each (S1–S3 in quick mode): about 6 minutes in all.
    #[arg(long)]
    quick: bool,
    /// Where every report (markdown, JSON, SVG) is written.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
}

/// Parses a command's arguments as if given on the command line (defaults and
/// environment variables apply).
fn parse<T: clap::Args>(args: &[&str]) -> anyhow::Result<T> {
    #[derive(Parser)]
    struct Wrap<T: clap::Args> {
        #[command(flatten)]
        inner: T,
    }
    Ok(Wrap::<T>::try_parse_from(std::iter::once("eddy-bench").chain(args.iter().copied()))?.inner)
}

/// A report: printed, and with `--json x.json` written as `x.json` with its chart
/// `x.svg`; `markdown_to`, when given, receives the markdown.
struct Report<'a, R> {
    results: &'a R,
    json: Option<&'a Path>,
    markdown_to: Option<&'a Path>,
    markdown: String,
    svg: String,
}

impl<R: Serialize> Report<'_, R> {
    fn write(self) -> anyhow::Result<()> {
        println!("{}", self.markdown);
        if let Some(path) = self.json {
            std::fs::write(path, serde_json::to_vec_pretty(self.results)?)?;
            std::fs::write(path.with_extension("svg"), self.svg)?;
            eprintln!("results written to {} and its .svg", path.display());
        }
        if let Some(path) = self.markdown_to {
            std::fs::write(path, self.markdown)?;
        }
        Ok(())
    }
}

async fn orders(args: orders::Args, markdown_to: Option<&Path>) -> anyhow::Result<()> {
    let results = orders::run(&args).await?;
    Report {
        results: &results,
        json: args.json.as_deref(),
        markdown_to,
        markdown: orders::markdown(&results),
        svg: orders::chart(&results),
    }
    .write()
}

async fn brokers(args: brokers::Args, markdown_to: Option<&Path>) -> anyhow::Result<()> {
    let results = brokers::run_all(&args).await?;
    Report {
        results: &results,
        json: args.json.as_deref(),
        markdown_to,
        markdown: brokers::markdown(&results),
        svg: brokers::chart(&results),
    }
    .write()
}

async fn cache(args: cache::Args, markdown_to: Option<&Path>) -> anyhow::Result<()> {
    let results = cache::run(&args).await?;
    Report {
        results: &results,
        json: args.json.as_deref(),
        markdown_to,
        markdown: cache::markdown(&results),
        svg: cache::chart(&results),
    }
    .write()
}

async fn eventstore(args: eventstore::Args, markdown_to: Option<&Path>) -> anyhow::Result<()> {
    let results = eventstore::run(&args).await?;
    Report {
        results: &results,
        json: args.json.as_deref(),
        markdown_to,
        markdown: eventstore::markdown(&results),
        svg: eventstore::chart(&results),
    }
    .write()
}

async fn platform(args: platform::Args, markdown_to: Option<&Path>) -> anyhow::Result<()> {
    let results = platform::run(&args).await?;
    Report {
        results: &results,
        json: args.json.as_deref(),
        markdown_to,
        markdown: platform::markdown(&results),
        svg: platform::chart(&results),
    }
    .write()
}

async fn toolkit(args: toolkit::Args, markdown_to: Option<&Path>) -> anyhow::Result<()> {
    let results = toolkit::run_all(&args).await?;
    Report {
        results: &results,
        json: args.json.as_deref(),
        markdown_to,
        markdown: toolkit::markdown(&results),
        svg: toolkit::chart(&results),
    }
    .write()
}

async fn all(args: AllArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)?;
    let out = |name: &str| args.out.join(name).display().to_string();
    let q = args.quick;
    let mut suite_args = vec!["--out", args.out.to_str().unwrap_or("bench/results")];
    if q {
        suite_args.extend(["--quick", "--repeat", "1"]);
    }
    suite::run(parse(&suite_args)?).await?;
    let (orders_json, brokers_json, toolkit_json) =
        (out("orders.json"), out("brokers.json"), out("toolkit.json"));
    let mut a = vec!["--json", orders_json.as_str()];
    if q {
        a.extend(["--seconds", "3", "--repeat", "1"]);
    }
    orders(parse(&a)?, Some(&args.out.join("orders.md"))).await?;
    let mut a = vec!["--json", brokers_json.as_str()];
    if q {
        a.extend([
            "--size",
            "256",
            "--messages",
            "5000",
            "--latency-secs",
            "1",
            "--repeat",
            "1",
        ]);
    }
    brokers(parse(&a)?, Some(&args.out.join("brokers.md"))).await?;
    let mut a = vec!["--json", toolkit_json.as_str()];
    if q {
        a.extend(["--events", "5000", "--repeat", "1"]);
    }
    toolkit(parse(&a)?, Some(&args.out.join("toolkit.md"))).await?;
    let cache_json = out("cache.json");
    let mut a = vec!["--json", cache_json.as_str()];
    if q {
        a.extend(["--requests", "100000", "--gets", "500000"]);
    }
    cache(parse(&a)?, Some(&args.out.join("cache.md"))).await?;
    let eventstore_json = out("eventstore.json");
    let mut a = vec!["--json", eventstore_json.as_str()];
    if q {
        a.extend(["--appends", "1000", "--events", "2000", "--loads", "3"]);
    }
    eventstore(parse(&a)?, Some(&args.out.join("eventstore.md"))).await?;
    let platform_json = out("platform.json");
    let mut a = vec!["--json", platform_json.as_str()];
    if q {
        a.extend(["--seconds", "5"]);
    }
    platform(parse(&a)?, Some(&args.out.join("platform.md"))).await?;
    eprintln!("all reports are in {}", args.out.display());
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = || tokio::runtime::Runtime::new();
    match cli.command {
        // Servers get a runtime of their own sized like a production service.
        Command::Serve(args) => servers::serve(args),
        Command::All(args) => runtime()?.block_on(all(args)),
        Command::Suite(args) => runtime()?.block_on(suite::run(args)),
        Command::Brokers(args) => runtime()?.block_on(brokers(args, None)),
        Command::Orders(args) => runtime()?.block_on(orders(args, None)),
        Command::Cache(args) => runtime()?.block_on(cache(args, None)),
        Command::Eventstore(args) => runtime()?.block_on(eventstore(args, None)),
        Command::Toolkit(args) => runtime()?.block_on(toolkit(args, None)),
        Command::Platform(args) => runtime()?.block_on(platform(args, None)),
    }
}
