//! The lag monitor's statuses and numbers on scripted offset series: every sample
//! carries its own time, so each outcome is exact.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use eddy_core::OffsetDateTime;
use eddy_telemetry::{
    CatchUp, LagConfig, LagMonitor, LagStatus, PartitionLag, PartitionSample, TopicLag,
};

/// `seconds` after a fixed start.
fn t(seconds: f64) -> OffsetDateTime {
    OffsetDateTime::UNIX_EPOCH
        + time::Duration::seconds(1_800_000_000)
        + time::Duration::seconds_f64(seconds)
}

/// Partition 0 of a topic whose record `o` was appended at `appended_at(o)`.
fn sample(end: u64, committed: Option<u64>, appended_at: impl Fn(u64) -> f64) -> PartitionSample {
    let oldest = committed.unwrap_or(0).min(end);
    PartitionSample {
        partition: 0,
        end_offset: end,
        committed_offset: committed,
        committed_at: None,
        oldest_unconsumed_offset: oldest,
        oldest_unconsumed_at: (oldest < end).then(|| t(appended_at(oldest))),
    }
}

fn monitor() -> LagMonitor {
    LagMonitor::new(LagConfig::default()).unwrap()
}

fn topic(monitor: &LagMonitor) -> TopicLag {
    let snapshot = monitor.snapshot();
    assert_eq!(snapshot.groups.len(), 1);
    assert_eq!(snapshot.groups[0].topics.len(), 1);
    snapshot.groups[0].topics[0].clone()
}

fn partition(monitor: &LagMonitor) -> PartitionLag {
    topic(monitor).partitions[0].clone()
}

fn record(monitor: &LagMonitor, at: f64, sample: PartitionSample) {
    monitor.record("g", "orders", t(at), &[sample]);
}

fn close(actual: Option<f64>, expected: f64) -> bool {
    actual.is_some_and(|a| (a - expected).abs() < 1e-6)
}

/// 10 records a second (record o appended at o/10 s), sampled every 15 s.
fn ten_per_second(o: u64) -> f64 {
    o as f64 / 10.0
}

#[test]
fn a_consumer_that_keeps_up_with_a_small_steady_lag_is_ok() {
    let m = monitor();
    for i in 1..=10u64 {
        let end = 150 * i;
        record(
            &m,
            15.0 * i as f64,
            sample(end, Some(end - 50), ten_per_second),
        );
        assert_eq!(partition(&m).status, LagStatus::Ok, "sample {i}");
    }
    let p = partition(&m);
    assert_eq!(p.lag_messages, 50);
    assert!(close(p.lag_seconds, 5.0), "{:?}", p.lag_seconds);
    assert!(close(p.consumption_per_second, 10.0));
    assert!(close(p.production_per_second, 10.0));
    assert!(close(p.lag_growth_per_second, 0.0));
    // A lag held steady never reaches zero at these rates.
    assert_eq!(p.catch_up, CatchUp::NotCatchingUp);
}

#[test]
fn the_lag_thresholds_make_warning_from_1000_and_critical_over_5000() {
    for (lag, expected) in [
        (0, LagStatus::Ok),
        (999, LagStatus::Ok),
        (1_000, LagStatus::Warning),
        (5_000, LagStatus::Warning),
        (5_001, LagStatus::Critical),
    ] {
        let m = monitor();
        record(&m, 0.0, sample(10_000, Some(10_000 - lag), ten_per_second));
        assert_eq!(partition(&m).status, expected, "lag {lag}");
    }
    // Configurable.
    let m = LagMonitor::new(LagConfig {
        warning_lag_messages: 10,
        critical_lag_messages: 20,
        ..LagConfig::default()
    })
    .unwrap();
    record(&m, 0.0, sample(100, Some(79), ten_per_second));
    assert_eq!(partition(&m).status, LagStatus::Critical);
}

