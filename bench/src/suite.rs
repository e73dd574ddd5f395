//! The HTTP scenarios S1–S3 of `shared/BENCHMARKS.md`, run side by side: every variant
//! is started as its own process, warmed up, measured, and stopped, interleaved and
//! repeated; medians and ratios are reported.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::loadgen::{closed_loop, open_loop, LoadResult, Request};

#[derive(Debug, clap::Args)]
pub struct SuiteArgs {
    /// A few minutes in all: 3 s runs after 1 s of warm-up.
    #[arg(long)]
    pub quick: bool,
    /// Runs per variant; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Measured seconds per run (default 10, or 3 with --quick).
    #[arg(long)]
    pub seconds: Option<u64>,
    /// Scenarios to run, comma-separated.
    #[arg(long, default_value = "s1,s2,s3")]
    pub scenarios: String,
    /// Where suite.json, suite.md and suite.svg are written.
    #[arg(long, default_value = "docs/benchmarks")]
    pub out: PathBuf,
}

const VARIANTS: [&str; 4] = ["raw axum", "eddy", "fastify", "fastapi"];

/// Cores of this machine (the box-bound limit's numerator). Read once at start.
static CORES: std::sync::LazyLock<f64> = std::sync::LazyLock::new(|| {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64
});

#[derive(Debug, Serialize)]
struct Run {
    #[serde(flatten)]
    load: LoadResult,
    /// Server CPU (user + system) per answered request.
    cpu_us_per_request: Option<f64>,
    /// The load generator's own CPU per request: on a shared box it is CPU the server
    /// cannot have.
    client_cpu_us_per_request: Option<f64>,
    rss_mb: Option<f64>,
}

#[derive(Debug, Serialize)]
struct VariantResult {
    variant: String,
    runs: Vec<Run>,
    median_rps: f64,
    median_p99_ms: f64,
    median_cpu_us: Option<f64>,
    median_client_cpu_us: Option<f64>,
    max_rss_mb: Option<f64>,
}

#[derive(Debug, Serialize)]
struct ScenarioResult {
    id: String,
    title: String,
    limit_rps: f64,
    limit_basis: String,
    variants: Vec<VariantResult>,
    notes: Vec<String>,
}

#[derive(Debug, Serialize)]
struct SuiteResult {
    machine: String,
    date: String,
    quick: bool,
    repeat: usize,
    seconds: u64,
    scenarios: Vec<ScenarioResult>,
}

fn bench_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// User + system CPU seconds process `pid` used so far.
pub(crate) fn cpu_seconds_of(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ is 100 on Linux
}

/// A server process under test.
struct Server {
    child: Child,
    pid: u32,
    base: String,
}

impl Server {
    async fn start(variant: &str, stub_url: &str) -> anyhow::Result<Server> {
        let port = free_port()?;
        let mut command = match variant {
            "raw axum" | "eddy" | "stub" => {
                let kind = match variant {
                    "raw axum" => "raw",
                    other => other,
                };
                let mut c = Command::new(std::env::current_exe()?);
                c.args([
                    "serve",
                    "--kind",
                    kind,
                    "--port",
                    &port.to_string(),
                    "--stub-url",
                    stub_url,
                ]);
                c
            }
            "fastapi" => {
                let python = bench_dir().join(".venv/bin/python");
                if !python.exists() {
                    bail!("FastAPI peer not installed: run bench/peers/setup.sh");
                }
                let mut c = Command::new(python);
                c.args([
                    "-m",
                    "uvicorn",
                    "fastapi_app:app",
                    "--port",
                    &port.to_string(),
                    "--log-level",
                    "warning",
                    "--no-access-log",
                ])
                .current_dir(bench_dir().join("peers"));
                c
            }
            "fastify" => {
                if !bench_dir().join("peers/node/node_modules/fastify").exists() {
                    bail!("fastify peer not installed: run bench/peers/setup.sh");
                }
                let mut c = Command::new("node");
                c.args(["fastify_app.js", &port.to_string()])
                    .current_dir(bench_dir().join("peers/node"));
                c
            }
            other => bail!("unknown variant {other}"),
        };
        let mut child = command
            .env("STUB_URL", stub_url)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {variant}"))?;
        let pid = child.id().context("the server exited at once")?;
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(_)) = lines.next_line().await {}
            });
        }
        let base = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(format!("{base}/health")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!("{variant} did not become healthy");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Server { child, pid, base })
    }

    fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds_of(self.pid)
    }

    fn rss_mb(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
        let _ = self.child.wait().await;
    }
}

