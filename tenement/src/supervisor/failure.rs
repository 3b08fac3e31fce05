//! Why a start failed, in words an operator can act on: what happened (exit status or
//! signal, or the real `startup_timeout`), the last lines the program wrote, and what comes
//! next. The same sentence reaches the waiter (`spawn`, the proxy), `ps`, the API and the
//! events.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::{
    config::InstanceName,
    logs::{LogHub, Stream},
};

/// Lines of the program's own output quoted in a failure.
const OUTPUT_LINES: usize = 5;
/// Longest quoted line, in characters.
const LINE_CHARS: usize = 200;

pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|since| since.as_millis() as u64)
        .unwrap_or(0)
}

/// `; its last output: "a" / "b"` from what the attempt that began at `since_ms` wrote to
/// stdout and stderr, or a note that it wrote nothing.
pub fn last_output(logs: &LogHub, name: &InstanceName, since_ms: u64) -> String {
    let lines: Vec<String> = logs
        .tail(name, 200)
        .into_iter()
        .filter(|line| line.stream != Stream::System && line.time_ms >= since_ms)
        .map(|line| quote(&line.line))
        .collect();
    if lines.is_empty() {
        return "; it wrote nothing to stdout or stderr".to_string();
    }
    let last = &lines[lines.len().saturating_sub(OUTPUT_LINES)..];
    format!("; its last output: {}", last.join(" / "))
}

fn quote(line: &str) -> String {
    let line = line.trim_end();
    let mut quoted: String = line.chars().take(LINE_CHARS).collect();
    if quoted.len() < line.len() {
        quoted.push('…');
    }
    format!("{quoted:?}")
}

/// The next step while tenement still restarts it.
pub fn retrying(name: &InstanceName, delay_ms: u128) -> String {
    format!(
        "tenement restarts it in {delay_ms}ms (until max_restarts is reached); \
         `tenement logs {name}` shows its output"
    )
}

/// The next step once tenement gave up.
pub fn given_up(name: &InstanceName) -> String {
    format!(
        "it stays failed: `tenement logs {name}` shows its output; fix the cause, then \
         `tenement restart {name}`"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lines_are_cut_and_quoted() {
        assert_eq!(quote("fatal: \"x\"\n"), r#""fatal: \"x\"""#);
        let long = "y".repeat(500);
        let quoted = quote(&long);
        assert_eq!(quoted.chars().filter(|c| *c == 'y').count(), LINE_CHARS);
        assert!(quoted.ends_with("…\""));
    }
}
