//! Operating failures are not poison: a consumer outlives fetch errors of every kind,
//! and database errors that are about the environment (a statement timeout, a database
//! gone read-only) are retried or waited out instead of dead-lettering the event.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eddy_core::{
    async_trait, Delivery, Envelope, Error, HandlerError, Publisher, Subscriber, Subscription,
};
use eddy_log::Log;
use eddy_runtime::{Consumer, ConsumerConfig, RetryPolicy, Router};
use eddy_sql::{Transactional, Tx, TxHandler};
use eddy_testkit::events::Numbered;
use eddy_testkit::TestDb;
use tokio_util::sync::CancellationToken;

use common::{eventually, log_config};

/// One attempt only: any failure that spends an attempt dead-letters the event.
fn one_attempt() -> ConsumerConfig {
    ConsumerConfig {
        retry: RetryPolicy {
            attempts_max: 1,
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
        },
        unavailable_pause: Duration::from_millis(20),
        jitter_seed: Some(3),
        ..ConsumerConfig::default()
    }
}

/// The log, but the first `failing` fetches of each subscription fail permanently.
struct FailingFetches {
    log: Log,
    failing: u32,
}

struct FailingSubscription {
    inner: Box<dyn Subscription>,
    left: AtomicU32,
}

#[async_trait]
impl Subscriber for FailingFetches {
    async fn subscribe(&self, topic: &str, group: &str) -> Result<Box<dyn Subscription>, Error> {
        Ok(Box::new(FailingSubscription {
            inner: self.log.subscribe(topic, group).await?,
            left: AtomicU32::new(self.failing),
        }))
    }
}

#[async_trait]
impl Subscription for FailingSubscription {
    async fn fetch(&self, max_len: usize) -> Result<Vec<Delivery>, Error> {
        let left = self.left.load(Ordering::SeqCst);
        if left > 0 {
            self.left.store(left - 1, Ordering::SeqCst);
            return Err(Error::permanent("disk I/O error, reported as permanent"));
        }
        self.inner.fetch(max_len).await
    }
    async fn commit(&self, offsets: &[(u32, u64)]) -> Result<(), Error> {
        self.inner.commit(offsets).await
    }
    async fn close(&self) -> Result<(), Error> {
        self.inner.close().await
    }
}

struct Accept;

#[async_trait]
impl eddy_core::Handler<Numbered> for Accept {
    async fn handle(&self, _: Numbered, _: &Envelope) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// Succeeds from the call after the `failing`-th; before, runs `failure` in the
/// handler's transaction (SQL that fails with the error under test).
#[derive(Clone)]
struct FailsWithSql {
    calls: Arc<AtomicU32>,
    failing: u32,
    failure: &'static [&'static str],
}

#[async_trait]
impl TxHandler<Numbered> for FailsWithSql {
    async fn handle(&self, _: Numbered, _: &Envelope, tx: &mut Tx) -> Result<(), HandlerError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        if call < self.failing {
            for statement in self.failure {
                sqlx::query(statement)
                    .execute(tx.conn())
                    .await
                    .map_err(|e| eddy_sql::classify("the handler's statement", e))?;
            }
        }
        Ok(())
    }
}

