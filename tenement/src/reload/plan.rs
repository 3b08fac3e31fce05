//! What a reload changes: a pure comparison of the running configuration with the new one.
//!
//! Every key of the model is sorted into one of three kinds, by destructuring the model's
//! structs (a key added to the model without a decision here does not compile):
//! - keys that need a restart of tenement (listeners, data directory, port and uid ranges,
//!   TLS): a plan that touches one is refused as a whole;
//! - keys applied in place (timeouts, restart policy, limits, routing, settings read at each
//!   start): running processes are left alone;
//! - keys that define the process (command, environment, isolation, health, egress...):
//!   the running instances of the service are replaced.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use crate::config::{Config, InstanceName, Service, Settings, Tls};

/// The changes between two valid configurations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Keys whose change needs a restart of tenement, as `settings.listen`: when any, the
    /// reload is refused and nothing changes.
    pub needs_restart: Vec<String>,
    pub services_added: Vec<String>,
    pub services_removed: Vec<String>,
    /// Services whose running instances are replaced, with the keys that changed.
    pub services_replaced: BTreeMap<String, Vec<&'static str>>,
    /// Services changed in place only (running processes kept), with the keys.
    pub services_updated: BTreeMap<String, Vec<&'static str>>,
    /// `[instances]` entries to start (those of added services included).
    pub instances_added: Vec<InstanceName>,
    /// `[instances]` entries gone while their service stays: stopped, left asleep.
    pub instances_removed: Vec<InstanceName>,
    /// Settings applied in place (`settings.health_check_interval`, `routing`...).
    pub settings_updated: Vec<&'static str>,
}

/// Service keys whose change replaces the running instances.
const REPLACING: &[&str] = &[
    "command",
    "args",
    "workdir",
    "health",
    "isolation",
    "user",
    "env_inherit",
    "env",
    "env_file",
    "egress",
    "listen",
];

/// Service keys that are limits of the instance's cgroup, written in place.
pub const LIMITS: &[&str] = &["memory_limit_mb", "cpu_weight", "pids_max"];

impl Plan {
    /// Whether applying it changes anything at all.
    pub fn is_empty(&self) -> bool {
        *self == Plan::default()
    }

    /// Whether `service`'s running cgroups need their limits rewritten.
    pub fn limits_changed(&self, service: &str) -> bool {
        self.services_updated
            .get(service)
            .into_iter()
            .chain(self.services_replaced.get(service))
            .flatten()
            .any(|key| LIMITS.contains(key))
    }
}

/// The plan from `old` to `new`. `env_files_changed` are the `env_file`s whose contents
/// differ from when the running configuration was loaded: their services count as changed
/// (`env_file`), since an instance reads its file at each start.
pub fn plan(old: &Config, new: &Config, env_files_changed: &BTreeSet<PathBuf>) -> Plan {
    let mut plan = Plan {
        needs_restart: settings_needing_restart(&old.settings, &new.settings),
        settings_updated: settings_in_place(old, new),
        ..Plan::default()
    };
    for (name, service) in &new.service {
        match old.service.get(name) {
            None => plan.services_added.push(name.clone()),
            Some(before) => {
                if service.socket_activation != before.socket_activation {
                    plan.needs_restart
                        .push(format!("service.{name}.socket_activation"));
                }
                let mut keys = service_changes(before, service);
                let file_changed = service
                    .env_file
                    .as_ref()
                    .is_some_and(|file| env_files_changed.contains(file));
                if file_changed && !keys.contains(&"env_file") {
                    keys.push("env_file");
                }
                if keys.iter().any(|key| REPLACING.contains(key)) {
                    plan.services_replaced.insert(name.clone(), keys);
                } else if !keys.is_empty() {
                    plan.services_updated.insert(name.clone(), keys);
                }
            }
        }
    }
    plan.services_removed = old
        .service
        .keys()
        .filter(|name| !new.service.contains_key(*name))
        .cloned()
        .collect();
    let before = boot_instances(old);
    let after = boot_instances(new);
    plan.instances_added = after.difference(&before).cloned().collect();
    plan.instances_removed = before
        .difference(&after)
        .filter(|name| new.service.contains_key(&name.service))
        .cloned()
        .collect();
    plan
}

/// `[instances]` as names; entries that are not valid names are left out (validation has
/// already refused a file with one).
fn boot_instances(config: &Config) -> BTreeSet<InstanceName> {
    config
        .instances
        .iter()
        .flat_map(|(service, ids)| ids.iter().map(move |id| (service, id)))
        .filter_map(|(service, id)| InstanceName::new(service, id).ok())
        .collect()
}

