//! The schema gate on the shop's contracts: the code's schemas match the snapshots
//! committed under `shop/schemas/`, a breaking change is refused with the rule it
//! breaks (by the check and by `shop schemas check`), and every stored sample of every
//! type and version decodes into today's type through the upcasters.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use eddy_core::{Event, JsonCodec};
use eddy_schema::{check_snapshots, missing_samples, read_samples, EventSchema, Finding, Rule};
use shop::contracts::schemas::{
    check, decode_contract, event_schemas, SAMPLES_DIR, SCHEMAS_DIR, WRITE_COMMAND,
};
use shop::contracts::StockRejected;

#[test]
fn the_contracts_match_their_committed_snapshots() {
    if let Err(error) = check(Path::new(SCHEMAS_DIR)) {
        panic!("{error}\n(if the change is meant and compatible: {WRITE_COMMAND}, then commit shop/schemas)");
    }
}

/// `orders.OrderPlaced` as someone might change it in place: a line's quantity as text.
mod breaking {
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct OrderLine {
        pub product_id: String,
        pub quantity: String,
        pub unit_price_cents: i64,
    }

    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct OrderPlaced {
        pub order_id: String,
        pub customer_id: String,
        pub lines: Vec<OrderLine>,
        pub total_cents: i64,
        pub currency: String,
    }

    impl eddy_core::Event for OrderPlaced {
        const TYPE: &'static str = "orders.OrderPlaced";
        fn key(&self) -> String {
            self.order_id.clone()
        }
    }
}

#[test]
fn a_breaking_change_to_a_contract_is_refused_with_the_named_rule() {
    let report = check_snapshots(
        Path::new(SCHEMAS_DIR),
        &[EventSchema::of::<breaking::OrderPlaced>()],
    )
    .unwrap();
    assert!(report.is_breaking());
    let breaches: Vec<_> = report.breaches().collect();
    assert_eq!(breaches.len(), 1, "{report}");
    assert_eq!(breaches[0].rule(), Rule::NeverRemoveOrRetype);
    assert_eq!(
        breaches[0].to_string(),
        "orders.OrderPlaced v1: field \"lines[].quantity\" retyped from integer to string (rule: never remove or retype a field)"
    );
}

/// A copy of the committed snapshots under a temporary directory.
fn copy_of_snapshots() -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            let target = to.join(path.file_name().unwrap());
            if path.is_dir() {
                copy(&path, &target);
            } else {
                std::fs::copy(&path, &target).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(Path::new(SCHEMAS_DIR), dir.path());
    dir
}

fn shop(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_shop"))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn shop_schemas_check_exits_1_naming_each_breach_and_write_refuses_it() {
    let dir = copy_of_snapshots();
    let dir_arg = dir.path().to_str().unwrap();
    let (code, stdout, _) = shop(&["schemas", "check", "--dir", dir_arg]);
    assert_eq!(code, Some(0), "the committed snapshots pass: {stdout}");

    // The committed snapshot says quantities were text: today's integers would not
    // read those events.
    let placed = dir.path().join("orders.OrderPlaced/v1.json");
    let text = std::fs::read_to_string(&placed).unwrap();
    let mut snapshot: serde_json::Value = serde_json::from_str(&text).unwrap();
    snapshot["$defs"]["OrderLine"]["properties"]["quantity"] =
        serde_json::json!({"type": "string"});
    std::fs::write(&placed, snapshot.to_string()).unwrap();
    let (code, _, stderr) = shop(&["schemas", "check", "--dir", dir_arg]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("orders.OrderPlaced v1: field \"lines[].quantity\" retyped from string to integer (rule: never remove or retype a field)"),
        "{stderr}"
    );
    let (code, _, stderr) = shop(&["schemas", "write", "--dir", dir_arg]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&placed).unwrap(),
        snapshot.to_string(),
        "a breaking snapshot is not overwritten"
    );

    // A missing snapshot is named, with the command that writes it.
    std::fs::write(&placed, text).unwrap();
    std::fs::remove_file(dir.path().join("payments.PaymentRefunded/v1.json")).unwrap();
    let (code, _, stderr) = shop(&["schemas", "check", "--dir", dir_arg]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("payments.PaymentRefunded v1: no snapshot yet"),
        "{stderr}"
    );
    assert!(stderr.contains(WRITE_COMMAND), "{stderr}");
    let (code, stdout, _) = shop(&["schemas", "write", "--dir", dir_arg]);
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains("payments.PaymentRefunded/v1.json"),
        "{stdout}"
    );
    let (code, _, _) = shop(&["schemas", "check", "--dir", dir_arg]);
    assert_eq!(code, Some(0));

    let nowhere = dir.path().join("nowhere");
    let (code, _, stderr) = shop(&["schemas", "check", "--dir", nowhere.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("no snapshot directory at"), "{stderr}");
}

#[test]
fn every_type_and_version_has_a_stored_sample_and_each_decodes() {
    let samples = read_samples(Path::new(SAMPLES_DIR)).unwrap();
    let missing = missing_samples(&event_schemas(), &samples);
    assert!(
        missing.is_empty(),
        "no stored sample of {missing:?}: add shop/schemas/samples/<type>/v<N>.json with {{\"schema_version\": N, \"payload\": ..}} as that version was written"
    );
    for sample in &samples {
        match decode_contract(&sample.envelope()) {
            None => panic!(
                "{}: {} is not a contract type",
                sample.path.display(),
                sample.event_type
            ),
            Some(Err(error)) => panic!("{} does not decode: {error}", sample.path.display()),
            Some(Ok(_)) => {}
        }
    }
}

#[test]
fn the_snapshot_check_covers_every_sampled_type() {
    // A contract dropped from the list in contracts/schemas.rs would escape the gate.
    let samples = read_samples(Path::new(SAMPLES_DIR)).unwrap();
    let schemas = event_schemas();
    for sample in samples {
        assert!(
            schemas.iter().any(|s| s.event_type == sample.event_type),
            "{} has samples but no schema check",
            sample.event_type
        );
    }
    let report = check_snapshots(Path::new(SCHEMAS_DIR), &schemas).unwrap();
    assert!(
        !report
            .findings
            .iter()
            .any(|f| matches!(f, Finding::UpcastGap(_))),
        "{report}"
    );
}

#[test]
fn a_stock_rejected_stored_without_a_reason_reads_as_out_of_stock() {
    let samples = read_samples(Path::new(SAMPLES_DIR)).unwrap();
    let oldest = samples
        .iter()
        .find(|s| s.event_type == StockRejected::TYPE && s.schema_version == 1)
        .unwrap();
    assert!(
        oldest.payload.get("reason").is_none(),
        "the sample is the old shape"
    );
    let rejected: StockRejected = JsonCodec::decode(&oldest.envelope()).unwrap();
    assert_eq!(rejected.reason, "out_of_stock");
}
