//! Traces through the consumer runtime: each delivery processed in a `process` span
//! that is the child of the context the event carries, retries inside it, a dead letter
//! sent from it (and carrying it), and a redriven letter processed as its child — one
//! trace from the first try to the redrive.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use eddy_core::{
    async_trait, Envelope, Handler, HandlerError, Headers, Message, Publisher, Subscriber,
};
use eddy_log::Log;
use eddy_runtime::{dead_letter, Consumer, ConsumerConfig, RetryPolicy, Router};
use eddy_testkit::conformance::receive;
use eddy_testkit::events::Numbered;
use eddy_testkit::TestDb;
use opentelemetry::trace::{SpanKind, Status, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use common::{eventually, log_config};

/// The spans of this test binary, recorded through the real bridge and SDK.
fn recorder() -> &'static (SdkTracerProvider, InMemorySpanExporter) {
    static RECORDER: OnceLock<(SdkTracerProvider, InMemorySpanExporter)> = OnceLock::new();
    RECORDER.get_or_init(|| {
        use tracing_subscriber::prelude::*;
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .init();
        (provider, exporter)
    })
}

/// Fails `key`'s events transiently `flaky[key]` times, `poison` keys always.
#[derive(Default, Clone)]
struct Failing {
    flaky: Arc<Mutex<HashMap<String, u32>>>,
    poison: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl Handler<Numbered> for Failing {
    async fn handle(&self, event: Numbered, _: &Envelope) -> Result<(), HandlerError> {
        if self.poison.lock().unwrap().contains(&event.key) {
            return Err(HandlerError::permanent("poison"));
        }
        if let Some(left) = self.flaky.lock().unwrap().get_mut(&event.key) {
            if *left > 0 {
                *left -= 1;
                return Err(HandlerError::transient("not yet"));
            }
        }
        Ok(())
    }
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_a_dead_letter_and_its_redrive_are_one_trace() {
    let (provider, exporter) = recorder();
    let db = TestDb::sqlite().await;
    let log = Log::open(db.db().clone(), log_config()).await.unwrap();
    log.create_topic("orders", 1).await.unwrap();
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let events: Vec<Envelope> = ["flaky", "poison"]
        .iter()
        .map(|key| Numbered::envelope(*key, 1).with_header(Headers::TRACEPARENT, caller))
        .collect();
    log.publish("orders", &events).await.unwrap();

    let handler = Failing::default();
    handler.flaky.lock().unwrap().insert("flaky".into(), 2);
    handler.poison.lock().unwrap().push("poison".into());
    let config = ConsumerConfig {
        retry: RetryPolicy {
            attempts_max: 4,
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
        },
        ..ConsumerConfig::default()
    };
    let consumer = Consumer::new(
        "orders",
        "workers",
        Arc::new(log.clone()),
        Arc::new(log.clone()),
        Router::new().route::<Numbered, _>(handler.clone()),
    )
    .with_config(config);
    let stats = consumer.stats();
    let stop = CancellationToken::new();
    let running = tokio::spawn(consumer.run(stop.clone()));
    eventually("one handled, one dead letter", || {
        stats.handled() == 1 && stats.dead_lettered() == 1
    })
    .await;

    // The letter carries the context of the processing that gave up on it.
    let dlq = log.subscribe("orders.dlq", "inspector").await.unwrap();
    let letter = match receive(dlq.as_ref(), 1, true).await.remove(0).message {
        Message::Event(envelope) => envelope,
        Message::Undecodable(raw) => panic!("{}", raw.error),
    };
    dlq.close().await.unwrap();
    let carried = eddy_trace::extract(&letter.headers).expect("the letter carries a trace");
    // Redriven (published to the topic again, as the operations tools do) and now
    // handled: processed as the child of the try that failed.
    handler.poison.lock().unwrap().clear();
    let mut redriven = letter.clone();
    redriven.id = letter
        .headers
        .get(dead_letter::ORIGINAL_ID)
        .unwrap()
        .parse()
        .unwrap();
    log.publish("orders", std::slice::from_ref(&redriven))
        .await
        .unwrap();
    eventually("the redrive handled", || stats.handled() == 2).await;
    stop.cancel();
    running.await.unwrap().unwrap();
    provider.force_flush().unwrap();

    let trace = eddy_trace::parse_traceparent(caller, None).unwrap();
    let spans: Vec<SpanData> = exporter
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|s| s.span_context.trace_id() == trace.trace_id())
        .collect();
    let processed: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == "process orders")
        .collect();
    assert_eq!(processed.len(), 3, "{spans:#?}");
    for span in &processed {
        assert_eq!(span.span_kind, SpanKind::Consumer);
        assert_eq!(
            attribute(span, "messaging.system").as_deref(),
            Some("eddy_log")
        );
        assert_eq!(
            attribute(span, "messaging.consumer.group.name").as_deref(),
            Some("workers")
        );
        assert_eq!(
            attribute(span, "messaging.destination.name").as_deref(),
            Some("orders")
        );
    }
    let first_tries: Vec<&&SpanData> = processed
        .iter()
        .filter(|s| s.parent_span_id == trace.span_id())
        .collect();
    assert_eq!(
        first_tries.len(),
        2,
        "both events' spans are the caller's children"
    );
    // Retried in one span: three attempts, the last one good.
    let flaky = first_tries
        .iter()
        .find(|s| s.status == Status::Unset)
        .expect("the flaky event's span ended well");
    assert_eq!(attribute(flaky, "eddy.attempts").as_deref(), Some("3"));
    // Dead-lettered: failed, its letter sent from inside it, and the letter's context.
    let poisoned = first_tries
        .iter()
        .find(|s| matches!(s.status, Status::Error { .. }))
        .expect("the poison event's span failed");
    assert_eq!(attribute(poisoned, "eddy.attempts").as_deref(), Some("1"));
    assert_eq!(carried.span_id(), poisoned.span_context.span_id());
    let sent = spans
        .iter()
        .find(|s| s.name == "send orders.dlq")
        .expect("a send span for the letter");
    assert_eq!(sent.span_kind, SpanKind::Client);
    assert_eq!(sent.parent_span_id, poisoned.span_context.span_id());
    assert_eq!(
        sent.links.links[0].span_context.span_id(),
        poisoned.span_context.span_id()
    );
    // The redrive: the child of the try that failed, in the same trace.
    let redrive = processed
        .iter()
        .find(|s| s.parent_span_id == poisoned.span_context.span_id())
        .expect("the redrive's span is the failed try's child");
    assert_eq!(redrive.status, Status::Unset);
}
