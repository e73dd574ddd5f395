//! The lag monitor's facts per partition (`Kafka::partition_samples`), against rdkafka's
//! in-process `MockCluster`: end, committed and the oldest unconsumed record with its
//! timestamp, for a group that never consumed and one that consumed everything.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use eddy_core::{Publisher, Subscriber};
use eddy_kafka::{Kafka, KafkaConfig};
use eddy_testkit::conformance::receive_distinct_in_key_order;
use eddy_testkit::events::Numbered;
use rdkafka::mocking::MockCluster;

const TOPIC: &str = "orders";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_tell_their_end_commit_and_oldest_unconsumed_record() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 2, 1).unwrap();
    let kafka = Kafka::connect(KafkaConfig {
        bootstrap_servers: cluster.bootstrap_servers(),
        ..KafkaConfig::default()
    })
    .unwrap();
    let before = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);
    kafka
        .publish(TOPIC, &Numbered::interleaved(4, 5))
        .await
        .unwrap();
    let after = time::OffsetDateTime::now_utc() + time::Duration::seconds(1);

    // A group that never consumed: everything waits, from the first record.
    let idle = kafka.partition_samples("idle", TOPIC).await.unwrap();
    assert_eq!(idle.len(), 2);
    assert_eq!(idle.iter().map(|p| p.end_offset).sum::<u64>(), 20);
    for p in &idle {
        assert_eq!(p.committed_offset, None);
        assert_eq!(p.oldest_unconsumed_offset, 0);
        let at = p.oldest_unconsumed_at.expect("the first record's time");
        assert!(
            before <= at && at <= after,
            "{at} not in the publish window"
        );
    }

    // A group that consumed everything: committed at the end, nothing waits.
    let subscription = kafka.subscribe(TOPIC, "checker").await.unwrap();
    receive_distinct_in_key_order(subscription.as_ref(), 20).await;
    subscription.close().await.unwrap();
    let done = kafka.partition_samples("checker", TOPIC).await.unwrap();
    for p in &done {
        assert_eq!(p.committed_offset, Some(p.end_offset), "{p:?}");
        assert_eq!(p.oldest_unconsumed_offset, p.end_offset);
        assert_eq!(p.oldest_unconsumed_at, None);
    }
}
