//! The command that starts an instance, for each isolation level, and what the forked child
//! does before `exec`: join the instance's cgroups, lead its own session, and drop to the
//! tenant's credentials. Tenants outlive tenement (a later tenement adopts them, see
//! `guard.rs`), except without cgroups: then nothing could find or stop them later, so they
//! die with tenement. Isolation is in place before the first instruction
//! of the tenant's program runs; nothing is moved afterwards.
//!
//! - `process`: the program itself, as the tenant.
//! - `namespace`: `tenement __init` as root (see `init.rs`), which builds the namespaces and
//!   then runs the program as the tenant.
//! - `sandbox`: `runsc` as the tenant (rootless), which runs the program in gVisor.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::{ffi::OsStrExt, process::CommandExt},
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::Result;

use super::{environment::DEFAULT_PATH, identity::RunAs, init::InitSpec, sandbox::SandboxLaunch};

/// How the instance's program is reached.
pub enum Wrapper {
    Direct,
    Init(InitSpec),
    Sandbox(SandboxLaunch),
}

pub struct Launch {
    /// Program (absolute) and arguments.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: PathBuf,
    /// `None`: keep tenement's own credentials (tenement is not root).
    pub run_as: Option<RunAs>,
    pub wrapper: Wrapper,
    /// Without cgroups, nothing could find the instance again after tenement ends: it gets
    /// the parent-death signal instead of outliving tenement.
    pub die_with_tenement: bool,
}

/// The command, ready for the spawner thread, and what it runs for error messages
/// ("runsc as uid 61000 in /dir"). `join` are the instance's open `cgroup.procs` files.
pub fn command(launch: &Launch, join: Vec<OwnedFd>) -> Result<(Command, String)> {
    let uid = launch.run_as.as_ref().map_or_else(
        || "tenement's uid".to_string(),
        |r| format!("uid {}", r.uid),
    );
    let (mut command, setup, what) = match &launch.wrapper {
        Wrapper::Direct => {
            let mut command = Command::new(&launch.argv[0]);
            command
                .args(&launch.argv[1..])
                .env_clear()
                .envs(launch.env.iter().map(|(k, v)| (k, v)));
            let setup = ChildSetup::new(
                join,
                launch.run_as.as_ref(),
                Some(&launch.workdir),
                launch.die_with_tenement,
            )?;
            let what = format!(
                "{} as {uid} in {}",
                launch.argv[0],
                launch.workdir.display()
            );
            (command, setup, what)
        }
        Wrapper::Init(spec) => {
            // The init needs root until it has built the namespaces; it drops to the tenant
            // itself, and hands its environment on to the app.
            let mut command = Command::new(helper_binary());
            command
                .arg0("tenement-init")
                .arg("__init")
                .arg(serde_json::to_string(spec)?)
                .arg("--")
                .args(&launch.argv)
                .env_clear()
                .envs(launch.env.iter().map(|(k, v)| (k, v)));
            let setup =
                ChildSetup::new(join, None, Some(Path::new("/")), launch.die_with_tenement)?;
            (
                command,
                setup,
                format!("tenement's namespace init for {}", launch.argv[0]),
            )
        }
        Wrapper::Sandbox(sandbox) => {
            let mut command = Command::new(&sandbox.runsc);
            command
                .args(&sandbox.args)
                .env_clear()
                .env("PATH", DEFAULT_PATH);
            let setup = ChildSetup::new(
                join,
                launch.run_as.as_ref(),
                Some(&sandbox.state_dir),
                launch.die_with_tenement,
            )?;
            let what = format!(
                "{} as {uid} in {}",
                sandbox.runsc.display(),
                sandbox.state_dir.display()
            );
            (command, setup, what)
        }
    };
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: `ChildSetup::apply` only makes async-signal-safe system calls on data
    // prepared before the fork (no allocation, no locks).
    unsafe {
        command.pre_exec(move || setup.apply());
    }
    Ok((command, what))
}

/// The binary that provides `__init` and `__guard`: tenement itself, even if its file was
/// replaced on disk meanwhile. A program embedding the supervisor (the tests) names the
/// tenement binary in `TENEMENT_HELPER_BIN`.
pub fn helper_binary() -> PathBuf {
    std::env::var_os("TENEMENT_HELPER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/proc/self/exe"))
}

/// Everything the child does between fork and exec, prepared beforehand.
struct ChildSetup {
    join: Vec<OwnedFd>,
    /// tenement's pid when the child dies with it.
    parent: Option<libc::pid_t>,
    credentials: Option<(libc::uid_t, libc::gid_t, Vec<libc::gid_t>)>,
    workdir: Option<CString>,
}

impl ChildSetup {
    fn new(
        join: Vec<OwnedFd>,
        run_as: Option<&RunAs>,
        workdir: Option<&Path>,
        die_with_tenement: bool,
    ) -> Result<Self> {
        Ok(ChildSetup {
            join,
            parent: die_with_tenement.then(|| std::process::id() as libc::pid_t),
            credentials: run_as.map(|r| (r.uid, r.gid, r.groups.clone())),
            workdir: workdir
                .map(|dir| CString::new(dir.as_os_str().as_bytes()))
                .transpose()?,
        })
    }

    fn apply(&self) -> io::Result<()> {
        // SAFETY: plain system calls on memory owned by `self`, in the forked child before
        // exec (async-signal-safe calls only, no allocation).
        unsafe {
            for file in &self.join {
                // "0" moves the writing process: the child joins before it execs.
                if libc::write(file.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if let Some(parent) = self.parent {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                    return Err(io::Error::last_os_error());
                }
                // tenement died between fork and prctl: the signal will never come.
                if libc::getppid() != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
            }
            if let Some((uid, gid, groups)) = &self.credentials {
                if libc::setgroups(groups.len(), groups.as_ptr()) < 0
                    || libc::setgid(*gid) < 0
                    || libc::setuid(*uid) < 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(dir) = &self.workdir {
                if libc::chdir(dir.as_ptr()) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }
}
