//! Traces that follow an event across processes and brokers.
//!
//! The W3C trace context (`traceparent`, `tracestate`) travels in the event's headers
//! ([`Headers::TRACEPARENT`]), whichever broker carries it: the outbox row, the embedded
//! log, Kafka's and NATS's message headers all keep an envelope's headers. This crate
//! reads and writes that context and makes the spans of the OpenTelemetry messaging
//! conventions around an event's life:
//!
//! - [`create`] — `create {topic}`, kind producer: one per event when it is written
//!   to the outbox; its context is what the event carries from then on, so every
//!   consumer's span is its child;
//! - [`send_span`] — `send {topic}`, kind client: one per batch the relay (or the dead
//!   letter path) publishes, linked to each event's context;
//! - [`process_span`] — `process {topic}`, kind consumer: one per delivery, a child of
//!   the event's context, with the group, partition and offset; retries and the dead
//!   letter happen inside it;
//! - [`server_span`] and [`client_span`] for the HTTP edge and outgoing calls.
//!
//! Spans are `tracing` spans; `tracing-opentelemetry` turns them into OpenTelemetry
//! spans when its layer is installed (`eddy-telemetry` does, with the exporter). Without
//! that layer nothing here fails: spans have no context of their own, and an event keeps
//! the context it came with, so a trace is still carried through a process that does
//! not record one.
//!
//! Every span here has a `trace_id` field (and, around an event, `event_id` and
//! `correlation_id`), so every log line written inside it can name them.

use std::str::FromStr;

use eddy_core::{Envelope, Headers};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing::field::Empty;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The only `traceparent` version this reads and writes.
const VERSION: &str = "00";

/// The context in `traceparent` (and `tracestate`), if it is a valid W3C trace
/// context: version `00` (or a later one read as `00`, as the recommendation asks),
/// 32 and 16 lowercase hex digits, neither all zeros.
pub fn parse_traceparent(traceparent: &str, tracestate: Option<&str>) -> Option<SpanContext> {
    let mut parts = traceparent.trim().split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let span_id = parts.next()?;
    let flags = parts.next()?;
    // Version 00 has exactly four parts; a later version may add more.
    if (version == VERSION && parts.next().is_some())
        || version.len() != 2
        || version == "ff"
        || !is_lower_hex(version)
        || trace_id.len() != 32
        || span_id.len() != 16
        || flags.len() != 2
        || ![trace_id, span_id, flags].iter().all(|p| is_lower_hex(p))
    {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let state = tracestate
        .and_then(|s| TraceState::from_str(s).ok())
        .unwrap_or_default();
    let context = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        state,
    );
    context.is_valid().then_some(context)
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `context` as a `traceparent` value.
pub fn traceparent(context: &SpanContext) -> String {
    format!(
        "{VERSION}-{}-{}-{:02x}",
        context.trace_id(),
        context.span_id(),
        context.trace_flags().to_u8() & TraceFlags::SAMPLED.to_u8()
    )
}

/// The trace context `headers` carry, if any (and valid).
pub fn extract(headers: &Headers) -> Option<SpanContext> {
    parse_traceparent(
        headers.get(Headers::TRACEPARENT)?,
        headers.get(Headers::TRACESTATE),
    )
}

/// Writes `context` into `headers`, replacing what they carried.
pub fn inject(context: &SpanContext, headers: &mut Headers) {
    headers.insert(Headers::TRACEPARENT, traceparent(context));
    let state = context.trace_state().header();
    if state.is_empty() {
        headers.remove(Headers::TRACESTATE);
    } else {
        headers.insert(Headers::TRACESTATE, state);
    }
}

/// The context of `span` if it has one (the OpenTelemetry layer is installed and the
/// span is enabled). Starts the span's OpenTelemetry side: set its parent before.
pub fn context_of(span: &Span) -> Option<SpanContext> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}

