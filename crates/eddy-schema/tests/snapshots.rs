//! Snapshots on disk: written when missing or compatibly changed, a breaking change of
//! a version refused (and not written), a new version needing its upcaster, older
//! versions' snapshots kept; and the sample corpus read back.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::Path;

use eddy_core::{Event, JsonCodec, Upcast};
use eddy_schema::{
    check_snapshots, missing_samples, read_samples, snapshot_path, write_snapshots, EventSchema,
    Finding, Rule, SnapshotError,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

const TYPE: &str = "test.Thing";

mod v1 {
    use super::*;
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct Thing {
        pub id: String,
        pub size: i64,
    }
    impl Event for Thing {
        const TYPE: &'static str = TYPE;
        fn key(&self) -> String {
            self.id.clone()
        }
    }
}

/// Version 1, compatibly extended.
mod v1_extended {
    use super::*;
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct Thing {
        pub id: String,
        pub size: i64,
        pub colour: Option<String>,
    }
    impl Event for Thing {
        const TYPE: &'static str = TYPE;
        fn key(&self) -> String {
            self.id.clone()
        }
    }
}

/// Version 1 changed in place the breaking way.
mod v1_broken {
    use super::*;
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct Thing {
        pub id: String,
        pub size: String,
    }
    impl Event for Thing {
        const TYPE: &'static str = TYPE;
        fn key(&self) -> String {
            self.id.clone()
        }
    }
}

/// The same change done right: version 2 with an upcaster.
mod v2 {
    use super::*;
    #[derive(Debug, Serialize, Deserialize, JsonSchema)]
    pub struct Thing {
        pub id: String,
        pub size: String,
    }
    fn size_as_text(mut payload: Value) -> Result<Value, String> {
        let size = payload.get("size").cloned().ok_or("no size")?;
        payload["size"] = json!(size.to_string());
        Ok(payload)
    }
    impl Event for Thing {
        const TYPE: &'static str = TYPE;
        const SCHEMA_VERSION: u32 = 2;
        const UPCASTS: &'static [Upcast] = &[Upcast::new(1, size_as_text)];
        fn key(&self) -> String {
            self.id.clone()
        }
    }
}

/// Version 2 without its upcaster.
mod v2_without_upcaster {
    use super::*;
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub struct Thing {
        pub id: String,
        pub size: String,
    }
    impl Event for Thing {
        const TYPE: &'static str = TYPE;
        const SCHEMA_VERSION: u32 = 2;
        fn key(&self) -> String {
            self.id.clone()
        }
    }
}

fn written(dir: &Path) -> Vec<String> {
    write_snapshots(dir, &[EventSchema::of::<v1::Thing>()])
        .unwrap()
        .iter()
        .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
        .collect()
}

#[test]
fn a_missing_snapshot_needs_writing_and_is_then_clean_and_stable() {
    let dir = tempfile::tempdir().unwrap();
    let schemas = [EventSchema::of::<v1::Thing>()];
    let report = check_snapshots(dir.path(), &schemas).unwrap();
    assert!(matches!(
        report.findings[..],
        [Finding::Missing { version: 1, .. }]
    ));
    assert!(!report.is_breaking());

    assert_eq!(written(dir.path()), vec!["test.Thing/v1.json"]);
    assert!(check_snapshots(dir.path(), &schemas).unwrap().is_clean());
    let path = snapshot_path(dir.path(), TYPE, 1);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.ends_with("}\n"));
    let keys: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("  \""))
        .map(|l| l.trim().split('"').nth(1).unwrap())
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "top-level keys in order");
    assert!(written(dir.path()).is_empty(), "nothing to write again");
}

#[test]
fn a_compatible_change_makes_the_snapshot_outdated_and_writing_updates_it() {
    let dir = tempfile::tempdir().unwrap();
    written(dir.path());
    let schemas = [EventSchema::of::<v1_extended::Thing>()];
    let report = check_snapshots(dir.path(), &schemas).unwrap();
    assert!(matches!(
        report.findings[..],
        [Finding::Outdated { version: 1, .. }]
    ));
    assert!(report.to_string().contains("out of date"), "{report}");
    write_snapshots(dir.path(), &schemas).unwrap();
    assert!(check_snapshots(dir.path(), &schemas).unwrap().is_clean());
}

