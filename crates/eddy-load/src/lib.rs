//! # eddy-load — the load generator of `shop demo` and the benchmark program
//!
//! [`drive`] sends requests for a while and measures them:
//!
//! - [`Pace::Closed`]: `in_flight_max` workers, each sending its next request as soon as
//!   the last one answered — the maximum a system sustains. Latency is measured from
//!   the send.
//! - [`Pace::Open`]: request *i* is due at `start + i / rate`, whatever the answers do,
//!   and its latency is measured from that due time, so a slow server cannot hide its
//!   queueing (no coordinated omission). At most `in_flight_max` are outstanding;
//!   beyond, requests wait — and their wait counts.
//!
//! What a request is, the caller says: a closure from the request's number to a future
//! of its [`Answer`]. Requests answered during the `warmup` are not counted.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// How requests are sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// As fast as answers come back.
    Closed,
    /// `rate` requests per second, on schedule.
    Open { rate: f64 },
}

/// A run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    pub pace: Pace,
    /// Requests outstanding at most (closed loop: the workers).
    pub in_flight_max: usize,
    /// Sent but not counted, before the measured `duration`.
    pub warmup: Duration,
    pub duration: Duration,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A success.
    Ok,
    /// Refused by the server for the request's own fault (a 4xx).
    Rejected,
    /// A 5xx, a transport error, a timeout.
    Failed,
}

/// The longest latency a histogram holds: two minutes, in microseconds.
pub const LATENCY_US_MAX: u64 = 120_000_000;

/// What a run measured. Latencies of every counted answer, in microseconds.
#[derive(Debug, Clone)]
pub struct Tally {
    pub latency_us: Histogram<u64>,
    pub ok: u64,
    pub rejected: u64,
    pub failed: u64,
    /// The measured time (the warmup excluded).
    pub elapsed: Duration,
}

impl Tally {
    fn empty() -> Self {
        Self {
            // Bounds are constants that `new_with_bounds` accepts.
            latency_us: Histogram::new_with_bounds(1, LATENCY_US_MAX, 3)
                .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!())),
            ok: 0,
            rejected: 0,
            failed: 0,
            elapsed: Duration::ZERO,
        }
    }

    fn count(&mut self, answer: Answer, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us
            .saturating_record(micros.clamp(1, LATENCY_US_MAX));
        match answer {
            Answer::Ok => self.ok += 1,
            Answer::Rejected => self.rejected += 1,
            Answer::Failed => self.failed += 1,
        }
    }

    fn add(&mut self, other: &Tally) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
        self.ok += other.ok;
        self.rejected += other.rejected;
        self.failed += other.failed;
    }

    /// Answers counted.
    pub fn requests(&self) -> u64 {
        self.ok + self.rejected + self.failed
    }

    /// Successes per second.
    pub fn ok_per_sec(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// A latency quantile in milliseconds.
    pub fn quantile_ms(&self, quantile: f64) -> f64 {
        self.latency_us.value_at_quantile(quantile) as f64 / 1000.0
    }
}

/// Sends requests made by `request` as `plan` says; `progress` is called now and then
/// with the time measured so far and the requests sent, and once more at the end with
/// the whole duration and every request sent.
pub async fn drive<F, Fut>(plan: Plan, request: F, progress: impl Fn(Duration, u64)) -> Tally
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Answer> + Send + 'static,
{
    let request = Arc::new(request);
    match plan.pace {
        Pace::Closed => closed(plan, request, progress).await,
        Pace::Open { rate } => open(plan, rate, request, progress).await,
    }
}

/// How often `progress` is told, at most.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

