//! The broker conformance suite, after Watermill's: one set of cases that every
//! adapter must pass, each gated by the [`Capabilities`] the adapter claims.
//!
//! An adapter provides a [`Fixture`] and instantiates the suite with
//! [`crate::conformance_tests!`], which writes one `#[tokio::test]` per case:
//!
//! ```ignore
//! eddy_testkit::conformance_tests!(sqlite_log, crate::fixtures::sqlite_log());
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use eddy_core::{Delivery, EventId, JsonCodec, Message, Publisher, Subscriber, Subscription};

use crate::events::Numbered;

/// What an adapter promises; cases needing a missing capability are skipped (and say so).
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    /// Events with one key arrive in publish order.
    pub ordering: bool,
    /// Events published before a group subscribes are delivered to it.
    pub persistence: bool,
    /// Members of one group share the messages; different groups each get all.
    pub consumer_groups: bool,
    /// Uncommitted messages are delivered again after the member goes away.
    pub redelivery: bool,
    /// What a closing member hands back comes to the next member before the newer
    /// messages of its keys (per-key order survives a hand-back). JetStream does not
    /// promise this: it delivers newer messages while the handed-back ones wait.
    pub ordered_handback: bool,
}

/// One broker under test. Each call to [`Fixture::topic`] gives a fresh topic.
#[async_trait]
pub trait Fixture: Send + Sync {
    fn capabilities(&self) -> Capabilities;
    fn publisher(&self) -> Arc<dyn Publisher>;
    fn subscriber(&self) -> Arc<dyn Subscriber>;
    /// A topic no other test uses, with `partitions` partitions where that applies.
    async fn topic(&self, partitions: u32) -> String;
    /// How long a member that vanished without closing keeps its partitions.
    fn session_timeout(&self) -> Duration;
}

/// Upper bound of any single wait in the suite; a case that needs longer has failed.
pub const WAIT_MAX: Duration = Duration::from_secs(60);

/// Fetches until `count` deliveries arrived (committing each batch if `commit`), or
/// panics after [`WAIT_MAX`].
pub async fn receive(subscription: &dyn Subscription, count: usize, commit: bool) -> Vec<Delivery> {
    let mut out = Vec::with_capacity(count);
    let deadline = tokio::time::Instant::now() + WAIT_MAX;
    while out.len() < count {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let batch = match tokio::time::timeout(left, subscription.fetch(256)).await {
            Ok(Ok(batch)) => batch,
            Ok(Err(e)) => panic!("fetch failed: {e}"),
            Err(_) => panic!("received {} of {count} messages in {WAIT_MAX:?}", out.len()),
        };
        if commit {
            commit_all(subscription, &batch).await;
        }
        out.extend(batch);
    }
    out
}

/// Fetches (and commits) until `count` distinct [`Numbered`] events arrived, and checks
/// that per key their first sightings came in `seq` order. Duplicates are allowed: the
/// contract is at least once.
pub async fn receive_distinct_in_key_order(
    subscription: &dyn Subscription,
    count: usize,
) -> Vec<Numbered> {
    let mut seen: HashSet<EventId> = HashSet::new();
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut events = Vec::with_capacity(count);
    while seen.len() < count {
        for delivery in receive(subscription, 1, true).await {
            let (id, event) = numbered(&delivery);
            if !seen.insert(id) {
                continue;
            }
            if let Some(previous) = last.insert(event.key.clone(), event.seq) {
                assert!(
                    event.seq > previous,
                    "key {} went from {previous} to {}",
                    event.key,
                    event.seq
                );
            }
            events.push(event);
        }
    }
    events
}

/// Commits past every delivery in `batch`.
pub async fn commit_all(subscription: &dyn Subscription, batch: &[Delivery]) {
    let mut next: BTreeMap<u32, u64> = BTreeMap::new();
    for d in batch {
        let entry = next.entry(d.partition).or_default();
        *entry = (*entry).max(d.offset + 1);
    }
    let offsets: Vec<(u32, u64)> = next.into_iter().collect();
    subscription
        .commit(&offsets)
        .await
        .unwrap_or_else(|e| panic!("commit failed: {e}"));
}

