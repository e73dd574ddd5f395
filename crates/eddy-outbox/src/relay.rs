//! [`Relay`]: publishes outbox rows in order, at least once, woken by commits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use eddy_core::envelope::{micros_before, to_micros};
use eddy_core::{Envelope, Error, Publisher};
use eddy_sql::{classify, envelope_row, Backend, Tx};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use crate::outbox::{Outbox, SIGNAL};

/// Settings of a [`Relay`]. Every field has a documented default.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Rows read and published per batch. Default 500.
    pub batch_len_max: usize,
    /// How long the relay sleeps when no commit signal arrives (a lost notification,
    /// a writer in another process on SQLite). Default 5 s: a safety net, not the
    /// mechanism — commits wake the relay at once.
    pub fallback_poll_interval: Duration,
    /// Published rows are kept this long (for inspection and replay), then deleted.
    /// Default 1 hour. Zero deletes rows as soon as they are published.
    pub retention: Duration,
    /// How often expired rows are deleted. Default 60 s.
    pub cleanup_interval: Duration,
    /// Rows deleted per cleanup statement. Default 5,000.
    pub cleanup_batch_len_max: usize,
    /// First pause after a failed batch; doubles up to `retry_backoff_max`. Default 100 ms.
    pub retry_backoff_initial: Duration,
    /// Default 5 s.
    pub retry_backoff_max: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_len_max: 500,
            fallback_poll_interval: Duration::from_secs(5),
            retention: Duration::from_secs(3600),
            cleanup_interval: Duration::from_secs(60),
            cleanup_batch_len_max: 5_000,
            retry_backoff_initial: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(5),
        }
    }
}

/// Counters of one relay.
#[derive(Debug, Default)]
pub struct RelayStats {
    pub published: AtomicU64,
    pub batches: AtomicU64,
    pub failed_batches: AtomicU64,
    pub cleaned: AtomicU64,
    /// Rows moved to `eddy_outbox_parked`: undecodable, or refused permanently by the
    /// broker.
    pub parked: AtomicU64,
}

impl RelayStats {
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }
    pub fn failed_batches(&self) -> u64 {
        self.failed_batches.load(Ordering::Relaxed)
    }
    pub fn parked(&self) -> u64 {
        self.parked.load(Ordering::Relaxed)
    }
}

/// Moves outbox rows to a publisher. A clone shares the statistics, so a supervisor
/// can start it again after a failure.
#[derive(Clone)]
pub struct Relay {
    outbox: Outbox,
    publisher: Arc<dyn Publisher>,
    config: RelayConfig,
    stats: Arc<RelayStats>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("outbox", &self.outbox)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Characters of a parked row's error kept.
const PARKED_ERROR_LEN_MAX: usize = 2_000;

/// Identifies the relay's advisory lock on PostgreSQL.
const PG_RELAY_LOCK: i64 = 0x0edd_0b0c;

struct OutboxRow {
    id: i64,
    topic: String,
    envelope: Envelope,
}

/// What one read of the outbox found.
#[derive(Default)]
struct Batch {
    rows: Vec<OutboxRow>,
    /// Rows that cannot be read back as an envelope, with why.
    undecodable: Vec<(i64, String)>,
}

impl Batch {
    fn len(&self) -> usize {
        self.rows.len() + self.undecodable.len()
    }
}

/// The outcome of publishing a batch: rows the broker took, and rows it refused
/// permanently (with why), which are parked.
struct Published {
    ids: Vec<i64>,
    refused: Vec<(i64, String)>,
}

impl Relay {
    pub fn new(outbox: Outbox, publisher: Arc<dyn Publisher>, config: RelayConfig) -> Self {
        Self {
            outbox,
            publisher,
            config,
            stats: Arc::new(RelayStats::default()),
        }
    }

    pub fn stats(&self) -> Arc<RelayStats> {
        self.stats.clone()
    }