/// The keys of a service that differ, in the model's order.
fn service_changes(old: &Service, new: &Service) -> Vec<&'static str> {
    let Service {
        command,
        args,
        workdir,
        health,
        isolation,
        idle_timeout,
        freeze_after,
        startup_timeout,
        stop_timeout,
        request_timeout,
        restart,
        storage_persist,
        storage_quota_mb,
        memory_limit_mb,
        cpu_weight,
        pids_max,
        user,
        env_inherit,
        env,
        egress,
        env_file,
        listen,
        // Who holds the port changes: `plan` asks for a restart instead.
        socket_activation: _,
    } = new;
    let mut keys = Vec::new();
    let mut compare = |key: &'static str, differs: bool| {
        if differs {
            keys.push(key);
        }
    };
    compare("command", *command != old.command);
    compare("args", *args != old.args);
    compare("workdir", *workdir != old.workdir);
    compare("health", *health != old.health);
    compare("isolation", *isolation != old.isolation);
    compare("idle_timeout", *idle_timeout != old.idle_timeout);
    compare("freeze_after", *freeze_after != old.freeze_after);
    compare("startup_timeout", *startup_timeout != old.startup_timeout);
    compare("stop_timeout", *stop_timeout != old.stop_timeout);
    compare("request_timeout", *request_timeout != old.request_timeout);
    compare("restart", *restart != old.restart);
    compare("storage_persist", *storage_persist != old.storage_persist);
    compare(
        "storage_quota_mb",
        *storage_quota_mb != old.storage_quota_mb,
    );
    compare("memory_limit_mb", *memory_limit_mb != old.memory_limit_mb);
    compare("cpu_weight", *cpu_weight != old.cpu_weight);
    compare("pids_max", *pids_max != old.pids_max);
    compare("user", *user != old.user);
    compare("env_inherit", *env_inherit != old.env_inherit);
    compare("env", *env != old.env);
    compare("egress", *egress != old.egress);
    compare("env_file", *env_file != old.env_file);
    compare("listen", *listen != old.listen);
    keys
}

/// Settings only a new daemon can take: its listeners, where its state lives, the ranges
/// its running instances were given ports and uids from, and TLS (certificates for the
/// configured names are ordered at start).
fn settings_needing_restart(old: &Settings, new: &Settings) -> Vec<String> {
    let Settings {
        data_dir,
        listen,
        domain,
        api,
        port_range,
        health_check_interval: _,
        max_restarts: _,
        restart_window: _,
        backoff_base_ms: _,
        backoff_max_ms: _,
        memory_pressure_psi: _,
        memory_pressure_available_mb: _,
        uid_range,
        sandbox_platform,
        cgroup_favordynmods,
        adopt_timeout,
        access_log,
        tls,
    } = new;
    let mut keys = Vec::new();
    let mut compare = |key: &str, differs: bool| {
        if differs {
            keys.push(format!("settings.{key}"));
        }
    };
    compare("data_dir", *data_dir != old.data_dir);
    compare("listen", *listen != old.listen);
    compare("api", *api != old.api);
    compare("port_range", *port_range != old.port_range);
    compare("uid_range", *uid_range != old.uid_range);
    compare(
        "sandbox_platform",
        *sandbox_platform != old.sandbox_platform,
    );
    compare(
        "cgroup_favordynmods",
        *cgroup_favordynmods != old.cgroup_favordynmods,
    );
    // The guard was started with it.
    compare("adopt_timeout", *adopt_timeout != old.adopt_timeout);
    // The access log is opened with the proxy, at start.
    compare("access_log", *access_log != old.access_log);
    // With TLS on, the domains are names certificates were ordered for at start.
    compare(
        "domain",
        *domain != old.domain && (tls.enabled || old.tls.enabled),
    );
    keys.extend(
        tls_changes(&old.tls, tls)
            .into_iter()
            .map(|key| format!("settings.tls.{key}")),
    );
    keys
}

fn tls_changes(old: &Tls, new: &Tls) -> Vec<&'static str> {
    let Tls {
        enabled,
        listen,
        acme_directory,
        acme_email,
        acme_root,
        challenges,
        names,
        cert,
        key,
        wildcard,
        dns_listen,
        dns_update,
        dns_propagation_timeout,
        on_demand_rate,
        ask,
    } = new;
    [
        ("enabled", *enabled != old.enabled),
        ("listen", *listen != old.listen),
        ("acme_directory", *acme_directory != old.acme_directory),
        ("acme_email", *acme_email != old.acme_email),
        ("acme_root", *acme_root != old.acme_root),
        ("challenges", *challenges != old.challenges),
        ("names", *names != old.names),
        ("cert", *cert != old.cert),
        ("key", *key != old.key),
        ("wildcard", *wildcard != old.wildcard),
        ("dns_listen", *dns_listen != old.dns_listen),
        ("dns_update", *dns_update != old.dns_update),
        (
            "dns_propagation_timeout",
            *dns_propagation_timeout != old.dns_propagation_timeout,
        ),
        ("on_demand_rate", *on_demand_rate != old.on_demand_rate),
        ("ask", *ask != old.ask),
    ]
    .into_iter()
    .filter_map(|(key, differs)| differs.then_some(key))
    .collect()
}

