//! S4: `POST /v1/orders` on PostgreSQL (order, lines and outbox row in one durable
//! transaction) while the relay publishes to NATS JetStream, next to pgbench running the
//! same SQL at the same concurrency on the same database.
//!
//! Per round: the orders service starts in a process of its own (`serve --kind shop`);
//! a closed loop of `connections` clients places orders for `seconds`; meanwhile a
//! consumer on the broker records, per event, receipt time minus the time the event was
//! written (an upper bound of commit → broker ack), and the unpublished outbox rows are
//! sampled every 250 ms (the relay backlog). The service stops; pgbench then runs the
//! same statements for as long, and its outbox rows are deleted.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use eddy_core::{Subscriber, Subscription};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::process::Command;

use crate::loadgen::{closed_loop, Request};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// PostgreSQL server url (a database is created and dropped).
    #[arg(
        long,
        env = "EDDY_BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    pub postgres_url: String,
    /// NATS server the relay publishes to.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Concurrent clients (HTTP connections for Eddy, pgbench clients).
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Rounds (each runs Eddy then pgbench); medians are reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub eddy_orders_per_sec: f64,
    pub eddy_p99_ms: f64,
    pub eddy_errors: u64,
    pub pgbench_tps: f64,
    pub pgbench_latency_ms: f64,
    pub commit_to_broker_p50_ms: f64,
    pub commit_to_broker_p99_ms: f64,
    pub backlog_max: i64,
    pub backlog_end: i64,
}

#[derive(Debug, Serialize)]
pub struct Results {
    pub machine: String,
    pub postgres: String,
    pub durability: String,
    pub connections: usize,
    pub seconds: u64,
    pub rounds: Vec<Round>,
    pub median: Round,
}

const PRODUCTS: [(&str, i64); 2] = [("s4-product-1", 1250), ("s4-product-2", 990)];

/// The statements `POST /v1/orders` runs on PostgreSQL (`shop/src/orders/http.rs`:
/// prices, the order's stream append under the sequence lock, the outbox row, the order
/// views moved inline with their checkpoint), for pgbench.
fn pgbench_script() -> String {
    let payload = r#"{"order_id":"0190f0f0-0000-7000-8000-000000000000","customer_id":"customer-42","lines":[{"product_id":"s4-product-1","quantity":2,"unit_price_cents":1250},{"product_id":"s4-product-2","quantity":1,"unit_price_cents":990}],"total_cents":3490,"currency":"EUR"}"#;
    let columns = "event_id, event_type, schema_version, occurred_at_us, correlation_id, causation_id, event_key, headers, payload";
    let values = format!(
        "gen_random_uuid()::text, 'orders.OrderPlaced', 1, 1, gen_random_uuid()::text, NULL, :order_id, '{{\"traceparent\":\"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\"}}', convert_to('{payload}', 'UTF8')"
    );
    format!(
        "\\set c random(1, 100000)\n\
         BEGIN;\n\
         SELECT gen_random_uuid()::text AS order_id \\gset\n\
         SELECT price_cents, currency FROM catalog_copy WHERE product_id = 's4-product-1';\n\
         SELECT price_cents, currency FROM catalog_copy WHERE product_id = 's4-product-2';\n\
         SELECT stream, version, position FROM eddy_es_events WHERE event_id = :order_id;\n\
         SELECT next_position FROM eddy_es_sequence WHERE id = 1 FOR UPDATE;\n\
         INSERT INTO eddy_es_streams (stream, version) VALUES ('order-' || :order_id, 1) ON CONFLICT (stream) DO NOTHING RETURNING version;\n\
         UPDATE eddy_es_sequence SET next_position = next_position + 1, last_recorded_us = CASE WHEN last_recorded_us > 1 THEN last_recorded_us ELSE 1 END WHERE id = 1 RETURNING next_position - 1 AS position, last_recorded_us \\gset\n\
         INSERT INTO eddy_es_events (position, stream, version, recorded_at_us, {columns}) VALUES (:position, 'order-' || :order_id, 1, :last_recorded_us, {values});\n\
         INSERT INTO eddy_outbox (topic, created_at_us, {columns}) VALUES ('pgbench', 1, {values});\n\
         SELECT generation, position, replay_until FROM eddy_es_projections WHERE name = 'order_views' FOR UPDATE;\n\
         SELECT stream, version, position, recorded_at_us, {columns} FROM eddy_es_events WHERE position > :position - 1 ORDER BY position LIMIT 500;\n\
         INSERT INTO order_view_g1 (id, customer_id, status, total_cents, currency, cancel_reason, created_at_us, updated_at_us) VALUES (:order_id, 'customer-' || :c, 'PENDING', 3490, 'EUR', NULL, 1, 1);\n\
         INSERT INTO order_view_lines_g1 (order_id, line_no, product_id, quantity, unit_price_cents) VALUES (:order_id, 0, 's4-product-1', 2, 1250);\n\
         INSERT INTO order_view_lines_g1 (order_id, line_no, product_id, quantity, unit_price_cents) VALUES (:order_id, 1, 's4-product-2', 1, 990);\n\
         UPDATE eddy_es_projections SET position = :position, updated_at_us = 1 WHERE name = 'order_views';\n\
         END;\n"
    )
}

