//! An OTLP/HTTP trace receiver for one test: the spans a process exports, captured in
//! memory so the test can assert on them. No OpenTelemetry collector is needed (none can
//! be installed where Eddy's tests run), and a test sees exactly what went over the wire,
//! encoded by the real exporter.
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! use eddy_testkit::otlp::{OtlpReceiver, SpansExt};
//! use std::time::Duration;
//!
//! let receiver = OtlpReceiver::start().await?;
//! // opentelemetry-otlp's HTTP exporter uses `with_endpoint` verbatim, so give it the
//! // full URL; OTEL_EXPORTER_OTLP_ENDPOINT is a base to which it appends /v1/traces.
//! let endpoint = receiver.traces_endpoint();
//! // ... build the exporter with `.with_endpoint(endpoint)`, run the code under test ...
//! let spans = receiver
//!     .wait_for(|spans| spans.named("publish").is_some(), Duration::from_secs(10))
//!     .await
//!     .map_err(std::io::Error::other)?;
//! # Ok(())
//! # }
//! ```
//!
//! What it accepts: `POST /v1/traces` with `application/x-protobuf` or `application/json`
//! bodies (an `ExportTraceServiceRequest`), uncompressed, at most
//! [`OtlpReceiverConfig::body_bytes_max`] long. Answers follow the OTLP/HTTP
//! specification: 200 with an `ExportTraceServiceResponse` in the request's encoding,
//! 400 for a body that does not decode (or carries ids of the wrong length), 413 for a
//! body over the limit, 415 for another content type or a compressed body.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::IntoFuture as _;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use prost::Message as _;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// The path OTLP/HTTP exporters send traces to.
pub const TRACES_PATH: &str = "/v1/traces";

/// Default for [`OtlpReceiverConfig::body_bytes_max`]: 16 MiB, well above what one batch
/// of a test's spans takes (the SDK's batches hold at most 512 spans by default), and
/// small enough that a runaway exporter cannot exhaust the test's memory.
pub const BODY_BYTES_MAX_DEFAULT: usize = 16 * 1024 * 1024;

/// Default for [`OtlpReceiverConfig::spans_len_max`]: far more spans than a test asserts
/// on, yet bounded so that a process that keeps exporting cannot grow the store forever.
pub const SPANS_LEN_MAX_DEFAULT: usize = 100_000;

/// How long [`OtlpReceiver::stop`] lets open connections finish before it aborts the
/// server: a stuck client must not hang the test.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The receiver's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpReceiverConfig {
    /// The longest request body accepted; longer ones get 413.
    pub body_bytes_max: usize,
    /// How many spans are kept. The earliest are kept: spans arriving once the store is
    /// full are dropped, counted in [`OtlpReceiver::dropped_spans`] and reported to the
    /// exporter as rejected (an OTLP partial success), so a test asserting on the start
    /// of a run sees a stable picture.
    pub spans_len_max: usize,
}

impl Default for OtlpReceiverConfig {
    fn default() -> Self {
        Self {
            body_bytes_max: BODY_BYTES_MAX_DEFAULT,
            spans_len_max: SPANS_LEN_MAX_DEFAULT,
        }
    }
}

/// The kind of a span, as OTLP defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SpanKind {
    Unspecified,
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

impl SpanKind {
    /// Unknown numbers become `Unspecified`, as the OTLP specification asks receivers to
    /// treat values they do not know.
    fn from_otlp(kind: i32) -> Self {
        use opentelemetry_proto::tonic::trace::v1::span::SpanKind as Otlp;
        match Otlp::try_from(kind) {
            Ok(Otlp::Internal) => Self::Internal,
            Ok(Otlp::Server) => Self::Server,
            Ok(Otlp::Client) => Self::Client,
            Ok(Otlp::Producer) => Self::Producer,
            Ok(Otlp::Consumer) => Self::Consumer,
            Ok(Otlp::Unspecified) | Err(_) => Self::Unspecified,
        }
    }
}

/// A link from a span to another span (often in another trace).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Link {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
}

