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
//! Each subscription polls on a thread of its own and hands messages to the runtime
//! through a bounded buffer ([`KafkaConfig::buffer_len`]). When the buffer is full the
//! thread *pauses* its partitions and keeps polling, so slow handlers and long retry
//! backoffs never stop the polls that keep a member in its group
//! (`max.poll.interval.ms`).
//!
//! Rebalances: when partitions are revoked, the subscription stops handing out their
//! messages, drops those still buffered, and waits — up to
//! [`KafkaConfig::revocation_timeout`] — until the runtime has finished and committed
//! every message it already handed out on them; only then does it let the partitions
//! go. Work still running after the timeout is abandoned: its commit is dropped (the
//! partition is no longer ours) and the new owner processes it again, which idempotent
//! handlers absorb. A commit never moves a partition's position below where this
//! member's assignment started.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use eddy_core::{transport, Envelope, Error, PartitionSample, Publisher, Subscriber, Subscription};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

mod subscription;

pub use subscription::KafkaSubscription;

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
    /// Messages a subscription holds between its poll thread and the runtime. When the
    /// runtime falls behind, the poll thread pauses its partitions instead of blocking,
    /// so it keeps polling and the member stays in its group however long handlers
    /// take. Default 1024.
    pub buffer_len: usize,
    /// How long a revocation waits for the work already handed out on the revoked
    /// partitions to finish and be committed before the partitions go (the rest is
    /// abandoned and delivered again to the new owner). Keep it well below
    /// `max.poll.interval.ms`: the whole group waits for it. Default 10 s.
    pub revocation_timeout: Duration,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".to_owned(),
            partitions: 8,
            replication_factor: 1,
            producer: BTreeMap::new(),
            consumer: BTreeMap::new(),
            buffer_len: 1024,
            revocation_timeout: Duration::from_secs(10),
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

/// Permanent only what is about the message itself (too large, invalid): a missing
/// permission is about the environment — once an operator grants it the same publish
/// works, so it is `Unavailable` (the relay waits instead of parking every row).
fn kafka_error(context: &str, error: KafkaError) -> Error {
    let base = match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessage) => {
            Error::permanent(context)
        }
        Some(
            RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed,
        ) => Error::unavailable(context),
        _ => Error::transient(context),
    };
    base.with_source(error)
}

/// A Kafka cluster: the producer and the admin client. Cheap to clone.
#[derive(Clone)]
pub struct Kafka {
    producer: FutureProducer,
    admin: Arc<AdminClient<DefaultClientContext>>,
    config: Arc<KafkaConfig>,
    topics: Arc<Mutex<HashSet<String>>>,
    lag_readers: Arc<Mutex<HashMap<String, Arc<BaseConsumer>>>>,
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
            lag_readers: Arc::default(),
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
        .map_err(|e| Error::transient("metadata task failed").with_source(e))?
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

    /// Messages of `topic` that Eddy group `group` has not committed: per partition, the
    /// high watermark minus the group's committed offset (the low watermark when the
    /// group has committed nothing there).
    pub async fn lag(&self, group: &str, topic: &str) -> Result<u64, Error> {
        let reader = self.lag_reader(group, topic)?;
        let topic = topic.to_owned();
        // Metadata, offset and watermark requests block their thread.
        tokio::task::spawn_blocking(move || -> Result<u64, KafkaError> {
            Ok(partition_offsets(&reader, &topic)?
                .iter()
                .map(|p| {
                    u64::try_from(p.high - p.committed.unwrap_or(p.low).max(p.low)).unwrap_or(0)
                })
                .sum())
        })
        .await
        .map_err(|e| Error::transient("lag task failed").with_source(e))?
        .map_err(|e| kafka_error("cannot read the consumer lag", e))
    }

    /// Every partition of `topic` as Eddy group `group` sees it, for the lag monitor
    /// (docs/lag.md): the high watermark (the next offset written), the group's committed
    /// offset, and the oldest record it has still to consume that the broker keeps (the
    /// committed offset, or the low watermark when the group never committed there or
    /// retention went past it) with that record's timestamp, read by fetching it. Kafka
    /// does not say when a group last committed, so `committed_at` is never known here.
    pub async fn partition_samples(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<Vec<PartitionSample>, Error> {
        let reader = self.lag_reader(group, topic)?;
        let peeker = self.peeker()?;
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || -> Result<Vec<PartitionSample>, KafkaError> {
            let mut samples = Vec::new();
            for p in partition_offsets(&reader, &topic)? {
                let oldest = p.committed.unwrap_or(p.low).max(p.low);
                let oldest_at = if oldest < p.high {
                    record_time(&peeker, &topic, p.partition, oldest)?
                } else {
                    None
                };
                samples.push(PartitionSample {
                    partition: u32::try_from(p.partition).unwrap_or(0),
                    end_offset: u64::try_from(p.high).unwrap_or(0),
                    committed_offset: p.committed.and_then(|o| u64::try_from(o).ok()),
                    committed_at: None,
                    oldest_unconsumed_offset: u64::try_from(oldest.min(p.high)).unwrap_or(0),
                    oldest_unconsumed_at: oldest_at,
                });
            }
            Ok(samples)
        })
        .await
        .map_err(|e| Error::transient("lag task failed").with_source(e))?
        .map_err(|e| kafka_error("cannot read the consumer lag by partition", e))
    }

