//! Orders' event store: every order is a stream ([`super::aggregate`]); a command loads
//! it in its transaction, decides, and appends with the version it loaded — orders' own
//! events also go to the outbox and the order views ([`super::store::OrderViews`]) move
//! in that same transaction.

use std::sync::Arc;

use eddy_core::{Envelope, Error, Event};
use eddy_eventstore::{
    AppendError, Appended, EventStore, Expected, Loaded, Projector, ProjectorConfig, Until,
};
use eddy_sql::Tx;
use time::OffsetDateTime;

use super::aggregate::{stream, OrderState};
use super::domain::{Order, OrderStatus, Outcome};
use super::store::{self, OrderViews};
use crate::contracts::{OrderCancelled, OrderConfirmed, OrderLine, OrderPlaced, ORDERS_TOPIC};
use crate::service::ServiceDb;

/// Orders imported per transaction from the tables of before event sourcing.
const IMPORT_BATCH: i64 = 200;

/// Orders' service with its event store and views. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Ledger {
    pub service: ServiceDb,
    pub store: EventStore,
    pub views: Projector,
}

impl Ledger {
    /// Opens the store and the views on orders' database, turns orders kept the old way
    /// into streams, and brings the views up to date before anything is served.
    pub async fn open(service: ServiceDb, views: ProjectorConfig) -> Result<Self, Error> {
        let store = EventStore::open(service.db.clone()).await?;
        let views = Projector::open(store.clone(), Arc::new(OrderViews), views).await?;
        let ledger = Self {
            service,
            store,
            views,
        };
        let imported = ledger.import_legacy().await?;
        if imported > 0 {
            tracing::info!(
                imported,
                "orders kept before event sourcing are now streams"
            );
        }
        ledger.views.catch_up(|_| {}).await?;
        Ok(ledger)
    }

    /// Appends `events` to order `id`'s stream if it is at `expected`, publishes those
    /// of `publish` on orders' topic, and moves the views, all in `tx`.
    pub async fn record(
        &self,
        tx: &mut Tx,
        id: &str,
        expected: Expected,
        events: &[Envelope],
        publish: &[Envelope],
    ) -> Result<Appended, Error> {
        let appended = self
            .store
            .append_in(tx, &stream(id), expected, events)
            .await
            .map_err(|e| match e {
                // A concurrent command moved the order first: retrying decides again
                // on what it did.
                AppendError::Conflict { .. } => {
                    Error::transient(format!("order {id} changed meanwhile: {e}"))
                }
                AppendError::Mismatch { .. } => Error::permanent(e.to_string()),
                AppendError::Store(e) => e,
            })?;
        if !publish.is_empty() && !appended.already {
            self.service
                .outbox
                .append(tx, ORDERS_TOPIC, publish)
                .await?;
        }
        self.views.catch_up_in(tx).await?;
        Ok(appended)
    }

    /// Order `id` as its stream has it in `tx`.
    pub async fn load_in(&self, tx: &mut Tx, id: &str) -> Result<Loaded<OrderState>, Error> {
        self.store.load_in(tx, &stream(id), Until::End).await
    }

    /// Order `id` as it was at `at` (what the store had recorded by then); `None` when
    /// it had not been placed yet.
    pub async fn as_of(&self, id: &str, at: OffsetDateTime) -> Result<Option<Order>, Error> {
        let loaded: Loaded<OrderState> = self.store.load(&stream(id), Until::Time(at)).await?;
        loaded.state.order()
    }

    /// Records `fact` (an outcome another service announced, if any) in order
    /// `order_id`'s stream and, if the order is pending and `outcome` settles it, the
    /// settlement, published. An unknown order is left alone; a settled one only gains
    /// the fact. Returns whether this call settled it.
    pub async fn settle(
        &self,
        tx: &mut Tx,
        order_id: &str,
        outcome: Option<Outcome>,
        fact: Option<&Envelope>,
    ) -> Result<bool, Error> {
        let loaded = self.load_in(tx, order_id).await?;
        let Some(placed) = &loaded.state.placed else {
            return Ok(false);
        };
        let mut events: Vec<Envelope> = fact.into_iter().cloned().collect();
        let settlement = match outcome {
            Some(outcome) if loaded.state.status() == OrderStatus::Pending => {
                let envelope = match outcome {
                    Outcome::Confirmed => self.service.envelope(
                        &OrderConfirmed {
                            order_id: order_id.to_owned(),
                            customer_id: placed.customer_id.clone(),
                            total_cents: placed.total_cents,
                            currency: placed.currency.clone(),
                        },
                        fact,
                    )?,
                    Outcome::Cancelled(reason) => self.service.envelope(
                        &OrderCancelled {
                            order_id: order_id.to_owned(),
                            customer_id: placed.customer_id.clone(),
                            reason: reason.as_str().to_owned(),
                        },
                        fact,
                    )?,
                };
                events.push(envelope.clone());
                Some(envelope)
            }
            _ => None,
        };
        if events.is_empty() {
            return Ok(false);
        }
        let appended = self
            .record(
                tx,
                order_id,
                Expected::Exact(loaded.version),
                &events,
                settlement.as_slice(),
            )
            .await?;
        let settled = settlement.is_some() && !appended.already;
        if let (true, Some(settlement)) = (settled, &settlement) {
            observe_settle_time(tx, &loaded.state, settlement);
        }
        Ok(settled)
    }