/// One received span, flattened out of OTLP's resource → scope → span nesting, with ids
/// in the lowercase hex that `TraceId`/`SpanId` display as, so tests compare strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSpan {
    /// The resource's `service.name` attribute, if it had one.
    pub service_name: Option<String>,
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// `None` for a root span.
    pub parent_span_id: Option<String>,
    pub name: String,
    pub kind: SpanKind,
    /// Values as text: strings as they are, integers, booleans and doubles through
    /// `to_string`, anything else (arrays, maps, bytes) in its `Debug` form.
    pub attributes: BTreeMap<String, String>,
    pub links: Vec<Link>,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
}

impl ReceivedSpan {
    /// An attribute's value as text, if the span has it.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    pub fn is_root(&self) -> bool {
        self.parent_span_id.is_none()
    }
}

/// Look-ups on a set of received spans, for asserting on one trace.
pub trait SpansExt {
    /// The first span with this name.
    fn named(&self, name: &str) -> Option<&ReceivedSpan>;
    /// Every span with this name, in arrival order.
    fn all_named(&self, name: &str) -> Vec<&ReceivedSpan>;
    /// The spans whose parent is `parent`, in arrival order.
    fn children_of(&self, parent: &ReceivedSpan) -> Vec<&ReceivedSpan>;
    /// The spans of one trace (`trace_id` in lowercase hex), in arrival order.
    fn in_trace(&self, trace_id: &str) -> Vec<&ReceivedSpan>;
}

impl SpansExt for [ReceivedSpan] {
    fn named(&self, name: &str) -> Option<&ReceivedSpan> {
        self.iter().find(|span| span.name == name)
    }

    fn all_named(&self, name: &str) -> Vec<&ReceivedSpan> {
        self.iter().filter(|span| span.name == name).collect()
    }

    fn children_of(&self, parent: &ReceivedSpan) -> Vec<&ReceivedSpan> {
        self.iter()
            .filter(|span| {
                span.trace_id == parent.trace_id
                    && span.parent_span_id.as_deref() == Some(parent.span_id.as_str())
            })
            .collect()
    }

    fn in_trace(&self, trace_id: &str) -> Vec<&ReceivedSpan> {
        self.iter()
            .filter(|span| span.trace_id.eq_ignore_ascii_case(trace_id))
            .collect()
    }
}

#[derive(Debug, Default)]
struct Store {
    spans: Vec<ReceivedSpan>,
    requests: u64,
    dropped_spans: u64,
}

/// The store sits in a watch channel so that every export both updates it and wakes the
/// tests waiting in [`OtlpReceiver::wait_for`], with no missed wake-up between a check
/// and the wait.
#[derive(Debug)]
struct Shared {
    store: watch::Sender<Store>,
    spans_len_max: usize,
}

/// An OTLP/HTTP trace receiver on `127.0.0.1` and a free port, serving from a task on the
/// current tokio runtime until [`stop`](Self::stop)ped or dropped.
#[derive(Debug)]
pub struct OtlpReceiver {
    endpoint: String,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl OtlpReceiver {
    /// Starts a receiver with the default limits.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(OtlpReceiverConfig::default()).await
    }

