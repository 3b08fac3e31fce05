//! Commands that drive a running daemon through its management API.

use std::{path::Path, time::SystemTime};

use anyhow::{anyhow, bail, Result};
use clap::{Args, Subcommand};
use hyper::Method;
use serde::Serialize;

use super::{
    client::Client,
    table::{self, or_dash, Table},
};
use crate::{
    api::{
        query::encode,
        types::{
            DeployRequest, DeployResponse, InstanceView, ReloadResponse, RouteRequest,
            RouteResponse, SpawnRequest, StatusView, TokenCreated, TokenRequest, TokenView,
            UpgradeRequest, UpgradeResponse, WeightRequest,
        },
    },
    config::InstanceName,
    logs::LogLine,
    store::Event,
};

/// How the CLI reaches the daemon; every command accepts these.
#[derive(Args, Clone, Debug)]
pub struct ServerOptions {
    /// Management API: unix:/path or http://host:port [default: from the configuration, the
    /// unix socket (with --token: settings.api); else unix:/var/lib/tenement/tenement.sock]
    #[arg(long, env = "TENEMENT_SERVER", global = true, value_name = "ADDRESS")]
    pub server: Option<String>,
    /// API token (not needed as root on the unix socket)
    #[arg(long, env = "TENEMENT_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of a table
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum RemoteCommand {
    /// Start an instance: `spawn api:alice` or `spawn api --id alice`
    Spawn {
        /// SERVICE:ID, or SERVICE with --id
        instance: String,
        #[arg(long)]
        id: Option<String>,
    },
    /// Start an instance an operator stopped (or any other), and wait until it is ready
    Start { instance: String },
    /// Stop an instance; it stays stopped (requests get a 503) until `start`
    Stop { instance: String },
    /// Stop and start an instance
    Restart { instance: String },
    /// List instances
    Ps {
        /// Only this service's instances
        service: Option<String>,
        /// Every instance of the fleet with the node it is placed on, read from etcd (no
        /// daemon needed; needs `[fleet]` in the configuration)
        #[arg(long)]
        fleet: bool,
    },
    /// Show the output of an instance (SERVICE:ID), or of every instance of a service
    /// (SERVICE) interleaved by time
    Logs(LogsArgs),
    /// Show an instance's history: spawned, ready, crashed, restarted, stopped...
    Events {
        instance: String,
        #[arg(short = 'n', long = "limit", default_value_t = 50)]
        limit: u64,
    },
    /// Set an instance's share of its service's traffic (0-100)
    Weight { instance: String, weight: i64 },
    /// Start a new version, wait until it is healthy, then give it its weight
    Deploy {
        service: String,
        /// The new instance's id, e.g. v2
        #[arg(long)]
        version: String,
        /// Weight once healthy [default: 0: no traffic until `route`]
        #[arg(long)]
        weight: Option<i64>,
        /// Seconds it may take to become healthy
        #[arg(long, default_value_t = 60)]
        timeout: i64,
    },
    /// Read the daemon's configuration file again and apply what changed: new services and
    /// instances start, removed ones stop, changed ones are replaced one at a time,
    /// unchanged ones are not touched; a file with an error changes nothing
    Reload,
    /// Swap the weights of two instances of a service in one step
    Route {
        service: String,
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
    },
    /// Create an API token (admin, or scoped to one instance with --tenant); shown once
    #[command(name = "token-gen")]
    TokenGen {
        /// Scope the token to this instance (read-only: status, logs, events, stats)
        #[arg(long, value_name = "SERVICE:ID")]
        tenant: Option<String>,
        /// What the token is for ("ci deploys"): shown by token-list and in the audit log
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
    },
    /// List API tokens (ids, scopes and descriptions, never secrets)
    #[command(name = "token-list")]
    TokenList,
    /// Revoke an API token
    #[command(name = "token-revoke")]
    TokenRevoke { id: i64 },
    /// Show the daemon: version, uptime, kernel features, instances
    Status,
    /// Hand the daemon's listening sockets to a new binary (the file at the path it was
    /// started from, or --binary); the old one finishes its requests and exits. Rolled back
    /// if the new one does not take over
    Upgrade {
        /// The new binary; default: the path the daemon was started from
        #[arg(long)]
        binary: Option<String>,
    },
}

/// What `tenement logs` shows.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// SERVICE:ID, or SERVICE for all its instances
    pub instance: String,
    /// Only lines whose first level word is this severe or more: debug, info, warn, error
    #[arg(long, value_name = "LEVEL", value_parser = ["debug", "info", "warn", "error"])]
    pub level: Option<String>,
    /// Only one stream: stdout, stderr or system (tenement's own lines)
    #[arg(long, value_name = "STREAM", value_parser = ["stdout", "stderr", "system"])]
    pub stream: Option<String>,
    /// Keep printing new lines
    #[arg(short, long)]
    pub follow: bool,
    /// Only lines matching this regular expression
    #[arg(long, value_name = "PATTERN")]
    pub grep: Option<String>,
    /// Only lines newer than this: a duration (10m, 2h) or a time (2024-05-01T12:00:00Z)
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// At most this many lines (the newest)
    #[arg(short = 'n', long = "lines", default_value_t = 100)]
    pub lines: u64,
}

