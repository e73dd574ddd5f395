//! The cache: L1 in this process, L2 shared, one load per key across nodes.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use eddy_resilience::{CircuitBreaker, CircuitBreakerConfig};
use futures::StreamExt;
use moka::notification::RemovalCause;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::CacheConfig;
use crate::entry::{self, coarse_now_ms, jittered, now_ms, Entry};
use crate::l2::{L2Error, L2};
use crate::metrics::Metrics;

/// The error a loader's failure becomes; shared by every caller that waited on the load.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why [`Cache::get_or_load`] has no value to give: the loader failed or was too slow,
/// and no stale value was left to fall back on.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    #[error("cache {cache}: loading {key:?} failed: {source}")]
    Load {
        cache: String,
        key: String,
        source: Arc<BoxError>,
    },
    #[error("cache {cache}: loading {key:?} took longer than {after:?}")]
    Timeout {
        cache: String,
        key: String,
        after: Duration,
    },
    #[error("cache {cache}: the load of {key:?} stopped without an answer")]
    Abandoned { cache: String, key: String },
    #[error("cache settings: {0}")]
    Config(String),
}

/// What a load left for the callers waiting on it.
#[derive(Debug)]
struct Loaded<V> {
    entry: Arc<Entry<V>>,
    /// The loader failed and this is the fail-safe value.
    stale: bool,
    /// The loader produced it (not L2).
    from_loader: bool,
}

type FlightResult<V> = Option<Result<Loaded<V>, CacheError>>;

/// A backplane message. `v` versions the format: a node ignores messages of a format
/// it does not know, and its own.
#[derive(Debug, Serialize, Deserialize)]
struct Message {
    v: u32,
    node: String,
    op: Op,
    key: String,
    /// When the sender wrote the key (its clock, ms since the epoch).
    at: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Op {
    /// The key was written: drop it from L1.
    Invalidate,
    /// A value landed in L2: nodes waiting on the key's lease can read it.
    Loaded,
}

const MESSAGE_FORMAT: u32 = 1;

/// Lock stripes per cache (see `Inner::stripes`).
const STRIPES: usize = 64;

/// Write records a node keeps (the newest; older ones raise the floor).
const WRITES_KEPT_MAX: u64 = 100_000;

/// Writes waiting in the background for Redis to take them, at most.
const WRITE_RETRIES_MAX: usize = 1024;

/// Counts since the cache was built (the same events as its metrics, readable in
/// process: moka has none of its own).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups answered from L1 while fresh (values and remembered "not found").
    pub l1_hits: u64,
    /// Loads that found a fresh value in L2.
    pub l2_hits: u64,
    /// Loader calls.
    pub loads: u64,
    /// Stale values served (fail-safe).
    pub stale_served: u64,
    /// Lookups that joined a load already running in this process.
    pub coalesced: u64,
    /// Lookups answered by a loader call (their own or one they joined).
    pub answered_by_loader: u64,
    /// Lookups answered from L2 (by their own read or one they joined).
    pub answered_by_l2: u64,
}

