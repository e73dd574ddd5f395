//! sqlx errors classified by what the caller should do: retry soon (transient), wait
//! for the database to come back (unavailable), or give up on this input (permanent).
//!
//! The rule: a failure is permanent only when it is about the data of this call — a
//! constraint it violates, a value out of range, a row that cannot be decoded. Outages
//! and operating conditions (a failover that left the database read-only, a full disk,
//! a statement timeout, a lost connection) are not poison: the same message succeeds
//! once they pass, so they must never send it to the dead letters.

use eddy_core::{Error, ErrorKind};

/// Maps a sqlx error onto Eddy's error, keeping `context` and the cause.
pub fn classify(context: impl Into<String>, error: sqlx::Error) -> Error {
    let base = match kind_of(&error) {
        ErrorKind::Transient => Error::transient(context),
        ErrorKind::Unavailable => Error::unavailable(context),
        ErrorKind::Permanent => Error::permanent(context),
    };
    base.with_source(error)
}

fn kind_of(error: &sqlx::Error) -> ErrorKind {
    match error {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolClosed => {
            ErrorKind::Unavailable
        }
        sqlx::Error::Protocol(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => {
            ErrorKind::Transient
        }
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => kind_of_code(&code),
            // A database error without a code: nothing says it is about the data.
            None => ErrorKind::Transient,
        },
        // Decoding and mapping errors (a column of the wrong type, a missing row where
        // one was required) are about this data or this code: retrying cannot help.
        _ => ErrorKind::Permanent,
    }
}

/// The kind of a database error code: a PostgreSQL SQLSTATE (five characters) or a
/// SQLite result code (a number, primary or extended).
pub fn kind_of_code(code: &str) -> ErrorKind {
    // A SQLSTATE has exactly five characters; SQLite's codes (extended ones included)
    // have at most four digits.
    match code.parse::<i64>() {
        Ok(sqlite) if code.len() < 5 => kind_of_sqlite(sqlite),
        _ => kind_of_sqlstate(code),
    }
}

fn kind_of_sqlstate(code: &str) -> ErrorKind {
    let class = code.get(..2).unwrap_or("");
    match (class, code) {
        // Read-only after a failover, out of disk / memory / connections, the server
        // shutting down or starting, a lost connection, an I/O error on the server.
        (_, "25006" | "57P01" | "57P02" | "57P03") => ErrorKind::Unavailable,
        ("08" | "53" | "58", _) => ErrorKind::Unavailable,
        // Serialization failure, deadlock, lock not available, statement timeout /
        // cancelled: the same statement may well succeed on the next try.
        ("40", _) | (_, "55P03" | "57014") => ErrorKind::Transient,
        // About the data: cardinality, data exceptions, integrity constraints, WITH
        // CHECK OPTION.
        ("21" | "22" | "23" | "44", _) => ErrorKind::Permanent,
        // Anything else (a missing table before a migration ran, a privilege not yet
        // granted, an internal error) is about the environment, not this message.
        _ => ErrorKind::Transient,
    }
}

fn kind_of_sqlite(code: i64) -> ErrorKind {
    match code & 0xff {
        // BUSY, LOCKED, INTERRUPT.
        5 | 6 | 9 => ErrorKind::Transient,
        // NOMEM, READONLY, IOERR, FULL, CANTOPEN, PROTOCOL.
        7 | 8 | 10 | 13 | 14 | 15 => ErrorKind::Unavailable,
        // TOOBIG, CONSTRAINT, MISMATCH, RANGE: about this data.
        18 | 19 | 20 | 25 => ErrorKind::Permanent,
        _ => ErrorKind::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operating_conditions_of_postgresql_are_not_poison() {
        for (code, what) in [
            ("25006", "read-only after failover"),
            ("53100", "disk full"),
            ("53200", "out of memory"),
            ("53300", "too many connections"),
            ("57P01", "admin shutdown"),
            ("08006", "connection failure"),
            ("58030", "I/O error"),
        ] {
            assert_eq!(kind_of_code(code), ErrorKind::Unavailable, "{code}: {what}");
        }
        for (code, what) in [
            ("57014", "statement timeout"),
            ("40001", "serialization failure"),
            ("40P01", "deadlock"),
            ("55P03", "lock not available"),
            ("42P01", "undefined table"),
            ("XX000", "internal error"),
        ] {
            assert_eq!(kind_of_code(code), ErrorKind::Transient, "{code}: {what}");
        }
    }

    #[test]
    fn only_errors_about_the_data_are_permanent() {
        for code in ["23505", "23503", "22001", "22003", "21000", "44000"] {
            assert_eq!(kind_of_code(code), ErrorKind::Permanent, "{code}");
        }
    }

    #[test]
    fn sqlite_codes_are_read_by_their_primary_code() {
        assert_eq!(kind_of_code("5"), ErrorKind::Transient, "BUSY");
        assert_eq!(kind_of_code("517"), ErrorKind::Transient, "BUSY_SNAPSHOT");
        assert_eq!(kind_of_code("6"), ErrorKind::Transient, "LOCKED");
        assert_eq!(kind_of_code("8"), ErrorKind::Unavailable, "READONLY");
        assert_eq!(kind_of_code("10"), ErrorKind::Unavailable, "IOERR");
        assert_eq!(kind_of_code("778"), ErrorKind::Unavailable, "IOERR_WRITE");
        assert_eq!(kind_of_code("13"), ErrorKind::Unavailable, "FULL");
        assert_eq!(kind_of_code("19"), ErrorKind::Permanent, "CONSTRAINT");
        assert_eq!(
            kind_of_code("2067"),
            ErrorKind::Permanent,
            "CONSTRAINT_UNIQUE"
        );
        assert_eq!(kind_of_code("18"), ErrorKind::Permanent, "TOOBIG");
    }
}
