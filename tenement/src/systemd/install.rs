//! `tenement install` / `tenement uninstall`: the systemd unit, a default configuration when
//! there is none, and the data directory. `--dry-run` prints every step instead of doing it.

use std::{
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::Args;

use super::unit::{default_config, unit, UNIT_NAME};
use crate::config::{Config, Settings};

pub const DEFAULT_CONFIG: &str = "/etc/tenement/tenement.toml";
const UNIT_DIR: &str = "/etc/systemd/system";

#[derive(Args, Debug)]
pub struct InstallArgs {
    /// Print what would be written and run, change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// The binary the unit runs [default: this one]
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// Install below this directory instead of / (for packaging); runs no systemctl
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct UninstallArgs {
    /// Print what would be removed and run, change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Uninstall below this directory instead of / (for packaging); runs no systemctl
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
}

/// Prints or performs each step.
struct Steps {
    dry_run: bool,
    root: Option<PathBuf>,
}

impl Steps {
    /// `path` as it is on this machine (below `--root` when given).
    fn place(&self, path: &Path) -> PathBuf {
        match &self.root {
            Some(root) => root.join(path.strip_prefix("/").unwrap_or(path)),
            None => path.to_path_buf(),
        }
    }

    fn create_dir(&self, path: &Path, mode: u32) -> Result<()> {
        let placed = self.place(path);
        if self.dry_run {
            println!(
                "would create directory {} (mode {mode:o})",
                placed.display()
            );
            return Ok(());
        }
        std::fs::create_dir_all(&placed)
            .with_context(|| format!("creating {}", placed.display()))?;
        std::fs::set_permissions(&placed, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("setting mode {mode:o} on {}", placed.display()))?;
        println!("created {} (mode {mode:o})", placed.display());
        Ok(())
    }

    /// Written under a temporary name and renamed: a crash leaves the old file or the new.
    fn write(&self, path: &Path, contents: &str, mode: u32) -> Result<()> {
        let placed = self.place(path);
        if self.dry_run {
            println!("would write {} (mode {mode:o}):", placed.display());
            println!("{}", indent(contents));
            return Ok(());
        }
        if let Some(parent) = placed.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let temporary = placed.with_extension("tmp");
        // Created with its final mode (never readable by others for a moment), and never
        // through a symlink someone left at the temporary name.
        let _ = std::fs::remove_file(&temporary);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temporary)
            .with_context(|| format!("writing {}", temporary.display()))?;
        std::io::Write::write_all(&mut file, contents.as_bytes())
            .with_context(|| format!("writing {}", temporary.display()))?;
        drop(file);
        std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&temporary, &placed)
            .with_context(|| format!("moving {} into place", placed.display()))?;
        println!("wrote {}", placed.display());
        Ok(())
    }

    fn remove(&self, path: &Path) -> Result<()> {
        let placed = self.place(path);
        if self.dry_run {
            println!("would remove {}", placed.display());
            return Ok(());
        }
        match std::fs::remove_file(&placed) {
            Ok(()) => println!("removed {}", placed.display()),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                println!("{} was not there", placed.display());
            }
            Err(err) => return Err(err).with_context(|| format!("removing {}", placed.display())),
        }
        Ok(())
    }

    /// systemctl runs only on the real root of a machine booted with systemd.
    fn systemctl(&self, args: &[&str]) -> Result<()> {
        let line = format!("systemctl {}", args.join(" "));
        if self.root.is_some() {
            println!("skipped `{line}` (--root given)");
            return Ok(());
        }
        if self.dry_run {
            println!("would run `{line}`");
            return Ok(());
        }
        if !Path::new("/run/systemd/system").exists() {
            println!("skipped `{line}`: systemd is not running on this machine");
            return Ok(());
        }
        let status = Command::new("systemctl")
            .args(args)
            .status()
            .with_context(|| format!("running `{line}`"))?;
        if !status.success() {
            bail!("`{line}` failed ({status})");
        }
        println!("ran `{line}`");
        Ok(())
    }
}

/// `config`: the configuration the unit serves (`--config`, default /etc/tenement/tenement.toml).
pub fn install(args: &InstallArgs, config: Option<&Path>) -> Result<()> {
    let steps = Steps {
        dry_run: args.dry_run,
        root: args.root.clone(),
    };
    let config_path = absolute(config.unwrap_or(Path::new(DEFAULT_CONFIG)))?;
    let binary = match &args.binary {
        Some(binary) => absolute(binary)?,
        None => std::env::current_exe()
            .and_then(|path| path.canonicalize())
            .context("finding this binary's path (pass --binary)")?,
    };
    if !binary.is_file() {
        bail!("--binary {}: no such file", binary.display());
    }
    if !steps.dry_run && steps.root.is_none() && !nix::unistd::geteuid().is_root() {
        bail!("installing a system service needs root: run `sudo tenement install` (or --dry-run to see what it does)");
    }

    // The configuration: kept when it exists (its data_dir then decides the data directory).
    let placed_config = steps.place(&config_path);
    let data_dir = if placed_config.exists() {
        let config = Config::load(&placed_config)?;
        println!(
            "keeping the existing configuration {}",
            placed_config.display()
        );
        if let Some(warning) = crate::config::readable_secrets(&placed_config, &config) {
            println!("warning: {warning}");
        }
        config.settings.data_dir
    } else {
        let data_dir = Settings::default().data_dir;
        if let Some(dir) = config_path.parent() {
            steps.create_dir(dir, 0o755)?;
        }
        // Root's alone: `env` values put in it later are secrets, and tenants run as
        // other users on this machine.
        steps.write(&config_path, &default_config(&data_dir), 0o600)?;
        data_dir
    };
    // Tenants run under their own uids and must reach their directories inside it: 0711
    // lets them traverse without listing anyone else's.
    steps.create_dir(&data_dir, 0o711)?;
    let unit_path = Path::new(UNIT_DIR).join(UNIT_NAME);
    steps.write(&unit_path, &unit(&binary, &config_path), 0o644)?;
    steps.systemctl(&["daemon-reload"])?;
    steps.systemctl(&["enable", UNIT_NAME])?;
    if !steps.dry_run {
        println!(
            "installed. Add services to {}, check it with `tenement config check`, then \
             `systemctl start tenement`.",
            placed_config.display()
        );
    }
    if binary.components().any(|part| part.as_os_str() == "target") {
        println!(
            "note: the unit runs {}, a build directory; copy a release build to \
             /usr/local/bin/tenement and pass --binary for a lasting install",
            binary.display()
        );
    }
    Ok(())
}

pub fn uninstall(args: &UninstallArgs) -> Result<()> {
    let steps = Steps {
        dry_run: args.dry_run,
        root: args.root.clone(),
    };
    if !steps.dry_run && steps.root.is_none() && !nix::unistd::geteuid().is_root() {
        bail!("removing a system service needs root: run `sudo tenement uninstall`");
    }
    steps.systemctl(&["disable", "--now", UNIT_NAME])?;
    steps.remove(&Path::new(UNIT_DIR).join(UNIT_NAME))?;
    steps.systemctl(&["daemon-reload"])?;
    println!(
        "the configuration and the data directory are kept (instances' data, logs, tokens): \
         remove them yourself if they should go"
    );
    Ok(())
}

fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    Ok(std::env::current_dir()
        .context("finding the current directory")?
        .join(path))
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|line| format!("    {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}
