//! One process per service on PostgreSQL (a database each) and NATS JetStream — and
//! again on Kafka (tansu) — the payment provider in its own process, and the gateway in front: 1,000 orders through
//! the public contract while the inventory process is killed with SIGKILL and started
//! again. Every order ends CONFIRMED or CANCELLED, none is charged twice, stock adds up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const SERVICES: [&str; 5] = [
    "catalog",
    "orders",
    "inventory",
    "payments",
    "notifications",
];

/// Starts `shop <args…>` with `env`, its log appended to `log`; returns the child and
/// the url it printed.
async fn start(
    args: &[&str],
    env: &[(String, String)],
    ready_prefix: &str,
    log: &Path,
) -> (Child, String) {
    let log_file = || {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap()
    };
    let mut stdout_log = tokio::fs::File::from_std(log_file());
    let log = log_file();
    let mut command = Command::new(env!("CARGO_BIN_EXE_shop"));
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("shop starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix(ready_prefix) {
                return rest.trim().to_owned();
            }
        }
        panic!("shop {args:?} exited before it listened");
    })
    .await
    .expect("listening within a minute");
    // The logs go to stdout (after the ready line): keep them with stderr in the file.
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = stdout_log.write_all(format!("{line}\n").as_bytes()).await;
        }
    });
    (child, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_orders_across_processes_survive_a_killed_consumer_on_nats() {
    let prefix = format!("t{}", uuid::Uuid::now_v7().simple());
    let nats = eddy_nats::NatsConfig {
        url: std::env::var("EDDYTEST_NATS_URL")
            .unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned()),
        stream_prefix: format!("SCALETEST_{prefix}"),
        subject_prefix: format!("scaletest.{prefix}"),
        ..eddy_nats::NatsConfig::default()
    };
    let _streams = common::NatsStreams::new(nats.clone());
    let broker = vec![
        ("EDDY_BROKER__KIND".to_owned(), "nats".to_owned()),
        ("EDDY_BROKER__NATS_URL".to_owned(), nats.url.clone()),
        (
            "EDDY_BROKER__NATS_STREAM_PREFIX".to_owned(),
            nats.stream_prefix.clone(),
        ),
        (
            "EDDY_BROKER__NATS_SUBJECT_PREFIX".to_owned(),
            nats.subject_prefix.clone(),
        ),
        (
            "EDDY_BROKER__NATS_ACK_WAIT_MS".to_owned(),
            "3000".to_owned(),
        ),
    ];
    thousand_orders_with_a_killed_consumer(broker).await;
}

/// The same on Kafka (tansu, started for the test). tansu 0.6.0 does not serve a fetch
/// that starts inside a record batch — which a restarted member does whenever its group
/// committed mid-batch — so the producers here write one record per batch
/// (`batch.num.messages=1`); Kafka itself needs no such setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_orders_across_processes_survive_a_killed_consumer_on_kafka() {
    let tansu = eddy_testkit::tansu::Tansu::start();
    let broker = vec![
        ("EDDY_BROKER__KIND".to_owned(), "kafka".to_owned()),
        (
            "EDDY_BROKER__KAFKA_BOOTSTRAP_SERVERS".to_owned(),
            tansu.bootstrap().to_owned(),
        ),
        ("EDDY_BROKER__KAFKA_PARTITIONS".to_owned(), "4".to_owned()),
        (
            "EDDY_BROKER__KAFKA_PRODUCER__BATCH_NUM_MESSAGES".to_owned(),
            "1".to_owned(),
        ),
        (
            "EDDY_BROKER__KAFKA_CONSUMER__SESSION_TIMEOUT_MS".to_owned(),
            "6000".to_owned(),
        ),
        (
            "EDDY_BROKER__KAFKA_CONSUMER__HEARTBEAT_INTERVAL_MS".to_owned(),
            "500".to_owned(),
        ),
    ];
    thousand_orders_with_a_killed_consumer(broker).await;
    drop(tansu);
}

