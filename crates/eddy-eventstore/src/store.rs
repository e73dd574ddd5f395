//! [`EventStore`]: appends with optimistic concurrency, stream and global reads.

use std::collections::HashMap;

use eddy_core::envelope::{from_micros, to_micros};
use eddy_core::{Envelope, Error};
use eddy_sql::envelope_row::{bind_envelope, push_placeholders, read_envelope, COLUMNS};
use eddy_sql::{classify, Db, Tx};
use sqlx::any::AnyRow;
use sqlx::Row;
use time::OffsetDateTime;

/// The version a writer expects its stream to be at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// Whatever it is (no concurrency check).
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must be at exactly this version (its number of events).
    Exact(u64),
}

/// Why an append did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another writer got there first: the stream is not at the expected version.
    #[error("stream {stream:?}: expected {expected:?}, found version {actual}")]
    Conflict {
        stream: String,
        expected: Expected,
        /// The stream's version as the append found it (0: no stream).
        actual: u64,
    },
    /// Some of the events are already in the store and some are not, or they are in
    /// another stream: not a retry of an earlier append.
    #[error("stream {stream:?}: {reason}")]
    Mismatch { stream: String, reason: String },
    /// The database failed; its kind says whether to retry.
    #[error(transparent)]
    Store(#[from] Error),
}

/// Where an append put its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// The stream's version after the append (its last event's version).
    pub version: u64,
    /// The global position of the first event of the append.
    pub first_position: u64,
    /// True when every event was already there (an idempotent retry): nothing written.
    pub already: bool,
}

/// An event as the store keeps it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub stream: String,
    /// Its place in the stream, from 1.
    pub version: u64,
    /// Its place in the global sequence, from 1.
    pub position: u64,
    /// When the store recorded it: the appending process's clock when it appended (not
    /// when it committed), never earlier than the append before it.
    pub recorded_at: OffsetDateTime,
    pub envelope: Envelope,
}

/// How far to read a stream: everything, up to a version, or what the store had
/// recorded at a moment (point-in-time reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    End,
    Version(u64),
    Time(OffsetDateTime),
}

/// The event store over one database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EventStore {
    db: Db,
}

const SELECT: &str = "SELECT stream, version, position, recorded_at_us, ";

