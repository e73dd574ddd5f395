//! S5: publish and consume through each broker adapter, next to the raw client on the
//! same broker, at several message sizes.
//!
//! For every (broker, size, variant) a run has two phases:
//!
//! 1. **throughput**: publish `messages` payloads in batches of `batch` (each batch sent
//!    pipelined, then every acknowledgement awaited), then consume them all from the
//!    start with a fresh consumer group, committing every 100 ms like the runtime does.
//!    Publish and consume rates are timed separately (the consume clock starts at the
//!    first message, so joining the group is not counted).
//! 2. **latency**: with that consumer caught up, publish one message at a time at a fixed
//!    rate (open loop); each payload carries its *intended* send time, and the consumer
//!    records receive time minus intended time in an HDR histogram.
//!
//! Variants: `raw` is the broker's own Rust client used directly (async-nats JetStream;
//! rdkafka with the same producer and consumer settings Eddy uses), `eddy` is the
//! adapter behind Eddy's `Publisher` / `Subscription` traits (envelope headers,
//! dedupe ids, gap-aware commit positions). The peer, FastStream (Python), runs the
//! throughput phase with `bench/peers/faststream_s5.py` when `bench/peers/setup.sh` has
//! installed it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use eddy_core::{async_trait, Delivery, Envelope, Publisher, Subscriber, Subscription};
use futures::StreamExt;
use hdrhistogram::Histogram;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message as _, Offset, TopicPartitionList};
use serde::Serialize;

/// Settings of the broker benchmark.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Brokers to measure: nats, kafka (repeatable).
    #[arg(long = "broker", default_values_t = vec!["nats".to_owned(), "kafka".to_owned()])]
    pub brokers: Vec<String>,
    /// Payload sizes in bytes (repeatable).
    #[arg(long = "size", default_values_t = vec![16usize, 256, 1024])]
    pub sizes: Vec<usize>,
    /// Messages per throughput run.
    #[arg(long, default_value_t = 20_000)]
    pub messages: usize,
    /// Messages per publish call in the throughput phase.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Messages per second in the latency phase.
    #[arg(long, default_value_t = 1_000)]
    pub rate: u64,
    /// Seconds of the latency phase.
    #[arg(long, default_value_t = 3)]
    pub latency_secs: u64,
    /// Runs per scenario; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Partitions of each Kafka topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// NATS server.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Kafka bootstrap servers; when absent a tansu broker is started for the run.
    #[arg(long)]
    pub kafka: Option<String>,
    /// Extra librdkafka producer settings `key=value` for both Kafka variants
    /// (repeatable).
    #[arg(long = "kafka-producer")]
    pub kafka_producer: Vec<String>,
    /// Write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// One run's figures.
#[derive(Debug, Clone, Copy)]
struct Run {
    publish_per_sec: f64,
    consume_per_sec: f64,
    /// Not measured for the peer.
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
}

/// Medians over the runs of one (broker, size, variant).
#[derive(Debug, Serialize)]
pub struct Measurement {
    pub broker: String,
    pub size: usize,
    pub variant: &'static str,
    pub publish_per_sec: f64,
    pub consume_per_sec: f64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    pub runs: usize,
}

#[derive(Debug, Serialize)]
pub struct Results {
    pub machine: String,
    pub brokers: BTreeMap<String, String>,
    pub messages: usize,
    pub batch: usize,
    pub rate: u64,
    pub measurements: Vec<Measurement>,
}

/// Publishing side of one variant.
#[async_trait]
pub(crate) trait Pipe: Send + Sync {
    /// Publishes `payloads` in order and returns once all are acknowledged.
    async fn publish(&self, topic: &str, payloads: Vec<Vec<u8>>) -> anyhow::Result<()>;
    /// Joins `group` on `topic`, reading from the start.
    async fn consume(&self, topic: &str, group: &str) -> anyhow::Result<Box<dyn Source>>;
    async fn create(&self, topic: &str) -> anyhow::Result<()>;
    async fn delete(&self, topic: &str) -> anyhow::Result<()>;
}