fn numbered(delivery: &Delivery) -> (EventId, Numbered) {
    match &delivery.message {
        Message::Event(envelope) => (
            envelope.id,
            JsonCodec::decode::<Numbered>(envelope)
                .unwrap_or_else(|e| panic!("undecodable test event: {e}")),
        ),
        Message::Undecodable(u) => panic!("undecodable delivery: {}", u.error),
    }
}

fn skip(case: &str, capability: &str) {
    eprintln!("conformance case {case} skipped: adapter lacks {capability}");
}

/// Everything published is delivered, with its envelope intact.
pub async fn publish_then_receive(fixture: &dyn Fixture) {
    if !fixture.capabilities().persistence {
        return skip("publish_then_receive", "persistence");
    }
    let topic = fixture.topic(4).await;
    let sent = Numbered::interleaved(10, 10);
    fixture
        .publisher()
        .publish(&topic, &sent)
        .await
        .unwrap_or_else(|e| panic!("publish: {e}"));
    let subscription = fixture
        .subscriber()
        .subscribe(&topic, "g")
        .await
        .unwrap_or_else(|e| panic!("subscribe: {e}"));
    let got = receive(subscription.as_ref(), sent.len(), true).await;
    let by_id: HashMap<EventId, &eddy_core::Envelope> = sent.iter().map(|e| (e.id, e)).collect();
    for delivery in &got {
        let Message::Event(envelope) = &delivery.message else {
            panic!("undecodable delivery");
        };
        assert_eq!(
            by_id.get(&envelope.id).copied(),
            Some(envelope),
            "envelope changed in transit"
        );
        assert_eq!(delivery.topic, topic);
    }
    let ids: HashSet<EventId> = got.iter().map(|d| numbered(d).0).collect();
    assert_eq!(ids.len(), sent.len(), "every event exactly once");
    subscription
        .close()
        .await
        .unwrap_or_else(|e| panic!("close: {e}"));
}

/// Per key, events arrive in the order they were published, across many batches.
pub async fn per_key_order(fixture: &dyn Fixture) {
    if !fixture.capabilities().ordering {
        return skip("per_key_order", "ordering");
    }
    let topic = fixture.topic(4).await;
    let publisher = fixture.publisher();
    let sent = Numbered::interleaved(20, 50);
    for chunk in sent.chunks(37) {
        publisher
            .publish(&topic, chunk)
            .await
            .unwrap_or_else(|e| panic!("publish: {e}"));
    }
    let subscription = fixture
        .subscriber()
        .subscribe(&topic, "g")
        .await
        .unwrap_or_else(|e| panic!("subscribe: {e}"));
    let got = receive(subscription.as_ref(), sent.len(), true).await;
    let mut last: HashMap<String, u64> = HashMap::new();
    for delivery in &got {
        let (_, event) = numbered(delivery);
        if let Some(previous) = last.insert(event.key.clone(), event.seq) {
            assert_eq!(event.seq, previous + 1, "key {} out of order", event.key);
        } else {
            assert_eq!(event.seq, 0, "key {} did not start at 0", event.key);
        }
    }
    subscription
        .close()
        .await
        .unwrap_or_else(|e| panic!("close: {e}"));
}

