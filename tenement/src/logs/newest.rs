//! Keeping the newest `limit` of a stream of search hits, in memory proportional to `limit`.

use std::{cmp::Reverse, collections::BinaryHeap};

use super::LogLine;

pub(super) struct Newest {
    limit: usize,
    /// Min-heap: its top is the oldest hit kept so far, the first to go.
    heap: BinaryHeap<Reverse<Hit>>,
    read: u64,
}

/// Ordered by time, then by the order lines were read (files are read oldest first).
struct Hit {
    time_ms: u64,
    read: u64,
    line: LogLine,
}

impl Hit {
    fn key(&self) -> (u64, u64) {
        (self.time_ms, self.read)
    }
}

impl PartialEq for Hit {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Hit {}
impl PartialOrd for Hit {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Hit {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

impl Newest {
    pub fn new(limit: usize) -> Newest {
        Newest {
            limit,
            heap: BinaryHeap::new(),
            read: 0,
        }
    }

    pub fn offer(&mut self, line: LogLine) {
        self.read += 1;
        let hit = Hit {
            time_ms: line.time_ms,
            read: self.read,
            line,
        };
        if self.heap.len() < self.limit {
            self.heap.push(Reverse(hit));
        } else if self
            .heap
            .peek()
            .is_some_and(|Reverse(oldest)| *oldest < hit)
        {
            self.heap.pop();
            self.heap.push(Reverse(hit));
        }
    }

    pub fn into_oldest_first(self) -> Vec<LogLine> {
        let mut hits: Vec<Hit> = self.heap.into_iter().map(|Reverse(hit)| hit).collect();
        hits.sort();
        hits.into_iter().map(|hit| hit.line).collect()
    }
}
