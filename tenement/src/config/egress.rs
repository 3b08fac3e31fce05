//! `egress` of a service: where its instances may connect and send beyond their own port.
//! `"any"` (the default), `"none"`, or a list of `"cidr:port"` entries such as
//! `"10.0.0.0/8:5432"`, `"192.0.2.7:443"` (a single address), `"[2001:db8::]/32:*"` (every
//! port). Parsed once here; bad entries are configuration errors that name the entry.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum EgressConfig {
    #[default]
    Any,
    None,
    List(Vec<EgressRule>),
}

/// One `"cidr:port"` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EgressRule {
    pub address: IpAddr,
    pub prefix: u8,
    /// `None`: `*`, every port.
    pub port: Option<u16>,
}

impl EgressRule {
    pub fn parse(text: &str) -> Result<EgressRule, String> {
        let bad = |why: &str| format!("{text:?}: {why}");
        let (network, port) = text
            .rsplit_once(':')
            .filter(|(network, _)| !network.is_empty())
            .ok_or_else(|| {
                bad("expected \"cidr:port\", e.g. \"10.0.0.0/8:5432\" or \"[2001:db8::]/32:443\"")
            })?;
        let port = match port {
            "*" => None,
            port => match port.parse::<u16>() {
                Ok(0) | Err(_) => return Err(bad("the port must be 1-65535 or `*` (every port)")),
                Ok(port) => Some(port),
            },
        };
        let (address, prefix) = match network.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (network, None),
        };
        let address = match address.strip_prefix('[') {
            Some(v6) => v6
                .strip_suffix(']')
                .and_then(|v6| v6.parse::<Ipv6Addr>().ok())
                .map(IpAddr::V6)
                .ok_or_else(|| bad("not an IPv6 address in brackets"))?,
            None => address
                .parse::<Ipv4Addr>()
                .map(IpAddr::V4)
                .map_err(|_| bad("not an IPv4 address (write IPv6 in brackets: \"[::1]:53\")"))?,
        };
        let bits = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(prefix) => match prefix.parse::<u8>() {
                Ok(prefix) if prefix <= bits => prefix,
                _ => return Err(bad(&format!("the prefix length must be 0-{bits}"))),
            },
        };
        let rule = EgressRule {
            address,
            prefix,
            port,
        };
        let network = rule.network();
        if network != address {
            return Err(bad(&format!(
                "bits are set past the /{prefix} prefix; did you mean {}?",
                EgressRule {
                    address: network,
                    ..rule
                }
            )));
        }
        Ok(rule)
    }

    /// The address with every bit past the prefix cleared.
    fn network(&self) -> IpAddr {
        match self.address {
            IpAddr::V4(v4) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
            }
            IpAddr::V6(v6) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
            }
        }
    }
}

impl EgressRule {
    /// The address in the kernel's form (IPv4 mapped into IPv6) and the prefix over it.
    pub fn mapped(&self) -> (Ipv6Addr, u32) {
        match self.address {
            IpAddr::V4(v4) => (v4.to_ipv6_mapped(), 96 + u32::from(self.prefix.min(32))),
            IpAddr::V6(v6) => (v6, u32::from(self.prefix.min(128))),
        }
    }
}

/// `10.0.0.0/8:5432`, `[2001:db8::]/32:443`, `192.0.2.1/32:*`.
impl fmt::Display for EgressRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.address {
            IpAddr::V4(v4) => write!(f, "{v4}/{}", self.prefix)?,
            IpAddr::V6(v6) => write!(f, "[{v6}]/{}", self.prefix)?,
        }
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => f.write_str(":*"),
        }
    }
}

impl Serialize for EgressRule {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl Serialize for EgressConfig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            EgressConfig::Any => serializer.serialize_str("any"),
            EgressConfig::None => serializer.serialize_str("none"),
            EgressConfig::List(rules) => {
                serializer.collect_seq(rules.iter().map(|r| r.to_string()))
            }
        }
    }
}

impl<'de> Deserialize<'de> for EgressConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl<'de> de::Visitor<'de> for Visitor {
            type Value = EgressConfig;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"any\", \"none\" or a list of \"cidr:port\" entries")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<EgressConfig, E> {
                match text {
                    "any" => Ok(EgressConfig::Any),
                    "none" => Ok(EgressConfig::None),
                    other => Err(E::custom(format!(
                        "{other:?}: expected \"any\", \"none\" or a list of \"cidr:port\" \
                         entries such as [\"10.0.0.0/8:5432\"]"
                    ))),
                }
            }

            fn visit_seq<A: de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<EgressConfig, A::Error> {
                let mut rules = Vec::new();
                while let Some(text) = seq.next_element::<String>()? {
                    rules.push(EgressRule::parse(&text).map_err(de::Error::custom)?);
                }
                Ok(EgressConfig::List(rules))
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_in_both_families() {
        let rule = EgressRule::parse("10.0.0.0/8:5432").unwrap();
        assert_eq!(rule.to_string(), "10.0.0.0/8:5432");
        assert_eq!(
            EgressRule::parse("192.0.2.7:443").unwrap().to_string(),
            "192.0.2.7/32:443"
        );
        assert_eq!(
            EgressRule::parse("[2001:db8::]/32:*").unwrap().to_string(),
            "[2001:db8::]/32:*"
        );
        assert_eq!(
            EgressRule::parse("[::1]:53").unwrap().to_string(),
            "[::1]/128:53"
        );
        assert_eq!(
            EgressRule::parse("0.0.0.0/0:443").unwrap().prefix,
            0,
            "everything, one port"
        );
    }

    #[test]
    fn bad_entries_say_what_is_wrong() {
        for (text, expected) in [
            ("10.0.0.0/8", "expected \"cidr:port\""),
            ("10.0.0.0/33:80", "prefix length must be 0-32"),
            ("10.0.0.0/8:0", "1-65535"),
            ("10.0.0.0/8:http", "1-65535"),
            ("2001:db8::/32:443", "not an IPv4 address"),
            ("[2001:db8::/32:443", "IPv6 address in brackets"),
            ("10.0.0.1/8:80", "did you mean 10.0.0.0/8:80?"),
            (":80", "expected \"cidr:port\""),
        ] {
            let err = EgressRule::parse(text).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
            assert!(err.contains(text), "names the entry: {err}");
        }
    }

    #[test]
    fn modes_and_lists_round_trip() {
        #[derive(Deserialize, Serialize)]
        struct T {
            egress: EgressConfig,
        }
        for text in [
            "egress = \"any\"\n",
            "egress = \"none\"\n",
            "egress = [\"10.0.0.0/8:5432\", \"[::1]/128:*\"]\n",
        ] {
            let parsed: T = toml::from_str(text).unwrap();
            assert_eq!(toml::to_string(&parsed).unwrap(), text);
        }
        let err = toml::from_str::<T>("egress = \"all\"").err().unwrap();
        assert!(err.to_string().contains("\"all\""), "{err}");
    }
}
