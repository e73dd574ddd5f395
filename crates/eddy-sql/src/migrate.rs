//! A tiny migrator: each part of Eddy (and each service) lists its [`Migration`]s;
//! [`crate::Db::migrate`] applies the ones not yet applied, in order, each in its own
//! transaction, recorded in `eddy_migrations`. Concurrent migrators are serialised by
//! an advisory lock on PostgreSQL and by the write lock on SQLite.

use eddy_core::Error;

use crate::{classify, Backend, Db};

/// One schema change, written once per backend. Statements are separated by `;`.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Unique across the database, e.g. `eddy_log_0001_tables`.
    pub name: &'static str,
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

/// Arbitrary constant identifying Eddy's migration lock.
const PG_MIGRATION_LOCK: i64 = 0x0edd_1a7e;

impl Db {
    /// Applies every migration of `migrations` not applied yet.
    pub async fn migrate(&self, migrations: &[Migration]) -> Result<(), Error> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS eddy_migrations (name TEXT PRIMARY KEY, applied_at_us BIGINT NOT NULL)",
        )
        .execute(tx.conn())
        .await
        .map_err(|e| classify("cannot create eddy_migrations", e))?;
        tx.commit().await?;

        for migration in migrations {
            let mut tx = self.begin().await?;
            if self.backend() == Backend::Postgres {
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(PG_MIGRATION_LOCK)
                    .execute(tx.conn())
                    .await
                    .map_err(|e| classify("cannot take the migration lock", e))?;
            }
            let applied: Option<String> =
                sqlx::query_scalar("SELECT name FROM eddy_migrations WHERE name = $1")
                    .bind(migration.name)
                    .fetch_optional(tx.conn())
                    .await
                    .map_err(|e| classify("cannot read eddy_migrations", e))?;
            if applied.is_some() {
                tx.rollback().await?;
                continue;
            }
            let script = match self.backend() {
                Backend::Sqlite => migration.sqlite,
                Backend::Postgres => migration.postgres,
            };
            for statement in script.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                sqlx::query(statement)
                    .execute(tx.conn())
                    .await
                    .map_err(|e| classify(format!("migration {} failed", migration.name), e))?;
            }
            let now = eddy_core::envelope::to_micros(eddy_core::OffsetDateTime::now_utc());
            sqlx::query("INSERT INTO eddy_migrations (name, applied_at_us) VALUES ($1, $2)")
                .bind(migration.name)
                .bind(now)
                .execute(tx.conn())
                .await
                .map_err(|e| classify("cannot record a migration", e))?;
            tx.commit().await?;
            tracing::info!(migration = migration.name, "applied migration");
        }
        Ok(())
    }
}
