//! The consumer runtime on the embedded log, on SQLite and on PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eddy_core::{async_trait, Envelope, Handler, HandlerError, Message, Publisher, Subscriber};
use eddy_log::Log;
use eddy_runtime::{dead_letter, Consumer, ConsumerConfig, RetryPolicy, Router};
use eddy_sql::{BatchTxHandler, Batched, Db, EachInTx, Transactional, Tx, TxHandler};
use eddy_testkit::conformance::receive;
use eddy_testkit::events::Numbered;
use eddy_testkit::TestDb;
use tokio_util::sync::CancellationToken;

use common::{eventually, log_config};

fn fast_retries() -> ConsumerConfig {
    ConsumerConfig {
        retry: RetryPolicy {
            attempts_max: 4,
            backoff_initial: Duration::from_millis(20),
            backoff_max: Duration::from_millis(200),
        },
        jitter_seed: Some(7),
        ..ConsumerConfig::default()
    }
}

async fn open_log(db: &TestDb) -> Log {
    Log::open(db.db().clone(), log_config())
        .await
        .expect("open log")
}

/// Records `(key, seq)` in arrival order; fails as told.
#[derive(Default, Clone)]
struct Recorder {
    seen: Arc<Mutex<Vec<(String, u64)>>>,
    /// seq numbers that fail permanently.
    poison: Vec<u64>,
    /// key → remaining transient failures.
    flaky: Arc<Mutex<HashMap<String, u32>>>,
}

impl Recorder {
    /// The seq numbers handled, in arrival order.
    fn seqs(&self) -> Vec<u64> {
        self.seen.lock().unwrap().iter().map(|(_, s)| *s).collect()
    }
}

#[async_trait]
impl Handler<Numbered> for Recorder {
    async fn handle(&self, event: Numbered, _: &Envelope) -> Result<(), HandlerError> {
        if self.poison.contains(&event.seq) {
            return Err(HandlerError::permanent(format!(
                "seq {} is poison",
                event.seq
            )));
        }
        if let Some(left) = self.flaky.lock().unwrap().get_mut(&event.key) {
            if *left > 0 {
                *left -= 1;
                return Err(HandlerError::transient("dependency unavailable"));
            }
        }
        self.seen.lock().unwrap().push((event.key, event.seq));
        Ok(())
    }
}

