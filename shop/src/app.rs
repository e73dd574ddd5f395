//! Builds the platform from a [`Config`] and runs it until told to stop.
//!
//! Start-up order: databases (one per service, plus the log's) and their migrations,
//! the embedded log and its topics, the payment provider (if embedded), the relays, the
//! consumers, and last the HTTP listener. Shutdown runs the other way: stop accepting
//! and drain requests, then drain consumers (commit what finished), then let relays
//! finish their batch, then close the pools.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use eddy_core::{Event, Publisher, Subscriber};
use eddy_log::{Log, LogConfig};
use eddy_outbox::{Relay, RelayConfig, RelayStats};
use eddy_resilience::{BulkheadLayer, Deadline, Overloaded};
use eddy_runtime::{Consumer, ConsumerConfig, ConsumerStats, RetryPolicy};
use eddy_sql::{BatchConfig, Batched, Db, DbConfig, EachInTx, SqliteSynchronous};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;

use crate::config::{BrokerConfig, Config};
use crate::contracts::*;
use crate::problem::problem;
use crate::service::ServiceDb;
use crate::telemetry::{prometheus, Timed};
use crate::{catalog, inventory, notifications, orders, payments, provider};

/// Every service of the platform and its storage.
#[derive(Debug, Clone)]
pub struct Services {
    pub catalog: Option<ServiceDb>,
    pub orders: Option<ServiceDb>,
    pub inventory: Option<ServiceDb>,
    pub payments: Option<ServiceDb>,
    pub notifications: Option<ServiceDb>,
    pub broker: Broker,
}

/// Where events travel: the embedded log (default) or NATS JetStream.
#[derive(Debug, Clone)]
pub enum Broker {
    Embedded(Log),
    Nats(Box<eddy_nats::Nats>),
    Kafka(Box<eddy_kafka::Kafka>),
}

impl Broker {
    async fn open(config: &Config) -> anyhow::Result<Self> {
        match config.broker.kind.as_str() {
            "nats" => {
                let nats = eddy_nats::Nats::connect(eddy_nats::NatsConfig {
                    url: config.broker.nats_url.clone(),
                    stream_prefix: config.broker.nats_stream_prefix.clone(),
                    subject_prefix: config.broker.nats_subject_prefix.clone(),
                    ack_wait: Duration::from_millis(config.broker.nats_ack_wait_ms),
                    ..eddy_nats::NatsConfig::default()
                })
                .await
                .context("cannot connect to NATS")?;
                for topic in [CATALOG_TOPIC, ORDERS_TOPIC, INVENTORY_TOPIC, PAYMENTS_TOPIC] {
                    nats.ensure_topic(topic).await?;
                }
                Ok(Broker::Nats(Box::new(nats)))
            }
            "kafka" => {
                let kafka = eddy_kafka::Kafka::connect(eddy_kafka::KafkaConfig {
                    bootstrap_servers: config.broker.kafka_bootstrap_servers.clone(),
                    partitions: config.broker.kafka_partitions,
                    producer: BrokerConfig::librdkafka(&config.broker.kafka_producer),
                    consumer: BrokerConfig::librdkafka(&config.broker.kafka_consumer),
                    ..eddy_kafka::KafkaConfig::default()
                })?;
                for topic in [CATALOG_TOPIC, ORDERS_TOPIC, INVENTORY_TOPIC, PAYMENTS_TOPIC] {
                    kafka.ensure_topic(topic).await?;
                }
                Ok(Broker::Kafka(Box::new(kafka)))
            }
            _ => {
                let log = Log::open(
                    open_db(config, "log").await?,
                    LogConfig {
                        instance_id: Some(config.instance_id.clone()),
                        ..LogConfig::default()
                    },
                )
                .await
                .context("cannot open the embedded log")?;
                for topic in [CATALOG_TOPIC, ORDERS_TOPIC, INVENTORY_TOPIC, PAYMENTS_TOPIC] {
                    log.create_topic(topic, log.config().default_partitions)
                        .await?;
                }
                Ok(Broker::Embedded(log))
            }
        }
    }

