//! What the cache keeps per key, in L1 and (serialized) in Redis, and the arithmetic of
//! its lifetime: jittered TTLs and XFetch's early refresh.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::Rng;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch: entries move between nodes, so their times are
/// wall-clock times every node reads alike.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// [`now_ms`] as of the kernel's last clock tick (`CLOCK_REALTIME_COARSE`: a few ns
/// instead of tens for a full clock read). Behind the true time by less than one tick
/// (1–10 ms, by the kernel's `HZ`); the L1 hit path judges freshness with it, so an entry
/// can be served as fresh for up to one tick past its TTL.
#[cfg(target_os = "linux")]
pub(crate) fn coarse_now_ms() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let millis = u64::try_from(t.tv_nsec).unwrap_or(0) / 1_000_000;
    secs.saturating_mul(1_000).saturating_add(millis)
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn coarse_now_ms() -> u64 {
    now_ms()
}

/// The format of a serialized entry; one with another format is treated as absent.
const FORMAT: u32 = 1;

/// One cached value (or a remembered "not found") with its lifetime.
#[derive(Debug)]
pub(crate) struct Entry<V> {
    /// `None`: the loader said there is no such value (negative entry).
    pub value: Option<V>,
    /// When it was loaded (ms since the epoch).
    pub loaded_at: u64,
    /// Served as fresh until then.
    pub fresh_until: u64,
    /// Served as a fail-safe fallback until then; dropped afterwards.
    pub hard_until: u64,
    /// How long its load took (XFetch's δ), ms.
    pub load_ms: u64,
    /// The node's invalidation epoch when it entered L1; an older one is stale.
    pub epoch: u64,
    /// Serialized size plus key length, for L1's weight bound.
    pub weight: u32,
}

impl<V> Entry<V> {
    pub fn is_fresh(&self, now: u64, epoch: u64) -> bool {
        now < self.fresh_until && self.epoch == epoch
    }

    pub fn is_usable(&self, now: u64) -> bool {
        now < self.hard_until
    }

    /// XFetch (Vattani et al.): refresh early when `now + δ·β·(−ln r) ≥ expiry`, r uniform in
    /// (0, 1]; the closer the expiry and the slower the load, the likelier.
    pub fn wants_early_refresh(&self, now: u64, beta: f64) -> bool {
        if beta <= 0.0 || self.value.is_none() {
            return false;
        }
        // −ln r exceeds 40 with probability e^−40: farther from expiry than that, no draw.
        let reach = (self.load_ms.max(1) as f64) * beta * 40.0;
        if (now as f64) + reach < self.fresh_until as f64 {
            return false;
        }
        let r: f64 = rand::thread_rng().gen_range(f64::MIN_POSITIVE..=1.0);
        let ahead = (self.load_ms.max(1) as f64) * beta * -r.ln();
        now as f64 + ahead >= self.fresh_until as f64
    }
}

/// A TTL drawn uniformly from `ttl × (1 ± jitter)`.
pub fn jittered(ttl: Duration, jitter: f64) -> Duration {
    if jitter <= 0.0 {
        return ttl;
    }
    let factor = rand::thread_rng().gen_range((1.0 - jitter)..=(1.0 + jitter));
    ttl.mul_f64(factor)
}

#[derive(Serialize)]
struct StoredRef<'a, V> {
    format: u32,
    value: Option<&'a V>,
    loaded_at: u64,
    fresh_until: u64,
    hard_until: u64,
    load_ms: u64,
}

#[derive(Deserialize)]
struct Stored<V> {
    format: u32,
    value: Option<V>,
    loaded_at: u64,
    fresh_until: u64,
    hard_until: u64,
    load_ms: u64,
}

/// The serialized form kept in Redis (JSON: readable with `redis-cli GET`).
pub(crate) fn encode<V: Serialize>(entry: &Entry<V>) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&StoredRef {
        format: FORMAT,
        value: entry.value.as_ref(),
        loaded_at: entry.loaded_at,
        fresh_until: entry.fresh_until,
        hard_until: entry.hard_until,
        load_ms: entry.load_ms,
    })
}

