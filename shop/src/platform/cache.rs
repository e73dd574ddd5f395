//! The read caches of the services (`[cache]`): built from the settings, in-process on
//! embedded defaults, in front of Redis when `cache.redis_url` is set.

use std::future::Future;
use std::time::Duration;

use eddy_cache::{Cache, CacheConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::CacheSettings;

/// The settings of the cache `name` with fresh lifetime `ttl_secs`.
pub fn cache_config(settings: &CacheSettings, name: &str, ttl_secs: u64) -> CacheConfig {
    CacheConfig {
        key_prefix: settings.key_prefix.clone(),
        ttl: Duration::from_secs(ttl_secs),
        hard_ttl: Duration::from_secs(settings.stale_max_secs),
        l1_bytes_max: settings.l1_bytes_max,
        ..CacheConfig::named(name)
    }
}

/// The cache `name`, or `None` when caching is off. Needs a Tokio runtime (the Redis
/// backplane runs on it); Redis need not be up yet.
pub fn build<V>(
    settings: &CacheSettings,
    name: &str,
    ttl_secs: u64,
) -> anyhow::Result<Option<Cache<V>>>
where
    V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    if !settings.enabled {
        return Ok(None);
    }
    let config = cache_config(settings, name, ttl_secs);
    let cache = if settings.redis_url.is_empty() {
        Cache::local(config)?
    } else {
        Cache::redis(config, &settings.redis_url)?
    };
    Ok(Some(cache))
}

/// Drops `key` from `cache` once `tx` commits (never if it does not): invalidated before
/// the commit, a reader could load the old row again and keep it.
pub fn invalidate_on_commit<V>(
    cache: &Option<Cache<V>>,
    tx: &mut eddy_sql::Tx,
    key: &str,
    source: eddy_cache::Source,
) where
    V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    if let Some(cache) = cache.clone() {
        let key = key.to_owned();
        tx.after_commit(move || Box::pin(async move { cache.invalidate(&key, source).await }));
    }
}

/// `key` read through `cache` when there is one, straight from `db` when caching is off:
/// `load` reads it from the database (it owns what it uses, since a load can outlive the
/// request that started it; a cache hit clones nothing).
pub async fn read_through<V, F, Fut>(
    cache: Option<&Cache<V>>,
    db: &eddy_sql::Db,
    key: &str,
    load: F,
) -> Result<Option<V>, crate::problem::ApiError>
where
    V: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
    F: FnOnce(eddy_sql::Db, String) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Option<V>, eddy_core::Error>> + Send + 'static,
{
    match cache {
        Some(cache) => Ok(cache
            .get_or_load(key, || load(db.clone(), key.to_owned()))
            .await?),
        None => Ok(load(db.clone(), key.to_owned()).await?),
    }
}
