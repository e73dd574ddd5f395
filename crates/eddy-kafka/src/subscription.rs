//! One member of a Kafka consumer group: a poll thread, a bounded hand-off buffer, and
//! the rebalance bookkeeping that lets revoked partitions go only once their finished
//! work is committed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use eddy_core::{transport, Delivery, Error, Message, Subscription, Undecodable};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::{ClientContext, Message as _, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::kafka_error;

/// How long one poll waits for a message.
const POLL_IDLE: Duration = Duration::from_millis(100);
/// How long the buffer may stay full before the partitions are paused.
const PAUSE_AFTER: Duration = Duration::from_secs(1);
/// How often a full buffer is checked for room.
const STALL_CHECK: Duration = Duration::from_millis(1);

/// What this member owns, shared by the poll thread (rebalance callbacks), `fetch` and
/// `commit`.
#[derive(Debug, Default)]
struct Ownership {
    /// Assigned partitions, each with the epoch of its current assignment. Messages are
    /// stamped with the epoch they were polled in; a message from an earlier epoch of
    /// its partition is stale (the partition went away since) and never handed out.
    epochs: HashMap<i32, u64>,
    last_epoch: u64,
    /// Bumped on every assignment change, so the poll thread re-applies a pause.
    generation: u64,
    /// Partitions being revoked: no longer handed out, still committable.
    revoking: HashSet<i32>,
    /// Per partition of the current epoch: the first offset handed out (commits never
    /// go below it), one past the last offset handed out, one past the last committed.
    floor: HashMap<i32, i64>,
    handed_out: HashMap<i32, i64>,
    committed: HashMap<i32, i64>,
    /// Set by `close`: a revocation then does not wait (the runtime has drained).
    closing: bool,
}

impl Ownership {
    fn outstanding(&self, partitions: &[i32]) -> Vec<i32> {
        partitions
            .iter()
            .copied()
            .filter(|p| {
                let handed = self.handed_out.get(p).copied().unwrap_or(-1);
                handed > self.committed.get(p).copied().unwrap_or(-1)
            })
            .collect()
    }

    fn forget(&mut self, partition: i32) {
        self.epochs.remove(&partition);
        self.revoking.remove(&partition);
        self.floor.remove(&partition);
        self.handed_out.remove(&partition);
        self.committed.remove(&partition);
    }
}

#[derive(Debug)]
struct Shared {
    topic: String,
    ownership: Mutex<Ownership>,
    /// Signalled when a commit lands (a revocation may be waiting for it).
    committed: Condvar,
    revocation_timeout: Duration,
    stop: AtomicBool,
}

impl Shared {
    fn ownership(&self) -> MutexGuard<'_, Ownership> {
        self.ownership.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn partitions_of(&self, list: &TopicPartitionList) -> Vec<i32> {
        list.elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect()
    }
}

/// The consumer context: rebalance callbacks run on the poll thread, inside `poll`.
struct Context {
    shared: Arc<Shared>,
}

impl ClientContext for Context {}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = rebalance else {
            return;
        };
        let partitions = self.shared.partitions_of(list);
        let mut own = self.shared.ownership();
        own.generation += 1;
        for p in &partitions {
            own.epochs.remove(p);
            own.revoking.insert(*p);
        }
        // Blocking here is the point: the partitions stay ours (and committable) until
        // the work already handed out on them is finished and committed.
        let deadline = Instant::now() + self.shared.revocation_timeout;
        loop {
            let outstanding = own.outstanding(&partitions);
            if outstanding.is_empty() {
                break;
            }
            let now = Instant::now();
            if own.closing || now >= deadline {
                tracing::warn!(
                    topic = %self.shared.topic,
                    partitions = ?outstanding,
                    "partitions revoked with work unfinished; the new owner will process it again"
                );
                break;
            }
            own = self
                .shared
                .committed
                .wait_timeout(own, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        for p in &partitions {
            own.forget(*p);
        }
        tracing::info!(topic = %self.shared.topic, ?partitions, "partitions revoked");
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let partitions = self.shared.partitions_of(list);
                let mut own = self.shared.ownership();
                own.generation += 1;
                for p in &partitions {
                    own.last_epoch += 1;
                    let epoch = own.last_epoch;
                    own.epochs.insert(*p, epoch);
                }
                tracing::info!(topic = %self.shared.topic, ?partitions, "partitions assigned");
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(error) => {
                tracing::warn!(topic = %self.shared.topic, %error, "rebalance failed");
            }
        }
    }
}

/// A polled message and the epoch of its partition when it was polled.
struct Polled {
    delivery: Delivery,
    epoch: u64,
}

