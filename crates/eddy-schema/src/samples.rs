//! A corpus of stored samples: one payload per event type and schema version, kept
//! as written then (`<dir>/<event_type>/v<N>.json`, holding
//! `{"schema_version": N, "payload": {..}}`), so that a test can decode every version
//! through the upcasters into today's type.

use std::path::{Path, PathBuf};

use eddy_core::{Envelope, OffsetDateTime};
use serde_json::Value;

use crate::snapshot::{EventSchema, SnapshotError};

/// One stored sample.
#[derive(Debug, Clone)]
pub struct Sample {
    pub event_type: String,
    pub schema_version: u32,
    pub payload: Value,
    pub path: PathBuf,
}

impl Sample {
    /// The sample as an envelope, as a consumer would receive it (key empty, time
    /// the epoch: decoding reads neither).
    pub fn envelope(&self) -> Envelope {
        Envelope::new(
            self.event_type.clone(),
            self.schema_version,
            "",
            self.payload.to_string().into_bytes(),
            OffsetDateTime::UNIX_EPOCH,
        )
    }
}

/// Every sample under `dir`, sorted by type and version. A file whose name and
/// `schema_version` disagree is an error, not a sample.
pub fn read_samples(dir: &Path) -> Result<Vec<Sample>, SnapshotError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| SnapshotError::Io { path, source }
    };
    let mut samples = Vec::new();
    for type_dir in std::fs::read_dir(dir).map_err(io(dir))? {
        let type_dir = type_dir.map_err(io(dir))?.path();
        if !type_dir.is_dir() {
            continue;
        }
        let event_type = type_dir
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        for file in std::fs::read_dir(&type_dir).map_err(io(&type_dir))? {
            let path = file.map_err(io(&type_dir))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            samples.push(read_sample(&path, &event_type)?);
        }
    }
    samples
        .sort_by(|a, b| (&a.event_type, a.schema_version).cmp(&(&b.event_type, b.schema_version)));
    Ok(samples)
}

fn read_sample(path: &Path, event_type: &str) -> Result<Sample, SnapshotError> {
    let invalid = |reason: &str| SnapshotError::Sample {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let text = std::fs::read_to_string(path).map_err(|source| SnapshotError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut file: Value = serde_json::from_str(&text).map_err(|source| SnapshotError::Json {
        path: path.to_owned(),
        source,
    })?;
    let schema_version = file
        .get("schema_version")
        .and_then(Value::as_u64)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| invalid("no schema_version (a whole number)"))?;
    let named = path
        .file_stem()
        .and_then(|stem| stem.to_str())
        .and_then(|stem| stem.strip_prefix('v'))
        .and_then(|v| v.parse::<u32>().ok());
    if named != Some(schema_version) {
        return Err(invalid(&format!(
            "its name does not say v{schema_version}.json"
        )));
    }
    let payload = file
        .get_mut("payload")
        .map(Value::take)
        .ok_or_else(|| invalid("no payload"))?;
    Ok(Sample {
        event_type: event_type.to_owned(),
        schema_version,
        payload,
        path: path.to_owned(),
    })
}

/// `(event type, version)` of every version of `schemas` (from its oldest to its
/// current) that has no sample among `samples`.
pub fn missing_samples(schemas: &[EventSchema], samples: &[Sample]) -> Vec<(&'static str, u32)> {
    schemas
        .iter()
        .flat_map(|schema| {
            (schema.version_min..=schema.version).map(move |v| (schema.event_type, v))
        })
        .filter(|(event_type, version)| {
            !samples
                .iter()
                .any(|s| s.event_type == *event_type && s.schema_version == *version)
        })
        .collect()
}