/// Consuming side of one variant.
#[async_trait]
pub(crate) trait Source: Send {
    /// Waits for messages and returns their payloads.
    async fn next(&mut self) -> anyhow::Result<Vec<Vec<u8>>>;
    /// Commits everything returned so far.
    async fn commit(&mut self) -> anyhow::Result<()>;
    /// Commits everything returned so far and waits until it is done: a phase ends with
    /// nothing left to acknowledge, so the next phase does not measure the previous one's
    /// acknowledgements. The raw variants acknowledge as they go.
    async fn settle(&mut self) -> anyhow::Result<()> {
        self.commit().await
    }
    async fn close(self: Box<Self>) -> anyhow::Result<()>;
}

// ---------------------------------------------------------------------------------
// Eddy: any adapter behind the Publisher / Subscriber traits.

/// Eddy's adapter for one broker. Publishing and subscribing go through the `Publisher`
/// and `Subscriber` traits, as in an application; topics are made the adapter's way.
enum EddyPipe {
    Nats(Box<eddy_nats::Nats>),
    Kafka {
        kafka: eddy_kafka::Kafka,
        partitions: i32,
    },
}

impl EddyPipe {
    fn publisher(&self) -> &dyn Publisher {
        match self {
            Self::Nats(nats) => nats.as_ref(),
            Self::Kafka { kafka, .. } => kafka,
        }
    }

    fn subscriber(&self) -> &dyn Subscriber {
        match self {
            Self::Nats(nats) => nats.as_ref(),
            Self::Kafka { kafka, .. } => kafka,
        }
    }
}

#[async_trait]
impl Pipe for EddyPipe {
    async fn publish(&self, topic: &str, payloads: Vec<Vec<u8>>) -> anyhow::Result<()> {
        let now = time::OffsetDateTime::now_utc();
        let events: Vec<Envelope> = payloads
            .into_iter()
            .enumerate()
            .map(|(i, payload)| {
                Envelope::new("bench.Message", 1, format!("k{}", i % 64), payload, now)
            })
            .collect();
        self.publisher().publish(topic, &events).await?;
        Ok(())
    }

    async fn consume(&self, topic: &str, group: &str) -> anyhow::Result<Box<dyn Source>> {
        let subscription: Arc<dyn Subscription> =
            self.subscriber().subscribe(topic, group).await?.into();
        let positions = Arc::new(std::sync::Mutex::new(BTreeMap::new()));
        // Commits every 100 ms beside the fetches, as the runtime's commit loop does (a
        // broker may hold deliveries back until earlier ones are acknowledged).
        let committer = tokio::spawn({
            let (subscription, positions) = (subscription.clone(), positions.clone());
            async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                let mut committed: BTreeMap<u32, u64> = BTreeMap::new();
                loop {
                    tick.tick().await;
                    let due: Vec<(u32, u64)> = positions
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .iter()
                        .filter(|(p, o)| committed.get(*p) != Some(*o))
                        .map(|(p, o)| (*p, *o))
                        .collect();
                    if !due.is_empty() && subscription.commit(&due).await.is_ok() {
                        committed.extend(due);
                    }
                }
            }
        });
        Ok(Box::new(EddySource {
            subscription,
            positions,
            committer,
        }))
    }

    async fn create(&self, topic: &str) -> anyhow::Result<()> {
        match self {
            Self::Nats(nats) => drop(nats.ensure_topic(topic).await?),
            Self::Kafka { kafka, partitions } => kafka.create_topic(topic, *partitions).await?,
        }
        Ok(())
    }

    async fn delete(&self, topic: &str) -> anyhow::Result<()> {
        match self {
            Self::Nats(nats) => nats.delete_topic(topic).await?,
            Self::Kafka { kafka, .. } => kafka.delete_topic(topic).await?,
        }
        Ok(())
    }
}

struct EddySource {
    subscription: Arc<dyn Subscription>,
    positions: Arc<std::sync::Mutex<BTreeMap<u32, u64>>>,
    committer: tokio::task::JoinHandle<()>,
}

#[async_trait]
impl Source for EddySource {
    async fn next(&mut self) -> anyhow::Result<Vec<Vec<u8>>> {
        let batch: Vec<Delivery> = self.subscription.fetch(256).await?;
        let mut out = Vec::with_capacity(batch.len());
        let mut positions = self.positions.lock().unwrap_or_else(|p| p.into_inner());
        for delivery in batch {
            let next = positions.entry(delivery.partition).or_insert(0);
            *next = (*next).max(delivery.offset + 1);
            match delivery.message {
                eddy_core::Message::Event(envelope) => out.push(envelope.payload),
                eddy_core::Message::Undecodable(raw) => bail!("undecodable: {}", raw.error),
            }
        }
        Ok(out)
    }

