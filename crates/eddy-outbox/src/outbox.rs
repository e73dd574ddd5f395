//! [`Outbox`]: appends inside the caller's transaction.

use eddy_core::envelope::to_micros;
use eddy_core::{Clock, Envelope, Error};
use eddy_sql::{classify, envelope_row, Db, Migration, Tx};
use std::sync::Arc;

/// The signal channel appends bump at commit; the relay waits on it.
pub(crate) const SIGNAL: &str = "eddy_outbox";

macro_rules! outbox_table {
    ($id:literal, $blob:literal) => {
        concat!(
            "CREATE TABLE IF NOT EXISTS eddy_outbox (id ", $id, ", topic TEXT NOT NULL, ",
            "event_id TEXT NOT NULL, event_type TEXT NOT NULL, schema_version BIGINT NOT NULL, occurred_at_us BIGINT NOT NULL, correlation_id TEXT NOT NULL, causation_id TEXT, event_key TEXT NOT NULL, headers TEXT NOT NULL, payload ", $blob, " NOT NULL, ",
            "created_at_us BIGINT NOT NULL, published_at_us BIGINT);",
            "CREATE INDEX IF NOT EXISTS eddy_outbox_unpublished ON eddy_outbox (id) WHERE published_at_us IS NULL;",
            "CREATE INDEX IF NOT EXISTS eddy_outbox_published ON eddy_outbox (published_at_us) WHERE published_at_us IS NOT NULL"
        )
    };
}

/// Rows the relay can never publish (undecodable, or refused permanently by the
/// broker), moved aside as stored so the rows behind them flow.
macro_rules! parked_table {
    ($blob:literal) => {
        concat!(
            "CREATE TABLE IF NOT EXISTS eddy_outbox_parked (id BIGINT PRIMARY KEY, topic TEXT NOT NULL, ",
            "event_id TEXT NOT NULL, event_type TEXT NOT NULL, schema_version BIGINT NOT NULL, occurred_at_us BIGINT NOT NULL, correlation_id TEXT NOT NULL, causation_id TEXT, event_key TEXT NOT NULL, headers TEXT NOT NULL, payload ", $blob, " NOT NULL, ",
            "created_at_us BIGINT NOT NULL, parked_at_us BIGINT NOT NULL, error TEXT NOT NULL)"
        )
    };
}

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        name: "eddy_outbox_0001_table",
        sqlite: outbox_table!("INTEGER PRIMARY KEY AUTOINCREMENT", "BLOB"),
        postgres: outbox_table!("BIGSERIAL PRIMARY KEY", "BYTEA"),
    },
    Migration {
        name: "eddy_outbox_0002_parked",
        sqlite: parked_table!("BLOB"),
        postgres: parked_table!("BYTEA"),
    },
];

/// Rows per `INSERT` statement, well below SQLite's parameter limit.
const INSERT_CHUNK_LEN: usize = 500;

/// The outbox of one database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbox {
    db: Db,
    clock: Arc<dyn Clock>,
}

/// What an operator wants to know about an outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxState {
    /// Rows not yet published.
    pub pending_len: u64,
    /// When the oldest unpublished row was written, in microseconds since the epoch.
    pub oldest_pending_at_us: Option<i64>,
    /// Published rows kept until their retention ends.
    pub published_len: u64,
    /// Rows parked because they can never be published (`eddy_outbox_parked`).
    pub parked_len: u64,
}

impl Outbox {
    /// Opens the outbox on `db`, creating its table if needed.
    pub async fn open(db: Db, clock: Arc<dyn Clock>) -> Result<Self, Error> {
        db.migrate(MIGRATIONS).await?;
        Ok(Self { db, clock })
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub(crate) fn clock(&self) -> &dyn Clock {
        self.clock.as_ref()
    }

    /// Writes `events` for `topic` inside `tx`. They are relayed once, and only if,
    /// `tx` commits; the relay is woken at the commit.
    pub async fn append(&self, tx: &mut Tx, topic: &str, events: &[Envelope]) -> Result<(), Error> {
        let now = to_micros(self.clock.now());
        for chunk in events.chunks(INSERT_CHUNK_LEN) {
            let mut sql = format!(
                "INSERT INTO eddy_outbox (topic, created_at_us, {}) VALUES ",
                envelope_row::COLUMNS
            );
            let mut next = 1;
            for i in 0..chunk.len() {
                if i > 0 {
                    sql.push_str(", ");
                }
                next = envelope_row::push_placeholders(&mut sql, next, 2);
            }
            let mut query = sqlx::query(&sql);
            for envelope in chunk {
                query = envelope_row::bind_envelope_with_headers(
                    query.bind(topic).bind(now),
                    envelope,
                    headers_as_created(topic, envelope),
                );
            }
            query
                .execute(tx.conn())
                .await
                .map_err(|e| classify("cannot append to the outbox", e))?;
        }
        if !events.is_empty() {
            tx.signal_on_commit(SIGNAL).await?;
        }
        Ok(())
    }

    /// Counts for the operations CLI and the lag monitor.
    pub async fn state(&self) -> Result<OutboxState, Error> {
        let (pending, oldest): (i64, Option<i64>) = sqlx::query_as(
            "SELECT COUNT(*), MIN(created_at_us) FROM eddy_outbox WHERE published_at_us IS NULL",
        )
        .fetch_one(self.db.pool())
        .await
        .map_err(|e| classify("cannot read the outbox", e))?;
        let published: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM eddy_outbox WHERE published_at_us IS NOT NULL",
        )
        .fetch_one(self.db.pool())
        .await
        .map_err(|e| classify("cannot read the outbox", e))?;
        let parked: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM eddy_outbox_parked")
            .fetch_one(self.db.pool())
            .await
            .map_err(|e| classify("cannot read the parked outbox rows", e))?;
        Ok(OutboxState {
            pending_len: pending.max(0) as u64,
            oldest_pending_at_us: oldest,
            published_len: published.max(0) as u64,
            parked_len: parked.max(0) as u64,
        })
    }
}

/// `envelope`'s headers as written to the outbox: carrying the context of the span that
/// created it ([`eddy_trace::create`]), so consumers' spans are children of it — or, when
/// no span is recorded here, the context it came with.
fn headers_as_created(topic: &str, envelope: &Envelope) -> String {
    match eddy_trace::create(topic, envelope) {
        Some(context) => {
            let mut headers = envelope.headers.clone();
            eddy_trace::inject(&context, &mut headers);
            headers.to_json()
        }
        None => envelope.headers.to_json(),
    }
}