    /// Relays until `shutdown`; the batch in progress finishes first.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), Error> {
        if self.config.batch_len_max == 0 || self.config.cleanup_batch_len_max == 0 {
            return Err(Error::permanent(
                "relay batch_len_max and cleanup_batch_len_max must be at least 1",
            ));
        }
        // Subscribe before the first read, so no commit slips between read and wait.
        let mut signal = self.outbox.db().subscribe_signal(SIGNAL);
        let mut failures = 0u32;
        let mut next_cleanup = tokio::time::Instant::now() + self.config.cleanup_interval;
        while !shutdown.is_cancelled() {
            // Before the batch, so a relay that always has a backlog still cleans up.
            if tokio::time::Instant::now() >= next_cleanup {
                match self.clean_up().await {
                    Ok(n) => {
                        self.stats.cleaned.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(error) => tracing::warn!(%error, "outbox cleanup failed"),
                }
                next_cleanup = tokio::time::Instant::now() + self.config.cleanup_interval;
            }
            match self.relay_batch().await {
                Ok(published) => {
                    failures = 0;
                    if published == self.config.batch_len_max {
                        continue; // a backlog: keep going without waiting
                    }
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    self.stats.failed_batches.fetch_add(1, Ordering::Relaxed);
                    // No jitter: one relay per outbox, nothing to spread.
                    let pause = eddy_core::Backoff::new(
                        self.config.retry_backoff_initial,
                        self.config.retry_backoff_max,
                    )
                    .ceiling(failures);
                    tracing::warn!(%error, ?pause, "outbox batch failed; it will be published again");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(pause) => continue,
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = signal.changed() => {}
                _ = tokio::time::sleep(self.config.fallback_poll_interval) => {}
            }
        }
        Ok(())
    }

    /// Publishes the oldest unpublished rows (at most `batch_len_max`) and marks them;
    /// rows that can never be published (undecodable, or refused permanently by the
    /// broker) are moved to `eddy_outbox_parked` so the rows behind them flow. Returns
    /// how many rows left the queue (published or parked).
    pub async fn relay_batch(&self) -> Result<usize, Error> {
        let db = self.outbox.db();
        match db.backend() {
            Backend::Postgres => {
                // The transaction holds the relay lock while the batch is published,
                // so a second relay cannot publish the same rows out of order.
                let mut tx = db.begin().await?;
                let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                    .bind(PG_RELAY_LOCK)
                    .fetch_one(tx.conn())
                    .await
                    .map_err(|e| classify("cannot take the relay lock", e))?;
                if !locked {
                    tx.rollback().await?;
                    return Ok(0);
                }
                let batch = self.read_batch(&mut tx).await?;
                let published = self.publish(&batch.rows).await?;
                self.settle(&mut tx, &batch, &published).await?;
                tx.commit().await?;
                self.count(&batch, &published);
                Ok(batch.len())
            }
            Backend::Sqlite => {
                // SQLite has one writer: holding a transaction across the publish would
                // stall every writer. One process owns a SQLite file, and runs one relay.
                let batch = {
                    let mut tx = db.begin().await?;
                    let batch = self.read_batch(&mut tx).await?;
                    tx.rollback().await?;
                    batch
                };
                if batch.len() == 0 {
                    return Ok(0);
                }
                let published = self.publish(&batch.rows).await?;
                let mut tx = db.begin().await?;
                self.settle(&mut tx, &batch, &published).await?;
                tx.commit().await?;
                self.count(&batch, &published);
                Ok(batch.len())
            }
        }
    }

    /// Marks the published rows and parks the ones that can never be published.
    async fn settle(&self, tx: &mut Tx, batch: &Batch, published: &Published) -> Result<(), Error> {
        self.mark(tx, &published.ids).await?;
        for (id, error) in batch.undecodable.iter().chain(&published.refused) {
            self.park(tx, *id, error).await?;
        }
        Ok(())
    }

    fn count(&self, batch: &Batch, published: &Published) {
        if !published.ids.is_empty() {
            self.stats
                .published
                .fetch_add(published.ids.len() as u64, Ordering::Relaxed);
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
        }
        let parked = batch.undecodable.len() + published.refused.len();
        if parked > 0 {
            self.stats
                .parked
                .fetch_add(parked as u64, Ordering::Relaxed);
        }
    }

    async fn read_batch(&self, tx: &mut Tx) -> Result<Batch, Error> {
        let rows = sqlx::query(&format!(
            "SELECT id, topic, {} FROM eddy_outbox WHERE published_at_us IS NULL ORDER BY id LIMIT $1",
            envelope_row::COLUMNS
        ))
        .bind(i64::try_from(self.config.batch_len_max).unwrap_or(i64::MAX))
        .fetch_all(tx.conn())
        .await
        .map_err(|e| classify("cannot read the outbox", e))?;
        let mut batch = Batch::default();
        for row in &rows {
            let id: i64 = row.try_get("id").map_err(|e| classify("outbox id", e))?;
            let read = row
                .try_get::<String, _>("topic")
                .map_err(|e| classify("outbox topic", e))
                .and_then(|topic| Ok((topic, envelope_row::read_envelope(row)?)));
            match read {
                Ok((topic, envelope)) => batch.rows.push(OutboxRow {
                    id,
                    topic,
                    envelope,
                }),
                Err(error) => batch.undecodable.push((id, error.to_string())),
            }
        }
        Ok(batch)
    }

    /// One publish call, in its `send {topic}` span linked to each event's trace.
    async fn send(&self, topic: &str, events: &[Envelope]) -> Result<(), Error> {
        let span = eddy_trace::send_span(self.publisher.system(), topic, events);
        let result = self
            .publisher
            .publish(topic, events)
            .instrument(span.clone())
            .await;
        if result.is_err() {
            eddy_trace::fail(&span);
        }
        result
    }

    /// Publishes runs of consecutive rows with the same topic, in id order. A run the
    /// broker refuses permanently is published again row by row, so only the rows at
    /// fault are refused; a transient failure fails the batch (it is read again).
    async fn publish(&self, rows: &[OutboxRow]) -> Result<Published, Error> {
        let mut published = Published {
            ids: Vec::with_capacity(rows.len()),
            refused: Vec::new(),
        };
        let mut start = 0;
        while start < rows.len() {
            let topic = &rows[start].topic;
            let end = rows[start..]
                .iter()
                .position(|r| &r.topic != topic)
                .map_or(rows.len(), |n| start + n);
            let run = &rows[start..end];
            let events: Vec<Envelope> = run.iter().map(|r| r.envelope.clone()).collect();
            match self.send(topic, &events).await {
                Ok(()) => published.ids.extend(run.iter().map(|r| r.id)),
                Err(error) if error.is_transient() => return Err(error),
                Err(error) if run.len() == 1 => {
                    published.refused.push((run[0].id, error.to_string()))
                }
                Err(error) => {
                    let refused_before = published.refused.len();
                    for row in run {
                        match self.send(topic, std::slice::from_ref(&row.envelope)).await {
                            Ok(()) => published.ids.push(row.id),
                            Err(error) if error.is_transient() => return Err(error),
                            Err(error) => published.refused.push((row.id, error.to_string())),
                        }
                    }
                    if published.refused.len() - refused_before == run.len() {
                        // Every row refused: not a bad row but the topic (missing, or a
                        // permission): fail the batch and retry, never park them all.
                        return Err(Error::transient(format!(
                            "every row for {topic:?} was refused; not parking them"
                        ))
                        .with_source(error));
                    }
                }
            }
            start = end;
        }
        Ok(published)
    }

    /// Moves row `id` to `eddy_outbox_parked`, as stored (it may not decode), with why.
    async fn park(&self, tx: &mut Tx, id: i64, error: &str) -> Result<(), Error> {
        let now = to_micros(self.outbox.clock().now());
        let reason: String = error.chars().take(PARKED_ERROR_LEN_MAX).collect();
        sqlx::query(&format!(
            "INSERT INTO eddy_outbox_parked (id, topic, {cols}, created_at_us, parked_at_us, error) \
             SELECT id, topic, {cols}, created_at_us, $1, $2 FROM eddy_outbox WHERE id = $3",
            cols = envelope_row::COLUMNS
        ))
        .bind(now)
        .bind(&reason)
        .bind(id)
        .execute(tx.conn())
        .await
        .map_err(|e| classify("cannot park an outbox row", e))?;
        sqlx::query("DELETE FROM eddy_outbox WHERE id = $1")
            .bind(id)
            .execute(tx.conn())
            .await
            .map_err(|e| classify("cannot park an outbox row", e))?;
        tracing::error!(outbox_id = id, error = %reason, "outbox row parked: it can never be published; see eddy_outbox_parked");
        Ok(())
    }

    /// Marks exactly the published ids — never a range, which could cover a row that
    /// committed late and was not in this batch.
    async fn mark(&self, tx: &mut Tx, ids: &[i64]) -> Result<(), Error> {
        if ids.is_empty() {
            return Ok(());
        }
        let now = to_micros(self.outbox.clock().now());
        let delete = self.config.retention.is_zero();
        let mut sql = if delete {
            "DELETE FROM eddy_outbox WHERE id IN (".to_owned()
        } else {
            "UPDATE eddy_outbox SET published_at_us = $1 WHERE id IN (".to_owned()
        };
        let first = if delete { 1 } else { 2 };
        for i in 0..ids.len() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push('$');
            sql.push_str(&(first + i).to_string());
        }
        sql.push(')');
        let mut query = sqlx::query(&sql);
        if !delete {
            query = query.bind(now);
        }
        for id in ids {
            query = query.bind(*id);
        }
        query
            .execute(tx.conn())
            .await
            .map_err(|e| classify("cannot mark outbox rows published", e))?;
        Ok(())
    }

    /// Deletes published rows older than the retention; returns how many went.
    pub async fn clean_up(&self) -> Result<u64, Error> {
        // A retention reaching before the start of time keeps everything.
        let cutoff = micros_before(self.outbox.clock().now(), self.config.retention);
        let mut total = 0;
        loop {
            let deleted = sqlx::query(
                "DELETE FROM eddy_outbox WHERE id IN (SELECT id FROM eddy_outbox WHERE published_at_us IS NOT NULL AND published_at_us < $1 LIMIT $2)",
            )
            .bind(cutoff)
            .bind(i64::try_from(self.config.cleanup_batch_len_max).unwrap_or(i64::MAX))
            .execute(self.outbox.db().pool())
            .await
            .map_err(|e| classify("cannot clean up the outbox", e))?
            .rows_affected();
            total += deleted;
            if deleted < self.config.cleanup_batch_len_max as u64 {
                return Ok(total);
            }
        }
    }
}
