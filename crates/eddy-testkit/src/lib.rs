//! # eddy-testkit — what Eddy's own tests and adapter authors share
//!
//! - [`db`] — [`TestDb`]: a fresh database per test, a SQLite file in a temporary
//!   folder or a new PostgreSQL database on the local server, dropped afterwards.
//!   PostgreSQL tests fail loudly (never skip) when the server is unreachable.
//! - [`conformance`] — the broker conformance suite: one set of cases, gated by
//!   [`conformance::Capabilities`], that every [`eddy_core::Publisher`] /
//!   [`eddy_core::Subscriber`] adapter must pass. Adapters instantiate it with
//!   [`conformance_tests!`].
//! - [`events`] — small typed events for tests.
//! - [`tansu`] — a Kafka-compatible broker started for one test.
//! - [`redis`] — the shared Redis, and a `redis-server` of a test's own for fault tests.
//! - [`otlp`] — [`OtlpReceiver`]: an OTLP/HTTP trace receiver capturing the spans a
//!   process exports, for asserting on traces without a collector.

pub mod conformance;
pub mod db;
pub mod events;
pub mod otlp;
pub mod redis;
pub mod tansu;

pub use db::TestDb;
pub use otlp::OtlpReceiver;

/// Runs `work` to completion on a runtime of its own, in a thread of its own. For
/// clean-up in `Drop`, which cannot await and also runs while a failed test unwinds
/// (possibly inside another runtime, where blocking is not allowed).
pub fn block_on_own_runtime<F>(work: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let _ = std::thread::spawn(move || {
        if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            runtime.block_on(work);
        }
    })
    .join();
}

/// Runs each of the named `async fn case(db: TestDb)` on SQLite and on PostgreSQL, as
/// the tests `sqlite::case` and `postgres::case` (each with a fresh database). The
/// calling file must have `TestDb` in scope.
#[macro_export]
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::TestDb::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::TestDb::postgres().await).await;
                }
            )*
        }
    };
}