/// Settings a reload applies without touching a process: read at each start or health
/// check, or by the proxy's routing table.
fn settings_in_place(old: &Config, new: &Config) -> Vec<&'static str> {
    let (o, n) = (&old.settings, &new.settings);
    [
        (
            "settings.health_check_interval",
            n.health_check_interval != o.health_check_interval,
        ),
        ("settings.max_restarts", n.max_restarts != o.max_restarts),
        (
            "settings.restart_window",
            n.restart_window != o.restart_window,
        ),
        (
            "settings.backoff_base_ms",
            n.backoff_base_ms != o.backoff_base_ms,
        ),
        (
            "settings.backoff_max_ms",
            n.backoff_max_ms != o.backoff_max_ms,
        ),
        (
            "settings.memory_pressure_psi",
            n.memory_pressure_psi != o.memory_pressure_psi,
        ),
        (
            "settings.memory_pressure_available_mb",
            n.memory_pressure_available_mb != o.memory_pressure_available_mb,
        ),
        (
            "settings.domain",
            n.domain != o.domain && !n.tls.enabled && !o.tls.enabled,
        ),
        ("routing", new.routing != old.routing),
    ]
    .into_iter()
    .filter_map(|(key, differs)| differs.then_some(key))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text, "test.toml").expect("a valid configuration")
    }

    const BASE: &str = r#"
[service.api]
command = "/bin/api"
env = { MODE = "a" }

[service.web]
command = "/bin/web"
memory_limit_mb = 64

[service.old]
command = "/bin/old"

[instances]
api = ["alice", "bob"]
old = ["one"]
"#;

    fn name(text: &str) -> InstanceName {
        InstanceName::parse(text).unwrap()
    }

    #[test]
    fn the_same_file_plans_nothing() {
        let plan = plan(&config(BASE), &config(BASE), &BTreeSet::new());
        assert!(plan.is_empty(), "{plan:?}");
    }

    #[test]
    fn added_removed_and_changed_services_and_instances() {
        let new = config(
            r#"
[service.api]
command = "/bin/api"
env = { MODE = "b" }

[service.web]
command = "/bin/web"
memory_limit_mb = 128
idle_timeout = 30

[service.fresh]
command = "/bin/fresh"

[instances]
api = ["alice"]
fresh = ["x"]
"#,
        );
        let plan = plan(&config(BASE), &new, &BTreeSet::new());
        assert!(plan.needs_restart.is_empty());
        assert_eq!(plan.services_added, ["fresh"]);
        assert_eq!(plan.services_removed, ["old"]);
        assert_eq!(plan.services_replaced["api"], ["env"]);
        assert_eq!(
            plan.services_updated["web"],
            ["idle_timeout", "memory_limit_mb"]
        );
        assert!(plan.limits_changed("web"));
        assert!(!plan.limits_changed("api"));
        assert_eq!(plan.instances_added, [name("fresh:x")]);
        // old:one goes with its service; only api:bob is an [instances] removal.
        assert_eq!(plan.instances_removed, [name("api:bob")]);
        assert!(plan.settings_updated.is_empty());
    }

    #[test]
    fn listeners_data_dir_and_tls_need_a_restart() {
        let new = config(&format!(
            "[settings]\nlisten = \"127.0.0.1:9999\"\ndata_dir = \"/elsewhere\"\n\
             port_range = [40000, 40999]\n[settings.tls]\nnames = [\"x.example.com\"]\n{BASE}"
        ));
        let plan = plan(&config(BASE), &new, &BTreeSet::new());
        assert_eq!(
            plan.needs_restart,
            [
                "settings.data_dir",
                "settings.listen",
                "settings.port_range",
                "settings.tls.names"
            ]
        );
    }

    #[test]
    fn domain_is_routing_without_tls_and_a_restart_with_it() {
        let new = config(&format!(
            "[settings]\ndomain = \"example.com\"\nhealth_check_interval = 3\n{BASE}"
        ));
        let plain = plan(&config(BASE), &new, &BTreeSet::new());
        assert!(plain.needs_restart.is_empty());
        assert_eq!(
            plain.settings_updated,
            ["settings.health_check_interval", "settings.domain"]
        );

        let tls = "[settings.tls]\nenabled = true\n";
        let old = config(&format!("{tls}{BASE}"));
        let new = config(&format!(
            "[settings]\ndomain = \"example.com\"\n{tls}{BASE}"
        ));
        let with_tls = plan(&old, &new, &BTreeSet::new());
        assert_eq!(with_tls.needs_restart, ["settings.domain"]);
    }

    #[test]
    fn a_changed_env_file_replaces_its_service() {
        let text = BASE.replace(
            "command = \"/bin/web\"",
            "command = \"/bin/web\"\nenv_file = \"/etc/web.env\"",
        );
        let changed = BTreeSet::from([PathBuf::from("/etc/web.env")]);
        let plan = plan(&config(&text), &config(&text), &changed);
        assert_eq!(plan.services_replaced["web"], ["env_file"]);
        assert_eq!(plan.services_replaced.len(), 1);
    }

    #[test]
    fn routing_changes_apply_in_place() {
        let new = config(&format!("{BASE}\n[routing]\ndefault = \"api\"\n"));
        let plan = plan(&config(BASE), &new, &BTreeSet::new());
        assert_eq!(plan.settings_updated, ["routing"]);
        assert!(plan.services_replaced.is_empty());
    }
}
