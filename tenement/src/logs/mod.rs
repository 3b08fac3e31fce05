//! Tenant output: captured line by line with a timestamp and its stream, kept in a bounded
//! in-memory ring per instance (for tails and live follows) and appended to per-instance files
//! rotated by size (for search, and to survive a restart of tenement).
//!
//! Memory stays bounded whatever a tenant prints: a line is cut at [`MAX_LINE_BYTES`] and the
//! rest of it discarded as it arrives; the ring is capped in lines and bytes; lines waiting
//! for the disk are capped in bytes, and a tenant that floods faster than the disk takes it
//! is slowed down (its pipe fills up) rather than buffered.

mod files;
mod level;
mod lines;
mod newest;
mod ring;
mod writer;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{mpsc, Arc, Mutex, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncRead, BufReader},
    sync::{broadcast, mpsc::UnboundedSender, Semaphore},
    task::JoinHandle,
};

use crate::config::InstanceName;

use files::Layout;
pub use level::Level;
use lines::LineSplitter;
use newest::Newest;
use ring::Ring;
use writer::{Job, Writer};

/// Longest line kept, in bytes; the rest is dropped and the cut marked in the line.
pub const MAX_LINE_BYTES: usize = 16 * 1024;
/// Lines kept in memory per instance...
pub const RING_LINES: usize = 1000;
/// ...and at most this many bytes of them.
pub const RING_BYTES: usize = 256 * 1024;
/// A log file is rotated before it grows past this size.
pub const FILE_BYTES: u64 = 10 * 1024 * 1024;
/// Rotated files kept besides the current one (`.log.1`, `.log.2`).
pub const ROTATED_FILES: usize = 2;
/// Bytes of tenant lines waiting for the disk writer, all instances together.
pub const QUEUED_BYTES: usize = 8 * 1024 * 1024;
/// Lines a live follower may fall behind before it skips ahead.
pub const FOLLOW_BACKLOG: usize = 256;
/// Default number of lines a search returns.
pub const DEFAULT_SEARCH_LIMIT: usize = 1000;

/// Read buffer per captured stream.
const READ_BUFFER: usize = 8 * 1024;
/// How long a search or forget waits for the disk writer before giving up.
const WRITER_WAIT: Duration = Duration::from_secs(30);

/// Where a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
    /// Written by tenement about the instance ("restarting in 2s").
    System,
}

impl std::fmt::Display for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::System => "system",
        })
    }
}

/// One line of output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// When the line was complete, unix milliseconds.
    pub time_ms: u64,
    pub instance: InstanceName,
    pub stream: Stream,
    pub line: String,
}

/// What [`LogHub::search`] looks for; every filter that is set must match.
#[derive(Clone, Debug)]
pub struct LogQuery {
    /// One instance, or all of them.
    pub instance: Option<InstanceName>,
    /// Every instance of one service.
    pub service: Option<String>,
    /// One stream (stdout, stderr or tenement's own system lines).
    pub stream: Option<Stream>,
    /// Lines whose level word ([`Level::of_line`]) is at least this severe.
    pub level: Option<Level>,
    /// Substring of the line, case-sensitive.
    pub contains: Option<String>,
    pub regex: Option<regex::Regex>,
    /// Inclusive lower bound, unix ms.
    pub since_ms: Option<u64>,
    /// Inclusive upper bound, unix ms.
    pub until_ms: Option<u64>,
    /// The newest `limit` matching lines are returned (none for 0).
    pub limit: usize,
}

impl Default for LogQuery {
    fn default() -> Self {
        LogQuery {
            instance: None,
            service: None,
            stream: None,
            level: None,
            contains: None,
            regex: None,
            since_ms: None,
            until_ms: None,
            limit: DEFAULT_SEARCH_LIMIT,
        }
    }
}

impl LogQuery {
    /// True when `line` passes every filter that is set.
    pub fn matches(&self, line: &LogLine) -> bool {
        self.instance
            .as_ref()
            .is_none_or(|name| *name == line.instance)
            && self
                .service
                .as_ref()
                .is_none_or(|service| *service == line.instance.service)
            && self.stream.is_none_or(|stream| stream == line.stream)
            && self
                .level
                .is_none_or(|least| Level::of_line(&line.line).is_some_and(|level| level >= least))
            && self.since_ms.is_none_or(|since| line.time_ms >= since)
            && self.until_ms.is_none_or(|until| line.time_ms <= until)
            && self
                .contains
                .as_ref()
                .is_none_or(|text| line.line.contains(text.as_str()))
            && self
                .regex
                .as_ref()
                .is_none_or(|regex| regex.is_match(&line.line))
    }
}

/// The bounds a hub works within; [`LogLimits::default`] uses the constants of this module.
#[derive(Clone, Debug)]
pub struct LogLimits {
    pub line_bytes: usize,
    pub ring_lines: usize,
    pub ring_bytes: usize,
    pub file_bytes: u64,
    pub rotated_files: usize,
    pub queued_bytes: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            line_bytes: MAX_LINE_BYTES,
            ring_lines: RING_LINES,
            ring_bytes: RING_BYTES,
            file_bytes: FILE_BYTES,
            rotated_files: ROTATED_FILES,
            queued_bytes: QUEUED_BYTES,
        }
    }
}

