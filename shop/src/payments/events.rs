//! What payments consumes (`StockReserved` from `inventory`, `OrderCancelled` from
//! `orders`) and publishes on `payments` (`PaymentCaptured` / `PaymentDeclined` /
//! `PaymentRefunded`).
//!
//! Why no double charge: one `charges` row per order (a unique key) records the attempt
//! before the provider is called, and the provider is called with the order id as its
//! idempotency key, so a redelivered `StockReserved` or a retried call returns the
//! first answer. The outcome and its event commit together, only from `pending`.
//!
//! Why no charge stays pending: the provider is asked to charge only within
//! `payments.reconcile_after_secs` of the charge being recorded (less the call's own
//! budget); past that, [`reconcile`] asks the provider what became of the key and
//! settles the charge by the answer ("never arrived" is a failed charge). So a
//! `StockReserved` that was dead-lettered, or an answer lost on the way back, still ends.
//!
//! Why a cancelled order keeps no money: on `OrderCancelled` a captured charge is
//! refunded, a charge not yet made is voided (a late `StockReserved` then does
//! nothing), and a charge in flight is waited for.

use std::sync::Arc;
use std::time::Duration;

use eddy_core::{async_trait, Envelope, Handler, HandlerError};
use eddy_resilience::Deadline;
use eddy_sql::Tx;
use eddy_telemetry::Timed;

use super::domain::{ChargeOutcome, ChargeStatus, ProviderRecord};
use super::provider_client::{ProviderClient, ProviderLimits};
use super::store;
use crate::contracts::values::Timestamp;
use crate::contracts::{
    OrderCancelled, PaymentCaptured, PaymentDeclined, PaymentRefunded, StockReserved,
    INVENTORY_TOPIC, ORDERS_TOPIC, PAYMENTS_TOPIC,
};
use crate::service::{ServiceContext, ServiceDb, Subscription, Sweep};

/// Charges orders whose stock is reserved. Not one transaction with its
/// processed-event record: the provider call sits between the attempt and its outcome,
/// and the charge row (not the record) is what makes a redelivery harmless.
#[derive(Debug, Clone)]
pub struct Charge {
    pub service: ServiceDb,
    pub provider: ProviderClient,
    /// A charge's time budget when the event carries no deadline.
    pub budget: Duration,
    /// See `payments.reconcile_after_secs`.
    pub reconcile_after: Duration,
}

