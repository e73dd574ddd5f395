//! # eddy-dlq — dead letters as a product
//!
//! The consumer runtime parks an event it gives up on in the topic's dead-letter topic
//! (`<topic>.dlq`), with why, where and how often it failed in `eddy-dlq-*` headers
//! (`eddy_runtime::dead_letter`). That works on every broker, but a topic is a poor
//! place to look after them: it cannot be filtered, grouped, or told that one letter
//! was dealt with. This crate keeps them in the service's database instead and makes
//! them something an operator can work through:
//!
//! - **store** — [`DeadLetters::ingest`] is the handler of a consumer of the
//!   dead-letter topics (routed with `Router::any`): each letter is stored once (by its
//!   id), whatever the broker, with the original topic, partition, offset, key, headers,
//!   attempts and failure times, and a **fingerprint** of its failure — error kind,
//!   message with its numbers and ids masked, consumer group and event type — so a
//!   thousand letters of one bug are one line ([`DeadLetters::groups`]).
//! - **look** — [`DeadLetters::list`] by topic, group, event type, key, time,
//!   fingerprint and status, paged; [`DeadLetters::get`] one, payload and headers
//!   included.
//! - **redrive** — [`DeadLetters::redrive`] hands letters back to their topic, through
//!   the service's outbox in the transaction that marks them resolved: a letter is
//!   resolved exactly when its event is durably on its way, never both retried and open.
//!   The event keeps its original id (consumers that had handled it recognise it and
//!   skip it; the one that failed handles it) and its key, and letters are redriven in
//!   the order they failed, one key at a time, so per-key order holds. A redrive is a
//!   job: rate-limited (a token bucket), at most `concurrency` keys at once, with a dry
//!   run, pause and cancel, and a checkpoint, so one interrupted halfway resumes where
//!   it stopped. A **loop guard** leaves a letter open once it has been redriven
//!   `redrive_count_max` times: it needs a fix or an edit, not another try.
//! - **edit and redrive** — [`DeadLetters::edit_and_redrive`] applies a JSON Patch
//!   (RFC 6902) to the payload; the new event says what it redrives
//!   (`eddy-redrive-of`), and the original is resolved in the same transaction, so a
//!   later bulk redrive cannot send it too.
//! - **purge** — [`DeadLetters::purge`] deletes letters by filter past an age, in
//!   bounded batches.
//! - **audit** — every operation (who, when, what, how many) is a row of
//!   `eddy_dead_letter_audit` ([`DeadLetters::audit`]).
//!
//! Headers do not grow with each round: a redriven event loses the letter's
//! `eddy-dlq-*` headers, and the failure moves into one bounded `eddy-dlq-causes`
//! header (the last [`CAUSES_LEN_MAX`] failures, each cut to [`CAUSE_BYTES_MAX`]).

mod fingerprint;
mod redrive;
mod store;

pub use fingerprint::{fingerprint, normalise};
pub use redrive::{JobState, RedriveProgress, RedriveReport, RedriveRequest};
pub use store::{
    AuditEntry, DeadLetter, DeadLetterConfig, DeadLetters, FailureGroup, Filter, Ingest, Status,
};

/// Header of a redriven event: how many times it has been redriven (a redriven event
/// that fails again is a new letter, named with it).
pub use eddy_runtime::dead_letter::REDRIVE_COUNT;
/// Header of a redriven or edited event: the id of the dead letter it redrives.
pub const REDRIVE_OF: &str = "eddy-redrive-of";
/// Header of an edited event: `true`.
pub const EDITED: &str = "eddy-edited";
/// Header of a redriven event: the failures before it, newest last (a JSON array of
/// `{group, kind, error, at}`), bounded.
pub const CAUSES: &str = "eddy-dlq-causes";
/// Failures kept in [`CAUSES`].
pub const CAUSES_LEN_MAX: usize = 5;
/// Bytes of one failure's message kept in [`CAUSES`].
pub const CAUSE_BYTES_MAX: usize = 512;
