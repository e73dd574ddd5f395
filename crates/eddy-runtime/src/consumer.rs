//! [`Consumer`]: fetch, schedule per key, retry, dead-letter, commit, drain.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eddy_core::{
    Clock, Delivery, Error, ErrorKind, Message, Publisher, Subscriber, Subscription, SystemClock,
};
use futures::FutureExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::dead_letter::{dead_letter, Failure};
use crate::tracker::OffsetTracker;
use crate::{ConsumerConfig, Router};

/// Counters of one consumer, readable while it runs.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    /// Messages a handler finished successfully.
    pub handled: AtomicU64,
    /// Messages without a handler for their type, committed without a call.
    pub skipped: AtomicU64,
    /// Handler attempts that failed transiently and were retried.
    pub retried: AtomicU64,
    /// Messages sent to the dead-letter topic.
    pub dead_lettered: AtomicU64,
    /// Commits made.
    pub commits: AtomicU64,
    /// Pauses because a dependency was unavailable (its breaker open).
    pub paused: AtomicU64,
}

impl ConsumerStats {
    pub fn handled(&self) -> u64 {
        self.handled.load(Ordering::Relaxed)
    }
    pub fn dead_lettered(&self) -> u64 {
        self.dead_lettered.load(Ordering::Relaxed)
    }
    pub fn retried(&self) -> u64 {
        self.retried.load(Ordering::Relaxed)
    }
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
    pub fn paused(&self) -> u64 {
        self.paused.load(Ordering::Relaxed)
    }
}

/// Consumes one topic as a member of one consumer group.
pub struct Consumer {
    topic: String,
    group: String,
    subscriber: Arc<dyn Subscriber>,
    dead_letters: Arc<dyn Publisher>,
    router: Router,
    config: ConsumerConfig,
    clock: Arc<dyn Clock>,
    stats: Arc<ConsumerStats>,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("topic", &self.topic)
            .field("group", &self.group)
            .field("router", &self.router)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// A consumer of `topic` in `group`; dead letters are published with `dead_letters`
    /// (usually the same broker).
    pub fn new(
        topic: impl Into<String>,
        group: impl Into<String>,
        subscriber: Arc<dyn Subscriber>,
        dead_letters: Arc<dyn Publisher>,
        router: Router,
    ) -> Self {
        Self {
            topic: topic.into(),
            group: group.into(),
            subscriber,
            dead_letters,
            router,
            config: ConsumerConfig::default(),
            clock: Arc::new(SystemClock),
            stats: Arc::new(ConsumerStats::default()),
        }
    }

    pub fn with_config(mut self, config: ConsumerConfig) -> Self {
        self.config = config;
        self
    }

    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The counters; clone the `Arc` before [`Consumer::run`] to watch them.
    pub fn stats(&self) -> Arc<ConsumerStats> {
        self.stats.clone()
    }

