//! What every service gets from the platform, and what it gives back.
//!
//! A service is a folder (`catalog/`, `orders/`, …) with `domain.rs` (its rules, no
//! axum or sqlx), `http.rs` (its routes), `store.rs` (its SQL and migrations) and
//! `events.rs` (what it consumes and publishes). The platform opens a [`ServiceDb`] for
//! it and asks it for a [`Contribution`]: routes and subscriptions. Services never
//! import each other; [`crate::contracts`] is all they share.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use eddy_core::{Clock, Envelope, Event, JsonCodec, SystemClock};
use eddy_outbox::Outbox;
use eddy_sql::{BatchConfig, Batched, Db, EachInTx, Tx, TxHandler};
use eddy_telemetry::Timed;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::contracts::values::Timestamp;

/// The five services of the platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceName {
    Catalog,
    Orders,
    Inventory,
    Payments,
    Notifications,
}

impl ServiceName {
    /// Every service, in start-up order.
    pub const ALL: [ServiceName; 5] = [
        ServiceName::Catalog,
        ServiceName::Orders,
        ServiceName::Inventory,
        ServiceName::Payments,
        ServiceName::Notifications,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ServiceName::Catalog => "catalog",
            ServiceName::Orders => "orders",
            ServiceName::Inventory => "inventory",
            ServiceName::Payments => "payments",
            ServiceName::Notifications => "notifications",
        }
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `catalog` is not a service name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown service {0:?}; the services are catalog, orders, inventory, payments, notifications"
)]
pub struct UnknownService(pub String);

impl FromStr for ServiceName {
    type Err = UnknownService;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ServiceName::ALL
            .into_iter()
            .find(|name| name.as_str() == s)
            .ok_or_else(|| UnknownService(s.to_owned()))
    }
}

/// A service's own storage. Services never touch each other's.
#[derive(Debug, Clone)]
pub struct ServiceDb {
    pub name: ServiceName,
    pub db: Db,
    pub outbox: Outbox,
    /// The letters the service's consumer group dead-lettered (`eddy-dlq`).
    pub dead_letters: eddy_dlq::DeadLetters,
    pub clock: Arc<dyn Clock>,
}

impl ServiceDb {
    pub async fn open(name: ServiceName, db: Db) -> Result<Self, eddy_core::Error> {
        Self::open_with(name, db, eddy_dlq::DeadLetterConfig::default()).await
    }

    /// [`ServiceDb::open`] with the dead-letter store's bounds.
    pub async fn open_with(
        name: ServiceName,
        db: Db,
        dead_letters: eddy_dlq::DeadLetterConfig,
    ) -> Result<Self, eddy_core::Error> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let outbox = Outbox::open(db.clone(), clock.clone()).await?;
        db.migrate(eddy_sql::idempotency::MIGRATIONS).await?;
        let dead_letters =
            eddy_dlq::DeadLetters::open(db.clone(), outbox.clone(), clock.clone(), dead_letters)
                .await?;
        Ok(Self {
            name,
            db,
            outbox,
            dead_letters,
            clock,
        })
    }

    /// Encodes `event` (as caused by `cause`, if any) and appends it to the outbox in `tx`.
    pub async fn emit<E: Event>(
        &self,
        tx: &mut Tx,
        topic: &str,
        event: &E,
        cause: Option<&Envelope>,
    ) -> Result<(), eddy_core::Error> {
        let envelope = self.envelope(event, cause)?;
        self.outbox
            .append(tx, topic, std::slice::from_ref(&envelope))
            .await
    }

    /// `event` in a new envelope occurring now, as caused by `cause`, if any.
    pub fn envelope<E: Event>(
        &self,
        event: &E,
        cause: Option<&Envelope>,
    ) -> Result<Envelope, eddy_core::Error> {
        let mut envelope = JsonCodec::encode(event, self.clock.as_ref())?;
        Ok(match cause {
            Some(cause) => envelope.caused_by(cause),
            None => {
                // Made by a request: it belongs to the request's trace wherever it is
                // kept (an event store, the outbox), not only once published.
                if let Some(context) = eddy_trace::current() {
                    eddy_trace::inject(&context, &mut envelope.headers);
                }
                envelope
            }
        })
    }

    /// Now, by the service's clock.
    pub fn now(&self) -> Timestamp {
        Timestamp::from_micros(eddy_core::envelope::to_micros(self.clock.now()))
    }
}

/// What the platform hands a service when it plugs it in.
#[derive(Debug)]
pub struct ServiceContext<'a> {
    pub service: ServiceDb,
    pub config: &'a Config,
    /// Where the payment provider answers (the embedded simulator or
    /// `payments.provider_url`).
    pub provider_url: &'a str,
}

/// An idempotent handler as the shop runs every one: the handler's writes and the
/// processed-event record in one transaction, under group commit, timed.
pub type Idempotent<E, H> = Timed<Batched<E, EachInTx<H>>>;

impl ServiceContext<'_> {
    /// `handler` made idempotent and timed, on this service's database.
    pub fn idempotent<E: Event + Clone, H: TxHandler<E>>(
        &self,
        handler: H,
    ) -> anyhow::Result<Idempotent<E, H>> {
        let batch = BatchConfig {
            batch_len_max: self.config.consumer.batch_len_max,
            ..BatchConfig::default()
        };
        let name = self.service.name.as_str();
        Ok(Timed::new(
            name,
            Batched::new(self.service.db.clone(), name, EachInTx(handler)).with_config(batch)?,
        ))
    }
}

/// One consumer of the service: a topic and the handlers of its event types.
#[derive(Debug)]
pub struct Subscription {
    pub topic: &'static str,
    pub router: eddy_runtime::Router,
}

/// What a service adds to the platform.
#[derive(Debug, Default)]
pub struct Contribution {
    /// Its public routes, documented, if it has any.
    pub routes: Option<utoipa_axum::router::OpenApiRouter>,
    /// Its consumers; the group is the service's name.
    pub subscriptions: Vec<Subscription>,
    /// Work it does on a timer (ending sagas that went quiet, reconciling with the
    /// payment provider).
    pub sweeps: Vec<Sweep>,
    /// The circuit breakers in front of its dependencies, for operators to watch
    /// (`GET /admin/breakers`).
    pub breakers: Vec<eddy_resilience::CircuitBreaker>,
}

/// What one sweep did: how many items it finished.
pub type SweepFuture = futures::future::BoxFuture<'static, Result<u64, eddy_core::Error>>;

/// Periodic work of a service: `run` every `interval`, supervised like a consumer.
pub struct Sweep {
    pub name: &'static str,
    pub interval: std::time::Duration,
    pub run: Arc<dyn Fn() -> SweepFuture + Send + Sync>,
}

impl std::fmt::Debug for Sweep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sweep")
            .field("name", &self.name)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}
