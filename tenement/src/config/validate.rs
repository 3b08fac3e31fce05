//! Checks that need more than a value's type: names, ranges, and references between tables.
//! Every finding is reported; nothing stops at the first.

use std::fmt::Display;

use super::{
    errors::ConfigError,
    model::{Challenge, Config, Isolation, Listen, Service, Settings, Tls, Wildcard},
    names::{check_hostname, check_label},
    settings::check_api_address,
    source::{section, Source},
    template,
};

/// Fewer ports than this and a handful of instances would exhaust the range.
pub const MIN_PORTS: u32 = 10;
/// The nobody user: never handed to a tenant.
const NOBODY: u32 = 65534;
const SANDBOX_PLATFORMS: [&str; 3] = ["ptrace", "kvm", "systrap"];

pub(super) fn validate(
    config: &Config,
    source: &Source,
    rejected: &[Vec<String>],
    errors: &mut Vec<ConfigError>,
) {
    let mut check = Checker {
        source,
        rejected,
        errors,
    };
    settings(&mut check, &config.settings);
    dns01(&mut check, config);
    for (name, service) in &config.service {
        self::service(&mut check, name, service);
    }
    instances(&mut check, config);
    routing(&mut check, config);
    if let Some(fleet) = &config.fleet {
        self::fleet(&mut check, fleet);
    }
}

fn fleet(check: &mut Checker, fleet: &super::model::Fleet) {
    if fleet.etcd.is_empty() {
        check.key(&["fleet", "etcd"], "needs at least one etcd endpoint");
    }
    for (index, endpoint) in fleet.etcd.iter().enumerate() {
        if let Err(problem) = crate::fleet::etcd::check_endpoint(endpoint) {
            check.element(&["fleet", "etcd"], index, problem);
        }
    }
    if let Some(node) = &fleet.node {
        if let Err(problem) = crate::fleet::check_node_name(node) {
            check.key(&["fleet", "node"], problem);
        }
    }
    if fleet.lease_ttl < 2 {
        check.key(&["fleet", "lease_ttl"], "must be at least 2 seconds");
    }
    if fleet.advertise.port() == 0 || fleet.advertise.ip().is_unspecified() {
        check.key(
            &["fleet", "advertise"],
            "must be an address other nodes can reach (not port 0, not 0.0.0.0)",
        );
    }
}

struct Checker<'a> {
    source: &'a Source<'a>,
    /// Keys already reported (a wrong type, a misspelling): defaults stand in for them, so
    /// checking those would only repeat the report.
    rejected: &'a [Vec<String>],
    errors: &'a mut Vec<ConfigError>,
}

impl Checker<'_> {
    fn was_rejected(&self, path: &[&str]) -> bool {
        self.rejected
            .iter()
            .any(|bad| bad.len() <= path.len() && bad.iter().zip(path).all(|(a, b)| a == b))
    }

    /// "`key` in [table]: problem", at the key (or its table, when the key is a default).
    fn key(&mut self, path: &[&str], problem: impl Display) {
        let span = self.source.key_span(path);
        self.push(span, path, problem);
    }

    /// Like `key`, pointing at element `index` of the array at `path`.
    fn element(&mut self, path: &[&str], index: usize, problem: impl Display) {
        let span = self.source.element_span(path, index);
        self.push(span, path, problem);
    }

    fn push(&mut self, span: Option<std::ops::Range<usize>>, path: &[&str], problem: impl Display) {
        if self.was_rejected(path) {
            return;
        }
        let (key, table) = path.split_last().expect("a key path");
        let message = format!("`{key}` in {}: {problem}", section(table));
        self.errors.push(self.source.error(span, path, message));
    }
}

