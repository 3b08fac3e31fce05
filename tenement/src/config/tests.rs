use super::*;

fn errors(text: &str) -> Vec<String> {
    Config::parse(text, "t.toml")
        .expect_err("the text has mistakes")
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn an_empty_file_is_all_defaults() {
    assert_eq!(Config::parse("", "t.toml").unwrap(), Config::default());
}

#[test]
fn every_type_error_is_reported_at_its_value() {
    let found = errors(
        "[service.api]\ncommand = \"app\"\nidle_timeout = \"x\"\nisolation = \"vm\"\n\
         env = { A = 1 }\n[settings]\nport_range = [1, \"y\"]\nlisten = \"nowhere\"\n",
    );
    assert_eq!(found.len(), 5, "{found:#?}");
    assert_eq!(
        found[0],
        "t.toml:3:16: `idle_timeout` in [service.api]: invalid type: string \"x\", expected u64"
    );
    assert!(
        found[1].starts_with("t.toml:4:13: `isolation` in [service.api]: unknown variant `vm`, expected one of `process`, `namespace`, `sandbox`"),
        "{}",
        found[1]
    );
    assert!(found[2].starts_with("t.toml:5:13: `A` in [service.api.env]: invalid type: integer"));
    assert!(found[3].starts_with("t.toml:7:"), "{}", found[3]);
    assert!(
        found[4].starts_with(
            "t.toml:8:10: `listen` in [settings]: \"nowhere\": invalid socket address syntax"
        ),
        "{}",
        found[4]
    );
}

#[test]
fn a_rejected_value_is_not_reported_twice() {
    // `command = 3` is a type error; the empty default standing in must not add
    // "command must name the program".
    let found = errors("[service.api]\ncommand = 3\n");
    assert_eq!(found.len(), 1, "{found:#?}");
}

#[test]
fn a_required_key_with_a_bad_value_is_reported_once() {
    // The rejected `advertise` is then missing: its table must not be blamed for that too.
    let found =
        errors("[fleet]\netcd = \"http://127.0.0.1:2379\"\nadvertise = \"web1.internal:8080\"\n");
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with("t.toml:3:13: `advertise` in [fleet]:"),
        "{}",
        found[0]
    );
}

#[test]
fn an_incomplete_dns_update_is_one_mistake() {
    // Missing `server` is the error; "dns-01 needs dns_listen or dns_update" would repeat it.
    let found = errors(
        "[settings]\ndomain = \"example.com\"\n[settings.tls]\n\
         challenges = [\"dns-01\"]\n[settings.tls.dns_update]\nzone = \"example.com\"\n\
         key_name = \"k\"\nkey_secret_file = \"/etc/k\"\n",
    );
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(found[0].contains("missing field `server`"), "{}", found[0]);
}

#[test]
fn unknown_keys_type_errors_and_meaning_are_reported_together() {
    let found = errors(
        "[settings]\nport_range = [2000, 1000]\n\n[service.api]\ncommand = \"app\"\n\
         idel_timeout = 3\ncpu_weight = \"high\"\n\n[instances]\nweb = [\"a\"]\n",
    );
    assert_eq!(
        found,
        [
            "t.toml:2:1: `port_range` in [settings]: the low port 2000 is above the high port 1000",
            "t.toml:6:1: unknown key `idel_timeout` in [service.api]; did you mean `idle_timeout`?",
            "t.toml:7:14: `cpu_weight` in [service.api]: invalid type: string \"high\", expected u64",
            "t.toml:10:1: `web` in [instances]: no service `web` is defined; defined: `api`",
        ]
    );
}

#[test]
fn dotted_and_inline_forms_are_checked_too() {
    let found = errors("service.api.command = \"app\"\nservice.api.comand = \"x\"\nsettings = { tls = { enabeld = true } }\n");
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        found[0].starts_with(
            "t.toml:2:13: unknown key `comand` in [service.api]; did you mean `command`?"
        ),
        "{}",
        found[0]
    );
    assert!(
        found[1].contains("unknown key `enabeld` in [settings.tls]; did you mean `enabled`?"),
        "{}",
        found[1]
    );
}