impl EventStore {
    /// Opens the store on `db`, creating its tables when missing.
    pub async fn open(db: Db) -> Result<Self, Error> {
        db.migrate(crate::MIGRATIONS).await?;
        Ok(Self { db })
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Appends `events` to `stream` in a transaction of its own. A retry of an append
    /// that committed (the same event ids) answers where they are and writes nothing.
    pub async fn append(
        &self,
        stream: &str,
        expected: Expected,
        events: &[Envelope],
    ) -> Result<Appended, AppendError> {
        let mut tx = self.db.begin().await?;
        let outcome = match self.append_in(&mut tx, stream, expected, events).await {
            Ok(appended) => tx.commit().await.map(|()| appended).map_err(Into::into),
            Err(error) => {
                let _ = tx.rollback().await;
                Err(error)
            }
        };
        match outcome {
            // A concurrent writer of the same events got there first (the same ids with
            // `Any` fail on the event id's uniqueness; with a version, on the version):
            // they are in the stream, which is a retry's answer.
            Err(AppendError::Store(_) | AppendError::Conflict { .. }) if !events.is_empty() => {
                match self.already_appended(stream, events).await {
                    Ok(Some(existing)) => Ok(existing),
                    _ => outcome,
                }
            }
            other => other,
        }
    }

    /// Appends `events` to `stream` inside the caller's transaction, with the caller's
    /// other writes (its read model, its outbox rows). The stream's row and the global
    /// sequence stay locked until `tx` ends.
    pub async fn append_in(
        &self,
        tx: &mut Tx,
        stream: &str,
        expected: Expected,
        events: &[Envelope],
    ) -> Result<Appended, AppendError> {
        if events.is_empty() {
            // Nothing to write: only the check.
            let version = to_i64(stream_version(tx.conn(), stream).await?);
            let matches = match expected {
                Expected::Any => true,
                Expected::NoStream => version == 0,
                Expected::Exact(v) => to_i64(v) == version,
            };
            if !matches {
                return Err(AppendError::Conflict {
                    stream: stream.to_owned(),
                    expected,
                    actual: to_u64(version),
                });
            }
            return Ok(Appended {
                version: to_u64(version),
                first_position: 0,
                already: false,
            });
        }
        if let Some(existing) = self.already_in(tx, stream, events).await? {
            return Ok(existing);
        }
        let count = i64::try_from(events.len()).map_err(|_| mismatch(stream, "too many events"))?;
        // The sequence first, the stream second, in every append: two appends in one
        // transaction cannot deadlock against another transaction's (SQLite's writers
        // are serialised by BEGIN IMMEDIATE already).
        lock_sequence(tx).await?;
        let version = reserve_versions(tx, stream, expected, count).await?;
        // Recorded times never go back, whatever the clocks of the processes appending:
        // an append is stamped no earlier than the one before it, so what was recorded by
        // a moment is a prefix of every stream.
        let (next, recorded_at): (i64, i64) = sqlx::query_as(
            "UPDATE eddy_es_sequence SET next_position = next_position + $1, \
             last_recorded_us = CASE WHEN last_recorded_us > $2 THEN last_recorded_us ELSE $2 END \
             WHERE id = 1 RETURNING next_position, last_recorded_us",
        )
        .bind(count)
        .bind(to_micros(OffsetDateTime::now_utc()))
        .fetch_one(tx.conn())
        .await
        .map_err(|e| classify("cannot reserve positions", e))?;
        let first_position = next - count;
        let first_version = version - count + 1;
        // Rows in chunks that stay under SQLite's bound on placeholders.
        for (chunk_index, chunk) in events.chunks(64).enumerate() {
            let mut sql = format!(
                "INSERT INTO eddy_es_events (position, stream, version, recorded_at_us, {COLUMNS}) VALUES "
            );
            let mut placeholder = 1;
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(", ");
                }
                placeholder = push_placeholders(&mut sql, placeholder, 4);
            }
            let mut query = sqlx::query(&sql);
            for (i, envelope) in chunk.iter().enumerate() {
                let offset = i64::try_from(chunk_index * 64 + i).unwrap_or(i64::MAX);
                query = bind_envelope(
                    query
                        .bind(first_position + offset)
                        .bind(stream)
                        .bind(first_version + offset)
                        .bind(recorded_at),
                    envelope,
                );
            }
            query
                .execute(tx.conn())
                .await
                .map_err(|e| classify("cannot append events", e))?;
        }
        tx.signal_on_commit(crate::SIGNAL).await?;
        Ok(Appended {
            version: to_u64(version),
            first_position: to_u64(first_position),
            already: false,
        })
    }

    /// The stream's current version (0 when it does not exist).
    pub async fn version(&self, stream: &str) -> Result<u64, Error> {
        stream_version(self.db.pool(), stream).await
    }

    /// Up to `max` events of `stream` from version `from` on (1 is the first), stopping
    /// at `until`.
    pub async fn read_stream(
        &self,
        stream: &str,
        from: u64,
        until: Until,
        max: usize,
    ) -> Result<Vec<Recorded>, Error> {
        read_stream(self.db.pool(), stream, from, until, max).await
    }

    /// Up to `max` events of every stream after global position `after` (0: from the
    /// start), in position order. A follower that passes the last position it saw never
    /// misses an event committed later (see the crate's documentation).
    pub async fn read_all(&self, after: u64, max: usize) -> Result<Vec<Recorded>, Error> {
        read_all(self.db.pool(), after, max).await
    }

    /// The last global position taken (0: no events yet). An append still open may
    /// hold positions above it.
    pub async fn head(&self) -> Result<u64, Error> {
        head(self.db.pool()).await
    }

    /// Where `events` already are, if every one of them is in `stream` at consecutive
    /// versions (a retried append); `None` if none of them is there; a mismatch if only
    /// some are, or elsewhere. One query per 500 events.
    async fn already_in(
        &self,
        tx: &mut Tx,
        stream: &str,
        events: &[Envelope],
    ) -> Result<Option<Appended>, AppendError> {
        let ids: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
        let mut found: HashMap<String, (String, i64, i64)> = HashMap::new();
        for chunk in ids.chunks(500) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT event_id, stream, version, position FROM eddy_es_events WHERE event_id IN ({})",
                placeholders.join(", ")
            );
            let mut query = sqlx::query_as::<_, (String, String, i64, i64)>(&sql);
            for id in chunk {
                query = query.bind(id);
            }
            let rows = query
                .fetch_all(tx.conn())
                .await
                .map_err(|e| classify("cannot look for appended events", e))?;
            for (id, found_stream, version, position) in rows {
                found.insert(id, (found_stream, version, position));
            }
        }
        if found.is_empty() {
            return Ok(None);
        }
        if found.len() < ids.len() {
            return Err(mismatch(
                stream,
                "some of these events were appended before and some were not",
            ));
        }
        let mut first: Option<(i64, i64)> = None;
        for (i, id) in ids.iter().enumerate() {
            let Some((found_stream, version, position)) = found.get(id) else {
                return Err(mismatch(stream, "an event vanished while looking"));
            };
            if found_stream != stream {
                return Err(mismatch(
                    stream,
                    &format!("event {id} is in stream {found_stream:?}"),
                ));
            }
            let (first_version, _) = *first.get_or_insert((*version, *position));
            if *version != first_version + i64::try_from(i).unwrap_or(i64::MAX) {
                return Err(mismatch(
                    stream,
                    "these events were appended before, but not together in this order",
                ));
            }
        }
        let Some((first_version, first_position)) = first else {
            return Ok(None);
        };
        let last = first_version + i64::try_from(events.len() - 1).unwrap_or(i64::MAX);
        Ok(Some(Appended {
            version: to_u64(last),
            first_position: to_u64(first_position),
            already: true,
        }))
    }

    async fn already_appended(
        &self,
        stream: &str,
        events: &[Envelope],
    ) -> Result<Option<Appended>, AppendError> {
        let mut tx = self.db.begin().await?;
        let found = self.already_in(&mut tx, stream, events).await;
        let _ = tx.rollback().await;
        found
    }
}

