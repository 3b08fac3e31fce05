//! The access log: one JSON object per request, one per line, in
//! `{data_dir}/.tenement/access.log`, rotated by size like the instances' logs.
//!
//! It is written without waking anything per request: each thread that finishes requests
//! appends its lines to a buffer of its own (a mutex only that thread takes, except once a
//! second when the flusher empties it), and writes the buffer to the file itself once it
//! holds [`FLUSH_BYTES`]. A flusher thread writes out what is left every
//! [`FLUSH_INTERVAL`], so a quiet daemon's lines reach the file within about a second.
//! Lines are formatted into bytes by hand (no `fmt` machinery, no allocation), and the time
//! is derived from the request's own clock reading, not read again.

use std::{
    cell::RefCell,
    fs::{File, OpenOptions},
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, Weak,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// A thread's buffer is written to the file once it holds this much.
const FLUSH_BYTES: usize = 32 * 1024;
/// What is still buffered is written at least this often.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// The file is rotated before it grows past this size (as instance logs are).
pub const FILE_BYTES: u64 = crate::logs::FILE_BYTES;
/// Rotated files kept besides the current one (`access.log.1`, `access.log.2`).
pub const ROTATED_FILES: usize = crate::logs::ROTATED_FILES;

/// One finished request, as the access log line names it.
pub(crate) struct Record<'a> {
    pub started: Instant,
    pub duration: Duration,
    /// From sending the request to the instance to having its response head.
    pub upstream: Option<Duration>,
    pub client: &'a [u8],
    pub host: &'a [u8],
    pub method: &'a str,
    pub path: &'a str,
    pub protocol: &'a str,
    pub status: u16,
    pub bytes: u64,
    pub instance: Option<&'a str>,
    pub complete: bool,
    pub user_agent: Option<&'a [u8]>,
}

/// The access log of one proxy. Dropping it writes out every buffer.
pub struct AccessLog {
    /// Tells this log's thread buffers apart from another log's (tests run several proxies
    /// in one process).
    id: usize,
    sink: Mutex<Sink>,
    buffers: Mutex<Vec<Buffer>>,
}

/// The file, its size, and how to rotate it.
struct Sink {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    max_bytes: u64,
    rotated: usize,
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

/// One thread's lines not yet written.
type Buffer = Arc<Mutex<Vec<u8>>>;

thread_local! {
    /// This thread's buffer for each access log it has written to.
    static BUFFERS: RefCell<Vec<(usize, Buffer)>> = const { RefCell::new(Vec::new()) };
    /// The wall clock at one monotonic instant, and the formatted second last used.
    static CLOCK: RefCell<Clock> = RefCell::new(Clock::new());
}

impl AccessLog {
    /// Opens (creates) `path` for appending, without following a symlink, and starts the
    /// thread that flushes the buffers every second.
    pub fn open(path: &Path) -> std::io::Result<Arc<AccessLog>> {
        AccessLog::open_with(path, FILE_BYTES, ROTATED_FILES)
    }

    pub(crate) fn open_with(
        path: &Path,
        max_bytes: u64,
        rotated: usize,
    ) -> std::io::Result<Arc<AccessLog>> {
        let mut sink = Sink {
            path: path.to_path_buf(),
            file: None,
            size: 0,
            max_bytes,
            rotated,
        };
        sink.open()?;
        let log = Arc::new(AccessLog {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            sink: Mutex::new(sink),
            buffers: Mutex::default(),
        });
        let weak = Arc::downgrade(&log);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || flush_every_second(weak))?;
        Ok(log)
    }

    /// Appends one line to this thread's buffer; writes the buffer out when it is full.
    pub(crate) fn record(&self, record: &Record<'_>) {
        let buffer = self.thread_buffer();
        let mut buffer = buffer.lock().unwrap_or_else(|p| p.into_inner());
        write_line(&mut buffer, record);
        if buffer.len() >= FLUSH_BYTES {
            self.write_out(&mut buffer);
        }
    }

