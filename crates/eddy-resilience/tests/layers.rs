//! The resilience layers, deterministic under paused tokio time.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eddy_resilience::{
    BreakerState, BulkheadLayer, CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer,
    CircuitOpen, Deadline, DeadlineExceeded, DeadlineLayer, DoNotRetry, Overloaded, RetryConfig,
    RetryLayer, RetrySafe,
};
use tower::{service_fn, BoxError, Service, ServiceBuilder, ServiceExt};

#[derive(Debug, Clone)]
struct Call {
    idempotent: bool,
}

impl RetrySafe for Call {
    fn retry_safe(&self) -> bool {
        self.idempotent
    }
}

fn breaker(open_for: Duration) -> CircuitBreaker {
    CircuitBreaker::new(CircuitBreakerConfig {
        name: "test".into(),
        open_duration: open_for,
        ..CircuitBreakerConfig::default()
    })
}

#[tokio::test(start_paused = true)]
async fn the_breaker_goes_closed_open_half_open_closed_and_back_to_open() {
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let calls = Arc::new(AtomicU32::new(0));
    let breaker = breaker(Duration::from_secs(30));
    let (f, c) = (failing.clone(), calls.clone());
    let mut service = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::new(breaker.clone()))
        .service(service_fn(move |_: Call| {
            let (f, c) = (f.clone(), c.clone());
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                if f.load(Ordering::SeqCst) {
                    Err::<(), BoxError>("down".into())
                } else {
                    Ok(())
                }
            }
        }));
    let call = Call { idempotent: true };

    for _ in 0..5 {
        assert!(service
            .ready()
            .await
            .unwrap()
            .call(call.clone())
            .await
            .is_err());
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    assert_eq!(
        breaker.state(),
        BreakerState::Open,
        "5 failures within 60 s open it"
    );
    let error = service
        .ready()
        .await
        .unwrap()
        .call(call.clone())
        .await
        .unwrap_err();
    assert!(error.is::<CircuitOpen>());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        5,
        "an open breaker does not call"
    );

    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(breaker.state(), BreakerState::HalfOpen);
    failing.store(false, Ordering::SeqCst);
    // One probe at a time: a second call while it runs is refused.
    let probe = breaker.try_acquire().expect("one probe admitted");
    assert!(breaker.try_acquire().is_err(), "probes are bounded");
    probe.record(false);
    assert_eq!(
        breaker.state(),
        BreakerState::Closed,
        "a successful probe closes it"
    );
    assert!(service
        .ready()
        .await
        .unwrap()
        .call(call.clone())
        .await
        .is_ok());

    failing.store(true, Ordering::SeqCst);
    for _ in 0..5 {
        let _ = service.ready().await.unwrap().call(call.clone()).await;
    }
    assert_eq!(breaker.state(), BreakerState::Open);
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(
        service
            .ready()
            .await
            .unwrap()
            .call(call.clone())
            .await
            .is_err(),
        "the probe fails"
    );
    assert_eq!(
        breaker.state(),
        BreakerState::Open,
        "a failed probe opens it again"
    );
}

#[tokio::test(start_paused = true)]
async fn outcomes_pushed_out_of_the_window_by_its_size_bound_stop_counting() {
    // The breaker keeps running counts of the window's failures (a record does not scan
    // the window); they must follow outcomes out of it, by age and by the size bound.
    let breaker = CircuitBreaker::new(CircuitBreakerConfig {
        name: "bounded".into(),
        window_calls_max: 10,
        calls_min: 1_000, // rates off: only the failure count opens it
        ..CircuitBreakerConfig::default()
    });
    for _ in 0..4 {
        breaker.try_acquire().unwrap().record(true);
    }
    for _ in 0..10 {
        breaker.try_acquire().unwrap().record(false); // pushes the 4 failures out
    }
    for _ in 0..4 {
        breaker.try_acquire().unwrap().record(true);
    }
    assert_eq!(
        breaker.state(),
        BreakerState::Closed,
        "4 failures in the window"
    );
    tokio::time::advance(Duration::from_secs(61)).await; // ages them out
    for _ in 0..4 {
        breaker.try_acquire().unwrap().record(true);
    }
    assert_eq!(
        breaker.state(),
        BreakerState::Closed,
        "4 failures in the window"
    );
    breaker.try_acquire().unwrap().record(true);
    assert_eq!(
        breaker.state(),
        BreakerState::Open,
        "the fifth failure opens it"
    );
}

