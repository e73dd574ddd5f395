//! Group commit for idempotent consumers.
//!
//! [`Transactional`](crate::Transactional) spends a transaction per event: `BEGIN`, the
//! processed-event row, the handler's writes, `COMMIT` — four round trips and a flush for
//! one event. [`Batched`] lets the events a consumer is handling at the same moment (one
//! per key, up to the runtime's `concurrency`) share one transaction instead: a single
//! multi-row insert records them as processed and tells which are new, the
//! [`BatchTxHandler`] writes the effects of the new ones together, and one commit makes it
//! all durable. Each event's `handle` call returns only after that commit, so the
//! runtime's per-key order, offsets and retries work as before.
//!
//! If a batch fails, it is rolled back and every event in it is tried again on its own
//! (a batch of one): one poison event is retried or dead-lettered alone, the others
//! succeed. The guarantee is [`Transactional`](crate::Transactional)'s: an event's effects
//! commit together with its processed-event row, exactly once per event id and consumer.

use std::collections::HashSet;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use eddy_core::envelope::to_micros;
use eddy_core::{Clock, Envelope, Error, Event, Handler, HandlerError, SystemClock};
use futures::FutureExt;
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::{classify, Db, Tx, TxHandler};

/// A handler that writes the effects of several events in the transaction it is given.
#[async_trait]
pub trait BatchTxHandler<E: Event>: Send + Sync + 'static {
    /// Handles `events` — each new to this consumer, in the order they arrived — inside
    /// `tx`. An error rolls the whole batch back; the events are then handed over again
    /// one at a time, so an error should concern the events it is returned for.
    async fn handle_batch(
        &self,
        events: &[(&E, &Envelope)],
        tx: &mut Tx,
    ) -> Result<(), HandlerError>;
}

/// Group commit for a per-event [`TxHandler`]: each new event of the batch goes to the
/// handler in turn, in arrival order, inside the batch's one transaction. The handler's
/// statements stay one per event; what is shared is `BEGIN`, the processed-event insert
/// and the commit (the durable flush). Events must be `Clone` (the handler takes them by
/// value, and a failed batch is handed over again event by event).
#[derive(Debug, Clone)]
pub struct EachInTx<H>(pub H);

#[async_trait]
impl<E: Event + Clone, H: TxHandler<E>> BatchTxHandler<E> for EachInTx<H> {
    async fn handle_batch(
        &self,
        events: &[(&E, &Envelope)],
        tx: &mut Tx,
    ) -> Result<(), HandlerError> {
        for (event, envelope) in events {
            self.0.handle((*event).clone(), envelope, tx).await?;
        }
        Ok(())
    }
}

/// Settings of a [`Batched`] handler.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Most events in one transaction. Default 256. A batch never waits to fill up: it
    /// takes what has arrived while the previous one was being written.
    pub batch_len_max: usize,
    /// Transactions written at once (each on its own connection). Default 1: on
    /// SQLite there is one writer anyway; on PostgreSQL 2 can hide a commit's latency.
    pub writers: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            batch_len_max: 256,
            writers: 1,
        }
    }
}

impl BatchConfig {
    /// Rejects settings that mean nothing or exceed PostgreSQL's bind-parameter limit.
    pub fn validate(&self) -> Result<(), Error> {
        if self.batch_len_max == 0 || self.batch_len_max > 10_000 {
            return Err(Error::permanent(format!(
                "batch_len_max must be between 1 and 10000, got {}",
                self.batch_len_max
            )));
        }
        if self.writers == 0 {
            return Err(Error::permanent("writers must be at least 1"));
        }
        Ok(())
    }
}

/// One event waiting for its batch, and where its outcome goes.
struct Job<E> {
    event: E,
    envelope: Envelope,
    reply: oneshot::Sender<Result<(), HandlerError>>,
}

struct Inner<H> {
    db: Db,
    consumer: String,
    handler: Arc<H>,
    clock: Arc<dyn Clock>,
    config: BatchConfig,
}

/// Runs a [`BatchTxHandler`] at most once per event id and consumer name, writing the
/// events handled at the same moment in one transaction. Use it where
/// [`Transactional`](crate::Transactional) would go: `Router::route::<E, _>(Batched::new(…))`,
/// with the consumer's `concurrency` at least `batch_len_max` for full batches.
pub struct Batched<E, H> {
    db: Db,
    consumer: String,
    handler: Arc<H>,
    clock: Arc<dyn Clock>,
    config: BatchConfig,
    jobs: OnceLock<mpsc::Sender<Job<E>>>,
}

