//! The event store on PostgreSQL (issue #15): appends against raw inserts of the same
//! rows, an aggregate of 10,000 events loaded with and without a snapshot against a raw
//! scan and fold, a projection rebuild against a raw scan of the events — and the same
//! append and load workloads through Python's `eventsourcing` library on the same
//! server, side by side.
//!
//! Each run creates its own databases and drops them.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use eddy_core::{Envelope, Error};
use eddy_eventstore::{
    Aggregate, EventStore, Expected, Projection, Projector, ProjectorConfig, Recorded, Target,
    Until,
};
use eddy_sql::{classify, Db, DbConfig, Tx};
use serde::{Deserialize, Serialize};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// PostgreSQL server url (databases are created and dropped).
    #[arg(
        long,
        env = "EDDY_BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    pub postgres_url: String,
    /// Single-event appends per append run.
    #[arg(long, default_value_t = 3_000)]
    pub appends: u64,
    /// Streams the appends go round.
    #[arg(long, default_value_t = 100)]
    pub streams: u64,
    /// Concurrent writers of the second append run (each on streams of its own).
    #[arg(long, default_value_t = 8)]
    pub writers: u64,
    /// Events of the aggregate that is loaded.
    #[arg(long, default_value_t = 10_000)]
    pub events: u64,
    /// Loads timed (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub loads: usize,
    /// Write the results as JSON to this file (and the chart next to it).
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct Results {
    pub machine: String,
    pub postgres: String,
    pub appends: u64,
    pub streams: u64,
    pub writers: u64,
    /// Appends per second, one writer: Eddy, and raw inserts of the same rows.
    pub append_per_sec: f64,
    pub raw_insert_per_sec: f64,
    /// The same with `writers` concurrent writers.
    pub append_per_sec_concurrent: f64,
    pub raw_insert_per_sec_concurrent: f64,
    pub load_events: u64,
    /// Median load of the aggregate: from its events, from a snapshot 100 events before
    /// the end, and a raw scan of its rows folded by hand.
    pub load_ms: f64,
    pub load_snapshot_ms: f64,
    pub raw_load_ms: f64,
    /// Events in the store when rebuilt; rebuild rate and a raw scan's rate.
    pub rebuild_events: u64,
    pub rebuild_per_sec: f64,
    pub raw_scan_per_sec: f64,
    pub peer: Option<Peer>,
}

#[derive(Debug, Serialize)]
pub struct Peer {
    pub name: String,
    pub appends_per_sec: f64,
    pub load_ms: f64,
    pub load_snapshot_ms: f64,
}

/// What the loaded aggregate folds: how many events and the last `n`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Counter {
    events: u64,
    last: u64,
}

#[derive(Deserialize)]
struct Stepped {
    n: u64,
}

impl Aggregate for Counter {
    const SNAPSHOT_VERSION: u32 = 1;

    fn apply(&mut self, event: &Recorded) -> Result<(), Error> {
        let stepped: Stepped = serde_json::from_slice(&event.envelope.payload)
            .map_err(|e| Error::permanent("bad payload").with_source(e))?;
        self.events += 1;
        self.last = stepped.n;
        Ok(())
    }
}

/// Counts events per stream into a table: the rebuilt projection.
#[derive(Debug)]
struct PerStream;

#[eddy_core::async_trait]
impl Projection for PerStream {
    fn name(&self) -> &'static str {
        "per_stream"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["per_stream"]
    }

    async fn create(&self, tx: &mut Tx, target: &Target) -> Result<(), Error> {
        sqlx::query(&format!(
            "CREATE TABLE IF NOT EXISTS {} (stream TEXT PRIMARY KEY, events BIGINT NOT NULL)",
            target.table("per_stream")
        ))
        .execute(tx.conn())
        .await
        .map_err(|e| classify("create", e))?;
        Ok(())
    }

    async fn apply(&self, tx: &mut Tx, target: &Target, event: &Recorded) -> Result<(), Error> {
        let table = target.table("per_stream");
        sqlx::query(&format!(
            "INSERT INTO {table} (stream, events) VALUES ($1, 1) ON CONFLICT (stream) DO UPDATE SET events = {table}.events + 1"
        ))
        .bind(&event.stream)
        .execute(tx.conn())
        .await
        .map_err(|e| classify("count", e))?;
        Ok(())
    }
}

fn event(stream: &str, n: u64) -> Envelope {
    Envelope::new(
        "bench.Stepped",
        1,
        stream,
        format!("{{\"n\":{n}}}").into_bytes(),
        time::OffsetDateTime::now_utc(),
    )
}