    pub async fn start_with(config: OtlpReceiverConfig) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let address = listener.local_addr()?;
        let shared = Arc::new(Shared {
            store: watch::Sender::new(Store::default()),
            spans_len_max: config.spans_len_max,
        });
        let app = router(Arc::clone(&shared), config.body_bytes_max);
        let (shutdown, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    // A dropped sender (the receiver dropped) stops the server too.
                    let _ = stopped.await;
                })
                .into_future(),
        );
        Ok(Self {
            endpoint: format!("http://{address}"),
            shared,
            shutdown: Some(shutdown),
            server: Some(server),
        })
    }

    /// The base URL, `http://127.0.0.1:PORT`: what `OTEL_EXPORTER_OTLP_ENDPOINT` takes
    /// (exporters append `/v1/traces` to it).
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    /// The full traces URL, `http://127.0.0.1:PORT/v1/traces`: what opentelemetry-otlp's
    /// HTTP exporter takes in `with_endpoint` (and `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`),
    /// which it uses verbatim, appending nothing.
    pub fn traces_endpoint(&self) -> String {
        format!("{}{TRACES_PATH}", self.endpoint)
    }

    /// Every span kept so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.shared.store.borrow().spans.clone()
    }

    /// The spans of one trace (`trace_id` in lowercase hex), in arrival order.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.shared
            .store
            .borrow()
            .spans
            .in_trace(trace_id)
            .into_iter()
            .cloned()
            .collect()
    }

    /// How many export requests were accepted (answered 200).
    pub fn requests(&self) -> u64 {
        self.shared.store.borrow().requests
    }

    /// How many spans were dropped because the store was full.
    pub fn dropped_spans(&self) -> u64 {
        self.shared.store.borrow().dropped_spans
    }

    /// Waits until `what` holds for the spans received so far (checked now, then after
    /// each accepted export) and returns those spans; after `timeout`, an error saying
    /// what had arrived. `what` runs on a copy of the spans, so it may call back into the
    /// receiver.
    pub async fn wait_for(
        &self,
        what: impl Fn(&[ReceivedSpan]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<ReceivedSpan>, String> {
        // Subscribing before the first check marks the current store as seen, so an
        // export landing between the check and the wait still wakes us.
        let mut changes = self.shared.store.subscribe();
        let waiting = async {
            loop {
                let spans = self.spans();
                if what(&spans) {
                    return spans;
                }
                if changes.changed().await.is_err() {
                    // Cannot happen while `self` holds the sender; wait out the timeout.
                    std::future::pending::<()>().await;
                }
            }
        };
        match tokio::time::timeout(timeout, waiting).await {
            Ok(spans) => Ok(spans),
            Err(_) => Err(self.describe_timeout(timeout)),
        }
    }

    fn describe_timeout(&self, timeout: Duration) -> String {
        /// Enough names to recognise what arrived without flooding the test's output.
        const NAMES_SHOWN_MAX: usize = 20;
        let store = self.shared.store.borrow();
        let mut message = format!(
            "timed out after {timeout:?}: {} spans had arrived in {} export requests",
            store.spans.len(),
            store.requests,
        );
        if store.dropped_spans > 0 {
            let _ = write!(
                message,
                " ({} more dropped: the store was full)",
                store.dropped_spans
            );
        }
        if !store.spans.is_empty() {
            let names: Vec<&str> = store
                .spans
                .iter()
                .take(NAMES_SHOWN_MAX)
                .map(|span| span.name.as_str())
                .collect();
            let _ = write!(message, "; names: {}", names.join(", "));
            if store.spans.len() > NAMES_SHOWN_MAX {
                message.push_str(", …");
            }
        }
        message
    }

    /// Stops the server: open connections get 5 seconds to finish, then are cut.
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let Some(mut server) = self.server.take() else {
            return Ok(());
        };
        match tokio::time::timeout(STOP_GRACE, &mut server).await {
            Ok(Ok(served)) => served,
            Ok(Err(join_error)) => Err(std::io::Error::other(join_error)),
            Err(_) => {
                server.abort();
                Ok(())
            }
        }
    }
}

impl Drop for OtlpReceiver {
    /// Signals the server to stop; it finishes on its own (Drop cannot await it).
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

fn router(shared: Arc<Shared>, body_bytes_max: usize) -> Router {
    Router::new()
        .route(TRACES_PATH, post(export_traces))
        .layer(DefaultBodyLimit::max(body_bytes_max))
        .with_state(shared)
}

#[derive(Debug, Clone, Copy)]
enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn content_type(self) -> &'static str {
        match self {
            Self::Protobuf => "application/x-protobuf",
            Self::Json => "application/json",
        }
    }
}

async fn export_traces(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let encoding = match request_encoding(&headers) {
        Ok(encoding) => encoding,
        Err(message) => return (StatusCode::UNSUPPORTED_MEDIA_TYPE, message).into_response(),
    };
    let request = match encoding {
        Encoding::Protobuf => ExportTraceServiceRequest::decode(body.as_ref()).map_err(|error| {
            format!("the body is not a protobuf ExportTraceServiceRequest: {error}")
        }),
        Encoding::Json => serde_json::from_slice::<ExportTraceServiceRequest>(&body)
            .map_err(|error| format!("the body is not a JSON ExportTraceServiceRequest: {error}")),
    };
    let spans = match request.and_then(flatten) {
        Ok(spans) => spans,
        Err(message) => return (StatusCode::BAD_REQUEST, message).into_response(),
    };

    let mut rejected: u64 = 0;
    shared.store.send_modify(|store| {
        let room = shared.spans_len_max.saturating_sub(store.spans.len());
        let offered = spans.len();
        store.spans.extend(spans.into_iter().take(room));
        rejected = offered.saturating_sub(room) as u64;
        store.dropped_spans += rejected;
        store.requests += 1;
    });

    let response = ExportTraceServiceResponse {
        partial_success: (rejected > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: i64::try_from(rejected).unwrap_or(i64::MAX),
            error_message: format!(
                "the test receiver keeps at most {} spans; the rest are dropped",
                shared.spans_len_max
            ),
        }),
    };
    let body = match encoding {
        Encoding::Protobuf => response.encode_to_vec(),
        Encoding::Json => match serde_json::to_vec(&response) {
            Ok(body) => body,
            Err(error) => {
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("could not encode the response: {error}"),
                )
                    .into_response()
            }
        },
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, encoding.content_type())],
        body,
    )
        .into_response()
}

