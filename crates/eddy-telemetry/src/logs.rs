//! Log setup.

use tracing_subscriber::filter::FilterFn;
use tracing_subscriber::prelude::*;

/// Installs the log subscriber: JSON lines or text, filtered by `level` (tracing's
/// filter syntax; `RUST_LOG` overrides it). A second call changes nothing.
///
/// Colours only when stdout is a terminal (never escape codes in a file), PostgreSQL's
/// notices (`relation … already exists, skipping`, a dozen per start) below the default
/// level unless asked for, and librdkafka's known shutdown noise dropped (see
/// [`noise_filter`]).
pub fn init_logs(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("sqlx::postgres::notice=warn,{level}"))
    });
    let text = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_target(false);
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(noise_filter());
    // An error means a subscriber is installed already (tests start several platforms).
    let _ = if json {
        registry.with(text.json()).try_init()
    } else {
        registry.with(text).try_init()
    };
}

/// Drops log lines that say nothing is wrong. Today one: rdkafka's `BaseConsumer` closes
/// its queue again when dropped and logs the refusal at ERROR ("Failed to close consumer
/// queue on drop: … BrokerDestroy") — eight lines per clean shutdown on Kafka — although
/// Eddy closed the consumer itself before (and warns when *that* fails). It is the only
/// ERROR that rdkafka module logs, so the target and level name it exactly.
pub fn noise_filter() -> FilterFn<impl Fn(&tracing::Metadata<'_>) -> bool + Clone> {
    FilterFn::new(|meta: &tracing::Metadata<'_>| {
        !(meta.target() == "rdkafka::consumer::base_consumer"
            && *meta.level() == tracing::Level::ERROR)
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tracing_subscriber::layer::Context;
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::Layer;

    struct Count(Arc<AtomicUsize>);

    impl<S: tracing::Subscriber> Layer<S> for Count {
        fn on_event(&self, _: &tracing::Event<'_>, _: Context<'_, S>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn rdkafkas_close_on_drop_error_is_dropped_and_nothing_else() {
        let seen = Arc::new(AtomicUsize::new(0));
        let subscriber = tracing_subscriber::registry()
            .with(super::noise_filter())
            .with(Count(seen.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(target: "rdkafka::consumer::base_consumer", "Failed to close consumer queue on drop: Consumer queue close error: BrokerDestroy");
            assert_eq!(
                seen.load(Ordering::Relaxed),
                0,
                "the shutdown noise got through"
            );
            tracing::warn!(target: "rdkafka::consumer::base_consumer", "invalid rebalance event");
            tracing::error!(target: "rdkafka::client", "a real error");
            tracing::error!("ours");
        });
        assert_eq!(seen.load(Ordering::Relaxed), 3);
    }
}