pub async fn run(args: &Args) -> anyhow::Result<Results> {
    let server = args.postgres_url.trim_end_matches('/').to_owned();
    let name = format!("eddy_bench_es_{}", uuid::Uuid::now_v7().simple());
    let peer_name = format!("{name}_py");
    let admin = Db::connect(&DbConfig::new(format!("{server}/postgres")))
        .await
        .context("cannot reach PostgreSQL")?;
    for db in [&name, &peer_name] {
        sqlx::query(&format!("CREATE DATABASE {db}"))
            .execute(admin.pool())
            .await?;
    }
    let result = async {
        let mut results = run_on(args, &format!("{server}/{name}")).await?;
        results.peer = peer(args, &peer_name).await?;
        Ok(results)
    }
    .await;
    for db in [&name, &peer_name] {
        sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .execute(admin.pool())
            .await?;
    }
    admin.close().await;
    result
}

async fn run_on(args: &Args, url: &str) -> anyhow::Result<Results> {
    let db =
        Db::connect(&DbConfig::new(url).max_connections(args.writers.max(1) as u32 + 2)).await?;
    let postgres: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(db.pool())
        .await?;
    let store = EventStore::open(db.clone()).await?;
    sqlx::query("CREATE TABLE raw_events (LIKE eddy_es_events INCLUDING ALL)")
        .execute(db.pool())
        .await?;

    // Appends, one writer, then `writers`; raw inserts of the same rows likewise.
    let append_per_sec = appends(&store, args, 1, "a").await?;
    let raw_insert_per_sec = raw_inserts(&db, args, 1, 0).await?;
    let append_per_sec_concurrent = appends(&store, args, args.writers, "c").await?;
    let raw_insert_per_sec_concurrent = raw_inserts(&db, args, args.writers, args.appends).await?;

    // One aggregate of `events` events, loaded three ways.
    let big = "big";
    let mut n = 0;
    while n < args.events {
        let batch: Vec<Envelope> = (n..(n + 500).min(args.events))
            .map(|i| event(big, i))
            .collect();
        n += batch.len() as u64;
        store
            .append(big, Expected::Any, &batch)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let load_ms = median_ms(args.loads, || async {
        let loaded = store.load::<Counter>(big, Until::End).await?;
        anyhow::ensure!(loaded.state.events == args.events && loaded.from_snapshot.is_none());
        Ok(())
    })
    .await?;
    let at = args.events.saturating_sub(100);
    let until = store.load::<Counter>(big, Until::Version(at)).await?;
    store.save_snapshot(big, at, &until.state).await?;
    let load_snapshot_ms = median_ms(args.loads, || async {
        let loaded = store.load::<Counter>(big, Until::End).await?;
        anyhow::ensure!(loaded.state.events == args.events && loaded.applied == 100);
        Ok(())
    })
    .await?;
    let raw_load_ms = median_ms(args.loads, || async {
        let payloads: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT payload FROM eddy_es_events WHERE stream = $1 ORDER BY version",
        )
        .bind(big)
        .fetch_all(db.pool())
        .await?;
        let mut counter = Counter::default();
        for payload in payloads {
            let stepped: Stepped = serde_json::from_slice(&payload)?;
            counter.events += 1;
            counter.last = stepped.n;
        }
        anyhow::ensure!(counter.events == args.events);
        Ok(())
    })
    .await?;

    // A projection over everything, rebuilt; and a raw scan of the same rows.
    let projector = Projector::open(
        store.clone(),
        Arc::new(PerStream),
        ProjectorConfig::default(),
    )
    .await?;
    projector.catch_up(|_| {}).await?;
    let rebuild_events = store.head().await?;
    let started = Instant::now();
    projector.rebuild(|_| {}).await?;
    let rebuild_per_sec = rebuild_events as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut after = 0u64;
    let mut scanned = 0u64;
    loop {
        let page = store.read_all(after, 500).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        scanned += page.len() as u64;
    }
    anyhow::ensure!(scanned == rebuild_events);
    let raw_scan_per_sec = scanned as f64 / started.elapsed().as_secs_f64();
    db.close().await;
    Ok(Results {
        machine: crate::toolkit::machine(),
        postgres,
        appends: args.appends,
        streams: args.streams,
        writers: args.writers,
        append_per_sec,
        raw_insert_per_sec,
        append_per_sec_concurrent,
        raw_insert_per_sec_concurrent,
        load_events: args.events,
        load_ms,
        load_snapshot_ms,
        raw_load_ms,
        rebuild_events,
        rebuild_per_sec,
        raw_scan_per_sec,
        peer: None,
    })
}

