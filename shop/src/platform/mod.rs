//! Builds the platform from a [`Config`] and runs it until told to stop.
//!
//! Start-up order: databases (one per service, plus the log's) and their migrations,
//! the broker and its topics, the payment provider (if embedded), the relays, the
//! consumers, and last the HTTP listener. Shutdown runs the other way: stop accepting
//! and drain requests, then drain consumers (commit what finished), then let relays
//! finish their batch, then close the pools.
//!
//! Layout: [`broker`] (which broker, lag), [`services`] (the loop over the services),
//! [`http`] (the request stack), [`health`] (health, metrics, OpenAPI); this module is
//! the lifecycle, and mounts the admin API ([`crate::admin`]) when it is on.

pub mod broker;
pub mod cache;
pub mod dead_letters;
pub mod health;
pub mod http;
pub mod server;
pub mod services;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::StatusCode;

use eddy_core::SystemClock;
use eddy_outbox::{Relay, RelayConfig};
use eddy_runtime::{
    supervise, supervise_until_up, Consumer, ConsumerConfig, RestartPolicy, RetryPolicy, Workers,
};
use eddy_sql::{Db, DbConfig};
use eddy_telemetry::Exporter;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;

pub use broker::Broker;
pub use http::platform_layers;

use crate::config::{Config, Database};
use crate::problem::problem;
use crate::provider;
use crate::service::{ServiceContext, ServiceDb, Subscription, Sweep};

/// How long a worker may take to stop beyond the drain timeout it was given.
const WORKER_STOP_GRACE: Duration = Duration::from_secs(5);
/// How long the embedded payment provider may take to stop.
const PROVIDER_STOP_MAX: Duration = Duration::from_secs(5);

type Worker = (String, JoinHandle<Result<(), eddy_core::Error>>);

/// A running platform.
#[derive(Debug)]
pub struct Platform {
    pub api_addr: SocketAddr,
    pub provider_addr: Option<SocketAddr>,
    /// The services this process runs, with their storage.
    pub services: Vec<ServiceDb>,
    pub broker: Broker,
    http_stop: CancellationToken,
    workers_stop: CancellationToken,
    provider_stop: CancellationToken,
    http: JoinHandle<()>,
    provider: Option<JoinHandle<()>>,
    workers: Vec<Worker>,
    shutdown_timeout: Duration,
}

pub(crate) async fn open_db(config: &Config, database: Database) -> anyhow::Result<Db> {
    let url = config.database_url(database);
    Db::connect(
        &DbConfig::new(&url)
            .max_connections(config.databases.max_connections)
            .sqlite_synchronous(config.databases.sqlite_synchronous.into()),
    )
    .await
    .with_context(|| format!("cannot open the {} database", database.name()))
}

async fn open_services(config: &Config) -> anyhow::Result<Vec<ServiceDb>> {
    let mut opened = Vec::new();
    for &name in &config.services {
        let db = open_db(config, Database::Of(name)).await?;
        db.migrate(services::migrations(name))
            .await
            .with_context(|| format!("cannot migrate the {name} database"))?;
        let service = ServiceDb::open_with(
            name,
            db,
            config
                .dead_letters
                .store(config.maintenance.log_purge_batch_len_max),
        )
        .await
        .with_context(|| format!("cannot open the {name} outbox"))?;
        opened.push(service);
    }
    Ok(opened)
}

/// The embedded payment provider, when this process runs payments and the
/// configuration wants it here: its address, its task, and the url payments calls.
async fn start_provider(
    config: &Config,
    stop: &CancellationToken,
) -> anyhow::Result<(Option<SocketAddr>, Option<JoinHandle<()>>, String)> {
    if !(config.provider.embedded && config.runs(crate::service::ServiceName::Payments)) {
        return Ok((None, None, config.payments.provider_url.clone()));
    }
    let listen = config.provider.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} for the payment provider"))?;
    let addr = listener.local_addr()?;
    let router = provider::Provider::new(config.provider.clone()).router();
    let task = server::serve(
        listener,
        router,
        config.connection_limits(),
        stop.clone(),
        "payment provider",
    );
    Ok((Some(addr), Some(task), format!("http://{addr}")))
}

