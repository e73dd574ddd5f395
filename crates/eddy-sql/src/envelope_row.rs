//! How an [`Envelope`] is kept in table columns, shared by the outbox and the log.
//!
//! Columns: `event_id TEXT, event_type TEXT, schema_version BIGINT,
//! occurred_at_us BIGINT, correlation_id TEXT, causation_id TEXT NULL,
//! event_key TEXT, headers TEXT (a JSON object), payload BLOB/BYTEA`.

use eddy_core::envelope::{from_micros, to_micros};
use eddy_core::{Envelope, Error, Headers};
use sqlx::any::AnyRow;
use sqlx::Row;
use uuid::Uuid;

/// The envelope columns in the order [`bind_envelope`] binds them.
pub const COLUMNS: &str = "event_id, event_type, schema_version, occurred_at_us, correlation_id, causation_id, event_key, headers, payload";

/// How many placeholders one envelope takes.
pub const COLUMN_COUNT: usize = 9;

/// Writes `($first, $first+1, …)` placeholders for one row of `extra` leading values
/// plus the envelope columns, returning the next free placeholder number.
pub fn push_placeholders(sql: &mut String, first: usize, extra: usize) -> usize {
    sql.push('(');
    let count = extra + COLUMN_COUNT;
    for i in 0..count {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push('$');
        sql.push_str(&(first + i).to_string());
    }
    sql.push(')');
    first + count
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Binds the envelope columns of `envelope` in [`COLUMNS`] order.
pub fn bind_envelope<'q>(query: AnyQuery<'q>, envelope: &'q Envelope) -> AnyQuery<'q> {
    bind_envelope_with_headers(query, envelope, envelope.headers.to_json())
}

/// [`bind_envelope`] with `headers` (JSON) in place of the envelope's own: the
/// envelope as written, such as with the trace context of the span that wrote it.
pub fn bind_envelope_with_headers<'q>(
    query: AnyQuery<'q>,
    envelope: &'q Envelope,
    headers: String,
) -> AnyQuery<'q> {
    query
        .bind(envelope.id.to_string())
        .bind(envelope.event_type.as_str())
        .bind(i64::from(envelope.schema_version))
        .bind(to_micros(envelope.occurred_at))
        .bind(envelope.correlation_id.to_string())
        .bind(envelope.causation_id.map(|c| c.to_string()))
        .bind(envelope.key.as_str())
        .bind(headers)
        .bind(envelope.payload.as_slice())
}

/// Reads the envelope columns of `row` (selected by name).
pub fn read_envelope(row: &AnyRow) -> Result<Envelope, Error> {
    let get_text = |name: &str| -> Result<String, Error> {
        row.try_get::<String, _>(name)
            .map_err(|e| Error::permanent(format!("column {name} unreadable")).with_source(e))
    };
    let event_id = get_text("event_id")?;
    let schema_version: i64 = row
        .try_get("schema_version")
        .map_err(|e| Error::permanent("column schema_version unreadable").with_source(e))?;
    let occurred_at_us: i64 = row
        .try_get("occurred_at_us")
        .map_err(|e| Error::permanent("column occurred_at_us unreadable").with_source(e))?;
    let causation: Option<String> = row
        .try_get("causation_id")
        .map_err(|e| Error::permanent("column causation_id unreadable").with_source(e))?;
    let payload: Vec<u8> = row
        .try_get("payload")
        .map_err(|e| Error::permanent("column payload unreadable").with_source(e))?;
    Ok(Envelope {
        id: event_id.parse()?,
        event_type: get_text("event_type")?,
        schema_version: u32::try_from(schema_version)
            .map_err(|e| Error::permanent("schema_version out of range").with_source(e))?,
        occurred_at: from_micros(occurred_at_us)?,
        correlation_id: parse_uuid(&get_text("correlation_id")?)?,
        causation_id: causation.as_deref().map(parse_uuid).transpose()?,
        key: get_text("event_key")?,
        headers: Headers::from_json(&get_text("headers")?)?,
        payload,
    })
}

fn parse_uuid(text: &str) -> Result<Uuid, Error> {
    Uuid::parse_str(text)
        .map_err(|e| Error::permanent(format!("{text:?} is not a UUID")).with_source(e))
}
