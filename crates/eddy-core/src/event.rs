//! Typed events and the JSON codec between them and [`Envelope`]s.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::upcast::{upcast, Upcast, UpcastFailure};
use crate::{Clock, Envelope, Error};

/// A typed domain event.
///
/// ```
/// use eddy_core::{Event, JsonCodec, SystemClock};
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct OrderPlaced { order_id: String }
/// impl Event for OrderPlaced {
///     const TYPE: &'static str = "OrderPlaced";
///     fn key(&self) -> String { self.order_id.clone() }
/// }
/// let envelope = JsonCodec::encode(&OrderPlaced { order_id: "o-1".into() }, &SystemClock).unwrap();
/// assert_eq!(envelope.key, "o-1");
/// let back: OrderPlaced = JsonCodec::decode(&envelope).unwrap();
/// assert_eq!(back.order_id, "o-1");
/// ```
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The name consumers route on. Never reuse a name for a different meaning.
    const TYPE: &'static str;
    /// Bump when the payload's shape changes in a way old payloads would not decode
    /// (see `docs/events.md`), with an upcaster from the previous version in
    /// [`Event::UPCASTS`].
    const SCHEMA_VERSION: u32 = 1;
    /// The oldest version ever written: decoding refuses anything older, and upcasters
    /// are needed from here on. Raise it only for versions that never existed (a type
    /// first published at version 2), never to drop a version still stored somewhere.
    const SCHEMA_VERSION_MIN: u32 = 1;
    /// One [`Upcast`] from each version in `SCHEMA_VERSION_MIN..SCHEMA_VERSION`, each
    /// turning a payload of its version into the next; none by default (no older
    /// versions). [`check_upcasts`](crate::upcast::check_upcasts) finds gaps.
    const UPCASTS: &'static [Upcast] = &[];
    /// The partition key: events with the same key are processed in order.
    fn key(&self) -> String;
}

/// Encodes typed events as JSON payloads.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonCodec;

impl JsonCodec {
    /// Wraps `event` in a new envelope occurring at `clock.now()`.
    pub fn encode<E: Event>(event: &E, clock: &dyn Clock) -> Result<Envelope, Error> {
        let payload = serde_json::to_vec(event).map_err(|e| {
            Error::permanent(format!("cannot encode {} as JSON", E::TYPE)).with_source(e)
        })?;
        Ok(Envelope::new(
            E::TYPE,
            E::SCHEMA_VERSION,
            event.key(),
            payload,
            clock.now(),
        ))
    }

    /// Reads the payload of `envelope` as `E`, upcasting an older schema version
    /// through [`Event::UPCASTS`]. Every failure is permanent; a version newer than
    /// `E::SCHEMA_VERSION` is refused, never read as an older one, with
    /// [`NewerSchema`](crate::upcast::NewerSchema) as the error's source.
    pub fn decode<E: Event>(envelope: &Envelope) -> Result<E, Error> {
        if envelope.event_type != E::TYPE {
            return Err(Error::permanent(format!(
                "expected event type {}, got {}",
                E::TYPE,
                envelope.event_type
            )));
        }
        let invalid = |e: serde_json::Error| {
            Error::permanent(format!(
                "payload of {} {} (schema version {}) is not valid JSON for its type",
                envelope.event_type, envelope.id, envelope.schema_version
            ))
            .with_source(e)
        };
        if envelope.schema_version == E::SCHEMA_VERSION {
            // The common case reads the bytes straight into `E`, with no detour
            // through a `Value`.
            return serde_json::from_slice(&envelope.payload).map_err(invalid);
        }
        let refused = |failure: UpcastFailure| match failure {
            UpcastFailure::Newer(newer) => {
                Error::permanent(format!("event {} not decoded", envelope.id)).with_source(newer)
            }
            other => Error::permanent(format!(
                "cannot upcast {} {} from schema version {}: {other}",
                envelope.event_type, envelope.id, envelope.schema_version
            )),
        };
        if envelope.schema_version > E::SCHEMA_VERSION {
            // Refused before the payload is even read: what it says is unknown here.
            return Err(refused(UpcastFailure::newer::<E>(envelope.schema_version)));
        }
        let payload = serde_json::from_slice(&envelope.payload).map_err(invalid)?;
        let payload = upcast::<E>(envelope.schema_version, payload).map_err(refused)?;
        serde_json::from_value(payload).map_err(invalid)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::{json, Value};

    use super::*;
    use crate::upcast::{check_upcasts, NewerSchema};
    use crate::{ErrorKind, ManualClock, OffsetDateTime};

    /// Version 3: v1 had `qty`, v2 renamed it `quantity`, v3 added a required `unit`.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Measured {
        id: String,
        quantity: i64,
        unit: String,
    }

    fn rename_qty(mut payload: Value) -> Result<Value, String> {
        let object = payload.as_object_mut().ok_or("not an object")?;
        let qty = object.remove("qty").ok_or("no qty")?;
        object.insert("quantity".to_owned(), qty);
        Ok(payload)
    }

