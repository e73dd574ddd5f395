//! `Nats::partition_samples` against the local nats-server (`EDDYTEST_NATS_URL`,
//! default `nats://127.0.0.1:4222`): the offsets and times the lag monitor samples.
//! Every test uses streams of its own and deletes them afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use eddy_core::PartitionSample;
use eddy_core::{OffsetDateTime, Publisher, Subscriber, Subscription};
use eddy_nats::{Nats, NatsConfig};
use eddy_testkit::events::Numbered;

/// How far the server's time stamp may be from the test's clock around it (one host,
/// one clock; the margin is only for rounding).
const CLOCK_SLACK: Duration = Duration::from_millis(20);

/// A connection with a stream prefix of its own; deletes its topics' streams on drop.
struct Fixture {
    nats: Nats,
    config: NatsConfig,
    topic: String,
}

impl Fixture {
    async fn new() -> Self {
        let prefix = format!("t{}", uuid::Uuid::now_v7().simple());
        let config = NatsConfig {
            url: std::env::var("EDDYTEST_NATS_URL")
                .unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned()),
            stream_prefix: format!("EDDYTEST_{prefix}"),
            subject_prefix: format!("eddytest.{prefix}"),
            ..NatsConfig::default()
        };
        let nats = Nats::connect(config.clone()).await.unwrap_or_else(|e| {
            panic!("NATS with JetStream is required for this test and is not reachable ({e}). Start nats-server -js (see README, 'Tests') or set EDDYTEST_NATS_URL.")
        });
        Self {
            nats,
            config,
            topic: "orders".to_owned(),
        }
    }

    /// Publishes `len` events and returns the test's clock before and after.
    async fn publish(&self, len: u64) -> (OffsetDateTime, OffsetDateTime) {
        let events: Vec<_> = (0..len).map(|i| Numbered::envelope("k", i)).collect();
        let before = OffsetDateTime::now_utc();
        self.nats.publish(&self.topic, &events).await.unwrap();
        (before, OffsetDateTime::now_utc())
    }

    async fn position(&self, group: &str) -> PartitionSample {
        let mut positions = self
            .nats
            .partition_samples(group, &self.topic)
            .await
            .unwrap();
        assert_eq!(
            positions.len(),
            1,
            "one stream, one partition: {positions:?}"
        );
        positions.remove(0)
    }

    /// The position once the group's committed offset is `committed` (acks reach the
    /// server asynchronously).
    async fn position_once_committed(&self, group: &str, committed: u64) -> PartitionSample {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let position = self.position(group).await;
            if position.committed_offset == Some(committed) {
                return position;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "committed offset stayed {:?}, not {committed}",
                position.committed_offset
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A member of `group` that took (in order) the first `len` messages it was given
    /// and committed them.
    async fn consume(&self, group: &str, len: usize) -> Box<dyn Subscription> {
        let member = self.nats.subscribe(&self.topic, group).await.unwrap();
        let mut taken = Vec::new();
        while taken.len() < len {
            taken.extend(member.fetch(len - taken.len()).await.unwrap());
        }
        let offsets: Vec<u64> = taken.iter().map(|d| d.offset).collect();
        let first = offsets[0];
        assert_eq!(
            offsets,
            (first..first + len as u64).collect::<Vec<_>>(),
            "one member receives in order"
        );
        member.commit(&[(0, first + len as u64)]).await.unwrap();
        member
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let config = self.config.clone();
        let topic = self.topic.clone();
        eddy_testkit::block_on_own_runtime(async move {
            if let Ok(nats) = Nats::connect(config).await {
                let _ = nats.delete_topic(&topic).await;
            }
        });
    }
}

fn assert_between(at: Option<OffsetDateTime>, from: OffsetDateTime, to: OffsetDateTime) {
    let at = at.expect("a time");
    assert!(
        at >= from - CLOCK_SLACK && at <= to + CLOCK_SLACK,
        "{at} is not between {from} and {to}"
    );
}

#[tokio::test]
async fn a_group_part_way_through_waits_on_its_first_unacknowledged_message() {
    let fixture = Fixture::new().await;
    let (first_from, first_to) = fixture.publish(4).await;
    // Apart in time, so the age tells which message was read.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (second_from, second_to) = fixture.publish(6).await;

    // Sequences 1..=10; billing acknowledges 1..=4.
    let member = fixture.consume("billing", 4).await;
    let billing = fixture.position_once_committed("billing", 5).await;
    assert_eq!(billing.partition, 0);
    assert_eq!(billing.end_offset, 11, "last sequence 10, plus one");
    assert_eq!(billing.oldest_unconsumed_offset, 5);
    assert_eq!(billing.lag_messages(), 6);
    assert_between(billing.oldest_unconsumed_at, second_from, second_to);
    assert_between(billing.committed_at, second_to, OffsetDateTime::now_utc());

    // A group that never subscribed has no consumer: everything kept waits.
    let audit = fixture.position("audit").await;
    assert_eq!(audit.committed_offset, None);
    assert_eq!(audit.committed_at, None);
    assert_eq!(audit.end_offset, 11);
    assert_eq!(audit.oldest_unconsumed_offset, 1);
    assert_eq!(audit.lag_messages(), 10);
    assert_between(audit.oldest_unconsumed_at, first_from, first_to);
    member.close().await.unwrap();
}

#[tokio::test]
async fn a_group_that_acknowledged_everything_has_no_lag_and_no_oldest_time() {
    let fixture = Fixture::new().await;
    fixture.publish(5).await;
    let member = fixture.consume("billing", 5).await;
    let billing = fixture.position_once_committed("billing", 6).await;
    assert_eq!(billing.end_offset, 6);
    assert_eq!(billing.oldest_unconsumed_offset, 6, "the end");
    assert_eq!(billing.lag_messages(), 0);
    assert_eq!(billing.oldest_unconsumed_at, None);
    member.close().await.unwrap();
}

#[tokio::test]
async fn a_group_subscribed_to_an_empty_stream_has_no_lag() {
    let fixture = Fixture::new().await;
    let member = fixture
        .nats
        .subscribe(&fixture.topic, "billing")
        .await
        .unwrap();
    let billing = fixture.position("billing").await;
    assert_eq!(
        billing,
        PartitionSample {
            partition: 0,
            end_offset: 1,
            committed_offset: Some(1),
            committed_at: None,
            oldest_unconsumed_offset: 1,
            oldest_unconsumed_at: None,
        }
    );
    member.close().await.unwrap();
}

#[tokio::test]
async fn a_topic_without_a_stream_has_no_partitions() {
    let fixture = Fixture::new().await;
    let positions = fixture
        .nats
        .partition_samples("billing", "never-created")
        .await
        .unwrap();
    assert_eq!(positions, []);
}

#[tokio::test]
async fn a_group_behind_the_stream_limits_waits_from_the_oldest_kept_message() {
    let fixture = Fixture::new().await;
    // The topic's stream keeps 5 messages (made here; the adapter then uses it as it is).
    let js = async_nats::jetstream::new(async_nats::connect(&fixture.config.url).await.unwrap());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: fixture.nats.stream_name(&fixture.topic),
        subjects: vec![fixture.nats.subject(&fixture.topic)],
        max_messages: 5,
        ..Default::default()
    })
    .await
    .unwrap();
    fixture.publish(3).await;
    let member = fixture.consume("slow", 2).await;
    fixture.position_once_committed("slow", 3).await;
    member.close().await.unwrap();
    // Sequences 4..=8 arrive, and the limit removes 1..=3: slow's message 3 is gone.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (from, to) = fixture.publish(5).await;

    let slow = fixture.position("slow").await;
    assert_eq!(slow.end_offset, 9);
    // 3 until the server moves the ack floor past what the limit removed (it does so
    // on its own schedule): either way nothing waits before the oldest kept.
    assert!(
        matches!(slow.committed_offset, Some(3 | 4)),
        "{:?}",
        slow.committed_offset
    );
    assert_eq!(slow.oldest_unconsumed_offset, 4, "the oldest kept");
    assert_eq!(slow.lag_messages(), 5);
    assert_between(slow.oldest_unconsumed_at, from, to);

    let new = fixture.position("new").await;
    assert_eq!(new.committed_offset, None);
    assert_eq!(new.oldest_unconsumed_offset, 4);
    assert_between(new.oldest_unconsumed_at, from, to);
}