/// Runs `write(w, i, streams)` for each writer `w` of `writers` at once, `i` going
/// through that writer's share of `args.appends`, `streams` its share of `args.streams`
/// (write `i` goes to stream `i % streams`, as its version `i / streams + 1`); writes per
/// second over all of them.
async fn writes_per_sec<F, Fut>(args: &Args, writers: u64, write: F) -> anyhow::Result<f64>
where
    F: Fn(u64, u64, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let per_writer = args.appends / writers;
    let streams = (args.streams / writers).max(1);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let write = write.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_writer {
                write(w, i, streams).await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok((per_writer * writers) as f64 / started.elapsed().as_secs_f64())
}

/// `args.appends` single-event appends with `Exact` versions by `writers` writers, each
/// going round streams of its own; appends per second.
async fn appends(store: &EventStore, args: &Args, writers: u64, tag: &str) -> anyhow::Result<f64> {
    let (store, tag) = (store.clone(), tag.to_owned());
    writes_per_sec(args, writers, move |w, i, streams| {
        let (store, stream) = (store.clone(), format!("{tag}-{w}-{}", i % streams));
        async move {
            store
                .append(&stream, Expected::Exact(i / streams), &[event(&stream, i)])
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            Ok(())
        }
    })
    .await
}

/// The rows `appends` writes, inserted one per transaction into a copy of the events
/// table (same columns and indexes), positions from a counter; rows per second.
async fn raw_inserts(db: &Db, args: &Args, writers: u64, first: u64) -> anyhow::Result<f64> {
    let per_writer = args.appends / writers;
    let sql: std::sync::Arc<str> = format!(
        "INSERT INTO raw_events (position, stream, version, recorded_at_us, {}) VALUES ($1, $2, $3, $4, {})",
        eddy_sql::envelope_row::COLUMNS,
        (5..=13).map(|p| format!("${p}")).collect::<Vec<_>>().join(", ")
    )
    .into();
    let db = db.clone();
    writes_per_sec(args, writers, move |w, i, streams| {
        let (db, sql) = (db.clone(), sql.clone());
        let stream = format!("raw-{first}-{w}-{}", i % streams);
        async move {
            let envelope = event(&stream, i);
            let position = first + w * per_writer + i + 1;
            eddy_sql::envelope_row::bind_envelope(
                sqlx::query(&sql)
                    .bind(position as i64)
                    .bind(&stream)
                    .bind((i / streams + 1) as i64)
                    .bind(eddy_core::envelope::to_micros(
                        time::OffsetDateTime::now_utc(),
                    )),
                &envelope,
            )
            .execute(db.pool())
            .await?;
            Ok(())
        }
    })
    .await
}

async fn median_ms<F, Fut>(times: usize, f: F) -> anyhow::Result<f64>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut ms = Vec::with_capacity(times);
    for _ in 0..times.max(1) {
        let started = Instant::now();
        f().await?;
        ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    Ok(ms[ms.len() / 2])
}

/// The `eventsourcing` peer on its own database of the same server, if installed.
async fn peer(args: &Args, dbname: &str) -> anyhow::Result<Option<Peer>> {
    let Some(python) = crate::peers::python("eventsourcing.postgres") else {
        eprintln!(
            "eventstore: Python eventsourcing is not installed (bench/peers/setup.sh); no peer run"
        );
        return Ok(None);
    };
    let (user, host, port) = server_parts(&args.postgres_url);
    let mut command = tokio::process::Command::new(&python);
    command
        .arg(crate::peers::script("eventsourcing_es.py"))
        .args(["--host", &host])
        .args(["--port", &port])
        .args(["--user", &user])
        .args(["--dbname", dbname])
        .args(["--appends", &args.appends.to_string()])
        .args(["--streams", &args.streams.to_string()])
        .args(["--events", &args.events.to_string()])
        .args(["--loads", &args.loads.to_string()]);
    let value = crate::peers::run_json(command).await?;
    let version = std::process::Command::new(&python)
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('eventsourcing'))",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    Ok(Some(Peer {
        name: format!("Python eventsourcing {version} (PostgreSQL)"),
        appends_per_sec: value["appends_per_sec"].as_f64().unwrap_or(0.0),
        load_ms: value["load_ms"].as_f64().unwrap_or(f64::NAN),
        load_snapshot_ms: value["load_snapshot_ms"].as_f64().unwrap_or(f64::NAN),
    }))
}

/// User, host and port of a `postgres://user[:password]@host[:port]` server url.
fn server_parts(url: &str) -> (String, String, String) {
    let rest = url
        .trim_start_matches("postgres://")
        .trim_start_matches("postgresql://");
    let rest = rest.split('/').next().unwrap_or(rest);
    let (user, hostport) = match rest.rsplit_once('@') {
        Some((user, hostport)) => (user.split(':').next().unwrap_or(user), hostport),
        None => ("postgres", rest),
    };
    let (host, port) = hostport.split_once(':').unwrap_or((hostport, "5432"));
    (user.to_owned(), host.to_owned(), port.to_owned())
}

