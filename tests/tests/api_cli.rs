//! The CLI against a real daemon: the README quick start (spawn two tenants, reach each,
//! `ps`, `logs`, `stop`), the message when no daemon runs, and `tenement install`.

mod api_support;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use api_support::{get_instance, stderr, stdout, Daemon, PATIENCE};
use tenement_tests::{privileged, tenement_bin, Scratch};

fn port_of(daemon: &Daemon, name: &str) -> u16 {
    let view = daemon
        .instance(name)
        .unwrap_or_else(|| panic!("{name} is not listed"));
    view["port"]
        .as_u64()
        .unwrap_or_else(|| panic!("{name} has no port: {view}")) as u16
}

#[test]
fn quick_start_with_the_cli() {
    if !privileged("quick_start_with_the_cli") {
        return;
    }
    let mut daemon = Daemon::start("api-quick-start");

    let spawned = daemon.ok(&["spawn", "api:alice"]);
    assert!(
        spawned.starts_with("api:alice running on port "),
        "{spawned}"
    );
    let spawned = daemon.ok(&["spawn", "api", "--id", "bob"]);
    assert!(spawned.starts_with("api:bob running on port "), "{spawned}");

    // Each tenant is its own process on its own port.
    for (name, id) in [("api:alice", "alice"), ("api:bob", "bob")] {
        let (status, body) = get_instance(port_of(&daemon, name), "/hello").unwrap();
        assert_eq!(
            (status, body.as_str()),
            (200, format!("hello from {id}\n").as_str())
        );
    }

    let ps = daemon.ok(&["ps"]);
    let lines: Vec<&str> = ps.lines().collect();
    assert!(lines[0].starts_with("INSTANCE"), "{ps}");
    for name in ["api:alice", "api:bob"] {
        let row = lines
            .iter()
            .find(|line| line.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing from ps:\n{ps}"));
        let columns: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(columns[1], "running", "{row}");
        assert_eq!(columns[2], "healthy", "{row}");
    }
    let json: serde_json::Value = serde_json::from_str(&daemon.ok(&["ps", "--json"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 2, "{json}");

    // The request above shows up in alice's log, and only there.
    daemon.wait_until("alice's request in her log", |daemon| {
        daemon
            .ok(&["logs", "api:alice"])
            .contains("alice served /hello")
    });
    let logs = daemon.ok(&["logs", "api:alice", "--grep", "served", "-n", "5"]);
    assert!(
        logs.lines().all(|line| line.contains("alice served")),
        "{logs}"
    );
    assert!(!daemon.ok(&["logs", "api:bob"]).contains("alice"));
    let json_lines = daemon.ok(&["logs", "api:alice", "--json", "--since", "10m"]);
    let first: serde_json::Value =
        serde_json::from_str(json_lines.lines().next().unwrap()).unwrap();
    assert_eq!(first["instance"], "api:alice");

    // `logs -f` prints lines as they come.
    let mut follower = Command::new(tenement_bin())
        .args(["--server", &format!("unix:{}", daemon.socket.display())])
        .args(["logs", "api:alice", "-f", "-n", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (lines_sender, lines) = mpsc::channel();
    let reader = BufReader::new(follower.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            if lines_sender.send(line).is_err() {
                break;
            }
        }
    });
    let alice = port_of(&daemon, "api:alice");
    let deadline = std::time::Instant::now() + PATIENCE;
    let followed = loop {
        // Until the follower is subscribed, a request may come too early: repeat it.
        get_instance(alice, "/followed").unwrap();
        match lines.recv_timeout(Duration::from_millis(500)) {
            Ok(line) if line.contains("alice served /followed") => break line,
            _ if std::time::Instant::now() > deadline => panic!("logs -f printed nothing"),
            _ => {}
        }
    };
    assert!(followed.contains("stdout"), "{followed}");
    let _ = follower.kill();
    let _ = follower.wait();

    let stopped = daemon.ok(&["stop", "api:alice"]);
    assert_eq!(stopped.trim(), "api:alice stopped");
    assert_eq!(daemon.instance("api:alice").unwrap()["state"], "stopped");
    assert!(
        get_instance(alice, "/").is_err(),
        "alice still answers after stop"
    );
    assert_eq!(daemon.instance("api:bob").unwrap()["state"], "running");

    let status = daemon.ok(&["status"]);
    assert!(status.contains("kernel counters:"), "{status}");
    assert!(status.contains("1 running"), "{status}");
    assert!(status.contains("1 stopped"), "{status}");
    daemon.stop();
}

#[test]
fn a_missing_daemon_is_one_clear_line() {
    let scratch = Scratch::new("api-no-daemon");
    let socket = scratch.join("nobody-home.sock");
    let output = Command::new(tenement_bin())
        .args(["--server", &format!("unix:{}", socket.display()), "ps"])
        .env_remove("TENEMENT_TOKEN")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert_eq!(
        stderr(&output),
        format!(
            "error: cannot reach tenement at unix:{}: is `tenement serve` running?\n",
            socket.display()
        )
    );
    assert_eq!(stdout(&output), "");

    // With nothing configured, the CLI looks at the default socket.
    let default_socket = std::path::Path::new("/var/lib/tenement/tenement.sock");
    let default_config = std::path::Path::new("/etc/tenement/tenement.toml");
    if !default_socket.exists() && !default_config.exists() {
        let output = Command::new(tenement_bin())
            .arg("status")
            .current_dir(&scratch.path)
            .env_remove("TENEMENT_SERVER")
            .env_remove("TENEMENT_CONFIG")
            .env_remove("TENEMENT_TOKEN")
            .output()
            .unwrap();
        assert!(!output.status.success());
        assert_eq!(
            stderr(&output),
            "error: cannot reach tenement at unix:/var/lib/tenement/tenement.sock: is \
             `tenement serve` running?\n"
        );
    }
}

fn systemd_analyze_verify(unit: &std::path::Path) -> std::process::Output {
    Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .output()
        .expect(
            "systemd-analyze is missing: `cargo xtask setup --apt` installs the systemd package",
        )
}

#[test]
fn install_dry_run_writes_nothing_and_its_unit_verifies() {
    let scratch = Scratch::new("api-install");
    let real_unit = std::path::Path::new("/etc/systemd/system/tenement.service");
    let existed = real_unit.exists();
    let output = Command::new(tenement_bin())
        .args(["install", "--dry-run", "--binary"])
        .arg(tenement_bin())
        .env_remove("TENEMENT_CONFIG")
        .current_dir(&scratch.path)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = stdout(&output);
    assert_eq!(
        real_unit.exists(),
        existed,
        "--dry-run changed {}",
        real_unit.display()
    );
    for step in [
        "would write /etc/systemd/system/tenement.service (mode 644):",
        "would run `systemctl daemon-reload`",
        "would run `systemctl enable tenement.service`",
    ] {
        assert!(printed.contains(step), "missing {step:?} in:\n{printed}");
    }

    // The unit as printed, checked by systemd itself.
    let unit: String = printed
        .lines()
        .skip_while(|line| !line.starts_with("would write /etc/systemd/system/tenement.service"))
        .skip(1)
        .take_while(|line| line.starts_with("    ") || line.is_empty())
        .map(|line| format!("{}\n", line.strip_prefix("    ").unwrap_or(line)))
        .collect();
    assert!(unit.contains("Delegate=yes"), "{unit}");
    assert!(unit.contains("Type=notify"), "{unit}");
    let unit_path = scratch.write("tenement.service", &unit);
    let verified = systemd_analyze_verify(&unit_path);
    assert!(
        verified.status.success(),
        "systemd-analyze verify failed:\n{}{}",
        stdout(&verified),
        stderr(&verified)
    );
    let complaints = stderr(&verified);
    assert!(
        !complaints.contains("tenement.service"),
        "systemd-analyze warns about the unit:\n{complaints}"
    );

    // A real install below --root writes the same unit, a configuration that passes
    // `config check`, and a data directory tenants can traverse but not list.
    let root = scratch.join("root");
    let installed = Command::new(tenement_bin())
        .args(["install", "--root"])
        .arg(&root)
        .arg("--binary")
        .arg(tenement_bin())
        .env_remove("TENEMENT_CONFIG")
        .output()
        .unwrap();
    assert!(installed.status.success(), "{}", stderr(&installed));
    let written = root.join("etc/systemd/system/tenement.service");
    assert_eq!(std::fs::read_to_string(&written).unwrap(), unit);
    assert!(systemd_analyze_verify(&written).status.success());
    let config = root.join("etc/tenement/tenement.toml");
    let check = Command::new(tenement_bin())
        .arg("--config")
        .arg(&config)
        .args(["config", "check"])
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", stderr(&check));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(root.join("var/lib/tenement"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o711);

    // Installing again keeps the configuration as the operator left it.
    std::fs::write(&config, "[settings]\ndata_dir = \"/srv/tenement\"\n").unwrap();
    let again = Command::new(tenement_bin())
        .args(["install", "--root"])
        .arg(&root)
        .arg("--binary")
        .arg(tenement_bin())
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(stdout(&again).contains("keeping the existing configuration"));
    assert!(root.join("srv/tenement").is_dir());

    let removed = Command::new(tenement_bin())
        .args(["uninstall", "--root"])
        .arg(&root)
        .output()
        .unwrap();
    assert!(removed.status.success(), "{}", stderr(&removed));
    assert!(!written.exists());
    assert!(config.exists(), "uninstall must keep the configuration");
}

#[test]
fn completions_for_every_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let output = Command::new(tenement_bin())
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(output.status.success(), "{shell}: {}", stderr(&output));
        assert!(
            stdout(&output).contains("token-gen"),
            "{shell} completions lack commands"
        );
    }
}