fn median_of(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

pub async fn run(args: &Args) -> anyhow::Result<Results> {
    let server = args.postgres_url.trim_end_matches('/').to_owned();
    let name = format!("eddy_bench_s4_{}", uuid::Uuid::now_v7().simple());
    let admin = eddy_sql::Db::connect(&eddy_sql::DbConfig::new(format!("{server}/postgres")))
        .await
        .context("cannot reach PostgreSQL")?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(admin.pool())
        .await?;
    let url = format!("{server}/{name}");
    let result = run_on(args, &url).await;
    admin.close().await;
    let admin =
        eddy_sql::Db::connect(&eddy_sql::DbConfig::new(format!("{server}/postgres"))).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(admin.pool())
        .await?;
    admin.close().await;
    result
}

async fn run_on(args: &Args, url: &str) -> anyhow::Result<Results> {
    let prefix = format!("S4{}", uuid::Uuid::now_v7().simple());
    let nats_config = eddy_nats::NatsConfig {
        url: args.nats_url.clone(),
        stream_prefix: prefix.clone(),
        subject_prefix: prefix.to_lowercase(),
        ..eddy_nats::NatsConfig::default()
    };
    let nats = eddy_nats::Nats::connect(nats_config.clone())
        .await
        .context("cannot connect to NATS")?;
    let mut rounds = Vec::new();
    let mut postgres = String::new();
    let mut durability = String::new();
    let outcome: anyhow::Result<()> = async {
        for round in 0..args.repeat {
            let eddy = eddy_round(args, url, &nats_config, &nats, round).await?;
            let db = eddy_sql::Db::connect(&eddy_sql::DbConfig::new(url)).await?;
            if postgres.is_empty() {
                use sqlx::Row;
                postgres = sqlx::query("SELECT version()")
                    .fetch_one(db.pool())
                    .await?
                    .try_get::<String, _>(0)?;
                let fsync: String = sqlx::query("SHOW fsync").fetch_one(db.pool()).await?.try_get(0)?;
                let commit: String = sqlx::query("SHOW synchronous_commit")
                    .fetch_one(db.pool())
                    .await?
                    .try_get(0)?;
                durability = format!("fsync={fsync}, synchronous_commit={commit}");
            }
            let (tps, latency) = pgbench(args, url).await?;
            sqlx::query("DELETE FROM eddy_outbox WHERE topic = 'pgbench'")
                .execute(db.pool())
                .await?;
            db.close().await;
            let round = Round {
                pgbench_tps: tps,
                pgbench_latency_ms: latency,
                ..eddy
            };
            eprintln!(
                "S4 round {}: eddy {:.0} orders/s (p99 {:.1} ms, {} errors), pgbench {:.0} tps; commit→broker p99 {:.1} ms; backlog max {} end {}",
                rounds.len() + 1,
                round.eddy_orders_per_sec,
                round.eddy_p99_ms,
                round.eddy_errors,
                round.pgbench_tps,
                round.commit_to_broker_p99_ms,
                round.backlog_max,
                round.backlog_end
            );
            rounds.push(round);
        }
        Ok(())
    }
    .await;
    for topic in [
        shop::contracts::ORDERS_TOPIC,
        shop::contracts::CATALOG_TOPIC,
    ] {
        let _ = nats.delete_topic(topic).await;
    }
    outcome?;
    let median = Round {
        eddy_orders_per_sec: median_of(rounds.iter().map(|r| r.eddy_orders_per_sec)),
        eddy_p99_ms: median_of(rounds.iter().map(|r| r.eddy_p99_ms)),
        eddy_errors: rounds.iter().map(|r| r.eddy_errors).sum(),
        pgbench_tps: median_of(rounds.iter().map(|r| r.pgbench_tps)),
        pgbench_latency_ms: median_of(rounds.iter().map(|r| r.pgbench_latency_ms)),
        commit_to_broker_p50_ms: median_of(rounds.iter().map(|r| r.commit_to_broker_p50_ms)),
        commit_to_broker_p99_ms: median_of(rounds.iter().map(|r| r.commit_to_broker_p99_ms)),
        backlog_max: rounds.iter().map(|r| r.backlog_max).max().unwrap_or(0),
        backlog_end: rounds.iter().map(|r| r.backlog_end).max().unwrap_or(0),
    };
    Ok(Results {
        machine: crate::toolkit::machine(),
        postgres,
        durability,
        connections: args.connections,
        seconds: args.seconds,
        rounds,
        median,
    })
}

/// Starts the orders service on `url` in its own process; returns it and its base url.
async fn start_orders_service(
    url: &str,
    nats: &eddy_nats::NatsConfig,
) -> anyhow::Result<(tokio::process::Child, String)> {
    let env = [
        ("EDDY_SERVICES", "[orders]"),
        ("EDDY_DATABASES__ORDERS", url),
        ("EDDY_BROKER__KIND", "nats"),
        ("EDDY_BROKER__NATS_URL", nats.url.as_str()),
        (
            "EDDY_BROKER__NATS_STREAM_PREFIX",
            nats.stream_prefix.as_str(),
        ),
        (
            "EDDY_BROKER__NATS_SUBJECT_PREFIX",
            nats.subject_prefix.as_str(),
        ),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()));
    crate::servers::spawn_shop(&env, Duration::from_secs(60)).await
}

