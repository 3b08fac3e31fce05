use std::{path::PathBuf, process::Stdio, time::Duration};

use super::*;

use crate::test_support::TempDir;

impl TempDir {
    fn logs(&self) -> PathBuf {
        self.0.join("logs")
    }
}

fn name(text: &str) -> InstanceName {
    InstanceName::parse(text).unwrap()
}

/// Runs `script` under /bin/sh with both output streams captured by `hub`, until it exits
/// and both pipes are drained.
async fn run_captured(hub: &LogHub, instance: &InstanceName, script: &str) {
    let mut child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawning /bin/sh");
    let out = hub.capture(instance, Stream::Stdout, child.stdout.take().unwrap());
    let err = hub.capture(instance, Stream::Stderr, child.stderr.take().unwrap());
    out.await.unwrap();
    err.await.unwrap();
    let status = child.wait().await.unwrap();
    assert!(status.success(), "{script}: {status}");
}

fn texts(lines: &[LogLine]) -> Vec<(Stream, &str)> {
    lines.iter().map(|l| (l.stream, l.line.as_str())).collect()
}

fn query(instance: Option<&InstanceName>) -> LogQuery {
    LogQuery {
        instance: instance.cloned(),
        ..LogQuery::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_streams_survive_a_new_hub() {
    let dir = TempDir::new("restart");
    let api = name("api:alice");
    let web = name("web:bob");
    {
        let hub = LogHub::new(dir.logs()).unwrap();
        run_captured(
            &hub,
            &api,
            "echo out one; echo err one >&2; sleep 0.1; echo 'out two\r'; printf 'no newline'",
        )
        .await;
        hub.system(&api, "restarting in 2s");
        run_captured(&hub, &web, "echo from web").await;
        // Live view, before anything is read back from disk.
        let tail = hub.tail(&api, 10);
        assert_eq!(tail.len(), 5, "{tail:?}");
        assert_eq!(tail.last().unwrap().line, "restarting in 2s");
    }

    let hub = LogHub::new(dir.logs()).unwrap();
    let found = hub.search(&query(Some(&api))).unwrap();
    let mut seen = texts(&found);
    // stdout and stderr are read by two tasks: their relative order is not defined.
    seen.sort();
    assert_eq!(
        seen,
        vec![
            (Stream::Stdout, "no newline"),
            (Stream::Stdout, "out one"),
            (Stream::Stdout, "out two"),
            (Stream::Stderr, "err one"),
            (Stream::System, "restarting in 2s"),
        ]
    );
    assert!(found
        .iter()
        .all(|l| l.instance == api && l.time_ms > 1_600_000_000_000));
    assert!(found.windows(2).all(|w| w[0].time_ms <= w[1].time_ms));

    let all = hub.search(&query(None)).unwrap();
    assert_eq!(all.len(), 6);
    assert_eq!(all.iter().filter(|l| l.instance == web).count(), 1);

    // Before the instance logs again, the tail comes from disk...
    let tail = hub.tail(&api, 2);
    assert_eq!(tail.len(), 2);
    assert_eq!(tail[1].line, "restarting in 2s");
    // ...and afterwards continues the old lines.
    run_captured(&hub, &api, "echo back again").await;
    let tail = hub.tail(&api, 100);
    assert_eq!(tail.len(), 6, "{tail:?}");
    assert_eq!(tail[4].line, "restarting in 2s");
    assert_eq!(tail[5].line, "back again");
}

#[tokio::test]
async fn similar_names_do_not_share_files() {
    let dir = TempDir::new("names");
    let hub = LogHub::new(dir.logs()).unwrap();
    let (first, second) = (name("a-b:c"), name("a:b-c"));
    hub.system(&first, "first");
    hub.system(&second, "second");
    assert_eq!(
        texts(&hub.search(&query(Some(&first))).unwrap()),
        vec![(Stream::System, "first")]
    );
    assert_eq!(
        texts(&hub.search(&query(Some(&second))).unwrap()),
        vec![(Stream::System, "second")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_files_bounded() {
    let dir = TempDir::new("rotation");
    let limits = LogLimits {
        file_bytes: 4096,
        rotated_files: 2,
        ..LogLimits::default()
    };
    let hub = LogHub::with_limits(dir.logs(), limits).unwrap();
    let api = name("api:alice");
    run_captured(
        &hub,
        &api,
        "i=1; while [ $i -le 2000 ]; do echo line $i; i=$((i+1)); done",
    )
    .await;
    hub.flush();

    let service_dir = dir.logs().join("api");
    let mut total = 0;
    for file in ["alice.log", "alice.log.1", "alice.log.2"] {
        let size = std::fs::metadata(service_dir.join(file)).unwrap().len();
        assert!(size <= 4096, "{file} is {size} bytes");
        total += size;
    }
    assert!(!service_dir.join("alice.log.3").exists());
    assert!(total > 2 * 4096, "rotation left only {total} bytes");

    // What is kept is the newest, contiguous part of the output.
    let kept = hub
        .search(&LogQuery {
            limit: usize::MAX,
            ..query(Some(&api))
        })
        .unwrap();
    let numbers: Vec<u32> = kept
        .iter()
        .map(|l| l.line.strip_prefix("line ").unwrap().parse().unwrap())
        .collect();
    assert_eq!(*numbers.last().unwrap(), 2000);
    assert!(numbers[0] > 1, "nothing was rotated away");
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "gap in {numbers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlong_line_is_cut_without_buffering_it() {
    let dir = TempDir::new("long");
    let hub = LogHub::new(dir.logs()).unwrap();
    let api = name("api:alice");
    let ten_mb = 10 * 1024 * 1024;
    run_captured(
        &hub,
        &api,
        &format!("head -c {ten_mb} /dev/zero | tr '\\0' x; echo; echo after"),
    )
    .await;
    let expected_marker = lines::truncation_marker((ten_mb - MAX_LINE_BYTES) as u64);
    for lines in [hub.tail(&api, 10), hub.search(&query(Some(&api))).unwrap()] {
        assert_eq!(lines.len(), 2);
        let long = &lines[0].line;
        assert_eq!(long.len(), MAX_LINE_BYTES + expected_marker.len());
        assert!(
            long.starts_with("xxxx") && long.ends_with(&expected_marker),
            "{}",
            &long[long.len() - 80..]
        );
        assert_eq!(lines[1].line, "after");
    }
    let on_disk = std::fs::metadata(dir.logs().join("api/alice.log"))
        .unwrap()
        .len();
    assert!(
        on_disk < 2 * MAX_LINE_BYTES as u64,
        "{on_disk} bytes on disk"
    );
}

/// The splitter's memory stays at one capped line however long the input line is.
#[tokio::test]
async fn splitter_memory_is_bounded() {
    use tokio::io::AsyncReadExt;
    let max = 4096;
    let endless = tokio::io::repeat(b'x').take(64 * 1024 * 1024);
    let input = endless.chain(&b"\nok\r\n\xff\xfe"[..]);
    let mut reader = BufReader::with_capacity(1000, input);
    let mut splitter = LineSplitter::new(max);
    let long = splitter.next_line(&mut reader).await.unwrap().unwrap();
    assert_eq!(long.bytes.len(), max);
    assert!(
        long.bytes.capacity() <= 2 * max,
        "held {} bytes",
        long.bytes.capacity()
    );
    assert_eq!(long.dropped, 64 * 1024 * 1024 - max as u64);
    let ok = splitter.next_line(&mut reader).await.unwrap().unwrap();
    assert_eq!(ok.into_text(), "ok");
    let garbage = splitter.next_line(&mut reader).await.unwrap().unwrap();
    assert_eq!(garbage.into_text(), "\u{fffd}\u{fffd}");
    assert!(splitter.next_line(&mut reader).await.unwrap().is_none());
}

#[test]
fn ring_is_bounded_by_lines_and_bytes() {
    let api = name("api:alice");
    let line = |n: usize, len: usize| LogLine {
        time_ms: n as u64,
        instance: api.clone(),
        stream: Stream::Stdout,
        line: format!("{n:0len$}"),
    };
    let mut ring = Ring::new(10, 1000);
    for n in 0..100 {
        ring.push(line(n, 5));
    }
    let kept = ring.last(usize::MAX);
    assert_eq!(kept.len(), 10);
    assert_eq!(kept[0].line, "00090");
    for n in 0..100 {
        ring.push(line(n, 300));
    }
    let kept = ring.last(usize::MAX);
    assert_eq!(kept.len(), 3);
    assert_eq!(kept[2].time_ms, 99);
    assert_eq!(ring.last(1).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_by_regex_substring_and_time() {
    let dir = TempDir::new("search");
    let api = name("api:alice");
    let web = name("web:bob");
    // Lines as an earlier tenement left them, with known times, one half-written at the end.
    let old = |time_ms: u64, instance: &InstanceName, line: &str| {
        let mut json = serde_json::to_string(&LogLine {
            time_ms,
            instance: instance.clone(),
            stream: Stream::Stdout,
            line: line.to_string(),
        })
        .unwrap();
        json.push('\n');
        json
    };
    std::fs::create_dir_all(dir.logs().join("api")).unwrap();
    std::fs::create_dir_all(dir.logs().join("web")).unwrap();
    let rotated = old(1000, &api, "GET /a 200") + &old(2000, &api, "GET /b 500");
    let current =
        old(3000, &api, "POST /c 201") + &old(4000, &api, "GET /d 503") + "{\"time_ms\":50";
    std::fs::write(dir.logs().join("api/alice.log.1"), rotated).unwrap();
    std::fs::write(dir.logs().join("api/alice.log"), current).unwrap();
    std::fs::write(
        dir.logs().join("web/bob.log"),
        old(2500, &web, "GET /w 500"),
    )
    .unwrap();

    let hub = LogHub::new(dir.logs()).unwrap();
    let lines = |q: LogQuery| -> Vec<String> {
        hub.search(&q)
            .unwrap()
            .into_iter()
            .map(|l| l.line)
            .collect()
    };
    let errors = regex::Regex::new(r" 5\d\d$").unwrap();
    assert_eq!(
        lines(LogQuery {
            regex: Some(errors.clone()),
            ..query(Some(&api))
        }),
        vec!["GET /b 500", "GET /d 503"]
    );
    assert_eq!(
        lines(LogQuery {
            regex: Some(errors.clone()),
            ..query(None)
        }),
        vec!["GET /b 500", "GET /w 500", "GET /d 503"]
    );
    assert_eq!(
        lines(LogQuery {
            regex: Some(errors),
            limit: 2,
            ..query(None)
        }),
        vec!["GET /w 500", "GET /d 503"]
    );
    assert_eq!(
        lines(LogQuery {
            since_ms: Some(2000),
            until_ms: Some(3000),
            ..query(None)
        }),
        vec!["GET /b 500", "GET /w 500", "POST /c 201"]
    );
    assert_eq!(
        lines(LogQuery {
            contains: Some("GET".into()),
            until_ms: Some(1999),
            ..query(None)
        }),
        vec!["GET /a 200"]
    );
    assert_eq!(
        lines(LogQuery {
            limit: 1,
            ..query(Some(&api))
        }),
        vec!["GET /d 503"]
    );
    assert!(lines(LogQuery {
        limit: 0,
        ..query(None)
    })
    .is_empty());
    assert!(lines(query(Some(&name("api:nobody")))).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_is_slowed_not_buffered_or_lost() {
    let dir = TempDir::new("flood");
    // A writer queue of a few lines: the tenant has to wait for the disk.
    let limits = LogLimits {
        queued_bytes: 4096,
        ..LogLimits::default()
    };
    let hub = LogHub::with_limits(dir.logs(), limits).unwrap();
    let api = name("api:alice");
    run_captured(&hub, &api, "yes flooding | head -n 50000").await;
    let found = hub
        .search(&LogQuery {
            limit: usize::MAX,
            ..query(Some(&api))
        })
        .unwrap();
    assert_eq!(found.len(), 50000);
    assert_eq!(hub.tail(&api, usize::MAX).len(), RING_LINES);
    assert_eq!(hub.inner.queue.available_permits(), 4096);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_sees_new_lines() {
    let dir = TempDir::new("follow");
    let hub = LogHub::new(dir.logs()).unwrap();
    let api = name("api:alice");
    let mut live = hub.follow(&api);
    run_captured(&hub, &api, "echo one; echo two").await;
    hub.system(&api, "stopped");
    let mut got = Vec::new();
    while got.len() < 3 {
        let line = tokio::time::timeout(Duration::from_secs(60), live.recv())
            .await
            .expect("no line within a minute")
            .unwrap();
        got.push(line.line);
    }
    assert_eq!(got, vec!["one", "two", "stopped"]);
}

#[tokio::test]
async fn forget_deletes_files_and_memory() {
    let dir = TempDir::new("forget");
    let limits = LogLimits {
        file_bytes: 200,
        ..LogLimits::default()
    };
    let hub = LogHub::with_limits(dir.logs(), limits).unwrap();
    let (alice, bob) = (name("api:alice"), name("api:bob"));
    for n in 0..10 {
        hub.system(&alice, &format!("line {n}"));
    }
    hub.system(&bob, "bob stays");
    hub.flush();
    assert!(dir.logs().join("api/alice.log.2").exists());
    hub.forget(&alice).unwrap();
    assert!(hub.tail(&alice, 10).is_empty());
    assert!(hub.search(&query(Some(&alice))).unwrap().is_empty());
    let left: Vec<_> = std::fs::read_dir(dir.logs().join("api"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("bob.log")]);
}

#[test]
fn files_and_directory_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("private");
    let hub = LogHub::new(dir.logs()).unwrap();
    hub.system(&name("api:alice"), "secret-ish");
    hub.flush();
    let mode = |path: PathBuf| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(dir.logs()), 0o700);
    assert_eq!(mode(dir.logs().join("api")), 0o700);
    assert_eq!(mode(dir.logs().join("api/alice.log")), 0o600);
}
