//! Typed configuration: defaults, then a TOML file, then `EDDY_*` environment variables
//! (`EDDY_SERVER__LISTEN=0.0.0.0:8080` sets `server.listen`), validated at start.
//! Every default is written here, next to its field, and in `docs/configuration.md`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the SQLite files live. Default `data`.
    pub data_dir: PathBuf,
    /// This process's name in consumer groups; it must survive restarts and differ
    /// between processes sharing a broker. A restarted process takes its partitions back
    /// at once under the same name. Default `shop`.
    pub instance_id: String,
    /// The services this process runs. Default all five (the modular monolith); one per
    /// process in scale-out mode, with `shop gateway` in front.
    pub services: Vec<String>,
    pub gateway: GatewayConfig,
    pub server: ServerConfig,
    pub databases: DatabasesConfig,
    pub provider: ProviderConfig,
    pub payments: PaymentsConfig,
    pub notifications: NotificationsConfig,
    pub inventory: InventoryConfig,
    pub consumer: ConsumerSettings,
    pub relay: RelaySettings,
    pub broker: BrokerConfig,
    /// Log level filter (tracing's syntax). Default `info`.
    pub log_level: String,
    /// Log as JSON lines (`true`) or as text. Default `false`.
    pub log_json: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Largest accepted request body. Default 64 KiB.
    pub body_limit_bytes: usize,
    /// Requests handled at once; the rest wait in the accept queue. Default 4,096.
    pub concurrency_limit: usize,
    /// Time budget of one request. Default 5 s.
    pub request_timeout_ms: u64,
    /// On shutdown, how long in-flight requests and messages may take. Default 10 s.
    pub shutdown_timeout_ms: u64,
}

/// One database per service. Empty means `sqlite://<data_dir>/<service>.db`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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
    pub sqlite_synchronous: String,
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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PaymentsConfig {
    /// The provider's base url. Empty means the embedded simulator.
    pub provider_url: String,
    /// Timeout of one provider call. Default 2 s.
    pub provider_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationsConfig {
    /// Share of simulated sends that fail, 0–1. Default 0.
    pub failure_rate: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InventoryConfig {
    /// How long an order for a product inventory has not heard of waits for the
    /// product's catalog event (orders and inventory learn of products through their
    /// own consumers, so one may be ahead) before it is rejected as `unknown_product`.
    /// Default 120 s.
    pub unknown_product_wait_ms: u64,
}

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

/// Every service of the platform.
pub const SERVICES: [&str; 5] = [
    "catalog",
    "orders",
    "inventory",
    "payments",
    "notifications",
];

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
    /// Time budget of one proxied request. Default 5 s.
    pub timeout_ms: u64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            catalog_url: "http://127.0.0.1:8091".to_owned(),
            orders_url: "http://127.0.0.1:8092".to_owned(),
            payments_url: "http://127.0.0.1:8094".to_owned(),
            timeout_ms: 5_000,
        }
    }
}

/// Where events travel.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// `embedded` (the SQL log in `databases.log`; default), `nats` (JetStream) or
    /// `kafka`.
    pub kind: String,
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

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            kind: "embedded".to_owned(),
            nats_url: "nats://127.0.0.1:4222".to_owned(),
            nats_stream_prefix: "EDDY".to_owned(),
            nats_subject_prefix: "eddy".to_owned(),
            nats_ack_wait_ms: 60_000,
            kafka_bootstrap_servers: "127.0.0.1:9092".to_owned(),
            kafka_partitions: 8,
            kafka_producer: BTreeMap::new(),
            kafka_consumer: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelaySettings {
    /// Outbox rows per relay batch. Default 500.
    pub batch_len_max: usize,
    /// Keep published outbox rows this long. Default 3,600 s.
    pub retention_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            instance_id: "shop".to_owned(),
            services: SERVICES.iter().map(|s| (*s).to_owned()).collect(),
            gateway: GatewayConfig::default(),
            server: ServerConfig::default(),
            databases: DatabasesConfig {
                max_connections: 8,
                sqlite_synchronous: "full".to_owned(),
                ..DatabasesConfig::default()
            },
            provider: ProviderConfig::default(),
            payments: PaymentsConfig::default(),
            notifications: NotificationsConfig::default(),
            inventory: InventoryConfig::default(),
            consumer: ConsumerSettings::default(),
            relay: RelaySettings::default(),
            broker: BrokerConfig::default(),
            log_level: "info".to_owned(),
            log_json: false,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            body_limit_bytes: 64 * 1024,
            concurrency_limit: 4096,
            request_timeout_ms: 5_000,
            shutdown_timeout_ms: 10_000,
        }
    }
}