async fn thousand_orders_with_a_killed_consumer(broker: Vec<(String, String)>) {
    let dir = tempfile::tempdir().unwrap();
    // Every process exports its spans here; none starts a trace of its own (ratio 0),
    // so only the one order sent with a sampled `traceparent` is recorded.
    let receiver = eddy_testkit::otlp::OtlpReceiver::start().await.unwrap();
    let tracing_env = vec![
        (
            "EDDY_TRACING__OTLP_ENDPOINT".to_owned(),
            receiver.traces_endpoint(),
        ),
        ("EDDY_TRACING__SAMPLING_RATIO".to_owned(), "0".to_owned()),
    ];
    let broker: Vec<(String, String)> = broker.into_iter().chain(tracing_env.clone()).collect();
    let mut databases = Vec::new();
    for _ in SERVICES {
        databases.push(eddy_testkit::TestDb::postgres().await);
    }

    let (_provider, provider_url) = start(
        &["provider", "--listen", "127.0.0.1:0"],
        &[
            ("EDDY_PROVIDER__LATENCY_MS".into(), "2".into()),
            ("EDDY_PROVIDER__DECLINE_RATE".into(), "0.1".into()),
            ("EDDY_LOG_LEVEL".into(), "warn".into()),
            tracing_env[0].clone(),
            tracing_env[1].clone(),
        ],
        "payment provider listening on ",
        &dir.path().join("provider.log"),
    )
    .await;

    let env_for = |service: &str, db: &str| -> Vec<(String, String)> {
        let mut env = broker.clone();
        env.extend(vec![
            (
                format!("EDDY_DATABASES__{}", service.to_uppercase()),
                db.to_owned(),
            ),
            ("EDDY_INSTANCE_ID".into(), service.to_owned()),
            ("EDDY_DATA_DIR".into(), dir.path().display().to_string()),
            ("EDDY_PROVIDER__EMBEDDED".into(), "false".into()),
            ("EDDY_PAYMENTS__PROVIDER_URL".into(), provider_url.clone()),
            ("EDDY_CONSUMER__BACKOFF_INITIAL_MS".into(), "20".into()),
            ("EDDY_CONSUMER__BACKOFF_MAX_MS".into(), "200".into()),
            ("EDDY_LOG_LEVEL".into(), "warn,eddy_kafka=info".into()),
        ]);
        env
    };
    let mut processes: HashMap<&str, (Child, String)> = HashMap::new();
    for (service, db) in SERVICES.iter().zip(&databases) {
        let env = env_for(service, db.url());
        processes.insert(
            service,
            start(
                &["serve", "--service", service, "--listen", "127.0.0.1:0"],
                &env,
                "listening on ",
                &dir.path().join(format!("{service}.log")),
            )
            .await,
        );
    }
    let gateway_env = vec![
        (
            "EDDY_GATEWAY__CATALOG_URL".to_owned(),
            processes["catalog"].1.clone(),
        ),
        (
            "EDDY_GATEWAY__ORDERS_URL".to_owned(),
            processes["orders"].1.clone(),
        ),
        (
            "EDDY_GATEWAY__PAYMENTS_URL".to_owned(),
            processes["payments"].1.clone(),
        ),
        (
            "EDDY_GATEWAY__INVENTORY_URL".to_owned(),
            processes["inventory"].1.clone(),
        ),
        (
            "EDDY_GATEWAY__NOTIFICATIONS_URL".to_owned(),
            processes["notifications"].1.clone(),
        ),
        ("EDDY_LOG_LEVEL".to_owned(), "warn".to_owned()),
        tracing_env[0].clone(),
        tracing_env[1].clone(),
    ];
    let (_gateway, base) = start(
        &["gateway", "--listen", "127.0.0.1:0"],
        &gateway_env,
        "listening on ",
        &dir.path().join("gateway.log"),
    )
    .await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    assert_eq!(
        http.get(format!("{base}/health/ready"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let mut stock_at_start = HashMap::new();
    let mut products = Vec::new();
    for (i, stock) in [700i64, 100_000].into_iter().enumerate() {
        let body = json!({"sku": format!("scale-{i}"), "name": "Thing", "price_cents": 300, "currency": "EUR", "stock": stock});
        let response = http
            .post(format!("{base}/v1/products"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        let product: Value = response.json().await.unwrap();
        stock_at_start.insert(product["id"].as_str().unwrap().to_owned(), stock);
        products.push(product["id"].as_str().unwrap().to_owned());
    }
    // Orders learns of the products through events.
    for product in &products {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let probe = http
                .post(format!("{base}/v1/orders"))
                .json(&json!({"customer_id": "scale", "lines": [{"product_id": product, "quantity": 1}]}))
                .send()
                .await
                .unwrap();
            if probe.status() == 202 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "product never orderable"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // 1,000 orders, 32 at a time; inventory is killed once 300 are placed.
    let placed = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..32 {
        let (http, base, placed, next, products) = (
            http.clone(),
            base.clone(),
            placed.clone(),
            next.clone(),
            products.clone(),
        );
        clients.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= 1000 {
                    return;
                }
                let body = json!({"customer_id": "scale", "lines": [{"product_id": products[i % 2], "quantity": 1 + (i % 2)}]});
                // A client retries with the same key until it gets an answer.
                loop {
                    let sent = http.post(format!("{base}/v1/orders")).header("idempotency-key", format!("scale-{i}")).json(&body).send().await;
                    if sent.is_ok_and(|r| r.status() == 202) {
                        placed.fetch_add(1, Ordering::SeqCst);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }));
    }
    while placed.load(Ordering::SeqCst) < 300 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut inventory, _) = processes.remove("inventory").unwrap();
    inventory.kill().await.unwrap(); // SIGKILL mid-run
    let _ = inventory.wait().await;
    let env = env_for("inventory", databases[2].url());
    processes.insert(
        "inventory",
        start(
            &["serve", "--service", "inventory", "--listen", "127.0.0.1:0"],
            &env,
            "listening on ",
            &dir.path().join("inventory.log"),
        )
        .await,
    );
    for client in clients {
        client.await.unwrap();
    }

    // Every order settles.
    let orders =
        match common::try_settled_orders(&http, &base, "scale", Duration::from_secs(240)).await {
            Ok(orders) => orders,
            Err(pending) => {
                report_stuck(&http, &base, &processes, &pending, dir.path()).await;
                panic!("{} orders still pending", pending.len());
            }
        };
    assert_eq!(orders.len(), 1002, "1,000 orders and 2 probes, each once");
    let (confirmed, cancelled) =
        common::check_outcomes(&http, &base, &orders, &stock_at_start).await;
    eprintln!("{confirmed} confirmed, {cancelled} cancelled");
    assert!(confirmed > 0 && cancelled > 0);

    one_order_is_one_trace(&http, &base, &products[1], &receiver).await;
    for (_, (mut child, _)) in processes {
        let _ = child.kill().await;
    }
}

/// One order placed with a sampled `traceparent` (a client's span) is one trace across
/// the six processes and the broker: from the gateway's server span through the orders
/// service, each event's `create` span, each consumer's `process` span, the payment
/// provider's call and answer, to the notification — every span in it the child of one
/// of the others, kinds as the messaging conventions say.
async fn one_order_is_one_trace(
    http: &reqwest::Client,
    base: &str,
    product: &str,
    receiver: &eddy_testkit::otlp::OtlpReceiver,
) {
    use eddy_testkit::otlp::{ReceivedSpan, SpanKind};
    let trace_id = uuid::Uuid::now_v7().simple().to_string();
    let client_span = "00f067aa0ba902b7";
    let response = http
        .post(format!("{base}/v1/orders"))
        .header("traceparent", format!("00-{trace_id}-{client_span}-01"))
        .json(&json!({"customer_id": "traced", "lines": [{"product_id": product, "quantity": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let in_service = |span: &ReceivedSpan, service: &str| {
        span.service_name.as_deref() == Some(&format!("shop-{service}")[..])
    };
    // Notifications hear of every orders event; the one that notifies is the outcome.
    let notifies = |s: &ReceivedSpan| {
        s.name == "process orders"
            && in_service(s, "notifications")
            && matches!(
                s.attribute("eddy.event_type"),
                Some("orders.OrderConfirmed" | "orders.OrderCancelled")
            )
    };
    // Each process exports on its own schedule: wait for the whole trace — the
    // notification, the provider's answer, and no span whose parent has not arrived.
    let complete = |spans: &[ReceivedSpan]| {
        let spans: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
        let ids: std::collections::HashSet<&str> =
            spans.iter().map(|s| s.span_id.as_str()).collect();
        spans.iter().any(|s| notifies(s))
            && spans.iter().any(|s| in_service(s, "provider"))
            && spans.iter().all(|s| {
                s.parent_span_id
                    .as_deref()
                    .is_some_and(|p| p == client_span || ids.contains(p))
            })
    };
    let spans = match receiver.wait_for(complete, Duration::from_secs(60)).await {
        Ok(_) => receiver.trace(&trace_id),
        Err(error) => panic!("{error}; in the trace: {:#?}", receiver.trace(&trace_id)),
    };
    let by_id: HashMap<&str, &ReceivedSpan> =
        spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let parent = |span: &ReceivedSpan| -> &ReceivedSpan {
        let id = span
            .parent_span_id
            .as_deref()
            .unwrap_or_else(|| panic!("{} has no parent: {spans:#?}", span.name));
        by_id.get(id).copied().unwrap_or_else(|| {
            panic!(
                "the parent of {} ({id}) is not in the trace: {spans:#?}",
                span.name
            )
        })
    };
    // One trace: the gateway's span is the child of the client's, every other span the
    // child of a span in the trace.
    let root = spans
        .iter()
        .find(|s| s.parent_span_id.as_deref() == Some(client_span))
        .unwrap_or_else(|| panic!("no span is the client's child: {spans:#?}"));
    assert_eq!(root.kind, SpanKind::Server);
    assert!(in_service(root, "gateway"), "{root:#?}");
    for span in spans.iter().filter(|s| s.span_id != root.span_id) {
        parent(span);
    }
    // The notification, walked back to the request: consumer ← producer ← … ← server.
    let notification = spans.iter().find(|s| notifies(s)).unwrap();
    assert_eq!(notification.kind, SpanKind::Consumer);
    assert_eq!(
        notification.attribute("messaging.operation.type"),
        Some("process")
    );
    assert!(notification.attribute("messaging.system").is_some());
    assert!(notification
        .attribute("messaging.consumer.group.name")
        .is_some());
    assert!(notification
        .attribute("messaging.destination.partition.id")
        .is_some());
    let mut chain = vec![notification];
    while chain.last().unwrap().span_id != root.span_id {
        let next = parent(chain.last().unwrap());
        chain.push(next);
    }
    let hops: Vec<(String, SpanKind)> = chain
        .iter()
        .rev()
        .map(|s| {
            (
                format!("{} {}", s.service_name.as_deref().unwrap_or("?"), s.name),
                s.kind,
            )
        })
        .collect();
    eprintln!("the order's trace, request to notification: {hops:#?}");
    let services: Vec<&str> = chain
        .iter()
        .rev()
        .filter_map(|s| s.service_name.as_deref())
        .collect();
    for service in [
        "shop-gateway",
        "shop-orders",
        "shop-inventory",
        "shop-payments",
        "shop-notifications",
    ] {
        assert!(
            services.contains(&service),
            "{service} not on the path: {hops:#?}"
        );
    }
    // Events cross processes only from a producer span to a consumer span.
    for pair in chain.windows(2) {
        let (child, parent) = (pair[0], pair[1]);
        if child.kind == SpanKind::Consumer {
            assert_eq!(parent.kind, SpanKind::Producer, "{hops:#?}");
            assert_eq!(parent.name.replace("create", "process"), child.name);
        }
    }
    // The payment provider's answer is the child of the payments service's call, made
    // while processing inventory's reservation.
    let charged = spans
        .iter()
        .find(|s| in_service(s, "provider") && s.kind == SpanKind::Server)
        .unwrap_or_else(|| panic!("the provider's span is missing: {spans:#?}"));
    let call = parent(charged);
    assert_eq!(call.kind, SpanKind::Client);
    assert!(in_service(call, "payments"));
    assert_eq!(parent(call).name, "process inventory");
    assert_eq!(parent(call).kind, SpanKind::Consumer);
}

/// What a stuck run needs for a diagnosis: the pending orders and their charges, each
/// service's lag, backlog and counters, and the tail of every process's log.
async fn report_stuck(
    http: &reqwest::Client,
    base: &str,
    processes: &HashMap<&str, (Child, String)>,
    pending: &[Value],
    logs: &Path,
) {
    for order in pending.iter().take(5) {
        let id = order["id"].as_str().unwrap_or_default();
        let charges = http
            .get(format!("{base}/v1/payments?order_id={id}"))
            .send()
            .await;
        let charges = match charges {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => e.to_string(),
        };
        eprintln!("pending order: {order}\n  charges: {charges}");
    }
    for service in SERVICES {
        let Some((_, url)) = processes.get(service) else {
            continue;
        };
        let metrics = match http.get(format!("{url}/metrics")).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => e.to_string(),
        };
        eprintln!("--- {service} metrics");
        for line in metrics.lines().filter(|l| {
            !l.starts_with('#')
                && [
                    "consumer_lag",
                    "outbox_pending",
                    "events_processed",
                    "dead_lettered",
                    "events_failed",
                ]
                .iter()
                .any(|m| l.starts_with(m))
        }) {
            eprintln!("{line}");
        }
    }
    let mut entries: Vec<_> = std::fs::read_dir(logs)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    entries.sort();
    for path in entries
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
    {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        eprintln!("--- {} (last 60 of {} lines)", path.display(), lines.len());
        for line in &lines[lines.len().saturating_sub(60)..] {
            eprintln!("{line}");
        }
    }
}
