//! Whether the configuration file gives its secrets away: `env` values (database
//! passwords, API keys) in a file that users other than root may read are readable by
//! every tenant running under its own uid.

use std::{os::unix::fs::MetadataExt, path::Path};

use super::Config;

/// A warning when `config` (read from `path`) has `env` values and users other than its
/// owner and root may read the file: everyone (`o+r`), or a group other than root's.
pub fn readable_secrets(path: &Path, config: &Config) -> Option<String> {
    let with_env: Vec<&str> = config
        .service
        .iter()
        .filter(|(_, service)| !service.env.is_empty())
        .map(|(name, _)| name.as_str())
        .collect();
    if with_env.is_empty() {
        return None;
    }
    let meta = std::fs::metadata(path).ok()?;
    let mode = meta.mode() & 0o777;
    let exposed = mode & 0o004 != 0 || (mode & 0o040 != 0 && meta.gid() != 0);
    exposed.then(|| {
        format!(
            "{} holds `env` values (service {}) and other users may read it (mode {mode:04o}): \
             tenants can read them too; `chmod 600` it, or move the secrets to `env_file`",
            path.display(),
            with_env.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn warns_only_for_env_values_others_can_read() {
        let dir = crate::test_support::TempDir::new("secrets");
        std::fs::create_dir_all(&dir.0).unwrap();
        let path = dir.0.join("tenement.toml");
        let text = "[service.notes]\ncommand = \"app\"\nenv = { KEY = \"secret\" }\n";
        std::fs::write(&path, text).unwrap();
        let config = Config::parse(text, "t").unwrap();
        let set = |mode| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode));

        set(0o644).unwrap();
        let warning = readable_secrets(&path, &config).unwrap();
        assert!(warning.contains("service notes"), "{warning}");
        assert!(warning.contains("0644"), "{warning}");
        set(0o600).unwrap();
        assert_eq!(readable_secrets(&path, &config), None);

        let plain = Config::parse("[service.notes]\ncommand = \"app\"\n", "t").unwrap();
        set(0o644).unwrap();
        assert_eq!(readable_secrets(&path, &plain), None);
    }
}