#[test]
fn the_alias_cpu_shares_is_accepted_and_named_in_errors() {
    let config = Config::parse(
        "[service.api]\ncommand = \"app\"\ncpu_shares = 200\n",
        "t.toml",
    )
    .unwrap();
    assert_eq!(config.service["api"].cpu_weight, Some(200));
    let found = errors("[service.api]\ncommand = \"app\"\ncpu_shares = 0\n");
    assert_eq!(found, ["t.toml:3:1: `cpu_shares` in [service.api]: must be 1-10000 (100 is an even share), got 0"]);
}

#[test]
fn load_anchors_relative_paths_at_the_file() {
    let dir = std::env::temp_dir().join(format!("tenement-config-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tenement.toml");
    std::fs::write(
        &file,
        "[settings]\ndata_dir = \"data\"\n[service.api]\ncommand = \"app\"\nworkdir = \".\"\n\
         [service.abs]\ncommand = \"app\"\nworkdir = \"/srv\"\n",
    )
    .unwrap();
    let config = Config::load(&file);
    std::fs::remove_dir_all(&dir).unwrap();
    let config = config.unwrap();
    assert_eq!(config.settings.data_dir, dir.join("data"));
    assert_eq!(
        config.service["api"].workdir.as_deref(),
        Some(dir.as_path())
    );
    assert_eq!(
        config.service["abs"].workdir.as_deref(),
        Some(Path::new("/srv"))
    );
}

#[test]
fn load_errors_keep_the_config_errors_text() {
    let dir = std::env::temp_dir().join(format!("tenement-config-unit-err-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tenement.toml");
    std::fs::write(&file, "bogus = 1\n").unwrap();
    let err = Config::load(&file).unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    let errors = err
        .downcast_ref::<ConfigErrors>()
        .expect("ConfigErrors inside");
    assert_eq!(errors.len(), 1);
    assert_eq!(
        err.to_string(),
        format!(
            "{}:1:1: unknown key `bogus` in the top-level table",
            file.display()
        )
    );
}

#[test]
fn env_file_is_a_path_relative_to_the_file() {
    let found = errors("[service.api]\ncommand = \"app\"\nenv_file = \"\"\n");
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with("t.toml:3:1: `env_file` in [service.api]: must be a path"),
        "{}",
        found[0]
    );
    let dir = crate::test_support::TempDir::new("env-file");
    std::fs::create_dir_all(&dir.0).unwrap();
    let file = dir.0.join("tenement.toml");
    std::fs::write(
        &file,
        "[service.api]\ncommand = \"app\"\nenv_file = \"secrets/api.env\"\n",
    )
    .unwrap();
    let config = Config::load(&file).unwrap();
    assert_eq!(
        config.service["api"].env_file.as_deref(),
        Some(dir.0.join("secrets/api.env").as_path())
    );
}

#[test]
fn unix_listening_refuses_sandbox_and_port_placeholders() {
    let found = errors(
        "[service.api]\ncommand = \"app\"\nlisten = \"unix\"\nisolation = \"sandbox\"\n\
         env = { URL = \"http://127.0.0.1:{port}/\", SOCKET_PATH = \"/x\" }\n",
    );
    assert_eq!(found.len(), 3, "{found:#?}");
    assert!(
        found[0].starts_with("t.toml:3:1: `listen` in [service.api]: \"unix\" cannot be combined with isolation = \"sandbox\""),
        "{}",
        found[0]
    );
    assert!(
        found[2].contains("`SOCKET_PATH`") && found[2].contains("is set by tenement"),
        "{}",
        found[2]
    );
    assert!(
        found[1].contains("`URL`") && found[1].contains("uses {port}"),
        "{}",
        found[1]
    );
    let fine = "[service.api]\ncommand = \"app\"\nlisten = \"unix\"\nisolation = \"namespace\"\n";
    assert_eq!(
        Config::parse(fine, "t.toml").unwrap().service["api"].listen,
        Listen::Unix
    );
    assert!(
        errors("[service.api]\ncommand = \"app\"\nlisten = \"tcp\"\n")[0]
            .contains("unknown variant `tcp`, expected `port` or `unix`")
    );
    let found = errors(
        "[service.api]\ncommand = \"app --port {port}\"\nargs = [\"{port}\"]\nlisten = \"unix\"\n",
    );
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        found.iter().all(|e| e.contains("uses {port}")),
        "{found:#?}"
    );
}

