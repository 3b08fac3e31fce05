//! The disk side of the log hub: one thread that appends lines to per-instance files and
//! rotates them by size. Tenants never wait on a disk write inside the async runtime; the
//! bytes queued for this thread are bounded by a semaphore in the hub.

use std::{
    collections::{HashMap, HashSet},
    fs::{File, OpenOptions},
    io::{BufWriter, Write},
    os::unix::fs::OpenOptionsExt,
    path::PathBuf,
    sync::{mpsc, Arc, RwLock},
};

use tokio::sync::{mpsc::UnboundedReceiver, OwnedSemaphorePermit};

use crate::config::InstanceName;

use super::{files, files::Layout, LogLine};

/// Files kept open at once; beyond that the least recently written one is closed.
const MAX_OPEN_FILES: usize = 128;
/// Jobs handled before buffered lines are flushed to the files even if more are waiting.
const BATCH: usize = 1024;

pub(super) enum Job {
    /// A line to append; the permit (when the line came from a tenant) is released once the
    /// line has left the queue.
    Line(LogLine, Option<OwnedSemaphorePermit>),
    /// Write out everything received so far, then answer.
    Flush(mpsc::Sender<()>),
    /// Close and delete every file of the instance, then answer.
    Forget(InstanceName, mpsc::Sender<std::io::Result<()>>),
}

pub(super) struct Writer {
    pub layout: Layout,
    pub max_file_bytes: u64,
    /// Held for writing while files are renamed, so readers open a consistent set.
    pub rotation: Arc<RwLock<()>>,
}

struct OpenLog {
    out: BufWriter<File>,
    size: u64,
    last_used: u64,
}

struct State {
    config: Writer,
    open: HashMap<InstanceName, OpenLog>,
    clock: u64,
    encoded: Vec<u8>,
    /// Paths whose last write failed: reported once, not once per line.
    failing: HashSet<PathBuf>,
}

impl Writer {
    pub fn spawn(
        self,
        jobs: UnboundedReceiver<Job>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let state = State {
            config: self,
            open: HashMap::new(),
            clock: 0,
            encoded: Vec::new(),
            failing: HashSet::new(),
        };
        std::thread::Builder::new()
            .name("tenement-logs".into())
            .spawn(move || state.run(jobs))
    }
}

impl State {
    fn run(mut self, mut jobs: UnboundedReceiver<Job>) {
        while let Some(job) = jobs.blocking_recv() {
            self.handle(job);
            for _ in 1..BATCH {
                match jobs.try_recv() {
                    Ok(job) => self.handle(job),
                    Err(_) => break,
                }
            }
            self.flush_all();
        }
        self.flush_all();
    }

    fn handle(&mut self, job: Job) {
        match job {
            Job::Line(line, _permit) => self.append(&line),
            Job::Flush(done) => {
                self.flush_all();
                let _ = done.send(());
            }
            Job::Forget(name, done) => {
                let _ = done.send(self.forget(&name));
            }
        }
    }

    fn append(&mut self, line: &LogLine) {
        self.encoded.clear();
        if serde_json::to_writer(&mut self.encoded, line).is_err() {
            return;
        }
        self.encoded.push(b'\n');
        let path = self.config.layout.current(&line.instance);
        match self.try_append(&line.instance) {
            Ok(()) => {
                self.failing.remove(&path);
            }
            Err(err) => {
                // Drop the handle: the next line reopens the file, which may work again
                // (disk space freed, directory recreated).
                self.open.remove(&line.instance);
                if self.failing.insert(path.clone()) {
                    tracing::warn!(
                        "log of {}: writing {} failed: {err}; lines are lost until it works again",
                        line.instance,
                        path.display()
                    );
                }
            }
        }
    }

    fn try_append(&mut self, name: &InstanceName) -> std::io::Result<()> {
        let len = self.encoded.len() as u64;
        let needs_rotation = match self.open.get(name) {
            Some(log) => log.size > 0 && log.size + len > self.config.max_file_bytes,
            None => {
                self.open_log(name)?;
                let size = self.open[name].size;
                size > 0 && size + len > self.config.max_file_bytes
            }
        };
        if needs_rotation {
            self.rotate(name)?;
        }
        self.clock += 1;
        let log = self.open.get_mut(name).expect("opened above");
        log.last_used = self.clock;
        log.out.write_all(&self.encoded)?;
        log.size += len;
        Ok(())
    }

    fn open_log(&mut self, name: &InstanceName) -> std::io::Result<()> {
        if self.open.len() >= MAX_OPEN_FILES {
            let oldest = self
                .open
                .iter()
                .min_by_key(|(_, log)| log.last_used)
                .map(|(name, _)| name.clone());
            if let Some(mut log) = oldest.and_then(|oldest| self.open.remove(&oldest)) {
                let _ = log.out.flush();
            }
        }
        files::create_private_dir(&self.config.layout.service_dir(name))?;
        // Never through a symlink: root appends here, and a planted link would make it
        // append to any file it names.
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.config.layout.current(name))?;
        let size = file.metadata()?.len();
        self.open.insert(
            name.clone(),
            OpenLog {
                out: BufWriter::new(file),
                size,
                last_used: self.clock,
            },
        );
        Ok(())
    }

    /// current -> .1 -> .2 ...; the oldest falls off the end.
    fn rotate(&mut self, name: &InstanceName) -> std::io::Result<()> {
        if let Some(mut log) = self.open.remove(name) {
            log.out.flush()?;
        }
        {
            let _renaming = self
                .config
                .rotation
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let layout = &self.config.layout;
            if layout.rotated == 0 {
                remove_if_exists(&layout.current(name))?;
            }
            for generation in (0..layout.rotated).rev() {
                let from = layout.generation(name, generation);
                match std::fs::rename(&from, layout.generation(name, generation + 1)) {
                    Err(err) if err.kind() != std::io::ErrorKind::NotFound => return Err(err),
                    _ => {}
                }
            }
        }
        self.open_log(name)
    }

    fn forget(&mut self, name: &InstanceName) -> std::io::Result<()> {
        self.open.remove(name);
        let layout = &self.config.layout;
        for generation in 0..=layout.rotated {
            remove_if_exists(&layout.generation(name, generation))?;
        }
        // Fails harmlessly while other instances of the service still have logs.
        let _ = std::fs::remove_dir(layout.service_dir(name));
        Ok(())
    }

    fn flush_all(&mut self) {
        let mut failed = Vec::new();
        for (name, log) in &mut self.open {
            if let Err(err) = log.out.flush() {
                failed.push(name.clone());
                tracing::warn!("log of {name}: flushing failed: {err}");
            }
        }
        for name in failed {
            self.open.remove(&name);
        }
    }
}

fn remove_if_exists(path: &std::path::Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}
