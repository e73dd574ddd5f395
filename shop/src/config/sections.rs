//! The sections of [`super::Config`], each with its defaults beside its fields.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The HTTP server of the platform.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Largest accepted request body. Default 64 KiB.
    pub body_limit_bytes: usize,
    /// Requests handled at once; as many more wait, the rest get 503. Default 4,096.
    pub concurrency_limit: usize,
    /// Time budget of one request. Default 5 s.
    pub request_timeout_ms: u64,
    /// On shutdown, how long in-flight requests and messages may take. Default 10 s.
    pub shutdown_timeout_ms: u64,
    /// How long `/health/ready` waits for each database and the broker. Default 1 s.
    pub ready_check_timeout_ms: u64,
    /// Time a client has to finish a request head once it started sending it; then the
    /// connection is closed. Default 10 s.
    pub header_read_timeout_ms: u64,
    /// Time a connection may stay open with no request in progress. Default 60 s.
    pub idle_timeout_ms: u64,
    /// Time a client has to send a request body; then 408. Default 10 s.
    pub body_read_timeout_ms: u64,
    /// A body over `body_limit_bytes` is read and thrown away up to this size before the
    /// 413 is sent, so that the client, still sending, reads the answer instead of a
    /// reset connection. Larger ones are answered at once. Default 16 MiB.
    pub oversized_drain_max_bytes: u64,
    /// Connections open at once per listener; beyond it new ones wait. Default 10,000.
    pub connections_max: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_limit_bytes: 64 * 1024,
            concurrency_limit: 4096,
            request_timeout_ms: 5_000,
            shutdown_timeout_ms: 10_000,
            ready_check_timeout_ms: 1_000,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            body_read_timeout_ms: 10_000,
            oversized_drain_max_bytes: 16 * 1024 * 1024,
            connections_max: 10_000,
        }
    }
}

/// How SQLite flushes a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSync {
    /// fsync per commit: a commit survives a power loss (the default).
    Full,
    /// fsync at checkpoints: survives a crash, not a power loss.
    Normal,
}

impl From<SqliteSync> for eddy_sql::SqliteSynchronous {
    fn from(sync: SqliteSync) -> Self {
        match sync {
            SqliteSync::Full => eddy_sql::SqliteSynchronous::Full,
            SqliteSync::Normal => eddy_sql::SqliteSynchronous::Normal,
        }
    }
}

/// One database per service. Empty means `sqlite://<data_dir>/<service>.db`; read them
/// through [`super::Config::database_url`], which takes a [`crate::service::ServiceName`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabasesConfig {
    pub catalog: String,
    pub orders: String,
    pub inventory: String,
    pub payments: String,
    pub notifications: String,
    /// The embedded log's database.
    pub log: String,
    /// Pooled connections per database. Default 8; size it to the database.
    pub max_connections: u32,
    /// `full` (fsync per commit; default) or `normal` (survives crashes, not power loss).
    pub sqlite_synchronous: SqliteSync,
}

impl Default for DatabasesConfig {
    fn default() -> Self {
        Self {
            catalog: String::new(),
            orders: String::new(),
            inventory: String::new(),
            payments: String::new(),
            notifications: String::new(),
            log: String::new(),
            max_connections: 8,
            sqlite_synchronous: SqliteSync::Full,
        }
    }
}

/// The simulated payment provider.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProviderConfig {
    /// Start the simulator inside the platform process (on its own listener). Default true.
    pub embedded: bool,
    /// Where the embedded simulator listens. Default `127.0.0.1:8081`.
    pub listen: SocketAddr,
    /// Simulated processing time per charge. Default 20 ms.
    pub latency_ms: u64,
    /// Share of charges declined, 0–1. Default 0.05.
    pub decline_rate: f64,
    /// Share of requests answered 503, 0–1. Default 0.
    pub error_rate: f64,
    /// Answers remembered for idempotency keys; the oldest are forgotten beyond this.
    /// Default 1,000,000.
    pub remembered_keys_max: usize,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            embedded: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            latency_ms: 20,
            decline_rate: 0.05,
            error_rate: 0.0,
            remembered_keys_max: 1_000_000,
        }
    }
}

