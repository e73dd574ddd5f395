//! The HTTP edge as a hostile client meets it, through raw sockets where a client library
//! would hide the behaviour: partial heads, trickled and oversized bodies, made-up
//! methods, expired deadlines, malformed queries and paths.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::spawn_app;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn addr(app: &common::TestApp) -> String {
    app.base.trim_start_matches("http://").to_owned()
}

/// A parsed response read to the end of the connection.
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }

    fn problem(&self) -> Value {
        assert_eq!(
            self.header("content-type").as_deref(),
            Some("application/problem+json"),
            "{self:?}"
        );
        serde_json::from_str(&self.body).unwrap()
    }
}

async fn read_response(stream: &mut TcpStream) -> Raw {
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut bytes))
        .await
        .expect("the server answers and closes")
        .expect("the connection reads to its end, not reset");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Raw {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// Sends `request` as is and reads the answer (the request should ask to close).
async fn raw(app: &common::TestApp, request: &[u8]) -> Raw {
    let mut stream = TcpStream::connect(addr(app)).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_response(&mut stream).await
}

/// Whether the server closed the connection within `within` (reads EOF or a reset).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    matches!(
        tokio::time::timeout(within, stream.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_request_head_is_closed_after_the_header_read_timeout() {
    let app = spawn_app(|c| {
        c.server.header_read_timeout_ms = 300;
        c.server.idle_timeout_ms = 60_000;
    })
    .await;
    let mut stream = TcpStream::connect(addr(&app)).await.unwrap();
    stream
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    // Trickle a byte now and then: each arrives, none completes the head.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = stream.write_all(b"a").await;
    }
    assert!(closed_within(&mut stream, Duration::from_secs(3)).await);
    assert!(started.elapsed() < Duration::from_secs(3));

    // An idle connection (no bytes at all) is governed by the idle timeout, not this one.
    let mut idle = TcpStream::connect(addr(&app)).await.unwrap();
    assert!(!closed_within(&mut idle, Duration::from_millis(800)).await);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let app = spawn_app(|c| c.server.idle_timeout_ms = 300).await;
    let mut stream = TcpStream::connect(addr(&app)).await.unwrap();
    stream
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(closed_within(&mut stream, Duration::from_secs(3)).await);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_and_half_open_connections_at_once() {
    let app = spawn_app(|c| c.server.shutdown_timeout_ms = 10_000).await;
    let mut half_open = TcpStream::connect(addr(&app)).await.unwrap();
    half_open
        .write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut idle = TcpStream::connect(addr(&app)).await.unwrap();
    idle.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let _ = idle.read(&mut buf).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    app.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown waited {:?} for connections doing nothing",
        started.elapsed()
    );
    assert!(closed_within(&mut half_open, Duration::from_secs(1)).await);
    assert!(closed_within(&mut idle, Duration::from_secs(1)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_too_slow_to_arrive_gets_408() {
    let app = spawn_app(|c| {
        c.server.body_read_timeout_ms = 300;
        c.server.request_timeout_ms = 5_000;
    })
    .await;
    let mut stream = TcpStream::connect(addr(&app)).await.unwrap();
    stream
        .write_all(
            b"POST /v1/products HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"sku\":",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let response = read_response(&mut stream).await;
    assert_eq!(response.status, 408, "{response:?}");
    assert!(response.problem()["type"]
        .as_str()
        .unwrap()
        .ends_with("body-timeout"));
    assert!(started.elapsed() < Duration::from_secs(3));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_of_several_mib_over_the_limit_gets_the_413_not_a_reset() {
    let app = spawn_app(|_| {}).await;
    // As Python's urllib does: the whole body is written before anything is read.
    let body = vec![b'x'; 6 * 1024 * 1024];
    let mut request = format!(
        "POST /v1/products HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let response = raw(&app, &request).await;
    assert_eq!(response.status, 413, "{response:?}");
    assert!(response.problem()["detail"]
        .as_str()
        .unwrap()
        .contains("at most 65536"));

    // Chunked, with no length declared: the limit holds while reading.
    let mut chunked =
        b"POST /v1/products HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..40 {
        chunked.extend_from_slice(format!("{:x}\r\n", 4096).as_bytes());
        chunked.extend_from_slice(&[b' '; 4096]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let response = raw(&app, &chunked).await;
    assert_eq!(response.status, 413, "{response:?}");
    response.problem();
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_series_stay_bounded_under_random_methods_and_paths() {
    let app = spawn_app(|_| {}).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let client = reqwest::Client::new();
    let mut sent = 0;
    while sent < 10_000 {
        let mut batch = Vec::new();
        for _ in 0..100 {
            let method: String = (0..rng.gen_range(3..40))
                .map(|_| rng.gen_range(b'A'..=b'Z') as char)
                .collect();
            let path: String = (0..rng.gen_range(1..30))
                .map(|_| rng.gen_range(b'a'..=b'z') as char)
                .collect();
            let url = match rng.gen_range(0..3) {
                0 => format!("{}/{path}", app.base),
                1 => format!("{}/v1/products/{path}", app.base),
                _ => format!("{}/v1/customers/{path}/orders", app.base),
            };
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            batch.push(client.request(method, url).send());
        }
        for response in futures::future::join_all(batch).await {
            let response = response.unwrap();
            assert!(response.status().is_client_error(), "{}", response.status());
        }
        sent += 100;
    }
    let metrics = app.metrics().await;
    let series = metrics
        .lines()
        .filter(|l| l.starts_with("http_requests_total{"))
        .count();
    assert!(
        series < 30,
        "{series} series of http_requests_total after 10,000 random requests"
    );
    assert!(
        metrics.len() < 256 * 1024,
        "/metrics is {} bytes",
        metrics.len()
    );
    assert!(metrics.contains("method=\"other\""));
    // Described from the catalogue (docs/metrics.md).
    assert!(metrics.contains("# HELP http_requests_total HTTP requests answered"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_ignore_a_client_deadline_and_application_requests_past_it_get_504() {
    let app = spawn_app(|_| {}).await;
    for probe in ["/health/live", "/health/ready", "/metrics"] {
        let response = app
            .http
            .get(format!("{}{probe}", app.base))
            .header("eddy-deadline", "2001-01-01T00:00:00Z")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{probe}");
    }
    let response = app
        .http
        .get(format!("{}/v1/orders/nope", app.base))
        .header("eddy-deadline", "2001-01-01T00:00:00Z")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    let problem: Value = response.json().await.unwrap();
    assert!(problem["type"]
        .as_str()
        .unwrap()
        .ends_with("deadline-exceeded"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_outside_the_json_body_are_problems_a_user_can_act_on() {
    let app = spawn_app(|_| {}).await;
    let get = |target: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes()
    };
    for (target, mentions) in [
        ("/v1/customers/alice/orders?limit=abc", "limit"),
        ("/v1/customers/alice/orders?limit=1.5", "limit"),
        ("/v1/customers/alice/orders?limit=5&limit=6", "limit"),
        ("/v1/payments", "order_id"),
        ("/v1/payments?order_id=a&order_id=b", "order_id"),
        ("/v1/orders/%FF%FE", "UTF-8"),
    ] {
        let response = raw(&app, &get(target)).await;
        assert_eq!(response.status, 400, "{target}: {response:?}");
        let problem = response.problem();
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(mentions), "{target}: {detail}");
    }

    // A method a path does not take: 405, a problem, and the methods it does take.
    for request in [
        b"DELETE /v1/products HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        b"FOOBAR /v1/orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
    ] {
        let response = raw(&app, &request).await;
        assert_eq!(response.status, 405, "{response:?}");
        assert!(response.header("allow").is_some_and(|a| a.contains("POST")));
        response.problem();
    }

    // A body of the wrong shape: the message names JSON's types, not Rust's.
    let response = app
        .http
        .post(format!("{}/v1/orders", app.base))
        .header("content-type", "application/json")
        .body("[1, 2]")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let problem: Value = response.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap();
    assert!(!detail.contains("struct"), "{detail}");
    assert!(!detail.contains("NewOrder"), "{detail}");
    let response = app
        .http
        .post(format!("{}/v1/orders", app.base))
        .header("content-type", "application/json")
        .body(r#"{"customer_id": "a", "lines": [{"product_id": "p", "quantity": "many"}]}"#)
        .send()
        .await
        .unwrap();
    let problem: Value = response.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("an integer") && !detail.contains("i64"),
        "{detail}"
    );
    app.stop().await;
}

/// The platform's stack around a router of the test's own: a route that holds its
/// request until released and one that outlives any budget.
async fn stack_serving(
    config: shop::config::Config,
) -> (String, std::sync::Arc<tokio::sync::Semaphore>) {
    use axum::routing::get;
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let held = gate.clone();
    let router = axum::Router::new()
        .route(
            "/held",
            get(move || {
                let held = held.clone();
                async move {
                    held.acquire().await.unwrap().forget();
                    "released"
                }
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        );
    let app = shop::platform::platform_layers(router, &config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, gate)
}

/// Beyond its limit and an equal queue the stack sheds at once (503 `overloaded` with
/// Retry-After, a problem); work past the server's budget is cut (503 `timeout`), work
/// past the caller's sooner deadline too (504 `deadline-exceeded`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_sheds_beyond_its_limit_and_cuts_work_at_its_deadline() {
    let mut config = shop::config::Config::default();
    config.server.concurrency_limit = 1;
    config.server.request_timeout_ms = 300;
    let (base, gate) = stack_serving(config).await;
    let http = reqwest::Client::new();
    // One runs, one waits in the queue, the third is shed.
    let running = tokio::spawn(http.get(format!("{base}/held")).send());
    let queued = tokio::spawn(http.get(format!("{base}/held")).send());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let shed = http.get(format!("{base}/held")).send().await.unwrap();
    assert_eq!(shed.status(), 503);
    assert_eq!(shed.headers()["retry-after"], "1");
    assert_eq!(shed.headers()["content-type"], "application/problem+json");
    let problem: Value = shed.json().await.unwrap();
    assert!(
        problem["type"].as_str().unwrap().ends_with("overloaded"),
        "{problem}"
    );
    gate.add_permits(2);
    for answer in [running, queued] {
        let answer = answer.await.unwrap().unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.text().await.unwrap(), "released");
    }
    // Our budget (300 ms) cuts the slow route.
    let started = Instant::now();
    let cut = http.get(format!("{base}/slow")).send().await.unwrap();
    assert_eq!(cut.status(), 503);
    let problem: Value = cut.json().await.unwrap();
    assert!(
        problem["type"].as_str().unwrap().ends_with("timeout"),
        "{problem}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // A caller's deadline sooner than the budget cuts it as the caller's: 504.
    let soon = time::OffsetDateTime::now_utc() + time::Duration::milliseconds(100);
    let header = soon
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let cut = http
        .get(format!("{base}/slow"))
        .header("eddy-deadline", header)
        .send()
        .await
        .unwrap();
    assert_eq!(cut.status(), 504);
    let problem: Value = cut.json().await.unwrap();
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .ends_with("deadline-exceeded"),
        "{problem}"
    );
}
