//! # eddy-nats — NATS JetStream as an Eddy broker
//!
//! Topics map onto JetStream:
//!
//! - **a stream per topic** (`<stream_prefix>_<topic>`, with invalid characters replaced
//!   by `_`), bound to the subject `<subject_prefix>.<topic>`; dead letters of topic `t`
//!   go to topic `t.dlq`, a stream of its own (JetStream by itself only emits advisories);
//! - **a durable pull consumer per consumer group**, explicit acks: members of one group
//!   share its messages, groups each see all of them;
//! - the envelope travels as NATS headers (`eddy_core::transport`), and the event id is
//!   also sent as `Nats-Msg-Id`, so JetStream drops a re-published duplicate within the
//!   stream's duplicate window.
//!
//! Commits: [`eddy_core::Subscription::commit`] speaks offsets, JetStream acks single
//! messages. The offset of a delivery is its stream sequence (partition 0), and a commit
//! up to `n` acks every held message below `n` — the runtime's gap-aware commits make that
//! exactly "every message processed".
//!
//! Fetching: each member keeps a continuous pull open (async-nats' pull stream): it asks
//! for `pull_batch` messages and asks again when half of them have arrived, so messages
//! are already in the client when the runtime fetches. What a member holds is bounded by
//! `pull_batch` and `pull_max_bytes`; JetStream counts those messages as delivered and
//! unacked, and `max_ack_pending` bounds the whole group.
//!
//! Redelivery and backoff: the runtime retries in-process with full-jitter backoff, so
//! this adapter never NAKs a failing message (a bare NAK redelivers at once and burns
//! through `max_deliver` in milliseconds). A message is redelivered by JetStream only when
//! its member dies or leaves without acking: after `ack_wait`, or about `pull_expires`
//! after the member closes. A closing member NAKs what it holds and what its open pull
//! already brought, with a delay just past `pull_expires`: its last pull request stays
//! open at the server until it expires, and a message redelivered into it would wait out
//! the whole `ack_wait` (seen with nats-server 2.9: the first message handed back went
//! there, `a_closed_member_leaves_nothing_behind_for_ack_wait` shows it).
//!
//! Lag: [`Nats::lag`] counts what a group has not acknowledged; [`Nats::partition_samples`]
//! (module `lag`) gives the lag monitor a group's committed, end and oldest unconsumed
//! sequences and the times of both.
//!
//! Ordering — what JetStream guarantees, precisely:
//!
//! - one member receives a stream in order, and the runtime keeps per-key order from
//!   there, retries included (they happen in-process, the key waits);
//! - a message JetStream delivers *again* — handed back by a closing member, or after
//!   `ack_wait` when a member died — comes after the newer messages delivered
//!   meanwhile: per-key order does not survive a hand-back or a crash (the conformance
//!   case `handback_after_close` shows it: `key-0 went from 9 to 0`; the embedded log
//!   and Kafka keep it, since a partition moves whole to its next owner);
//! - several members of one group split the stream without regard to keys (a JetStream
//!   work queue), so two messages of one key may be handled at once by two members.
//!
//! So on NATS handlers must not depend on per-key order: make them commutative or
//! guard them by a version (the shop's are: stock changes are deltas or versioned,
//! the catalog copy keeps the newest by event time, and inventory remembers an order
//! cancelled before its placement arrived — `shop/tests/reordering.rs`).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, AckKind};
use async_trait::async_trait;
use eddy_core::{
    transport, Delivery, Envelope, Error, Message, Publisher, Subscriber, Subscription, Undecodable,
};
use futures::{FutureExt, StreamExt};
use tokio_util::sync::CancellationToken;

mod lag;

/// How long closing a member waits for messages already on their way to it, to hand them
/// back at once rather than after `ack_wait`.
const CLOSE_DRAIN_MAX: Duration = Duration::from_millis(50);

/// Beyond a pull request's expiry, so that the server has dropped a closed member's last
/// request before the messages it handed back are delivered again.
const HANDBACK_MARGIN: Duration = Duration::from_millis(200);

