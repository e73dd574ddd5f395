//! What the Kafka tests share: an adapter tuned for quick rebalances.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use eddy_kafka::{Kafka, KafkaConfig};

fn settings(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The adapter on `bootstrap_servers` with a 6 s session and 500 ms heartbeats (a dead
/// member's partitions move within seconds), then `consumer` and `producer` settings on
/// top, and a hand-off buffer of `buffer_len` messages.
pub fn connect(
    bootstrap_servers: String,
    consumer: &[(&str, &str)],
    producer: &[(&str, &str)],
    buffer_len: usize,
) -> Kafka {
    let mut consumer_settings = settings(&[
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "500"),
    ]);
    consumer_settings.extend(settings(consumer));
    Kafka::connect(KafkaConfig {
        bootstrap_servers,
        consumer: consumer_settings,
        producer: settings(producer),
        buffer_len,
        ..KafkaConfig::default()
    })
    .unwrap()
}
