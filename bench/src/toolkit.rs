//! The toolkit scenarios (outbox append, relay, consumer) and their baselines.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use eddy_core::{async_trait, Envelope, Event, Handler, HandlerError, JsonCodec, SystemClock};
use eddy_log::{Log, LogConfig};
use eddy_outbox::{Outbox, Relay, RelayConfig};
use eddy_runtime::{Consumer, ConsumerConfig, Router};
use eddy_sql::{
    Backend, BatchConfig, BatchTxHandler, Batched, Db, DbConfig, SqliteSynchronous, Transactional,
    Tx, TxHandler,
};
use serde::{Deserialize, Serialize};
use sqlx::Connection;
use tokio_util::sync::CancellationToken;

/// Settings of the toolkit benchmarks.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Databases to measure on: sqlite, postgres (repeatable).
    #[arg(long = "backend", default_values_t = vec!["sqlite".to_owned(), "postgres".to_owned()])]
    pub backends: Vec<String>,
    /// PostgreSQL server url (a database per run is created and dropped).
    #[arg(
        long,
        env = "EDDY_BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    pub postgres_url: String,
    /// Events per measured run.
    #[arg(long, default_value_t = 20_000)]
    pub events: usize,
    /// Concurrent writers in the append scenario.
    #[arg(long, default_value_t = 16)]
    pub writers: usize,
    /// Runs per scenario; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// SQLite `synchronous`: full (fsync per commit) or normal.
    #[arg(long, default_value = "full")]
    pub sqlite_synchronous: String,
    /// NATS server for S7's broker variant (on PostgreSQL); `--no-nats` leaves it out.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Leave out S7 on NATS.
    #[arg(long)]
    pub no_nats: bool,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// One measured figure: the median of the runs, and every run.
