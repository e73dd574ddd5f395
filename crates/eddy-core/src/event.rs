//! Typed events and the JSON codec between them and [`Envelope`]s.

use serde::de::DeserializeOwned;
use serde::Serialize;

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
    /// Bump when the payload's shape changes; consumers upcast older versions.
    const SCHEMA_VERSION: u32 = 1;
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

    /// Reads the payload of `envelope` as `E`. A mismatch is a permanent error.
    pub fn decode<E: Event>(envelope: &Envelope) -> Result<E, Error> {
        if envelope.event_type != E::TYPE {
            return Err(Error::permanent(format!(
                "expected event type {}, got {}",
                E::TYPE,
                envelope.event_type
            )));
        }
        serde_json::from_slice(&envelope.payload).map_err(|e| {
            Error::permanent(format!(
                "payload of {} {} is not valid JSON for its type",
                envelope.event_type, envelope.id
            ))
            .with_source(e)
        })
    }
}
