//! The simulated payment provider: a separate HTTP service with configurable latency,
//! decline rate and error rate. `POST /v1/charges` with an `Idempotency-Key` header
//! answers a repeated key with the first answer, as real providers do;
//! `GET /v1/charges/{key}` tells what became of a key (404: it never arrived), and
//! `POST /v1/charges/{key}/refund` refunds a captured charge (idempotent too).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::config::ProviderConfig;
use crate::problem::{problem, ApiJson, ApiPath};

#[derive(Debug, Clone)]
pub struct Provider {
    config: ProviderConfig,
    answers: Arc<Mutex<Answers>>,
    /// Decides errors and declines; seeded, so a test can replay a run.
    rng: Arc<Mutex<StdRng>>,
}

#[derive(Debug, Default)]
struct Answers {
    by_key: HashMap<String, (StatusCode, ChargeAnswer)>,
    order: VecDeque<String>,
    /// Keys with a charge being decided (arrived, not answered yet), and how many.
    deciding: HashMap<String, usize>,
}

#[derive(Debug, Deserialize)]
pub struct ChargeRequest {
    pub amount_cents: i64,
    pub currency: String,
    pub reference: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChargeAnswer {
    pub id: String,
    /// `captured`, `declined` or `refunded`.
    pub status: &'static str,
    pub amount_cents: i64,
    pub currency: String,
    pub reference: String,
}

impl Provider {
    pub fn new(config: ProviderConfig) -> Self {
        Self::seeded(config, rand::random())
    }

    /// A provider whose errors and declines follow `seed`.
    pub fn seeded(config: ProviderConfig, seed: u64) -> Self {
        Self {
            config,
            answers: Arc::default(),
            rng: Arc::new(Mutex::new(StdRng::seed_from_u64(seed))),
        }
    }

    pub fn router(self) -> Router {
        Router::new()
            .route("/v1/charges", post(charge))
            .route("/v1/charges/{key}", get(look_up))
            .route("/v1/charges/{key}/refund", post(refund))
            .route("/health", get(|| async { "ok" }))
            // Each call in its server span, the child of the caller's.
            .route_layer(axum::middleware::from_fn(
                |request: axum::extract::Request, next: axum::middleware::Next| async move {
                    let route = request
                        .extensions()
                        .get::<axum::extract::MatchedPath>()
                        .map(|p| p.as_str().to_owned())
                        .unwrap_or_default();
                    crate::platform::http::traced(&route, request, |r| next.run(r)).await
                },
            ))
            .with_state(self)
    }
}

async fn charge(
    State(provider): State<Provider>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<ChargeRequest>,
) -> Response {
    let Some(key) = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return problem(
            StatusCode::BAD_REQUEST,
            "missing-idempotency-key",
            "Idempotency-Key is required",
            None,
        );
    };
    if request.amount_cents <= 0 {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-amount",
            "amount_cents must be positive",
            None,
        );
    }
    if let Some((status, answer)) = provider.remembered(&key) {
        return (status, Json(answer)).into_response();
    }
    // As a real provider, finish a charge once it arrived even if the caller hangs up
    // (it timed out): the money moves, and the answer waits under its key.
    provider.deciding(&key, true);
    match tokio::spawn(decide(provider, key, request)).await {
        Ok(response) => response,
        Err(error) => problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "provider-failed",
            "The simulated provider failed",
            Some(error.to_string()),
        ),
    }
}

/// The provider's decision on a new charge, after its latency; the key counts as
/// being decided until then (a lookup meanwhile answers 409, not "unknown").
async fn decide(provider: Provider, key: String, request: ChargeRequest) -> Response {
    let response = decide_now(&provider, key.clone(), request).await;
    provider.deciding(&key, false);
    response
}

async fn decide_now(provider: &Provider, key: String, request: ChargeRequest) -> Response {
    tokio::time::sleep(Duration::from_millis(provider.config.latency_ms)).await;
    let (error, declined) = {
        let mut rng = provider.rng.lock().unwrap_or_else(|p| p.into_inner());
        (
            rng.gen_bool(provider.config.error_rate),
            rng.gen_bool(provider.config.decline_rate),
        )
    };
    if error {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Provider unavailable (simulated)",
            None,
        );
    }
    let answer = ChargeAnswer {
        id: format!("ch_{}", uuid::Uuid::now_v7().simple()),
        status: if declined { "declined" } else { "captured" },
        amount_cents: request.amount_cents,
        currency: request.currency,
        reference: request.reference,
    };
    // Two racing requests with one key: the first remembered answer wins for both.
    let (status, answer) = provider.remember(key, StatusCode::CREATED, answer);
    (status, Json(answer)).into_response()
}

/// What became of the charge with this idempotency key; 404 when no request with it
/// arrived (or it is older than the keys the provider remembers).
async fn look_up(State(provider): State<Provider>, ApiPath(key): ApiPath<String>) -> Response {
    if let Some((_, answer)) = provider.remembered(&key) {
        return Json(answer).into_response();
    }
    if provider.is_deciding(&key) {
        return problem(
            StatusCode::CONFLICT,
            "charge-in-progress",
            "A charge with this key is being decided; ask again",
            None,
        );
    }
    unknown_charge()
}

/// Refunds a captured charge; refunding it again answers the same. A declined charge
/// took no money: 409.
async fn refund(State(provider): State<Provider>, ApiPath(key): ApiPath<String>) -> Response {
    let mut answers = provider.answers.lock().unwrap_or_else(|p| p.into_inner());
    let Some((_, answer)) = answers.by_key.get_mut(&key) else {
        return unknown_charge();
    };
    match answer.status {
        "captured" | "refunded" => {
            answer.status = "refunded";
            Json(answer.clone()).into_response()
        }
        _ => problem(
            StatusCode::CONFLICT,
            "not-captured",
            "Only a captured charge can be refunded",
            None,
        ),
    }
}

fn unknown_charge() -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "unknown-charge",
        "No charge with this idempotency key",
        None,
    )
}

impl Provider {
    fn deciding(&self, key: &str, started: bool) {
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        let count = answers.deciding.entry(key.to_owned()).or_insert(0);
        if started {
            *count += 1;
        } else {
            *count = count.saturating_sub(1);
            if *count == 0 {
                answers.deciding.remove(key);
            }
        }
    }

    fn is_deciding(&self, key: &str) -> bool {
        self.answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .deciding
            .contains_key(key)
    }

    fn remembered(&self, key: &str) -> Option<(StatusCode, ChargeAnswer)> {
        self.answers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_key
            .get(key)
            .cloned()
    }

    fn remember(
        &self,
        key: String,
        status: StatusCode,
        answer: ChargeAnswer,
    ) -> (StatusCode, ChargeAnswer) {
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(first) = answers.by_key.get(&key) {
            return first.clone();
        }
        answers.by_key.insert(key.clone(), (status, answer.clone()));
        answers.order.push_back(key);
        while answers.order.len() > self.config.remembered_keys_max {
            if let Some(oldest) = answers.order.pop_front() {
                answers.by_key.remove(&oldest);
            }
        }
        (status, answer)
    }
}