    /// The topic dead letters go to.
    pub fn dead_letter_topic(&self) -> String {
        self.config
            .dead_letter_topic
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.topic))
    }

    /// Runs until `shutdown` is cancelled, then stops fetching, lets in-flight messages
    /// finish for up to `drain_timeout`, commits what finished and leaves the group. A
    /// message waiting for its next retry is not retried during the drain: it stays
    /// uncommitted (with the messages of its key behind it) and is delivered again.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        self.config.validate()?;
        let subscription: Arc<dyn Subscription> = self
            .subscriber
            .subscribe(&self.topic, &self.group)
            .await?
            .into();
        let seed = self.config.jitter_seed.unwrap_or_else(rand::random);
        let shared = Arc::new(Shared {
            router: self.router,
            dead_letters: self.dead_letters,
            dead_letter_topic: self
                .config
                .dead_letter_topic
                .clone()
                .unwrap_or_else(|| format!("{}.dlq", self.topic)),
            group: self.group.clone(),
            config: self.config.clone(),
            clock: self.clock,
            stats: self.stats,
            tracker: Mutex::new(OffsetTracker::new()),
            keys: Mutex::new(HashMap::new()),
            concurrency: Arc::new(Semaphore::new(self.config.concurrency)),
            in_flight: Arc::new(Semaphore::new(self.config.in_flight_max)),
            jitter: Mutex::new(StdRng::seed_from_u64(seed)),
            abandon: CancellationToken::new(),
            stopping: CancellationToken::new(),
        });

        // If this future is dropped (the task aborted), key tasks stop retrying.
        let _abandon_on_drop = shared.abandon.clone().drop_guard();
        let stop_fetching = shutdown.child_token();
        let _stop_fetching_on_drop = stop_fetching.clone().drop_guard();
        let fetcher = tokio::spawn(fetch_loop(
            shared.clone(),
            subscription.clone(),
            stop_fetching.clone(),
        ));

        let mut ticker = tokio::time::interval(self.config.commit_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Commits run outside the `select!`: a commit is never cancelled half-way.
        let mut fetcher = fetcher;
        let fetch_result = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break None,
                result = &mut fetcher => break Some(result),
                _ = ticker.tick() => {}
            }
            commit(&shared, subscription.as_ref()).await;
        };
        stop_fetching.cancel();
        shared.stopping.cancel();

        // Drain: wait for in-flight messages, committing as they finish.
        let drained = tokio::time::timeout(self.config.drain_timeout, async {
            loop {
                let idle = shared.in_flight.available_permits() == self.config.in_flight_max;
                commit(&shared, subscription.as_ref()).await;
                if idle {
                    break;
                }
                tokio::time::sleep(self.config.commit_interval.min(Duration::from_millis(20)))
                    .await;
            }
        })
        .await;
        if drained.is_err() {
            // Whatever is still running is abandoned: not committed, delivered again.
            shared.abandon.cancel();
            let pending = shared
                .tracker
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pending_len();
            tracing::warn!(topic = %self.topic, group = %self.group, pending, "drain timed out; unfinished messages will be redelivered");
        }
        commit(&shared, subscription.as_ref()).await;
        shared.abandon.cancel();
        subscription.close().await?;
        match fetch_result {
            Some(Ok(Err(error))) => Err(error),
            Some(Err(join_error)) => {
                Err(Error::permanent("the fetch loop panicked").with_source(join_error))
            }
            _ => Ok(()),
        }
    }
}

/// State shared by the fetcher, the key tasks and the commit loop.
struct Shared {
    router: Router,
    dead_letters: Arc<dyn Publisher>,
    dead_letter_topic: String,
    group: String,
    config: ConsumerConfig,
    clock: Arc<dyn Clock>,
    stats: Arc<ConsumerStats>,
    tracker: Mutex<OffsetTracker>,
    /// Keys with a running task, and the messages waiting behind it.
    keys: Mutex<HashMap<String, VecDeque<Work>>>,
    concurrency: Arc<Semaphore>,
    in_flight: Arc<Semaphore>,
    jitter: Mutex<StdRng>,
    /// Cancelled when the drain times out: retries stop and work is abandoned.
    abandon: CancellationToken,
    /// Cancelled when shutdown begins: a message waiting for its next attempt is let go
    /// (uncommitted, so it is delivered again) instead of holding the drain open —
    /// its retry may wait on something that is stopping too, such as another consumer.
    stopping: CancellationToken,
}

/// One message and the in-flight permit it holds until it is finished.
struct Work {
    delivery: Delivery,
    _permit: OwnedSemaphorePermit,
}

enum Outcome {
    Finished,
    Abandoned,
}

async fn commit(shared: &Shared, subscription: &dyn Subscription) {
    let offsets = shared
        .tracker
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .committable();
    if offsets.is_empty() {
        return;
    }
    match subscription.commit(&offsets).await {
        Ok(()) => {
            shared
                .tracker
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .committed(&offsets);
            shared.stats.commits.fetch_add(1, Ordering::Relaxed);
        }
        // The positions stay committable; the next tick tries again.
        Err(error) => tracing::warn!(%error, "commit failed; will retry"),
    }
}

