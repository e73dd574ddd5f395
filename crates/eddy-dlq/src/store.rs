//! The dead letters of one service's database, and what can be done to them.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use eddy_core::envelope::{from_micros, micros_before, to_micros};
use eddy_core::{async_trait, Clock, Envelope, Error, HandlerError, Headers, OffsetDateTime};
use eddy_outbox::Outbox;
use eddy_runtime::dead_letter as header;
use eddy_runtime::EnvelopeHandler;
use eddy_sql::{classify, envelope_row, Db, Migration, Tx};
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::fingerprint::fingerprint;
use crate::{CAUSES, CAUSES_LEN_MAX, CAUSE_BYTES_MAX, EDITED, REDRIVE_COUNT, REDRIVE_OF};

macro_rules! letters_table {
    ($seq:literal, $blob:literal) => {
        concat!(
            "CREATE TABLE IF NOT EXISTS eddy_dead_letters (seq ", $seq, ", ",
            "event_id TEXT NOT NULL UNIQUE, event_type TEXT NOT NULL, schema_version BIGINT NOT NULL, occurred_at_us BIGINT NOT NULL, correlation_id TEXT NOT NULL, causation_id TEXT, event_key TEXT NOT NULL, headers TEXT NOT NULL, payload ", $blob, " NOT NULL, ",
            "original_id TEXT NOT NULL, origin_topic TEXT NOT NULL, origin_partition BIGINT, origin_offset BIGINT, consumer_group TEXT NOT NULL, ",
            "error TEXT NOT NULL, error_kind TEXT NOT NULL, attempts BIGINT NOT NULL, first_failure_at_us BIGINT NOT NULL, last_failure_at_us BIGINT NOT NULL, ",
            "fingerprint TEXT NOT NULL, redrive_count BIGINT NOT NULL, status TEXT NOT NULL, resolution TEXT, resolved_at_us BIGINT, resolved_by TEXT, received_at_us BIGINT NOT NULL);",
            "CREATE INDEX IF NOT EXISTS eddy_dead_letters_status ON eddy_dead_letters (status, seq);",
            "CREATE INDEX IF NOT EXISTS eddy_dead_letters_fingerprint ON eddy_dead_letters (fingerprint, seq);",
            "CREATE TABLE IF NOT EXISTS eddy_dead_letter_audit (seq ", $seq, ", at_us BIGINT NOT NULL, actor TEXT NOT NULL, operation TEXT NOT NULL, target TEXT NOT NULL, affected BIGINT NOT NULL, detail TEXT NOT NULL);",
            "CREATE TABLE IF NOT EXISTS eddy_dead_letter_redrives (job_id TEXT PRIMARY KEY, created_at_us BIGINT NOT NULL, updated_at_us BIGINT NOT NULL, actor TEXT NOT NULL, selection TEXT NOT NULL, rate_per_sec BIGINT NOT NULL, concurrency BIGINT NOT NULL, state TEXT NOT NULL, checkpoint_seq BIGINT NOT NULL, until_seq BIGINT NOT NULL, redriven BIGINT NOT NULL, skipped BIGINT NOT NULL)"
        )
    };
}

const MIGRATIONS: &[Migration] = &[Migration {
    name: "eddy_dlq_0001_tables",
    sqlite: letters_table!("INTEGER PRIMARY KEY AUTOINCREMENT", "BLOB"),
    postgres: letters_table!("BIGSERIAL PRIMARY KEY", "BYTEA"),
}];

/// The columns a [`DeadLetter`] is read from.
pub(crate) const LETTER_COLUMNS: &str = "seq, event_id, event_type, schema_version, occurred_at_us, correlation_id, causation_id, event_key, headers, payload, original_id, origin_topic, origin_partition, origin_offset, consumer_group, error, error_kind, attempts, first_failure_at_us, last_failure_at_us, fingerprint, redrive_count, status, resolution, resolved_at_us, resolved_by, received_at_us";

/// Bounds of the store's operations.
#[derive(Debug, Clone)]
pub struct DeadLetterConfig {
    /// Redrives of one event after which a redrive leaves its letter open (the loop
    /// guard). Default 3.
    pub redrive_count_max: u32,
    /// Letters read per step of a redrive; its checkpoint moves once per step, and
    /// pause and cancel are seen between steps. Default 100.
    pub page_len: usize,
    /// Most letters (or groups) one list returns. Default 1,000.
    pub list_len_max: usize,
    /// Most letters one purge statement deletes. Default 10,000.
    pub purge_batch_len_max: usize,
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        Self {
            redrive_count_max: 3,
            page_len: 100,
            list_len_max: 1_000,
            purge_batch_len_max: 10_000,
        }
    }
}