/// Takes the global sequence's row lock until `tx` ends: appends commit one after the
/// other, so positions become visible in order. (SQLite's writers are serialised by
/// `BEGIN IMMEDIATE` already.)
pub(crate) async fn lock_sequence(tx: &mut Tx) -> Result<(), Error> {
    if tx.backend() == eddy_sql::Backend::Postgres {
        sqlx::query("SELECT next_position FROM eddy_es_sequence WHERE id = 1 FOR UPDATE")
            .execute(tx.conn())
            .await
            .map_err(|e| classify("cannot lock the sequence", e))?;
    }
    Ok(())
}

/// ` FOR UPDATE` on PostgreSQL, nothing on SQLite (whose writers `BEGIN IMMEDIATE`
/// serialises): to lock the rows a `SELECT` reads until `tx` ends.
pub(crate) fn for_update(tx: &Tx) -> &'static str {
    if tx.backend() == eddy_sql::Backend::Postgres {
        " FOR UPDATE"
    } else {
        ""
    }
}

/// Moves `stream` forward by `count` versions if it is where `expected` says; returns
/// its new version. The stream's row stays locked until the transaction ends.
async fn reserve_versions(
    tx: &mut Tx,
    stream: &str,
    expected: Expected,
    count: i64,
) -> Result<i64, AppendError> {
    let moved: Option<i64> = match expected {
        Expected::Any => Some(
            sqlx::query_scalar(
                "INSERT INTO eddy_es_streams (stream, version) VALUES ($1, $2) \
                 ON CONFLICT (stream) DO UPDATE SET version = eddy_es_streams.version + $2 RETURNING version",
            )
            .bind(stream)
            .bind(count)
            .fetch_one(tx.conn())
            .await
            .map_err(|e| classify("cannot move a stream's version", e))?,
        ),
        Expected::NoStream | Expected::Exact(0) => sqlx::query_scalar(
            "INSERT INTO eddy_es_streams (stream, version) VALUES ($1, $2) \
             ON CONFLICT (stream) DO NOTHING RETURNING version",
        )
        .bind(stream)
        .bind(count)
        .fetch_optional(tx.conn())
        .await
        .map_err(|e| classify("cannot create a stream", e))?,
        Expected::Exact(version) => sqlx::query_scalar(
            "UPDATE eddy_es_streams SET version = version + $1 WHERE stream = $2 AND version = $3 RETURNING version",
        )
        .bind(count)
        .bind(stream)
        .bind(to_i64(version))
        .fetch_optional(tx.conn())
        .await
        .map_err(|e| classify("cannot move a stream's version", e))?,
    };
    match moved {
        Some(version) => Ok(version),
        None => Err(AppendError::Conflict {
            stream: stream.to_owned(),
            expected,
            actual: stream_version(tx.conn(), stream).await?,
        }),
    }
}