#[derive(Debug, Default)]
struct Counts {
    l1_hits: AtomicU64,
    l2_hits: AtomicU64,
    loads: AtomicU64,
    stale_served: AtomicU64,
    coalesced: AtomicU64,
    answered_by_loader: AtomicU64,
    answered_by_l2: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Where an invalidation came from (the `source` label of `cache_invalidations_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// This node wrote the key.
    Write,
    /// An event said the key changed (covers writers that do not use the cache).
    Event,
}

/// A two-level cache of `V`s by string key. Cheap to clone; clones share everything.
///
/// Reads: a fresh L1 entry is returned at once (and, when XFetch says so, reloaded in the
/// background first); otherwise one load per key runs — L2, then, under a Redis lease
/// that makes it one load across nodes, the loader — and every caller of the key waits
/// on it. A caller holding a stale value waits only `soft_timeout` before getting the
/// stale value; a failed load leaves the stale value in service until its hard expiry.
/// Redis trouble never reaches callers: L2 calls have a timeout and a breaker, and the
/// cache runs on L1 and the loader meanwhile.
pub struct Cache<V> {
    inner: Arc<Inner<V>>,
}

impl<V> Clone for Cache<V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<V> std::fmt::Debug for Cache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("name", &self.inner.config.name)
            .field("node", &self.inner.node)
            .field("l2", &self.inner.l2.as_ref().map(|l2| &l2.store))
            .finish()
    }
}

struct Shared {
    store: Arc<dyn L2>,
    breaker: CircuitBreaker,
    timeout: Duration,
}

struct Inner<V> {
    config: CacheConfig,
    /// `{key_prefix}:{name}`, the start of every Redis key of this cache.
    key_base: String,
    node: String,
    l1: moka::sync::Cache<String, Arc<Entry<V>>>,
    l2: Option<Shared>,
    /// Bumped when the backplane may have missed messages: older L1 entries are stale.
    epoch: AtomicU64,
    backplane_connected: AtomicBool,
    flights: Mutex<HashMap<String, watch::Receiver<FlightResult<V>>>>,
    /// Flights waiting on another node's lease, woken by its `Loaded` message.
    waiting: Mutex<HashMap<String, Arc<Notify>>>,
    /// Keys written lately, with when: a load that began before is not stored, and an L2
    /// entry loaded before is not trusted. Bounded by time and count.
    writes: moka::sync::Cache<String, u64>,
    /// Raised to the write time of a record the `writes` bound pushed out: a load that
    /// began before it is treated as overtaken, whatever its key.
    writes_floor: Arc<AtomicU64>,
    /// Per-key stripes serialising "record a write + drop L1" against "check for a
    /// write + insert into L1", so an old value cannot slip in after an invalidation.
    stripes: Vec<Mutex<()>>,
    /// Bounds the background retries of writes Redis did not take.
    retries: Arc<tokio::sync::Semaphore>,
    counts: Counts,
    metrics: Metrics,
    _stop: DropGuard,
}

struct Keys {
    value: String,
    lease: String,
}

impl<V> Loaded<V> {
    /// A value found fresh in L2.
    fn from_l2(entry: Arc<Entry<V>>) -> Self {
        Self {
            entry,
            stale: false,
            from_loader: false,
        }
    }
}

impl<V> Inner<V> {
    fn keys(&self, key: &str) -> Keys {
        let join = |kind: &str| {
            let mut joined = String::with_capacity(self.key_base.len() + kind.len() + key.len());
            joined.push_str(&self.key_base);
            joined.push_str(kind);
            joined.push_str(key);
            joined
        };
        Keys {
            value: join(":v:"),
            lease: join(":lease:"),
        }
    }

    fn channel(config: &CacheConfig) -> String {
        format!("{}:{}:bus", config.key_prefix, config.name)
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn bump_epoch(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.metrics.epoch_bumps.increment(1);
    }

    fn flights(&self) -> MutexGuard<'_, HashMap<String, watch::Receiver<FlightResult<V>>>> {
        self.flights.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn waiting(&self) -> MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<V: Send + Sync + 'static> Inner<V> {
    /// Records that `key` was written at `at`: drops it from L1 and detaches a load in
    /// progress, so that the next read starts a new one.
    fn note_write(&self, key: &str, at: u64) {
        {
            let _stripe = self.stripe(key);
            let at = self.writes.get(key).map_or(at, |known| known.max(at));
            self.writes.insert(key.to_owned(), at);
            self.l1.invalidate(key);
        }
        self.flights().remove(key);
    }

    fn stripe(&self, key: &str) -> MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        let index = (hasher.finish() % self.stripes.len() as u64) as usize;
        self.stripes[index]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The time of the last write of `key` this node knows of (or the floor left by
    /// write records the bound pushed out).
    fn written_at(&self, key: &str) -> Option<u64> {
        let floor = self.writes_floor.load(Ordering::Acquire);
        match self.writes.get(key) {
            Some(at) => Some(at.max(floor)),
            None => (floor > 0).then_some(floor),
        }
    }

    /// A call to L2 through its timeout and breaker.
    async fn l2_call<T>(
        &self,
        call: impl Future<Output = Result<T, L2Error>>,
    ) -> Result<T, L2Error> {
        let Some(l2) = &self.l2 else {
            return Err(L2Error::BreakerOpen);
        };
        let permit = l2.breaker.try_acquire().map_err(|_| L2Error::BreakerOpen)?;
        let outcome = match tokio::time::timeout(l2.timeout, call).await {
            Ok(outcome) => outcome,
            Err(_) => Err(L2Error::Timeout(l2.timeout)),
        };
        permit.record(outcome.is_err());
        if outcome.is_err() {
            self.metrics.l2_errors.increment(1);
        }
        outcome
    }

    /// A backplane message from this node, encoded.
    fn message(&self, op: Op, key: &str, at: u64) -> Option<Vec<u8>> {
        serde_json::to_vec(&Message {
            v: MESSAGE_FORMAT,
            node: self.node.clone(),
            op,
            key: key.to_owned(),
            at,
        })
        .ok()
    }

    async fn publish(&self, op: Op, key: &str, at: u64) {
        let Some(l2) = &self.l2 else { return };
        let Some(bytes) = self.message(op, key, at) else {
            return;
        };
        let channel = Self::channel(&self.config);
        if let Err(error) = self.l2_call(l2.store.publish(&channel, &bytes)).await {
            tracing::debug!(cache = %self.config.name, %error, "backplane publish failed");
        }
    }

    fn handle_message(&self, bytes: &[u8]) {
        let Ok(message) = serde_json::from_slice::<Message>(bytes) else {
            return;
        };
        if message.v != MESSAGE_FORMAT || message.node == self.node {
            return;
        }
        match message.op {
            Op::Invalidate => {
                self.note_write(&message.key, message.at);
                self.metrics.invalidated_backplane.increment(1);
            }
            Op::Loaded => {
                if let Some(notify) = self.waiting().get(&message.key) {
                    notify.notify_waiters();
                }
            }
        }
    }
}

enum InL2<V> {
    Fresh(Arc<Entry<V>>),
    Stale(Arc<Entry<V>>),
    Miss,
}

impl<V> Inner<V>
where
    V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    /// Puts a written value into L1.
    fn insert_l1(&self, key: &str, entry: Arc<Entry<V>>) {
        let _stripe = self.stripe(key);
        self.l1.insert(key.to_owned(), entry);
        self.metrics.l1_weight.set(self.l1.weighted_size() as f64);
    }

    /// Puts a loaded `entry` into L1 unless a write this node knows of came at or after
    /// its load began; says whether it did.
    fn insert_unless_overtaken(&self, key: &str, entry: Arc<Entry<V>>) -> bool {
        let _stripe = self.stripe(key);
        if self.written_at(key).is_some_and(|at| at >= entry.loaded_at) {
            return false;
        }
        self.l1.insert(key.to_owned(), entry);
        self.metrics.l1_weight.set(self.l1.weighted_size() as f64);
        true
    }

    /// Reads `key` from L2. `newer_than`: only an entry loaded after then counts as fresh
    /// (an early refresh wants a newer value than the one it has).
    async fn read_l2(
        &self,
        key: &str,
        keys: &Keys,
        newer_than: Option<u64>,
        epoch: u64,
    ) -> InL2<V> {
        let Some(l2) = &self.l2 else {
            return InL2::Miss;
        };
        let Ok(Some(bytes)) = self.l2_call(l2.store.get(&keys.value)).await else {
            self.metrics.l2_miss.increment(1);
            return InL2::Miss;
        };
        let Some(found) = entry::decode::<V>(&bytes, key.len(), epoch) else {
            self.metrics.l2_miss.increment(1);
            return InL2::Miss;
        };
        let now = now_ms();
        if newer_than.is_some_and(|at| found.loaded_at <= at) || !found.is_usable(now) {
            self.metrics.l2_miss.increment(1);
            return InL2::Miss;
        }
        let found = Arc::new(found);
        if now < found.fresh_until {
            // Checks for a write that overtook it, under the key's stripe.
            if !self.insert_unless_overtaken(key, found.clone()) {
                self.metrics.l2_miss.increment(1);
                return InL2::Miss;
            }
            bump(&self.counts.l2_hits);
            if found.value.is_some() {
                self.metrics.l2_hit.increment(1);
            } else {
                self.metrics.l2_negative.increment(1);
            }
            InL2::Fresh(found)
        } else if self.written_at(key).is_some_and(|at| found.loaded_at <= at) {
            self.metrics.l2_miss.increment(1);
            InL2::Miss
        } else {
            self.metrics.l2_stale.increment(1);
            InL2::Stale(found)
        }
    }

    fn new_entry(
        &self,
        key: &str,
        value: Option<V>,
        loaded_at: u64,
        load_ms: u64,
        epoch: u64,
    ) -> (Entry<V>, Option<Vec<u8>>) {
        let now = now_ms();
        let (ttl, hard) = if value.is_some() {
            (
                jittered(self.config.ttl, self.config.ttl_jitter),
                self.config.hard_ttl,
            )
        } else {
            let ttl = jittered(self.config.negative_ttl, self.config.ttl_jitter);
            (ttl, ttl)
        };
        let mut entry = Entry {
            value,
            loaded_at,
            fresh_until: now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)),
            hard_until: now.saturating_add(u64::try_from(hard.as_millis()).unwrap_or(u64::MAX)),
            load_ms,
            epoch,
            weight: 0,
        };
        match entry::encode(&entry) {
            Ok(bytes) if bytes.len() <= self.config.value_bytes_max => {
                entry.weight = entry::weight(bytes.len(), key.len());
                (entry, Some(bytes))
            }
            Ok(_) => {
                self.metrics.too_large.increment(1);
                (entry, None)
            }
            Err(error) => {
                tracing::warn!(cache = %self.config.name, %error, "a value does not serialize; not cached");
                (entry, None)
            }
        }
    }

    /// Stores a loaded entry in both levels unless a write overtook its load; says
    /// whether it did.
    async fn store(
        &self,
        key: &str,
        keys: &Keys,
        entry: Entry<V>,
        bytes: Option<Vec<u8>>,
    ) -> (Arc<Entry<V>>, bool) {
        let entry = Arc::new(entry);
        let Some(bytes) = bytes else {
            return (entry, false);
        };
        if !self.insert_unless_overtaken(key, entry.clone()) {
            return (entry, false); // a write came during the load: answer, do not keep
        }
        if let Some(l2) = &self.l2 {
            let ttl = Duration::from_millis(entry.hard_until.saturating_sub(now_ms()).max(1));
            let _ = self.l2_call(l2.store.set(&keys.value, &bytes, ttl)).await;
        }
        (entry, true)
    }

    /// After a load: gives the lease back and, if the value was stored, wakes the nodes
    /// waiting on it — on a task of its own, so the callers have their answer first.
    fn finish_in_background(
        self: &Arc<Self>,
        key: &str,
        keys: &Keys,
        lease: Option<String>,
        stored: bool,
    ) {
        if self.l2.is_none() || (lease.is_none() && !stored) {
            return;
        }
        let inner = self.clone();
        let key = key.to_owned();
        let lease_key = keys.lease.clone();
        tokio::spawn(async move {
            let Some(l2) = &inner.l2 else { return };
            if let Some(token) = lease {
                let _ = inner
                    .l2_call(l2.store.release_lease(&lease_key, &token))
                    .await;
            }
            if stored {
                inner.publish(Op::Loaded, &key, now_ms()).await;
            }
        });
    }

    /// Tells L2 and the other nodes that `key` was written at `at`: stores `value` (the
    /// new serialized entry) or deletes the old one, and publishes the invalidation.
    /// These calls skip the breaker (a write must not be dropped because reads failed
    /// lately) and, if Redis does not take them, are retried in the background until the
    /// entry's TTL has passed — after which no node holds the old value as fresh.
    async fn announce_write(self: &Arc<Self>, key: &str, at: u64, value: Option<Vec<u8>>) {
        if self.l2.is_none() || self.try_announce(key, at, value.as_deref()).await {
            return;
        }
        let Ok(permit) = self.retries.clone().try_acquire_owned() else {
            tracing::warn!(cache = %self.config.name, key, "too many writes waiting for Redis; this one is bounded by its TTL");
            return;
        };
        let inner = self.clone();
        let key = key.to_owned();
        let until = Instant::now() + self.config.ttl.mul_f64(1.0 + self.config.ttl_jitter);
        tokio::spawn(async move {
            let _permit = permit;
            let mut pause = Duration::from_millis(50);
            while Instant::now() < until {
                tokio::time::sleep(pause).await;
                if inner.try_announce(&key, at, None).await {
                    return;
                }
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        });
    }

    /// One attempt at [`Inner::announce_write`]'s calls, both at once.
    async fn try_announce(&self, key: &str, at: u64, value: Option<&[u8]>) -> bool {
        let Some(l2) = &self.l2 else { return true };
        let keys = self.keys(key);
        let Some(bytes) = self.message(Op::Invalidate, key, at) else {
            return false;
        };
        let channel = Self::channel(&self.config);
        let store = async {
            let call = match value {
                Some(entry) => l2.store.set(&keys.value, entry, self.config.hard_ttl),
                None => l2.store.delete(&keys.value),
            };
            tokio::time::timeout(l2.timeout, call).await
        };
        let publish = tokio::time::timeout(l2.timeout, l2.store.publish(&channel, &bytes));
        let (stored, published) = futures::join!(store, publish);
        let ok = matches!(stored, Ok(Ok(()))) && matches!(published, Ok(Ok(())));
        if !ok {
            self.metrics.l2_errors.increment(1);
        }
        ok
    }

    /// One load of `key`: L2, then the loader under the cross-node lease.
    async fn fill<Fut, E>(
        self: &Arc<Self>,
        key: &str,
        load: Fut,
        stale: Option<Arc<Entry<V>>>,
        early: bool,
    ) -> Result<Loaded<V>, CacheError>
    where
        Fut: Future<Output = Result<Option<V>, E>>,
        E: Into<BoxError>,
    {
        let keys = self.keys(key);
        // The epoch when the load began: if the backplane is lost during the load, what
        // it brings is stale at once.
        let epoch = self.epoch();
        let newer_than = early.then(|| stale.as_ref().map(|s| s.loaded_at)).flatten();
        let mut stale = stale;
        let mut lease = None;
        if let Some(l2) = &self.l2 {
            match self.read_l2(key, &keys, newer_than, epoch).await {
                InL2::Fresh(entry) => return Ok(Loaded::from_l2(entry)),
                InL2::Stale(entry) => stale = stale.or(Some(entry)),
                InL2::Miss => {}
            }
            let token = uuid::Uuid::now_v7().to_string();
            let notify = Arc::new(Notify::new());
            self.waiting().insert(key.to_owned(), notify.clone());
            let _unregister = Unregister {
                inner: Arc::downgrade(self),
                key,
                notify: &notify,
            };
            // Past the lease's life, one more attempt takes it over from a holder that
            // died.
            let give_up = Instant::now() + self.config.lease_ttl + self.config.lease_poll;
            let mut counted = false;
            loop {
                let notified = notify.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                let ttl = self.config.lease_ttl;
                match self
                    .l2_call(l2.store.try_lease(&keys.lease, &token, ttl))
                    .await
                {
                    Ok(true) => {
                        // Another node may have stored the value between our read and
                        // our lease.
                        if let InL2::Fresh(entry) =
                            self.read_l2(key, &keys, newer_than, epoch).await
                        {
                            self.finish_in_background(key, &keys, Some(token), false);
                            return Ok(Loaded::from_l2(entry));
                        }
                        lease = Some(token);
                        break;
                    }
                    Ok(false) => {
                        if !counted {
                            self.metrics.coalesced_remote.increment(1);
                            counted = true;
                        }
                        let poll = self.config.lease_poll;
                        tokio::select! {
                            _ = &mut notified => {}
                            _ = tokio::time::sleep(poll) => {}
                        }
                        if let InL2::Fresh(entry) =
                            self.read_l2(key, &keys, newer_than, epoch).await
                        {
                            return Ok(Loaded::from_l2(entry));
                        }
                        if Instant::now() >= give_up {
                            break; // the holder neither finished nor let go: load ourselves
                        }
                    }
                    Err(_) => break, // no Redis: this node's single flight is all there is
                }
            }
        }

        let loaded_at = now_ms();
        let started = Instant::now();
        bump(&self.counts.loads);
        let outcome = tokio::time::timeout(self.config.load_timeout, load).await;
        let took = started.elapsed();
        self.metrics.load_duration.record(took.as_secs_f64());
        let failure = match outcome {
            Ok(Ok(value)) => {
                self.metrics.loads_ok.increment(1);
                let took_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
                let (entry, bytes) = self.new_entry(key, value, loaded_at, took_ms, epoch);
                let (entry, stored) = self.store(key, &keys, entry, bytes).await;
                self.finish_in_background(key, &keys, lease, stored);
                return Ok(Loaded {
                    entry,
                    stale: false,
                    from_loader: true,
                });
            }
            Ok(Err(error)) => {
                self.metrics.loads_failed.increment(1);
                CacheError::Load {
                    cache: self.config.name.clone(),
                    key: key.to_owned(),
                    source: Arc::new(error.into()),
                }
            }
            Err(_) => {
                self.metrics.loads_timed_out.increment(1);
                CacheError::Timeout {
                    cache: self.config.name.clone(),
                    key: key.to_owned(),
                    after: self.config.load_timeout,
                }
            }
        };
        self.finish_in_background(key, &keys, lease, false);
        tracing::warn!(cache = %self.config.name, key, error = %failure, stale = stale.is_some(), "cache load failed");
        match stale {
            Some(old) if old.is_usable(now_ms()) => {
                // Fail-safe: the stale value serves again for a short while, so the
                // failing store is not asked on every request.
                let now = now_ms();
                let throttle =
                    u64::try_from(self.config.fail_safe_throttle.as_millis()).unwrap_or(u64::MAX);
                let again = Arc::new(Entry {
                    value: old.value.clone(),
                    loaded_at: old.loaded_at,
                    fresh_until: now.saturating_add(throttle).min(old.hard_until),
                    hard_until: old.hard_until,
                    load_ms: old.load_ms,
                    epoch,
                    weight: old.weight,
                });
                self.insert_unless_overtaken(key, again.clone());
                Ok(Loaded {
                    entry: again,
                    stale: true,
                    from_loader: false,
                })
            }
            _ => Err(failure),
        }
    }
}

/// Takes a flight's entry out of the waiting map when it stops waiting.
struct Unregister<'a, V> {
    inner: Weak<Inner<V>>,
    key: &'a str,
    notify: &'a Arc<Notify>,
}

impl<V> Drop for Unregister<'_, V> {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade() {
            let mut waiting = inner.waiting();
            if waiting
                .get(self.key)
                .is_some_and(|n| Arc::ptr_eq(n, self.notify))
            {
                waiting.remove(self.key);
            }
        }
    }
}

/// Takes a flight out of the flight map when its load ends, however it ends.
struct Landed<V> {
    inner: Arc<Inner<V>>,
    key: String,
    receiver: watch::Receiver<FlightResult<V>>,
}

impl<V> Drop for Landed<V> {
    fn drop(&mut self) {
        let mut flights = self.inner.flights();
        if flights
            .get(&self.key)
            .is_some_and(|r| r.same_channel(&self.receiver))
        {
            flights.remove(&self.key);
        }
    }
}

impl<V> Cache<V>
where
    V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    /// An L1-only cache (the embedded defaults: no Redis).
    pub fn local(config: CacheConfig) -> Result<Self, CacheError> {
        Self::build(config, None)
    }

    /// A two-level cache over `l2`; starts the backplane subscription (needs a Tokio
    /// runtime). Redis need not be up: the cache works without it and picks it up.
    pub fn with_l2(config: CacheConfig, l2: Arc<dyn L2>) -> Result<Self, CacheError> {
        Self::build(config, Some(l2))
    }

    /// A two-level cache over the Redis at `url` (`redis://host:port/db`).
    pub fn redis(config: CacheConfig, url: &str) -> Result<Self, CacheError> {
        let l2 = crate::RedisL2::new(url, config.l2_timeout.max(Duration::from_millis(200)))
            .map_err(|e| CacheError::Config(e.to_string()))?;
        Self::with_l2(config, Arc::new(l2))
    }

    fn build(config: CacheConfig, l2: Option<Arc<dyn L2>>) -> Result<Self, CacheError> {
        config.validate().map_err(CacheError::Config)?;
        let metrics = Metrics::new(&config.name);
        let evictions = metrics.clone();
        let l1 = moka::sync::Cache::builder()
            .max_capacity(config.l1_bytes_max)
            .weigher(|_key: &String, entry: &Arc<Entry<V>>| entry.weight.max(1))
            // Every entry's hard expiry is at most `hard_ttl` after it entered (values;
            // a "not found" lives shorter): one TTL for all is free on the read path, where
            // a per-entry expiry cost a sixth of a hit. An entry whose own hard expiry
            // comes sooner is never served past it (`is_usable`) and is replaced by the
            // load its next lookup starts; until then (or until the weight bound evicts
            // it) it holds its weight in L1.
            .time_to_live(
                config
                    .hard_ttl
                    .max(config.negative_ttl.mul_f64(1.0 + config.ttl_jitter)),
            )
            .eviction_listener(move |_key, _value, cause| match cause {
                RemovalCause::Size => evictions.evicted_size.increment(1),
                RemovalCause::Expired => evictions.evicted_expired.increment(1),
                RemovalCause::Explicit | RemovalCause::Replaced => {}
            })
            .build();
        let writes_floor = Arc::new(AtomicU64::new(0));
        let floor = writes_floor.clone();
        let writes = moka::sync::Cache::builder()
            .max_capacity(WRITES_KEPT_MAX)
            // LRU, not TinyLFU: a new write record must never lose to older ones.
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .eviction_listener(move |_key, at: u64, cause| {
                if cause == RemovalCause::Size {
                    floor.fetch_max(at, Ordering::AcqRel);
                }
            })
            .time_to_live(
                config.load_timeout
                    + config.lease_ttl
                    + config.ttl.mul_f64(1.0 + config.ttl_jitter),
            )
            .build();
        let stop = CancellationToken::new();
        let shared = l2.map(|store| Shared {
            breaker: CircuitBreaker::new(CircuitBreakerConfig {
                name: format!("cache-{}-redis", config.name),
                window: config.l2_breaker_window,
                failures_max: config.l2_breaker_failures,
                open_duration: config.l2_breaker_open,
                slow_call: config.l2_timeout,
                ..CircuitBreakerConfig::default()
            }),
            timeout: config.l2_timeout,
            store,
        });
        let inner = Arc::new(Inner {
            key_base: format!("{}:{}", config.key_prefix, config.name),
            node: uuid::Uuid::now_v7().to_string(),
            l1,
            epoch: AtomicU64::new(0),
            backplane_connected: AtomicBool::new(false),
            flights: Mutex::new(HashMap::new()),
            waiting: Mutex::new(HashMap::new()),
            writes,
            writes_floor,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            retries: Arc::new(tokio::sync::Semaphore::new(WRITE_RETRIES_MAX)),
            counts: Counts::default(),
            metrics,
            l2: shared,
            _stop: stop.clone().drop_guard(),
            config,
        });
        if let Some(l2) = &inner.l2 {
            tokio::spawn(backplane(Arc::downgrade(&inner), l2.store.clone(), stop));
        }
        Ok(Self { inner })
    }

    /// The cache's settings.
    pub fn config(&self) -> &CacheConfig {
        &self.inner.config
    }

    /// Whether the backplane's subscription is up (always false without L2).
    pub fn backplane_connected(&self) -> bool {
        self.inner.backplane_connected.load(Ordering::Acquire)
    }

    /// The value of `key`: from L1, L2, or the future `loader` makes (`Ok(None)`: there
    /// is none, cached for `negative_ttl`).
    ///
    /// `loader` is called only when this lookup starts a load, before the load looks in
    /// L2: it may borrow, and should only gather what the load needs (clone a pool
    /// handle, own the key) into the future it returns, which does the work. A hit costs
    /// nothing of it. The load runs on a task of its own, so a caller that gives up
    /// never cancels a load others wait on.
    pub async fn get_or_load<F, Fut, E>(
        &self,
        key: &str,
        loader: F,
    ) -> Result<Option<V>, CacheError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        let inner = &self.inner;
        // The hit path's clock: see `coarse_now_ms` for what it costs in freshness.
        let now = coarse_now_ms();
        let stale = match inner.l1.get(key) {
            Some(found) if found.is_fresh(now, inner.epoch()) => {
                bump(&inner.counts.l1_hits);
                if found.value.is_some() {
                    inner.metrics.l1_hit.increment(1);
                } else {
                    inner.metrics.l1_negative.increment(1);
                }
                if found.wants_early_refresh(now, inner.config.early_refresh_beta) {
                    // Nobody waits on an early refresh: the load runs on its own task.
                    drop(self.flight(key, loader, Some(found.clone()), true));
                }
                return Ok(found.value.clone());
            }
            // Off the hit path: the precise clock, so the caller's later check of the
            // same entry (`wait`) cannot disagree with this one.
            Some(found) if found.is_usable(now_ms()) => {
                inner.metrics.l1_stale.increment(1);
                Some(found)
            }
            _ => {
                inner.metrics.l1_miss.increment(1);
                None
            }
        };
        let flight = self.flight(key, loader, stale.clone(), false);
        // Boxed: the hit path above stays a small future, the wait's state machine is
        // allocated only when it runs.
        Box::pin(self.wait(key, flight, stale)).await
    }