/// Whether a letter still needs someone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Open,
    Resolved,
}

/// One stored dead letter.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Order of arrival in the store (redrives follow it).
    pub seq: i64,
    /// The letter's own id.
    pub id: String,
    /// The id of the event that failed (a redrive restores it).
    pub original_id: String,
    pub origin_topic: String,
    pub origin_partition: Option<i64>,
    pub origin_offset: Option<i64>,
    pub group: String,
    pub event_type: String,
    pub key: String,
    pub error: String,
    pub error_kind: String,
    pub attempts: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub first_failure_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_failure_at: OffsetDateTime,
    pub fingerprint: String,
    /// Times the event had been redriven before it failed this time.
    pub redrive_count: i64,
    pub status: Status,
    /// `redriven`, `edited`, once resolved.
    pub resolution: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub resolved_at: Option<OffsetDateTime>,
    pub resolved_by: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    /// The letter as it arrived: the failed event with the `eddy-dlq-*` headers.
    #[serde(skip)]
    pub envelope: Envelope,
}

impl DeadLetter {
    /// The payload as JSON when it is JSON (as Eddy's codec writes it), else `None`.
    pub fn payload_json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.envelope.payload).ok()
    }

    /// The letter's headers (the event's, and the `eddy-dlq-*` ones).
    pub fn headers(&self) -> &Headers {
        &self.envelope.headers
    }

    fn read(row: &AnyRow) -> Result<Self, Error> {
        let text = |name: &str| -> Result<String, Error> {
            row.try_get::<String, _>(name)
                .map_err(|e| Error::permanent(format!("column {name} unreadable")).with_source(e))
        };
        let int = |name: &str| -> Result<i64, Error> {
            row.try_get::<i64, _>(name)
                .map_err(|e| Error::permanent(format!("column {name} unreadable")).with_source(e))
        };
        let maybe_int = |name: &str| -> Result<Option<i64>, Error> {
            row.try_get::<Option<i64>, _>(name)
                .map_err(|e| Error::permanent(format!("column {name} unreadable")).with_source(e))
        };
        let maybe_text = |name: &str| -> Result<Option<String>, Error> {
            row.try_get::<Option<String>, _>(name)
                .map_err(|e| Error::permanent(format!("column {name} unreadable")).with_source(e))
        };
        let envelope = envelope_row::read_envelope(row)?;
        Ok(Self {
            seq: int("seq")?,
            id: envelope.id.to_string(),
            original_id: text("original_id")?,
            origin_topic: text("origin_topic")?,
            origin_partition: maybe_int("origin_partition")?,
            origin_offset: maybe_int("origin_offset")?,
            group: text("consumer_group")?,
            event_type: envelope.event_type.clone(),
            key: envelope.key.clone(),
            error: text("error")?,
            error_kind: text("error_kind")?,
            attempts: int("attempts")?,
            first_failure_at: from_micros(int("first_failure_at_us")?)?,
            last_failure_at: from_micros(int("last_failure_at_us")?)?,
            fingerprint: text("fingerprint")?,
            redrive_count: int("redrive_count")?,
            status: if text("status")? == "open" {
                Status::Open
            } else {
                Status::Resolved
            },
            resolution: maybe_text("resolution")?,
            resolved_at: maybe_int("resolved_at_us")?.map(from_micros).transpose()?,
            resolved_by: maybe_text("resolved_by")?,
            received_at: from_micros(int("received_at_us")?)?,
            envelope,
        })
    }
}

/// Letters sharing one fingerprint: one failure, however many events it hit.
#[derive(Debug, Clone, Serialize)]
pub struct FailureGroup {
    pub fingerprint: String,
    pub error_kind: String,
    pub group: String,
    pub event_type: String,
    /// The latest letter's message.
    pub sample_error: String,
    pub count: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub first_seen: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
}