/// Makes `remote` the parent of `span` (when there is one) and fills `span`'s
/// `trace_id` field: the span's own trace, or `remote`'s when nothing records spans
/// here (so a log line still names the trace the work belongs to). Returns the
/// span's context.
fn adopt(span: &Span, remote: Option<&SpanContext>) -> Option<SpanContext> {
    if let Some(remote) = remote {
        // Fails only when no layer records OpenTelemetry spans, or the span is
        // disabled: then there is no context to set a parent on.
        let _ =
            span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote.clone()));
    }
    let own = context_of(span);
    if let Some(trace) = own.as_ref().or(remote).map(SpanContext::trace_id) {
        span.record("trace_id", tracing::field::display(trace));
    }
    own
}

/// The span in which a consumer processes one delivered event: `process {topic}`,
/// kind consumer, the child of the context the event carries. The event's headers are
/// rewritten to carry this span's context, so what the handler causes (events it
/// publishes, calls it makes, the dead letter) is this span's child.
pub fn process_span(
    system: &'static str,
    topic: &str,
    group: &str,
    partition: u32,
    offset: u64,
    envelope: &mut Envelope,
) -> Span {
    let span = tracing::info_span!(
        "process",
        otel.name = %format_args!("process {topic}"),
        otel.kind = "consumer",
        otel.status_code = Empty,
        messaging.system = system,
        messaging.operation.type = "process",
        messaging.destination.name = topic,
        messaging.consumer.group.name = group,
        messaging.destination.partition.id = partition,
        messaging.kafka.offset = offset,
        messaging.message.id = %envelope.id,
        eddy.event_type = %envelope.event_type,
        eddy.attempts = Empty,
        trace_id = Empty,
        correlation_id = %envelope.correlation_id,
        event_id = %envelope.id,
    );
    // Nothing records it (no subscriber wants these spans): the event keeps what it
    // carries, and reading its context would be work on every delivery for nothing.
    if span.is_disabled() {
        return span;
    }
    let remote = extract(&envelope.headers);
    if let Some(own) = adopt(&span, remote.as_ref()) {
        inject(&own, &mut envelope.headers);
    }
    span
}

tokio::task_local! {
    /// The context a request came with, while it is handled (see [`carrying`]).
    static CARRIED: SpanContext;
}

/// Runs `work` (the handling of a request) with `context` — the caller's — at hand for
/// [`create`]: when no spans are recorded here, an event the request creates carries the
/// caller's context instead of none, so a trace started upstream is not cut at the
/// first process that does not record.
pub async fn carrying<F: std::future::Future>(context: Option<SpanContext>, work: F) -> F::Output {
    match context {
        Some(context) => CARRIED.scope(context, work).await,
        None => work.await,
    }
}

/// The context work in progress here belongs to: the current span's when spans are
/// recorded, else the request's being handled ([`carrying`]), else none. For stamping
/// an event made without a cause (by a request) before it is stored anywhere.
pub fn current() -> Option<SpanContext> {
    context_of(&Span::current()).or_else(|| CARRIED.try_with(SpanContext::clone).ok())
}

/// The span that creates `envelope` for `topic` (written to the outbox): `create
/// {topic}`, kind producer, the child of the context the envelope carries (the event
/// that caused it) or else of the current span (the request that made it). Closed at
/// once; the envelope carries its context. When no span is recorded here: the context
/// of the request being handled ([`carrying`]) for an envelope that carries none, else
/// `None` — the envelope keeps what it carries.
pub fn create(topic: &str, envelope: &Envelope) -> Option<SpanContext> {
    let span = create_span(topic, envelope);
    let remote = extract(&envelope.headers);
    match adopt(&span, remote.as_ref()) {
        Some(own) => Some(own),
        None if remote.is_none() => CARRIED.try_with(SpanContext::clone).ok(),
        None => None,
    }
}

/// The span [`create`] makes.
fn create_span(topic: &str, envelope: &Envelope) -> Span {
    tracing::info_span!(
        "create",
        otel.name = %format_args!("create {topic}"),
        otel.kind = "producer",
        messaging.operation.type = "create",
        messaging.destination.name = topic,
        messaging.message.id = %envelope.id,
        eddy.event_type = %envelope.event_type,
        trace_id = Empty,
        correlation_id = %envelope.correlation_id,
        event_id = %envelope.id,
    )
}

