//! Typed configuration: defaults, then a TOML file, then `EDDY_*` environment variables
//! (`EDDY_SERVER__LISTEN=0.0.0.0:8080` sets `server.listen`), validated at start.
//! Every default is written beside its field (in [`sections`]) and in
//! `docs/configuration.md`. Closed sets of values are enums, so a misspelt one
//! (`broker.kind = "kafak"`) stops the start with the key, the value and the values
//! allowed, instead of quietly meaning the default.

pub mod sections;

use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use sections::*;

use crate::service::ServiceName;

/// Shortest HS256 secret accepted: 256 bits, as RFC 7518 requires for HS256.
pub const AUTH_SECRET_LEN_MIN: usize = 32;

/// Shortest admin token accepted: 256 bits, like [`AUTH_SECRET_LEN_MIN`], so that the
/// token cannot be guessed within any rate limit.
pub const ADMIN_TOKEN_LEN_MIN: usize = 32;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the SQLite files live. Default `data`.
    pub data_dir: PathBuf,
    /// This process's name in consumer groups; it must differ between live processes
    /// sharing a broker. Set it to a name that survives restarts (the service and host,
    /// say) and a process restarted after a crash takes its partitions back at once
    /// under it. Default empty: `shop-<host>-<pid>`, unique per process, so two
    /// processes never share partitions by accident (a restart then waits out the
    /// session timeout).
    pub instance_id: String,
    /// The services this process runs. Default all five (the modular monolith); one per
    /// process in scale-out mode, with `shop gateway` in front.
    pub services: Vec<ServiceName>,
    pub gateway: GatewayConfig,
    pub server: ServerConfig,
    pub auth: AuthConfig,
    /// The admin API (`/admin/…`); off unless `admin.token` is set.
    pub admin: AdminConfig,
    pub databases: DatabasesConfig,
    pub provider: ProviderConfig,
    pub payments: PaymentsConfig,
    pub notifications: NotificationsConfig,
    pub inventory: InventoryConfig,
    pub orders: OrdersConfig,
    pub consumer: ConsumerSettings,
    pub relay: RelaySettings,
    pub maintenance: MaintenanceConfig,
    pub lag: LagSettings,
    pub dead_letters: DeadLetterSettings,
    pub broker: BrokerConfig,
    pub cache: CacheSettings,
    /// Traces: contexts carried on events and calls, OTLP export when an endpoint is
    /// set (`docs/observability.md`).
    pub tracing: eddy_telemetry::TraceConfig,
    /// Log level filter (tracing's syntax). Default `info`.
    pub log_level: String,
    /// Log as JSON lines (`true`; each line written while handling a request or an
    /// event names its `trace_id`, and for an event its `event_id` and
    /// `correlation_id`) or as text. Default `false`.
    pub log_json: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            instance_id: String::new(),
            services: ServiceName::ALL.to_vec(),
            gateway: GatewayConfig::default(),
            server: ServerConfig::default(),
            auth: AuthConfig::default(),
            admin: AdminConfig::default(),
            databases: DatabasesConfig::default(),
            provider: ProviderConfig::default(),
            payments: PaymentsConfig::default(),
            notifications: NotificationsConfig::default(),
            inventory: InventoryConfig::default(),
            orders: OrdersConfig::default(),
            consumer: ConsumerSettings::default(),
            relay: RelaySettings::default(),
            maintenance: MaintenanceConfig::default(),
            lag: LagSettings::default(),
            dead_letters: DeadLetterSettings::default(),
            cache: CacheSettings::default(),
            broker: BrokerConfig::default(),
            tracing: eddy_telemetry::TraceConfig::default(),
            log_level: "info".to_owned(),
            log_json: false,
        }
    }
}

/// A database of the platform: a service's, or the embedded log's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Database {
    Of(ServiceName),
    Log,
}

impl Database {
    pub const fn name(self) -> &'static str {
        match self {
            Database::Of(service) => service.as_str(),
            Database::Log => "log",
        }
    }
}

