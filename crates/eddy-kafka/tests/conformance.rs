//! The Kafka adapter passes the broker conformance suite against tansu, a
//! Kafka-compatible broker each test starts for itself (in memory, on a port of its own).
//! tansu must be installed: `cargo install --locked tansu --version 0.6.0 --features
//! dynostore` (`.ci/run` does it); without it the tests fail and say so.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use eddy_core::{Publisher, Subscriber};
use eddy_kafka::{Kafka, KafkaConfig};
use eddy_testkit::conformance::{Capabilities, Fixture};
use eddy_testkit::tansu::Tansu;

use common::connect;

/// Where the fixture's broker lives, and how it creates topics.
enum Broker {
    /// Topics through the adapter's admin API; the broker stops when dropped.
    Tansu { _broker: Tansu },
    /// rdkafka's mock cluster is neither `Send` nor `Sync`: it lives on a thread of its
    /// own, which creates topics on request and ends (taking the cluster down) when this
    /// sender is dropped.
    Mock(std::sync::Mutex<std::sync::mpsc::Sender<(String, i32, std::sync::mpsc::Sender<()>)>>),
}

struct KafkaFixture {
    kafka: Kafka,
    // Dropped after `kafka`: fields drop in declaration order.
    broker: Broker,
}

/// The adapter with test-sized group timeouts and `extra` consumer settings.
fn fixture() -> KafkaFixture {
    let tansu = Tansu::start();
    let kafka = connect(
        tansu.bootstrap().to_owned(),
        &[("topic.metadata.refresh.interval.ms", "1000")],
        // One record per batch: tansu 0.6.0 does not serve a fetch that starts inside a
        // record batch (after a member commits offset 5 of a 10-record batch and dies,
        // its heir receives nothing more from that partition; the same case passes
        // against `MockCluster` below with ordinary batching, so it is the broker's
        // limitation, not the adapter's).
        &[("batch.num.messages", "1")],
        KafkaConfig::default().buffer_len,
    );
    KafkaFixture {
        kafka,
        broker: Broker::Tansu { _broker: tansu },
    }
}

/// The same suite against rdkafka's in-process mock cluster: a second, independent
/// broker implementation.
fn mock_fixture() -> KafkaFixture {
    let (requests, inbox) =
        std::sync::mpsc::channel::<(String, i32, std::sync::mpsc::Sender<()>)>();
    let (bootstrap_tx, bootstrap_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
        bootstrap_tx.send(cluster.bootstrap_servers()).unwrap();
        while let Ok((topic, partitions, done)) = inbox.recv() {
            cluster.create_topic(&topic, partitions, 1).unwrap();
            let _ = done.send(());
        }
    });
    KafkaFixture {
        kafka: connect(
            bootstrap_rx.recv().unwrap(),
            &[],
            &[],
            KafkaConfig::default().buffer_len,
        ),
        broker: Broker::Mock(std::sync::Mutex::new(requests)),
    }
}

#[eddy_core::async_trait]
impl Fixture for KafkaFixture {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            ordering: true,
            persistence: true,
            consumer_groups: true,
            redelivery: true,
            ordered_handback: true,
        }
    }

    fn publisher(&self) -> Arc<dyn Publisher> {
        Arc::new(self.kafka.clone())
    }

    fn subscriber(&self) -> Arc<dyn Subscriber> {
        Arc::new(self.kafka.clone())
    }

    async fn topic(&self, partitions: u32) -> String {
        let topic = format!("topic-{}", uuid::Uuid::now_v7().simple());
        match &self.broker {
            Broker::Tansu { .. } => self
                .kafka
                .create_topic(&topic, partitions as i32)
                .await
                .unwrap(),
            Broker::Mock(requests) => {
                let (done, created) = std::sync::mpsc::channel();
                requests
                    .lock()
                    .unwrap()
                    .send((topic.clone(), partitions as i32, done))
                    .unwrap();
                created.recv().unwrap();
            }
        }
        topic
    }

    fn session_timeout(&self) -> Duration {
        Duration::from_secs(8)
    }
}

eddy_testkit::conformance_tests!(tansu, async { fixture() });
eddy_testkit::conformance_tests!(mock_cluster, async { mock_fixture() });
