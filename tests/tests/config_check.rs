//! `tenement config check` and `tenement config show`, run as a user runs them, on the
//! fixtures in tests/fixtures/config/: one per validation rule. Each test asserts the exact
//! lines a user reads.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use tenement_tests::{tenement_bin, workspace_root, Scratch};

fn fixtures() -> PathBuf {
    workspace_root().join("tests/fixtures/config")
}

/// Runs `tenement ARGS` in `dir` with no TENEMENT_CONFIG from the caller's environment.
fn tenement(dir: &Path, args: &[&str]) -> Output {
    Command::new(tenement_bin())
        .args(args)
        .current_dir(dir)
        .env_remove("TENEMENT_CONFIG")
        .output()
        .expect("running tenement")
}

/// `config check` on a fixture: the error lines it printed, and whether it passed.
fn check(fixture: &str) -> (bool, Vec<String>) {
    let out = tenement(&fixtures(), &["config", "check", "--config", fixture]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    if out.status.success() {
        assert_eq!(stdout, format!("{fixture}: ok\n"));
        assert_eq!(stderr, "");
        return (true, Vec::new());
    }
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let mut lines: Vec<String> = stderr.lines().map(str::to_string).collect();
    let summary = lines.pop().expect("a summary line");
    let count = lines.len();
    assert_eq!(
        summary,
        format!("{count} error{}", if count == 1 { "" } else { "s" })
    );
    (false, lines)
}

/// Asserts the fixture fails with exactly these messages, each after `FIXTURE:`.
fn assert_errors(fixture: &str, expected: &[&str]) {
    let (passed, lines) = check(fixture);
    assert!(!passed, "{fixture} should fail");
    let expected: Vec<String> = expected.iter().map(|e| format!("{fixture}:{e}")).collect();
    assert_eq!(lines, expected, "\n{}", lines.join("\n"));
}

#[test]
fn version() {
    let out = tenement(&fixtures(), &["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("tenement {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn unknown_key_on_line_7_names_the_line_and_the_key() {
    assert_errors(
        "unknown-key.toml",
        &["7:1: unknown key `idel_timeout` in [service.api]; did you mean `idle_timeout`?"],
    );
}

#[test]
fn found_through_the_lookup_order_the_file_is_named_tenement_toml() {
    let scratch = Scratch::new("config-lookup");
    std::fs::copy(
        fixtures().join("unknown-key.toml"),
        scratch.join("tenement.toml"),
    )
    .unwrap();
    let out = tenement(&scratch.path, &["config", "check"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with(
            "tenement.toml:7:1: unknown key `idel_timeout` in [service.api]; did you mean `idle_timeout`?\n"
        ),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // TENEMENT_CONFIG comes before ./tenement.toml, and --config before both.
    let good = fixtures().join("minimal.toml");
    let out = Command::new(tenement_bin())
        .args(["config", "check"])
        .current_dir(&scratch.path)
        .env("TENEMENT_CONFIG", &good)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}: ok\n", good.display())
    );
    let out = Command::new(tenement_bin())
        .args(["config", "check", "--config", "tenement.toml"])
        .current_dir(&scratch.path)
        .env("TENEMENT_CONFIG", &good)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn no_configuration_anywhere_says_where_it_looked() {
    let scratch = Scratch::new("config-none");
    let out = tenement(&scratch.path, &["config", "check"]);
    if Path::new("/etc/tenement/tenement.toml").exists() {
        return; // this machine has a system-wide configuration: the lookup finds it
    }
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: no configuration found: pass --config FILE, set TENEMENT_CONFIG, or create \
         ./tenement.toml or /etc/tenement/tenement.toml\n"
    );
}

#[test]
fn three_mistakes_are_all_reported() {
    assert_errors(
        "three-mistakes.toml",
        &[
            "4:1: `port_range` in [settings]: the low port 40000 is above the high port 30000",
            "8:19: `startup_timeout` in [service.api]: invalid type: string \"ten seconds\", expected u64",
            "11:1: unknown key `comand` in [service.web]; did you mean `command`?",
        ],
    );
}

#[test]
fn unknown_keys_in_every_table() {
    assert_errors(
        "unknown-keys.toml",
        &[
            "2:1: unknown key `title` in the top-level table",
            "5:1: unknown key `datadir` in [settings]; did you mean `data_dir`?",
            "8:1: unknown key `enable` in [settings.tls]; did you mean `enabled`?",
            "12:1: unknown key `memory_limit` in [service.api]; did you mean `memory_limit_mb`?",
            "18:1: unknown key `defualt` in [routing]; did you mean `default`?",
            "20:2: unknown key `servces` in the top-level table; did you mean `service`?",
        ],
    );
}

#[test]
fn names_must_be_dns_labels() {
    assert_errors(
        "bad-names.toml",
        &[
            "2:10: [service.API]: service name \"API\" may contain only a-z, 0-9 and '-' (found 'A')",
            "5:10: [service.my_app]: service name \"my_app\" may contain only a-z, 0-9 and '-' (found '_')",
            "8:10: [service.-edge]: service name \"-edge\" must not start or end with '-'",
            &format!(
                "11:10: [service.{long}]: service name \"{long}\" must be 1-63 characters long (it is 64)",
                long = "a".repeat(64)
            ),
            "18:16: `ok` in [instances]: instance name \"Bob\" may contain only a-z, 0-9 and '-' (found 'B')",
            "18:23: `ok` in [instances]: instance name \"carol.smith\" may contain only a-z, 0-9 and '-' (found '.')",
            "18:38: `ok` in [instances]: instance \"alice\" is listed twice",
            "21:1: `www.x` in [routing.subdomain]: subdomain name \"www.x\" may contain only a-z, 0-9 and '-' (found '.')",
        ],
    );
}

#[test]
fn port_range_must_be_ordered_unprivileged_and_large_enough() {
    assert_errors(
        "port-range-reversed.toml",
        &["2:1: `port_range` in [settings]: the low port 39999 is above the high port 30000"],
    );
    assert_errors(
        "port-range-privileged.toml",
        &["2:1: `port_range` in [settings]: ports below 1024 are reserved for system services; start at 1024 or above (got 80)"],
    );
    assert_errors(
        "port-range-too-small.toml",
        &["2:1: `port_range` in [settings]: 30000-30004 holds 5 ports; give instances at least 10"],
    );
}

#[test]
fn numbers_must_be_in_range() {
    assert_errors(
        "bad-ranges.toml",
        &[
            "3:1: `health_check_interval` in [settings]: must be at least 1 second",
            "4:1: `restart_window` in [settings]: must be at least 1 second",
            "5:1: `backoff_base_ms` in [settings]: 60000 is above backoff_max_ms (1000); the first delay cannot exceed the longest",
            "7:1: `uid_range` in [settings]: uids below 1000 belong to system accounts (got 0)",
            "11:1: `startup_timeout` in [service.api]: must be at least 1 second",
            "12:1: `stop_timeout` in [service.api]: must be at least 1 second",
            "13:1: `memory_limit_mb` in [service.api]: must be at least 1 (leave it out for no limit)",
            "14:1: `storage_quota_mb` in [service.api]: must be at least 1 (leave it out for no limit)",
            "15:1: `pids_max` in [service.api]: must be at least 1 (leave it out for no limit)",
            "16:1: `cpu_weight` in [service.api]: must be 1-10000 (100 is an even share), got 0",
            "20:1: `cpu_shares` in [service.web]: must be 1-10000 (100 is an even share), got 20000",
        ],
    );
    assert_errors(
        "uid-range-nobody.toml",
        &["2:1: `uid_range` in [settings]: 60000-70000 includes 65534, the nobody user"],
    );
}

#[test]
fn instances_and_routing_name_only_defined_services() {
    assert_errors(
        "missing-references.toml",
        &[
            "6:1: `apl` in [instances]: no service `apl` is defined; did you mean `api`?",
            "7:1: `billing` in [instances]: no service `billing` is defined; defined: `api`",
            "10:1: `default` in [routing]: target \"web\" names service `web`, which is not defined; defined: `api`",
            "13:1: `www` in [routing.subdomain]: target \"api:Main\": instance name \"Main\" may contain only a-z, 0-9 and '-' (found 'M')",
            "14:1: `docs` in [routing.subdomain]: target \"site\" names service `site`, which is not defined; defined: `api`",
            "18:1: `/v2` in [routing.path]: target \"apix\" names service `apix`, which is not defined; did you mean `api`?",
            "19:1: `legacy` in [routing.path]: path prefix \"legacy\" must start with '/'",
        ],
    );
}

#[test]
fn enum_values_list_the_allowed_ones() {
    assert_errors(
        "bad-enums.toml",
        &[
            "3:1: `sandbox_platform` in [settings]: unknown gVisor platform \"firecracker\"; expected one of `ptrace`, `kvm`, `systrap`",
            "6:15: `challenges` in [settings.tls]: unknown variant `dns-02`, expected one of `http-01`, `tls-alpn-01`, `dns-01`",
            "10:13: `isolation` in [service.api]: unknown variant `vm`, expected one of `process`, `namespace`, `sandbox`",
            "11:11: `restart` in [service.api]: unknown variant `sometimes`, expected one of `always`, `on-failure`, `never`",
        ],
    );
}

#[test]
fn dns01_keys_fit_together() {
    assert_errors(
        "bad-dns01.toml",
        &[
            "7:1: `wildcard` in [settings.tls]: wildcard certificates need the DNS-01 challenge: add \"dns-01\" to `challenges`",
            "7:22: `wildcard` in [settings.tls]: \"nope\" is not a service (no [service.nope])",
            "9:1: `dns_propagation_timeout` in [settings.tls]: must be at least 1 second",
            "10:1: `dns_update` in [settings.tls]: set either `dns_listen` or `dns_update`, not both",
            "10:41: `zone` in [settings.tls.dns_update]: host name \"bad_zone\" contains '_'; only a-z, 0-9, '-' and '.' are allowed",
            "10:60: `key_name` in [settings.tls.dns_update]: \"my key\" is not a TSIG key name",
            "10:125: `algorithm` in [settings.tls.dns_update]: unknown TSIG algorithm \"hmac-md5\"; expected one of `hmac-sha256`, `hmac-sha384`, `hmac-sha512`",
        ],
    );
    assert_errors(
        "bad-dns01-publisher.toml",
        &[
            "3:1: `challenges` in [settings.tls]: \"dns-01\" needs `dns_listen` (the built-in DNS responder) or `dns_update` (RFC 2136 updates to your DNS server)",
            "4:12: `wildcard` in [settings.tls]: invalid type: string \"yes\", expected true, false or a list of service names",
        ],
    );
}

#[test]
fn on_demand_limits_have_a_format() {
    assert_errors(
        "bad-on-demand.toml",
        &[
            "3:1: `on_demand_rate` in [settings.tls]: \"ten per hour\" is not a rate like \"10/h\" (orders per `m`inute, `h`our or `d`ay)",
            "4:1: `ask` in [settings.tls]: \"https://auth.example.com/allowed\" must be an http:// URL, e.g. \"http://127.0.0.1:9000/allowed\"",
        ],
    );
}

#[test]
fn every_type_error_is_reported_at_its_value() {
    assert_errors(
        "type-errors.toml",
        &[
            "3:10: `listen` in [settings]: invalid type: integer `8080`, expected a string or an array of strings",
            "4:22: `port_range` in [settings]: invalid type: string \"39999\", expected u16",
            "8:16: `idle_timeout` in [service.api]: invalid type: string \"x\", expected u64",
            "9:19: `storage_persist` in [service.api]: invalid type: string \"yes\", expected a boolean",
            "12:11: `WORKERS` in [service.api.env]: invalid type: integer `4`, expected a string",
            "15:7: `api` in [instances]: invalid type: string \"alice\", expected a sequence",
        ],
    );
}

#[test]
fn strings_that_mean_nothing_usable() {
    assert_errors(
        "bad-values.toml",
        &[
            "3:26: `domain` in [settings]: host name \"bad_domain.com\" contains '_'; only a-z, 0-9, '-' and '.' are allowed",
            "3:44: `domain` in [settings]: host name \"UPPER.example.com\" contains 'U'; only a-z, 0-9, '-' and '.' are allowed",
            "4:1: `api` in [settings]: \"unix:relative.sock\": a unix socket needs an absolute path, e.g. \"unix:/var/lib/tenement/tenement.sock\"",
            "7:1: `cert` in [settings.tls]: needs `key` beside it",
            "8:1: `acme_email` in [settings.tls]: \"not-an-email\" is not an email address",
            "9:1: `acme_directory` in [settings.tls]: \"http://acme.example.com/directory\" must be an https:// URL",
            "12:1: `command` in [service.empty]: must name the program to run, e.g. \"/usr/bin/python3 app.py\"",
            "15:1: `command` in [service.quotes]: cannot split command \"python3 'app.py\": missing closing quote",
            "19:1: `health` in [service.api]: \"health\" must be a path starting with '/', e.g. \"/health\"",
            "20:1: `user` in [service.api]: \"Not A User\" is neither a user name nor a numeric uid",
            "21:24: `env_inherit` in [service.api]: \"1BAD\" is not an environment variable name",
            "24:1: `PORT` in [service.api.env]: is set by tenement to the port it gives the instance",
            "25:1: `DB` in [service.api.env]: unknown placeholder `{tenant}`; known: {name}, {id}, {data_dir}, {port}; write {{ and }} for literal braces",
            "26:1: `BAD-NAME` in [service.api.env]: is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)",
            // A missing command is reported at its service's table.
            "28:10: `command` in [service.silent]: must name the program to run, e.g. \"/usr/bin/python3 app.py\"",
        ],
    );
}

#[test]
fn tables_must_be_tables_and_an_alias_stands_alone() {
    assert_errors(
        "table-shapes.toml",
        &[
            "2:1: `routing` in the top-level table: must be a table, written [routing]",
            "3:9: `b` in [service]: must be a table, written [service.b]",
            "4:13: `instances` in the top-level table: invalid type: sequence, expected a map",
            "9:1: `cpu_shares` in [service.a]: is another name for `cpu_weight`, which is set too; keep one",
        ],
    );
}

#[test]
fn syntax_errors_point_where_the_parser_stopped() {
    assert_errors(
        "syntax-error.toml",
        &["2:25: TOML syntax: invalid basic string, expected `\"`"],
    );
}

#[test]
fn the_full_example_and_the_bundled_one_pass() {
    assert_eq!(check("full.toml"), (true, Vec::new()));
    assert_eq!(check("minimal.toml"), (true, Vec::new()));
    for example in [
        "examples/notes/tenement.toml",
        "examples/held-node/tenement.toml",
    ] {
        let example = workspace_root().join(example);
        let out = tenement(
            &fixtures(),
            &["config", "check", "--config", example.to_str().unwrap()],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn an_empty_acme_directory_turns_acme_off_and_passes() {
    assert_eq!(check("acme-off.toml"), (true, Vec::new()));
    assert_errors(
        "acme-off-no-cert.toml",
        &["1:11: `cert` in [settings.tls]: ACME is off (acme_directory = \"\"), so TLS needs `cert` and `key`"],
    );
}

#[test]
fn show_prints_the_defaults_and_parses_back() {
    let out = tenement(&fixtures(), &["config", "show", "--config", "minimal.toml"]);
    assert!(out.status.success());
    let shown = String::from_utf8(out.stdout).unwrap();
    for line in [
        "[settings]",
        "data_dir = \"/var/lib/tenement\"",
        "listen = [\"127.0.0.1:8080\"]",
        "api = \"unix:/var/lib/tenement/tenement.sock\"",
        "port_range = [30000, 39999]",
        "backoff_max_ms = 30000",
        "[settings.tls]",
        "enabled = false",
        "[service.api]",
        "command = \"/usr/bin/python3 app.py\"",
        "isolation = \"process\"",
        "idle_timeout = 0",
        "startup_timeout = 10",
        "restart = \"on-failure\"",
        "storage_persist = true",
    ] {
        assert!(
            shown.lines().any(|l| l == line),
            "`{line}` missing from:\n{shown}"
        );
    }
    // docs/cli.md shows this very output.
    let docs = std::fs::read_to_string(workspace_root().join("docs/cli.md")).unwrap();
    let marker = "$ tenement config show --config tests/fixtures/config/minimal.toml\n";
    let documented = docs
        .split_once(marker)
        .expect("the example in docs/cli.md")
        .1;
    let documented = documented.split_once("```").unwrap().0;
    assert_eq!(
        documented, shown,
        "docs/cli.md's `config show` example is out of date"
    );
    // What `show` prints is itself a valid configuration.
    let scratch = Scratch::new("config-show");
    scratch.write("tenement.toml", &shown);
    let again = tenement(&scratch.path, &["config", "check"]);
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[test]
fn show_resolves_relative_paths_against_the_file() {
    let scratch = Scratch::new("config-relative");
    scratch.write(
        "conf/tenement.toml",
        "[settings]\ndata_dir = \"data\"\n[service.api]\ncommand = \"app\"\nworkdir = \"app\"\n",
    );
    let out = tenement(
        &scratch.path,
        &["config", "show", "--config", "conf/tenement.toml"],
    );
    assert!(out.status.success());
    let shown = String::from_utf8(out.stdout).unwrap();
    let conf = scratch.join("conf");
    assert!(shown.contains(&format!("data_dir = \"{}\"", conf.join("data").display())));
    assert!(shown.contains(&format!("workdir = \"{}\"", conf.join("app").display())));
}

#[test]
fn show_refuses_a_bad_file_with_the_same_errors() {
    let out = tenement(
        &fixtures(),
        &["config", "show", "--config", "unknown-key.toml"],
    );
    assert!(!out.status.success());
    assert_eq!(out.stdout, b"");
    assert!(String::from_utf8_lossy(&out.stderr)
        .starts_with("unknown-key.toml:7:1: unknown key `idel_timeout`"));
}

#[test]
fn egress_must_be_any_none_or_cidr_port_entries() {
    assert_errors(
        "bad-egress.toml",
        &[
            "3:10: `egress` in [service.a]: \"all\": expected \"any\", \"none\" or a list of \"cidr:port\" entries such as [\"10.0.0.0/8:5432\"]",
            "7:10: `egress` in [service.b]: \"10.0.0.1/8:80\": bits are set past the /8 prefix; did you mean 10.0.0.0/8:80?",
            "11:10: `egress` in [service.c]: \"2001:db8::/32:443\": not an IPv4 address (write IPv6 in brackets: \"[::1]:53\")",
        ],
    );
}
