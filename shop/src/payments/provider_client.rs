//! The payment provider's client: the bare HTTP call as a tower service, behind Eddy's
//! defences.

use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use eddy_core::HandlerError;
use eddy_resilience::{
    BulkheadLayer, CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer, DeadlineExceeded,
    DeadlineLayer, RetryConfig, RetryLayer, RetrySafe,
};
use serde::{Deserialize, Serialize};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

use super::domain::{ChargeOutcome, ProviderRecord};

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
struct ChargeResponse {
    id: String,
    status: String,
}

/// The provider failed (a 5xx, a 429, an unreadable or unknown answer, no connection):
/// the kind of failure the breaker counts and a retry may cure.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProviderFailed(pub String);

/// The bare HTTP call, as a tower service the resilience layers wrap.
#[derive(Debug, Clone)]
struct HttpProvider {
    http: reqwest::Client,
    base_url: Arc<str>,
}

impl HttpProvider {
    async fn charge(self, call: ChargeCall) -> Result<ChargeOutcome, BoxError> {
        // A span per try: each retry is a call of its own.
        let span = eddy_trace::client_span("POST /v1/charges", &self.base_url);
        let mut request = self
            .http
            .post(format!("{}/v1/charges", self.base_url))
            .header("idempotency-key", &call.idempotency_key);
        if let Some(context) = eddy_trace::context_of(&span) {
            request = request.header("traceparent", eddy_trace::traceparent(&context));
        }
        let response = request
            .json(&ChargeRequest {
                amount_cents: call.amount_cents,
                currency: &call.currency,
                reference: &call.idempotency_key,
            })
            .send()
            .instrument(span.clone())
            .await
            .map_err(|e| {
                eddy_trace::fail(&span);
                ProviderFailed(format!("payment provider unreachable: {e}"))
            })?;
        let status = response.status();
        span.record("http.response.status_code", status.as_u16());
        if status.is_server_error() {
            eddy_trace::fail(&span);
        }
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(ProviderFailed(format!("payment provider answered {status}")).into());
        }
        if status.is_client_error() {
            let detail = match response.text().await {
                Ok(body) => body,
                Err(error) => format!("(body unreadable: {error})"),
            };
            return Ok(ChargeOutcome::Rejected {
                detail: format!("{status}: {detail}"),
            });
        }
        let body: ChargeResponse = response
            .json()
            .await
            .map_err(|e| ProviderFailed(format!("unreadable provider answer: {e}")))?;
        match body.status.as_str() {
            "captured" => Ok(ChargeOutcome::Captured {
                provider_id: body.id,
            }),
            "declined" => Ok(ChargeOutcome::Declined {
                provider_id: body.id,
            }),
            // Not a decline: nobody knows whether money moved. Asked again with the
            // same key, the provider answers the same charge.
            other => Err(ProviderFailed(format!(
                "payment provider answered the unknown status {other:?} for charge {}",
                body.id
            ))
            .into()),
        }
    }
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
        Box::pin(self.clone().charge(call))
    }
}

/// Limits of the provider client.
#[derive(Debug, Clone)]
pub struct ProviderLimits {
    /// Each attempt is cut at this.
    pub timeout: Duration,
    /// Calls at once; also the idle connections kept.
    pub concurrency_max: usize,
    /// Calls waiting for a place; beyond, a call fails at once.
    pub queue_max: usize,
}

#[derive(Debug, Deserialize)]
struct RecordResponse {
    id: String,
    status: String,
}

/// The provider's record of a charge by its idempotency key, and refunds: background
/// calls of the reconciler, bounded by `timeout`, outside the request path's layers.
#[derive(Debug, Clone)]
struct Records {
    http: reqwest::Client,
    base_url: Arc<str>,
    timeout: Duration,
}

impl Records {
    /// The provider cannot be reached or failed: a cancellation waiting on a refund
    /// pauses (bounded by `unavailable_wait_max`) instead of spending its attempts and
    /// leaving the money where it is.
    fn failed(&self, what: &str, error: impl std::fmt::Display) -> HandlerError {
        HandlerError::unavailable(ProviderFailed(format!("{what}: {error}")))
    }

