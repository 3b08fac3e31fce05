//! Isolation levels, seen from inside the tenant: `process` runs as its own uid with a clean
//! environment; `namespace` sees a small PID, only its own processes, only its own data
//! directory, and is not root; `sandbox` runs under gVisor's runsc and answers on its port.

mod supervisor_common;

use supervisor_common::{get, python_app, Daemon};
use tenement_tests::privileged;

const LIST_DATA: &str = r#"
        elif self.path.startswith("/ls"):
            target = self.path[len("/ls"):]
            try:
                self.answer(200, sorted(os.listdir(target)))
            except OSError as err:
                self.answer(200, "error: " + err.strerror)"#;

fn report(port: u16) -> serde_json::Value {
    let (status, body) = get(port, "/").expect("GET /");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn listing(port: u16, dir: &std::path::Path) -> serde_json::Value {
    let (_, body) = get(port, &format!("/ls{}", dir.display())).expect("GET /ls");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn namespace_instance_sees_only_itself() {
    if !privileged("namespace_instance_sees_only_itself") {
        return;
    }
    let mut daemon = Daemon::new("ns", "");
    let app = daemon.app("app.py", &python_app(LIST_DATA));
    daemon.configure(&format!(
        r#"
[service.ns]
command = "/usr/bin/python3 {app}"
isolation = "namespace"
health = "/health"

[service.plain]
command = "/usr/bin/python3 {app}"

[instances]
ns = ["alice"]
plain = ["bob"]
"#,
        app = app.display()
    ));
    daemon.start();
    let alice = daemon.wait_ready("ns:alice", 1);
    let bob = daemon.wait_ready("plain:bob", 1);

    let inside = report(alice);
    let pid = inside["pid"].as_u64().unwrap();
    assert!(
        pid <= 3,
        "the app is PID {pid} in its namespace, expected a small PID"
    );
    let procs: Vec<u64> = inside["procs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    assert!(
        procs.len() <= 3 && procs.contains(&1) && procs.contains(&pid),
        "/proc inside shows more than the namespace's init and app: {procs:?}"
    );
    assert!(
        !procs.contains(&u64::from(daemon.pid())) || daemon.pid() <= 3,
        "tenement's own pid is visible inside"
    );
    let uid = inside["uid"].as_u64().unwrap();
    assert_ne!(uid, 0, "a namespaced tenant must not run as root");
    assert_eq!(inside["hostname"], "ns-alice");

    // Another tenant's data directory: not even there. The data root shows only its own.
    let bob_dir = daemon.data_dir.join("plain/bob");
    assert!(bob_dir.is_dir(), "bob's data directory exists on the host");
    let seen = listing(alice, &bob_dir);
    assert!(
        seen.as_str().is_some_and(|e| e.starts_with("error")),
        "alice can list bob's data directory: {seen}"
    );
    assert_eq!(listing(alice, &daemon.data_dir), serde_json::json!(["ns"]));
    assert_eq!(
        listing(alice, &daemon.data_dir.join("ns")),
        serde_json::json!(["alice"])
    );
    // Its own /tmp: the host's files there are not visible.
    let tmp = listing(alice, std::path::Path::new("/tmp"));
    let top = daemon.scratch.path.file_name().unwrap().to_str().unwrap();
    assert_eq!(
        tmp,
        serde_json::json!([top]),
        "only the paths it needs are under /tmp"
    );

    // The process-level neighbour: its own uid, not root, cannot read alice's directory.
    let outside = report(bob);
    let bob_uid = outside["uid"].as_u64().unwrap();
    assert!(
        bob_uid != 0 && bob_uid != uid,
        "each instance has its own uid"
    );
    let alice_dir = daemon.data_dir.join("ns/alice");
    let refused = listing(bob, &alice_dir);
    assert!(
        refused
            .as_str()
            .is_some_and(|e| e.contains("Permission denied")),
        "bob can list alice's data directory: {refused}"
    );
    daemon.stop();
}

#[test]
fn tenants_get_a_clean_environment_and_their_own_uid() {
    if !privileged("tenants_get_a_clean_environment_and_their_own_uid") {
        return;
    }
    let mut daemon = Daemon::new("env", "");
    let app = daemon.app("app.py", &python_app(""));
    daemon.configure(&format!(
        r#"
[service.web]
command = "/usr/bin/python3 {app}"
env_inherit = ["TENEMENT_TEST_SHARED"]
[service.web.env]
GREETING = "hello {{id}} on {{port}}"

[instances]
web = ["carol"]
"#,
        app = app.display()
    ));
    daemon.env("TENEMENT_TEST_SHARED", "shared-value");
    daemon.env("TENEMENT_TEST_SECRET", "secret-value");
    daemon.start();
    let port = daemon.wait_ready("web:carol", 1);
    let report = report(port);
    let env = report["env"].as_object().unwrap();
    assert_eq!(env["PORT"], port.to_string());
    assert_eq!(env["TENEMENT_INSTANCE"], "web:carol");
    assert_eq!(
        env["DATA_DIR"],
        daemon.data_dir.join("web/carol").display().to_string()
    );
    assert_eq!(
        env["PATH"],
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    );
    assert_eq!(env["GREETING"], format!("hello carol on {port}"));
    assert_eq!(env["TENEMENT_TEST_SHARED"], "shared-value");
    assert!(!env.contains_key("TENEMENT_TEST_SECRET"), "leaked: {env:?}");
    assert!(!env.contains_key("HOME") || env["HOME"] != "/root");

    let uid = report["uid"].as_u64().unwrap();
    assert!((61000..=64999).contains(&uid), "dynamic uid {uid}");
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(daemon.data_dir.join("web/carol")).unwrap();
    assert_eq!(
        u64::from(meta.uid()),
        uid,
        "the data directory belongs to the tenant"
    );
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);

    // The same uid after a restart of tenement.
    daemon.stop();
    daemon.start();
    let port = daemon.wait_ready("web:carol", 2);
    assert_eq!(self::report(port)["uid"].as_u64().unwrap(), uid);
    daemon.stop();
}

#[test]
fn a_program_the_tenant_may_not_execute_is_a_clear_spawn_error() {
    if !privileged("a_program_the_tenant_may_not_execute_is_a_clear_spawn_error") {
        return;
    }
    let mut daemon = Daemon::new("noexec", "");
    let app = daemon.app("private.sh", "#!/bin/sh\nexec sleep 1000\n");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o700)).unwrap();
    daemon.configure(&format!(
        "[service.web]\ncommand = \"{}\"\n\n[instances]\nweb = [\"dave\"]\n",
        app.display()
    ));
    daemon.start();
    let events = daemon.wait_events("web:dave", "a failed start", |events| {
        events
            .iter()
            .any(|e| e.kind == tenement::store::EventKind::Failed)
    });
    let failed = events.last().unwrap();
    assert!(
        failed.detail.contains(&app.display().to_string()) && failed.detail.contains("uid 6"),
        "the error names the path and the uid: {}",
        failed.detail
    );
    daemon.stop();
}

