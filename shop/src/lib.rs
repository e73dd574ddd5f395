//! # shop — the Eddy reference order platform
//!
//! Five services — catalog, orders, inventory, payments, notifications — built only on
//! the Eddy toolkit, run as modules of one process on embedded defaults (a SQLite file
//! per service and the embedded log) or one process per service. Each service owns its
//! tables and its outbox; services talk only through events (and the public HTTP API).
//! The order saga is choreographed:
//!
//! ```text
//! POST /v1/orders ─ OrderPlaced ─▶ inventory ─ StockReserved ─▶ payments ─ PaymentCaptured ─▶ orders ─ OrderConfirmed ─▶ inventory (consume), notifications
//!                                            └ StockRejected ─▶ orders ─ OrderCancelled(out_of_stock | unknown_product)
//!                                                              payments ─ PaymentDeclined ─▶ orders ─ OrderCancelled(payment_declined) ─▶ inventory (release), notifications
//! ```
//!
//! Layout:
//!
//! - one folder per service — [`catalog`], [`orders`], [`inventory`], [`payments`],
//!   [`notifications`] — each with `domain.rs` (its rules: newtypes and decisions, no
//!   axum or sqlx), `http.rs` (its routes, if it has any), `store.rs` (its SQL and
//!   migrations) and `events.rs` (what it consumes and publishes). Services never import
//!   each other.
//! - [`contracts`] — the events and the values they speak of: all the services share.
//! - [`service`] — what the platform gives a service ([`service::ServiceDb`],
//!   [`service::ServiceContext`]) and what it gives back ([`service::Contribution`]).
//! - [`platform`] — the wiring: the broker, the loop over the services, the HTTP stack,
//!   health and metrics, start and graceful stop.
//! - [`admin`] — the operators' API under `/admin/…` (token, rate limit, audit); off
//!   unless `admin.token` is set.
//! - [`status`] — the live status page at `/status`, reading the admin API.
//! - [`config`] — typed, layered, validated configuration.
//! - [`problem`] — RFC 9457 errors; [`openapi`] — the generated API document.
//! - [`gateway`] — one public API in front of one process per service.
//! - [`provider`] — the simulated payment provider; [`load`] — the demo's traffic.
//!
//! `main.rs` only parses the command line.

pub mod admin;
pub mod auth;
pub mod catalog;
pub mod config;
pub mod contracts;
pub mod gateway;
pub mod inventory;
pub mod load;
pub mod notifications;
pub mod openapi;
pub mod ops_cli;
pub mod orders;
pub mod payments;
pub mod platform;
pub mod problem;
pub mod projections;
pub mod provider;
pub mod service;
pub mod status;
pub mod up;
