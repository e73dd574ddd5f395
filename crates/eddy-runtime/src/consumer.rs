//! [`Consumer`]: fetch, schedule per key, retry, dead-letter, commit, drain.

use std::collections::BTreeMap;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use eddy_core::{
    Clock, Delivery, Envelope, Error, ErrorKind, HandlerError, Message, Publisher, Subscriber,
    Subscription, SystemClock,
};
use futures::FutureExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::dead_letter::{dead_letter, failure_kind, Failure, KIND_NEWER_SCHEMA};
use crate::decision::{decide, Decision};
use crate::keys::{self, KeyQueues};
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
    /// Fetches that failed (the consumer backs off and fetches again).
    pub fetch_failures: AtomicU64,
    /// Skipped messages per event type: at most [`SKIPPED_TYPES_MAX`] types (a foreign
    /// producer could send any number), the rest counted under `other`.
    skipped_types: Mutex<BTreeMap<String, u64>>,
}

/// Event types [`ConsumerStats`] counts skipped messages of by name.
pub const SKIPPED_TYPES_MAX: usize = 64;

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
    pub fn fetch_failures(&self) -> u64 {
        self.fetch_failures.load(Ordering::Relaxed)
    }

    /// Skipped messages by event type (see [`SKIPPED_TYPES_MAX`]).
    pub fn skipped_by_type(&self) -> BTreeMap<String, u64> {
        self.skipped_types
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Counts a message skipped for want of a handler; true the first time its type
    /// is seen.
    fn skip(&self, event_type: &str) -> bool {
        self.skipped.fetch_add(1, Ordering::Relaxed);
        let mut types = self.skipped_types.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = types.get_mut(event_type) {
            *count += 1;
            return false;
        }
        let name = if types.len() < SKIPPED_TYPES_MAX {
            event_type
        } else {
            "other"
        };
        *types.entry(name.to_owned()).or_default() += 1;
        name != "other"
    }
}

