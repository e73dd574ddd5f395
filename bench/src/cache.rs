//! S6: the two-level cache (`eddy-cache`) in front of a store that takes 15 ms, with Redis
//! as the shared level.
//!
//! Four measurements in one run:
//!
//! 1. **Tiered latency**: `workers` concurrent readers draw keys from a Zipf distribution
//!    over `keys` keys; L1 holds about `l1_entries` of them, so most reads hit L1, the
//!    tail hits Redis, and each key's first read reaches the store. The limit is
//!    Σ(share × tier latency) with the cache's shares and each tier's latency from the
//!    same readers over the raw parts composed by hand (`raw_tiers`), so every tier is
//!    timed under this very load (target ≤ 1.1 ×).
//! 2. **Herd**: 3,000 concurrent misses on one key, spread over two caches with separate
//!    L1s sharing Redis: store loads (target exactly 1).
//! 3. **L1 get rate**: a cache hit through `get_or_load` against a raw `moka` get of the
//!    same entries, one thread, back to back (target ≥ 0.8 × raw).
//! 4. **Peer**: the same workload and herd through Python's cashews
//!    (`bench/peers/cashews_s6.py`), when `bench/peers/setup.sh` installed it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use eddy_cache::{Cache, CacheConfig};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Settings of S6.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Redis for the shared level (a key prefix per run; keys expire).
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    pub redis: String,
    /// Distinct keys the readers draw from.
    #[arg(long, default_value_t = 4_000)]
    pub keys: usize,
    /// Zipf exponent of the key distribution.
    #[arg(long, default_value_t = 1.0)]
    pub zipf: f64,
    /// Reads in the tiered run.
    #[arg(long, default_value_t = 400_000)]
    pub requests: u64,
    /// Concurrent readers.
    #[arg(long, default_value_t = 64)]
    pub workers: usize,
    /// About how many entries L1 holds (its byte bound is set from a value's weight).
    #[arg(long, default_value_t = 1_500)]
    pub l1_entries: u64,
    /// The store's latency, ms.
    #[arg(long, default_value_t = 15)]
    pub store_ms: u64,
    /// Concurrent misses on one key in the herd.
    #[arg(long, default_value_t = 3_000)]
    pub herd: usize,
    /// Gets per variant in the L1 get-rate run.
    #[arg(long, default_value_t = 2_000_000)]
    pub gets: u64,
    /// JSON results (and an SVG chart next to them).
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// A catalog entry, about the size of the shop's product view.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Product {
    id: String,
    sku: String,
    name: String,
    price_cents: i64,
    currency: String,
    stock: i64,
}

fn product(key: &str) -> Product {
    Product {
        id: key.to_owned(),
        sku: format!("sku-{key}"),
        name: "A product of the benchmark catalog".to_owned(),
        price_cents: 1250,
        currency: "EUR".to_owned(),
        stock: 10,
    }
}

/// The store: answers after `latency`, counting its loads.
#[derive(Debug, Clone)]
struct Store {
    latency: Duration,
    loads: Arc<AtomicU64>,
}

impl Store {
    /// A load of `key` (the cache calls for it only on a miss).
    fn load(
        &self,
        key: &Arc<str>,
    ) -> impl std::future::Future<Output = Result<Option<Product>, std::io::Error>> + Send + 'static
    {
        let store = self.clone();
        let key = key.clone();
        async move {
            store.loads.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(store.latency).await;
            Ok(Some(product(&key)))
        }
    }
}

/// Zipf over `0..n` by inverse CDF.
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut total = 0.0;
        let cumulative = (1..=n.max(1))
            .map(|k| {
                total += 1.0 / (k as f64).powf(s);
                total
            })
            .collect();
        Self { cumulative }
    }

    fn sample(&self, rng: &mut impl Rng) -> usize {
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let u = rng.gen_range(0.0..total);
        self.cumulative
            .partition_point(|c| *c < u)
            .min(self.cumulative.len() - 1)
    }
}

#[derive(Debug, Serialize)]
pub struct Tier {
    pub name: &'static str,
    /// Share of the cache's reads this tier answered.
    pub share: f64,
    /// Mean latency of the raw composition's reads this tier answered, µs.
    pub latency_us: f64,
    /// Share of the raw composition's reads this tier answered.
    pub raw_share: f64,
}

