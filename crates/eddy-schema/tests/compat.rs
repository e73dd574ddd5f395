//! The checker against schemas schemars generates from fixture types: every rule of
//! `docs/events.md` refused with its name, compatible changes accepted.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use eddy_schema::{check, schema_of, Breach, Change, Rule};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The version every test changes.
mod v1 {
    use super::*;

    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct OrderLine {
        pub product_id: String,
        pub quantity: i64,
    }

    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct Address {
        pub street: String,
    }

    #[derive(Serialize, Deserialize, JsonSchema)]
    pub enum Channel {
        Web,
        Shop,
    }

    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct OrderPlaced {
        pub order_id: String,
        pub customer_id: String,
        pub lines: Vec<OrderLine>,
        pub note: Option<String>,
        pub shipping: Option<Address>,
        pub prices: std::collections::BTreeMap<String, i32>,
        pub channel: Channel,
    }
}

fn breaches<New: JsonSchema>() -> Vec<Breach> {
    check(
        "orders.OrderPlaced",
        1,
        &schema_of::<v1::OrderPlaced>(),
        &schema_of::<New>(),
    )
}

/// The one breach found, as `(path, rule)`.
fn one_breach<New: JsonSchema>() -> (String, Rule, String) {
    let found = breaches::<New>();
    assert_eq!(found.len(), 1, "{found:#?}");
    let breach = &found[0];
    (breach.path.clone(), breach.rule(), breach.to_string())
}

#[test]
fn the_same_type_has_no_breaches() {
    assert_eq!(breaches::<v1::OrderPlaced>(), vec![]);
}

mod removed {
    use super::*;
    #[derive(JsonSchema)]
    pub struct OrderPlaced {
        pub order_id: String,
        pub lines: Vec<v1::OrderLine>,
        pub note: Option<String>,
        pub shipping: Option<v1::Address>,
        pub prices: std::collections::BTreeMap<String, i32>,
        pub channel: v1::Channel,
    }
}

#[test]
fn a_removed_field_is_refused() {
    let (path, rule, text) = one_breach::<removed::OrderPlaced>();
    assert_eq!(path, "customer_id");
    assert_eq!(rule, Rule::NeverRemoveOrRetype);
    assert_eq!(
        text,
        "orders.OrderPlaced v1: field \"customer_id\" removed (rule: never remove or retype a field)"
    );
}

mod retyped_nested {
    use super::*;
    #[derive(JsonSchema)]
    pub struct OrderLine {
        pub product_id: String,
        pub quantity: String,
    }
    #[derive(JsonSchema)]
    pub struct OrderPlaced {
        pub order_id: String,
        pub customer_id: String,
        pub lines: Vec<OrderLine>,
        pub note: Option<String>,
        pub shipping: Option<v1::Address>,
        pub prices: std::collections::BTreeMap<String, i32>,
        pub channel: v1::Channel,
    }
}

#[test]
fn a_field_retyped_inside_array_items_is_refused_by_its_path() {
    let (path, rule, text) = one_breach::<retyped_nested::OrderPlaced>();
    assert_eq!(path, "lines[].quantity");
    assert_eq!(rule, Rule::NeverRemoveOrRetype);
    assert_eq!(
        text,
        "orders.OrderPlaced v1: field \"lines[].quantity\" retyped from integer to string (rule: never remove or retype a field)"
    );
}

mod made_required {
    use super::*;
    #[derive(JsonSchema)]
    pub struct OrderPlaced {
        pub order_id: String,
        pub customer_id: String,
        pub lines: Vec<v1::OrderLine>,
        pub note: String,
        pub shipping: Option<v1::Address>,
        pub prices: std::collections::BTreeMap<String, i32>,
        pub channel: v1::Channel,
    }
}

#[test]
fn an_optional_field_made_required_is_refused() {
    let (path, rule, text) = one_breach::<made_required::OrderPlaced>();
    assert_eq!(path, "note");
    assert_eq!(rule, Rule::NeverMakeOptionalRequired);
    assert!(
        text.ends_with(
            "made required (it was optional) (rule: never make an optional field required)"
        ),
        "{text}"
    );
}

mod null_dropped {
    use super::*;
    #[derive(JsonSchema)]
    pub struct OrderPlaced {
        pub order_id: String,
        pub customer_id: String,
        pub lines: Vec<v1::OrderLine>,
        #[serde(default)]
        pub note: String,
        pub shipping: Option<v1::Address>,
        pub prices: std::collections::BTreeMap<String, i32>,
        pub channel: v1::Channel,
    }
}

#[test]
fn an_optional_field_that_no_longer_takes_null_is_refused_even_with_a_default() {
    let (path, rule, text) = one_breach::<null_dropped::OrderPlaced>();
    assert_eq!(path, "note");
    assert_eq!(rule, Rule::NeverRemoveOrRetype);
    assert!(
        text.contains("retyped from string or null to string"),
        "{text}"
    );
}

mod added_required {
    use super::*;
    #[derive(JsonSchema)]
    pub struct OrderPlaced {
        pub order_id: String,
        pub customer_id: String,
        pub lines: Vec<v1::OrderLine>,
        pub note: Option<String>,
        pub shipping: Option<v1::Address>,
        pub prices: std::collections::BTreeMap<String, i32>,
        pub channel: v1::Channel,
        pub currency: String,
    }
}