/// Consumes one topic as a member of one consumer group. A clone shares the
/// statistics, so a supervisor can start it again after a failure.
#[derive(Clone)]
pub struct Consumer {
    topic: String,
    pub(crate) group: String,
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
        self.run_subscribed(shutdown, || {}).await
    }

    /// [`Consumer::run`], calling `subscribed` once the subscription is made — when the
    /// consumer starts to work (a supervisor's [`crate::supervisor::Up::up`]): a
    /// consumer whose subscribe fails or hangs never calls it.
    pub async fn run_subscribed(
        self,
        shutdown: CancellationToken,
        subscribed: impl FnOnce() + Send,
    ) -> Result<(), Error> {
        self.config.validate()?;
        // A stop ends a subscribe that hangs (a broker that never answers): shutdown
        // never waits on the broker.
        let subscription: Arc<dyn Subscription> = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(()),
            subscription = self.subscriber.subscribe(&self.topic, &self.group) => subscription?.into(),
        };
        subscribed();
        let (topic, group) = (self.topic.clone(), self.group.clone());
        let shared = Arc::new(Shared::new(self));

        // If this future is dropped (the task aborted), key tasks stop retrying.
        let _abandon_on_drop = shared.abandon.clone().drop_guard();
        let stop_fetching = shutdown.child_token();
        let _stop_fetching_on_drop = stop_fetching.clone().drop_guard();
        let mut fetcher = tokio::spawn(fetch_loop(
            shared.clone(),
            subscription.clone(),
            stop_fetching.clone(),
        ));

        let mut ticker = tokio::time::interval(shared.config.commit_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Commits run outside the `select!`: a commit is never cancelled half-way.
        // Every `select!` of the runtime is `biased` (stopping first): the same inputs
        // take the same branches, which the seeded simulation (eddy-sim) relies on.
        let fetch_result = loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break None,
                result = &mut fetcher => break Some(result),
                _ = ticker.tick() => {}
            }
            commit(&shared, subscription.as_ref()).await;
        };
        stop_fetching.cancel();
        shared.stopping.cancel();
        if !drain(&shared, subscription.as_ref()).await {
            let pending = shared.tracker().pending_len();
            tracing::warn!(%topic, %group, pending, "drain timed out; unfinished messages will be redelivered");
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

/// Waits up to `drain_timeout` for in-flight messages, committing as they finish;
/// false when time ran out (what still runs is abandoned: not committed, delivered
/// again).
async fn drain(shared: &Shared, subscription: &dyn Subscription) -> bool {
    let config = &shared.config;
    let drained = tokio::time::timeout(config.drain_timeout, async {
        loop {
            let idle = shared.in_flight.available_permits() == config.in_flight_max;
            commit(shared, subscription).await;
            if idle {
                break;
            }
            tokio::time::sleep(config.commit_interval.min(DRAIN_POLL_INTERVAL_MAX)).await;
        }
    })
    .await;
    if drained.is_err() {
        shared.abandon.cancel();
    }
    drained.is_ok()
}

/// Permanent fetch failures in a row after which the consumer gives up on its
/// subscription and ends with the error, for its supervisor to start it again on a new
/// one ([`crate::supervise`]). Anything less — and every transient failure — it rides
/// out with backoff.
pub const PERMANENT_FETCH_FAILURES_MAX: u32 = 10;

/// How often the drain looks whether in-flight work has finished, at most.
const DRAIN_POLL_INTERVAL_MAX: Duration = Duration::from_millis(20);

/// State shared by the fetcher, the key tasks and the commit loop.
pub(crate) struct Shared {
    router: Router,
    dead_letters: Arc<dyn Publisher>,
    dead_letter_topic: String,
    pub(crate) group: String,
    /// The broker's name in traces.
    pub(crate) system: &'static str,
    config: ConsumerConfig,
    clock: Arc<dyn Clock>,
    stats: Arc<ConsumerStats>,
    tracker: Mutex<OffsetTracker>,
    /// Keys with a running task, and the messages waiting behind it.
    pub(crate) keys: KeyQueues<Work>,
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

impl Shared {
    fn new(consumer: Consumer) -> Self {
        let config = consumer.config;
        let seed = config.jitter_seed.unwrap_or_else(rand::random);
        Self {
            router: consumer.router,
            dead_letters: consumer.dead_letters,
            dead_letter_topic: config
                .dead_letter_topic
                .clone()
                .unwrap_or_else(|| format!("{}.dlq", consumer.topic)),
            group: consumer.group,
            system: consumer.subscriber.system(),
            clock: consumer.clock,
            stats: consumer.stats,
            tracker: Mutex::new(OffsetTracker::new()),
            keys: KeyQueues::default(),
            concurrency: Arc::new(Semaphore::new(config.concurrency)),
            in_flight: Arc::new(Semaphore::new(config.in_flight_max)),
            jitter: Mutex::new(StdRng::seed_from_u64(seed)),
            abandon: CancellationToken::new(),
            stopping: CancellationToken::new(),
            config,
        }
    }

    pub(crate) fn tracker(&self) -> MutexGuard<'_, OffsetTracker> {
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A uniform draw from `range`, from the consumer's seeded source.
    fn draw(&self, range: std::ops::RangeInclusive<f64>) -> f64 {
        self.jitter
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .gen_range(range)
    }
}

/// One message and the in-flight permit it holds until it is finished.
pub(crate) struct Work {
    pub(crate) delivery: Delivery,
    _permit: OwnedSemaphorePermit,
}

/// How a message left its key's task.
pub(crate) enum Outcome {
    /// Handled, skipped or dead-lettered: its offset may be committed.
    Finished,
    /// Let go uncommitted (shutdown): it comes back, its key's later messages with it.
    Abandoned,
}

async fn commit(shared: &Shared, subscription: &dyn Subscription) {
    let offsets = shared.tracker().committable();
    if offsets.is_empty() {
        return;
    }
    match subscription.commit(&offsets).await {
        Ok(()) => {
            shared.tracker().committed(&offsets);
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
    let mut permanent_in_a_row = 0u32;
    loop {
        // Backpressure: no free in-flight slot, no fetch.
        // `biased`: once stopping, never take another batch, even if one is ready.
        let first = tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
            permit = shared.in_flight.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return Ok(()),
            },
        };
        let room = (shared.in_flight.available_permits() + 1).min(shared.config.fetch_len_max);
        let batch = tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
            batch = subscription.fetch(room) => batch,
        };
        let batch = match batch {
            Ok(batch) => {
                failures = 0;
                permanent_in_a_row = 0;
                batch
            }
            // A fetch error does not end the consumer: the broker or the database it
            // reads from comes back, and a consumer that stopped would leave its
            // partitions unserved until someone noticed. It backs off (bounded),
            // counts the failure and says so — unless the subscription is dead
            // (PERMANENT_FETCH_FAILURES_MAX permanent failures in a row).
            Err(error) => {
                failures = failures.saturating_add(1);
                shared.stats.fetch_failures.fetch_add(1, Ordering::Relaxed);
                permanent_in_a_row = if error.is_transient() {
                    0
                } else {
                    permanent_in_a_row + 1
                };
                if permanent_in_a_row >= PERMANENT_FETCH_FAILURES_MAX {
                    // The subscription itself is dead (a poll thread gone, a pull that
                    // ended): only a new one helps. Ending lets the supervisor make it.
                    tracing::error!(%error, "fetch failed permanently {PERMANENT_FETCH_FAILURES_MAX} times in a row; ending so the consumer subscribes again");
                    return Err(error);
                }
                let pause = shared.config.retry.backoff_ceiling(failures);
                if error.is_transient() {
                    tracing::warn!(%error, ?pause, failures, "fetch failed; retrying");
                } else {
                    tracing::error!(%error, ?pause, failures, "fetch failed with a permanent error; retrying");
                }
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(pause) => continue,
                }
            }
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
            if stop.is_cancelled() {
                // The rest of the batch stays uncommitted and comes back in order.
                return Ok(());
            }
            shared
                .tracker()
                .dispatched(delivery.partition, delivery.offset);
            keys::schedule(
                &shared,
                Work {
                    delivery,
                    _permit: permit,
                },
            );
        }
    }
}