/// How payments calls the provider.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PaymentsConfig {
    /// The provider's base url. Empty means the embedded simulator.
    pub provider_url: String,
    /// Timeout of one provider call. Default 2 s.
    pub provider_timeout_ms: u64,
    /// Provider calls at once (the bulkhead; also the idle connections kept). Default 64.
    pub provider_concurrency_max: usize,
    /// Calls that may wait for a place in the bulkhead; beyond, a call fails at once.
    /// Default 256.
    pub provider_queue_max: usize,
    /// Time budget of one charge (all its attempts) when the event carries no deadline.
    /// Default 5 s.
    pub charge_budget_ms: u64,
    /// A charge still pending this long after it was recorded is settled by asking the
    /// provider what became of it (its idempotency key is the order id): a charge
    /// whose event was dead-lettered, or whose answer was lost, ends all the same. No
    /// charge is sent to the provider this late, so the answer cannot change after.
    /// Must exceed twice `charge_budget_ms`. Default 60 s.
    pub reconcile_after_secs: u64,
}

impl Default for PaymentsConfig {
    fn default() -> Self {
        Self {
            provider_url: String::new(),
            provider_timeout_ms: 2_000,
            provider_concurrency_max: 64,
            provider_queue_max: 256,
            charge_budget_ms: 5_000,
            reconcile_after_secs: 60,
        }
    }
}

/// Orders' saga.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OrdersConfig {
    /// An order still pending this long after it was placed is cancelled
    /// (`timed_out`): its stock is released and any charge refunded. The way out for
    /// an order whose events were dead-lettered. Must exceed
    /// `payments.reconcile_after_secs` plus two sweeps. Default 600 s.
    pub pending_timeout_secs: u64,
    /// Events per transaction when the order views catch up or are rebuilt
    /// (`shop projections rebuild`). Default 500.
    pub projection_batch_len_max: usize,
}

impl Default for OrdersConfig {
    fn default() -> Self {
        Self {
            pending_timeout_secs: 600,
            projection_batch_len_max: 500,
        }
    }
}

/// The notification sender (simulated).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationsConfig {
    /// Share of simulated sends that fail, 0–1. Default 0.
    pub failure_rate: f64,
}

/// Inventory's waiting rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InventoryConfig {
    /// How long an order for a product inventory has not heard of waits for the
    /// product's catalog event (orders and inventory learn of products through their
    /// own consumers, so one may be ahead) before it is rejected as `unknown_product`.
    /// Default 120 s.
    pub unknown_product_wait_ms: u64,
}

impl Default for InventoryConfig {
    fn default() -> Self {
        Self {
            unknown_product_wait_ms: 120_000,
        }
    }
}

/// Every consumer of every service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerSettings {
    /// Handler calls at once per consumer. Default 32.
    pub concurrency: usize,
    /// Messages fetched but unfinished per consumer. Default 1,024.
    pub in_flight_max: usize,
    /// Attempts per message before it is dead-lettered. Default 5.
    pub attempts_max: u32,
    /// Backoff ceiling of the first retry. Default 100 ms.
    pub backoff_initial_ms: u64,
    /// Largest backoff ceiling. Default 5 s.
    pub backoff_max_ms: u64,
    /// Most events of one handler committed in one transaction (group commit: the events
    /// a consumer is handling at one moment share a transaction and its flush). 1 turns
    /// it off: one transaction per event. Default 256; a batch never exceeds
    /// `concurrency` in practice, and never waits to fill up.
    pub batch_len_max: usize,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        Self {
            concurrency: 32,
            in_flight_max: 1024,
            attempts_max: 5,
            backoff_initial_ms: 100,
            backoff_max_ms: 5_000,
            batch_len_max: 256,
        }
    }
}

