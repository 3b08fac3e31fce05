//! Real cgroup v2 directories for tests, made under the test process's own cgroup (never at
//! the hierarchy root of someone else's subtree), with children placed inside before they
//! exec. Everything is undone on drop, also when the test fails: processes the test started
//! are killed by PID, then the directory is removed.

use std::{
    fs::File,
    io,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::{fs::MetadataExt, process::CommandExt},
    },
    path::PathBuf,
    process::{Child, Command},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// A cgroup v2 directory owned by the test.
pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    /// A fresh cgroup under the one this test process runs in.
    pub fn create(label: &str) -> TestCgroup {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let unique = format!(
            "tenement-test-{label}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = own_cgroup_dir().join(unique);
        std::fs::create_dir(&path)
            .unwrap_or_else(|err| panic!("creating cgroup {}: {err}", path.display()));
        TestCgroup { path }
    }

    /// A cgroup below this one (an "instance" under a "subtree").
    pub fn child(&self, name: &str) -> TestCgroup {
        let path = self.path.join(name);
        std::fs::create_dir(&path)
            .unwrap_or_else(|err| panic!("creating cgroup {}: {err}", path.display()));
        TestCgroup { path }
    }

    /// The cgroup id the kernel programs key by (the directory's inode number).
    pub fn id(&self) -> u64 {
        std::fs::metadata(&self.path).unwrap().ino()
    }

    /// Starts `command` with its process already in this cgroup (it joins between fork and
    /// exec), so every socket and every CPU cycle of it belongs here from the start.
    pub fn spawn(&self, command: &mut Command) -> TestChild {
        let procs = File::options()
            .write(true)
            .open(self.path.join("cgroup.procs"))
            .unwrap_or_else(|err| panic!("opening {}/cgroup.procs: {err}", self.path.display()));
        let procs: OwnedFd = procs.into();
        let fd = procs.as_raw_fd();
        // SAFETY: between fork and exec only async-signal-safe calls: write(2) on an fd
        // opened beforehand. "0" moves the writing process itself.
        unsafe {
            command.pre_exec(move || {
                if libc::write(fd, b"0".as_ptr().cast(), 1) == 1 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            });
        }
        let child = command
            .spawn()
            .unwrap_or_else(|err| panic!("spawning {command:?} in {}: {err}", self.path.display()));
        drop(procs);
        TestChild { child }
    }

    fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Only processes this test started (and their descendants) can be in here.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pids = self.pids();
            if pids.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in pids {
                // SAFETY: kill has no memory preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Err(err) = std::fs::remove_dir(&self.path) {
            eprintln!("could not remove cgroup {}: {err}", self.path.display());
        }
    }
}

/// A child process that is killed (by its PID) and reaped when dropped.
pub struct TestChild {
    pub child: Child,
}

impl TestChild {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl std::ops::Deref for TestChild {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl std::ops::DerefMut for TestChild {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for TestChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The cgroup v2 directory this process runs in.
pub fn own_cgroup_dir() -> PathBuf {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let relative = own
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("this process has a cgroup v2 path (a `0::` line in /proc/self/cgroup)")
        .trim_start_matches('/');
    cgroup2_mount().join(relative)
}

fn cgroup2_mount() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == "cgroup2")
        .map(|f| PathBuf::from(f[1]))
        .expect("a cgroup2 mount in /proc/self/mounts")
}
