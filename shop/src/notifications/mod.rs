//! Notifications: the side effects of a settled order (a simulated e-mail). It has no
//! HTTP surface.
//!
//! [`domain`] holds what is sent and the simulated mail server, [`store`] the SQL,
//! [`events`] the handlers.

pub mod domain;
pub mod events;
pub mod store;

pub use store::MIGRATIONS;

use crate::service::{Contribution, ServiceContext};

/// Notifications' consumer.
pub fn contribute(ctx: &ServiceContext<'_>) -> anyhow::Result<Contribution> {
    Ok(Contribution {
        routes: None,
        subscriptions: events::subscriptions(ctx)?,
        sweeps: Vec::new(),
        breakers: Vec::new(),
    })
}
