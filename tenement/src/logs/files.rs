//! Where log files live and how they are read back.
//!
//! `{dir}/{service}/{id}.log` is the current file, `{id}.log.1` the previous one and so on.
//! A directory per service rather than `{service}-{id}.log`: `a-b:c` and `a:b-c` must not
//! share a file. Each line is one JSON-encoded [`LogLine`].

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Seek, SeekFrom},
    path::{Path, PathBuf},
};

use crate::config::InstanceName;

use super::LogLine;

#[derive(Clone)]
pub(super) struct Layout {
    pub dir: PathBuf,
    /// Rotated files kept besides the current one.
    pub rotated: usize,
}

impl Layout {
    pub fn service_dir(&self, name: &InstanceName) -> PathBuf {
        self.dir.join(&name.service)
    }

    pub fn current(&self, name: &InstanceName) -> PathBuf {
        self.service_dir(name).join(format!("{}.log", name.id))
    }

    /// `{id}.log.{generation}`; generation 0 is the current file.
    pub fn generation(&self, name: &InstanceName, generation: usize) -> PathBuf {
        if generation == 0 {
            return self.current(name);
        }
        self.service_dir(name)
            .join(format!("{}.log.{generation}", name.id))
    }

    /// Opens the files of `name` that exist, oldest first. Call it under the rotation read
    /// lock: once open, a file stays the same file even if it is renamed by a rotation.
    pub fn open_oldest_first(&self, name: &InstanceName) -> Vec<File> {
        (0..=self.rotated)
            .rev()
            .filter_map(|generation| File::open(self.generation(name, generation)).ok())
            .collect()
    }

    /// Every instance with at least one log file, in name order.
    pub fn instances(&self) -> std::io::Result<Vec<InstanceName>> {
        let mut names = std::collections::BTreeSet::new();
        let services = match std::fs::read_dir(&self.dir) {
            Ok(services) => services,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(err),
        };
        for service in services {
            let service = service?;
            let Some(service_name) = service.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !service.file_type()?.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(service.path())? {
                let file = file?.file_name();
                let Some(id) = file.to_str().and_then(instance_id) else {
                    continue;
                };
                if let Ok(name) = InstanceName::new(&service_name, id) {
                    names.insert(name);
                }
            }
        }
        Ok(names.into_iter().collect())
    }
}

/// `alice` from `alice.log` or `alice.log.3`.
fn instance_id(file: &str) -> Option<&str> {
    if let Some(id) = file.strip_suffix(".log") {
        return Some(id);
    }
    let (stem, generation) = file.rsplit_once('.')?;
    generation.parse::<u32>().ok()?;
    stem.strip_suffix(".log")
}

/// Calls `each` for every well-formed line of `file`, in order. Lines that do not parse (the
/// half-written last line after a crash of tenement) are skipped.
pub(super) fn for_each_line(file: File, mut each: impl FnMut(LogLine)) -> std::io::Result<()> {
    let mut reader = BufReader::new(file);
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        if reader.read_until(b'\n', &mut buffer)? == 0 {
            return Ok(());
        }
        if let Ok(line) = serde_json::from_slice::<LogLine>(&buffer) {
            each(line);
        }
    }
}

/// The most recent lines of a log (files given oldest first), at most `max_lines`, reading
/// no more than about `max_bytes` from disk.
pub(super) fn read_recent(files: Vec<File>, max_lines: usize, max_bytes: usize) -> Vec<LogLine> {
    let mut newest_first: Vec<LogLine> = Vec::new();
    let mut budget = max_bytes as u64;
    for mut file in files.into_iter().rev() {
        if budget == 0 || newest_first.len() >= max_lines {
            break;
        }
        let Ok(len) = file.metadata().map(|meta| meta.len()) else {
            continue;
        };
        let start = len.saturating_sub(budget);
        let mut bytes = Vec::new();
        if file.seek(SeekFrom::Start(start)).is_err()
            || file.take(len - start).read_to_end(&mut bytes).is_err()
        {
            continue;
        }
        budget -= bytes.len() as u64;
        let mut text = &bytes[..];
        if start > 0 {
            // Began mid-line: the partial first line is not a line.
            let first_end = text
                .iter()
                .position(|&b| b == b'\n')
                .map_or(text.len(), |at| at + 1);
            text = &text[first_end..];
        }
        let lines: Vec<LogLine> = text
            .split(|&b| b == b'\n')
            .filter_map(|raw| serde_json::from_slice(raw).ok())
            .collect();
        newest_first.extend(lines.into_iter().rev());
    }
    newest_first.truncate(max_lines);
    newest_first.reverse();
    newest_first
}

pub(super) fn create_private_dir(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}