pub fn markdown(r: &Results) -> String {
    let ratio = |a: f64, b: f64| a / b.max(f64::MIN_POSITIVE);
    let mut out = format!(
        "Machine: {}. PostgreSQL {} on the same box (fsync on). {} single-event appends over {} streams.\n\n\
         | measure | Eddy | raw | Eddy / raw |\n|---|---:|---:|---:|\n",
        r.machine, r.postgres, r.appends, r.streams
    );
    out.push_str(&format!(
        "| appends/s, 1 writer (`Exact` version) | {:.0} | {:.0} inserts/s | {:.2}× |\n\
         | appends/s, {} writers | {:.0} | {:.0} inserts/s | {:.2}× |\n\
         | load {} events, no snapshot | {:.1} ms | {:.1} ms (scan + fold) | {:.2}× the time |\n\
         | load {} events, snapshot 100 before the end | {:.1} ms | — | {:.0}× faster than without |\n\
         | projection rebuild ({} events) | {:.0} events/s | {:.0} rows/s (scan) | {:.2}× |\n",
        r.append_per_sec,
        r.raw_insert_per_sec,
        ratio(r.append_per_sec, r.raw_insert_per_sec),
        r.writers,
        r.append_per_sec_concurrent,
        r.raw_insert_per_sec_concurrent,
        ratio(r.append_per_sec_concurrent, r.raw_insert_per_sec_concurrent),
        r.load_events,
        r.load_ms,
        r.raw_load_ms,
        ratio(r.load_ms, r.raw_load_ms),
        r.load_events,
        r.load_snapshot_ms,
        ratio(r.load_ms, r.load_snapshot_ms),
        r.rebuild_events,
        r.rebuild_per_sec,
        r.raw_scan_per_sec,
        ratio(r.rebuild_per_sec, r.raw_scan_per_sec),
    ));
    if let Some(p) = &r.peer {
        out.push_str(&format!(
            "\n| same workload | Eddy | {} | Eddy / peer |\n|---|---:|---:|---:|\n\
             | appends/s, 1 writer | {:.0} | {:.0} | {:.2}× |\n\
             | load {} events | {:.1} ms | {:.1} ms | {:.1}× faster |\n\
             | load with a snapshot | {:.1} ms | {:.1} ms | {:.1}× faster |\n",
            p.name,
            r.append_per_sec,
            p.appends_per_sec,
            ratio(r.append_per_sec, p.appends_per_sec),
            r.load_events,
            r.load_ms,
            p.load_ms,
            ratio(p.load_ms, r.load_ms),
            r.load_snapshot_ms,
            p.load_snapshot_ms,
            ratio(p.load_snapshot_ms, r.load_snapshot_ms),
        ));
    }
    out
}

pub fn chart(r: &Results) -> String {
    use crate::chart::{Bar, Group};
    let mut append = vec![
        Bar {
            label: "raw inserts".to_owned(),
            value: r.raw_insert_per_sec,
            text: format!("{:.0}/s", r.raw_insert_per_sec),
        },
        Bar {
            label: "eddy-eventstore".to_owned(),
            value: r.append_per_sec,
            text: format!("{:.0}/s", r.append_per_sec),
        },
    ];
    let mut load = vec![
        Bar {
            label: "raw scan + fold".to_owned(),
            value: r.raw_load_ms,
            text: format!("{:.1} ms", r.raw_load_ms),
        },
        Bar {
            label: "eddy-eventstore".to_owned(),
            value: r.load_ms,
            text: format!("{:.1} ms", r.load_ms),
        },
        Bar {
            label: "eddy, snapshot".to_owned(),
            value: r.load_snapshot_ms,
            text: format!("{:.1} ms", r.load_snapshot_ms),
        },
    ];
    if let Some(p) = &r.peer {
        append.push(Bar {
            label: "eventsourcing (Python)".to_owned(),
            value: p.appends_per_sec,
            text: format!("{:.0}/s", p.appends_per_sec),
        });
        load.push(Bar {
            label: "eventsourcing (Python)".to_owned(),
            value: p.load_ms,
            text: format!("{:.1} ms", p.load_ms),
        });
    }
    crate::chart::svg(
        "Event store on PostgreSQL (dashed: raw SQL)",
        &[
            Group {
                title: "appends per second, one writer".to_owned(),
                reference: r.raw_insert_per_sec,
                bars: append,
            },
            Group {
                title: format!("load {} events, ms (lower is better)", r.load_events),
                reference: r.raw_load_ms,
                bars: load,
            },
            Group {
                title: "projection rebuild, events/s".to_owned(),
                reference: r.raw_scan_per_sec,
                bars: vec![Bar {
                    label: "eddy-eventstore".to_owned(),
                    value: r.rebuild_per_sec,
                    text: format!(
                        "{:.0}/s vs scan {:.0}/s",
                        r.rebuild_per_sec, r.raw_scan_per_sec
                    ),
                }],
            },
        ],
    )
}
