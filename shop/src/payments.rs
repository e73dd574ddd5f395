//! Payments: charges an order once its stock is reserved, through the external payment
//! provider over HTTP, and never twice.
//!
//! Why no double charge: one `charges` row per order (a unique key) records the attempt
//! before the provider is called, and the provider is called with the order id as its
//! idempotency key, so a redelivered `StockReserved` or a retried call returns the
//! first answer. The outcome and its event commit together, only from `pending`.

use std::sync::Arc;
use std::time::Duration;

use eddy_resilience::{
    BulkheadLayer, CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer, Deadline,
    DeadlineExceeded, DeadlineLayer, RetryConfig, RetryLayer, RetrySafe,
};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use eddy_core::{async_trait, Envelope, Handler, HandlerError};
use eddy_sql::{classify, Migration};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::contracts::{PaymentCaptured, PaymentDeclined, StockReserved, PAYMENTS_TOPIC};
use crate::problem::ApiError;
use crate::service::{rfc3339, ServiceDb};

pub const MIGRATIONS: &[Migration] = &[Migration {
    name: "payments_0001_charges",
    sqlite: CHARGES,
    postgres: CHARGES,
}];

const CHARGES: &str = "CREATE TABLE IF NOT EXISTS charges (id TEXT PRIMARY KEY, order_id TEXT NOT NULL UNIQUE, amount_cents BIGINT NOT NULL, currency TEXT NOT NULL, status TEXT NOT NULL, provider_charge_id TEXT, reason TEXT, created_at_us BIGINT NOT NULL, updated_at_us BIGINT NOT NULL)";

/// One charge request to the provider. Always carries an idempotency key (the order
/// id), which is what makes retrying it safe.
#[derive(Debug, Clone)]
pub struct ChargeCall {
    pub idempotency_key: String,
    pub amount_cents: i64,
    pub currency: String,
}

impl RetrySafe for ChargeCall {
    fn retry_safe(&self) -> bool {
        !self.idempotency_key.is_empty()
    }
}

#[derive(Debug, Serialize)]
struct ChargeRequest<'a> {
    amount_cents: i64,
    currency: &'a str,
    reference: &'a str,
}

#[derive(Debug, Deserialize)]
pub struct ChargeResponse {
    pub id: String,
    pub status: String,
}

/// What the provider said.
#[derive(Debug)]
pub enum ChargeOutcome {
    Captured {
        provider_id: String,
    },
    Declined {
        provider_id: String,
    },
    /// The provider refused the request itself (4xx): asking again will not help.
    Rejected {
        detail: String,
    },
}

/// The provider failed (a 5xx, a 429, an unreadable answer, no connection): the kind of
/// failure the breaker counts and a retry may cure.
#[derive(Debug)]
pub struct ProviderFailed(pub String);

impl std::fmt::Display for ProviderFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProviderFailed {}

/// The bare HTTP call, as a tower service the resilience layers wrap.
#[derive(Debug, Clone)]
struct HttpProvider {
    http: reqwest::Client,
    base_url: Arc<str>,
}

impl Service<ChargeCall> for HttpProvider {
    type Response = ChargeOutcome;
    type Error = BoxError;
    type Future = futures::future::BoxFuture<'static, Result<ChargeOutcome, BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: ChargeCall) -> Self::Future {
        let (http, base_url) = (self.http.clone(), self.base_url.clone());
        Box::pin(async move {
            let response = http
                .post(format!("{base_url}/v1/charges"))
                .header("idempotency-key", &call.idempotency_key)
                .json(&ChargeRequest {
                    amount_cents: call.amount_cents,
                    currency: &call.currency,
                    reference: &call.idempotency_key,
                })
                .send()
                .await
                .map_err(|e| ProviderFailed(format!("payment provider unreachable: {e}")))?;
            let status = response.status();
            if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                return Err(ProviderFailed(format!("payment provider answered {status}")).into());
            }
            if status.is_client_error() {
                let detail = response.text().await.unwrap_or_default();
                return Ok(ChargeOutcome::Rejected {
                    detail: format!("{status}: {detail}"),
                });
            }
            let body: ChargeResponse = response
                .json()
                .await
                .map_err(|e| ProviderFailed(format!("unreadable provider answer: {e}")))?;
            Ok(match body.status.as_str() {
                "captured" => ChargeOutcome::Captured {
                    provider_id: body.id,
                },
                _ => ChargeOutcome::Declined {
                    provider_id: body.id,
                },
            })
        })
    }
}

