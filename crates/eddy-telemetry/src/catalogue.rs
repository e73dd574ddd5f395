//! Every metric Eddy and the shop export: name, type, labels and meaning. The recorder
//! describes each one from here (Prometheus `# HELP`), and `docs/metrics.md` is this
//! list rendered ([`markdown`]; a test keeps the two equal).

/// Counter, gauge or histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// One metric's documentation.
#[derive(Debug, Clone, Copy)]
pub struct MetricDoc {
    pub name: &'static str,
    pub kind: Kind,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const fn doc(
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
    help: &'static str,
) -> MetricDoc {
    MetricDoc {
        name,
        kind,
        labels,
        help,
    }
}

/// The whole list, grouped as `docs/metrics.md` shows it.
pub const METRICS: &[MetricDoc] = &[
    doc("http_requests_total", Kind::Counter, &["route", "method", "status"],
        "HTTP requests answered, by route template (`unmatched` for none; the gateway: the service routed to), method (the nine standard ones or `other`) and status."),
    doc("http_request_duration_seconds", Kind::Histogram, &["route", "method"],
        "Time from a request's arrival to its answer, in seconds."),
    doc("http_auth_failures_total", Kind::Counter, &["reason"],
        "Failed authentications: `missing` (no token where one is needed), `malformed`, `expired`, `invalid` (signature, issuer, audience, claims), `forbidden` (a valid token without the right), `rate_limited` (refused unchecked after too many failures from the address)."),
    doc("events_published_total", Kind::Counter, &["service"],
        "Events the service's relay moved from its outbox to the broker."),
    doc("outbox_pending_messages", Kind::Gauge, &["service"],
        "Events committed to the outbox and not yet published."),
    doc("outbox_oldest_pending_age_seconds", Kind::Gauge, &["service"],
        "Age of the oldest unpublished outbox event, in seconds: how far publishing is behind."),
    doc("outbox_parked_messages", Kind::Gauge, &["service"],
        "Outbox rows the relay set aside because the broker refuses them for good (undecodable or permanently rejected); they need a person."),
    doc("events_processed_total", Kind::Counter, &["consumer", "topic"],
        "Events a consumer group handled and committed."),
    doc("events_dead_lettered_total", Kind::Counter, &["consumer", "topic"],
        "Events a consumer gave up on and sent to the topic's dead-letter topic."),
    doc("events_skipped_total", Kind::Counter, &["consumer", "topic", "event_type"],
        "Events a consumer committed without handling because it has no handler for their type (at most 64 types are counted by name)."),
    doc("events_failed_total", Kind::Counter, &["consumer", "event_type", "kind"],
        "Handler attempts that failed, by error kind (`transient`, `permanent`, `unavailable`); retried ones count once per attempt. Kind `newer-schema` counts events refused before any handler because their schema version is newer than the consumer knows (each dead-lettered as such)."),
    doc("event_processing_duration_seconds", Kind::Histogram, &["consumer", "event_type"],
        "Time a handler took per event, in seconds. Under group commit (the shop's consumers) it is the time the event took to become durable: the wait for its batch and the batch's commit included."),
    doc("order_settle_duration_seconds", Kind::Histogram, &["outcome"],
        "End-to-end order time, in seconds: from the order's placement to its settlement (`confirmed` or `cancelled`), as the two events were recorded — the whole saga across services and brokers. Observed by the orders service once the settlement commits."),
    doc("consumer_fetch_failures_total", Kind::Counter, &["consumer", "topic"],
        "Fetches from the broker that failed (the consumer backs off and tries again)."),
    doc("consumer_lag_messages", Kind::Gauge, &["group", "topic"],
        "Records in the topic the group has not committed yet (Kafka's rule: from the committed position, or the oldest record kept, to the end)."),
    doc("consumer_lag_seconds", Kind::Gauge, &["group", "topic"],
        "Age of the oldest record the group has not consumed (sample time − the time the broker stored it), the oldest over partitions; 0 when caught up (docs/lag.md)."),
    doc("consumer_catch_up_seconds", Kind::Gauge, &["group", "topic"],
        "Estimated time to catch up: lag / (consumption rate − production rate) over the lag monitor's window, the slowest partition's; 0 when caught up, +Inf when not catching up (docs/lag.md)."),
    doc("consumer_lag_status", Kind::Gauge, &["group", "topic", "status"],
        "The lag monitor's status as a state set: 1 for the current one of `OK`, `WARNING`, `GROWING`, `CRITICAL`, `STALLED`, `STOPPED`, 0 for the others (docs/lag.md)."),
    doc("consumer_partition_lag_messages", Kind::Gauge, &["group", "topic", "partition"],
        "Records of the partition the group has not consumed (the per-partition part of `consumer_lag_messages`)."),
    doc("consumer_partition_lag_seconds", Kind::Gauge, &["group", "topic", "partition"],
        "Age of the partition's oldest record the group has not consumed; 0 when caught up."),
    doc("worker_up", Kind::Gauge, &["worker"],
        "1 while a supervised worker (a relay, a consumer, a sweep) runs — a consumer from the moment its subscription is made, so one whose subscribe keeps failing or hangs stays 0 — and 0 between its failure and its restart."),
    doc("worker_restarts_total", Kind::Counter, &["worker"],
        "Times a supervised worker failed and was restarted."),
    doc("log_records_dropped_unconsumed_total", Kind::Counter, &[],
        "Embedded log records deleted by retention before every group had consumed them (`broker.log_unconsumed_retention_secs`)."),
    doc("log_records_missing_total", Kind::Counter, &[],
        "Gaps in the embedded log a reader stepped over (records it never saw)."),
    doc("cache_requests_total", Kind::Counter, &["cache", "level", "result"],
        "Cache lookups by level (`l1`, `l2`) and result: `hit`, `negative` (a remembered \"not found\"), `stale` (past its TTL, kept as a fail-safe), `miss`."),
    doc("cache_loads_total", Kind::Counter, &["cache", "outcome"],
        "Loader calls (one per key across every node sharing the Redis), by outcome: `ok`, `error`, `timeout`."),
    doc("cache_load_duration_seconds", Kind::Histogram, &["cache"],
        "Time a loader call took, in seconds."),
    doc("cache_coalesced_waiters_total", Kind::Counter, &["cache", "scope"],
        "Lookups that waited on a load already running instead of starting one: `local` (in this process), `remote` (on another node's lease)."),
    doc("cache_stale_served_total", Kind::Counter, &["cache"],
        "Stale values served because the reload failed or was slower than the soft timeout (fail-safe)."),
    doc("cache_early_refreshes_total", Kind::Counter, &["cache"],
        "Background reloads of a hot entry before its expiry (XFetch)."),
    doc("cache_values_too_large_total", Kind::Counter, &["cache"],
        "Loaded values returned but not cached because their serialized size exceeds `value_bytes_max`."),
    doc("cache_invalidations_total", Kind::Counter, &["cache", "source"],
        "Entries invalidated, by source: `write` (this node), `backplane` (another node's write), `event` (an event said the key changed), `epoch` (the backplane was lost or regained: every L1 entry became stale)."),
    doc("cache_evictions_total", Kind::Counter, &["cache", "cause"],
        "L1 entries dropped by the weight bound (`size`) or at their hard expiry (`expired`)."),
    doc("cache_l1_weight_bytes", Kind::Gauge, &["cache"],
        "Serialized bytes (values and keys) held in L1."),
    doc("cache_l2_errors_total", Kind::Counter, &["cache"],
        "Redis calls that failed or timed out; the cache carried on with L1 and the loader."),
    doc("cache_backplane_up", Kind::Gauge, &["cache"],
        "1 while the cache's Redis pub/sub subscription is up."),
    doc("circuit_breaker_state_changes", Kind::Counter, &["breaker", "from", "to"],
        "Circuit breaker transitions between `closed`, `open` and `half_open`."),
    doc("circuit_breaker_state", Kind::Gauge, &["breaker", "state"],
        "A breaker's state as a state set: 1 for the current one of `closed`, `open`, `half_open`, 0 for the others (from the breaker's creation)."),
    doc("retries_total", Kind::Counter, &[],
        "Retries the resilience layer's retry policy made (within its budget)."),
];

/// Describes every metric to the installed recorder (their `# HELP` lines).
pub fn describe_all() {
    for m in METRICS {
        match m.kind {
            Kind::Counter => metrics::describe_counter!(m.name, m.help),
            Kind::Gauge => metrics::describe_gauge!(m.name, m.help),
            Kind::Histogram => metrics::describe_histogram!(m.name, m.help),
        }
    }
}

/// `docs/metrics.md`: the list as a page.
pub fn markdown() -> String {
    let mut page = String::from(
        "# Metrics\n\nEvery metric the platform exports at `/metrics` (Prometheus text format). \
         Generated from `crates/eddy-telemetry/src/catalogue.rs`, which also writes each \
         metric's `# HELP` line; a test keeps this page equal to it.\n\n\
         | metric | type | labels | meaning |\n|---|---|---|---|\n",
    );
    for m in METRICS {
        let labels = if m.labels.is_empty() {
            "—".to_owned()
        } else {
            m.labels
                .iter()
                .map(|l| format!("`{l}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        page.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            m.name,
            m.kind.as_str(),
            labels,
            m.help
        ));
    }
    page
}

#[cfg(test)]
mod tests {
    #[test]
    fn docs_metrics_md_is_the_catalogue() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/metrics.md");
        let written = std::fs::read_to_string(path).unwrap_or_default();
        if written != super::markdown() {
            if std::env::var_os("EDDY_WRITE_DOCS").is_some() {
                std::fs::write(path, super::markdown()).unwrap_or_else(|e| panic!("{e}"));
            } else {
                panic!("docs/metrics.md differs from the catalogue: run EDDY_WRITE_DOCS=1 cargo test -p eddy-telemetry");
            }
        }
    }

    #[test]
    fn every_metric_the_code_names_is_in_the_catalogue() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
        let mut named = Vec::new();
        for dir in ["crates", "shop/src"] {
            collect(&std::path::Path::new(root).join(dir), &mut named);
        }
        assert!(named.len() >= 15, "found only {named:?}");
        for name in named {
            assert!(
                super::METRICS.iter().any(|m| m.name == name),
                "{name} is exported but not in the catalogue"
            );
        }
    }

    /// Names in `counter!("…"`, `gauge!("…"` and `histogram!("…"` under `dir`.
    fn collect(dir: &std::path::Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if !path.ends_with("target") {
                    collect(&path, out);
                }
            } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("catalogue.rs")
            {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                for macro_name in ["counter!(\"", "gauge!(\"", "histogram!(\""] {
                    for (i, _) in text.match_indices(macro_name) {
                        let rest = &text[i + macro_name.len()..];
                        if let Some(end) = rest.find('"') {
                            out.push(rest[..end].to_owned());
                        }
                    }
                }
            }
        }
    }
}