/// Which letters an operation takes. Empty fields match everything; `status` defaults
/// to open letters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Filter {
    pub topic: Option<String>,
    pub group: Option<String>,
    pub event_type: Option<String>,
    pub key: Option<String>,
    pub fingerprint: Option<String>,
    /// Letters whose last failure is at or after this (microseconds since the epoch).
    pub since_us: Option<i64>,
    /// Letters whose last failure is before this.
    pub until_us: Option<i64>,
    /// Only these letters (their ids).
    pub ids: Option<Vec<String>>,
    /// `open` (default), `resolved` or `any`.
    pub status: Option<String>,
}

/// A `WHERE` clause and its values, numbered from `$first`.
pub(crate) struct Where {
    pub sql: String,
    pub texts: Vec<(usize, String)>,
    pub ints: Vec<(usize, i64)>,
    pub next: usize,
}

impl Filter {
    /// Letters with this fingerprint, open.
    pub fn fingerprint(fingerprint: impl Into<String>) -> Self {
        Self {
            fingerprint: Some(fingerprint.into()),
            ..Self::default()
        }
    }

    /// These letters.
    pub fn ids(ids: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            ids: Some(ids.into_iter().map(Into::into).collect()),
            ..Self::default()
        }
    }

    pub(crate) fn to_where(&self, first: usize) -> Result<Where, Error> {
        let mut clause = Where {
            sql: String::from("1 = 1"),
            texts: Vec::new(),
            ints: Vec::new(),
            next: first,
        };
        let text = |clause: &mut Where, column: &str, value: &str| {
            clause
                .sql
                .push_str(&format!(" AND {column} = ${}", clause.next));
            clause.texts.push((clause.next, value.to_owned()));
            clause.next += 1;
        };
        match self.status.as_deref().unwrap_or("open") {
            "any" => {}
            status @ ("open" | "resolved") => text(&mut clause, "status", status),
            other => {
                return Err(Error::permanent(format!(
                    "status must be open, resolved or any, not {other:?}"
                )))
            }
        }
        for (column, value) in [
            ("origin_topic", &self.topic),
            ("consumer_group", &self.group),
            ("event_type", &self.event_type),
            ("event_key", &self.key),
            ("fingerprint", &self.fingerprint),
        ] {
            if let Some(value) = value {
                text(&mut clause, column, value);
            }
        }
        for (op, value) in [(">=", self.since_us), ("<", self.until_us)] {
            if let Some(value) = value {
                clause
                    .sql
                    .push_str(&format!(" AND last_failure_at_us {op} ${}", clause.next));
                clause.ints.push((clause.next, value));
                clause.next += 1;
            }
        }
        if let Some(ids) = &self.ids {
            if ids.is_empty() {
                clause.sql.push_str(" AND 1 = 0");
            } else {
                let mut list = Vec::with_capacity(ids.len());
                for id in ids {
                    list.push(format!("${}", clause.next));
                    clause.texts.push((clause.next, id.clone()));
                    clause.next += 1;
                }
                clause
                    .sql
                    .push_str(&format!(" AND event_id IN ({})", list.join(", ")));
            }
        }
        Ok(clause)
    }
}

/// Binds a [`Where`]'s values, in placeholder order, after `query`'s first ones.
pub(crate) fn bind_where<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    clause: &'q Where,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    let mut values: Vec<(usize, Result<&'q str, i64>)> = clause
        .texts
        .iter()
        .map(|(n, v)| (*n, Ok(v.as_str())))
        .chain(clause.ints.iter().map(|(n, v)| (*n, Err(*v))))
        .collect();
    values.sort_by_key(|(n, _)| *n);
    for (_, value) in values {
        query = match value {
            Ok(text) => query.bind(text),
            Err(int) => query.bind(int),
        };
    }
    query
}

/// One audited operation.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub seq: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub actor: String,
    pub operation: String,
    /// What it was applied to: letter ids, a filter, a job.
    pub target: String,
    /// Letters it changed (or, for a dry run, would change).
    pub affected: i64,
    pub detail: String,
}

/// The dead letters of one database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    pub(crate) db: Db,
    pub(crate) outbox: Outbox,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) config: DeadLetterConfig,
}

