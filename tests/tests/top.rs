//! `tenement top` against a real daemon: `--once` lists every instance with the kernel's
//! numbers while traffic flows through the proxy, and the live view runs in a real terminal
//! (tmux): it shows the header and the rows, sorts on a key, and quits cleanly on `q`.

mod api_support;

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use api_support::{Daemon, PATIENCE};
use tenement_tests::{privileged, tenement_bin};

const TENANTS: [&str; 2] = ["alice", "bob"];

/// Requests to every tenant through the public listener, until dropped.
struct Traffic {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Traffic {
    fn start(http_port: u16) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                for tenant in TENANTS {
                    let _ = get_through_proxy(http_port, &format!("{tenant}.api.localhost"));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Traffic {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn get_through_proxy(port: u16, host: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(PATIENCE))?;
    write!(
        stream,
        "GET /traffic HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

fn start_tenants(label: &str) -> Daemon {
    let daemon = Daemon::start(label);
    for tenant in TENANTS {
        daemon.ok(&["spawn", &format!("api:{tenant}")]);
    }
    daemon
}

/// The cells of `name`'s row in a `top` table (cells never contain spaces).
fn row<'a>(table: &'a str, name: &str) -> Option<Vec<&'a str>> {
    table
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&name))
}

#[test]
fn top_once_lists_every_instance_with_its_counters() {
    if !privileged("top_once_lists_every_instance_with_its_counters") {
        return;
    }
    let mut daemon = start_tenants("top-once");
    let _traffic = Traffic::start(daemon.http_port);

    let mut table = String::new();
    daemon.wait_until(
        "every instance with CPU, RX/s and TX/s in top --once",
        |daemon| {
            table = daemon.ok(&["top", "--once"]);
            TENANTS.iter().all(|tenant| {
                row(&table, &format!("api:{tenant}")).is_some_and(|cells| {
                    // NAME STATE CPU% MEM RX/s TX/s CONNS RETRANS DENIED RESTARTS IDLE-FOR
                    cells.len() == 11
                        && cells[1] == "running"
                        && !["-", "0.0"].contains(&cells[2])
                        && cells[3] != "-"
                        && !["-", "0B"].contains(&cells[4])
                        && !["-", "0B"].contains(&cells[5])
                })
            })
        },
    );
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.lines().next().unwrap().contains("IDLE-FOR"),
        "{table}"
    );

