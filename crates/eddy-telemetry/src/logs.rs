//! Log setup.

use tracing_subscriber::filter::{FilterExt, FilterFn};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

/// Installs the log subscriber: JSON lines or text, filtered by `level` (tracing's
/// filter syntax; `RUST_LOG` overrides it), without traces. A second call changes
/// nothing. See [`init`].
pub fn init_logs(level: &str, json: bool) {
    init(level, json, None);
}

/// Installs the log subscriber and, with `traces`, the OpenTelemetry bridge that gives
/// Eddy's spans (`eddy-trace`) their contexts and hands them to the exporter. A second
/// call changes nothing (tests start several platforms in one process).
///
/// The two are filtered apart: the log level decides which lines are written, never
/// which spans exist — a platform logging only warnings still carries its traces. Only
/// Eddy's own spans are traced (not every library's), and log events do not become
/// span events.
///
/// Colours only when stdout is a terminal (never escape codes in a file), PostgreSQL's
/// notices (`relation … already exists, skipping`, a dozen per start) below the default
/// level unless asked for, and librdkafka's known shutdown noise dropped (see
/// [`noise_filter`]). JSON lines carry, besides the event's own fields, the
/// `trace_id`, `correlation_id` and `event_id` of the spans they were written in.
pub fn init(level: &str, json: bool, traces: Option<&crate::Traces>) {
    // An error means a subscriber is installed already.
    let _ = subscriber(level, json, traces).try_init();
}

/// The subscriber [`init`] installs.
fn subscriber(
    level: &str,
    json: bool,
    traces: Option<&crate::Traces>,
) -> Box<dyn tracing::Subscriber + Send + Sync> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("sqlx::postgres::notice=warn,{level}"))
    });
    let text = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_target(false);
    let lines = if json {
        text.fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(FlatJson)
            .with_filter(filter.and(noise_filter()))
            .boxed()
    } else {
        // Text lines do not carry the messaging spans: their dozen attributes would
        // prefix every line written while handling an event, and formatting them would
        // cost every request and delivery its span's worth of CPU. JSON lines do (the
        // ids they carry come from those spans).
        let not_traced = FilterFn::new(|meta: &tracing::Metadata<'_>| {
            !(meta.is_span() && meta.target() == "eddy_trace")
        });
        text.with_filter(filter.and(noise_filter()).and(not_traced))
            .boxed()
    };
    let spans = traces.map(|traces| {
        // No thread, source location or busy/idle time attributes: a cost per span
        // that says nothing about the event.
        tracing_opentelemetry::layer()
            .with_tracer(traces.tracer())
            .with_threads(false)
            .with_location(false)
            .with_tracked_inactivity(false)
            .with_filter(FilterFn::new(|meta: &tracing::Metadata<'_>| {
                meta.is_span() && meta.target().starts_with("eddy_")
            }))
    });
    let registry = tracing_subscriber::registry().with(lines);
    // Not `.with(spans)` with `spans` None: an absent layer counts as one that wants
    // every span, and the registry then records every span the log filters refuse
    // (a server span per request, a process span per delivery — measured 1–2 µs each).
    match spans {
        Some(spans) => Box::new(registry.with(spans)),
        None => Box::new(registry),
    }
}

/// The span fields a JSON line carries, innermost span first to decide.
const SPAN_FIELDS: [&str; 3] = ["trace_id", "correlation_id", "event_id"];

/// One JSON object per line: `timestamp`, `level`, `target`, the event's fields
/// (`message` among them) and [`SPAN_FIELDS`] from the spans it was written in.
#[derive(Debug, Clone, Copy)]
struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut line = serde_json::Map::new();
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        line.insert("timestamp".into(), now.into());
        line.insert("level".into(), event.metadata().level().as_str().into());
        line.insert("target".into(), event.metadata().target().into());
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<FormattedFields<N>>() else {
                    continue;
                };
                let Ok(serde_json::Value::Object(fields)) =
                    serde_json::from_str::<serde_json::Value>(fields.as_str())
                else {
                    continue;
                };
                for (name, value) in fields {
                    if SPAN_FIELDS.contains(&name.as_str()) {
                        line.insert(name, value);
                    }
                }
            }
        }
        event.record(&mut JsonVisitor(&mut line));
        writeln!(writer, "{}", serde_json::Value::Object(line))
    }
}

