//! The daemon's own log as journald or a log shipper sees it: plain text without colour
//! codes when stderr is a file, and `--log-format json` with one object per line.

mod api_support;

use std::{
    io::{Read, Write},
    net::TcpStream,
};

use api_support::{api_service, Daemon, APP, PATIENCE};
use tenement_tests::Scratch;

/// Spawns `api:alice` and sends one request through the proxy (the access log has its own
/// file: `proxy_access_log.rs`).
fn request_alice(daemon: &Daemon) -> String {
    daemon.ok(&["spawn", "api:alice"]);
    let mut stream = TcpStream::connect(("127.0.0.1", daemon.http_port)).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    write!(
        stream,
        "GET /hello?x=1 HTTP/1.1\r\nHost: alice.api.localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

fn daemon_log(daemon: &Daemon) -> String {
    std::fs::read_to_string(daemon.scratch.join("daemon.log")).unwrap()
}

#[test]
fn a_log_file_gets_no_colour_codes() {
    let scratch = Scratch::new("serve-log-plain");
    let app = scratch.write("app.py", APP);
    let mut daemon = Daemon::start_serving(scratch, &api_service(&app), &[], &[]);
    let answer = request_alice(&daemon);
    assert_eq!(answer.split_whitespace().nth(1), Some("200"), "{answer}");
    daemon.stop();
    let log = daemon_log(&daemon);
    assert!(
        !log.contains('\u{1b}'),
        "escape codes in the log file:\n{log}"
    );
    assert!(log.contains(" INFO "), "{log}");
}

#[test]
fn json_log_lines_parse_and_keep_their_fields() {
    let scratch = Scratch::new("serve-log-json");
    let app = scratch.write("app.py", APP);
    let mut daemon =
        Daemon::start_serving(scratch, &api_service(&app), &[], &["--log-format", "json"]);
    let answer = request_alice(&daemon);
    assert_eq!(answer.split_whitespace().nth(1), Some("200"), "{answer}");
    daemon.stop();
    let log = daemon_log(&daemon);
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line:?}\n{log}"))
        })
        .collect();
    for line in &lines {
        for key in ["time", "level", "target"] {
            assert!(line[key].is_string(), "no {key}: {line}");
        }
    }
    assert!(
        lines.iter().any(|line| line["message"]
            .as_str()
            .is_some_and(|m| m.contains(" serving "))),
        "{log}"
    );
    // The access log is not in the daemon's log (it has its own file).
    assert!(!log.contains("/hello?x=1"), "{log}");
}

#[test]
fn an_unknown_log_format_is_refused_with_the_choices() {
    let output = std::process::Command::new(tenement_tests::tenement_bin())
        .args(["serve", "--log-format", "xml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("invalid value 'xml' for '--log-format <LOG_FORMAT>'")
            && stderr.contains("[possible values: text, json]"),
        "{stderr}"
    );
}

/// `tenement serve` with its stderr on a pseudo-terminal until it says it is serving; returns
/// what the terminal showed.
fn serve_on_a_terminal(label: &str, env: &[(&str, &str)]) -> String {
    use std::os::fd::{FromRawFd, OwnedFd};
    let scratch = Scratch::new(label);
    let app = scratch.write("app.py", APP);
    let data = scratch.join("data");
    let base = tenement_tests::free_port_block(100);
    let config = scratch.write(
        "tenement.toml",
        &format!(
            "[settings]\ndata_dir = {data:?}\nlisten = \"127.0.0.1:{port}\"\n\
             port_range = [{base}, {high}]\n{service}",
            data = data.display().to_string(),
            port = tenement_tests::free_port(),
            high = base + 99,
            service = api_service(&app),
        ),
    );
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two descriptors into the integers it is given.
    let opened = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(opened, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened and are owned by nobody else.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let mut child = std::process::Command::new(tenement_tests::tenement_bin())
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(slave)
        .spawn()
        .unwrap();
    let (sender, receiver) = std::sync::mpsc::channel();
    let mut terminal = std::fs::File::from(master);
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        // Ends with EIO once the daemon (the last holder of the terminal's other end) exits.
        while let Ok(read) = terminal.read(&mut buffer) {
            if read == 0 || sender.send(buffer[..read].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut shown = Vec::new();
    let deadline = std::time::Instant::now() + PATIENCE;
    while !String::from_utf8_lossy(&shown).contains(" serving ") {
        assert!(
            std::time::Instant::now() < deadline,
            "not serving:\n{}",
            String::from_utf8_lossy(&shown)
        );
        if let Ok(bytes) = receiver.recv_timeout(std::time::Duration::from_millis(200)) {
            shown.extend(bytes);
        }
    }
    tenement_tests::terminate_or_kill(&mut child, PATIENCE);
    while let Ok(bytes) = receiver.recv_timeout(std::time::Duration::from_secs(5)) {
        shown.extend(bytes);
    }
    String::from_utf8_lossy(&shown).into_owned()
}

#[test]
fn colour_on_a_terminal_unless_no_color_is_set() {
    let coloured = serve_on_a_terminal("serve-log-tty", &[]);
    assert!(
        coloured.contains('\u{1b}'),
        "no colour on a terminal:\n{coloured}"
    );
    let plain = serve_on_a_terminal("serve-log-no-color", &[("NO_COLOR", "1")]);
    assert!(
        !plain.contains('\u{1b}'),
        "colour despite NO_COLOR:\n{plain}"
    );
    assert!(plain.contains(" serving "), "{plain}");
}
