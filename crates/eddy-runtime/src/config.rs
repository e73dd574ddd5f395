//! Consumer settings. Every limit is named, documented and has a default.

use std::time::Duration;

/// Retries of transient failures: exponential backoff with full jitter, bounded.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included. Default 5. After the last one the message
    /// goes to the dead-letter topic.
    pub attempts_max: u32,
    /// The backoff ceiling of the first retry. Default 100 ms.
    pub backoff_initial: Duration,
    /// The backoff ceiling never exceeds this. Default 10 s.
    pub backoff_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts_max: 5,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The ceiling of the backoff after failed attempt `attempt` (1-based):
    /// `min(backoff_max, backoff_initial × 2^(attempt−1))`. The actual sleep is drawn
    /// uniformly from `[0, ceiling]` (full jitter), which spreads retries of many
    /// consumers instead of synchronising them.
    pub fn backoff_ceiling(&self, attempt: u32) -> Duration {
        self.backoff().ceiling(attempt)
    }

    /// The policy's backoff ([`eddy_core::Backoff`], shared with the relay and the
    /// retry layer).
    pub fn backoff(&self) -> eddy_core::Backoff {
        eddy_core::Backoff::new(self.backoff_initial, self.backoff_max)
    }
}

/// Settings of a [`crate::Consumer`].
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Handler calls running at once, across keys. Default 32. May exceed the number
    /// of partitions: order is kept per key, not per partition.
    pub concurrency: usize,
    /// Messages fetched but not yet finished. Default 1024. When reached, fetching
    /// pauses until messages finish (backpressure).
    pub in_flight_max: usize,
    /// Messages asked for per fetch. Default 256.
    pub fetch_len_max: usize,
    /// How often finished positions are committed. Default 100 ms.
    pub commit_interval: Duration,
    /// On shutdown, how long in-flight messages may take to finish; what is left is
    /// abandoned uncommitted and will be delivered again. Default 30 s.
    pub drain_timeout: Duration,
    pub retry: RetryPolicy,
    /// Where poison messages go. Default `<topic>.dlq`.
    pub dead_letter_topic: Option<String>,
    /// Seed of the backoff jitter, for reproducible tests. Default: from the OS.
    pub jitter_seed: Option<u64>,
    /// How long a key waits before trying again when its handler reports the dependency
    /// unavailable (an open breaker); the wait is jittered between half and all of it.
    /// Such tries spend no attempt. Default 1 s.
    pub unavailable_pause: Duration,
    /// How long one message may keep pausing on "unavailable" before its tries count
    /// as transient failures again (spending attempts, and at the end going to the
    /// dead letters): the bound that keeps a handler which always says unavailable
    /// from holding its key forever. Default 15 min — longer than a failover.
    pub unavailable_wait_max: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            concurrency: 32,
            in_flight_max: 1024,
            fetch_len_max: 256,
            commit_interval: Duration::from_millis(100),
            drain_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            dead_letter_topic: None,
            jitter_seed: None,
            unavailable_pause: Duration::from_secs(1),
            unavailable_wait_max: Duration::from_secs(15 * 60),
        }
    }
}

impl ConsumerConfig {
    /// Checks the limits; a zero would stall or spin the consumer.
    pub fn validate(&self) -> Result<(), eddy_core::Error> {
        let positive = [
            ("concurrency", self.concurrency),
            ("in_flight_max", self.in_flight_max),
            ("fetch_len_max", self.fetch_len_max),
            ("retry.attempts_max", self.retry.attempts_max as usize),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(eddy_core::Error::permanent(format!(
                    "consumer setting {name} must be at least 1"
                )));
            }
        }
        if self.commit_interval.is_zero() {
            return Err(eddy_core::Error::permanent(
                "consumer setting commit_interval must be above zero",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_ceiling() {
        let policy = RetryPolicy {
            attempts_max: 10,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
        };
        let ceilings: Vec<u128> = (1..=6)
            .map(|a| policy.backoff_ceiling(a).as_millis())
            .collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(policy.backoff_ceiling(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn zero_limits_are_rejected() {
        let config = ConsumerConfig {
            concurrency: 0,
            ..ConsumerConfig::default()
        };
        assert!(config.validate().is_err());
        assert!(ConsumerConfig::default().validate().is_ok());
    }
}