/// Writes an event's fields into a JSON object.
struct JsonVisitor<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl tracing::field::Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(
        &mut self,
        field: &tracing::field::Field,
        value: &(dyn std::error::Error + 'static),
    ) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

/// Drops log lines that say nothing is wrong. Today one: rdkafka's `BaseConsumer` closes
/// its queue again when dropped and logs the refusal at ERROR ("Failed to close consumer
/// queue on drop: … BrokerDestroy") — eight lines per clean shutdown on Kafka — although
/// Eddy closed the consumer itself before (and warns when *that* fails). It is the only
/// ERROR that rdkafka module logs, so the target and level name it exactly.
pub fn noise_filter() -> FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool + Clone> {
    FilterFn::new(|meta: &tracing::Metadata<'_>| {
        !(meta.target() == "rdkafka::consumer::base_consumer"
            && *meta.level() == tracing::Level::ERROR)
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tracing_subscriber::layer::Context;
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::Layer;

    struct Count(Arc<AtomicUsize>);

    impl<S: tracing::Subscriber> Layer<S> for Count {
        fn on_event(&self, _: &tracing::Event<'_>, _: Context<'_, S>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Without traces, text logs record no span of eddy-trace's: the platform pays
    /// nothing per request or delivery for spans nobody reads.
    #[test]
    fn without_traces_text_logs_create_no_messaging_or_server_span() {
        for level in ["warn", "info", "debug"] {
            tracing::subscriber::with_default(super::subscriber(level, false, None), || {
                let span = eddy_trace::server_span("GET", "/v1/orders/{id}", None);
                assert!(span.is_disabled(), "a server span exists at {level}");
            });
        }
    }

    #[test]
    fn rdkafkas_close_on_drop_error_is_dropped_and_nothing_else() {
        let seen = Arc::new(AtomicUsize::new(0));
        let subscriber = tracing_subscriber::registry()
            .with(super::noise_filter())
            .with(Count(seen.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(target: "rdkafka::consumer::base_consumer", "Failed to close consumer queue on drop: Consumer queue close error: BrokerDestroy");
            assert_eq!(
                seen.load(Ordering::Relaxed),
                0,
                "the shutdown noise got through"
            );
            tracing::warn!(target: "rdkafka::consumer::base_consumer", "invalid rebalance event");
            tracing::error!(target: "rdkafka::client", "a real error");
            tracing::error!("ours");
        });
        assert_eq!(seen.load(Ordering::Relaxed), 3);
    }

    /// A writer the test reads back.
    #[derive(Clone, Default)]
    struct Buffer(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_written_while_handling_an_event_name_its_trace_correlation_and_event() {
        use eddy_core::{Envelope, Headers, OffsetDateTime};
        let buffer = Buffer::default();
        let writer = buffer.clone();
        // No endpoint: nothing exported, but contexts exist to carry and to log.
        let traces = crate::Traces::new("test", &crate::TraceConfig::default()).unwrap();
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                    .event_format(super::FlatJson)
                    .with_writer(move || writer.clone()),
            )
            .with(tracing_opentelemetry::layer().with_tracer(traces.tracer()));
        let caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut envelope = Envelope::new("t.E", 1, "k", Vec::new(), OffsetDateTime::UNIX_EPOCH)
            .with_header(Headers::TRACEPARENT, caller);
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("before");
            let span = eddy_trace::process_span("eddy_log", "orders", "g", 0, 1, &mut envelope);
            span.in_scope(|| {
                let inner = tracing::info_span!("inner", step = 2);
                inner.in_scope(|| tracing::warn!(attempt = 3_u64, "inside"));
            });
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["message"], "before");
        assert!(lines[0].get("trace_id").is_none(), "{}", lines[0]);
        let inside = &lines[1];
        assert_eq!(inside["message"], "inside");
        assert_eq!(inside["level"], "WARN");
        assert_eq!(inside["attempt"], 3);
        assert_eq!(inside["trace_id"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(inside["event_id"], envelope.id.to_string());
        assert_eq!(
            inside["correlation_id"],
            envelope.correlation_id.to_string()
        );
        // The event now carries the processing span's own context, in the same trace.
        let carried = envelope.headers.get(Headers::TRACEPARENT).unwrap();
        assert!(
            carried.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
            "{carried}"
        );
        assert_ne!(carried, caller);
    }
}