/// Every service's outbox relay.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelaySettings {
    /// Outbox rows per relay batch. Default 500.
    pub batch_len_max: usize,
    /// Keep published outbox rows this long. Default 3,600 s.
    pub retention_secs: u64,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch_len_max: 500,
            retention_secs: 3_600,
        }
    }
}

/// Background upkeep: metrics of consumers, relays and outboxes, and the embedded log's
/// retention.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaintenanceConfig {
    /// How often lag, backlog and counters are exported as metrics. Default 2 s.
    pub metrics_interval_ms: u64,
    /// How often the embedded log deletes records past their retention. Default 60 s.
    pub log_purge_interval_secs: u64,
    /// Records deleted per purge statement (a bound on one transaction). Default 10,000.
    pub log_purge_batch_len_max: u64,
    /// How long each service remembers the events it processed (the idempotency
    /// records that make a redelivery a no-op). Must outlast any redelivery: a group
    /// away longer than this may apply an event twice. Default 1,209,600 s (14 days,
    /// twice the log's retention).
    pub processed_events_retention_secs: u64,
    /// How long orders remembers an `Idempotency-Key` (a retry with the same key
    /// after this is a new order). Default 86,400 s (24 hours, as Stripe keeps keys).
    pub idempotency_keys_retention_secs: u64,
    /// How often orders looks for overdue orders and payments for charges to
    /// reconcile. Default 10 s.
    pub saga_sweep_interval_secs: u64,
    /// Items one sweep finishes at most. Default 500.
    pub saga_sweep_len_max: u64,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            metrics_interval_ms: 2_000,
            log_purge_interval_secs: 60,
            log_purge_batch_len_max: 10_000,
            processed_events_retention_secs: 14 * 24 * 3600,
            idempotency_keys_retention_secs: 24 * 3600,
            saga_sweep_interval_secs: 10,
            saga_sweep_len_max: 500,
        }
    }
}

/// `shop gateway`: routes the public API to the processes that serve it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Where `/v1/products` goes. Default `http://127.0.0.1:8091`.
    pub catalog_url: String,
    /// Where `/v1/orders` and `/v1/customers` go. Default `http://127.0.0.1:8092`.
    pub orders_url: String,
    /// Where `/v1/payments` goes. Default `http://127.0.0.1:8094`.
    pub payments_url: String,
    /// The inventory process (no public routes; its readiness is the gateway's too).
    /// Default `http://127.0.0.1:8093`.
    pub inventory_url: String,
    /// The notifications process (readiness only). Default `http://127.0.0.1:8095`.
    pub notifications_url: String,
    /// Time budget of one proxied request. Default 5 s.
    pub timeout_ms: u64,
    /// Idle connections kept per upstream. Default 256.
    pub idle_connections_max: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            catalog_url: "http://127.0.0.1:8091".to_owned(),
            orders_url: "http://127.0.0.1:8092".to_owned(),
            payments_url: "http://127.0.0.1:8094".to_owned(),
            inventory_url: "http://127.0.0.1:8093".to_owned(),
            notifications_url: "http://127.0.0.1:8095".to_owned(),
            timeout_ms: 5_000,
            idle_connections_max: 256,
        }
    }
}

/// Which broker carries the events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// The SQL log in `databases.log` (the default).
    Embedded,
    /// NATS JetStream.
    Nats,
    /// Kafka (or a Kafka-compatible broker).
    Kafka,
}

impl BrokerKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            BrokerKind::Embedded => "embedded",
            BrokerKind::Nats => "nats",
            BrokerKind::Kafka => "kafka",
        }
    }
}