/// Captures, keeps and searches the logs of every instance. Cheap to clone.
#[derive(Clone)]
pub struct LogHub {
    inner: Arc<Inner>,
}

struct Inner {
    limits: LogLimits,
    layout: Layout,
    /// Read-held while opening a set of files, write-held by the writer while renaming them.
    rotation: Arc<RwLock<()>>,
    instances: Mutex<HashMap<InstanceName, Arc<InstanceLog>>>,
    /// Every instance's lines, for followers of a whole service; sent to only while one
    /// listens.
    all: broadcast::Sender<LogLine>,
    /// Bytes of tenant lines that may wait for the writer.
    queue: Arc<Semaphore>,
    jobs: Option<UnboundedSender<Job>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

struct InstanceLog {
    ring: Mutex<Ring>,
    follow: broadcast::Sender<LogLine>,
}

impl LogHub {
    /// A hub keeping its files under `dir` (normally `{data_dir}/logs`), with the default
    /// limits. Lines written by an earlier tenement in the same `dir` are found again.
    pub fn new(dir: PathBuf) -> Result<LogHub> {
        LogHub::with_limits(dir, LogLimits::default())
    }

    /// Like [`LogHub::new`], within other bounds.
    pub fn with_limits(dir: PathBuf, limits: LogLimits) -> Result<LogHub> {
        files::create_private_dir(&dir)
            .with_context(|| format!("creating the log directory {}", dir.display()))?;
        let layout = Layout {
            dir: dir.clone(),
            rotated: limits.rotated_files,
        };
        let rotation = Arc::new(RwLock::new(()));
        let (jobs, queued) = tokio::sync::mpsc::unbounded_channel();
        let writer = Writer {
            layout: layout.clone(),
            max_file_bytes: limits.file_bytes,
            rotation: rotation.clone(),
        }
        .spawn(queued)
        .context("starting the log writer thread")?;
        Ok(LogHub {
            inner: Arc::new(Inner {
                queue: Arc::new(Semaphore::new(limits.queued_bytes.max(1))),
                limits,
                layout,
                rotation,
                instances: Mutex::new(HashMap::new()),
                all: broadcast::channel(FOLLOW_BACKLOG).0,
                jobs: Some(jobs),
                writer: Some(writer),
            }),
        })
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &std::path::Path {
        &self.inner.layout.dir
    }

    /// Reads `reader` (a tenant's stdout or stderr) line by line until end of input.
    /// Must be called inside a tokio runtime.
    pub fn capture(
        &self,
        name: &InstanceName,
        stream: Stream,
        reader: impl AsyncRead + Unpin + Send + 'static,
    ) -> JoinHandle<()> {
        let inner = self.inner.clone();
        let name = name.clone();
        tokio::spawn(async move {
            let log = inner.instance(&name);
            let mut reader = BufReader::with_capacity(READ_BUFFER, reader);
            let mut splitter = LineSplitter::new(inner.limits.line_bytes);
            loop {
                match splitter.next_line(&mut reader).await {
                    Ok(Some(raw)) => {
                        let line = LogLine {
                            time_ms: now_ms(),
                            instance: name.clone(),
                            stream,
                            line: raw.into_text(),
                        };
                        inner.publish_tenant_line(&log, line).await;
                    }
                    Ok(None) => break,
                    Err(err) => {
                        inner.publish(
                            &log,
                            system_line(&name, &format!("reading {stream} failed: {err}")),
                            None,
                        );
                        break;
                    }
                }
            }
        })
    }

    /// Logs a line from tenement itself about `name`.
    pub fn system(&self, name: &InstanceName, line: &str) {
        let log = self.inner.instance(name);
        let line = lines::cap_text(line, self.inner.limits.line_bytes);
        self.inner.publish(&log, system_line(name, &line), None);
    }

    /// The last `n` lines of `name`, oldest first, from memory. Until the instance logs in
    /// this run of tenement, the lines come from its files.
    pub fn tail(&self, name: &InstanceName, n: usize) -> Vec<LogLine> {
        let existing = self.inner.lock_instances().get(name).cloned();
        match existing {
            Some(log) => lock(&log.ring).last(n),
            None => {
                let mut recent = self.inner.recent_from_disk(name);
                recent.drain(..recent.len().saturating_sub(n));
                recent
            }
        }
    }

    /// Lines of `name` from now on. A receiver that falls more than [`FOLLOW_BACKLOG`] lines
    /// behind gets `RecvError::Lagged` and continues with newer lines.
    pub fn follow(&self, name: &InstanceName) -> broadcast::Receiver<LogLine> {
        self.inner.instance(name).follow.subscribe()
    }

    /// Lines of every instance from now on (for a service's follow: instances started
    /// later are included). Lags like [`LogHub::follow`].
    pub fn follow_all(&self) -> broadcast::Receiver<LogLine> {
        self.inner.all.subscribe()
    }

    /// Searches the files (current and rotated) of one or all instances. Returns the newest
    /// `query.limit` matching lines, oldest first. Blocks on file reads: call it from
    /// `spawn_blocking` in async code.
    pub fn search(&self, query: &LogQuery) -> Result<Vec<LogLine>> {
        self.flush();
        let names = match &query.instance {
            Some(name) => vec![name.clone()],
            None => self
                .inner
                .layout
                .instances()
                .with_context(|| {
                    format!("listing log files in {}", self.inner.layout.dir.display())
                })?
                .into_iter()
                .filter(|name| query.service.as_ref().is_none_or(|s| *s == name.service))
                .collect(),
        };
        let mut newest = Newest::new(query.limit);
        for name in &names {
            for file in self.inner.open_files(name) {
                files::for_each_line(file, |line| {
                    if query.matches(&line) {
                        newest.offer(line);
                    }
                })
                .with_context(|| format!("reading the log of {name}"))?;
            }
        }
        Ok(newest.into_oldest_first())
    }

    /// Waits until every line received so far is in the files. Blocks.
    pub fn flush(&self) {
        let (done, finished) = mpsc::channel();
        if self.inner.send(Job::Flush(done)) {
            let _ = finished.recv_timeout(WRITER_WAIT);
        }
    }

    /// Drops the in-memory lines of `name` and deletes its files. Blocks.
    pub fn forget(&self, name: &InstanceName) -> Result<()> {
        self.inner.lock_instances().remove(name);
        let (done, finished) = mpsc::channel();
        anyhow::ensure!(
            self.inner.send(Job::Forget(name.clone(), done)),
            "the log writer has stopped"
        );
        finished
            .recv_timeout(WRITER_WAIT)
            .context("the log writer did not answer")?
            .with_context(|| format!("deleting the log files of {name}"))
    }
}

impl Inner {
    fn lock_instances(&self) -> std::sync::MutexGuard<'_, HashMap<InstanceName, Arc<InstanceLog>>> {
        lock(&self.instances)
    }

