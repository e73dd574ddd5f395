//! The lag monitor's gauges (read back from the Prometheus recorder) and the shape of
//! its JSON snapshot.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use eddy_core::OffsetDateTime;
use eddy_telemetry::{prometheus, LagConfig, LagMonitor, PartitionSample};

fn t(seconds: i64) -> OffsetDateTime {
    OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(1_800_000_000 + seconds)
}

/// Partition `partition`: `end` records, one a second (record o appended at o s).
fn sample(partition: u32, end: u64, committed: u64) -> PartitionSample {
    PartitionSample {
        partition,
        end_offset: end,
        committed_offset: Some(committed),
        committed_at: None,
        oldest_unconsumed_offset: committed.min(end),
        oldest_unconsumed_at: (committed < end).then(|| t(committed as i64)),
    }
}

fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().find(|l| l.starts_with(prefix))
}

fn value(text: &str, series: &str) -> String {
    let found =
        line(text, &format!("{series} ")).unwrap_or_else(|| panic!("no {series} in:\n{text}"));
    found[series.len() + 1..].to_owned()
}

/// A stopped consumer of "orders" (partition 0 lags 6,000 and never moves; partition
/// 1 is caught up) and one that keeps up with "payments".
fn scripted() -> LagMonitor {
    let monitor = LagMonitor::new(LagConfig::default()).unwrap();
    for i in 0..5 {
        let at = 15 * i;
        monitor.record(
            "billing",
            "orders",
            t(10_000 + at),
            &[sample(0, 10_000, 4_000), sample(1, 500, 500)],
        );
        let end = 10_000 + at as u64;
        monitor.record(
            "shipping",
            "payments",
            t(10_000 + at),
            &[sample(0, end, end - 3)],
        );
    }
    monitor
}

#[test]
fn the_monitor_sets_lag_gauges_per_topic_and_partition() {
    let handle = prometheus().expect("the recorder installs");
    scripted().snapshot().export();
    let text = handle.render();

    let orders = r#"group="billing",topic="orders""#;
    assert_eq!(
        value(&text, &format!("consumer_lag_messages{{{orders}}}")),
        "6000"
    );
    // The oldest unconsumed record (offset 4,000, appended at 4,000 s) at 10,060 s.
    assert_eq!(
        value(&text, &format!("consumer_lag_seconds{{{orders}}}")),
        "6060"
    );
    // Not catching up: +Inf, which the recorder writes as `inf` (Prometheus parses
    // floats with Go's strconv.ParseFloat, which reads it as +Inf).
    assert_eq!(
        value(&text, &format!("consumer_catch_up_seconds{{{orders}}}")),
        "inf"
    );
    assert_eq!(
        value(
            &text,
            &format!(r#"consumer_lag_status{{{orders},status="STOPPED"}}"#)
        ),
        "1"
    );
    for other in ["OK", "WARNING", "GROWING", "CRITICAL", "STALLED"] {
        assert_eq!(
            value(
                &text,
                &format!(r#"consumer_lag_status{{{orders},status="{other}"}}"#)
            ),
            "0",
            "{other}"
        );
    }
    assert_eq!(
        value(
            &text,
            &format!(r#"consumer_partition_lag_messages{{{orders},partition="0"}}"#)
        ),
        "6000"
    );
    assert_eq!(
        value(
            &text,
            &format!(r#"consumer_partition_lag_messages{{{orders},partition="1"}}"#)
        ),
        "0"
    );
    assert_eq!(
        value(
            &text,
            &format!(r#"consumer_partition_lag_seconds{{{orders},partition="1"}}"#)
        ),
        "0"
    );

    let payments = r#"group="shipping",topic="payments""#;
    assert_eq!(
        value(&text, &format!("consumer_lag_messages{{{payments}}}")),
        "3"
    );
    assert_eq!(
        value(&text, &format!("consumer_lag_seconds{{{payments}}}")),
        "3"
    );
    assert_eq!(
        value(
            &text,
            &format!(r#"consumer_lag_status{{{payments},status="OK"}}"#)
        ),
        "1"
    );
    // Steady: consumption equals production, the 3 in flight never reach 0.
    assert_eq!(
        value(&text, &format!("consumer_catch_up_seconds{{{payments}}}")),
        "inf"
    );
}

#[test]
fn the_snapshot_serializes_every_group_topic_and_partition() {
    let json = serde_json::to_value(scripted().snapshot()).unwrap();
    let billing = &json["groups"][0];
    assert_eq!(billing["group"], "billing");
    assert_eq!(billing["status"], "STOPPED");
    assert_eq!(billing["lag_messages"], 6000);
    assert_eq!(billing["lag_seconds"], 6060.0);
    let orders = &billing["topics"][0];
    assert_eq!(orders["topic"], "orders");
    assert_eq!(orders["status"], "STOPPED");
    assert_eq!(
        orders["catch_up"],
        serde_json::json!({"state": "not_catching_up"})
    );
    let p0 = &orders["partitions"][0];
    let mut keys: Vec<&str> = p0.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut expected = [
        "partition",
        "status",
        "sampled_at",
        "end_offset",
        "committed_offset",
        "lag_messages",
        "lag_seconds",
        "consumption_per_second",
        "production_per_second",
        "lag_growth_per_second",
        "catch_up",
        "window_len",
        "window_seconds",
    ];
    expected.sort_unstable();
    assert_eq!(keys, expected, "{p0}");
    assert_eq!(p0["partition"], 0);
    assert_eq!(p0["sampled_at"], "2027-01-15T10:47:40Z");
    assert_eq!(p0["end_offset"], 10000);
    assert_eq!(p0["committed_offset"], 4000);
    assert_eq!(p0["consumption_per_second"], 0.0);
    assert_eq!(p0["window_len"], 5);
    assert_eq!(p0["window_seconds"], 60.0);
    let p1 = &orders["partitions"][1];
    assert_eq!(p1["status"], "OK");
    assert_eq!(p1["catch_up"], serde_json::json!({"state": "caught_up"}));

    let shipping = &json["groups"][1];
    assert_eq!(shipping["topics"][0]["partitions"][0]["lag_seconds"], 3.0);

    // An estimate carries its seconds; too few samples say so.
    let monitor = LagMonitor::new(LagConfig::default()).unwrap();
    monitor.record("g", "t", t(0), &[sample(0, 1_000, 0)]);
    let json = serde_json::to_value(monitor.snapshot()).unwrap();
    let p = &json["groups"][0]["topics"][0]["partitions"][0];
    assert_eq!(p["catch_up"], serde_json::json!({"state": "unknown"}));
    assert!(p["consumption_per_second"].is_null());
    monitor.record("g", "t", t(10), &[sample(0, 1_010, 110)]);
    let json = serde_json::to_value(monitor.snapshot()).unwrap();
    // Consuming 11/s against 1/s: 900 left at 10/s net.
    assert_eq!(
        json["groups"][0]["topics"][0]["catch_up"],
        serde_json::json!({"state": "estimate", "seconds": 90.0})
    );
}