#[derive(Debug, Serialize)]
pub struct Results {
    pub machine: String,
    pub keys: usize,
    pub requests: u64,
    pub workers: usize,
    pub tiers: Vec<Tier>,
    /// Σ(share × tier latency), µs.
    pub limit_us: f64,
    /// The cache's mean read latency, µs.
    pub mean_us: f64,
    /// The raw composition's own mean (its shares differ a little from the cache's), µs.
    pub raw_mean_us: f64,
    pub p99_us: f64,
    pub herd: usize,
    pub herd_store_loads: u64,
    pub l1_gets_per_sec: f64,
    pub raw_moka_gets_per_sec: f64,
    /// The tiered run's reads per second.
    pub reads_per_sec: f64,
    /// The same workload through Python's cashews, when installed (`bench/peers/setup.sh`).
    pub peer: Option<Peer>,
}

/// The peer's run of the same workload (`bench/peers/cashews_s6.py`).
#[derive(Debug, Serialize)]
pub struct Peer {
    pub name: String,
    pub mean_us: f64,
    pub p99_us: f64,
    pub reads_per_sec: f64,
    pub herd_store_loads: u64,
}

/// Runs the cashews peer, if it is installed.
async fn peer(args: &Args) -> anyhow::Result<Option<Peer>> {
    let Some(python) = crate::peers::python("cashews, redis") else {
        eprintln!("S6: cashews is not installed (bench/peers/setup.sh); no peer run");
        return Ok(None);
    };
    let mut command = tokio::process::Command::new(&python);
    command
        .arg(crate::peers::script("cashews_s6.py"))
        .args(["--redis", &args.redis])
        .args(["--keys", &args.keys.to_string()])
        .args(["--zipf", &args.zipf.to_string()])
        .args(["--requests", &args.requests.to_string()])
        .args(["--workers", &args.workers.to_string()])
        .args(["--l1-entries", &args.l1_entries.to_string()])
        .args(["--store-ms", &args.store_ms.to_string()])
        .args(["--herd", &args.herd.to_string()]);
    let value = crate::peers::run_json(command).await?;
    Ok(Some(Peer {
        name: "cashews (Python, client-side Redis)".to_owned(),
        mean_us: value["mean_us"].as_f64().unwrap_or(f64::NAN),
        p99_us: value["p99_us"].as_f64().unwrap_or(f64::NAN),
        reads_per_sec: value["reads_per_sec"].as_f64().unwrap_or(0.0),
        herd_store_loads: value["herd_store_loads"].as_u64().unwrap_or(0),
    }))
}

fn config(prefix: &str, l1_bytes: u64) -> CacheConfig {
    CacheConfig {
        key_prefix: prefix.to_owned(),
        ttl: Duration::from_secs(300),
        hard_ttl: Duration::from_secs(600),
        l1_bytes_max: l1_bytes,
        // Redis on the same box under a loaded CPU: a slow reply is not Redis failing.
        l2_timeout: Duration::from_millis(500),
        ..CacheConfig::named("s6")
    }
}

/// The weight of one entry in L1 (serialized bytes and key), as the cache counts it.
fn entry_weight() -> u64 {
    let bytes = serde_json::to_vec(&product("k-0000")).map_or(200, |b| b.len());
    // The stored entry wraps the value with its lifetimes (~110 bytes) and the key.
    (bytes + 110 + 6) as u64
}

async fn timed_concurrently<F, Fut>(
    requests: u64,
    workers: usize,
    f: F,
) -> hdrhistogram::Histogram<u64>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let f = f.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut histogram =
                hdrhistogram::Histogram::<u64>::new(3).unwrap_or_else(|_| unreachable_histogram());
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    return histogram;
                }
                let started = Instant::now();
                f(i).await;
                let _ = histogram.record(started.elapsed().as_nanos() as u64);
            }
        }));
    }
    let mut all =
        hdrhistogram::Histogram::<u64>::new(3).unwrap_or_else(|_| unreachable_histogram());
    for task in tasks {
        if let Ok(histogram) = task.await {
            let _ = all.add(histogram);
        }
    }
    all
}

fn unreachable_histogram() -> hdrhistogram::Histogram<u64> {
    // `new(3)` only fails for a precision above 5.
    hdrhistogram::Histogram::<u64>::new(2).unwrap_or_else(|_| std::process::abort())
}