#[test]
fn sandbox_instance_runs_under_runsc() {
    if !privileged("sandbox_instance_runs_under_runsc") {
        return;
    }
    if tenement::supervisor::find_runsc().is_err() {
        let status = std::process::Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends", "runsc"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .expect("running apt-get");
        assert!(status.success(), "installing runsc failed");
    }
    let mut daemon = Daemon::new("sandbox", "sandbox_platform = \"ptrace\"");
    let app = daemon.app("app.py", &python_app(LIST_DATA));
    daemon.configure(&format!(
        r#"
[service.boxed]
command = "/usr/bin/python3 {app}"
isolation = "sandbox"
health = "/health"
startup_timeout = 60

[service.plain]
command = "/usr/bin/python3 {app}"

[instances]
boxed = ["erin"]
plain = ["frank"]
"#,
        app = app.display()
    ));
    daemon.start();
    let port = daemon.wait_ready("boxed:erin", 1);
    daemon.wait_ready("plain:frank", 1);
    let inside = report(port);
    assert_eq!(inside["env"]["TENEMENT_INSTANCE"], "boxed:erin");
    // gVisor's own kernel: the sandbox's processes only.
    let procs = inside["procs"].as_array().unwrap();
    assert!(procs.len() <= 3, "sandbox /proc: {procs:?}");
    // runsc really runs, as the tenant's uid, in the instance's cgroup.
    let runsc: Vec<u32> = supervisor_common::processes_mentioning("runsc")
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                .unwrap_or_default()
                .contains("boxed_erin")
        })
        .collect();
    assert!(!runsc.is_empty(), "no runsc process for boxed:erin");
    let status = std::fs::read_to_string(format!("/proc/{}/status", runsc[0])).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        !uid_line.contains("\t0\t"),
        "runsc runs as root: {uid_line}"
    );
    let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", runsc[0])).unwrap();
    assert!(
        cgroup.contains("boxed_erin"),
        "runsc outside its cgroup: {cgroup}"
    );
    // The neighbour's data directory is hidden inside the sandbox too.
    let seen = listing(port, &daemon.data_dir.join("plain/frank"));
    assert!(
        seen.as_str().is_some_and(|e| e.starts_with("error")),
        "the sandbox can list frank's data directory: {seen}"
    );
    daemon.stop();
    assert!(daemon.instance_cgroups().is_empty());
}

#[test]
fn user_names_a_system_user_and_root_only_when_asked() {
    if !privileged("user_names_a_system_user_and_root_only_when_asked") {
        return;
    }
    let mut daemon = Daemon::new("users", "");
    let app = daemon.app("app.py", &python_app(""));
    daemon.configure(&format!(
        r#"
[service.nobody]
command = "/usr/bin/python3 {app}"
user = "nobody"

[service.admin]
command = "/usr/bin/python3 {app}"
user = "root"

[instances]
nobody = ["j"]
admin = ["k"]
"#,
        app = app.display()
    ));
    daemon.start();
    let nobody = report(daemon.wait_ready("nobody:j", 1));
    assert_eq!(nobody["uid"], 65534);
    let admin = report(daemon.wait_ready("admin:k", 1));
    assert_eq!(
        admin["uid"], 0,
        "user = \"root\" is honoured when asked for"
    );
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(daemon.data_dir.join("nobody/j"))
        .unwrap()
        .uid();
    assert_eq!(owner, 65534);
    daemon.stop();
}