/// One member of a consumer group on one topic.
pub struct KafkaSubscription {
    shared: Arc<Shared>,
    consumer: Arc<BaseConsumer<Context>>,
    buffer: tokio::sync::Mutex<mpsc::Receiver<Polled>>,
    poller: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl fmt::Debug for KafkaSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSubscription")
            .field("topic", &self.shared.topic)
            .finish_non_exhaustive()
    }
}

impl KafkaSubscription {
    pub(crate) fn start(
        config: ClientConfig,
        topic: &str,
        buffer_len: usize,
        revocation_timeout: Duration,
    ) -> Result<Self, Error> {
        let shared = Arc::new(Shared {
            topic: topic.to_owned(),
            ownership: Mutex::default(),
            committed: Condvar::new(),
            revocation_timeout,
            stop: AtomicBool::new(false),
        });
        let consumer: BaseConsumer<Context> = config
            .create_with_context(Context {
                shared: shared.clone(),
            })
            .map_err(|e| kafka_error("cannot create a consumer", e))?;
        consumer
            .subscribe(&[topic])
            .map_err(|e| kafka_error("cannot subscribe", e))?;
        let consumer = Arc::new(consumer);
        let (sender, receiver) = mpsc::channel(buffer_len.max(1));
        let poller = std::thread::Builder::new()
            .name(format!("eddy-kafka-{topic}"))
            .spawn({
                let consumer = consumer.clone();
                let shared = shared.clone();
                move || poll_loop(&consumer, &shared, &sender)
            })
            .map_err(|e| Error::transient("cannot start the poll thread").with_source(e))?;
        Ok(Self {
            shared,
            consumer,
            buffer: tokio::sync::Mutex::new(receiver),
            poller: Mutex::new(Some(poller)),
        })
    }

    /// Partitions this member is assigned now.
    pub fn assigned_partitions(&self) -> Vec<u32> {
        let mut partitions: Vec<u32> = self
            .shared
            .ownership()
            .epochs
            .keys()
            .filter_map(|p| u32::try_from(*p).ok())
            .collect();
        partitions.sort_unstable();
        partitions
    }

    /// How many times this member's assignment has changed (each revocation and each
    /// assignment counts one).
    pub fn assignment_changes(&self) -> u64 {
        self.shared.ownership().generation
    }