#[derive(Debug, Serialize)]
pub struct Measurement {
    pub backend: String,
    pub scenario: &'static str,
    pub variant: &'static str,
    pub median_per_sec: f64,
    pub runs_per_sec: Vec<f64>,
    /// Median over runs of the p99 of one operation, where that applies.
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Results {
    pub machine: String,
    pub settings: Vec<String>,
    pub events: usize,
    pub writers: usize,
    pub repeat: usize,
    pub measurements: Vec<Measurement>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Payload {
    order_id: String,
    customer_id: String,
    total_cents: i64,
    lines: Vec<(String, u32)>,
}

impl Event for Payload {
    const TYPE: &'static str = "bench.OrderPlaced";
    fn key(&self) -> String {
        self.order_id.clone()
    }
}

fn event(i: usize) -> anyhow::Result<Envelope> {
    let payload = Payload {
        order_id: format!("order-{}", i % 1000),
        customer_id: format!("customer-{}", i % 97),
        total_cents: 1999 + i as i64,
        lines: vec![("sku-1".into(), 2), ("sku-2".into(), 1)],
    };
    Ok(JsonCodec::encode(&payload, &SystemClock)?)
}

/// A database that lives for one run.
struct RunDb {
    db: Db,
    _dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>,
}

impl RunDb {
    async fn new(args: &Args, backend: &str) -> anyhow::Result<Self> {
        match backend {
            "sqlite" => {
                let dir = tempfile::tempdir()?;
                let url = format!("sqlite://{}", dir.path().join("bench.db").display());
                let synchronous = match args.sqlite_synchronous.as_str() {
                    "full" => SqliteSynchronous::Full,
                    "normal" => SqliteSynchronous::Normal,
                    other => bail!("--sqlite-synchronous is full or normal, not {other}"),
                };
                let db = Db::connect(&DbConfig::new(&url).sqlite_synchronous(synchronous)).await?;
                Ok(Self {
                    db,
                    _dir: Some(dir),
                    pg: None,
                })
            }
            "postgres" => {
                let server = args.postgres_url.trim_end_matches('/').to_owned();
                let name = format!("eddy_bench_{}", uuid::Uuid::now_v7().simple());
                let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres"))
                    .await
                    .with_context(|| format!("PostgreSQL is not reachable at {server}"))?;
                sqlx::query(&format!("CREATE DATABASE {name}"))
                    .execute(&mut admin)
                    .await?;
                admin.close().await?;
                let db =
                    Db::connect(&DbConfig::new(format!("{server}/{name}")).max_connections(32))
                        .await?;
                Ok(Self {
                    db,
                    _dir: None,
                    pg: Some((server, name)),
                })
            }
            other => bail!("unknown backend {other}; use sqlite or postgres"),
        }
    }

    async fn drop_db(self) -> anyhow::Result<()> {
        self.db.close().await;
        if let Some((server, name)) = self.pg {
            let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres")).await?;
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut admin)
                .await?;
            admin.close().await?;
        }
        Ok(())
    }
}

struct Run {
    per_sec: f64,
    p99_ms: Option<f64>,
}

/// Runs `writers` tasks that together commit `events` single-event transactions.
async fn append_eddy(db: &Db, args: &Args) -> anyhow::Result<Run> {
    let outbox = Outbox::open(db.clone(), Arc::new(SystemClock)).await?;
    let events: Vec<Envelope> = (0..args.events).map(event).collect::<anyhow::Result<_>>()?;
    let events = Arc::new(events);
    timed_writers(args, move |i| {
        let outbox = outbox.clone();
        let events = events.clone();
        async move {
            let mut tx = outbox.db().begin().await?;
            outbox
                .append(&mut tx, "orders", std::slice::from_ref(&events[i]))
                .await?;
            tx.commit().await?;
            Ok(())
        }
    })
    .await
}

/// The same rows through plain sqlx: `BEGIN; INSERT; COMMIT`.
async fn append_baseline(db: &Db, args: &Args) -> anyhow::Result<Run> {
    let blob = if db.backend() == Backend::Postgres {
        "BYTEA"
    } else {
        "BLOB"
    };
    sqlx::query(&format!(
        "CREATE TABLE raw_outbox (id {}, topic TEXT NOT NULL, event_id TEXT NOT NULL, event_type TEXT NOT NULL, schema_version BIGINT NOT NULL, occurred_at_us BIGINT NOT NULL, correlation_id TEXT NOT NULL, causation_id TEXT, event_key TEXT NOT NULL, headers TEXT NOT NULL, payload {blob} NOT NULL, created_at_us BIGINT NOT NULL, published_at_us BIGINT)",
        if db.backend() == Backend::Postgres { "BIGSERIAL PRIMARY KEY" } else { "INTEGER PRIMARY KEY AUTOINCREMENT" }
    ))
    .execute(db.pool())
    .await?;
    let events: Vec<Envelope> = (0..args.events).map(event).collect::<anyhow::Result<_>>()?;
    let events = Arc::new(events);
    let pool = db.pool().clone();
    let sqlite = db.backend() == Backend::Sqlite;
    timed_writers(args, move |i| {
        let pool = pool.clone();
        let events = events.clone();
        async move {
            let e = &events[i];
            let mut tx = if sqlite { pool.begin_with("BEGIN IMMEDIATE").await? } else { pool.begin().await? };
            sqlx::query("INSERT INTO raw_outbox (topic, created_at_us, event_id, event_type, schema_version, occurred_at_us, correlation_id, causation_id, event_key, headers, payload) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)")
                .bind("orders")
                .bind(e.occurred_at_micros())
                .bind(e.id.to_string())
                .bind(e.event_type.as_str())
                .bind(i64::from(e.schema_version))
                .bind(e.occurred_at_micros())
                .bind(e.correlation_id.to_string())
                .bind(e.causation_id.map(|c| c.to_string()))
                .bind(e.key.as_str())
                .bind(e.headers.to_json())
                .bind(e.payload.as_slice())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        }
    })
    .await
}

async fn timed_writers<F, Fut>(args: &Args, op: F) -> anyhow::Result<Run>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let total = args.events as u64;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.writers.max(1) {
        let op = op.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            let mut histogram = hdrhistogram::Histogram::<u64>::new(3)?;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(histogram);
                }
                let began = Instant::now();
                op(i as usize).await?;
                histogram.record(began.elapsed().as_micros() as u64)?;
            }
        }));
    }
    let mut histogram = hdrhistogram::Histogram::<u64>::new(3)?;
    for task in tasks {
        histogram.add(task.await??)?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(Run {
        per_sec: total as f64 / elapsed,
        p99_ms: Some(histogram.value_at_quantile(0.99) as f64 / 1000.0),
    })
}