async fn eddy_round(
    args: &Args,
    url: &str,
    nats_config: &eddy_nats::NatsConfig,
    nats: &eddy_nats::Nats,
    round: usize,
) -> anyhow::Result<Round> {
    // A fresh stream per round: the watcher then reads only this round's events.
    let _ = nats.delete_topic(shop::contracts::ORDERS_TOPIC).await;
    let (mut child, base) = start_orders_service(url, nats_config).await?;
    let db = eddy_sql::Db::connect(&eddy_sql::DbConfig::new(url)).await?;
    for (product, price) in PRODUCTS {
        sqlx::query("INSERT INTO catalog_copy (product_id, name, price_cents, currency, updated_at_us) VALUES ($1, $1, $2, 'EUR', 0) ON CONFLICT (product_id) DO NOTHING")
            .bind(product)
            .bind(price)
            .execute(db.pool())
            .await?;
    }

    // Commit → broker: every event the relay publishes during the run, as received.
    let subscription: Arc<dyn Subscription> = nats
        .subscribe(shop::contracts::ORDERS_TOPIC, &format!("s4-watch-{round}"))
        .await?
        .into();
    let histogram = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new_with_bounds(
        1,
        600_000_000,
        3,
    )?));
    let stop = tokio_util::sync::CancellationToken::new();
    let watcher = {
        let (subscription, histogram, stop) =
            (subscription.clone(), histogram.clone(), stop.clone());
        let started_us = eddy_core::envelope::to_micros(time::OffsetDateTime::now_utc());
        // (the watcher ignores events written before it started)
        tokio::spawn(async move {
            loop {
                let batch = tokio::select! {
                    _ = stop.cancelled() => return,
                    batch = subscription.fetch(256) => batch,
                };
                let Ok(batch) = batch else { continue };
                let now = eddy_core::envelope::to_micros(time::OffsetDateTime::now_utc());
                let mut last = None;
                for delivery in &batch {
                    last = Some((delivery.partition, delivery.offset + 1));
                    if let eddy_core::Message::Event(envelope) = &delivery.message {
                        let written = envelope.occurred_at_micros();
                        if written >= started_us {
                            let _ = histogram
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .record((now - written).max(1) as u64);
                        }
                    }
                }
                if let Some(position) = last {
                    let _ = subscription.commit(&[position]).await;
                }
            }
        })
    };

    // The backlog: outbox rows not yet published.
    let sampler = {
        let db = db.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut max = 0i64;
            let mut last = 0i64;
            loop {
                use sqlx::Row;
                if let Ok(row) = sqlx::query("SELECT count(*) FROM eddy_outbox WHERE published_at_us IS NULL AND topic <> 'pgbench'")
                    .fetch_one(db.pool())
                    .await
                {
                    last = row.try_get::<i64, _>(0).unwrap_or(0);
                    max = max.max(last);
                }
                tokio::select! {
                    _ = stop.cancelled() => return (max, last),
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
        })
    };

    let body = serde_json::to_vec(&serde_json::json!({
        "customer_id": "customer-42",
        "lines": [
            {"product_id": PRODUCTS[0].0, "quantity": 2},
            {"product_id": PRODUCTS[1].0, "quantity": 1}
        ]
    }))?;
    let load = closed_loop(
        Request::Post(format!("{base}/v1/orders"), Arc::new(body)),
        args.connections,
        Duration::from_secs(2),
        Duration::from_secs(args.seconds),
    )
    .await?;
    // Let the relay and the watcher catch up with the last orders.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    let _ = watcher.await;
    let (backlog_max, backlog_end) = sampler.await?;
    subscription.close().await?;
    let _ = child.kill().await;
    db.close().await;
    let histogram = histogram.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(Round {
        eddy_orders_per_sec: load.rps,
        eddy_p99_ms: load.p99_ms,
        eddy_errors: load.errors,
        pgbench_tps: 0.0,
        pgbench_latency_ms: 0.0,
        commit_to_broker_p50_ms: histogram.value_at_quantile(0.5) as f64 / 1000.0,
        commit_to_broker_p99_ms: histogram.value_at_quantile(0.99) as f64 / 1000.0,
        backlog_max,
        backlog_end,
    })
}

