//! # eddy-telemetry — what an Eddy service tells its operators
//!
//! Layout:
//!
//! - [`metrics`] — the process-wide Prometheus recorder ([`prometheus`], with upkeep so
//!   histograms stay bounded when nobody scrapes) and [`record_http`], which counts
//!   requests through handles resolved once per route, method and status.
//! - [`timed`] — [`Timed`], a handler wrapper that records
//!   `event_processing_duration_seconds` and `events_failed_total`.
//! - [`exporter`] — [`Exporter`]: consumer, relay and outbox statistics and consumer
//!   lag as metrics, on an interval, until shutdown.
//! - [`lag`] — [`LagMonitor`]: per-partition offset samples from a [`PartitionProbe`]
//!   on a timer, bounded windows, lag in messages and seconds, rates, catch-up time and
//!   a status per partition, topic and group; gauges and a JSON snapshot
//!   (`docs/lag.md`).
//! - [`logs`] — [`init`]: JSON lines or text, filtered, each JSON line with the trace,
//!   correlation and event ids of the work it was written in; and the bridge that
//!   records Eddy's spans (`eddy-trace`) as OpenTelemetry spans.
//! - [`traces`] — [`Traces`]: the OpenTelemetry SDK with an OTLP/HTTP exporter, off
//!   until an endpoint is configured ([`TraceConfig`]).
//!
//! Metric names: `http_requests_total` and `http_request_duration_seconds` (route,
//! method, status); `event_processing_duration_seconds` and `events_failed_total`
//! (consumer, event type); `events_processed_total` and `events_dead_lettered_total`
//! (consumer, topic); `events_published_total` (service); `consumer_lag_messages` (group,
//! topic); `consumer_lag_seconds`, `consumer_catch_up_seconds` (group, topic) and
//! `consumer_lag_status` (group, topic, status), `consumer_partition_lag_messages` and
//! `consumer_partition_lag_seconds` (group, topic, partition);
//! `outbox_pending_messages` and `outbox_oldest_pending_age_seconds` (service).

pub mod catalogue;
pub mod exporter;
pub mod lag;
pub mod logs;
pub mod metrics;
pub mod timed;
pub mod traces;

pub use exporter::{Exporter, LagProbe};
pub use lag::{
    CatchUp, GroupLag, LagConfig, LagMonitor, LagSnapshot, LagStatus, PartitionLag, PartitionProbe,
    PartitionSample, TopicLag,
};
pub use logs::{init, init_logs};
pub use metrics::{known_method, prometheus, record_http};
pub use timed::Timed;
pub use traces::{OtlpProtocol, TraceConfig, Traces};