/// See [`EventStore::read_stream`]; on the pool or in a transaction.
pub(crate) async fn read_stream<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
    stream: &str,
    from: u64,
    until: Until,
    max: usize,
) -> Result<Vec<Recorded>, Error> {
    let (limit_version, limit_time) = match until {
        Until::End => (i64::MAX, i64::MAX),
        Until::Version(v) => (to_i64(v), i64::MAX),
        Until::Time(t) => (i64::MAX, to_micros(t)),
    };
    let rows = sqlx::query(&format!(
        "{SELECT}{COLUMNS} FROM eddy_es_events WHERE stream = $1 AND version >= $2 AND version <= $3 AND recorded_at_us <= $4 ORDER BY version LIMIT $5"
    ))
    .bind(stream)
    .bind(to_i64(from))
    .bind(limit_version)
    .bind(limit_time)
    .bind(to_i64(max as u64))
    .fetch_all(executor)
    .await
    .map_err(|e| classify("cannot read a stream", e))?;
    rows.iter().map(recorded).collect()
}

/// See [`EventStore::read_all`]; on the pool or in a transaction.
pub(crate) async fn read_all<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
    after: u64,
    max: usize,
) -> Result<Vec<Recorded>, Error> {
    let rows = sqlx::query(&format!(
        "{SELECT}{COLUMNS} FROM eddy_es_events WHERE position > $1 ORDER BY position LIMIT $2"
    ))
    .bind(to_i64(after))
    .bind(to_i64(max as u64))
    .fetch_all(executor)
    .await
    .map_err(|e| classify("cannot read events", e))?;
    rows.iter().map(recorded).collect()
}

/// See [`EventStore::head`].
pub(crate) async fn head<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
) -> Result<u64, Error> {
    let next: i64 = sqlx::query_scalar("SELECT next_position FROM eddy_es_sequence WHERE id = 1")
        .fetch_one(executor)
        .await
        .map_err(|e| classify("cannot read the global position", e))?;
    Ok(to_u64(next - 1))
}

/// A stream's version (0 when it does not exist), on the pool or in a transaction.
async fn stream_version<'e>(
    executor: impl sqlx::Executor<'e, Database = sqlx::Any>,
    stream: &str,
) -> Result<u64, Error> {
    let version: Option<i64> =
        sqlx::query_scalar("SELECT version FROM eddy_es_streams WHERE stream = $1")
            .bind(stream)
            .fetch_optional(executor)
            .await
            .map_err(|e| classify("cannot read a stream's version", e))?;
    Ok(version.map_or(0, to_u64))
}

fn recorded(row: &AnyRow) -> Result<Recorded, Error> {
    let unreadable = |column: &str| {
        let column = column.to_owned();
        move |e: sqlx::Error| Error::permanent(format!("column {column} unreadable")).with_source(e)
    };
    let stream: String = row.try_get("stream").map_err(unreadable("stream"))?;
    let version: i64 = row.try_get("version").map_err(unreadable("version"))?;
    let position: i64 = row.try_get("position").map_err(unreadable("position"))?;
    let recorded_at: i64 = row
        .try_get("recorded_at_us")
        .map_err(unreadable("recorded_at_us"))?;
    Ok(Recorded {
        stream,
        version: to_u64(version),
        position: to_u64(position),
        recorded_at: from_micros(recorded_at)?,
        envelope: read_envelope(row)?,
    })
}

fn mismatch(stream: &str, reason: &str) -> AppendError {
    AppendError::Mismatch {
        stream: stream.to_owned(),
        reason: reason.to_owned(),
    }
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