/// Settings of the adapter. Every field has a documented default.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// Default `nats://127.0.0.1:4222`.
    pub url: String,
    /// Stream names are `<stream_prefix>_<topic>`. Default `EDDY`.
    pub stream_prefix: String,
    /// Subjects are `<subject_prefix>.<topic>`. Default `eddy`.
    pub subject_prefix: String,
    /// How long JetStream waits for an ack before redelivering to another member. Longer
    /// than the runtime's slowest retry sequence, or a message still being retried is
    /// delivered twice. Default 60 s.
    pub ack_wait: Duration,
    /// Messages a group may hold unacked (JetStream's `max_ack_pending`). Default 10,000.
    pub max_ack_pending: i64,
    /// Messages a member asks for in one pull request; it asks again when half have
    /// arrived, so it holds at most about one and a half times this many unfetched.
    /// Default 256.
    pub pull_batch: usize,
    /// Bytes a member asks for in one pull request (0: no byte limit). Must exceed the
    /// server's `max_payload` (1 MiB unless changed), or a larger message is never
    /// delivered. Default 16 MiB.
    pub pull_max_bytes: usize,
    /// How long one pull request stays open at the server before the member renews it
    /// (an idle member sends one request per period). A closing member cannot withdraw
    /// its open request, and the server may still hand it a message until it expires;
    /// so what a closing member hands back becomes available again after this period
    /// (plus a margin), not at once. Periods of 10 s and more also get idle heartbeats
    /// (every tenth, at most every 5 s). Default 5 s: a shorter period cost latency in
    /// the S5 benchmark (p99 1.7–3 ms against 1.6–1.8 ms at 1,000 msg/s on nats-server 2.9).
    pub pull_expires: Duration,
    /// Messages older than this are removed from streams. Default 7 days.
    pub max_age: Duration,
    /// Re-publishes of one event id within this window are dropped. Default 2 min.
    pub duplicate_window: Duration,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".to_owned(),
            stream_prefix: "EDDY".to_owned(),
            subject_prefix: "eddy".to_owned(),
            ack_wait: Duration::from_secs(60),
            max_ack_pending: 10_000,
            pull_batch: 256,
            pull_max_bytes: 16 << 20,
            pull_expires: Duration::from_secs(5),
            max_age: Duration::from_secs(7 * 24 * 3600),
            duplicate_window: Duration::from_secs(120),
        }
    }
}

/// A connection to NATS JetStream. Cheap to clone.
#[derive(Clone)]
pub struct Nats {
    client: async_nats::Client,
    js: jetstream::Context,
    config: Arc<NatsConfig>,
    streams: Arc<Mutex<HashSet<String>>>,
}

impl fmt::Debug for Nats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Nats")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A transient error with its cause kept (`Error`'s text still reads "context: cause").
fn transient(
    context: &str,
    error: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
) -> Error {
    Error::transient(context).with_source(error)
}

impl Nats {
    pub async fn connect(config: NatsConfig) -> Result<Self, Error> {
        let client = async_nats::connect(&config.url)
            .await
            .map_err(|e| transient(&format!("cannot connect to NATS at {}", config.url), e))?;
        Ok(Self {
            js: jetstream::new(client.clone()),
            client,
            config: Arc::new(config),
            streams: Arc::default(),
        })
    }

    /// Whether the connection to the server is up (for readiness checks).
    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    pub fn stream_name(&self, topic: &str) -> String {
        let clean: String = topic
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("{}_{clean}", self.config.stream_prefix)
    }

    pub fn subject(&self, topic: &str) -> String {
        format!("{}.{topic}", self.config.subject_prefix)
    }

