//! The routing table: which instance serves a (host, path). Built whole from the
//! configuration and the backends' instance list, then only read: every change builds a new
//! table (see `router.rs`), so lookups never wait on anything.
//!
//! For each configured domain `D`, most specific domain first:
//! - `D` itself: the longest matching `[routing.path]` prefix, else `[routing] default`;
//! - `L.D` with `L` a `[routing.subdomain]` key: that target;
//! - `S.D`: service `S`, weighted across its instances with weight > 0 that have not failed;
//! - `I.S.D`: instance `S:I`.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    sync::{Arc, Mutex},
    time::Duration,
};

use super::{
    backend::{ActivityMeter, BackendInstance, BackendState},
    metrics::{InstanceRequests, RequestMetrics},
    pool::Pool,
    weights::Rotation,
};
use crate::{
    config::{Config, InstanceName},
    endpoint::Endpoint,
};

/// One instance as the request path sees it.
pub(crate) struct Entry {
    pub name: InstanceName,
    /// `service:id`, ready for logs and error messages.
    pub label: Box<str>,
    pub state: BackendState,
    pub endpoint: Option<Endpoint>,
    pub pool: Arc<Pool>,
    /// Where requests to it are counted for `/metrics`.
    pub requests: Arc<InstanceRequests>,
    /// Its service's `request_timeout`; `None` for no limit.
    pub request_timeout: Option<Duration>,
    /// Where its requests count as activity (see `Backends::activity_meter`).
    pub activity: Option<Arc<dyn ActivityMeter>>,
}

/// Why a host and path lead nowhere.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Miss {
    /// Nothing is configured or running under that name (404).
    NoRoute,
    /// The service exists but no instance takes its traffic (503).
    NoWeightedInstance { service: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    Service(String),
    Instance { service: String, id: String },
}

/// FNV-1a. The maps hold only names tenement knows (clients can look up, never insert), so
/// a keyed hash protects nothing here, and this one is several times cheaper on short names.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type NameMap<V> = HashMap<String, V, BuildHasherDefault<Fnv>>;

#[derive(Default)]
struct ServiceRoutes {
    instances: NameMap<Arc<Entry>>,
    rotation: Option<Rotation<Arc<Entry>>>,
}

#[derive(Default)]
pub(crate) struct Table {
    /// Normalized, longest first so that `a.example.com` wins over `example.com`.
    domains: Vec<String>,
    services: NameMap<ServiceRoutes>,
    default: Option<Target>,
    subdomains: NameMap<Target>,
    /// Longest prefix first.
    paths: Vec<(String, Target)>,
}

/// Upstream pools outlive tables: a rebuilt table hands the same pool to the same instance.
#[derive(Default)]
pub(crate) struct Pools(Mutex<HashMap<InstanceName, Arc<Pool>>>);

impl Table {
    pub(crate) fn build(
        config: &Config,
        instances: Vec<BackendInstance>,
        pools: &Pools,
        requests: &RequestMetrics,
        meter: impl Fn(&InstanceName) -> Option<Arc<dyn ActivityMeter>>,
    ) -> Table {
        let mut pools = pools.0.lock().unwrap_or_else(|poison| poison.into_inner());
        pools.retain(|name, _| instances.iter().any(|i| &i.name == name));
        requests.retain(|name| instances.iter().any(|i| &i.name == name));

        let mut services: NameMap<ServiceRoutes> = config
            .service
            .keys()
            .map(|name| (name.clone(), ServiceRoutes::default()))
            .collect();
        let mut weighted: HashMap<String, Vec<(Arc<Entry>, u8)>> = HashMap::new();
        for instance in instances {
            let pool = pools.entry(instance.name.clone()).or_default().clone();
            let counted = requests.instance(&instance.name);
            let request_timeout = config
                .service
                .get(&instance.name.service)
                .map_or(0, |service| service.request_timeout);
            let entry = Arc::new(Entry {
                activity: meter(&instance.name),
                request_timeout: (request_timeout > 0)
                    .then(|| Duration::from_secs(request_timeout)),
                label: instance.name.to_string().into_boxed_str(),
                name: instance.name,
                state: instance.state,
                endpoint: instance.endpoint,
                pool,
                requests: counted,
            });
            // Failed, or held stopped by an operator: no share of the service's traffic.
            if !matches!(entry.state, BackendState::Failed | BackendState::Stopped) {
                weighted
                    .entry(entry.name.service.clone())
                    .or_default()
                    .push((entry.clone(), instance.weight.min(100)));
            }
            services
                .entry(entry.name.service.clone())
                .or_default()
                .instances
                .insert(entry.name.id.clone(), entry);
        }
        for (service, mut members) in weighted {
            // A stable order keeps the rotation the same across rebuilds.
            members.sort_by(|a, b| a.0.name.cmp(&b.0.name));
            services.entry(service).or_default().rotation = Rotation::new(members);
        }

        let mut domains: Vec<String> = config
            .settings
            .domain
            .iter()
            .map(|d| super::host::normalize(d).into_owned())
            .collect();
        domains.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        domains.dedup();

        let routing = &config.routing;
        let mut paths: Vec<(String, Target)> = routing
            .path
            .iter()
            .filter_map(|(prefix, target)| Some((prefix.clone(), parse_target(target)?)))
            .collect();
        paths.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
        Table {
            domains,
            services,
            default: routing.default.as_deref().and_then(parse_target),
            subdomains: routing
                .subdomain
                .iter()
                .filter_map(|(label, target)| {
                    Some((
                        super::host::normalize(label).into_owned(),
                        parse_target(target)?,
                    ))
                })
                .collect(),
            paths,
        }
    }