/// Where events travel.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// `embedded` (the SQL log in `databases.log`; default), `nats` (JetStream) or
    /// `kafka`.
    pub kind: BrokerKind,
    /// Default `nats://127.0.0.1:4222`.
    pub nats_url: String,
    /// JetStream stream names are `<prefix>_<topic>`. Default `EDDY`.
    pub nats_stream_prefix: String,
    /// Subjects are `<prefix>.<topic>`. Default `eddy`.
    pub nats_subject_prefix: String,
    /// How long JetStream waits for an ack before giving a message to another member
    /// (e.g. after a crash). Default 60 s: longer than the slowest retry sequence.
    pub nats_ack_wait_ms: u64,
    /// Default `127.0.0.1:9092`.
    pub kafka_bootstrap_servers: String,
    /// Partitions of the topics the platform creates on Kafka. Default 8.
    pub kafka_partitions: i32,
    /// librdkafka producer settings over Eddy's defaults (see `eddy_kafka`), e.g.
    /// `"linger.ms" = "10"`. In environment variables write the dots as underscores:
    /// `EDDY_BROKER__KAFKA_PRODUCER__LINGER_MS=10`. Default none.
    #[serde(deserialize_with = "scalar_map")]
    pub kafka_producer: BTreeMap<String, String>,
    /// librdkafka consumer settings over Eddy's defaults, written like `kafka_producer`.
    /// Default none.
    #[serde(deserialize_with = "scalar_map")]
    pub kafka_consumer: BTreeMap<String, String>,
    /// The embedded log deletes records older than this once every group of their
    /// topic has consumed them. Default 604,800 s (7 days).
    pub log_retention_secs: u64,
    /// The embedded log deletes records older than this even if a group has not
    /// consumed them, and reports each one (the bound on disk when a group is stuck
    /// or gone). Default 0: never — an unconsumed record waits for its group.
    pub log_unconsumed_retention_secs: u64,
    /// The retention of dead-letter topics (`<topic>.dlq`) in the embedded log.
    /// Default 2,592,000 s (30 days).
    pub log_dead_letter_retention_secs: u64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            kind: BrokerKind::Embedded,
            nats_url: "nats://127.0.0.1:4222".to_owned(),
            nats_stream_prefix: "EDDY".to_owned(),
            nats_subject_prefix: "eddy".to_owned(),
            nats_ack_wait_ms: 60_000,
            kafka_bootstrap_servers: "127.0.0.1:9092".to_owned(),
            kafka_partitions: 8,
            kafka_producer: BTreeMap::new(),
            kafka_consumer: BTreeMap::new(),
            log_retention_secs: 7 * 24 * 3600,
            log_unconsumed_retention_secs: 0,
            log_dead_letter_retention_secs: 30 * 24 * 3600,
        }
    }
}

impl BrokerConfig {
    /// `settings` with underscores read as dots (librdkafka names contain no underscores;
    /// environment variable names cannot contain dots).
    pub fn librdkafka(settings: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        settings
            .iter()
            .map(|(k, v)| (k.replace('_', "."), v.clone()))
            .collect()
    }
}

/// A map of client settings whose values may arrive as strings, numbers or booleans
/// (environment variables are typed by their look: `500` is a number).
fn scalar_map<'de, D>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Unsigned(u64),
        Signed(i64),
        Float(f64),
        Flag(bool),
    }
    let map = BTreeMap::<String, Scalar>::deserialize(deserializer)?;
    Ok(map
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                Scalar::Text(s) => s,
                Scalar::Unsigned(n) => n.to_string(),
                Scalar::Signed(n) => n.to_string(),
                Scalar::Float(n) => n.to_string(),
                Scalar::Flag(b) => b.to_string(),
            };
            (k, text)
        })
        .collect())
}

/// Text that must not be printed: `Debug` shows `[redacted]`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "[empty]"
        } else {
            "[redacted]"
        })
    }
}

/// How bearer tokens are signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenAlgorithm {
    /// HMAC-SHA256 with `auth.secret` (the default).
    HS256,
    /// RSA PKCS#1 v1.5 with SHA-256; verified with `auth.public_key_file`.
    RS256,
    /// Ed25519; verified with `auth.public_key_file`.
    EdDSA,
}

