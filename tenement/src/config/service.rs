//! What a service's configuration means for one of its instances: the program to exec and
//! the environment it gets.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

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

    /// Program and arguments for one instance: [`Service::argv`] with the placeholders of
    /// each word filled in after splitting, so a value with spaces (a data directory) stays
    /// one argument.
    pub fn argv_for(&self, instance: &Placeholders) -> Result<Vec<String>, String> {
        Ok(self
            .argv()?
            .iter()
            .map(|word| instance.render(word))
            .collect())
    }

    /// The directory the instance starts in: `workdir` with its placeholders filled in,
    /// else the instance's data directory.
    pub fn workdir_for(&self, instance: &Placeholders) -> PathBuf {
        match &self.workdir {
            Some(workdir) => PathBuf::from(instance.render(&workdir.to_string_lossy())),
            None => PathBuf::from(&instance.data_dir),
        }
    }

    /// The `env` table for one instance, with `{name}` (the service), `{id}`, `{data_dir}`
    /// (the instance's data directory) and `{port}` filled in. Only the configured variables:
    /// `PORT` and `env_inherit` are the supervisor's to add.
    pub fn render_env(&self, instance: &Placeholders) -> BTreeMap<String, String> {
        self.env
            .iter()
            .map(|(key, value)| (key.clone(), instance.render(value)))
            .collect()
    }
}

/// The values of `{name}`, `{id}`, `{data_dir}` and `{port}` for one instance.
pub struct Placeholders {
    service: String,
    id: String,
    data_dir: String,
    port: String,
}

impl Placeholders {
    pub fn new(name: &InstanceName, data_dir: &Path, port: u16) -> Placeholders {
        Placeholders {
            service: name.service.clone(),
            id: name.id.clone(),
            data_dir: data_dir.display().to_string(),
            port: port.to_string(),
        }
    }

    pub fn render(&self, text: &str) -> String {
        template::render(
            text,
            &[
                ("name", &self.service),
                ("id", &self.id),
                ("data_dir", &self.data_dir),
                ("port", &self.port),
            ],
        )
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
        let values = Placeholders::new(&name, Path::new("/var/lib/tenement/api-alice"), 30001);
        let env = svc.render_env(&values);
        assert_eq!(env["DB"], "/var/lib/tenement/api-alice/app.db");
        assert_eq!(env["URL"], "http://alice.api.local:30001");
        assert_eq!(env["JSON"], "{\"tenant\": \"alice\"}");
        assert_eq!(env["PLAIN"], "x");
        assert_eq!(env.len(), 4);
    }

    #[test]
    fn command_args_and_workdir_are_filled_per_instance() {
        let name = InstanceName::parse("api:alice").unwrap();
        let values = Placeholders::new(&name, Path::new("/data dir/api/alice"), 30001);
        let split = service("/srv/{name}/{id}/server --port {port} --db {data_dir}/db");
        assert_eq!(
            split.argv_for(&values).unwrap(),
            [
                "/srv/api/alice/server",
                "--port",
                "30001",
                "--db",
                "/data dir/api/alice/db"
            ]
        );
        let with_args = Service {
            args: Some(vec!["--tenant={id}".into(), "{{literal}}".into()]),
            workdir: Some(PathBuf::from("/srv/{name}/{id}")),
            ..service("/opt/{name}/bin")
        };
        assert_eq!(
            with_args.argv_for(&values).unwrap(),
            ["/opt/api/bin", "--tenant=alice", "{literal}"]
        );
        assert_eq!(with_args.workdir_for(&values), Path::new("/srv/api/alice"));
        assert_eq!(split.workdir_for(&values), Path::new("/data dir/api/alice"));
    }
}
