//! Group membership of the embedded log under the changes that used to strand a
//! partition: membership that flaps back before a release drained, and a restart with a
//! stable instance id into a group that changed meanwhile.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use eddy_core::{Publisher, Subscriber};
use eddy_log::{partition_for_key, Log, LogConfig};
use eddy_testkit::conformance::{commit_all, receive};
use eddy_testkit::events::Numbered;
use eddy_testkit::TestDb;

/// Long sessions, so no lease expires during a test: what moves a partition is the
/// membership alone.
fn config(instance: &str) -> LogConfig {
    LogConfig {
        instance_id: Some(instance.to_owned()),
        heartbeat_interval: Duration::from_millis(50),
        session_timeout: Duration::from_secs(120),
        fallback_poll_interval: Duration::from_millis(100),
        ..LogConfig::default()
    }
}

/// How long a case waits for a partition to be served again; a heartbeat is 50 ms.
const SERVED_WITHIN: Duration = Duration::from_secs(10);

/// Member ids sort by instance id, and partition p goes to the member at p % members:
/// "m-1" sorts before "m-2", so with one partition a joining "m-1" takes it from "m-2".
async fn a_partition_handed_back_before_it_drained_is_fetched_again(db: TestDb) {
    let owner = Log::open(db.db().clone(), config("m-2")).await.unwrap();
    owner.create_topic("t", 1).await.unwrap();
    owner
        .publish("t", &Numbered::interleaved(1, 3))
        .await
        .unwrap();
    let m = owner.subscribe("t", "g").await.unwrap();
    let in_flight = receive(m.as_ref(), 3, false).await;

    // A newcomer joins: the partition is assigned to it, and m stops fetching while its
    // work is still uncommitted.
    let newcomer_log = Log::open(db.connect_again().await, config("m-1"))
        .await
        .unwrap();
    let newcomer = newcomer_log.subscribe("t", "g").await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    // It leaves before m drained: the partition is m's again.
    newcomer.close().await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    commit_all(m.as_ref(), &in_flight).await;

    owner
        .publish("t", &Numbered::interleaved(1, 2))
        .await
        .unwrap();
    let served = tokio::time::timeout(SERVED_WITHIN, receive(m.as_ref(), 2, true)).await;
    assert!(
        served.is_ok(),
        "the partition came back to its owner but was never fetched again"
    );
    m.close().await.unwrap();
}

/// A process with a stable instance id crashes holding two partitions; while it is
/// down another member joins; it restarts into a group where only one partition is
/// its own. It must give the other back, not renew a lease it no longer serves.
async fn a_restart_into_a_changed_group_gives_back_what_is_no_longer_assigned(db: TestDb) {
    let first = Log::open(db.db().clone(), config("m-2")).await.unwrap();
    first.create_topic("t", 2).await.unwrap();
    let events = Numbered::interleaved(8, 2);
    let on_p0 = events
        .iter()
        .filter(|e| partition_for_key(&e.key, 2) == 0)
        .count();
    assert!(
        on_p0 > 0 && on_p0 < events.len(),
        "keys reach both partitions"
    );
    first.publish("t", &events).await.unwrap();
    let crashed = first.subscribe("t", "g").await.unwrap();
    receive(crashed.as_ref(), events.len(), false).await;
    drop(crashed); // no close: its leases live for the whole session timeout

    let joiner_log = Log::open(db.connect_again().await, config("m-1"))
        .await
        .unwrap();
    let joiner = joiner_log.subscribe("t", "g").await.unwrap();

    let restarted = Log::open(db.connect_again().await, config("m-2"))
        .await
        .unwrap();
    let again = restarted.subscribe("t", "g").await.unwrap();
    let p1 = tokio::time::timeout(
        SERVED_WITHIN,
        receive(again.as_ref(), events.len() - on_p0, true),
    )
    .await;
    assert!(
        p1.is_ok(),
        "the restarted member serves its own partition at once"
    );

    let p0 = tokio::time::timeout(SERVED_WITHIN, receive(joiner.as_ref(), on_p0, true)).await;
    let p0 = p0.expect("partition 0 stayed leased to a member that no longer serves it");
    assert!(p0.iter().all(|d| d.partition == 0));
    joiner.close().await.unwrap();
    again.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_handed_back_before_it_drained_is_fetched_again_on_sqlite() {
    a_partition_handed_back_before_it_drained_is_fetched_again(TestDb::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_handed_back_before_it_drained_is_fetched_again_on_postgres() {
    a_partition_handed_back_before_it_drained_is_fetched_again(TestDb::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_into_a_changed_group_gives_back_what_is_no_longer_assigned_on_sqlite() {
    a_restart_into_a_changed_group_gives_back_what_is_no_longer_assigned(TestDb::sqlite().await)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_into_a_changed_group_gives_back_what_is_no_longer_assigned_on_postgres() {
    a_restart_into_a_changed_group_gives_back_what_is_no_longer_assigned(TestDb::postgres().await)
        .await;
}