    pub fn publisher(&self) -> Arc<dyn Publisher> {
        match self {
            Broker::Embedded(log) => Arc::new(log.clone()),
            Broker::Nats(nats) => Arc::new(nats.as_ref().clone()),
            Broker::Kafka(kafka) => Arc::new(kafka.as_ref().clone()),
        }
    }

    pub fn subscriber(&self) -> Arc<dyn Subscriber> {
        match self {
            Broker::Embedded(log) => Arc::new(log.clone()),
            Broker::Nats(nats) => Arc::new(nats.as_ref().clone()),
            Broker::Kafka(kafka) => Arc::new(kafka.as_ref().clone()),
        }
    }

    async fn reachable(&self) -> bool {
        match self {
            Broker::Embedded(log) => matches!(
                tokio::time::timeout(
                    Duration::from_secs(1),
                    sqlx::query("SELECT 1").execute(log.db().pool())
                )
                .await,
                Ok(Ok(_))
            ),
            Broker::Nats(nats) => nats.is_connected(),
            Broker::Kafka(kafka) => kafka.is_reachable().await,
        }
    }

    /// Messages of `topic` not yet committed by `group`, where the broker can tell.
    async fn lag(&self, group: &str, topic: &str) -> Option<u64> {
        match self {
            Broker::Embedded(log) => {
                let ends = log.end_offsets(topic).await.ok()?;
                let committed = log.committed_offsets(group, topic).await.ok()?;
                Some(
                    ends.iter()
                        .map(|(p, end)| end.saturating_sub(committed.get(p).copied().unwrap_or(0)))
                        .sum(),
                )
            }
            Broker::Kafka(kafka) => kafka.lag(group, topic).await.ok(),
            Broker::Nats(nats) => nats.lag(group, topic).await.ok(),
        }
    }

    async fn maintain(&self) {
        if let Broker::Embedded(log) = self {
            if let Err(error) = log.purge_expired(10_000).await {
                tracing::warn!(%error, "log retention purge failed");
            }
        }
    }

    async fn close(&self) {
        if let Broker::Embedded(log) = self {
            log.db().close().await;
        }
    }
}

