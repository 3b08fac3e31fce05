//! What happened to an instance, kept as its history in the store.

use std::{
    fmt,
    str::FromStr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

/// Kinds of instance events; stored and serialized by their kebab-case name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    Spawned,
    Ready,
    Degraded,
    Unhealthy,
    Crashed,
    Restarted,
    OomKilled,
    IdleStopped,
    Failed,
    Stopped,
    QuotaExceeded,
    /// The network boundary refused a bind, connect or send of the instance.
    NetworkDenied,
    /// Something else listened on the instance's port: the start moved to another port.
    PortTaken,
    /// A new tenement took over the instance's running process (after a crash, a restart
    /// or an upgrade of tenement).
    Adopted,
    /// Idle for `freeze_after`: its cgroup was frozen.
    Frozen,
    /// A frozen instance was thawed (by a request, an operator's start, or to be stopped).
    Thawed,
}

impl EventKind {
    pub const ALL: [EventKind; 16] = [
        EventKind::Spawned,
        EventKind::Ready,
        EventKind::Degraded,
        EventKind::Unhealthy,
        EventKind::Crashed,
        EventKind::Restarted,
        EventKind::OomKilled,
        EventKind::IdleStopped,
        EventKind::Failed,
        EventKind::Stopped,
        EventKind::QuotaExceeded,
        EventKind::NetworkDenied,
        EventKind::PortTaken,
        EventKind::Adopted,
        EventKind::Frozen,
        EventKind::Thawed,
    ];

    /// The kebab-case name, as in JSON and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Spawned => "spawned",
            EventKind::Ready => "ready",
            EventKind::Degraded => "degraded",
            EventKind::Unhealthy => "unhealthy",
            EventKind::Crashed => "crashed",
            EventKind::Restarted => "restarted",
            EventKind::OomKilled => "oom-killed",
            EventKind::IdleStopped => "idle-stopped",
            EventKind::Failed => "failed",
            EventKind::Stopped => "stopped",
            EventKind::QuotaExceeded => "quota-exceeded",
            EventKind::NetworkDenied => "network-denied",
            EventKind::PortTaken => "port-taken",
            EventKind::Adopted => "adopted",
            EventKind::Frozen => "frozen",
            EventKind::Thawed => "thawed",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        EventKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| format!("unknown event kind {text:?}"))
    }
}

/// One entry of an instance's history. `time` serializes as unix milliseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    #[serde(with = "unix_ms")]
    pub time: SystemTime,
    pub kind: EventKind,
    pub detail: String,
}

pub(crate) fn now_ms() -> i64 {
    to_ms(SystemTime::now())
}

fn to_ms(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

pub(crate) fn from_ms(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

mod unix_ms {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_i64(super::to_ms(*time))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SystemTime, D::Error> {
        Ok(super::from_ms(i64::deserialize(deserializer)?))
    }
}