impl DeadLetters {
    /// The store on `db` (its tables created if needed); redrives go through `outbox`,
    /// which must be on the same database.
    pub async fn open(
        db: Db,
        outbox: Outbox,
        clock: Arc<dyn Clock>,
        config: DeadLetterConfig,
    ) -> Result<Self, Error> {
        if config.page_len == 0 || config.list_len_max == 0 || config.purge_batch_len_max == 0 {
            return Err(Error::permanent(
                "dead letters: page_len, list_len_max and purge_batch_len_max must be above 0",
            ));
        }
        db.migrate(MIGRATIONS).await?;
        Ok(Self {
            db,
            outbox,
            clock,
            config,
        })
    }

    pub fn config(&self) -> &DeadLetterConfig {
        &self.config
    }

    /// The handler that stores the letters a consumer of dead-letter topics receives —
    /// of every group, or only of `groups` (a service keeps the letters of its own
    /// consumer groups). Route it with `Router::any`.
    pub fn ingest(&self, groups: Option<HashSet<String>>) -> Ingest {
        Ingest {
            letters: self.clone(),
            groups: groups.map(Arc::new),
        }
    }

    /// Stores `letter` unless it is stored already (by its id); `true` when it was new.
    /// A message without the dead-letter headers is stored too, with what is known.
    pub async fn store(&self, letter: &Envelope) -> Result<bool, Error> {
        let headers = &letter.headers;
        let now = self.clock.now();
        let time_of = |name: &str| {
            headers
                .get(name)
                .and_then(|t| {
                    OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
                })
                .unwrap_or(now)
        };
        let number = |name: &str| headers.get(name).and_then(|v| v.parse::<i64>().ok());
        let group = headers.get(header::CONSUMER_GROUP).unwrap_or("");
        let error = headers.get(header::ERROR).unwrap_or("(no error recorded)");
        let kind = headers.get(header::ERROR_KIND).unwrap_or("unknown");
        let print = fingerprint(kind, error, group, &letter.event_type);
        let sql = format!(
            "INSERT INTO eddy_dead_letters ({}, original_id, origin_topic, origin_partition, origin_offset, consumer_group, error, error_kind, attempts, first_failure_at_us, last_failure_at_us, fingerprint, redrive_count, status, received_at_us) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, 'open', $22) ON CONFLICT (event_id) DO NOTHING",
            envelope_row::COLUMNS
        );
        let original = headers
            .get(header::ORIGINAL_ID)
            .map_or_else(|| letter.id.to_string(), str::to_owned);
        let result = envelope_row::bind_envelope(sqlx::query(&sql), letter)
            .bind(original)
            .bind(headers.get(header::ORIGIN_TOPIC).unwrap_or("").to_owned())
            .bind(number(header::ORIGIN_PARTITION))
            .bind(number(header::ORIGIN_OFFSET))
            .bind(group.to_owned())
            .bind(error.to_owned())
            .bind(kind.to_owned())
            .bind(number(header::ATTEMPTS).unwrap_or(0))
            .bind(to_micros(time_of(header::FIRST_FAILURE_AT)))
            .bind(to_micros(time_of(header::LAST_FAILURE_AT)))
            .bind(print)
            .bind(number(REDRIVE_COUNT).unwrap_or(0))
            .bind(to_micros(now))
            .execute(self.db.pool())
            .await
            .map_err(|e| classify("cannot store a dead letter", e))?;
        Ok(result.rows_affected() == 1)
    }