impl Services {
    /// The services this process runs.
    fn all(&self) -> Vec<&ServiceDb> {
        [
            &self.catalog,
            &self.orders,
            &self.inventory,
            &self.payments,
            &self.notifications,
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// A running platform.
#[derive(Debug)]
pub struct Platform {
    pub api_addr: SocketAddr,
    pub provider_addr: Option<SocketAddr>,
    pub services: Services,
    http_stop: CancellationToken,
    workers_stop: CancellationToken,
    provider_stop: CancellationToken,
    http: JoinHandle<()>,
    provider: Option<JoinHandle<()>>,
    workers: Vec<(String, JoinHandle<Result<(), eddy_core::Error>>)>,
    shutdown_timeout: Duration,
}

async fn open_db(config: &Config, service: &str) -> anyhow::Result<Db> {
    let synchronous = if config.databases.sqlite_synchronous == "normal" {
        SqliteSynchronous::Normal
    } else {
        SqliteSynchronous::Full
    };
    let url = config.database_url(service);
    Db::connect(
        &DbConfig::new(&url)
            .max_connections(config.databases.max_connections)
            .sqlite_synchronous(synchronous),
    )
    .await
    .with_context(|| format!("cannot open the {service} database"))
}

async fn open_service(
    config: &Config,
    name: &'static str,
    migrations: &[eddy_sql::Migration],
) -> anyhow::Result<ServiceDb> {
    let db = open_db(config, name).await?;
    db.migrate(migrations)
        .await
        .with_context(|| format!("cannot migrate the {name} database"))?;
    ServiceDb::open(name, db)
        .await
        .with_context(|| format!("cannot open the {name} outbox"))
}

/// Starts the platform: returns once it listens.
pub async fn start(config: Config) -> anyhow::Result<Platform> {
    config.validate()?;
    if [
        "catalog",
        "orders",
        "inventory",
        "payments",
        "notifications",
        "log",
    ]
    .iter()
    .any(|s| config.database_url(s).starts_with("sqlite:"))
    {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!(
                "cannot create the data directory {}",
                config.data_dir.display()
            )
        })?;
    }
    prometheus();
    let http_stop = CancellationToken::new();
    let workers_stop = CancellationToken::new();
    let provider_stop = CancellationToken::new();

    // The payment provider, on its own listener.
    let runs = |service: &str| config.services.iter().any(|s| s == service);
    let (provider_addr, provider_task, provider_url) =
        if config.provider.embedded && runs("payments") {
            let listener = tokio::net::TcpListener::bind(config.provider.listen)
                .await
                .with_context(|| {
                    format!(
                        "cannot listen on {} for the payment provider",
                        config.provider.listen
                    )
                })?;
            let addr = listener.local_addr()?;
            let router = provider::Provider::new(config.provider.clone()).router();
            let stop = provider_stop.clone();
            let task = tokio::spawn(async move {
                let served = axum::serve(listener, router)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
                if let Err(error) = served {
                    tracing::error!(%error, "payment provider stopped");
                }
            });
            (Some(addr), Some(task), format!("http://{addr}"))
        } else {
            (None, None, config.payments.provider_url.clone())
        };

    async fn maybe(
        config: &Config,
        runs: bool,
        name: &'static str,
        migrations: &[eddy_sql::Migration],
    ) -> anyhow::Result<Option<ServiceDb>> {
        Ok(if runs {
            Some(open_service(config, name, migrations).await?)
        } else {
            None
        })
    }
    let services = Services {
        catalog: maybe(&config, runs("catalog"), "catalog", catalog::MIGRATIONS).await?,
        orders: maybe(&config, runs("orders"), "orders", orders::MIGRATIONS).await?,
        inventory: maybe(
            &config,
            runs("inventory"),
            "inventory",
            inventory::MIGRATIONS,
        )
        .await?,
        payments: maybe(&config, runs("payments"), "payments", payments::MIGRATIONS).await?,
        notifications: maybe(
            &config,
            runs("notifications"),
            "notifications",
            notifications::MIGRATIONS,
        )
        .await?,
        broker: Broker::open(&config).await?,
    };

    let mut workers = Vec::new();
    let mut relay_stats = Vec::new();
    let relay_config = RelayConfig {
        batch_len_max: config.relay.batch_len_max,
        retention: Duration::from_secs(config.relay.retention_secs),
        ..RelayConfig::default()
    };
    for service in services.all() {
        let relay = Relay::new(
            service.outbox.clone(),
            services.broker.publisher(),
            relay_config.clone(),
        );
        relay_stats.push((service.name, relay.stats()));
        workers.push((
            format!("{} relay", service.name),
            tokio::spawn(relay.run(workers_stop.clone())),
        ));
    }

    let consumer_config = ConsumerConfig {
        concurrency: config.consumer.concurrency,
        in_flight_max: config.consumer.in_flight_max,
        retry: RetryPolicy {
            attempts_max: config.consumer.attempts_max,
            backoff_initial: Duration::from_millis(config.consumer.backoff_initial_ms),
            backoff_max: Duration::from_millis(config.consumer.backoff_max_ms),
        },
        drain_timeout: Duration::from_millis(config.server.shutdown_timeout_ms),
        ..ConsumerConfig::default()
    };
    let mut consumer_stats: Vec<(&'static str, &'static str, Arc<ConsumerStats>)> = Vec::new();
    let log: Arc<dyn Subscriber> = services.broker.subscriber();
    let dead_letters: Arc<dyn Publisher> = services.broker.publisher();
    let mut add = |group: &'static str, topic: &'static str, router: eddy_runtime::Router| {
        let consumer = Consumer::new(topic, group, log.clone(), dead_letters.clone(), router)
            .with_config(consumer_config.clone());
        consumer_stats.push((group, topic, consumer.stats()));
        workers.push((
            format!("{group} consumer of {topic}"),
            tokio::spawn(consumer.run(workers_stop.clone())),
        ));
    };
    // Every idempotent handler runs under group commit (one transaction per event when
    // consumer.batch_len_max is 1).
    let batch = BatchConfig {
        batch_len_max: config.consumer.batch_len_max,
        ..BatchConfig::default()
    };
    fn tx<E: Event + Clone, H: eddy_sql::TxHandler<E>>(
        service: &ServiceDb,
        name: &'static str,
        handler: H,
        batch: &BatchConfig,
    ) -> anyhow::Result<Timed<Batched<E, EachInTx<H>>>> {
        Ok(Timed {
            consumer: name,
            inner: Batched::new(service.db.clone(), name, EachInTx(handler))
                .with_config(batch.clone())?,
        })
    }
    let s = &services;
    if let Some(catalog) = &s.catalog {
        add(
            "catalog",
            INVENTORY_TOPIC,
            eddy_runtime::Router::new().route::<StockChanged, _>(tx(
                catalog,
                "catalog",
                catalog::OnStockChanged,
                &batch,
            )?),
        );
    }
    if let Some(orders) = &s.orders {
        let settle = || orders::Settle {
            service: orders.clone(),
        };
        add(
            "orders",
            CATALOG_TOPIC,
            eddy_runtime::Router::new().route::<ProductUpserted, _>(tx(
                orders,
                "orders",
                orders::OnProductUpserted,
                &batch,
            )?),
        );
        add(
            "orders",
            INVENTORY_TOPIC,
            eddy_runtime::Router::new().route::<StockRejected, _>(tx(
                orders,
                "orders",
                settle(),
                &batch,
            )?),
        );
        add(
            "orders",
            PAYMENTS_TOPIC,
            eddy_runtime::Router::new()
                .route::<PaymentCaptured, _>(tx(orders, "orders", settle(), &batch)?)
                .route::<PaymentDeclined, _>(tx(orders, "orders", settle(), &batch)?),
        );
    }
    if let Some(inventory) = &s.inventory {
        let inv = inventory::Inventory {
            service: inventory.clone(),
            unknown: inventory::UnknownProducts::new(Duration::from_millis(
                config.inventory.unknown_product_wait_ms,
            )),
        };
        add(
            "inventory",
            CATALOG_TOPIC,
            eddy_runtime::Router::new().route::<ProductUpserted, _>(tx(
                inventory,
                "inventory",
                inv.clone(),
                &batch,
            )?),
        );
        add(
            "inventory",
            ORDERS_TOPIC,
            eddy_runtime::Router::new()
                .route::<OrderPlaced, _>(tx(inventory, "inventory", inv.clone(), &batch)?)
                .route::<OrderCancelled, _>(tx(inventory, "inventory", inv.clone(), &batch)?)
                .route::<OrderConfirmed, _>(tx(inventory, "inventory", inv, &batch)?),
        );
    }
    if let Some(payments) = &s.payments {
        let provider_client = payments::ProviderClient::new(
            provider_url,
            Duration::from_millis(config.payments.provider_timeout_ms),
        )?;
        add(
            "payments",
            INVENTORY_TOPIC,
            eddy_runtime::Router::new().route::<StockReserved, _>(Timed {
                consumer: "payments",
                inner: payments::Charge {
                    service: payments.clone(),
                    provider: provider_client,
                },
            }),
        );
    }
    if let Some(notifications) = &s.notifications {
        let notify = notifications::Notify {
            service: notifications.clone(),
            failure_rate: config.notifications.failure_rate,
        };
        add(
            "notifications",
            ORDERS_TOPIC,
            eddy_runtime::Router::new()
                .route::<OrderConfirmed, _>(tx(
                    notifications,
                    "notifications",
                    notify.clone(),
                    &batch,
                )?)
                .route::<OrderCancelled, _>(tx(notifications, "notifications", notify, &batch)?),
        );
    }

    workers.push((
        "maintenance".to_owned(),
        tokio::spawn(maintenance(
            services.clone(),
            consumer_stats,
            relay_stats,
            workers_stop.clone(),
        )),
    ));

    // HTTP last: only once everything behind it runs.
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let api_addr = listener.local_addr()?;
    let router = router(&config, services.clone());
    let stop = http_stop.clone();
    let http = tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "HTTP server stopped");
        }
    });

    Ok(Platform {
        api_addr,
        provider_addr,
        services,
        http_stop,
        workers_stop,
        provider_stop,
        http,
        provider: provider_task,
        workers,
        shutdown_timeout: Duration::from_millis(config.server.shutdown_timeout_ms),
    })
}