#[test]
fn a_breaking_change_in_place_is_refused_with_its_rule_and_not_written() {
    let dir = tempfile::tempdir().unwrap();
    written(dir.path());
    let before = std::fs::read_to_string(snapshot_path(dir.path(), TYPE, 1)).unwrap();
    let schemas = [EventSchema::of::<v1_broken::Thing>()];
    let report = check_snapshots(dir.path(), &schemas).unwrap();
    assert!(report.is_breaking());
    let breaches: Vec<_> = report.breaches().collect();
    assert_eq!(breaches.len(), 1);
    assert_eq!(breaches[0].path, "size");
    assert_eq!(breaches[0].rule(), Rule::NeverRemoveOrRetype);
    assert_eq!(
        report.to_string(),
        "test.Thing v1: field \"size\" retyped from integer to string (rule: never remove or retype a field); to change it this way, make it version 2 with an upcaster from 1\n"
    );
    let refused = write_snapshots(dir.path(), &schemas).unwrap_err();
    assert!(matches!(refused, SnapshotError::Breaking(_)), "{refused}");
    let after = std::fs::read_to_string(snapshot_path(dir.path(), TYPE, 1)).unwrap();
    assert_eq!(before, after, "the committed snapshot stands");
}

#[test]
fn a_new_version_may_differ_freely_but_needs_its_upcaster_and_keeps_the_old_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    written(dir.path());

    let report = check_snapshots(dir.path(), &[EventSchema::of::<v2::Thing>()]).unwrap();
    assert!(!report.is_breaking(), "{report}");
    assert!(matches!(
        report.findings[..],
        [Finding::Missing { version: 2, .. }]
    ));
    write_snapshots(dir.path(), &[EventSchema::of::<v2::Thing>()]).unwrap();
    assert!(snapshot_path(dir.path(), TYPE, 1).exists());
    assert!(snapshot_path(dir.path(), TYPE, 2).exists());

    let report = check_snapshots(
        dir.path(),
        &[EventSchema::of::<v2_without_upcaster::Thing>()],
    )
    .unwrap();
    assert!(report.is_breaking());
    assert!(
        report.to_string().contains("no upcaster from version 1"),
        "{report}"
    );

    std::fs::remove_file(snapshot_path(dir.path(), TYPE, 1)).unwrap();
    let report = check_snapshots(dir.path(), &[EventSchema::of::<v2::Thing>()]).unwrap();
    assert!(matches!(
        report.findings[..],
        [Finding::OlderMissing { version: 1, .. }]
    ));
    assert!(
        report.is_breaking(),
        "an older schema cannot be written again"
    );
}

fn sample(dir: &Path, name: &str, text: &str) {
    let path = dir.join(TYPE).join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn samples_of_every_version_decode_into_the_current_type() {
    let dir = tempfile::tempdir().unwrap();
    sample(
        dir.path(),
        "v1.json",
        r#"{"schema_version": 1, "payload": {"id": "t", "size": 3}}"#,
    );
    let samples = read_samples(dir.path()).unwrap();
    assert_eq!(
        missing_samples(&[EventSchema::of::<v2::Thing>()], &samples),
        vec![(TYPE, 2)]
    );
    sample(
        dir.path(),
        "v2.json",
        r#"{"schema_version": 2, "payload": {"id": "t", "size": "L"}}"#,
    );
    let samples = read_samples(dir.path()).unwrap();
    assert!(missing_samples(&[EventSchema::of::<v2::Thing>()], &samples).is_empty());
    let sizes: Vec<String> = samples
        .iter()
        .map(|s| JsonCodec::decode::<v2::Thing>(&s.envelope()).unwrap().size)
        .collect();
    assert_eq!(sizes, vec!["3", "L"]);

    sample(
        dir.path(),
        "v3.json",
        r#"{"schema_version": 2, "payload": {}}"#,
    );
    let error = read_samples(dir.path()).unwrap_err();
    assert!(
        error.to_string().contains("does not say v2.json"),
        "{error}"
    );
}
