//! `tenement init`: a commented starter configuration for a newcomer, written only where no
//! file exists yet.

use std::{io::Write, path::Path};

use anyhow::{bail, Context, Result};

/// The starter file. It passes `tenement config check` as written (a test makes sure), and
/// `tenement serve` runs it as root or not: the one service needs nothing but Python.
pub const STARTER: &str = r#"# tenement configuration: one process per tenant, each reached at ID.SERVICE.DOMAIN.
# Every key is described in docs/configuration.md; `tenement config check` validates this
# file and `tenement config show` prints it with every default filled in.

[settings]
# Where tenement keeps its state, logs and each instance's data directory. Relative to this
# file; in production usually "/var/lib/tenement".
data_dir = "data"
# The public HTTP listener(s). In production e.g. ["0.0.0.0:80", "[::]:80"].
listen = "127.0.0.1:8080"
# Instance notes:alice answers at alice.notes.DOMAIN. "localhost" works for trying out:
#   curl -H 'Host: demo.hello.localhost' http://127.0.0.1:8080/
domain = "localhost"
# Ports on 127.0.0.1 handed to instances as $PORT.
port_range = [30000, 39999]
# The management API the CLI talks to; unset, a unix socket in data_dir.
# api = "127.0.0.1:8090"

# HTTPS with certificates from Let's Encrypt: set enabled = true, listen on 443, and point
# your domain's DNS at this host.
# [settings.tls]
# enabled = true
# listen = ["0.0.0.0:443"]
# acme_email = "ops@example.com"

# One service: a program that serves HTTP on 127.0.0.1:$PORT. Each instance runs it in its
# own process, with its own data directory as working directory.
[service.hello]
command = "/bin/sh"
args = ["-c", "exec /usr/bin/python3 -m http.server --bind 127.0.0.1 \"$PORT\""]
# A path that must answer 2xx for the instance to count as healthy.
health = "/"
# Stop an instance after this many seconds without traffic; the next request starts it again.
idle_timeout = 300
# Seconds the instance has to send response headers before the client gets a 504.
request_timeout = 60
# Limits per instance (leave out for none).
memory_limit_mb = 256
# Extra environment; {id}, {name}, {port} and {data_dir} are filled in per instance.
env = { GREETING = "hello from {id}" }

# Instances started with the daemon. More with `tenement spawn hello:ID` at any time.
[instances]
hello = ["demo"]
"#;

/// Writes [`STARTER`] to `path`, refusing to replace anything already there (a symbolic
/// link included: the file is created with O_EXCL).
pub fn run(path: &Path) -> Result<()> {
    let mut file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => bail!(
            "{} exists already; not overwriting it (remove it first, or write elsewhere with \
             `tenement --config OTHER.toml init`)",
            path.display()
        ),
        Err(err) => return Err(err).with_context(|| format!("creating {}", path.display())),
    };
    file.write_all(STARTER.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    println!(
        "wrote {path}; check it with `tenement --config {path} config check`, run it with \
         `tenement --config {path} serve`",
        path = path.display()
    );
    Ok(())
}
