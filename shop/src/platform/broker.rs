//! Where events travel: the embedded log (default), NATS JetStream or Kafka, chosen by
//! `broker.kind`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use eddy_core::PartitionSample;
use eddy_core::{async_trait, Publisher, Subscriber};
use eddy_log::{Log, LogConfig};
use eddy_telemetry::{LagProbe, PartitionProbe};

use crate::config::{BrokerConfig, BrokerKind, Config, Database};
use crate::contracts::TOPICS;

/// The broker the platform publishes to and consumes from.
#[derive(Debug, Clone)]
pub enum Broker {
    Embedded(Log),
    #[cfg(feature = "nats")]
    Nats(Box<eddy_nats::Nats>),
    #[cfg(feature = "kafka")]
    Kafka(Box<eddy_kafka::Kafka>),
}

impl Broker {
    /// Connects (or opens the log) and makes sure every topic of the platform exists.
    pub async fn open(config: &Config) -> anyhow::Result<Self> {
        match config.broker.kind {
            BrokerKind::Embedded => {
                let log = Log::open(
                    super::open_db(config, Database::Log).await?,
                    LogConfig {
                        instance_id: Some(config.instance_name()),
                        retention: Duration::from_secs(config.broker.log_retention_secs),
                        unconsumed_retention: match config.broker.log_unconsumed_retention_secs {
                            0 => None,
                            secs => Some(Duration::from_secs(secs)),
                        },
                        dead_letter_retention: Duration::from_secs(
                            config.broker.log_dead_letter_retention_secs,
                        ),
                        ..LogConfig::default()
                    },
                )
                .await
                .context("cannot open the embedded log")?;
                for topic in TOPICS {
                    log.create_topic(topic, log.config().default_partitions)
                        .await?;
                }
                Ok(Broker::Embedded(log))
            }
            BrokerKind::Nats => Self::nats(&config.broker).await,
            BrokerKind::Kafka => Self::kafka(&config.broker).await,
        }
    }

    #[cfg(feature = "nats")]
    async fn nats(config: &BrokerConfig) -> anyhow::Result<Self> {
        let nats = eddy_nats::Nats::connect(eddy_nats::NatsConfig {
            url: config.nats_url.clone(),
            stream_prefix: config.nats_stream_prefix.clone(),
            subject_prefix: config.nats_subject_prefix.clone(),
            ack_wait: Duration::from_millis(config.nats_ack_wait_ms),
            ..eddy_nats::NatsConfig::default()
        })
        .await
        .with_context(|| format!("cannot connect to NATS at {}", config.nats_url))?;
        for topic in TOPICS {
            nats.ensure_topic(topic).await?;
        }
        Ok(Broker::Nats(Box::new(nats)))
    }

    #[cfg(not(feature = "nats"))]
    async fn nats(_: &BrokerConfig) -> anyhow::Result<Self> {
        anyhow::bail!("broker.kind is nats, but this shop was built without the nats feature")
    }

    #[cfg(feature = "kafka")]
    async fn kafka(config: &BrokerConfig) -> anyhow::Result<Self> {
        let kafka = eddy_kafka::Kafka::connect(eddy_kafka::KafkaConfig {
            bootstrap_servers: config.kafka_bootstrap_servers.clone(),
            partitions: config.kafka_partitions,
            producer: BrokerConfig::librdkafka(&config.kafka_producer),
            consumer: BrokerConfig::librdkafka(&config.kafka_consumer),
            ..eddy_kafka::KafkaConfig::default()
        })?;
        for topic in TOPICS {
            kafka.ensure_topic(topic).await?;
        }
        Ok(Broker::Kafka(Box::new(kafka)))
    }

    #[cfg(not(feature = "kafka"))]
    async fn kafka(_: &BrokerConfig) -> anyhow::Result<Self> {
        anyhow::bail!("broker.kind is kafka, but this shop was built without the kafka feature")
    }

    pub fn publisher(&self) -> Arc<dyn Publisher> {
        match self {
            Broker::Embedded(log) => Arc::new(log.clone()),
            #[cfg(feature = "nats")]
            Broker::Nats(nats) => Arc::new(nats.as_ref().clone()),
            #[cfg(feature = "kafka")]
            Broker::Kafka(kafka) => Arc::new(kafka.as_ref().clone()),
        }
    }

    pub fn subscriber(&self) -> Arc<dyn Subscriber> {
        match self {
            Broker::Embedded(log) => Arc::new(log.clone()),
            #[cfg(feature = "nats")]
            Broker::Nats(nats) => Arc::new(nats.as_ref().clone()),
            #[cfg(feature = "kafka")]
            Broker::Kafka(kafka) => Arc::new(kafka.as_ref().clone()),
        }
    }

    /// Whether the broker answers within `timeout`.
    pub async fn reachable(&self, timeout: Duration) -> bool {
        match self {
            Broker::Embedded(log) => super::health::answers(log.db(), timeout).await,
            #[cfg(feature = "nats")]
            Broker::Nats(nats) => nats.is_connected(),
            #[cfg(feature = "kafka")]
            Broker::Kafka(kafka) => tokio::time::timeout(timeout, kafka.is_reachable())
                .await
                .unwrap_or(false),
        }
    }

    /// Deletes what the embedded log keeps past its retention (other brokers do their
    /// own), and exports the log's counters of records dropped unconsumed
    /// (`log_records_dropped_unconsumed_total`) and found missing by a group
    /// (`log_records_missing_total`).
    // Without the nats and kafka features the embedded log is the only broker.
    #[allow(irrefutable_let_patterns)]
    pub async fn purge_expired(&self, batch_len_max: u64) {
        if let Broker::Embedded(log) = self {
            let batch = i64::try_from(batch_len_max).unwrap_or(i64::MAX);
            let purged = log.purge_expired(batch).await;
            let stats = log.stats();
            metrics::counter!("log_records_dropped_unconsumed_total")
                .absolute(stats.dropped_unconsumed());
            metrics::counter!("log_records_missing_total").absolute(stats.holes_seen());
            if let Err(error) = purged {
                tracing::warn!(%error, "log retention purge failed");
            }
        }
    }

    #[allow(irrefutable_let_patterns)]
    pub async fn close(&self) {
        if let Broker::Embedded(log) = self {
            log.db().close().await;
        }
    }
}

#[async_trait]
impl LagProbe for Broker {
    async fn lag(&self, group: &str, topic: &str) -> Option<u64> {
        let lag = match self {
            Broker::Embedded(log) => log.lag(group, topic).await,
            #[cfg(feature = "nats")]
            Broker::Nats(nats) => nats.lag(group, topic).await,
            #[cfg(feature = "kafka")]
            Broker::Kafka(kafka) => kafka.lag(group, topic).await,
        };
        match lag {
            Ok(lag) => Some(lag),
            Err(error) => {
                tracing::debug!(group, topic, %error, "lag unknown");
                None
            }
        }
    }
}

#[async_trait]
impl PartitionProbe for Broker {
    async fn partition_samples(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<Vec<PartitionSample>, eddy_core::Error> {
        match self {
            Broker::Embedded(log) => log.partition_samples(group, topic).await,
            #[cfg(feature = "nats")]
            Broker::Nats(nats) => nats.partition_samples(group, topic).await,
            #[cfg(feature = "kafka")]
            Broker::Kafka(kafka) => kafka.partition_samples(group, topic).await,
        }
    }
}