/// Reads a serialized entry; `None` for another format or bytes that do not decode (a
/// value type changed under a running cache is a miss, not an error).
pub(crate) fn decode<V: DeserializeOwned>(
    bytes: &[u8],
    key_len: usize,
    epoch: u64,
) -> Option<Entry<V>> {
    let stored: Stored<V> = serde_json::from_slice(bytes).ok()?;
    if stored.format != FORMAT {
        return None;
    }
    Some(Entry {
        value: stored.value,
        loaded_at: stored.loaded_at,
        fresh_until: stored.fresh_until,
        hard_until: stored.hard_until,
        load_ms: stored.load_ms,
        epoch,
        weight: weight(bytes.len(), key_len),
    })
}

pub(crate) fn weight(bytes: usize, key_len: usize) -> u32 {
    u32::try_from(bytes.saturating_add(key_len)).unwrap_or(u32::MAX)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_jittered_ttl_stays_within_its_band(ttl_ms in 1u64..10_000_000, jitter in 0.0f64..0.5) {
            let ttl = Duration::from_millis(ttl_ms);
            let drawn = jittered(ttl, jitter);
            let low = ttl.mul_f64(1.0 - jitter);
            let high = ttl.mul_f64(1.0 + jitter);
            prop_assert!(drawn >= low.saturating_sub(Duration::from_nanos(1)) && drawn <= high + Duration::from_nanos(1),
                "{drawn:?} outside {low:?}..{high:?}");
        }

        #[test]
        fn jitter_spreads_expiry(ttl_s in 10u64..100_000) {
            let ttl = Duration::from_secs(ttl_s);
            let draws: Vec<Duration> = (0..200).map(|_| jittered(ttl, 0.1)).collect();
            let min = draws.iter().min().copied().unwrap_or_default();
            let max = draws.iter().max().copied().unwrap_or_default();
            // 200 uniform draws over ±10 %: the spread covers most of the 20 % band.
            prop_assert!(max - min > ttl.mul_f64(0.1), "{min:?}..{max:?} for {ttl:?}");
            let below = draws.iter().filter(|d| **d < ttl).count();
            prop_assert!((40..=160).contains(&below), "{below} of 200 below the ttl");
        }
    }

    fn entry(load_ms: u64, fresh_until: u64) -> Entry<u8> {
        Entry {
            value: Some(1),
            loaded_at: 0,
            fresh_until,
            hard_until: fresh_until * 2,
            load_ms,
            epoch: 0,
            weight: 1,
        }
    }

    #[test]
    fn early_refresh_grows_likelier_as_expiry_nears() {
        let e = entry(100, 10_000);
        let share = |now: u64| {
            (0..10_000)
                .filter(|_| e.wants_early_refresh(now, 1.0))
                .count()
        };
        // −ln r exceeds x with probability e^−x: far away (x = 50) never, at 100 ms left
        // (x = 1) about 37 %, at the expiry always.
        assert_eq!(share(5_000), 0);
        let near = share(9_900);
        assert!((3_000..4_400).contains(&near), "{near}");
        assert_eq!(share(10_000), 10_000);
        assert_eq!(
            (0..1000)
                .filter(|_| e.wants_early_refresh(9_999, 0.0))
                .count(),
            0
        );
    }

    #[test]
    fn the_coarse_clock_is_never_ahead_and_at_most_a_tick_behind() {
        for _ in 0..1_000 {
            let before = now_ms();
            let coarse = coarse_now_ms();
            let after = now_ms();
            assert!(coarse <= after, "coarse {coarse} ahead of {after}");
            assert!(coarse + 20 >= before, "coarse {coarse} far behind {before}");
        }
    }

    #[test]
    fn an_entry_round_trips_and_another_format_is_a_miss() {
        let e = entry(3, 40);
        let bytes = encode(&e).unwrap();
        let back: Entry<u8> = decode(&bytes, 2, 7).unwrap();
        assert_eq!(
            (
                back.value,
                back.fresh_until,
                back.hard_until,
                back.load_ms,
                back.epoch
            ),
            (Some(1), 40, 80, 3, 7)
        );
        let other = String::from_utf8(bytes)
            .unwrap()
            .replace("\"format\":1", "\"format\":2");
        assert!(decode::<u8>(other.as_bytes(), 2, 0).is_none());
        assert!(
            decode::<String>(&encode(&e).unwrap(), 2, 0).is_none(),
            "a value of another type is a miss"
        );
    }
}
