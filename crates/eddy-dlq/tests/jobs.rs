//! Redrive jobs paused and cancelled from elsewhere (as the admin API and `shop dlq
//! pause|cancel` do) stop after their current step; a paused one resumes, a cancelled
//! one does not.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use eddy_core::{Delivery, Message, SystemClock};
use eddy_dlq::{DeadLetterConfig, DeadLetters, Filter, JobState, RedriveRequest};
use eddy_outbox::Outbox;
use eddy_runtime::dead_letter::{dead_letter, Failure};
use eddy_testkit::events::Numbered;
use eddy_testkit::TestDb;

async fn store_with_letters(db: &TestDb, count: u64) -> DeadLetters {
    let outbox = Outbox::open(db.db().clone(), Arc::new(SystemClock))
        .await
        .unwrap();
    let letters = DeadLetters::open(
        db.db().clone(),
        outbox,
        Arc::new(SystemClock),
        DeadLetterConfig {
            page_len: 2,
            ..DeadLetterConfig::default()
        },
    )
    .await
    .unwrap();
    let now = time::OffsetDateTime::now_utc();
    for seq in 0..count {
        let delivery = Delivery {
            topic: "orders".into(),
            partition: 0,
            offset: seq,
            message: Message::Event(Numbered::envelope(format!("k{seq}"), seq)),
        };
        let failure = Failure {
            error: format!("seq {seq} failed"),
            kind: "permanent".into(),
            attempts: 1,
            first_at: now,
            last_at: now,
        };
        assert!(letters
            .store(&dead_letter(&delivery, "workers", &failure))
            .await
            .unwrap());
    }
    letters
}

fn request(resume: Option<String>) -> RedriveRequest {
    RedriveRequest {
        filter: Filter::default(),
        // Two letters a second: the job is still running when it is paused.
        rate_per_sec: NonZeroU32::new(2).unwrap(),
        concurrency: 1,
        dry_run: false,
        resume,
        actor: "ops@test".into(),
    }
}

/// Runs a redrive and, after its first step, asks `stop` (pause or cancel) from the
/// side; returns how it ended.
async fn stopped_after_one_step(letters: &DeadLetters, stop: &str) -> eddy_dlq::RedriveReport {
    let side = letters.clone();
    let stop = stop.to_owned();
    let (tx, rx) = tokio::sync::oneshot::channel::<String>();
    let tx = Mutex::new(Some(tx));
    let asking = tokio::spawn(async move {
        let job = rx.await.unwrap();
        match stop.as_str() {
            "pause" => side.pause(&job).await.unwrap(),
            _ => side.cancel(&job).await.unwrap(),
        }
    });
    let report = letters
        .redrive(request(None), |progress| {
            if let Some(tx) = tx.lock().unwrap().take() {
                let _ = tx.send(progress.job.clone());
            }
        })
        .await
        .unwrap();
    asking.await.unwrap();
    report
}

async fn a_paused_redrive_stops_after_its_step_and_resumes(db: TestDb) {
    let letters = store_with_letters(&db, 8).await;
    let paused = stopped_after_one_step(&letters, "pause").await;
    assert_eq!(paused.state, JobState::Paused, "{paused:?}");
    assert!(paused.redriven >= 2 && paused.redriven < 8, "{paused:?}");
    assert_eq!(
        letters.job_progress(&paused.job).await.unwrap().state,
        JobState::Paused
    );
    let done = letters
        .redrive(request(Some(paused.job.clone())), |_| {})
        .await
        .unwrap();
    assert_eq!(done.state, JobState::Done);
    assert_eq!(done.redriven, 8, "{done:?}");
    assert_eq!(letters.count(&Filter::default()).await.unwrap(), 0);
}

async fn a_cancelled_redrive_stops_for_good(db: TestDb) {
    let letters = store_with_letters(&db, 8).await;
    let cancelled = stopped_after_one_step(&letters, "cancel").await;
    assert_eq!(cancelled.state, JobState::Cancelled, "{cancelled:?}");
    let open = letters.count(&Filter::default()).await.unwrap();
    assert_eq!(open, 8 - cancelled.redriven, "what it did stays done");
    assert!(letters
        .redrive(request(Some(cancelled.job.clone())), |_| {})
        .await
        .is_err());
    assert_eq!(letters.count(&Filter::default()).await.unwrap(), open);
    assert!(letters.pause("no-such-job").await.is_err());
}

eddy_testkit::on_both_backends!(
    a_paused_redrive_stops_after_its_step_and_resumes,
    a_cancelled_redrive_stops_for_good
);
