//! [`Db`]: one pool over SQLite or PostgreSQL, and [`Tx`], its transactions.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eddy_core::Error;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyConnection, AnyPool, Executor, Transaction};
use tokio_util::sync::CancellationToken;

use crate::classify;
use crate::signal::{spawn_pg_listener, Notifier, SignalReceiver, Signals};

/// Which database a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// SQLite's `synchronous` pragma in WAL mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqliteSynchronous {
    /// fsync at every commit: a committed transaction survives a power loss.
    Full,
    /// fsync at checkpoints only: survives a process crash (`kill -9`), may lose the
    /// last transactions on power loss. SQLite's recommended setting for WAL.
    Normal,
}

/// How to open a [`Db`]. Every field has a documented default.
#[derive(Debug, Clone)]
pub struct DbConfig {
    /// `sqlite://path/to/file.db` or `postgres://user@host:port/db`.
    pub url: String,
    /// Upper bound of pooled connections. Default 8: size it to the database, not to
    /// request concurrency; SQLite has one writer however many connections there are.
    pub max_connections: u32,
    /// How long a caller waits for a pooled connection. Default 10 s.
    pub acquire_timeout: Duration,
    /// How long SQLite waits for the write lock before reporting busy. Default 10 s.
    pub sqlite_busy_timeout: Duration,
    /// Default [`SqliteSynchronous::Full`]: a committed event is never lost.
    pub sqlite_synchronous: SqliteSynchronous,
}

impl DbConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 8,
            acquire_timeout: Duration::from_secs(10),
            sqlite_busy_timeout: Duration::from_secs(10),
            sqlite_synchronous: SqliteSynchronous::Full,
        }
    }

    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max;
        self
    }

    pub fn sqlite_synchronous(mut self, synchronous: SqliteSynchronous) -> Self {
        self.sqlite_synchronous = synchronous;
        self
    }
}

/// A pool of connections to the service's database. Cheap to clone.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    pool: AnyPool,
    backend: Backend,
    url: String,
    signals: Signals,
    listeners: Mutex<Vec<String>>,
    notifier: Option<Arc<Notifier>>,
    stop: Arc<CancellationToken>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db")
            .field("backend", &self.inner.backend)
            .finish_non_exhaustive()
    }
}