#[test]
fn a_required_field_added_without_a_default_is_refused() {
    let (path, rule, text) = one_breach::<added_required::OrderPlaced>();
    assert_eq!(path, "currency");
    assert_eq!(rule, Rule::NewFieldsOptional);
    assert_eq!(
        text,
        "orders.OrderPlaced v1: field \"currency\" added as required without a default (rule: a new field is optional or has a default)"
    );
}

mod nested_through_ref {
    use super::*;
    #[derive(JsonSchema)]
    pub struct Address {
        pub street: String,
        pub zip: String,
    }
    #[derive(JsonSchema)]
    pub struct OrderPlaced {
        pub order_id: String,
        pub customer_id: String,
        pub lines: Vec<v1::OrderLine>,
        pub note: Option<String>,
        pub shipping: Option<Address>,
        pub prices: std::collections::BTreeMap<String, i32>,
        pub channel: v1::Channel,
    }
}

#[test]
fn a_nested_object_behind_a_ref_and_an_option_is_checked_too() {
    let (path, rule, _) = one_breach::<nested_through_ref::OrderPlaced>();
    assert_eq!(path, "shipping.zip");
    assert_eq!(rule, Rule::NewFieldsOptional);
}

mod narrowed {
    use super::*;
    #[derive(JsonSchema)]
    pub enum Channel {
        Web,
    }
    #[derive(JsonSchema)]
    pub struct OrderPlaced {
        pub order_id: String,
        pub customer_id: String,
        pub lines: Vec<v1::OrderLine>,
        pub note: Option<String>,
        pub shipping: Option<v1::Address>,
        pub prices: std::collections::BTreeMap<String, i16>,
        pub channel: Channel,
    }
}

#[test]
fn a_narrower_number_or_a_removed_enum_value_is_a_retype() {
    let found = breaches::<narrowed::OrderPlaced>();
    let by_path: Vec<(&str, &Change)> =
        found.iter().map(|b| (b.path.as_str(), &b.change)).collect();
    assert_eq!(
        by_path,
        vec![
            (
                "channel",
                &Change::Retyped {
                    from: "one of \"Web\", \"Shop\"".into(),
                    to: "one of \"Web\"".into()
                }
            ),
            (
                "prices.*",
                &Change::Retyped {
                    from: "integer (int32)".into(),
                    to: "integer (int16)".into()
                }
            ),
        ],
        "{found:#?}"
    );
}

mod compatible {
    use super::*;
    #[derive(JsonSchema)]
    pub enum Channel {
        Web,
        Shop,
        Phone,
    }
    #[derive(JsonSchema)]
    pub struct OrderLine {
        pub product_id: String,
        pub quantity: i64,
        pub discount_cents: Option<i64>,
    }
    #[derive(JsonSchema)]
    pub struct OrderPlaced {
        pub order_id: String,
        /// Was required; may now be absent.
        pub customer_id: Option<String>,
        pub lines: Vec<OrderLine>,
        pub note: Option<String>,
        pub shipping: Option<v1::Address>,
        /// A wider number.
        pub prices: std::collections::BTreeMap<String, i64>,
        pub channel: Channel,
        /// New and optional.
        pub gift: Option<bool>,
        /// New with a default.
        #[serde(default)]
        pub source: String,
    }
}

#[test]
fn new_optional_or_defaulted_fields_and_wider_types_are_accepted() {
    assert_eq!(breaches::<compatible::OrderPlaced>(), vec![]);
}

mod replaced {
    use super::*;
    #[derive(JsonSchema)]
    pub struct OrderPlaced(Vec<String>);
}

#[test]
fn a_payload_that_is_no_longer_an_object_is_named_as_the_payload() {
    let (path, _, text) = one_breach::<replaced::OrderPlaced>();
    assert_eq!(path, "");
    assert_eq!(
        text,
        "orders.OrderPlaced v1: the payload retyped from object to array (rule: never remove or retype a field)"
    );
}

mod unions {
    use super::*;

    #[derive(JsonSchema)]
    pub enum Payment {
        Cash,
        Card { last4: String },
    }
    #[derive(JsonSchema)]
    pub struct Paid {
        pub payment: Payment,
    }

    pub mod more {
        use super::*;
        #[derive(JsonSchema)]
        pub enum Payment {
            Cash,
            Card { last4: String },
            Voucher(String),
        }
        #[derive(JsonSchema)]
        pub struct Paid {
            pub payment: Payment,
        }
    }

    pub mod fewer {
        use super::*;
        #[derive(JsonSchema)]
        pub enum Payment {
            Card { last4: String },
        }
        #[derive(JsonSchema)]
        pub struct Paid {
            pub payment: Payment,
        }
    }
}

#[test]
fn an_enum_with_data_may_gain_variants_but_not_lose_them() {
    let old = schema_of::<unions::Paid>();
    assert_eq!(
        check("t.Paid", 1, &old, &schema_of::<unions::more::Paid>()),
        vec![]
    );
    let found = check("t.Paid", 1, &old, &schema_of::<unions::fewer::Paid>());
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].path, "payment");
    assert_eq!(found[0].rule(), Rule::NeverRemoveOrRetype);
}