#[test]
fn a_lag_that_rises_at_every_sample_while_the_consumer_advances_is_growing() {
    let m = monitor();
    // Producers at 20/s (record o at o/20 s), the consumer at 10/s, 100 behind at first.
    let twenty_per_second = |o: u64| o as f64 / 20.0;
    for i in 0..5u64 {
        let at = 100.0 + 15.0 * i as f64;
        let end = 2_000 + 300 * i;
        let committed = 1_900 + 150 * i;
        record(&m, at, sample(end, Some(committed), twenty_per_second));
        // Judged once the window spans 60 s (the fifth sample); below, a lag under
        // 1,000 is OK.
        let expected = if i < 4 {
            LagStatus::Ok
        } else {
            LagStatus::Growing
        };
        assert_eq!(partition(&m).status, expected, "sample {i}");
    }
    let p = partition(&m);
    assert_eq!(p.lag_messages, 700);
    assert!(close(p.lag_growth_per_second, 10.0));
    assert!(close(p.consumption_per_second, 10.0));
    assert!(close(p.production_per_second, 20.0));
    assert_eq!(p.catch_up, CatchUp::NotCatchingUp);

    // Past the warning threshold it stays GROWING (GROWING ranks above WARNING)...
    for i in 5..8u64 {
        let end = 2_000 + 300 * i;
        record(
            &m,
            100.0 + 15.0 * i as f64,
            sample(end, Some(1_900 + 150 * i), twenty_per_second),
        );
    }
    assert_eq!(partition(&m).lag_messages, 1_150);
    assert_eq!(partition(&m).status, LagStatus::Growing);
    // ...and one sample where the lag falls ends it: it is no longer rising throughout.
    record(
        &m,
        100.0 + 15.0 * 8.0,
        sample(
            2_000 + 300 * 8,
            Some(2_000 + 300 * 8 - 1_100),
            twenty_per_second,
        ),
    );
    assert_eq!(partition(&m).status, LagStatus::Warning);
}

#[test]
fn a_committed_offset_that_never_moves_while_commits_arrive_is_stalled() {
    let m = monitor();
    for i in 0..5u64 {
        let at = 15.0 * i as f64;
        let mut s = sample(1_000 + 150 * i, Some(900), ten_per_second);
        // The consumer commits the same offset every few seconds.
        s.committed_at = Some(t(at - 2.0));
        record(&m, at, s);
    }
    let p = partition(&m);
    assert_eq!(p.status, LagStatus::Stalled);
    assert!(close(p.consumption_per_second, 0.0));
    assert_eq!(p.catch_up, CatchUp::NotCatchingUp);
}

#[test]
fn a_consumer_that_commits_nothing_over_the_window_while_lagging_is_stopped() {
    // No commit time reported: an offset that never moved is no commit.
    let m = monitor();
    for i in 0..5u64 {
        record(
            &m,
            15.0 * i as f64,
            sample(1_000 + 150 * i, Some(900), ten_per_second),
        );
        let expected = if i < 4 {
            LagStatus::Ok
        } else {
            LagStatus::Stopped
        };
        assert_eq!(
            partition(&m).status,
            expected,
            "sample {i}: judged once 60 s are covered"
        );
    }

    // A commit time from before the window: the same.
    let m = monitor();
    for i in 0..5u64 {
        let mut s = sample(1_000, Some(900), ten_per_second);
        s.committed_at = Some(t(-30.0));
        record(&m, 15.0 * i as f64, s);
    }
    assert_eq!(partition(&m).status, LagStatus::Stopped);

    // STOPPED outranks CRITICAL.
    let m = monitor();
    for i in 0..5u64 {
        record(
            &m,
            15.0 * i as f64,
            sample(20_000, Some(10_000), ten_per_second),
        );
    }
    assert_eq!(partition(&m).status, LagStatus::Stopped);

    // A group that never committed, with records waiting, is stopped too.
    let m = monitor();
    for i in 0..5u64 {
        record(&m, 15.0 * i as f64, sample(30, None, ten_per_second));
    }
    let p = partition(&m);
    assert_eq!(p.status, LagStatus::Stopped);
    assert_eq!(p.lag_messages, 30);

    // It resumes: one commit and it is no longer stopped.
    record(&m, 75.0, sample(30, Some(10), ten_per_second));
    assert_eq!(partition(&m).status, LagStatus::Ok);
}

#[test]
fn a_slow_topic_whose_consumer_keeps_up_is_ok_and_never_stopped() {
    // Once a minute, and once every five minutes: longer than the whole window (ten
    // samples, 135 s), so the committed offset often does not move across it.
    for period in [60.0, 300.0] {
        slow_topic(period);
    }
}