pub fn run(command: RemoteCommand, options: &ServerOptions, config: Option<&Path>) -> Result<()> {
    if let RemoteCommand::Ps {
        service,
        fleet: true,
    } = &command
    {
        let path = crate::config::locate(config)?;
        let config = crate::config::Config::load(&path)?;
        return super::fleet::ps(&config, service.as_deref(), options.json);
    }
    let address =
        Client::resolve_address(options.server.as_deref(), config, options.token.is_some())?;
    let client = Client::new(address, options.token.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(execute(command, &client, options.json))
}

async fn execute(command: RemoteCommand, client: &Client, json: bool) -> Result<()> {
    match command {
        RemoteCommand::Spawn { instance, id } => spawn(client, json, instance, id).await,
        RemoteCommand::Start { instance } => {
            let name = instance_arg(&instance)?;
            let path = format!("/v1/instances/{}/start", encode(&name));
            let view: InstanceView = client.call(Method::POST, &path, None::<&()>).await?;
            print(json, &view, || running_line(&view))
        }
        RemoteCommand::Stop { instance } => {
            let name = instance_arg(&instance)?;
            let path = format!("/v1/instances/{}/stop", encode(&name));
            let view: InstanceView = client.call(Method::POST, &path, None::<&()>).await?;
            print(json, &view, || format!("{} {}", view.name, view.state))
        }
        RemoteCommand::Restart { instance } => {
            let name = instance_arg(&instance)?;
            let path = format!("/v1/instances/{}/restart", encode(&name));
            let view: InstanceView = client.call(Method::POST, &path, None::<&()>).await?;
            print(json, &view, || running_line(&view))
        }
        RemoteCommand::Ps { service, .. } => {
            let path = match &service {
                Some(service) => format!("/v1/instances?service={}", encode(service)),
                None => "/v1/instances".to_string(),
            };
            let views: Vec<InstanceView> = client.get(&path).await?;
            print(json, &views, || ps_table(&views))
        }
        RemoteCommand::Logs(query) => logs(client, json, query).await,
        RemoteCommand::Events { instance, limit } => events(client, json, instance, limit).await,
        RemoteCommand::Weight { instance, weight } => {
            let name = instance_arg(&instance)?;
            let path = format!("/v1/instances/{}/weight", encode(&name));
            let view: InstanceView = client
                .call(Method::PUT, &path, Some(&WeightRequest { weight }))
                .await?;
            print(json, &view, || {
                format!("{} weight {}", view.name, view.weight)
            })
        }
        RemoteCommand::Deploy {
            service,
            version,
            weight,
            timeout,
        } => {
            deploy(
                client,
                json,
                service,
                DeployRequest {
                    version,
                    weight,
                    timeout_secs: Some(timeout),
                },
            )
            .await
        }
        RemoteCommand::Reload => {
            let reloaded: ReloadResponse =
                client.call(Method::POST, "/v1/reload", None::<&()>).await?;
            print(json, &reloaded, || reload_lines(&reloaded))?;
            if reloaded.failures.is_empty() {
                Ok(())
            } else {
                Err(anyhow!(
                    "the new configuration is in force, but {} change{} failed (see above)",
                    reloaded.failures.len(),
                    if reloaded.failures.len() == 1 {
                        ""
                    } else {
                        "s"
                    }
                ))
            }
        }
        RemoteCommand::Route { service, from, to } => {
            let path = format!("/v1/services/{}/route", encode(&service));
            let routed: RouteResponse = client
                .call(Method::POST, &path, Some(&RouteRequest { from, to }))
                .await?;
            print(json, &routed, || {
                format!("{service} weights: {}", weights_line(&routed.weights))
            })
        }
        RemoteCommand::TokenGen {
            tenant,
            description,
        } => token_gen(client, json, tenant, description).await,
        RemoteCommand::TokenList => token_list(client, json).await,
        RemoteCommand::TokenRevoke { id } => {
            let answer: serde_json::Value = client
                .call(Method::DELETE, &format!("/v1/tokens/{id}"), None::<&()>)
                .await?;
            print(json, &answer, || format!("revoked token {id}"))
        }
        RemoteCommand::Status => {
            let status: StatusView = client.get("/v1/status").await?;
            print(json, &status, || status_text(&status))
        }
        RemoteCommand::Upgrade { binary } => {
            let done: UpgradeResponse = client
                .call(
                    Method::POST,
                    "/v1/upgrade",
                    Some(&UpgradeRequest { binary }),
                )
                .await?;
            print(json, &done, || {
                format!(
                    "upgraded: pid {} handed {} sockets to pid {} ({})",
                    done.old_pid, done.sockets, done.new_pid, done.binary
                )
            })
        }
    }
}

/// `spawn SERVICE:ID` or `spawn SERVICE --id ID`.
async fn spawn(client: &Client, json: bool, instance: String, id: Option<String>) -> Result<()> {
    let name = match id {
        Some(id) if instance.contains(':') => {
            bail!("give the instance once: `spawn {instance}` or `spawn SERVICE --id {id}`")
        }
        Some(id) => InstanceName::new(&instance, &id),
        None => InstanceName::parse(&instance),
    }
    .map_err(|err| anyhow!(err))?;
    let request = SpawnRequest {
        instance: name.to_string(),
    };
    let view: InstanceView = client
        .call(Method::POST, "/v1/instances", Some(&request))
        .await?;
    print(json, &view, || running_line(&view))
}

/// `logs INSTANCE|SERVICE`: the lines kept so far, or followed as they come.
async fn logs(client: &Client, json: bool, query: LogsArgs) -> Result<()> {
    let LogsArgs {
        instance,
        level,
        stream,
        follow,
        grep,
        since,
        lines,
    } = query;
    // `notes:alice` is one instance; `notes` is every instance of the service, and
    // each line then says which instance wrote it.
    let whole_service = !instance.contains(':');
    let mut path = if whole_service {
        crate::config::check_label("service", &instance).map_err(|err| anyhow!(err))?;
        format!("/v1/services/{}/logs?n={lines}", encode(&instance))
    } else {
        let name = instance_arg(&instance)?;
        format!("/v1/instances/{}/logs?n={lines}", encode(&name))
    };
    let print_log_line = |json: bool, line: &LogLine| {
        print_log_line(json, line, whole_service);
    };
    if let Some(level) = &level {
        path.push_str(&format!("&level={level}"));
    }
    if let Some(stream) = &stream {
        path.push_str(&format!("&stream={stream}"));
    }
    if let Some(grep) = &grep {
        path.push_str(&format!("&grep={}", encode(grep)));
    }
    if let Some(since) = &since {
        path.push_str(&format!("&since_ms={}", since_ms(since)?));
    }
    if !follow {
        let lines: Vec<LogLine> = client.get(&path).await?;
        for line in &lines {
            print_log_line(json, line);
        }
        return Ok(());
    }
    path.push_str("&follow=true");
    let mut bad_line = None;
    client
        .stream(&path, |text| match serde_json::from_str::<LogLine>(text) {
            Ok(line) => {
                print_log_line(json, &line);
                true
            }
            Err(err) => {
                bad_line = Some(format!("unexpected line from the server: {err}: {text}"));
                false
            }
        })
        .await?;
    match bad_line {
        Some(err) => Err(anyhow!(err)),
        None => Ok(()),
    }
}

/// `events INSTANCE`: oldest first, like logs.
async fn events(client: &Client, json: bool, instance: String, limit: u64) -> Result<()> {
    let name = instance_arg(&instance)?;
    let path = format!("/v1/instances/{}/events?limit={limit}", encode(&name));
    let events: Vec<Event> = client.get(&path).await?;
    print(json, &events, || {
        let mut table = Table::new(&["TIME", "EVENT", "DETAIL"]);
        // Oldest first, like logs.
        for event in events.iter().rev() {
            let ms = event
                .time
                .duration_since(std::time::UNIX_EPOCH)
                .map(|since| since.as_millis() as u64)
                .unwrap_or(0);
            table.row(vec![
                table::time_ms(ms),
                event.kind.to_string(),
                event.detail.clone(),
            ]);
        }
        table.render().trim_end().to_string()
    })
}

/// `deploy SERVICE VERSION`: answers once the new version is healthy.
async fn deploy(
    client: &Client,
    json: bool,
    service: String,
    request: DeployRequest,
) -> Result<()> {
    // A progress note for people watching; scripts get only the result or the error.
    if !json && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!(
            "deploying {service}:{}: waiting up to {}s for it to be healthy",
            request.version,
            request.timeout_secs.unwrap_or_default()
        );
    }
    let path = format!("/v1/services/{}/deploy", encode(&service));
    let deployed: DeployResponse = client.call(Method::POST, &path, Some(&request)).await?;
    print(json, &deployed, || {
        format!(
            "{} is healthy on {}; weights: {}",
            deployed.instance.name,
            listening_on(&deployed.instance),
            weights_line(&deployed.weights)
        )
    })
}

