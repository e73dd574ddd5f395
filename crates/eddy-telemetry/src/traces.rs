//! Trace export: the OpenTelemetry SDK behind `tracing`, with an OTLP/HTTP exporter.
//!
//! The spans themselves are made by `eddy-trace` (around the HTTP request, each event's
//! creation, each publish and each delivery); this module decides what happens to them.
//! Nothing is recorded until an endpoint is configured ([`Traces::for_service`]): events
//! then carry the context they arrived with, untouched. With an endpoint every span gets
//! a context, so the W3C `traceparent` goes out with every event and call and every log
//! line inside a span names its trace, and the sampled share of traces
//! (`sampling_ratio`, decided at the root and followed by every process the trace
//! reaches) is sent in batches from a thread of the SDK's own, through a bounded queue:
//! when the collector is slow or gone, spans beyond the queue are dropped, never the
//! work they describe.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider,
};
use opentelemetry_sdk::Resource;
use serde::{Deserialize, Serialize};

/// How traces are recorded and exported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TraceConfig {
    /// Record spans when an endpoint is set. Default true; false turns tracing off
    /// whatever the endpoint (what arrives is still carried through).
    pub enabled: bool,
    /// Where to send spans, OTLP over HTTP, the full URL with its signal path (such as
    /// `http://127.0.0.1:4318/v1/traces`). Default empty: nothing is exported.
    pub otlp_endpoint: String,
    /// `http/protobuf` (default) or `http/json`.
    pub otlp_protocol: OtlpProtocol,
    /// The share of new traces exported, 0 to 1 (default 1). A trace that arrives
    /// sampled or not keeps the caller's decision.
    pub sampling_ratio: f64,
    /// Spans waiting for export at most; more are dropped (counted by the SDK's own
    /// log). Default 8192.
    pub queue_len_max: usize,
    /// Spans per export request at most. Default 512.
    pub batch_len_max: usize,
    /// How long one export may take. Default 5 s.
    pub export_timeout_ms: u64,
}

impl Default for TraceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            otlp_endpoint: String::new(),
            otlp_protocol: OtlpProtocol::HttpProtobuf,
            sampling_ratio: 1.0,
            queue_len_max: 8192,
            batch_len_max: 512,
            export_timeout_ms: 5_000,
        }
    }
}

impl TraceConfig {
    /// What is wrong with the settings, if anything.
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.sampling_ratio) {
            return Err(format!(
                "tracing.sampling_ratio must be between 0 and 1, not {}",
                self.sampling_ratio
            ));
        }
        if self.queue_len_max == 0 || self.batch_len_max == 0 {
            return Err("tracing.queue_len_max and tracing.batch_len_max must be above 0".into());
        }
        if self.batch_len_max > self.queue_len_max {
            return Err(format!(
                "tracing.batch_len_max ({}) must not exceed tracing.queue_len_max ({})",
                self.batch_len_max, self.queue_len_max
            ));
        }
        let endpoint = &self.otlp_endpoint;
        let is_url = endpoint.starts_with("http://") || endpoint.starts_with("https://");
        if !endpoint.is_empty() && !is_url {
            return Err(format!(
                "tracing.otlp_endpoint must be an http:// or https:// URL, not {endpoint:?}"
            ));
        }
        Ok(())
    }
}

/// The OTLP encoding over HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OtlpProtocol {
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "http/json")]
    HttpJson,
}

/// The tracer behind the spans; [`Traces::shutdown`] sends what is queued.
#[derive(Debug, Clone)]
pub struct Traces {
    provider: SdkTracerProvider,
    exporting: bool,
}

impl Traces {
    /// What a service installs: the SDK when `config` exports (tracing enabled and an
    /// endpoint set), otherwise nothing. Without it no span is recorded — a span with
    /// the OpenTelemetry layer costs some 5–7 µs of CPU (measured in S1), too much to
    /// pay for spans nobody receives — and events carry on the trace context they came
    /// with, so a trace started upstream still reaches the next process that records.
    pub fn for_service(service: &str, config: &TraceConfig) -> Result<Option<Self>, String> {
        config.validate()?;
        if !config.enabled || config.otlp_endpoint.is_empty() {
            return Ok(None);
        }
        Self::new(service, config).map(Some)
    }

    /// The SDK for `service` as `config` says. Exports only with an endpoint; without
    /// one, spans get contexts (sampled out) but nothing is kept.
    pub fn new(service: &str, config: &TraceConfig) -> Result<Self, String> {
        config.validate()?;
        let resource = Resource::builder()
            .with_attributes([KeyValue::new("service.name", service.to_owned())])
            .build();
        let builder = SdkTracerProvider::builder().with_resource(resource);
        let endpoint = Some(config.otlp_endpoint.as_str()).filter(|e| !e.is_empty());
        let (builder, exporting) = match endpoint {
            Some(endpoint) => {
                let protocol = match config.otlp_protocol {
                    OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
                    OtlpProtocol::HttpJson => Protocol::HttpJson,
                };
                let exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_endpoint(endpoint)
                    .with_protocol(protocol)
                    .with_timeout(Duration::from_millis(config.export_timeout_ms))
                    .build()
                    .map_err(|e| format!("cannot build the OTLP exporter: {e}"))?;
                let batches = BatchConfigBuilder::default()
                    .with_max_queue_size(config.queue_len_max)
                    .with_max_export_batch_size(config.batch_len_max)
                    .with_scheduled_delay(Duration::from_millis(500))
                    .build();
                let processor = BatchSpanProcessor::builder(exporter)
                    .with_batch_config(batches)
                    .build();
                let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                    config.sampling_ratio,
                )));
                (
                    builder.with_span_processor(processor).with_sampler(sampler),
                    true,
                )
            }
            // Contexts without recording: ids to carry and log, nothing kept.
            None => (builder.with_sampler(Sampler::AlwaysOff), false),
        };
        Ok(Self {
            provider: builder.build(),
            exporting,
        })
    }

    /// The tracer the `tracing` bridge writes to.
    pub fn tracer(&self) -> opentelemetry_sdk::trace::Tracer {
        self.provider.tracer("eddy")
    }

    /// Sends what is queued (waiting at most the export timeout) and stops the
    /// exporter. Blocking: call it off the async workers (`spawn_blocking`) or at the
    /// very end.
    pub fn shutdown(&self) {
        if self.exporting {
            if let Err(error) = self.provider.shutdown() {
                tracing::warn!(%error, "cannot export the last spans");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_out_of_range_are_refused_with_their_name() {
        let ok = TraceConfig::default();
        assert_eq!(ok.validate(), Ok(()));
        let bad = TraceConfig {
            sampling_ratio: 1.5,
            ..TraceConfig::default()
        };
        assert!(bad.validate().is_err_and(|e| e.contains("sampling_ratio")));
        let bad = TraceConfig {
            otlp_endpoint: "collector:4318".into(),
            ..TraceConfig::default()
        };
        assert!(bad.validate().is_err_and(|e| e.contains("otlp_endpoint")));
        let bad = TraceConfig {
            batch_len_max: 10_000,
            ..TraceConfig::default()
        };
        assert!(bad.validate().is_err_and(|e| e.contains("batch_len_max")));
    }
}