impl<E, H> fmt::Debug for Batched<E, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Batched")
            .field("consumer", &self.consumer)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<E: Event, H: BatchTxHandler<E>> Batched<E, H> {
    /// `consumer` names the handler; two handlers of one event need different names.
    pub fn new(db: Db, consumer: impl Into<String>, handler: H) -> Self {
        Self {
            db,
            consumer: consumer.into(),
            handler: Arc::new(handler),
            clock: Arc::new(SystemClock),
            config: BatchConfig::default(),
            jobs: OnceLock::new(),
        }
    }

    /// Replaces the settings.
    ///
    /// # Errors
    /// When [`BatchConfig::validate`] rejects them.
    pub fn with_config(mut self, config: BatchConfig) -> Result<Self, Error> {
        config.validate()?;
        self.config = config;
        self.jobs = OnceLock::new();
        Ok(self)
    }

    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self.jobs = OnceLock::new();
        self
    }

    /// The queue to the writers, started on first use (inside the runtime). They stop
    /// when this handler is dropped.
    fn jobs(&self) -> &mpsc::Sender<Job<E>> {
        self.jobs.get_or_init(|| {
            let inner = Arc::new(Inner {
                db: self.db.clone(),
                consumer: self.consumer.clone(),
                handler: self.handler.clone(),
                clock: self.clock.clone(),
                config: self.config.clone(),
            });
            let (sender, receiver) = mpsc::channel(self.config.batch_len_max * self.config.writers);
            let receiver = Arc::new(Mutex::new(receiver));
            for _ in 0..self.config.writers {
                tokio::spawn(write_batches(inner.clone(), receiver.clone()));
            }
            sender
        })
    }
}

#[async_trait]
impl<E: Event, H: BatchTxHandler<E>> Handler<E> for Batched<E, H> {
    async fn handle(&self, event: E, envelope: &Envelope) -> Result<(), HandlerError> {
        let (reply, outcome) = oneshot::channel();
        let job = Job {
            event,
            envelope: envelope.clone(),
            reply,
        };
        let stopped = || HandlerError::transient("the batch writer stopped");
        self.jobs().send(job).await.map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }
}

/// A writer: takes what is queued (up to a batch), writes it, answers, again.
async fn write_batches<E: Event, H: BatchTxHandler<E>>(
    inner: Arc<Inner<H>>,
    jobs: Arc<Mutex<mpsc::Receiver<Job<E>>>>,
) {
    loop {
        let batch = {
            let mut jobs = jobs.lock().await;
            let Some(first) = jobs.recv().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < inner.config.batch_len_max {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            batch
        };
        if batch.len() > 1 {
            match inner.write(&batch).await {
                Ok(()) => {
                    for job in batch {
                        let _ = job.reply.send(Ok(()));
                    }
                    continue;
                }
                Err(error) => {
                    tracing::debug!(consumer = %inner.consumer, len = batch.len(), %error, "batch failed; writing its events one by one");
                }
            }
        }
        for job in batch {
            let outcome = inner.write(std::slice::from_ref(&job)).await;
            let _ = job.reply.send(outcome);
        }
    }
}

impl<H> Inner<H> {
    /// One transaction: record `batch` as processed, hand the new events to the
    /// handler, commit.
    async fn write<E: Event>(&self, batch: &[Job<E>]) -> Result<(), HandlerError>
    where
        H: BatchTxHandler<E>,
    {
        let mut tx = self.db.begin().await?;
        let mut sql = String::from(
            "INSERT INTO eddy_processed_events (consumer, event_id, processed_at_us) VALUES ",
        );
        for i in 0..batch.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("($1, ${}, ${})", 2 * i + 2, 2 * i + 3));
        }
        sql.push_str(" ON CONFLICT DO NOTHING RETURNING event_id");
        let now = to_micros(self.clock.now());
        let mut query = sqlx::query_scalar::<_, String>(&sql).bind(self.consumer.as_str());
        for job in batch {
            query = query.bind(job.envelope.id.to_string()).bind(now);
        }
        let mut fresh: HashSet<String> = query
            .fetch_all(tx.conn())
            .await
            .map_err(|e| classify("cannot record the processed events", e))?
            .into_iter()
            .collect();
        // In arrival order; an id twice in one batch (a redelivery racing the original)
        // is new only the first time.
        let events: Vec<(&E, &Envelope)> = batch
            .iter()
            .filter(|job| fresh.remove(&job.envelope.id.to_string()))
            .map(|job| (&job.event, &job.envelope))
            .collect();
        if events.len() < batch.len() {
            tracing::debug!(consumer = %self.consumer, duplicates = batch.len() - events.len(), "duplicate events skipped");
        }
        if events.is_empty() {
            tx.rollback().await?;
            return Ok(());
        }
        AssertUnwindSafe(self.handler.handle_batch(&events, &mut tx))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                let text = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(HandlerError::permanent(format!(
                    "batch handler panicked: {text}"
                )))
            })?;
        tx.commit().await?;
        Ok(())
    }
}
