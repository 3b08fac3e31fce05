//! The access log as an operator reads it: `{data_dir}/.tenement/access.log`, one JSON
//! object per request and per line, whole lines even when many requests finish at once,
//! written within a second without a request to push it out; nothing with
//! `access_log = false`.

mod api_support;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::TcpStream,
    path::PathBuf,
};

use api_support::{api_service, Daemon, APP, PATIENCE};
use tenement_tests::Scratch;

const THREADS: usize = 50;
const PER_THREAD: usize = 40;

/// `GET path` through the proxy with `Host: host`, a connection per request.
fn get(port: u16, host: &str, path: &str, agent: &str) -> u16 {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: {agent}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
}

fn access_log(daemon: &Daemon) -> PathBuf {
    daemon.scratch.join("data/.tenement/access.log")
}

fn lines(daemon: &Daemon) -> Vec<String> {
    std::fs::read_to_string(access_log(daemon))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn one_json_line_per_request_under_concurrent_load() {
    let scratch = Scratch::new("access-log-load");
    let app = scratch.write("app.py", APP);
    let mut daemon = Daemon::start_with(scratch, &api_service(&app), &[]);
    daemon.ok(&["spawn", "api:alice"]);
    let port = daemon.http_port;
    let threads: Vec<_> = (0..THREADS)
        .map(|thread| {
            std::thread::spawn(move || {
                for request in 0..PER_THREAD {
                    let path = format!("/load/{thread}/{request}?q=a%20b");
                    let status = get(port, "alice.api.localhost", &path, "load \"test\"");
                    assert_eq!(status, 200, "{path}");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    // One request that reaches no instance: logged too, without instance or upstream time.
    assert_eq!(get(port, "nobody.localhost", "/nowhere", "probe"), 404);
    let expected = THREADS * PER_THREAD + 1;
    // No request after the last one pushes the lines out: the periodic flush must.
    daemon.wait_until("every request in the access log", |daemon| {
        lines(daemon).len() >= expected
    });
    let lines = lines(&daemon);
    assert_eq!(lines.len(), expected);
    let mut seen = BTreeMap::new();
    for line in &lines {
        let entry: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line:?}"));
        let path = entry["path"].as_str().unwrap().to_string();
        *seen.entry(path.clone()).or_insert(0) += 1;
        let time = entry["time"].as_str().unwrap();
        assert!(
            time.len() == 24 && time.ends_with('Z') && &time[10..11] == "T",
            "{line}"
        );
        assert_eq!(entry["client"], "127.0.0.1", "{line}");
        assert_eq!(entry["method"], "GET", "{line}");
        assert_eq!(entry["protocol"], "HTTP/1.1", "{line}");
        assert_eq!(entry["complete"], true, "{line}");
        let duration = entry["duration_ms"].as_f64().unwrap();
        if path == "/nowhere" {
            assert_eq!(entry["host"], "nobody.localhost", "{line}");
            assert_eq!(entry["status"], 404, "{line}");
            assert!(entry["instance"].is_null(), "{line}");
            assert!(entry["upstream_ms"].is_null(), "{line}");
            assert_eq!(entry["user_agent"], "probe", "{line}");
            continue;
        }
        assert!(
            path.starts_with("/load/") && path.ends_with("?q=a%20b"),
            "{line}"
        );
        assert_eq!(entry["host"], "alice.api.localhost", "{line}");
        assert_eq!(entry["instance"], "api:alice", "{line}");
        assert_eq!(entry["status"], 200, "{line}");
        assert_eq!(entry["user_agent"], "load \"test\"", "{line}");
        // The app answers "hello from alice\n".
        assert_eq!(entry["bytes"], 17, "{line}");
        let upstream = entry["upstream_ms"].as_f64().unwrap();
        assert!(upstream <= duration, "{line}");
    }
    assert_eq!(seen.len(), expected, "a request logged twice");
    daemon.stop();
    // Nothing was left behind in a buffer, and nothing more written at shutdown.
    assert_eq!(self::lines(&daemon).len(), expected);
}

#[test]
fn access_log_false_writes_nothing() {
    let scratch = Scratch::new("access-log-off");
    let app = scratch.write("app.py", APP);
    // Lands in [settings], which the helper writes right before the services.
    let services = format!("access_log = false\n{}", api_service(&app));
    let mut daemon = Daemon::start_with(scratch, &services, &[]);
    daemon.ok(&["spawn", "api:alice"]);
    for request in 0..20 {
        let path = format!("/quiet/{request}");
        assert_eq!(
            get(daemon.http_port, "alice.api.localhost", &path, "t"),
            200
        );
    }
    assert_eq!(get(daemon.http_port, "nobody.localhost", "/", "t"), 404);
    daemon.stop();
    let path = access_log(&daemon);
    assert!(
        !path.exists(),
        "{} exists: {:?}",
        path.display(),
        std::fs::read_to_string(&path)
    );
    let log = std::fs::read_to_string(daemon.scratch.join("daemon.log")).unwrap();
    assert!(
        !log.contains("/quiet/"),
        "request paths in the daemon log:\n{log}"
    );
}

/// A symlink planted where the access log goes is refused, not followed: the daemon does
/// not start, and says which file it could not open.
#[test]
fn a_symlinked_access_log_is_refused() {
    let scratch = Scratch::new("access-log-symlink");
    let data = scratch.join("data");
    let own = data.join(".tenement");
    std::fs::create_dir_all(&own).unwrap();
    let target = scratch.join("elsewhere");
    std::os::unix::fs::symlink(&target, own.join("access.log")).unwrap();
    let config = scratch.write(
        "tenement.toml",
        &format!(
            "[settings]\ndata_dir = {data:?}\nlisten = \"127.0.0.1:{port}\"\n\
             api = \"127.0.0.1:{api}\"\n",
            data = data.display().to_string(),
            port = tenement_tests::free_port(),
            api = tenement_tests::free_port(),
        ),
    );
    let mut child = tenement_tests::daemon::serve_command(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + PATIENCE;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            tenement_tests::terminate_or_kill(&mut child, PATIENCE);
            panic!("tenement serve kept running with a symlinked access log");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("opening the access log") && stderr.contains("access.log"),
        "{stderr}"
    );
    assert!(!target.exists(), "the symlink was followed");
}
