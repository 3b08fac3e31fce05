//! Who may do what: no token, a bad token, a revoked token, a tenant token on its own and on
//! another tenant's instance, an admin token; root on the unix socket without one.
//! Tests run as root, so tokens are exercised on the TCP listener (`settings.api`).

mod api_support;

use std::os::unix::{fs::PermissionsExt, process::CommandExt};

use api_support::{request, stderr, stdout, Daemon, Target};
use tenement_tests::{privileged, tenement_bin};

fn error_of(body: &str) -> String {
    let value: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    value["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {body}"))
        .to_string()
}

/// Asserts the status of `method path` with `token` on `target`, returning the body.
fn expect(
    target: &Target,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: &str,
    status: u16,
) -> String {
    let (got, answer) = request(target, method, path, token, body).unwrap();
    assert_eq!(got, status, "{method} {path} with {token:?}: {answer}");
    answer
}

#[test]
fn authorization_matrix() {
    if !privileged("authorization_matrix") {
        return;
    }
    let daemon = Daemon::start("api-auth");
    daemon.ok(&["spawn", "api:alice"]);
    daemon.ok(&["spawn", "api:bob"]);
    let tcp = daemon.tcp();
    let unix = daemon.unix();

    // The socket is root's alone.
    let mode = std::fs::metadata(&daemon.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Root on the unix socket: everything, no token. The secret goes to stdout alone.
    let admin = daemon.ok(&["token-gen"]).trim().to_string();
    assert!(
        admin.starts_with("tnm_") && admin.len() == 4 + 64,
        "{admin}"
    );
    let tenant = daemon
        .ok(&["token-gen", "--tenant", "api:alice"])
        .trim()
        .to_string();
    expect(&unix, None, "GET", "/v1/status", "", 200);
    expect(&unix, None, "GET", "/v1/tokens", "", 200);

    // /health is for load balancers: open.
    expect(&tcp, None, "GET", "/health", "", 200);

    // No token: 401 everywhere else.
    for (method, path) in [
        ("GET", "/v1/instances"),
        ("GET", "/v1/instances/api:alice"),
        ("GET", "/v1/status"),
        ("GET", "/metrics"),
        ("GET", "/v1/tokens"),
        ("POST", "/v1/instances/api:alice/stop"),
    ] {
        let body = expect(&tcp, None, method, path, "", 401);
        assert!(error_of(&body).contains("missing token"), "{body}");
    }
    let output = daemon.cli_tcp(None, &["ps"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("missing token"),
        "{}",
        stderr(&output)
    );

    // A token that was never issued, and a malformed header.
    let forged = format!("tnm_{}", "0".repeat(64));
    let body = expect(&tcp, Some(&forged), "GET", "/v1/instances", "", 401);
    assert!(error_of(&body).contains("invalid token"), "{body}");
    let (status, _) = request(&tcp, "GET", "/v1/instances", Some(""), "").unwrap();
    assert_eq!(status, 401);

    // Admin: everything, also on TCP.
    let listed = expect(&tcp, Some(&admin), "GET", "/v1/instances", "", 200);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    expect(&tcp, Some(&admin), "GET", "/v1/status", "", 200);
    let metrics = expect(&tcp, Some(&admin), "GET", "/metrics", "", 200);
    assert!(
        metrics.contains("tenement_instance_up{instance=\"api:alice\",service=\"api\"} 1"),
        "{metrics}"
    );
    let output = daemon.cli_tcp(Some(&admin), &["weight", "api:bob", "40"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(daemon.instance("api:bob").unwrap()["weight"], 40);

    // Tenant token: reads its own instance only.
    let alice = Some(tenant.as_str());
    let own = expect(&tcp, alice, "GET", "/v1/instances", "", 200);
    let own: serde_json::Value = serde_json::from_str(&own).unwrap();
    let names: Vec<&str> = own
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["api:alice"]);
    for path in [
        "/v1/instances/api:alice",
        "/v1/instances/api:alice/logs",
        "/v1/instances/api:alice/events",
        "/v1/instances/api:alice/stats",
        "/v1/stats",
    ] {
        expect(&tcp, alice, "GET", path, "", 200);
    }
    for path in [
        "/v1/instances/api:bob",
        "/v1/instances/api:bob/logs",
        "/v1/instances/api:bob/events",
        "/v1/instances/api:bob/stats",
        // Scope comes before existence: a tenant learns nothing about other names.
        "/v1/instances/api:nobody",
        "/v1/instances?service=nosuch",
        "/v1/services/nosuch/logs",
    ] {
        let body = expect(&tcp, alice, "GET", path, "", 403);
        assert!(error_of(&body).contains("scoped to api:alice"), "{body}");
    }
    for (method, path, body) in [
        ("POST", "/v1/instances/api:alice/stop", ""),
        ("POST", "/v1/instances/api:alice/restart", ""),
        ("PUT", "/v1/instances/api:alice/weight", r#"{"weight": 1}"#),
        ("POST", "/v1/instances", r#"{"instance": "api:carol"}"#),
        ("POST", "/v1/services/api/deploy", r#"{"version": "v9"}"#),
        (
            "POST",
            "/v1/services/api/route",
            r#"{"from": "alice", "to": "bob"}"#,
        ),
        ("GET", "/v1/tokens", ""),
        ("POST", "/v1/tokens", ""),
        ("DELETE", "/v1/tokens/1", ""),
        ("GET", "/v1/status", ""),
        ("GET", "/metrics", ""),
    ] {
        let answer = expect(&tcp, alice, method, path, body, 403);
        assert!(
            error_of(&answer).contains("admin token"),
            "{method} {path}: {answer}"
        );
    }
    let output = daemon.cli_tcp(alice, &["logs", "api:bob"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("cannot read api:bob"),
        "{}",
        stderr(&output)
    );
    let output = daemon.cli_tcp(alice, &["ps"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("api:alice") && !stdout(&output).contains("api:bob"));
    // Nothing the tenant tried changed anything.
    assert_eq!(daemon.instance("api:alice").unwrap()["state"], "running");
    assert!(daemon.instance("api:carol").is_none());

    // A token presented on the unix socket decides, even for root.
    expect(&unix, alice, "GET", "/v1/instances/api:bob", "", 403);

    // Listing shows ids and scopes, never a secret.
    let output = daemon.cli_tcp(Some(&admin), &["token-list"]);
    let listing = stdout(&output);
    assert!(
        listing.contains("tenant:api:alice") && listing.contains("admin"),
        "{listing}"
    );
    assert!(
        !listing.contains(&admin) && !listing.contains(&tenant),
        "{listing}"
    );
    let json = daemon.cli_tcp(Some(&admin), &["token-list", "--json"]);
    let tokens: serde_json::Value = serde_json::from_str(&stdout(&json)).unwrap();
    let tenant_id = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|token| token["scope"] == "tenant:api:alice")
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    assert!(!stdout(&json).contains("tnm_"));

    // Revoked: the same secret is refused from now on.
    let output = daemon.cli_tcp(Some(&admin), &["token-revoke", &tenant_id.to_string()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let body = expect(&tcp, alice, "GET", "/v1/instances/api:alice", "", 401);
    assert!(error_of(&body).contains("revoked"), "{body}");
    let output = daemon.cli_tcp(Some(&admin), &["token-revoke", &tenant_id.to_string()]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains(&format!("no token {tenant_id}")));

    // Another user cannot even open the socket; the CLI says why.
    let nobody = std::process::Command::new(tenement_bin())
        .args([
            "--server",
            &format!("unix:{}", daemon.socket.display()),
            "ps",
        ])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(!nobody.status.success());
    assert!(
        stderr(&nobody).contains("permission denied"),
        "{}",
        stderr(&nobody)
    );
}