/// The payment provider behind Eddy's defences: a bulkhead (64 calls at once, 256
/// waiting), budgeted retries (2 attempts, at most 10 % extra calls), a circuit breaker
/// (5 failures in 60 s open it for 30 s) and a deadline (each attempt bounded by the
/// time left and by `timeout`).
#[derive(Clone)]
pub struct ProviderClient {
    service: tower::util::BoxCloneSyncService<ChargeCall, ChargeOutcome, BoxError>,
    breaker: CircuitBreaker,
}

impl std::fmt::Debug for ProviderClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderClient")
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl ProviderClient {
    pub fn new(base_url: impl Into<String>, timeout: Duration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            // A backstop only: the deadline layer cuts calls first.
            .timeout(timeout + Duration::from_secs(1))
            .pool_max_idle_per_host(64)
            .build()?;
        let breaker = CircuitBreaker::new(CircuitBreakerConfig {
            name: "payment-provider".to_owned(),
            ..CircuitBreakerConfig::default()
        });
        let service = ServiceBuilder::new()
            .layer(BulkheadLayer::new("payment-provider", 64, 256))
            .layer(RetryLayer::new(RetryConfig::default()))
            .layer(
                CircuitBreakerLayer::new(breaker.clone()).classify(|e| !e.is::<DeadlineExceeded>()),
            )
            .layer(DeadlineLayer {
                call_max: timeout,
                ..DeadlineLayer::default()
            })
            .service(HttpProvider {
                http,
                base_url: Arc::from(base_url.into().trim_end_matches('/')),
            });
        Ok(Self {
            service: tower::util::BoxCloneSyncService::new(service),
            breaker,
        })
    }

    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// Charges `amount_cents`; `idempotency_key` makes a repeated call return the first
    /// answer. An open breaker is reported as [`eddy_core::ErrorKind::Unavailable`], so the
    /// consumer pauses instead of burning its attempts.
    pub async fn charge(
        &self,
        idempotency_key: &str,
        amount_cents: i64,
        currency: &str,
    ) -> Result<ChargeOutcome, HandlerError> {
        let call = ChargeCall {
            idempotency_key: idempotency_key.to_owned(),
            amount_cents,
            currency: currency.to_owned(),
        };
        match self.service.clone().oneshot(call).await {
            Ok(outcome) => Ok(outcome),
            Err(error) if self.breaker.is_dependency_down(&error) => {
                Err(HandlerError::unavailable(error))
            }
            Err(error) => Err(HandlerError::transient(error)),
        }
    }
}

/// The time budget of one charge when the event carries no deadline.
pub const DEFAULT_CHARGE_BUDGET: Duration = Duration::from_secs(5);

/// Charges orders whose stock is reserved.
#[derive(Debug, Clone)]
pub struct Charge {
    pub service: ServiceDb,
    pub provider: ProviderClient,
}

