//! The two small interfaces every broker adapter implements: [`Publisher`] and
//! [`Subscriber`] (with its [`Subscription`]).
//!
//! Semantics every adapter must honour (the conformance suite in `eddy-testkit` checks them):
//!
//! - `publish` returns `Ok` only once every event is durably accepted by the broker;
//! - delivery is at least once: a message whose offset was not committed is delivered
//!   again to the next member of the group that owns its partition;
//! - events with the same key land in the same partition and arrive in publish order;
//! - every consumer group receives every message; members of one group share them.

use async_trait::async_trait;

use crate::{Envelope, Error, OffsetDateTime};

/// Sends events to a topic.
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Publishes `events` in order. `Ok` means all of them are durably accepted; on
    /// `Err` any prefix of them may have been accepted (callers retry the whole batch,
    /// and consumers deduplicate by event id).
    async fn publish(&self, topic: &str, events: &[Envelope]) -> Result<(), Error>;

    /// The broker's name in traces (`messaging.system`): `kafka`, `nats`, `eddy_log`.
    fn system(&self) -> &'static str {
        "unknown"
    }
}

/// Opens subscriptions to a topic as a member of a consumer group.
#[async_trait]
pub trait Subscriber: Send + Sync + 'static {
    async fn subscribe(&self, topic: &str, group: &str) -> Result<Box<dyn Subscription>, Error>;

    /// The broker's name in traces (`messaging.system`), as [`Publisher::system`].
    fn system(&self) -> &'static str {
        "unknown"
    }
}

/// One member's view of a topic: fetch messages, commit what has been processed.
#[async_trait]
pub trait Subscription: Send + Sync + 'static {
    /// Waits until at least one message is available and returns at most `max_len`.
    /// Dropping the returned future before it completes loses no message.
    async fn fetch(&self, max_len: usize) -> Result<Vec<Delivery>, Error>;

    /// Records that every message of each `(partition, next_offset)` pair with an offset
    /// below `next_offset` is processed, so it is not delivered to the group again.
    async fn commit(&self, offsets: &[(u32, u64)]) -> Result<(), Error>;

    /// Leaves the group, handing the partitions to other members. Uncommitted messages
    /// will be delivered again.
    async fn close(&self) -> Result<(), Error>;
}

/// A message as it arrives from a broker, with its position.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub topic: String,
    pub partition: u32,
    pub offset: u64,
    pub message: Message,
}

/// What a delivery carries: an envelope, or bytes that could not be read as one.
#[derive(Debug, Clone)]
pub enum Message {
    Event(Envelope),
    /// A poison message: the runtime dead-letters it without calling a handler.
    Undecodable(Undecodable),
}

/// A message whose metadata could not be read as an [`Envelope`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Undecodable {
    pub key: Option<String>,
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
    pub error: String,
}

/// One partition as a broker sees it at one moment, for one consumer group: what each
/// adapter tells the lag monitor (`eddy_telemetry::PartitionProbe`; docs/lag.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSample {
    pub partition: u32,
    /// The next offset the broker will write (Kafka's high watermark, NATS's last
    /// sequence + 1).
    pub end_offset: u64,
    /// The group's committed position (the next offset it will read); `None` when it
    /// never committed on this partition.
    pub committed_offset: Option<u64>,
    /// When the group last committed on this partition, if the broker tells. It is what
    /// separates STALLED (commits arrive but do not move the offset) from STOPPED (no
    /// commit during the window); without it, an offset that never moved counts as no
    /// commit. See `docs/lag.md`.
    pub committed_at: Option<OffsetDateTime>,
    /// The oldest record the group has still to consume that the broker still keeps:
    /// the committed offset, or the oldest kept one when the group never committed or
    /// retention went past it; `end_offset` when nothing is left to consume. The lag
    /// in messages is `end_offset - oldest_unconsumed_offset` (Kafka's count).
    pub oldest_unconsumed_offset: u64,
    /// When the broker stored the record at `oldest_unconsumed_offset`; `None` when
    /// there is none (caught up) or the broker could not say.
    pub oldest_unconsumed_at: Option<OffsetDateTime>,
}

impl PartitionSample {
    /// Records not yet consumed.
    pub fn lag_messages(&self) -> u64 {
        self.end_offset
            .saturating_sub(self.oldest_unconsumed_offset.min(self.end_offset))
    }
}