    /// Turns the orders of the tables kept before event sourcing into streams (placed,
    /// then confirmed or cancelled, at their stored times), one order per transaction;
    /// an order another process imported meanwhile is skipped. Nothing is published:
    /// those events went out when they happened.
    async fn import_legacy(&self) -> Result<u64, Error> {
        let mut imported = 0;
        loop {
            let orders = {
                let mut conn = self
                    .service
                    .db
                    .pool()
                    .acquire()
                    .await
                    .map_err(|e| eddy_sql::classify("cannot connect", e))?;
                store::legacy_orders(&mut conn, IMPORT_BATCH).await?
            };
            let found = orders.len();
            for order in orders {
                let events = legacy_events(&order)?;
                let mut tx = self.service.db.begin().await?;
                match self
                    .store
                    .append_in(
                        &mut tx,
                        &stream(order.id.as_str()),
                        Expected::NoStream,
                        &events,
                    )
                    .await
                {
                    Ok(_) => {
                        tx.commit().await?;
                        imported += 1;
                    }
                    Err(AppendError::Conflict { .. }) => tx.rollback().await?,
                    Err(AppendError::Mismatch { reason, .. }) => {
                        return Err(Error::permanent(reason))
                    }
                    Err(AppendError::Store(e)) => return Err(e),
                }
            }
            if found < IMPORT_BATCH as usize {
                return Ok(imported);
            }
        }
    }
}

/// Records in `order_settle_duration_seconds` how long the order took from placement to
/// `settlement` (the times the two events were recorded), once `tx` commits — a batch
/// rolled back and tried again is not counted twice.
fn observe_settle_time(tx: &mut Tx, state: &OrderState, settlement: &Envelope) {
    let seconds = (settlement.occurred_at_micros() - state.created_at_us).max(0) as f64 / 1e6;
    let outcome = if settlement.event_type == OrderConfirmed::TYPE {
        "confirmed"
    } else {
        "cancelled"
    };
    tx.after_commit(move || {
        Box::pin(async move {
            metrics::histogram!("order_settle_duration_seconds", "outcome" => outcome)
                .record(seconds);
        })
    });
}

/// The events an order kept the old way stands for.
fn legacy_events(order: &Order) -> Result<Vec<Envelope>, Error> {
    let id = order.id.as_str();
    let placed = OrderPlaced {
        order_id: id.to_owned(),
        customer_id: order.customer_id.clone(),
        lines: order
            .lines
            .iter()
            .map(|l| OrderLine {
                product_id: l.product_id.clone(),
                quantity: l.quantity,
                unit_price_cents: l.unit_price_cents,
            })
            .collect(),
        total_cents: order.total_cents,
        currency: order.currency.as_str().to_owned(),
    };
    let mut events = vec![imported(&placed, order.created_at.micros())?];
    let settled_at = order.updated_at.micros();
    match order.status {
        OrderStatus::Pending => {}
        OrderStatus::Confirmed => events.push(imported(
            &OrderConfirmed {
                order_id: id.to_owned(),
                customer_id: order.customer_id.clone(),
                total_cents: order.total_cents,
                currency: order.currency.as_str().to_owned(),
            },
            settled_at,
        )?),
        OrderStatus::Cancelled => events.push(imported(
            &OrderCancelled {
                order_id: id.to_owned(),
                customer_id: order.customer_id.clone(),
                reason: order
                    .cancel_reason
                    .as_ref()
                    .map_or("unknown", |r| r.as_str())
                    .to_owned(),
            },
            settled_at,
        )?),
    }
    Ok(events)
}

/// `event` as it would have been recorded at `micros`.
fn imported<E: Event>(event: &E, micros: i64) -> Result<Envelope, Error> {
    let payload = serde_json::to_vec(event)
        .map_err(|e| Error::permanent("cannot encode an imported order").with_source(e))?;
    Ok(Envelope::new(
        E::TYPE,
        E::SCHEMA_VERSION,
        event.key(),
        payload,
        eddy_core::envelope::from_micros(micros)?,
    ))
}
