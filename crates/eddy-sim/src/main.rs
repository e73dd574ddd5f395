//! `simulate`: runs the seeded simulation.
//!
//! ```text
//! cargo run -p eddy-sim --release -- --seeds 10000        # seeds 0..10000
//! cargo run -p eddy-sim --release -- --seeds 500 --from 7000
//! cargo run -p eddy-sim --release -- --seed 4242          # replay one seed
//! ```

use std::process::ExitCode;
use std::time::Instant;

fn usage() -> ExitCode {
    eprintln!("usage: simulate --seeds N [--from S] | --seed S");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| -> Option<Result<u64, String>> {
        let at = args.iter().position(|a| a == name)?;
        Some(
            args.get(at + 1)
                .ok_or_else(|| format!("{name} needs a number"))
                .and_then(|v| v.parse().map_err(|e| format!("{name} {v:?}: {e}"))),
        )
    };
    let parsed = (value("--seed"), value("--seeds"), value("--from"));
    let (from, count) = match parsed {
        (Some(Ok(seed)), None, None) => (seed, 1),
        (None, Some(Ok(count)), None) => (0, count),
        (None, Some(Ok(count)), Some(Ok(from))) => (from, count),
        (Some(Err(e)), _, _) | (_, Some(Err(e)), _) | (_, _, Some(Err(e))) => {
            eprintln!("{e}");
            return usage();
        }
        _ => return usage(),
    };
    let started = Instant::now();
    let (reports, failures) = eddy_sim::simulate_many(from, count);
    let published: usize = reports.iter().map(|r| r.published).sum();
    let crashes: usize = reports.iter().map(|r| r.crashes).sum();
    let restarts: usize = reports.iter().map(|r| r.restarts).sum();
    for failure in &failures {
        eprint!("{failure}");
    }
    if count == 1 {
        if let Some(report) = reports.first() {
            println!("{report:?}");
        }
    }
    println!(
        "{} of {count} seeds passed ({}..{}) in {:.1} s: {published} events, {crashes} crashes, {restarts} restarts",
        reports.len(),
        from,
        from.saturating_add(count),
        started.elapsed().as_secs_f64()
    );
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
