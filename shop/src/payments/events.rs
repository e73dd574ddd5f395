//! What payments consumes (`StockReserved` from `inventory`) and publishes on
//! `payments` (`PaymentCaptured` / `PaymentDeclined`).
//!
//! Why no double charge: one `charges` row per order (a unique key) records the attempt
//! before the provider is called, and the provider is called with the order id as its
//! idempotency key, so a redelivered `StockReserved` or a retried call returns the
//! first answer. The outcome and its event commit together, only from `pending`.

use std::time::Duration;

use eddy_core::{async_trait, Envelope, Handler, HandlerError};
use eddy_resilience::Deadline;
use eddy_telemetry::Timed;

use super::domain::{ChargeOutcome, ChargeStatus};
use super::provider_client::{ProviderClient, ProviderLimits};
use super::store;
use crate::contracts::{
    PaymentCaptured, PaymentDeclined, StockReserved, INVENTORY_TOPIC, PAYMENTS_TOPIC,
};
use crate::service::{ServiceContext, ServiceDb, Subscription};

/// Charges orders whose stock is reserved. Not one transaction with its
/// processed-event record: the provider call sits between the attempt and its outcome,
/// and the charge row (not the record) is what makes a redelivery harmless.
#[derive(Debug, Clone)]
pub struct Charge {
    pub service: ServiceDb,
    pub provider: ProviderClient,
    /// A charge's time budget when the event carries no deadline.
    pub budget: Duration,
}

#[async_trait]
impl Handler<StockReserved> for Charge {
    async fn handle(&self, event: StockReserved, envelope: &Envelope) -> Result<(), HandlerError> {
        let service = &self.service;
        // 1. Record the attempt (once per order), outside any call.
        let mut tx = service.db.begin().await?;
        let charge = store::record(
            &mut tx,
            &event.order_id,
            event.total_cents,
            &event.currency,
            service.now(),
        )
        .await?;
        tx.commit().await?;
        if charge.status != ChargeStatus::Pending {
            return Ok(()); // settled before; its event went out with the settlement
        }

        // 2. Ask the provider; the order id makes a repeated ask harmless. The event's
        //    deadline, if it carries one, bounds the call.
        let deadline = envelope
            .headers
            .get(eddy_core::Headers::DEADLINE)
            .and_then(Deadline::from_header)
            .unwrap_or_else(|| Deadline::after(self.budget));
        if deadline.is_expired() {
            return Err(HandlerError::permanent(
                "the order's deadline passed before it could be charged",
            ));
        }
        let outcome = deadline
            .scope(
                self.provider
                    .charge(&event.order_id, charge.amount_cents, &charge.currency),
            )
            .await?;
        if let ChargeOutcome::Rejected { detail } = &outcome {
            tracing::warn!(order_id = %event.order_id, %detail, "provider rejected the charge");
        }

        // 3. Record the outcome and announce it, together, only once.
        self.settle(charge, &outcome, envelope).await
    }
}

impl Charge {
    /// Settles `charge` from pending on `outcome` and announces it in the same
    /// transaction; a charge settled before is left alone (its event went out then).
    async fn settle(
        &self,
        charge: store::Charge,
        outcome: &ChargeOutcome,
        cause: &Envelope,
    ) -> Result<(), HandlerError> {
        let service = &self.service;
        let settlement = outcome.settlement();
        let mut tx = service.db.begin().await?;
        if store::settle(&mut tx, &charge.order_id, &settlement, service.now()).await? {
            match settlement.declined {
                None => {
                    let captured = PaymentCaptured {
                        order_id: charge.order_id,
                        charge_id: charge.id,
                        amount_cents: charge.amount_cents,
                    };
                    service
                        .emit(&mut tx, PAYMENTS_TOPIC, &captured, Some(cause))
                        .await?;
                }
                Some(reason) => {
                    let declined = PaymentDeclined {
                        order_id: charge.order_id,
                        charge_id: charge.id,
                        reason: reason.as_str().to_owned(),
                    };
                    service
                        .emit(&mut tx, PAYMENTS_TOPIC, &declined, Some(cause))
                        .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }
}

pub fn subscriptions(ctx: &ServiceContext<'_>) -> anyhow::Result<Vec<Subscription>> {
    let payments = &ctx.config.payments;
    let provider = ProviderClient::new(
        ctx.provider_url,
        ProviderLimits {
            timeout: Duration::from_millis(payments.provider_timeout_ms),
            concurrency_max: payments.provider_concurrency_max,
            queue_max: payments.provider_queue_max,
        },
    )?;
    let charge = Charge {
        service: ctx.service.clone(),
        provider,
        budget: Duration::from_millis(payments.charge_budget_ms),
    };
    Ok(vec![Subscription {
        topic: INVENTORY_TOPIC,
        router: eddy_runtime::Router::new()
            .route::<StockReserved, _>(Timed::new(ctx.service.name.as_str(), charge)),
    }])
}