impl Platform {
    /// Graceful shutdown: requests drain, consumers drain and commit, relays finish.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.http_stop.cancel();
        if tokio::time::timeout(self.shutdown_timeout, self.http)
            .await
            .is_err()
        {
            tracing::warn!("HTTP requests did not drain in time");
        }
        self.workers_stop.cancel();
        let mut failed = Vec::new();
        for (name, worker) in self.workers {
            match tokio::time::timeout(self.shutdown_timeout + Duration::from_secs(5), worker).await
            {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => failed.push(format!("{name}: {error}")),
                Ok(Err(join)) => failed.push(format!("{name}: {join}")),
                Err(_) => failed.push(format!("{name}: did not stop in time")),
            }
        }
        self.provider_stop.cancel();
        if let Some(provider) = self.provider {
            let _ = tokio::time::timeout(Duration::from_secs(5), provider).await;
        }
        for service in self.services.all() {
            service.db.close().await;
        }
        self.services.broker.close().await;
        if failed.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("shutdown problems: {}", failed.join("; "))
        }
    }
}

async fn maintenance(
    services: Services,
    consumers: Vec<(&'static str, &'static str, Arc<ConsumerStats>)>,
    relays: Vec<(&'static str, Arc<RelayStats>)>,
    stop: CancellationToken,
) -> Result<(), eddy_core::Error> {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut since_purge = 0u32;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        for (group, topic, stats) in &consumers {
            metrics::counter!("events_dead_lettered_total", "consumer" => *group, "topic" => *topic).absolute(stats.dead_lettered());
            metrics::counter!("events_processed_total", "consumer" => *group, "topic" => *topic)
                .absolute(stats.handled());
            if let Some(lag) = services.broker.lag(group, topic).await {
                metrics::gauge!("consumer_lag_messages", "group" => *group, "topic" => *topic)
                    .set(lag as f64);
            }
        }
        for (service, stats) in &relays {
            metrics::counter!("events_published_total", "service" => *service)
                .absolute(stats.published());
        }
        for service in services.all() {
            if let Ok(state) = service.outbox.state().await {
                metrics::gauge!("outbox_pending_messages", "service" => service.name)
                    .set(state.pending_len as f64);
            }
        }
        since_purge += 1;
        if since_purge >= 30 {
            since_purge = 0;
            services.broker.maintain().await;
        }
    }
}

