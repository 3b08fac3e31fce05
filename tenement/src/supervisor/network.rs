//! What the network boundary means for this configuration: the ports of the host that every
//! instance is kept away from, and one instance's policy. The monitor turns these into
//! kernel state; the supervisor only asks for them (see DESIGN.md, "Growing the house").

use std::net::IpAddr;

use crate::{
    config::{Config, EgressConfig, Service},
    monitor::{system_resolvers, Destination, Egress, HostPorts, NetworkPolicy},
};

/// Where the system's DNS resolvers are listed; an egress list always allows them.
const RESOLV_CONF: &str = "/etc/resolv.conf";
const DNS_PORT: u16 = 53;

/// `port_range`, tenement's proxy listeners (public) and its management API over TCP
/// (private).
pub fn host_ports(config: &Config) -> HostPorts {
    let settings = &config.settings;
    let mut proxy: Vec<u16> = settings.listen.iter().map(|a| a.port()).collect();
    if settings.tls.enabled {
        proxy.extend(settings.tls.listen.iter().map(|a| a.port()));
    }
    proxy.sort_unstable();
    proxy.dedup();
    HostPorts {
        port_range: settings.port_range,
        private: settings.api_tcp_port().into_iter().collect(),
        proxy,
    }
}

/// The boundary of an instance of `service` that was given `port`.
pub fn policy(service: &Service, port: u16) -> NetworkPolicy {
    let egress = match &service.egress {
        EgressConfig::Any => Egress::Any,
        EgressConfig::None => Egress::None,
        EgressConfig::List(rules) => {
            let resolv = std::fs::read_to_string(RESOLV_CONF).unwrap_or_default();
            Egress::List(rules.iter().copied().chain(resolvers(&resolv)).collect())
        }
    };
    NetworkPolicy { port, egress }
}

/// DNS (port 53) to each resolver of `resolv_conf`.
fn resolvers(resolv_conf: &str) -> impl Iterator<Item = Destination> {
    system_resolvers(resolv_conf)
        .into_iter()
        .map(|address: IpAddr| Destination {
            address,
            prefix: if address.is_ipv4() { 32 } else { 128 },
            port: Some(DNS_PORT),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EgressRule;

    #[test]
    fn host_ports_come_from_the_listeners() {
        let mut config = Config::default();
        config.settings.listen = vec!["0.0.0.0:8080".parse().unwrap()];
        config.settings.api = Some("127.0.0.1:8090".into());
        config.settings.port_range = [31000, 31999];
        let ports = host_ports(&config);
        assert_eq!(ports.port_range, [31000, 31999]);
        assert_eq!(ports.proxy, [8080]);
        assert_eq!(ports.private, [8090]);
        config.settings.tls.enabled = true;
        assert_eq!(host_ports(&config).proxy, [443, 8080]);
    }

    #[test]
    fn a_list_also_allows_the_resolvers() {
        let list: Vec<Destination> = resolvers("nameserver 192.0.2.53\n").collect();
        assert_eq!(list[0].to_string(), "192.0.2.53/32:53");
        let service = Service {
            egress: EgressConfig::List(vec![EgressRule::parse("10.0.0.0/8:5432").unwrap()]),
            ..Service::default()
        };
        let Egress::List(list) = policy(&service, 30001).egress else {
            panic!("a list stays a list");
        };
        assert_eq!(list[0].to_string(), "10.0.0.0/8:5432");
        let none = Service {
            egress: EgressConfig::None,
            ..Service::default()
        };
        assert_eq!(policy(&none, 30001).egress, Egress::None);
    }
}