    /// A lookup that L1 did not answer: waits for the key's load (only `soft_timeout`
    /// when a stale value can answer instead).
    async fn wait(
        &self,
        key: &str,
        mut flight: watch::Receiver<FlightResult<V>>,
        stale: Option<Arc<Entry<V>>>,
    ) -> Result<Option<V>, CacheError> {
        let inner = &self.inner;
        let wait = if stale.is_some() {
            inner.config.soft_timeout
        } else {
            // The lease wait, the load, and a margin for the L2 calls around them.
            inner.config.lease_ttl
                + inner.config.lease_poll * 2
                + inner.config.load_timeout
                + inner.config.l2_timeout * 10
        };
        let waited = tokio::time::timeout(wait, flight.wait_for(Option::is_some)).await;
        let outcome = match &waited {
            Ok(Ok(result)) => match result.as_ref() {
                Some(Ok(loaded)) => {
                    if loaded.from_loader {
                        bump(&inner.counts.answered_by_loader);
                    } else if !loaded.stale {
                        bump(&inner.counts.answered_by_l2);
                    }
                    if loaded.stale {
                        inner.metrics.served_stale.increment(1);
                        bump(&inner.counts.stale_served);
                    }
                    return Ok(loaded.entry.value.clone());
                }
                Some(Err(error)) => error.clone(),
                None => self.abandoned(key),
            },
            Ok(Err(_)) => self.abandoned(key),
            Err(_) => CacheError::Timeout {
                cache: inner.config.name.clone(),
                key: key.to_owned(),
                after: wait,
            },
        };
        match stale {
            Some(old) if old.is_usable(now_ms()) => {
                inner.metrics.served_stale.increment(1);
                bump(&inner.counts.stale_served);
                Ok(old.value.clone())
            }
            _ => Err(outcome),
        }
    }

