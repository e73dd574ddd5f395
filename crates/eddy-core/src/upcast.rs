//! Older schema versions of an event, and how a consumer reads them.
//!
//! An [`Event`] declares its history with [`Event::UPCASTS`]: one [`Upcast`] per older
//! version, each turning a payload of version `from` into version `from + 1`, so that
//! [`JsonCodec::decode`](crate::JsonCodec::decode) can bring any stored payload up to
//! the type's [`Event::SCHEMA_VERSION`] one step at a time. [`check_upcasts`] finds a
//! missing step before the first event does (the router runs it when a type is routed).
//!
//! A payload of a version newer than the consumer knows is never read as an older one:
//! decoding fails permanently with [`NewerSchema`] as the cause, which the runtime
//! recognises (see [`NewerSchema::find`]) and names in the dead letter.

use std::fmt;

use serde_json::Value;

use crate::Event;

/// What an upcaster returns: the payload one version up, or why it cannot be.
pub type UpcastResult = Result<Value, String>;

/// One step of an event's history: turns a payload of schema version `from` into
/// version `from + 1`.
#[derive(Debug, Clone, Copy)]
pub struct Upcast {
    pub from: u32,
    pub apply: fn(Value) -> UpcastResult,
}

impl Upcast {
    pub const fn new(from: u32, apply: fn(Value) -> UpcastResult) -> Self {
        Self { from, apply }
    }
}

/// The cause of a refused decode: the payload's schema version is newer than the
/// consumer's type. Reading it as the older version would silently drop or misread
/// what changed, so it is a permanent failure to be parked, not guessed at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewerSchema {
    pub event_type: String,
    /// The version the envelope says it carries.
    pub version: u32,
    /// The newest version this consumer's type knows (its `SCHEMA_VERSION`).
    pub known: u32,
}

impl NewerSchema {
    /// The `NewerSchema` somewhere in `error`'s chain of sources (`error` included), if any.
    pub fn find<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a NewerSchema> {
        let mut next = Some(error);
        while let Some(error) = next {
            if let Some(newer) = error.downcast_ref::<NewerSchema>() {
                return Some(newer);
            }
            next = error.source();
        }
        None
    }
}

impl fmt::Display for NewerSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "schema version {} of {} is newer than this consumer knows ({})",
            self.version, self.event_type, self.known
        )
    }
}

impl std::error::Error for NewerSchema {}

/// An event type whose upcasters do not lead from every version it may meet to the
/// current one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpcastGap {
    pub event_type: &'static str,
    pub schema_version: u32,
    pub schema_version_min: u32,
    /// Versions in `SCHEMA_VERSION_MIN..SCHEMA_VERSION` without an upcaster from them.
    pub missing_from: Vec<u32>,
    /// Upcasters from versions outside that range, or a second one from the same version.
    pub misplaced_from: Vec<u32>,
}

impl fmt::Display for UpcastGap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (schema version {}, oldest {}):",
            self.event_type, self.schema_version, self.schema_version_min
        )?;
        if self.schema_version_min == 0 || self.schema_version_min > self.schema_version {
            write!(
                f,
                " SCHEMA_VERSION_MIN must be between 1 and SCHEMA_VERSION"
            )?;
        }
        if !self.missing_from.is_empty() {
            write!(
                f,
                " no upcaster from version {} (add one to UPCASTS, or raise SCHEMA_VERSION_MIN if those versions never existed)",
                join(&self.missing_from)
            )?;
        }
        if !self.misplaced_from.is_empty() {
            write!(
                f,
                " upcasters from version {} are outside {}..{} or repeated",
                join(&self.misplaced_from),
                self.schema_version_min,
                self.schema_version
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for UpcastGap {}

fn join(versions: &[u32]) -> String {
    versions
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks that `E` can read every version from `SCHEMA_VERSION_MIN` up: exactly one
/// upcaster from each older version, none from elsewhere.
pub fn check_upcasts<E: Event>() -> Result<(), UpcastGap> {
    let range = E::SCHEMA_VERSION_MIN..E::SCHEMA_VERSION;
    let mut seen = Vec::with_capacity(E::UPCASTS.len());
    let mut misplaced_from = Vec::new();
    for step in E::UPCASTS {
        if !range.contains(&step.from) || seen.contains(&step.from) {
            misplaced_from.push(step.from);
        } else {
            seen.push(step.from);
        }
    }
    let missing_from: Vec<u32> = range.clone().filter(|v| !seen.contains(v)).collect();
    let bounds_ok = E::SCHEMA_VERSION_MIN >= 1 && E::SCHEMA_VERSION_MIN <= E::SCHEMA_VERSION;
    if bounds_ok && missing_from.is_empty() && misplaced_from.is_empty() {
        return Ok(());
    }
    Err(UpcastGap {
        event_type: E::TYPE,
        schema_version: E::SCHEMA_VERSION,
        schema_version_min: E::SCHEMA_VERSION_MIN,
        missing_from,
        misplaced_from,
    })
}

/// Why a payload could not be brought up to the current version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum UpcastFailure {
    Newer(NewerSchema),
    /// Older than the oldest version the type declares.
    TooOld {
        oldest: u32,
    },
    /// No upcaster from this version (a gap [`check_upcasts`] reports).
    NoStep {
        from: u32,
    },
    /// The upcaster from this version refused the payload.
    Refused {
        from: u32,
        reason: String,
    },
}

impl fmt::Display for UpcastFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpcastFailure::Newer(newer) => newer.fmt(f),
            UpcastFailure::TooOld { oldest } => {
                write!(f, "versions before {oldest} never existed")
            }
            UpcastFailure::NoStep { from } => write!(f, "no upcaster from version {from}"),
            UpcastFailure::Refused { from, reason } => {
                write!(f, "the upcaster from version {from} refused it: {reason}")
            }
        }
    }
}

impl UpcastFailure {
    pub(crate) fn newer<E: Event>(version: u32) -> Self {
        UpcastFailure::Newer(NewerSchema {
            event_type: E::TYPE.to_owned(),
            version,
            known: E::SCHEMA_VERSION,
        })
    }
}

/// `payload` of schema version `version`, brought up to `E::SCHEMA_VERSION`.
pub(crate) fn upcast<E: Event>(version: u32, mut payload: Value) -> Result<Value, UpcastFailure> {
    if version > E::SCHEMA_VERSION {
        return Err(UpcastFailure::newer::<E>(version));
    }
    if version < E::SCHEMA_VERSION_MIN {
        return Err(UpcastFailure::TooOld {
            oldest: E::SCHEMA_VERSION_MIN,
        });
    }
    for from in version..E::SCHEMA_VERSION {
        let step = E::UPCASTS
            .iter()
            .find(|step| step.from == from)
            .ok_or(UpcastFailure::NoStep { from })?;
        payload =
            (step.apply)(payload).map_err(|reason| UpcastFailure::Refused { from, reason })?;
    }
    Ok(payload)
}
