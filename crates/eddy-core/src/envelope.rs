//! The event envelope: everything a consumer needs besides the payload itself.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::Error;

/// The unique id of one event, a UUIDv7: time-ordered, so ids of events created later
/// sort later, and unique, so consumers use it to recognise a redelivered event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(Uuid);

impl EventId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for EventId {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s)
            .map(Self)
            .map_err(|e| Error::permanent(format!("invalid event id {s:?}")).with_source(e))
    }
}

/// String headers carried with an event. Keys starting with `eddy-` are reserved.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Headers(BTreeMap<String, String>);

impl Headers {
    /// The absolute deadline of the work this event belongs to, as RFC 3339 text.
    /// Work whose deadline has passed is not started.
    pub const DEADLINE: &'static str = "eddy-deadline";
    /// W3C trace context, so a trace follows an event across processes.
    pub const TRACEPARENT: &'static str = "traceparent";
    /// W3C trace state, carried with [`Headers::TRACEPARENT`].
    pub const TRACESTATE: &'static str = "tracestate";

    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.0.insert(key.into(), value.into());
    }

    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.0.remove(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The deadline header, if present and well formed.
    pub fn deadline(&self) -> Option<OffsetDateTime> {
        self.get(Self::DEADLINE).and_then(|s| {
            OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
        })
    }

    pub fn to_json(&self) -> String {
        // A map of strings always serialises.
        serde_json::to_string(&self.0).unwrap_or_else(|_| "{}".to_owned())
    }

    pub fn from_json(text: &str) -> Result<Self, Error> {
        serde_json::from_str(text).map(Self).map_err(|e| {
            Error::permanent("headers are not a JSON object of strings").with_source(e)
        })
    }
}

impl FromIterator<(String, String)> for Headers {
    fn from_iter<T: IntoIterator<Item = (String, String)>>(iter: T) -> Self {
        Self(iter.into_iter().collect())
    }
}

/// One event with its metadata. The payload is already encoded (JSON by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Unique and stable across redeliveries: the idempotency key of consumers.
    pub id: EventId,
    /// The event's name, such as `OrderPlaced`; consumers route on it.
    pub event_type: String,
    /// The version of the payload's schema, so old versions can be upcast.
    pub schema_version: u32,
    /// When the fact happened, in UTC, to the microsecond (the precision stores keep).
    pub occurred_at: OffsetDateTime,
    /// Shared by every event caused, directly or not, by one original request.
    pub correlation_id: Uuid,
    /// The id of the event (or request) that directly caused this one.
    pub causation_id: Option<Uuid>,
    /// The partition key: events with the same key are delivered in order.
    pub key: String,
    pub headers: Headers,
    pub payload: Vec<u8>,
}

impl Envelope {
    /// An envelope with a fresh id, occurring now, starting its own correlation.
    pub fn new(
        event_type: impl Into<String>,
        schema_version: u32,
        key: impl Into<String>,
        payload: Vec<u8>,
        occurred_at: OffsetDateTime,
    ) -> Self {
        let id = EventId::new();
        Self {
            id,
            event_type: event_type.into(),
            schema_version,
            occurred_at: truncate_to_micros(occurred_at),
            correlation_id: id.as_uuid(),
            causation_id: None,
            key: key.into(),
            headers: Headers::new(),
            payload,
        }
    }

    /// Marks this event as caused by `cause`: same correlation, causation = cause's id,
    /// and the cause's deadline and trace context carried over.
    pub fn caused_by(mut self, cause: &Envelope) -> Self {
        self.correlation_id = cause.correlation_id;
        self.causation_id = Some(cause.id.as_uuid());
        for key in [Headers::DEADLINE, Headers::TRACEPARENT, Headers::TRACESTATE] {
            if let Some(value) = cause.headers.get(key) {
                self.headers.insert(key, value);
            }
        }
        self
    }

    pub fn with_correlation_id(mut self, correlation_id: Uuid) -> Self {
        self.correlation_id = correlation_id;
        self
    }

    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(key, value);
        self
    }

    /// Sets the absolute deadline carried in [`Headers::DEADLINE`].
    pub fn with_deadline(mut self, deadline: OffsetDateTime) -> Self {
        if let Ok(text) = deadline.format(&time::format_description::well_known::Rfc3339) {
            self.headers.insert(Headers::DEADLINE, text);
        }
        self
    }

    /// `occurred_at` as microseconds since the Unix epoch, the form stores keep.
    pub fn occurred_at_micros(&self) -> i64 {
        to_micros(self.occurred_at)
    }
}

/// Microseconds since the Unix epoch. Saturates far outside any real date.
pub fn to_micros(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)
}

/// `at - age` in microseconds since the Unix epoch, or `i64::MIN` when `age` reaches
/// beyond what a date can hold (a retention of `Duration::MAX`): nothing is that old.
pub fn micros_before(at: OffsetDateTime, age: std::time::Duration) -> i64 {
    time::Duration::try_from(age)
        .ok()
        .and_then(|age| at.checked_sub(age))
        .map_or(i64::MIN, to_micros)
}

/// The inverse of [`to_micros`].
pub fn from_micros(micros: i64) -> Result<OffsetDateTime, Error> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1_000)
        .map_err(|e| Error::permanent(format!("timestamp {micros} out of range")).with_source(e))
}

fn truncate_to_micros(at: OffsetDateTime) -> OffsetDateTime {
    from_micros(to_micros(at)).unwrap_or(at)
}