async fn fetch_loop(
    shared: Arc<Shared>,
    subscription: Arc<dyn Subscription>,
    stop: CancellationToken,
) -> Result<(), Error> {
    let mut failures = 0u32;
    loop {
        // Backpressure: no free in-flight slot, no fetch.
        let first = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            permit = shared.in_flight.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return Ok(()),
            },
        };
        let room = (shared.in_flight.available_permits() + 1).min(shared.config.fetch_len_max);
        let batch = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            batch = subscription.fetch(room) => batch,
        };
        let batch = match batch {
            Ok(batch) => {
                failures = 0;
                batch
            }
            Err(error) if error.is_transient() => {
                failures = failures.saturating_add(1);
                let pause = shared.config.retry.backoff_ceiling(failures);
                tracing::warn!(%error, ?pause, "fetch failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(pause) => continue,
                }
            }
            Err(error) => return Err(error),
        };
        let mut permit = Some(first);
        for delivery in batch {
            let permit = match permit.take() {
                Some(p) => p,
                None => match shared.in_flight.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => return Ok(()),
                },
            };
            shared
                .tracker
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .dispatched(delivery.partition, delivery.offset);
            schedule(
                &shared,
                Work {
                    delivery,
                    _permit: permit,
                },
            );
        }
    }
}

/// Queues `work` behind its key, starting a task for the key if it has none.
fn schedule(shared: &Arc<Shared>, work: Work) {
    let key = match &work.delivery.message {
        Message::Event(envelope) => envelope.key.clone(),
        Message::Undecodable(raw) => raw.key.clone().unwrap_or_default(),
    };
    let mut keys = shared.keys.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(queue) = keys.get_mut(&key) {
        queue.push_back(work);
        return;
    }
    keys.insert(key.clone(), VecDeque::new());
    drop(keys);
    tokio::spawn(run_key(shared.clone(), key, work));
}

/// Processes a key's messages one after another until its queue is empty.
async fn run_key(shared: Arc<Shared>, key: String, first: Work) {
    let mut work = first;
    loop {
        let outcome = process(&shared, &work.delivery).await;
        let mut keys = shared.keys.lock().unwrap_or_else(|p| p.into_inner());
        match outcome {
            Outcome::Finished => {
                shared
                    .tracker
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .finished(work.delivery.partition, work.delivery.offset);
                let next = keys.get_mut(&key).and_then(VecDeque::pop_front);
                match next {
                    Some(next) => work = next,
                    None => {
                        keys.remove(&key);
                        return;
                    }
                }
            }
            Outcome::Abandoned => {
                // Later messages of this key must not overtake the abandoned one:
                // abandon them too (uncommitted, they all come back in order).
                keys.remove(&key);
                return;
            }
        }
    }
}

