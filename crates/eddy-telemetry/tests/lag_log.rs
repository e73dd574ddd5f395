//! The embedded log as a [`PartitionProbe`], on SQLite: end and committed offsets and
//! the storage time of each partition's oldest unconsumed record, and the monitor
//! sampling it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use eddy_core::{Clock, ManualClock, OffsetDateTime, Publisher, Subscriber, Subscription};
use eddy_log::{partition_for_key, Log, LogConfig};
use eddy_telemetry::{LagConfig, LagMonitor, LagStatus, PartitionProbe, PartitionSample};
use eddy_testkit::conformance::commit_all;
use eddy_testkit::events::Numbered;
use eddy_testkit::TestDb;

/// Fetches until `count` deliveries arrived.
async fn fetch(subscription: &dyn Subscription, count: usize) -> Vec<eddy_core::Delivery> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while out.len() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "got {} of {count}",
            out.len()
        );
        out.extend(subscription.fetch(count - out.len()).await.unwrap());
    }
    out
}

fn of(samples: &[PartitionSample], partition: u32) -> &PartitionSample {
    samples.iter().find(|s| s.partition == partition).unwrap()
}

#[tokio::test]
async fn the_log_tells_each_partitions_end_committed_offset_and_oldest_unconsumed_record() {
    let db = TestDb::sqlite().await;
    // Whole seconds: the log stores microseconds.
    let start = OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(1_800_000_000);
    let clock = ManualClock::new(start);
    let config = LogConfig {
        heartbeat_interval: Duration::from_millis(50),
        fallback_poll_interval: Duration::from_millis(50),
        unconsumed_retention: Some(Duration::from_secs(3_600)),
        ..LogConfig::default()
    };
    let log = Log::open_with_clock(db.db().clone(), config, Arc::new(clock.clone()))
        .await
        .unwrap();
    log.create_topic("t", 2).await.unwrap();
    let used = partition_for_key("key-0", 2);
    let empty = 1 - used;

    // Three records at the start, two a minute later, all on one partition.
    log.publish("t", &Numbered::interleaved(1, 3))
        .await
        .unwrap();
    clock.advance(Duration::from_secs(60));
    log.publish("t", &Numbered::interleaved(1, 2))
        .await
        .unwrap();

    // A group that never committed waits for everything kept, from the first record.
    let samples = log.partition_samples("g", "t").await.unwrap();
    assert_eq!(samples.len(), 2);
    let p = of(&samples, used);
    assert_eq!(
        (p.end_offset, p.committed_offset, p.oldest_unconsumed_offset),
        (5, None, 0)
    );
    assert_eq!(p.oldest_unconsumed_at, Some(start));
    assert_eq!(p.lag_messages(), 5);
    let e = of(&samples, empty);
    assert_eq!(
        (e.end_offset, e.oldest_unconsumed_at, e.lag_messages()),
        (0, None, 0)
    );

    // The group takes and commits the first three: the oldest unconsumed record is the
    // fourth, appended a minute after the start.
    let member = log.subscribe("t", "g").await.unwrap();
    let first = fetch(member.as_ref(), 3).await;
    commit_all(member.as_ref(), &first).await;
    let samples = log.partition_samples("g", "t").await.unwrap();
    let p = of(&samples, used);
    assert_eq!(
        (p.end_offset, p.committed_offset, p.oldest_unconsumed_offset),
        (5, Some(3), 3)
    );
    assert_eq!(
        p.oldest_unconsumed_at,
        Some(start + time::Duration::seconds(60))
    );
    assert_eq!(p.lag_messages(), 2);

    // The monitor samples the log on its clock: 30 s later the oldest has waited 30 s.
    let monitor = LagMonitor::new(LagConfig::default()).unwrap();
    monitor.watch("g", "t");
    clock.advance(Duration::from_secs(30));
    monitor.sample(&log, &clock).await;
    let topic = monitor.snapshot().groups[0].topics[0].clone();
    assert_eq!(topic.lag_messages, 2);
    assert_eq!(topic.lag_seconds, Some(30.0));
    assert_eq!(topic.status, LagStatus::Ok);

    // Caught up: nothing waits, no record time.
    let rest = fetch(member.as_ref(), 2).await;
    commit_all(member.as_ref(), &rest).await;
    let samples = log.partition_samples("g", "t").await.unwrap();
    let p = of(&samples, used);
    assert_eq!(
        (
            p.committed_offset,
            p.oldest_unconsumed_offset,
            p.oldest_unconsumed_at
        ),
        (Some(5), 5, None)
    );
    clock.advance(Duration::from_secs(15));
    monitor.sample(&log, &clock).await;
    let topic = monitor.snapshot().groups[0].topics[0].clone();
    assert_eq!((topic.lag_messages, topic.lag_seconds), (0, Some(0.0)));

    // Retention deletes what a group never consumed: its oldest unconsumed record is
    // the oldest kept, and the count agrees with `Log::lag`.
    clock.advance(Duration::from_secs(7_200));
    log.publish("t", &Numbered::interleaved(1, 1))
        .await
        .unwrap();
    assert_eq!(log.purge_expired(100).await.unwrap(), 5);
    let samples = log.partition_samples("other", "t").await.unwrap();
    let p = of(&samples, used);
    assert_eq!(
        (p.end_offset, p.committed_offset, p.oldest_unconsumed_offset),
        (6, None, 5)
    );
    assert_eq!(p.oldest_unconsumed_at, Some(clock.now()));
    assert_eq!(p.lag_messages(), log.lag("other", "t").await.unwrap());
    member.close().await.unwrap();
}
