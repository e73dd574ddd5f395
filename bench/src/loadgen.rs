//! Our load generator — `eddy-load`, the one `shop demo` uses too — sending one
//! repeated HTTP request: a closed loop for maximum throughput and an open loop at a
//! fixed rate that measures each request from its intended send time (no coordinated
//! omission). `rps` counts successes.

use std::sync::Arc;
use std::time::Duration;

use eddy_load::{Answer, Pace, Plan};
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

fn summarise(tally: &eddy_load::Tally) -> LoadResult {
    LoadResult {
        requests: tally.requests(),
        errors: tally.rejected + tally.failed,
        seconds: tally.elapsed.as_secs_f64(),
        rps: tally.ok_per_sec(),
        p50_ms: tally.quantile_ms(0.5),
        p90_ms: tally.quantile_ms(0.9),
        p99_ms: tally.quantile_ms(0.99),
        p999_ms: tally.quantile_ms(0.999),
    }
}

async fn run(request: Request, plan: Plan, connections: usize) -> anyhow::Result<LoadResult> {
    let client = client(connections)?;
    let tally = eddy_load::drive(
        plan,
        move |_| {
            let (client, request) = (client.clone(), request.clone());
            async move {
                if send(&client, &request).await {
                    Answer::Ok
                } else {
                    Answer::Failed
                }
            }
        },
        |_, _| {},
    )
    .await;
    Ok(summarise(&tally))
}

/// `connections` workers, each sending the next request as soon as the last answered,
/// for `duration` after a `warmup` whose requests are not counted.
pub async fn closed_loop(
    request: Request,
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<LoadResult> {
    let plan = Plan {
        pace: Pace::Closed,
        in_flight_max: connections,
        warmup,
        duration,
    };
    run(request, plan, connections).await
}

/// Requests due at `start + i / rate`, each measured from its due time, with at most
/// `in_flight_max` outstanding (beyond that, requests wait — and their wait counts).
pub async fn open_loop(
    request: Request,
    rate: f64,
    in_flight_max: usize,
    duration: Duration,
) -> anyhow::Result<LoadResult> {
    let plan = Plan {
        pace: Pace::Open { rate },
        in_flight_max,
        warmup: Duration::ZERO,
        duration,
    };
    run(request, plan, in_flight_max).await
}