#[tokio::test(start_paused = true)]
async fn slow_calls_pushed_out_of_the_window_stop_counting() {
    let breaker = CircuitBreaker::new(CircuitBreakerConfig {
        name: "slow".into(),
        window_calls_max: 4,
        calls_min: 4,
        slow_call: Duration::from_secs(1),
        slow_call_rate_max: 0.75, // 3 slow calls of the last 4 open it
        ..CircuitBreakerConfig::default()
    });
    let call = |slow: bool| {
        let breaker = breaker.clone();
        async move {
            let permit = breaker.try_acquire().unwrap();
            if slow {
                tokio::time::advance(Duration::from_secs(2)).await;
            }
            permit.record(false);
        }
    };
    // Window after each call: [s] [s s] [s s f] [s s f f] [s f f f] [f f f s] [f f s s]
    for slow in [true, true, false, false, false, true, true] {
        call(slow).await;
        assert_eq!(breaker.state(), BreakerState::Closed, "at most 2 of 4 slow");
    }
    call(true).await; // [f s s s]
    assert_eq!(
        breaker.state(),
        BreakerState::Open,
        "3 of the last 4 were slow"
    );
}

#[tokio::test(start_paused = true)]
async fn failures_spread_beyond_the_window_do_not_open_the_breaker() {
    let breaker = breaker(Duration::from_secs(30));
    for _ in 0..10 {
        breaker.try_acquire().unwrap().record(true);
        tokio::time::advance(Duration::from_secs(16)).await;
    }
    assert_eq!(
        breaker.state(),
        BreakerState::Closed,
        "never 5 failures within 60 s"
    );
}

#[tokio::test(start_paused = true)]
async fn an_expired_deadline_stops_work_downstream() {
    let started = Arc::new(AtomicU32::new(0));
    let s = started.clone();
    let mut downstream = ServiceBuilder::new()
        .layer(DeadlineLayer::default())
        .service(service_fn(move |_: Call| {
            let s = s.clone();
            async move {
                s.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok::<_, BoxError>(())
            }
        }));
    let deadline = Deadline::after(Duration::from_millis(100));
    tokio::time::advance(Duration::from_millis(150)).await;
    let result = deadline
        .scope(async {
            downstream
                .ready()
                .await?
                .call(Call { idempotent: true })
                .await
        })
        .await;
    assert!(result.unwrap_err().is::<DeadlineExceeded>());
    assert_eq!(started.load(Ordering::SeqCst), 0, "the work never started");

    // With budget left, the call is cut at the deadline, not at its own pace.
    let deadline = Deadline::after(Duration::from_millis(200));
    let began = tokio::time::Instant::now();
    let result = deadline
        .scope(async {
            downstream
                .ready()
                .await?
                .call(Call { idempotent: true })
                .await
        })
        .await;
    assert!(result.unwrap_err().is::<DeadlineExceeded>());
    assert_eq!(began.elapsed(), Duration::from_millis(200));

    // A deadline travels as a header and comes back expired if it has passed.
    let header = Deadline::after(Duration::from_secs(5)).to_header();
    let back = Deadline::from_header(&header).unwrap();
    assert!(
        back.remaining() <= Duration::from_secs(5) && back.remaining() > Duration::from_secs(3)
    );
    assert!(Deadline::from_header("2001-01-01T00:00:00Z")
        .unwrap()
        .is_expired());
    assert!(Deadline::from_header("tomorrow").is_none());
}

