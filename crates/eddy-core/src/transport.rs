//! How an [`Envelope`] travels as "headers + bytes", the shape of a Kafka record or a
//! NATS message. Metadata goes into headers prefixed `eddy-`; user headers are kept
//! as they are; the payload is the message body.

use uuid::Uuid;

use crate::envelope::{from_micros, to_micros};
use crate::{Envelope, Error, EventId, Headers};

pub const ID: &str = "eddy-id";
pub const TYPE: &str = "eddy-type";
pub const SCHEMA_VERSION: &str = "eddy-schema-version";
pub const OCCURRED_AT: &str = "eddy-occurred-at-us";
pub const CORRELATION_ID: &str = "eddy-correlation-id";
pub const CAUSATION_ID: &str = "eddy-causation-id";
pub const KEY: &str = "eddy-key";

const METADATA: [&str; 7] = [
    ID,
    TYPE,
    SCHEMA_VERSION,
    OCCURRED_AT,
    CORRELATION_ID,
    CAUSATION_ID,
    KEY,
];

/// The headers that carry `envelope`'s metadata, followed by its own headers.
pub fn to_headers(envelope: &Envelope) -> Vec<(String, String)> {
    let mut out = Vec::with_capacity(7 + envelope.headers.len());
    out.push((ID.to_owned(), envelope.id.to_string()));
    out.push((TYPE.to_owned(), envelope.event_type.clone()));
    out.push((
        SCHEMA_VERSION.to_owned(),
        envelope.schema_version.to_string(),
    ));
    out.push((
        OCCURRED_AT.to_owned(),
        to_micros(envelope.occurred_at).to_string(),
    ));
    out.push((
        CORRELATION_ID.to_owned(),
        envelope.correlation_id.to_string(),
    ));
    if let Some(causation) = envelope.causation_id {
        out.push((CAUSATION_ID.to_owned(), causation.to_string()));
    }
    out.push((KEY.to_owned(), envelope.key.clone()));
    out.extend(
        envelope
            .headers
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    out
}

/// Rebuilds an envelope from [`to_headers`]' output and the payload.
pub fn from_headers<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    payload: Vec<u8>,
) -> Result<Envelope, Error> {
    let mut id = None;
    let mut event_type = None;
    let mut schema_version = None;
    let mut occurred_at = None;
    let mut correlation_id = None;
    let mut causation_id = None;
    let mut key = None;
    let mut user = Headers::new();
    for (name, value) in headers {
        match name {
            ID => id = Some(value.parse::<EventId>()?),
            TYPE => event_type = Some(value.to_owned()),
            SCHEMA_VERSION => schema_version = Some(parse_number::<u32>(name, value)?),
            OCCURRED_AT => occurred_at = Some(from_micros(parse_number::<i64>(name, value)?)?),
            CORRELATION_ID => correlation_id = Some(parse_uuid(name, value)?),
            CAUSATION_ID => causation_id = Some(parse_uuid(name, value)?),
            KEY => key = Some(value.to_owned()),
            _ if METADATA.contains(&name) => {}
            _ => user.insert(name, value),
        }
    }
    let missing = |field: &str| Error::permanent(format!("message has no {field} header"));
    Ok(Envelope {
        id: id.ok_or_else(|| missing(ID))?,
        event_type: event_type.ok_or_else(|| missing(TYPE))?,
        schema_version: schema_version.ok_or_else(|| missing(SCHEMA_VERSION))?,
        occurred_at: occurred_at.ok_or_else(|| missing(OCCURRED_AT))?,
        correlation_id: correlation_id.ok_or_else(|| missing(CORRELATION_ID))?,
        causation_id,
        key: key.ok_or_else(|| missing(KEY))?,
        headers: user,
        payload,
    })
}

fn parse_number<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, Error>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    value.parse().map_err(|e| {
        Error::permanent(format!("header {name} is not a number: {value:?}")).with_source(e)
    })
}

fn parse_uuid(name: &str, value: &str) -> Result<Uuid, Error> {
    Uuid::parse_str(value).map_err(|e| {
        Error::permanent(format!("header {name} is not a UUID: {value:?}")).with_source(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use time::OffsetDateTime;

    fn arb_envelope() -> impl Strategy<Value = Envelope> {
        (
            "[A-Za-z][A-Za-z0-9.]{0,30}",
            any::<u32>(),
            // Any instant between 1970 and 2200, to the microsecond.
            0i64..7_258_118_400_000_000,
            any::<u128>(),
            proptest::option::of(any::<u128>()),
            ".{0,40}",
            proptest::collection::btree_map("[a-z][a-z0-9-]{0,15}", ".{0,40}", 0..6),
            proptest::collection::vec(any::<u8>(), 0..512),
        )
            .prop_map(
                |(event_type, version, micros, corr, cause, key, headers, payload)| {
                    let at = from_micros(micros).unwrap_or(OffsetDateTime::UNIX_EPOCH);
                    let mut envelope = Envelope::new(event_type, version, key, payload, at)
                        .with_correlation_id(Uuid::from_u128(corr));
                    envelope.causation_id = cause.map(Uuid::from_u128);
                    // User headers may not use the reserved metadata names.
                    envelope.headers = headers
                        .into_iter()
                        .filter(|(k, _)| !METADATA.contains(&k.as_str()))
                        .collect();
                    envelope
                },
            )
    }

    proptest! {
        #[test]
        fn every_envelope_survives_the_trip_through_headers(envelope in arb_envelope()) {
            let headers = to_headers(&envelope);
            let back = from_headers(
                headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                envelope.payload.clone(),
            ).unwrap();
            prop_assert_eq!(back, envelope);
        }

        #[test]
        fn headers_survive_the_trip_through_json(envelope in arb_envelope()) {
            let back = Headers::from_json(&envelope.headers.to_json()).unwrap();
            prop_assert_eq!(back, envelope.headers);
        }
    }

    #[test]
    fn a_message_without_metadata_is_a_permanent_error() {
        let error = from_headers([("content-type", "text/plain")], b"hi".to_vec()).unwrap_err();
        assert_eq!(error.kind(), crate::ErrorKind::Permanent);
        assert!(error.to_string().contains("eddy-id"), "{error}");
    }

    #[test]
    fn a_caused_event_inherits_correlation_deadline_and_trace() {
        let at = OffsetDateTime::UNIX_EPOCH;
        let cause = Envelope::new("A", 1, "k", vec![], at)
            .with_header(Headers::TRACEPARENT, "00-abc-def-01")
            .with_deadline(at + time::Duration::seconds(5));
        let effect = Envelope::new("B", 1, "k", vec![], at).caused_by(&cause);
        assert_eq!(effect.correlation_id, cause.correlation_id);
        assert_eq!(effect.causation_id, Some(cause.id.as_uuid()));
        assert_eq!(
            effect.headers.get(Headers::TRACEPARENT),
            Some("00-abc-def-01")
        );
        assert_eq!(
            effect.headers.deadline(),
            Some(at + time::Duration::seconds(5))
        );
    }
}
