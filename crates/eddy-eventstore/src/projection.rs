//! Projections: read models folded from the store's events.
//!
//! A [`Projection`] writes its own tables; a [`Projector`] feeds it the store's events
//! in global order and keeps its checkpoint (the last position applied) **in the same
//! transaction as the projection's writes**, so a projection stopped anywhere — between
//! its writes and its checkpoint included — resumes with no event applied twice and none
//! skipped. Positions become visible in commit order (see the crate's documentation),
//! so reading "after the checkpoint" never passes an append that commits late.
//!
//! Two ways to run one, freely mixed:
//!
//! - **inline** — [`Projector::catch_up_in`] inside the transaction that appended: the
//!   read model commits with the events (read-your-writes for the command's caller);
//! - **catching up** — [`Projector::catch_up`] / [`Projector::run`], in batches of their
//!   own transactions, woken by every committed append.
//!
//! **Rebuild without downtime** ([`Projector::rebuild`]): readers never name a
//! projection's tables directly but through views of the names in
//! [`Projection::tables`]; the data lives in a *generation* of tables
//! (`<table>_g<N>`). A rebuild creates generation N+1 next to the live one, replays every
//! event into it in batches (resumable: stopped, it continues where it was) while the
//! live generation keeps serving and following new appends, then — holding the
//! sequence's lock so no append can slip in between — applies the last few events,
//! points the views at N+1 and moves the checkpoint, in one transaction, and drops
//! generation N. During a rebuild [`Target::replaying`] is true: a projection that does
//! anything besides writing its tables (sends a mail, calls a service) must not do it
//! again then. A projection added to a store that already has events starts from the
//! first one, and the events stored before it was added are replays too.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use eddy_core::envelope::to_micros;
use eddy_core::Error;
use eddy_sql::{classify, Tx};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::store::{for_update, head, lock_sequence, read_all, EventStore, Recorded};

/// A read model folded from the store's events.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Its name, unique in the store: the key of its checkpoint.
    fn name(&self) -> &'static str;

    /// The tables it writes, by the names its readers use (each is a view of the live
    /// generation's table). Lowercase letters, digits and `_`.
    fn tables(&self) -> &'static [&'static str];

    /// Creates its tables and their indexes, named through `target` (for `orders`:
    /// `target.table("orders")`; for an index, `target.table("orders_by_customer")`).
    /// Runs on a generation that may already exist: use `IF NOT EXISTS`.
    async fn create(&self, tx: &mut Tx, target: &Target) -> Result<(), Error>;

    /// Applies one event to the tables `target` names. Events of no interest are
    /// ignored; an error rolls back the batch (with its checkpoint) and stops the run.
    async fn apply(&self, tx: &mut Tx, target: &Target, event: &Recorded) -> Result<(), Error>;
}

/// Which generation of a projection's tables a call writes, and whether the event is a
/// replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    generation: u64,
    replaying: bool,
}

impl Target {
    /// The name of table (or index) `name` in this generation.
    pub fn table(&self, name: &str) -> String {
        format!("{name}_g{}", self.generation)
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// True when the event was seen before by this projection's earlier generation (a
    /// rebuild) or was stored before the projection was added: effects outside its
    /// tables must not happen again.
    pub fn replaying(&self) -> bool {
        self.replaying
    }
}

/// How far a projection (or its rebuild) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The last position applied.
    pub position: u64,
    /// The last position taken in the store when it was measured.
    pub head: u64,
    /// Events applied by this call so far.
    pub applied: u64,
}

/// A projection's state as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub generation: u64,
    pub position: u64,
    pub head: u64,
    /// A rebuild in progress (or stopped midway): its generation and position.
    pub rebuilding: Option<(u64, u64)>,
}

/// Settings of a [`Projector`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProjectorConfig {
    /// Events applied per transaction when catching up or rebuilding.
    pub batch_len_max: usize,
    /// How often [`Projector::run`] looks for events when no commit woke it (appends
    /// from other processes on SQLite signal nothing).
    pub poll_interval: Duration,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        Self {
            batch_len_max: 500,
            poll_interval: Duration::from_millis(500),
        }
    }
}

/// Feeds one [`Projection`] from an [`EventStore`]. Cheap to clone.
#[derive(Clone)]
pub struct Projector {
    store: EventStore,
    projection: Arc<dyn Projection>,
    config: ProjectorConfig,
}

impl std::fmt::Debug for Projector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projector")
            .field("projection", &self.projection.name())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The projection's checkpoint row, locked for the rest of the transaction.
