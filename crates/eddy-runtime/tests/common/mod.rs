//! What the runtime's test files share: the log's settings for tests and a bounded wait.

use std::time::Duration;

use eddy_log::LogConfig;

/// Quick heartbeats and polls, a short session: the log reacts within a test's time.
pub fn log_config() -> LogConfig {
    LogConfig {
        heartbeat_interval: Duration::from_millis(100),
        session_timeout: Duration::from_millis(1000),
        fallback_poll_interval: Duration::from_millis(100),
        ..LogConfig::default()
    }
}

/// Waits until `done`, failing the test after 60 s.
pub async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