    /// The in-memory log of `name`, created on first use with the recent lines from its files.
    fn instance(&self, name: &InstanceName) -> Arc<InstanceLog> {
        if let Some(log) = self.lock_instances().get(name) {
            return log.clone();
        }
        // Read outside the lock: other instances keep logging meanwhile.
        let recent = self.recent_from_disk(name);
        self.lock_instances()
            .entry(name.clone())
            .or_insert_with(|| {
                let mut ring = Ring::new(self.limits.ring_lines, self.limits.ring_bytes);
                for line in recent {
                    ring.push(line);
                }
                Arc::new(InstanceLog {
                    ring: Mutex::new(ring),
                    follow: broadcast::channel(FOLLOW_BACKLOG).0,
                })
            })
            .clone()
    }

    fn recent_from_disk(&self, name: &InstanceName) -> Vec<LogLine> {
        // The files hold JSON: allow for its overhead on top of the text bytes.
        let budget = self.limits.ring_bytes + self.limits.ring_lines * 128;
        files::read_recent(self.open_files(name), self.limits.ring_lines, budget)
    }

    fn open_files(&self, name: &InstanceName) -> Vec<std::fs::File> {
        let _consistent = self.rotation.read().unwrap_or_else(|p| p.into_inner());
        self.layout.open_oldest_first(name)
    }

    /// Waits for room in the writer queue, then publishes: a flooding tenant waits here,
    /// with its output piling up in its own pipe, not in tenement.
    async fn publish_tenant_line(&self, log: &InstanceLog, line: LogLine) {
        let cost = (line.line.len() + 128).min(self.limits.queued_bytes.max(1));
        let permit = self
            .queue
            .clone()
            .acquire_many_owned(u32::try_from(cost).unwrap_or(u32::MAX))
            .await
            .ok();
        self.publish(log, line, permit);
    }

    fn publish(
        &self,
        log: &InstanceLog,
        line: LogLine,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) {
        lock(&log.ring).push(line.clone());
        if log.follow.receiver_count() > 0 {
            let _ = log.follow.send(line.clone());
        }
        if self.all.receiver_count() > 0 {
            let _ = self.all.send(line.clone());
        }
        self.send(Job::Line(line, permit));
    }

    /// False when the writer thread is gone.
    fn send(&self, job: Job) -> bool {
        self.jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send(job).is_ok())
    }
}

impl Drop for Inner {
    /// Lets the writer finish what is queued, so a dropped hub leaves complete files.
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn system_line(name: &InstanceName, line: &str) -> LogLine {
    LogLine {
        time_ms: now_ms(),
        instance: name.clone(),
        stream: Stream::System,
        line: line.to_string(),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

#[cfg(test)]
mod tests;
