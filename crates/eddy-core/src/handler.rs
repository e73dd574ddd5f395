//! Handlers and the errors they return.

use std::fmt;

use async_trait::async_trait;

use crate::{Envelope, ErrorKind, Event};

/// Handles one typed event. Returning an error with [`ErrorKind::Transient`] asks for
/// a retry with backoff; [`ErrorKind::Permanent`] sends the event to the dead letters.
///
/// Handlers must be idempotent or be wrapped in an idempotency layer (see `eddy-sql`):
/// delivery is at least once.
#[async_trait]
pub trait Handler<E: Event>: Send + Sync + 'static {
    async fn handle(&self, event: E, envelope: &Envelope) -> Result<(), HandlerError>;
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a handler failed, and whether trying again could help.
#[derive(Debug)]
pub struct HandlerError {
    kind: ErrorKind,
    source: Source,
}

impl HandlerError {
    pub fn transient(source: impl Into<Source>) -> Self {
        Self {
            kind: ErrorKind::Transient,
            source: source.into(),
        }
    }

    /// The dependency is known to be down (an open circuit breaker); see
    /// [`ErrorKind::Unavailable`].
    pub fn unavailable(source: impl Into<Source>) -> Self {
        Self {
            kind: ErrorKind::Unavailable,
            source: source.into(),
        }
    }

    pub fn permanent(source: impl Into<Source>) -> Self {
        Self {
            kind: ErrorKind::Permanent,
            source: source.into(),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failure: {}", self.kind, self.source)
    }
}

impl std::error::Error for HandlerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

impl From<crate::Error> for HandlerError {
    fn from(error: crate::Error) -> Self {
        Self {
            kind: error.kind(),
            source: Box::new(error),
        }
    }
}
