//! Schema versions at the consumer: an older version is upcast before the handler sees
//! it; a version newer than the consumer's type is dead-lettered as `newer-schema`,
//! never handled as the version it knows.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};

use eddy_core::{
    async_trait, Envelope, Event, Handler, HandlerError, Message, OffsetDateTime, Publisher,
    Subscriber, Upcast,
};
use eddy_log::Log;
use eddy_runtime::{dead_letter, Consumer, Router};
use eddy_testkit::conformance::receive;
use eddy_testkit::TestDb;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use common::{eventually, log_config};

/// Version 2: version 1 had no `reason`, which meant `out_of_stock`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Rejected {
    order_id: String,
    reason: String,
}

fn reason_defaults_to_out_of_stock(mut payload: Value) -> Result<Value, String> {
    let object = payload.as_object_mut().ok_or("not an object")?;
    object
        .entry("reason")
        .or_insert_with(|| json!("out_of_stock"));
    Ok(payload)
}

impl Event for Rejected {
    const TYPE: &'static str = "test.Rejected";
    const SCHEMA_VERSION: u32 = 2;
    const UPCASTS: &'static [Upcast] = &[Upcast::new(1, reason_defaults_to_out_of_stock)];
    fn key(&self) -> String {
        self.order_id.clone()
    }
}

#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<Rejected>>>,
}

#[async_trait]
impl Handler<Rejected> for Recorder {
    async fn handle(&self, event: Rejected, _: &Envelope) -> Result<(), HandlerError> {
        self.seen.lock().unwrap().push(event);
        Ok(())
    }
}

fn envelope(version: u32, order_id: &str, payload: Value) -> Envelope {
    Envelope::new(
        Rejected::TYPE,
        version,
        order_id,
        payload.to_string().into_bytes(),
        OffsetDateTime::now_utc(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_version_is_upcast_and_a_newer_one_is_dead_lettered_as_newer_schema() {
    let db = TestDb::sqlite().await;
    let log = Log::open(db.db().clone(), log_config()).await.unwrap();
    log.create_topic("inventory", 1).await.unwrap();
    let events = [
        envelope(1, "o-1", json!({"order_id": "o-1"})),
        // Shaped like version 2 throughout: read as version 2 it would be handled.
        envelope(99, "o-2", json!({"order_id": "o-2", "reason": "recalled"})),
        envelope(
            2,
            "o-3",
            json!({"order_id": "o-3", "reason": "unknown_product"}),
        ),
    ];
    log.publish("inventory", &events).await.unwrap();

    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .unwrap();
    let recorder = Recorder::default();
    let consumer = Consumer::new(
        "inventory",
        "orders",
        Arc::new(log.clone()),
        Arc::new(log.clone()),
        Router::new().route::<Rejected, _>(recorder.clone()),
    );
    let stats = consumer.stats();
    let stop = CancellationToken::new();
    let running = tokio::spawn(consumer.run(stop.clone()));
    eventually("two handled and one dead letter", || {
        stats.handled() == 2 && stats.dead_lettered() == 1
    })
    .await;
    stop.cancel();
    running.await.unwrap().unwrap();

    // Different keys: handled in either order.
    let mut seen = recorder.seen.lock().unwrap().clone();
    seen.sort_by(|a, b| a.order_id.cmp(&b.order_id));
    assert_eq!(
        seen,
        vec![
            Rejected {
                order_id: "o-1".into(),
                reason: "out_of_stock".into()
            },
            Rejected {
                order_id: "o-3".into(),
                reason: "unknown_product".into()
            },
        ],
        "version 1 upcast, version 2 as it is, version 99 never handled"
    );

    let dlq = log.subscribe("inventory.dlq", "inspector").await.unwrap();
    let letters = receive(dlq.as_ref(), 1, true).await;
    let Message::Event(letter) = &letters[0].message else {
        panic!("the dead letter is an event");
    };
    assert_eq!(
        letter.headers.get(dead_letter::ORIGINAL_ID),
        Some(events[1].id.to_string().as_str())
    );
    assert_eq!(letter.schema_version, 99, "kept as it came, for a redrive");
    assert_eq!(
        letter.headers.get(dead_letter::ERROR_KIND),
        Some(dead_letter::KIND_NEWER_SCHEMA)
    );
    let error = letter.headers.get(dead_letter::ERROR).unwrap();
    assert!(
        error.contains("schema version 99 of test.Rejected is newer than this consumer knows (2)"),
        "{error}"
    );
    assert_eq!(letter.headers.get(dead_letter::ATTEMPTS), Some("1"));
    let exported = metrics.render();
    assert!(
        exported.contains(
            r#"events_failed_total{consumer="orders",event_type="test.Rejected",kind="newer-schema"} 1"#
        ),
        "{exported}"
    );
}

/// Version 3 without an upcaster from version 2.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Gappy;

impl Event for Gappy {
    const TYPE: &'static str = "test.Gappy";
    const SCHEMA_VERSION: u32 = 3;
    const UPCASTS: &'static [Upcast] = &[Upcast::new(1, reason_defaults_to_out_of_stock)];
    fn key(&self) -> String {
        String::new()
    }
}

struct Ignore;

#[async_trait]
impl Handler<Gappy> for Ignore {
    async fn handle(&self, _: Gappy, _: &Envelope) -> Result<(), HandlerError> {
        Ok(())
    }
}

#[test]
#[should_panic(expected = "test.Gappy (schema version 3, oldest 1): no upcaster from version 2")]
fn routing_a_type_with_a_gap_in_its_upcasters_is_refused_at_start_up() {
    let _ = Router::new().route::<Gappy, _>(Ignore);
}
