//! Deploys: a new version that never gets healthy is stopped and leaves the running
//! version's traffic as it was; a healthy one joins with weight 0 and `route` swaps the
//! weights in one step, and back again for a rollback.

mod api_support;

use api_support::{get_instance, stderr, stdout, Daemon};
use tenement_tests::privileged;

fn weight(daemon: &Daemon, name: &str) -> u64 {
    daemon
        .instance(name)
        .unwrap_or_else(|| panic!("{name} not listed"))["weight"]
        .as_u64()
        .unwrap()
}

#[test]
fn a_deploy_that_never_gets_healthy_changes_no_traffic() {
    if !privileged("a_deploy_that_never_gets_healthy_changes_no_traffic") {
        return;
    }
    let daemon = Daemon::start("api-deploy-broken");
    let deployed = daemon.ok(&["deploy", "api", "--version", "v1", "--weight", "100"]);
    assert!(deployed.contains("api:v1 is healthy"), "{deployed}");
    assert_eq!(weight(&daemon, "api:v1"), 100);

    // `broken` answers, but its health check fails: it never becomes healthy.
    let output = daemon.cli(&[
        "deploy",
        "api",
        "--version",
        "broken",
        "--weight",
        "50",
        "--timeout",
        "8",
    ]);
    assert!(
        !output.status.success(),
        "the broken deploy succeeded: {}",
        stdout(&output)
    );
    let message = stderr(&output);
    assert!(message.contains("deploy of api:broken failed"), "{message}");
    assert!(
        message.contains("traffic is unchanged (api:v1 100)"),
        "{message}"
    );

    let v1 = daemon.instance("api:v1").unwrap();
    assert_eq!(
        (v1["state"].as_str(), v1["weight"].as_u64()),
        (Some("running"), Some(100))
    );
    let broken = daemon.instance("api:broken").unwrap();
    assert_eq!(broken["weight"], 0, "{broken}");
    assert!(
        !matches!(
            broken["state"].as_str(),
            Some("running" | "starting" | "degraded" | "unhealthy")
        ),
        "the broken version still runs: {broken}"
    );
    let port = v1["port"].as_u64().unwrap() as u16;
    assert_eq!(get_instance(port, "/").unwrap().0, 200);
}

#[test]
fn blue_green_route_and_rollback() {
    if !privileged("blue_green_route_and_rollback") {
        return;
    }
    let daemon = Daemon::start("api-deploy-route");
    daemon.ok(&["deploy", "api", "--version", "v1", "--weight", "100"]);
    // Without --weight, the new version runs but takes no traffic until routed.
    let deployed = daemon.ok(&["deploy", "api", "--version", "v2"]);
    assert!(
        deployed.contains("weights: api:v1 100, api:v2 0"),
        "{deployed}"
    );

    let routed = daemon.ok(&["route", "api", "--from", "v1", "--to", "v2"]);
    assert_eq!(routed.trim(), "api weights: api:v1 0, api:v2 100");
    assert_eq!(
        (weight(&daemon, "api:v1"), weight(&daemon, "api:v2")),
        (0, 100)
    );

    // Rollback is the same swap the other way.
    let rolled_back = daemon.ok(&["route", "api", "--from", "api:v2", "--to", "api:v1"]);
    assert_eq!(rolled_back.trim(), "api weights: api:v1 100, api:v2 0");

    // Canary: a third version with a small share, then weights by hand.
    let canary = daemon.ok(&[
        "deploy",
        "api",
        "--version",
        "v3",
        "--weight",
        "10",
        "--json",
    ]);
    let canary: serde_json::Value = serde_json::from_str(&canary).unwrap();
    assert_eq!(canary["instance"]["weight"], 10);
    daemon.ok(&["weight", "api:v3", "0"]);
    assert_eq!(weight(&daemon, "api:v3"), 0);

    // Routing to an instance that is not running is refused and changes nothing.
    daemon.ok(&["stop", "api:v2"]);
    let output = daemon.cli(&["route", "api", "--from", "v1", "--to", "v2"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("api:v2 is stopped"),
        "{}",
        stderr(&output)
    );
    assert_eq!(weight(&daemon, "api:v1"), 100);
}
