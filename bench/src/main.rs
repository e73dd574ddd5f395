//! # eddy-bench — Eddy's benchmark program
//!
//! Measures, in one run and side by side with a baseline that does the same work
//! without Eddy, the toolkit's storage paths on SQLite and PostgreSQL:
//!
//! - `append`: transactions that each append events to the outbox, at a given
//!   concurrency, against the baseline of plain `INSERT`s of the same rows;
//! - `relay`: draining an outbox backlog into the embedded log (in its own database);
//! - `consume`: the consumer runtime reading the embedded log and committing, with a
//!   no-op handler and with an idempotent handler that writes a row per event, against
//!   the baseline of raw `SELECT`s of the same records.
//!
//! Runs are repeated (`--repeat`) and interleaved; medians are reported. Results go to
//! standard output as a markdown table and, with `--json`, to a file.
//!
//! ```text
//! cargo run --release -p eddy-bench -- --backend sqlite --backend postgres
//! ```

mod scenarios;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(about = "Eddy's toolkit benchmarks (outbox append, relay, consumer)")]
pub struct Args {
    /// Databases to measure on: sqlite, postgres (repeatable).
    #[arg(long = "backend", default_values_t = vec!["sqlite".to_owned(), "postgres".to_owned()])]
    pub backends: Vec<String>,
    /// PostgreSQL server url (a database per run is created and dropped).
    #[arg(
        long,
        env = "EDDY_BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    pub postgres_url: String,
    /// Events per measured run.
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    /// Concurrent writers in the append scenario.
    #[arg(long, default_value_t = 16)]
    pub writers: usize,
    /// Runs per scenario; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// SQLite `synchronous`: full (fsync per commit) or normal.
    #[arg(long, default_value = "full")]
    pub sqlite_synchronous: String,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let results = scenarios::run_all(&args).await?;
    println!("{}", scenarios::markdown(&results));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&results)?)?;
        eprintln!("results written to {}", path.display());
    }
    Ok(())
}