    /// `host` must be normalized (see `host::normalize`).
    pub(crate) fn resolve(&self, host: &str, path: &str) -> Result<&Arc<Entry>, Miss> {
        let labels = self.labels_under_domain(host).ok_or(Miss::NoRoute)?;
        if labels.is_empty() {
            let target = self
                .paths
                .iter()
                .find(|(prefix, _)| path_has_prefix(path, prefix))
                .map(|(_, target)| target)
                .or(self.default.as_ref())
                .ok_or(Miss::NoRoute)?;
            return self.target(target);
        }
        if let Some(target) = self.subdomains.get(labels) {
            return self.target(target);
        }
        match labels.split_once('.') {
            None => self.service(labels),
            Some((id, service)) if !service.contains('.') => self.instance(service, id),
            Some(_) => Err(Miss::NoRoute),
        }
    }

    /// The labels in front of the most specific configured domain: `""` for the domain itself.
    fn labels_under_domain<'h>(&self, host: &'h str) -> Option<&'h str> {
        self.domains.iter().find_map(|domain| {
            if host == domain {
                return Some("");
            }
            let labels = host.strip_suffix(domain.as_str())?.strip_suffix('.')?;
            (!labels.is_empty()).then_some(labels)
        })
    }

    fn target(&self, target: &Target) -> Result<&Arc<Entry>, Miss> {
        match target {
            Target::Service(service) => self.service(service),
            Target::Instance { service, id } => self.instance(service, id),
        }
    }

    fn service(&self, service: &str) -> Result<&Arc<Entry>, Miss> {
        let routes = self.services.get(service).ok_or(Miss::NoRoute)?;
        match &routes.rotation {
            Some(rotation) => Ok(rotation.pick()),
            None => Err(Miss::NoWeightedInstance {
                service: service.to_string(),
            }),
        }
    }

    fn instance(&self, service: &str, id: &str) -> Result<&Arc<Entry>, Miss> {
        self.services
            .get(service)
            .and_then(|routes| routes.instances.get(id))
            .ok_or(Miss::NoRoute)
    }

    /// Every instance in the table (for tests and diagnostics).
    #[cfg(test)]
    fn weighted_members(&self, service: &str) -> Vec<String> {
        self.services[service]
            .rotation
            .iter()
            .flat_map(|r| r.members())
            .map(|e| e.label.to_string())
            .collect()
    }
}

/// `api` names a service, `api:alice` an instance. Invalid targets are configuration errors
/// reported by config validation; here they simply route nowhere.
fn parse_target(target: &str) -> Option<Target> {
    match InstanceName::parse(target) {
        Ok(name) => Some(Target::Instance {
            service: name.service,
            id: name.id,
        }),
        Err(_) if crate::config::check_label("service", target).is_ok() => {
            Some(Target::Service(target.to_string()))
        }
        Err(_) => {
            tracing::warn!("routing target {target:?} is neither SERVICE nor SERVICE:ID; ignored");
            None
        }
    }
}

