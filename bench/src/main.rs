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
//! - `serve` is internal: the server processes the suite starts.
//!
//! ```text
//! bench/peers/setup.sh                       # peers into bench/.venv and bench/peers/node
//! cargo run --release -p eddy-bench -- suite --quick
//! cargo run --release -p eddy-bench -- toolkit --events 20000 --repeat 3
//! ```

mod loadgen;
mod servers;
mod suite;
mod toolkit;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "Eddy's benchmark program")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// HTTP scenarios S1–S3 against limits and peers.
    Suite(suite::SuiteArgs),
    /// Outbox append, relay and consumer throughput on SQLite and PostgreSQL.
    Toolkit(toolkit::Args),
    /// (internal) Run one benchmark server.
    Serve(servers::ServeArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        // Servers get a runtime of their own sized like a production service.
        Command::Serve(args) => servers::serve(args),
        Command::Suite(args) => tokio::runtime::Runtime::new()?.block_on(suite::run(args)),
        Command::Toolkit(args) => tokio::runtime::Runtime::new()?.block_on(async move {
            let results = toolkit::run_all(&args).await?;
            println!("{}", toolkit::markdown(&results));
            if let Some(path) = &args.json {
                std::fs::write(path, serde_json::to_vec_pretty(&results)?)?;
                eprintln!("results written to {}", path.display());
            }
            Ok(())
        }),
    }
}
