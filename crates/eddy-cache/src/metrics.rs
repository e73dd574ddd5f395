//! The cache's metrics, registered once per cache so a hit costs an atomic add, not a
//! label lookup.

use metrics::{Counter, Gauge, Histogram};

/// Handles for one cache's series (label `cache` = the cache's name).
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    pub l1_hit: Counter,
    pub l1_negative: Counter,
    pub l1_stale: Counter,
    pub l1_miss: Counter,
    pub l2_hit: Counter,
    pub l2_negative: Counter,
    pub l2_stale: Counter,
    pub l2_miss: Counter,
    pub l2_errors: Counter,
    pub loads_ok: Counter,
    pub loads_failed: Counter,
    pub loads_timed_out: Counter,
    pub load_duration: Histogram,
    pub coalesced_local: Counter,
    pub coalesced_remote: Counter,
    pub served_stale: Counter,
    pub too_large: Counter,
    pub early_refreshes: Counter,
    pub invalidated_write: Counter,
    pub invalidated_backplane: Counter,
    pub invalidated_event: Counter,
    pub epoch_bumps: Counter,
    pub evicted_size: Counter,
    pub evicted_expired: Counter,
    pub l1_weight: Gauge,
    pub backplane_up: Gauge,
}

impl Metrics {
    pub fn new(cache: &str) -> Self {
        let cache = cache.to_owned();
        let request = |level: &'static str, result: &'static str| metrics::counter!("cache_requests_total", "cache" => cache.clone(), "level" => level, "result" => result);
        let load = |outcome: &'static str| metrics::counter!("cache_loads_total", "cache" => cache.clone(), "outcome" => outcome);
        let coalesced = |scope: &'static str| metrics::counter!("cache_coalesced_waiters_total", "cache" => cache.clone(), "scope" => scope);
        let invalidated = |source: &'static str| metrics::counter!("cache_invalidations_total", "cache" => cache.clone(), "source" => source);
        let evicted = |cause: &'static str| metrics::counter!("cache_evictions_total", "cache" => cache.clone(), "cause" => cause);
        Self {
            l1_hit: request("l1", "hit"),
            l1_negative: request("l1", "negative"),
            l1_stale: request("l1", "stale"),
            l1_miss: request("l1", "miss"),
            l2_hit: request("l2", "hit"),
            l2_negative: request("l2", "negative"),
            l2_stale: request("l2", "stale"),
            l2_miss: request("l2", "miss"),
            l2_errors: metrics::counter!("cache_l2_errors_total", "cache" => cache.clone()),
            loads_ok: load("ok"),
            loads_failed: load("error"),
            loads_timed_out: load("timeout"),
            load_duration: metrics::histogram!("cache_load_duration_seconds", "cache" => cache.clone()),
            coalesced_local: coalesced("local"),
            coalesced_remote: coalesced("remote"),
            served_stale: metrics::counter!("cache_stale_served_total", "cache" => cache.clone()),
            too_large: metrics::counter!("cache_values_too_large_total", "cache" => cache.clone()),
            early_refreshes: metrics::counter!("cache_early_refreshes_total", "cache" => cache.clone()),
            invalidated_write: invalidated("write"),
            invalidated_backplane: invalidated("backplane"),
            invalidated_event: invalidated("event"),
            epoch_bumps: invalidated("epoch"),
            evicted_size: evicted("size"),
            evicted_expired: evicted("expired"),
            l1_weight: metrics::gauge!("cache_l1_weight_bytes", "cache" => cache.clone()),
            backplane_up: metrics::gauge!("cache_backplane_up", "cache" => cache),
        }
    }
}
