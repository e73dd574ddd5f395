//! Times a handler and counts its failures.

use std::time::Instant;

use eddy_core::{async_trait, Envelope, Event, Handler, HandlerError};

/// `inner`, with `event_processing_duration_seconds` and `events_failed_total` (by
/// consumer, event type and error kind) recorded around each call. Around a group
/// commit it measures the time an event took to become durable, the wait for its
/// batch included.
#[derive(Debug, Clone)]
pub struct Timed<H> {
    consumer: &'static str,
    inner: H,
}

impl<H> Timed<H> {
    pub fn new(consumer: &'static str, inner: H) -> Self {
        Self { consumer, inner }
    }
}

#[async_trait]
impl<E: Event, H: Handler<E>> Handler<E> for Timed<H> {
    async fn handle(&self, event: E, envelope: &Envelope) -> Result<(), HandlerError> {
        let started = Instant::now();
        let result = self.inner.handle(event, envelope).await;
        metrics::histogram!("event_processing_duration_seconds", "consumer" => self.consumer, "event_type" => E::TYPE)
            .record(started.elapsed().as_secs_f64());
        if let Err(error) = &result {
            metrics::counter!("events_failed_total", "consumer" => self.consumer, "event_type" => E::TYPE, "kind" => error.kind().to_string())
                .increment(1);
        }
        result
    }
}