#[tokio::test(start_paused = true)]
async fn a_bulkhead_sheds_over_capacity_and_recovers() {
    let bulkhead = BulkheadLayer::new("provider", 2, 1);
    let slow = service_fn(|_: Call| async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok::<_, BoxError>(())
    });
    let service = ServiceBuilder::new().layer(bulkhead.clone()).service(slow);
    let calls: Vec<_> = (0..4)
        .map(|_| service.clone().oneshot(Call { idempotent: true }))
        .collect();
    let mut handles = Vec::new();
    for call in calls {
        handles.push(tokio::spawn(call));
    }
    tokio::task::yield_now().await;
    let results: Vec<_> = futures::future::join_all(handles)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect();
    let shed = results
        .iter()
        .filter(|r| r.as_ref().is_err_and(|e| e.is::<Overloaded>()))
        .count();
    assert_eq!(shed, 1, "2 running + 1 queued admitted, the 4th shed");
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 3);
    assert_eq!(bulkhead.admitted(), 0);
    assert!(
        service
            .clone()
            .oneshot(Call { idempotent: true })
            .await
            .is_ok(),
        "capacity came back"
    );
}

#[tokio::test(start_paused = true)]
async fn non_idempotent_calls_are_not_retried() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let mut service = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryConfig {
            attempts_max: 3,
            budget_min_per_sec: 100,
            ..RetryConfig::default()
        }))
        .service(service_fn(move |_: Call| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), BoxError>("flaky".into()) }
        }));
    let error = service
        .ready()
        .await
        .unwrap()
        .call(Call { idempotent: false })
        .await
        .unwrap_err();
    assert!(error.is::<DoNotRetry>());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    service
        .ready()
        .await
        .unwrap()
        .call(Call { idempotent: true })
        .await
        .unwrap_err();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "an idempotent call gets its retries"
    );
}

/// The provider: counts calls; answers after `latency`.
fn provider(
    latency: Arc<std::sync::Mutex<Duration>>,
    calls: Arc<AtomicUsize>,
) -> impl Service<Call, Response = (), Error = BoxError, Future = impl Send> + Clone + Send {
    service_fn(move |_: Call| {
        calls.fetch_add(1, Ordering::SeqCst);
        let latency = *latency.lock().unwrap();
        async move {
            tokio::time::sleep(latency).await;
            Ok::<_, BoxError>(())
        }
    })
}

/// Offers `requests` calls, one every 10 ms, to `gateway`, and waits for all of them.
async fn offer<S>(gateway: S, requests: usize)
where
    S: Service<Call, Response = (), Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    let mut handles = Vec::new();
    for _ in 0..requests {
        let gateway = gateway.clone();
        handles.push(tokio::spawn(async move {
            let _ = Deadline::after(Duration::from_secs(5))
                .scope(gateway.oneshot(Call { idempotent: true }))
                .await;
        }));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    futures::future::join_all(handles).await;
}