#[tokio::test]
async fn a_message_deleted_inside_the_stream_is_skipped() {
    let fixture = Fixture::new().await;
    fixture.publish(3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (from, to) = fixture.publish(3).await;
    // billing takes 1..=3; then 4 is deleted, so 5 is the next message kept.
    let stream = fixture.nats.ensure_topic(&fixture.topic).await.unwrap();
    let member = fixture.consume("billing", 3).await;
    fixture.position_once_committed("billing", 4).await;
    member.close().await.unwrap();
    stream.delete_message(4).await.unwrap();

    let billing = fixture.position("billing").await;
    assert_eq!(billing.end_offset, 7);
    assert_eq!(
        billing.oldest_unconsumed_offset, 5,
        "4 is deleted, 1..=3 are kept but consumed"
    );
    assert_eq!(billing.lag_messages(), 2);
    assert_between(billing.oldest_unconsumed_at, from, to);
}

/// What tells STALLED from STOPPED: an ack that does not move the ack floor (a message
/// acknowledged above a gap) still moves `committed_at`.
#[tokio::test]
async fn an_ack_above_the_floor_moves_the_commit_time_but_not_the_offset() {
    use async_nats::jetstream::{self, consumer::pull};
    use futures::StreamExt;

    let fixture = Fixture::new().await;
    fixture.publish(4).await;
    let stream = fixture.nats.ensure_topic(&fixture.topic).await.unwrap();
    // Acks one by one, which the adapter's commits never do: straight through async-nats.
    let consumer: jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(
            "picky",
            pull::Config {
                durable_name: Some("picky".to_owned()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut batch = consumer.fetch().max_messages(4).messages().await.unwrap();
    let mut messages = Vec::new();
    while let Some(message) = batch.next().await {
        messages.push(message.unwrap());
    }
    assert_eq!(messages.len(), 4);

    // `double_ack` waits for the server to take the ack.
    messages[0].double_ack().await.unwrap();
    let first = fixture.position("picky").await;
    assert_eq!(first.committed_offset, Some(2));
    let first_at = first.committed_at.expect("a commit time after an ack");

    tokio::time::sleep(Duration::from_millis(100)).await;
    messages[2].double_ack().await.unwrap();
    let second = fixture.position("picky").await;
    assert_eq!(
        second.committed_offset,
        Some(2),
        "message 2 is still not acked"
    );
    assert_eq!(second.oldest_unconsumed_offset, 2);
    assert_eq!(
        second.lag_messages(),
        3,
        "message 3 counts, as Kafka counts it"
    );
    let second_at = second.committed_at.expect("a commit time");
    assert!(
        second_at >= first_at + Duration::from_millis(100),
        "the ack of message 3 moved the commit time: {first_at} then {second_at}"
    );
}