async fn process(shared: &Shared, delivery: &Delivery) -> Outcome {
    let envelope = match &delivery.message {
        Message::Event(envelope) => envelope,
        Message::Undecodable(raw) => {
            let now = shared.clock.now();
            let failure = Failure {
                error: raw.error.clone(),
                kind: ErrorKind::Permanent.to_string(),
                attempts: 1,
                first_at: now,
                last_at: now,
            };
            return send_dead_letter(shared, delivery, &failure).await;
        }
    };
    let Some(route) = shared.router.get(&envelope.event_type) else {
        shared.stats.skipped.fetch_add(1, Ordering::Relaxed);
        return Outcome::Finished;
    };
    if let Some(deadline) = envelope.headers.deadline() {
        let now = shared.clock.now();
        if deadline <= now {
            // Whoever waited for this work has given up: doing it now wastes capacity
            // and may act on a decision already reversed. Park it where it can be seen.
            let failure = Failure {
                error: format!("deadline {deadline} passed before processing started"),
                kind: ErrorKind::Permanent.to_string(),
                attempts: 0,
                first_at: now,
                last_at: now,
            };
            return send_dead_letter(shared, delivery, &failure).await;
        }
    }
    let retry = &shared.config.retry;
    let mut first_failure = None;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let result = {
            let Ok(_slot) = shared.concurrency.acquire().await else {
                return Outcome::Abandoned;
            };
            AssertUnwindSafe(route.call(envelope)).catch_unwind().await
        };
        let error = match result {
            Ok(Ok(())) => {
                shared.stats.handled.fetch_add(1, Ordering::Relaxed);
                return Outcome::Finished;
            }
            Ok(Err(error)) => error,
            Err(panic) => {
                let text = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "handler panicked".to_owned());
                eddy_core::HandlerError::permanent(format!("handler panicked: {text}"))
            }
        };
        if error.kind() == ErrorKind::Unavailable {
            // The dependency is down and the handler did not try: wait for it, spending
            // no attempt. The breaker lets one probe through when it half-opens; the
            // other keys keep waiting here until it closes.
            attempt -= 1;
            shared.stats.paused.fetch_add(1, Ordering::Relaxed);
            let pause = {
                let mut rng = shared.jitter.lock().unwrap_or_else(|p| p.into_inner());
                shared
                    .config
                    .unavailable_pause
                    .mul_f64(rng.gen_range(0.5..=1.0))
            };
            tracing::debug!(event_id = %envelope.id, ?pause, %error, "dependency unavailable; pausing");
            tokio::select! {
                _ = shared.abandon.cancelled() => return Outcome::Abandoned,
                _ = shared.stopping.cancelled() => return let_go_for_shutdown(envelope),
                _ = tokio::time::sleep(pause) => continue,
            }
        }
        let now = shared.clock.now();
        let first_at = *first_failure.get_or_insert(now);
        if error.kind() == ErrorKind::Transient && attempt < retry.attempts_max {
            shared.stats.retried.fetch_add(1, Ordering::Relaxed);
            let ceiling = retry.backoff_ceiling(attempt);
            let pause = {
                let mut rng = shared.jitter.lock().unwrap_or_else(|p| p.into_inner());
                ceiling.mul_f64(rng.gen_range(0.0..=1.0))
            };
            tracing::debug!(event_id = %envelope.id, attempt, ?pause, %error, "transient failure; retrying");
            tokio::select! {
                _ = shared.abandon.cancelled() => return Outcome::Abandoned,
                _ = shared.stopping.cancelled() => return let_go_for_shutdown(envelope),
                _ = tokio::time::sleep(pause) => continue,
            }
        }
        tracing::warn!(event_id = %envelope.id, event_type = %envelope.event_type, attempt, %error, "message failed; dead-lettering");
        let failure = Failure {
            error: error.to_string(),
            kind: error.kind().to_string(),
            attempts: attempt,
            first_at,
            last_at: now,
        };
        return send_dead_letter(shared, delivery, &failure).await;
    }
}

/// A message waiting for its next attempt when shutdown begins is not retried again: it
/// stays uncommitted and comes back, attempts counted afresh, to whoever owns its
/// partition next.
fn let_go_for_shutdown(envelope: &eddy_core::Envelope) -> Outcome {
    tracing::info!(event_id = %envelope.id, "shutting down: a message waiting to be retried will be delivered again");
    Outcome::Abandoned
}

/// Publishes the dead letter, retrying until it is accepted: a message is finished
/// only once it is either handled or safely parked.
async fn send_dead_letter(shared: &Shared, delivery: &Delivery, failure: &Failure) -> Outcome {
    let letter = dead_letter(delivery, &shared.group, failure);
    let mut attempt = 0u32;
    loop {
        attempt = attempt.saturating_add(1);
        match shared
            .dead_letters
            .publish(&shared.dead_letter_topic, std::slice::from_ref(&letter))
            .await
        {
            Ok(()) => {
                shared.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                return Outcome::Finished;
            }
            Err(error) => {
                let pause = shared.config.retry.backoff_ceiling(attempt);
                tracing::error!(%error, ?pause, topic = %shared.dead_letter_topic, "cannot publish a dead letter; retrying");
                tokio::select! {
                    _ = shared.abandon.cancelled() => return Outcome::Abandoned,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}
