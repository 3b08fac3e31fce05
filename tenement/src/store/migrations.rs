//! The schema, as an append-only list of migrations. A database records which ones it has;
//! opening it applies the missing ones, each in its own transaction.

use anyhow::{bail, Result};
use rusqlite::{params, Connection};

/// Never edit an entry once released: add a new one.
const MIGRATIONS: &[&str] = &[
    // 1: instances, uids, events, tokens.
    "CREATE TABLE instances (
         name            TEXT PRIMARY KEY,
         desired_running INTEGER NOT NULL DEFAULT 0,
         weight          INTEGER NOT NULL DEFAULT 100 CHECK (weight BETWEEN 0 AND 100)
     );
     -- Separate from instances: a uid outlives `forget` (see Store::forget).
     CREATE TABLE uids (
         name TEXT PRIMARY KEY,
         uid  INTEGER NOT NULL UNIQUE
     );
     CREATE TABLE events (
         seq     INTEGER PRIMARY KEY AUTOINCREMENT,
         name    TEXT NOT NULL,
         time_ms INTEGER NOT NULL,
         kind    TEXT NOT NULL,
         detail  TEXT NOT NULL
     );
     CREATE INDEX events_by_name ON events (name, seq);
     CREATE TABLE tokens (
         id         INTEGER PRIMARY KEY AUTOINCREMENT,
         scope      TEXT NOT NULL,
         sha256     BLOB NOT NULL UNIQUE,
         created_ms INTEGER NOT NULL
     );",
    // 2: an operator's stop holds (`stopped`) until `start`; an instance that is not
    // wanted running and not held is asleep (`sleeping`) and wakes on a request.
    "ALTER TABLE instances ADD COLUMN held INTEGER NOT NULL DEFAULT 0;",
    // 3: token descriptions; the audit log of changes made through the API and the dashboard.
    "ALTER TABLE tokens ADD COLUMN description TEXT NOT NULL DEFAULT '';
     CREATE TABLE audit (
         seq         INTEGER PRIMARY KEY AUTOINCREMENT,
         time_ms     INTEGER NOT NULL,
         token_id    INTEGER,
         who         TEXT NOT NULL,
         action      TEXT NOT NULL,
         target      TEXT NOT NULL,
         address     TEXT NOT NULL,
         status      INTEGER NOT NULL,
         detail      TEXT NOT NULL
     );",
    // 4: the process of each running instance, for a later tenement to adopt (see
    // store/running.rs); a row lives from the spawn to the end of the teardown.
    "CREATE TABLE running (
         name   TEXT PRIMARY KEY,
         record TEXT NOT NULL
     );",
];

/// Brings the schema of `db` up to date.
pub(super) fn apply(db: &mut Connection) -> Result<()> {
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    INTEGER PRIMARY KEY,
             applied_ms INTEGER NOT NULL
         )",
    )?;
    let current: u32 = db.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |row| row.get(0),
    )?;
    let known = MIGRATIONS.len() as u32;
    if current > known {
        bail!(
            "the database has schema version {current}, newer than this tenement knows \
             ({known}); it was written by a newer tenement: upgrade tenement"
        );
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = index as u32 + 1;
        let tx = db.transaction()?;
        tx.execute_batch(sql)
            .map_err(|err| anyhow::anyhow!("schema migration {version}: {err}"))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_ms) VALUES (?1, ?2)",
            params![version, super::events::now_ms()],
        )?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
/// The schema version this build writes.
pub(super) fn latest() -> u32 {
    MIGRATIONS.len() as u32
}
