//! Exactly-once effects on at-least-once delivery.
//!
//! [`Transactional`] wraps a [`TxHandler`]: for each event it begins a transaction,
//! inserts `(consumer, event_id)` into `eddy_processed_events`, and only if that row
//! is new runs the handler in the same transaction and commits. A redelivered event
//! finds its row and is skipped; a crash before the commit leaves neither the row nor
//! the handler's writes, so the redelivery runs it again. Effects outside the database
//! (HTTP calls) are not covered: give those an idempotency key of their own.

use std::fmt;
use std::marker::PhantomData;

use async_trait::async_trait;
use eddy_core::envelope::to_micros;
use eddy_core::{Clock, Envelope, Error, Event, Handler, HandlerError, SystemClock};

use crate::{classify, Db, Migration, Tx};

/// The table behind [`Transactional`].
pub const MIGRATIONS: &[Migration] = &[Migration {
    name: "eddy_idempotency_0001",
    sqlite: "CREATE TABLE IF NOT EXISTS eddy_processed_events (consumer TEXT NOT NULL, event_id TEXT NOT NULL, processed_at_us BIGINT NOT NULL, PRIMARY KEY (consumer, event_id));
             CREATE INDEX IF NOT EXISTS eddy_processed_events_age ON eddy_processed_events (processed_at_us)",
    postgres: "CREATE TABLE IF NOT EXISTS eddy_processed_events (consumer TEXT NOT NULL, event_id TEXT NOT NULL, processed_at_us BIGINT NOT NULL, PRIMARY KEY (consumer, event_id));
               CREATE INDEX IF NOT EXISTS eddy_processed_events_age ON eddy_processed_events (processed_at_us)",
}];

/// A handler whose writes go into the transaction it is given.
#[async_trait]
pub trait TxHandler<E: Event>: Send + Sync + 'static {
    async fn handle(&self, event: E, envelope: &Envelope, tx: &mut Tx) -> Result<(), HandlerError>;
}

/// Runs a [`TxHandler`] at most once per event id and consumer name.
pub struct Transactional<E, H> {
    db: Db,
    consumer: String,
    handler: H,
    clock: Box<dyn Clock>,
    _event: PhantomData<fn(E)>,
}

impl<E, H> fmt::Debug for Transactional<E, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transactional")
            .field("consumer", &self.consumer)
            .finish_non_exhaustive()
    }
}

impl<E: Event, H: TxHandler<E>> Transactional<E, H> {
    /// `consumer` names the handler; two handlers of one event need different names.
    pub fn new(db: Db, consumer: impl Into<String>, handler: H) -> Self {
        Self {
            db,
            consumer: consumer.into(),
            handler,
            clock: Box::new(SystemClock),
            _event: PhantomData,
        }
    }

    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Box::new(clock);
        self
    }
}

#[async_trait]
impl<E: Event, H: TxHandler<E>> Handler<E> for Transactional<E, H> {
    async fn handle(&self, event: E, envelope: &Envelope) -> Result<(), HandlerError> {
        let mut tx = self.db.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO eddy_processed_events (consumer, event_id, processed_at_us) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(self.consumer.as_str())
        .bind(envelope.id.to_string())
        .bind(to_micros(self.clock.now()))
        .execute(tx.conn())
        .await
        .map_err(|e| classify("cannot record the processed event", e))?
        .rows_affected();
        if inserted == 0 {
            tracing::debug!(consumer = %self.consumer, event_id = %envelope.id, "duplicate event skipped");
            tx.rollback().await?;
            return Ok(());
        }
        self.handler.handle(event, envelope, &mut tx).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Deletes processed-event records older than `older_than_us` (microseconds since the
/// epoch), at most `batch_len_max` per call; returns how many went. Keep records
/// longer than any redelivery can take (the broker's retention).
pub async fn purge_processed(
    db: &Db,
    older_than_us: i64,
    batch_len_max: i64,
) -> Result<u64, Error> {
    let result = sqlx::query(
        "DELETE FROM eddy_processed_events WHERE (consumer, event_id) IN (SELECT consumer, event_id FROM eddy_processed_events WHERE processed_at_us < $1 LIMIT $2)",
    )
    .bind(older_than_us)
    .bind(batch_len_max)
    .execute(db.pool())
    .await
    .map_err(|e| classify("cannot purge processed events", e))?;
    Ok(result.rows_affected())
}