fn settings(check: &mut Checker, settings: &Settings) {
    let at = |key| ["settings", key];
    if settings.data_dir.as_os_str().is_empty() {
        check.key(&at("data_dir"), "must not be empty");
    }
    if settings.listen.is_empty() {
        check.key(&at("listen"), "needs an address, e.g. \"127.0.0.1:8080\"");
    }
    if settings.domain.is_empty() {
        check.key(&at("domain"), "needs a domain, e.g. \"example.com\"");
    }
    for (index, domain) in settings.domain.iter().enumerate() {
        if let Err(err) = check_hostname(domain) {
            check.element(&at("domain"), index, err);
        }
    }
    if let Some(api) = &settings.api {
        if let Err(err) = check_api_address(api) {
            check.key(&at("api"), err);
        }
    }

    let [low, high] = settings.port_range;
    if low > high {
        check.key(
            &at("port_range"),
            format!("the low port {low} is above the high port {high}"),
        );
    } else if low < 1024 {
        check.key(
            &at("port_range"),
            format!("ports below 1024 are reserved for system services; start at 1024 or above (got {low})"),
        );
    } else if u32::from(high - low) + 1 < MIN_PORTS {
        check.key(
            &at("port_range"),
            format!(
                "{low}-{high} holds {} ports; give instances at least {MIN_PORTS}",
                high - low + 1
            ),
        );
    }

    for (key, seconds) in [
        ("health_check_interval", settings.health_check_interval),
        ("restart_window", settings.restart_window),
        ("adopt_timeout", settings.adopt_timeout),
    ] {
        if seconds == 0 {
            check.key(&at(key), "must be at least 1 second");
        }
    }
    let psi = settings.memory_pressure_psi;
    if !(0.0..=100.0).contains(&psi) {
        check.key(
            &at("memory_pressure_psi"),
            format!("must be a percentage, 0-100 (0 = not looked at), got {psi}"),
        );
    }
    if settings.backoff_base_ms == 0 {
        check.key(&at("backoff_base_ms"), "must be at least 1 millisecond");
    } else if settings.backoff_base_ms > settings.backoff_max_ms {
        check.key(
            &at("backoff_base_ms"),
            format!(
                "{} is above backoff_max_ms ({}); the first delay cannot exceed the longest",
                settings.backoff_base_ms, settings.backoff_max_ms
            ),
        );
    }

    let [first_uid, last_uid] = settings.uid_range;
    let uid_problem = if first_uid > last_uid {
        Some(format!(
            "the low uid {first_uid} is above the high uid {last_uid}"
        ))
    } else if first_uid < 1000 {
        Some(format!(
            "uids below 1000 belong to system accounts (got {first_uid})"
        ))
    } else if last_uid == u32::MAX {
        Some(format!("{} is not a valid uid", u32::MAX))
    } else if (first_uid..=last_uid).contains(&NOBODY) {
        Some(format!(
            "{first_uid}-{last_uid} includes {NOBODY}, the nobody user"
        ))
    } else {
        None
    };
    if let Some(problem) = uid_problem {
        check.key(&at("uid_range"), problem);
    }

    if !SANDBOX_PLATFORMS.contains(&settings.sandbox_platform.as_str()) {
        check.key(
            &at("sandbox_platform"),
            format!(
                "unknown gVisor platform {:?}; expected one of {}",
                settings.sandbox_platform,
                quoted(&SANDBOX_PLATFORMS)
            ),
        );
    }
    tls(check, settings);
}

fn tls(check: &mut Checker, settings: &Settings) {
    let tls: &Tls = &settings.tls;
    let at = |key| ["settings", "tls", key];
    match (&tls.cert, &tls.key) {
        (Some(_), None) => check.key(&at("cert"), "needs `key` beside it"),
        (None, Some(_)) => check.key(&at("key"), "needs `cert` beside it"),
        _ => {}
    }
    // An empty directory is the documented way to turn ACME off (own certificate only).
    let acme_off = tls.acme_directory.is_empty();
    if !acme_off && !tls.acme_directory.starts_with("https://") {
        check.key(
            &at("acme_directory"),
            format!("{:?} must be an https:// URL", tls.acme_directory),
        );
    }
    if let Some(email) = &tls.acme_email {
        let valid = email
            .split_once('@')
            .is_some_and(|(user, host)| !user.is_empty() && host.contains('.'))
            && !email.contains(char::is_whitespace);
        if !valid {
            check.key(
                &at("acme_email"),
                format!("{email:?} is not an email address"),
            );
        }
    }
    for (index, name) in tls.names.iter().enumerate() {
        if let Err(err) = check_hostname(name) {
            check.element(&at("names"), index, err);
        }
    }
    if tls.enabled {
        if tls.listen.is_empty() {
            check.key(
                &at("listen"),
                "needs an address when TLS is enabled, e.g. \"0.0.0.0:443\"",
            );
        }
        if tls.cert.is_none() && acme_off {
            check.key(
                &at("cert"),
                "ACME is off (acme_directory = \"\"), so TLS needs `cert` and `key`",
            );
        } else if tls.cert.is_none() && tls.challenges.is_empty() {
            check.key(
                &at("challenges"),
                "needs \"http-01\", \"tls-alpn-01\" or \"dns-01\" to get certificates over ACME (or set cert and key)",
            );
        }
        for (index, address) in tls.listen.iter().enumerate() {
            if settings.listen.contains(address) {
                check.element(
                    &at("listen"),
                    index,
                    format!("{address} is also in settings.listen; one address serves either HTTP or HTTPS"),
                );
            }
        }
    }
}

