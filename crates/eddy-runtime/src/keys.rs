//! Per-key scheduling: a key's messages run one after another, different keys at once.
//!
//! [`KeyQueues`] holds, for every key with a running task, the messages waiting behind
//! it. The first message of an idle key starts a task ([`KeyQueues::enqueue`] hands it
//! back); the task takes the next message when it finishes one ([`KeyQueues::next`]) and
//! ends when the queue is empty. A message that is abandoned takes the rest of its key
//! with it ([`KeyQueues::abandon`]), and the key takes no new work for the rest of the
//! consumer's life (abandoning happens only at shutdown): uncommitted, they all come
//! back in order.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use eddy_core::{Delivery, Message};
use tracing::Instrument;

use crate::consumer::{process, Outcome, Shared, Work};

/// Waiting work per busy key.
#[derive(Debug)]
pub struct KeyQueues<W> {
    state: Mutex<Queues<W>>,
}

#[derive(Debug)]
struct Queues<W> {
    busy: HashMap<String, VecDeque<W>>,
    /// Keys whose message was let go uncommitted: none of their later messages may
    /// start in this consumer's life, or it would overtake the one let go.
    abandoned: HashSet<String>,
}

/// Where [`KeyQueues::enqueue`] put the work.
#[derive(Debug, PartialEq, Eq)]
pub enum Enqueued<W> {
    /// The key was idle: the caller starts its task with this work.
    Start(W),
    /// Queued behind the key's running task.
    Queued,
    /// The key was abandoned: the work is refused and comes back, so the caller drops
    /// it uncommitted (it is delivered again, after the message let go).
    Refused(W),
}

impl<W> Default for KeyQueues<W> {
    fn default() -> Self {
        Self {
            state: Mutex::new(Queues {
                busy: HashMap::new(),
                abandoned: HashSet::new(),
            }),
        }
    }
}

impl<W> KeyQueues<W> {
    fn state(&self) -> MutexGuard<'_, Queues<W>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `work` behind `key`'s running task, starts the key if it is idle, or
    /// refuses it if the key was abandoned.
    pub fn enqueue(&self, key: &str, work: W) -> Enqueued<W> {
        let mut state = self.state();
        if state.abandoned.contains(key) {
            return Enqueued::Refused(work);
        }
        if let Some(queue) = state.busy.get_mut(key) {
            queue.push_back(work);
            return Enqueued::Queued;
        }
        state.busy.insert(key.to_owned(), VecDeque::new());
        Enqueued::Start(work)
    }

    /// The next work of `key`, or `None` — and then the key is idle again.
    pub fn next(&self, key: &str) -> Option<W> {
        let mut state = self.state();
        let next = state.busy.get_mut(key).and_then(VecDeque::pop_front);
        if next.is_none() {
            state.busy.remove(key);
        }
        next
    }

    /// Drops everything waiting behind `key` and refuses its later work: abandoning
    /// happens only when the consumer stops, and what it refuses comes back in order.
    pub fn abandon(&self, key: &str) {
        let mut state = self.state();
        state.busy.remove(key);
        state.abandoned.insert(key.to_owned());
    }

    /// Keys with a running task.
    pub fn busy_len(&self) -> usize {
        self.state().busy.len()
    }
}

/// Queues `work` behind its key, starting a task for the key if it has none.
pub(crate) fn schedule(shared: &Arc<Shared>, work: Work) {
    let key = match &work.delivery.message {
        Message::Event(envelope) => envelope.key.clone(),
        Message::Undecodable(raw) => raw.key.clone().unwrap_or_default(),
    };
    match shared.keys.enqueue(&key, work) {
        Enqueued::Start(first) => {
            tokio::spawn(run_key(shared.clone(), key, first));
        }
        Enqueued::Queued => {}
        // Dropped uncommitted (its permit freed): delivered again after the message
        // of its key that was let go.
        Enqueued::Refused(_) => {}
    }
}

/// The span `delivery` is processed in (see [`eddy_trace::process_span`]): the event's
/// headers now carry its context, so what the handler causes is its child. Bytes that
/// are no envelope carry no context of their own.
fn process_span(shared: &Shared, delivery: &mut Delivery) -> tracing::Span {
    match &mut delivery.message {
        Message::Event(envelope) => eddy_trace::process_span(
            shared.system,
            &delivery.topic,
            &shared.group,
            delivery.partition,
            delivery.offset,
            envelope,
        ),
        Message::Undecodable(_) => tracing::info_span!(
            "process",
            otel.name = %format_args!("process {}", delivery.topic),
            otel.kind = "consumer",
            messaging.system = shared.system,
            messaging.destination.name = %delivery.topic,
            messaging.consumer.group.name = %shared.group,
            messaging.destination.partition.id = delivery.partition,
            messaging.kafka.offset = delivery.offset,
        ),
    }
}

/// Processes a key's messages one after another until its queue is empty.
async fn run_key(shared: Arc<Shared>, key: String, first: Work) {
    let mut work = first;
    loop {
        let span = process_span(&shared, &mut work.delivery);
        match process(&shared, &work.delivery).instrument(span).await {
            Outcome::Finished => {
                shared
                    .tracker()
                    .finished(work.delivery.partition, work.delivery.offset);
                match shared.keys.next(&key) {
                    Some(next) => work = next,
                    None => return,
                }
            }
            Outcome::Abandoned => {
                // Later messages of this key must not overtake the abandoned one.
                shared.keys.abandon(&key);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_work_of_an_idle_key_starts_its_task_and_the_rest_wait_in_order() {
        let queues = KeyQueues::default();
        assert_eq!(queues.enqueue("a", 1), Enqueued::Start(1), "a was idle");
        assert_eq!(queues.enqueue("a", 2), Enqueued::Queued);
        assert_eq!(
            queues.enqueue("b", 10),
            Enqueued::Start(10),
            "another key runs at once"
        );
        assert_eq!(queues.enqueue("a", 3), Enqueued::Queued);
        assert_eq!(queues.next("a"), Some(2));
        assert_eq!(queues.next("a"), Some(3));
        assert_eq!(queues.next("a"), None);
        assert_eq!(queues.busy_len(), 1, "a is idle again, b still busy");
        assert_eq!(
            queues.enqueue("a", 4),
            Enqueued::Start(4),
            "an idle key starts again"
        );
    }

    #[test]
    fn abandoning_a_key_drops_what_waits_behind_it() {
        let queues = KeyQueues::default();
        queues.enqueue("a", 1);
        queues.enqueue("a", 2);
        queues.enqueue("b", 1);
        queues.abandon("a");
        assert_eq!(queues.busy_len(), 1);
        assert_eq!(queues.next("b"), None, "other keys are untouched");
    }

    /// At shutdown the fetcher may still dispatch a batch it held: a later message of
    /// a key let go must not start a fresh task and overtake it.
    #[test]
    fn a_key_let_go_at_shutdown_takes_no_later_message() {
        let queues = KeyQueues::default();
        queues.enqueue("a", 1);
        queues.abandon("a");
        assert_eq!(queues.enqueue("a", 2), Enqueued::Refused(2));
        assert_eq!(queues.busy_len(), 0);
        assert_eq!(queues.enqueue("b", 1), Enqueued::Start(1));
    }
}