/// What a message needs before a handler may see it: an event (not undecodable bytes),
/// a handler for its type, a deadline not yet passed. `Err` is how it ends instead.
async fn admit<'a>(
    shared: &'a Shared,
    delivery: &'a Delivery,
) -> Result<(&'a Envelope, &'a Arc<dyn crate::router::Route>), Outcome> {
    // The clock is read only for a message refused: not on every message's path.
    let refused = |error: String, attempts| {
        let now = shared.clock.now();
        Failure {
            error,
            kind: ErrorKind::Permanent.to_string(),
            attempts,
            first_at: now,
            last_at: now,
        }
    };
    let envelope = match &delivery.message {
        Message::Event(envelope) => envelope,
        Message::Undecodable(raw) => {
            let failure = refused(raw.error.clone(), 1);
            return Err(send_dead_letter(shared, delivery, &failure).await);
        }
    };
    let Some(route) = shared.router.get(&envelope.event_type) else {
        if shared.stats.skip(&envelope.event_type) {
            tracing::warn!(event_type = %envelope.event_type, topic = %delivery.topic, group = %shared.group, "no handler for this event type; committing past it (counted per type in events_skipped_total)");
        }
        return Err(Outcome::Finished);
    };
    let passed = envelope
        .headers
        .deadline()
        .filter(|deadline| *deadline <= shared.clock.now());
    if let Some(deadline) = passed {
        // Whoever waited for this work has given up: doing it now wastes capacity
        // and may act on a decision already reversed. Park it where it can be seen.
        let failure = refused(
            format!("deadline {deadline} passed before processing started"),
            0,
        );
        return Err(send_dead_letter(shared, delivery, &failure).await);
    }
    Ok((envelope, route))
}

/// One handler call under a concurrency slot, a panic turned into a permanent error.
/// `None`: the consumer is closing and no slot will come.
async fn attempt_once(
    shared: &Shared,
    route: &Arc<dyn crate::router::Route>,
    envelope: &Envelope,
) -> Option<Result<(), HandlerError>> {
    let _slot = shared.concurrency.acquire().await.ok()?;
    Some(
        match AssertUnwindSafe(route.call(envelope)).catch_unwind().await {
            Ok(result) => result,
            Err(panic) => {
                let text = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "handler panicked".to_owned());
                Err(HandlerError::permanent(format!("handler panicked: {text}")))
            }
        },
    )
}