/// Every problem in `figment`, not only the first: serde stops at the first bad field,
/// so each setting the defaults have is also tried on its own (the defaults with only
/// that value from `figment`). Keys are said as they are written (`provider.latency_ms`,
/// `EDDY_PROVIDER__LATENCY_MS`), without figment's profile name, with their source.
fn every_problem(figment: &Figment, first: figment::Error) -> Vec<String> {
    let defaults = Figment::from(Serialized::defaults(Config::default()));
    let mut listed: Vec<String> = Vec::new();
    let mut leaves = Vec::new();
    if let Ok(root) = defaults.find_value("") {
        leaf_keys(&root, String::new(), &mut leaves);
    }
    for key in &leaves {
        let Ok(value) = figment.find_value(key) else {
            continue;
        };
        let alone = defaults.clone().merge(Serialized::default(key, value));
        if let Err(errors) = alone.extract::<Config>() {
            note(&mut listed, figment, errors, Some(key));
        }
    }
    // Keys the defaults do not have (serde names only the first it meets).
    let mut given = Vec::new();
    if let Ok(root) = figment.find_value("") {
        leaf_keys(&root, String::new(), &mut given);
    }
    for key in given.iter().filter(|k| !leaves.contains(k)) {
        let source = figment.find_metadata(key).map(source_name);
        let from_env = source.as_deref().is_some_and(|s| s.contains("environment"));
        let written = if from_env {
            format!("EDDY_{}", key.replace('.', "__").to_ascii_uppercase())
        } else {
            key.clone()
        };
        let (parent, _) = key.rsplit_once('.').unwrap_or(("", key));
        let mut known: Vec<&str> = leaves
            .iter()
            .filter_map(|leaf| {
                let rest = if parent.is_empty() {
                    leaf.as_str()
                } else {
                    leaf.strip_prefix(parent)?.strip_prefix('.')?
                };
                rest.split('.').next()
            })
            .collect();
        known.dedup();
        let within = if parent.is_empty() {
            "the settings are".to_owned()
        } else {
            format!("{parent} takes")
        };
        listed.push(format!(
            "{written}: unknown setting; {within} {} (in {})",
            known.join(", "),
            source.unwrap_or_default()
        ));
    }
    if listed.is_empty() {
        note(&mut listed, figment, first, None);
    }
    listed
}

/// Adds each of `errors`, said as [`said`] says, unless listed already.
fn note(listed: &mut Vec<String>, figment: &Figment, errors: figment::Error, key: Option<&str>) {
    for error in errors {
        let source = key
            .and_then(|k| figment.find_metadata(k))
            .or(error.metadata.as_ref())
            .map(source_name);
        let text = said(&error, source);
        if !listed.contains(&text) {
            listed.push(text);
        }
    }
}

/// The dotted keys of every leaf under `value`.
fn leaf_keys(value: &figment::value::Value, prefix: String, out: &mut Vec<String>) {
    match value.as_dict() {
        // A map of free-form settings (librdkafka's) is one leaf: any key is allowed.
        Some(dict) if !dict.is_empty() && !prefix.starts_with("broker.kafka_") => {
            for (key, child) in dict {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                leaf_keys(child, path, out);
            }
        }
        _ if !prefix.is_empty() => out.push(prefix),
        _ => {}
    }
}

fn source_name(metadata: &figment::Metadata) -> String {
    match &metadata.source {
        Some(source) => source.to_string(),
        None => metadata.name.to_string(),
    }
}