    fn abandoned(&self, key: &str) -> CacheError {
        CacheError::Abandoned {
            cache: self.inner.config.name.clone(),
            key: key.to_owned(),
        }
    }

    /// Joins the load of `key` in progress, or starts one (calling `loader`) on a task of
    /// its own: it runs whether or not anyone still waits, and no caller has to keep
    /// polling for the others to get their answer.
    fn flight<F, Fut, E>(
        &self,
        key: &str,
        loader: F,
        stale: Option<Arc<Entry<V>>>,
        early: bool,
    ) -> watch::Receiver<FlightResult<V>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        let mut flights = self.inner.flights();
        if let Some(running) = flights.get(key) {
            if !early {
                self.inner.metrics.coalesced_local.increment(1);
                bump(&self.inner.counts.coalesced);
            }
            return running.clone();
        }
        if early {
            self.inner.metrics.early_refreshes.increment(1);
        }
        let (sender, receiver) = watch::channel(None);
        flights.insert(key.to_owned(), receiver.clone());
        drop(flights);
        let landed = Landed {
            inner: self.inner.clone(),
            key: key.to_owned(),
            receiver: receiver.clone(),
        };
        // A loader that panics making its future abandons the load (dropping `landed`
        // and `sender` tells the waiters so) instead of unwinding into the caller.
        let Ok(load) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(loader)) else {
            drop((landed, sender));
            return receiver;
        };
        tokio::spawn(async move {
            // A loader panicking in its future ends the task: `sender` is dropped and the
            // waiters hear the load was abandoned.
            let result = landed.inner.fill(&landed.key, load, stale, early).await;
            let _ = sender.send(Some(result));
            drop(landed);
        });
        receiver
    }

    /// Puts `value` under `key` in both levels and drops it from every other node's L1.
    pub async fn set(&self, key: &str, value: V) {
        let inner = &self.inner;
        let at = now_ms();
        inner.note_write(key, at);
        inner.metrics.invalidated_write.increment(1);
        // The written value is as new as the write itself: one past it, so that it is
        // not mistaken for a load that began before the write.
        let epoch = inner.epoch();
        let (entry, bytes) = inner.new_entry(key, Some(value), at + 1, 1, epoch);
        if bytes.is_some() {
            inner.insert_l1(key, Arc::new(entry));
        }
        inner.announce_write(key, at, bytes).await;
    }

    /// Drops `key` from both levels and from every other node's L1; the next read loads
    /// it. When this returns, this node reads the new value (a writer reads its own
    /// write), whatever Redis does.
    pub async fn invalidate(&self, key: &str, source: Source) {
        let inner = &self.inner;
        let at = now_ms();
        inner.note_write(key, at);
        match source {
            Source::Write => inner.metrics.invalidated_write.increment(1),
            Source::Event => inner.metrics.invalidated_event.increment(1),
        }
        inner.announce_write(key, at, None).await;
    }

    /// What the cache has done so far.
    pub fn stats(&self) -> CacheStats {
        let c = &self.inner.counts;
        let read = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CacheStats {
            l1_hits: read(&c.l1_hits),
            l2_hits: read(&c.l2_hits),
            loads: read(&c.loads),
            stale_served: read(&c.stale_served),
            coalesced: read(&c.coalesced),
            answered_by_loader: read(&c.answered_by_loader),
            answered_by_l2: read(&c.answered_by_l2),
        }
    }

    /// L1's weight (serialized bytes and keys) and entry count, after pending
    /// maintenance.
    pub fn l1_size(&self) -> (u64, u64) {
        self.inner.l1.run_pending_tasks();
        (self.inner.l1.weighted_size(), self.inner.l1.entry_count())
    }
}

