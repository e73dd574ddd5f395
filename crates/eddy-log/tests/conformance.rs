//! The embedded log passes the broker conformance suite on SQLite and PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use eddy_core::{Publisher, Subscriber};
use eddy_log::{Log, LogConfig};
use eddy_testkit::conformance::{Capabilities, Fixture};
use eddy_testkit::TestDb;

struct LogFixture {
    log: Log,
    _db: TestDb,
}

fn config() -> LogConfig {
    LogConfig {
        heartbeat_interval: Duration::from_millis(100),
        session_timeout: Duration::from_millis(1500),
        fallback_poll_interval: Duration::from_millis(200),
        ..LogConfig::default()
    }
}

async fn fixture(db: TestDb) -> LogFixture {
    let log = Log::open(db.db().clone(), config())
        .await
        .unwrap_or_else(|e| panic!("open log: {e}"));
    LogFixture { log, _db: db }
}

#[eddy_core::async_trait]
impl Fixture for LogFixture {
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
        Arc::new(self.log.clone())
    }

    fn subscriber(&self) -> Arc<dyn Subscriber> {
        Arc::new(self.log.clone())
    }

    async fn topic(&self, partitions: u32) -> String {
        let name = format!("topic-{}", uuid::Uuid::now_v7().simple());
        self.log
            .create_topic(&name, partitions)
            .await
            .unwrap_or_else(|e| panic!("create topic: {e}"));
        name
    }

    fn session_timeout(&self) -> Duration {
        config().session_timeout
    }
}

eddy_testkit::conformance_tests!(sqlite, fixture(TestDb::sqlite().await));
eddy_testkit::conformance_tests!(postgres, fixture(TestDb::postgres().await));

mod retention {
    use super::*;
    use eddy_core::ManualClock;
    use eddy_testkit::events::Numbered;

    async fn records_older_than_the_retention_are_purged(db: TestDb) {
        let clock = ManualClock::new(eddy_core::OffsetDateTime::now_utc());
        let log = Log::open_with_clock(
            db.db().clone(),
            LogConfig {
                retention: Duration::from_secs(60),
                ..config()
            },
            Arc::new(clock.clone()),
        )
        .await
        .unwrap();
        log.publish("t", &Numbered::interleaved(3, 2))
            .await
            .unwrap();
        assert_eq!(
            log.lag("g", "t").await.unwrap(),
            6,
            "a new group lags by all"
        );
        assert_eq!(
            log.purge_expired(1000).await.unwrap(),
            0,
            "young records stay"
        );
        clock.advance(Duration::from_secs(61));
        log.publish("t", &Numbered::interleaved(1, 1))
            .await
            .unwrap();
        assert_eq!(log.purge_expired(4).await.unwrap(), 4, "bounded per call");
        assert_eq!(log.purge_expired(1000).await.unwrap(), 2);
        assert_eq!(
            log.purge_expired(1000).await.unwrap(),
            0,
            "the new record stays"
        );
        let offsets: u64 = log.end_offsets("t").await.unwrap().values().sum();
        assert_eq!(offsets, 7, "offsets never go back");
        assert_eq!(
            log.lag("g", "t").await.unwrap(),
            1,
            "purged records are not waiting for anyone"
        );
    }

    fn manual_log_config(unconsumed: Option<Duration>) -> LogConfig {
        LogConfig {
            retention: Duration::from_secs(60),
            unconsumed_retention: unconsumed,
            dead_letter_retention: Duration::from_secs(24 * 3600),
            ..config()
        }
    }

