//! One snapshot of the platform for the status page, and where each of its numbers
//! comes from.
//!
//! | field | source | cost |
//! |---|---|---|
//! | `throughput.orders_placed_per_sec` | the change of `funnel.placed` (a count of the orders service's `order_view`) between samples | the funnel's query |
//! | `throughput.events_handled_per_sec` | the change of the sum of `events_processed_total` (every consumer of this process) in the Prometheus handle's rendering | one render of the process's metrics |
//! | `funnel` | `SELECT status, cancel_reason, COUNT(*) FROM order_view GROUP BY …` in the orders database; `null` when this process does not run orders | a scan of the view's status index: linear in orders kept |
//! | `lag` | the lag monitor's last judgement, the document of `GET /admin/lag` | none (in memory) |
//! | `dead_letters` | each service's open letters grouped by fingerprint, as `GET /admin/dead-letters` | one grouped query per service, at most `list_len_max` groups |
//! | `breakers` | the services' circuit breakers, as `GET /admin/breakers` | none |
//! | `outbox` | each service's outbox state, as `GET /admin/outbox` | one query per service |
//!
//! Rates are taken over the samples of the last [`RATE_WINDOW`]: `events_processed_total`
//! moves only when the metrics exporter runs (`maintenance.metrics_interval_ms`, 2 s by
//! default), so a rate over one second would jump between zero and twice the truth.
//! The counters are the process's: with several platforms in one process (tests) they
//! add up.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use eddy_dlq::{FailureGroup, Filter};
use serde::Serialize;
use sqlx::Row;

use crate::admin::views;
use crate::admin::Admin;
use crate::contracts::values::Timestamp;
use crate::problem::ApiError;
use crate::service::ServiceName;

/// The span the rates are measured over (longer than the metrics exporter's interval).
pub const RATE_WINDOW: Duration = Duration::from_secs(5);
/// Samples kept for the rates; one is taken at most every `SAMPLE_INTERVAL_MIN`.
const SAMPLES_LEN_MAX: usize = 16;
/// However many pages watch, the counters are sampled at most this often.
const SAMPLE_INTERVAL_MIN: Duration = Duration::from_millis(500);
/// The metric whose sum is "events handled".
const EVENTS_HANDLED_METRIC: &str = "events_processed_total";

/// Everything the status page shows at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub at: Timestamp,
    pub throughput: Throughput,
    /// `null` when this process does not run the orders service.
    pub funnel: Option<Funnel>,
    pub lag: eddy_telemetry::LagSnapshot,
    pub dead_letters: Vec<ServiceLetters>,
    /// `[{"name", "state"}]`, the items of `GET /admin/breakers`.
    pub breakers: serde_json::Value,
    /// `[{"service", "pending", "oldest_pending_age_seconds", …}]`, the items of
    /// `GET /admin/outbox`.
    pub outbox: serde_json::Value,
}

/// Per-second rates over the last [`RATE_WINDOW`]; `null` until two samples are apart.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Throughput {
    /// `null` too when this process does not run orders.
    pub orders_placed_per_sec: Option<f64>,
    /// `null` too when the Prometheus recorder is not installed.
    pub events_handled_per_sec: Option<f64>,
    /// The span the rates were measured over, in seconds.
    pub window_secs: Option<f64>,
}

/// The saga's outcomes: every order the orders service keeps.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Funnel {
    pub placed: u64,
    pub pending: u64,
    pub confirmed: u64,
    pub cancelled: u64,
    /// `out_of_stock`, `unknown_product`, `payment_declined`, `payment_failed`,
    /// `timed_out`, … → count.
    pub cancelled_by_reason: BTreeMap<String, u64>,
}

/// One service's open dead letters, grouped by fingerprint.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceLetters {
    pub service: &'static str,
    pub open: i64,
    pub groups: Vec<FailureGroup>,
}

/// The counters the rates are taken from, sampled at most every
/// `SAMPLE_INTERVAL_MIN` and shared by every page watching this process.
#[derive(Debug, Clone, Default)]
pub struct Sampler {
    samples: Arc<Mutex<VecDeque<Sample>>>,
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    placed: Option<u64>,
    handled: Option<f64>,
}

impl Sampler {
    /// Records the counters read now (unless a sample is younger than
    /// `SAMPLE_INTERVAL_MIN`) and answers the rates over the last [`RATE_WINDOW`].
    fn rates(&self, placed: Option<u64>, handled: Option<f64>) -> Throughput {
        let now = Instant::now();
        let Ok(mut samples) = self.samples.lock() else {
            return Throughput::default();
        };
        let young = samples
            .back()
            .is_some_and(|last| now.duration_since(last.at) < SAMPLE_INTERVAL_MIN);
        if !young {
            if samples.len() >= SAMPLES_LEN_MAX {
                samples.pop_front();
            }
            samples.push_back(Sample {
                at: now,
                placed,
                handled,
            });
        }
        let Some(newest) = samples.back().copied() else {
            return Throughput::default();
        };
        // The oldest sample still within the window (or the oldest there is).
        let Some(oldest) = samples
            .iter()
            .find(|s| newest.at.duration_since(s.at) <= RATE_WINDOW)
            .copied()
        else {
            return Throughput::default();
        };
        let span = newest.at.duration_since(oldest.at).as_secs_f64();
        if span <= 0.0 {
            return Throughput::default();
        }
        let rate = |new: Option<f64>, old: Option<f64>| match (new, old) {
            // A counter that went down was reset (another platform in the process):
            // no rate rather than a negative one.
            (Some(new), Some(old)) if new >= old => Some((new - old) / span),
            _ => None,
        };
        Throughput {
            orders_placed_per_sec: rate(
                newest.placed.map(|n| n as f64),
                oldest.placed.map(|n| n as f64),
            ),
            events_handled_per_sec: rate(newest.handled, oldest.handled),
            window_secs: Some(span),
        }
    }
}