/// The seeds' incident: the provider slows from 200 ms to 2.5 s under two layers of
/// callers that each retry three times. Undefended, every request becomes nine provider
/// calls. Defended (budgeted retries, retries at one layer only, deadlines, a breaker),
/// the provider sees at most (1 + retry budget) × the offered load.
#[tokio::test(start_paused = true)]
async fn retry_storm_from_the_seeds_is_contained() {
    const OFFERED: usize = 200;
    let latency = Arc::new(std::sync::Mutex::new(Duration::from_millis(200)));

    // Undefended: fixed timeouts, 3 attempts at each layer, no budget, no breaker.
    let naive_calls = Arc::new(AtomicUsize::new(0));
    let naive_retry = || {
        RetryLayer::new(RetryConfig {
            attempts_max: 3,
            budget_ratio: 1000.0,
            budget_min_per_sec: 100_000,
            backoff_initial: Duration::from_millis(1),
            ..RetryConfig::default()
        })
    };
    let service_b = ServiceBuilder::new()
        .map_err(|e: BoxError| match e.downcast::<DoNotRetry>() {
            // The naive stack does not know the "don't retry" convention.
            Ok(marked) => marked.source,
            Err(other) => other,
        })
        .layer(naive_retry())
        .timeout(Duration::from_secs(1))
        .service(provider(latency.clone(), naive_calls.clone()));
    let gateway = ServiceBuilder::new()
        .map_err(|e: BoxError| e)
        .layer(naive_retry())
        .timeout(Duration::from_millis(3500))
        .service(service_b);
    *latency.lock().unwrap() = Duration::from_millis(2500);
    offer(gateway, OFFERED).await;
    let naive = naive_calls.load(Ordering::SeqCst);
    eprintln!(
        "undefended: {naive} provider calls for {OFFERED} requests ({:.1}×)",
        naive as f64 / OFFERED as f64
    );
    assert!(
        naive >= OFFERED * 9 * 95 / 100,
        "the storm is real: {naive}"
    );

    // Defended: the same two layers with Eddy's defaults.
    let calls = Arc::new(AtomicUsize::new(0));
    let budgeted = || {
        RetryLayer::new(RetryConfig {
            budget_min_per_sec: 0,
            ..RetryConfig::default()
        })
    };
    let breaker = CircuitBreaker::new(CircuitBreakerConfig {
        name: "provider".into(),
        ..CircuitBreakerConfig::default()
    });
    let service_b = ServiceBuilder::new()
        .layer(budgeted())
        .layer(CircuitBreakerLayer::new(breaker.clone()).classify(|e| !e.is::<DeadlineExceeded>()))
        .layer(DeadlineLayer {
            call_max: Duration::from_secs(1),
            ..DeadlineLayer::default()
        })
        .service(provider(latency.clone(), calls.clone()));
    let gateway = ServiceBuilder::new()
        .layer(budgeted())
        .layer(DeadlineLayer::default())
        .service(service_b);
    offer(gateway, OFFERED).await;
    let defended = calls.load(Ordering::SeqCst);
    eprintln!(
        "defended: {defended} provider calls for {OFFERED} requests ({:.2}×)",
        defended as f64 / OFFERED as f64
    );
    assert!(
        defended as f64 <= OFFERED as f64 * 1.1,
        "at most (1 + 10 %) × offered, got {defended}"
    );
    assert_eq!(
        breaker.state(),
        BreakerState::Open,
        "the breaker took the load off the provider"
    );
}

#[tokio::test(start_paused = true)]
async fn queued_bulkhead_calls_wait_their_turn_and_a_dropped_one_frees_its_place() {
    let bulkhead = BulkheadLayer::new("provider", 2, 3);
    let running = Arc::new(AtomicU32::new(0));
    let most = Arc::new(AtomicU32::new(0));
    let (r, m) = (running.clone(), most.clone());
    let slow = service_fn(move |_: Call| {
        let (r, m) = (r.clone(), m.clone());
        async move {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(1)).await;
            r.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, BoxError>(())
        }
    });
    let service = ServiceBuilder::new().layer(bulkhead.clone()).service(slow);
    let handles: Vec<_> = (0..5)
        .map(|_| tokio::spawn(service.clone().oneshot(Call { idempotent: true })))
        .collect();
    for handle in handles {
        assert!(handle.await.unwrap().is_ok(), "all five admitted");
    }
    assert_eq!(
        most.load(Ordering::SeqCst),
        2,
        "never more than two at once"
    );
    assert_eq!(bulkhead.admitted(), 0);

    // A queued call given up by its caller leaves the queue.
    let first = tokio::spawn(service.clone().oneshot(Call { idempotent: true }));
    let second = tokio::spawn(service.clone().oneshot(Call { idempotent: true }));
    tokio::task::yield_now().await;
    let queued = tokio::spawn(service.clone().oneshot(Call { idempotent: true }));
    tokio::task::yield_now().await;
    assert_eq!(bulkhead.admitted(), 3);
    queued.abort();
    let _ = queued.await;
    assert_eq!(
        bulkhead.admitted(),
        2,
        "the dropped call gave its place back"
    );
    assert!(first.await.unwrap().is_ok() && second.await.unwrap().is_ok());
}
