//! Commit signals: wake waiters (the relay, log consumers) the moment rows commit.
//!
//! Each named channel is a counter in a `tokio::sync::watch`. A [`crate::Tx`] that
//! asked for a channel bumps it right after its commit. On PostgreSQL a listener task
//! per channel bumps the counter when a notification from another process arrives, and
//! a notifier task sends those notifications.
//!
//! Why the notifier sends `NOTIFY` after the commit rather than inside the transaction:
//! PostgreSQL serialises the commits of notifying transactions on one global lock, which
//! halved the throughput of concurrent appends in our benchmark (3.1K → 6K tx/s without
//! it). After a commit the notifier is asked to notify; it sends one `pg_notify` per
//! channel for all the commits that asked since its last send, so a waiter in another
//! process hears of every commit (each commit happens before a notification sent after
//! it) at the cost of one round trip of latency, and business commits never take the
//! lock. If the process dies between its commit and the notification, the waiters'
//! fallback poll finds the rows.
//! Waiters must still poll slowly as a fallback: a notification can be lost while a
//! listener reconnects, and SQLite has no cross-process signal at all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The registry of channels of one [`crate::Db`].
#[derive(Debug, Default)]
pub(crate) struct Signals {
    channels: Mutex<HashMap<String, Arc<watch::Sender<u64>>>>,
}

impl Signals {
    /// The sender of `channel` and whether it was just created.
    pub(crate) fn sender(&self, channel: &str) -> (Arc<watch::Sender<u64>>, bool) {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(sender) = channels.get(channel) {
            return (sender.clone(), false);
        }
        let sender = Arc::new(watch::channel(0).0);
        channels.insert(channel.to_owned(), sender.clone());
        (sender, true)
    }

    pub(crate) fn bump(&self, channel: &str) {
        self.sender(channel)
            .0
            .send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Waits for commits on one channel.
#[derive(Debug)]
pub struct SignalReceiver {
    pub(crate) receiver: watch::Receiver<u64>,
    pub(crate) _listener: Option<Arc<CancellationToken>>,
}

impl SignalReceiver {
    /// Resolves when a commit was signalled since the last call (or since creation).
    pub async fn changed(&mut self) {
        if self.receiver.changed().await.is_err() {
            // The sender lives as long as the Db; if it is gone, never wake.
            std::future::pending::<()>().await;
        }
    }
}

/// Sends `NOTIFY` for commits, coalescing those that arrive while a send is running.
#[derive(Debug)]
pub(crate) struct Notifier {
    pending: Mutex<Vec<String>>,
    wake: tokio::sync::Notify,
}

impl Notifier {
    pub(crate) fn spawn(pool: sqlx::AnyPool, stop: CancellationToken) -> Arc<Self> {
        let notifier = Arc::new(Self {
            pending: Mutex::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
        });
        let me = notifier.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = me.wake.notified() => {}
                }
                let channels = std::mem::take(
                    &mut *me
                        .pending
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner()),
                );
                for channel in channels {
                    let sent = sqlx::query("SELECT pg_notify($1, '')")
                        .bind(&channel)
                        .execute(&pool)
                        .await;
                    if let Err(error) = sent {
                        // Waiters fall back to polling; nothing is lost, only later.
                        tracing::debug!(%channel, %error, "cannot send NOTIFY");
                    }
                }
            }
        });
        notifier
    }

    /// Asks for a notification on each of `channels`.
    pub(crate) fn request(&self, channels: &[String]) {
        if channels.is_empty() {
            return;
        }
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for channel in channels {
            if !pending.contains(channel) {
                pending.push(channel.clone());
            }
        }
        drop(pending);
        // Stores a permit if the task is busy: it loops once more.
        self.wake.notify_one();
    }
}

/// Spawns a task that turns PostgreSQL notifications on `channel` into bumps.
pub(crate) fn spawn_pg_listener(
    url: String,
    channel: String,
    sender: Arc<watch::Sender<u64>>,
    stop: CancellationToken,
) {
    tokio::spawn(async move {
        let mut backoff = std::time::Duration::from_millis(100);
        loop {
            let connected = async {
                let mut listener = sqlx::postgres::PgListener::connect(&url).await?;
                listener.listen(&channel).await?;
                Ok::<_, sqlx::Error>(listener)
            };
            let mut listener = tokio::select! {
                _ = stop.cancelled() => return,
                result = connected => match result {
                    Ok(listener) => listener,
                    Err(error) => {
                        tracing::warn!(%channel, %error, "cannot LISTEN; retrying");
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                        continue;
                    }
                }
            };
            backoff = std::time::Duration::from_millis(100);
            // Anything may have committed while we were not listening.
            sender.send_modify(|n| *n = n.wrapping_add(1));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    received = listener.try_recv() => match received {
                        Ok(Some(_)) => sender.send_modify(|n| *n = n.wrapping_add(1)),
                        // The connection dropped; PgListener reconnects on the next call.
                        Ok(None) => sender.send_modify(|n| *n = n.wrapping_add(1)),
                        Err(error) => {
                            tracing::warn!(%channel, %error, "LISTEN connection failed; reconnecting");
                            break;
                        }
                    }
                }
            }
        }
    });
}