fn consumer_config(config: &Config) -> ConsumerConfig {
    ConsumerConfig {
        concurrency: config.consumer.concurrency,
        in_flight_max: config.consumer.in_flight_max,
        retry: RetryPolicy {
            attempts_max: config.consumer.attempts_max,
            backoff_initial: Duration::from_millis(config.consumer.backoff_initial_ms),
            backoff_max: Duration::from_millis(config.consumer.backoff_max_ms),
        },
        drain_timeout: Duration::from_millis(config.server.shutdown_timeout_ms),
        ..ConsumerConfig::default()
    }
}

/// Everything running in the background, and the routes the services serve.
struct Running {
    workers: Vec<Worker>,
    routes: OpenApiRouter,
    /// Watches every consumer's group and topic; `GET /lag` shows its judgement.
    lag: eddy_telemetry::LagMonitor,
    /// The services' circuit breakers, for `GET /admin/breakers`.
    breakers: Vec<eddy_resilience::CircuitBreaker>,
}

/// Starts a relay per service and a consumer per subscription, and the exporter of
/// their statistics.
async fn start_workers(
    config: &Config,
    services: &[ServiceDb],
    broker: &Broker,
    provider_url: &str,
    health: &Workers,
    stop: &CancellationToken,
) -> anyhow::Result<Running> {
    let mut workers: Vec<Worker> = Vec::new();
    let mut exporter = Exporter::new();
    let lag = eddy_telemetry::LagMonitor::new(config.lag.monitor())?;
    exporter.workers(health.clone());
    let mut routes = OpenApiRouter::new();
    let mut breakers = Vec::new();
    let relay_config = RelayConfig {
        batch_len_max: config.relay.batch_len_max,
        retention: Duration::from_secs(config.relay.retention_secs),
        ..RelayConfig::default()
    };
    let consumer_config = consumer_config(config);
    for service in services {
        let name = service.name.as_str();
        let relay = Relay::new(
            service.outbox.clone(),
            broker.publisher(),
            relay_config.clone(),
        );
        exporter.relay(name, relay.stats(), service.outbox.clone());
        let stopping = stop.clone();
        workers.push(supervised(
            format!("{name} relay"),
            health,
            stop,
            move || relay.clone().run(stopping.clone()),
        ));

        let ctx = ServiceContext {
            service: service.clone(),
            config,
            provider_url,
        };
        let contribution = services::contribute(&ctx).await?;
        if let Some(service_routes) = contribution.routes {
            routes = routes.merge(service_routes);
        }
        breakers.extend(contribution.breakers);
        for sweep in contribution.sweeps {
            let stopping = stop.clone();
            let sweep = Arc::new(sweep);
            workers.push(supervised(
                format!("{name} {}", sweep.name),
                health,
                stop,
                move || run_sweep(sweep.clone(), stopping.clone()),
            ));
        }
        for subscription in contribution.subscriptions {
            lag.watch(name, subscription.topic);
            workers.push(dead_letters::start_store(
                service,
                subscription.topic,
                broker,
                &consumer_config,
                health,
                stop,
            ));
            workers.push(start_consumer(
                name,
                subscription,
                broker,
                &consumer_config,
                &mut exporter,
                health,
                stop,
            ));
        }
    }
    workers.extend(start_upkeep(config, exporter, broker, services, stop));
    let (probe, sampling) = (broker.clone(), stop.clone());
    let (monitor, interval) = (lag.clone(), Duration::from_secs(config.lag.interval_secs));
    workers.push((
        "lag monitor".to_owned(),
        tokio::spawn(async move {
            monitor
                .run(Arc::new(probe), Arc::new(SystemClock), interval, sampling)
                .await;
            Ok(())
        }),
    ));
    Ok(Running {
        workers,
        routes,
        lag,
        breakers,
    })
}