    fn add_unit(mut payload: Value) -> Result<Value, String> {
        let object = payload.as_object_mut().ok_or("not an object")?;
        object.entry("unit").or_insert_with(|| json!("piece"));
        Ok(payload)
    }

    impl Event for Measured {
        const TYPE: &'static str = "test.Measured";
        const SCHEMA_VERSION: u32 = 3;
        const UPCASTS: &'static [Upcast] = &[Upcast::new(2, add_unit), Upcast::new(1, rename_qty)];
        fn key(&self) -> String {
            self.id.clone()
        }
    }

    fn envelope(version: u32, payload: Value) -> Envelope {
        Envelope::new(
            Measured::TYPE,
            version,
            "m-1",
            payload.to_string().into_bytes(),
            OffsetDateTime::UNIX_EPOCH,
        )
    }

    fn measured(unit: &str) -> Measured {
        Measured {
            id: "m-1".into(),
            quantity: 4,
            unit: unit.into(),
        }
    }

    #[test]
    fn older_versions_are_upcast_step_by_step() {
        let v1 = envelope(1, json!({"id": "m-1", "qty": 4}));
        assert_eq!(
            JsonCodec::decode::<Measured>(&v1).unwrap(),
            measured("piece")
        );
        let v2 = envelope(2, json!({"id": "m-1", "quantity": 4, "unit": "kg"}));
        assert_eq!(JsonCodec::decode::<Measured>(&v2).unwrap(), measured("kg"));
        let current = JsonCodec::encode(
            &measured("g"),
            &ManualClock::new(OffsetDateTime::UNIX_EPOCH),
        )
        .unwrap();
        assert_eq!(current.schema_version, 3);
        assert_eq!(
            JsonCodec::decode::<Measured>(&current).unwrap(),
            measured("g")
        );
    }

    #[test]
    fn a_newer_version_is_refused_not_read_as_an_older_one() {
        // It would decode as version 3 if its version were ignored.
        let v99 = envelope(99, json!({"id": "m-1", "quantity": 4, "unit": "kg"}));
        let error = JsonCodec::decode::<Measured>(&v99).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Permanent);
        assert_eq!(
            NewerSchema::find(&error),
            Some(&NewerSchema {
                event_type: "test.Measured".into(),
                version: 99,
                known: 3
            })
        );
        assert!(
            error.to_string().ends_with(
                "schema version 99 of test.Measured is newer than this consumer knows (3)"
            ),
            "{error}"
        );
    }

    #[test]
    fn a_version_older_than_the_oldest_or_an_upcaster_refusing_is_a_permanent_failure() {
        let v0 = envelope(0, json!({"id": "m-1", "quantity": 4, "unit": "kg"}));
        let error = JsonCodec::decode::<Measured>(&v0).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("versions before 1 never existed"),
            "{error}"
        );
        assert!(NewerSchema::find(&error).is_none());

        let bad_v1 = envelope(1, json!({"id": "m-1"}));
        let error = JsonCodec::decode::<Measured>(&bad_v1).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::Permanent);
        assert!(
            error
                .to_string()
                .contains("the upcaster from version 1 refused it: no qty"),
            "{error}"
        );
    }

    #[test]
    fn a_complete_chain_passes_the_check() {
        assert_eq!(check_upcasts::<Measured>(), Ok(()));
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct Gappy;

    impl Event for Gappy {
        const TYPE: &'static str = "test.Gappy";
        const SCHEMA_VERSION: u32 = 4;
        const UPCASTS: &'static [Upcast] = &[Upcast::new(2, add_unit), Upcast::new(4, add_unit)];
        fn key(&self) -> String {
            String::new()
        }
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct BornAtTwo;

    impl Event for BornAtTwo {
        const TYPE: &'static str = "test.BornAtTwo";
        const SCHEMA_VERSION: u32 = 2;
        const SCHEMA_VERSION_MIN: u32 = 2;
        fn key(&self) -> String {
            String::new()
        }
    }

    #[test]
    fn the_check_names_missing_and_misplaced_upcasters() {
        let gap = check_upcasts::<Gappy>().unwrap_err();
        assert_eq!(gap.missing_from, vec![1, 3]);
        assert_eq!(gap.misplaced_from, vec![4]);
        let text = gap.to_string();
        assert!(
            text.starts_with("test.Gappy (schema version 4, oldest 1):"),
            "{text}"
        );
        assert!(text.contains("no upcaster from version 1, 3"), "{text}");
    }

    #[test]
    fn versions_that_never_existed_need_no_upcaster() {
        assert_eq!(check_upcasts::<BornAtTwo>(), Ok(()));
        let v1 = Envelope::new(
            BornAtTwo::TYPE,
            1,
            "",
            b"null".to_vec(),
            OffsetDateTime::UNIX_EPOCH,
        );
        assert!(JsonCodec::decode::<BornAtTwo>(&v1).is_err());
    }
}