/// The span of publishing `events` to `topic` in one call: `send {topic}`, kind client
/// (the events were created in spans of their own), the child of the current span and
/// linked to each event's context — a batch belongs to many traces.
pub fn send_span(system: &'static str, topic: &str, events: &[Envelope]) -> Span {
    let span = tracing::info_span!(
        "send",
        otel.name = %format_args!("send {topic}"),
        otel.kind = "client",
        otel.status_code = Empty,
        messaging.system = system,
        messaging.operation.type = "send",
        messaging.destination.name = topic,
        messaging.batch.message_count = events.len(),
        trace_id = Empty,
    );
    // A batch of one belongs to that event's trace: say so in its log lines.
    let mut single = None;
    for envelope in events {
        if let Some(context) = extract(&envelope.headers) {
            if events.len() == 1 {
                single = Some(context.clone());
            }
            span.add_link(context);
        }
    }
    if let Some(trace) = context_of(&span)
        .or(single)
        .map(|context| context.trace_id())
    {
        span.record("trace_id", tracing::field::display(trace));
    }
    span
}

/// The span of answering one HTTP request: `{method} {route}`, kind server, the child
/// of `caller`, the context the caller's `traceparent` names ([`parse_traceparent`]) if
/// it sent one. `route` is the route template, never the raw path (a span name per URL
/// would be unbounded).
pub fn server_span(method: &str, route: &str, caller: Option<&SpanContext>) -> Span {
    let span = tracing::info_span!(
        "request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method,
        http.route = route,
        http.response.status_code = Empty,
        trace_id = Empty,
    );
    adopt(&span, caller);
    span
}

/// The span of one outgoing call named `name` (such as `POST /charges`), kind client,
/// the child of the current span. Pass its [`context_of`] to the callee as
/// `traceparent`.
pub fn client_span(name: &str, server: &str) -> Span {
    let span = tracing::info_span!(
        "call",
        otel.name = name,
        otel.kind = "client",
        otel.status_code = Empty,
        server.address = server,
        http.response.status_code = Empty,
        trace_id = Empty,
    );
    adopt(&span, None);
    span
}

