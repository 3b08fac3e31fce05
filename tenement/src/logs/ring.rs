//! The in-memory tail of one instance's log, bounded by line count and by bytes.

use std::collections::VecDeque;

use super::LogLine;

pub(super) struct Ring {
    lines: VecDeque<LogLine>,
    bytes: usize,
    max_lines: usize,
    max_bytes: usize,
}

impl Ring {
    pub fn new(max_lines: usize, max_bytes: usize) -> Ring {
        Ring {
            lines: VecDeque::new(),
            bytes: 0,
            max_lines,
            max_bytes,
        }
    }

    pub fn push(&mut self, line: LogLine) {
        self.bytes += line.line.len();
        self.lines.push_back(line);
        while self.lines.len() > self.max_lines
            || (self.bytes > self.max_bytes && self.lines.len() > 1)
        {
            if let Some(old) = self.lines.pop_front() {
                self.bytes -= old.line.len();
            }
        }
    }

    /// The last `n` lines, oldest first.
    pub fn last(&self, n: usize) -> Vec<LogLine> {
        let skip = self.lines.len().saturating_sub(n);
        self.lines.iter().skip(skip).cloned().collect()
    }
}
