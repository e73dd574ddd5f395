//! The outbox and relay on SQLite and PostgreSQL, relaying into the embedded log.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eddy_core::{
    async_trait, Envelope, Error, EventId, ManualClock, Publisher, Subscriber, SystemClock,
};
use eddy_log::{Log, LogConfig};
use eddy_outbox::{Outbox, Relay, RelayConfig};
use eddy_testkit::conformance::receive_distinct_in_key_order;
use eddy_testkit::events::Numbered;
use eddy_testkit::TestDb;
use rand::Rng;
use tokio_util::sync::CancellationToken;

struct Setup {
    /// The service's database, holding the outbox.
    service: TestDb,
    outbox: Outbox,
    /// The broker: an embedded log in a database of its own.
    log: Log,
    _broker: TestDb,
}

async fn setup(service: TestDb, broker: TestDb) -> Setup {
    let outbox = Outbox::open(service.db().clone(), Arc::new(SystemClock))
        .await
        .unwrap();
    let log = Log::open(
        broker.db().clone(),
        LogConfig {
            fallback_poll_interval: Duration::from_millis(100),
            ..LogConfig::default()
        },
    )
    .await
    .unwrap();
    log.create_topic("orders", 4).await.unwrap();
    Setup {
        service,
        outbox,
        log,
        _broker: broker,
    }
}

fn config() -> RelayConfig {
    RelayConfig {
        batch_len_max: 16,
        retry_backoff_initial: Duration::from_millis(10),
        retry_backoff_max: Duration::from_millis(50),
        ..RelayConfig::default()
    }
}

async fn append_one(outbox: &Outbox, envelope: &Envelope) {
    let mut tx = outbox.db().begin().await.unwrap();
    outbox
        .append(&mut tx, "orders", std::slice::from_ref(envelope))
        .await
        .unwrap();
    tx.commit().await.unwrap();
}

async fn wait_drained(outbox: &Outbox) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while outbox.state().await.unwrap().pending_len > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "outbox never drained"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads `count` distinct events from the log, in key order (duplicates allowed).
async fn consume_distinct(log: &Log, count: usize) -> Vec<Numbered> {
    let subscription = log.subscribe("orders", "checker").await.unwrap();
    let events = receive_distinct_in_key_order(subscription.as_ref(), count).await;
    subscription.close().await.unwrap();
    events
}

