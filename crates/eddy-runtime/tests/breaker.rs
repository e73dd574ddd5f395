//! A consumer whose dependency's breaker opens pauses, probes, and resumes, and
//! dead-letters nothing because of the outage.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eddy_core::{async_trait, Envelope, Handler, HandlerError, Publisher};
use eddy_log::{Log, LogConfig};
use eddy_resilience::{CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer};
use eddy_runtime::{Consumer, ConsumerConfig, RetryPolicy, Router};
use eddy_testkit::events::Numbered;
use eddy_testkit::TestDb;
use tokio_util::sync::CancellationToken;
use tower::{service_fn, BoxError, Service, ServiceBuilder, ServiceExt};

/// Calls a dependency through a breaker; an open breaker means "pause", not "fail".
struct CallsDependency<S> {
    breaker: CircuitBreaker,
    dependency: S,
}

#[async_trait]
impl<S> Handler<Numbered> for CallsDependency<S>
where
    S: Service<u64, Response = (), Error = BoxError> + Clone + Send + Sync + 'static,
    S::Future: Send,
{
    async fn handle(&self, event: Numbered, _: &Envelope) -> Result<(), HandlerError> {
        match self.dependency.clone().oneshot(event.seq).await {
            Ok(()) => Ok(()),
            Err(error) if self.breaker.is_dependency_down(&error) => {
                Err(HandlerError::unavailable(error))
            }
            Err(error) => Err(HandlerError::transient(error)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_pauses_while_the_breaker_is_open_and_dead_letters_nothing() {
    let db = TestDb::sqlite().await;
    let log = Log::open(
        db.db().clone(),
        LogConfig {
            fallback_poll_interval: Duration::from_millis(100),
            ..LogConfig::default()
        },
    )
    .await
    .unwrap();
    log.create_topic("orders", 4).await.unwrap();
    log.publish("orders", &Numbered::interleaved(10, 3))
        .await
        .unwrap();

    let down = Arc::new(AtomicBool::new(true));
    let calls_while_down = Arc::new(AtomicU32::new(0));
    let breaker = CircuitBreaker::new(CircuitBreakerConfig {
        name: "dependency".into(),
        failures_max: 3,
        open_duration: Duration::from_millis(300),
        ..CircuitBreakerConfig::default()
    });
    let (d, c) = (down.clone(), calls_while_down.clone());
    let dependency = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::new(breaker.clone()))
        .service(service_fn(move |_: u64| {
            let (d, c) = (d.clone(), c.clone());
            async move {
                if d.load(Ordering::SeqCst) {
                    c.fetch_add(1, Ordering::SeqCst);
                    Err::<(), BoxError>("dependency is down".into())
                } else {
                    Ok(())
                }
            }
        }));
    let handler = CallsDependency {
        breaker: breaker.clone(),
        dependency,
    };
    let config = ConsumerConfig {
        retry: RetryPolicy {
            attempts_max: 3,
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_millis(50),
        },
        unavailable_pause: Duration::from_millis(100),
        ..ConsumerConfig::default()
    };
    let consumer = Consumer::new(
        "orders",
        "workers",
        Arc::new(log.clone()),
        Arc::new(log.clone()),
        Router::new().route::<Numbered, _>(handler),
    )
    .with_config(config);
    let stats = consumer.stats();
    let stop = CancellationToken::new();
    let running = tokio::spawn(consumer.run(stop.clone()));

    // A one-and-a-half-second outage: the breaker opens, half-opens, fails its probes.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(stats.handled(), 0);
    assert!(
        stats.paused() > 0,
        "the consumer paused instead of retrying"
    );
    down.store(false, Ordering::SeqCst);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while stats.handled() < 30 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "handled only {}",
            stats.handled()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(
        stats.dead_lettered(),
        0,
        "nothing dead-lettered because of the outage"
    );
    let probes = calls_while_down.load(Ordering::SeqCst);
    assert!(
        probes <= 3 + 6,
        "only the opening failures and one probe per half-open reached the dependency: {probes}"
    );
}
