//! Our load generator: a closed loop for maximum throughput and an open loop at a fixed
//! rate that measures each request from its intended send time (no coordinated
//! omission). Latencies go into HDR histograms.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// One request the generator repeats.
#[derive(Debug, Clone)]
pub enum Request {
    Get(String),
    Post(String, Arc<Vec<u8>>),
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
}

fn client(connections: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .timeout(Duration::from_secs(30))
        .build()?)
}

async fn send(client: &reqwest::Client, request: &Request) -> bool {
    let sent = match request {
        Request::Get(url) => client.get(url).send().await,
        Request::Post(url, body) => {
            client
                .post(url)
                .header("content-type", "application/json")
                .body(body.as_ref().clone())
                .send()
                .await
        }
    };
    match sent {
        Ok(response) => {
            let ok = response.status().is_success();
            // Read the body: the server's work includes writing it.
            ok && response.bytes().await.is_ok()
        }
        Err(_) => false,
    }
}

fn summarise(histogram: &Histogram<u64>, errors: u64, seconds: f64) -> LoadResult {
    let q = |p: f64| histogram.value_at_quantile(p) as f64 / 1000.0;
    let requests = histogram.len() + errors;
    LoadResult {
        requests,
        errors,
        seconds,
        rps: histogram.len() as f64 / seconds,
        p50_ms: q(0.5),
        p90_ms: q(0.9),
        p99_ms: q(0.99),
        p999_ms: q(0.999),
    }
}

/// `connections` workers, each sending the next request as soon as the last answered,
/// for `duration` after a `warmup` whose requests are not counted.
pub async fn closed_loop(
    request: Request,
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<LoadResult> {
    let client = client(connections)?;
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let errors = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..connections {
        let (client, request, histogram, errors, measuring, stop) = (
            client.clone(),
            request.clone(),
            histogram.clone(),
            errors.clone(),
            measuring.clone(),
            stop.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .unwrap_or_else(|_| unreachable!());
            let mut local_errors = 0;
            while !stop.load(Ordering::Relaxed) {
                let began = Instant::now();
                let ok = send(&client, &request).await;
                if measuring.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                    if ok {
                        let _ = local.record((began.elapsed().as_micros() as u64).max(1));
                    } else {
                        local_errors += 1;
                    }
                }
            }
            let _ = histogram
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .add(&local);
            errors.fetch_add(local_errors, Ordering::Relaxed);
        }));
    }
    tokio::time::sleep(warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    for worker in workers {
        let _ = worker.await;
    }
    let histogram = histogram.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(summarise(
        &histogram,
        errors.load(Ordering::Relaxed),
        seconds,
    ))
}

/// Requests due at `start + i / rate`, each measured from its due time, with at most
/// `in_flight_max` outstanding (beyond that, requests wait — and their wait counts).
pub async fn open_loop(
    request: Request,
    rate: f64,
    in_flight_max: usize,
    duration: Duration,
) -> anyhow::Result<LoadResult> {
    let client = client(in_flight_max)?;
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let errors = Arc::new(AtomicU64::new(0));
    let permits = Arc::new(tokio::sync::Semaphore::new(in_flight_max));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut i: u64 = 0;
    loop {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        if due.duration_since(start) >= duration {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        i += 1;
        let (client, request, histogram, errors) = (
            client.clone(),
            request.clone(),
            histogram.clone(),
            errors.clone(),
        );
        tasks.spawn(async move {
            let _permit = permit;
            if send(&client, &request).await {
                let _ = histogram
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .record((due.elapsed().as_micros() as u64).max(1));
            } else {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        });
        while let Some(done) = tasks.try_join_next() {
            let _ = done;
        }
    }
    while tasks.join_next().await.is_some() {}
    let seconds = start.elapsed().as_secs_f64();
    let histogram = histogram.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(summarise(
        &histogram,
        errors.load(Ordering::Relaxed),
        seconds,
    ))
}