async fn closed<F, Fut>(plan: Plan, request: Arc<F>, progress: impl Fn(Duration, u64)) -> Tally
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Answer> + Send + 'static,
{
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::with_capacity(plan.in_flight_max.max(1));
    for _ in 0..plan.in_flight_max.max(1) {
        let (request, measuring, stop, sent) = (
            request.clone(),
            measuring.clone(),
            stop.clone(),
            sent.clone(),
        );
        // Each worker keeps its own tally: no lock per request.
        workers.push(tokio::spawn(async move {
            let mut tally = Tally::empty();
            while !stop.load(Ordering::Relaxed) {
                let number = sent.fetch_add(1, Ordering::Relaxed);
                let began = Instant::now();
                let answer = request(number).await;
                if measuring.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                    tally.count(answer, began.elapsed());
                }
            }
            tally
        }));
    }
    tokio::time::sleep(plan.warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    while started.elapsed() < plan.duration {
        let left = plan.duration.saturating_sub(started.elapsed());
        tokio::time::sleep(left.min(PROGRESS_EVERY)).await;
        progress(started.elapsed(), sent.load(Ordering::Relaxed));
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    // The last word: the whole duration and every request sent.
    progress(elapsed.max(plan.duration), sent.load(Ordering::Relaxed));
    let mut total = Tally::empty();
    for worker in workers {
        if let Ok(tally) = worker.await {
            total.add(&tally);
        }
    }
    total.elapsed = elapsed;
    total
}

async fn open<F, Fut>(
    plan: Plan,
    rate: f64,
    request: Arc<F>,
    progress: impl Fn(Duration, u64),
) -> Tally
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Answer> + Send + 'static,
{
    let rate = if rate.is_finite() && rate > 0.0 {
        rate
    } else {
        1.0
    };
    let total = Arc::new(Mutex::new(Tally::empty()));
    let permits = Arc::new(tokio::sync::Semaphore::new(plan.in_flight_max.max(1)));
    let start = Instant::now();
    let measured_from = start + plan.warmup;
    let end = plan.warmup + plan.duration;
    let mut tasks = tokio::task::JoinSet::new();
    let mut last_progress = start;
    let mut number: u64 = 0;
    loop {
        let due = start + Duration::from_secs_f64(number as f64 / rate);
        if due.duration_since(start) >= end {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (request, total) = (request.clone(), total.clone());
        let counted = due >= measured_from;
        tasks.spawn(async move {
            let _permit = permit;
            let answer = request(number).await;
            if counted {
                total
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .count(answer, due.elapsed());
            }
        });
        number += 1;
        while tasks.try_join_next().is_some() {}
        if last_progress.elapsed() >= PROGRESS_EVERY {
            last_progress = Instant::now();
            progress(start.elapsed().saturating_sub(plan.warmup), number);
        }
    }
    progress(plan.duration, number);
    while tasks.join_next().await.is_some() {}
    let mut tally = total.lock().unwrap_or_else(|p| p.into_inner()).clone();
    tally.elapsed = measured_from.elapsed();
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_open_loop_sends_on_schedule_and_counts_every_answer() {
        let plan = Plan {
            pace: Pace::Open { rate: 200.0 },
            in_flight_max: 16,
            warmup: Duration::ZERO,
            duration: Duration::from_millis(500),
        };
        let tally = drive(
            plan,
            |n| async move {
                match n % 10 {
                    0 => Answer::Rejected,
                    1 => Answer::Failed,
                    _ => Answer::Ok,
                }
            },
            |_, _| {},
        )
        .await;
        assert_eq!(tally.requests(), 100, "200/s for half a second");
        assert_eq!(tally.rejected, 10);
        assert_eq!(tally.failed, 10);
        assert_eq!(tally.latency_us.len(), 100);
    }

    #[tokio::test]
    async fn progress_ends_at_the_whole_duration_with_every_request_sent() {
        for pace in [Pace::Open { rate: 200.0 }, Pace::Closed] {
            let plan = Plan {
                pace,
                in_flight_max: 4,
                warmup: Duration::ZERO,
                duration: Duration::from_millis(600),
            };
            let last = std::sync::Mutex::new((Duration::ZERO, 0u64));
            let tally = drive(
                plan,
                |_| async {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Answer::Ok
                },
                |elapsed, sent| *last.lock().unwrap() = (elapsed, sent),
            )
            .await;
            let (elapsed, sent) = *last.lock().unwrap();
            assert!(
                elapsed >= plan.duration,
                "{pace:?}: the bar ended at {elapsed:?}"
            );
            assert!(
                sent >= tally.requests(),
                "{pace:?}: {sent} < {}",
                tally.requests()
            );
        }
    }

    #[tokio::test]
    async fn an_open_loop_counts_the_wait_of_a_request_held_back_by_the_bound() {
        // One in flight, each answer takes 50 ms, 100/s due: the queue grows, and the
        // latency measured from the due time shows it.
        let plan = Plan {
            pace: Pace::Open { rate: 100.0 },
            in_flight_max: 1,
            warmup: Duration::ZERO,
            duration: Duration::from_millis(200),
        };
        let tally = drive(
            plan,
            |_| async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Answer::Ok
            },
            |_, _| {},
        )
        .await;
        assert_eq!(tally.requests(), 20);
        assert!(tally.quantile_ms(1.0) > 500.0, "{}", tally.quantile_ms(1.0));
    }

    #[tokio::test]
    async fn a_closed_loop_keeps_its_workers_busy_and_skips_the_warmup() {
        let plan = Plan {
            pace: Pace::Closed,
            in_flight_max: 4,
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(300),
        };
        let tally = drive(
            plan,
            |_| async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Answer::Ok
            },
            |_, _| {},
        )
        .await;
        // 4 workers × ~30 answers each in 300 ms (the warmup's ~40 not counted).
        assert!((80..=125).contains(&tally.ok), "{}", tally.ok);
        assert!(tally.elapsed >= Duration::from_millis(300));
    }
}