    async fn commit(&mut self) -> anyhow::Result<()> {
        // The committer task does it, beside the fetches.
        Ok(())
    }

    /// Commits everything now (beside the committer task's every 100 ms).
    async fn settle(&mut self) -> anyhow::Result<()> {
        let due: Vec<(u32, u64)> = self
            .positions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(p, o)| (*p, *o))
            .collect();
        if !due.is_empty() {
            self.subscription.commit(&due).await?;
        }
        Ok(())
    }

    async fn close(mut self: Box<Self>) -> anyhow::Result<()> {
        self.committer.abort();
        self.settle().await?;
        self.subscription.close().await?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// Raw NATS JetStream (async-nats).

pub(crate) struct RawNats {
    pub(crate) js: async_nats::jetstream::Context,
}

fn raw_stream(topic: &str) -> String {
    format!("RAW_{}", topic.replace(['.', '-'], "_"))
}

#[async_trait]
impl Pipe for RawNats {
    async fn publish(&self, topic: &str, payloads: Vec<Vec<u8>>) -> anyhow::Result<()> {
        let mut acks = Vec::with_capacity(payloads.len());
        for payload in payloads {
            acks.push(
                self.js
                    .publish(format!("raw.{topic}"), payload.into())
                    .await?,
            );
        }
        for ack in acks {
            ack.await?;
        }
        Ok(())
    }

    async fn consume(&self, topic: &str, group: &str) -> anyhow::Result<Box<dyn Source>> {
        let stream = self.js.get_stream(raw_stream(topic)).await?;
        let consumer: async_nats::jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(
                group,
                async_nats::jetstream::consumer::pull::Config {
                    durable_name: Some(group.to_owned()),
                    ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
                    ..Default::default()
                },
            )
            .await?;
        let messages = consumer.messages().await?;
        Ok(Box::new(RawNatsSource { messages }))
    }

    async fn create(&self, topic: &str) -> anyhow::Result<()> {
        self.js
            .get_or_create_stream(async_nats::jetstream::stream::Config {
                name: raw_stream(topic),
                subjects: vec![format!("raw.{topic}")],
                ..Default::default()
            })
            .await?;
        Ok(())
    }

    async fn delete(&self, topic: &str) -> anyhow::Result<()> {
        self.js.delete_stream(raw_stream(topic)).await?;
        Ok(())
    }
}

struct RawNatsSource {
    messages: async_nats::jetstream::consumer::pull::Stream,
}

#[async_trait]
impl Source for RawNatsSource {
    async fn next(&mut self) -> anyhow::Result<Vec<Vec<u8>>> {
        let Some(message) = self.messages.next().await else {
            bail!("the message stream ended");
        };
        let message = message.map_err(|e| anyhow::anyhow!("{e}"))?;
        // Acked on receipt, like a hand-written consumer would.
        message.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(vec![message.payload.to_vec()])
    }

    async fn commit(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    async fn close(self: Box<Self>) -> anyhow::Result<()> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// Raw Kafka (rdkafka), with the settings Eddy uses.

struct RawKafka {
    bootstrap: String,
    producer: FutureProducer,
    admin: eddy_kafka::Kafka,
    partitions: i32,
}

fn rdkafka_config(bootstrap: &str, settings: &[(&str, &str)]) -> rdkafka::ClientConfig {
    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (k, v) in settings {
        config.set(*k, *v);
    }
    config
}

#[async_trait]
impl Pipe for RawKafka {
    async fn publish(&self, topic: &str, payloads: Vec<Vec<u8>>) -> anyhow::Result<()> {
        let mut deliveries = Vec::with_capacity(payloads.len());
        for (i, payload) in payloads.iter().enumerate() {
            let key = format!("k{}", i % 64);
            let record = FutureRecord::to(topic).key(&key).payload(payload);
            match self.producer.send_result(record) {
                Ok(delivery) => deliveries.push(delivery),
                Err((error, _)) => bail!("enqueue failed: {error}"),
            }
        }
        for delivery in deliveries {
            delivery.await?.map_err(|(e, _)| e)?;
        }
        Ok(())
    }

    async fn consume(&self, topic: &str, group: &str) -> anyhow::Result<Box<dyn Source>> {
        let mut config = rdkafka_config(&self.bootstrap, &eddy_kafka::CONSUMER_DEFAULTS);
        config.set("group.id", group);
        let consumer: StreamConsumer = config.create()?;
        consumer.subscribe(&[topic])?;
        Ok(Box::new(RawKafkaSource {
            consumer,
            topic: topic.to_owned(),
            positions: BTreeMap::new(),
        }))
    }

    async fn create(&self, topic: &str) -> anyhow::Result<()> {
        self.admin.create_topic(topic, self.partitions).await?;
        Ok(())
    }

    async fn delete(&self, topic: &str) -> anyhow::Result<()> {
        self.admin.delete_topic(topic).await?;
        Ok(())
    }
}

struct RawKafkaSource {
    consumer: StreamConsumer,
    topic: String,
    positions: BTreeMap<i32, i64>,
}

#[async_trait]
impl Source for RawKafkaSource {
    async fn next(&mut self) -> anyhow::Result<Vec<Vec<u8>>> {
        let message = self.consumer.recv().await?;
        let next = self.positions.entry(message.partition()).or_insert(0);
        *next = (*next).max(message.offset() + 1);
        Ok(vec![message.payload().unwrap_or_default().to_vec()])
    }

    async fn commit(&mut self) -> anyhow::Result<()> {
        let mut list = TopicPartitionList::new();
        for (partition, next) in std::mem::take(&mut self.positions) {
            list.add_partition_offset(&self.topic, partition, Offset::Offset(next))?;
        }
        if list.count() > 0 {
            self.consumer.commit(&list, CommitMode::Async)?;
        }
        Ok(())
    }

    async fn close(self: Box<Self>) -> anyhow::Result<()> {
        self.consumer.unsubscribe();
        Ok(())
    }
}

// ---------------------------------------------------------------------------------

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A payload of `size` bytes (at least 8) starting with `stamp`.
fn payload(size: usize, stamp: u64) -> Vec<u8> {
    let mut bytes = vec![b'x'; size.max(8)];
    bytes[..8].copy_from_slice(&stamp.to_le_bytes());
    bytes
}

fn stamp_of(payload: &[u8]) -> Option<u64> {
    payload.get(..8)?.try_into().ok().map(u64::from_le_bytes)
}

/// Receives `count` messages, committing every 100 ms; returns when the first arrived.
pub(crate) async fn drain(
    source: &mut dyn Source,
    count: usize,
    mut on_message: impl FnMut(&[u8]),
) -> anyhow::Result<Instant> {
    let mut first = None;
    let mut received = 0usize;
    let mut last_commit = Instant::now();
    while received < count {
        let batch = tokio::time::timeout(Duration::from_secs(30), source.next())
            .await
            .with_context(|| format!("nothing received for 30 s after {received}/{count}"))??;
        first.get_or_insert_with(Instant::now);
        received += batch.len();
        for payload in &batch {
            on_message(payload);
        }
        if last_commit.elapsed() >= Duration::from_millis(100) {
            source.commit().await?;
            last_commit = Instant::now();
        }
    }
    source.settle().await?;
    Ok(first.unwrap_or_else(Instant::now))
}

async fn one_run(pipe: Arc<dyn Pipe>, args: &Args, size: usize) -> anyhow::Result<Run> {
    let topic = format!("bench-{}", uuid::Uuid::now_v7().simple());
    pipe.create(&topic).await?;
    let result = measure(pipe.clone(), args, size, &topic).await;
    pipe.delete(&topic).await?;
    result
}

async fn measure(
    pipe: Arc<dyn Pipe>,
    args: &Args,
    size: usize,
    topic: &str,
) -> anyhow::Result<Run> {
    // Throughput: publish everything, then consume everything.
    let started = Instant::now();
    let mut sent = 0;
    while sent < args.messages {
        let n = args.batch.min(args.messages - sent);
        pipe.publish(topic, (0..n).map(|_| payload(size, 0)).collect())
            .await?;
        sent += n;
    }
    let publish_per_sec = args.messages as f64 / started.elapsed().as_secs_f64();
    let mut source = pipe.consume(topic, "bench").await?;
    let first = drain(source.as_mut(), args.messages, |_| {}).await?;
    let consume_per_sec = args.messages as f64 / first.elapsed().as_secs_f64().max(1e-9);

    // Latency: open loop at a fixed rate, stamped with the intended send time.
    let count = (args.rate * args.latency_secs) as usize;
    let interval = Duration::from_nanos(1_000_000_000 / args.rate.max(1));
    let publisher = {
        let pipe = pipe.clone();
        let topic = topic.to_owned();
        tokio::spawn(async move {
            let start = Instant::now();
            let start_nanos = now_nanos();
            let mut tasks = Vec::with_capacity(count);
            for i in 0..count {
                let offset = interval * i as u32;
                tokio::time::sleep_until((start + offset).into()).await;
                let stamp = start_nanos + offset.as_nanos() as u64;
                let pipe = pipe.clone();
                let topic = topic.clone();
                tasks.push(tokio::spawn(async move {
                    pipe.publish(&topic, vec![payload(size, stamp)]).await
                }));
            }
            for task in tasks {
                task.await??;
            }
            anyhow::Ok(())
        })
    };
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    drain(source.as_mut(), count, |payload| {
        if let Some(stamp) = stamp_of(payload) {
            let micros = now_nanos().saturating_sub(stamp) / 1_000;
            let _ = histogram.record(micros.max(1));
        }
    })
    .await?;
    publisher.await??;
    source.close().await?;
    Ok(Run {
        publish_per_sec,
        consume_per_sec,
        p50_ms: Some(histogram.value_at_quantile(0.5) as f64 / 1000.0),
        p99_ms: Some(histogram.value_at_quantile(0.99) as f64 / 1000.0),
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn median_of_some(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let values: Vec<f64> = values.flatten().collect();
    (!values.is_empty()).then(|| median(values))
}

/// One FastStream run (throughput only): `bench/peers/faststream_s5.py`.
async fn faststream_run(
    python: &std::path::Path,
    broker: &str,
    url: &str,
    args: &Args,
    size: usize,
) -> anyhow::Result<Run> {
    let mut command = tokio::process::Command::new(python);
    command
        .arg(crate::peers::script("faststream_s5.py"))
        .args(["--broker", broker, "--url", url])
        .args(["--topic", &format!("{}", uuid::Uuid::now_v7().simple())])
        .args(["--messages", &args.messages.to_string()])
        .args(["--size", &size.to_string()])
        .args(["--batch", &args.batch.to_string()])
        .args(["--partitions", &args.partitions.to_string()]);
    let value = crate::peers::run_json(command).await?;
    Ok(Run {
        publish_per_sec: value["publish_per_sec"].as_f64().unwrap_or(0.0),
        consume_per_sec: value["consume_per_sec"].as_f64().unwrap_or(0.0),
        p50_ms: None,
        p99_ms: None,
    })
}

/// The two variants of one broker.
async fn pipes(
    broker: &str,
    args: &Args,
    kafka_bootstrap: &str,
) -> anyhow::Result<Vec<(&'static str, Arc<dyn Pipe>)>> {
    match broker {
        "nats" => {
            let client = async_nats::connect(&args.nats_url)
                .await
                .with_context(|| format!("cannot connect to NATS at {}", args.nats_url))?;
            let raw = RawNats {
                js: async_nats::jetstream::new(client),
            };
            let nats = eddy_nats::Nats::connect(eddy_nats::NatsConfig {
                url: args.nats_url.clone(),
                stream_prefix: "EDDYBENCH".to_owned(),
                subject_prefix: "eddybench".to_owned(),
                ..eddy_nats::NatsConfig::default()
            })
            .await?;
            let eddy = EddyPipe::Nats(Box::new(nats));
            Ok(vec![("raw", Arc::new(raw)), ("eddy", Arc::new(eddy))])
        }
        "kafka" => {
            let producer_settings: BTreeMap<String, String> = args
                .kafka_producer
                .iter()
                .filter_map(|s| s.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            let kafka = eddy_kafka::Kafka::connect(eddy_kafka::KafkaConfig {
                bootstrap_servers: kafka_bootstrap.to_owned(),
                partitions: args.partitions,
                producer: producer_settings.clone(),
                ..eddy_kafka::KafkaConfig::default()
            })?;
            let mut raw_config = rdkafka_config(kafka_bootstrap, &eddy_kafka::PRODUCER_DEFAULTS);
            for (k, v) in &producer_settings {
                raw_config.set(k, v);
            }
            let producer: FutureProducer = raw_config.create()?;
            let raw = RawKafka {
                bootstrap: kafka_bootstrap.to_owned(),
                producer,
                admin: kafka.clone(),
                partitions: args.partitions,
            };
            let eddy = EddyPipe::Kafka {
                kafka,
                partitions: args.partitions,
            };
            Ok(vec![("raw", Arc::new(raw)), ("eddy", Arc::new(eddy))])
        }
        other => bail!("unknown broker {other}: nats or kafka"),
    }
}

pub async fn run_all(args: &Args) -> anyhow::Result<Results> {
    let mut tansu = None;
    let kafka_bootstrap = match &args.kafka {
        Some(servers) => servers.clone(),
        None if args.brokers.iter().any(|b| b == "kafka") => {
            let broker = eddy_testkit::tansu::Tansu::start();
            let servers = broker.bootstrap().to_owned();
            tansu = Some(broker);
            servers
        }
        None => String::new(),
    };
    let mut brokers = BTreeMap::new();
    let mut measurements = Vec::new();
    let python = crate::peers::python("faststream.nats, faststream.kafka");
    if python.is_none() {
        eprintln!("FastStream peer not installed (bench/peers/setup.sh): measuring without it");
    }
    for broker in &args.brokers {
        brokers.insert(
            broker.clone(),
            match broker.as_str() {
                "nats" => format!("nats-server at {} (JetStream, file storage)", args.nats_url),
                _ if tansu.is_some() => {
                    "tansu 0.6.0 (Kafka protocol, memory storage), started by the benchmark"
                        .to_owned()
                }
                _ => format!("Kafka at {kafka_bootstrap}"),
            },
        );
        let pipes = pipes(broker, args, &kafka_bootstrap).await?;
        for &size in &args.sizes {
            let mut runs: BTreeMap<&'static str, Vec<Run>> = BTreeMap::new();
            // Interleaved: raw, eddy, raw, eddy, …
            for round in 0..args.repeat {
                for (variant, pipe) in &pipes {
                    let run = one_run(pipe.clone(), args, size)
                        .await
                        .with_context(|| format!("{broker} {variant} {size} B run {round}"))?;
                    eprintln!(
                        "{broker} {size:>5} B {variant:<4}: publish {:>8.0}/s consume {:>8.0}/s latency p50 {:.2} ms p99 {:.2} ms",
                        run.publish_per_sec, run.consume_per_sec, run.p50_ms.unwrap_or(0.0), run.p99_ms.unwrap_or(0.0)
                    );
                    runs.entry(variant).or_default().push(run);
                }
                if let Some(python) = &python {
                    let url = if broker == "kafka" {
                        kafka_bootstrap.as_str()
                    } else {
                        args.nats_url.as_str()
                    };
                    // A failing peer is reported and left out, not fatal to the run.
                    match faststream_run(python, broker, url, args, size).await {
                        Ok(run) => {
                            eprintln!(
                                "{broker} {size:>5} B faststream: publish {:>8.0}/s consume {:>8.0}/s",
                                run.publish_per_sec, run.consume_per_sec
                            );
                            runs.entry("faststream").or_default().push(run);
                        }
                        Err(error) => eprintln!(
                            "{broker} {size:>5} B faststream run {round} failed: {}",
                            format!("{error:#}").lines().next().unwrap_or_default()
                        ),
                    }
                }
            }
            for (variant, runs) in runs {
                measurements.push(Measurement {
                    broker: broker.clone(),
                    size,
                    variant,
                    publish_per_sec: median(runs.iter().map(|r| r.publish_per_sec).collect()),
                    consume_per_sec: median(runs.iter().map(|r| r.consume_per_sec).collect()),
                    latency_p50_ms: median_of_some(runs.iter().map(|r| r.p50_ms)),
                    latency_p99_ms: median_of_some(runs.iter().map(|r| r.p99_ms)),
                    runs: runs.len(),
                });
            }
        }
    }
    drop(tansu);
    Ok(Results {
        machine: crate::toolkit::machine(),
        brokers,
        messages: args.messages,
        batch: args.batch,
        rate: args.rate,
        measurements,
    })
}

pub fn markdown(results: &Results) -> String {
    let mut out = format!(
        "Machine: {}. {} messages per throughput run in publish calls of {}; latency at {} msg/s open loop.\n\n",
        results.machine, results.messages, results.batch, results.rate
    );
    for (broker, what) in &results.brokers {
        out.push_str(&format!("- {broker}: {what}\n"));
    }
    out.push_str("\n| broker | size | variant | publish/s | consume/s | p50 | p99 | publish vs raw | consume vs raw | p99 vs raw | Eddy ÷ FastStream (publish, consume) |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for m in &results.measurements {
        let raw = results
            .measurements
            .iter()
            .find(|r| r.broker == m.broker && r.size == m.size && r.variant == "raw");
        let (p, c, l) = match (m.variant, raw) {
            ("raw", _) | (_, None) => ("—".to_owned(), "—".to_owned(), "—".to_owned()),
            (_, Some(raw)) => (
                format!("{:.2}×", m.publish_per_sec / raw.publish_per_sec),
                format!("{:.2}×", m.consume_per_sec / raw.consume_per_sec),
                match (m.latency_p99_ms, raw.latency_p99_ms) {
                    (Some(a), Some(b)) => format!("{:.2}×", a / b),
                    _ => "—".to_owned(),
                },
            ),
        };
        let peer = results
            .measurements
            .iter()
            .find(|r| r.broker == m.broker && r.size == m.size && r.variant == "faststream");
        let versus = match (m.variant, peer) {
            ("eddy", Some(peer)) => format!(
                "{:.1}×, {:.1}×",
                m.publish_per_sec / peer.publish_per_sec,
                m.consume_per_sec / peer.consume_per_sec
            ),
            _ => "—".to_owned(),
        };
        let ms = |v: Option<f64>| v.map_or("—".to_owned(), |v| format!("{v:.2} ms"));
        out.push_str(&format!(
            "| {} | {} B | {} | {:.0} | {:.0} | {} | {} | {p} | {c} | {l} | {versus} |\n",
            m.broker,
            m.size,
            m.variant,
            m.publish_per_sec,
            m.consume_per_sec,
            ms(m.latency_p50_ms),
            ms(m.latency_p99_ms)
        ));
    }
    out
}

/// Publish and consume rates per broker and size, against the raw client's (dashed).
pub fn chart(results: &Results) -> String {
    let mut groups = Vec::new();
    let mut keys: Vec<(String, usize)> = Vec::new();
    for m in &results.measurements {
        if !keys.contains(&(m.broker.clone(), m.size)) {
            keys.push((m.broker.clone(), m.size));
        }
    }
    for (broker, size) in keys {
        let of: Vec<&Measurement> = results
            .measurements
            .iter()
            .filter(|m| m.broker == broker && m.size == size)
            .collect();
        let raw = of.iter().find(|m| m.variant == "raw");
        for (phase, rate) in [
            (
                "publish",
                (|m: &Measurement| m.publish_per_sec) as fn(&Measurement) -> f64,
            ),
            ("consume", |m: &Measurement| m.consume_per_sec),
        ] {
            groups.push(crate::chart::Group {
                title: format!("{broker} {size} B {phase} (dashed: raw client)"),
                reference: raw.map_or(0.0, |r| rate(r)),
                bars: of
                    .iter()
                    .map(|m| crate::chart::Bar {
                        label: m.variant.to_owned(),
                        value: rate(m),
                        text: match (phase, m.latency_p99_ms) {
                            ("consume", Some(p99)) => {
                                format!("{:.0}/s · end-to-end p99 {p99:.1} ms", rate(m))
                            }
                            _ => format!("{:.0}/s", rate(m)),
                        },
                    })
                    .collect(),
            });
        }
    }
    crate::chart::svg(
        &format!("S5: broker adapters vs raw clients ({})", results.machine),
        &groups,
    )
}
