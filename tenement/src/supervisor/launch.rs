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

use anyhow::{Context, Result};

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
    /// `socket_activation`: the held socket, passed as fd 3.
    pub activation: Option<Activation>,
}

/// The held listening socket of a `socket_activation` instance and its `LISTEN_FDNAMES`.
pub struct Activation {
    pub socket: OwnedFd,
    pub name: String,
}

/// The command, ready for the spawner thread, and what it runs for error messages
/// ("runsc as uid 61000 in /dir"). `join` are the instance's open `cgroup.procs` files.
pub fn command(launch: &Launch, join: Vec<OwnedFd>) -> Result<(Command, String)> {
    let uid = launch.run_as.as_ref().map_or_else(
        || "tenement's uid".to_string(),
        |r| format!("uid {}", r.uid),
    );
    let (mut command, mut setup, what) = match &launch.wrapper {
        Wrapper::Direct => {
            let mut command = Command::new(&launch.argv[0]);
            command
                .args(&launch.argv[1..])
                .env_clear()
                .envs(launch.env.iter().map(|(k, v)| (k, v)));
            let mut setup = ChildSetup::new(
                join,
                launch.run_as.as_ref(),
                Some(&launch.workdir),
                launch.die_with_tenement,
            )?;
            if let Some(activation) = &launch.activation {
                let mut env = launch.env.clone();
                env.extend(listen_env(&activation.name));
                setup.activation = Some(activation.socket.try_clone()?);
                setup.exec = Some(Exec::new(&launch.argv, &env)?);
            }
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
            let mut setup =
                ChildSetup::new(join, None, Some(Path::new("/")), launch.die_with_tenement)?;
            if let Some(activation) = &launch.activation {
                // The init sets LISTEN_PID for the app it forks (see `init.rs`).
                command.envs(listen_env(&activation.name));
                setup.activation = Some(activation.socket.try_clone()?);
            }
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
    if launch.activation.is_some() && matches!(launch.wrapper, Wrapper::Sandbox(_)) {
        anyhow::bail!("socket_activation cannot be combined with isolation = \"sandbox\"");
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

/// Where the app finds its held socket (`SD_LISTEN_FDS_START`).
const LISTEN_FD: libc::c_int = 3;

/// Everything the child does between fork and exec, prepared beforehand.
struct ChildSetup {
    join: Vec<OwnedFd>,
    /// tenement's pid when the child dies with it.
    parent: Option<libc::pid_t>,
    credentials: Option<(libc::uid_t, libc::gid_t, Vec<libc::gid_t>)>,
    workdir: Option<CString>,
    /// The held socket, made fd 3 last thing before exec.
    activation: Option<OwnedFd>,
    /// With a held socket and no init in between: the exec is done here, with LISTEN_PID
    /// (known only after the fork) written into the prepared environment.
    exec: Option<Exec>,
}

/// `LISTEN_FDS` and `LISTEN_FDNAMES` (`LISTEN_PID` is set by whoever forks the app).
fn listen_env(name: &str) -> [(String, String); 2] {
    [
        ("LISTEN_FDS".to_string(), "1".to_string()),
        ("LISTEN_FDNAMES".to_string(), name.to_string()),
    ]
}

/// An `execve` prepared before the fork: std's `Command` builds the environment before
/// forking, and the child may not allocate, so `LISTEN_PID=` has room for the digits of
/// any pid, filled in by the child.
struct Exec {
    program: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _env: Vec<CString>,
    /// `LISTEN_PID=` followed by room for 20 digits and the NUL.
    listen_pid: Vec<u8>,
    env_ptrs: Vec<*const libc::c_char>,
}

// SAFETY: the raw pointers point into the CStrings and the buffer owned by the same value,
// which moves to the spawner thread as a whole and is only read there (and in the child).
unsafe impl Send for Exec {}
// SAFETY: as above; shared access only reads.
unsafe impl Sync for Exec {}

const LISTEN_PID_PREFIX: &[u8] = b"LISTEN_PID=";

impl Exec {
    fn new(argv: &[String], env: &[(String, String)]) -> Result<Exec> {
        let argv: Vec<CString> = argv
            .iter()
            .map(|a| CString::new(a.as_str()))
            .collect::<Result<_, _>>()?;
        let program = argv.first().context("an empty command line")?.clone();
        let env: Vec<CString> = env
            .iter()
            .filter(|(k, _)| k != "LISTEN_PID")
            .map(|(k, v)| CString::new(format!("{k}={v}")))
            .collect::<Result<_, _>>()?;
        let mut listen_pid = LISTEN_PID_PREFIX.to_vec();
        listen_pid.resize(LISTEN_PID_PREFIX.len() + 21, 0);
        let mut argv_ptrs: Vec<_> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut env_ptrs: Vec<_> = env.iter().map(|e| e.as_ptr()).collect();
        env_ptrs.push(listen_pid.as_ptr().cast());
        env_ptrs.push(std::ptr::null());
        Ok(Exec {
            program,
            _argv: argv,
            argv_ptrs,
            _env: env,
            listen_pid,
            env_ptrs,
        })
    }

    /// In the child: writes its pid into `LISTEN_PID=` and execs. Returns only on failure.
    ///
    /// # Safety
    /// Only between fork and exec, in the child (the buffer is the child's own copy).
    unsafe fn run(&mut self) -> io::Error {
        // SAFETY: getpid has no preconditions.
        let mut pid = unsafe { libc::getpid() } as u64;
        let mut digits = [0u8; 20];
        let mut len = 0;
        loop {
            digits[len] = b'0' + (pid % 10) as u8;
            len += 1;
            pid /= 10;
            if pid == 0 {
                break;
            }
        }
        let start = LISTEN_PID_PREFIX.len();
        // In place: the buffer (and so the pointer in `env_ptrs`) does not move.
        for i in 0..len {
            self.listen_pid[start + i] = digits[len - 1 - i];
        }
        self.listen_pid[start + len] = 0;
        // SAFETY: every pointer array is NUL-terminated and points into live CStrings.
        unsafe {
            libc::execve(
                self.program.as_ptr(),
                self.argv_ptrs.as_ptr(),
                self.env_ptrs.as_ptr(),
            )
        };
        io::Error::last_os_error()
    }
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
            activation: None,
            exec: None,
        })
    }

    fn apply(&mut self) -> io::Result<()> {
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
            if let Some(socket) = &self.activation {
                let fd = socket.as_raw_fd();
                // dup2 onto itself would keep close-on-exec: clear it instead.
                let moved = if fd == LISTEN_FD {
                    libc::fcntl(fd, libc::F_SETFD, 0)
                } else {
                    libc::dup2(fd, LISTEN_FD)
                };
                if moved < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(exec) = &mut self.exec {
                return Err(exec.run());
            }
        }
        Ok(())
    }
}