/// One message every `period` seconds, appended at `period * k + 50` s and committed
/// 12 s later; sampled every 15 s, so the sample at `period * k + 60` s catches it
/// unconsumed, a whole period after the previous commit.
fn slow_topic(period: f64) {
    let appended_at = |o: u64| period * o as f64 + 50.0;
    let m = monitor();
    let mut saw_lag = 0;
    for i in 1..=(period as u64 * 10 / 15) {
        let at = 15.0 * i as f64;
        let end = (((at - 50.0) / period).floor().max(-1.0) as i64 + 1) as u64;
        let committed = ((at - 62.0) / period).floor().max(-1.0) as i64 + 1;
        let mut s = sample(end, Some(committed as u64), appended_at);
        s.committed_at = (committed > 0).then(|| t(appended_at(committed as u64 - 1) + 12.0));
        if s.lag_messages() > 0 {
            saw_lag += 1;
            let age = s.oldest_unconsumed_at.map(|a| (t(at) - a).as_seconds_f64());
            assert!(close(age, 10.0), "at {at}: {age:?} {s:?}");
        }
        record(&m, at, s);
        let p = partition(&m);
        assert_eq!(
            p.status,
            LagStatus::Ok,
            "period {period}, sample at {at} s: {p:?}"
        );
    }
    assert!(
        saw_lag >= 9,
        "the script catches the message unconsumed ({saw_lag} times)"
    );
}

#[test]
fn a_replay_from_offset_zero_gives_a_finite_lag_in_seconds_and_a_catch_up_estimate() {
    // 100,000 records, one a second (record o at o s); the group was caught up, then
    // its offset is reset to 0 and it replays at 1,000 records a second.
    let one_per_second = |o: u64| o as f64;
    let m = monitor();
    let mut at = 100_000.0;
    for _ in 0..3 {
        let end = at as u64;
        record(&m, at, sample(end, Some(end), one_per_second));
        at += 15.0;
    }
    assert_eq!(partition(&m).status, LagStatus::Ok);

    // The reset.
    let end = at as u64;
    record(&m, at, sample(end, Some(0), one_per_second));
    let p = partition(&m);
    assert_eq!(p.lag_messages, end);
    // The oldest unconsumed record's age: exactly as old as the topic, not infinite.
    assert!(close(p.lag_seconds, at), "{:?}", p.lag_seconds);
    assert_eq!(p.status, LagStatus::Critical);
    // A reset is not consumption: only the forward moves before it count (30 offsets
    // in 45 s), never a negative rate.
    assert!(
        close(p.consumption_per_second, 30.0 / 45.0),
        "{:?}",
        p.consumption_per_second
    );
    assert!(p.lag_growth_per_second.is_some_and(f64::is_finite));

    // Replaying: the lag falls, the estimate is finite and shrinks.
    let mut committed = 0u64;
    let mut previous_estimate = f64::INFINITY;
    let mut statuses = Vec::new();
    while committed < end {
        at += 15.0;
        committed = (committed + 15_000).min(at as u64);
        let end = at as u64;
        record(&m, at, sample(end, Some(committed), one_per_second));
        let p = partition(&m);
        statuses.push(p.status);
        let lag_seconds = p.lag_seconds.unwrap();
        assert!(lag_seconds.is_finite() && lag_seconds >= 0.0 && lag_seconds <= at);
        assert!(p.consumption_per_second.unwrap() >= 0.0);
        match p.catch_up {
            CatchUp::Estimate(seconds) => {
                assert!(seconds.is_finite() && seconds > 0.0, "{seconds}");
                assert!(
                    seconds < previous_estimate,
                    "{seconds} after {previous_estimate}"
                );
                previous_estimate = seconds;
            }
            CatchUp::CaughtUp => assert_eq!(p.lag_messages, 0),
            other => panic!("a replay at 1,000/s against 1/s is catching up, got {other:?}"),
        }
    }
    assert!(
        statuses
            .iter()
            .all(|s| matches!(s, LagStatus::Critical | LagStatus::Warning | LagStatus::Ok)),
        "{statuses:?}"
    );
    assert_eq!(statuses.first(), Some(&LagStatus::Critical));
    assert_eq!(statuses.last(), Some(&LagStatus::Ok));
}

#[test]
fn an_idle_caught_up_topic_is_ok_for_ever() {
    let m = monitor();
    // An hour of nothing produced and nothing committed (the last commit long ago).
    for i in 0..240u64 {
        let mut s = sample(1_000, Some(1_000), ten_per_second);
        s.committed_at = Some(t(-86_400.0));
        record(&m, 15.0 * i as f64, s);
        assert_eq!(partition(&m).status, LagStatus::Ok, "sample {i}");
    }
    let p = partition(&m);
    assert_eq!(p.lag_messages, 0);
    assert!(close(p.lag_seconds, 0.0));
    assert_eq!(p.catch_up, CatchUp::CaughtUp);

    // The same topic with ten records the group never took is a stopped consumer.
    let m = monitor();
    for i in 0..240u64 {
        record(
            &m,
            15.0 * i as f64,
            sample(1_000, Some(990), ten_per_second),
        );
    }
    assert_eq!(partition(&m).status, LagStatus::Stopped);
}