    async fn retention_keeps_what_a_group_has_not_consumed(db: TestDb) {
        let clock = ManualClock::new(eddy_core::OffsetDateTime::now_utc());
        let log = Log::open_with_clock(
            db.db().clone(),
            manual_log_config(None),
            Arc::new(clock.clone()),
        )
        .await
        .unwrap();
        log.create_topic("t", 1).await.unwrap();
        log.publish("t", &Numbered::interleaved(1, 6))
            .await
            .unwrap();
        let member = log.subscribe("t", "g").await.unwrap();
        let first = eddy_testkit::conformance::receive(member.as_ref(), 6, false).await;
        eddy_testkit::conformance::commit_all(member.as_ref(), &first[..2]).await;
        member.close().await.unwrap();

        clock.advance(Duration::from_secs(61));
        assert_eq!(
            log.purge_expired(1000).await.unwrap(),
            2,
            "only what the group consumed"
        );
        assert_eq!(log.lag("g", "t").await.unwrap(), 4);

        // Past the unconsumed retention they go too, and every one is reported.
        let bounded = Log::open_with_clock(
            db.connect_again().await,
            manual_log_config(Some(Duration::from_secs(120))),
            Arc::new(clock.clone()),
        )
        .await
        .unwrap();
        assert_eq!(bounded.purge_expired(1000).await.unwrap(), 0);
        clock.advance(Duration::from_secs(60));
        assert_eq!(bounded.purge_expired(1000).await.unwrap(), 4);
        assert_eq!(bounded.stats().dropped_unconsumed(), 4);

        // The group comes back and finds the hole: said and counted, then it reads on.
        bounded
            .publish("t", &Numbered::interleaved(1, 1))
            .await
            .unwrap();
        let back = bounded.subscribe("t", "g").await.unwrap();
        let next = eddy_testkit::conformance::receive(back.as_ref(), 1, true).await;
        assert_eq!(next[0].offset, 6);
        assert_eq!(bounded.stats().holes_seen(), 4);
        back.close().await.unwrap();
    }

    async fn dead_letter_topics_keep_their_own_retention(db: TestDb) {
        let clock = ManualClock::new(eddy_core::OffsetDateTime::now_utc());
        let log = Log::open_with_clock(
            db.db().clone(),
            manual_log_config(None),
            Arc::new(clock.clone()),
        )
        .await
        .unwrap();
        log.publish("t", &Numbered::interleaved(1, 2))
            .await
            .unwrap();
        log.publish("t.dlq", &Numbered::interleaved(1, 2))
            .await
            .unwrap();
        clock.advance(Duration::from_secs(61));
        assert_eq!(log.purge_expired(1000).await.unwrap(), 2);
        assert_eq!(
            log.lag("operators", "t.dlq").await.unwrap(),
            2,
            "dead letters stay"
        );
        clock.advance(Duration::from_secs(24 * 3600));
        assert_eq!(log.purge_expired(1000).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn a_retention_beyond_the_start_of_time_keeps_everything() {
        let db = TestDb::sqlite().await;
        let log = Log::open(
            db.db().clone(),
            LogConfig {
                retention: Duration::MAX,
                unconsumed_retention: Some(Duration::MAX),
                ..config()
            },
        )
        .await
        .unwrap();
        log.publish("t", &Numbered::interleaved(1, 2))
            .await
            .unwrap();
        assert_eq!(log.purge_expired(1000).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn retention_keeps_what_a_group_has_not_consumed_on_sqlite() {
        retention_keeps_what_a_group_has_not_consumed(TestDb::sqlite().await).await;
    }

    #[tokio::test]
    async fn retention_keeps_what_a_group_has_not_consumed_on_postgres() {
        retention_keeps_what_a_group_has_not_consumed(TestDb::postgres().await).await;
    }

    #[tokio::test]
    async fn dead_letter_topics_keep_their_own_retention_on_sqlite() {
        dead_letter_topics_keep_their_own_retention(TestDb::sqlite().await).await;
    }

    #[tokio::test]
    async fn on_sqlite() {
        records_older_than_the_retention_are_purged(TestDb::sqlite().await).await;
    }

    #[tokio::test]
    async fn on_postgres() {
        records_older_than_the_retention_are_purged(TestDb::postgres().await).await;
    }
}

mod restart {
    use super::*;
    use eddy_testkit::conformance::receive;
    use eddy_testkit::events::Numbered;

    /// With a stable instance id, a process restarted after a crash takes its
    /// partitions back at once rather than after the session timeout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_instance_takes_its_partitions_back_at_once() {
        let db = TestDb::sqlite().await;
        let config = LogConfig {
            instance_id: Some("node-a".to_owned()),
            session_timeout: Duration::from_secs(600),
            ..config()
        };
        let log = Log::open(db.db().clone(), config.clone()).await.unwrap();
        log.publish("t", &Numbered::interleaved(4, 3))
            .await
            .unwrap();
        let first = log.subscribe("t", "g").await.unwrap();
        receive(first.as_ref(), 12, false).await;
        drop(first); // crash: no close, leases held for ten minutes

        let restarted = Log::open(db.connect_again().await, config).await.unwrap();
        let second = restarted.subscribe("t", "g").await.unwrap();
        let again =
            tokio::time::timeout(Duration::from_secs(10), receive(second.as_ref(), 12, true)).await;
        assert!(
            again.is_ok(),
            "the restarted instance waited for its own leases to expire"
        );
        second.close().await.unwrap();
    }
}