async fn handled_without_dead_letters(
    db: &TestDb,
    config: ConsumerConfig,
    failing: u32,
    failure: &'static [&'static str],
) -> Arc<eddy_runtime::ConsumerStats> {
    let log = Log::open(db.db().clone(), log_config()).await.unwrap();
    db.db()
        .migrate(eddy_sql::idempotency::MIGRATIONS)
        .await
        .unwrap();
    sqlx::query("CREATE TABLE effects (id BIGINT)")
        .execute(db.db().pool())
        .await
        .unwrap();
    log.publish("orders", &[Numbered::envelope("k", 1)])
        .await
        .unwrap();
    let handler = FailsWithSql {
        calls: Arc::new(AtomicU32::new(0)),
        failing,
        failure,
    };
    let consumer = Consumer::new(
        "orders",
        "workers",
        Arc::new(log.clone()),
        Arc::new(log.clone()),
        Router::new().route::<Numbered, _>(Transactional::new(db.db().clone(), "effects", handler)),
    )
    .with_config(config);
    let stats = consumer.stats();
    let stop = CancellationToken::new();
    let running = tokio::spawn(consumer.run(stop.clone()));
    eventually("the event handled", || {
        stats.handled() == 1 || stats.dead_lettered() > 0
    })
    .await;
    stop.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(
        stats.dead_lettered(),
        0,
        "an operating condition dead-lettered the event"
    );
    assert_eq!(stats.handled(), 1);
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_fetch_error_does_not_end_the_consumer() {
    let db = TestDb::sqlite().await;
    let log = Log::open(db.db().clone(), log_config()).await.unwrap();
    log.publish("orders", &Numbered::interleaved(2, 2))
        .await
        .unwrap();
    let consumer = Consumer::new(
        "orders",
        "workers",
        Arc::new(FailingFetches {
            log: log.clone(),
            failing: 3,
        }),
        Arc::new(log.clone()),
        Router::new().route::<Numbered, _>(Accept),
    )
    .with_config(one_attempt());
    let stats = consumer.stats();
    let stop = CancellationToken::new();
    let running = tokio::spawn(consumer.run(stop.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while stats.handled() < 4 {
        assert!(
            !running.is_finished(),
            "the consumer ended after a fetch error"
        );
        assert!(tokio::time::Instant::now() < deadline, "events not handled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stats.fetch_failures(), 3);
    stop.cancel();
    running.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_timeout_in_a_handler_is_retried_not_dead_lettered() {
    let db = TestDb::postgres().await;
    // 57014: the statement timeout cancelled the query; the next attempt succeeds.
    let two_attempts = ConsumerConfig {
        retry: RetryPolicy {
            attempts_max: 2,
            ..one_attempt().retry
        },
        ..one_attempt()
    };
    let stats = handled_without_dead_letters(
        &db,
        two_attempts,
        1,
        &["SET LOCAL statement_timeout = '10ms'", "SELECT pg_sleep(1)"],
    )
    .await;
    assert_eq!(stats.paused(), 0);
    assert_eq!(stats.retried(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_gone_read_only_pauses_the_handler_without_spending_attempts() {
    let db = TestDb::postgres().await;
    // 25006, what a failover to a replica answers: the event waits, attempts unspent.
    let stats = handled_without_dead_letters(
        &db,
        one_attempt(),
        3,
        &[
            "SET LOCAL transaction_read_only = on",
            "INSERT INTO effects VALUES (1)",
        ],
    )
    .await;
    assert_eq!(stats.paused(), 3, "each read-only answer was a pause");
}

/// Says "unavailable" forever (a bug, or a dependency that never comes back).
struct AlwaysUnavailable;

#[async_trait]
impl eddy_core::Handler<Numbered> for AlwaysUnavailable {
    async fn handle(&self, _: Numbered, _: &Envelope) -> Result<(), HandlerError> {
        Err(HandlerError::unavailable("the dependency is down"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_always_unavailable_holds_its_key_only_until_the_wait_max() {
    let db = TestDb::sqlite().await;
    let log = Log::open(db.db().clone(), log_config()).await.unwrap();
    log.publish(
        "orders",
        &[Numbered::envelope("k", 1), Numbered::envelope("k", 2)],
    )
    .await
    .unwrap();
    let consumer = Consumer::new(
        "orders",
        "workers",
        Arc::new(log.clone()),
        Arc::new(log.clone()),
        Router::new().route::<Numbered, _>(AlwaysUnavailable),
    )
    .with_config(ConsumerConfig {
        unavailable_wait_max: Duration::from_millis(200),
        ..one_attempt()
    });
    let stats = consumer.stats();
    let stop = CancellationToken::new();
    let running = tokio::spawn(consumer.run(stop.clone()));
    eventually("both events dead-lettered", || stats.dead_lettered() == 2).await;
    assert!(stats.paused() >= 2, "each paused first");
    stop.cancel();
    running.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_a_type_no_handler_knows_are_counted_per_type() {
    let db = TestDb::sqlite().await;
    let log = Log::open(db.db().clone(), log_config()).await.unwrap();
    let mut foreign = Numbered::envelope("k", 1);
    foreign.event_type = "orders.OrderTeleported".to_owned();
    log.publish(
        "orders",
        &[foreign.clone(), foreign, Numbered::envelope("k", 2)],
    )
    .await
    .unwrap();
    let consumer = Consumer::new(
        "orders",
        "workers",
        Arc::new(log.clone()),
        Arc::new(log.clone()),
        Router::new().route::<Numbered, _>(Accept),
    )
    .with_config(one_attempt());
    let stats = consumer.stats();
    let stop = CancellationToken::new();
    let running = tokio::spawn(consumer.run(stop.clone()));
    eventually("all three seen", || stats.handled() + stats.skipped() == 3).await;
    assert_eq!(
        stats.skipped_by_type().get("orders.OrderTeleported"),
        Some(&2)
    );
    stop.cancel();
    running.await.unwrap().unwrap();
}

/// A subscription that fails permanently for good (a poll thread gone, a pull that
/// ended) is given up after a bounded run of failures, so that the supervisor
/// subscribes again, instead of being retried for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_subscription_ends_the_consumer_for_its_supervisor() {
    let db = TestDb::sqlite().await;
    let log = Log::open(db.db().clone(), log_config()).await.unwrap();
    let consumer = Consumer::new(
        "orders",
        "workers",
        Arc::new(FailingFetches {
            log: log.clone(),
            failing: u32::MAX,
        }),
        Arc::new(log.clone()),
        Router::new().route::<Numbered, _>(Accept),
    )
    .with_config(ConsumerConfig {
        retry: RetryPolicy {
            backoff_max: Duration::from_millis(5),
            ..one_attempt().retry
        },
        ..one_attempt()
    });
    let stats = consumer.stats();
    let ended = tokio::time::timeout(
        Duration::from_secs(30),
        consumer.run(CancellationToken::new()),
    )
    .await
    .expect("the consumer gave up on its dead subscription");
    assert!(ended.is_err());
    assert!(
        stats.fetch_failures() >= u64::from(eddy_runtime::consumer::PERMANENT_FETCH_FAILURES_MAX)
    );
}

/// A broker that never answers a subscribe (as JetStream when a request times out).
struct SubscribeHangs;

#[async_trait]
impl Subscriber for SubscribeHangs {
    async fn subscribe(&self, _: &str, _: &str) -> Result<Box<dyn Subscription>, Error> {
        std::future::pending().await
    }
}

/// A broker whose every subscribe fails at once.
struct SubscribeFails;

#[async_trait]
impl Subscriber for SubscribeFails {
    async fn subscribe(&self, _: &str, _: &str) -> Result<Box<dyn Subscription>, Error> {
        Err(Error::transient("the broker refused the subscription"))
    }
}

/// A supervised consumer is up once subscribed, not while it tries: one whose subscribe
/// hangs or keeps failing reads as down the whole time (readiness stays 503), one that
/// subscribes reads as up; a stop ends all three, the hanging subscribe included.
#[tokio::test]
async fn a_consumer_that_cannot_subscribe_is_down_the_whole_time_it_tries() {
    let db = TestDb::sqlite().await;
    let log = Log::open(db.db().clone(), log_config()).await.unwrap();
    let workers = eddy_runtime::Workers::new();
    let stop = CancellationToken::new();
    let policy = eddy_runtime::RestartPolicy {
        backoff: eddy_core::Backoff::new(Duration::from_millis(1), Duration::from_millis(5)),
    };
    let subscribers: [(&str, Arc<dyn Subscriber>); 3] = [
        ("hangs", Arc::new(SubscribeHangs)),
        ("fails", Arc::new(SubscribeFails)),
        ("works", Arc::new(log.clone())),
    ];
    let mut supervisors = Vec::new();
    for (name, subscriber) in subscribers {
        let consumer = Consumer::new(
            "orders",
            name,
            subscriber,
            Arc::new(log.clone()),
            Router::new().route::<Numbered, _>(Accept),
        );
        let stopping = stop.clone();
        supervisors.push(tokio::spawn(eddy_runtime::supervise_until_up(
            name.to_owned(),
            workers.clone(),
            policy,
            stop.clone(),
            move |up| {
                consumer
                    .clone()
                    .run_subscribed(stopping.clone(), move || up.up())
            },
        )));
    }
    eventually("the working consumer up", || {
        workers.snapshot().get("works").is_some_and(|s| s.up)
    })
    .await;
    // Many restarts of the failing one later, neither of the others was ever up.
    for _ in 0..50 {
        assert_eq!(workers.down(), vec!["fails".to_owned(), "hangs".to_owned()]);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(workers.snapshot()["fails"].restarts > 5);
    stop.cancel();
    // A stop ends a subscribe that hangs too: shutdown never waits on the broker.
    for supervisor in supervisors {
        tokio::time::timeout(Duration::from_secs(5), supervisor)
            .await
            .expect("the supervisor ends with the stop")
            .unwrap()
            .unwrap();
    }
}
