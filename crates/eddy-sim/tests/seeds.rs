//! The simulation in CI: a few hundred seeds must pass, and a seed must replay exactly.
//! Ten thousand seeds: `cargo run -p eddy-sim --release -- --seeds 10000` (README).

#![allow(clippy::unwrap_used, clippy::expect_used)]

/// Seeds run by `cargo test`; the failures print the command that replays each.
const CI_SEEDS: u64 = 300;

#[test]
fn three_hundred_seeds_keep_every_invariant() {
    let (reports, failures) = eddy_sim::simulate_many(0, CI_SEEDS);
    let report: String = failures.iter().map(ToString::to_string).collect();
    assert!(failures.is_empty(), "{report}");
    let crashes: usize = reports.iter().map(|r| r.crashes).sum();
    let dead: usize = reports.iter().map(|r| r.dead_lettered).sum();
    assert!(
        crashes > 0 && dead > 0,
        "the schedules crashed members ({crashes}) and dead-lettered poison ({dead})"
    );
}

#[test]
fn a_seed_replays_the_same_run() {
    for seed in [7, 1717, 4242] {
        let first = eddy_sim::simulate(seed).unwrap();
        let again = eddy_sim::simulate(seed).unwrap();
        assert_eq!(
            first, again,
            "seed {seed} took another course the second time"
        );
    }
    assert_ne!(
        eddy_sim::simulate(1).unwrap().trace_hash,
        eddy_sim::simulate(2).unwrap().trace_hash,
        "different seeds, different runs"
    );
}