/// The encoding named by `Content-Type`, ignoring parameters such as `charset`. A
/// compressed body is refused rather than decoded: the test kit's exporters send none.
fn request_encoding(headers: &HeaderMap) -> Result<Encoding, String> {
    if let Some(content_encoding) = headers.get(header::CONTENT_ENCODING) {
        let content_encoding = content_encoding.to_str().unwrap_or("(not text)").trim();
        if !content_encoding.eq_ignore_ascii_case("identity") {
            return Err(format!(
                "Content-Encoding {content_encoding} is not supported: send uncompressed bodies"
            ));
        }
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    if media_type.eq_ignore_ascii_case("application/x-protobuf") {
        Ok(Encoding::Protobuf)
    } else if media_type.eq_ignore_ascii_case("application/json") {
        Ok(Encoding::Json)
    } else {
        Err(format!(
            "Content-Type {content_type:?} is not supported: use application/x-protobuf or application/json"
        ))
    }
}

/// Resource → scope → span nesting into one list. Ids of the wrong length are refused
/// (400): they mean a broken exporter, which is what a test wants to hear about.
fn flatten(request: ExportTraceServiceRequest) -> Result<Vec<ReceivedSpan>, String> {
    let mut received = Vec::new();
    for resource_spans in request.resource_spans {
        let service_name = resource_spans.resource.as_ref().and_then(|resource| {
            resource
                .attributes
                .iter()
                .find(|attribute| attribute.key == "service.name")
                .map(|attribute| value_text(attribute.value.as_ref()))
        });
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                let trace_id = id_hex(&span.trace_id, 16, "trace id", &span.name)?;
                let span_id = id_hex(&span.span_id, 8, "span id", &span.name)?;
                let parent_span_id = if span.parent_span_id.is_empty() {
                    None
                } else {
                    Some(id_hex(
                        &span.parent_span_id,
                        8,
                        "parent span id",
                        &span.name,
                    )?)
                };
                let links = span
                    .links
                    .iter()
                    .map(|link| {
                        Ok(Link {
                            trace_id: id_hex(&link.trace_id, 16, "link trace id", &span.name)?,
                            span_id: id_hex(&link.span_id, 8, "link span id", &span.name)?,
                        })
                    })
                    .collect::<Result<Vec<_>, String>>()?;
                received.push(ReceivedSpan {
                    service_name: service_name.clone(),
                    trace_id,
                    span_id,
                    parent_span_id,
                    kind: SpanKind::from_otlp(span.kind),
                    attributes: attributes_text(&span.attributes),
                    links,
                    start_unix_nanos: span.start_time_unix_nano,
                    end_unix_nanos: span.end_time_unix_nano,
                    name: span.name,
                });
            }
        }
    }
    Ok(received)
}

fn id_hex(bytes: &[u8], len: usize, what: &str, span_name: &str) -> Result<String, String> {
    if bytes.len() != len {
        return Err(format!(
            "span {span_name:?} has a {what} of {} bytes; OTLP requires {len}",
            bytes.len()
        ));
    }
    let mut hex = String::with_capacity(len * 2);
    for byte in bytes {
        let _ = write!(hex, "{byte:02x}");
    }
    Ok(hex)
}

fn attributes_text(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .map(|attribute| (attribute.key.clone(), value_text(attribute.value.as_ref())))
        .collect()
}