    /// Writes every thread's buffered lines to the file.
    pub fn flush(&self) {
        let buffers = self
            .buffers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for buffer in buffers {
            let mut buffer = buffer.lock().unwrap_or_else(|p| p.into_inner());
            if !buffer.is_empty() {
                self.write_out(&mut buffer);
            }
        }
        // Buffers of threads that have ended (nobody but this list holds them) and that are
        // empty now can go.
        self.buffers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|buffer| Arc::strong_count(buffer) > 1 || !buffer_is_empty(buffer));
    }

    fn thread_buffer(&self) -> Buffer {
        BUFFERS.with(|buffers| {
            let mut buffers = buffers.borrow_mut();
            if let Some((_, buffer)) = buffers.iter().find(|(id, _)| *id == self.id) {
                return buffer.clone();
            }
            let buffer = Arc::new(Mutex::new(Vec::with_capacity(FLUSH_BYTES + 1024)));
            self.buffers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(buffer.clone());
            buffers.push((self.id, buffer.clone()));
            buffer
        })
    }

    /// Whole lines go to the file in one write (the sink's lock keeps threads' writes
    /// apart), and the buffer is emptied whether or not the disk took them: a full disk
    /// must not grow the daemon's memory.
    fn write_out(&self, buffer: &mut Vec<u8>) {
        let mut sink = self.sink.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(error) = sink.write(buffer) {
            tracing::warn!(
                "access log {}: {error}; {} bytes of lines lost",
                sink.path.display(),
                buffer.len()
            );
        }
        buffer.clear();
    }
}

fn buffer_is_empty(buffer: &Mutex<Vec<u8>>) -> bool {
    buffer.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.flush();
    }
}

fn flush_every_second(log: Weak<AccessLog>) {
    loop {
        std::thread::sleep(FLUSH_INTERVAL);
        let Some(log) = log.upgrade() else { return };
        log.flush();
    }
}

impl Sink {
    /// The file is tenement's own, in its own directory; still, a symlink planted there is
    /// refused rather than followed.
    fn open(&mut self) -> std::io::Result<()> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&self.path)?;
        self.size = file.metadata()?.len();
        self.file = Some(file);
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.size > 0 && self.size + bytes.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        if self.file.is_none() {
            self.open()?;
        }
        let file = self.file.as_mut().expect("opened above");
        file.write_all(bytes)?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// `access.log.1` becomes `.2` and so on (the oldest is dropped), the current file
    /// becomes `.1`, and a new one is started.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        let generation = |n: usize| {
            let mut name = self.path.clone().into_os_string();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        if self.rotated == 0 {
            remove_if_exists(&self.path)?;
        } else {
            remove_if_exists(&generation(self.rotated))?;
            for n in (1..self.rotated).rev() {
                rename_if_exists(&generation(n), &generation(n + 1))?;
            }
            rename_if_exists(&self.path, &generation(1))?;
        }
        self.open()
    }
}

