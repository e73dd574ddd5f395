//! A breaker's state as metrics: the `circuit_breaker_state` state set from its creation,
//! and each transition counted. Its own test binary: it installs the process's recorder.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use eddy_resilience::{BreakerState, CircuitBreaker, CircuitBreakerConfig};
use metrics_exporter_prometheus::PrometheusBuilder;

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|rest| rest.trim().parse().ok())
}

#[tokio::test(start_paused = true)]
async fn the_state_gauge_follows_the_breaker_from_its_creation() {
    let prometheus = PrometheusBuilder::new().install_recorder().unwrap();
    let state = |state: &str| {
        value(
            &prometheus.render(),
            &format!("circuit_breaker_state{{breaker=\"metered\",state=\"{state}\"}}"),
        )
    };
    let breaker = CircuitBreaker::new(CircuitBreakerConfig {
        name: "metered".into(),
        open_duration: Duration::from_secs(30),
        ..CircuitBreakerConfig::default()
    });
    // Closed from the start, before any transition.
    assert_eq!(state("closed"), Some(1.0));
    assert_eq!(state("open"), Some(0.0));
    assert_eq!(state("half_open"), Some(0.0));

    for _ in 0..5 {
        breaker.try_acquire().unwrap().record(true);
    }
    assert_eq!(breaker.state(), BreakerState::Open);
    assert_eq!(state("open"), Some(1.0));
    assert_eq!(state("closed"), Some(0.0));
    let opened = value(
        &prometheus.render(),
        "circuit_breaker_state_changes{breaker=\"metered\",from=\"closed\",to=\"open\"}",
    );
    assert_eq!(opened, Some(1.0));

    tokio::time::advance(Duration::from_secs(31)).await;
    let probe = breaker.try_acquire().unwrap();
    assert_eq!(breaker.state(), BreakerState::HalfOpen);
    assert_eq!(state("half_open"), Some(1.0));
    assert_eq!(state("open"), Some(0.0));
    probe.record(false);
    assert_eq!(breaker.state(), BreakerState::Closed);
    assert_eq!(state("closed"), Some(1.0));
    assert_eq!(state("half_open"), Some(0.0));
}