/// One problem as a user would look for it: the key as written in its source
/// (`provider.latency_ms` in a file, `EDDY_PROVIDER__LATENCY_MS` in the environment) and
/// the source.
fn said(error: &figment::Error, source: Option<String>) -> String {
    let path: Vec<String> = error.path.iter().map(|p| p.to_ascii_lowercase()).collect();
    let from_env = source.as_deref().is_some_and(|s| s.contains("environment"));
    let key = if from_env {
        format!("EDDY_{}", path.join("__").to_ascii_uppercase())
    } else {
        path.join(".")
    };
    match source {
        Some(source) if !key.is_empty() => format!("{key}: {} (in {source})", error.kind),
        Some(source) => format!("{} (in {source})", error.kind),
        None if !key.is_empty() => format!("{key}: {}", error.kind),
        None => error.kind.to_string(),
    }
}

impl Config {
    /// The instance id in use: [`Config::instance_id`], or `shop-<host>-<pid>` when it
    /// is empty.
    pub fn instance_name(&self) -> String {
        if !self.instance_id.is_empty() {
            return self.instance_id.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_owned());
        format!("shop-{host}-{}", std::process::id())
    }

    /// Defaults, then `file` (if given; it must exist), then the environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                anyhow::bail!("configuration file {} does not exist", file.display());
            }
            figment = figment.merge(Toml::file(file));
        }
        Self::extract(figment.merge(Env::prefixed("EDDY_").split("__")))
    }

    /// The configuration `figment` holds, validated.
    pub fn extract(figment: Figment) -> anyhow::Result<Self> {
        let config: Config = figment.extract().map_err(|errors| {
            let listed = every_problem(&figment, errors);
            anyhow::anyhow!("invalid configuration:\n  - {}", listed.join("\n  - "))
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Rejects settings that would stall, spin or mean nothing, listing every problem.
    pub fn validate(&self) -> anyhow::Result<()> {
        let mut problems = Vec::new();
        let rates = [
            ("provider.decline_rate", self.provider.decline_rate),
            ("provider.error_rate", self.provider.error_rate),
            (
                "notifications.failure_rate",
                self.notifications.failure_rate,
            ),
        ];
        for (name, value) in rates {
            if !(0.0..=1.0).contains(&value) {
                problems.push(format!("{name} must be between 0 and 1, got {value}"));
            }
        }
        if let Err(problem) = self.tracing.validate() {
            problems.push(problem);
        }
        if let Err(problem) = self.lag.monitor().validate() {
            problems.push(format!("lag: {problem}"));
        }
        for (name, value) in self.positive_settings() {
            if value == 0 {
                problems.push(format!("{name} must be at least 1"));
            }
        }
        for (name, ttl) in [
            ("products", self.cache.products_ttl_secs),
            ("orders", self.cache.orders_ttl_secs),
        ] {
            if let Err(problem) =
                crate::platform::cache::cache_config(&self.cache, name, ttl).validate()
            {
                problems.push(format!(
                    "cache ({name}, cache.{name}_ttl_secs = {ttl}, cache.stale_max_secs = {}): {problem}",
                    self.cache.stale_max_secs
                ));
            }
        }
        if !self.cache.redis_url.is_empty() && !self.cache.redis_url.starts_with("redis://") {
            problems.push(format!(
                "cache.redis_url must start with redis:// (got {:?})",
                self.cache.redis_url
            ));
        }
        let budget_secs = self.payments.charge_budget_ms.div_ceil(1000);
        if self.payments.reconcile_after_secs <= 2 * budget_secs {
            problems.push(format!(
                "payments.reconcile_after_secs ({}) must exceed twice payments.charge_budget_ms ({} s)",
                self.payments.reconcile_after_secs, budget_secs
            ));
        }
        let reconciled_by =
            self.payments.reconcile_after_secs + 2 * self.maintenance.saga_sweep_interval_secs;
        if self.orders.pending_timeout_secs <= reconciled_by {
            problems.push(format!(
                "orders.pending_timeout_secs ({}) must exceed payments.reconcile_after_secs plus two saga sweeps ({reconciled_by} s)",
                self.orders.pending_timeout_secs
            ));
        }
        self.auth_problems(&mut problems);
        self.admin_problems(&mut problems);
        if self.services.is_empty() {
            problems.push("services must name at least one service".to_owned());
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

    /// Settings where 0 would stall or refuse everything.
    fn positive_settings(&self) -> [(&'static str, u64); 39] {
        let size = |n: usize| n as u64;
        [
            (
                "server.body_limit_bytes",
                size(self.server.body_limit_bytes),
            ),
            (
                "server.concurrency_limit",
                size(self.server.concurrency_limit),
            ),
            ("server.request_timeout_ms", self.server.request_timeout_ms),
            ("lag.interval_secs", self.lag.interval_secs),
            (
                "dead_letters.redrive_page_len",
                size(self.dead_letters.redrive_page_len),
            ),
            (
                "dead_letters.list_len_max",
                size(self.dead_letters.list_len_max),
            ),
            (
                "orders.projection_batch_len_max",
                size(self.orders.projection_batch_len_max),
            ),
            (
                "server.ready_check_timeout_ms",
                self.server.ready_check_timeout_ms,
            ),
            (
                "server.header_read_timeout_ms",
                self.server.header_read_timeout_ms,
            ),
            ("server.idle_timeout_ms", self.server.idle_timeout_ms),
            (
                "server.body_read_timeout_ms",
                self.server.body_read_timeout_ms,
            ),
            (
                "server.oversized_drain_max_bytes",
                self.server.oversized_drain_max_bytes,
            ),
            ("server.connections_max", size(self.server.connections_max)),
            (
                "auth.failures_per_minute_max",
                u64::from(self.auth.failures_per_minute_max),
            ),
            (
                "auth.tracked_clients_max",
                size(self.auth.tracked_clients_max),
            ),
            ("auth.token_ttl_secs", self.auth.token_ttl_secs),
            (
                "admin.requests_per_minute_max",
                u64::from(self.admin.requests_per_minute_max),
            ),
            ("admin.audit_len_max", self.admin.audit_len_max),
            (
                "databases.max_connections",
                u64::from(self.databases.max_connections),
            ),
            (
                "payments.provider_timeout_ms",
                self.payments.provider_timeout_ms,
            ),
            (
                "payments.provider_concurrency_max",
                size(self.payments.provider_concurrency_max),
            ),
            ("payments.charge_budget_ms", self.payments.charge_budget_ms),
            (
                "provider.remembered_keys_max",
                size(self.provider.remembered_keys_max),
            ),
            ("consumer.concurrency", size(self.consumer.concurrency)),
            ("consumer.in_flight_max", size(self.consumer.in_flight_max)),
            ("consumer.batch_len_max", size(self.consumer.batch_len_max)),
            (
                "consumer.attempts_max",
                u64::from(self.consumer.attempts_max),
            ),
            ("relay.batch_len_max", size(self.relay.batch_len_max)),
            ("cache.products_ttl_secs", self.cache.products_ttl_secs),
            ("cache.orders_ttl_secs", self.cache.orders_ttl_secs),
            ("cache.l1_bytes_max", self.cache.l1_bytes_max),
            (
                "maintenance.metrics_interval_ms",
                self.maintenance.metrics_interval_ms,
            ),
            (
                "maintenance.log_purge_interval_secs",
                self.maintenance.log_purge_interval_secs,
            ),
            (
                "maintenance.log_purge_batch_len_max",
                self.maintenance.log_purge_batch_len_max,
            ),
            (
                "maintenance.processed_events_retention_secs",
                self.maintenance.processed_events_retention_secs,
            ),
            (
                "maintenance.idempotency_keys_retention_secs",
                self.maintenance.idempotency_keys_retention_secs,
            ),
            (
                "maintenance.saga_sweep_interval_secs",
                self.maintenance.saga_sweep_interval_secs,
            ),
            (
                "maintenance.saga_sweep_len_max",
                self.maintenance.saga_sweep_len_max,
            ),
            (
                "broker.kafka_partitions",
                u64::try_from(self.broker.kafka_partitions).unwrap_or(0),
            ),
        ]
    }

    /// Whether this process runs `service`.
    pub fn runs(&self, service: ServiceName) -> bool {
        self.services.contains(&service)
    }

    /// The url of `database`, defaulting to a SQLite file in `data_dir`.
    pub fn database_url(&self, database: Database) -> String {
        let configured = match database {
            Database::Of(ServiceName::Catalog) => &self.databases.catalog,
            Database::Of(ServiceName::Orders) => &self.databases.orders,
            Database::Of(ServiceName::Inventory) => &self.databases.inventory,
            Database::Of(ServiceName::Payments) => &self.databases.payments,
            Database::Of(ServiceName::Notifications) => &self.databases.notifications,
            Database::Log => &self.databases.log,
        };
        if configured.is_empty() {
            let file = format!("{}.db", database.name());
            format!("sqlite://{}", self.data_dir.join(file).display())
        } else {
            configured.clone()
        }
    }

    /// Auth settings that cannot work, and an open listener without auth.
    fn auth_problems(&self, problems: &mut Vec<String>) {
        let auth = &self.auth;
        if auth.enabled {
            match auth.algorithm {
                TokenAlgorithm::HS256 if auth.secret.expose().len() < AUTH_SECRET_LEN_MIN => {
                    problems.push(format!(
                        "auth.secret must be at least {AUTH_SECRET_LEN_MIN} bytes for HS256 (set EDDY_AUTH__SECRET)"
                    ));
                }
                TokenAlgorithm::RS256 | TokenAlgorithm::EdDSA
                    if auth.public_key_file.as_os_str().is_empty() =>
                {
                    problems.push(format!(
                        "auth.public_key_file is required for {:?}",
                        auth.algorithm
                    ));
                }
                _ => {}
            }
            return;
        }
        if auth.allow_open_network {
            return;
        }
        let mut open: Vec<String> = Vec::new();
        if !self.server.listen.ip().is_loopback() {
            open.push(format!("server.listen ({})", self.server.listen));
        }
        if !self.gateway.listen.ip().is_loopback() {
            open.push(format!("gateway.listen ({})", self.gateway.listen));
        }
        if !open.is_empty() {
            problems.push(format!(
                "{} is not a loopback address and auth is off: anyone who can reach it could change the catalog and read every order. Turn auth on ([auth] enabled = true, with a key), or set auth.allow_open_network = true to accept that",
                open.join(" and ")
            ));
        }
    }

    /// An admin token that is set but too short to resist guessing, or that no client
    /// could send in an `Authorization` header. The token itself is never said.
    fn admin_problems(&self, problems: &mut Vec<String>) {
        let token = self.admin.token.expose();
        if token.is_empty() {
            return;
        }
        if token.len() < ADMIN_TOKEN_LEN_MIN {
            problems.push(format!(
                "admin.token must be at least {ADMIN_TOKEN_LEN_MIN} bytes (it is {}); set EDDY_ADMIN__TOKEN to a long random value, or leave it empty to turn the admin API off",
                token.len()
            ));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            problems.push(
                "admin.token must be printable ASCII without spaces, as an Authorization header carries it"
                    .to_owned(),
            );
        }
    }

    /// What one connection may take of a listener (every listener uses `server.*`).
    pub fn connection_limits(&self) -> crate::platform::server::ConnectionLimits {
        crate::platform::server::ConnectionLimits {
            header_read: Duration::from_millis(self.server.header_read_timeout_ms),
            idle: Duration::from_millis(self.server.idle_timeout_ms),
            connections_max: self.server.connections_max,
        }
    }

    /// Every database this process opens: its services' and, on the embedded broker, the
    /// log's.
    pub fn databases_used(&self) -> Vec<Database> {
        let mut used: Vec<Database> = self.services.iter().map(|s| Database::Of(*s)).collect();
        if self.broker.kind == BrokerKind::Embedded {
            used.push(Database::Log);
        }
        used
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.server.request_timeout_ms)
    }
}

#[cfg(test)]
mod tests;