fn remove_if_exists(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

fn rename_if_exists(from: &Path, to: &Path) -> std::io::Result<()> {
    match std::fs::rename(from, to) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// `{"time":"2026-01-02T03:04:05.678Z","client":"…","host":"…","method":"GET","path":"…",
/// "protocol":"HTTP/1.1","status":200,"bytes":12,"duration_ms":0.412,"upstream_ms":0.301,
/// "instance":"api:alice","complete":true,"user_agent":"…"}`
fn write_line(out: &mut Vec<u8>, record: &Record<'_>) {
    out.extend_from_slice(b"{\"time\":\"");
    CLOCK.with(|clock| clock.borrow_mut().write(out, record.started));
    out.extend_from_slice(b"\",\"client\":\"");
    escape(out, record.client);
    out.extend_from_slice(b"\",\"host\":\"");
    escape(out, record.host);
    out.extend_from_slice(b"\",\"method\":\"");
    escape(out, record.method.as_bytes());
    out.extend_from_slice(b"\",\"path\":\"");
    escape(out, record.path.as_bytes());
    out.extend_from_slice(b"\",\"protocol\":\"");
    out.extend_from_slice(record.protocol.as_bytes());
    out.extend_from_slice(b"\",\"status\":");
    number(out, u64::from(record.status));
    out.extend_from_slice(b",\"bytes\":");
    number(out, record.bytes);
    out.extend_from_slice(b",\"duration_ms\":");
    milliseconds(out, record.duration);
    out.extend_from_slice(b",\"upstream_ms\":");
    match record.upstream {
        Some(upstream) => milliseconds(out, upstream),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"instance\":");
    match record.instance {
        Some(instance) => {
            out.push(b'"');
            escape(out, instance.as_bytes());
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(if record.complete {
        b",\"complete\":true"
    } else {
        b",\"complete\":false"
    });
    out.extend_from_slice(b",\"user_agent\":");
    match record.user_agent {
        Some(agent) => {
            out.push(b'"');
            escape(out, agent);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b"}\n");
}

fn number(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// Milliseconds with three decimals (microseconds), as a JSON number.
fn milliseconds(out: &mut Vec<u8>, duration: Duration) {
    let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
    number(out, micros / 1000);
    let fraction = micros % 1000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (fraction / 100) as u8,
        b'0' + (fraction / 10 % 10) as u8,
        b'0' + (fraction % 10) as u8,
    ]);
}

/// The inside of a JSON string. Request fields come from the client: quotes, backslashes
/// and control characters are escaped, and bytes that are not UTF-8 (allowed in header
/// values) are written as `\u00XX`, so every line stays valid JSON.
fn escape(out: &mut Vec<u8>, bytes: &[u8]) {
    // ASCII, the usual case, is checked a word at a time.
    let utf8 = bytes.is_ascii() || std::str::from_utf8(bytes).is_ok();
    let mut plain = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        let short: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f | 0x7f => b"",
            0x80.. if !utf8 => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[plain..at]);
        if short.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0xf)]);
        } else {
            out.extend_from_slice(short);
        }
        plain = at + 1;
    }
    out.extend_from_slice(&bytes[plain..]);
}

/// Wall-clock time for a monotonic instant without reading the clock again: one reading
/// of both clocks per thread, renewed every minute (so that a clock set by NTP shows
/// within a minute), and the date of the current second formatted once.
struct Clock {
    anchor: Instant,
    anchor_wall: Duration,
    second: u64,
    second_text: [u8; 19],
}

/// How long one reading of the wall clock is used for.
const CLOCK_RENEWAL: Duration = Duration::from_secs(60);

impl Clock {
    fn new() -> Clock {
        let mut clock = Clock {
            anchor: Instant::now(),
            anchor_wall: Duration::ZERO,
            second: u64::MAX,
            second_text: [0; 19],
        };
        clock.renew();
        clock
    }

    fn renew(&mut self) {
        self.anchor = Instant::now();
        self.anchor_wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
    }

    /// `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC) of `at`.
    fn write(&mut self, out: &mut Vec<u8>, at: Instant) {
        if at.saturating_duration_since(self.anchor) > CLOCK_RENEWAL {
            self.renew();
        }
        let wall = match at.checked_duration_since(self.anchor) {
            Some(later) => self.anchor_wall + later,
            None => self
                .anchor_wall
                .saturating_sub(self.anchor.duration_since(at)),
        };
        let second = wall.as_secs();
        if second != self.second {
            self.second = second;
            self.second_text = format_second(second);
        }
        out.extend_from_slice(&self.second_text);
        let millis = wall.subsec_millis();
        out.extend_from_slice(&[
            b'.',
            b'0' + (millis / 100) as u8,
            b'0' + (millis / 10 % 10) as u8,
            b'0' + (millis % 10) as u8,
            b'Z',
        ]);
    }
}

