//! The event store on SQLite and PostgreSQL (a database of each test's own).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use eddy_core::{Envelope, Error};
use eddy_eventstore::{
    Aggregate, AppendError, EventStore, Expected, Recorded, SnapshotPolicy, Until,
};
use eddy_testkit::db::TestDb;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

fn event(stream: &str, n: u32) -> Envelope {
    Envelope::new(
        "OrderStepped",
        1,
        stream,
        format!("{{\"n\":{n}}}").into_bytes(),
        OffsetDateTime::now_utc(),
    )
}

async fn both() -> Vec<TestDb> {
    vec![TestDb::sqlite().await, TestDb::postgres().await]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_with_the_same_expected_version_let_exactly_one_win() {
    for test_db in both().await {
        let store = EventStore::open(test_db.db().clone()).await.unwrap();
        store
            .append("order-1", Expected::NoStream, &[event("order-1", 0)])
            .await
            .unwrap();
        let mut writers = Vec::new();
        for n in 0..8 {
            let store = store.clone();
            writers.push(tokio::spawn(async move {
                store
                    .append("order-1", Expected::Exact(1), &[event("order-1", n)])
                    .await
            }));
        }
        let (mut won, mut conflicts) = (0, 0);
        for writer in writers {
            match writer.await.unwrap() {
                Ok(appended) => {
                    assert_eq!(appended.version, 2);
                    won += 1;
                }
                Err(AppendError::Conflict { actual, .. }) => {
                    assert_eq!(actual, 2, "the conflict names the version it met");
                    conflicts += 1;
                }
                Err(other) => panic!("{other}"),
            }
        }
        assert_eq!((won, conflicts), (1, 7));
        assert_eq!(store.version("order-1").await.unwrap(), 2);

        // Creating a stream that exists, or expecting one that does not, conflicts too.
        match store
            .append("order-1", Expected::NoStream, &[event("order-1", 9)])
            .await
        {
            Err(AppendError::Conflict { actual: 2, .. }) => {}
            other => panic!("expected a conflict, got {other:?}"),
        }
        match store
            .append("order-2", Expected::Exact(3), &[event("order-2", 9)])
            .await
        {
            Err(AppendError::Conflict { actual: 0, .. }) => {}
            other => panic!("expected a conflict, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_retried_append_writes_nothing_and_answers_where_the_events_are() {
    for test_db in both().await {
        let store = EventStore::open(test_db.db().clone()).await.unwrap();
        let events = [event("s", 1), event("s", 2)];
        let first = store
            .append("s", Expected::NoStream, &events)
            .await
            .unwrap();
        assert_eq!((first.version, first.already), (2, false));
        // The same command again (its reply was lost): same answer, nothing written,
        // whatever version it expected.
        for expected in [Expected::NoStream, Expected::Any, Expected::Exact(0)] {
            let again = store.append("s", expected, &events).await.unwrap();
            assert_eq!(
                (again.version, again.first_position, again.already),
                (2, first.first_position, true)
            );
        }
        assert_eq!(store.version("s").await.unwrap(), 2);
        assert_eq!(store.read_all(0, 100).await.unwrap().len(), 2);

        // Half of it old, half new: not a retry.
        match store
            .append("s", Expected::Exact(2), &[events[1].clone(), event("s", 3)])
            .await
        {
            Err(AppendError::Mismatch { .. }) => {}
            other => panic!("expected a mismatch, got {other:?}"),
        }
        // New first, old second: just as much not a retry (and no store error).
        match store
            .append("s", Expected::Exact(2), &[event("s", 4), events[0].clone()])
            .await
        {
            Err(AppendError::Mismatch { .. }) => {}
            other => panic!("expected a mismatch, got {other:?}"),
        }
        // The same events under another stream: not a retry either.
        match store.append("t", Expected::Any, &events[..1]).await {
            Err(AppendError::Mismatch { .. }) => {}
            other => panic!("expected a mismatch, got {other:?}"),
        }
        assert_eq!(store.read_all(0, 100).await.unwrap().len(), 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_never_skips_an_append_that_commits_late() {
    // PostgreSQL: appenders in concurrent transactions hold their commits for random
    // times, so they would commit out of position order if positions could be taken
    // while another append is open; a follower reading "after the last position I saw"
    // must then see every position, one after the other, and never a gap.
    let test_db = TestDb::postgres().await;
    let store = EventStore::open(test_db.db().clone()).await.unwrap();
    const WRITERS: u64 = 4;
    const APPENDS: u64 = 25;
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for n in 0..APPENDS {
                let stream = format!("w{w}");
                let mut tx = store.db().begin().await.unwrap();
                store
                    .append_in(&mut tx, &stream, Expected::Any, &[event(&stream, n as u32)])
                    .await
                    .unwrap();
                let hold = (w * 7 + n * 13) % 6;
                tokio::time::sleep(Duration::from_millis(hold)).await;
                tx.commit().await.unwrap();
            }
        }));
    }
    let mut seen = 0u64;
    let total = WRITERS * APPENDS;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while seen < total {
        assert!(
            std::time::Instant::now() < deadline,
            "saw {seen} of {total}"
        );
        for recorded in store.read_all(seen, 10).await.unwrap() {
            assert_eq!(
                recorded.position,
                seen + 1,
                "the follower skipped a position"
            );
            seen = recorded.position;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for writer in writers {
        writer.await.unwrap();
    }
    for w in 0..WRITERS {
        let events = store
            .read_stream(&format!("w{w}"), 1, Until::End, 1000)
            .await
            .unwrap();
        let versions: Vec<u64> = events.iter().map(|e| e.version).collect();
        assert_eq!(versions, (1..=APPENDS).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn an_open_append_holds_back_later_ones_until_it_commits() {
    // The mechanism behind the follower test, step by step: a second append waits for
    // the first's transaction, so it cannot become visible at a higher position first.
    let test_db = TestDb::postgres().await;
    let store = EventStore::open(test_db.db().clone()).await.unwrap();
    let mut first = store.db().begin().await.unwrap();
    store
        .append_in(&mut first, "a", Expected::Any, &[event("a", 1)])
        .await
        .unwrap();
    let second = tokio::spawn({
        let store = store.clone();
        async move { store.append("b", Expected::Any, &[event("b", 1)]).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "the second append did not wait");
    assert!(store.read_all(0, 10).await.unwrap().is_empty());
    first.commit().await.unwrap();
    second.await.unwrap().unwrap();
    let positions: Vec<(String, u64)> = store
        .read_all(0, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.stream, r.position))
        .collect();
    assert_eq!(positions, vec![("a".to_owned(), 1), ("b".to_owned(), 2)]);
}

#[tokio::test]
async fn a_stream_reads_as_it_was_at_each_recorded_step() {
    for test_db in both().await {
        let store = EventStore::open(test_db.db().clone()).await.unwrap();
        let mut moments = Vec::new();
        let mut version = 0;
        for n in 1..=3 {
            store
                .append(
                    "o",
                    Expected::Exact(version),
                    &[event("o", n), event("o", n + 10)],
                )
                .await
                .unwrap();
            version += 2;
            tokio::time::sleep(Duration::from_millis(20)).await;
            moments.push(OffsetDateTime::now_utc());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for (step, moment) in moments.iter().enumerate() {
            let as_of = store
                .read_stream("o", 1, Until::Time(*moment), 100)
                .await
                .unwrap();
            assert_eq!(as_of.len(), (step + 1) * 2, "as of step {step}");
            let by_version = store
                .read_stream("o", 1, Until::Version((step as u64 + 1) * 2), 100)
                .await
                .unwrap();
            let ids = |r: &[eddy_eventstore::Recorded]| {
                r.iter().map(|e| e.envelope.id).collect::<Vec<_>>()
            };
            assert_eq!(ids(&as_of), ids(&by_version));
        }
        let before = store
            .read_stream(
                "o",
                1,
                Until::Time(moments[0] - time::Duration::seconds(1)),
                100,
            )
            .await
            .unwrap();
        assert!(before.is_empty());
        let tail = store.read_stream("o", 5, Until::End, 100).await.unwrap();
        assert_eq!(
            tail.iter().map(|e| e.version).collect::<Vec<_>>(),
            vec![5, 6]
        );
    }
}

/// A sum of the events' `n`s, snapshot format 2.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct Tally {
    count: u64,
    sum: u64,
}

impl Aggregate for Tally {
    const SNAPSHOT_VERSION: u32 = 2;

    fn apply(&mut self, event: &Recorded) -> Result<(), Error> {
        let payload: serde_json::Value = serde_json::from_slice(&event.envelope.payload)
            .map_err(|e| Error::permanent("bad payload").with_source(e))?;
        self.count += 1;
        self.sum += payload["n"].as_u64().unwrap_or(0);
        Ok(())
    }
}

/// The same shape kept by an old build in format 1 with other meanings: it decodes as a
/// `Tally`, so only the format check keeps it out.
#[derive(Debug, Default, Serialize, Deserialize)]
struct TallyV1 {
    count: u64,
    sum: u64,
}

impl Aggregate for TallyV1 {
    const SNAPSHOT_VERSION: u32 = 1;

    fn apply(&mut self, _event: &Recorded) -> Result<(), Error> {
        self.sum += 1_000; // wrong on purpose: a state that must never be trusted
        Ok(())
    }
}

fn tally_of(range: std::ops::RangeInclusive<u64>) -> Tally {
    Tally {
        count: range.clone().count() as u64,
        sum: range.sum(),
    }
}

#[tokio::test]
async fn an_aggregate_loads_from_its_nearest_snapshot_as_it_was_at_any_version() {
    for test_db in both().await {
        let store = EventStore::open(test_db.db().clone()).await.unwrap();
        let policy = SnapshotPolicy { every: 10 };
        let mut taken = Vec::new();
        for batch in 0..19u32 {
            let events: Vec<Envelope> = (1..=5).map(|i| event("t", batch * 5 + i)).collect();
            store
                .append("t", Expected::Exact(u64::from(batch) * 5), &events)
                .await
                .unwrap();
            let loaded = store.load::<Tally>("t", Until::End).await.unwrap();
            if store.snapshot_if_due("t", &loaded, policy).await.unwrap() {
                taken.push(loaded.version);
            }
        }
        assert_eq!(taken, vec![10, 20, 30, 40, 50, 60, 70, 80, 90]);

        let now = store.load::<Tally>("t", Until::End).await.unwrap();
        assert_eq!(
            (now.version, now.from_snapshot, now.applied),
            (95, Some(90), 5)
        );
        assert_eq!(
            now.state,
            tally_of(1..=95),
            "snapshot + tail = the whole fold"
        );

        let then = store.load::<Tally>("t", Until::Version(37)).await.unwrap();
        assert_eq!(
            (then.version, then.from_snapshot, then.applied),
            (37, Some(30), 7)
        );
        assert_eq!(then.state, tally_of(1..=37));

        // A snapshot in an older format is not trusted: without an upcaster the loader
        // falls back to the newest one it can read (or the events alone).
        store
            .save_snapshot("t", 95, &TallyV1 { count: 1, sum: 7 })
            .await
            .unwrap();
        let again = store.load::<Tally>("t", Until::End).await.unwrap();
        assert_eq!(
            (again.from_snapshot, again.state),
            (Some(90), tally_of(1..=95))
        );

        // Loading from nothing at all gives the same state as from a snapshot.
        let fresh = EventStore::open(test_db.db().clone()).await.unwrap();
        let none = fresh.load::<Tally>("nothing", Until::End).await.unwrap();
        assert_eq!((none.version, none.state), (0, Tally::default()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_appends_in_one_transaction_do_not_deadlock_against_another() {
    // The sequence is always locked before a stream: a transaction appending to x then
    // y, beside another appending to y, waits instead of deadlocking.
    for test_db in both().await {
        let store = EventStore::open(test_db.db().clone()).await.unwrap();
        let mut tx = store.db().begin().await.unwrap();
        store
            .append_in(&mut tx, "x", Expected::Any, &[event("x", 1)])
            .await
            .unwrap();
        let other = tokio::spawn({
            let store = store.clone();
            async move { store.append("y", Expected::Any, &[event("y", 1)]).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        store
            .append_in(&mut tx, "y", Expected::Any, &[event("y", 2)])
            .await
            .unwrap();
        tx.commit().await.unwrap();
        other.await.unwrap().unwrap();
        assert_eq!(store.version("y").await.unwrap(), 2);
    }
}

#[tokio::test]
async fn an_empty_append_checks_and_writes_nothing() {
    // No stream at version 0 either: a later NoStream append still succeeds.
    for test_db in both().await {
        let store = EventStore::open(test_db.db().clone()).await.unwrap();
        store.append("e", Expected::NoStream, &[]).await.unwrap();
        store
            .append("e", Expected::NoStream, &[event("e", 1)])
            .await
            .unwrap();
        assert!(matches!(
            store.append("e", Expected::Exact(5), &[]).await,
            Err(AppendError::Conflict { actual: 1, .. })
        ));
    }
}

#[tokio::test]
async fn a_recorded_time_never_goes_back_even_when_a_writers_clock_does() {
    for test_db in both().await {
        let store = EventStore::open(test_db.db().clone()).await.unwrap();
        store
            .append("s", Expected::NoStream, &[event("s", 1)])
            .await
            .unwrap();
        // Another process, its clock an hour ahead, appended last.
        let ahead = OffsetDateTime::now_utc() + time::Duration::hours(1);
        sqlx::query("UPDATE eddy_es_sequence SET last_recorded_us = $1 WHERE id = 1")
            .bind(eddy_core::envelope::to_micros(ahead))
            .execute(test_db.db().pool())
            .await
            .unwrap();
        store
            .append("s", Expected::Exact(1), &[event("s", 2)])
            .await
            .unwrap();
        let events = store.read_stream("s", 1, Until::End, 10).await.unwrap();
        assert_eq!(
            eddy_core::envelope::to_micros(events[1].recorded_at),
            eddy_core::envelope::to_micros(ahead),
            "stamped no earlier than the append before"
        );
        // So what was recorded by a moment stays a prefix of the stream.
        let before_ahead = store
            .read_stream("s", 1, Until::Time(ahead - time::Duration::seconds(1)), 10)
            .await
            .unwrap();
        assert_eq!(before_ahead.len(), 1);
    }
}
