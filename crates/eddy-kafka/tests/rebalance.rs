//! Rebalances, against tansu and rdkafka's in-process `MockCluster`: a revocation lets partitions go
//! only after the work handed out on them is committed (so the next owner gets none of
//! it again), and a member that stops fetching for longer than `max.poll.interval.ms`
//! keeps its partitions (the poll thread pauses them instead of leaving the group); and
//! the lag a group reports.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use eddy_core::{Delivery, Message, Publisher, Subscription};
use eddy_kafka::{Kafka, KafkaSubscription};
use eddy_testkit::events::Numbered;
use eddy_testkit::tansu::Tansu;
use rdkafka::mocking::MockCluster;

const TOPIC: &str = "orders";

/// The shared test adapter with `consumer` settings and a `buffer_len` hand-off buffer.
fn kafka(bootstrap_servers: String, consumer: &[(&str, &str)], buffer_len: usize) -> Kafka {
    common::connect(bootstrap_servers, consumer, &[], buffer_len)
}

fn id(delivery: &Delivery) -> eddy_core::EventId {
    match &delivery.message {
        Message::Event(envelope) => envelope.id,
        Message::Undecodable(raw) => panic!("undecodable message: {}", raw.error),
    }
}

/// Fetches from `member` for up to `wait`, returning what arrived.
async fn fetch_for(member: &KafkaSubscription, wait: Duration) -> Vec<Delivery> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Ok(batch)) = tokio::time::timeout_at(deadline, member.fetch(100)).await {
        out.extend(batch);
    }
    out
}

/// The `(partition, next_offset)` positions after `deliveries`.
fn positions(deliveries: &[Delivery]) -> Vec<(u32, u64)> {
    let mut next = BTreeMap::new();
    for d in deliveries {
        let end = next.entry(d.partition).or_insert(0);
        *end = (*end).max(d.offset + 1);
    }
    next.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_waits_for_handed_out_work_to_be_committed() {
    // On tansu: rdkafka's mock cluster refuses every commit while a rebalance is in
    // progress, where Kafka accepts commits from the old generation until it completes.
    let tansu = Tansu::start();
    let kafka = kafka(tansu.bootstrap().to_owned(), &[], 1024);
    kafka.create_topic(TOPIC, 4).await.unwrap();
    let first = Numbered::interleaved(8, 5);
    kafka.publish(TOPIC, &first).await.unwrap();

    // A takes everything and is still "processing" it when B joins.
    let a = kafka.member(TOPIC, "billing").await.unwrap();
    let mut seen_by_a = Vec::new();
    while seen_by_a.len() < first.len() {
        seen_by_a.extend(a.fetch(100).await.unwrap());
    }
    let b = kafka.member(TOPIC, "billing").await.unwrap();
    // A finishes two seconds into the rebalance and commits; the revocation waited.
    tokio::time::sleep(Duration::from_secs(2)).await;
    a.commit(&positions(&seen_by_a)).await.unwrap();

    let second = Numbered::interleaved(8, 5);
    kafka.publish(TOPIC, &second).await.unwrap();
    let (later_a, later_b) = tokio::join!(
        fetch_for(&a, Duration::from_secs(12)),
        fetch_for(&b, Duration::from_secs(12))
    );
    assert!(
        !b.assigned_partitions().is_empty(),
        "B never got partitions"
    );
    let old: HashSet<_> = first.iter().map(|e| e.id).collect();
    let again: Vec<_> = later_a
        .iter()
        .chain(&later_b)
        .filter(|d| old.contains(&id(d)))
        .collect();
    assert!(
        again.is_empty(),
        "{} committed messages were delivered again after the rebalance",
        again.len()
    );
    let received: HashSet<_> = later_a.iter().chain(&later_b).map(id).collect();
    let expected: HashSet<_> = second.iter().map(|e| e.id).collect();
    assert_eq!(received, expected, "messages published after the rebalance");
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_idle_beyond_max_poll_interval_keeps_its_partitions() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 1, 1).unwrap();
    // A small buffer, so the poll thread must pause rather than buffer everything.
    let kafka = kafka(
        cluster.bootstrap_servers(),
        &[("max.poll.interval.ms", "6000")],
        2,
    );
    let events = Numbered::interleaved(1, 50);
    kafka.publish(TOPIC, &events).await.unwrap();

    let member = kafka.member(TOPIC, "billing").await.unwrap();
    let first = member.fetch(1).await.unwrap();
    assert_eq!(first.len(), 1);
    let changes = member.assignment_changes();
    // A handler busy (or backing off) for longer than max.poll.interval.ms.
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(
        member.assignment_changes(),
        changes,
        "the member lost its partitions while the runtime was busy"
    );
    let mut all = first;
    while all.len() < events.len() {
        let batch = tokio::time::timeout(Duration::from_secs(10), member.fetch(100))
            .await
            .expect("the member stopped receiving")
            .unwrap();
        all.extend(batch);
    }
    let ids: Vec<_> = all.iter().map(id).collect();
    let expected: Vec<_> = events.iter().map(|e| e.id).collect();
    assert_eq!(ids, expected, "every message once, in order");
    member.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_is_what_the_group_has_not_committed() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic(TOPIC, 2, 1).unwrap();
    let kafka = kafka(cluster.bootstrap_servers(), &[], 1024);
    let events = Numbered::interleaved(4, 5);
    kafka.publish(TOPIC, &events).await.unwrap();
    assert_eq!(kafka.lag("billing", TOPIC).await.unwrap(), 20);

    let member = kafka.member(TOPIC, "billing").await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 12 {
        seen.extend(member.fetch(12 - seen.len()).await.unwrap());
    }
    member.commit(&positions(&seen)).await.unwrap();
    assert_eq!(kafka.lag("billing", TOPIC).await.unwrap(), 8);
    assert_eq!(kafka.lag("another-group", TOPIC).await.unwrap(), 20);
    member.close().await.unwrap();
}
