//! What every service module gets: its own database and outbox.

use std::sync::Arc;

use eddy_core::{Clock, Envelope, Event, JsonCodec, SystemClock};
use eddy_outbox::Outbox;
use eddy_sql::{Db, Tx};

/// A service's own storage. Services never touch each other's.
#[derive(Debug, Clone)]
pub struct ServiceDb {
    pub name: &'static str,
    pub db: Db,
    pub outbox: Outbox,
    pub clock: Arc<dyn Clock>,
}

impl ServiceDb {
    pub async fn open(name: &'static str, db: Db) -> Result<Self, eddy_core::Error> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let outbox = Outbox::open(db.clone(), clock.clone()).await?;
        db.migrate(eddy_sql::idempotency::MIGRATIONS).await?;
        Ok(Self {
            name,
            db,
            outbox,
            clock,
        })
    }

    /// Encodes `event` (as caused by `cause`, if any) and appends it to the outbox in `tx`.
    pub async fn emit<E: Event>(
        &self,
        tx: &mut Tx,
        topic: &str,
        event: &E,
        cause: Option<&Envelope>,
    ) -> Result<(), eddy_core::Error> {
        let mut envelope = JsonCodec::encode(event, self.clock.as_ref())?;
        if let Some(cause) = cause {
            envelope = envelope.caused_by(cause);
        }
        self.outbox
            .append(tx, topic, std::slice::from_ref(&envelope))
            .await
    }

    pub fn now_us(&self) -> i64 {
        eddy_core::envelope::to_micros(self.clock.now())
    }
}

/// RFC 3339 text of a microsecond timestamp.
pub fn rfc3339(micros: i64) -> String {
    eddy_core::envelope::from_micros(micros)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