#[derive(Debug, Clone, Copy)]
struct Checkpoint {
    generation: u64,
    position: u64,
    replay_until: u64,
}

impl Projector {
    /// Registers `projection` with `store`: its checkpoint (from the first event for a
    /// new one) and its live tables and views. Refuses a batch length of 0.
    pub async fn open(
        store: EventStore,
        projection: Arc<dyn Projection>,
        config: ProjectorConfig,
    ) -> Result<Self, Error> {
        if config.batch_len_max == 0 {
            return Err(Error::permanent(
                "projector batch_len_max must be at least 1",
            ));
        }
        for table in projection.tables() {
            if table.is_empty()
                || !table
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(Error::permanent(format!(
                    "projection {}: table name {table:?} must be lowercase letters, digits and _",
                    projection.name()
                )));
            }
        }
        let projector = Self {
            store,
            projection,
            config,
        };
        let mut tx = projector.store.db().begin().await?;
        // Events already stored are a replay for a projection added now.
        let replay_until = i64_of(head(tx.conn()).await?);
        sqlx::query(
            "INSERT INTO eddy_es_projections (name, generation, position, replay_until, updated_at_us) \
             VALUES ($1, 1, 0, $2, $3) ON CONFLICT (name) DO NOTHING",
        )
        .bind(projector.name())
        .bind(replay_until)
        .bind(now_us())
        .execute(tx.conn())
        .await
        .map_err(|e| classify("cannot register a projection", e))?;
        let checkpoint = projector.checkpoint(&mut tx).await?;
        let target = Target {
            generation: checkpoint.generation,
            replaying: false,
        };
        projector.projection.create(&mut tx, &target).await?;
        projector
            .point_views(&mut tx, checkpoint.generation)
            .await?;
        tx.commit().await?;
        Ok(projector)
    }

    pub fn name(&self) -> &'static str {
        self.projection.name()
    }

    /// Applies every event after the checkpoint, a batch per transaction, each with its
    /// checkpoint; reports progress after each batch. Returns how many it applied.
    pub async fn catch_up(&self, mut progress: impl FnMut(Progress)) -> Result<u64, Error> {
        let mut applied = 0;
        loop {
            let mut tx = self.store.db().begin().await?;
            let (position, in_batch) = self.apply_batch(&mut tx).await?;
            tx.commit().await?;
            applied += in_batch;
            if in_batch > 0 {
                progress(Progress {
                    position,
                    head: self.store.head().await?,
                    applied,
                });
            }
            if in_batch < self.config.batch_len_max as u64 {
                return Ok(applied);
            }
        }
    }

    /// Applies every event after the checkpoint inside `tx` — call it after appending in
    /// `tx` and the projection commits with the events. The appends hold the sequence's
    /// lock, so what it reads is everything before them plus their own events.
    pub async fn catch_up_in(&self, tx: &mut Tx) -> Result<u64, Error> {
        let mut applied = 0;
        loop {
            let (_, in_batch) = self.apply_batch(tx).await?;
            applied += in_batch;
            if in_batch < self.config.batch_len_max as u64 {
                return Ok(applied);
            }
        }
    }

    /// Catches up whenever an append commits (or every poll interval), until `stop`.
    /// A failed batch is retried after the poll interval; the error is logged.
    pub async fn run(&self, stop: CancellationToken) {
        let mut appended = self.store.db().subscribe_signal(crate::SIGNAL);
        loop {
            if let Err(error) = self.catch_up(|_| {}).await {
                tracing::warn!(projection = self.name(), %error, "projection cannot catch up; retrying");
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = appended.changed() => {}
                () = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
    }

    /// The checkpoint, the store's head and any rebuild in progress.
    pub async fn status(&self) -> Result<Status, Error> {
        let (generation, position): (i64, i64) =
            sqlx::query_as("SELECT generation, position FROM eddy_es_projections WHERE name = $1")
                .bind(self.name())
                .fetch_one(self.store.db().pool())
                .await
                .map_err(|e| classify("cannot read a projection's checkpoint", e))?;
        let rebuilding: Option<(i64, i64)> =
            sqlx::query_as("SELECT generation, position FROM eddy_es_rebuilds WHERE name = $1")
                .bind(self.name())
                .fetch_optional(self.store.db().pool())
                .await
                .map_err(|e| classify("cannot read a projection's rebuild", e))?;
        Ok(Status {
            generation: u64_of(generation),
            position: u64_of(position),
            head: self.store.head().await?,
            rebuilding: rebuilding.map(|(g, p)| (u64_of(g), u64_of(p))),
        })
    }

    /// Rebuilds the projection from the first event into a new generation of tables
    /// and swaps it in, while the live generation keeps serving (see the module's
    /// documentation). A rebuild that was stopped resumes where it was. Reports
    /// progress after each batch; returns the generation now live.
    ///
    /// Two rebuilds of one projection at once: the second fails at its next batch
    /// ("another rebuild … is running") and changes nothing.
    pub async fn rebuild(&self, mut progress: impl FnMut(Progress)) -> Result<u64, Error> {
        let (generation, mut position) = self.start_rebuild().await?;
        let target = Target {
            generation,
            replaying: true,
        };
        let batch = self.config.batch_len_max;
        let mut applied = 0;
        loop {
            let mut tx = self.store.db().begin().await?;
            self.hold_rebuild(&mut tx, generation, position).await?;
            let events = read_all(tx.conn(), position, batch).await?;
            for event in &events {
                self.projection.apply(&mut tx, &target, event).await?;
            }
            if let Some(last) = events.last() {
                position = last.position;
                self.move_rebuild(&mut tx, position).await?;
            }
            tx.commit().await?;
            applied += events.len() as u64;
            progress(Progress {
                position,
                head: self.store.head().await?,
                applied,
            });
            if events.len() < batch {
                break;
            }
        }
        // The swap: no append can commit between the last event applied and the views
        // moving (the sequence's lock), nor can the live generation's checkpoint move.
        let mut tx = self.store.db().begin().await?;
        lock_sequence(&mut tx).await?;
        let live = self.checkpoint(&mut tx).await?;
        self.hold_rebuild(&mut tx, generation, position).await?;
        loop {
            let events = read_all(tx.conn(), position, batch).await?;
            for event in &events {
                self.projection.apply(&mut tx, &target, event).await?;
                position = event.position;
            }
            applied += events.len() as u64;
            if events.len() < batch {
                break;
            }
        }
        self.point_views(&mut tx, generation).await?;
        sqlx::query(
            "UPDATE eddy_es_projections SET generation = $1, position = $2, updated_at_us = $3 WHERE name = $4",
        )
        .bind(i64_of(generation))
        .bind(i64_of(position))
        .bind(now_us())
        .bind(self.name())
        .execute(tx.conn())
        .await
        .map_err(|e| classify("cannot swap a projection", e))?;
        sqlx::query("DELETE FROM eddy_es_rebuilds WHERE name = $1")
            .bind(self.name())
            .execute(tx.conn())
            .await
            .map_err(|e| classify("cannot finish a rebuild", e))?;
        tx.commit().await?;
        progress(Progress {
            position,
            head: self.store.head().await?,
            applied,
        });
        self.drop_generation(live.generation).await?;
        Ok(generation)
    }

    /// Applies up to a batch of events after the checkpoint in `tx` and moves the
    /// checkpoint past them; returns the checkpoint and how many it applied.
    async fn apply_batch(&self, tx: &mut Tx) -> Result<(u64, u64), Error> {
        let checkpoint = self.checkpoint(tx).await?;
        let events = read_all(tx.conn(), checkpoint.position, self.config.batch_len_max).await?;
        let Some(last) = events.last().map(|e| e.position) else {
            return Ok((checkpoint.position, 0));
        };
        for event in &events {
            let target = Target {
                generation: checkpoint.generation,
                replaying: event.position <= checkpoint.replay_until,
            };
            self.projection.apply(tx, &target, event).await?;
        }
        sqlx::query(
            "UPDATE eddy_es_projections SET position = $1, updated_at_us = $2 WHERE name = $3",
        )
        .bind(i64_of(last))
        .bind(now_us())
        .bind(self.name())
        .execute(tx.conn())
        .await
        .map_err(|e| classify("cannot move a projection's checkpoint", e))?;
        Ok((last, events.len() as u64))
    }

    /// The checkpoint, its row locked until `tx` ends (SQLite's writers are serialised
    /// by `BEGIN IMMEDIATE` already).
    async fn checkpoint(&self, tx: &mut Tx) -> Result<Checkpoint, Error> {
        let lock = for_update(tx);
        let row: Option<(i64, i64, i64)> = sqlx::query_as(&format!(
            "SELECT generation, position, replay_until FROM eddy_es_projections WHERE name = $1{lock}"
        ))
        .bind(self.name())
        .fetch_optional(tx.conn())
        .await
        .map_err(|e| classify("cannot read a projection's checkpoint", e))?;
        let (generation, position, replay_until) = row.ok_or_else(|| {
            Error::permanent(format!("projection {} is not registered", self.name()))
        })?;
        Ok(Checkpoint {
            generation: u64_of(generation),
            position: u64_of(position),
            replay_until: u64_of(replay_until),
        })
    }

    /// The rebuild to continue, or a new one on the next generation (its tables made
    /// afresh: a generation left over from a rebuild that never registered is dropped).
    async fn start_rebuild(&self) -> Result<(u64, u64), Error> {
        let found: Option<(i64, i64)> =
            sqlx::query_as("SELECT generation, position FROM eddy_es_rebuilds WHERE name = $1")
                .bind(self.name())
                .fetch_optional(self.store.db().pool())
                .await
                .map_err(|e| classify("cannot read a projection's rebuild", e))?;
        if let Some((generation, position)) = found {
            tracing::info!(
                projection = self.name(),
                generation,
                position,
                "resuming a rebuild"
            );
            return Ok((u64_of(generation), u64_of(position)));
        }
        let mut tx = self.store.db().begin().await?;
        let live = self.checkpoint(&mut tx).await?;
        let generation = live.generation + 1;
        for table in self.projection.tables() {
            drop_table(&mut tx, &format!("{table}_g{generation}")).await?;
        }
        let target = Target {
            generation,
            replaying: true,
        };
        self.projection.create(&mut tx, &target).await?;
        let inserted = sqlx::query(
            "INSERT INTO eddy_es_rebuilds (name, generation, position, started_at_us) VALUES ($1, $2, 0, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(self.name())
        .bind(i64_of(generation))
        .bind(now_us())
        .execute(tx.conn())
        .await
        .map_err(|e| classify("cannot start a rebuild", e))?;
        if inserted.rows_affected() == 0 {
            let _ = tx.rollback().await;
            return Err(self.another_rebuild());
        }
        tx.commit().await?;
        Ok((generation, 0))
    }

    /// Locks the rebuild's row and checks it is where this rebuild left it: a
    /// concurrent rebuild of the same projection moved it.
    async fn hold_rebuild(&self, tx: &mut Tx, generation: u64, position: u64) -> Result<(), Error> {
        let lock = for_update(tx);
        let row: Option<(i64, i64)> = sqlx::query_as(&format!(
            "SELECT generation, position FROM eddy_es_rebuilds WHERE name = $1{lock}"
        ))
        .bind(self.name())
        .fetch_optional(tx.conn())
        .await
        .map_err(|e| classify("cannot read a projection's rebuild", e))?;
        if row != Some((i64_of(generation), i64_of(position))) {
            return Err(self.another_rebuild());
        }
        Ok(())
    }

    async fn move_rebuild(&self, tx: &mut Tx, position: u64) -> Result<(), Error> {
        sqlx::query("UPDATE eddy_es_rebuilds SET position = $1 WHERE name = $2")
            .bind(i64_of(position))
            .bind(self.name())
            .execute(tx.conn())
            .await
            .map_err(|e| classify("cannot record a rebuild's progress", e))?;
        Ok(())
    }

    fn another_rebuild(&self) -> Error {
        Error::permanent(format!(
            "another rebuild of projection {} is running (or finished meanwhile)",
            self.name()
        ))
    }

    /// Points each of the projection's views at `generation`'s table.
    async fn point_views(&self, tx: &mut Tx, generation: u64) -> Result<(), Error> {
        for table in self.projection.tables() {
            for statement in [
                format!("DROP VIEW IF EXISTS {table}"),
                format!("CREATE VIEW {table} AS SELECT * FROM {table}_g{generation}"),
            ] {
                sqlx::query(&statement)
                    .execute(tx.conn())
                    .await
                    .map_err(|e| classify("cannot point a projection's view", e))?;
            }
        }
        Ok(())
    }

    async fn drop_generation(&self, generation: u64) -> Result<(), Error> {
        let mut tx = self.store.db().begin().await?;
        for table in self.projection.tables() {
            drop_table(&mut tx, &format!("{table}_g{generation}")).await?;
        }
        tx.commit().await
    }
}

async fn drop_table(tx: &mut Tx, table: &str) -> Result<(), Error> {
    sqlx::query(&format!("DROP TABLE IF EXISTS {table}"))
        .execute(tx.conn())
        .await
        .map_err(|e| classify("cannot drop a projection's old table", e))?;
    Ok(())
}

fn now_us() -> i64 {
    to_micros(OffsetDateTime::now_utc())
}

fn u64_of(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn i64_of(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