async fn eight_writers_committing_out_of_order_lose_nothing(s: Setup) {
    let relay = Relay::new(s.outbox.clone(), Arc::new(s.log.clone()), config());
    let stop = CancellationToken::new();
    let relaying = tokio::spawn(relay.run(stop.clone()));

    let commit_order: Arc<Mutex<Vec<EventId>>> = Arc::default();
    let writers: Vec<_> = (0..8)
        .map(|writer| {
            let outbox = s.outbox.clone();
            let commit_order = commit_order.clone();
            tokio::spawn(async move {
                for seq in 0..100 {
                    let envelope = Numbered::envelope(format!("writer-{writer}"), seq);
                    let mut tx = outbox.db().begin().await.unwrap();
                    outbox
                        .append(&mut tx, "orders", std::slice::from_ref(&envelope))
                        .await
                        .unwrap();
                    // Hold the transaction open a random while: ids are taken at insert,
                    // so transactions commit out of id order.
                    let pause = rand::thread_rng().gen_range(0..4);
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    tx.commit().await.unwrap();
                    commit_order.lock().unwrap().push(envelope.id);
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    wait_drained(&s.outbox).await;
    let events = consume_distinct(&s.log, 800).await;
    assert_eq!(events.len(), 800);
    stop.cancel();
    relaying.await.unwrap().unwrap();

    // Prove the hazard was real: some transaction committed after a higher id had.
    if s.service.db().backend() == eddy_sql::Backend::Postgres {
        let ids: HashMap<String, i64> =
            sqlx::query_as::<_, (String, i64)>("SELECT event_id, id FROM eddy_outbox")
                .fetch_all(s.service.db().pool())
                .await
                .unwrap()
                .into_iter()
                .collect();
        let order = commit_order.lock().unwrap();
        let mut highest = 0;
        let mut late = 0;
        for event_id in order.iter() {
            let id = ids[&event_id.to_string()];
            if id < highest {
                late += 1;
            }
            highest = highest.max(id);
        }
        assert!(
            late > 0,
            "no transaction committed out of id order; the test proved nothing"
        );
        eprintln!("{late} of 800 transactions committed after a higher id");
    }
}

/// Publishes through the log, but every third call fails halfway through its batch.
struct FlakyBroker {
    log: Log,
    calls: AtomicU32,
}

#[async_trait]
impl Publisher for FlakyBroker {
    async fn publish(&self, topic: &str, events: &[Envelope]) -> Result<(), Error> {
        if self.calls.fetch_add(1, Ordering::SeqCst) % 3 == 2 {
            self.log.publish(topic, &events[..events.len() / 2]).await?;
            return Err(Error::transient("broker connection reset mid-batch"));
        }
        self.log.publish(topic, events).await
    }
}

async fn the_broker_failing_mid_batch_loses_nothing(s: Setup) {
    let broker = Arc::new(FlakyBroker {
        log: s.log.clone(),
        calls: AtomicU32::new(0),
    });
    let relay = Relay::new(s.outbox.clone(), broker, config());
    let stats = relay.stats();
    let stop = CancellationToken::new();
    let relaying = tokio::spawn(relay.run(stop.clone()));
    for seq in 0..30 {
        let batch: Vec<Envelope> = (0..10)
            .map(|k| Numbered::envelope(format!("key-{k}"), seq))
            .collect();
        let mut tx = s.outbox.db().begin().await.unwrap();
        s.outbox.append(&mut tx, "orders", &batch).await.unwrap();
        tx.commit().await.unwrap();
    }
    wait_drained(&s.outbox).await;
    assert_eq!(consume_distinct(&s.log, 300).await.len(), 300);
    assert!(
        stats.failed_batches() > 0,
        "the broker never failed; the test proved nothing"
    );
    stop.cancel();
    relaying.await.unwrap().unwrap();
}

/// Publishes half of the first batch, then never answers: the relay dies mid-batch.
struct DyingBroker {
    log: Log,
    hung: Arc<tokio::sync::Notify>,
}

#[async_trait]
impl Publisher for DyingBroker {
    async fn publish(&self, topic: &str, events: &[Envelope]) -> Result<(), Error> {
        self.log.publish(topic, &events[..events.len() / 2]).await?;
        self.hung.notify_one();
        std::future::pending().await
    }
}

async fn the_relay_crashing_mid_batch_loses_nothing(s: Setup) {
    let events: Vec<Envelope> = (0..40)
        .map(|seq| Numbered::envelope(format!("key-{}", seq % 4), seq))
        .collect();
    for event in &events {
        append_one(&s.outbox, event).await;
    }
    let hung = Arc::new(tokio::sync::Notify::new());
    let doomed = Relay::new(
        s.outbox.clone(),
        Arc::new(DyingBroker {
            log: s.log.clone(),
            hung: hung.clone(),
        }),
        config(),
    );
    let relaying = tokio::spawn(doomed.run(CancellationToken::new()));
    hung.notified().await;
    relaying.abort();
    let _ = relaying.await;
    assert_eq!(
        s.outbox.state().await.unwrap().pending_len,
        40,
        "nothing marked by the dead relay"
    );

    let relay = Relay::new(s.outbox.clone(), Arc::new(s.log.clone()), config());
    let stop = CancellationToken::new();
    let relaying = tokio::spawn(relay.run(stop.clone()));
    wait_drained(&s.outbox).await;
    assert_eq!(consume_distinct(&s.log, 40).await.len(), 40);
    stop.cancel();
    relaying.await.unwrap().unwrap();
}

async fn published_rows_are_cleaned_up_after_their_retention(s: Setup) {
    let clock = ManualClock::new(eddy_core::OffsetDateTime::now_utc());
    let outbox = Outbox::open(s.service.db().clone(), Arc::new(clock.clone()))
        .await
        .unwrap();
    for seq in 0..5 {
        append_one(&outbox, &Numbered::envelope("k", seq)).await;
    }
    let relay = Relay::new(
        outbox.clone(),
        Arc::new(s.log.clone()),
        RelayConfig {
            retention: Duration::from_secs(3600),
            ..config()
        },
    );
    assert_eq!(relay.relay_batch().await.unwrap(), 5);
    assert_eq!(relay.clean_up().await.unwrap(), 0, "kept during retention");
    assert_eq!(outbox.state().await.unwrap().published_len, 5);
    clock.advance(Duration::from_secs(3601));
    assert_eq!(relay.clean_up().await.unwrap(), 5);
    assert_eq!(outbox.state().await.unwrap().published_len, 0);
}

async fn a_rolled_back_transaction_leaves_no_event(s: Setup) {
    let mut tx = s.outbox.db().begin().await.unwrap();
    s.outbox
        .append(&mut tx, "orders", &[Numbered::envelope("k", 0)])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(s.outbox.state().await.unwrap().pending_len, 0);
}

/// The relay sleeps with a 10-minute fallback poll, so only the commit signal can
/// wake it in time: in-process on SQLite, LISTEN/NOTIFY from another pool (standing
/// in for another process) on PostgreSQL.
async fn a_commit_wakes_the_idle_relay_at_once(s: Setup) {
    let relay_db = match s.service.db().backend() {
        eddy_sql::Backend::Postgres => s.service.connect_again().await,
        eddy_sql::Backend::Sqlite => s.service.db().clone(),
    };
    let relay_outbox = Outbox::open(relay_db, Arc::new(SystemClock)).await.unwrap();
    let relay = Relay::new(
        relay_outbox,
        Arc::new(s.log.clone()),
        RelayConfig {
            fallback_poll_interval: Duration::from_secs(600),
            ..config()
        },
    );
    let stats = relay.stats();
    let stop = CancellationToken::new();
    let relaying = tokio::spawn(relay.run(stop.clone()));
    // Let it find the outbox empty and go to sleep.
    tokio::time::sleep(Duration::from_millis(300)).await;
    append_one(&s.outbox, &Numbered::envelope("k", 0)).await;
    let woken = tokio::time::timeout(Duration::from_secs(10), async {
        while stats.published() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(woken.is_ok(), "the relay slept through a commit");
    stop.cancel();
    relaying.await.unwrap().unwrap();
}

/// Publishes through the log, but refuses permanently every event with seq 13 (as a
/// broker refuses a message over its size limit).
struct RefusesThirteen {
    log: Log,
}

#[async_trait]
impl Publisher for RefusesThirteen {
    async fn publish(&self, topic: &str, events: &[Envelope]) -> Result<(), Error> {
        for event in events {
            let numbered: Numbered = eddy_core::JsonCodec::decode(event)?;
            if numbered.seq == 13 {
                return Err(Error::permanent("message too large"));
            }
        }
        self.log.publish(topic, events).await
    }
}

async fn parked_rows(outbox: &Outbox) -> Vec<(i64, String)> {
    sqlx::query_as("SELECT id, error FROM eddy_outbox_parked ORDER BY id")
        .fetch_all(outbox.db().pool())
        .await
        .unwrap()
}

async fn a_row_the_broker_refuses_is_parked_and_the_rows_behind_it_flow(s: Setup) {
    let relay = Relay::new(
        s.outbox.clone(),
        Arc::new(RefusesThirteen { log: s.log.clone() }),
        config(),
    );
    let stats = relay.stats();
    let mut tx = s.outbox.db().begin().await.unwrap();
    let events: Vec<Envelope> = (0..40).map(|seq| Numbered::envelope("k", seq)).collect();
    s.outbox.append(&mut tx, "orders", &events).await.unwrap();
    tx.commit().await.unwrap();
    let stop = CancellationToken::new();
    let relaying = tokio::spawn(relay.run(stop.clone()));
    wait_drained(&s.outbox).await;
    let seqs: Vec<u64> = consume_distinct(&s.log, 39)
        .await
        .into_iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, (0..40).filter(|s| *s != 13).collect::<Vec<_>>());
    let parked = parked_rows(&s.outbox).await;
    assert_eq!(parked.len(), 1);
    assert!(parked[0].1.contains("message too large"), "{parked:?}");
    assert_eq!(stats.parked(), 1);
    let state = s.outbox.state().await.unwrap();
    assert_eq!((state.pending_len, state.parked_len), (0, 1));
    stop.cancel();
    relaying.await.unwrap().unwrap();
}

async fn an_undecodable_row_is_parked_and_the_rows_behind_it_flow(s: Setup) {
    append_one(&s.outbox, &Numbered::envelope("k", 0)).await;
    append_one(&s.outbox, &Numbered::envelope("k", 1)).await;
    append_one(&s.outbox, &Numbered::envelope("k", 2)).await;
    // Written by something else, or corrupted: the headers are not a JSON object.
    sqlx::query("UPDATE eddy_outbox SET headers = 'not json' WHERE id = (SELECT MIN(id) FROM eddy_outbox) + 1")
        .execute(s.outbox.db().pool())
        .await
        .unwrap();
    let relay = Relay::new(s.outbox.clone(), Arc::new(s.log.clone()), config());
    let stop = CancellationToken::new();
    let relaying = tokio::spawn(relay.run(stop.clone()));
    wait_drained(&s.outbox).await;
    let seqs: Vec<u64> = consume_distinct(&s.log, 2)
        .await
        .into_iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, vec![0, 2]);
    let parked = parked_rows(&s.outbox).await;
    assert_eq!(parked.len(), 1, "{parked:?}");
    stop.cancel();
    relaying.await.unwrap().unwrap();
}

/// A relay that always has a backlog used to skip its cleanup until the backlog
/// ended: published rows piled up for as long as the load lasted.
async fn a_busy_relay_still_cleans_up(s: Setup) {
    let relay = Relay::new(
        s.outbox.clone(),
        Arc::new(s.log.clone()),
        RelayConfig {
            batch_len_max: 1,
            retention: Duration::from_millis(1),
            cleanup_interval: Duration::from_millis(1),
            ..config()
        },
    );
    let stats = relay.stats();
    let events: Vec<Envelope> = (0..300).map(|seq| Numbered::envelope("k", seq)).collect();
    let mut tx = s.outbox.db().begin().await.unwrap();
    s.outbox.append(&mut tx, "orders", &events).await.unwrap();
    tx.commit().await.unwrap();
    let stop = CancellationToken::new();
    let relaying = tokio::spawn(relay.run(stop.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while stats.cleaned.load(Ordering::Relaxed) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never cleaned up");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        s.outbox.state().await.unwrap().pending_len > 0,
        "cleanup waited for the backlog to end"
    );
    stop.cancel();
    relaying.await.unwrap().unwrap();
}

/// Refuses everything permanently, as a topic an ACL forbids.
struct RefusesAll;

#[async_trait]
impl Publisher for RefusesAll {
    async fn publish(&self, _: &str, _: &[Envelope]) -> Result<(), Error> {
        Err(Error::permanent("not authorized for this topic"))
    }
}

/// A topic that refuses every row is not a bad row: nothing is parked, the batch is
/// retried until the topic takes it.
async fn a_topic_that_refuses_every_row_parks_nothing(s: Setup) {
    let relay = Relay::new(s.outbox.clone(), Arc::new(RefusesAll), config());
    let stats = relay.stats();
    let events: Vec<Envelope> = (0..5).map(|seq| Numbered::envelope("k", seq)).collect();
    let mut tx = s.outbox.db().begin().await.unwrap();
    s.outbox.append(&mut tx, "orders", &events).await.unwrap();
    tx.commit().await.unwrap();
    let stop = CancellationToken::new();
    let relaying = tokio::spawn(relay.run(stop.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while stats.failed_batches() < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay never retried"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let state = s.outbox.state().await.unwrap();
    assert_eq!((state.pending_len, state.parked_len), (5, 0));
    stop.cancel();
    relaying.await.unwrap().unwrap();
}

macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::setup(super::TestDb::sqlite().await, super::TestDb::sqlite().await).await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::setup(super::TestDb::postgres().await, super::TestDb::postgres().await).await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    a_busy_relay_still_cleans_up,
    a_topic_that_refuses_every_row_parks_nothing,
    a_row_the_broker_refuses_is_parked_and_the_rows_behind_it_flow,
    an_undecodable_row_is_parked_and_the_rows_behind_it_flow,
    eight_writers_committing_out_of_order_lose_nothing,
    the_broker_failing_mid_batch_loses_nothing,
    the_relay_crashing_mid_batch_loses_nothing,
    published_rows_are_cleaned_up_after_their_retention,
    a_rolled_back_transaction_leaves_no_event,
    a_commit_wakes_the_idle_relay_at_once,
);
