//! A fresh database per test.

use std::time::Duration;

use eddy_sql::{Db, DbConfig};
use sqlx::Connection;

/// Where PostgreSQL tests connect; override with `EDDYTEST_POSTGRES_URL`
/// (a server url without a database name).
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432";

/// A database that exists for one test.
#[derive(Debug)]
pub struct TestDb {
    db: Db,
    url: String,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres { server: String, name: String },
}

impl TestDb {
    /// A new SQLite file in a temporary folder.
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"));
        let url = format!("sqlite://{}", dir.path().join("test.db").display());
        let db = Db::connect(&DbConfig::new(&url))
            .await
            .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
        Self {
            db,
            url,
            kind: Kind::Sqlite(dir),
        }
    }

    /// A new database on the local PostgreSQL server. Panics with a clear message when
    /// the server is unreachable: a missing service must fail the run, not skip it.
    pub async fn postgres() -> Self {
        let server = postgres_server_url();
        let name = format!("eddy_test_{}", uuid::Uuid::now_v7().simple());
        let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres"))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL is required for this test and is not reachable at {server} ({e}). \
                     Start it (see README, 'Tests') or set EDDYTEST_POSTGRES_URL."
                )
            });
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
        let _ = admin.close().await;
        let url = format!("{server}/{name}");
        let db = Db::connect(&DbConfig::new(&url).max_connections(16))
            .await
            .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
        Self {
            db,
            url,
            kind: Kind::Postgres { server, name },
        }
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Opens a second, independent pool on the same database (another "process").
    pub async fn connect_again(&self) -> Db {
        Db::connect(&DbConfig::new(&self.url).max_connections(16))
            .await
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.url))
    }
}

impl Drop for TestDb {
    /// Drops the PostgreSQL database (from another thread: `Drop` cannot await, and it
    /// also runs while a failed test unwinds). SQLite folders go with their `TempDir`.
    fn drop(&mut self) {
        if let Kind::Postgres { server, name } = &self.kind {
            let server = server.clone();
            let name = name.clone();
            let db = self.db.clone();
            crate::block_on_own_runtime(async move {
                // Close our pool; its connections belong to the test's runtime, so the
                // server may still see them: WITH (FORCE) ends them.
                drop(db);
                if let Ok(mut admin) =
                    sqlx::PgConnection::connect(&format!("{server}/postgres")).await
                {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(30),
                        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                            .execute(&mut admin),
                    )
                    .await;
                    let _ = admin.close().await;
                }
            });
        }
    }
}

/// The PostgreSQL server the tests use: `EDDYTEST_POSTGRES_URL` or [`DEFAULT_POSTGRES_URL`],
/// without a trailing `/`.
pub fn postgres_server_url() -> String {
    std::env::var("EDDYTEST_POSTGRES_URL")
        .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned())
        .trim_end_matches('/')
        .to_owned()
}
