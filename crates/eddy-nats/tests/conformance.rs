//! The NATS JetStream adapter passes the broker conformance suite against the local
//! nats-server (`EDDYTEST_NATS_URL`, default `nats://127.0.0.1:4222`). Every test
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
        url: std::env::var("EDDYTEST_NATS_URL")
            .unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned()),
        stream_prefix: format!("EDDYTEST_{prefix}"),
        subject_prefix: format!("eddytest.{prefix}"),
        ack_wait: Duration::from_secs(2),
        ..NatsConfig::default()
    }
}

async fn fixture() -> NatsFixture {
    let config = config();
    let nats = Nats::connect(config.clone()).await.unwrap_or_else(|e| {
        panic!("NATS with JetStream is required for this test and is not reachable ({e}). Start nats-server -js (see README, 'Tests') or set EDDYTEST_NATS_URL.")
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
            ordered_handback: false,
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

#[tokio::test]
async fn lag_is_what_the_group_has_not_acknowledged() {
    use eddy_testkit::conformance::Fixture as _;
    let fixture = fixture().await;
    let topic = fixture.topic(1).await;
    let events = eddy_testkit::events::Numbered::interleaved(2, 5);
    fixture.nats.publish(&topic, &events).await.unwrap();
    let member = fixture.nats.subscribe(&topic, "billing").await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 6 {
        seen.extend(member.fetch(6 - seen.len()).await.unwrap());
    }
    // Six delivered, none acknowledged: all ten are lag.
    assert_eq!(fixture.nats.lag("billing", &topic).await.unwrap(), 10);
    let next = seen.iter().map(|d| d.offset).max().unwrap() + 1;
    member.commit(&[(0, next)]).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let lag = fixture.nats.lag("billing", &topic).await.unwrap();
        if lag == 4 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "lag stayed {lag}, not 4"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    member.close().await.unwrap();
}

/// A member that closes hands back what its open pull brought, and its last pull takes
/// nothing more: the next member gets everything about `pull_expires` later, long before
/// `ack_wait`.
#[tokio::test]
async fn a_closed_member_leaves_nothing_behind_for_ack_wait() {
    use eddy_testkit::conformance::Fixture as _;
    let mut fixture = fixture().await;
    fixture.config.ack_wait = Duration::from_secs(60);
    fixture.config.pull_expires = Duration::from_secs(1);
    fixture.nats = Nats::connect(fixture.config.clone()).await.unwrap();
    let topic = fixture.topic(1).await;
    let first = eddy_testkit::events::Numbered::interleaved(4, 100);
    fixture.nats.publish(&topic, &first).await.unwrap();
    let leaving = fixture.nats.subscribe(&topic, "g").await.unwrap();
    // It takes some, so its pull is open and has brought more than it handed out.
    let taken = eddy_testkit::conformance::receive(leaving.as_ref(), 1, true).await;
    assert!(taken.len() < first.len(), "some left in the pull");
    leaving.close().await.unwrap();
    // Published after the close: none may go to the closed member's pull.
    let second = eddy_testkit::events::Numbered::interleaved(4, 100);
    fixture.nats.publish(&topic, &second).await.unwrap();

    let heir = fixture.nats.subscribe(&topic, "g").await.unwrap();
    let expected = first.len() + second.len() - taken.len();
    let got = tokio::time::timeout(
        Duration::from_secs(10),
        eddy_testkit::conformance::receive(heir.as_ref(), expected, true),
    )
    .await
    .expect("everything within 10 s, not after the 60 s ack_wait");
    let offsets: std::collections::BTreeSet<u64> = got.iter().map(|d| d.offset).collect();
    assert_eq!(offsets.len(), got.len(), "nothing twice");
    let taken_last = taken.iter().map(|d| d.offset).max().unwrap();
    assert_eq!(
        offsets,
        (taken_last + 1..=800).collect(),
        "exactly what the closed member did not commit"
    );
    heir.close().await.unwrap();
}

/// Closing a member while a fetch waits on its idle pull ends the fetch instead of
/// waiting for a message that may never come.
#[tokio::test]
async fn close_ends_a_waiting_fetch() {
    use eddy_testkit::conformance::Fixture as _;
    let fixture = fixture().await;
    let topic = fixture.topic(1).await;
    let member: Arc<dyn eddy_core::Subscription> =
        fixture.nats.subscribe(&topic, "g").await.unwrap().into();
    let waiting = tokio::spawn({
        let member = member.clone();
        async move { member.fetch(10).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::time::timeout(Duration::from_secs(5), member.close())
        .await
        .expect("close does not wait for the idle fetch")
        .unwrap();
    let fetched = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the fetch ends")
        .unwrap();
    assert!(fetched.is_err(), "a closed member fetches nothing");
}

/// An event larger than the server's `max_payload` can never be published: a
/// permanent error naming it (the relay parks such a row instead of retrying forever),
/// and nothing of the batch is sent.
#[tokio::test]
async fn an_event_over_max_payload_is_refused_permanently() {
    use eddy_testkit::conformance::Fixture as _;
    let fixture = fixture().await;
    let topic = fixture.topic(1).await;
    let small = eddy_testkit::events::Numbered::envelope("k", 1);
    let mut huge = eddy_testkit::events::Numbered::envelope("k", 2);
    huge.payload = vec![b'x'; 8 * 1024 * 1024];
    let error = fixture
        .nats
        .publish(&topic, &[small, huge.clone()])
        .await
        .unwrap_err();
    assert_eq!(error.kind(), eddy_core::ErrorKind::Permanent, "{error}");
    assert!(error.to_string().contains(&huge.id.to_string()), "{error}");
    let member = fixture.nats.subscribe(&topic, "anyone").await.unwrap();
    assert_eq!(
        fixture.nats.lag("anyone", &topic).await.unwrap(),
        0,
        "the small event before it was not sent either"
    );
    member.close().await.unwrap();
}

/// A consumer group JetStream cannot name (a durable name with `.`, `*`, `>` or white
/// space: it would split the API subject, and the request would wait for an answer that
/// never comes) is refused at once with a permanent error that says why — not a timeout
/// the supervisor retries for ever. Found when the shop named a group
/// `catalog.dead-letters`.
#[tokio::test]
async fn a_group_name_jetstream_cannot_take_is_refused_at_once() {
    use eddy_testkit::conformance::Fixture as _;
    let fixture = fixture().await;
    let topic = fixture.topic(1).await;
    for group in ["catalog.dead-letters", "a*", "b>", "with space"] {
        let started = std::time::Instant::now();
        let error = match fixture.nats.subscribe(&topic, group).await {
            Ok(_) => panic!("{group:?} was accepted"),
            Err(error) => error,
        };
        assert_eq!(
            error.kind(),
            eddy_core::ErrorKind::Permanent,
            "{group}: {error}"
        );
        assert!(error.to_string().contains(group), "{error}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{group}: {error}"
        );
    }
}
