//! The Prometheus recorder and HTTP request metrics.

use std::collections::HashMap;
use std::sync::{LazyLock, OnceLock, RwLock};
use std::time::Duration;

use http::{Method, StatusCode};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// How often histogram samples are folded into their buckets. The recorder keeps every
/// sample until then: without upkeep, a process nobody scrapes grows by every request.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Histogram buckets, in seconds: 1 ms to 10 s.
pub const BUCKETS_SECONDS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets of `order_settle_duration_seconds`, in seconds: 50 ms to 5 minutes — an
/// order's whole path, with a bucket edge at the seeds' 5 s bound the alert uses.
pub const SETTLE_BUCKETS_SECONDS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// The process-wide Prometheus recorder (installed on first use, with a thread that runs
/// its upkeep every [`UPKEEP_INTERVAL`]); `None` if another recorder was installed first.
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    PROMETHEUS.get_or_init(install).as_ref()
}

fn install() -> Option<PrometheusHandle> {
    let installed = PrometheusBuilder::new()
        .set_buckets(&BUCKETS_SECONDS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("order_settle_duration_seconds".to_owned()),
                &SETTLE_BUCKETS_SECONDS,
            )
        })
        .and_then(|b| b.install_recorder());
    let handle = match installed {
        Ok(handle) => handle,
        Err(error) => {
            tracing::warn!(%error, "metrics recorder not installed");
            return None;
        }
    };
    crate::catalogue::describe_all();
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

/// The method made for the label: one of the nine standard methods, or
/// [`OTHER_METHOD`] for anything a client made up. A label taken from client input must
/// have a bounded set of values: with the method as sent, 3,000 invented methods made
/// 3,000 series.
pub fn known_method(method: &Method) -> &Method {
    static OTHER: LazyLock<Method> =
        LazyLock::new(|| Method::from_bytes(OTHER_METHOD.as_bytes()).unwrap_or(Method::OPTIONS));
    match *method {
        Method::GET
        | Method::HEAD
        | Method::POST
        | Method::PUT
        | Method::DELETE
        | Method::PATCH
        | Method::OPTIONS
        | Method::CONNECT
        | Method::TRACE => method,
        _ => &OTHER,
    }
}

/// The `method` label of a request whose method is not a standard one.
pub const OTHER_METHOD: &str = "other";

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => OTHER_METHOD,
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

/// Counts one answered request and records its duration. `route` must be the matched
/// route template (or a fixed word), never the raw path: it is a label.
pub fn record_http(route: &str, method: &Method, status: StatusCode, elapsed: Duration) {
    let method = known_method(method);
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
        requests: metrics::counter!("http_requests_total", "route" => route.to_owned(), "method" => method_label(method), "status" => status.as_u16().to_string()),
        duration: metrics::histogram!("http_request_duration_seconds", "route" => route.to_owned(), "method" => method_label(method)),
    };
    handles.record(elapsed);
    all.entry(Box::from(route)).or_default().push(handles);
}