/// Marks `span` failed (`otel.status_code = ERROR`); the error itself belongs in a log
/// line inside the span.
pub fn fail(span: &Span) {
    span.record("otel.status_code", "ERROR");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const SAMPLE: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn a_w3c_traceparent_reads_and_writes_back_the_same() {
        let context = parse_traceparent(SAMPLE, Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(
            context.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert!(context.is_sampled());
        assert!(context.is_remote());
        assert_eq!(traceparent(&context), SAMPLE);
        let mut headers = Headers::new();
        inject(&context, &mut headers);
        assert_eq!(headers.get(Headers::TRACEPARENT), Some(SAMPLE));
        assert_eq!(headers.get(Headers::TRACESTATE), Some("congo=t61rcWkgMzE"));
        assert_eq!(extract(&headers), Some(context));
    }

    #[test]
    fn malformed_or_empty_contexts_are_no_context() {
        for bad in [
            "",
            "00-abc-def-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "0-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ] {
            assert_eq!(parse_traceparent(bad, None), None, "{bad:?}");
        }
        // A later version is read as version 00, its extra parts ignored.
        assert!(parse_traceparent(
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-next",
            None
        )
        .is_some());
    }

    #[test]
    fn without_a_recording_layer_an_event_keeps_the_context_it_came_with() {
        // A subscriber without the OpenTelemetry layer (not none at all: a thread
        // with no subscriber caches "never" for the callsites other tests share).
        let subscriber = tracing_subscriber::registry();
        tracing::subscriber::with_default(subscriber, || {
            let mut envelope = Envelope::new(
                "t.E",
                1,
                "k",
                Vec::new(),
                eddy_core::OffsetDateTime::UNIX_EPOCH,
            )
            .with_header(Headers::TRACEPARENT, SAMPLE);
            let _span = process_span("eddy_log", "t", "g", 0, 7, &mut envelope);
            assert_eq!(envelope.headers.get(Headers::TRACEPARENT), Some(SAMPLE));
            assert_eq!(create("t", &envelope), None);
        });
    }

    #[tokio::test]
    async fn without_a_recording_layer_an_event_a_request_creates_carries_the_callers_context() {
        // A subscriber without the OpenTelemetry layer, as above (not none at all).
        let _subscriber = tracing::subscriber::set_default(tracing_subscriber::registry());
        let caller = parse_traceparent(SAMPLE, None).unwrap();
        let bare = Envelope::new(
            "t.E",
            1,
            "k",
            Vec::new(),
            eddy_core::OffsetDateTime::UNIX_EPOCH,
        );
        let created = carrying(Some(caller.clone()), async { create("t", &bare) }).await;
        assert_eq!(created, Some(caller));
        // Outside a request, or for an event that carries its own context: nothing.
        assert_eq!(create("t", &bare), None);
        let other = "00-11111111111111111111111111111111-2222222222222222-01";
        let caused = bare.clone().with_header(Headers::TRACEPARENT, other);
        let kept = carrying(parse_traceparent(SAMPLE, None), async {
            create("t", &caused)
        })
        .await;
        assert_eq!(kept, None, "the envelope keeps the context it carries");
    }

    /// The spans as OpenTelemetry records them, through the real layer and SDK.
    fn recorded<R>(work: impl FnOnce() -> R) -> (R, Vec<opentelemetry_sdk::trace::SpanData>) {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::prelude::*;
        let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let result = tracing::subscriber::with_default(subscriber, work);
        provider.force_flush().unwrap();
        (result, exporter.get_finished_spans().unwrap())
    }

    #[test]
    fn an_event_is_created_sent_and_processed_in_one_trace() {
        let remote = parse_traceparent(SAMPLE, None).unwrap();
        let ((created, processed_header), spans) = recorded(|| {
            let request = server_span("POST", "/v1/orders", Some(&remote));
            let _in_request = request.enter();
            let mut envelope = Envelope::new(
                "t.E",
                1,
                "k",
                Vec::new(),
                eddy_core::OffsetDateTime::UNIX_EPOCH,
            );
            let created = create("orders", &envelope).unwrap();
            inject(&created, &mut envelope.headers);
            send_span("kafka", "orders", std::slice::from_ref(&envelope)).in_scope(|| {});
            let process = process_span("kafka", "orders", "inventory", 3, 42, &mut envelope);
            drop(process);
            (
                created,
                envelope
                    .headers
                    .get(Headers::TRACEPARENT)
                    .unwrap()
                    .to_owned(),
            )
        });
        let named = |name: &str| {
            spans
                .iter()
                .find(|s| s.name == name)
                .unwrap_or_else(|| panic!("no span {name}: {spans:?}"))
        };
        let request = named("POST /v1/orders");
        let create = named("create orders");
        let send = named("send orders");
        let process = named("process orders");
        for span in [request, create, send, process] {
            assert_eq!(
                span.span_context.trace_id(),
                remote.trace_id(),
                "{}",
                span.name
            );
        }
        assert_eq!(request.parent_span_id, remote.span_id());
        assert_eq!(request.span_kind, opentelemetry::trace::SpanKind::Server);
        assert_eq!(create.parent_span_id, request.span_context.span_id());
        assert_eq!(create.span_kind, opentelemetry::trace::SpanKind::Producer);
        assert_eq!(create.span_context.span_id(), created.span_id());
        assert_eq!(send.span_kind, opentelemetry::trace::SpanKind::Client);
        assert_eq!(
            send.links.links[0].span_context.span_id(),
            created.span_id()
        );
        assert_eq!(process.span_kind, opentelemetry::trace::SpanKind::Consumer);
        assert_eq!(process.parent_span_id, created.span_id());
        let attribute = |key: &str| {
            process
                .attributes
                .iter()
                .find(|kv| kv.key.as_str() == key)
                .map(|kv| kv.value.to_string())
        };
        assert_eq!(attribute("messaging.system").as_deref(), Some("kafka"));
        assert_eq!(
            attribute("messaging.consumer.group.name").as_deref(),
            Some("inventory")
        );
        assert_eq!(
            attribute("messaging.destination.partition.id").as_deref(),
            Some("3")
        );
        assert_eq!(attribute("messaging.kafka.offset").as_deref(), Some("42"));
        // What the handler causes is the processing span's child.
        assert_eq!(processed_header, traceparent(&process.span_context));
    }
}