/// TSIG algorithms `dns_update.algorithm` accepts.
pub const TSIG_ALGORITHMS: [&str; 3] = ["hmac-sha256", "hmac-sha384", "hmac-sha512"];

/// DNS-01: exactly one way to publish the TXT records, and wildcards only with DNS-01.
fn dns01(check: &mut Checker, config: &Config) {
    let tls = &config.settings.tls;
    let at = |key| ["settings", "tls", key];
    let dns01 = tls.challenges.contains(&Challenge::Dns01);
    // A value reported as wrong was still given: no second error saying it is missing.
    let given = |key, set: bool| set || check.was_rejected(&at(key));
    let listen = given("dns_listen", tls.dns_listen.is_some());
    let update = given("dns_update", tls.dns_update.is_some());
    match (dns01, listen, update) {
        (true, false, false) => check.key(
            &at("challenges"),
            "\"dns-01\" needs `dns_listen` (the built-in DNS responder) or `dns_update` (RFC 2136 updates to your DNS server)",
        ),
        (_, true, true) => check.key(
            &at("dns_update"),
            "set either `dns_listen` or `dns_update`, not both",
        ),
        (false, true, _) => check.key(
            &at("dns_listen"),
            "is only used for DNS-01: add \"dns-01\" to `challenges`",
        ),
        (false, _, true) => check.key(
            &at("dns_update"),
            "is only used for DNS-01: add \"dns-01\" to `challenges`",
        ),
        _ => {}
    }
    if !tls.wildcard.is_off() && !dns01 {
        check.key(
            &at("wildcard"),
            "wildcard certificates need the DNS-01 challenge: add \"dns-01\" to `challenges`",
        );
    }
    if let Wildcard::Services(services) = &tls.wildcard {
        for (index, service) in services.iter().enumerate() {
            if !config.service.contains_key(service) {
                check.element(
                    &at("wildcard"),
                    index,
                    format!("{service:?} is not a service (no [service.{service}])"),
                );
            }
        }
    }
    if let Err(err) = tls.on_demand_budget() {
        check.key(&at("on_demand_rate"), err);
    }
    if let Some(ask) = &tls.ask {
        let valid = ask
            .parse::<http::Uri>()
            .ok()
            .filter(|uri| uri.scheme_str() == Some("http") && uri.host().is_some());
        if valid.is_none() {
            check.key(
                &at("ask"),
                format!("{ask:?} must be an http:// URL, e.g. \"http://127.0.0.1:9000/allowed\""),
            );
        }
    }
    if tls.dns_propagation_timeout == 0 {
        check.key(&at("dns_propagation_timeout"), "must be at least 1 second");
    }
    if let Some(update) = &tls.dns_update {
        let at = |key| ["settings", "tls", "dns_update", key];
        if let Err(err) = check_hostname(update.zone.trim_end_matches('.')) {
            check.key(&at("zone"), err);
        }
        if update.key_name.trim().is_empty() || update.key_name.contains(char::is_whitespace) {
            check.key(
                &at("key_name"),
                format!("{:?} is not a TSIG key name", update.key_name),
            );
        }
        if !TSIG_ALGORITHMS.contains(&update.algorithm.as_str()) {
            check.key(
                &at("algorithm"),
                format!(
                    "unknown TSIG algorithm {:?}; expected one of {}",
                    update.algorithm,
                    quoted(&TSIG_ALGORITHMS)
                ),
            );
        }
    }
}

