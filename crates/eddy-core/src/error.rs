//! The one error type of broker and store operations, with the kind the runtime acts on.

use std::fmt;

/// What the caller should do about a failure.
///
/// The consumer runtime retries [`ErrorKind::Transient`] failures with backoff and
/// sends [`ErrorKind::Permanent`] ones to the dead-letter topic at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The same call may succeed later: a timeout, a dropped connection, a busy database.
    Transient,
    /// The same call will fail again: bad input, an undecodable payload, a rule violation.
    Permanent,
    /// A dependency is known to be down (its circuit breaker is open): the work was not
    /// attempted. The runtime pauses and tries again without spending an attempt, so an
    /// outage does not burn messages into the dead-letter topic.
    Unavailable,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Transient => "transient",
            ErrorKind::Permanent => "permanent",
            ErrorKind::Unavailable => "unavailable",
        })
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error from a broker, a store or a codec, with its [`ErrorKind`].
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    context: String,
    source: Option<Source>,
}

impl Error {
    /// A failure worth retrying.
    pub fn transient(context: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Transient,
            context: context.into(),
            source: None,
        }
    }

    /// A dependency is down (a database that went read-only, a lost connection): see
    /// [`ErrorKind::Unavailable`].
    pub fn unavailable(context: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Unavailable,
            context: context.into(),
            source: None,
        }
    }

    /// A failure that will not go away by retrying.
    pub fn permanent(context: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Permanent,
            context: context.into(),
            source: None,
        }
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.source = Some(source.into());
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Transient or unavailable: worth trying again later.
    pub fn is_transient(&self) -> bool {
        matches!(self.kind, ErrorKind::Transient | ErrorKind::Unavailable)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.context)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}
