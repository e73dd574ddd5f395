//! Projections on SQLite and PostgreSQL: checkpoints that commit with the read model,
//! inline and catching-up runs, projections added to existing events, and rebuilds
//! swapped in while writes and reads go on.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eddy_core::{Envelope, Error};
use eddy_eventstore::{
    EventStore, Expected, Projection, Projector, ProjectorConfig, Recorded, Target,
};
use eddy_sql::{classify, Db, Tx};
use eddy_testkit::db::TestDb;
use time::OffsetDateTime;

fn event(stream: &str) -> Envelope {
    Envelope::new(
        "Stepped",
        1,
        stream,
        b"{}".to_vec(),
        OffsetDateTime::now_utc(),
    )
}

async fn both() -> Vec<TestDb> {
    vec![TestDb::sqlite().await, TestDb::postgres().await]
}

/// Counts each stream's events and records every position it applied — once: a
/// second application of a position breaks the primary key, a skipped version breaks
/// the check in `apply`.
#[derive(Debug, Default)]
struct Tally {
    name: &'static str,
    tables: &'static [&'static str],
    /// Fails once, after writing, at this position (0: never) — a crash between the
    /// read model's write and the checkpoint.
    fail_at: AtomicU64,
    /// Fails at `fail_at` only while replaying (a rebuild).
    fail_only_replaying: bool,
    /// Holds the apply of this position until `gate_open` (0: never).
    gate_at: u64,
    gate_open: Arc<tokio::sync::Notify>,
    gate_reached: Arc<tokio::sync::Notify>,
}

const TALLY: &[&str] = &["tally", "tally_seen"];
const SCRATCH: &[&str] = &["scratch", "scratch_seen"];

fn tally() -> Tally {
    Tally {
        name: "tally",
        tables: TALLY,
        ..Tally::default()
    }
}

#[eddy_core::async_trait]
impl Projection for Tally {
    fn name(&self) -> &'static str {
        self.name
    }

    fn tables(&self) -> &'static [&'static str] {
        self.tables
    }

    async fn create(&self, tx: &mut Tx, target: &Target) -> Result<(), Error> {
        let counts = target.table(self.tables[0]);
        let seen = target.table(self.tables[1]);
        for sql in [
            format!("CREATE TABLE IF NOT EXISTS {counts} (stream TEXT PRIMARY KEY, events BIGINT NOT NULL, last_version BIGINT NOT NULL)"),
            format!("CREATE TABLE IF NOT EXISTS {seen} (position BIGINT PRIMARY KEY, replaying BIGINT NOT NULL)"),
        ] {
            sqlx::query(&sql)
                .execute(tx.conn())
                .await
                .map_err(|e| classify("create", e))?;
        }
        Ok(())
    }

    async fn apply(&self, tx: &mut Tx, target: &Target, event: &Recorded) -> Result<(), Error> {
        if event.position == self.gate_at {
            self.gate_reached.notify_one();
            self.gate_open.notified().await;
        }
        let counts = target.table(self.tables[0]);
        let seen = target.table(self.tables[1]);
        sqlx::query(&format!(
            "INSERT INTO {seen} (position, replaying) VALUES ($1, $2)"
        ))
        .bind(event.position as i64)
        .bind(i64::from(target.replaying()))
        .execute(tx.conn())
        .await
        .map_err(|e| classify("seen", e))?;
        let last: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT last_version FROM {counts} WHERE stream = $1"
        ))
        .bind(&event.stream)
        .fetch_optional(tx.conn())
        .await
        .map_err(|e| classify("last", e))?;
        if last.unwrap_or(0) + 1 != event.version as i64 {
            return Err(Error::permanent(format!(
                "{} skipped from version {:?} to {}",
                event.stream, last, event.version
            )));
        }
        sqlx::query(&format!(
            "INSERT INTO {counts} (stream, events, last_version) VALUES ($1, 1, $2) \
             ON CONFLICT (stream) DO UPDATE SET events = {counts}.events + 1, last_version = $2"
        ))
        .bind(&event.stream)
        .bind(event.version as i64)
        .execute(tx.conn())
        .await
        .map_err(|e| classify("count", e))?;
        if (target.replaying() || !self.fail_only_replaying)
            && self
                .fail_at
                .compare_exchange(event.position, 0, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            return Err(Error::transient("crashed after writing"));
        }
        Ok(())
    }
}