#[test]
fn windows_keep_at_most_their_length_and_duration() {
    let m = LagMonitor::new(LagConfig {
        window_len_max: 10,
        window_duration: Duration::from_secs(60),
        judge_span_min: Duration::from_secs(30),
        ..LagConfig::default()
    })
    .unwrap();
    // Every 15 s: the 60 s bound keeps 5 samples (0, 15, ..., 60 s before the newest).
    for i in 0..25u64 {
        record(
            &m,
            15.0 * i as f64,
            sample(100 * i, Some(100 * i), ten_per_second),
        );
    }
    let p = partition(&m);
    assert_eq!(p.window_len, 5);
    assert!((p.window_seconds - 60.0).abs() < 1e-9);

    // Every second: the length bound keeps 10.
    let m = LagMonitor::new(LagConfig {
        window_len_max: 10,
        judge_len_min: 3,
        window_duration: Duration::from_secs(600),
        judge_span_min: Duration::from_secs(5),
        ..LagConfig::default()
    })
    .unwrap();
    for i in 0..25u64 {
        record(&m, i as f64, sample(100 * i, Some(100 * i), ten_per_second));
    }
    let p = partition(&m);
    assert_eq!(p.window_len, 10);
    assert!((p.window_seconds - 9.0).abs() < 1e-9);

    // Old samples drop out of the judgement too: the consumer stops at 2,400; while the
    // window still holds a caught-up sample it is not judged stopped, once the window
    // holds only stuck samples it is.
    for i in 25..34u64 {
        record(&m, i as f64, sample(100 * i, Some(2_400), ten_per_second));
        assert_eq!(partition(&m).status, LagStatus::Ok, "sample {i}");
    }
    record(&m, 34.0, sample(3_400, Some(2_400), ten_per_second));
    assert_eq!(partition(&m).status, LagStatus::Stopped);

    // A gap longer than the duration leaves the newest sample alone.
    record(&m, 10_000.0, sample(5_000, Some(5_000), ten_per_second));
    assert_eq!(partition(&m).window_len, 1);

    // A sample not later than the newest is ignored.
    record(&m, 9_000.0, sample(1, Some(0), ten_per_second));
    assert_eq!(partition(&m).end_offset, 5_000);
}

#[test]
fn a_topic_and_a_group_take_the_worst_status_of_their_partitions() {
    let m = monitor();
    let mut lagging = sample(10_000, Some(3_000), ten_per_second);
    lagging.partition = 1;
    m.record(
        "g",
        "orders",
        t(0.0),
        &[sample(10, Some(10), ten_per_second), lagging],
    );
    m.record(
        "g",
        "payments",
        t(0.0),
        &[sample(10, Some(8), ten_per_second)],
    );
    m.watch("h", "orders");
    let snapshot = m.snapshot();
    let g = &snapshot.groups[0];
    assert_eq!(g.group, "g");
    assert_eq!(g.status, LagStatus::Critical);
    assert_eq!(g.lag_messages, 7_002);
    assert_eq!(g.topics[0].topic, "orders");
    assert_eq!(g.topics[0].status, LagStatus::Critical);
    assert_eq!(g.topics[0].lag_messages, 7_000);
    assert_eq!(g.topics[1].status, LagStatus::Ok);
    // Watched, not sampled yet: present, empty, OK.
    let h = &snapshot.groups[1];
    assert_eq!((h.group.as_str(), h.status), ("h", LagStatus::Ok));
    assert!(h.topics[0].partitions.is_empty());

    // A partition gone from the samples is forgotten.
    m.record(
        "g",
        "orders",
        t(15.0),
        &[sample(10, Some(10), ten_per_second)],
    );
    assert_eq!(m.snapshot().groups[0].topics[0].partitions.len(), 1);
    assert_eq!(m.snapshot().groups[0].status, LagStatus::Ok);
}

#[test]
fn configurations_out_of_bounds_are_refused() {
    for config in [
        LagConfig {
            window_len_max: 1,
            judge_len_min: 1,
            ..LagConfig::default()
        },
        LagConfig {
            window_len_max: 1_000_000,
            ..LagConfig::default()
        },
        LagConfig {
            judge_len_min: 11,
            ..LagConfig::default()
        },
        LagConfig {
            window_duration: Duration::from_secs(30),
            ..LagConfig::default()
        },
        LagConfig {
            warning_lag_messages: 6_000,
            ..LagConfig::default()
        },
    ] {
        assert!(LagMonitor::new(config.clone()).is_err(), "{config:?}");
    }
    assert!(LagConfig::default().validate().is_ok());
}
