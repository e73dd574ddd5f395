//! Per-key scheduling: a key's messages run one after another, different keys at once.
//!
//! [`KeyQueues`] holds, for every key with a running task, the messages waiting behind
//! it. The first message of an idle key starts a task ([`KeyQueues::enqueue`] hands it
//! back); the task takes the next message when it finishes one ([`KeyQueues::next`]) and
//! ends when the queue is empty. A message that is abandoned takes the rest of its key
//! with it ([`KeyQueues::abandon`]): uncommitted, they all come back in order.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use eddy_core::Message;

use crate::consumer::{process, Outcome, Shared, Work};

/// Waiting work per busy key.
#[derive(Debug)]
pub struct KeyQueues<W> {
    keys: Mutex<HashMap<String, VecDeque<W>>>,
}

impl<W> Default for KeyQueues<W> {
    fn default() -> Self {
        Self {
            keys: Mutex::new(HashMap::new()),
        }
    }
}

impl<W> KeyQueues<W> {
    fn keys(&self) -> MutexGuard<'_, HashMap<String, VecDeque<W>>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `work` behind `key`'s running task; if the key is idle it becomes busy
    /// and `work` comes back: the caller starts the key's task with it.
    pub fn enqueue(&self, key: &str, work: W) -> Option<W> {
        let mut keys = self.keys();
        if let Some(queue) = keys.get_mut(key) {
            queue.push_back(work);
            return None;
        }
        keys.insert(key.to_owned(), VecDeque::new());
        Some(work)
    }

    /// The next work of `key`, or `None` — and then the key is idle again.
    pub fn next(&self, key: &str) -> Option<W> {
        let mut keys = self.keys();
        let next = keys.get_mut(key).and_then(VecDeque::pop_front);
        if next.is_none() {
            keys.remove(key);
        }
        next
    }

    /// Drops everything waiting behind `key` and makes it idle.
    pub fn abandon(&self, key: &str) {
        self.keys().remove(key);
    }

    /// Keys with a running task.
    pub fn busy_len(&self) -> usize {
        self.keys().len()
    }
}

/// Queues `work` behind its key, starting a task for the key if it has none.
pub(crate) fn schedule(shared: &Arc<Shared>, work: Work) {
    let key = match &work.delivery.message {
        Message::Event(envelope) => envelope.key.clone(),
        Message::Undecodable(raw) => raw.key.clone().unwrap_or_default(),
    };
    if let Some(first) = shared.keys.enqueue(&key, work) {
        tokio::spawn(run_key(shared.clone(), key, first));
    }
}

/// Processes a key's messages one after another until its queue is empty.
async fn run_key(shared: Arc<Shared>, key: String, first: Work) {
    let mut work = first;
    loop {
        match process(&shared, &work.delivery).await {
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
        assert_eq!(queues.enqueue("a", 1), Some(1), "a was idle");
        assert_eq!(queues.enqueue("a", 2), None);
        assert_eq!(
            queues.enqueue("b", 10),
            Some(10),
            "another key runs at once"
        );
        assert_eq!(queues.enqueue("a", 3), None);
        assert_eq!(queues.next("a"), Some(2));
        assert_eq!(queues.next("a"), Some(3));
        assert_eq!(queues.next("a"), None);
        assert_eq!(queues.busy_len(), 1, "a is idle again, b still busy");
        assert_eq!(queues.enqueue("a", 4), Some(4), "an idle key starts again");
    }

    #[test]
    fn abandoning_a_key_drops_what_waits_behind_it() {
        let queues = KeyQueues::default();
        queues.enqueue("a", 1);
        queues.enqueue("a", 2);
        queues.abandon("a");
        assert_eq!(queues.busy_len(), 0);
        assert_eq!(queues.enqueue("a", 3), Some(3));
    }
}