#[async_trait]
impl Handler<StockReserved> for Charge {
    async fn handle(&self, event: StockReserved, envelope: &Envelope) -> Result<(), HandlerError> {
        let service = &self.service;
        // 1. Record the attempt (once per order), outside any call.
        let mut tx = service.db.begin().await?;
        let now = service.now_us();
        sqlx::query("INSERT INTO charges (id, order_id, amount_cents, currency, status, created_at_us, updated_at_us) VALUES ($1, $2, $3, $4, 'pending', $5, $5) ON CONFLICT (order_id) DO NOTHING")
            .bind(uuid::Uuid::now_v7().to_string())
            .bind(&event.order_id)
            .bind(event.total_cents)
            .bind(&event.currency)
            .bind(now)
            .execute(tx.conn())
            .await
            .map_err(|e| classify("cannot record the charge", e))?;
        let row = sqlx::query(
            "SELECT id, status, amount_cents, currency FROM charges WHERE order_id = $1",
        )
        .bind(&event.order_id)
        .fetch_one(tx.conn())
        .await
        .map_err(|e| classify("cannot read the charge", e))?;
        tx.commit().await?;
        let status: String = row
            .try_get("status")
            .map_err(|e| classify("charge row", e))?;
        if status != "pending" {
            return Ok(()); // settled before; its event went out with the settlement
        }
        let charge_id: String = row.try_get("id").map_err(|e| classify("charge row", e))?;
        let amount: i64 = row
            .try_get("amount_cents")
            .map_err(|e| classify("charge row", e))?;
        let currency: String = row
            .try_get("currency")
            .map_err(|e| classify("charge row", e))?;

        // 2. Ask the provider; the order id makes a repeated ask harmless. The event's
        //    deadline, if it carries one, bounds the call.
        let deadline = envelope
            .headers
            .get(eddy_core::Headers::DEADLINE)
            .and_then(Deadline::from_header)
            .unwrap_or_else(|| Deadline::after(DEFAULT_CHARGE_BUDGET));
        if deadline.is_expired() {
            return Err(HandlerError::permanent(
                "the order's deadline passed before it could be charged",
            ));
        }
        let outcome = deadline
            .scope(self.provider.charge(&event.order_id, amount, &currency))
            .await?;

        // 3. Record the outcome and announce it, together, only once.
        let (status, provider_id, reason) = match &outcome {
            ChargeOutcome::Captured { provider_id } => {
                ("captured", Some(provider_id.as_str()), None)
            }
            ChargeOutcome::Declined { provider_id } => (
                "declined",
                Some(provider_id.as_str()),
                Some("payment_declined"),
            ),
            ChargeOutcome::Rejected { detail } => {
                tracing::warn!(order_id = %event.order_id, %detail, "provider rejected the charge");
                ("failed", None, Some("payment_failed"))
            }
        };
        let mut tx = service.db.begin().await?;
        let settled = sqlx::query("UPDATE charges SET status = $1, provider_charge_id = $2, reason = $3, updated_at_us = $4 WHERE order_id = $5 AND status = 'pending'")
            .bind(status)
            .bind(provider_id)
            .bind(reason)
            .bind(service.now_us())
            .bind(&event.order_id)
            .execute(tx.conn())
            .await
            .map_err(|e| classify("cannot settle the charge", e))?
            .rows_affected();
        if settled == 1 {
            match reason {
                None => {
                    let captured = PaymentCaptured {
                        order_id: event.order_id.clone(),
                        charge_id,
                        amount_cents: amount,
                    };
                    service
                        .emit(&mut tx, PAYMENTS_TOPIC, &captured, Some(envelope))
                        .await?;
                }
                Some(reason) => {
                    let declined = PaymentDeclined {
                        order_id: event.order_id.clone(),
                        charge_id,
                        reason: reason.to_owned(),
                    };
                    service
                        .emit(&mut tx, PAYMENTS_TOPIC, &declined, Some(envelope))
                        .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
pub struct ChargesQuery {
    pub order_id: String,
}

#[derive(Debug, Serialize)]
pub struct ChargeView {
    pub id: String,
    pub order_id: String,
    pub amount_cents: i64,
    pub currency: String,
    pub status: String,
    pub provider_charge_id: Option<String>,
    pub reason: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Serialize)]
pub struct Charges {
    pub items: Vec<ChargeView>,
}

pub fn routes(service: ServiceDb) -> Router {
    Router::new()
        .route("/v1/payments", get(list))
        .with_state(service)
}

async fn list(
    State(service): State<ServiceDb>,
    Query(query): Query<ChargesQuery>,
) -> Result<Json<Charges>, ApiError> {
    let rows = sqlx::query("SELECT id, order_id, amount_cents, currency, status, provider_charge_id, reason, created_at_us, updated_at_us FROM charges WHERE order_id = $1 ORDER BY created_at_us")
        .bind(&query.order_id)
        .fetch_all(service.db.pool())
        .await?;
    let items = rows
        .iter()
        .map(|r| {
            Ok(ChargeView {
                id: r.try_get("id")?,
                order_id: r.try_get("order_id")?,
                amount_cents: r.try_get("amount_cents")?,
                currency: r.try_get("currency")?,
                status: r.try_get("status")?,
                provider_charge_id: r.try_get("provider_charge_id")?,
                reason: r.try_get("reason")?,
                created_at: rfc3339(r.try_get("created_at_us")?),
                updated_at: rfc3339(r.try_get("updated_at_us")?),
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Json(Charges { items }))
}
