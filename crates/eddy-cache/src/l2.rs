//! The second level: a store shared by every node (Redis), behind a small trait, and the
//! backplane the nodes tell each other about writes and finished loads on.

use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use futures::{Stream, StreamExt};
use redis::aio::ConnectionManager;

/// Why a call to the shared level failed. The cache never passes one to its callers: it
/// carries on with L1 and the loader.
#[derive(Debug, thiserror::Error)]
pub enum L2Error {
    #[error("L2 call timed out after {0:?}")]
    Timeout(Duration),
    #[error("the breaker in front of L2 is open")]
    BreakerOpen,
    #[error("L2: {0}")]
    Store(String),
}

/// A stream of backplane messages; it ends when the subscription is lost.
pub type Messages = Pin<Box<dyn Stream<Item = Vec<u8>> + Send>>;

/// The shared level. Keys arrive fully prefixed.
#[async_trait]
pub trait L2: Send + Sync + std::fmt::Debug + 'static {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, L2Error>;
    /// Stores `value` until `ttl` has passed.
    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), L2Error>;
    async fn delete(&self, key: &str) -> Result<(), L2Error>;
    /// Takes the lease `key` with `token` if nobody holds it (`SET NX PX`).
    async fn try_lease(&self, key: &str, token: &str, ttl: Duration) -> Result<bool, L2Error>;
    /// Gives the lease back if `token` still holds it.
    async fn release_lease(&self, key: &str, token: &str) -> Result<(), L2Error>;
    async fn publish(&self, channel: &str, message: &[u8]) -> Result<(), L2Error>;
    /// Subscribes to `channel`: the messages, and a pinger that fails when the
    /// subscription's connection no longer answers.
    async fn subscribe(&self, channel: &str) -> Result<(Messages, Box<dyn Pinger>), L2Error>;
}

/// Checks a subscription's connection is alive.
#[async_trait]
pub trait Pinger: Send {
    async fn ping(&mut self) -> Result<(), L2Error>;
}

/// Redis through the `redis` crate: a multiplexed [`ConnectionManager`] that connects
/// lazily and reconnects by itself (so a Redis that is down at start, or restarts, is
/// picked up without a restart of ours), and one plain connection per subscription.
#[derive(Clone)]
pub struct RedisL2 {
    client: redis::Client,
    manager: ConnectionManager,
}

impl std::fmt::Debug for RedisL2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisL2")
            .field("server", &self.client.get_connection_info().addr())
            .finish()
    }
}

const RELEASE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

impl RedisL2 {
    /// Does not connect: the first call does. `timeout` bounds connecting and each
    /// command on the connection; the cache puts its own timeout and breaker around calls.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, L2Error> {
        let client = redis::Client::open(url).map_err(|e| L2Error::Store(e.to_string()))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| L2Error::Store(e.to_string()))?;
        Ok(Self { client, manager })
    }

    async fn run<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, L2Error> {
        let mut connection = self.manager.clone();
        command
            .query_async(&mut connection)
            .await
            .map_err(|e| L2Error::Store(e.to_string()))
    }
}

#[async_trait]
impl L2 for RedisL2 {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, L2Error> {
        self.run(redis::cmd("GET").arg(key)).await
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), L2Error> {
        let ms = ttl.as_millis().max(1) as u64;
        self.run(redis::cmd("SET").arg(key).arg(value).arg("PX").arg(ms))
            .await
    }

    async fn delete(&self, key: &str) -> Result<(), L2Error> {
        self.run::<i64>(redis::cmd("DEL").arg(key)).await.map(drop)
    }

    async fn try_lease(&self, key: &str, token: &str, ttl: Duration) -> Result<bool, L2Error> {
        let ms = ttl.as_millis().max(1) as u64;
        let answer: Option<String> = self
            .run(
                redis::cmd("SET")
                    .arg(key)
                    .arg(token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms),
            )
            .await?;
        Ok(answer.is_some())
    }

    async fn release_lease(&self, key: &str, token: &str) -> Result<(), L2Error> {
        // EVAL rather than EVALSHA: one round trip, nothing to load first.
        self.run::<i64>(redis::cmd("EVAL").arg(RELEASE).arg(1).arg(key).arg(token))
            .await
            .map(drop)
    }

    async fn publish(&self, channel: &str, message: &[u8]) -> Result<(), L2Error> {
        self.run::<i64>(redis::cmd("PUBLISH").arg(channel).arg(message))
            .await
            .map(drop)
    }

    async fn subscribe(&self, channel: &str) -> Result<(Messages, Box<dyn Pinger>), L2Error> {
        let mut pubsub = self
            .client
            .get_async_pubsub()
            .await
            .map_err(|e| L2Error::Store(e.to_string()))?;
        pubsub
            .subscribe(channel)
            .await
            .map_err(|e| L2Error::Store(e.to_string()))?;
        let (sink, stream) = pubsub.split();
        let messages = stream.map(|message| message.get_payload_bytes().to_vec());
        Ok((Box::pin(messages), Box::new(RedisPinger(sink))))
    }
}

struct RedisPinger(redis::aio::PubSubSink);

#[async_trait]
impl Pinger for RedisPinger {
    async fn ping(&mut self) -> Result<(), L2Error> {
        self.0
            .ping::<redis::Value>()
            .await
            .map(drop)
            .map_err(|e| L2Error::Store(e.to_string()))
    }
}
