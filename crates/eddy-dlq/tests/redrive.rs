//! Dead letters as a product, end to end on the embedded log, on SQLite and PostgreSQL:
//! a poison notification is dead-lettered, stored and grouped by fingerprint; the
//! handler is fixed; a rate-limited redrive interrupted halfway resumes from its
//! checkpoint and delivers each letter exactly once, in key order, and the group
//! empties; an edited letter is redriven once with the original resolved; a letter
//! that keeps failing is a new letter with its history in one bounded header, and the
//! loop guard holds it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eddy_core::{async_trait, Envelope, Handler, HandlerError, Publisher, SystemClock};
use eddy_dlq::{DeadLetterConfig, DeadLetters, Filter, JobState, RedriveRequest};
use eddy_log::{Log, LogConfig};
use eddy_outbox::{Outbox, Relay, RelayConfig};
use eddy_runtime::{dead_letter, Consumer, ConsumerConfig, Router};
use eddy_testkit::events::Numbered;
use eddy_testkit::TestDb;
use tokio_util::sync::CancellationToken;

/// Records what it handled; fails permanently on the seqs in `poison`.
#[derive(Default, Clone)]
struct Notify {
    handled: Arc<Mutex<Vec<(String, u64)>>>,
    poison: Arc<Mutex<HashSet<u64>>>,
}

#[async_trait]
impl Handler<Numbered> for Notify {
    async fn handle(&self, event: Numbered, _: &Envelope) -> Result<(), HandlerError> {
        if self.poison.lock().unwrap().contains(&event.seq) {
            return Err(HandlerError::permanent(format!(
                "order {} cannot be notified: template missing",
                event.seq
            )));
        }
        self.handled.lock().unwrap().push((event.key, event.seq));
        Ok(())
    }
}

impl Notify {
    fn times_handled(&self, seq: u64) -> usize {
        self.handled
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| *s == seq)
            .count()
    }
}