fn config(batch: usize) -> ProjectorConfig {
    ProjectorConfig {
        batch_len_max: batch,
        poll_interval: Duration::from_millis(20),
    }
}

async fn append(store: &EventStore, streams: &[&str], rounds: usize) {
    for _ in 0..rounds {
        for stream in streams {
            store
                .append(stream, Expected::Any, &[event(stream)])
                .await
                .unwrap();
        }
    }
}

/// The rows of a tally's view (or table), in order.
async fn rows(db: &Db, table: &str) -> Vec<(String, i64, i64)> {
    sqlx::query_as(&format!(
        "SELECT stream, events, last_version FROM {table} ORDER BY stream"
    ))
    .fetch_all(db.pool())
    .await
    .unwrap()
}

async fn seen(db: &Db, table: &str) -> Vec<(i64, i64)> {
    sqlx::query_as(&format!(
        "SELECT position, replaying FROM {table} ORDER BY position"
    ))
    .fetch_all(db.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn a_projection_stopped_between_its_writes_and_its_checkpoint_resumes_with_no_duplicate_or_gap(
) {
    for test_db in both().await {
        let db = test_db.db();
        let store = EventStore::open(db.clone()).await.unwrap();
        append(&store, &["a", "b", "c"], 10).await;
        let projection = Arc::new(tally());
        projection.fail_at.store(13, Ordering::SeqCst);
        let projector = Projector::open(store.clone(), projection.clone(), config(8))
            .await
            .unwrap();
        let error = projector.catch_up(|_| {}).await.unwrap_err();
        assert!(error.to_string().contains("crashed"), "{error}");
        // The first batch committed with its checkpoint; the second, which wrote 13 and
        // then failed, left nothing.
        assert_eq!(projector.status().await.unwrap().position, 8);
        let positions: Vec<i64> = seen(db, "tally_seen").await.iter().map(|s| s.0).collect();
        assert_eq!(positions, (1..=8).collect::<Vec<_>>());

        // A projection cancelled inside a batch (its process killed mid-transaction)
        // leaves nothing of that batch either.
        let slow = Arc::new(Tally {
            gate_at: 20,
            ..tally()
        });
        let restarted = Projector::open(store.clone(), slow.clone(), config(8))
            .await
            .unwrap();
        let cancelled =
            tokio::time::timeout(Duration::from_millis(300), restarted.catch_up(|_| {})).await;
        assert!(cancelled.is_err(), "the gate holds position 20");
        assert_eq!(restarted.status().await.unwrap().position, 16);

        // Restarted: every event exactly once, in order per stream.
        let restarted = Projector::open(store.clone(), Arc::new(tally()), config(8))
            .await
            .unwrap();
        assert_eq!(restarted.catch_up(|_| {}).await.unwrap(), 14);
        let positions: Vec<i64> = seen(db, "tally_seen").await.iter().map(|s| s.0).collect();
        assert_eq!(positions, (1..=30).collect::<Vec<_>>());
        assert_eq!(
            rows(db, "tally").await,
            vec![
                ("a".to_owned(), 10, 10),
                ("b".to_owned(), 10, 10),
                ("c".to_owned(), 10, 10)
            ]
        );
        assert_eq!(restarted.status().await.unwrap().position, 30);
    }
}

#[tokio::test]
async fn a_projection_added_to_existing_events_starts_from_the_first_and_knows_them_for_replays() {
    for test_db in both().await {
        let db = test_db.db();
        let store = EventStore::open(db.clone()).await.unwrap();
        append(&store, &["a", "b"], 10).await;
        let projector = Projector::open(store.clone(), Arc::new(tally()), config(7))
            .await
            .unwrap();
        let mut reports = Vec::new();
        assert_eq!(
            projector
                .catch_up(|p| reports.push(p.position))
                .await
                .unwrap(),
            20
        );
        assert_eq!(reports, vec![7, 14, 20]);
        append(&store, &["a"], 3).await;
        assert_eq!(projector.catch_up(|_| {}).await.unwrap(), 3);
        let seen = seen(db, "tally_seen").await;
        assert_eq!(seen.len(), 23);
        assert!(seen[..20].iter().all(|s| s.1 == 1), "{seen:?}");
        assert!(seen[20..].iter().all(|s| s.1 == 0), "{seen:?}");
    }
}

#[tokio::test]
async fn an_inline_projection_commits_with_the_append_and_rolls_back_with_it() {
    for test_db in both().await {
        let db = test_db.db();
        let store = EventStore::open(db.clone()).await.unwrap();
        let projector = Projector::open(store.clone(), Arc::new(tally()), config(100))
            .await
            .unwrap();

        let mut tx = db.begin().await.unwrap();
        store
            .append_in(&mut tx, "a", Expected::NoStream, &[event("a"), event("a")])
            .await
            .unwrap();
        assert_eq!(projector.catch_up_in(&mut tx).await.unwrap(), 2);
        tx.rollback().await.unwrap();
        assert!(rows(db, "tally").await.is_empty());
        assert_eq!(projector.status().await.unwrap().position, 0);

        let mut tx = db.begin().await.unwrap();
        store
            .append_in(&mut tx, "a", Expected::NoStream, &[event("a"), event("a")])
            .await
            .unwrap();
        assert_eq!(projector.catch_up_in(&mut tx).await.unwrap(), 2);
        tx.commit().await.unwrap();
        assert_eq!(rows(db, "tally").await, vec![("a".to_owned(), 2, 2)]);
        let status = projector.status().await.unwrap();
        assert_eq!((status.position, status.head), (2, 2));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_while_writes_and_reads_go_on_swaps_in_what_a_build_from_scratch_gives() {
    for test_db in both().await {
        let db = test_db.db().clone();
        let store = EventStore::open(db.clone()).await.unwrap();
        append(&store, &["a", "b", "c", "d"], 25).await;
        let live = Projector::open(store.clone(), Arc::new(tally()), config(50))
            .await
            .unwrap();
        live.catch_up(|_| {}).await.unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let runner = tokio::spawn({
            let (live, stop) = (live.clone(), stop.clone());
            async move { live.run(stop).await }
        });
        let writing = Arc::new(AtomicBool::new(true));
        let writer = tokio::spawn({
            let (store, writing) = (store.clone(), writing.clone());
            async move {
                let mut n = 0;
                while writing.load(Ordering::SeqCst) || n < 100 {
                    let stream = ["a", "b", "c", "d", "e"][n % 5];
                    store
                        .append(stream, Expected::Any, &[event(stream)])
                        .await
                        .unwrap();
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                n
            }
        });
        // Readers keep reading the view through the rebuild and its swap; what they see
        // never goes backwards.
        let reader = tokio::spawn({
            let (db, stop) = (db.clone(), stop.clone());
            async move {
                let mut last = 0i64;
                let mut reads = 0;
                while !stop.is_cancelled() {
                    let total: Option<i64> =
                        sqlx::query_scalar("SELECT CAST(SUM(events) AS BIGINT) FROM tally")
                            .fetch_one(db.pool())
                            .await
                            .unwrap();
                    let total = total.unwrap_or(0);
                    assert!(total >= last, "the view went back from {last} to {total}");
                    last = total;
                    reads += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                reads
            }
        });
        let mut progress = Vec::new();
        let generation = live.rebuild(|p| progress.push(p)).await.unwrap();
        assert_eq!(generation, 2);
        assert!(progress.len() >= 2, "{progress:?}");
        assert!(progress.windows(2).all(|w| w[0].position <= w[1].position));
        writing.store(false, Ordering::SeqCst);
        let written = writer.await.unwrap();
        assert!(written >= 100);
        // Let the runner take the last appends, then stop everything.
        let head = store.head().await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while live.status().await.unwrap().position < head {
            assert!(std::time::Instant::now() < deadline, "the runner stopped");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        runner.await.unwrap();
        assert!(reader.await.unwrap() > 0);

        let scratch = Projector::open(
            store.clone(),
            Arc::new(Tally {
                name: "scratch",
                tables: SCRATCH,
                ..Tally::default()
            }),
            config(1000),
        )
        .await
        .unwrap();
        scratch.catch_up(|_| {}).await.unwrap();
        let rebuilt = rows(&db, "tally").await;
        assert_eq!(rebuilt, rows(&db, "scratch").await);
        assert_eq!(
            rebuilt.iter().map(|r| r.1).sum::<i64>() as u64,
            head,
            "every event counted once"
        );
        let positions: Vec<i64> = seen(&db, "tally_seen").await.iter().map(|s| s.0).collect();
        assert_eq!(positions, (1..=head as i64).collect::<Vec<_>>());
        // The old generation is gone; the live one is generation 2.
        assert!(sqlx::query("SELECT 1 FROM tally_g1")
            .fetch_optional(db.pool())
            .await
            .is_err());
        let status = live.status().await.unwrap();
        assert_eq!((status.generation, status.rebuilding), (2, None));
    }
}

#[tokio::test]
async fn a_rebuild_that_stops_midway_resumes_and_the_live_generation_serves_meanwhile() {
    for test_db in both().await {
        let db = test_db.db();
        let store = EventStore::open(db.clone()).await.unwrap();
        append(&store, &["a", "b"], 50).await;
        let projection = Arc::new(Tally {
            fail_only_replaying: true,
            ..tally()
        });
        let projector = Projector::open(store.clone(), projection.clone(), config(10))
            .await
            .unwrap();
        projector.catch_up(|_| {}).await.unwrap();
        projection.fail_at.store(45, Ordering::SeqCst);
        assert!(projector.rebuild(|_| {}).await.is_err());
        let status = projector.status().await.unwrap();
        assert_eq!(status.generation, 1);
        assert_eq!(status.rebuilding, Some((2, 40)));
        assert_eq!(
            rows(db, "tally").await,
            vec![("a".to_owned(), 50, 50), ("b".to_owned(), 50, 50)]
        );
        // The live generation still follows appends.
        append(&store, &["a"], 1).await;
        projector.catch_up(|_| {}).await.unwrap();

        let mut first = None;
        assert_eq!(
            projector
                .rebuild(|p| {
                    first.get_or_insert(p.position);
                })
                .await
                .unwrap(),
            2
        );
        assert_eq!(first, Some(50), "resumed after position 40");
        assert_eq!(
            rows(db, "tally").await,
            vec![("a".to_owned(), 51, 51), ("b".to_owned(), 50, 50)]
        );
        let seen = seen(db, "tally_seen").await;
        assert_eq!(
            seen.iter().map(|s| s.0).collect::<Vec<_>>(),
            (1..=101).collect::<Vec<_>>()
        );
        assert!(seen.iter().all(|s| s.1 == 1), "a rebuild is a replay");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_rebuild_of_the_same_projection_at_once_is_refused() {
    let test_db = TestDb::postgres().await;
    let db = test_db.db();
    let store = EventStore::open(db.clone()).await.unwrap();
    append(&store, &["a"], 40).await;
    let projection = Arc::new(Tally {
        gate_at: 25,
        ..tally()
    });
    let projector = Projector::open(store.clone(), projection.clone(), config(10))
        .await
        .unwrap();
    // Catch the live generation up first without the gate.
    Projector::open(store.clone(), Arc::new(tally()), config(100))
        .await
        .unwrap()
        .catch_up(|_| {})
        .await
        .unwrap();
    let first = tokio::spawn({
        let projector = projector.clone();
        async move { projector.rebuild(|_| {}).await }
    });
    projection.gate_reached.notified().await;
    // The first holds its batch (21..30) open; the second joins at position 20.
    let second = tokio::spawn({
        let projector = projector.clone();
        async move { projector.rebuild(|_| {}).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    projection.gate_open.notify_one();
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert_eq!(first.unwrap(), 2);
    let error = second.unwrap_err();
    assert!(error.to_string().contains("another rebuild"), "{error}");
    assert_eq!(rows(db, "tally").await, vec![("a".to_owned(), 40, 40)]);
}
