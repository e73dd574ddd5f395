//! The cache against real Redis: the shared server with a key prefix per test, and a
//! `redis-server` of the test's own where Redis must fail.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eddy_cache::{Cache, CacheConfig, CacheError, Source};
use eddy_testkit::redis::{redis_url, RedisServer};

fn config(name: &str) -> CacheConfig {
    CacheConfig {
        key_prefix: format!("t{}", uuid::Uuid::now_v7().simple()),
        ttl: Duration::from_secs(10),
        hard_ttl: Duration::from_secs(30),
        // Generous for a loaded 2-core box: a slow Redis reply must not count as Redis
        // failing (the fault tests kill Redis for real).
        l2_timeout: Duration::from_secs(1),
        ..CacheConfig::named(name)
    }
}

/// For the backplane fault tests: a TTL long enough that only a lost backplane noticed
/// (its ping every 200 ms) explains a fresh read.
fn backplane_config(name: &str) -> CacheConfig {
    CacheConfig {
        ttl: Duration::from_secs(20), // the old value would live this long if trusted
        ttl_jitter: 0.0,
        backplane_ping: Duration::from_millis(200),
        ..config(name)
    }
}

/// A store whose value and failures the test sets, counting its loads.
#[derive(Clone, Default)]
struct Store {
    value: Arc<std::sync::Mutex<Option<String>>>,
    loads: Arc<AtomicU64>,
    failing: Arc<std::sync::atomic::AtomicBool>,
    delay: Duration,
}

impl Store {
    fn with(value: &str, delay: Duration) -> Self {
        let store = Self {
            delay,
            ..Self::default()
        };
        store.put(value);
        store
    }

    fn put(&self, value: &str) {
        *self.value.lock().unwrap() = Some(value.to_owned());
    }

    fn loads(&self) -> u64 {
        self.loads.load(Ordering::SeqCst)
    }

    fn fail(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
    }

    fn loader(
        &self,
    ) -> impl FnOnce() -> futures::future::BoxFuture<'static, Result<Option<String>, std::io::Error>>
           + Send
           + 'static {
        let store = self.clone();
        move || {
            Box::pin(async move {
                store.loads.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(store.delay).await;
                if store.failing.load(Ordering::SeqCst) {
                    return Err(std::io::Error::other("store down"));
                }
                Ok(store.value.lock().unwrap().clone())
            })
        }
    }
}

async fn get(
    cache: &Cache<String>,
    store: &Store,
    key: &str,
) -> Result<Option<String>, CacheError> {
    cache.get_or_load(key, store.loader()).await
}

