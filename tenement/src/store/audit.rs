//! The audit log: every change made through the API or the dashboard, who made it (token id
//! and description, or the operator's uid), when and from where. Kept in the store so it
//! survives restarts; bounded so a script in a loop cannot grow the file forever.

use anyhow::{Context, Result};
use rusqlite::params;
use serde::{Deserialize, Serialize};

use super::{events, Store};

/// Audit entries kept; older ones are dropped.
pub const AUDIT_ENTRIES_KEPT: i64 = 10_000;

/// One change, as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: i64,
    /// Unix milliseconds.
    pub time_ms: i64,
    /// The token used, if any (`null` for root on the unix socket).
    pub token_id: Option<i64>,
    /// `token 3 (ci deploys)`, `operator uid 0`.
    pub who: String,
    /// `start`, `stop`, `restart`, `spawn`, `weight`, `deploy`, `route`, `token-gen`, `token-revoke`,
    /// `sign-in`.
    pub action: String,
    /// What it acted on: an instance, a service, a token id.
    pub target: String,
    /// Where the request came from: `127.0.0.1:52144`, `unix`.
    pub address: String,
    /// The HTTP status the action was answered with: 2xx done, anything else refused or failed.
    pub status: u16,
    /// The new weight, the error message, and such; empty when there is nothing to add.
    pub detail: String,
}

/// What to record; the store adds the sequence number and the time.
pub struct NewAuditEntry<'a> {
    pub token_id: Option<i64>,
    pub who: &'a str,
    pub action: &'a str,
    pub target: &'a str,
    pub address: &'a str,
    pub status: u16,
    pub detail: &'a str,
}

impl Store {
    pub fn audit(&self, entry: &NewAuditEntry<'_>) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO audit (time_ms, token_id, who, action, target, address, status, \
                 detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    events::now_ms(),
                    entry.token_id,
                    entry.who,
                    entry.action,
                    entry.target,
                    entry.address,
                    entry.status,
                    entry.detail
                ],
            )?;
            tx.execute(
                "DELETE FROM audit WHERE seq <= (SELECT MAX(seq) FROM audit) - ?1",
                [AUDIT_ENTRIES_KEPT],
            )?;
            Ok(())
        })
        .with_context(|| {
            format!(
                "recording {} of {} in the audit log",
                entry.action, entry.target
            )
        })
    }

    /// The newest `limit` entries, newest first.
    pub fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>> {
        let db = self.lock();
        let mut query = db.prepare(
            "SELECT seq, time_ms, token_id, who, action, target, address, status, detail \
             FROM audit ORDER BY seq DESC LIMIT ?1",
        )?;
        let rows = query
            .query_map([limit as i64], |row| {
                Ok(AuditEntry {
                    seq: row.get(0)?,
                    time_ms: row.get(1)?,
                    token_id: row.get(2)?,
                    who: row.get(3)?,
                    action: row.get(4)?,
                    target: row.get(5)?,
                    address: row.get(6)?,
                    status: row.get(7)?,
                    detail: row.get(8)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }
}