/// `[auth]`: who may do what. Off by default (development mode, said loudly at start).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Require a signed bearer token for everything but product reads, probes, metrics
    /// and the API document. Default `false`.
    pub enabled: bool,
    /// `HS256`, `RS256` or `EdDSA`. Default `HS256`.
    pub algorithm: TokenAlgorithm,
    /// HS256's shared secret, at least 32 bytes; give it as `EDDY_AUTH__SECRET` rather
    /// than in a file. Default empty.
    pub secret: Secret,
    /// RS256 / EdDSA: the PEM file of the public key tokens are verified with.
    pub public_key_file: PathBuf,
    /// RS256 / EdDSA: the PEM file of the private key `shop token` and the demo sign with
    /// (development only; production tokens come from your identity provider).
    pub private_key_file: PathBuf,
    /// The `iss` every token must carry; empty: not checked. Default empty.
    pub issuer: String,
    /// The `aud` every token must carry; empty: not checked. Default empty.
    pub audience: String,
    /// Start with auth off on a listen address other than loopback. Default `false`: such
    /// a start is refused, since anyone who can reach it could change the catalog.
    pub allow_open_network: bool,
    /// Failed authentications per client address per minute; beyond it, 429. Default 20.
    pub failures_per_minute_max: u32,
    /// Client addresses whose failures are remembered at once. Default 10,000.
    pub tracked_clients_max: usize,
    /// Lifetime of the tokens `shop token` and the demo make. Default 3,600 s.
    pub token_ttl_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            algorithm: TokenAlgorithm::HS256,
            secret: Secret::default(),
            public_key_file: PathBuf::new(),
            private_key_file: PathBuf::new(),
            issuer: String::new(),
            audience: String::new(),
            allow_open_network: false,
            failures_per_minute_max: 20,
            tracked_clients_max: 10_000,
            token_ttl_secs: 3_600,
        }
    }
}

/// `[admin]`: the operators' API under `/admin/…` (outbox, lag, breakers, projections,
/// the audit trail; see [`crate::admin`]). Off unless a token is set, and then never
/// open: every request must carry the token, is rate-limited and is audited.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// The bearer token every admin request must carry: at least 32 bytes of printable
    /// ASCII, no spaces; give it as `EDDY_ADMIN__TOKEN` rather than in a file. Default
    /// empty: the admin API is off and its routes do not exist (404, like any unknown
    /// route).
    pub token: Secret,
    /// Admin requests this process answers per minute, accepted or refused (a token
    /// bucket of this size, refilled evenly over the minute); beyond, 429 with
    /// `Retry-After`. Bounds guessing and the audit writes. Default 600.
    pub requests_per_minute_max: u32,
    /// Audit entries kept in the `admin_audit` table; the oldest are deleted beyond it.
    /// Default 100,000.
    pub audit_len_max: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            token: Secret::default(),
            requests_per_minute_max: 600,
            audit_len_max: 100_000,
        }
    }
}

/// `[cache]`: product and order reads go through a two-level cache (`eddy-cache`):
/// in-process on embedded defaults, in front of Redis with `redis_url` (scale-out: one
/// load per key across processes, writes invalidating every process). docs/cache.md
/// says how stale a read can be.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    /// Off: every read goes to the database. Default `true`.
    pub enabled: bool,
    /// `redis://host:port/db` adds Redis as the shared level. Default empty (in-process
    /// only).
    pub redis_url: String,
    /// Prefix of the cache's Redis keys and channels (processes that share a cache
    /// must share it). Default `eddy`.
    pub key_prefix: String,
    /// How long a product read stays fresh without asking the database (writes and
    /// `StockChanged` invalidate it sooner). Default 60 s.
    pub products_ttl_secs: u64,
    /// How long an order read stays fresh (every status change invalidates it sooner).
    /// Default 30 s.
    pub orders_ttl_secs: u64,
    /// How long a stale value may be served while the database fails. Default 600 s.
    pub stale_max_secs: u64,
    /// Each process's in-memory bound per cache, in bytes. Default 67,108,864 (64 MiB).
    pub l1_bytes_max: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            redis_url: String::new(),
            key_prefix: "eddy".to_owned(),
            products_ttl_secs: 60,
            orders_ttl_secs: 30,
            stale_max_secs: 600,
            l1_bytes_max: 64 << 20,
        }
    }
}