/// `YYYY-MM-DDTHH:MM:SS` of a Unix time (the civil-from-days algorithm, proleptic
/// Gregorian calendar).
fn format_second(unix: u64) -> [u8; 19] {
    let days = (unix / 86_400) as i64;
    let in_day = unix % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    let mut text = *b"0000-00-00T00:00:00";
    let mut put = |at: usize, value: u64, digits: usize| {
        let mut value = value;
        for i in (0..digits).rev() {
            text[at + i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, year.clamp(0, 9999) as u64, 4);
    put(5, month as u64, 2);
    put(8, day as u64, 2);
    put(11, in_day / 3600, 2);
    put(14, in_day / 60 % 60, 2);
    put(17, in_day % 60, 2);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record<'a>(path: &'a str, agent: Option<&'a [u8]>) -> Record<'a> {
        Record {
            started: Instant::now(),
            duration: Duration::from_micros(1_234_567),
            upstream: Some(Duration::from_micros(905)),
            client: b"127.0.0.1",
            host: b"alice.api.localhost",
            method: "GET",
            path,
            protocol: "HTTP/1.1",
            status: 200,
            bytes: 12,
            instance: Some("api:alice"),
            complete: true,
            user_agent: agent,
        }
    }

    #[test]
    fn lines_are_json_with_every_field() {
        let mut out = Vec::new();
        write_line(&mut out, &record("/a?b=\"c\"\\", Some(b"curl/8 \x01\xff")));
        assert_eq!(out.last(), Some(&b'\n'));
        let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(line["path"], "/a?b=\"c\"\\");
        assert_eq!(line["user_agent"], "curl/8 \u{1}\u{ff}");
        assert_eq!(line["status"], 200);
        assert_eq!(line["bytes"], 12);
        assert_eq!(line["duration_ms"], 1234.567);
        assert_eq!(line["upstream_ms"], 0.905);
        assert_eq!(line["instance"], "api:alice");
        assert_eq!(line["complete"], true);
        let time = line["time"].as_str().unwrap();
        assert_eq!(time.len(), 24, "{time}");
        assert!(time.starts_with("20") && time.ends_with('Z'), "{time}");
        assert_eq!(&time[10..11], "T", "{time}");
        let mut out = Vec::new();
        let mut unrouted = record("/", None);
        unrouted.instance = None;
        unrouted.upstream = None;
        write_line(&mut out, &unrouted);
        let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert!(line["instance"].is_null() && line["upstream_ms"].is_null());
        assert!(line["user_agent"].is_null());
    }

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(&format_second(0), b"1970-01-01T00:00:00");
        assert_eq!(&format_second(951_782_400), b"2000-02-29T00:00:00");
        assert_eq!(&format_second(1_798_761_599), b"2026-12-31T23:59:59");
        assert_eq!(&format_second(4_107_542_400), b"2100-03-01T00:00:00");
    }

    #[test]
    fn rotates_by_size_keeping_two_old_files() {
        let dir = std::env::temp_dir().join(format!("tenement-access-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        let log = AccessLog::open_with(&path, 2000, 2).unwrap();
        for _ in 0..100 {
            log.record(&record("/", None));
            log.flush();
        }
        drop(log);
        let mut total = 0;
        for name in ["access.log", "access.log.1", "access.log.2"] {
            let text = std::fs::read_to_string(dir.join(name)).unwrap();
            assert!(text.len() <= 2000, "{name}: {}", text.len());
            for line in text.lines() {
                serde_json::from_str::<serde_json::Value>(line).unwrap();
                total += 1;
            }
        }
        assert!(!dir.join("access.log.3").exists());
        assert!(total > 10 && total < 100, "{total}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_a_symlink() {
        let dir = std::env::temp_dir().join(format!("tenement-access-ln-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink("/etc/passwd-not-there", dir.join("access.log")).unwrap();
        assert!(AccessLog::open(&dir.join("access.log")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