    /// Letters matching `filter` after `after_seq`, in arrival order, at most `limit`
    /// (bounded by `list_len_max`).
    pub async fn list(
        &self,
        filter: &Filter,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, Error> {
        self.list_between(filter, after_seq, i64::MAX, limit).await
    }

    /// [`DeadLetters::list`] up to `until_seq` (inclusive).
    pub(crate) async fn list_between(
        &self,
        filter: &Filter,
        after_seq: i64,
        until_seq: i64,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, Error> {
        let clause = filter.to_where(3)?;
        let sql = format!(
            "SELECT {LETTER_COLUMNS} FROM eddy_dead_letters WHERE seq > $1 AND seq <= $2 AND {} ORDER BY seq LIMIT {}",
            clause.sql,
            limit.clamp(1, self.config.list_len_max)
        );
        let rows = bind_where(sqlx::query(&sql).bind(after_seq).bind(until_seq), &clause)
            .fetch_all(self.db.pool())
            .await
            .map_err(|e| classify("cannot list dead letters", e))?;
        rows.iter().map(DeadLetter::read).collect()
    }

    /// How many letters match `filter`.
    pub async fn count(&self, filter: &Filter) -> Result<u64, Error> {
        self.count_between(filter, 0, i64::MAX).await
    }

    /// [`DeadLetters::count`] of the letters after `after_seq` up to `until_seq`.
    pub(crate) async fn count_between(
        &self,
        filter: &Filter,
        after_seq: i64,
        until_seq: i64,
    ) -> Result<u64, Error> {
        let clause = filter.to_where(3)?;
        let sql = format!(
            "SELECT COUNT(*) FROM eddy_dead_letters WHERE seq > $1 AND seq <= $2 AND {}",
            clause.sql
        );
        let count: i64 = bind_where(sqlx::query(&sql).bind(after_seq).bind(until_seq), &clause)
            .fetch_one(self.db.pool())
            .await
            .and_then(|row| row.try_get(0))
            .map_err(|e| classify("cannot count dead letters", e))?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// The letter with id `id`, open or not.
    pub async fn get(&self, id: &str) -> Result<Option<DeadLetter>, Error> {
        let sql = format!("SELECT {LETTER_COLUMNS} FROM eddy_dead_letters WHERE event_id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(self.db.pool())
            .await
            .map_err(|e| classify("cannot read a dead letter", e))?;
        row.as_ref().map(DeadLetter::read).transpose()
    }

    /// The letters matching `filter` grouped by fingerprint, the largest group first.
    pub async fn groups(&self, filter: &Filter) -> Result<Vec<FailureGroup>, Error> {
        let clause = filter.to_where(1)?;
        // One statement: the groups, each joined to its latest letter for the sample
        // message (not a query per group).
        let sql = format!(
            "SELECT g.*, d.error AS sample_error FROM (\
             SELECT fingerprint, MIN(error_kind) AS error_kind, MIN(consumer_group) AS consumer_group, MIN(event_type) AS event_type, \
             COUNT(*) AS letters, MIN(first_failure_at_us) AS first_us, MAX(last_failure_at_us) AS last_us, MAX(seq) AS latest \
             FROM eddy_dead_letters WHERE {} GROUP BY fingerprint) g \
             JOIN eddy_dead_letters d ON d.seq = g.latest ORDER BY g.letters DESC, g.latest DESC LIMIT {}",
            clause.sql, self.config.list_len_max
        );
        let rows = bind_where(sqlx::query(&sql), &clause)
            .fetch_all(self.db.pool())
            .await
            .map_err(|e| classify("cannot group dead letters", e))?;
        let mut groups = Vec::with_capacity(rows.len());
        for row in &rows {
            let get_text = |name: &str| -> Result<String, Error> {
                row.try_get::<String, _>(name)
                    .map_err(|e| classify("cannot group dead letters", e))
            };
            let get_int = |name: &str| -> Result<i64, Error> {
                row.try_get::<i64, _>(name)
                    .map_err(|e| classify("cannot group dead letters", e))
            };
            groups.push(FailureGroup {
                fingerprint: get_text("fingerprint")?,
                error_kind: get_text("error_kind")?,
                group: get_text("consumer_group")?,
                event_type: get_text("event_type")?,
                sample_error: get_text("sample_error")?,
                count: get_int("letters")?,
                first_seen: from_micros(get_int("first_us")?)?,
                last_seen: from_micros(get_int("last_us")?)?,
            });
        }
        Ok(groups)
    }

    /// Applies the JSON Patch `patch` (RFC 6902) to the payload of open letter `id` and
    /// redrives the result: the original event's id and key, a header saying what it
    /// redrives, the letter resolved (`edited`) in the same transaction. Returns the
    /// redriven event. A payload that is not JSON, or a patch that does not apply, is
    /// a permanent error and changes nothing.
    pub async fn edit_and_redrive(
        &self,
        id: &str,
        patch: &json_patch::Patch,
        actor: &str,
    ) -> Result<Envelope, Error> {
        let letter = self
            .get(id)
            .await?
            .ok_or_else(|| Error::permanent(format!("no dead letter {id}")))?;
        if letter.status != Status::Open {
            return Err(Error::permanent(format!(
                "dead letter {id} is resolved already ({})",
                letter.resolution.as_deref().unwrap_or("?")
            )));
        }
        let mut payload = letter.payload_json().ok_or_else(|| {
            Error::permanent(format!(
                "dead letter {id}'s payload is not JSON: it cannot be patched"
            ))
        })?;
        json_patch::patch(&mut payload, &patch.0)
            .map_err(|e| Error::permanent(format!("the patch does not apply to {id}: {e}")))?;
        let mut event = redriven(&letter)?;
        event.payload = serde_json::to_vec(&payload)
            .map_err(|e| Error::permanent("cannot encode the patched payload").with_source(e))?;
        event.headers.insert(EDITED, "true");
        let mut tx = self.db.begin().await?;
        if !self.resolve(&mut tx, &letter, "edited", actor).await? {
            tx.rollback().await?;
            return Err(Error::permanent(format!(
                "dead letter {id} was resolved meanwhile"
            )));
        }
        self.outbox
            .append(&mut tx, &letter.origin_topic, std::slice::from_ref(&event))
            .await?;
        let detail = serde_json::to_string(patch).unwrap_or_default();
        self.record(&mut tx, actor, "edit-and-redrive", id, 1, &detail)
            .await?;
        tx.commit().await?;
        Ok(event)
    }

    /// Deletes the resolved letters whose last failure is older than `older_than` (the
    /// retention a maintenance loop runs); audited as `retention` when it deleted any.
    pub async fn expire_resolved(&self, older_than: Duration) -> Result<u64, Error> {
        let resolved = Filter {
            status: Some("resolved".into()),
            ..Filter::default()
        };
        let purged = self.delete(&resolved, older_than).await?;
        if purged > 0 {
            self.audit_purge(&resolved, older_than, "retention", purged)
                .await?;
        }
        Ok(purged)
    }

    /// Deletes the letters matching `filter` whose last failure is older than
    /// `older_than`, in batches of `purge_batch_len_max`; returns how many.
    pub async fn purge(
        &self,
        filter: &Filter,
        older_than: Duration,
        actor: &str,
    ) -> Result<u64, Error> {
        let purged = self.delete(filter, older_than).await?;
        self.audit_purge(filter, older_than, actor, purged).await?;
        Ok(purged)
    }

    async fn delete(&self, filter: &Filter, older_than: Duration) -> Result<u64, Error> {
        let cutoff = micros_before(self.clock.now(), older_than);
        let clause = filter.to_where(2)?;
        let sql = format!(
            "DELETE FROM eddy_dead_letters WHERE seq IN (SELECT seq FROM eddy_dead_letters WHERE last_failure_at_us < $1 AND {} ORDER BY seq LIMIT {})",
            clause.sql, self.config.purge_batch_len_max
        );
        let mut purged = 0u64;
        loop {
            let deleted = bind_where(sqlx::query(&sql).bind(cutoff), &clause)
                .execute(self.db.pool())
                .await
                .map_err(|e| classify("cannot purge dead letters", e))?
                .rows_affected();
            purged += deleted;
            if deleted < self.config.purge_batch_len_max as u64 {
                return Ok(purged);
            }
        }
    }

    async fn audit_purge(
        &self,
        filter: &Filter,
        older_than: Duration,
        actor: &str,
        purged: u64,
    ) -> Result<(), Error> {
        let target = serde_json::to_string(filter).unwrap_or_default();
        let mut tx = self.db.begin().await?;
        self.record(
            &mut tx,
            actor,
            "purge",
            &target,
            i64::try_from(purged).unwrap_or(i64::MAX),
            &format!("older than {} s", older_than.as_secs()),
        )
        .await?;
        tx.commit().await
    }

    /// The latest `limit` audit entries, newest first.
    pub async fn audit(&self, limit: usize) -> Result<Vec<AuditEntry>, Error> {
        let sql = format!(
            "SELECT seq, at_us, actor, operation, target, affected, detail FROM eddy_dead_letter_audit ORDER BY seq DESC LIMIT {}",
            limit.clamp(1, self.config.list_len_max)
        );
        let rows = sqlx::query(&sql)
            .fetch_all(self.db.pool())
            .await
            .map_err(|e| classify("cannot read the dead-letter audit", e))?;
        rows.iter()
            .map(|row| {
                let read = |e| classify("cannot read the dead-letter audit", e);
                Ok(AuditEntry {
                    seq: row.try_get("seq").map_err(read)?,
                    at: from_micros(row.try_get("at_us").map_err(read)?)?,
                    actor: row.try_get("actor").map_err(read)?,
                    operation: row.try_get("operation").map_err(read)?,
                    target: row.try_get("target").map_err(read)?,
                    affected: row.try_get("affected").map_err(read)?,
                    detail: row.try_get("detail").map_err(read)?,
                })
            })
            .collect()
    }

    /// Marks `letter` resolved as `resolution` in `tx` if it is still open; false when
    /// it was not (resolved by another operation meanwhile).
    pub(crate) async fn resolve(
        &self,
        tx: &mut Tx,
        letter: &DeadLetter,
        resolution: &str,
        actor: &str,
    ) -> Result<bool, Error> {
        let changed = sqlx::query(
            "UPDATE eddy_dead_letters SET status = 'resolved', resolution = $1, resolved_at_us = $2, resolved_by = $3 WHERE seq = $4 AND status = 'open'",
        )
        .bind(resolution)
        .bind(to_micros(self.clock.now()))
        .bind(actor)
        .bind(letter.seq)
        .execute(tx.conn())
        .await
        .map_err(|e| classify("cannot resolve a dead letter", e))?
        .rows_affected();
        Ok(changed == 1)
    }

    /// Writes one audit entry in `tx`.
    pub(crate) async fn record(
        &self,
        tx: &mut Tx,
        actor: &str,
        operation: &str,
        target: &str,
        affected: i64,
        detail: &str,
    ) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO eddy_dead_letter_audit (at_us, actor, operation, target, affected, detail) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(to_micros(self.clock.now()))
        .bind(actor)
        .bind(operation)
        .bind(target)
        .bind(affected)
        .bind(detail)
        .execute(tx.conn())
        .await
        .map_err(|e| classify("cannot write the dead-letter audit", e))?;
        tracing::info!(target: "eddy_audit", actor, operation, target, affected, detail, "dead letters");
        Ok(())
    }
}

/// The event a redrive of `letter` publishes: the failed event as it was (its original
/// id, key, type, payload and headers), without the letter's `eddy-dlq-*` headers, its
/// failure added to the bounded [`CAUSES`] history, its redrive count one more, and a
/// header naming the letter.
pub(crate) fn redriven(letter: &DeadLetter) -> Result<Envelope, Error> {
    let mut event = letter.envelope.clone();
    event.id = letter.original_id.parse()?;
    let mut causes: Vec<serde_json::Value> = letter
        .headers()
        .get(CAUSES)
        .and_then(|c| serde_json::from_str(c).ok())
        .unwrap_or_default();
    let mut error = letter.error.clone();
    if error.len() > CAUSE_BYTES_MAX {
        let mut cut = CAUSE_BYTES_MAX;
        while !error.is_char_boundary(cut) {
            cut -= 1;
        }
        error.truncate(cut);
    }
    causes.push(serde_json::json!({
        "group": letter.group,
        "kind": letter.error_kind,
        "error": error,
        "at": letter.last_failure_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
    }));
    let excess = causes.len().saturating_sub(CAUSES_LEN_MAX);
    causes.drain(..excess);
    let kept: Vec<(String, String)> = event
        .headers
        .iter()
        .filter(|(name, _)| {
            !name.starts_with("eddy-dlq-") && *name != REDRIVE_OF && *name != EDITED
        })
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    event.headers = kept.into_iter().collect();
    event
        .headers
        .insert(CAUSES, serde_json::Value::Array(causes).to_string());
    event
        .headers
        .insert(REDRIVE_COUNT, (letter.redrive_count + 1).to_string());
    event.headers.insert(REDRIVE_OF, letter.id.clone());
    Ok(event)
}

/// Stores the letters a dead-letter consumer receives (see [`DeadLetters::ingest`]).
#[derive(Debug, Clone)]
pub struct Ingest {
    letters: DeadLetters,
    groups: Option<Arc<HashSet<String>>>,
}

#[async_trait]
impl EnvelopeHandler for Ingest {
    async fn handle(&self, envelope: &Envelope) -> Result<(), HandlerError> {
        if let Some(groups) = &self.groups {
            let group = envelope.headers.get(header::CONSUMER_GROUP).unwrap_or("");
            if !groups.contains(group) {
                return Ok(());
            }
        }
        self.letters.store(envelope).await?;
        Ok(())
    }
}
