//! # eddy-kafka — Apache Kafka as an Eddy broker, on rdkafka (bundled librdkafka 2.x)
//!
//! Defaults are the settings the seeds learned the hard way, and every one can be
//! overridden with [`KafkaConfig::producer`] / [`KafkaConfig::consumer`]:
//!
//! - producer: `acks=all`, `enable.idempotence=true` (no duplicates or reordering from
//!   the producer's own retries), retries bounded only by `delivery.timeout.ms` (120 s),
//!   `max.in.flight.requests.per.connection=5` (the most idempotence allows with order
//!   kept), and partitioning by the event key with `murmur2_random` (Java clients'
//!   partitioner, so mixed fleets agree on where a key lives);
//! - consumer: `enable.auto.commit=false` and `enable.auto.offset.store=false` (offsets
//!   move only through the runtime's gap-aware commits, after processing),
//!   `auto.offset.reset=earliest`, `session.timeout.ms=30000`,
//!   `heartbeat.interval.ms=3000`, `max.poll.interval.ms=300000`.
//!
//! Consumer groups: Eddy group `g` on topic `t` is the Kafka group `g.t` ([`group_id`]).
//!
//! Topics are created through the admin API on first use ([`KafkaConfig::partitions`]);
//! dead letters go to `<topic>.dlq` like every other topic.
//!
//! Rebalances: a commit names only partitions this member still owns (a revoked
//! partition's positions are the new owner's business), so a late commit after a
//! revocation is dropped rather than failing forever; messages fetched but not committed
//! before the revocation are delivered again to the new owner, and idempotent handlers
//! absorb the repeat.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use eddy_core::{
    transport, Delivery, Envelope, Error, Message, Publisher, Subscriber, Subscription, Undecodable,
};
use futures::FutureExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Message as _, Offset, TopicPartitionList};

/// Settings of the adapter. Every field has a documented default.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// Default `127.0.0.1:9092`.
    pub bootstrap_servers: String,
    /// Partitions of topics the adapter creates. Default 8.
    pub partitions: i32,
    /// Replication of topics the adapter creates. Default 1 (a single broker).
    pub replication_factor: i32,
    /// librdkafka producer settings, applied over the defaults above.
    pub producer: BTreeMap<String, String>,
    /// librdkafka consumer settings, applied over the defaults above.
    pub consumer: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".to_owned(),
            partitions: 8,
            replication_factor: 1,
            producer: BTreeMap::new(),
            consumer: BTreeMap::new(),
        }
    }
}

/// The producer defaults; see the crate documentation for why.
pub const PRODUCER_DEFAULTS: [(&str, &str); 6] = [
    ("acks", "all"),
    ("enable.idempotence", "true"),
    ("max.in.flight.requests.per.connection", "5"),
    ("delivery.timeout.ms", "120000"),
    ("partitioner", "murmur2_random"),
    ("linger.ms", "5"),
];

/// The consumer defaults; see the crate documentation for why.
pub const CONSUMER_DEFAULTS: [(&str, &str); 6] = [
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
    ("auto.offset.reset", "earliest"),
    ("session.timeout.ms", "30000"),
    ("heartbeat.interval.ms", "3000"),
    ("max.poll.interval.ms", "300000"),
];

fn client_config(
    servers: &str,
    defaults: &[(&str, &str)],
    overrides: &BTreeMap<String, String>,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", servers);
    for (key, value) in defaults {
        config.set(*key, *value);
    }
    for (key, value) in overrides {
        config.set(key, value);
    }
    config
}

fn kafka_error(context: &str, error: KafkaError) -> Error {
    let permanent = matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::TopicAuthorizationFailed
        )
    );
    let message = format!("{context}: {error}");
    if permanent {
        Error::permanent(message)
    } else {
        Error::transient(message)
    }
}

/// A Kafka cluster: the producer and the admin client. Cheap to clone.
#[derive(Clone)]
pub struct Kafka {
    producer: FutureProducer,
    admin: Arc<AdminClient<DefaultClientContext>>,
    config: Arc<KafkaConfig>,
    topics: Arc<Mutex<HashSet<String>>>,
}

