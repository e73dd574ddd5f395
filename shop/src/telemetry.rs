//! Logs, metrics and the handler timing wrapper.
//!
//! Metrics (Prometheus text at `/metrics`): `http_requests_total` and
//! `http_request_duration_seconds` by route and status; `event_processing_duration_seconds`
//! and `events_failed_total` by consumer and event type; `events_published_total` by
//! service (relay); `events_dead_lettered_total` by consumer; `consumer_lag_messages`
//! by group and topic; `outbox_pending_messages` by service.

use std::collections::HashMap;
use std::sync::{LazyLock, OnceLock, RwLock};
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};

use eddy_core::{async_trait, Envelope, Event, Handler, HandlerError};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// How often histogram samples are folded into their buckets. The recorder keeps every
/// sample until then: without upkeep, a process nobody scrapes grows by every request.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The process-wide Prometheus recorder (installed on first use, with a thread that runs
/// its upkeep every 5 s).
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| {
            let buckets = [
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ];
            match PrometheusBuilder::new()
                .set_buckets(&buckets)
                .and_then(|b| b.install_recorder())
            {
                Ok(handle) => {
                    let upkeep = handle.clone();
                    let spawned = std::thread::Builder::new()
                        .name("metrics-upkeep".to_owned())
                        .spawn(move || loop {
                            std::thread::sleep(UPKEEP_INTERVAL);
                            upkeep.run_upkeep();
                        });
                    if let Err(error) = spawned {
                        tracing::warn!(%error, "no metrics upkeep thread; histograms fold only when scraped");
                    }
                    Some(handle)
                }
                Err(error) => {
                    tracing::warn!(%error, "metrics recorder not installed");
                    None
                }
            }
        })
        .as_ref()
}

/// `http_requests_total` and `http_request_duration_seconds` handles per route, method
/// and status, resolved once: building the labelled key and looking it up in the
/// registry on every request cost a few microseconds of CPU per request (S1).
static HTTP_METRICS: LazyLock<RwLock<HashMap<Box<str>, Vec<HttpHandles>>>> =
    LazyLock::new(RwLock::default);

struct HttpHandles {
    method: Method,
    status: StatusCode,
    requests: metrics::Counter,
    duration: metrics::Histogram,
}

impl HttpHandles {
    fn record(&self, elapsed: Duration) {
        self.requests.increment(1);
        self.duration.record(elapsed.as_secs_f64());
    }
}

fn find<'a>(
    handles: &'a HashMap<Box<str>, Vec<HttpHandles>>,
    route: &str,
    method: &Method,
    status: StatusCode,
) -> Option<&'a HttpHandles> {
    handles
        .get(route)?
        .iter()
        .find(|h| h.method == *method && h.status == status)
}

/// Counts one answered request and records its duration.
pub fn record_http(route: &str, method: &Method, status: StatusCode, elapsed: Duration) {
    if let Some(handles) = find(
        &HTTP_METRICS.read().unwrap_or_else(|p| p.into_inner()),
        route,
        method,
        status,
    ) {
        return handles.record(elapsed);
    }
    let mut all = HTTP_METRICS.write().unwrap_or_else(|p| p.into_inner());
    // Another request may have registered them since the read.
    if let Some(handles) = find(&all, route, method, status) {
        return handles.record(elapsed);
    }
    let handles = HttpHandles {
        method: method.clone(),
        status,
        requests: metrics::counter!("http_requests_total", "route" => route.to_owned(), "method" => method.to_string(), "status" => status.as_u16().to_string()),
        duration: metrics::histogram!("http_request_duration_seconds", "route" => route.to_owned(), "method" => method.to_string()),
    };
    handles.record(elapsed);
    all.entry(Box::from(route)).or_default().push(handles);
}

/// Installs the log subscriber: JSON lines or text, filtered by `level`.
pub fn init_logs(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Times a handler and counts its failures.
#[derive(Debug, Clone)]
pub struct Timed<H> {
    pub consumer: &'static str,
    pub inner: H,
}

#[async_trait]
impl<E: Event, H: Handler<E>> Handler<E> for Timed<H> {
    async fn handle(&self, event: E, envelope: &Envelope) -> Result<(), HandlerError> {
        let started = Instant::now();
        let result = self.inner.handle(event, envelope).await;
        metrics::histogram!("event_processing_duration_seconds", "consumer" => self.consumer, "event_type" => E::TYPE)
            .record(started.elapsed().as_secs_f64());
        if let Err(error) = &result {
            metrics::counter!("events_failed_total", "consumer" => self.consumer, "event_type" => E::TYPE, "kind" => error.kind().to_string())
                .increment(1);
        }
        result
    }
}
