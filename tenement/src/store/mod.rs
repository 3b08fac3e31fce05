//! Durable state in one SQLite file, `{data_dir}/tenement.db`: which instances should be
//! running, their traffic weights, their dynamic uids, and an event history per instance.
//!
//! Every write runs in a transaction, so a crash (even `kill -9`) leaves either the old or the
//! new state, never half of it. The journal is in WAL mode: readers never wait for writers.

mod audit;
mod events;
mod lock;
mod migrations;
mod running;
pub mod tokens;

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
};

use anyhow::{bail, Context, Result};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::config::InstanceName;

pub use audit::{AuditEntry, NewAuditEntry};
pub use events::{Event, EventKind};
pub use lock::{DataDirLock, LOCK_FILE};
pub use running::RunRecord;
pub use tokens::TokenRecord;

/// Weight of an instance nobody routed explicitly: it takes its full share.
pub const DEFAULT_WEIGHT: u8 = 100;

/// Events kept per instance; older ones are dropped so a crash loop cannot grow the file forever.
pub const EVENTS_KEPT_PER_INSTANCE: usize = 1000;

/// Handle to the store; cheap to clone, all clones share one connection. Calls block for
/// the short time a SQLite statement takes (no fsync per commit in WAL mode).
#[derive(Clone)]
pub struct Store {
    db: Arc<Mutex<Connection>>,
    path: Arc<PathBuf>,
}

/// One instance as the store remembers it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct InstanceRecord {
    pub name: InstanceName,
    pub desired_running: bool,
    /// Stopped by an operator: stays stopped (no wake on request, no start with tenement)
    /// until started again.
    pub held: bool,
    pub weight: u8,
    pub uid: Option<u32>,
}