/// Each service's dead letters (`eddy-dlq`, docs/dead-letters.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeadLetterSettings {
    /// Redrives of one event after which a redrive leaves its letter open (the loop
    /// guard). Default 3.
    pub redrive_count_max: u32,
    /// Resolved letters (redriven or edited) are deleted this long after their last
    /// failure. Default 2,592,000 s (30 days).
    pub resolved_retention_secs: u64,
    /// Letters per step of a redrive (its checkpoint moves once per step). Default 100.
    pub redrive_page_len: usize,
    /// Most letters or groups one list answers. Default 1,000.
    pub list_len_max: usize,
}

impl Default for DeadLetterSettings {
    fn default() -> Self {
        let store = eddy_dlq::DeadLetterConfig::default();
        Self {
            redrive_count_max: store.redrive_count_max,
            resolved_retention_secs: 30 * 24 * 3600,
            redrive_page_len: store.page_len,
            list_len_max: store.list_len_max,
        }
    }
}

impl DeadLetterSettings {
    /// The store's configuration, purges bounded like the platform's others.
    pub fn store(&self, purge_batch_len_max: u64) -> eddy_dlq::DeadLetterConfig {
        eddy_dlq::DeadLetterConfig {
            redrive_count_max: self.redrive_count_max,
            page_len: self.redrive_page_len,
            list_len_max: self.list_len_max,
            purge_batch_len_max: usize::try_from(purge_batch_len_max).unwrap_or(usize::MAX),
        }
    }
}

/// The consumer lag monitor (`eddy_telemetry::LagMonitor`, docs/lag.md): samples every
/// group's partitions on a timer and judges each over a window.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LagSettings {
    /// How often end and committed offsets are sampled. Default 15 s.
    pub interval_secs: u64,
    /// Samples kept per partition. Default 10 (2.5 minutes at 15 s).
    pub window_len_max: usize,
    /// Samples older than this drop, however few are kept. Default 600 s.
    pub window_secs: u64,
    /// GROWING, STALLED and STOPPED are judged over at least this many samples… Default 3.
    pub judge_len_min: usize,
    /// …spanning at least this long. Default 60 s.
    pub judge_span_secs: u64,
    /// Lag from which a partition is WARNING. Default 1,000 messages.
    pub warning_lag_messages: u64,
    /// Lag over which a partition is CRITICAL. Default 5,000 messages.
    pub critical_lag_messages: u64,
}

impl Default for LagSettings {
    fn default() -> Self {
        let monitor = eddy_telemetry::LagConfig::default();
        Self {
            interval_secs: 15,
            window_len_max: monitor.window_len_max,
            window_secs: monitor.window_duration.as_secs(),
            judge_len_min: monitor.judge_len_min,
            judge_span_secs: monitor.judge_span_min.as_secs(),
            warning_lag_messages: monitor.warning_lag_messages,
            critical_lag_messages: monitor.critical_lag_messages,
        }
    }
}

impl LagSettings {
    /// The monitor's configuration.
    pub fn monitor(&self) -> eddy_telemetry::LagConfig {
        eddy_telemetry::LagConfig {
            window_len_max: self.window_len_max,
            window_duration: std::time::Duration::from_secs(self.window_secs),
            judge_len_min: self.judge_len_min,
            judge_span_min: std::time::Duration::from_secs(self.judge_span_secs),
            warning_lag_messages: self.warning_lag_messages,
            critical_lag_messages: self.critical_lag_messages,
        }
    }
}
