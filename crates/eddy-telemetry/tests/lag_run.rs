//! The lag monitor's timer: it samples every interval whether or not consumers
//! commit, skips a failed probe, and stops on shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eddy_core::{async_trait, Clock, Error, OffsetDateTime};
use eddy_telemetry::{LagConfig, LagMonitor, LagStatus, PartitionProbe, PartitionSample};
use tokio_util::sync::CancellationToken;

/// Tokio's (paused) time as wall-clock time.
#[derive(Debug)]
struct TokioClock {
    started: tokio::time::Instant,
    start: OffsetDateTime,
}

impl Clock for TokioClock {
    fn now(&self) -> OffsetDateTime {
        self.start + self.started.elapsed()
    }
}

/// A topic that receives 10 records per call and a group that never commits; the
/// third call fails.
#[derive(Default)]
struct NeverCommitting {
    calls: AtomicU64,
}

#[async_trait]
impl PartitionProbe for NeverCommitting {
    async fn partition_samples(
        &self,
        _group: &str,
        _topic: &str,
    ) -> Result<Vec<PartitionSample>, Error> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if call == 3 {
            return Err(Error::transient("broker away"));
        }
        Ok(vec![PartitionSample {
            partition: 0,
            end_offset: 10 * call,
            committed_offset: Some(0),
            committed_at: None,
            oldest_unconsumed_offset: 0,
            oldest_unconsumed_at: Some(OffsetDateTime::UNIX_EPOCH),
        }])
    }
}

#[tokio::test(start_paused = true)]
async fn the_monitor_samples_on_its_timer_until_stopped() {
    let monitor = LagMonitor::new(LagConfig::default()).unwrap();
    monitor.watch("g", "t");
    let probe = Arc::new(NeverCommitting::default());
    let clock = Arc::new(TokioClock {
        started: tokio::time::Instant::now(),
        start: OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(1_800_000_000),
    });
    let stop = CancellationToken::new();
    let running = tokio::spawn(monitor.clone().run(
        probe.clone(),
        clock,
        Duration::from_secs(15),
        stop.clone(),
    ));

    // Ticks at 0, 15, 30, 45, 60 and 75 s; the third sample failed and was skipped.
    tokio::time::sleep(Duration::from_secs(80)).await;
    assert_eq!(probe.calls.load(Ordering::SeqCst), 6);
    let partition = monitor.snapshot().groups[0].topics[0].partitions[0].clone();
    assert_eq!(partition.window_len, 5);
    assert_eq!(partition.lag_messages, 60);
    // No commit over 75 s of samples with lag: found without any commit to trigger it.
    assert_eq!(partition.status, LagStatus::Stopped);

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(1), running)
        .await
        .expect("run returns on shutdown")
        .unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        probe.calls.load(Ordering::SeqCst),
        6,
        "no sample after the stop"
    );
}