/// The metrics exporter and retention.
fn start_upkeep(
    config: &Config,
    exporter: Exporter,
    broker: &Broker,
    services: &[ServiceDb],
    stop: &CancellationToken,
) -> [Worker; 2] {
    let interval = Duration::from_millis(config.maintenance.metrics_interval_ms);
    let lag: Arc<dyn eddy_telemetry::LagProbe> = Arc::new(broker.clone());
    let exporting = stop.clone();
    [
        (
            "metrics exporter".to_owned(),
            tokio::spawn(async move {
                exporter.run(lag, interval, exporting).await;
                Ok(())
            }),
        ),
        (
            "retention".to_owned(),
            tokio::spawn(purge_expired(
                config,
                broker.clone(),
                services.to_vec(),
                stop.clone(),
            )),
        ),
    ]
}

/// A consumer for `subscription` in group `group`, its statistics registered.
fn start_consumer(
    group: &'static str,
    Subscription { topic, router }: Subscription,
    broker: &Broker,
    config: &ConsumerConfig,
    exporter: &mut Exporter,
    health: &Workers,
    stop: &CancellationToken,
) -> Worker {
    let consumer = Consumer::new(
        topic,
        group,
        broker.subscriber(),
        broker.publisher(),
        router,
    )
    .with_config(config.clone());
    exporter.consumer(group, topic, consumer.stats());
    supervised_consumer(
        format!("{group} consumer of {topic}"),
        consumer,
        health,
        stop,
    )
}

/// `consumer` run under [`supervise_until_up`]: started again whenever it ends before
/// `stop`, and down in `health` (readiness, metrics) until it has subscribed — a
/// consumer whose subscribe keeps failing or timing out never reads as up.
pub(super) fn supervised_consumer(
    name: String,
    consumer: Consumer,
    health: &Workers,
    stop: &CancellationToken,
) -> Worker {
    let stopping = stop.clone();
    let task = tokio::spawn(supervise_until_up(
        name.clone(),
        health.clone(),
        RestartPolicy::default(),
        stop.clone(),
        move |up| {
            consumer
                .clone()
                .run_subscribed(stopping.clone(), move || up.up())
        },
    ));
    (name, task)
}

/// Runs `sweep` every `sweep.interval` until `stop`; a failed round is logged and the
/// next one tries again.
async fn run_sweep(sweep: Arc<Sweep>, stop: CancellationToken) -> Result<(), eddy_core::Error> {
    let mut tick = tokio::time::interval(sweep.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        match (sweep.run)().await {
            Ok(0) => {}
            Ok(done) => tracing::info!(sweep = sweep.name, done, "sweep finished work"),
            Err(error) => {
                tracing::warn!(sweep = sweep.name, %error, "sweep failed; trying again next round")
            }
        }
    }
}

/// `start` run under [`supervise`]: started again after a backoff whenever it ends
/// before `stop`, and shown in `health` (readiness, metrics) while it is down.
fn supervised<F, Fut>(name: String, health: &Workers, stop: &CancellationToken, start: F) -> Worker
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), eddy_core::Error>> + Send + 'static,
{
    let task = tokio::spawn(supervise(
        name.clone(),
        health.clone(),
        RestartPolicy::default(),
        stop.clone(),
        start,
    ));
    (name, task)
}

/// Every `maintenance.log_purge_interval_secs`, deletes what is past its retention:
/// the embedded log's records, and each service's processed-event records (and
/// orders' idempotency keys).
fn purge_expired(
    config: &Config,
    broker: Broker,
    services: Vec<ServiceDb>,
    stop: CancellationToken,
) -> impl std::future::Future<Output = Result<(), eddy_core::Error>> {
    let interval = Duration::from_secs(config.maintenance.log_purge_interval_secs);
    let batch_len_max = config.maintenance.log_purge_batch_len_max;
    let config = config.clone();
    async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        let batch = i64::try_from(batch_len_max).unwrap_or(i64::MAX);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            broker.purge_expired(batch_len_max).await;
            for service in &services {
                if let Err(error) = services::purge(service, &config, batch).await {
                    tracing::warn!(service = %service.name, %error, "retention purge failed");
                }
            }
        }
    }
}

