//! Command line: parses arguments and hands each command to the module that owns it.

mod client;
mod daemon_log;
mod dashboard;
mod fleet;
mod init;
mod remote;
mod serve;
mod table;
mod top;
pub mod upgrade;

use std::{path::PathBuf, process::ExitCode};

use clap::{CommandFactory, Parser, Subcommand};

use crate::{
    config::{self, Config},
    systemd::install,
};

#[derive(Parser)]
#[command(
    name = "tenement",
    version,
    about = "A lightweight process hypervisor for single-server deployments"
)]
pub struct Cli {
    /// Configuration file [default: $TENEMENT_CONFIG, ./tenement.toml, /etc/tenement/tenement.toml]
    #[arg(long, short = 'c', global = true)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub server: remote::ServerOptions,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Check what this machine offers tenement (kernel, eBPF, cgroups, namespaces, runsc,
    /// ports, data directory); no daemon needed
    Doctor,
    /// Write a commented starter configuration (./tenement.toml, or --config FILE); never
    /// overwrites an existing file
    #[command(name = "init")]
    Starter,
    /// Check or show the configuration
    #[command(subcommand)]
    Config(ConfigCommand),
    #[command(flatten)]
    Remote(remote::RemoteCommand),
    /// The fleet of `[fleet]`, as etcd holds it (no daemon needed)
    #[command(subcommand)]
    Fleet(fleet::FleetCommand),
    /// Live view of every instance: CPU, memory, traffic, connections, TCP health
    Top(top::TopArgs),
    /// Print a one-time sign-in link to the web dashboard; with the API on a unix socket,
    /// forward 127.0.0.1 to it until Ctrl-C
    Dashboard(dashboard::DashboardArgs),
    /// Install tenement as a systemd service (unit, default configuration, data directory)
    Install(install::InstallArgs),
    /// Remove the systemd service (keeps the configuration and the data)
    Uninstall(install::UninstallArgs),
    /// Print a shell completion script
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Run the daemon: start the instances, supervise them, stop them on SIGTERM/SIGINT
    Serve(serve::ServeOptions),
    /// Internal: first process of a namespaced instance (started by `serve`)
    #[command(name = "__init", hide = true)]
    Init {
        spec: String,
        #[arg(last = true, required = true)]
        argv: Vec<String>,
    },
    /// Internal: keeps the instances of a dead `serve` for the next one, stops them after
    /// `adopt_timeout` (its stdin is the control socket)
    #[command(name = "__guard", hide = true)]
    Guard {
        parent: i32,
        #[arg(long)]
        adopt_timeout: u64,
        #[arg(long)]
        socket: PathBuf,
        /// The data directory's lock file: held by whichever tenement serves it now.
        #[arg(long)]
        lock: Option<PathBuf>,
        subtrees: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration file; exit non-zero with every error found
    Check,
    /// Print the resolved configuration, defaults included
    Show,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            match err.downcast_ref::<config::ConfigErrors>() {
                // Already one `file:line:column: ...` line per mistake.
                Some(errors) => {
                    let count = errors.len();
                    eprintln!(
                        "{errors}\n{count} error{}",
                        if count == 1 { "" } else { "s" }
                    );
                }
                None => eprintln!("error: {err:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if matches!(
        cli.command,
        Command::Remote(_)
            | Command::Top(_)
            | Command::Install(_)
            | Command::Uninstall(_)
            | Command::Completions { .. }
    ) {
        // Printing commands end quietly when their reader does (`tenement ps | head`), as
        // other Unix tools do, instead of panicking on EPIPE. Not for `serve`: the daemon
        // must survive a closed socket or pipe.
        // SAFETY: setting a signal disposition has no memory preconditions.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match cli.command {
        Command::Doctor => Ok(doctor::run(cli.config.as_deref())),
        Command::Starter => {
            let path = cli.config.unwrap_or_else(|| PathBuf::from("tenement.toml"));
            init::run(&path)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(command) => {
            let path = config::locate(cli.config.as_deref())?;
            let config = Config::load(&path)?;
            match command {
                ConfigCommand::Check => println!("{}: ok", path.display()),
                ConfigCommand::Show => print!("{}", config.to_resolved_toml()?),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Remote(command) => {
            remote::run(command, &cli.server, cli.config.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Fleet(command) => {
            let path = config::locate(cli.config.as_deref())?;
            fleet::run(&command, &Config::load(&path)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Top(args) => {
            top::run(&args, &cli.server, cli.config.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Dashboard(args) => {
            dashboard::run(&args, &cli.server, cli.config.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Install(args) => {
            install::install(&args, cli.config.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Uninstall(args) => {
            install::uninstall(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "tenement", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(options) => serve::serve(cli.config.as_deref(), &options),
        Command::Init { spec, argv } => crate::supervisor::init::main(&spec, &argv),
        Command::Guard {
            parent,
            adopt_timeout,
            socket,
            lock,
            subtrees,
        } => crate::supervisor::guard::main(
            parent,
            adopt_timeout,
            &socket,
            lock.as_deref(),
            &subtrees,
        ),
    }
}

mod doctor;
mod front;