    /// The consumer that fetches single records for their timestamps: assigned by hand,
    /// never in a group, never committing.
    fn peeker(&self) -> Result<Arc<BaseConsumer>, Error> {
        let mut readers = self.lag_readers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(peeker) = readers.get(PEEKER) {
            return Ok(peeker.clone());
        }
        let mut config = client_config(&self.config.bootstrap_servers, &[], &BTreeMap::new());
        config.set("group.id", PEEKER);
        config.set("enable.auto.commit", "false");
        config.set("enable.auto.offset.store", "false");
        let peeker: Arc<BaseConsumer> = Arc::new(
            config
                .create()
                .map_err(|e| kafka_error("cannot create the lag peeker", e))?,
        );
        readers.insert(PEEKER.to_owned(), peeker.clone());
        Ok(peeker)
    }

    /// A consumer that never joins its group, only reads the group's committed offsets.
    fn lag_reader(&self, group: &str, topic: &str) -> Result<Arc<BaseConsumer>, Error> {
        let id = group_id(group, topic);
        let mut readers = self.lag_readers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(reader) = readers.get(&id) {
            return Ok(reader.clone());
        }
        let mut config = client_config(&self.config.bootstrap_servers, &[], &BTreeMap::new());
        config.set("group.id", &id);
        config.set("enable.auto.commit", "false");
        let reader: Arc<BaseConsumer> = Arc::new(
            config
                .create()
                .map_err(|e| kafka_error("cannot create a lag reader", e))?,
        );
        readers.insert(id, reader.clone());
        Ok(reader)
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
    fn system(&self) -> &'static str {
        "kafka"
    }

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
    fn system(&self) -> &'static str {
        "kafka"
    }

    async fn subscribe(&self, topic: &str, group: &str) -> Result<Box<dyn Subscription>, Error> {
        Ok(Box::new(self.member(topic, group).await?))
    }
}

impl Kafka {
    /// Joins Eddy group `group` on `topic` (the Kafka group [`group_id`]); the same as
    /// [`Subscriber::subscribe`], with the concrete type.
    pub async fn member(&self, topic: &str, group: &str) -> Result<KafkaSubscription, Error> {
        self.ensure_topic(topic).await?;
        let mut config = client_config(
            &self.config.bootstrap_servers,
            &CONSUMER_DEFAULTS,
            &self.config.consumer,
        );
        config.set("group.id", group_id(group, topic));
        KafkaSubscription::start(
            config,
            topic,
            self.config.buffer_len,
            self.config.revocation_timeout,
        )
    }
}

/// The Kafka group id of Eddy group `group` on `topic`: `<group>.<topic>`. One Kafka group
/// per topic, so a service that consumes three topics has three groups that rebalance
/// independently — a member joining or leaving on one topic does not stop the others.
pub fn group_id(group: &str, topic: &str) -> String {
    format!("{group}.{topic}")
}

/// The group id of the consumer that fetches records for their timestamps.
const PEEKER: &str = "eddy-lag-peeker";

/// One partition's offsets for a group: its watermarks and the group's committed offset.
struct PartitionOffsets {
    partition: i32,
    low: i64,
    high: i64,
    /// `None` before the group's first commit there.
    committed: Option<i64>,
}

/// The offsets of every partition of `topic` for the group `reader` reads the commits
/// of (metadata, committed offsets and watermarks: blocking requests).
fn partition_offsets(
    reader: &BaseConsumer,
    topic: &str,
) -> Result<Vec<PartitionOffsets>, KafkaError> {
    let timeout = Duration::from_secs(5);
    let metadata = reader.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut list = TopicPartitionList::new();
    for p in &partitions {
        list.add_partition(topic, *p);
    }
    let committed = reader.committed_offsets(list, timeout)?;
    partitions
        .into_iter()
        .map(|partition| {
            let (low, high) = reader.fetch_watermarks(topic, partition, timeout)?;
            let committed = match committed
                .find_partition(topic, partition)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(offset)) => Some(offset),
                _ => None,
            };
            Ok(PartitionOffsets {
                partition,
                low,
                high,
                committed,
            })
        })
        .collect()
}

/// The timestamp of the record at `offset` of `topic`/`partition`: assigns the peeker
/// there, polls one record, unassigns. `None` when none came within the timeout (the
/// record was deleted meanwhile, say): the sample then has no lag in seconds.
fn record_time(
    peeker: &BaseConsumer,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<Option<time::OffsetDateTime>, KafkaError> {
    use rdkafka::Message;
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    peeker.assign(&list)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let mut found = None;
    while found.is_none() && std::time::Instant::now() < deadline {
        match peeker.poll(Duration::from_millis(200)) {
            Some(Ok(message)) if message.topic() == topic && message.partition() == partition => {
                found = message.timestamp().to_millis().and_then(|ms| {
                    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
                });
                if found.is_none() {
                    break;
                }
            }
            Some(Ok(_)) | None => {}
            Some(Err(error)) => {
                peeker.unassign()?;
                return Err(error);
            }
        }
    }
    peeker.unassign()?;
    Ok(found)
}
