//! What tenement remembers about each running instance's process, so that the next tenement
//! (after a crash, a `kill -9` or an upgrade) can adopt it instead of starting it again: the
//! pid and the kernel's start time of that pid (a pid reused by another process has another
//! start time), where it listens, and when it started.

use anyhow::{Context, Result};
use rusqlite::params;
use serde::{Deserialize, Serialize};

use super::{parse_name, Store};
use crate::config::InstanceName;

/// One running instance's process, as its supervisor started it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The first process of the instance (its session and group leader): the program, the
    /// namespace init's outer process, or runsc.
    pub pid: u32,
    /// Field 22 of `/proc/PID/stat`: clock ticks after boot when the process started.
    pub start_ticks: u64,
    /// Its port (`listen = "port"`), or none.
    pub port: Option<u16>,
    /// Its unix socket (`listen = "unix"`), or none.
    pub socket: Option<String>,
    /// The uid it runs as (owner of its socket).
    pub uid: u32,
    /// Unix time in milliseconds of the spawn.
    pub started_ms: u64,
}

impl Store {
    /// Records (or replaces) the process of `name`.
    pub fn set_running(&self, name: &InstanceName, record: &RunRecord) -> Result<()> {
        let text = serde_json::to_string(record)?;
        self.write(|tx| {
            tx.execute(
                "INSERT INTO running (name, record) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET record = excluded.record",
                params![name.to_string(), text],
            )?;
            Ok(())
        })
        .with_context(|| format!("recording the process of {name}"))
    }

    /// `name` has no process any more.
    pub fn clear_running(&self, name: &InstanceName) -> Result<()> {
        self.write(|tx| {
            tx.execute("DELETE FROM running WHERE name = ?1", [name.to_string()])?;
            Ok(())
        })
        .with_context(|| format!("forgetting the process of {name}"))
    }

    /// Every recorded process. A record that cannot be read is skipped (nothing adopts it;
    /// its cgroup is cleaned like any leftover).
    pub fn running(&self) -> Result<Vec<(InstanceName, RunRecord)>> {
        let db = self.lock();
        let mut statement = db.prepare("SELECT name, record FROM running ORDER BY name")?;
        let rows = statement.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })?;
        let mut records = Vec::new();
        for row in rows {
            let (name, text) = row?;
            match serde_json::from_str(&text) {
                Ok(record) => records.push((parse_name(&name)?, record)),
                Err(err) => tracing::warn!("the store's record of {name}'s process: {err}"),
            }
        }
        Ok(records)
    }
}