    async fn look_up(&self, key: &str) -> Result<ProviderRecord, HandlerError> {
        let response = self
            .http
            .get(format!("{}/v1/charges/{key}", self.base_url))
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| self.failed("payment provider unreachable", e))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(ProviderRecord::Unknown);
        }
        if !response.status().is_success() {
            return Err(self.failed("charge lookup answered", response.status()));
        }
        let body: RecordResponse = response
            .json()
            .await
            .map_err(|e| self.failed("unreadable charge record", e))?;
        match body.status.as_str() {
            "captured" => Ok(ProviderRecord::Settled(ChargeOutcome::Captured {
                provider_id: body.id,
            })),
            "declined" => Ok(ProviderRecord::Settled(ChargeOutcome::Declined {
                provider_id: body.id,
            })),
            "refunded" => Ok(ProviderRecord::Refunded {
                provider_id: body.id,
            }),
            other => Err(self.failed("charge record with the unknown status", other)),
        }
    }

    async fn refund(&self, key: &str) -> Result<(), HandlerError> {
        let response = self
            .http
            .post(format!("{}/v1/charges/{key}/refund", self.base_url))
            .header("idempotency-key", format!("refund-{key}"))
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| self.failed("payment provider unreachable", e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        if status.is_client_error() {
            // Not captured, or unknown: there is nothing to give back, and asking again
            // will not change that.
            return Err(HandlerError::permanent(ProviderFailed(format!(
                "refund of charge {key} refused: {status}"
            ))));
        }
        Err(self.failed("refund answered", status))
    }
}

/// The payment provider behind Eddy's defences: a bulkhead (`concurrency_max` calls at
/// once, `queue_max` waiting), budgeted retries (2 attempts, at most 10 % extra calls),
/// a circuit breaker (5 failures in 60 s open it for 30 s) and a deadline (each attempt
/// bounded by the time left and by `timeout`).
#[derive(Clone)]
pub struct ProviderClient {
    service: tower::util::BoxCloneSyncService<ChargeCall, ChargeOutcome, BoxError>,
    breaker: CircuitBreaker,
    records: Records,
}

impl std::fmt::Debug for ProviderClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderClient")
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

impl ProviderClient {
    pub fn new(base_url: impl Into<String>, limits: ProviderLimits) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            // A backstop only: the deadline layer cuts calls first.
            .timeout(limits.timeout + Duration::from_secs(1))
            .pool_max_idle_per_host(limits.concurrency_max)
            .build()?;
        let breaker = CircuitBreaker::new(CircuitBreakerConfig {
            name: "payment-provider".to_owned(),
            ..CircuitBreakerConfig::default()
        });
        let service = ServiceBuilder::new()
            .layer(BulkheadLayer::new(
                "payment-provider",
                limits.concurrency_max,
                limits.queue_max,
            ))
            .layer(RetryLayer::new(RetryConfig::default()))
            .layer(
                CircuitBreakerLayer::new(breaker.clone()).classify(|e| !e.is::<DeadlineExceeded>()),
            )
            .layer(DeadlineLayer {
                call_max: limits.timeout,
                ..DeadlineLayer::default()
            });
        let base_url: Arc<str> = Arc::from(base_url.into().trim_end_matches('/'));
        let records = Records {
            http: http.clone(),
            base_url: base_url.clone(),
            timeout: limits.timeout,
        };
        let service = service.service(HttpProvider { http, base_url });
        Ok(Self {
            service: tower::util::BoxCloneSyncService::new(service),
            breaker,
            records,
        })
    }

    pub fn breaker(&self) -> &CircuitBreaker {
        &self.breaker
    }

    /// What the provider knows of the charge with `idempotency_key`.
    pub async fn look_up(&self, idempotency_key: &str) -> Result<ProviderRecord, HandlerError> {
        self.records.look_up(idempotency_key).await
    }

    /// Refunds the captured charge with `idempotency_key` (again: the same answer).
    pub async fn refund(&self, idempotency_key: &str) -> Result<(), HandlerError> {
        self.records.refund(idempotency_key).await
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