/// `{port}` where `listen = "unix"` leaves the instance without a port.
const NO_PORT_WITH_UNIX: &str =
    "uses {port}, but with listen = \"unix\" the instance has no port (use $SOCKET_PATH)";

fn service(check: &mut Checker, name: &str, service: &Service) {
    if let Err(err) = check_label("service", name) {
        // The name is the key of the table: report it there, as `[service.NAME]`.
        let path = ["service", name];
        let span = check.source.key_span(&path);
        check.errors.push(
            check
                .source
                .error(span, &path, format!("[service.{name}]: {err}")),
        );
    }
    let at = |key| ["service", name, key];
    if service.command.trim().is_empty() {
        check.key(
            &at("command"),
            "must name the program to run, e.g. \"/usr/bin/python3 app.py\"",
        );
    } else if let Err(err) = service.argv() {
        check.key(&at("command"), err);
    } else if let Err(err) = template::check(&service.command) {
        check.key(&at("command"), err);
    } else if service.listen == Listen::Unix && service.command.contains("{port}") {
        check.key(&at("command"), NO_PORT_WITH_UNIX);
    }
    for (index, arg) in service.args.iter().flatten().enumerate() {
        if let Err(err) = template::check(arg) {
            check.element(&at("args"), index, err);
        } else if service.listen == Listen::Unix && arg.contains("{port}") {
            check.element(&at("args"), index, NO_PORT_WITH_UNIX);
        }
    }
    if let Some(workdir) = &service.workdir {
        let workdir = workdir.to_string_lossy();
        if let Err(err) = template::check(&workdir) {
            check.key(&at("workdir"), err);
        } else if service.listen == Listen::Unix && workdir.contains("{port}") {
            check.key(&at("workdir"), NO_PORT_WITH_UNIX);
        }
    }
    if let Some(health) = &service.health {
        if !health.starts_with('/') {
            check.key(
                &at("health"),
                format!("{health:?} must be a path starting with '/', e.g. \"/health\""),
            );
        }
    }
    for (key, value) in [
        ("startup_timeout", service.startup_timeout),
        ("stop_timeout", service.stop_timeout),
    ] {
        if value == 0 {
            check.key(&at(key), "must be at least 1 second");
        }
    }
    for (key, value) in [
        ("storage_quota_mb", service.storage_quota_mb),
        ("memory_limit_mb", service.memory_limit_mb),
        ("pids_max", service.pids_max),
    ] {
        if value == Some(0) {
            check.key(&at(key), "must be at least 1 (leave it out for no limit)");
        }
    }
    if let Some(weight) = service.cpu_weight {
        if !(1..=10_000).contains(&weight) {
            // Name the key as written: `cpu_shares` is accepted as an alias.
            let written = if check.source.has_key(&at("cpu_shares")) {
                "cpu_shares"
            } else {
                "cpu_weight"
            };
            check.key(
                &at(written),
                format!("must be 1-10000 (100 is an even share), got {weight}"),
            );
        }
    }
    if let Some(user) = &service.user {
        if !is_user_name(user) {
            check.key(
                &at("user"),
                format!("{user:?} is neither a user name nor a numeric uid"),
            );
        }
    }
    for (index, variable) in service.env_inherit.iter().enumerate() {
        if !is_env_name(variable) {
            check.element(
                &at("env_inherit"),
                index,
                format!("{variable:?} is not an environment variable name"),
            );
        }
    }
    for (variable, value) in &service.env {
        let path = ["service", name, "env", variable.as_str()];
        if !is_env_name(variable) {
            check.key(
                &path,
                "is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)",
            );
        } else if variable == "PORT" {
            check.key(
                &path,
                "is set by tenement to the port it gives the instance",
            );
        } else if variable == "SOCKET_PATH" {
            check.key(
                &path,
                "is set by tenement to the socket it gives the instance (listen = \"unix\")",
            );
        } else if service.listen == Listen::Unix && value.contains("{port}") {
            check.key(&path, NO_PORT_WITH_UNIX);
        } else if let Err(err) = template::check(value) {
            check.key(&path, err);
        }
    }
    if service.freeze_after > 0
        && service.idle_timeout > 0
        && service.freeze_after >= service.idle_timeout
    {
        check.key(
            &at("freeze_after"),
            format!(
                "{}s must be below idle_timeout ({}s): an instance is frozen first, then \
                 stopped",
                service.freeze_after, service.idle_timeout
            ),
        );
    }
    if service.listen == Listen::Unix && service.isolation == Isolation::Sandbox {
        check.key(
            &at("listen"),
            "\"unix\" cannot be combined with isolation = \"sandbox\": a socket made inside the \
             gVisor sandbox cannot be reached from the host; use isolation = \"namespace\", \
             or listen = \"port\"",
        );
    }
    if service.socket_activation && service.isolation == Isolation::Sandbox {
        check.key(
            &at("socket_activation"),
            "cannot be combined with isolation = \"sandbox\": gVisor's netstack does not take \
             a listening socket from the host; use isolation = \"namespace\" or \"process\"",
        );
    }
    if service.socket_activation && service.listen == Listen::Unix {
        check.key(
            &at("socket_activation"),
            "needs listen = \"port\": tenement holds the instance's port (a unix socket in the \
             data directory cannot be refused while the instance sleeps anyway)",
        );
    }
    if service
        .env_file
        .as_ref()
        .is_some_and(|p| p.as_os_str().is_empty())
    {
        check.key(
            &at("env_file"),
            "must be a path, e.g. \"/etc/tenement/secrets/notes.env\"",
        );
    }
}

