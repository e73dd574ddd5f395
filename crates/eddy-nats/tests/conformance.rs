//! The NATS JetStream adapter passes the broker conformance suite against the local
//! nats-server (`EDDY_TEST_NATS_URL`, default `nats://127.0.0.1:4222`). Every test
//! uses streams of its own and deletes them afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eddy_core::{Publisher, Subscriber};
use eddy_nats::{Nats, NatsConfig};
use eddy_testkit::conformance::{Capabilities, Fixture};

struct NatsFixture {
    nats: Nats,
    config: NatsConfig,
    topics: Mutex<Vec<String>>,
}

fn config() -> NatsConfig {
    let prefix = format!("t{}", uuid::Uuid::now_v7().simple());
    NatsConfig {
        url: std::env::var("EDDY_TEST_NATS_URL")
            .unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned()),
        stream_prefix: format!("EDDYTEST_{prefix}"),
        subject_prefix: format!("eddytest.{prefix}"),
        ack_wait: Duration::from_secs(2),
        fetch_wait: Duration::from_millis(200),
        ..NatsConfig::default()
    }
}

async fn fixture() -> NatsFixture {
    let config = config();
    let nats = Nats::connect(config.clone()).await.unwrap_or_else(|e| {
        panic!("NATS with JetStream is required for this test and is not reachable ({e}). Start nats-server -js (see README, 'Tests') or set EDDY_TEST_NATS_URL.")
    });
    NatsFixture {
        nats,
        config,
        topics: Mutex::new(Vec::new()),
    }
}

impl Drop for NatsFixture {
    /// Deletes the test's streams (from another thread: `Drop` cannot await, and it also
    /// runs while a failed test unwinds).
    fn drop(&mut self) {
        let mut topics: Vec<String> =
            std::mem::take(&mut *self.topics.lock().unwrap_or_else(|p| p.into_inner()));
        topics.extend(topics.clone().into_iter().map(|t| format!("{t}.dlq")));
        let config = self.config.clone();
        eddy_testkit::block_on_own_runtime(async move {
            if let Ok(nats) = Nats::connect(config).await {
                for topic in topics {
                    let _ = nats.delete_topic(&topic).await;
                }
            }
        });
    }
}

#[eddy_core::async_trait]
impl Fixture for NatsFixture {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            ordering: true,
            persistence: true,
            consumer_groups: true,
            redelivery: true,
        }
    }

    fn publisher(&self) -> Arc<dyn Publisher> {
        Arc::new(self.nats.clone())
    }

    fn subscriber(&self) -> Arc<dyn Subscriber> {
        Arc::new(self.nats.clone())
    }

    async fn topic(&self, _partitions: u32) -> String {
        let topic = format!("topic-{}", uuid::Uuid::now_v7().simple());
        self.nats.ensure_topic(&topic).await.unwrap();
        self.topics.lock().unwrap().push(topic.clone());
        topic
    }

    fn session_timeout(&self) -> Duration {
        // A vanished member's messages come back after ack_wait.
        self.config.ack_wait + Duration::from_millis(500)
    }
}

eddy_testkit::conformance_tests!(jetstream, fixture());