pub async fn run(args: &Args) -> anyhow::Result<Results> {
    let prefix = format!("s6-{}", uuid::Uuid::now_v7().simple());
    let zipf = Arc::new(Zipf::new(args.keys, args.zipf));
    let keys: Arc<Vec<Arc<str>>> = Arc::new(
        (0..args.keys)
            .map(|k| Arc::from(format!("k-{k:04}")))
            .collect(),
    );
    let store = Store {
        latency: Duration::from_millis(args.store_ms),
        loads: Arc::new(AtomicU64::new(0)),
    };
    let l1_bytes = args.l1_entries * entry_weight();

    // 1. The cache under the Zipf load.
    let cache: Cache<Product> = Cache::redis(config(&prefix, l1_bytes), &args.redis)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cache.backplane_connected() {
        anyhow::ensure!(Instant::now() < deadline, "no Redis at {}", args.redis);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (c, s, z, k) = (cache.clone(), store.clone(), zipf.clone(), keys.clone());
    let started = Instant::now();
    let histogram = timed_concurrently(args.requests, args.workers, move |_| {
        let (c, s, z, k) = (c.clone(), s.clone(), z.clone(), k.clone());
        async move {
            let key = &k[z.sample(&mut rand::thread_rng())];
            let _ = c.get_or_load(key, || s.load(key)).await;
        }
    })
    .await;
    let tiered_took = started.elapsed();
    eprintln!(
        "S6 tiered run: {} reads in {tiered_took:.1?}",
        args.requests
    );

    // Shares, as the cache counted them: L1 hits, loader calls (the store), and the rest
    // answered from Redis (directly or by joining a load that found the value there).
    // A reader that joined a load waited for that load's source: it counts there.
    let stats = cache.stats();
    let n = args.requests as f64;
    let store_share = stats.answered_by_loader as f64 / n;
    let l1_share = stats.l1_hits as f64 / n;
    let l2_share = stats.answered_by_l2 as f64 / n;

    // Each tier's own latency, from the same readers over the raw parts (see `raw_tiers`).
    // The raw L1 holds as many entries as the cache's did (the cache bounds L1 by bytes),
    // so both see about the same shares.
    let (_, l1_held) = cache.l1_size();
    let raw = raw_tiers(args, &prefix, &keys, &zipf, l1_held.max(1)).await?;
    let tiers = vec![
        Tier {
            name: "L1 (raw moka get)",
            share: l1_share,
            latency_us: raw.latency_us[0],
            raw_share: raw.shares[0],
        },
        Tier {
            name: "Redis (raw GET + decode + moka insert)",
            share: l2_share,
            latency_us: raw.latency_us[1],
            raw_share: raw.shares[1],
        },
        Tier {
            name: "store (15 ms, then SET + insert)",
            share: store_share,
            latency_us: raw.latency_us[2],
            raw_share: raw.shares[2],
        },
    ];
    let limit_us: f64 = tiers.iter().map(|t| t.share * t.latency_us).sum();

    // 2. The herd: two nodes, separate L1s, one Redis, one cold key.
    let herd_store = Store {
        latency: Duration::from_millis(args.store_ms.max(50)),
        loads: Arc::new(AtomicU64::new(0)),
    };
    let a: Cache<Product> = Cache::redis(config(&format!("{prefix}-herd"), l1_bytes), &args.redis)?;
    let b: Cache<Product> = Cache::redis(config(&format!("{prefix}-herd"), l1_bytes), &args.redis)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(a.backplane_connected() && b.backplane_connected()) {
        anyhow::ensure!(Instant::now() < deadline, "no Redis backplane");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut calls = Vec::with_capacity(args.herd);
    for i in 0..args.herd {
        let node = if i % 2 == 0 { a.clone() } else { b.clone() };
        let store = herd_store.clone();
        calls.push(tokio::spawn(async move {
            node.get_or_load("herd-key", || store.load(&Arc::from("herd-key")))
                .await
        }));
    }
    for call in calls {
        call.await
            .context("a herd reader")?
            .context("a herd read")?;
    }
    let herd_store_loads = herd_store.loads.load(Ordering::Relaxed);

    // 3. L1 gets: the cache's hit path against raw moka, same keys, all resident.
    let (l1_gets_per_sec, raw_moka_gets_per_sec) = get_rates(args.gets).await?;

    // 4. The peer, same workload.
    let peer = peer(args).await?;

    Ok(Results {
        machine: crate::toolkit::machine(),
        keys: args.keys,
        requests: args.requests,
        workers: args.workers,
        tiers,
        limit_us,
        mean_us: histogram.mean() / 1_000.0,
        raw_mean_us: raw.mean_us,
        p99_us: histogram.value_at_quantile(0.99) as f64 / 1_000.0,
        herd: args.herd,
        herd_store_loads,
        l1_gets_per_sec,
        raw_moka_gets_per_sec,
        reads_per_sec: args.requests as f64 / tiered_took.as_secs_f64(),
        peer,
    })
}

/// What the raw composition measured.
struct RawRun {
    /// Mean latency of the reads each tier answered, µs: L1, Redis, store.
    latency_us: [f64; 3],
    /// Shares of the reads each tier answered.
    shares: [f64; 3],
    mean_us: f64,
}

/// The same readers, keys and request count over the raw parts composed by hand, with
/// none of the cache's work (no coalescing, no lease, no freshness, no metrics): a moka
/// get; on a miss a Redis `GET` on a multiplexed connection, decoded and put into moka;
/// on a miss there the store, then a Redis `SET` and a moka insert. Each read is timed
/// into the tier that answered it, so a tier's latency is what it costs under this very
/// load — on a CPU-bound box the tiers' latencies depend on the mix (a Redis read waits
/// behind the L1 hits other readers run meanwhile), and the tiers timed one at a time at
/// this concurrency measure a queue, not a tier.
async fn raw_tiers(
    args: &Args,
    prefix: &str,
    keys: &Arc<Vec<Arc<str>>>,
    zipf: &Arc<Zipf>,
    l1_entries: u64,
) -> anyhow::Result<RawRun> {
    let client = redis::Client::open(args.redis.as_str())?;
    let connection = client.get_multiplexed_async_connection().await?;
    let moka: moka::sync::Cache<Arc<str>, Arc<Product>> = moka::sync::Cache::new(l1_entries);
    let redis_prefix = Arc::<str>::from(format!("{prefix}:raw"));
    let latency = Duration::from_millis(args.store_ms);
    let next = Arc::new(AtomicU64::new(0));
    let requests = args.requests;
    let mut tasks = Vec::new();
    for _ in 0..args.workers {
        let (moka, connection, keys, zipf, next, redis_prefix) = (
            moka.clone(),
            connection.clone(),
            keys.clone(),
            zipf.clone(),
            next.clone(),
            redis_prefix.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut histograms: [hdrhistogram::Histogram<u64>; 3] = std::array::from_fn(|_| {
                hdrhistogram::Histogram::<u64>::new(3).unwrap_or_else(|_| unreachable_histogram())
            });
            let mut c = connection;
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                let key = &keys[zipf.sample(&mut rand::thread_rng())];
                let started = Instant::now();
                let tier = if moka.get(key).map(|p| (*p).clone()).is_some() {
                    0
                } else {
                    let redis_key = format!("{redis_prefix}:{key}");
                    let bytes: Option<Vec<u8>> = redis::cmd("GET")
                        .arg(&redis_key)
                        .query_async(&mut c)
                        .await
                        .ok()
                        .flatten();
                    match bytes.and_then(|b| serde_json::from_slice::<Product>(&b).ok()) {
                        Some(found) => {
                            moka.insert(key.clone(), Arc::new(found));
                            1
                        }
                        None => {
                            tokio::time::sleep(latency).await;
                            let loaded = product(key);
                            let bytes = serde_json::to_vec(&loaded).unwrap_or_default();
                            let _: redis::RedisResult<()> = redis::cmd("SET")
                                .arg(&redis_key)
                                .arg(bytes)
                                .arg("PX")
                                .arg(120_000)
                                .query_async(&mut c)
                                .await;
                            moka.insert(key.clone(), Arc::new(loaded));
                            2
                        }
                    }
                };
                let _ = histograms[tier].record(started.elapsed().as_nanos() as u64);
            }
            histograms
        }));
    }
    let mut all: [hdrhistogram::Histogram<u64>; 3] = std::array::from_fn(|_| {
        hdrhistogram::Histogram::<u64>::new(3).unwrap_or_else(|_| unreachable_histogram())
    });
    for task in tasks {
        for (into, from) in all.iter_mut().zip(task.await?) {
            let _ = into.add(from);
        }
    }
    let total: u64 = all.iter().map(|h| h.len()).sum();
    let total = total.max(1) as f64;
    let sum_ns: f64 = all.iter().map(|h| h.mean() * h.len() as f64).sum();
    Ok(RawRun {
        latency_us: std::array::from_fn(|t| all[t].mean() / 1_000.0),
        shares: std::array::from_fn(|t| all[t].len() as f64 / total),
        mean_us: sum_ns / total / 1_000.0,
    })
}

