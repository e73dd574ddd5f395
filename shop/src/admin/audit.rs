//! The audit trail of the admin API: one entry per admin request that passed the rate
//! limit, accepted or refused, written twice — an INFO line with target `eddy_audit`
//! (for the log pipeline, which keeps it as long as logs are kept) and a row of
//! `admin_audit` (for `GET /admin/audit`, bounded by `admin.audit_len_max`).
//!
//! Requests the rate limit refused are logged but not stored: a flood of them could
//! otherwise push every real entry out of the bounded table.

use std::sync::Arc;

use eddy_core::Clock;
use eddy_sql::migrate::Migration;
use eddy_sql::Db;
use serde::Serialize;
use sqlx::Row;

use crate::contracts::values::Timestamp;

/// The audit table. `id` orders the entries; `status` is BIGINT so both databases read
/// it back as the same integer type.
pub const MIGRATIONS: &[Migration] = &[Migration {
    name: "admin_0001_audit",
    sqlite: "CREATE TABLE IF NOT EXISTS admin_audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at_us BIGINT NOT NULL, who TEXT NOT NULL, client TEXT, method TEXT NOT NULL, path TEXT NOT NULL, status BIGINT NOT NULL)",
    postgres: "CREATE TABLE IF NOT EXISTS admin_audit (id BIGSERIAL PRIMARY KEY, at_us BIGINT NOT NULL, who TEXT NOT NULL, client TEXT, method TEXT NOT NULL, path TEXT NOT NULL, status BIGINT NOT NULL)",
}];

/// Longest path stored (and logged): longer ones are cut, so one request cannot write
/// an unbounded row.
pub const PATH_LEN_MAX: usize = 512;

/// Who made an admin request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// No bearer token.
    Anonymous,
    /// A bearer token, named by its fingerprint ([`super::guard::fingerprint`]): the
    /// right token or a wrong one, which the status tells apart.
    Token(String),
}

impl Who {
    pub fn as_str(&self) -> &str {
        match self {
            Who::Anonymous => "anonymous",
            Who::Token(fingerprint) => fingerprint,
        }
    }
}

/// One admin request, as it is audited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub who: Who,
    /// The client's IP address, when the connection gave one.
    pub client: Option<String>,
    pub method: String,
    pub path: String,
    pub status: u16,
}

/// One stored entry, as `GET /admin/audit` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub id: i64,
    pub at: Timestamp,
    pub who: String,
    pub client: Option<String>,
    pub method: String,
    pub path: String,
    pub status: u16,
}

/// The `admin_audit` table. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AuditLog {
    db: Db,
    clock: Arc<dyn Clock>,
    len_max: i64,
}

impl AuditLog {
    /// The audit in `db`, creating its table if needed; it keeps `len_max` entries.
    pub async fn open(
        db: Db,
        clock: Arc<dyn Clock>,
        len_max: u64,
    ) -> Result<Self, eddy_core::Error> {
        db.migrate(MIGRATIONS).await?;
        Ok(Self {
            db,
            clock,
            len_max: i64::try_from(len_max).unwrap_or(i64::MAX),
        })
    }

    /// Writes the log line and stores the entry, then deletes what is beyond
    /// `len_max` (ids only grow, so everything at or below the newest id minus
    /// `len_max` is older than the entries kept). A failed write is logged, not
    /// answered: the request it audits was already handled, and the log line stands.
    pub async fn record(&self, request: &Request) {
        log(request);
        if let Err(error) = self.store(request).await {
            tracing::warn!(%error, path = %request.path, "cannot store an admin audit entry (it is in the log)");
        }
    }

    async fn store(&self, request: &Request) -> Result<(), eddy_core::Error> {
        let at_us = eddy_core::envelope::to_micros(self.clock.now());
        let mut tx = self.db.begin().await?;
        sqlx::query(
            "INSERT INTO admin_audit (at_us, who, client, method, path, status) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(at_us)
        .bind(request.who.as_str())
        .bind(request.client.clone())
        .bind(request.method.as_str())
        .bind(request.path.as_str())
        .bind(i64::from(request.status))
        .execute(tx.conn())
        .await
        .map_err(|e| eddy_sql::classify("cannot store an admin audit entry", e))?;
        sqlx::query("DELETE FROM admin_audit WHERE id <= (SELECT MAX(id) FROM admin_audit) - $1")
            .bind(self.len_max)
            .execute(tx.conn())
            .await
            .map_err(|e| eddy_sql::classify("cannot trim the admin audit", e))?;
        tx.commit().await
    }

    /// The newest `limit` entries, newest first.
    pub async fn recent(&self, limit: i64) -> Result<Vec<Entry>, eddy_core::Error> {
        let rows = sqlx::query(
            "SELECT id, at_us, who, client, method, path, status FROM admin_audit ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(self.db.pool())
        .await
        .map_err(|e| eddy_sql::classify("cannot read the admin audit", e))?;
        rows.iter()
            .map(|row| -> Result<Entry, sqlx::Error> {
                let status: i64 = row.try_get("status")?;
                Ok(Entry {
                    id: row.try_get("id")?,
                    at: Timestamp::from_micros(row.try_get("at_us")?),
                    who: row.try_get("who")?,
                    client: row.try_get("client")?,
                    method: row.try_get("method")?,
                    path: row.try_get("path")?,
                    status: u16::try_from(status).unwrap_or(0),
                })
            })
            .collect::<Result<Vec<Entry>, sqlx::Error>>()
            .map_err(|e| eddy_sql::classify("cannot read the admin audit", e))
    }
}

/// The audit's log line (target `eddy_audit`, INFO), for every admin request, those
/// the rate limit refused included.
pub fn log(request: &Request) {
    tracing::info!(
        target: "eddy_audit",
        who = request.who.as_str(),
        client = request.client.as_deref().unwrap_or("unknown"),
        method = %request.method,
        path = %request.path,
        status = request.status,
        "admin request"
    );
}

/// `path` cut to [`PATH_LEN_MAX`] bytes, on a character boundary.
pub fn bounded_path(path: &str) -> String {
    if path.len() <= PATH_LEN_MAX {
        return path.to_owned();
    }
    let mut end = PATH_LEN_MAX;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &path[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_path_is_cut_on_a_character_boundary() {
        let path = format!("/admin/{}", "é".repeat(PATH_LEN_MAX));
        let cut = bounded_path(&path);
        assert!(cut.len() <= PATH_LEN_MAX + '…'.len_utf8(), "{}", cut.len());
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn a_short_path_is_kept_as_it_is() {
        assert_eq!(bounded_path("/admin/outbox"), "/admin/outbox");
    }
}