/// `token-gen`: the secret alone on stdout.
async fn token_gen(
    client: &Client,
    json: bool,
    tenant: Option<String>,
    description: Option<String>,
) -> Result<()> {
    if let Some(tenant) = &tenant {
        InstanceName::parse(tenant).map_err(|err| anyhow!("--tenant: {err}"))?;
    }
    let created: TokenCreated = client
        .call(
            Method::POST,
            "/v1/tokens",
            Some(&TokenRequest {
                tenant,
                description,
            }),
        )
        .await?;
    if json {
        return print(true, &created, String::new);
    }
    // The secret alone on stdout, so `TOKEN=$(tenement token-gen)` works.
    eprintln!(
        "token {} ({}): shown only this once, keep it somewhere safe",
        created.id, created.scope
    );
    println!("{}", created.token);
    Ok(())
}

/// `token-list`: every token, never a secret.
async fn token_list(client: &Client, json: bool) -> Result<()> {
    let tokens: Vec<TokenView> = client.get("/v1/tokens").await?;
    print(json, &tokens, || {
        let mut table = Table::new(&["ID", "SCOPE", "DESCRIPTION", "CREATED"]);
        for token in &tokens {
            table.row(vec![
                token.id.to_string(),
                token.scope.clone(),
                token.description.clone(),
                table::time_ms(token.created_ms.max(0) as u64),
            ]);
        }
        table.render().trim_end().to_string()
    })
}