/// Prefixes match whole path segments: `/api` matches `/api`, `/api/x` and `/api?q`, not `/apix`.
fn path_has_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with(['/', '?']),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(name: &str, weight: u8, state: BackendState) -> BackendInstance {
        BackendInstance {
            name: InstanceName::parse(name).unwrap(),
            weight,
            state,
            endpoint: Some(Endpoint::Port(1)),
        }
    }

    fn table() -> Table {
        let config = Config::parse(
            r#"
            [settings]
            domain = ["example.com", "apps.example.org"]
            [service.api]
            command = "x"
            [service.web]
            command = "x"
            [service.empty]
            command = "x"
            [routing]
            default = "web:main"
            [routing.subdomain]
            www = "web"
            pinned = "api:bob"
            [routing.path]
            "/api" = "api"
            "/api/v2" = "api:alice"
            "/docs/" = "web:docs"
            "#,
            "test",
        )
        .unwrap();
        let instances = vec![
            instance("api:alice", 80, BackendState::Running),
            instance("api:bob", 20, BackendState::Sleeping),
            instance("api:carol", 0, BackendState::Running),
            instance("api:dave", 50, BackendState::Failed),
            instance("web:main", 100, BackendState::Running),
            instance("web:docs", 0, BackendState::Running),
            instance("extra:one", 10, BackendState::Running),
        ];
        Table::build(
            &config,
            instances,
            &Pools::default(),
            &RequestMetrics::default(),
            |_| None,
        )
    }

    fn route(table: &Table, host: &str, path: &str) -> Result<String, Miss> {
        table
            .resolve(&crate::proxy::host::normalize(host), path)
            .map(|e| e.label.to_string())
    }

    #[test]
    fn instance_and_service_hosts() {
        let table = table();
        assert_eq!(
            route(&table, "alice.api.example.com", "/").unwrap(),
            "api:alice"
        );
        assert_eq!(
            route(&table, "carol.api.example.com", "/").unwrap(),
            "api:carol"
        );
        assert_eq!(
            route(&table, "dave.api.example.com", "/").unwrap(),
            "api:dave"
        );
        assert_eq!(
            route(&table, "Alice.API.Example.com.:8080", "/").unwrap(),
            "api:alice"
        );
        assert_eq!(
            route(&table, "alice.api.apps.example.org", "/").unwrap(),
            "api:alice"
        );
        assert_eq!(
            route(&table, "one.extra.example.com", "/").unwrap(),
            "extra:one"
        );
        // Weight 0 and failed instances take no service-level traffic.
        assert_eq!(table.weighted_members("api"), ["api:alice", "api:bob"]);
        let mut picks = std::collections::BTreeMap::<String, usize>::new();
        for _ in 0..100 {
            *picks
                .entry(route(&table, "api.example.com", "/").unwrap())
                .or_default() += 1;
        }
        assert_eq!(
            picks,
            [("api:alice".into(), 80), ("api:bob".into(), 20)].into()
        );
    }

    #[test]
    fn misses() {
        let table = table();
        assert_eq!(
            route(&table, "nobody.api.example.com", "/"),
            Err(Miss::NoRoute)
        );
        assert_eq!(
            route(&table, "nothing.example.com", "/"),
            Err(Miss::NoRoute)
        );
        assert_eq!(
            route(&table, "a.b.api.example.com", "/"),
            Err(Miss::NoRoute)
        );
        assert_eq!(route(&table, "example.net", "/"), Err(Miss::NoRoute));
        assert_eq!(route(&table, "badexample.com", "/"), Err(Miss::NoRoute));
        assert_eq!(route(&table, ".example.com", "/"), Err(Miss::NoRoute));
        assert_eq!(
            route(&table, "empty.example.com", "/"),
            Err(Miss::NoWeightedInstance {
                service: "empty".into()
            })
        );
    }

    #[test]
    fn overrides() {
        let table = table();
        assert_eq!(route(&table, "example.com", "/").unwrap(), "web:main");
        assert_eq!(
            route(&table, "example.com", "/anything").unwrap(),
            "web:main"
        );
        assert_eq!(route(&table, "example.com", "/apix").unwrap(), "web:main");
        assert_eq!(
            route(&table, "example.com", "/api/v2/x").unwrap(),
            "api:alice"
        );
        assert_eq!(
            route(&table, "example.com", "/api/v2").unwrap(),
            "api:alice"
        );
        assert_eq!(
            route(&table, "example.com", "/api/v2?q=1").unwrap(),
            "api:alice"
        );
        assert_eq!(
            route(&table, "example.com", "/docs/intro").unwrap(),
            "web:docs"
        );
        assert_eq!(route(&table, "example.com", "/docs").unwrap(), "web:main");
        assert!(route(&table, "example.com", "/api/v1")
            .unwrap()
            .starts_with("api:"));
        assert_eq!(route(&table, "www.example.com", "/").unwrap(), "web:main");
        assert_eq!(route(&table, "pinned.example.com", "/").unwrap(), "api:bob");
        assert_eq!(
            route(&table, "PINNED.apps.example.org", "/").unwrap(),
            "api:bob"
        );
    }

    #[test]
    fn pools_survive_rebuilds() {
        let pools = Pools::default();
        let requests = RequestMetrics::default();
        let config = Config::default();
        let first = Table::build(
            &config,
            vec![instance("api:a", 1, BackendState::Running)],
            &pools,
            &requests,
            |_| None,
        );
        let second = Table::build(
            &config,
            vec![instance("api:a", 1, BackendState::Sleeping)],
            &pools,
            &requests,
            |_| None,
        );
        let a1 = first.resolve("a.api.localhost", "/").unwrap();
        let a2 = second.resolve("a.api.localhost", "/").unwrap();
        assert!(Arc::ptr_eq(&a1.pool, &a2.pool));
        assert!(Arc::ptr_eq(&a1.requests, &a2.requests));
        assert_eq!(a2.state, BackendState::Sleeping);
    }
}