/// Handles one message to its end: handled, dead-lettered after its attempts (see
/// [`decide`]), or abandoned at shutdown.
pub(crate) async fn process(shared: &Shared, delivery: &Delivery) -> Outcome {
    let (envelope, route) = match admit(shared, delivery).await {
        Ok(admitted) => admitted,
        Err(outcome) => return outcome,
    };
    let mut first_failure = None;
    let mut paused_since: Option<tokio::time::Instant> = None;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let error = match attempt_once(shared, route, envelope).await {
            None => return Outcome::Abandoned,
            Some(Ok(())) => {
                shared.stats.handled.fetch_add(1, Ordering::Relaxed);
                if attempt > 1 {
                    tracing::Span::current().record("eddy.attempts", attempt);
                }
                return Outcome::Finished;
            }
            Some(Err(error)) => error,
        };
        let mut kind = error.kind();
        if kind == ErrorKind::Unavailable {
            let since = *paused_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() >= shared.config.unavailable_wait_max {
                // Paused long enough: from now on its tries spend attempts.
                kind = ErrorKind::Transient;
            }
        }
        let pause = match decide(kind, attempt, &shared.config.retry) {
            Decision::Pause => {
                // The breaker lets one probe through when it half-opens; the other keys
                // keep waiting here until it closes.
                attempt -= 1;
                shared.stats.paused.fetch_add(1, Ordering::Relaxed);
                let pause = shared
                    .config
                    .unavailable_pause
                    .mul_f64(shared.draw(0.5..=1.0));
                tracing::debug!(event_id = %envelope.id, ?pause, %error, "dependency unavailable; pausing");
                pause
            }
            Decision::Retry { ceiling } => {
                first_failure.get_or_insert(shared.clock.now());
                shared.stats.retried.fetch_add(1, Ordering::Relaxed);
                let pause = ceiling.mul_f64(shared.draw(0.0..=1.0));
                tracing::debug!(event_id = %envelope.id, attempt, ?pause, %error, "transient failure; retrying");
                pause
            }
            Decision::DeadLetter => {
                let now = shared.clock.now();
                let span = tracing::Span::current();
                span.record("eddy.attempts", attempt);
                eddy_trace::fail(&span);
                tracing::warn!(event_id = %envelope.id, event_type = %envelope.event_type, attempt, %error, "message failed; dead-lettering");
                let kind = failure_kind(&error, kind);
                if kind == KIND_NEWER_SCHEMA {
                    // Never handled, so the handler's own count (`Timed`) did not see it.
                    metrics::counter!("events_failed_total", "consumer" => shared.group.clone(), "event_type" => envelope.event_type.clone(), "kind" => KIND_NEWER_SCHEMA)
                        .increment(1);
                }
                let failure = Failure {
                    error: error.to_string(),
                    kind,
                    attempts: attempt,
                    first_at: *first_failure.get_or_insert(now),
                    last_at: now,
                };
                return send_dead_letter(shared, delivery, &failure).await;
            }
        };
        tokio::select! {
            biased;
            _ = shared.abandon.cancelled() => return Outcome::Abandoned,
            _ = shared.stopping.cancelled() => return let_go_for_shutdown(envelope),
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// A message waiting for its next attempt when shutdown begins is not retried again: it
/// stays uncommitted and comes back, attempts counted afresh, to whoever owns its
/// partition next.
fn let_go_for_shutdown(envelope: &Envelope) -> Outcome {
    tracing::info!(event_id = %envelope.id, "shutting down: a message waiting to be retried will be delivered again");
    Outcome::Abandoned
}

/// Publishes the dead letter, retrying until it is accepted: a message is finished
/// only once it is either handled or safely parked.
async fn send_dead_letter(shared: &Shared, delivery: &Delivery, failure: &Failure) -> Outcome {
    let letter = dead_letter(delivery, &shared.group, failure);
    let letters = std::slice::from_ref(&letter);
    let mut attempt = 0u32;
    loop {
        attempt = attempt.saturating_add(1);
        let send = eddy_trace::send_span(
            shared.dead_letters.system(),
            &shared.dead_letter_topic,
            letters,
        );
        match shared
            .dead_letters
            .publish(&shared.dead_letter_topic, letters)
            .instrument(send)
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
                    biased;
                    _ = shared.abandon.cancelled() => return Outcome::Abandoned,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}