/// Drains a backlog of `events` outbox rows into the embedded log in another database.
async fn relay_eddy(db: &Db, broker: &Db, args: &Args) -> anyhow::Result<Run> {
    let outbox = Outbox::open(db.clone(), Arc::new(SystemClock)).await?;
    let events: Vec<Envelope> = (0..args.events).map(event).collect::<anyhow::Result<_>>()?;
    for chunk in events.chunks(500) {
        let mut tx = db.begin().await?;
        outbox.append(&mut tx, "orders", chunk).await?;
        tx.commit().await?;
    }
    let log = Log::open(broker.clone(), LogConfig::default()).await?;
    log.create_topic("orders", 8).await?;
    let relay = Relay::new(outbox.clone(), Arc::new(log), RelayConfig::default());
    let start = Instant::now();
    let mut published = 0;
    loop {
        let n = relay.relay_batch().await?;
        if n == 0 {
            break;
        }
        published += n;
    }
    if published != args.events {
        bail!("relayed {published} of {}", args.events);
    }
    Ok(Run {
        per_sec: published as f64 / start.elapsed().as_secs_f64(),
        p99_ms: None,
    })
}

struct Noop;

#[async_trait]
impl Handler<Payload> for Noop {
    async fn handle(&self, _: Payload, _: &Envelope) -> Result<(), HandlerError> {
        Ok(())
    }
}

struct WriteRow;

#[async_trait]
impl TxHandler<Payload> for WriteRow {
    async fn handle(
        &self,
        event: Payload,
        envelope: &Envelope,
        tx: &mut Tx,
    ) -> Result<(), HandlerError> {
        sqlx::query(
            "INSERT INTO bench_effects (event_id, order_id, total_cents) VALUES ($1, $2, $3)",
        )
        .bind(envelope.id.to_string())
        .bind(event.order_id)
        .bind(event.total_cents)
        .execute(tx.conn())
        .await
        .map_err(|e| eddy_sql::classify("effect", e))?;
        Ok(())
    }
}

/// The same effect as [`WriteRow`] for a batch of events: one multi-row insert.
struct WriteRows;

#[async_trait]
impl BatchTxHandler<Payload> for WriteRows {
    async fn handle_batch(
        &self,
        events: &[(&Payload, &Envelope)],
        tx: &mut Tx,
    ) -> Result<(), HandlerError> {
        let mut sql =
            String::from("INSERT INTO bench_effects (event_id, order_id, total_cents) VALUES ");
        for i in 0..events.len() {
            let sep = if i > 0 { ", " } else { "" };
            sql.push_str(&format!(
                "{sep}(${}, ${}, ${})",
                3 * i + 1,
                3 * i + 2,
                3 * i + 3
            ));
        }
        let mut query = sqlx::query(&sql);
        for (event, envelope) in events {
            query = query
                .bind(envelope.id.to_string())
                .bind(event.order_id.as_str())
                .bind(event.total_cents);
        }
        query
            .execute(tx.conn())
            .await
            .map_err(|e| eddy_sql::classify("effects", e))?;
        Ok(())
    }
}

/// How a consumer run handles its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Handling {
    /// No handler work at all.
    Noop,
    /// `Transactional`: a processed-event row and an effect row, one transaction each.
    PerEvent,
    /// `Batched`: the same rows, the events in hand at once sharing a transaction.
    Batched,
}