/// Hits per second through the cache and through raw moka, one thread each.
async fn get_rates(gets: u64) -> anyhow::Result<(f64, f64)> {
    let keys: Vec<Arc<str>> = (0..1_000).map(|k| Arc::from(format!("g-{k:04}"))).collect();
    let cache: Cache<Product> = Cache::local(CacheConfig {
        ttl: Duration::from_secs(600),
        hard_ttl: Duration::from_secs(1200),
        ..CacheConfig::named("s6-gets")
    })?;
    let store = Store {
        latency: Duration::ZERO,
        loads: Arc::new(AtomicU64::new(0)),
    };
    for k in &keys {
        cache.get_or_load(k, || store.load(k)).await?;
    }
    let moka: moka::sync::Cache<String, Arc<Product>> = moka::sync::Cache::new(10_000);
    for k in &keys {
        moka.insert(k.to_string(), Arc::new(product(k)));
    }
    let mut best = (0.0f64, 0.0f64);
    for _ in 0..3 {
        let started = Instant::now();
        for i in 0..gets {
            let k = &keys[(i % 1_000) as usize];
            let _ = cache.get_or_load(k, || store.load(k)).await;
        }
        best.0 = best.0.max(gets as f64 / started.elapsed().as_secs_f64());
        let started = Instant::now();
        for i in 0..gets {
            let k = &keys[(i % 1_000) as usize];
            let _ = moka.get(&**k).map(|p| (*p).clone());
        }
        best.1 = best.1.max(gets as f64 / started.elapsed().as_secs_f64());
    }
    anyhow::ensure!(
        store.loads.load(Ordering::Relaxed) == 1_000,
        "the get-rate run missed L1"
    );
    Ok(best)
}

