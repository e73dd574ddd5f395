//! A cache's settings; every one has a documented default.

use std::time::Duration;

/// Settings of one [`Cache`](crate::Cache).
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Names the cache in metrics and in its Redis keys (`{key_prefix}:{name}:…`).
    pub name: String,
    /// Prefix of every Redis key and channel of this cache, so that tests and
    /// deployments sharing one Redis stay apart. Default `eddy`.
    pub key_prefix: String,
    /// How long a loaded value is fresh (served without asking anyone). Default 60 s.
    pub ttl: Duration,
    /// Each entry's `ttl` is drawn from `ttl × (1 ± ttl_jitter)` so keys loaded together
    /// do not expire together. 0–0.5; default 0.1.
    pub ttl_jitter: f64,
    /// How long a stale value may still be served when the loader fails or is slow
    /// (fail-safe), counted from when it was loaded. At least `ttl`; default 10 min.
    pub hard_ttl: Duration,
    /// How long "not found" is remembered. Default 5 s.
    pub negative_ttl: Duration,
    /// After a failed load, how long the stale value counts as fresh again before the
    /// loader is tried anew (so a failing store is not asked on every request). Default 1 s.
    pub fail_safe_throttle: Duration,
    /// A caller holding a stale value waits this long for a reload, then gets the stale
    /// value while the load goes on in the background. Default 100 ms.
    pub soft_timeout: Duration,
    /// A load (the loader, on the node holding the lease) that takes longer fails with
    /// [`CacheError::Timeout`](crate::CacheError::Timeout). Default 5 s.
    pub load_timeout: Duration,
    /// XFetch's β: a hot entry is reloaded in the background before it expires, with a
    /// probability that rises as expiry nears, scaled by how long its load took. 0 turns
    /// early refresh off; default 1.0.
    pub early_refresh_beta: f64,
    /// Serialized values larger than this are returned but not cached. Default 1 MiB.
    pub value_bytes_max: usize,
    /// The L1's bound: the sum of its entries' weights (serialized size plus key).
    /// Default 64 MiB.
    pub l1_bytes_max: u64,
    /// How long the node loading a key holds its Redis lease; other nodes wait for the
    /// value, and take over when a holder that died lets the lease expire. Longer than
    /// `load_timeout`, so a slow but healthy holder keeps it; default 7 s.
    pub lease_ttl: Duration,
    /// Nodes waiting on another's lease are woken by the backplane when the value lands;
    /// they also look in Redis this often in case the message was lost. Default 250 ms.
    pub lease_poll: Duration,
    /// Each Redis call gives up after this long and the cache carries on without Redis
    /// for that call. Default 50 ms.
    pub l2_timeout: Duration,
    /// Redis failures within `l2_breaker_window` that open the breaker in front of Redis:
    /// while it is open the cache runs on L1 and the loader alone. Default 5.
    pub l2_breaker_failures: u32,
    /// Default 10 s.
    pub l2_breaker_window: Duration,
    /// How long the breaker stays open before one call probes Redis again. Default 2 s.
    pub l2_breaker_open: Duration,
    /// How often the backplane's subscription is pinged; an unanswered ping counts as a
    /// disconnect (every L1 entry becomes stale). Default 2 s.
    pub backplane_ping: Duration,
}

impl CacheConfig {
    /// The defaults with `name`.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Checks the settings hang together.
    pub fn validate(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.name.is_empty() || self.name.contains([':', ' ']) {
            problems.push(format!("name {:?}: non-empty, no ':' or spaces", self.name));
        }
        if self.ttl.is_zero() {
            problems.push("ttl must be above 0".to_owned());
        }
        if !(0.0..=0.5).contains(&self.ttl_jitter) {
            problems.push(format!("ttl_jitter {} is outside 0–0.5", self.ttl_jitter));
        }
        if self.hard_ttl < self.ttl.mul_f64(1.0 + self.ttl_jitter) {
            problems.push("hard_ttl must be at least ttl × (1 + ttl_jitter)".to_owned());
        }
        if !(self.early_refresh_beta >= 0.0 && self.early_refresh_beta.is_finite()) {
            problems.push("early_refresh_beta must be 0 or more".to_owned());
        }
        if self.value_bytes_max == 0 || self.l1_bytes_max == 0 {
            problems.push("value_bytes_max and l1_bytes_max must be above 0".to_owned());
        }
        if self.lease_ttl.is_zero() || self.lease_poll.is_zero() || self.l2_timeout.is_zero() {
            problems.push("lease_ttl, lease_poll and l2_timeout must be above 0".to_owned());
        }
        if self.lease_ttl <= self.load_timeout {
            problems.push("lease_ttl must exceed load_timeout".to_owned());
        }
        let year = Duration::from_secs(365 * 24 * 3600);
        for (name, value) in [
            ("ttl", self.ttl),
            ("hard_ttl", self.hard_ttl),
            ("negative_ttl", self.negative_ttl),
            ("load_timeout", self.load_timeout),
            ("lease_ttl", self.lease_ttl),
            ("soft_timeout", self.soft_timeout),
            ("fail_safe_throttle", self.fail_safe_throttle),
            ("backplane_ping", self.backplane_ping),
            ("l2_breaker_open", self.l2_breaker_open),
            ("l2_breaker_window", self.l2_breaker_window),
        ] {
            if value > year {
                problems.push(format!("{name} must be at most a year"));
            }
        }
        if self.lease_poll > year || self.l2_timeout > year {
            problems.push("lease_poll and l2_timeout must be at most a year".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            name: "default".to_owned(),
            key_prefix: "eddy".to_owned(),
            ttl: Duration::from_secs(60),
            ttl_jitter: 0.1,
            hard_ttl: Duration::from_secs(600),
            negative_ttl: Duration::from_secs(5),
            fail_safe_throttle: Duration::from_secs(1),
            soft_timeout: Duration::from_millis(100),
            load_timeout: Duration::from_secs(5),
            early_refresh_beta: 1.0,
            value_bytes_max: 1 << 20,
            l1_bytes_max: 64 << 20,
            lease_ttl: Duration::from_secs(7),
            lease_poll: Duration::from_millis(250),
            l2_timeout: Duration::from_millis(50),
            l2_breaker_failures: 5,
            l2_breaker_window: Duration::from_secs(10),
            l2_breaker_open: Duration::from_secs(2),
            backplane_ping: Duration::from_secs(2),
        }
    }
}
