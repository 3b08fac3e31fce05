//! `{name}`, `{id}`, `{data_dir}` and `{port}` are filled in `command`, `args`, `workdir`
//! and `env` for each instance, as docs/configuration.md and docs/deployments.md say; an
//! unknown placeholder is refused by `config check` at its line.

mod api_support;

use api_support::{get_instance, Daemon};
use tenement_tests::{privileged, tenement_bin, workspace_root, Scratch};

/// Answers every request with its argv, working directory and two variables, as JSON.
const APP: &str = r#"import http.server, json, os, sys
port = int(os.environ["PORT"])
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"argv": sys.argv[1:], "cwd": os.getcwd(),
                           "url": os.environ.get("URL"), "data": os.environ["DATA_DIR"]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"#;

#[test]
fn unknown_placeholders_are_refused_with_their_line() {
    let fixtures = workspace_root().join("tests/fixtures/config");
    let out = std::process::Command::new(tenement_bin())
        .args(["config", "check", "--config", "bad-placeholders.toml"])
        .current_dir(&fixtures)
        .env_remove("TENEMENT_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let known = "known: {name}, {id}, {data_dir}, {port}; write {{ and }} for literal braces";
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "bad-placeholders.toml:2:1: `command` in [service.api]: unknown placeholder `{{version}}`; {known}\n\
             bad-placeholders.toml:3:26: `args` in [service.api]: unknown placeholder `{{tenant}}`; {known}\n\
             bad-placeholders.toml:4:1: `workdir` in [service.api]: unknown placeholder `{{Id}}`; {known}\n\
             3 errors\n"
        )
    );
}

#[test]
fn command_args_workdir_and_env_are_filled_per_instance() {
    if !privileged("command_args_workdir_and_env_are_filled_per_instance") {
        return;
    }
    let scratch = Scratch::new("placeholders");
    // One program per version, as docs/deployments.md suggests: /srv/api/{id}/app.py.
    let app = scratch.write("versions/v2/app.py", APP);
    let versions = app.parent().unwrap().parent().unwrap().to_path_buf();
    std::fs::create_dir_all(scratch.join("work/v2")).unwrap();
    let services = format!(
        r#"
[service.api]
command = "/usr/bin/python3 {versions}/{{id}}/app.py --port={{port}} --data {{data_dir}}/db"
workdir = "{work}/{{id}}"
env = {{ URL = "http://{{id}}.{{name}}.localhost:{{port}}" }}

[service.plain]
command = "/usr/bin/python3"
args = ["{versions}/v2/app.py", "{{name}}-{{id}}", "{{{{literal}}}}"]
workdir = "{{data_dir}}"
"#,
        versions = versions.display(),
        work = scratch.join("work").display(),
    );
    let mut daemon = Daemon::start_with(scratch, &services, &[]);

    let spawned = daemon.ok(&["--json", "spawn", "api:v2"]);
    let view: serde_json::Value = serde_json::from_str(&spawned).unwrap();
    let port = view["port"].as_u64().unwrap() as u16;
    let (status, body) = get_instance(port, "/").unwrap();
    assert_eq!(status, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    let data = seen["data"].as_str().unwrap();
    assert!(data.ends_with("/api/v2"), "{seen}");
    assert_eq!(
        seen["argv"],
        serde_json::json!([format!("--port={port}"), "--data", format!("{data}/db")])
    );
    assert_eq!(
        seen["cwd"],
        daemon.scratch.join("work/v2").display().to_string()
    );
    assert_eq!(seen["url"], format!("http://v2.api.localhost:{port}"));

    let spawned = daemon.ok(&["--json", "spawn", "plain:x"]);
    let view: serde_json::Value = serde_json::from_str(&spawned).unwrap();
    let port = view["port"].as_u64().unwrap() as u16;
    let (_, body) = get_instance(port, "/").unwrap();
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["argv"], serde_json::json!(["plain-x", "{literal}"]));
    assert_eq!(seen["cwd"], seen["data"]);
    daemon.stop();
}
