//! On-CPU time counted at the scheduler's context switches: a busy loop shows about as much
//! CPU time as the kernel's own accounting of the process (and as wall time allows), a
//! sleeping process almost none.

use std::{
    io::Read,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tenement::monitor::{KernelCounters, Monitor};
use tenement_tests::{cgroup::TestCgroup, privileged};

#[test]
fn busy_and_idle_instances_show_their_cpu_time() {
    if !privileged("busy_and_idle_instances_show_their_cpu_time") {
        return;
    }
    let subtree = TestCgroup::create("cpu");
    let busy = subtree.child("busy");
    let idle = subtree.child("idle");
    let monitor = Monitor::start(&subtree.path);
    assert_eq!(monitor.kernel_counters(), &KernelCounters::Active);
    monitor.register(busy.id()).unwrap();
    monitor.register(idle.id()).unwrap();

    const SECONDS: f64 = 2.0;
    let started = Instant::now();
    let mut sleeper = idle.spawn(Command::new("/bin/sleep").arg(SECONDS.to_string()));
    // The busy loop reports the CPU time the kernel charged to it (user + system).
    let mut spinner = busy.spawn(
        Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(format!(
                r#"
import os, time
end = time.monotonic() + {SECONDS}
while time.monotonic() < end:
    pass
t = os.times()
print(t.user + t.system)
"#
            ))
            .stdout(Stdio::piped()),
    );
    let mut reported = String::new();
    spinner
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut reported)
        .unwrap();
    assert!(spinner.wait().unwrap().success());
    assert!(sleeper.wait().unwrap().success());
    let wall = started.elapsed();

    let reported = Duration::from_secs_f64(reported.trim().parse().unwrap());
    let busy_cpu = Duration::from_nanos(monitor.stats(busy.id()).unwrap().cpu_ns);
    let idle_cpu = Duration::from_nanos(monitor.stats(idle.id()).unwrap().cpu_ns);
    eprintln!("wall {wall:?}, busy {busy_cpu:?} (process says {reported:?}), idle {idle_cpu:?}");

    // Same as the kernel's own accounting, give or take the exit path and clock granularity
    // (os.times() counts in 10 ms ticks).
    assert!(
        busy_cpu >= reported.mul_f64(0.9)
            && busy_cpu <= reported.mul_f64(1.1) + Duration::from_millis(100),
        "busy loop: counted {busy_cpu:?}, the process reported {reported:?}"
    );
    // One thread cannot use more than wall time; a shared machine may give it less, so the
    // lower bound is loose.
    assert!(
        busy_cpu <= wall + Duration::from_millis(50) && busy_cpu >= wall.mul_f64(0.3),
        "busy loop: counted {busy_cpu:?} over {wall:?} of wall time"
    );
    assert!(
        idle_cpu < wall.mul_f64(0.05),
        "sleeping process: counted {idle_cpu:?} over {wall:?}"
    );
}