/// Keeps the backplane subscription up. Every (re)connection and every loss bumps the
/// epoch: what was said while nobody listened is unknown, so nothing in L1 is trusted
/// past it.
async fn backplane<V: Send + Sync + 'static>(
    inner: Weak<Inner<V>>,
    store: Arc<dyn L2>,
    stop: CancellationToken,
) {
    let (channel, ping_every, name) = match inner.upgrade() {
        Some(inner) => (
            Inner::<V>::channel(&inner.config),
            inner.config.backplane_ping,
            inner.config.name.clone(),
        ),
        None => return,
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        let subscribed = tokio::select! {
            _ = stop.cancelled() => return,
            subscribed = tokio::time::timeout(ping_every, store.subscribe(&channel)) => subscribed,
        };
        if let Ok(Ok((mut messages, mut pinger))) = subscribed {
            backoff = Duration::from_millis(100);
            match inner.upgrade() {
                Some(inner) => {
                    inner.bump_epoch();
                    inner.backplane_connected.store(true, Ordering::Release);
                    inner.metrics.backplane_up.set(1.0);
                }
                None => return,
            }
            tracing::debug!(cache = %name, "backplane subscribed");
            let mut ticks = tokio::time::interval(ping_every);
            ticks.tick().await;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    message = messages.next() => match message {
                        Some(bytes) => match inner.upgrade() {
                            Some(inner) => inner.handle_message(&bytes),
                            None => return,
                        },
                        None => break,
                    },
                    _ = ticks.tick() => {
                        if !matches!(tokio::time::timeout(ping_every, pinger.ping()).await, Ok(Ok(()))) {
                            break;
                        }
                    }
                }
            }
            match inner.upgrade() {
                Some(inner) => {
                    inner.backplane_connected.store(false, Ordering::Release);
                    inner.metrics.backplane_up.set(0.0);
                    inner.bump_epoch();
                }
                None => return,
            }
            tracing::warn!(cache = %name, "backplane lost: every L1 entry is stale until it is back");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