    // --json: the snapshot itself, the same numbers every reader gets.
    let json: serde_json::Value =
        serde_json::from_str(&daemon.ok(&["top", "--once", "--json"])).unwrap();
    assert_eq!(json["kernel_counters"]["active"], true, "{json}");
    for tenant in TENANTS {
        let name = format!("api:{tenant}");
        let instance = json["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|view| view["name"] == name.as_str())
            .unwrap_or_else(|| panic!("{name} missing: {json}"));
        let stats = &instance["stats"];
        assert!(stats["totals"]["rx_bytes"].as_u64().unwrap() > 0, "{json}");
        assert!(stats["totals"]["tx_bytes"].as_u64().unwrap() > 0, "{json}");
        assert!(stats["totals"]["cpu_ns"].as_u64().unwrap() > 0, "{json}");
        assert!(stats["memory_bytes"].as_u64().unwrap() > 0, "{json}");
        assert!(
            stats["rates"]["interval_secs"].as_f64().unwrap() > 0.0,
            "{json}"
        );
    }

    // The service filter.
    let only_other = daemon.ok(&["top", "--once", "nothing-like-it"]);
    assert_eq!(only_other.trim().lines().count(), 1, "{only_other}");

    // A tenant's token sees its own instance only.
    let token = daemon.ok(&["token-gen", "--tenant", "api:alice"]);
    let output = daemon.cli_tcp(Some(token.trim()), &["top", "--once"]);
    assert!(output.status.success(), "{output:?}");
    let tenant_view = String::from_utf8_lossy(&output.stdout);
    assert!(row(&tenant_view, "api:alice").is_some(), "{tenant_view}");
    assert!(row(&tenant_view, "api:bob").is_none(), "{tenant_view}");
    daemon.stop();
}

/// A tmux server of its own (its own socket), killed with everything in it when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(command: &str) -> Tmux {
        let tmux = Tmux {
            socket: format!("tenement-top-{}", std::process::id()),
        };
        let status = tmux
            .command()
            .args(["new-session", "-d", "-x", "160", "-y", "40", command])
            .status()
            .expect("running tmux (cargo xtask setup --apt installs it)");
        assert!(status.success(), "tmux new-session failed: {status}");
        tmux
    }

    fn command(&self) -> Command {
        let mut command = Command::new("tmux");
        command.arg("-L").arg(&self.socket);
        command
    }

    fn screen(&self) -> String {
        let output = self
            .command()
            .args(["capture-pane", "-p"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn keys(&self, keys: &str) {
        let status = self.command().args(["send-keys", keys]).status().unwrap();
        assert!(status.success());
    }

    /// Waits until the screen satisfies `condition`; returns it.
    fn wait_for(&self, what: &str, condition: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let screen = self.screen();
            if condition(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "gave up waiting for {what}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command().arg("kill-server").status();
    }
}

/// Where each name's row is on the screen.
fn line_of(screen: &str, name: &str) -> Option<usize> {
    screen
        .lines()
        .position(|line| line.split_whitespace().next() == Some(name))
}

fn above(screen: &str, first: &str, second: &str) -> bool {
    matches!(
        (line_of(screen, first), line_of(screen, second)),
        (Some(a), Some(b)) if a < b
    )
}

#[test]
fn top_runs_sorts_and_quits_in_a_terminal() {
    if !privileged("top_runs_sorts_and_quits_in_a_terminal") {
        return;
    }
    let mut daemon = start_tenants("top-live");
    let _traffic = Traffic::start(daemon.http_port);
    // After top ends, the shell says how, and the pane stays for the capture.
    let command = format!(
        "{} --server unix:{} top; echo \"top exited with $?\"; sleep 600",
        tenement_bin().display(),
        daemon.socket.display()
    );
    let tmux = Tmux::start(&command);

    let screen = tmux.wait_for("the header and both rows with numbers", |screen| {
        screen.contains("kernel counters: active")
            && screen.contains("2 instances")
            && screen.contains("sort: cpu")
            && ["api:alice", "api:bob"].iter().all(|name| {
                screen.lines().any(|line| {
                    let cells: Vec<&str> = line.split_whitespace().collect();
                    // NAME STATE CPU% MEM RX/s ...: sampled numbers, not dashes.
                    cells.first() == Some(name) && cells.len() == 11 && cells[4] != "-"
                })
            })
    });
    for column in [
        "NAME", "STATE", "CPU%", "MEM", "RX/s", "TX/s", "CONNS", "RETRANS", "DENIED", "RESTARTS",
        "IDLE-FOR",
    ] {
        assert!(screen.contains(column), "no {column} column:\n{screen}");
    }

    tmux.keys("n");
    tmux.wait_for("sorted by name, alice first", |screen| {
        screen.contains("sort: name") && above(screen, "api:alice", "api:bob")
    });
    tmux.keys("n");
    tmux.wait_for("sorted by name reversed, bob first", |screen| {
        screen.contains("sort: name") && above(screen, "api:bob", "api:alice")
    });

    tmux.keys("q");
    let screen = tmux.wait_for("top to exit", |screen| screen.contains("top exited with"));
    assert!(screen.contains("top exited with 0"), "{screen}");
    // Back on the normal screen: the table is gone with the alternate screen.
    assert!(!screen.contains("sort: name"), "{screen}");
    let alternate = tmux
        .command()
        .args(["display-message", "-p", "#{alternate_on}"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&alternate.stdout).trim(), "0");
    drop(tmux);
    daemon.stop();
}