    fn stop_poller(&self) -> Option<std::thread::JoinHandle<()>> {
        self.shared.ownership().closing = true;
        self.shared.stop.store(true, Ordering::Release);
        self.poller.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl Drop for KafkaSubscription {
    fn drop(&mut self) {
        // Not joined: the thread leaves the group and ends on its own.
        drop(self.stop_poller());
    }
}

/// Polls until stopped, handing messages over without ever blocking on the buffer for
/// long. While the buffer is full the thread waits for room without polling (librdkafka
/// keeps its prefetched messages); once the runtime has taken nothing for
/// `PAUSE_AFTER`, the assigned partitions are paused and polling resumes — the member
/// stays in its group however long the stall — and they are resumed once the waiting
/// messages are handed over. (A pause drops librdkafka's prefetched messages and
/// fetches them again on resume, so it is kept for real stalls.)
fn poll_loop(consumer: &BaseConsumer<Context>, shared: &Shared, sender: &mpsc::Sender<Polled>) {
    let mut waiting: VecDeque<Polled> = VecDeque::new();
    // The assignment generation the pause was applied to, while paused.
    let mut paused: Option<u64> = None;
    let mut stalled_since: Option<Instant> = None;
    while !shared.stop.load(Ordering::Acquire) {
        while let Some(polled) = waiting.pop_front() {
            match sender.try_send(polled) {
                Ok(()) => stalled_since = None,
                Err(mpsc::error::TrySendError::Full(polled)) => {
                    waiting.push_front(polled);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return close(consumer),
            }
        }
        if waiting.is_empty() {
            stalled_since = None;
            if paused.take().is_some() {
                if let Err(error) = consumer.assignment().and_then(|a| consumer.resume(&a)) {
                    tracing::warn!(topic = %shared.topic, %error, "cannot resume partitions");
                }
            }
        } else {
            let since = *stalled_since.get_or_insert_with(Instant::now);
            if paused.is_none() && since.elapsed() < PAUSE_AFTER {
                std::thread::sleep(STALL_CHECK);
                continue;
            }
            let generation = shared.ownership().generation;
            if paused != Some(generation) {
                if let Err(error) = consumer.assignment().and_then(|a| consumer.pause(&a)) {
                    tracing::warn!(topic = %shared.topic, %error, "cannot pause partitions");
                }
                paused = Some(generation);
            }
        }
        match consumer.poll(POLL_IDLE) {
            None => {}
            Some(Ok(message)) => {
                let epoch = shared.ownership().epochs.get(&message.partition()).copied();
                // A message of a partition not (or no longer) assigned is stale.
                if let Some(epoch) = epoch {
                    waiting.push_back(Polled {
                        delivery: delivery(&message),
                        epoch,
                    });
                }
            }
            // Transport errors and the like: librdkafka recovers on its own.
            Some(Err(error)) => tracing::warn!(topic = %shared.topic, %error, "Kafka poll error"),
        }
    }
    close(consumer);
}

/// Leaves the group: serves the revocation (which does not wait while closing) until
/// librdkafka reports the consumer closed.
fn close(consumer: &BaseConsumer<Context>) {
    if let Err(error) = consumer.close_queue() {
        tracing::warn!(%error, "cannot close the Kafka consumer");
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !consumer.closed() && Instant::now() < deadline {
        drop(consumer.poll(POLL_IDLE));
    }
}

fn delivery(message: &BorrowedMessage<'_>) -> Delivery {
    let headers: Vec<(String, String)> = message
        .headers()
        .map(|h| {
            h.iter()
                .map(|header| {
                    (
                        header.key.to_owned(),
                        String::from_utf8_lossy(header.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let payload = message.payload().map(<[u8]>::to_vec).unwrap_or_default();
    let body = match transport::from_headers(
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        payload.clone(),
    ) {
        Ok(envelope) => Message::Event(envelope),
        Err(error) => Message::Undecodable(Undecodable {
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            headers,
            payload,
            error: error.to_string(),
        }),
    };
    Delivery {
        topic: message.topic().to_owned(),
        partition: u32::try_from(message.partition()).unwrap_or(0),
        offset: u64::try_from(message.offset()).unwrap_or(0),
        message: body,
    }
}

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn fetch(&self, max_len: usize) -> Result<Vec<Delivery>, Error> {
        let mut buffer = self.buffer.lock().await;
        loop {
            let Some(first) = buffer.recv().await else {
                return Err(Error::permanent(format!(
                    "the Kafka poll thread of {} has stopped",
                    self.shared.topic
                )));
            };
            let mut polled = vec![first];
            while polled.len() < max_len.max(1) {
                match buffer.try_recv() {
                    Ok(next) => polled.push(next),
                    Err(_) => break,
                }
            }
            let mut own = self.shared.ownership();
            let mut out = Vec::with_capacity(polled.len());
            for Polled { delivery, epoch } in polled {
                let partition = i32::try_from(delivery.partition).unwrap_or(i32::MAX);
                if own.epochs.get(&partition) != Some(&epoch) {
                    continue;
                }
                let offset = i64::try_from(delivery.offset).unwrap_or(i64::MAX);
                own.floor.entry(partition).or_insert(offset);
                let end = own.handed_out.entry(partition).or_insert(offset);
                *end = (*end).max(offset.saturating_add(1));
                out.push(delivery);
            }
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }

    async fn commit(&self, offsets: &[(u32, u64)]) -> Result<(), Error> {
        let mut list = TopicPartitionList::new();
        let mut positions = Vec::with_capacity(offsets.len());
        {
            let own = self.shared.ownership();
            for &(partition, next) in offsets {
                let partition = i32::try_from(partition).unwrap_or(i32::MAX);
                let next = i64::try_from(next).unwrap_or(i64::MAX);
                let ours = own.epochs.contains_key(&partition) || own.revoking.contains(&partition);
                if !ours {
                    // A revoked partition's position is its new owner's business.
                    tracing::debug!(topic = %self.shared.topic, partition, "not committing a partition this member no longer owns");
                    continue;
                }
                if own.floor.get(&partition).is_some_and(|floor| next < *floor) {
                    // Left over from an earlier assignment: never move a position back.
                    continue;
                }
                list.add_partition_offset(&self.shared.topic, partition, Offset::Offset(next))
                    .map_err(|e| kafka_error("bad offset", e))?;
                positions.push((partition, next));
            }
        }
        if positions.is_empty() {
            return Ok(());
        }
        let consumer = self.consumer.clone();
        // A synchronous commit blocks its thread until the broker answers.
        tokio::task::spawn_blocking(move || -> KafkaResult<()> {
            consumer.commit(&list, CommitMode::Sync)
        })
        .await
        .map_err(|e| Error::transient("commit task failed").with_source(e))?
        .map_err(|e| kafka_error("cannot commit offsets", e))?;
        let mut own = self.shared.ownership();
        for (partition, next) in positions {
            let committed = own.committed.entry(partition).or_insert(next);
            *committed = (*committed).max(next);
        }
        drop(own);
        self.shared.committed.notify_all();
        Ok(())
    }

    async fn close(&self) -> Result<(), Error> {
        let Some(poller) = self.stop_poller() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || poller.join())
            .await
            .map_err(|e| Error::transient("close task failed").with_source(e))?
            .map_err(|_| Error::permanent("the Kafka poll thread panicked"))
    }
}