async fn eventually<F: FnMut() -> Fut, Fut: std::future::Future<Output = bool>>(
    within: Duration,
    mut check: F,
) -> Duration {
    let started = Instant::now();
    while started.elapsed() < within {
        if check().await {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("not within {within:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_of_3000_misses_over_two_nodes_runs_one_load() {
    let url = redis_url();
    let config = config("herd");
    let a: Cache<String> = Cache::redis(config.clone(), &url).unwrap();
    let b: Cache<String> = Cache::redis(config, &url).unwrap();
    eventually(Duration::from_secs(5), || async {
        a.backplane_connected() && b.backplane_connected()
    })
    .await;
    let store = Store::with("hot", Duration::from_millis(200));
    let mut calls = Vec::new();
    for i in 0..3000 {
        let cache = if i % 2 == 0 { a.clone() } else { b.clone() };
        let store = store.clone();
        calls.push(tokio::spawn(async move {
            get(&cache, &store, "product-1").await
        }));
    }
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().as_deref(), Some("hot"));
    }
    assert_eq!(store.loads(), 1, "one load for 3,000 callers on two nodes");
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(sa.loads + sb.loads, 1, "{sa:?} {sb:?}");
    assert_eq!(
        sa.l2_hits + sb.l2_hits,
        1,
        "the other node's one load found the value in Redis"
    );
    // Every other caller joined its node's load or, arriving after it, hit L1.
    assert_eq!(
        sa.coalesced + sb.coalesced + sa.l1_hits + sb.l1_hits,
        2_998,
        "{sa:?} {sb:?}"
    );
    for _ in 0..10 {
        get(&a, &store, "product-1").await.unwrap();
    }
    assert_eq!(a.stats().l1_hits, sa.l1_hits + 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_node_reaches_the_other_within_milliseconds() {
    let url = redis_url();
    let config = config("spread");
    let a: Cache<String> = Cache::redis(config.clone(), &url).unwrap();
    let b: Cache<String> = Cache::redis(config, &url).unwrap();
    eventually(Duration::from_secs(5), || async {
        a.backplane_connected() && b.backplane_connected()
    })
    .await;
    let store = Store::with("v1", Duration::ZERO);
    assert_eq!(get(&a, &store, "k").await.unwrap().as_deref(), Some("v1"));
    assert_eq!(get(&b, &store, "k").await.unwrap().as_deref(), Some("v1"));
    let loads = store.loads();
    assert_eq!(loads, 1, "b read a's load from Redis");

    store.put("v2");
    a.invalidate("k", Source::Write).await;
    // The writer reads its own write at once.
    assert_eq!(get(&a, &store, "k").await.unwrap().as_deref(), Some("v2"));
    let took = eventually(Duration::from_secs(2), || async {
        get(&b, &store, "k").await.unwrap().as_deref() == Some("v2")
    })
    .await;
    println!("b served the new value {took:?} after a's write returned");
    assert!(took < Duration::from_millis(500), "{took:?}");

    // A set is a write too, and moves the value itself.
    a.set("k", "v3".to_owned()).await;
    let took = eventually(Duration::from_secs(2), || async {
        get(&b, &store, "k").await.unwrap().as_deref() == Some("v3")
    })
    .await;
    assert!(took < Duration::from_millis(500), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_costs_callers_nothing_and_the_cache_recovers() {
    let mut server = RedisServer::start();
    let config = CacheConfig {
        ttl: Duration::from_millis(300),
        ttl_jitter: 0.0,
        hard_ttl: Duration::from_secs(2),
        l2_breaker_open: Duration::from_millis(300),
        l2_timeout: Duration::from_millis(100),
        ..config("down")
    };
    let a: Cache<String> = Cache::redis(config.clone(), &server.url()).unwrap();
    let store = Store::with("v1", Duration::ZERO);
    assert_eq!(get(&a, &store, "k").await.unwrap().as_deref(), Some("v1"));

    server.stop();
    // Every read answers, from L1 or the loader; none waits long on the dead Redis.
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(2) {
        let call = Instant::now();
        let key = format!("k{}", started.elapsed().as_millis() % 7);
        assert!(get(&a, &store, &key).await.unwrap().is_some());
        slowest = slowest.max(call.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        slowest < Duration::from_millis(800),
        "a read waited {slowest:?} on a dead Redis"
    );
    let loads_while_down = store.loads();

    server.resume();
    // Back: a node with an empty L1 gets the value from Redis, not the loader.
    eventually(Duration::from_secs(10), || async {
        let fresh: Cache<String> = Cache::redis(config.clone(), &server.url()).unwrap();
        let _ = get(&a, &store, "back").await;
        let before = store.loads();
        let found = get(&fresh, &store, "back").await.unwrap();
        found.is_some() && store.loads() == before
    })
    .await;
    assert!(loads_while_down > 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_backplane_makes_every_l1_entry_stale() {
    // A server of its own: killing subscriptions must not touch other tests'.
    let server = RedisServer::start();
    let url = server.url();
    let config = backplane_config("lost");
    let a: Cache<String> = Cache::redis(config.clone(), &url).unwrap();
    let b: Cache<String> = Cache::redis(config, &url).unwrap();
    eventually(Duration::from_secs(5), || async {
        a.backplane_connected() && b.backplane_connected()
    })
    .await;
    let store = Store::with("v1", Duration::ZERO);
    assert_eq!(get(&b, &store, "k").await.unwrap().as_deref(), Some("v1"));

    // Cut every subscription (b's among them) and write while they are down: the
    // invalidation message is lost.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let _: redis::Value = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut admin)
        .await
        .unwrap();
    store.put("v2");
    a.invalidate("k", Source::Write).await;
    let took = eventually(Duration::from_secs(5), || async {
        get(&b, &store, "k").await.unwrap().as_deref() == Some("v2")
    })
    .await;
    assert!(
        took < Duration::from_secs(2),
        "the old value served for {took:?} after a lost backplane"
    );
    eventually(Duration::from_secs(5), || async { b.backplane_connected() }).await;
}

#[tokio::test]
async fn a_failing_loader_leaves_the_stale_value_until_its_hard_expiry_then_the_error() {
    let cache: Cache<String> = Cache::local(CacheConfig {
        ttl: Duration::from_millis(100),
        ttl_jitter: 0.0,
        hard_ttl: Duration::from_millis(800),
        fail_safe_throttle: Duration::from_millis(50),
        soft_timeout: Duration::from_millis(20),
        early_refresh_beta: 0.0,
        ..config("failsafe")
    })
    .unwrap();
    let store = Store::with("v1", Duration::ZERO);
    assert_eq!(
        get(&cache, &store, "k").await.unwrap().as_deref(),
        Some("v1")
    );
    store.fail(true);
    let loaded = Instant::now();
    let mut served_stale = 0;
    loop {
        match get(&cache, &store, "k").await {
            Ok(value) => {
                assert_eq!(value.as_deref(), Some("v1"));
                served_stale += 1;
            }
            Err(CacheError::Load { .. }) => break,
            Err(other) => panic!("{other}"),
        }
        assert!(
            loaded.elapsed() < Duration::from_millis(1500),
            "stale value outlived its hard expiry"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        loaded.elapsed() >= Duration::from_millis(750),
        "the error came early: {:?}",
        loaded.elapsed()
    );
    assert!(served_stale > 10);
    // The throttle: the failing store was not asked on every one of those reads.
    assert!(
        store.loads() < served_stale,
        "{} loads for {served_stale} reads",
        store.loads()
    );

    // A slow loader: the caller holding a stale value gets it after the soft timeout,
    // and the load completes in the background.
    let slow = Store::with("s1", Duration::ZERO);
    assert_eq!(
        get(&cache, &slow, "slow").await.unwrap().as_deref(),
        Some("s1")
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    let slow = Store {
        delay: Duration::from_millis(300),
        ..slow
    };
    slow.put("s2");
    let call = Instant::now();
    assert_eq!(
        get(&cache, &slow, "slow").await.unwrap().as_deref(),
        Some("s1")
    );
    assert!(
        call.elapsed() < Duration::from_millis(250),
        "{:?}",
        call.elapsed()
    );
    eventually(Duration::from_secs(2), || async {
        get(&cache, &slow, "slow").await.unwrap().as_deref() == Some("s2")
    })
    .await;
}

#[tokio::test]
async fn not_found_is_remembered_briefly() {
    let cache: Cache<String> = Cache::local(CacheConfig {
        negative_ttl: Duration::from_millis(200),
        ttl_jitter: 0.0,
        ..config("negative")
    })
    .unwrap();
    let store = Store::default();
    assert_eq!(get(&cache, &store, "k").await.unwrap(), None);
    store.put("now here");
    assert_eq!(
        get(&cache, &store, "k").await.unwrap(),
        None,
        "the negative entry holds"
    );
    assert_eq!(store.loads(), 1);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(
        get(&cache, &store, "k").await.unwrap().as_deref(),
        Some("now here")
    );
}

#[tokio::test]
async fn l1_stays_within_its_weight_and_large_values_are_not_kept() {
    let cache: Cache<String> = Cache::local(CacheConfig {
        l1_bytes_max: 64 * 1024,
        value_bytes_max: 4 * 1024,
        ..config("weight")
    })
    .unwrap();
    let value = "x".repeat(1000);
    for i in 0..1000 {
        let store = Store::with(&value, Duration::ZERO);
        get(&cache, &store, &format!("k{i}")).await.unwrap();
    }
    let (weight, count) = cache.l1_size();
    assert!(weight <= 64 * 1024, "weight {weight}");
    assert!(
        count > 10 && count < 100,
        "{count} entries of ~1 KB in 64 KiB"
    );

    let big = Store::with(&"y".repeat(10_000), Duration::ZERO);
    assert!(get(&cache, &big, "big").await.unwrap().is_some());
    assert!(get(&cache, &big, "big").await.unwrap().is_some());
    assert_eq!(
        big.loads(),
        2,
        "a value over value_bytes_max is returned, not kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_holder_that_died_is_replaced_when_its_lease_expires() {
    let url = redis_url();
    let config = CacheConfig {
        lease_ttl: Duration::from_millis(600),
        load_timeout: Duration::from_millis(500),
        ..config("lease")
    };
    let cache: Cache<String> = Cache::redis(config.clone(), &url).unwrap();
    eventually(Duration::from_secs(5), || async {
        cache.backplane_connected()
    })
    .await;
    // A node took the lease and died before loading.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let lease = format!("{}:{}:lease:k", config.key_prefix, config.name);
    let _: redis::Value = redis::cmd("SET")
        .arg(&lease)
        .arg("dead-node")
        .arg("PX")
        .arg(500)
        .query_async(&mut admin)
        .await
        .unwrap();
    let store = Store::with("v", Duration::ZERO);
    let started = Instant::now();
    assert_eq!(
        get(&cache, &store, "k").await.unwrap().as_deref(),
        Some("v")
    );
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "waited on the lease: {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(store.loads(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_is_refreshed_before_it_expires() {
    let cache: Cache<String> = Cache::local(CacheConfig {
        ttl: Duration::from_millis(1000),
        ttl_jitter: 0.0,
        soft_timeout: Duration::from_secs(5), // an expired read would wait for the load
        ..config("early")
    })
    .unwrap();
    let store = Store::with("v", Duration::from_millis(300));
    get(&cache, &store, "hot").await.unwrap();
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(3) {
        let call = Instant::now();
        get(&cache, &store, "hot").await.unwrap();
        slowest = slowest.max(call.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        store.loads() >= 3,
        "{} loads in 3 s of a 1 s TTL",
        store.loads()
    );
    assert!(
        slowest < Duration::from_millis(200),
        "a read waited {slowest:?} for a reload"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_gives_up_does_not_cancel_the_load_others_wait_on() {
    let cache: Cache<String> = Cache::local(config("gives-up")).unwrap();
    let store = Store::with("v1", Duration::from_millis(300));
    // The first caller starts (and drives) the load, then gives up halfway.
    let first = tokio::time::timeout(Duration::from_millis(100), get(&cache, &store, "k")).await;
    assert!(first.is_err(), "the first caller was meant to give up");
    // A second caller joins the load still running: it is not started again.
    assert_eq!(
        get(&cache, &store, "k").await.unwrap().as_deref(),
        Some("v1")
    );
    assert_eq!(store.loads(), 1);

    // Nobody waiting at all: the load still lands, and the next read is an L1 hit.
    let dropped = tokio::spawn({
        let (cache, store) = (cache.clone(), store.clone());
        async move { get(&cache, &store, "k2").await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    dropped.abort();
    let _ = dropped.await;
    // The load takes 300 ms from when it started.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hits = cache.stats().l1_hits;
    assert_eq!(
        get(&cache, &store, "k2").await.unwrap().as_deref(),
        Some("v1")
    );
    assert_eq!(store.loads(), 2, "the abandoned caller's load was lost");
    assert_eq!(cache.stats().l1_hits, hits + 1);
}

#[tokio::test]
async fn a_panicking_loader_is_an_error_for_its_callers_not_a_panic() {
    let cache: Cache<String> = Cache::local(config("panics")).unwrap();
    let loader =
        || -> futures::future::BoxFuture<'static, Result<Option<String>, std::io::Error>> {
            Box::pin(async { panic!("a bug in the loader") })
        };
    match cache.get_or_load("k", loader).await {
        Err(CacheError::Abandoned { .. }) => {}
        other => panic!("expected an abandoned load, got {other:?}"),
    }
    // The key is not stuck: the next load runs.
    let store = Store::with("v1", Duration::ZERO);
    assert_eq!(
        get(&cache, &store, "k").await.unwrap().as_deref(),
        Some("v1")
    );

    // A loader that panics while making its future (before any await) is the same.
    let making =
        || -> futures::future::BoxFuture<'static, Result<Option<String>, std::io::Error>> {
            panic!("a bug before the load's first await")
        };
    match cache.get_or_load("k2", making).await {
        Err(CacheError::Abandoned { .. }) => {}
        other => panic!("expected an abandoned load, got {other:?}"),
    }
    assert_eq!(
        get(&cache, &store, "k2").await.unwrap().as_deref(),
        Some("v1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_backplane_is_found_by_its_ping_and_makes_l1_stale() {
    // A frozen server keeps the subscription's connection open and answers nothing: only
    // the ping can tell. Its own server, since the test freezes it.
    let server = RedisServer::start();
    let url = server.url();
    let config = CacheConfig {
        l2_timeout: Duration::from_millis(200),
        soft_timeout: Duration::from_millis(50),
        ..backplane_config("hung")
    };
    let cache: Cache<String> = Cache::redis(config, &url).unwrap();
    eventually(Duration::from_secs(5), || async {
        cache.backplane_connected()
    })
    .await;
    let store = Store::with("v1", Duration::ZERO);
    assert_eq!(
        get(&cache, &store, "k").await.unwrap().as_deref(),
        Some("v1")
    );

    // The store changes while Redis hangs: no invalidation can arrive, so after the ping
    // fails nothing in L1 may be trusted, and the read goes to the store.
    server.freeze();
    store.put("v2");
    let lost = eventually(Duration::from_secs(5), || async {
        !cache.backplane_connected()
    })
    .await;
    assert!(
        lost < Duration::from_secs(1),
        "a hung backplane went unnoticed for {lost:?} (ping every 200 ms)"
    );
    let took = eventually(Duration::from_secs(5), || async {
        get(&cache, &store, "k").await.unwrap().as_deref() == Some("v2")
    })
    .await;
    assert!(
        took < Duration::from_secs(2),
        "the old value served for {took:?}"
    );

    // Redis answers again: the subscription comes back by itself.
    server.unfreeze();
    eventually(Duration::from_secs(10), || async {
        cache.backplane_connected()
    })
    .await;
}
