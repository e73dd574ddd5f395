//! # shop — the Eddy reference order platform
//!
//! Five services — catalog, orders, inventory, payments, notifications — built only on
//! the Eddy toolkit, run as modules of one process on embedded defaults (a SQLite file
//! per service and the embedded log). Each service owns its tables and its outbox;
//! services talk only through events (and the public HTTP API). The order saga is
//! choreographed:
//!
//! ```text
//! POST /v1/orders ─ OrderPlaced ─▶ inventory ─ StockReserved ─▶ payments ─ PaymentCaptured ─▶ orders ─ OrderConfirmed ─▶ inventory (consume), notifications
//!                                            └ StockRejected ─▶ orders ─ OrderCancelled(out_of_stock | unknown_product)
//!                                                              payments ─ PaymentDeclined ─▶ orders ─ OrderCancelled(payment_declined) ─▶ inventory (release), notifications
//! ```
//!
//! Layout: [`contracts`] (the events), one module per service ([`catalog`], [`orders`],
//! [`inventory`], [`payments`], [`notifications`]), the simulated payment [`provider`],
//! [`app`] (wiring, HTTP, lifecycle), [`config`], [`problem`] (RFC 9457 errors),
//! [`telemetry`], and [`load`] (the demo traffic generator). `main.rs` only parses the
//! command line.

pub mod app;
pub mod catalog;
pub mod config;
pub mod contracts;
pub mod gateway;
pub mod inventory;
pub mod load;
pub mod notifications;
pub mod orders;
pub mod payments;
pub mod problem;
pub mod provider;
pub mod service;
pub mod telemetry;
