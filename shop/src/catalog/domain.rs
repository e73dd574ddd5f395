//! The catalog's rules: what a product is and what may change about it.

use crate::contracts::values::{Currency, Invalid, Money, ProductId, Timestamp, AMOUNT_CENTS_MAX};

/// Longest SKU, in characters.
pub const SKU_LEN_MAX: usize = 64;
/// Longest product name, in characters.
pub const NAME_LEN_MAX: usize = 200;
/// Largest stock figure an operator may set.
pub const STOCK_MAX: i64 = 1_000_000_000;

/// A stock-keeping unit: the operator's own, unique product code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sku(String);

impl Sku {
    pub fn parse(text: &str) -> Result<Self, Invalid> {
        if text.trim().is_empty() || text.chars().count() > SKU_LEN_MAX {
            return Err(Invalid::new(
                "invalid-sku",
                format!("sku must be 1 to {SKU_LEN_MAX} characters"),
            ));
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What customers see a product called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductName(String);

impl ProductName {
    pub fn parse(text: &str) -> Result<Self, Invalid> {
        if text.trim().is_empty() || text.chars().count() > NAME_LEN_MAX {
            return Err(Invalid::new(
                "invalid-name",
                format!("name must be 1 to {NAME_LEN_MAX} characters"),
            ));
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Units an operator says are available.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stock(i64);

impl Stock {
    pub fn parse(units: i64) -> Result<Self, Invalid> {
        if !(0..=STOCK_MAX).contains(&units) {
            return Err(Invalid::new(
                "invalid-stock",
                format!("stock must be between 0 and {STOCK_MAX}"),
            ));
        }
        Ok(Self(units))
    }

    pub fn units(self) -> i64 {
        self.0
    }
}

/// Cheapest price: one cent. A product priced 0 could be created but never sold — the
/// payment provider refuses a charge of 0, so every order for it would end
/// `payment_failed` — and the shop has no free-order path.
pub const PRICE_CENTS_MIN: i64 = 1;

/// A price in cents (its currency is the product's): [`PRICE_CENTS_MIN`] to
/// [`AMOUNT_CENTS_MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PriceCents(i64);

impl PriceCents {
    pub fn parse(cents: i64) -> Result<Self, Invalid> {
        if !(PRICE_CENTS_MIN..=AMOUNT_CENTS_MAX).contains(&cents) {
            return Err(Invalid::new(
                "invalid-price",
                format!("price_cents must be between {PRICE_CENTS_MIN} and {AMOUNT_CENTS_MAX}"),
            ));
        }
        Ok(Self(cents))
    }

    pub fn cents(self) -> i64 {
        self.0
    }
}

/// A product to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewProduct {
    pub sku: Sku,
    pub name: ProductName,
    pub price: Money,
    pub stock: Stock,
}

impl NewProduct {
    /// Checks each field in the order a form shows them; the first problem is reported.
    pub fn parse(
        sku: &str,
        name: &str,
        price_cents: i64,
        currency: &str,
        stock: i64,
    ) -> Result<Self, Invalid> {
        let sku = Sku::parse(sku)?;
        let name = ProductName::parse(name)?;
        let price = PriceCents::parse(price_cents)?;
        let stock = Stock::parse(stock)?;
        let price = Money::new(price.cents(), Currency::parse(currency)?)?;
        Ok(Self {
            sku,
            name,
            price,
            stock,
        })
    }
}

/// A change to a product: at least one of price, stock and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductChange {
    pub price: Option<PriceCents>,
    pub stock: Option<Stock>,
    pub name: Option<ProductName>,
}

impl ProductChange {
    pub fn parse(
        price_cents: Option<i64>,
        stock: Option<i64>,
        name: Option<&str>,
    ) -> Result<Self, Invalid> {
        if price_cents.is_none() && stock.is_none() && name.is_none() {
            return Err(Invalid::new(
                "empty-change",
                "give at least one of price_cents, stock, name",
            ));
        }
        Ok(Self {
            price: price_cents.map(PriceCents::parse).transpose()?,
            stock: stock.map(Stock::parse).transpose()?,
            name: name.map(ProductName::parse).transpose()?,
        })
    }
}

/// A product as the catalog holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    pub id: ProductId,
    pub sku: String,
    pub name: String,
    pub price_cents: i64,
    pub currency: String,
    /// As inventory last reported it (or as set by the operator).
    pub stock: i64,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(
        sku: &str,
        name: &str,
        price: i64,
        currency: &str,
        stock: i64,
    ) -> Result<NewProduct, Invalid> {
        NewProduct::parse(sku, name, price, currency, stock)
    }

    #[test]
    fn a_well_formed_product_parses() {
        let product = new("mug-1", "Mug", 1250, "EUR", 5).unwrap();
        assert_eq!(product.price.cents(), 1250);
        assert_eq!(product.price.currency().as_str(), "EUR");
        assert_eq!(product.stock.units(), 5);
    }

    #[test]
    fn each_bad_field_is_named() {
        let code = |r: Result<NewProduct, Invalid>| r.unwrap_err().code;
        assert_eq!(code(new("", "Mug", 1, "EUR", 1)), "invalid-sku");
        assert_eq!(
            code(new(&"s".repeat(SKU_LEN_MAX + 1), "Mug", 1, "EUR", 1)),
            "invalid-sku"
        );
        assert_eq!(code(new("s", " ", 1, "EUR", 1)), "invalid-name");
        assert_eq!(
            code(new("s", &"é".repeat(NAME_LEN_MAX + 1), 1, "EUR", 1)),
            "invalid-name"
        );
        assert_eq!(code(new("s", "Mug", -1, "EUR", 1)), "invalid-price");
        // Free products cannot be paid for: refused rather than sold into payment_failed.
        assert_eq!(code(new("s", "Mug", 0, "EUR", 1)), "invalid-price");
        // Lengths are characters, as the API document counts them.
        assert!(new(&"é".repeat(SKU_LEN_MAX), "Mug", 1, "EUR", 1).is_ok());
        assert_eq!(
            code(new("s", "Mug", AMOUNT_CENTS_MAX + 1, "EUR", 1)),
            "invalid-price"
        );
        assert_eq!(code(new("s", "Mug", 1, "euro", 1)), "invalid-currency");
        assert_eq!(code(new("s", "Mug", 1, "EUR", -5)), "invalid-stock");
        assert_eq!(
            code(new("s", "Mug", 1, "EUR", STOCK_MAX + 1)),
            "invalid-stock"
        );
    }

    #[test]
    fn a_name_is_measured_in_characters_not_bytes() {
        assert!(ProductName::parse(&"é".repeat(NAME_LEN_MAX)).is_ok());
    }

    #[test]
    fn a_change_needs_something_to_change() {
        assert_eq!(
            ProductChange::parse(None, None, None).unwrap_err().code,
            "empty-change"
        );
        assert_eq!(
            ProductChange::parse(None, Some(-1), None).unwrap_err().code,
            "invalid-stock"
        );
        let change = ProductChange::parse(Some(99), None, None).unwrap();
        assert_eq!(change.price, Some(PriceCents::parse(99).unwrap()));
    }
}