async fn wait_committed(log: &Log, group: &str, topic: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let ends = log.end_offsets(topic).await.unwrap();
        let committed = log.committed_offsets(group, topic).await.unwrap();
        let all = ends
            .iter()
            .all(|(p, end)| *end == 0 || committed.get(p) == Some(end));
        if all {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all committed: {ends:?} vs {committed:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn consumer(log: &Log, topic: &str, router: Router, config: ConsumerConfig) -> Consumer {
    Consumer::new(
        topic,
        "workers",
        Arc::new(log.clone()),
        Arc::new(log.clone()),
        router,
    )
    .with_config(config)
}

async fn poison_goes_to_dead_letters_and_the_partition_keeps_flowing(db: TestDb) {
    let log = open_log(&db).await;
    log.create_topic("orders", 1).await.unwrap();
    let mut events: Vec<Envelope> = (0..10).map(|seq| Numbered::envelope("k", seq)).collect();
    // An event whose payload is not a Numbered at all: undecodable for its handler.
    events[6].payload = b"{not json".to_vec();
    log.publish("orders", &events).await.unwrap();

    let recorder = Recorder {
        poison: vec![3],
        ..Recorder::default()
    };
    let consumer = consumer(
        &log,
        "orders",
        Router::new().route::<Numbered, _>(recorder.clone()),
        fast_retries(),
    );
    let stats = consumer.stats();
    let stop = CancellationToken::new();
    let running = tokio::spawn(consumer.run(stop.clone()));
    eventually("8 handled and 2 dead letters", || {
        stats.handled() == 8 && stats.dead_lettered() == 2
    })
    .await;
    wait_committed(&log, "workers", "orders").await;
    stop.cancel();
    running.await.unwrap().unwrap();

    let seqs = recorder.seqs();
    assert_eq!(
        seqs,
        vec![0, 1, 2, 4, 5, 7, 8, 9],
        "the rest flowed, in order"
    );

    let dlq = log.subscribe("orders.dlq", "inspector").await.unwrap();
    let letters = receive(dlq.as_ref(), 2, true).await;
    let letters: Vec<&Envelope> = letters
        .iter()
        .map(|d| match &d.message {
            Message::Event(e) => e,
            Message::Undecodable(u) => panic!("{}", u.error),
        })
        .collect();
    let by_offset: HashMap<&str, &Envelope> = letters
        .iter()
        .map(|e| (e.headers.get(dead_letter::ORIGIN_OFFSET).unwrap(), *e))
        .collect();
    let permanent = by_offset["3"];
    assert_eq!(
        permanent.headers.get(dead_letter::ORIGINAL_ID),
        Some(events[3].id.to_string().as_str()),
        "the dead letter names the original event"
    );
    assert_ne!(permanent.id, events[3].id, "and has an id of its own");
    assert_eq!(permanent.payload, events[3].payload);
    assert_eq!(
        permanent.headers.get(dead_letter::ORIGIN_TOPIC),
        Some("orders")
    );
    assert_eq!(
        permanent.headers.get(dead_letter::ORIGIN_PARTITION),
        Some("0")
    );
    assert_eq!(permanent.headers.get(dead_letter::ATTEMPTS), Some("1"));
    assert_eq!(
        permanent.headers.get(dead_letter::ERROR_KIND),
        Some("permanent")
    );
    assert!(permanent
        .headers
        .get(dead_letter::ERROR)
        .unwrap()
        .contains("seq 3 is poison"));
    assert!(permanent
        .headers
        .get(dead_letter::FIRST_FAILURE_AT)
        .is_some());
    assert!(permanent
        .headers
        .get(dead_letter::LAST_FAILURE_AT)
        .is_some());
    let undecodable = by_offset["6"];
    assert!(undecodable
        .headers
        .get(dead_letter::ERROR)
        .unwrap()
        .contains("not valid JSON"));
    assert_eq!(undecodable.payload, b"{not json");
    dlq.close().await.unwrap();
}

async fn ten_thousand_events_keep_per_key_order_at_concurrency_32(db: TestDb) {
    let log = open_log(&db).await;
    log.create_topic("orders", 8).await.unwrap();
    let events = Numbered::interleaved(100, 100);
    for chunk in events.chunks(500) {
        log.publish("orders", chunk).await.unwrap();
    }
    let recorder = Recorder::default();
    let config = ConsumerConfig {
        concurrency: 32,
        ..fast_retries()
    };
    let consumer = consumer(
        &log,
        "orders",
        Router::new().route::<Numbered, _>(recorder.clone()),
        config,
    );
    let stats = consumer.stats();
    let stop = CancellationToken::new();
    let running = tokio::spawn(consumer.run(stop.clone()));
    eventually("10,000 handled", || stats.handled() == 10_000).await;
    wait_committed(&log, "workers", "orders").await;
    stop.cancel();
    running.await.unwrap().unwrap();

    let seen = recorder.seen.lock().unwrap();
    assert_eq!(seen.len(), 10_000);
    let mut next: HashMap<&str, u64> = HashMap::new();
    for (key, seq) in seen.iter() {
        let expected = next.entry(key).or_insert(0);
        assert_eq!(*seq, *expected, "key {key} out of order");
        *expected += 1;
    }
    assert_eq!(next.len(), 100);
}

async fn a_failing_key_does_not_hold_up_other_keys(db: TestDb) {
    let log = open_log(&db).await;
    log.create_topic("orders", 1).await.unwrap();
    // One partition: every key shares it, so only per-key scheduling can keep them apart.
    let mut events = vec![
        Numbered::envelope("stuck", 0),
        Numbered::envelope("stuck", 1),
    ];
    events.extend((0..20).map(|i| Numbered::envelope(format!("free-{i}"), 0)));
    log.publish("orders", &events).await.unwrap();

    let recorder = Recorder::default();
    recorder.flaky.lock().unwrap().insert("stuck".into(), 3);
    let config = ConsumerConfig {
        retry: RetryPolicy {
            attempts_max: 5,
            backoff_initial: Duration::from_millis(300),
            backoff_max: Duration::from_millis(300),
        },
        ..fast_retries()
    };
    let consumer = consumer(
        &log,
        "orders",
        Router::new().route::<Numbered, _>(recorder.clone()),
        config,
    );
    let stats = consumer.stats();
    let stop = CancellationToken::new();
    let running = tokio::spawn(consumer.run(stop.clone()));
    eventually("all 22 handled", || stats.handled() == 22).await;
    stop.cancel();
    running.await.unwrap().unwrap();

    let seen = recorder.seen.lock().unwrap();
    let stuck_first = seen.iter().position(|(k, _)| k == "stuck").unwrap();
    assert_eq!(
        stuck_first, 20,
        "the 20 free keys finished while 'stuck' was retrying: {seen:?}"
    );
    assert_eq!(
        seen[20..],
        [("stuck".to_owned(), 0), ("stuck".to_owned(), 1)]
    );
    assert_eq!(stats.retried(), 3);
    assert_eq!(stats.dead_lettered(), 0);
}

/// Writes one row per effect; the processed-event record shares its transaction.
#[derive(Clone)]
struct Effects {
    calls: Arc<AtomicU32>,
}

#[async_trait]
impl TxHandler<Numbered> for Effects {
    async fn handle(
        &self,
        event: Numbered,
        envelope: &Envelope,
        tx: &mut Tx,
    ) -> Result<(), HandlerError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        sqlx::query("INSERT INTO effects (event_id, seq) VALUES ($1, $2)")
            .bind(envelope.id.to_string())
            .bind(event.seq as i64)
            .execute(tx.conn())
            .await
            .map_err(|e| eddy_sql::classify("effect", e))?;
        Ok(())
    }
}

async fn effects_table(db: &Db) {
    db.migrate(eddy_sql::idempotency::MIGRATIONS).await.unwrap();
    sqlx::query("CREATE TABLE effects (event_id TEXT NOT NULL, seq BIGINT NOT NULL)")
        .execute(db.pool())
        .await
        .unwrap();
}

async fn effect_count(db: &Db) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM effects")
        .fetch_one(db.pool())
        .await
        .unwrap()
}

async fn the_same_event_delivered_twice_has_one_effect(db: TestDb) {
    let log = open_log(&db).await;
    effects_table(db.db()).await;
    let event = Numbered::envelope("k", 1);
    log.publish("orders", std::slice::from_ref(&event))
        .await
        .unwrap();
    log.publish("orders", std::slice::from_ref(&event))
        .await
        .unwrap();

    let effects = Effects {
        calls: Arc::new(AtomicU32::new(0)),
    };
    let handler = Transactional::new(db.db().clone(), "effects", effects.clone());
    let consumer = consumer(
        &log,
        "orders",
        Router::new().route::<Numbered, _>(handler),
        fast_retries(),
    );
    let stats = consumer.stats();
    let stop = CancellationToken::new();
    let running = tokio::spawn(consumer.run(stop.clone()));
    eventually("both deliveries handled", || stats.handled() == 2).await;
    stop.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(effect_count(db.db()).await, 1);
    assert_eq!(
        effects.calls.load(Ordering::SeqCst),
        1,
        "the duplicate never reached the handler"
    );
}

async fn a_consumer_killed_before_it_commits_gets_the_event_again_with_one_effect(db: TestDb) {
    let log = open_log(&db).await;
    effects_table(db.db()).await;
    log.create_topic("orders", 1).await.unwrap();
    let events: Vec<Envelope> = (0..5).map(|seq| Numbered::envelope("k", seq)).collect();
    log.publish("orders", &events).await.unwrap();

    let effects = Effects {
        calls: Arc::new(AtomicU32::new(0)),
    };
    // Commits effectively never: the kill always comes first.
    let never_commits = ConsumerConfig {
        commit_interval: Duration::from_secs(3600),
        ..fast_retries()
    };
    let first = consumer(
        &log,
        "orders",
        Router::new().route::<Numbered, _>(Transactional::new(
            db.db().clone(),
            "effects",
            effects.clone(),
        )),
        never_commits,
    );
    let first_stats = first.stats();
    let running = tokio::spawn(first.run(CancellationToken::new()));
    eventually("the first consumer handled all", || {
        first_stats.handled() == 5
    })
    .await;
    running.abort(); // kill: no drain, no commit, no goodbye
    let _ = running.await;
    assert!(
        log.committed_offsets("workers", "orders")
            .await
            .unwrap()
            .is_empty(),
        "nothing was committed"
    );
    assert_eq!(effect_count(db.db()).await, 5);

    // Another process (its own pool) takes over once the dead member's lease expires.
    let log2 = Log::open(db.connect_again().await, log_config())
        .await
        .unwrap();
    let second = consumer(
        &log2,
        "orders",
        Router::new().route::<Numbered, _>(Transactional::new(
            log2.db().clone(),
            "effects",
            effects.clone(),
        )),
        fast_retries(),
    );
    let second_stats = second.stats();
    let stop = CancellationToken::new();
    let running = tokio::spawn(second.run(stop.clone()));
    eventually("redelivered to the second consumer", || {
        second_stats.handled() == 5
    })
    .await;
    wait_committed(&log2, "workers", "orders").await;
    stop.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(effect_count(db.db()).await, 5, "one effect per event");
    assert_eq!(
        effects.calls.load(Ordering::SeqCst),
        5,
        "redeliveries were recognised"
    );
}

async fn an_event_past_its_deadline_is_not_handled(db: TestDb) {
    let log = open_log(&db).await;
    let past = eddy_core::OffsetDateTime::now_utc() - time::Duration::seconds(1);
    let expired = Numbered::envelope("k", 0).with_deadline(past);
    let fresh = Numbered::envelope("k", 1).with_deadline(past + time::Duration::hours(1));
    log.publish("orders", &[expired, fresh]).await.unwrap();
    let recorder = Recorder::default();
    let consumer = consumer(
        &log,
        "orders",
        Router::new().route::<Numbered, _>(recorder.clone()),
        fast_retries(),
    );
    let stats = consumer.stats();
    let stop = CancellationToken::new();
    let running = tokio::spawn(consumer.run(stop.clone()));
    eventually("one handled, one dead-lettered", || {
        stats.handled() == 1 && stats.dead_lettered() == 1
    })
    .await;
    stop.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(*recorder.seen.lock().unwrap(), vec![("k".to_owned(), 1)]);
}

/// Writes the effects of a batch with one multi-row insert; records the batches.
#[derive(Clone, Default)]
struct BatchEffects {
    transactions: Arc<AtomicU32>,
    largest: Arc<AtomicU32>,
    /// `(key, seq)` of the events written, in the order they were written.
    written: Arc<Mutex<Vec<(String, u64)>>>,
    /// A seq that fails permanently, failing whatever batch it is in.
    poison: Option<u64>,
}

#[async_trait]
impl BatchTxHandler<Numbered> for BatchEffects {
    async fn handle_batch(
        &self,
        events: &[(&Numbered, &Envelope)],
        tx: &mut Tx,
    ) -> Result<(), HandlerError> {
        if let Some(poison) = self.poison {
            if events.iter().any(|(event, _)| event.seq == poison) {
                return Err(HandlerError::permanent(format!("seq {poison} is poison")));
            }
        }
        let mut sql = String::from("INSERT INTO effects (event_id, seq) VALUES ");
        for i in 0..events.len() {
            let sep = if i > 0 { ", " } else { "" };
            sql.push_str(&format!("{sep}(${}, ${})", 2 * i + 1, 2 * i + 2));
        }
        let mut query = sqlx::query(&sql);
        for (event, envelope) in events {
            query = query.bind(envelope.id.to_string()).bind(event.seq as i64);
        }
        query
            .execute(tx.conn())
            .await
            .map_err(|e| eddy_sql::classify("effects", e))?;
        self.transactions.fetch_add(1, Ordering::SeqCst);
        self.largest
            .fetch_max(events.len() as u32, Ordering::SeqCst);
        self.written
            .lock()
            .unwrap()
            .extend(events.iter().map(|(e, _)| (e.key.clone(), e.seq)));
        Ok(())
    }
}

async fn batched_effects_are_exactly_once_in_key_order_with_fewer_transactions(db: TestDb) {
    let log = open_log(&db).await;
    effects_table(db.db()).await;
    log.create_topic("orders", 4).await.unwrap();
    let events: Vec<Envelope> = (0..2000)
        .map(|seq| Numbered::envelope(format!("k{}", seq % 50), seq))
        .collect();
    // Every event twice: the second copies must have no effect.
    log.publish("orders", &events).await.unwrap();
    log.publish("orders", &events).await.unwrap();

    let effects = BatchEffects::default();
    let config = ConsumerConfig {
        concurrency: 64,
        ..fast_retries()
    };
    let consumer = consumer(
        &log,
        "orders",
        Router::new().route::<Numbered, _>(Batched::new(
            db.db().clone(),
            "effects",
            effects.clone(),
        )),
        config,
    );
    let stats = consumer.stats();
    let stop = CancellationToken::new();
    let running = tokio::spawn(consumer.run(stop.clone()));
    eventually("every delivery handled", || stats.handled() == 4000).await;
    stop.cancel();
    running.await.unwrap().unwrap();

    assert_eq!(effect_count(db.db()).await, 2000, "one effect per event");
    let distinct: i64 = sqlx::query_scalar("SELECT COUNT(DISTINCT event_id) FROM effects")
        .fetch_one(db.db().pool())
        .await
        .unwrap();
    assert_eq!(distinct, 2000);
    let mut last: HashMap<String, u64> = HashMap::new();
    for (key, seq) in effects.written.lock().unwrap().iter() {
        if let Some(previous) = last.insert(key.clone(), *seq) {
            assert!(previous < *seq, "key {key}: {seq} written after {previous}");
        }
    }
    let transactions = effects.transactions.load(Ordering::SeqCst);
    assert!(
        effects.largest.load(Ordering::SeqCst) > 1 && transactions < 2000,
        "events shared transactions ({transactions} for 2000 events)"
    );
}

async fn a_per_event_handler_under_group_commit_has_one_effect_per_event(db: TestDb) {
    let log = open_log(&db).await;
    effects_table(db.db()).await;
    log.create_topic("orders", 2).await.unwrap();
    let events: Vec<Envelope> = (0..500)
        .map(|seq| Numbered::envelope(format!("k{}", seq % 25), seq))
        .collect();
    log.publish("orders", &events).await.unwrap();
    log.publish("orders", &events[..100]).await.unwrap();

    let effects = Effects {
        calls: Arc::new(AtomicU32::new(0)),
    };
    let consumer = consumer(
        &log,
        "orders",
        Router::new().route::<Numbered, _>(Batched::new(
            db.db().clone(),
            "effects",
            EachInTx(effects.clone()),
        )),
        fast_retries(),
    );
    let stats = consumer.stats();
    let stop = CancellationToken::new();
    let running = tokio::spawn(consumer.run(stop.clone()));
    eventually("every delivery handled", || stats.handled() == 600).await;
    stop.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(effect_count(db.db()).await, 500, "one effect per event");
    assert_eq!(
        effects.calls.load(Ordering::SeqCst),
        500,
        "the redelivered copies never reached the handler"
    );
}

async fn a_poison_event_fails_alone_and_its_batch_mates_are_written(db: TestDb) {
    let log = open_log(&db).await;
    effects_table(db.db()).await;
    log.create_topic("orders", 2).await.unwrap();
    let events: Vec<Envelope> = (0..200)
        .map(|seq| Numbered::envelope(format!("k{}", seq % 20), seq))
        .collect();
    log.publish("orders", &events).await.unwrap();

    let effects = BatchEffects {
        poison: Some(117),
        ..BatchEffects::default()
    };
    let config = ConsumerConfig {
        concurrency: 32,
        ..fast_retries()
    };
    let consumer = consumer(
        &log,
        "orders",
        Router::new().route::<Numbered, _>(Batched::new(
            db.db().clone(),
            "effects",
            effects.clone(),
        )),
        config,
    );
    let stats = consumer.stats();
    let stop = CancellationToken::new();
    let running = tokio::spawn(consumer.run(stop.clone()));
    eventually("199 handled and 1 dead letter", || {
        stats.handled() == 199 && stats.dead_lettered() == 1
    })
    .await;
    stop.cancel();
    running.await.unwrap().unwrap();

    assert_eq!(effect_count(db.db()).await, 199);
    let poisoned: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM effects WHERE seq = 117")
        .fetch_one(db.db().pool())
        .await
        .unwrap();
    assert_eq!(poisoned, 0);
    let dlq = log.subscribe("orders.dlq", "inspector").await.unwrap();
    let letters = receive(dlq.as_ref(), 1, true).await;
    match &letters[0].message {
        Message::Event(letter) => assert_eq!(
            letter.headers.get(dead_letter::ORIGINAL_ID),
            Some(events[117].id.to_string().as_str())
        ),
        Message::Undecodable(u) => panic!("{}", u.error),
    }
}

async fn a_message_waiting_to_be_retried_does_not_hold_up_shutdown(db: TestDb) {
    let log = open_log(&db).await;
    log.create_topic("orders", 1).await.unwrap();
    let events = Numbered::interleaved(1, 3);
    log.publish("orders", &events).await.unwrap();
    // key-0 fails once, then waits a backoff of up to a minute; the drain allows 30 s.
    let recorder = Recorder::default();
    recorder.flaky.lock().unwrap().insert("key-0".into(), 1);
    let config = ConsumerConfig {
        retry: RetryPolicy {
            attempts_max: 3,
            backoff_initial: Duration::from_secs(60),
            backoff_max: Duration::from_secs(60),
        },
        jitter_seed: Some(1), // a pause well above a second with this seed
        drain_timeout: Duration::from_secs(30),
        ..ConsumerConfig::default()
    };
    let first = consumer(
        &log,
        "orders",
        Router::new().route::<Numbered, _>(recorder.clone()),
        config.clone(),
    );
    let stats = first.stats();
    let stop = CancellationToken::new();
    let running = tokio::spawn(first.run(stop.clone()));
    eventually("the first failure", || stats.retried() == 1).await;

    let started = tokio::time::Instant::now();
    stop.cancel();
    running.await.unwrap().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}: it waited for the retry",
        started.elapsed()
    );
    assert!(
        recorder.seen.lock().unwrap().is_empty(),
        "nothing handled yet"
    );

    // Uncommitted, so the next consumer gets all three, in order.
    let next = consumer(
        &log,
        "orders",
        Router::new().route::<Numbered, _>(recorder.clone()),
        fast_retries(),
    );
    let stop = CancellationToken::new();
    let running = tokio::spawn(next.run(stop.clone()));
    eventually("all three handled", || {
        recorder.seen.lock().unwrap().len() == 3
    })
    .await;
    wait_committed(&log, "workers", "orders").await;
    stop.cancel();
    running.await.unwrap().unwrap();
    let seqs = recorder.seqs();
    assert_eq!(seqs, vec![0, 1, 2]);
}

eddy_testkit::on_both_backends!(
    poison_goes_to_dead_letters_and_the_partition_keeps_flowing,
    ten_thousand_events_keep_per_key_order_at_concurrency_32,
    a_failing_key_does_not_hold_up_other_keys,
    the_same_event_delivered_twice_has_one_effect,
    a_consumer_killed_before_it_commits_gets_the_event_again_with_one_effect,
    an_event_past_its_deadline_is_not_handled,
    batched_effects_are_exactly_once_in_key_order_with_fewer_transactions,
    a_poison_event_fails_alone_and_its_batch_mates_are_written,
    a_per_event_handler_under_group_commit_has_one_effect_per_event,
    a_message_waiting_to_be_retried_does_not_hold_up_shutdown,
);
