//! Dead letters: the original message, plus why and where it failed, in headers.
//!
//! A dead letter keeps the original event's type, key, payload and headers; its own id
//! is derived from the original id and the consumer group, with the original id in the
//! `eddy-dlq-original-id` header (a redrive restores it, so idempotent handlers
//! recognise the event if it had an effect). Its own id, because brokers deduplicate by
//! id: on NATS the same event dead-lettered by two groups kept only one copy inside the
//! duplicate window. Derived, not random, so the same group dead-lettering the same
//! event twice (redelivered after a crash) is still deduplicated.

use eddy_core::{
    Delivery, Envelope, ErrorKind, EventId, HandlerError, Message, NewerSchema, OffsetDateTime,
};

pub const ERROR: &str = "eddy-dlq-error";
pub const ERROR_KIND: &str = "eddy-dlq-error-kind";
pub const ATTEMPTS: &str = "eddy-dlq-attempts";
pub const ORIGIN_TOPIC: &str = "eddy-dlq-origin-topic";
pub const ORIGIN_PARTITION: &str = "eddy-dlq-origin-partition";
pub const ORIGIN_OFFSET: &str = "eddy-dlq-origin-offset";
pub const CONSUMER_GROUP: &str = "eddy-dlq-consumer-group";
pub const FIRST_FAILURE_AT: &str = "eddy-dlq-first-failure-at";
pub const LAST_FAILURE_AT: &str = "eddy-dlq-last-failure-at";
/// The id of the event that failed (the dead letter has its own).
pub const ORIGINAL_ID: &str = "eddy-dlq-original-id";
/// Header of a redriven event: how many times it has been redriven (set by the
/// dead-letter store's redrive, `eddy-dlq`).
pub const REDRIVE_COUNT: &str = "eddy-redrive-count";
/// Event type given to messages that could not be read as an envelope at all.
pub const UNDECODABLE_TYPE: &str = "eddy.Undecodable";

/// The [`ERROR_KIND`] of an event whose schema version is newer than the consumer's
/// type knows: permanent for this consumer, but not poison — a consumer upgraded to
/// the new version can take it (redrive it then).
pub const KIND_NEWER_SCHEMA: &str = "newer-schema";

/// The [`ERROR_KIND`] of a dead letter: [`KIND_NEWER_SCHEMA`] when `error` is the refusal
/// of a newer schema version, otherwise `kind` (`permanent`, `transient`).
pub fn failure_kind(error: &HandlerError, kind: ErrorKind) -> String {
    if NewerSchema::find(error).is_some() {
        KIND_NEWER_SCHEMA.to_owned()
    } else {
        kind.to_string()
    }
}

/// Longest error text kept; errors can carry whole payloads.
pub const ERROR_LEN_MAX: usize = 4096;

/// What went wrong with one message.
#[derive(Debug, Clone)]
pub struct Failure {
    pub error: String,
    pub kind: String,
    pub attempts: u32,
    pub first_at: OffsetDateTime,
    pub last_at: OffsetDateTime,
}

/// The dead letter for `delivery`.
pub fn dead_letter(delivery: &Delivery, group: &str, failure: &Failure) -> Envelope {
    let mut envelope = match &delivery.message {
        Message::Event(envelope) => envelope.clone(),
        Message::Undecodable(raw) => {
            let mut envelope = Envelope::new(
                UNDECODABLE_TYPE,
                1,
                raw.key.clone().unwrap_or_default(),
                raw.payload.clone(),
                failure.first_at,
            );
            for (name, value) in &raw.headers {
                envelope
                    .headers
                    .insert(format!("eddy-dlq-raw-{name}"), value.clone());
            }
            envelope
        }
    };
    let mut error = failure.error.clone();
    if error.len() > ERROR_LEN_MAX {
        let mut cut = ERROR_LEN_MAX;
        while !error.is_char_boundary(cut) {
            cut -= 1;
        }
        error.truncate(cut);
    }
    let original = envelope.id;
    // A redriven event that fails again is a new letter (the first one is resolved):
    // its redrive count is part of the name.
    let name = match envelope.headers.get(REDRIVE_COUNT) {
        Some(count) => format!("{group}\u{0}{count}"),
        None => group.to_owned(),
    };
    envelope.id = EventId::from_uuid(uuid::Uuid::new_v5(&original.as_uuid(), name.as_bytes()));
    let headers = &mut envelope.headers;
    headers.insert(ORIGINAL_ID, original.to_string());
    headers.insert(ERROR, error);
    headers.insert(ERROR_KIND, failure.kind.clone());
    headers.insert(ATTEMPTS, failure.attempts.to_string());
    headers.insert(ORIGIN_TOPIC, delivery.topic.clone());
    headers.insert(ORIGIN_PARTITION, delivery.partition.to_string());
    headers.insert(ORIGIN_OFFSET, delivery.offset.to_string());
    headers.insert(CONSUMER_GROUP, group);
    headers.insert(FIRST_FAILURE_AT, timestamp(failure.first_at));
    headers.insert(LAST_FAILURE_AT, timestamp(failure.last_at));
    envelope
}

/// RFC 3339, or — for a moment RFC 3339 cannot write (a year beyond 9999, from a clock
/// gone wrong) — Unix seconds, so the header says when rather than nothing.
fn timestamp(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.unix_timestamp().to_string())
}