fn value_text(value: Option<&AnyValue>) -> String {
    match value.and_then(|value| value.value.as_ref()) {
        Some(any_value::Value::StringValue(text)) => text.clone(),
        Some(any_value::Value::BoolValue(flag)) => flag.to_string(),
        Some(any_value::Value::IntValue(number)) => number.to_string(),
        Some(any_value::Value::DoubleValue(number)) => number.to_string(),
        Some(other) => format!("{other:?}"),
        // An empty AnyValue is OTLP's "no value".
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use opentelemetry::trace::{
        Link as OtelLink, Span as _, SpanKind as OtelSpanKind, TraceContextExt as _, Tracer as _,
        TracerProvider as _,
    };
    use opentelemetry::{Context, KeyValue as OtelKeyValue};
    use opentelemetry_otlp::{Protocol, WithExportConfig as _};
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use opentelemetry_sdk::Resource;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    const SERVICE: &str = "otlp-receiver-test";
    const WAIT: Duration = Duration::from_secs(10);

    /// The ids the exporting side saw, to compare with what arrived.
    struct Emitted {
        trace_id: String,
        parent_span_id: String,
        child_span_id: String,
        linked_trace_id: String,
        linked_span_id: String,
    }

    /// Emits a span to link to, then a server parent with a producer child linking to
    /// it, through the real OTLP/HTTP exporter and the SDK's batch processor. Blocking:
    /// the exporter's reqwest client must not run on a tokio worker thread.
    fn emit_parent_and_child(traces_endpoint: String, protocol: Protocol) -> Emitted {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(protocol)
            .with_endpoint(traces_endpoint)
            .build()
            .unwrap();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name(SERVICE).build())
            .build();
        let tracer = provider.tracer("eddy-testkit-otlp-test");

        let mut linked = tracer.start("linked");
        let linked_context = linked.span_context().clone();
        linked.end();

        let parent = tracer
            .span_builder("parent")
            .with_kind(OtelSpanKind::Server)
            .with_attributes([
                OtelKeyValue::new("order.id", "o-1"),
                OtelKeyValue::new("attempt", 2_i64),
                OtelKeyValue::new("redelivered", true),
                OtelKeyValue::new("ratio", 0.5),
            ])
            .start(&tracer);
        let parent_context = Context::current_with_span(parent);
        let mut child = tracer
            .span_builder("child")
            .with_kind(OtelSpanKind::Producer)
            .with_attributes([OtelKeyValue::new("messaging.destination.name", "orders")])
            .with_links(vec![OtelLink::with_context(linked_context.clone())])
            .start_with_context(&tracer, &parent_context);
        let child_context = child.span_context().clone();
        child.end();
        let parent_span = parent_context.span();
        let parent_span_context = parent_span.span_context().clone();
        parent_span.end();

        provider.force_flush().unwrap();
        provider.shutdown().unwrap();
        Emitted {
            trace_id: parent_span_context.trace_id().to_string(),
            parent_span_id: parent_span_context.span_id().to_string(),
            child_span_id: child_context.span_id().to_string(),
            linked_trace_id: linked_context.trace_id().to_string(),
            linked_span_id: linked_context.span_id().to_string(),
        }
    }

    async fn assert_receives_parent_and_child(protocol: Protocol) {
        let receiver = OtlpReceiver::start().await.unwrap();
        let endpoint = receiver.traces_endpoint();
        let emitted =
            tokio::task::spawn_blocking(move || emit_parent_and_child(endpoint, protocol))
                .await
                .unwrap();

        let spans = receiver
            .wait_for(|spans| spans.len() >= 3, WAIT)
            .await
            .unwrap();
        assert_eq!(spans.len(), 3, "{spans:#?}");
        assert!(receiver.requests() >= 1);

        let trace = receiver.trace(&emitted.trace_id);
        assert_eq!(trace.len(), 2, "{trace:#?}");
        let parent = trace.named("parent").unwrap();
        assert_eq!(parent.service_name.as_deref(), Some(SERVICE));
        assert_eq!(parent.span_id, emitted.parent_span_id);
        assert!(parent.is_root());
        assert_eq!(parent.kind, SpanKind::Server);
        assert_eq!(parent.attribute("order.id"), Some("o-1"));
        assert_eq!(parent.attribute("attempt"), Some("2"));
        assert_eq!(parent.attribute("redelivered"), Some("true"));
        assert_eq!(parent.attribute("ratio"), Some("0.5"));
        assert!(parent.links.is_empty());
        assert!(parent.start_unix_nanos > 0);
        assert!(parent.end_unix_nanos >= parent.start_unix_nanos);

        let children = trace.children_of(parent);
        assert_eq!(children.len(), 1);
        let child = children[0];
        assert_eq!(child.name, "child");
        assert_eq!(child.span_id, emitted.child_span_id);
        assert_eq!(child.trace_id, emitted.trace_id);
        assert_eq!(
            child.parent_span_id.as_deref(),
            Some(emitted.parent_span_id.as_str())
        );
        assert_eq!(child.kind, SpanKind::Producer);
        assert_eq!(
            child.attribute("messaging.destination.name"),
            Some("orders")
        );
        assert_eq!(
            child.links,
            vec![Link {
                trace_id: emitted.linked_trace_id.clone(),
                span_id: emitted.linked_span_id.clone(),
            }]
        );

        let linked = spans.named("linked").unwrap();
        assert_eq!(linked.trace_id, emitted.linked_trace_id);
        assert_eq!(linked.kind, SpanKind::Internal);
        assert_eq!(emitted.trace_id.len(), 32);
        assert_eq!(emitted.parent_span_id.len(), 16);

        receiver.stop().await.unwrap();
    }

    #[tokio::test]
    async fn spans_exported_as_protobuf_arrive_with_ids_parent_kind_attributes_and_links() {
        assert_receives_parent_and_child(Protocol::HttpBinary).await;
    }

    #[tokio::test]
    async fn spans_exported_as_json_arrive_with_ids_parent_kind_attributes_and_links() {
        assert_receives_parent_and_child(Protocol::HttpJson).await;
    }

    /// A one-span request, encoded by hand, for the tests that speak raw HTTP.
    fn request_with_spans(names: &[&str]) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: names
                        .iter()
                        .enumerate()
                        .map(|(index, name)| Span {
                            trace_id: vec![0xab; 16],
                            span_id: vec![u8::try_from(index + 1).unwrap(); 8],
                            name: (*name).to_owned(),
                            kind: 3,
                            ..Span::default()
                        })
                        .collect(),
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            }],
        }
    }

    /// One HTTP/1.1 POST over a plain TCP stream; the status code and the body.
    async fn post(
        receiver: &OtlpReceiver,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> (u16, Vec<u8>) {
        let address = receiver.endpoint().trim_start_matches("http://").to_owned();
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: {content_type}\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        // The server may answer (413) and close before reading all of the body.
        let _ = stream.write_all(body).await;
        let mut response = Vec::new();
        let mut chunk = [0_u8; 8192];
        // Read until the server closes; a reset after the response still leaves it read.
        while let Ok(read) = stream.read(&mut chunk).await {
            if read == 0 {
                break;
            }
            response.extend_from_slice(&chunk[..read]);
        }
        let text = String::from_utf8_lossy(&response);
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no status line in {text:?}"));
        let body_start = response
            .windows(4)
            .position(|window| window == b"\r\n\r\n")
            .map_or(response.len(), |at| at + 4);
        (status, response[body_start..].to_vec())
    }

    #[tokio::test]
    async fn a_body_that_does_not_decode_gets_400_and_is_not_counted() {
        let receiver = OtlpReceiver::start().await.unwrap();

        let (status, body) = post(
            &receiver,
            TRACES_PATH,
            "application/x-protobuf",
            &[0xff, 0xff, 0xff, 0xff],
        )
        .await;
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
        assert!(String::from_utf8_lossy(&body).contains("protobuf"));

        let (status, _) = post(&receiver, TRACES_PATH, "application/json", b"{not json").await;
        assert_eq!(status, 400);

        assert_eq!(receiver.requests(), 0);
        assert!(receiver.spans().is_empty());
    }

    #[tokio::test]
    async fn a_span_with_a_short_trace_id_gets_400() {
        let receiver = OtlpReceiver::start().await.unwrap();
        let mut request = request_with_spans(&["short"]);
        request.resource_spans[0].scope_spans[0].spans[0].trace_id = vec![1, 2, 3];

        let (status, body) = post(
            &receiver,
            TRACES_PATH,
            "application/x-protobuf",
            &request.encode_to_vec(),
        )
        .await;

        assert_eq!(status, 400);
        assert!(String::from_utf8_lossy(&body).contains("trace id of 3 bytes"));
    }

    #[tokio::test]
    async fn another_content_type_gets_415() {
        let receiver = OtlpReceiver::start().await.unwrap();

        let (status, body) = post(&receiver, TRACES_PATH, "text/plain", b"hello").await;

        assert_eq!(status, 415);
        assert!(String::from_utf8_lossy(&body).contains("text/plain"));
        assert_eq!(receiver.requests(), 0);
    }

    #[tokio::test]
    async fn a_body_over_the_limit_gets_413() {
        let receiver = OtlpReceiver::start_with(OtlpReceiverConfig {
            body_bytes_max: 1024,
            ..OtlpReceiverConfig::default()
        })
        .await
        .unwrap();

        let (status, _) = post(
            &receiver,
            TRACES_PATH,
            "application/x-protobuf",
            &[0_u8; 2048],
        )
        .await;

        assert_eq!(status, 413);
    }

    #[tokio::test]
    async fn a_json_export_is_answered_in_json_and_a_protobuf_one_in_protobuf() {
        let receiver = OtlpReceiver::start().await.unwrap();
        let request = request_with_spans(&["one"]);

        let (status, body) = post(
            &receiver,
            TRACES_PATH,
            "application/json; charset=utf-8",
            &serde_json::to_vec(&request).unwrap(),
        )
        .await;
        assert_eq!(status, 200);
        let response: ExportTraceServiceResponse = serde_json::from_slice(&body).unwrap();
        assert_eq!(response, ExportTraceServiceResponse::default());

        let (status, body) = post(
            &receiver,
            TRACES_PATH,
            "application/x-protobuf",
            &request.encode_to_vec(),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            ExportTraceServiceResponse::decode(body.as_slice()).unwrap(),
            ExportTraceServiceResponse::default()
        );

        assert_eq!(receiver.requests(), 2);
        let spans = receiver.spans();
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[0], spans[1]);
        assert_eq!(spans[0].trace_id, "ab".repeat(16));
        assert_eq!(spans[0].span_id, "01".repeat(8));
        assert_eq!(spans[0].kind, SpanKind::Client);
        assert_eq!(spans[0].service_name, None);
    }

    #[tokio::test]
    async fn spans_beyond_the_store_limit_are_dropped_and_reported_as_rejected() {
        let receiver = OtlpReceiver::start_with(OtlpReceiverConfig {
            spans_len_max: 2,
            ..OtlpReceiverConfig::default()
        })
        .await
        .unwrap();
        let request = request_with_spans(&["kept-1", "kept-2", "dropped"]);

        let (status, body) = post(
            &receiver,
            TRACES_PATH,
            "application/x-protobuf",
            &request.encode_to_vec(),
        )
        .await;

        assert_eq!(status, 200);
        let response = ExportTraceServiceResponse::decode(body.as_slice()).unwrap();
        assert_eq!(response.partial_success.unwrap().rejected_spans, 1);
        let names: Vec<String> = receiver.spans().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["kept-1", "kept-2"]);
        assert_eq!(receiver.dropped_spans(), 1);
        assert_eq!(receiver.requests(), 1);
    }

    #[tokio::test]
    async fn wait_for_wakes_when_an_export_arrives() {
        let receiver = Arc::new(OtlpReceiver::start().await.unwrap());
        let waiter = {
            let receiver = Arc::clone(&receiver);
            tokio::spawn(async move {
                receiver
                    .wait_for(|spans| spans.named("late").is_some(), WAIT)
                    .await
            })
        };
        tokio::task::yield_now().await;

        let request = request_with_spans(&["late"]);
        let (status, _) = post(
            &receiver,
            TRACES_PATH,
            "application/x-protobuf",
            &request.encode_to_vec(),
        )
        .await;
        assert_eq!(status, 200);

        let spans = waiter.await.unwrap().unwrap();
        assert_eq!(spans.len(), 1);
    }

    #[tokio::test]
    async fn wait_for_times_out_saying_how_many_spans_had_arrived() {
        let receiver = OtlpReceiver::start().await.unwrap();
        let request = request_with_spans(&["only"]);
        post(
            &receiver,
            TRACES_PATH,
            "application/x-protobuf",
            &request.encode_to_vec(),
        )
        .await;

        let error = receiver
            .wait_for(|spans| spans.len() >= 2, Duration::from_millis(50))
            .await
            .unwrap_err();

        assert!(error.contains("1 spans had arrived"), "{error}");
        assert!(error.contains("only"), "{error}");
    }
}