pub fn markdown(r: &Results) -> String {
    let mut out = format!(
        "Machine: {}. {} reads by {} concurrent readers over {} Zipf keys; Redis on the same box.\n\n",
        r.machine, r.requests, r.workers, r.keys
    );
    out.push_str(
        "| tier | share (cache) | tier latency (raw parts, same load) | share (raw parts) |\n|---|---:|---:|---:|\n",
    );
    for t in &r.tiers {
        out.push_str(&format!(
            "| {} | {:.1} % | {:.1} µs | {:.1} % |\n",
            t.name,
            t.share * 100.0,
            t.latency_us,
            t.raw_share * 100.0
        ));
    }
    out.push_str(&format!(
        "\nThe raw parts' own mean: {:.1} µs.\n",
        r.raw_mean_us
    ));
    out.push_str(&format!(
        "\n| measure | Eddy | limit / raw | ratio | target |\n|---|---:|---:|---:|---|\n\
         | mean read latency | {:.1} µs (p99 {:.0} µs) | Σ share × tier = {:.1} µs | {:.2}× | ≤ 1.1× |\n\
         | herd of {} misses, two nodes | {} store load(s) | 1 | — | exactly 1 |\n\
         | L1 gets per second (one thread) | {:.2} M | raw moka {:.2} M | {:.2}× | ≥ 0.8× |\n",
        r.mean_us,
        r.p99_us,
        r.limit_us,
        r.mean_us / r.limit_us.max(f64::MIN_POSITIVE),
        r.herd,
        r.herd_store_loads,
        r.l1_gets_per_sec / 1e6,
        r.raw_moka_gets_per_sec / 1e6,
        r.l1_gets_per_sec / r.raw_moka_gets_per_sec.max(f64::MIN_POSITIVE),
    ));
    if let Some(p) = &r.peer {
        out.push_str(&format!(
            "\nPeer, same workload and herd: {} — mean {:.1} µs (p99 {:.0} µs), {:.0} reads/s, \
             herd: {} store load(s) (with its `lock=True`); Eddy: {:.0} reads/s, **{:.1}×** the \
             peer's throughput.\n",
            p.name,
            p.mean_us,
            p.p99_us,
            p.reads_per_sec,
            p.herd_store_loads,
            r.reads_per_sec,
            r.reads_per_sec / p.reads_per_sec.max(f64::MIN_POSITIVE),
        ));
    }
    out
}

pub fn chart(r: &Results) -> String {
    use crate::chart::{Bar, Group};
    crate::chart::svg(
        "S6: two-level cache (dashed: the limit or raw moka)",
        &[
            Group {
                title: "mean read latency, µs (lower is better)".to_owned(),
                reference: r.limit_us,
                bars: vec![Bar {
                    label: "eddy-cache".to_owned(),
                    value: r.mean_us,
                    text: format!("{:.1} µs vs Σ {:.1} µs", r.mean_us, r.limit_us),
                }],
            },
            Group {
                title: "L1 gets per second".to_owned(),
                reference: r.raw_moka_gets_per_sec,
                bars: vec![
                    Bar {
                        label: "raw moka".to_owned(),
                        value: r.raw_moka_gets_per_sec,
                        text: format!("{:.2} M/s", r.raw_moka_gets_per_sec / 1e6),
                    },
                    Bar {
                        label: "eddy-cache".to_owned(),
                        value: r.l1_gets_per_sec,
                        text: format!("{:.2} M/s", r.l1_gets_per_sec / 1e6),
                    },
                ],
            },
        ],
    )
}
