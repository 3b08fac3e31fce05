//! The level of a tenant's log line, read from its text: tenants print in every format, so
//! tenement looks for the first common level word (`ERROR`, `warning`, `[info]`, `level=debug`)
//! and takes that. `tenement logs --level` keeps lines at that level or more severe.

use serde::{Deserialize, Serialize};

/// From least to most severe, so `>=` means "at least as severe".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    pub const NAMES: [&'static str; 4] = ["debug", "info", "warn", "error"];

    /// `debug`, `info`, `warn` (or `warning`), `error`, in any case.
    pub fn parse(text: &str) -> Option<Level> {
        match text.to_ascii_lowercase().as_str() {
            "debug" => Some(Level::Debug),
            "info" => Some(Level::Info),
            "warn" | "warning" => Some(Level::Warn),
            "error" => Some(Level::Error),
            _ => None,
        }
    }

    /// The level of the first level word in `line`: a whole word (letters bounded by
    /// anything but letters, digits and `_`), compared without regard to case:
    /// `trace`, `debug` -> debug; `info`, `notice` -> info; `warn`, `warning` -> warn;
    /// `error`, `err`, `fatal`, `critical`, `crit`, `alert`, `emerg`, `panic` -> error.
    /// `None` when the line has none of them.
    pub fn of_line(line: &str) -> Option<Level> {
        line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .find_map(word_level)
    }
}

fn word_level(word: &str) -> Option<Level> {
    // The longest level word is 8 letters: skip longer words without lowercasing them.
    if word.is_empty() || word.len() > 8 {
        return None;
    }
    let mut lower = [0u8; 8];
    for (slot, byte) in lower.iter_mut().zip(word.bytes()) {
        *slot = byte.to_ascii_lowercase();
    }
    match &lower[..word.len()] {
        b"trace" | b"debug" => Some(Level::Debug),
        b"info" | b"notice" => Some(Level::Info),
        b"warn" | b"warning" => Some(Level::Warn),
        b"error" | b"err" | b"fatal" | b"critical" | b"crit" | b"alert" | b"emerg" | b"panic" => {
            Some(Level::Error)
        }
        _ => None,
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(Level::NAMES[*self as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_level_word_decides() {
        for (line, level) in [
            ("2026-01-01 ERROR db is gone", Some(Level::Error)),
            ("[warning] disk 91% full", Some(Level::Warn)),
            ("level=info msg=\"started\"", Some(Level::Info)),
            ("INFO: request failed with error", Some(Level::Info)),
            ("Traceback: PANIC", Some(Level::Error)),
            ("E: err: no such file", Some(Level::Error)),
            ("notice: reloading", Some(Level::Info)),
            ("TRACE entering", Some(Level::Debug)),
            ("stderr says hello", None),
            ("errors: 0, warnings: 0", None),
            ("informational", None),
            ("", None),
        ] {
            assert_eq!(Level::of_line(line), level, "{line:?}");
        }
    }

    #[test]
    fn names_parse_and_order_by_severity() {
        assert_eq!(Level::parse("WARNING"), Some(Level::Warn));
        assert_eq!(Level::parse("loud"), None);
        assert!(Level::Error > Level::Warn && Level::Warn > Level::Info);
        assert!(Level::Info > Level::Debug);
        assert_eq!(Level::Warn.to_string(), "warn");
    }
}