    /// Creates the topic's stream if it does not exist.
    pub async fn ensure_topic(&self, topic: &str) -> Result<jetstream::stream::Stream, Error> {
        let name = self.stream_name(topic);
        let stream = self
            .js
            .get_or_create_stream(jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![self.subject(topic)],
                max_age: self.config.max_age,
                duplicate_window: self.config.duplicate_window,
                ..Default::default()
            })
            .await
            .map_err(|e| transient(&format!("cannot create stream {name}"), e))?;
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name);
        Ok(stream)
    }

    /// Deletes the topic's stream and everything in it.
    pub async fn delete_topic(&self, topic: &str) -> Result<(), Error> {
        let name = self.stream_name(topic);
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&name);
        match self.js.delete_stream(&name).await {
            Ok(_) => Ok(()),
            Err(error) if error.to_string().contains("not found") => Ok(()),
            Err(error) => Err(transient(&format!("cannot delete stream {name}"), error)),
        }
    }

    /// Messages of `topic` that `group` has not acknowledged: those not yet delivered
    /// to it plus those delivered and awaiting an ack.
    pub async fn lag(&self, group: &str, topic: &str) -> Result<u64, Error> {
        let name = self.stream_name(topic);
        let stream = self
            .js
            .get_stream(&name)
            .await
            .map_err(|e| transient(&format!("cannot find stream {name}"), e))?;
        let info = stream
            .consumer_info(group)
            .await
            .map_err(|e| transient(&format!("cannot read consumer {group}"), e))?;
        Ok(info.num_pending + info.num_ack_pending as u64)
    }

    fn known(&self, topic: &str) -> bool {
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&self.stream_name(topic))
    }
}

#[async_trait]
impl Publisher for Nats {
    fn system(&self) -> &'static str {
        "nats"
    }

    async fn publish(&self, topic: &str, events: &[Envelope]) -> Result<(), Error> {
        if !self.known(topic) {
            self.ensure_topic(topic).await?;
        }
        let subject = self.subject(topic);
        // A message over the server's limit is refused whenever it is sent: say so
        // before sending any of the batch, as a permanent error naming the event.
        let max_payload = self.client.server_info().max_payload;
        let mut messages = Vec::with_capacity(events.len());
        for envelope in events {
            let mut headers = async_nats::HeaderMap::new();
            let mut header_len = 0;
            for (name, value) in transport::to_headers(envelope) {
                header_len += name.len() + value.len() + 4;
                headers.insert(name.as_str(), value.as_str());
            }
            headers.insert("Nats-Msg-Id", envelope.id.to_string().as_str());
            let len = envelope.payload.len() + header_len;
            if max_payload > 0 && len > max_payload {
                return Err(Error::permanent(format!(
                    "event {} is about {len} bytes with its headers, over the NATS server's max_payload of {max_payload}",
                    envelope.id
                )));
            }
            messages.push((envelope, headers));
        }
        // Send all, then await the acks: pipelined, and still in order per subject.
        let mut acks = Vec::with_capacity(events.len());
        for (envelope, headers) in messages {
            let ack = self
                .js
                .publish_with_headers(subject.clone(), headers, envelope.payload.clone().into())
                .await
                .map_err(|e| transient("cannot publish to JetStream", e))?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await
                .map_err(|e| transient("JetStream did not acknowledge a publish", e))?;
        }
        Ok(())
    }
}