/// Concurrency of the batched consumer: the batch size is bounded by the events being
/// handled at once.
const BATCHED_CONCURRENCY: usize = 1024;
/// Transactions of the batched consumer written at once (one filling while one commits).
const BATCHED_WRITERS: usize = 2;

/// Creates the idempotency and effect tables and routes `Payload` as `handling` says.
async fn bench_router(db: &Db, handling: Handling) -> anyhow::Result<(Router, ConsumerConfig)> {
    if handling == Handling::Noop {
        return Ok((
            Router::new().route::<Payload, _>(Noop),
            ConsumerConfig::default(),
        ));
    }
    db.migrate(eddy_sql::idempotency::MIGRATIONS).await?;
    sqlx::query("CREATE TABLE bench_effects (event_id TEXT PRIMARY KEY, order_id TEXT NOT NULL, total_cents BIGINT NOT NULL)")
        .execute(db.pool())
        .await?;
    Ok(if handling == Handling::Batched {
        (
            Router::new().route::<Payload, _>(
                Batched::new(db.clone(), "bench", WriteRows).with_config(BatchConfig {
                    batch_len_max: 512,
                    writers: BATCHED_WRITERS,
                })?,
            ),
            ConsumerConfig {
                concurrency: BATCHED_CONCURRENCY,
                in_flight_max: 2 * BATCHED_CONCURRENCY,
                ..ConsumerConfig::default()
            },
        )
    } else {
        (
            Router::new().route::<Payload, _>(Transactional::new(db.clone(), "bench", WriteRow)),
            ConsumerConfig::default(),
        )
    })
}

async fn fill_log(db: &Db, args: &Args) -> anyhow::Result<Log> {
    let log = Log::open(db.clone(), LogConfig::default()).await?;
    log.create_topic("orders", 8).await?;
    let events: Vec<Envelope> = (0..args.events).map(event).collect::<anyhow::Result<_>>()?;
    for chunk in events.chunks(1000) {
        eddy_core::Publisher::publish(&log, "orders", chunk).await?;
    }
    Ok(log)
}