fn router(config: &Config, services: Services) -> Router {
    let mut api = Router::new();
    if let Some(catalog) = &services.catalog {
        api = api.merge(catalog::routes(catalog.clone()));
    }
    if let Some(orders) = &services.orders {
        api = api.merge(orders::routes(orders.clone()));
    }
    if let Some(payments) = &services.payments {
        api = api.merge(payments::routes(payments.clone()));
    }
    let api = api
        .route(
            "/health/live",
            get(|| async { Json(serde_json::json!({"status": "live"})) }),
        )
        .route("/health/ready", get(ready).with_state(services))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi))
        .fallback(|| async {
            problem(
                StatusCode::NOT_FOUND,
                "not-found",
                "Not found",
                Some("no such route".to_owned()),
            )
        });
    platform_layers(api, config)
}

/// The layers every platform request passes: metrics, deadline propagation, load
/// shedding (bulkhead), a timeout backstop and the body limit, with their errors as
/// problem responses. Public so the benchmark measures exactly this stack.
pub fn platform_layers(api: Router, config: &Config) -> Router {
    // The metrics are part of the stack (and of what S1 measures): make sure they record.
    prometheus();
    let body_limit = config.server.body_limit_bytes;
    let api = api
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            refuse_oversized(body_limit, request, next)
        }))
        .layer(middleware::from_fn(record_http));
    let budget = config.request_timeout();
    api.layer(middleware::from_fn(move |request: Request, next: Next| {
        propagate_deadline(budget, request, next)
    }))
    .layer(
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(|error: tower::BoxError| async move {
                if error.is::<Overloaded>() {
                    let mut response = problem(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "overloaded",
                        "Too many requests in progress; try again shortly",
                        None,
                    );
                    response.headers_mut().insert(
                        axum::http::header::RETRY_AFTER,
                        axum::http::HeaderValue::from_static("1"),
                    );
                    response
                } else if error.is::<tower::timeout::error::Elapsed>() {
                    problem(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "timeout",
                        "The request ran out of time",
                        None,
                    )
                } else {
                    problem(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "Temporarily unavailable",
                        None,
                    )
                }
            }))
            // Load shedding: beyond the limit and an equal queue, answer 503 at once.
            .layer(BulkheadLayer::new(
                "http",
                config.server.concurrency_limit,
                config.server.concurrency_limit,
            ))
            .timeout(config.request_timeout())
            .layer(axum::extract::DefaultBodyLimit::max(
                config.server.body_limit_bytes,
            )),
    )
}