#[async_trait]
impl Subscriber for Nats {
    fn system(&self) -> &'static str {
        "nats"
    }

    async fn subscribe(&self, topic: &str, group: &str) -> Result<Box<dyn Subscription>, Error> {
        // The group is the durable consumer's name, a token of JetStream's API subject:
        // a `.` would split it, and the request would wait for a reply that never comes.
        if group.is_empty()
            || group
                .chars()
                .any(|c| matches!(c, '.' | '*' | '>') || c.is_whitespace())
        {
            return Err(Error::permanent(format!(
                "consumer group {group:?} cannot name a JetStream consumer: it must be non-empty, without '.', '*', '>' or white space"
            )));
        }
        let stream = self.ensure_topic(topic).await?;
        let consumer: jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(
                group,
                pull::Config {
                    durable_name: Some(group.to_owned()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: self.config.ack_wait,
                    max_ack_pending: self.config.max_ack_pending,
                    deliver_policy: jetstream::consumer::DeliverPolicy::All,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| transient(&format!("cannot create consumer {group}"), e))?;
        let expires = self.config.pull_expires.max(Duration::from_millis(100));
        let messages = consumer
            .stream()
            .max_messages_per_batch(self.config.pull_batch.max(1))
            .max_bytes_per_batch(self.config.pull_max_bytes)
            .expires(expires)
            .heartbeat(if expires >= Duration::from_secs(10) {
                (expires / 10).min(Duration::from_secs(5))
            } else {
                Duration::ZERO
            })
            .messages()
            .await
            .map_err(|e| transient(&format!("cannot start pulling for {group}"), e))?;
        Ok(Box::new(NatsSubscription {
            topic: topic.to_owned(),
            pull_batch: self.config.pull_batch.max(1),
            handback_delay: expires + HANDBACK_MARGIN,
            closing: CancellationToken::new(),
            messages: tokio::sync::Mutex::new(Some(messages)),
            held: Mutex::new(BTreeMap::new()),
        }))
    }
}

/// One member of a group: its open pull and the messages it holds unacked.
pub struct NatsSubscription {
    topic: String,
    pull_batch: usize,
    /// NAK delay of what a closing member hands back: past the life of its last pull.
    handback_delay: Duration,
    /// Cancelled by `close`, so that a fetch waiting on an idle stream lets go of it.
    closing: CancellationToken,
    /// `None` once closed.
    messages: tokio::sync::Mutex<Option<pull::Stream>>,
    held: Mutex<BTreeMap<u64, jetstream::Message>>,
}

impl fmt::Debug for NatsSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSubscription")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl NatsSubscription {
    fn deliver(&self, message: jetstream::Message) -> Result<Delivery, Error> {
        let sequence = message
            .info()
            .map_err(|e| transient("message without JetStream info", e))?
            .stream_sequence;
        let headers: Vec<(String, String)> = message
            .headers
            .iter()
            .flat_map(|map| map.iter())
            .filter_map(|(name, values)| {
                values
                    .first()
                    .map(|v| (name.to_string(), v.as_str().to_owned()))
            })
            // JetStream's own headers (`Nats-Msg-Id`, …) are transport, not the event's.
            .filter(|(name, _)| !name.starts_with("Nats-"))
            .collect();
        let payload = message.payload.to_vec();
        let decoded = transport::from_headers(
            headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            payload.clone(),
        );
        let body = match decoded {
            Ok(envelope) => Message::Event(envelope),
            Err(error) => Message::Undecodable(Undecodable {
                key: headers
                    .iter()
                    .find(|(k, _)| k == transport::KEY)
                    .map(|(_, v)| v.clone()),
                headers,
                payload,
                error: error.to_string(),
            }),
        };
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sequence, message);
        Ok(Delivery {
            topic: self.topic.clone(),
            partition: 0,
            offset: sequence,
            message: body,
        })
    }
}

/// What the open pull yields next: a message, or `None` for a hiccup that is not the
/// caller's concern (a missed idle heartbeat: the pull is renewed by itself).
fn pulled(
    item: Option<Result<jetstream::Message, pull::MessagesError>>,
) -> Result<Option<jetstream::Message>, Error> {
    match item {
        Some(Ok(message)) => Ok(Some(message)),
        Some(Err(error)) if error.kind() == pull::MessagesErrorKind::MissingHeartbeat => {
            tracing::debug!(%error, "JetStream pull: no heartbeat; renewing");
            Ok(None)
        }
        Some(Err(error)) => Err(transient("pull from JetStream failed", error)),
        None => Err(Error::transient("the JetStream pull ended")),
    }
}

/// Acks every message (sequence and message) with `ack`, all of them whatever fails;
/// returns the ones that failed, with why, in order.
async fn ack_each<M, E, F, Fut>(messages: Vec<(u64, M)>, ack: F) -> Vec<((u64, M), E)>
where
    F: Fn(M) -> Fut,
    Fut: std::future::Future<Output = Result<M, (M, E)>>,
{
    let mut failed = Vec::new();
    for (sequence, message) in messages {
        if let Err((message, error)) = ack(message).await {
            failed.push(((sequence, message), error));
        }
    }
    failed
}