/// A new member of the group resumes after the committed offsets.
pub async fn resume_after_commit(fixture: &dyn Fixture) {
    if !fixture.capabilities().persistence {
        return skip("resume_after_commit", "persistence");
    }
    let topic = fixture.topic(1).await;
    let publisher = fixture.publisher();
    let first = Numbered::interleaved(1, 10);
    publisher
        .publish(&topic, &first)
        .await
        .unwrap_or_else(|e| panic!("publish: {e}"));
    let subscription = fixture
        .subscriber()
        .subscribe(&topic, "g")
        .await
        .unwrap_or_else(|e| panic!("subscribe: {e}"));
    receive(subscription.as_ref(), first.len(), true).await;
    subscription
        .close()
        .await
        .unwrap_or_else(|e| panic!("close: {e}"));

    let second: Vec<_> = (10..15)
        .map(|seq| Numbered::envelope("key-0", seq))
        .collect();
    publisher
        .publish(&topic, &second)
        .await
        .unwrap_or_else(|e| panic!("publish: {e}"));
    let subscription = fixture
        .subscriber()
        .subscribe(&topic, "g")
        .await
        .unwrap_or_else(|e| panic!("subscribe: {e}"));
    let got = receive(subscription.as_ref(), second.len(), true).await;
    let mut seqs: Vec<u64> = got.iter().map(|d| numbered(d).1.seq).collect();
    if !fixture.capabilities().ordered_handback {
        // A message that reached the closed member's last pull comes back after the
        // newer ones (seen on JetStream: [12, 13, 14, 10, 11]); the set must still be
        // exactly what was not committed.
        skip("resume_after_commit (order)", "ordered_handback");
        seqs.sort_unstable();
    }
    assert_eq!(
        seqs,
        (10..15).collect::<Vec<_>>(),
        "only what was not committed"
    );
    subscription
        .close()
        .await
        .unwrap_or_else(|e| panic!("close: {e}"));
}

/// A member that vanishes before committing: its messages go to the next member.
pub async fn redelivery_after_member_dies(fixture: &dyn Fixture) {
    if !fixture.capabilities().redelivery {
        return skip("redelivery_after_member_dies", "redelivery");
    }
    let topic = fixture.topic(2).await;
    let sent = Numbered::interleaved(4, 5);
    fixture
        .publisher()
        .publish(&topic, &sent)
        .await
        .unwrap_or_else(|e| panic!("publish: {e}"));
    let doomed = fixture
        .subscriber()
        .subscribe(&topic, "g")
        .await
        .unwrap_or_else(|e| panic!("subscribe: {e}"));
    let seen = receive(doomed.as_ref(), sent.len(), false).await;
    // Commit half of one partition's messages, then die without closing.
    let partition = seen[0].partition;
    let in_partition: Vec<&Delivery> = seen.iter().filter(|d| d.partition == partition).collect();
    let committed_upto = in_partition[in_partition.len() / 2].offset;
    doomed
        .commit(&[(partition, committed_upto)])
        .await
        .unwrap_or_else(|e| panic!("commit: {e}"));
    drop(doomed);

    let expected = sent.len()
        - in_partition
            .iter()
            .filter(|d| d.offset < committed_upto)
            .count();
    let heir = fixture
        .subscriber()
        .subscribe(&topic, "g")
        .await
        .unwrap_or_else(|e| panic!("subscribe: {e}"));
    let got = receive(heir.as_ref(), expected, true).await;
    assert!(
        got.iter()
            .all(|d| d.partition != partition || d.offset >= committed_upto),
        "committed messages came back"
    );
    let ids: HashSet<EventId> = got.iter().map(|d| numbered(d).0).collect();
    assert_eq!(
        ids.len(),
        expected,
        "every uncommitted message came back once"
    );
    heir.close().await.unwrap_or_else(|e| panic!("close: {e}"));
}