/// Starts the platform: returns once it listens.
pub async fn start(config: Config) -> anyhow::Result<Platform> {
    config.validate()?;
    let uses_sqlite = config
        .databases_used()
        .into_iter()
        .any(|d| config.database_url(d).starts_with("sqlite:"));
    if uses_sqlite {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!(
                "cannot create the data directory {}",
                config.data_dir.display()
            )
        })?;
    }
    eddy_telemetry::prometheus();
    let http_stop = CancellationToken::new();
    let workers_stop = CancellationToken::new();
    let provider_stop = CancellationToken::new();

    let services = open_services(&config).await?;
    let broker = Broker::open(&config).await?;
    let (provider_addr, provider, provider_url) = start_provider(&config, &provider_stop).await?;
    let health = Workers::new();
    let running = start_workers(
        &config,
        &services,
        &broker,
        &provider_url,
        &health,
        &workers_stop,
    )
    .await?;

    // The admin API (`None` when `admin.token` is empty: then it is not mounted at all).
    let admin = crate::admin::router(crate::admin::Sources {
        config: &config,
        services: &services,
        broker: &broker,
        lag: &running.lag,
        breakers: &running.breakers,
    })
    .await?;

    // HTTP last: only once everything behind it runs.
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let api_addr = listener.local_addr()?;
    let readiness = health::Readiness {
        services: services.clone(),
        broker: broker.clone(),
        workers: health,
        timeout: Duration::from_millis(config.server.ready_check_timeout_ms),
        lag: running.lag.clone(),
    };
    let (routes, _) = running
        .routes
        .merge(health::router().with_state(readiness))
        .split_for_parts();
    let routes = routes.merge(crate::status::page(!config.admin.token.is_empty()));
    let public = platform_layers(
        routes
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed),
        &config,
    )?;
    // The admin routes beside the public ones, in a stack of their own: the public API
    // is exactly what it is without them.
    let router = match admin {
        Some(admin) => public.merge(http::admin_layers(admin, &config)),
        None => public,
    };
    let http = server::serve(
        listener,
        router,
        config.connection_limits(),
        http_stop.clone(),
        "HTTP server",
    );

    Ok(Platform {
        api_addr,
        provider_addr,
        services,
        broker,
        http_stop,
        workers_stop,
        provider_stop,
        http,
        provider,
        workers: running.workers,
        shutdown_timeout: Duration::from_millis(config.server.shutdown_timeout_ms),
    })
}

pub(crate) async fn method_not_allowed(method: axum::http::Method) -> axum::response::Response {
    problem(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        Some(format!(
            "this path does not take {}; the Allow header lists the methods it takes",
            eddy_telemetry::known_method(&method)
        )),
    )
}

async fn not_found() -> axum::response::Response {
    problem(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not found",
        Some("no such route".to_owned()),
    )
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
            match tokio::time::timeout(self.shutdown_timeout + WORKER_STOP_GRACE, worker).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => failed.push(format!("{name}: {error}")),
                Ok(Err(join)) => failed.push(format!("{name}: {join}")),
                Err(_) => failed.push(format!("{name}: did not stop in time")),
            }
        }
        self.provider_stop.cancel();
        if let Some(provider) = self.provider {
            if tokio::time::timeout(PROVIDER_STOP_MAX, provider)
                .await
                .is_err()
            {
                failed.push("payment provider: did not stop in time".to_owned());
            }
        }
        for service in &self.services {
            service.db.close().await;
        }
        self.broker.close().await;
        if failed.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("shutdown problems: {}", failed.join("; "))
        }
    }
}