#[async_trait]
impl Subscription for NatsSubscription {
    async fn fetch(&self, max_len: usize) -> Result<Vec<Delivery>, Error> {
        let max_len = max_len.max(1);
        let mut guard = self.messages.lock().await;
        let Some(messages) = guard.as_mut() else {
            return Err(Error::permanent("fetch on a closed subscription"));
        };
        // Wait for the first message (cancel-safe: nothing is taken until it is held)…
        let first = loop {
            let item = tokio::select! {
                biased;
                _ = self.closing.cancelled() => return Err(Error::permanent("the subscription was closed")),
                item = messages.next() => item,
            };
            if let Some(message) = pulled(item)? {
                break message;
            }
        };
        let mut out = vec![self.deliver(first)?];
        // …then take what has already arrived, without waiting. An error here must not
        // lose what is already held: those messages go to the caller now (an error
        // returned instead would leave them held but never handled, and the next
        // commit past them would ack them unprocessed). The error comes back on the
        // next fetch if it persists; a message that failed to deliver is not held, so
        // JetStream gives it again after `ack_wait`.
        while out.len() < max_len {
            let Some(item) = messages.next().now_or_never() else {
                break;
            };
            match pulled(item).and_then(|m| m.map(|m| self.deliver(m)).transpose()) {
                Ok(Some(delivery)) => out.push(delivery),
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%error, "JetStream pull failed mid-batch; handing over what arrived");
                    break;
                }
            }
        }
        Ok(out)
    }

    async fn commit(&self, offsets: &[(u32, u64)]) -> Result<(), Error> {
        let mut done = Vec::new();
        {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            for &(_, next) in offsets {
                let keep = held.split_off(&next);
                done.extend(std::mem::replace(&mut *held, keep));
            }
        }
        let failed = ack_each(done, |message| async move {
            let acked = message.ack().await;
            match acked {
                Ok(()) => Ok(message),
                Err(error) => Err((message, error)),
            }
        })
        .await;
        // Every ack is tried; the ones that failed are held again, so the commit the
        // runtime retries acks them (instead of leaving them to `ack_wait`).
        let Some((_, first)) = failed.first() else {
            return Ok(());
        };
        let error = Error::transient(format!(
            "{} of the acks failed; the first: {first}",
            failed.len()
        ));
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        for (sequence, message) in failed.into_iter().map(|(m, _)| m) {
            held.insert(sequence, message);
        }
        Err(error)
    }

    async fn close(&self) -> Result<(), Error> {
        // Stop pulling, and take back what the open pull already brought: a bounded
        // drain (the pull asks for more as it empties, so an endless stream never ends).
        self.closing.cancel();
        let mut brought = Vec::new();
        if let Some(mut messages) = self.messages.lock().await.take() {
            let until = tokio::time::Instant::now() + CLOSE_DRAIN_MAX;
            while brought.len() < self.pull_batch * 2 {
                match tokio::time::timeout_at(until, messages.next()).await {
                    Ok(Some(Ok(message))) => brought.push(message),
                    _ => break,
                }
            }
        }
        let held: Vec<jetstream::Message> =
            std::mem::take(&mut *self.held.lock().unwrap_or_else(|p| p.into_inner()))
                .into_values()
                .chain(brought)
                .collect();
        for message in held {
            // Hand unfinished messages to the next member now rather than after ack_wait.
            let _ = message
                .ack_with(AckKind::Nak(Some(self.handback_delay)))
                .await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::ack_each;

    #[tokio::test]
    async fn one_failed_ack_does_not_leave_the_rest_unacked() {
        let acked = std::sync::Mutex::new(Vec::new());
        let failed = ack_each(vec![(1, "a"), (2, "b"), (3, "c")], |m| {
            let acked = &acked;
            async move {
                if m == "b" {
                    Err((m, "connection reset"))
                } else {
                    acked.lock().unwrap().push(m);
                    Ok(m)
                }
            }
        })
        .await;
        assert_eq!(
            *acked.lock().unwrap(),
            ["a", "c"],
            "the ones after it were acked"
        );
        assert_eq!(
            failed,
            [((2, "b"), "connection reset")],
            "and the failed one comes back"
        );
    }
}