/// Consumes `events` records with the runtime until all are committed.
async fn consume_eddy(db: &Db, args: &Args, handling: Handling) -> anyhow::Result<Run> {
    let log = fill_log(db, args).await?;
    let (router, config) = bench_router(db, handling).await?;
    let consumer = Consumer::new(
        "orders",
        "bench",
        Arc::new(log.clone()),
        Arc::new(log.clone()),
        router,
    )
    .with_config(config);
    let stats = consumer.stats();
    let stop = CancellationToken::new();
    let start = Instant::now();
    let running = tokio::spawn(consumer.run(stop.clone()));
    let total = args.events as u64;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let handled = stats.handled();
        if handled >= total {
            let committed: u64 = log
                .committed_offsets("bench", "orders")
                .await?
                .values()
                .sum();
            if committed >= total {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!("consumer handled only {handled} of {total} in 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    stop.cancel();
    running.await??;
    Ok(Run {
        per_sec: total as f64 / elapsed,
        p99_ms: None,
    })
}

/// S7's write limit: the rows the idempotent consumer writes per event (a processed-event
/// row and the handler's row) inserted by plain sqlx, 256 events per transaction in
/// multi-row `INSERT`s.
async fn batched_insert_baseline(db: &Db, args: &Args) -> anyhow::Result<Run> {
    db.migrate(eddy_sql::idempotency::MIGRATIONS).await?;
    sqlx::query("CREATE TABLE bench_effects (event_id TEXT PRIMARY KEY, order_id TEXT NOT NULL, total_cents BIGINT NOT NULL)")
        .execute(db.pool())
        .await?;
    let ids: Vec<String> = (0..args.events)
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    let start = Instant::now();
    for (chunk_no, chunk) in ids.chunks(256).enumerate() {
        let mut processed = String::from(
            "INSERT INTO eddy_processed_events (consumer, event_id, processed_at_us) VALUES ",
        );
        let mut effects =
            String::from("INSERT INTO bench_effects (event_id, order_id, total_cents) VALUES ");
        for i in 0..chunk.len() {
            let sep = if i > 0 { ", " } else { "" };
            processed.push_str(&format!("{sep}('bench', ${}, ${})", 2 * i + 1, 2 * i + 2));
            effects.push_str(&format!(
                "{sep}(${}, ${}, ${})",
                3 * i + 1,
                3 * i + 2,
                3 * i + 3
            ));
        }
        let mut tx = db.begin().await?;
        let mut query = sqlx::query(&processed);
        for id in chunk {
            query = query.bind(id).bind(0i64);
        }
        query.execute(tx.conn()).await?;
        let mut query = sqlx::query(&effects);
        for (i, id) in chunk.iter().enumerate() {
            query = query
                .bind(id)
                .bind(format!("order-{}", (chunk_no * 256 + i) % 1000))
                .bind(1999i64);
        }
        query.execute(tx.conn()).await?;
        tx.commit().await?;
    }
    Ok(Run {
        per_sec: args.events as f64 / start.elapsed().as_secs_f64(),
        p99_ms: None,
    })
}

const S7_NATS: &str = "S7 on NATS: consume (idempotent, 1 row/event)";

fn s7_nats_config(args: &Args) -> eddy_nats::NatsConfig {
    let prefix = format!("S7{}", uuid::Uuid::now_v7().simple());
    eddy_nats::NatsConfig {
        url: args.nats_url.clone(),
        stream_prefix: prefix.clone(),
        subject_prefix: prefix.to_lowercase(),
        ..eddy_nats::NatsConfig::default()
    }
}

/// S7 on a broker: the runtime consumes `events` envelopes from NATS JetStream through
/// `Transactional` (one transaction per event) or `Batched` (group commit) on PostgreSQL
/// (processed-event row + one effect row per event); timed until every event is handled.
async fn consume_nats_eddy(db: &Db, args: &Args, handling: Handling) -> anyhow::Result<Run> {
    let nats = eddy_nats::Nats::connect(s7_nats_config(args)).await?;
    let result = async {
        let events: Vec<Envelope> = (0..args.events).map(event).collect::<anyhow::Result<_>>()?;
        for chunk in events.chunks(1000) {
            eddy_core::Publisher::publish(&nats, "orders", chunk).await?;
        }
        let (router, config) = bench_router(db, handling).await?;
        let consumer = Consumer::new(
            "orders",
            "bench",
            Arc::new(nats.clone()),
            Arc::new(nats.clone()),
            router,
        )
        .with_config(config);
        let stats = consumer.stats();
        let stop = CancellationToken::new();
        let start = Instant::now();
        let running = tokio::spawn(consumer.run(stop.clone()));
        let total = args.events as u64;
        let deadline = Instant::now() + Duration::from_secs(600);
        while stats.handled() < total {
            if Instant::now() > deadline {
                bail!(
                    "consumer handled only {} of {total} in 10 minutes",
                    stats.handled()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let elapsed = start.elapsed().as_secs_f64();
        stop.cancel();
        running.await??;
        anyhow::Ok(Run {
            per_sec: total as f64 / elapsed,
            p99_ms: None,
        })
    }
    .await;
    for topic in ["orders", "orders.dlq"] {
        let _ = nats.delete_topic(topic).await;
    }
    result
}

/// S7's consume limit on NATS: the same number of messages read with async-nats's pull
/// stream and acknowledged one by one, no decoding (S5's raw client).
async fn consume_nats_raw(args: &Args) -> anyhow::Result<Run> {
    use crate::brokers::{drain, Pipe, RawNats};
    let raw = RawNats {
        js: async_nats::jetstream::new(async_nats::connect(&args.nats_url).await?),
    };
    let topic = format!("s7raw-{}", uuid::Uuid::now_v7().simple());
    raw.create(&topic).await?;
    let result = async {
        let payload = event(0)?.payload;
        for chunk in (0..args.events).collect::<Vec<_>>().chunks(100) {
            raw.publish(&topic, vec![payload.clone(); chunk.len()])
                .await?;
        }
        let mut source = raw.consume(&topic, "bench").await?;
        let start = Instant::now();
        drain(source.as_mut(), args.events, |_| {}).await?;
        source.close().await?;
        anyhow::Ok(Run {
            per_sec: args.events as f64 / start.elapsed().as_secs_f64(),
            p99_ms: None,
        })
    }
    .await;
    let _ = raw.delete(&topic).await;
    result
}

/// The FastStream peer of S7 (`bench/peers/faststream_s7.py`), if installed.
async fn consume_nats_faststream(d: &RunDb, args: &Args) -> anyhow::Result<Option<Run>> {
    let Some(python) = crate::peers::python("faststream.nats, asyncpg") else {
        return Ok(None);
    };
    let Some((server, name)) = &d.pg else {
        return Ok(None);
    };
    d.db.migrate(eddy_sql::idempotency::MIGRATIONS).await?;
    sqlx::query("CREATE TABLE bench_effects (event_id TEXT PRIMARY KEY, order_id TEXT NOT NULL, total_cents BIGINT NOT NULL)")
        .execute(d.db.pool())
        .await?;
    let mut command = tokio::process::Command::new(&python);
    command
        .arg(crate::peers::script("faststream_s7.py"))
        .args(["--url", &args.nats_url])
        .args(["--pg", &format!("{server}/{name}")])
        .args(["--topic", &format!("{}", uuid::Uuid::now_v7().simple())])
        .args(["--messages", &args.events.to_string()]);
    let value = crate::peers::run_json(command).await?;
    Ok(Some(Run {
        per_sec: value["consume_per_sec"].as_f64().unwrap_or(0.0),
        p99_ms: None,
    }))
}

/// The same records read with plain `SELECT`s, partition by partition, 256 at a time.
async fn consume_baseline(db: &Db, args: &Args) -> anyhow::Result<Run> {
    fill_log(db, args).await?;
    let start = Instant::now();
    let mut total = 0usize;
    for partition in 0..8i64 {
        let mut next = 0i64;
        loop {
            let rows: Vec<(i64, String, Vec<u8>)> = sqlx::query_as(
                "SELECT record_offset, event_id, payload FROM eddy_log_records WHERE topic = $1 AND partition = $2 AND record_offset >= $3 ORDER BY record_offset LIMIT 256",
            )
            .bind("orders")
            .bind(partition)
            .bind(next)
            .fetch_all(db.pool())
            .await?;
            let Some(last) = rows.last() else { break };
            next = last.0 + 1;
            total += rows.len();
        }
    }
    if total != args.events {
        bail!("read {total} of {}", args.events);
    }
    Ok(Run {
        per_sec: total as f64 / start.elapsed().as_secs_f64(),
        p99_ms: None,
    })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

type Collected = Vec<(String, &'static str, &'static str, Vec<Run>)>;

fn push(
    collected: &mut Collected,
    backend: &str,
    scenario: &'static str,
    variant: &'static str,
    run: Run,
) {
    if let Some(entry) = collected
        .iter_mut()
        .find(|(b, s, v, _)| b == backend && *s == scenario && *v == variant)
    {
        entry.3.push(run);
    } else {
        collected.push((backend.to_owned(), scenario, variant, vec![run]));
    }
}

pub async fn run_all(args: &Args) -> anyhow::Result<Results> {
    let mut collected: Collected = Vec::new();
    let mut settings = vec![format!(
        "sqlite: journal_mode=WAL, synchronous={}",
        args.sqlite_synchronous.to_uppercase()
    )];
    for backend in &args.backends {
        if backend == "postgres" {
            let probe = RunDb::new(args, backend).await?;
            let fsync: String = sqlx::query_scalar("SHOW fsync")
                .fetch_one(probe.db.pool())
                .await?;
            let sync: String = sqlx::query_scalar("SHOW synchronous_commit")
                .fetch_one(probe.db.pool())
                .await?;
            let version: String = sqlx::query_scalar("SHOW server_version")
                .fetch_one(probe.db.pool())
                .await?;
            settings.push(format!(
                "postgres {version}: fsync={fsync}, synchronous_commit={sync}"
            ));
            probe.drop_db().await?;
        }
    }
    for round in 0..args.repeat {
        for backend in &args.backends {
            eprintln!("round {}/{} on {backend}", round + 1, args.repeat);
            let d = RunDb::new(args, backend).await?;
            push(
                &mut collected,
                backend,
                "outbox append (1 event/tx)",
                "eddy",
                append_eddy(&d.db, args).await?,
            );
            d.drop_db().await?;
            let d = RunDb::new(args, backend).await?;
            push(
                &mut collected,
                backend,
                "outbox append (1 event/tx)",
                "raw sqlx",
                append_baseline(&d.db, args).await?,
            );
            d.drop_db().await?;

            let d = RunDb::new(args, backend).await?;
            let b = RunDb::new(args, backend).await?;
            push(
                &mut collected,
                backend,
                "relay outbox → log",
                "eddy",
                relay_eddy(&d.db, &b.db, args).await?,
            );
            d.drop_db().await?;
            b.drop_db().await?;

            let d = RunDb::new(args, backend).await?;
            push(
                &mut collected,
                backend,
                "consume (no-op handler)",
                "eddy",
                consume_eddy(&d.db, args, Handling::Noop).await?,
            );
            d.drop_db().await?;
            let d = RunDb::new(args, backend).await?;
            push(
                &mut collected,
                backend,
                "consume (idempotent, 1 row/event)",
                "eddy",
                consume_eddy(&d.db, args, Handling::PerEvent).await?,
            );
            d.drop_db().await?;
            let d = RunDb::new(args, backend).await?;
            push(
                &mut collected,
                backend,
                "consume (idempotent, 1 row/event)",
                "eddy, batched",
                consume_eddy(&d.db, args, Handling::Batched).await?,
            );
            d.drop_db().await?;
            let d = RunDb::new(args, backend).await?;
            push(
                &mut collected,
                backend,
                "consume (idempotent, 1 row/event)",
                "batched insert (S7 limit)",
                batched_insert_baseline(&d.db, args).await?,
            );
            d.drop_db().await?;
            let d = RunDb::new(args, backend).await?;
            push(
                &mut collected,
                backend,
                "consume (no-op handler)",
                "raw SELECT",
                consume_baseline(&d.db, args).await?,
            );
            d.drop_db().await?;

            if backend == "postgres" && !args.no_nats {
                let d = RunDb::new(args, backend).await?;
                push(
                    &mut collected,
                    backend,
                    S7_NATS,
                    "batched insert (S7 limit)",
                    batched_insert_baseline(&d.db, args).await?,
                );
                d.drop_db().await?;
                push(
                    &mut collected,
                    backend,
                    S7_NATS,
                    "raw NATS consume + ack",
                    consume_nats_raw(args).await?,
                );
                let d = RunDb::new(args, backend).await?;
                push(
                    &mut collected,
                    backend,
                    S7_NATS,
                    "eddy",
                    consume_nats_eddy(&d.db, args, Handling::PerEvent).await?,
                );
                d.drop_db().await?;
                let d = RunDb::new(args, backend).await?;
                push(
                    &mut collected,
                    backend,
                    S7_NATS,
                    "eddy, batched",
                    consume_nats_eddy(&d.db, args, Handling::Batched).await?,
                );
                d.drop_db().await?;
                let d = RunDb::new(args, backend).await?;
                if let Some(run) = consume_nats_faststream(&d, args).await? {
                    push(&mut collected, backend, S7_NATS, "FastStream", run);
                }
                d.drop_db().await?;
            }
        }
    }
    let measurements = collected
        .into_iter()
        .map(|(backend, scenario, variant, runs)| {
            let mut rates: Vec<f64> = runs.iter().map(|r| r.per_sec).collect();
            let mut p99s: Vec<f64> = runs.iter().filter_map(|r| r.p99_ms).collect();
            Measurement {
                backend,
                scenario,
                variant,
                median_per_sec: median(&mut rates.clone()),
                runs_per_sec: std::mem::take(&mut rates),
                p99_ms: (!p99s.is_empty()).then(|| median(&mut p99s)),
            }
        })
        .collect();
    Ok(Results {
        machine: machine(),
        settings,
        events: args.events,
        writers: args.writers,
        repeat: args.repeat,
        measurements,
    })
}

/// Cores and CPU model of this machine, for reports.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown cpu".to_owned());
    format!("{cpus} cores, {model}")
}

pub fn markdown(results: &Results) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "Machine: {}. Events per run: {}. Writers: {}. Runs: {} (median shown).\n\n",
        results.machine, results.events, results.writers, results.repeat
    ));
    for s in &results.settings {
        out.push_str(&format!("- {s}\n"));
    }
    out.push_str("\n| backend | scenario | variant | events/s (median) | p99 per tx | vs baseline |\n|---|---|---|---:|---:|---:|\n");
    for m in &results.measurements {
        // The baseline is the lowest of the scenario's limits (S7: min of consume and
        // batched insert); peers are not limits.
        let baseline = results
            .measurements
            .iter()
            .filter(|b| {
                b.backend == m.backend && b.scenario == m.scenario && is_reference(b.variant)
            })
            .map(|b| b.median_per_sec)
            .min_by(f64::total_cmp);
        let ratio = match baseline {
            Some(b) if m.variant.starts_with("eddy") => format!("{:.2}×", m.median_per_sec / b),
            _ => "—".to_owned(),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {:.0} | {} | {} |\n",
            m.backend,
            m.scenario,
            m.variant,
            m.median_per_sec,
            m.p99_ms.map_or("—".to_owned(), |p| format!("{p:.2} ms")),
            ratio
        ));
    }
    out
}

/// Whether `variant` is a baseline or limit (not Eddy, not a peer).
fn is_reference(variant: &str) -> bool {
    !variant.starts_with("eddy") && variant != "FastStream"
}

/// Each scenario's variants against its baseline or limit (dashed).
pub fn chart(results: &Results) -> String {
    let mut keys: Vec<(String, &'static str)> = Vec::new();
    for m in &results.measurements {
        if !keys.contains(&(m.backend.clone(), m.scenario)) {
            keys.push((m.backend.clone(), m.scenario));
        }
    }
    let groups: Vec<crate::chart::Group> = keys
        .into_iter()
        .map(|(backend, scenario)| {
            let of: Vec<&Measurement> = results
                .measurements
                .iter()
                .filter(|m| m.backend == backend && m.scenario == scenario)
                .collect();
            let reference = of
                .iter()
                .filter(|m| is_reference(m.variant))
                .map(|m| m.median_per_sec)
                .min_by(f64::total_cmp)
                .or_else(|| of.first().map(|m| m.median_per_sec))
                .unwrap_or(0.0);
            crate::chart::Group {
                title: format!("{backend}: {scenario}"),
                reference,
                bars: of
                    .iter()
                    .map(|m| crate::chart::Bar {
                        label: m.variant.to_owned(),
                        value: m.median_per_sec,
                        text: format!("{:.0} events/s", m.median_per_sec),
                    })
                    .collect(),
            }
        })
        .collect();
    crate::chart::svg(
        &format!(
            "Toolkit and S7 ({}; dashed: baseline or limit)",
            results.machine
        ),
        &groups,
    )
}
