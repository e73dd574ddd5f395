//! Commit signals: wake waiters (the relay, log consumers) the moment rows commit.
//!
//! Each named channel is a counter in a `tokio::sync::watch`. A [`crate::Tx`] that
//! asked for a channel bumps it right after its commit; on PostgreSQL it also sends
//! `NOTIFY` inside the transaction (delivered only if it commits), and a listener task
//! per channel bumps the counter when a notification from another process arrives.
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
