//! # eddy-schema — the gate that stops breaking event schema changes
//!
//! Consumers read events long after they were written, so an event's payload may only
//! change in ways every stored payload survives (the rules of `docs/events.md`). This
//! crate turns those rules into a check that a test and a command can run:
//!
//! - [`snapshot`] — each event type's JSON Schema generated from its Rust type
//!   ([`EventSchema::of`], through schemars), committed as one file per type and schema
//!   version ([`snapshot_path`]: `<dir>/<event_type>/v<N>.json`), and
//!   [`check_snapshots`] / [`write_snapshots`] of the code's schemas against them.
//! - [`compat`] — [`check`]: the breaches of a new schema against an old one, each
//!   naming the event type, the field path (`lines[].quantity`) and the [`Rule`].
//! - [`samples`] — a corpus of stored payloads of every version, for a test that
//!   decodes each through the upcasters (`eddy_core::Event::UPCASTS`).
//!
//! ```
//! use eddy_schema::{check, Rule};
//! use serde_json::json;
//!
//! let old = json!({"type": "object", "properties": {"quantity": {"type": "integer"}}, "required": ["quantity"]});
//! let new = json!({"type": "object", "properties": {"quantity": {"type": "string"}}, "required": ["quantity"]});
//! let breaches = check("orders.OrderPlaced", 1, &old, &new);
//! assert_eq!(breaches[0].rule(), Rule::NeverRemoveOrRetype);
//! assert_eq!(
//!     breaches[0].to_string(),
//!     "orders.OrderPlaced v1: field \"quantity\" retyped from integer to string (rule: never remove or retype a field)"
//! );
//! ```

pub mod compat;
pub mod samples;
pub mod snapshot;

pub use compat::{check, Breach, Change, Rule};
pub use samples::{missing_samples, read_samples, Sample};
pub use snapshot::{
    check_snapshots, schema_of, snapshot_path, snapshot_text, write_snapshots, EventSchema,
    Finding, Report, SnapshotError,
};
