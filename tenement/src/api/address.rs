//! Where the management API listens and where the CLI finds it: a unix socket or a TCP
//! address. One type for both sides, so the daemon and the client cannot disagree on syntax.

use std::{fmt, path::PathBuf};

use crate::config::{Settings, API_SOCKET_FILE};

/// Used by the CLI when neither `--server`, `TENEMENT_SERVER` nor a configuration names one.
pub const DEFAULT_SOCKET: &str = "/var/lib/tenement/tenement.sock";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiAddress {
    Unix(PathBuf),
    /// `host:port`, as written (a name or an IP address).
    Tcp(String),
}

impl ApiAddress {
    /// Parses `unix:/path`, `http://host:port` or `host:port`.
    pub fn parse(text: &str) -> Result<ApiAddress, String> {
        let text = text.trim();
        if let Some(path) = text.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if !path.starts_with('/') {
                return Err(format!(
                    "API address {text:?}: a unix socket needs an absolute path, e.g. \
                     unix:/var/lib/tenement/tenement.sock"
                ));
            }
            return Ok(ApiAddress::Unix(PathBuf::from(path)));
        }
        if text.starts_with("https://") {
            return Err(format!(
                "API address {text:?}: the management API speaks plain HTTP; use http://host:port \
                 on a trusted network (or a unix socket)"
            ));
        }
        let host_port = text.strip_prefix("http://").unwrap_or(text);
        let host_port = host_port.strip_suffix('/').unwrap_or(host_port);
        let valid = host_port
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !valid || host_port.contains('/') {
            return Err(format!(
                "API address {text:?} is neither unix:/path nor host:port (e.g. 127.0.0.1:8090)"
            ));
        }
        Ok(ApiAddress::Tcp(host_port.to_string()))
    }

    /// Where a client of this configuration connects: `settings.api`, else the socket in the
    /// data directory.
    pub fn from_settings(settings: &Settings) -> Result<ApiAddress, String> {
        ApiAddress::parse(&settings.api_endpoint()).map_err(|err| format!("settings.api: {err}"))
    }

    /// Where the daemon listens: always a unix socket (`settings.api` when it is one, else
    /// `{data_dir}/tenement.sock`), plus the TCP address when `settings.api` is one. The socket
    /// stays so root on the machine can always reach the daemon without a token, e.g. to
    /// issue the first one.
    pub fn listeners(settings: &Settings) -> Result<Vec<ApiAddress>, String> {
        let configured = ApiAddress::from_settings(settings)?;
        Ok(match configured {
            ApiAddress::Unix(_) => vec![configured],
            ApiAddress::Tcp(_) => vec![
                ApiAddress::Unix(settings.data_dir.join(API_SOCKET_FILE)),
                configured,
            ],
        })
    }
}

impl fmt::Display for ApiAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiAddress::Unix(path) => write!(f, "unix:{}", path.display()),
            ApiAddress::Tcp(host_port) => write!(f, "http://{host_port}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!(
            ApiAddress::parse("unix:/run/t.sock").unwrap(),
            ApiAddress::Unix("/run/t.sock".into())
        );
        assert_eq!(
            ApiAddress::parse("http://127.0.0.1:8090").unwrap(),
            ApiAddress::Tcp("127.0.0.1:8090".into())
        );
        assert_eq!(
            ApiAddress::parse("localhost:8090").unwrap(),
            ApiAddress::Tcp("localhost:8090".into())
        );
        assert_eq!(
            ApiAddress::parse("[::1]:8090").unwrap(),
            ApiAddress::Tcp("[::1]:8090".into())
        );
        assert!(ApiAddress::parse("unix:relative.sock").is_err());
        assert!(ApiAddress::parse("https://x:1").is_err());
        assert!(ApiAddress::parse("8090").is_err());
        assert!(ApiAddress::parse("host:notaport").is_err());
    }

    #[test]
    fn the_daemon_keeps_its_socket_beside_tcp() {
        let mut settings = Settings::default();
        assert_eq!(
            ApiAddress::listeners(&settings).unwrap(),
            [ApiAddress::Unix("/var/lib/tenement/tenement.sock".into())]
        );
        settings.api = Some("127.0.0.1:8090".into());
        assert_eq!(
            ApiAddress::listeners(&settings).unwrap(),
            [
                ApiAddress::Unix("/var/lib/tenement/tenement.sock".into()),
                ApiAddress::Tcp("127.0.0.1:8090".into())
            ]
        );
    }

    #[test]
    fn displays_as_the_cli_accepts_it() {
        for text in ["unix:/var/lib/tenement/tenement.sock", "http://127.0.0.1:1"] {
            assert_eq!(ApiAddress::parse(text).unwrap().to_string(), text);
        }
    }
}