impl Store {
    /// Opens (or creates) `{data_dir}/tenement.db`, creating `data_dir` if needed, and brings
    /// the schema up to date.
    pub fn open(data_dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating data directory {}", data_dir.display()))?;
        let path = data_dir.join("tenement.db");
        let mut db = Connection::open(&path)
            .with_context(|| format!("opening the store {}", path.display()))?;
        // The file holds token hashes: only tenement's own user may read it. SQLite gives the
        // -wal and -shm files the same mode.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting permissions of {}", path.display()))?;
        db.busy_timeout(std::time::Duration::from_secs(10))?;
        // NORMAL is durable against a crash of tenement (the WAL is in the page cache); a power
        // loss may lose the last commits but never corrupts the file.
        db.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             PRAGMA foreign_keys = ON;",
        )
        .with_context(|| format!("configuring the store {}", path.display()))?;
        migrations::apply(&mut db).with_context(|| format!("migrating {}", path.display()))?;
        Ok(Store {
            db: Arc::new(Mutex::new(db)),
            path: Arc::new(path),
        })
    }

    /// The database file, for error messages and `tenement status`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records whether `name` should be running; creates its row on first use. Wanting it
    /// running ends an operator's hold; not wanting it (asleep, exited) leaves a hold as is.
    pub fn set_desired(&self, name: &InstanceName, running: bool) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO instances (name, desired_running) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET desired_running = excluded.desired_running,
                     held = CASE WHEN excluded.desired_running THEN 0 ELSE held END",
                params![name.to_string(), running],
            )?;
            Ok(())
        })
        .with_context(|| format!("recording desired state of {name}"))
    }

    /// Records an operator's stop of `name`: not wanted running, and held so until
    /// [`Store::set_desired`] wants it running again.
    pub fn hold(&self, name: &InstanceName) -> Result<()> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO instances (name, desired_running, held) VALUES (?1, 0, 1)
                 ON CONFLICT (name) DO UPDATE SET desired_running = 0, held = 1",
                params![name.to_string()],
            )?;
            Ok(())
        })
        .with_context(|| format!("recording the stop of {name}"))
    }

    /// A request wants `name` running: recorded unless an operator's stop holds it. Returns
    /// whether it was recorded (false: held). One statement, so it cannot undo a hold that
    /// lands at the same moment.
    pub fn want_running_unless_held(&self, name: &InstanceName) -> Result<bool> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO instances (name, desired_running) VALUES (?1, 1)
                 ON CONFLICT (name) DO UPDATE SET desired_running = 1 WHERE held = 0",
                params![name.to_string()],
            )?;
            let held: bool = tx.query_row(
                "SELECT held FROM instances WHERE name = ?1",
                [name.to_string()],
                |row| row.get(0),
            )?;
            Ok(!held)
        })
        .with_context(|| format!("recording desired state of {name}"))
    }

    /// Whether an operator's stop holds `name` (false for names the store does not know).
    pub fn held(&self, name: &InstanceName) -> Result<bool> {
        let db = self.lock();
        Ok(db
            .query_row(
                "SELECT held FROM instances WHERE name = ?1",
                [name.to_string()],
                |row| row.get::<_, bool>(0),
            )
            .optional()?
            .unwrap_or(false))
    }

    /// Instances that should be running, in name order.
    pub fn desired_running(&self) -> Result<Vec<InstanceName>> {
        let db = self.lock();
        let mut query =
            db.prepare("SELECT name FROM instances WHERE desired_running ORDER BY name")?;
        let names = query
            .query_map([], |row| row.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        names.iter().map(|name| parse_name(name)).collect()
    }

    /// Every instance that was ever spawned or routed and not forgotten, in name order.
    pub fn known_instances(&self) -> Result<Vec<InstanceRecord>> {
        let db = self.lock();
        let mut query = db.prepare(
            "SELECT i.name, i.desired_running, i.held, i.weight, u.uid
             FROM instances i LEFT JOIN uids u ON u.name = i.name
             ORDER BY i.name",
        )?;
        let rows = query
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, bool>(1)?,
                    row.get::<_, bool>(2)?,
                    row.get::<_, u8>(3)?,
                    row.get::<_, Option<u32>>(4)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(name, desired_running, held, weight, uid)| {
                Ok(InstanceRecord {
                    name: parse_name(&name)?,
                    desired_running,
                    held,
                    weight,
                    uid,
                })
            })
            .collect()
    }

    /// Removes the instance's desired state, weight and events.
    ///
    /// Its uid stays reserved for this name: files it left behind (a persisted data
    /// directory) must never become readable by another instance that would inherit the uid.
    /// Use [`Store::release_uid`] once those files are gone.
    pub fn forget(&self, name: &InstanceName) -> Result<()> {
        self.write(|tx| {
            let name = name.to_string();
            tx.execute("DELETE FROM instances WHERE name = ?1", [&name])?;
            tx.execute("DELETE FROM events WHERE name = ?1", [&name])?;
            Ok(())
        })
        .with_context(|| format!("forgetting {name}"))
    }

    /// Gives the uid of `name` back to the pool. Only safe when no file owned by it remains.
    pub fn release_uid(&self, name: &InstanceName) -> Result<()> {
        self.write(|tx| {
            tx.execute("DELETE FROM uids WHERE name = ?1", [name.to_string()])?;
            Ok(())
        })
        .with_context(|| format!("releasing the uid of {name}"))
    }

    /// The routing weight of `name`, `None` when the store does not know it.
    pub fn weight(&self, name: &InstanceName) -> Result<Option<u8>> {
        let db = self.lock();
        Ok(db
            .query_row(
                "SELECT weight FROM instances WHERE name = ?1",
                [name.to_string()],
                |row| row.get::<_, u8>(0),
            )
            .optional()?)
    }

    /// Sets several weights at once: all of them or, on any error, none. A weight above 100
    /// is refused, naming the instance. Unknown instances get a row (not desired running).
    pub fn set_weights(&self, weights: &[(InstanceName, u8)]) -> Result<()> {
        if let Some((name, weight)) = weights.iter().find(|(_, weight)| *weight > 100) {
            bail!("weight {weight} for {name} is out of range: weights are 0-100");
        }
        self.write(|tx| {
            let mut upsert = tx.prepare(
                "INSERT INTO instances (name, weight) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET weight = excluded.weight",
            )?;
            for (name, weight) in weights {
                upsert.execute(params![name.to_string(), weight])?;
            }
            Ok(())
        })
        .context("setting weights")
    }

    /// The dynamic uid (also used as gid) of `name`: the same one every time, never one held
    /// by another instance, never the id of an existing system user or group.
    /// Fails when every uid of `range` (inclusive) is taken.
    pub fn uid_for(&self, name: &InstanceName, range: [u32; 2]) -> Result<u32> {
        let [low, high] = range;
        if low > high {
            bail!("uid_range [{low}, {high}] is empty: the first uid must not exceed the second");
        }
        if low == 0 {
            bail!("uid_range [{low}, {high}] includes uid 0 (root): tenants must not get it");
        }
        self.write(|tx| {
            let key = name.to_string();
            let existing = tx
                .query_row("SELECT uid FROM uids WHERE name = ?1", [&key], |row| {
                    row.get::<_, u32>(0)
                })
                .optional()?;
            if let Some(uid) = existing {
                return Ok(uid);
            }
            let taken: std::collections::HashSet<u32> = tx
                .prepare("SELECT uid FROM uids WHERE uid BETWEEN ?1 AND ?2")?
                .query_map([low, high], |row| row.get::<_, u32>(0))?
                .collect::<rusqlite::Result<_>>()?;
            let free = (low..=high).find(|uid| !taken.contains(uid) && !system_account(*uid));
            let Some(uid) = free else {
                bail!(
                    "no free uid left in uid_range [{low}, {high}] for {name}: {} are held by \
                     instances; widen uid_range or forget instances (and release their uids)",
                    taken.len()
                );
            };
            tx.execute(
                "INSERT INTO uids (name, uid) VALUES (?1, ?2)",
                params![key, uid],
            )?;
            Ok(uid)
        })
        .with_context(|| format!("allocating a uid for {name}"))
    }

    /// Appends an event to the history of `name`.
    pub fn record_event(&self, name: &InstanceName, kind: EventKind, detail: &str) -> Result<()> {
        let time_ms = events::now_ms();
        self.write(|tx| {
            let key = name.to_string();
            tx.execute(
                "INSERT INTO events (name, time_ms, kind, detail) VALUES (?1, ?2, ?3, ?4)",
                params![key, time_ms, kind.as_str(), detail],
            )?;
            tx.execute(
                "DELETE FROM events WHERE name = ?1 AND seq <= (
                     SELECT seq FROM events WHERE name = ?1
                     ORDER BY seq DESC LIMIT 1 OFFSET ?2)",
                params![key, EVENTS_KEPT_PER_INSTANCE as i64],
            )?;
            Ok(())
        })
        .with_context(|| format!("recording event {kind} for {name}"))
    }

    /// The latest `limit` events of `name`, newest first.
    pub fn events(&self, name: &InstanceName, limit: usize) -> Result<Vec<Event>> {
        let db = self.lock();
        let mut query = db.prepare(
            "SELECT time_ms, kind, detail FROM events WHERE name = ?1
             ORDER BY seq DESC LIMIT ?2",
        )?;
        let rows = query
            .query_map(
                params![name.to_string(), i64::try_from(limit).unwrap_or(i64::MAX)],
                |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                    ))
                },
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(time_ms, kind, detail)| {
                Ok(Event {
                    time: events::from_ms(time_ms),
                    kind: kind.parse().map_err(|err: String| {
                        anyhow::anyhow!("{}: event of {name}: {err}", self.path.display())
                    })?,
                    detail,
                })
            })
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock rolled its transaction back on unwind: the
        // connection itself is still consistent.
        self.db
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `body` in an immediate transaction, committed only when it returns `Ok`.
    fn write<T>(&self, body: impl FnOnce(&rusqlite::Transaction) -> Result<T>) -> Result<T> {
        let mut db = self.lock();
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = body(&tx)?;
        tx.commit()?;
        Ok(value)
    }
}

fn parse_name(text: &str) -> Result<InstanceName> {
    InstanceName::parse(text)
        .map_err(|err| anyhow::anyhow!("store holds a bad instance name: {err}"))
}

/// True when `id` names a user or a group in the system databases (/etc/passwd, /etc/group):
/// tenants use it as both uid and gid, and must not inherit anyone's files.
fn system_account(id: u32) -> bool {
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(id));
    let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(id));
    matches!(user, Ok(Some(_))) || matches!(group, Ok(Some(_)))
}

#[cfg(test)]
mod tests;