/// JSON for scripts, or the human rendering.
fn print<T: Serialize>(json: bool, value: &T, human: impl FnOnce() -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        println!("{}", human());
    }
    Ok(())
}

/// One line per change, then one per failure; "no changes" for an identical file.
fn reload_lines(reloaded: &ReloadResponse) -> String {
    if reloaded.changes.is_empty() && reloaded.failures.is_empty() {
        return "reloaded: no changes".to_string();
    }
    let mut lines = vec!["reloaded:".to_string()];
    lines.extend(reloaded.changes.iter().map(|change| format!("  {change}")));
    lines.extend(
        reloaded
            .failures
            .iter()
            .map(|failure| format!("  FAILED: {failure}")),
    );
    lines.join("\n")
}

fn instance_arg(text: &str) -> Result<String> {
    Ok(InstanceName::parse(text)
        .map_err(|err| anyhow!(err))?
        .to_string())
}

fn running_line(view: &InstanceView) -> String {
    match view.pid {
        Some(pid) if view.port.is_some() || view.socket.is_some() => format!(
            "{} {} on {} (pid {pid})",
            view.name,
            view.state,
            listening_on(view)
        ),
        _ => format!("{} {}", view.name, view.state),
    }
}

/// `port 21000`, `socket /var/lib/tenement/notes/alice/app.sock`, or `port -`.
fn listening_on(view: &InstanceView) -> String {
    match (view.port, &view.socket) {
        (None, Some(socket)) => format!("socket {socket}"),
        (port, _) => format!("port {}", or_dash(port)),
    }
}

fn ps_table(views: &[InstanceView]) -> String {
    if views.is_empty() {
        return "no instances (start one with `tenement spawn SERVICE:ID`)".to_string();
    }
    let mut table = Table::new(&[
        "INSTANCE", "STATE", "HEALTH", "PID", "PORT", "UPTIME", "WEIGHT", "RESTARTS", "RX", "TX",
        "REASON",
    ]);
    for view in views {
        let totals = view.stats.as_ref().and_then(|stats| stats.totals);
        table.row(vec![
            view.name.clone(),
            view.state.clone(),
            or_dash(view.health.as_ref()),
            or_dash(view.pid),
            // A unix socket's path is long: the column says only that there is one.
            match (view.port, &view.socket) {
                (None, Some(_)) => "unix".to_string(),
                (port, _) => or_dash(port),
            },
            or_dash(view.uptime_secs.map(table::duration)),
            view.weight.to_string(),
            view.restarts.to_string(),
            or_dash(totals.map(|totals| table::bytes(totals.rx_bytes))),
            or_dash(totals.map(|totals| table::bytes(totals.tx_bytes))),
            // Why it is degraded, unhealthy or failed; last, so a long reason wraps alone.
            or_dash(view.last_error.as_ref()),
        ]);
    }
    table.render().trim_end().to_string()
}