impl Default for ProviderConfig {
    fn default() -> Self {
        Self {
            embedded: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            latency_ms: 20,
            decline_rate: 0.05,
            error_rate: 0.0,
        }
    }
}

impl Default for PaymentsConfig {
    fn default() -> Self {
        Self {
            provider_url: String::new(),
            provider_timeout_ms: 2_000,
        }
    }
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        Self { failure_rate: 0.0 }
    }
}

impl Default for InventoryConfig {
    fn default() -> Self {
        Self {
            unknown_product_wait_ms: 120_000,
        }
    }
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

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch_len_max: 500,
            retention_secs: 3_600,
        }
    }
}

impl Config {
    /// Defaults, then `file` (if given; it must exist), then the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                anyhow::bail!("configuration file {} does not exist", file.display());
            }
            figment = figment.merge(Toml::file(file));
        }
        let config: Config = figment
            .merge(Env::prefixed("EDDY_").split("__"))
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        config.validate()?;
        Ok(config)
    }

    /// Rejects settings that would stall, spin or mean nothing.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        let rate = |name: &str, value: f64, problems: &mut Vec<String>| {
            if !(0.0..=1.0).contains(&value) {
                problems.push(format!("{name} must be between 0 and 1, got {value}"));
            }
        };
        rate(
            "provider.decline_rate",
            self.provider.decline_rate,
            &mut problems,
        );
        rate(
            "provider.error_rate",
            self.provider.error_rate,
            &mut problems,
        );
        rate(
            "notifications.failure_rate",
            self.notifications.failure_rate,
            &mut problems,
        );
        let positive = [
            (
                "server.body_limit_bytes",
                self.server.body_limit_bytes as u64,
            ),
            (
                "server.concurrency_limit",
                self.server.concurrency_limit as u64,
            ),
            ("server.request_timeout_ms", self.server.request_timeout_ms),
            (
                "databases.max_connections",
                u64::from(self.databases.max_connections),
            ),
            (
                "payments.provider_timeout_ms",
                self.payments.provider_timeout_ms,
            ),
            ("consumer.concurrency", self.consumer.concurrency as u64),
            ("consumer.in_flight_max", self.consumer.in_flight_max as u64),
            ("consumer.batch_len_max", self.consumer.batch_len_max as u64),
            (
                "consumer.attempts_max",
                u64::from(self.consumer.attempts_max),
            ),
            ("relay.batch_len_max", self.relay.batch_len_max as u64),
        ];
        for (name, value) in positive {
            if value == 0 {
                problems.push(format!("{name} must be at least 1"));
            }
        }
        if !matches!(
            self.databases.sqlite_synchronous.as_str(),
            "full" | "normal"
        ) {
            problems.push(format!(
                "databases.sqlite_synchronous is full or normal, got {:?}",
                self.databases.sqlite_synchronous
            ));
        }
        if !self.provider.embedded && self.payments.provider_url.is_empty() {
            problems.push(
                "payments.provider_url is required when provider.embedded is false".to_owned(),
            );
        }
        if problems.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("invalid configuration:\n  - {}", problems.join("\n  - "))
        }
    }

    /// The database url of `service`, defaulting to a SQLite file in `data_dir`.
    pub fn database_url(&self, service: &str) -> String {
        let configured = match service {
            "catalog" => &self.databases.catalog,
            "orders" => &self.databases.orders,
            "inventory" => &self.databases.inventory,
            "payments" => &self.databases.payments,
            "notifications" => &self.databases.notifications,
            _ => &self.databases.log,
        };
        if configured.is_empty() {
            format!(
                "sqlite://{}",
                self.data_dir.join(format!("{service}.db")).display()
            )
        } else {
            configured.clone()
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.server.request_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut config = Config::default();
        config.provider.decline_rate = 2.0;
        config.consumer.concurrency = 0;
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("provider.decline_rate"), "{message}");
        assert!(message.contains("consumer.concurrency"), "{message}");
    }

    #[test]
    fn services_default_to_sqlite_files_in_the_data_dir() {
        let config = Config {
            data_dir: "/tmp/x".into(),
            ..Config::default()
        };
        assert_eq!(config.database_url("orders"), "sqlite:///tmp/x/orders.db");
    }
}

#[cfg(test)]
mod example_file {
    use super::*;

    /// The shipped example must parse and equal the defaults it documents.
    #[test]
    fn the_example_file_documents_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("shop.example.toml");
        let from_file: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::file(&path))
            .extract()
            .unwrap();
        let defaults = Config::default();
        assert_eq!(
            serde_json::to_value(&from_file).unwrap(),
            serde_json::to_value(&defaults).unwrap()
        );
    }
}
