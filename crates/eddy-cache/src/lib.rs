//! Eddy's two-level cache.
//!
//! - **L1** in the process ([`moka`]), bounded by weight in bytes; **L2** shared by every
//!   node ([`L2`], with [`RedisL2`]). Without Redis ([`Cache::local`]) it is L1 alone.
//! - **One load per key**: callers of a key wait on one load in the process, and across
//!   nodes a Redis lease (`SET NX PX` with a token) lets one node run the loader while
//!   the others wait to be told, over the backplane, that the value landed (with a
//!   slow poll of Redis in case the message is lost); a holder that dies is replaced
//!   when its lease expires.
//! - **Early refresh** (XFetch): a hot entry is reloaded in the background shortly before
//!   it expires, so no caller waits for it.
//! - **Fail-safe**: a failed or slow load leaves the stale value in service until its hard
//!   expiry, and the load finishes in the background; Redis calls have a timeout and a
//!   breaker, so Redis down or slow costs callers nothing but L2 hits.
//! - **Invalidation across nodes**: writes ([`Cache::set`], [`Cache::invalidate`])
//!   clear both levels and tell every node on a Redis pub/sub channel (versioned
//!   messages, a node's own ignored); when the subscription drops, every L1 entry
//!   becomes stale (an epoch bump) instead of trusting that nothing was missed. Events
//!   can invalidate too ([`Source::Event`]), for writers that do not use the cache.
//!
//! Staleness bounds are in `docs/cache.md`.

mod cache;
mod config;
mod entry;
mod l2;
mod metrics;

pub use cache::{BoxError, Cache, CacheError, CacheStats, Source};
pub use config::CacheConfig;
pub use entry::jittered;
pub use l2::{L2Error, Messages, Pinger, RedisL2, L2};
