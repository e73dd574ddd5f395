//! The one backoff formula of Eddy — the consumer runtime's retries, the relay's
//! pauses after a failed batch and the retry layer all use it.
//!
//! Exponential with full jitter: after failed attempt `n` (1-based) the ceiling is
//! `min(max, initial × 2^(n−1))`, and a wait is drawn uniformly from `[0, ceiling]`,
//! which spreads the retries of many callers instead of synchronising them (AWS
//! Architecture Blog, "Exponential Backoff And Jitter").

use std::time::Duration;

/// An exponential backoff between `initial` and `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling after the first failure.
    pub initial: Duration,
    /// The ceiling never exceeds this.
    pub max: Duration,
}

impl Backoff {
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max }
    }

    /// The ceiling after failed attempt `attempt` (1-based; 0 counts as 1).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// A wait after failed attempt `attempt`: `fraction` (a uniform draw from `[0, 1)`,
    /// from the caller's own — possibly seeded — source) of the ceiling.
    pub fn jittered(&self, attempt: u32, fraction: f64) -> Duration {
        let fraction = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.ceiling(attempt).mul_f64(fraction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

    #[test]
    fn the_ceiling_doubles_from_initial_up_to_max() {
        assert_eq!(B.ceiling(0), Duration::from_millis(100));
        assert_eq!(B.ceiling(1), Duration::from_millis(100));
        assert_eq!(B.ceiling(2), Duration::from_millis(200));
        assert_eq!(B.ceiling(6), Duration::from_millis(3200));
        assert_eq!(B.ceiling(7), Duration::from_secs(5));
        assert_eq!(B.ceiling(u32::MAX), Duration::from_secs(5), "no overflow");
    }

    #[test]
    fn a_jittered_wait_stays_within_the_ceiling() {
        assert_eq!(B.jittered(3, 0.0), Duration::ZERO);
        assert_eq!(B.jittered(3, 0.5), Duration::from_millis(200));
        assert_eq!(B.jittered(3, 7.0), Duration::from_millis(400), "clamped");
        assert_eq!(B.jittered(3, f64::NAN), Duration::ZERO);
    }
}
