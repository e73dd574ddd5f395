//! Aggregates folded from their stream, from the nearest snapshot at or before the
//! point asked for.

use eddy_core::envelope::to_micros;
use eddy_core::Error;
use eddy_sql::{classify, Tx};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::AnyConnection;
use time::OffsetDateTime;

use crate::store::{read_stream, EventStore, Recorded, Until};

/// A state folded from a stream's events.
pub trait Aggregate: Default + Serialize + DeserializeOwned + Send {
    /// The version of the snapshot format (the state's serialized shape). Bump it when
    /// the shape changes; older snapshots are then upcast or ignored.
    const SNAPSHOT_VERSION: u32;

    /// Applies one event. An event the aggregate cannot apply is an error, never skipped.
    fn apply(&mut self, event: &Recorded) -> Result<(), Error>;

    /// Brings a snapshot taken in format `version` to the current one, or `None` to
    /// ignore it and fold the events from the start (the default).
    fn upcast_snapshot(version: u32, state: serde_json::Value) -> Option<serde_json::Value> {
        let _ = (version, state);
        None
    }
}

/// Every how many events a snapshot is kept (0: never).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPolicy {
    pub every: u64,
}

/// An aggregate as loaded.
#[derive(Debug)]
pub struct Loaded<A> {
    pub state: A,
    /// The stream's version the state reflects (0: no events).
    pub version: u64,
    /// The snapshot it started from, if any.
    pub from_snapshot: Option<u64>,
    /// How many events were applied on top of it.
    pub applied: u64,
}

/// Events read per query while folding.
const PAGE: usize = 500;

/// Snapshots looked at, newest first, before folding from the start.
const SNAPSHOTS_TRIED: i64 = 4;

impl EventStore {
    /// `stream` folded into an `A` as of `until` (the end, a version, or what the store
    /// had recorded at a moment), starting from the newest usable snapshot at or before
    /// that point.
    pub async fn load<A: Aggregate>(&self, stream: &str, until: Until) -> Result<Loaded<A>, Error> {
        let mut conn = self
            .db()
            .pool()
            .acquire()
            .await
            .map_err(|e| classify("cannot connect to load an aggregate", e))?;
        load(&mut conn, stream, until).await
    }

    /// [`EventStore::load`] inside the caller's transaction: it sees the transaction's
    /// own appends, so a command can load, decide and append with `Exact(version)` in one
    /// transaction (a handler in a batch of several for the same stream included).
    pub async fn load_in<A: Aggregate>(
        &self,
        tx: &mut Tx,
        stream: &str,
        until: Until,
    ) -> Result<Loaded<A>, Error> {
        load(tx.conn(), stream, until).await
    }

    /// Keeps `loaded`'s state as a snapshot when `policy` says one is due: when at least
    /// `every` events were applied since the snapshot it started from. Says whether it
    /// took one.
    pub async fn snapshot_if_due<A: Aggregate>(
        &self,
        stream: &str,
        loaded: &Loaded<A>,
        policy: SnapshotPolicy,
    ) -> Result<bool, Error> {
        let since = loaded.version - loaded.from_snapshot.unwrap_or(0);
        if policy.every == 0 || loaded.version == 0 || since < policy.every {
            return Ok(false);
        }
        self.save_snapshot(stream, loaded.version, &loaded.state)
            .await?;
        Ok(true)
    }

    /// Keeps `state` as `stream`'s state at `version` (replacing one kept there before).
    pub async fn save_snapshot<A: Aggregate>(
        &self,
        stream: &str,
        version: u64,
        state: &A,
    ) -> Result<(), Error> {
        let bytes = serde_json::to_vec(state)
            .map_err(|e| Error::permanent("cannot serialize a snapshot").with_source(e))?;
        let mut tx = self.db().begin().await?;
        sqlx::query(
            "INSERT INTO eddy_es_snapshots (stream, version, schema_version, state, taken_at_us) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (stream, version) DO UPDATE SET schema_version = excluded.schema_version, state = excluded.state, taken_at_us = excluded.taken_at_us",
        )
        .bind(stream)
        .bind(i64::try_from(version).unwrap_or(i64::MAX))
        .bind(i64::from(A::SNAPSHOT_VERSION))
        .bind(bytes)
        .bind(to_micros(OffsetDateTime::now_utc()))
        .execute(tx.conn())
        .await
        .map_err(|e| classify("cannot save a snapshot", e))?;
        tx.commit().await
    }
}

/// A snapshot row decoded into the current format, or `None` to fold from the start.
fn usable<A: Aggregate>((version, format, bytes): (i64, i64, Vec<u8>)) -> Option<(A, u64)> {
    let version = u64::try_from(version).ok()?;
    let format = u32::try_from(format).ok()?;
    let state = if format == A::SNAPSHOT_VERSION {
        serde_json::from_slice(&bytes).ok()?
    } else {
        let value = serde_json::from_slice(&bytes).ok()?;
        serde_json::from_value(A::upcast_snapshot(format, value)?).ok()?
    };
    Some((state, version))
}

async fn load<A: Aggregate>(
    conn: &mut AnyConnection,
    stream: &str,
    until: Until,
) -> Result<Loaded<A>, Error> {
    let last = match until {
        Until::End => i64::MAX,
        Until::Version(v) => i64::try_from(v).unwrap_or(i64::MAX),
        Until::Time(t) => version_at(conn, stream, t).await?,
    };
    // The newest few at or before that point: one this build cannot read (another
    // format, no upcaster) gives way to an older one.
    let snapshots: Vec<(i64, i64, Vec<u8>)> = sqlx::query_as(
        "SELECT version, schema_version, state FROM eddy_es_snapshots WHERE stream = $1 AND version <= $2 ORDER BY version DESC LIMIT $3",
    )
    .bind(stream)
    .bind(last)
    .bind(SNAPSHOTS_TRIED)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| classify("cannot read a snapshot", e))?;
    let snapshot = snapshots.into_iter().find_map(usable::<A>);
    let (mut state, mut version, from_snapshot) = match snapshot {
        Some((state, version)) => (state, version, Some(version)),
        None => (A::default(), 0, None),
    };
    let mut applied = 0;
    let limit = Until::Version(u64::try_from(last).unwrap_or(u64::MAX));
    loop {
        let page = read_stream(&mut *conn, stream, version + 1, limit, PAGE).await?;
        for event in &page {
            state.apply(event)?;
            version = event.version;
            applied += 1;
        }
        if page.len() < PAGE {
            break;
        }
    }
    Ok(Loaded {
        state,
        version,
        from_snapshot,
        applied,
    })
}

/// The stream's version as the store had it at `at`.
async fn version_at(
    conn: &mut AnyConnection,
    stream: &str,
    at: OffsetDateTime,
) -> Result<i64, Error> {
    let version: Option<i64> = sqlx::query_scalar(
        "SELECT MAX(version) FROM eddy_es_events WHERE stream = $1 AND recorded_at_us <= $2",
    )
    .bind(stream)
    .bind(to_micros(at))
    .fetch_one(conn)
    .await
    .map_err(|e| classify("cannot read a stream's version", e))?;
    Ok(version.unwrap_or(0))
}
