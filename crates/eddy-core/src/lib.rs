//! # eddy-core — the vocabulary every Eddy crate speaks
//!
//! This crate defines *what* moves through an event-driven system and the small
//! interfaces that move it. It deliberately knows no database driver, broker client
//! or web framework: adapters (`eddy-log`, `eddy-outbox`, `eddy-kafka`, `eddy-nats`) and
//! middleware (`eddy-runtime`) depend on it, never the other way round.
//!
//! Layout:
//!
//! - [`envelope`] — [`Envelope`]: the event id (UUIDv7), type, schema version,
//!   occurred-at time, correlation and causation ids, partition key, headers and the
//!   encoded payload; [`Headers`] with the reserved keys for deadlines and trace context.
//! - [`event`] — the [`Event`] trait for typed events and the JSON codec that turns
//!   them into envelopes and back.
//! - [`upcast`] — older schema versions: [`Upcast`] steps an [`Event`] declares, the
//!   start-up check for gaps, and [`NewerSchema`], the refusal of a version too new.
//! - [`transport`] — how an envelope maps onto a broker's "headers + bytes" message,
//!   shared by every adapter that has no columns of its own.
//! - [`broker`] — [`Publisher`], [`Subscriber`] and [`Subscription`]: the two small
//!   interfaces (after Watermill) that every broker adapter implements.
//! - [`handler`] — [`Handler`] for typed handlers, and [`HandlerError`] whose
//!   [`ErrorKind`] tells the runtime what to do (transient → retry, permanent → dead letter).
//! - [`clock`] — [`Clock`] so tests control time.
//! - [`backoff`] — [`Backoff`], the one exponential full-jitter formula of every retry.
//! - [`error`] — [`Error`], the one error type of broker operations.

pub mod backoff;
pub mod broker;
pub mod clock;
pub mod envelope;
pub mod error;
pub mod event;
pub mod handler;
pub mod transport;
pub mod upcast;

pub use backoff::Backoff;
pub use broker::{
    Delivery, Message, PartitionSample, Publisher, Subscriber, Subscription, Undecodable,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use envelope::{Envelope, EventId, Headers};
pub use error::{Error, ErrorKind};
pub use event::{Event, JsonCodec};
pub use handler::{Handler, HandlerError};
pub use upcast::{check_upcasts, NewerSchema, Upcast, UpcastGap};

/// Re-exported so implementors of the async traits use the same macro version.
pub use async_trait::async_trait;
pub use time::OffsetDateTime;
