//! sqlx errors classified into transient (retry) and permanent (dead letter).

use eddy_core::{Error, ErrorKind};

/// Maps a sqlx error onto Eddy's error, keeping `context` and the cause.
pub fn classify(context: impl Into<String>, error: sqlx::Error) -> Error {
    let kind = kind_of(&error);
    let base = match kind {
        ErrorKind::Transient | ErrorKind::Unavailable => Error::transient(context),
        ErrorKind::Permanent => Error::permanent(context),
    };
    base.with_source(error)
}

fn kind_of(error: &sqlx::Error) -> ErrorKind {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => ErrorKind::Transient,
        sqlx::Error::Database(db) => match db.code().as_deref() {
            // PostgreSQL: serialization failure, deadlock, lock not available,
            // shutdown / crash / cannot connect now, too many connections,
            // and every connection exception (class 08).
            Some("40001" | "40P01" | "55P03" | "57P01" | "57P02" | "57P03" | "53300") => {
                ErrorKind::Transient
            }
            Some(code) if code.starts_with("08") => ErrorKind::Transient,
            // SQLite: SQLITE_BUSY (5) and SQLITE_LOCKED (6), with extended codes.
            Some(code) if is_sqlite_busy(code) => ErrorKind::Transient,
            _ => ErrorKind::Permanent,
        },
        _ => ErrorKind::Permanent,
    }
}

fn is_sqlite_busy(code: &str) -> bool {
    code.parse::<i64>()
        .map(|c| matches!(c & 0xff, 5 | 6))
        .unwrap_or(false)
}
