//! Readiness notification to systemd (`Type=notify`): one datagram to `$NOTIFY_SOCKET`.
//! Without the variable (not started by systemd) every call does nothing.

use std::os::unix::net::{SocketAddr, UnixDatagram};

use anyhow::{Context, Result};

/// Tells systemd that the daemon serves: its listeners are bound.
pub fn ready(status: &str) -> Result<()> {
    notify(&format!(
        "READY=1\nSTATUS={status}\nMAINPID={}",
        std::process::id()
    ))
}

/// Tells systemd that the daemon reloads its configuration (on SIGHUP); `ready` ends it.
pub fn reloading() -> Result<()> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    let usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000;
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"))
}

/// Tells systemd that the daemon is shutting down.
pub fn stopping() -> Result<()> {
    notify("STOPPING=1")
}

/// Sends `state` (newline-separated `KEY=VALUE` pairs) if systemd asked for notifications.
pub fn notify(state: &str) -> Result<()> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let path = path.to_string_lossy().into_owned();
    // `@name` is a socket in the abstract namespace.
    let address = match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())
        }
        None => SocketAddr::from_pathname(&path),
    }
    .with_context(|| format!("NOTIFY_SOCKET={path} is not a usable socket address"))?;
    let socket = UnixDatagram::unbound().context("creating a socket to notify systemd")?;
    socket
        .send_to_addr(state.as_bytes(), &address)
        .with_context(|| format!("notifying systemd at NOTIFY_SOCKET={path}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_ready_and_reloading_to_the_notify_socket() {
        let dir = std::env::temp_dir().join(format!("tenement-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let receiver = UnixDatagram::bind(&path).unwrap();
        // The only test in this crate that touches NOTIFY_SOCKET.
        // SAFETY: no other thread of this test binary reads or writes the environment.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &path) };
        ready("serving").unwrap();
        reloading().unwrap();
        // SAFETY: as above.
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        let mut buffer = [0u8; 256];
        let length = receiver.recv(&mut buffer).unwrap();
        let message = std::str::from_utf8(&buffer[..length]).unwrap();
        assert!(
            message.starts_with("READY=1\nSTATUS=serving\nMAINPID="),
            "{message}"
        );
        // SIGHUP's reload: systemd wants the monotonic time with it.
        let length = receiver.recv(&mut buffer).unwrap();
        let message = std::str::from_utf8(&buffer[..length]).unwrap();
        let usec = message
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .unwrap_or_else(|| panic!("{message}"));
        assert!(usec.parse::<u64>().unwrap() > 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