impl fmt::Debug for Kafka {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kafka")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Kafka {
    pub fn connect(config: KafkaConfig) -> Result<Self, Error> {
        let producer: FutureProducer = client_config(
            &config.bootstrap_servers,
            &PRODUCER_DEFAULTS,
            &config.producer,
        )
        .create()
        .map_err(|e| kafka_error("cannot create the Kafka producer", e))?;
        let admin: AdminClient<DefaultClientContext> =
            client_config(&config.bootstrap_servers, &[], &BTreeMap::new())
                .create()
                .map_err(|e| kafka_error("cannot create the Kafka admin client", e))?;
        Ok(Self {
            producer,
            admin: Arc::new(admin),
            config: Arc::new(config),
            topics: Arc::default(),
        })
    }

    /// Creates `topic` (with the configured partitions) unless it exists.
    pub async fn ensure_topic(&self, topic: &str) -> Result<(), Error> {
        if self
            .topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(topic)
        {
            return Ok(());
        }
        if self.topic_exists(topic).await? {
            self.topics
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(topic.to_owned());
            return Ok(());
        }
        self.create_topic(topic, self.config.partitions).await
    }

    /// Whether a broker answers a metadata request within a second (for readiness).
    pub async fn is_reachable(&self) -> bool {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Duration::from_secs(1))
                .is_ok()
        })
        .await
        .unwrap_or(false)
    }

    /// Asks the cluster's metadata whether `topic` exists (and has partitions).
    async fn topic_exists(&self, topic: &str) -> Result<bool, Error> {
        let producer = self.producer.clone();
        let name = topic.to_owned();
        // Metadata requests block their thread until the broker answers.
        let metadata = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&name), Duration::from_secs(10))
        })
        .await
        .map_err(|e| Error::transient(format!("metadata task failed: {e}")))?
        .map_err(|e| kafka_error("cannot read topic metadata", e))?;
        Ok(metadata
            .topics()
            .iter()
            .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty()))
    }

    /// Creates `topic` with `partitions` partitions unless it exists.
    pub async fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), Error> {
        let new = NewTopic::new(
            topic,
            partitions,
            TopicReplication::Fixed(self.config.replication_factor),
        );
        let results = self
            .admin
            .create_topics(
                [&new],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .map_err(|e| kafka_error("cannot create a topic", e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(Error::transient(format!(
                        "cannot create topic {name}: {code}"
                    )))
                }
            }
        }
        self.topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.to_owned());
        Ok(())
    }

    /// Deletes `topic` (for tests and tooling).
    pub async fn delete_topic(&self, topic: &str) -> Result<(), Error> {
        self.topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(topic);
        self.admin
            .delete_topics(&[topic], &AdminOptions::new())
            .await
            .map_err(|e| kafka_error("cannot delete a topic", e))?;
        Ok(())
    }
}

