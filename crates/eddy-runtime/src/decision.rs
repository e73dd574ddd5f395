//! What to do after a handler attempt failed: a pure function of the error's kind, the
//! attempt and the retry policy, so the rules are tested without a runtime.

use std::time::Duration;

use eddy_core::ErrorKind;

use crate::RetryPolicy;

/// The runtime's answer to a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The dependency is down and the handler did not try: wait about
    /// `unavailable_pause` and try again, spending no attempt.
    Pause,
    /// Try again after a wait drawn from `[0, ceiling]` (full jitter).
    Retry { ceiling: Duration },
    /// Give up: publish the message to the dead letters.
    DeadLetter,
}

/// The decision after attempt `attempt` (1-based) failed with an error of `kind`:
/// unavailable → pause; transient with attempts left → retry; otherwise (permanent, or
/// the last attempt) → dead letter.
pub fn decide(kind: ErrorKind, attempt: u32, policy: &RetryPolicy) -> Decision {
    match kind {
        ErrorKind::Unavailable => Decision::Pause,
        ErrorKind::Transient if attempt < policy.attempts_max => Decision::Retry {
            ceiling: policy.backoff_ceiling(attempt),
        },
        ErrorKind::Transient | ErrorKind::Permanent => Decision::DeadLetter,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(attempts_max: u32) -> RetryPolicy {
        RetryPolicy {
            attempts_max,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_transient_failure_is_retried_until_the_last_attempt() {
        let p = policy(3);
        assert_eq!(
            decide(ErrorKind::Transient, 1, &p),
            Decision::Retry {
                ceiling: Duration::from_millis(100)
            }
        );
        assert_eq!(
            decide(ErrorKind::Transient, 2, &p),
            Decision::Retry {
                ceiling: Duration::from_millis(200)
            }
        );
        assert_eq!(decide(ErrorKind::Transient, 3, &p), Decision::DeadLetter);
    }

    #[test]
    fn a_permanent_failure_goes_to_the_dead_letters_at_once() {
        assert_eq!(
            decide(ErrorKind::Permanent, 1, &policy(5)),
            Decision::DeadLetter
        );
    }

    #[test]
    fn an_unavailable_dependency_pauses_whatever_the_attempt() {
        for attempt in [1, 5, 50] {
            assert_eq!(
                decide(ErrorKind::Unavailable, attempt, &policy(5)),
                Decision::Pause
            );
        }
    }

    #[test]
    fn one_attempt_means_no_retry() {
        assert_eq!(
            decide(ErrorKind::Transient, 1, &policy(1)),
            Decision::DeadLetter
        );
    }
}