/// Most of an oversized body read (and thrown away) before it is refused.
const OVERSIZED_DRAIN_MAX: u64 = 1 << 20;

/// Refuses a body whose declared length exceeds `limit` with 413 before any handler runs,
/// and reads the rest of it first (up to [`OVERSIZED_DRAIN_MAX`]): a server that answers
/// and closes while the client is still sending resets the connection, and the client
/// sees a transport error instead of the problem response. Beyond that bound it answers
/// at once and closes the connection. Bodies without a length are still limited by the
/// extractors (`DefaultBodyLimit`).
async fn refuse_oversized(limit: usize, request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let Some(declared) = declared.filter(|&d| d > limit as u64) else {
        return next.run(request).await;
    };
    let mut response = problem(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body-too-large",
        "The request body was rejected",
        Some(format!(
            "the body is {declared} bytes; at most {limit} are accepted"
        )),
    );
    if declared <= OVERSIZED_DRAIN_MAX {
        use futures::StreamExt;
        let mut body = request.into_body().into_data_stream();
        while let Some(Ok(_)) = body.next().await {}
    } else {
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}

/// Runs the request under its deadline: the caller's `eddy-deadline` header or our own
/// request budget, whichever is sooner. Work whose deadline already passed is refused.
async fn propagate_deadline(budget: Duration, request: Request, next: Next) -> Response {
    let own = Deadline::after(budget);
    let deadline = request
        .headers()
        .get(eddy_resilience::deadline::HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(Deadline::from_header)
        .map_or(own, |theirs| theirs.min(own));
    if deadline.is_expired() {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "deadline-exceeded",
            "The request's deadline has passed",
            None,
        );
    }
    deadline.scope(next.run(request)).await
}

async fn record_http(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    crate::telemetry::record_http(
        route.as_ref().map_or("unmatched", MatchedPath::as_str),
        &method,
        response.status(),
        started.elapsed(),
    );
    response
}

async fn ready(State(services): State<Services>) -> Response {
    let mut failing = Vec::new();
    let dbs: Vec<(&str, &Db)> = services.all().iter().map(|s| (s.name, &s.db)).collect();
    if !services.broker.reachable().await {
        failing.push("broker");
    }
    for (name, db) in dbs {
        let ping = tokio::time::timeout(
            Duration::from_secs(1),
            sqlx::query("SELECT 1").execute(db.pool()),
        )
        .await;
        if !matches!(ping, Ok(Ok(_))) {
            failing.push(name);
        }
    }
    if failing.is_empty() {
        Json(serde_json::json!({"status": "ready"})).into_response()
    } else {
        problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "not-ready",
            "Not ready",
            Some(format!("unreachable: {}", failing.join(", "))),
        )
    }
}

async fn metrics_text() -> Response {
    match prometheus() {
        Some(handle) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4",
            )],
            handle.render(),
        )
            .into_response(),
        None => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "no-metrics",
            "Metrics are not available",
            None,
        ),
    }
}

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        include_str!("../api/openapi.json"),
    )
        .into_response()
}