#[async_trait]
impl Publisher for Kafka {
    async fn publish(&self, topic: &str, events: &[Envelope]) -> Result<(), Error> {
        self.ensure_topic(topic).await?;
        // Enqueue everything (the idempotent producer keeps per-partition order), then
        // wait for every acknowledgement.
        let mut deliveries = Vec::with_capacity(events.len());
        for envelope in events {
            let mut headers = OwnedHeaders::new();
            for (key, value) in transport::to_headers(envelope) {
                headers = headers.insert(Header {
                    key: &key,
                    value: Some(value.as_bytes()),
                });
            }
            let mut record = FutureRecord::to(topic)
                .key(envelope.key.as_bytes())
                .payload(&envelope.payload)
                .headers(headers);
            loop {
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                        // The local queue is full: let deliveries drain, then retry.
                        record = returned;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((error, _)) => return Err(kafka_error("cannot enqueue a record", error)),
                }
            }
        }
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) => {
                    return Err(kafka_error("the broker did not accept a record", error))
                }
                Err(_) => {
                    return Err(Error::transient(
                        "the producer went away before acknowledging",
                    ))
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Subscriber for Kafka {
    async fn subscribe(&self, topic: &str, group: &str) -> Result<Box<dyn Subscription>, Error> {
        self.ensure_topic(topic).await?;
        let mut config = client_config(
            &self.config.bootstrap_servers,
            &CONSUMER_DEFAULTS,
            &self.config.consumer,
        );
        config.set("group.id", group_id(group, topic));
        let consumer: StreamConsumer = config
            .create()
            .map_err(|e| kafka_error("cannot create a consumer", e))?;
        consumer
            .subscribe(&[topic])
            .map_err(|e| kafka_error("cannot subscribe", e))?;
        Ok(Box::new(KafkaSubscription {
            topic: topic.to_owned(),
            consumer: Arc::new(consumer),
        }))
    }
}

/// The Kafka group id of Eddy group `group` on `topic`: `<group>.<topic>`. One Kafka group
/// per topic, so a service that consumes three topics has three groups that rebalance
/// independently — a member joining or leaving on one topic does not stop the others.
pub fn group_id(group: &str, topic: &str) -> String {
    format!("{group}.{topic}")
}

/// One member of a consumer group.
pub struct KafkaSubscription {
    topic: String,
    consumer: Arc<StreamConsumer>,
}

impl fmt::Debug for KafkaSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSubscription")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

fn delivery(message: &BorrowedMessage<'_>) -> Delivery {
    let headers: Vec<(String, String)> = message
        .headers()
        .map(|h| {
            h.iter()
                .map(|header| {
                    (
                        header.key.to_owned(),
                        String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let payload = message.payload().map(<[u8]>::to_vec).unwrap_or_default();
    let body = match transport::from_headers(
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        payload.clone(),
    ) {
        Ok(envelope) => Message::Event(envelope),
        Err(error) => Message::Undecodable(Undecodable {
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            headers,
            payload,
            error: error.to_string(),
        }),
    };
    Delivery {
        topic: message.topic().to_owned(),
        partition: u32::try_from(message.partition()).unwrap_or(0),
        offset: u64::try_from(message.offset()).unwrap_or(0),
        message: body,
    }
}

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn fetch(&self, max_len: usize) -> Result<Vec<Delivery>, Error> {
        let first = self
            .consumer
            .recv()
            .await
            .map_err(|e| kafka_error("cannot receive", e))?;
        let mut out = vec![delivery(&first)];
        drop(first);
        // Take what is already buffered, without waiting.
        while out.len() < max_len.max(1) {
            match self.consumer.recv().now_or_never() {
                Some(Ok(message)) => out.push(delivery(&message)),
                Some(Err(error)) => return Err(kafka_error("cannot receive", error)),
                None => break,
            }
        }
        Ok(out)
    }

    async fn commit(&self, offsets: &[(u32, u64)]) -> Result<(), Error> {
        let assigned = self
            .consumer
            .assignment()
            .map_err(|e| kafka_error("cannot read the assignment", e))?;
        let mut list = TopicPartitionList::new();
        for &(partition, next) in offsets {
            let partition = i32::try_from(partition).unwrap_or(i32::MAX);
            if assigned.find_partition(&self.topic, partition).is_none() {
                tracing::debug!(topic = %self.topic, partition, "not committing a partition this member no longer owns");
                continue;
            }
            list.add_partition_offset(
                &self.topic,
                partition,
                Offset::Offset(i64::try_from(next).unwrap_or(i64::MAX)),
            )
            .map_err(|e| kafka_error("bad offset", e))?;
        }
        if list.count() == 0 {
            return Ok(());
        }
        let consumer = self.consumer.clone();
        // A synchronous commit blocks its thread until the broker answers.
        tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync))
            .await
            .map_err(|e| Error::transient(format!("commit task failed: {e}")))?
            .map_err(|e| kafka_error("cannot commit offsets", e))
    }

    async fn close(&self) -> Result<(), Error> {
        self.consumer.unsubscribe();
        Ok(())
    }
}
