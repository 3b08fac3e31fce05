//! Numbers as the dashboard shows them: short, with units, `–` for unknown.

use std::time::{Duration, UNIX_EPOCH};

pub const NONE: &str = "–";

pub fn bytes(value: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut amount = value as f64;
    let mut unit = 0;
    while amount >= 1024.0 && unit < UNITS.len() - 1 {
        amount /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value} B")
    } else {
        format!("{amount:.1} {}", UNITS[unit])
    }
}

pub fn rate_bytes(value: Option<f64>) -> String {
    value.map_or(NONE.to_string(), |value| {
        format!("{}/s", bytes(value as u64))
    })
}

pub fn number(value: Option<f64>, decimals: usize) -> String {
    value.map_or(NONE.to_string(), |value| format!("{value:.decimals$}"))
}

/// `3d 4h`, `2h 5m`, `4m 10s`, `9s`.
pub fn duration(secs: u64) -> String {
    let (days, hours, minutes, seconds) =
        (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {minutes}m")
    } else if minutes > 0 {
        format!("{minutes}m {seconds}s")
    } else {
        format!("{seconds}s")
    }
}

/// A unix-milliseconds time as UTC, to the second.
pub fn time_ms(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0 MiB");
        assert_eq!(duration(3725), "1h 2m");
        assert_eq!(duration(9), "9s");
        assert_eq!(rate_bytes(None), NONE);
        assert_eq!(time_ms(0), "1970-01-01T00:00:00Z");
    }
}