/// Two groups each get everything; two members of one group share the messages.
pub async fn consumer_groups(fixture: &dyn Fixture) {
    if !fixture.capabilities().consumer_groups {
        return skip("consumer_groups", "consumer_groups");
    }
    let topic = fixture.topic(8).await;
    let subscriber = fixture.subscriber();
    let a1: Arc<dyn Subscription> = subscriber
        .subscribe(&topic, "group-a")
        .await
        .unwrap_or_else(|e| panic!("subscribe: {e}"))
        .into();
    let a2: Arc<dyn Subscription> = subscriber
        .subscribe(&topic, "group-a")
        .await
        .unwrap_or_else(|e| panic!("subscribe: {e}"))
        .into();
    let b: Arc<dyn Subscription> = subscriber
        .subscribe(&topic, "group-b")
        .await
        .unwrap_or_else(|e| panic!("subscribe: {e}"))
        .into();

    // Members consume (and commit) continuously while the group settles.
    let stop = Arc::new(tokio::sync::Notify::new());
    let spawn_member = |sub: Arc<dyn Subscription>| {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut got: Vec<EventId> = Vec::new();
            loop {
                tokio::select! {
                    _ = stop.notified() => break,
                    batch = sub.fetch(64) => {
                        let batch = batch.unwrap_or_else(|e| panic!("fetch: {e}"));
                        commit_all(sub.as_ref(), &batch).await;
                        got.extend(batch.iter().map(|d| numbered(d).0));
                    }
                }
            }
            sub.close().await.unwrap_or_else(|e| panic!("close: {e}"));
            got
        })
    };
    let m1 = spawn_member(a1);
    let m2 = spawn_member(a2);
    let mb = spawn_member(b);
    tokio::time::sleep(fixture.session_timeout()).await;

    let sent = Numbered::interleaved(64, 4);
    fixture
        .publisher()
        .publish(&topic, &sent)
        .await
        .unwrap_or_else(|e| panic!("publish: {e}"));
    let expected: HashSet<EventId> = sent.iter().map(|e| e.id).collect();

    // Delivery is fast; a session timeout is ample for 256 small messages.
    tokio::time::sleep(fixture.session_timeout()).await;
    stop.notify_waiters();
    let (g1, g2, gb) = (m1.await, m2.await, mb.await);
    let (g1, g2, gb) = (
        g1.unwrap_or_else(|e| panic!("member panicked: {e}")),
        g2.unwrap_or_else(|e| panic!("member panicked: {e}")),
        gb.unwrap_or_else(|e| panic!("member panicked: {e}")),
    );

    let b_ids: HashSet<EventId> = gb.iter().copied().collect();
    assert_eq!(b_ids, expected, "group-b received everything");
    assert_eq!(gb.len(), expected.len(), "group-b received nothing twice");
    let a_ids: HashSet<EventId> = g1.iter().chain(g2.iter()).copied().collect();
    assert_eq!(
        a_ids, expected,
        "group-a received everything between its members"
    );
    assert_eq!(
        g1.len() + g2.len(),
        expected.len(),
        "no message went to both members"
    );
    assert!(
        !g1.is_empty() && !g2.is_empty(),
        "both members got work: {} and {}",
        g1.len(),
        g2.len()
    );
}

/// One event fails in two consumer groups: each group's dead letter arrives. Brokers
/// that deduplicate by message id (JetStream's duplicate window) used to keep one.
pub async fn dead_letters_of_one_event_from_two_groups(fixture: &dyn Fixture) {
    if !fixture.capabilities().persistence {
        return skip("dead_letters_of_one_event_from_two_groups", "persistence");
    }
    // The dead-letter topic, made like any other (some brokers create no topic on use).
    let dlq = fixture.topic(1).await;
    let failed = Delivery {
        topic: "orders".to_owned(),
        partition: 0,
        offset: 7,
        message: Message::Event(Numbered::envelope("k", 1)),
    };
    let now = eddy_core::OffsetDateTime::now_utc();
    let failure = eddy_runtime::dead_letter::Failure {
        error: "rejected".to_owned(),
        kind: "permanent".to_owned(),
        attempts: 1,
        first_at: now,
        last_at: now,
    };
    let letters: Vec<_> = ["billing", "shipping"]
        .iter()
        .map(|group| eddy_runtime::dead_letter::dead_letter(&failed, group, &failure))
        .collect();
    let reader = fixture
        .subscriber()
        .subscribe(&dlq, "operators")
        .await
        .unwrap_or_else(|e| panic!("subscribe: {e}"));
    for letter in &letters {
        fixture
            .publisher()
            .publish(&dlq, std::slice::from_ref(letter))
            .await
            .unwrap_or_else(|e| panic!("publish a dead letter: {e}"));
    }
    let got = receive(reader.as_ref(), 2, true).await;
    let groups: HashSet<String> = got
        .iter()
        .filter_map(|d| match &d.message {
            Message::Event(e) => e
                .headers
                .get(eddy_runtime::dead_letter::CONSUMER_GROUP)
                .map(str::to_owned),
            Message::Undecodable(_) => None,
        })
        .collect();
    assert_eq!(
        groups.len(),
        2,
        "both groups' dead letters kept: {groups:?}"
    );
    reader
        .close()
        .await
        .unwrap_or_else(|e| panic!("close: {e}"));
}

