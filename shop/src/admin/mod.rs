//! The admin API: what an operator needs to see of a running platform, under `/admin/…`.
//!
//! **Off unless `admin.token` is set.** With no token the routes are not mounted at all:
//! `/admin/outbox` is a 404 like any unknown path, so a forgotten setting can never leave
//! the API open. With a token, every request under `/admin/` — known route or not — goes
//! through the [`guard`]:
//!
//! 1. the rate limit (`admin.requests_per_minute_max` for the process, a token bucket):
//!    beyond it, 429 with `Retry-After`, before the token is even looked at;
//! 2. the token: `Authorization: Bearer <admin.token>`, compared in constant time;
//!    missing → 401 with `WWW-Authenticate: Bearer`, wrong → 401;
//! 3. the audit ([`audit`]): who (the token's fingerprint, or `anonymous`), the client
//!    address, when, method, path and the answer's status, as an INFO line with target
//!    `eddy_audit` and as a row of the `admin_audit` table (at most
//!    `admin.audit_len_max` rows, the oldest deleted first).
//!
//! **Where the audit lives:** the `admin_audit` table is in the database of the first
//! service this process runs — the first of [`crate::config::Config::databases_used`],
//! `catalog`'s on the default modular monolith, the one service's in scale-out mode.
//! Each process audits its own admin API (`shop gateway` does not proxy `/admin/…`).
//!
//! The admin token is not an `[auth]` JWT: the admin routes sit outside the JWT layer
//! (in `platform::http::admin_layers`, the public stack but for it) and JWTs do not open
//! them. They are not in
//! the public OpenAPI document either: they do not exist when the API is off.
//!
//! Layout: [`guard`] (rate limit, token, audit around every request), [`audit`] (the
//! table and the log line), [`views`] (the read-only routes and their JSON). Routes of
//! later features (dead letters) are added in [`extend`].

pub mod audit;
pub mod guard;
pub mod views;

use std::sync::Arc;

use anyhow::Context as _;
use axum::routing::{any, get};
use axum::Router;
use eddy_eventstore::{EventStore, Projector};
use eddy_resilience::CircuitBreaker;
use eddy_telemetry::LagMonitor;

use crate::config::Config;
use crate::platform::Broker;
use crate::problem::ApiError;
use crate::service::ServiceDb;

pub use audit::AuditLog;
pub use guard::Guard;

/// What the admin routes read: the state of this process. Cheap to clone.
#[derive(Clone)]
pub struct Admin {
    /// The configuration the platform started with.
    pub config: Arc<Config>,
    /// The services this process runs, with their databases and outboxes.
    pub services: Vec<ServiceDb>,
    /// The broker events travel on (dead letters live there).
    pub broker: Broker,
    /// The consumer lag monitor `GET /lag` reads.
    pub lag: LagMonitor,
    /// Every circuit breaker the services declared ([`crate::service::Contribution`]).
    pub breakers: Vec<CircuitBreaker>,
    /// The projections of the services this process runs.
    pub projectors: Vec<Projector>,
    /// The audit trail.
    pub audit: AuditLog,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("services", &self.services.len())
            .field("breakers", &self.breakers.len())
            .field("projectors", &self.projectors.len())
            .finish_non_exhaustive()
    }
}

/// What the platform hands the admin API when it builds it.
#[derive(Debug)]
pub struct Sources<'a> {
    pub config: &'a Config,
    pub services: &'a [ServiceDb],
    pub broker: &'a Broker,
    pub lag: &'a LagMonitor,
    pub breakers: &'a [CircuitBreaker],
}

/// The admin API's routes behind their guard, or `None` when `admin.token` is empty
/// (the API is off and nothing is mounted). Opens the audit table (a migration) and the
/// projections of the services this process runs. The platform puts the result inside
/// its admin stack (`platform::http::admin_layers`).
pub async fn router(sources: Sources<'_>) -> anyhow::Result<Option<Router>> {
    let config = sources.config;
    if config.admin.token.is_empty() {
        return Ok(None);
    }
    let first = sources
        .services
        .first()
        .context("the admin API needs a service database for its audit")?;
    let audit = AuditLog::open(
        first.db.clone(),
        first.clock.clone(),
        config.admin.audit_len_max,
    )
    .await
    .with_context(|| format!("cannot open the admin audit in the {} database", first.name))?;
    let admin = Admin {
        config: Arc::new(config.clone()),
        services: sources.services.to_vec(),
        broker: sources.broker.clone(),
        lag: sources.lag.clone(),
        breakers: sources.breakers.to_vec(),
        projectors: projectors(config, sources.services).await?,
        audit: audit.clone(),
    };
    let gate = Arc::new(Guard::new(&config.admin, audit));
    let routes = Router::new()
        .route("/admin/outbox", get(views::outbox))
        .route("/admin/lag", get(views::lag))
        .route("/admin/breakers", get(views::breakers))
        .route("/admin/projections", get(views::projections))
        .route(
            "/admin/projections/{name}/rebuild",
            axum::routing::post(views::rebuild_projection),
        )
        .route("/admin/audit", get(views::audit));
    let routes = extend(routes, sources.services)
        // Unknown admin paths are answered behind the guard too: without the token,
        // nobody learns which admin routes exist.
        .route("/admin", any(unknown))
        .route("/admin/{*rest}", any(unknown));
    // `layer` wraps only the routes added so far: every route is added above.
    Ok(Some(
        routes
            .layer(axum::middleware::from_fn_with_state(gate, guard::check))
            .with_state(admin),
    ))
}

/// Further admin routes, behind the same guard — rate limit, token, audit — as every
/// admin route: the dead letters of `services` ([`crate::platform::dead_letters`]) and
/// what the status page reads ([`crate::status`]).
pub fn extend(routes: Router<Admin>, services: &[ServiceDb]) -> Router<Admin> {
    routes
        .merge(crate::platform::dead_letters::routes(services))
        .merge(crate::status::routes(services))
}

/// The projections whose service this process runs, opened on that service's database
/// (registering a projection is idempotent: the service opened it already).
async fn projectors(config: &Config, services: &[ServiceDb]) -> anyhow::Result<Vec<Projector>> {
    let mut opened = Vec::new();
    for (name, projection) in crate::projections::all() {
        let Some(service) = services.iter().find(|s| s.name == name) else {
            continue;
        };
        let store = EventStore::open(service.db.clone())
            .await
            .with_context(|| format!("cannot open the {name} event store"))?;
        let projector = Projector::open(store, projection, crate::orders::projector_config(config))
            .await
            .with_context(|| format!("cannot open the {name} projections"))?;
        opened.push(projector);
    }
    Ok(opened)
}

/// Any other path under `/admin` (reached only with the right token).
async fn unknown() -> ApiError {
    ApiError::NotFound("admin route")
}
