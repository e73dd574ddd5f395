//! The values the services' events and APIs speak of: ids, money, timestamps.
//!
//! Each is a newtype with a private field whose parsing constructor is the only way in,
//! so a `ProductId` in hand is known to be well formed. They are shared, like the
//! events, because they are the published language between the services; each service
//! keeps its own rules in its `domain.rs`.

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

/// Longest product id accepted: ids are UUIDs (36 bytes); the margin admits other
/// schemes while keeping an id a bounded key.
pub const PRODUCT_ID_LEN_MAX: usize = 64;
/// Longest order id accepted (ids are 36-byte UUIDs; the same margin as products').
pub const ORDER_ID_LEN_MAX: usize = 64;
/// Longest customer id accepted.
pub const CUSTOMER_ID_LEN_MAX: usize = 100;
/// Largest amount of money in cents (one hundred million in the main unit).
pub const AMOUNT_CENTS_MAX: i64 = 10_000_000_000;

/// A value that did not parse, with a message a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    /// What was invalid, as a problem type slug (`invalid-currency`).
    pub code: &'static str,
    pub message: String,
}

impl Invalid {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

macro_rules! text_id {
    ($(#[$doc:meta])* $name:ident, $len_max:expr, $code:literal, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Non-blank, at most the limit in characters (as the API document counts).
            pub fn parse(text: &str) -> Result<Self, Invalid> {
                if text.trim().is_empty() || text.chars().count() > $len_max {
                    return Err(Invalid::new(
                        $code,
                        format!(concat!($what, " must be 1 to {} characters"), $len_max),
                    ));
                }
                Ok(Self(text.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

text_id!(
    /// A product's id (catalog makes them: UUIDv7 text).
    ProductId,
    PRODUCT_ID_LEN_MAX,
    "invalid-product-id",
    "product_id"
);
text_id!(
    /// Who ordered.
    CustomerId,
    CUSTOMER_ID_LEN_MAX,
    "invalid-customer",
    "customer_id"
);

impl ProductId {
    /// A fresh id (time-ordered).
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }
}

/// An order's id (orders makes them: UUIDv7 text).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct OrderId(String);

impl OrderId {
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    /// Any non-empty text up to 64 bytes: ids come from events and paths, and an
    /// unknown id is simply not found.
    pub fn parse(text: &str) -> Result<Self, Invalid> {
        if text.is_empty() || text.len() > ORDER_ID_LEN_MAX {
            return Err(Invalid::new("invalid-order-id", "not an order id"));
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An ISO 4217 currency code: three capital letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency([u8; 3]);

impl Currency {
    pub fn parse(text: &str) -> Result<Self, Invalid> {
        match text.as_bytes() {
            &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_uppercase) => Ok(Self([a, b, c])),
            _ => Err(Invalid::new(
                "invalid-currency",
                "currency is an ISO 4217 code such as EUR",
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII capitals get in (see `parse`).
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// An amount of money: whole cents, never negative, at most [`AMOUNT_CENTS_MAX`], in one
/// currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Money {
    cents: i64,
    currency: Currency,
}

impl Money {
    pub fn new(cents: i64, currency: Currency) -> Result<Self, Invalid> {
        if !(0..=AMOUNT_CENTS_MAX).contains(&cents) {
            return Err(Invalid::new(
                "invalid-amount",
                format!("an amount must be between 0 and {AMOUNT_CENTS_MAX} cents"),
            ));
        }
        Ok(Self { cents, currency })
    }

    pub fn cents(&self) -> i64 {
        self.cents
    }

    pub fn currency(&self) -> Currency {
        self.currency
    }

    /// `self × quantity`, or `None` beyond [`AMOUNT_CENTS_MAX`].
    pub fn times(&self, quantity: i64) -> Option<Self> {
        let cents = self.cents.checked_mul(quantity)?;
        Self::new(cents, self.currency).ok()
    }

    /// `self + other`: `None` if the currencies differ or beyond [`AMOUNT_CENTS_MAX`].
    pub fn plus(&self, other: Money) -> Option<Self> {
        if self.currency != other.currency {
            return None;
        }
        Self::new(self.cents.checked_add(other.cents)?, self.currency).ok()
    }
}

/// A moment, stored as microseconds since the Unix epoch, written as RFC 3339.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(i64);

impl Timestamp {
    pub fn from_micros(micros: i64) -> Self {
        Self(micros)
    }

    pub fn micros(&self) -> i64 {
        self.0
    }

    /// RFC 3339 text; an error (not an empty string) for a moment `time` cannot write.
    pub fn rfc3339(&self) -> Result<String, String> {
        let at = eddy_core::envelope::from_micros(self.0).map_err(|e| e.to_string())?;
        at.format(&time::format_description::well_known::Rfc3339)
            .map_err(|e| format!("cannot format the time {}µs: {e}", self.0))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let text = self.rfc3339().map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    /// RFC 3339, as [`Timestamp`]'s `Serialize` writes it (caches keep views so).
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let at = time::OffsetDateTime::parse(&text, &time::format_description::well_known::Rfc3339)
            .map_err(serde::de::Error::custom)?;
        i64::try_from(at.unix_timestamp_nanos() / 1000)
            .map(Timestamp)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timestamp_reads_back_what_it_writes() {
        let at = Timestamp::from_micros(1_764_600_000_123_456);
        let text = serde_json::to_string(&at).unwrap();
        assert_eq!(serde_json::from_str::<Timestamp>(&text).unwrap(), at);
        assert!(serde_json::from_str::<Timestamp>("\"yesterday\"").is_err());
    }

    fn eur() -> Currency {
        Currency::parse("EUR").unwrap()
    }

    #[test]
    fn a_currency_is_three_capitals() {
        assert_eq!(eur().as_str(), "EUR");
        for bad in ["eur", "EU", "EURO", "", "E1R", "ÉUR"] {
            assert_eq!(
                Currency::parse(bad).unwrap_err().code,
                "invalid-currency",
                "{bad}"
            );
        }
    }

    #[test]
    fn money_refuses_negative_and_oversized_amounts() {
        assert!(Money::new(-1, eur()).is_err());
        assert!(Money::new(AMOUNT_CENTS_MAX + 1, eur()).is_err());
        assert_eq!(
            Money::new(AMOUNT_CENTS_MAX, eur()).unwrap().cents(),
            AMOUNT_CENTS_MAX
        );
    }

    #[test]
    fn money_does_not_overflow_or_mix_currencies() {
        let price = Money::new(1250, eur()).unwrap();
        assert_eq!(price.times(3).unwrap().cents(), 3750);
        assert!(price.times(i64::MAX).is_none());
        let usd = Money::new(1, Currency::parse("USD").unwrap()).unwrap();
        assert!(price.plus(usd).is_none());
        assert_eq!(price.plus(price).unwrap().cents(), 2500);
    }

    #[test]
    fn ids_are_bounded_and_not_blank() {
        assert!(ProductId::parse("").is_err());
        assert!(ProductId::parse(" ").is_err());
        assert!(ProductId::parse(&"p".repeat(PRODUCT_ID_LEN_MAX + 1)).is_err());
        assert!(ProductId::parse(&"p".repeat(PRODUCT_ID_LEN_MAX)).is_ok());
        assert_eq!(CustomerId::parse("").unwrap_err().code, "invalid-customer");
        assert!(CustomerId::parse(&"c".repeat(CUSTOMER_ID_LEN_MAX + 1)).is_err());
    }

    #[test]
    fn a_timestamp_is_written_as_rfc3339() {
        assert_eq!(
            Timestamp::from_micros(1_500_000).rfc3339().unwrap(),
            "1970-01-01T00:00:01.5Z"
        );
        assert!(Timestamp::from_micros(i64::MAX).rfc3339().is_err());
    }
}
