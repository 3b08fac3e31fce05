//! The monitor's life as a process sees it: without the privileges to load eBPF programs it
//! still works and says why kernel counters are off; killed outright, it leaves nothing
//! attached. Both checked for real: this test binary runs itself again (as `nobody`, or as a
//! process that is then SIGKILLed) against a real cgroup subtree.

use std::{
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tenement::monitor::{KernelCounters, Monitor};
use tenement_tests::{
    cgroup::{TestCgroup, TestChild},
    privileged,
};

/// Set for the re-executed half: the subtree to start a monitor on.
const CHILD_ENV: &str = "TENEMENT_TEST_MONITOR_SUBTREE";

/// This test binary, running only `test` (a child half below), with the subtree in its env.
fn child_half(test: &str, subtree: &Path) -> Command {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, subtree);
    command
}

#[test]
fn unprivileged_monitor_reports_counters_off() {
    if !privileged("unprivileged_monitor_reports_counters_off") {
        return;
    }
    let subtree = TestCgroup::create("fallback");
    let output = child_half("unprivileged_half", &subtree.path)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let status = stdout
        .lines()
        .find_map(|l| l.split_once("STATUS ").map(|(_, status)| status))
        .unwrap_or_else(|| panic!("no status printed:\n{stdout}\n{stderr}"));
    assert!(
        status.starts_with("kernel counters off: not running as root")
            && status.contains("CAP_BPF"),
        "{status}"
    );
}

/// Run by the test above as `nobody`; does nothing otherwise.
#[test]
fn unprivileged_half() {
    let Some(subtree) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let monitor = Monitor::start(subtree.as_ref());
    assert!(matches!(monitor.kernel_counters(), KernelCounters::Off(_)));
    // Everything a caller does still works, and simply has no kernel data.
    monitor.register(1).unwrap();
    assert_eq!(monitor.stats(1), None);
    assert_eq!(monitor.sample(1, None).kernel, None);
    monitor.unregister(1);
    // On a line of its own: the harness has already printed "test unprivileged_half ... ".
    println!("\nSTATUS {}", monitor.kernel_counters());
}

#[test]
fn killed_monitor_leaves_nothing_attached() {
    if !privileged("killed_monitor_leaves_nothing_attached") {
        return;
    }
    let subtree = TestCgroup::create("crash");
    // Killed and reaped on drop too, should an assertion below fail first.
    let mut child = TestChild {
        child: child_half("crashing_half", &subtree.path)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    };
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("ATTACHED") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "child ended early");
    }
    let attached = cgroup_programs(&subtree.path);
    for program in [
        "traffic_ingress",
        "traffic_egress",
        "socket_owner",
        "tcp_lifecycle",
    ] {
        assert!(
            attached.contains(program),
            "{program} not attached:\n{attached}"
        );
    }

    child.kill().unwrap(); // SIGKILL: no destructor runs
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let attached = cgroup_programs(&subtree.path);
        if !attached.contains("tcp_lifecycle") && !attached.contains("traffic_") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still attached after the monitor died:\n{attached}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Run by the test above, then killed; does nothing otherwise.
#[test]
fn crashing_half() {
    let Some(subtree) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let monitor = Monitor::start(subtree.as_ref());
    assert_eq!(monitor.kernel_counters(), &KernelCounters::Active);
    println!("\nATTACHED");
    std::thread::sleep(Duration::from_secs(120));
}

/// What the kernel has attached to a cgroup, as bpftool lists it.
fn cgroup_programs(cgroup: &Path) -> String {
    let output = Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(cgroup)
        .output()
        .expect("running bpftool (installed by `cargo xtask setup --apt`)");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}
