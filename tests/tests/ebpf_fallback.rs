//! Without the privileges to load eBPF programs, the monitor still works and says plainly
//! that kernel counters are off, and why. Checked for real: this test binary runs itself
//! again as `nobody` against a real cgroup subtree.

use std::{os::unix::process::CommandExt, process::Command};

use tenement::monitor::{KernelCounters, Monitor};
use tenement_tests::{cgroup::TestCgroup, privileged};

const CHILD_ENV: &str = "TENEMENT_TEST_MONITOR_SUBTREE";

#[test]
fn unprivileged_monitor_reports_counters_off() {
    if !privileged("unprivileged_monitor_reports_counters_off") {
        return;
    }
    let subtree = TestCgroup::create("fallback");
    let output = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "unprivileged_side",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &subtree.path)
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

/// The unprivileged half: does nothing unless started by the test above.
#[test]
fn unprivileged_side() {
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
    // On a line of its own: the harness has already printed "test unprivileged_side ... ".
    println!("\nSTATUS {}", monitor.kernel_counters());
}
