//! What a service's configuration means for one of its instances: the program to exec and
//! the environment it gets.

use std::{collections::BTreeMap, path::Path};

use super::{model::Service, names::InstanceName, template};

impl Service {
    /// Program and arguments: `command` shell-split (quotes respected), or `command` as the
    /// program alone followed by `args` when `args` is given.
    pub fn argv(&self) -> Result<Vec<String>, String> {
        if self.command.trim().is_empty() {
            return Err("command is empty".to_string());
        }
        if let Some(args) = &self.args {
            let mut argv = vec![self.command.clone()];
            argv.extend(args.iter().cloned());
            return Ok(argv);
        }
        shell_words::split(&self.command)
            .map_err(|err| format!("cannot split command {:?}: {err}", self.command))
    }

    /// The `env` table for one instance, with `{name}` (the service), `{id}`, `{data_dir}`
    /// (the instance's data directory) and `{port}` filled in. Only the configured variables:
    /// `PORT` and `env_inherit` are the supervisor's to add.
    pub fn render_env(
        &self,
        name: &InstanceName,
        data_dir: &Path,
        port: u16,
    ) -> BTreeMap<String, String> {
        let data_dir = data_dir.display().to_string();
        let port = port.to_string();
        let values = [
            ("name", name.service.as_str()),
            ("id", name.id.as_str()),
            ("data_dir", data_dir.as_str()),
            ("port", port.as_str()),
        ];
        self.env
            .iter()
            .map(|(key, value)| (key.clone(), template::render(value, &values)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(command: &str) -> Service {
        Service {
            command: command.to_string(),
            ..Service::default()
        }
    }

    #[test]
    fn command_is_shell_split() {
        assert_eq!(
            service("/usr/bin/python3 app.py --name 'my app' \"x y\" a\\ b")
                .argv()
                .unwrap(),
            [
                "/usr/bin/python3",
                "app.py",
                "--name",
                "my app",
                "x y",
                "a b"
            ]
        );
        assert_eq!(service("  ./server  ").argv().unwrap(), ["./server"]);
    }

    #[test]
    fn command_with_args_is_the_program_alone() {
        let with_args = Service {
            args: Some(vec!["app.py".into(), "two words".into()]),
            ..service("/opt/my app/python")
        };
        assert_eq!(
            with_args.argv().unwrap(),
            ["/opt/my app/python", "app.py", "two words"]
        );
    }

    #[test]
    fn bad_commands_are_errors() {
        assert!(service("").argv().is_err());
        assert!(service("   ").argv().is_err());
        let err = service("python3 'unclosed").argv().unwrap_err();
        assert!(err.contains("unclosed"), "{err}");
    }

    #[test]
    fn env_is_interpolated_per_instance() {
        let mut svc = service("app");
        svc.env = BTreeMap::from([
            ("DB".to_string(), "{data_dir}/app.db".to_string()),
            (
                "URL".to_string(),
                "http://{id}.{name}.local:{port}".to_string(),
            ),
            ("JSON".to_string(), "{{\"tenant\": \"{id}\"}}".to_string()),
            ("PLAIN".to_string(), "x".to_string()),
        ]);
        let name = InstanceName::parse("api:alice").unwrap();
        let env = svc.render_env(&name, Path::new("/var/lib/tenement/api-alice"), 30001);
        assert_eq!(env["DB"], "/var/lib/tenement/api-alice/app.db");
        assert_eq!(env["URL"], "http://alice.api.local:30001");
        assert_eq!(env["JSON"], "{\"tenant\": \"alice\"}");
        assert_eq!(env["PLAIN"], "x");
        assert_eq!(env.len(), 4);
    }
}
