//! The exporter writes consumer, relay and outbox statistics and lag as Prometheus
//! metrics.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::Ordering;
use std::sync::Arc;

use eddy_core::{async_trait, SystemClock};
use eddy_outbox::{Outbox, Relay, RelayConfig};
use eddy_runtime::ConsumerStats;
use eddy_telemetry::{prometheus, Exporter, LagProbe};
use eddy_testkit::TestDb;

/// A broker that takes everything (the relay never runs here).
struct Accepting;

#[async_trait]
impl eddy_core::Publisher for Accepting {
    async fn publish(&self, _: &str, _: &[eddy_core::Envelope]) -> Result<(), eddy_core::Error> {
        Ok(())
    }
}

struct FixedLag;

#[async_trait]
impl LagProbe for FixedLag {
    async fn lag(&self, group: &str, _topic: &str) -> Option<u64> {
        (group == "known").then_some(42)
    }
}

fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.lines().find(|l| l.starts_with(prefix))
}

#[tokio::test]
async fn statistics_and_lag_become_metrics() {
    let handle = prometheus().expect("the recorder installs");
    let db = TestDb::sqlite().await;
    let outbox = Outbox::open(db.db().clone(), Arc::new(SystemClock))
        .await
        .unwrap();
    let stats = Arc::new(ConsumerStats::default());
    stats.handled.store(7, Ordering::Relaxed);
    stats.dead_lettered.store(2, Ordering::Relaxed);
    let relay = Relay::new(outbox.clone(), Arc::new(Accepting), RelayConfig::default());
    let mut exporter = Exporter::new();
    exporter.consumer("known", "orders", stats.clone());
    exporter.consumer("unknown", "orders", stats);
    exporter.relay("shop", relay.stats(), outbox);
    exporter.export(&FixedLag).await;

    let text = handle.render();
    assert!(
        line(
            &text,
            r#"events_processed_total{consumer="known",topic="orders"} 7"#
        )
        .is_some(),
        "{text}"
    );
    assert!(
        line(
            &text,
            r#"events_dead_lettered_total{consumer="known",topic="orders"} 2"#
        )
        .is_some(),
        "{text}"
    );
    assert!(
        line(
            &text,
            r#"consumer_lag_messages{group="known",topic="orders"} 42"#
        )
        .is_some(),
        "{text}"
    );
    assert!(
        line(&text, r#"consumer_lag_messages{group="unknown""#).is_none(),
        "an unknown lag writes no gauge: {text}"
    );
    assert!(
        line(&text, r#"outbox_pending_messages{service="shop"} 0"#).is_some(),
        "{text}"
    );
    assert!(
        line(
            &text,
            r#"outbox_oldest_pending_age_seconds{service="shop"} 0"#
        )
        .is_some(),
        "{text}"
    );
    assert!(
        line(&text, r#"events_published_total{service="shop"} 0"#).is_some(),
        "{text}"
    );
}
