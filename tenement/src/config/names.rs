//! Service and instance names. They become DNS labels (`{id}.{service}.{domain}`), directory
//! names and cgroup names, so they are checked once, here, and trusted everywhere after.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A valid DNS label: `[a-z0-9-]`, 1-63 characters, not starting or ending with `-`.
pub fn check_label(kind: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!(
            "{kind} name {name:?} must be 1-63 characters long (it is {})",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "{kind} name {name:?} may contain only a-z, 0-9 and '-' (found {bad:?})"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(format!(
            "{kind} name {name:?} must not start or end with '-'"
        ));
    }
    Ok(())
}

/// A host name tenement serves or gets certificates for: dot-separated DNS labels
/// (`[a-z0-9-]`, 1-63 characters each), 253 characters at most.
pub fn check_hostname(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err(format!(
            "host name {name:?} must be 1-253 characters long (it is {})",
            name.len()
        ));
    }
    for label in name.split('.') {
        let problem = if label.is_empty() {
            "has an empty label".to_string()
        } else if label.len() > 63 {
            format!("has a label longer than 63 characters ({label:?})")
        } else if let Some(bad) = label
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            format!("contains {bad:?}; only a-z, 0-9, '-' and '.' are allowed")
        } else if label.starts_with('-') || label.ends_with('-') {
            format!("has a label starting or ending with '-' ({label:?})")
        } else {
            continue;
        };
        return Err(format!("host name {name:?} {problem}"));
    }
    Ok(())
}

/// `service:id`, both parts valid labels.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct InstanceName {
    pub service: String,
    pub id: String,
}

impl InstanceName {
    pub fn new(service: &str, id: &str) -> Result<Self, String> {
        check_label("service", service)?;
        check_label("instance", id)?;
        Ok(Self {
            service: service.to_string(),
            id: id.to_string(),
        })
    }

    /// Parses `service:id`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (service, id) = text.split_once(':').ok_or_else(|| {
            format!("instance {text:?} must be written SERVICE:ID, e.g. api:alice")
        })?;
        Self::new(service, id)
    }

    /// `service_id`: the instance's cgroup and sandbox name. Injective because neither part
    /// can hold a `_` (with `-`, `notes:alice-x` and `notes-alice:x` would share a cgroup,
    /// and stopping one would kill the other), and free of `.`, so it never meets a cgroup
    /// interface file such as `cgroup.procs`.
    pub fn slug(&self) -> String {
        format!("{}_{}", self.service, self.id)
    }

    /// `service-id`: the host name inside a namespace (readable, need not be unique).
    pub fn hostname(&self) -> String {
        format!("{}-{}", self.service, self.id)
    }
}

impl fmt::Display for InstanceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.service, self.id)
    }
}

impl TryFrom<String> for InstanceName {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        Self::parse(&text)
    }
}

impl From<InstanceName> for String {
    fn from(name: InstanceName) -> String {
        name.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert!(check_label("service", "api-2").is_ok());
        assert!(check_label("service", "").is_err());
        assert!(check_label("service", "Api").is_err());
        assert!(check_label("service", "../x").is_err());
        assert!(check_label("service", "-a").is_err());
        assert!(check_label("service", &"a".repeat(64)).is_err());
        assert!(check_label("service", &"a".repeat(63)).is_ok());
    }

    #[test]
    fn hostnames() {
        assert!(check_hostname("localhost").is_ok());
        assert!(check_hostname("api.example.com").is_ok());
        assert!(check_hostname("xn--bcher-kva.example").is_ok());
        assert!(check_hostname("").is_err());
        assert!(check_hostname("example..com").is_err());
        assert!(check_hostname("exa_mple.com").is_err());
        assert!(check_hostname("Example.com").is_err());
        assert!(check_hostname("example.com.").is_err());
        assert!(check_hostname(&["a"; 130].join(".")).is_err());
    }

    #[test]
    fn instance_names() {
        let name = InstanceName::parse("api:alice").unwrap();
        assert_eq!(name.to_string(), "api:alice");
        assert_eq!(name.slug(), "api_alice");
        assert_eq!(name.hostname(), "api-alice");
        // Names that differ only in where the '-' falls keep separate slugs.
        let a = InstanceName::parse("notes:alice-x").unwrap();
        let b = InstanceName::parse("notes-alice:x").unwrap();
        assert_ne!(a.slug(), b.slug());
        assert!(InstanceName::parse("api").is_err());
        assert!(InstanceName::parse("api:Alice").is_err());
    }
}
