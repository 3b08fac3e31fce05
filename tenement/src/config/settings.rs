//! Derived values of `[settings]`.

use super::model::Settings;

/// The management socket's file name in the data directory when `api` is not set.
pub const API_SOCKET_FILE: &str = "tenement.sock";

impl Settings {
    /// Where the management API listens: `api` as written, else
    /// `unix:{data_dir}/tenement.sock`.
    pub fn api_endpoint(&self) -> String {
        match &self.api {
            Some(api) => api.trim().to_string(),
            None => format!("unix:{}", self.data_dir.join(API_SOCKET_FILE).display()),
        }
    }

    /// The TCP port of the management API, when it listens on TCP rather than a socket file.
    pub fn api_tcp_port(&self) -> Option<u16> {
        let endpoint = self.api_endpoint();
        if endpoint.starts_with("unix:") {
            return None;
        }
        let host_port = endpoint.strip_prefix("http://").unwrap_or(&endpoint);
        let host_port = host_port.strip_suffix('/').unwrap_or(host_port);
        host_port.rsplit_once(':')?.1.parse().ok()
    }
}

/// The syntax `api` accepts: `unix:/absolute/path`, `host:port` or `http://host:port`.
pub(super) fn check_api_address(text: &str) -> Result<(), String> {
    let text = text.trim();
    if let Some(path) = text.strip_prefix("unix:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        return if path.starts_with('/') && path.len() > 1 {
            Ok(())
        } else {
            Err(format!(
                "{text:?}: a unix socket needs an absolute path, e.g. \"unix:/var/lib/tenement/tenement.sock\""
            ))
        };
    }
    if text.starts_with("https://") {
        return Err(format!(
            "{text:?}: the management API speaks plain HTTP; use host:port on a trusted network, or a unix socket"
        ));
    }
    let host_port = text.strip_prefix("http://").unwrap_or(text);
    let host_port = host_port.strip_suffix('/').unwrap_or(host_port);
    let valid = !host_port.contains('/')
        && host_port
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{text:?} is neither unix:/path nor host:port (e.g. \"127.0.0.1:8090\")"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_endpoint_defaults_to_a_socket_in_the_data_dir() {
        let mut settings = Settings {
            data_dir: "/srv/tenement".into(),
            ..Settings::default()
        };
        assert_eq!(settings.api_endpoint(), "unix:/srv/tenement/tenement.sock");
        settings.api = Some("127.0.0.1:8090".into());
        assert_eq!(settings.api_endpoint(), "127.0.0.1:8090");
    }

    #[test]
    fn api_tcp_port_only_for_tcp_endpoints() {
        let mut settings = Settings::default();
        assert_eq!(settings.api_tcp_port(), None);
        settings.api = Some("http://127.0.0.1:8090/".into());
        assert_eq!(settings.api_tcp_port(), Some(8090));
        settings.api = Some("[::1]:9000".into());
        assert_eq!(settings.api_tcp_port(), Some(9000));
    }

    #[test]
    fn api_addresses() {
        for good in [
            "unix:/run/tenement.sock",
            "unix:///run/t.sock",
            "127.0.0.1:8090",
            "http://localhost:8090",
            "[::1]:8090",
        ] {
            assert_eq!(check_api_address(good), Ok(()), "{good}");
        }
        for bad in [
            "unix:relative.sock",
            "https://x:1",
            "8090",
            "localhost",
            "h:99999",
            "a/b:1",
        ] {
            assert!(check_api_address(bad).is_err(), "{bad}");
        }
    }
}
