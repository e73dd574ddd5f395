//! Runtime, relay and outbox statistics as metrics.

use std::sync::Arc;
use std::time::Duration;

use eddy_core::async_trait;
use eddy_outbox::{Outbox, RelayStats};
use eddy_runtime::{ConsumerStats, Workers};
use tokio_util::sync::CancellationToken;

/// Where consumer lag comes from: each broker adapter can tell (`Log::lag`,
/// `Kafka::lag`, `Nats::lag`).
#[async_trait]
pub trait LagProbe: Send + Sync {
    /// Messages of `topic` not yet committed by `group`; `None` when it cannot be told
    /// now (the gauge keeps its last value).
    async fn lag(&self, group: &str, topic: &str) -> Option<u64>;
}

struct ConsumerEntry {
    group: &'static str,
    topic: &'static str,
    stats: Arc<ConsumerStats>,
}

struct RelayEntry {
    service: &'static str,
    stats: Arc<RelayStats>,
    outbox: Outbox,
}

/// Exports the statistics of registered consumers and relays: counters
/// (`events_processed_total`, `events_dead_lettered_total`, `events_published_total`)
/// and gauges (`consumer_lag_messages`, `outbox_pending_messages`,
/// `outbox_oldest_pending_age_seconds`, `outbox_parked_messages`); for supervised workers `worker_up` (1 or 0)
/// and `worker_restarts_total`; per consumer `consumer_fetch_failures_total` and
/// `events_skipped_total` by event type (no handler for it).
#[derive(Default)]
pub struct Exporter {
    consumers: Vec<ConsumerEntry>,
    relays: Vec<RelayEntry>,
    workers: Option<Workers>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("consumers", &self.consumers.len())
            .field("relays", &self.relays.len())
            .finish()
    }
}

impl Exporter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn consumer(
        &mut self,
        group: &'static str,
        topic: &'static str,
        stats: Arc<ConsumerStats>,
    ) {
        self.consumers.push(ConsumerEntry {
            group,
            topic,
            stats,
        });
    }

    /// Exports the state of supervised workers.
    pub fn workers(&mut self, workers: Workers) {
        self.workers = Some(workers);
    }

    pub fn relay(&mut self, service: &'static str, stats: Arc<RelayStats>, outbox: Outbox) {
        self.relays.push(RelayEntry {
            service,
            stats,
            outbox,
        });
    }

    /// Writes every statistic once.
    pub async fn export(&self, lag: &dyn LagProbe) {
        for c in &self.consumers {
            metrics::counter!("events_dead_lettered_total", "consumer" => c.group, "topic" => c.topic)
                .absolute(c.stats.dead_lettered());
            metrics::counter!("events_processed_total", "consumer" => c.group, "topic" => c.topic)
                .absolute(c.stats.handled());
            metrics::counter!("consumer_fetch_failures_total", "consumer" => c.group, "topic" => c.topic)
                .absolute(c.stats.fetch_failures());
            for (event_type, skipped) in c.stats.skipped_by_type() {
                metrics::counter!("events_skipped_total", "consumer" => c.group, "topic" => c.topic, "event_type" => event_type)
                    .absolute(skipped);
            }
            if let Some(lag) = lag.lag(c.group, c.topic).await {
                metrics::gauge!("consumer_lag_messages", "group" => c.group, "topic" => c.topic)
                    .set(lag as f64);
            }
        }
        if let Some(workers) = &self.workers {
            for (name, state) in workers.snapshot() {
                metrics::gauge!("worker_up", "worker" => name.clone()).set(if state.up {
                    1.0
                } else {
                    0.0
                });
                metrics::counter!("worker_restarts_total", "worker" => name)
                    .absolute(state.restarts);
            }
        }
        let now_us = eddy_core::envelope::to_micros(eddy_core::OffsetDateTime::now_utc());
        for r in &self.relays {
            metrics::counter!("events_published_total", "service" => r.service)
                .absolute(r.stats.published());
            match r.outbox.state().await {
                Ok(state) => {
                    metrics::gauge!("outbox_pending_messages", "service" => r.service)
                        .set(state.pending_len as f64);
                    let age_us = state
                        .oldest_pending_at_us
                        .map_or(0, |at| now_us.saturating_sub(at).max(0));
                    metrics::gauge!("outbox_oldest_pending_age_seconds", "service" => r.service)
                        .set(age_us as f64 / 1e6);
                    metrics::gauge!("outbox_parked_messages", "service" => r.service)
                        .set(state.parked_len as f64);
                }
                Err(error) => {
                    tracing::warn!(service = r.service, %error, "cannot read the outbox state")
                }
            }
        }
    }

    /// Exports every `interval` until `stop`.
    pub async fn run(self, lag: Arc<dyn LagProbe>, interval: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => self.export(lag.as_ref()).await,
            }
        }
    }
}