#[test]
fn fleet_keys_are_checked_where_they_are_written() {
    let found = errors(
        "[fleet]\netcd = [\"https://e1:2379\", \"e2:2379\"]\nnode = \"Bad Name\"\n\
         advertise = \"0.0.0.0:8080\"\nlease_ttl = 1\n",
    );
    let text = found.join("\n");
    assert!(text.contains("TLS to etcd is not supported yet"), "{text}");
    assert!(
        text.contains("\"e2:2379\" must be http://host:port"),
        "{text}"
    );
    assert!(text.contains("node name \"Bad Name\""), "{text}");
    assert!(text.contains("not 0.0.0.0"), "{text}");
    assert!(text.contains("at least 2 seconds"), "{text}");
    assert_eq!(found.len(), 5, "{text}");
    assert!(
        errors("[fleet]\netcd = []\nadvertise = \"10.0.0.1:8080\"\n")[0]
            .contains("needs at least one etcd endpoint")
    );
}

#[test]
fn fleet_is_absent_unless_written() {
    let config: Config = toml::from_str("").unwrap();
    assert_eq!(config.fleet, None);
    let config: Config =
        toml::from_str("[fleet]\netcd = \"http://127.0.0.1:2379\"\nadvertise = \"10.0.0.1:80\"\n")
            .unwrap();
    let fleet = config.fleet.unwrap();
    assert_eq!(fleet.lease_ttl, 5);
    assert_eq!(fleet.max_instances, 0);
    assert_eq!(fleet.node, None);
}

#[test]
fn freeze_after_must_come_before_idle_timeout() {
    let found = errors(
        "[service.api]\ncommand = \"app\"\nidle_timeout = 60\nfreeze_after = 60\n\
         [settings]\nmemory_pressure_psi = 150\n",
    );
    assert_eq!(
        found,
        [
            "t.toml:4:1: `freeze_after` in [service.api]: 60s must be below idle_timeout (60s): \
             an instance is frozen first, then stopped",
            "t.toml:6:1: `memory_pressure_psi` in [settings]: must be a percentage, 0-100 \
             (0 = not looked at), got 150",
        ]
    );
    // Either alone, or freezing without stopping, is fine.
    for text in [
        "[service.api]\ncommand = \"app\"\nidle_timeout = 60\nfreeze_after = 5\n",
        "[service.api]\ncommand = \"app\"\nfreeze_after = 5\n",
    ] {
        Config::parse(text, "t.toml").expect("valid");
    }
}

#[test]
fn socket_activation_refuses_sandbox_and_unix_listening() {
    let found = errors(
        "[service.api]\ncommand = \"app\"\nisolation = \"sandbox\"\nsocket_activation = true\n",
    );
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with(
            "t.toml:4:1: `socket_activation` in [service.api]: cannot be combined with \
             isolation = \"sandbox\""
        ),
        "{}",
        found[0]
    );
    let found =
        errors("[service.api]\ncommand = \"app\"\nlisten = \"unix\"\nsocket_activation = true\n");
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(found[0].contains("needs listen = \"port\""), "{}", found[0]);
    let fine =
        "[service.api]\ncommand = \"app\"\nisolation = \"namespace\"\nsocket_activation = true\n";
    assert!(Config::parse(fine, "t.toml").is_ok());
}