fn instances(check: &mut Checker, config: &Config) {
    for (service, ids) in &config.instances {
        let path = ["instances", service.as_str()];
        if !config.service.contains_key(service) {
            check.key(
                &path,
                format!("no service `{service}` is defined{}", hint(config, service)),
            );
            continue;
        }
        for (index, id) in ids.iter().enumerate() {
            if let Err(err) = check_label("instance", id) {
                check.element(&path, index, err);
            } else if ids[..index].contains(id) {
                check.element(&path, index, format!("instance {id:?} is listed twice"));
            }
        }
    }
}

fn routing(check: &mut Checker, config: &Config) {
    let routing = &config.routing;
    if let Some(target) = &routing.default {
        if let Err(err) = check_target(config, target) {
            check.key(&["routing", "default"], err);
        }
    }
    for (label, target) in &routing.subdomain {
        let path = ["routing", "subdomain", label.as_str()];
        if let Err(err) = check_label("subdomain", label) {
            check.key(&path, err);
        } else if let Err(err) = check_target(config, target) {
            check.key(&path, err);
        }
    }
    for (prefix, target) in &routing.path {
        let path = ["routing", "path", prefix.as_str()];
        if !prefix.starts_with('/') {
            check.key(&path, format!("path prefix {prefix:?} must start with '/'"));
        } else if let Err(err) = check_target(config, target) {
            check.key(&path, err);
        }
    }
}

/// A routing target: `service` or `service:id`, of a defined service.
fn check_target(config: &Config, target: &str) -> Result<(), String> {
    let (service, id) = match target.split_once(':') {
        Some((service, id)) => (service, Some(id)),
        None => (target, None),
    };
    if !config.service.contains_key(service) {
        return Err(format!(
            "target {target:?} names service `{service}`, which is not defined{}",
            hint(config, service)
        ));
    }
    if let Some(id) = id {
        check_label("instance", id).map_err(|err| format!("target {target:?}: {err}"))?;
    }
    Ok(())
}

/// "; did you mean `api`?" when a defined service is close to `name`.
fn hint(config: &Config, name: &str) -> String {
    let defined: Vec<&str> = config.service.keys().map(String::as_str).collect();
    let closest = defined
        .iter()
        .map(|candidate| (strsim::jaro_winkler(name, candidate), candidate))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0));
    match closest {
        Some((_, candidate)) => format!("; did you mean `{candidate}`?"),
        None if defined.is_empty() => "; there are no [service.NAME] tables".to_string(),
        None => format!("; defined: {}", quoted(&defined)),
    }
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A POSIX-style account name (`www-data`, `_app`) or a numeric uid.
fn is_user_name(user: &str) -> bool {
    if !user.is_empty() && user.chars().all(|c| c.is_ascii_digit()) {
        return user.parse::<u32>().is_ok();
    }
    let mut chars = user.chars();
    user.len() <= 32
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}
