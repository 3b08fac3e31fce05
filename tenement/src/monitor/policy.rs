//! The network boundary of instances as the monitor takes it from the supervisor, and what
//! it reports back. Plain data: the kernel side (`network.rs`) turns it into map entries.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use serde::Serialize;

/// Whether the kernel enforces network boundaries, and if not, why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "reason", rename_all = "lowercase")]
pub enum NetworkIsolation {
    Active,
    Off(String),
}

impl NetworkIsolation {
    pub fn is_active(&self) -> bool {
        matches!(self, NetworkIsolation::Active)
    }
}

impl std::fmt::Display for NetworkIsolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NetworkIsolation::Active => f.write_str("network isolation active"),
            NetworkIsolation::Off(reason) => write!(
                f,
                "network isolation off: tenants are NOT network-isolated (they can bind, \
                 steal and connect to each other's ports): {reason}"
            ),
        }
    }
}

/// Ports of this host that the boundary protects, set once at start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostPorts {
    /// `port_range`, inclusive: closed to every instance but for its own port.
    pub port_range: [u16; 2],
    /// tenement's own listeners that tenants must not reach (the management API over TCP).
    pub private: Vec<u16>,
    /// Public proxy listeners: reachable over loopback whatever the egress policy.
    pub proxy: Vec<u16>,
}

/// The boundary of one instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NetworkPolicy {
    /// The one port it may bind (on loopback).
    pub port: u16,
    pub egress: Egress,
}

/// Where an instance may connect or send beyond its own port and the proxy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Egress {
    /// Anywhere but the protected ports.
    Any,
    /// Loopback to its own port and the proxy's only.
    None,
    /// As `None`, plus these destinations.
    List(Vec<Destination>),
}

/// A network (address and prefix length) and a port, or every port: the configuration's own
/// `egress` entry, which the kernel maps take as it is.
pub use crate::config::EgressRule as Destination;

/// Socket operations of one instance that the boundary refused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NetworkDenials {
    pub binds: u64,
    pub connects: u64,
    /// UDP datagrams refused at sendmsg.
    pub sends: u64,
    /// The latest refusal, if any.
    pub last: Option<Denial>,
}

impl NetworkDenials {
    pub fn total(&self) -> u64 {
        self.binds + self.connects + self.sends
    }
}

/// One refused operation: `connect` (or `bind`, `send`) and the address asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Denial {
    pub operation: &'static str,
    pub address: SocketAddr,
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.operation, self.address)
    }
}

/// An address as the kernel programs record it (IPv6 or mapped IPv4) back in its own family.
pub fn unmapped(address: Ipv6Addr) -> IpAddr {
    match address.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(address),
    }
}

/// The resolvers of `/etc/resolv.conf` (`nameserver` lines): the DNS an instance with an
/// egress list may always reach.
pub fn system_resolvers(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("nameserver"), Some(address)) => {
                    // `fe80::1%eth0`: the zone does not matter to a port policy.
                    address.split('%').next()?.parse().ok()
                }
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolvers_come_from_nameserver_lines() {
        let conf = "# comment\nsearch example.com\nnameserver 127.0.0.53\nnameserver  \
                    2001:db8::1\nnameserver fe80::1%eth0\nnameserver bogus\noptions edns0\n";
        assert_eq!(
            system_resolvers(conf),
            [
                "127.0.0.53".parse::<IpAddr>().unwrap(),
                "2001:db8::1".parse().unwrap(),
                "fe80::1".parse().unwrap()
            ]
        );
    }

    #[test]
    fn destinations_map_ipv4_into_ipv6() {
        let d = Destination {
            address: "10.1.0.0".parse().unwrap(),
            prefix: 16,
            port: Some(5432),
        };
        assert_eq!(
            d.mapped(),
            ("::ffff:10.1.0.0".parse::<Ipv6Addr>().unwrap(), 112)
        );
        assert_eq!(d.to_string(), "10.1.0.0/16:5432");
        let any = Destination {
            address: "2001:db8::".parse().unwrap(),
            prefix: 32,
            port: None,
        };
        assert_eq!(any.to_string(), "[2001:db8::]/32:*");
        assert_eq!(
            unmapped("::ffff:127.0.0.1".parse().unwrap()),
            "127.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn off_says_plainly_that_tenants_are_not_isolated() {
        let off = NetworkIsolation::Off("no eBPF".into()).to_string();
        assert!(off.contains("NOT network-isolated"), "{off}");
    }
}