fn micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
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
            &event.customer_id,
            event.total_cents,
            &event.currency,
            service.now(),
        )
        .await?;
        tx.commit().await?;
        if charge.status != ChargeStatus::Pending {
            return Ok(()); // settled or voided before; its event went out then
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
        // Past this, the reconciler may be asking the provider about this key: a call
        // now could land after it concluded "never arrived".
        let ask_until = charge
            .created_at
            .micros()
            .saturating_add(micros(self.reconcile_after));
        let call_ends = service
            .now()
            .micros()
            .saturating_add(micros(deadline.remaining()));
        if call_ends >= ask_until {
            tracing::warn!(order_id = %event.order_id, "too late to ask the provider; the reconciler settles this charge");
            return Ok(());
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
        let mut tx = self.service.db.begin().await?;
        settle_in(&self.service, &mut tx, charge, outcome, Some(cause)).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// [`Charge::settle`] inside `tx`; true when it settled (it was pending).
async fn settle_in(
    service: &ServiceDb,
    tx: &mut Tx,
    charge: store::Charge,
    outcome: &ChargeOutcome,
    cause: Option<&Envelope>,
) -> Result<bool, HandlerError> {
    let settlement = outcome.settlement();
    if !store::settle(tx, &charge.order_id, &settlement, service.now()).await? {
        return Ok(false);
    }
    match settlement.declined {
        None => {
            let captured = PaymentCaptured {
                order_id: charge.order_id,
                charge_id: charge.id,
                amount_cents: charge.amount_cents,
            };
            service.emit(tx, PAYMENTS_TOPIC, &captured, cause).await?;
        }
        Some(reason) => {
            let declined = PaymentDeclined {
                order_id: charge.order_id,
                charge_id: charge.id,
                reason: reason.as_str().to_owned(),
            };
            service.emit(tx, PAYMENTS_TOPIC, &declined, cause).await?;
        }
    }
    Ok(true)
}

/// Settles `charge` (pending, old enough that nobody asks the provider for it any
/// more) by the provider's record of its key: settled as the provider says, or failed
/// when the request never arrived. A record of a refund (a refund that committed at
/// the provider but not here) settles it as refunded.
async fn reconcile_one(
    service: &ServiceDb,
    provider: &ProviderClient,
    charge: store::Charge,
) -> Result<(), HandlerError> {
    let record = provider.look_up(&charge.order_id).await?;
    let mut tx = service.db.begin().await?;
    let order_id = charge.order_id.clone();
    match record {
        ProviderRecord::Settled(outcome) => {
            settle_in(service, &mut tx, charge, &outcome, None).await?;
        }
        ProviderRecord::Unknown => {
            let never_arrived = ChargeOutcome::Rejected {
                detail: "the charge request never reached the provider".to_owned(),
            };
            settle_in(service, &mut tx, charge, &never_arrived, None).await?;
        }
        ProviderRecord::Refunded { .. } => {
            store::transition(
                &mut tx,
                &order_id,
                ChargeStatus::Pending,
                ChargeStatus::Refunded,
                service.now(),
            )
            .await?;
        }
    }
    tx.commit().await?;
    tracing::warn!(%order_id, "pending charge reconciled with the provider");
    Ok(())
}

/// Reconciles every charge pending longer than `after` (at most `limit`): see the
/// module docs. Returns how many were reconciled; one that fails stays for the next
/// sweep.
pub async fn reconcile(
    service: &ServiceDb,
    provider: &ProviderClient,
    after: Duration,
    limit: i64,
) -> Result<u64, eddy_core::Error> {
    let before = Timestamp::from_micros(service.now().micros().saturating_sub(micros(after)));
    let due = store::pending_before(service.db.pool(), before, limit).await?;
    let mut reconciled = 0;
    for charge in due {
        let order_id = charge.order_id.clone();
        match reconcile_one(service, provider, charge).await {
            Ok(()) => reconciled += 1,
            Err(error) => tracing::warn!(%order_id, %error, "cannot reconcile the charge yet"),
        }
    }
    Ok(reconciled)
}

/// Makes sure a cancelled order keeps no money: refunds a captured charge, voids one
/// not yet made, waits for one in flight (see the module docs).
#[derive(Debug, Clone)]
pub struct OnOrderCancelled {
    pub service: ServiceDb,
    pub provider: ProviderClient,
    pub reconcile_after: Duration,
}

#[async_trait]
impl Handler<OrderCancelled> for OnOrderCancelled {
    async fn handle(&self, event: OrderCancelled, envelope: &Envelope) -> Result<(), HandlerError> {
        let service = &self.service;
        let mut tx = service.db.begin().await?;
        let charge = store::find(&mut tx, &event.order_id).await?;
        let Some(charge) = charge else {
            // Never charged: make sure a late StockReserved never is.
            let voided = store::void(&mut tx, &event.order_id, service.now()).await?;
            tx.commit().await?;
            if !voided {
                // A charge was recorded meanwhile (on PostgreSQL the void waited for
                // it): handle the cancellation against that charge.
                return Err(HandlerError::transient(format!(
                    "a charge of cancelled order {} appeared; looking again",
                    event.order_id
                )));
            }
            return Ok(());
        };
        tx.commit().await?;
        match charge.status {
            ChargeStatus::Pending => {
                let age = service
                    .now()
                    .micros()
                    .saturating_sub(charge.created_at.micros());
                if age < micros(self.reconcile_after) {
                    // A call may be in flight: wait for its answer (or the reconciler).
                    return Err(HandlerError::unavailable(format!(
                        "the charge of cancelled order {} is in flight",
                        event.order_id
                    )));
                }
                reconcile_one(service, &self.provider, charge).await?;
                // Settled now: handle the cancellation against what it settled to.
                Err(HandlerError::transient("charge reconciled; looking again"))
            }
            ChargeStatus::Captured => self.refund(charge, envelope).await,
            ChargeStatus::Declined
            | ChargeStatus::Failed
            | ChargeStatus::Refunded
            | ChargeStatus::Voided => Ok(()),
        }
    }
}

impl OnOrderCancelled {
    async fn refund(&self, charge: store::Charge, cause: &Envelope) -> Result<(), HandlerError> {
        self.provider.refund(&charge.order_id).await?;
        let service = &self.service;
        let mut tx = service.db.begin().await?;
        let refunded = store::transition(
            &mut tx,
            &charge.order_id,
            ChargeStatus::Captured,
            ChargeStatus::Refunded,
            service.now(),
        )
        .await?;
        if refunded {
            let event = PaymentRefunded {
                order_id: charge.order_id.clone(),
                charge_id: charge.id,
                amount_cents: charge.amount_cents,
            };
            service
                .emit(&mut tx, PAYMENTS_TOPIC, &event, Some(cause))
                .await?;
            tracing::warn!(order_id = %charge.order_id, "captured charge of a cancelled order refunded");
        }
        tx.commit().await?;
        Ok(())
    }
}

/// The provider behind its defences; one per process, shared by the charge handler, the
/// cancellation handler and the reconciler (one breaker, one connection pool).
pub fn provider(ctx: &ServiceContext<'_>) -> anyhow::Result<ProviderClient> {
    let payments = &ctx.config.payments;
    ProviderClient::new(
        ctx.provider_url,
        ProviderLimits {
            timeout: Duration::from_millis(payments.provider_timeout_ms),
            concurrency_max: payments.provider_concurrency_max,
            queue_max: payments.provider_queue_max,
        },
    )
}

pub fn subscriptions(ctx: &ServiceContext<'_>, provider: &ProviderClient) -> Vec<Subscription> {
    let payments = &ctx.config.payments;
    let reconcile_after = Duration::from_secs(payments.reconcile_after_secs);
    let charge = Charge {
        service: ctx.service.clone(),
        provider: provider.clone(),
        budget: Duration::from_millis(payments.charge_budget_ms),
        reconcile_after,
    };
    let cancelled = OnOrderCancelled {
        service: ctx.service.clone(),
        provider: provider.clone(),
        reconcile_after,
    };
    let name = ctx.service.name.as_str();
    vec![
        Subscription {
            topic: INVENTORY_TOPIC,
            router: eddy_runtime::Router::new().route::<StockReserved, _>(Timed::new(name, charge)),
        },
        Subscription {
            topic: ORDERS_TOPIC,
            router: eddy_runtime::Router::new()
                .route::<OrderCancelled, _>(Timed::new(name, cancelled)),
        },
    ]
}

/// Payments' sweep: [`reconcile`] every `maintenance.saga_sweep_interval_secs`.
pub fn sweeps(ctx: &ServiceContext<'_>, provider: &ProviderClient) -> Vec<Sweep> {
    let service = ctx.service.clone();
    let provider = provider.clone();
    let after = Duration::from_secs(ctx.config.payments.reconcile_after_secs);
    let limit = i64::try_from(ctx.config.maintenance.saga_sweep_len_max).unwrap_or(i64::MAX);
    vec![Sweep {
        name: "payments reconciler",
        interval: Duration::from_secs(ctx.config.maintenance.saga_sweep_interval_secs),
        run: Arc::new(move || {
            let (service, provider) = (service.clone(), provider.clone());
            Box::pin(async move { reconcile(&service, &provider, after, limit).await })
        }),
    }]
}