/// A member closes holding messages it did not commit; the next member gets every
/// message again — and, where the adapter promises it, each key's in publish order.
pub async fn handback_after_close(fixture: &dyn Fixture) {
    let caps = fixture.capabilities();
    if !(caps.persistence && caps.redelivery) {
        return skip("handback_after_close", "persistence and redelivery");
    }
    let topic = fixture.topic(1).await;
    let sent = Numbered::interleaved(4, 5);
    fixture
        .publisher()
        .publish(&topic, &sent)
        .await
        .unwrap_or_else(|e| panic!("publish: {e}"));
    let subscriber = fixture.subscriber();
    let first = subscriber
        .subscribe(&topic, "handback")
        .await
        .unwrap_or_else(|e| panic!("subscribe: {e}"));
    receive(first.as_ref(), 8, false).await;
    first.close().await.unwrap_or_else(|e| panic!("close: {e}"));
    // Newer messages of the same keys, published while the handed-back ones wait.
    let newer: Vec<_> = (5..10)
        .flat_map(|seq| (0..4).map(move |key| Numbered::envelope(format!("key-{key}"), seq)))
        .collect();
    fixture
        .publisher()
        .publish(&topic, &newer)
        .await
        .unwrap_or_else(|e| panic!("publish: {e}"));
    let sent: Vec<_> = sent.into_iter().chain(newer).collect();

    let next = subscriber
        .subscribe(&topic, "handback")
        .await
        .unwrap_or_else(|e| panic!("subscribe: {e}"));
    if caps.ordered_handback {
        receive_distinct_in_key_order(next.as_ref(), sent.len()).await;
    } else {
        skip("handback_after_close (key order)", "ordered_handback");
        let mut seen: HashSet<EventId> = HashSet::new();
        while seen.len() < sent.len() {
            for delivery in receive(next.as_ref(), 1, true).await {
                seen.insert(numbered(&delivery).0);
            }
        }
    }
    next.close().await.unwrap_or_else(|e| panic!("close: {e}"));
}

/// Writes one `#[tokio::test]` per conformance case for the fixture `$make`
/// (an expression evaluating to a `Future` of something implementing [`Fixture`]).
#[macro_export]
macro_rules! conformance_tests {
    ($module:ident, $make:expr) => {
        mod $module {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn publish_then_receive() {
                let fixture = $make.await;
                $crate::conformance::publish_then_receive(&fixture).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn per_key_order() {
                let fixture = $make.await;
                $crate::conformance::per_key_order(&fixture).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn resume_after_commit() {
                let fixture = $make.await;
                $crate::conformance::resume_after_commit(&fixture).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redelivery_after_member_dies() {
                let fixture = $make.await;
                $crate::conformance::redelivery_after_member_dies(&fixture).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn consumer_groups() {
                let fixture = $make.await;
                $crate::conformance::consumer_groups(&fixture).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn handback_after_close() {
                let fixture = $make.await;
                $crate::conformance::handback_after_close(&fixture).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn dead_letters_of_one_event_from_two_groups() {
                let fixture = $make.await;
                $crate::conformance::dead_letters_of_one_event_from_two_groups(&fixture).await;
            }
        }
    };
}