/// Runs the script with pgbench; returns (tps, average latency ms).
async fn pgbench(args: &Args, url: &str) -> anyhow::Result<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("orders.sql");
    std::fs::write(&script, pgbench_script())?;
    let mut command = Command::new("pgbench");
    command
        .args(["-n", "-M", "prepared", "-j", "2"])
        .args(["-c", &args.connections.to_string()])
        .args(["-T", &args.seconds.to_string()])
        .arg("-f")
        .arg(&script)
        // libpq takes a connection URI where the database name goes.
        .arg(url);
    let output = command
        .output()
        .await
        .context("cannot run pgbench (is it installed?)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "pgbench failed: {}{}",
            text,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let number_after = |prefix: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
    };
    let tps = number_after("tps = ").context("no tps in pgbench's output")?;
    let latency = number_after("latency average = ").unwrap_or(0.0);
    Ok((tps, latency))
}

pub fn markdown(results: &Results) -> String {
    let m = &results.median;
    let mut out = format!(
        "Machine: {}. {}; {}. {} concurrent clients, {} s per run, {} rounds (Eddy then pgbench, interleaved); medians.\n\n",
        results.machine,
        results.postgres.split(" on ").next().unwrap_or(&results.postgres),
        results.durability,
        results.connections,
        results.seconds,
        results.rounds.len()
    );
    out.push_str("| | orders/s | latency | vs pgbench |\n|---|---:|---:|---:|\n");
    out.push_str(&format!(
        "| Eddy `POST /v1/orders` (HTTP + JSON + tx + outbox), relay → NATS running | {:.0} | p99 {:.1} ms | {:.2}× |\n",
        m.eddy_orders_per_sec,
        m.eddy_p99_ms,
        m.eddy_orders_per_sec / m.pgbench_tps.max(1e-9)
    ));
    out.push_str(&format!(
        "| pgbench, the same statements (-M prepared) | {:.0} | avg {:.1} ms | — |\n\n",
        m.pgbench_tps, m.pgbench_latency_ms
    ));
    out.push_str(&format!(
        "Commit → broker (event written → received by a consumer on NATS): p50 {:.1} ms, p99 {:.1} ms. Relay backlog (unpublished outbox rows, sampled every 250 ms): at most {}, {} at the end of the run. Errors: {}.\n",
        m.commit_to_broker_p50_ms, m.commit_to_broker_p99_ms, m.backlog_max, m.backlog_end, m.eddy_errors
    ));
    out
}

/// Orders per second against pgbench's transactions per second (dashed).
pub fn chart(results: &Results) -> String {
    let m = &results.median;
    crate::chart::svg(
        &format!("S4: POST /v1/orders vs pgbench ({})", results.machine),
        &[crate::chart::Group {
            title: format!(
                "{} clients, {}; dashed: pgbench",
                results.connections, results.durability
            ),
            reference: m.pgbench_tps,
            bars: vec![
                crate::chart::Bar {
                    label: "pgbench".to_owned(),
                    value: m.pgbench_tps,
                    text: format!(
                        "{:.0} tps · avg {:.1} ms",
                        m.pgbench_tps, m.pgbench_latency_ms
                    ),
                },
                crate::chart::Bar {
                    label: "eddy".to_owned(),
                    value: m.eddy_orders_per_sec,
                    text: format!(
                        "{:.0}/s · p99 {:.1} ms · commit→broker p99 {:.1} ms",
                        m.eddy_orders_per_sec, m.eddy_p99_ms, m.commit_to_broker_p99_ms
                    ),
                },
            ],
        }],
    )
}