/// `TIME STREAM LINE`, or with `tagged` (a whole service) `TIME INSTANCE STREAM LINE`.
fn print_log_line(json: bool, line: &LogLine, tagged: bool) {
    if json {
        if let Ok(text) = serde_json::to_string(line) {
            println!("{text}");
        }
    } else if tagged {
        println!(
            "{} {} {:<6} {}",
            table::time_ms(line.time_ms),
            line.instance,
            line.stream,
            line.line
        );
    } else {
        println!(
            "{} {:<6} {}",
            table::time_ms(line.time_ms),
            line.stream,
            line.line
        );
    }
}

fn weights_line(weights: &[crate::api::types::WeightView]) -> String {
    weights
        .iter()
        .map(|view| format!("{} {}", view.instance, view.weight))
        .collect::<Vec<_>>()
        .join(", ")
}

fn status_text(status: &StatusView) -> String {
    let kernel = if status.kernel_counters.active {
        "active (eBPF)".to_string()
    } else {
        format!(
            "off: {}",
            status
                .kernel_counters
                .reason
                .as_deref()
                .unwrap_or("unknown")
        )
    };
    let network = match &status.network_isolation {
        Some(view) if view.active => {
            "active (eBPF: each tenant binds only its own port)".to_string()
        }
        Some(view) => format!(
            "OFF, tenants are not network-isolated: {}",
            view.reason.as_deref().unwrap_or("unknown")
        ),
        None => "unknown (older daemon)".to_string(),
    };
    let instances = if status.instances.is_empty() {
        "none".to_string()
    } else {
        status
            .instances
            .iter()
            .map(|(state, count)| format!("{count} {state}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut text = format!(
        "tenement {} (pid {}), up {}\n\
         api:             {}\n\
         data dir:        {}\n\
         kernel counters: {kernel}\n\
         network:         {network}\n\
         services:        {}\n\
         instances:       {instances}",
        status.version,
        status.pid,
        table::duration(status.uptime_secs),
        status.api.join(", "),
        status.data_dir,
        if status.services.is_empty() {
            "none".to_string()
        } else {
            status.services.join(", ")
        },
    );
    if let Some(binary) = &status.binary {
        let modified = httpdate::fmt_http_date(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(binary.modified_ms),
        );
        text.push_str(&format!(
            "\nbinary:          {} ({} bytes, modified {modified}, inode {})",
            binary.path, binary.size, binary.inode
        ));
    }
    for (index, info) in status.certificates.iter().enumerate() {
        let label = if index == 0 { "certificates:" } else { "" };
        text.push_str(&format!("\n{label:<17}{}", certificate_line(info)));
    }
    // What `GET /health` answers `degraded` for, so the operator sees it here too.
    let reasons = crate::api::expiry_reasons(&status.certificates, SystemTime::now());
    for (index, reason) in reasons.iter().enumerate() {
        let label = if index == 0 { "health:" } else { "" };
        text.push_str(&format!("\n{label:<17}degraded: {reason}"));
    }
    text
}

/// One certificate of `tenement status`: its names, where it comes from, until when it is
/// valid, and what went wrong last if anything did.
fn certificate_line(info: &crate::tls::CertificateInfo) -> String {
    let source = match info.source {
        crate::tls::CertificateSource::Acme => "acme",
        crate::tls::CertificateSource::File => "file",
    };
    let mut line = format!("{} ({source})", info.names.join(", "));
    match info.not_after {
        Some(not_after) => line.push_str(&format!(
            ", valid until {}",
            humantime::format_rfc3339_seconds(not_after)
        )),
        None => line.push_str(", none yet"),
    }
    if let Some(error) = &info.last_error {
        line.push_str(&format!(", last error: {error}"));
    }
    line
}

/// `--since`: a duration back from now (`10m`) or a point in time (RFC 3339).
fn since_ms(text: &str) -> Result<u64> {
    let time = match humantime::parse_duration(text) {
        Ok(ago) => SystemTime::now()
            .checked_sub(ago)
            .ok_or_else(|| anyhow!("--since {text}: that is before 1970"))?,
        Err(_) => humantime::parse_rfc3339_weak(text).map_err(|_| {
            anyhow!(
                "--since {text:?}: expected a duration (10m, 2h) or a time (2024-05-01T12:00:00Z)"
            )
        })?,
    };
    Ok(time
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_millis() as u64)
        .unwrap_or(0))
}