async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn dead_letters_as_a_product(db: TestDb) {
    let log = Log::open(
        db.db().clone(),
        LogConfig {
            heartbeat_interval: Duration::from_millis(100),
            session_timeout: Duration::from_millis(1000),
            fallback_poll_interval: Duration::from_millis(100),
            ..LogConfig::default()
        },
    )
    .await
    .unwrap();
    log.create_topic("orders", 2).await.unwrap();
    log.create_topic("orders.dlq", 1).await.unwrap();
    let outbox = Outbox::open(db.db().clone(), Arc::new(SystemClock))
        .await
        .unwrap();
    let letters = DeadLetters::open(
        db.db().clone(),
        outbox.clone(),
        Arc::new(SystemClock),
        DeadLetterConfig {
            redrive_count_max: 1,
            page_len: 3,
            ..DeadLetterConfig::default()
        },
    )
    .await
    .unwrap();

    let stop = CancellationToken::new();
    let notify = Notify::default();
    // Seqs 0, 5, …, 25 (keys k0 and k1 alternate) fail until fixed; 3 fails for good.
    let fixable: Vec<u64> = vec![0, 5, 10, 15, 20, 25];
    notify
        .poison
        .lock()
        .unwrap()
        .extend(fixable.iter().copied());
    notify.poison.lock().unwrap().insert(3);
    let notifications = Consumer::new(
        "orders",
        "notifications",
        Arc::new(log.clone()),
        Arc::new(log.clone()),
        Router::new().route::<Numbered, _>(notify.clone()),
    )
    .with_config(ConsumerConfig {
        jitter_seed: Some(1),
        ..ConsumerConfig::default()
    });
    let stats = notifications.stats();
    let store = Consumer::new(
        "orders.dlq",
        "dead-letter-store",
        Arc::new(log.clone()),
        Arc::new(log.clone()),
        Router::new().any(letters.ingest(Some(HashSet::from(["notifications".to_owned()])))),
    );
    let relay = Relay::new(
        outbox.clone(),
        Arc::new(log.clone()),
        RelayConfig {
            fallback_poll_interval: Duration::from_millis(100),
            ..RelayConfig::default()
        },
    );
    let workers = vec![
        tokio::spawn(notifications.run(stop.clone())),
        tokio::spawn(store.run(stop.clone())),
        tokio::spawn(relay.run(stop.clone())),
    ];

    let events: Vec<Envelope> = (0..30)
        .map(|seq| Numbered::envelope(format!("k{}", seq % 2), seq))
        .collect();
    let mut by_seq: HashMap<u64, String> = HashMap::new();
    for (seq, event) in events.iter().enumerate() {
        by_seq.insert(seq as u64, event.id.to_string());
    }
    log.publish("orders", &events).await.unwrap();

    // Seven letters stored under one fingerprint: the same error on seven events, its
    // numbers differing.
    eventually("seven letters stored", async || {
        letters.count(&Filter::default()).await.unwrap() == 7
    })
    .await;
    assert_eq!(stats.dead_lettered(), 7);
    let groups = letters.groups(&Filter::default()).await.unwrap();
    assert_eq!(groups.len(), 1, "one bug, one group: {groups:?}");
    assert_eq!(groups[0].count, 7);
    assert_eq!(groups[0].group, "notifications");
    assert!(groups[0].sample_error.contains("cannot be notified"));
    let fingerprint = groups[0].fingerprint.clone();
    let listed = letters
        .list(&Filter::fingerprint(&fingerprint), 0, 100)
        .await
        .unwrap();
    assert_eq!(listed.len(), 7);
    let three = listed.iter().find(|l| l.original_id == by_seq[&3]).unwrap();
    assert_eq!(three.origin_topic, "orders");
    assert_eq!(three.key, "k1");
    assert_eq!(three.attempts, 1);
    assert!(three.origin_offset.is_some());
    assert_eq!(
        letters
            .list(
                &Filter {
                    key: Some("k0".into()),
                    ..Filter::default()
                },
                0,
                100
            )
            .await
            .unwrap()
            .len(),
        3,
        "k0's letters: 0, 10, 20"
    );

    // A dry run changes nothing.
    let request = |filter: Filter| RedriveRequest {
        filter,
        rate_per_sec: NonZeroU32::new(50).unwrap(),
        concurrency: 2,
        dry_run: false,
        resume: None,
        actor: "ops@test".into(),
    };
    let dry = letters
        .redrive(
            RedriveRequest {
                dry_run: true,
                ..request(Filter::fingerprint(&fingerprint))
            },
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!((dry.total, dry.redriven, dry.skipped), (7, 7, 0));
    assert_eq!(letters.count(&Filter::default()).await.unwrap(), 7);

    // The fix (but seq 3 stays broken); a redrive at 50/s stopped after its first step
    // of three letters …
    notify.poison.lock().unwrap().clear();
    notify.poison.lock().unwrap().insert(3);
    let (first_step, stepped) = tokio::sync::oneshot::channel::<String>();
    let first_step = Mutex::new(Some(first_step));
    let interrupted = letters.redrive(request(Filter::fingerprint(&fingerprint)), |progress| {
        if let Some(tx) = first_step.lock().unwrap().take() {
            let _ = tx.send(progress.job.clone());
        }
    });
    let job = tokio::select! {
        biased;
        job = stepped => job.unwrap(),
        report = interrupted => panic!("the redrive finished before it was interrupted: {report:?}"),
    };
    // … resumes from its checkpoint and finishes.
    let done = letters
        .redrive(
            RedriveRequest {
                resume: Some(job.clone()),
                ..request(Filter::default())
            },
            |_| {},
        )
        .await
        .unwrap();
    assert_eq!(done.state, JobState::Done);
    assert_eq!(done.total, 7);
    assert_eq!(done.redriven + done.skipped, 7);
    assert_eq!(
        done.redriven, 7,
        "nothing was redriven twice or lost: {done:?}"
    );

    // Each fixed event handled exactly once, each key's in the order they failed.
    eventually("the six fixed events handled", async || {
        fixable.iter().all(|seq| notify.times_handled(*seq) == 1)
    })
    .await;
    for key in ["k0", "k1"] {
        let redriven: Vec<u64> = notify
            .handled
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, s)| k == key && fixable.contains(s))
            .map(|(_, s)| *s)
            .collect();
        let mut sorted = redriven.clone();
        sorted.sort_unstable();
        assert_eq!(redriven, sorted, "{key}'s redriven events in order");
    }

    // Seq 3 failed again: a new letter, its history in one bounded header, and the
    // loop guard holds it.
    eventually("seq 3 dead-lettered again", async || {
        letters.count(&Filter::default()).await.unwrap() == 1
    })
    .await;
    let again = letters
        .list(&Filter::default(), 0, 10)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(again.original_id, by_seq[&3]);
    assert_ne!(again.id, three.id, "a new letter, not the resolved one");
    assert_eq!(again.redrive_count, 1);
    let causes: serde_json::Value =
        serde_json::from_str(again.headers().get(eddy_dlq::CAUSES).unwrap()).unwrap();
    assert_eq!(causes.as_array().unwrap().len(), 1);
    assert_eq!(
        again
            .headers()
            .iter()
            .filter(|(k, _)| *k == dead_letter::ERROR)
            .count(),
        1
    );
    let held = letters
        .redrive(request(Filter::default()), |_| {})
        .await
        .unwrap();
    assert_eq!(
        (held.redriven, held.skipped),
        (0, 1),
        "the loop guard holds it"
    );
    assert_eq!(letters.count(&Filter::default()).await.unwrap(), 1);

    // Edit and redrive: seq 3 becomes seq 103, handled once; the letter is resolved,
    // and a bulk redrive afterwards sends nothing more.
    let patch: json_patch::Patch = serde_json::from_value(
        serde_json::json!([{"op": "replace", "path": "/seq", "value": 103}]),
    )
    .unwrap();
    let sent = letters
        .edit_and_redrive(&again.id, &patch, "ops@test")
        .await
        .unwrap();
    assert_eq!(sent.id.to_string(), by_seq[&3], "the original event's id");
    assert_eq!(
        sent.headers.get(eddy_dlq::REDRIVE_OF),
        Some(again.id.as_str())
    );
    let bad: json_patch::Patch =
        serde_json::from_value(serde_json::json!([{"op": "remove", "path": "/nothing"}])).unwrap();
    assert!(
        letters
            .edit_and_redrive(&again.id, &bad, "ops@test")
            .await
            .is_err(),
        "resolved"
    );
    eventually("the edited event handled", async || {
        notify.times_handled(103) == 1
    })
    .await;
    let after = letters
        .redrive(request(Filter::default()), |_| {})
        .await
        .unwrap();
    assert_eq!(after.total, 0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(notify.times_handled(103), 1, "no duplicate");
    let edited = letters.get(&again.id).await.unwrap().unwrap();
    assert_eq!(edited.resolution.as_deref(), Some("edited"));
    assert_eq!(edited.resolved_by.as_deref(), Some("ops@test"));

    // Purge the resolved ones; every operation is in the audit.
    let resolved = Filter {
        status: Some("resolved".into()),
        ..Filter::default()
    };
    assert_eq!(letters.count(&resolved).await.unwrap(), 8);
    // The retention keeps them for now (an hour has not passed), and says nothing.
    assert_eq!(
        letters
            .expire_resolved(Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        letters
            .purge(&resolved, Duration::ZERO, "ops@test")
            .await
            .unwrap(),
        8
    );
    assert_eq!(
        letters
            .count(&Filter {
                status: Some("any".into()),
                ..Filter::default()
            })
            .await
            .unwrap(),
        0
    );
    let audit: Vec<String> = letters
        .audit(100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.operation)
        .collect();
    let by_retention = letters.audit(100).await.unwrap();
    assert!(
        !by_retention.iter().any(|e| e.actor == "retention"),
        "a retention run that deleted nothing is not audited: {by_retention:?}"
    );
    for operation in ["redrive-dry-run", "redrive", "edit-and-redrive", "purge"] {
        assert!(
            audit.iter().any(|o| o == operation),
            "{operation} audited: {audit:?}"
        );
    }

    stop.cancel();
    for worker in workers {
        worker.await.unwrap().unwrap();
    }
}

eddy_testkit::on_both_backends!(dead_letters_as_a_product);