impl Db {
    /// Opens a pool. SQLite files are created if missing and put in WAL mode.
    pub async fn connect(config: &DbConfig) -> Result<Self, Error> {
        sqlx::any::install_default_drivers();
        let backend = if config.url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if config.url.starts_with("postgres:") || config.url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(Error::permanent(format!(
                "database url must start with sqlite: or postgres:, got {:?}",
                redact(&config.url)
            )));
        };
        let url = match backend {
            Backend::Sqlite if !config.url.contains("mode=") => {
                let separator = if config.url.contains('?') { '&' } else { '?' };
                format!("{}{separator}mode=rwc", config.url)
            }
            _ => config.url.clone(),
        };
        let options = AnyConnectOptions::from_str(&url)
            .map_err(|e| classify(format!("invalid database url {:?}", redact(&url)), e))?;
        let synchronous = match config.sqlite_synchronous {
            SqliteSynchronous::Full => "FULL",
            SqliteSynchronous::Normal => "NORMAL",
        };
        let busy_ms = config.sqlite_busy_timeout.as_millis();
        let pool = AnyPoolOptions::new()
            .max_connections(config.max_connections.max(1))
            .acquire_timeout(config.acquire_timeout)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // busy_timeout first: switching to WAL itself needs the lock.
                        conn.execute(format!("PRAGMA busy_timeout = {busy_ms}").as_str())
                            .await?;
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute(format!("PRAGMA synchronous = {synchronous}").as_str())
                            .await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(|e| classify(format!("cannot connect to {}", redact(&url)), e))?;
        let stop = Arc::new(CancellationToken::new());
        let notifier = (backend == Backend::Postgres)
            .then(|| Notifier::spawn(pool.clone(), stop.child_token()));
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                backend,
                url,
                signals: Signals::default(),
                listeners: Mutex::new(Vec::new()),
                notifier,
                stop,
            }),
        })
    }

    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// The pool, for queries outside a transaction.
    pub fn pool(&self) -> &AnyPool {
        &self.inner.pool
    }

    /// Begins a write transaction. On SQLite this is `BEGIN IMMEDIATE`: it takes the
    /// write lock up front, so a transaction that reads before it writes never fails
    /// with a busy-snapshot error when another connection committed in between.
    ///
    /// The `BEGIN` runs on a task of its own, so a caller cancelled mid-begin (an HTTP
    /// client that hung up, a timeout) cannot leave the pooled connection inside a
    /// transaction: sqlx 0.8 mishandles a `begin_with` whose future is dropped after the
    /// server ran it (the next dropped transaction on that connection is then never
    /// rolled back, and the connection holds SQLite's write lock for good).
    pub async fn begin(&self) -> Result<Tx, Error> {
        let pool = self.inner.pool.clone();
        let backend = self.inner.backend;
        let tx = tokio::spawn(async move {
            match backend {
                Backend::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await,
                Backend::Postgres => pool.begin().await,
            }
        })
        .await
        .map_err(|e| Error::transient("the task beginning a transaction failed").with_source(e))?
        .map_err(|e| classify("cannot begin a transaction", e))?;
        Ok(Tx {
            tx,
            db: self.clone(),
            signals: Vec::new(),
            after_commit: Vec::new(),
        })
    }

    /// Waits for commits signalled on `channel` (see [`Tx::signal_on_commit`]).
    pub fn subscribe_signal(&self, channel: &str) -> SignalReceiver {
        let (sender, _) = self.inner.signals.sender(channel);
        let mut receiver = sender.subscribe();
        receiver.mark_unchanged();
        if self.inner.backend == Backend::Postgres {
            let mut listening = self
                .inner
                .listeners
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if !listening.iter().any(|c| c == channel) {
                listening.push(channel.to_owned());
                spawn_pg_listener(
                    self.inner.url.clone(),
                    channel.to_owned(),
                    sender,
                    self.inner.stop.child_token(),
                );
            }
        }
        SignalReceiver {
            receiver,
            _listener: Some(self.inner.stop.clone()),
        }
    }

    /// Wakes in-process waiters on `channel` (for writes made outside a [`Tx`]).
    pub fn signal(&self, channel: &str) {
        self.inner.signals.bump(channel);
    }

    /// Closes the pool and stops the listeners.
    pub async fn close(&self) {
        self.inner.stop.cancel();
        self.inner.pool.close().await;
    }
}

/// A write transaction on a [`Db`]. Dropped without [`Tx::commit`], it rolls back.
pub struct Tx {
    tx: Transaction<'static, Any>,
    db: Db,
    signals: Vec<String>,
    after_commit: Vec<AfterCommit>,
}

/// Work to run once a transaction has committed (see [`Tx::after_commit`]).
pub type AfterCommit = Box<dyn FnOnce() -> futures::future::BoxFuture<'static, ()> + Send>;

impl fmt::Debug for Tx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tx")
            .field("backend", &self.db.backend())
            .field("signals", &self.signals)
            .field("after_commit", &self.after_commit.len())
            .finish_non_exhaustive()
    }
}

impl Tx {
    /// The connection to run queries on: `query.execute(tx.conn())`.
    pub fn conn(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }

    pub fn backend(&self) -> Backend {
        self.db.backend()
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Wakes the waiters of `channel` if, and only if, this transaction commits: at
    /// once in this process, and through `NOTIFY` in other processes on PostgreSQL
    /// (sent just after the commit; see [`crate::signal`] for why not inside it).
    pub async fn signal_on_commit(&mut self, channel: &str) -> Result<(), Error> {
        if self.signals.iter().any(|c| c == channel) {
            return Ok(());
        }
        self.signals.push(channel.to_owned());
        Ok(())
    }

    /// Runs `work` after this transaction commits, and never if it does not (rolled
    /// back, dropped, or its commit failed) — for effects outside the database that must
    /// follow the data, such as invalidating a cache entry: done before the commit, a
    /// reader could load and cache the old row in between. [`Tx::commit`] awaits the
    /// hooks in the order they were added.
    pub fn after_commit<F>(&mut self, work: F)
    where
        F: FnOnce() -> futures::future::BoxFuture<'static, ()> + Send + 'static,
    {
        self.after_commit.push(Box::new(work));
    }

    /// Commits. Like `BEGIN`, the `COMMIT` runs on a task of its own, so cancelling the
    /// caller cannot leave the connection between the two; the signals and the
    /// [`Tx::after_commit`] hooks run on that task too, so a caller that gives up after
    /// the commit was sent (a request timeout, a client gone) cannot skip them.
    pub async fn commit(self) -> Result<(), Error> {
        let Tx {
            tx,
            db,
            signals,
            after_commit,
        } = self;
        tokio::spawn(async move {
            tx.commit()
                .await
                .map_err(|e| classify("cannot commit", e))?;
            for channel in &signals {
                db.inner.signals.bump(channel);
            }
            if let Some(notifier) = &db.inner.notifier {
                notifier.request(&signals);
            }
            for work in after_commit {
                work().await;
            }
            Ok(())
        })
        .await
        .map_err(|e| Error::transient("the task committing a transaction failed").with_source(e))?
    }

    pub async fn rollback(self) -> Result<(), Error> {
        self.tx
            .rollback()
            .await
            .map_err(|e| classify("cannot roll back", e))
    }
}

/// Hides a password in a database url before it is printed.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme_end + 3],
                    &credentials[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("postgres://app:secret@db:5432/shop"),
            "postgres://app:***@db:5432/shop"
        );
        assert_eq!(redact("postgres://app@db/shop"), "postgres://app@db/shop");
        assert_eq!(redact("sqlite://data/shop.db"), "sqlite://data/shop.db");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod after_commit {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::{Db, DbConfig};

    #[tokio::test]
    async fn hooks_run_after_a_commit_and_never_after_a_rollback_or_a_drop() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let db = Db::connect(&DbConfig::new(url)).await.unwrap();
        let ran = Arc::new(AtomicU32::new(0));
        let hook = |ran: &Arc<AtomicU32>, n: u32| {
            let ran = ran.clone();
            move || -> futures::future::BoxFuture<'static, ()> {
                Box::pin(async move {
                    ran.fetch_add(n, Ordering::SeqCst);
                })
            }
        };
        let mut tx = db.begin().await.unwrap();
        tx.after_commit(hook(&ran, 1));
        tx.rollback().await.unwrap();
        let mut tx = db.begin().await.unwrap();
        tx.after_commit(hook(&ran, 10));
        drop(tx);
        assert_eq!(ran.load(Ordering::SeqCst), 0);
        let mut tx = db.begin().await.unwrap();
        tx.after_commit(hook(&ran, 100));
        tx.after_commit(hook(&ran, 1000));
        tx.commit().await.unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 1100);

        // A caller that gives up once the commit is under way does not skip the hooks.
        let mut tx = db.begin().await.unwrap();
        tx.after_commit(hook(&ran, 10_000));
        let mut commit = Box::pin(tx.commit());
        assert!(
            futures::poll!(commit.as_mut()).is_pending(),
            "the commit is under way"
        );
        drop(commit); // the caller gives up
        for _ in 0..200 {
            if ran.load(Ordering::SeqCst) == 11_100 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(ran.load(Ordering::SeqCst), 11_100);
    }
}