/// Takes one snapshot of what `admin` sees.
pub async fn take(admin: &Admin, sampler: &Sampler) -> Result<Snapshot, ApiError> {
    let funnel = funnel(admin).await?;
    let handled = events_handled();
    let throughput = sampler.rates(funnel.as_ref().map(|f| f.placed), handled);
    let mut dead_letters = Vec::with_capacity(admin.services.len());
    for service in &admin.services {
        let groups = service.dead_letters.groups(&Filter::default()).await?;
        dead_letters.push(ServiceLetters {
            service: service.name.as_str(),
            open: groups.iter().map(|g| g.count).sum(),
            groups,
        });
    }
    // The admin routes' own documents, so the page and `/admin/…` never disagree.
    let mut outbox = views::outbox(State(admin.clone())).await?.0;
    let mut breakers = views::breakers(State(admin.clone())).await.0;
    Ok(Snapshot {
        at: Timestamp::from_micros(now_us()),
        throughput,
        funnel,
        lag: admin.lag.snapshot(),
        dead_letters,
        breakers: breakers["breakers"].take(),
        outbox: outbox["services"].take(),
    })
}

fn now_us() -> i64 {
    let now = time::OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)
}

/// The funnel from the orders service's read model, when this process runs orders.
async fn funnel(admin: &Admin) -> Result<Option<Funnel>, ApiError> {
    let Some(orders) = admin
        .services
        .iter()
        .find(|s| s.name == ServiceName::Orders)
    else {
        return Ok(None);
    };
    let rows = sqlx::query(
        "SELECT status, cancel_reason, COUNT(*) AS orders FROM order_view GROUP BY status, cancel_reason",
    )
    .fetch_all(orders.db.pool())
    .await
    .map_err(|e| eddy_sql::classify("cannot count the orders by status", e))?;
    let mut funnel = Funnel::default();
    for row in &rows {
        let column = |e: sqlx::Error| eddy_sql::classify("cannot read the order counts", e);
        let status: String = row.try_get("status").map_err(column)?;
        let reason: Option<String> = row.try_get("cancel_reason").map_err(column)?;
        let count: i64 = row.try_get("orders").map_err(column)?;
        let count = u64::try_from(count).unwrap_or(0);
        funnel.placed += count;
        match status.as_str() {
            "PENDING" => funnel.pending += count,
            "CONFIRMED" => funnel.confirmed += count,
            _ => {
                funnel.cancelled += count;
                *funnel
                    .cancelled_by_reason
                    .entry(reason.unwrap_or_else(|| "unknown".to_owned()))
                    .or_default() += count;
            }
        }
    }
    Ok(Some(funnel))
}

/// The sum of [`EVENTS_HANDLED_METRIC`] over every consumer, from the Prometheus handle
/// (`None` when no recorder is installed).
fn events_handled() -> Option<f64> {
    let rendered = eddy_telemetry::prometheus()?.render();
    Some(sum_counter(&rendered, EVENTS_HANDLED_METRIC))
}

/// The sum of every series of counter `name` in Prometheus text `rendered`.
fn sum_counter(rendered: &str, name: &str) -> f64 {
    rendered
        .lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_counter_is_summed_over_its_series_and_no_other_metric() {
        let text = "# TYPE events_processed_total counter\n\
            events_processed_total{consumer=\"orders\",topic=\"stock\"} 3\n\
            events_processed_total{consumer=\"inventory\",topic=\"orders\"} 4.5\n\
            events_processed_total_other 100\n\
            events_failed_total{consumer=\"orders\"} 9\n";
        assert!((sum_counter(text, "events_processed_total") - 7.5).abs() < 1e-9);
    }

    #[test]
    fn rates_need_two_samples_apart_and_ignore_a_reset_counter() {
        let sampler = Sampler::default();
        let first = sampler.rates(Some(10), Some(100.0));
        assert!(first.orders_placed_per_sec.is_none());
        {
            let mut samples = sampler.samples.lock().unwrap();
            let back = samples.back_mut().unwrap();
            back.at -= Duration::from_secs(2);
        }
        let second = sampler.rates(Some(14), Some(50.0));
        let placed = second.orders_placed_per_sec.unwrap();
        assert!((placed - 2.0).abs() < 0.1, "{placed}");
        assert!(second.events_handled_per_sec.is_none());
    }
}
