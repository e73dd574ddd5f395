//! Payments' rules: a charge per order, recorded before the provider is asked, settled
//! once from pending by what the provider said.

use crate::contracts::values::Invalid;

/// Where a charge is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChargeStatus {
    /// Recorded; the provider has not answered yet.
    Pending,
    Captured,
    Declined,
    /// The provider refused the request itself (4xx), or never received it.
    Failed,
    /// Captured, then refunded because the order was cancelled.
    Refunded,
    /// The order was cancelled before it was charged: it never will be.
    Voided,
}

impl ChargeStatus {
    pub const fn as_str(self) -> &'static str {
        match self {
            ChargeStatus::Pending => "pending",
            ChargeStatus::Captured => "captured",
            ChargeStatus::Declined => "declined",
            ChargeStatus::Failed => "failed",
            ChargeStatus::Refunded => "refunded",
            ChargeStatus::Voided => "voided",
        }
    }

    pub fn parse(text: &str) -> Result<Self, Invalid> {
        match text {
            "pending" => Ok(ChargeStatus::Pending),
            "captured" => Ok(ChargeStatus::Captured),
            "declined" => Ok(ChargeStatus::Declined),
            "failed" => Ok(ChargeStatus::Failed),
            "refunded" => Ok(ChargeStatus::Refunded),
            "voided" => Ok(ChargeStatus::Voided),
            other => Err(Invalid::new(
                "invalid-status",
                format!("unknown charge status {other:?}"),
            )),
        }
    }
}

/// What the provider said about a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    Captured {
        provider_id: String,
    },
    Declined {
        provider_id: String,
    },
    /// The provider refused the request itself (4xx): asking again will not help.
    Rejected {
        detail: String,
    },
}

/// What the provider knows of a charge, asked by its idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderRecord {
    /// It settled as this (`Captured` or `Declined`).
    Settled(ChargeOutcome),
    /// It was captured and refunded since.
    Refunded { provider_id: String },
    /// No request with this key reached the provider.
    Unknown,
}

/// Why a charge did not go through, as `PaymentDeclined` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeclineReason {
    /// The provider said no.
    Declined,
    /// The provider could not be asked properly.
    Failed,
}

impl DeclineReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            DeclineReason::Declined => "payment_declined",
            DeclineReason::Failed => "payment_failed",
        }
    }
}

/// How a charge settles on `outcome`: its new status, the provider's id for it, and
/// the reason when it did not go through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement<'a> {
    pub status: ChargeStatus,
    pub provider_id: Option<&'a str>,
    pub declined: Option<DeclineReason>,
}

impl ChargeOutcome {
    pub fn settlement(&self) -> Settlement<'_> {
        match self {
            ChargeOutcome::Captured { provider_id } => Settlement {
                status: ChargeStatus::Captured,
                provider_id: Some(provider_id),
                declined: None,
            },
            ChargeOutcome::Declined { provider_id } => Settlement {
                status: ChargeStatus::Declined,
                provider_id: Some(provider_id),
                declined: Some(DeclineReason::Declined),
            },
            ChargeOutcome::Rejected { .. } => Settlement {
                status: ChargeStatus::Failed,
                provider_id: None,
                declined: Some(DeclineReason::Failed),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_outcome_settles_to_its_status_and_reason() {
        let captured = ChargeOutcome::Captured {
            provider_id: "ch_1".into(),
        };
        assert_eq!(captured.settlement().status, ChargeStatus::Captured);
        assert_eq!(captured.settlement().declined, None);
        let declined = ChargeOutcome::Declined {
            provider_id: "ch_2".into(),
        };
        assert_eq!(
            declined.settlement().declined,
            Some(DeclineReason::Declined)
        );
        assert_eq!(declined.settlement().provider_id, Some("ch_2"));
        let rejected = ChargeOutcome::Rejected {
            detail: "400".into(),
        };
        assert_eq!(rejected.settlement().status, ChargeStatus::Failed);
        assert_eq!(
            rejected.settlement().declined.map(DeclineReason::as_str),
            Some("payment_failed")
        );
    }

    #[test]
    fn statuses_round_trip() {
        for s in [
            ChargeStatus::Pending,
            ChargeStatus::Captured,
            ChargeStatus::Declined,
            ChargeStatus::Failed,
            ChargeStatus::Refunded,
            ChargeStatus::Voided,
        ] {
            assert_eq!(ChargeStatus::parse(s.as_str()).unwrap(), s);
        }
        assert!(ChargeStatus::parse("charged").is_err());
    }
}
