//! [`supervise`]: a worker (a consumer, a relay) that ends with an error or panics
//! before shutdown is started again after a backoff, and [`Workers`] tells readiness
//! and metrics which workers are down and how often each was restarted.
//!
//! A consumer already survives fetch errors of every kind; what is left to end it early
//! is a failure to subscribe (the broker unreachable at start), a bug, or a panic.
//! Without supervision such a worker stays dead while the process looks healthy.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use eddy_core::{Backoff, Error};
use tokio_util::sync::CancellationToken;

/// The state of one supervised worker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerState {
    /// Running (false between a failure and its restart).
    pub up: bool,
    /// Times it was started again after ending early.
    pub restarts: u64,
    /// Why it ended the last time it ended early.
    pub last_error: Option<String>,
}

/// The supervised workers of a process. Cheap to clone; shared by the supervisors,
/// readiness and the metrics exporter.
#[derive(Debug, Clone, Default)]
pub struct Workers {
    inner: Arc<Mutex<BTreeMap<String, WorkerState>>>,
}

impl Workers {
    pub fn new() -> Self {
        Self::default()
    }

    fn states(&self) -> MutexGuard<'_, BTreeMap<String, WorkerState>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, name: &str, change: impl FnOnce(&mut WorkerState)) {
        change(self.states().entry(name.to_owned()).or_default());
    }

    /// Every worker's state, by name.
    pub fn snapshot(&self) -> BTreeMap<String, WorkerState> {
        self.states().clone()
    }

    /// The names of the workers that are down now.
    pub fn down(&self) -> Vec<String> {
        self.states()
            .iter()
            .filter(|(_, s)| !s.up)
            .map(|(name, _)| name.clone())
            .collect()
    }
}

/// How [`supervise`] waits between restarts.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    /// Backoff between restarts (between half and all of the ceiling), reset once a run lasted longer than its
    /// `max`. Default 100 ms up to 30 s.
    pub backoff: Backoff,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(30)),
        }
    }
}

/// Runs the worker `start` makes until `stop` is cancelled. Each run is its own task,
/// so a panic is caught like an error; a run that ends before `stop` — with an error,
/// a panic or even `Ok` — is logged, marked down in `workers`, and started again after
/// a jittered backoff. Returns when `stop` is cancelled and the current run has
/// returned (the worker gets `stop` too and drains on its own terms); the last run's
/// error, if it failed after `stop`.
///
/// Each run counts as up from its start. A worker that has to get somewhere first
/// before it works (a consumer's subscription) uses [`supervise_until_up`] instead.
pub async fn supervise<F, Fut>(
    name: String,
    workers: Workers,
    policy: RestartPolicy,
    stop: CancellationToken,
    mut start: F,
) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), Error>> + Send + 'static,
{
    supervise_until_up(name, workers, policy, stop, move |up: Up| {
        up.up();
        start()
    })
    .await
}

/// Tells the supervisor that the run it was handed to is up: working, not only started.
#[derive(Debug, Clone)]
pub struct Up {
    workers: Workers,
    name: String,
}

impl Up {
    /// Marks the run up (readiness counts it from now until it ends).
    pub fn up(&self) {
        self.workers.update(&self.name, |s| s.up = true);
    }
}

/// [`supervise`] for a worker that is down from each start until it calls [`Up::up`]:
/// a consumer whose subscription keeps failing (a broker that times out its requests)
/// is then down the whole time, not up while each try runs.
pub async fn supervise_until_up<F, Fut>(
    name: String,
    workers: Workers,
    policy: RestartPolicy,
    stop: CancellationToken,
    mut start: F,
) -> Result<(), Error>
where
    F: FnMut(Up) -> Fut,
    Fut: Future<Output = Result<(), Error>> + Send + 'static,
{
    let mut failures = 0u32;
    let up = Up {
        workers: workers.clone(),
        name: name.clone(),
    };
    loop {
        workers.update(&name, |s| s.up = false);
        let started = tokio::time::Instant::now();
        let ended = tokio::spawn(start(up.clone())).await;
        if stop.is_cancelled() {
            return match ended {
                Ok(result) => result,
                Err(join) => Err(Error::permanent(format!("{name} panicked")).with_source(join)),
            };
        }
        let why = match ended {
            Ok(Ok(())) => "it returned although nobody stopped it".to_owned(),
            Ok(Err(error)) => error.to_string(),
            Err(join) => format!("it panicked: {join}"),
        };
        if started.elapsed() > policy.backoff.max {
            failures = 0;
        }
        failures = failures.saturating_add(1);
        // Between half and all of the ceiling: never a tight restart loop.
        let pause = policy
            .backoff
            .jittered(failures, 0.5 + rand::random::<f64>() / 2.0);
        tracing::error!(worker = %name, error = %why, ?pause, failures, "worker ended early; restarting");
        workers.update(&name, |s| {
            s.up = false;
            s.restarts = s.restarts.saturating_add(1);
            s.last_error = Some(why);
        });
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast() -> RestartPolicy {
        RestartPolicy {
            backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(5)),
        }
    }

    #[tokio::test]
    async fn a_worker_that_fails_or_panics_is_started_again_until_it_runs() {
        let workers = Workers::new();
        let stop = CancellationToken::new();
        let runs = Arc::new(AtomicU32::new(0));
        let supervisor = tokio::spawn(supervise(
            "w".to_owned(),
            workers.clone(),
            fast(),
            stop.clone(),
            {
                let runs = runs.clone();
                let stop = stop.clone();
                move || {
                    let run = runs.fetch_add(1, Ordering::SeqCst);
                    let stop = stop.clone();
                    async move {
                        match run {
                            0 => Err(Error::permanent("cannot subscribe")),
                            1 => panic!("a bug"),
                            _ => {
                                stop.cancelled().await;
                                Ok(())
                            }
                        }
                    }
                }
            },
        ));
        while runs.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let state = workers.snapshot()["w"].clone();
        assert!(state.up, "running again");
        assert_eq!(state.restarts, 2);
        assert!(state.last_error.unwrap().contains("panicked"));
        stop.cancel();
        supervisor.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_worker_down_between_restarts_shows_as_down() {
        let workers = Workers::new();
        let stop = CancellationToken::new();
        let policy = RestartPolicy {
            backoff: Backoff::new(Duration::from_secs(3600), Duration::from_secs(3600)),
        };
        let supervisor = tokio::spawn(supervise(
            "relay".to_owned(),
            workers.clone(),
            policy,
            stop.clone(),
            || async { Err(Error::permanent("broken")) },
        ));
        while workers.down().is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(workers.down(), vec!["relay".to_owned()]);
        stop.cancel();
        supervisor.await.unwrap().unwrap();
    }
}