/// Starts `variant`, warms it up, measures a closed loop, stops it.
async fn measure(
    variant: &str,
    stub_url: &str,
    request: &Request,
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Run> {
    let server = Server::start(variant, stub_url).await?;
    let request = rebase(request, &server.base);
    closed_loop(request.clone(), connections, Duration::ZERO, warmup).await?;
    let cpu_before = server.cpu_seconds();
    let client_before = cpu_seconds_of(std::process::id());
    let load = closed_loop(request, connections, Duration::ZERO, duration).await?;
    let per_request = |before: Option<f64>, after: Option<f64>| match (before, after) {
        (Some(a), Some(b)) if load.requests > 0 => Some((b - a) * 1e6 / load.requests as f64),
        _ => None,
    };
    let cpu = per_request(cpu_before, server.cpu_seconds());
    let client_cpu = per_request(client_before, cpu_seconds_of(std::process::id()));
    let rss = server.rss_mb();
    server.stop().await;
    Ok(Run {
        load,
        cpu_us_per_request: cpu,
        client_cpu_us_per_request: client_cpu,
        rss_mb: rss,
    })
}

fn rebase(request: &Request, base: &str) -> Request {
    match request {
        Request::Get(path) => Request::Get(format!("{base}{path}")),
        Request::Post(path, body) => Request::Post(format!("{base}{path}"), body.clone()),
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn summarise(variant: &str, runs: Vec<Run>) -> VariantResult {
    let cpus: Vec<f64> = runs.iter().filter_map(|r| r.cpu_us_per_request).collect();
    let client_cpus: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.client_cpu_us_per_request)
        .collect();
    VariantResult {
        variant: variant.to_owned(),
        median_rps: median(runs.iter().map(|r| r.load.rps).collect()),
        median_p99_ms: median(runs.iter().map(|r| r.load.p99_ms).collect()),
        median_cpu_us: (!cpus.is_empty()).then(|| median(cpus)),
        median_client_cpu_us: (!client_cpus.is_empty()).then(|| median(client_cpus)),
        max_rss_mb: runs.iter().filter_map(|r| r.rss_mb).reduce(f64::max),
        runs,
    }
}

/// Runs one closed-loop scenario over every variant, interleaved and repeated.
#[allow(clippy::too_many_arguments)]
async fn scenario(
    id: &str,
    title: &str,
    request: Request,
    connections: usize,
    limit_rps: f64,
    limit_basis: String,
    stub_url: &str,
    args: &SuiteArgs,
    warmup: Duration,
    duration: Duration,
) -> ScenarioResult {
    let mut runs: Vec<Vec<Run>> = VARIANTS.iter().map(|_| Vec::new()).collect();
    let mut notes = Vec::new();
    for round in 0..args.repeat {
        for (i, variant) in VARIANTS.iter().enumerate() {
            eprintln!("{id} round {}/{}: {variant}", round + 1, args.repeat);
            match measure(variant, stub_url, &request, connections, warmup, duration).await {
                Ok(run) => runs[i].push(run),
                Err(error) => {
                    let note = format!("{variant}: {error:#}");
                    if !notes.contains(&note) {
                        notes.push(note);
                    }
                }
            }
        }
    }
    let variants = VARIANTS
        .iter()
        .zip(runs)
        .filter(|(_, r)| !r.is_empty())
        .map(|(v, r)| summarise(v, r))
        .collect();
    ScenarioResult {
        id: id.to_owned(),
        title: title.to_owned(),
        limit_rps,
        limit_basis,
        variants,
        notes,
    }
}

/// CPU time of one S3 request's work (parse, transform, serialise) on one core.
fn s3_cpu_seconds_per_request(body: &[u8]) -> f64 {
    let iterations = 20_000;
    let started = Instant::now();
    let mut bytes = 0usize;
    for _ in 0..iterations {
        if let Ok(input) = serde_json::from_slice::<crate::servers::TransformIn>(body) {
            bytes += serde_json::to_vec(&crate::servers::transform(input))
                .map(|v| v.len())
                .unwrap_or(0);
        }
    }
    std::hint::black_box(bytes);
    started.elapsed().as_secs_f64() / f64::from(iterations)
}

pub async fn run(args: SuiteArgs) -> anyhow::Result<()> {
    let seconds = args.seconds.unwrap_or(if args.quick { 3 } else { 10 });
    let warmup = Duration::from_secs(if args.quick { 1 } else { 2 });
    let duration = Duration::from_secs(seconds);
    let wanted: Vec<&str> = args.scenarios.split(',').map(str::trim).collect();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    let mut scenarios = Vec::new();

    let stub = Server::start("stub", "").await?;
    let stub_url = stub.base.clone();

    if wanted.contains(&"s1") {
        let mut s1 = scenario(
            "S1",
            "GET /orders/{id}, 15 ms simulated store, closed loop, 1,000 connections",
            Request::Get("/orders/42".into()),
            1000,
            1000.0 / 0.015,
            "Little's law: 1,000 connections / 15 ms".into(),
            &stub_url,
            &args,
            warmup,
            duration,
        )
        .await;
        // Open loop at half of Eddy's maximum: latency under a sustainable load.
        if let Some(eddy) = s1.variants.iter().find(|v| v.variant == "eddy") {
            let rate = eddy.median_rps / 2.0;
            for variant in ["raw axum", "eddy"] {
                let mut p99s = Vec::new();
                for _ in 0..args.repeat {
                    let server = Server::start(variant, &stub_url).await?;
                    let request = rebase(&Request::Get("/orders/42".into()), &server.base);
                    closed_loop(request.clone(), 200, Duration::ZERO, warmup).await?;
                    let result = open_loop(request, rate, 2000, duration).await?;
                    p99s.push(result.p99_ms);
                    server.stop().await;
                }
                s1.notes.push(format!("open loop at {rate:.0} req/s (50 % of Eddy's max): {variant} p99 {:.1} ms (median of {})", median(p99s), args.repeat));
            }
        }
        scenarios.push(s1);
    }
    if wanted.contains(&"s2") {
        scenarios.push(
            scenario(
                "S2",
                "Aggregator: 3 sequential calls (20/35/28 ms), 500 connections",
                Request::Get("/aggregate".into()),
                500,
                500.0 / 0.083,
                "Little's law: 500 / 83 ms".into(),
                &stub_url,
                &args,
                warmup,
                duration,
            )
            .await,
        );
        scenarios.push(
            scenario(
                "S2p",
                "Aggregator: the same 3 calls in parallel, 500 connections",
                Request::Get("/aggregate-parallel".into()),
                500,
                500.0 / 0.035,
                "Little's law: 500 / 35 ms".into(),
                &stub_url,
                &args,
                warmup,
                duration,
            )
            .await,
        );
    }
    if wanted.contains(&"s3") {
        let body = Arc::new(crate::servers::transform_input());
        let per_request = s3_cpu_seconds_per_request(&body);
        scenarios.push(
            scenario(
                "S3",
                &format!("CPU-bound: transform a {} B order JSON, 200 connections", body.len()),
                Request::Post("/transform".into(), body),
                200,
                cores / per_request,
                format!("{cores} cores / {:.1} µs of CPU per request (parse, transform, serialise; measured in-process)", per_request * 1e6),
                &stub_url,
                &args,
                warmup,
                duration,
            )
            .await,
        );
    }
    stub.stop().await;

    let result = SuiteResult {
        machine: machine(),
        date: time::OffsetDateTime::now_utc().date().to_string(),
        quick: args.quick,
        repeat: args.repeat,
        seconds,
        scenarios,
    };
    std::fs::create_dir_all(&args.out)?;
    std::fs::write(
        args.out.join("suite.json"),
        serde_json::to_vec_pretty(&result)?,
    )?;
    let report = markdown(&result);
    std::fs::write(args.out.join("suite.md"), &report)?;
    std::fs::write(args.out.join("suite.svg"), svg(&result))?;
    println!("{report}");
    eprintln!(
        "written: {}",
        ["suite.json", "suite.md", "suite.svg"]
            .map(|f| args.out.join(f).display().to_string())
            .join(", ")
    );
    Ok(())
}

fn machine() -> String {
    format!(
        "{}; load generator, servers and peers share them",
        crate::toolkit::machine()
    )
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "—".to_owned()
    }
}

fn markdown(result: &SuiteResult) -> String {
    let mut out = format!(
        "# Benchmark suite (S1–S3)\n\nMachine: {}. Date: {}. {} runs per variant of {} s each{}, interleaved; medians shown.\n\n",
        result.machine,
        result.date,
        result.repeat,
        result.seconds,
        if result.quick { " (quick mode)" } else { "" }
    );
    for s in &result.scenarios {
        out.push_str(&format!(
            "## {} — {}\n\nLimit: {:.0} req/s ({}).\n\n",
            s.id, s.title, s.limit_rps, s.limit_basis
        ));
        out.push_str("| variant | req/s | p99 | server CPU/req | load-generator CPU/req | RSS | of limit | of box-bound limit | Eddy ÷ this |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        let eddy = s
            .variants
            .iter()
            .find(|v| v.variant == "eddy")
            .map(|v| v.median_rps)
            .unwrap_or(0.0);
        for v in &s.variants {
            // What the box could do if every CPU cycle went to this variant and the
            // load generator: cores / (server + client CPU per request).
            let box_bound = match (v.median_cpu_us, v.median_client_cpu_us) {
                (Some(server), Some(client)) if server + client > 0.0 => {
                    format!("{:.2}", v.median_rps / (*CORES * 1e6 / (server + client)))
                }
                _ => "—".to_owned(),
            };
            out.push_str(&format!(
                "| {} | {:.0} | {:.1} ms | {} | {} | {} | {:.2} | {} | {} |\n",
                v.variant,
                v.median_rps,
                v.median_p99_ms,
                v.median_cpu_us.map_or("—".into(), |c| format!("{c:.0} µs")),
                v.median_client_cpu_us
                    .map_or("—".into(), |c| format!("{c:.0} µs")),
                v.max_rss_mb.map_or("—".into(), |m| format!("{m:.0} MB")),
                v.median_rps / s.limit_rps,
                box_bound,
                if v.variant == "eddy" {
                    "—".to_owned()
                } else {
                    ratio(eddy, v.median_rps)
                }
            ));
        }
        for note in &s.notes {
            out.push_str(&format!("\n- {note}"));
        }
        out.push_str("\n\n");
    }
    out
}

/// A bar chart of throughput per variant, one group per scenario, as a fraction of the
/// scenario's limit (so scenarios with different scales share one axis).
fn svg(result: &SuiteResult) -> String {
    let groups: Vec<crate::chart::Group> = result
        .scenarios
        .iter()
        .map(|s| crate::chart::Group {
            title: format!("{} (limit {:.0}/s)", s.id, s.limit_rps),
            reference: s.limit_rps,
            bars: s
                .variants
                .iter()
                .map(|v| crate::chart::Bar {
                    label: v.variant.clone(),
                    value: v.median_rps,
                    text: format!("{:.0}/s · p99 {:.0} ms", v.median_rps, v.median_p99_ms),
                })
                .collect(),
        })
        .collect();
    crate::chart::svg(
        &format!(
            "Throughput as a share of each scenario's limit ({}, {})",
            result.machine.split(';').next().unwrap_or(""),
            result.date
        ),
        &groups,
    )
}
