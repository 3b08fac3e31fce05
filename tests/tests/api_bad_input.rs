//! Bad input on every endpoint: unknown service, malformed instance names (`../x`, upper
//! case, 64+ characters), weight 101, empty bodies, wrong JSON types. Each gets a 4xx with a
//! message naming the problem, and nothing changes.

mod api_support;

use api_support::{request, stderr, Daemon};
use tenement_tests::privileged;

/// What must not change: every instance's name, state and weight, and the tokens.
fn snapshot(daemon: &Daemon) -> (Vec<(String, String, u64)>, String) {
    let instances = daemon
        .instances()
        .as_array()
        .unwrap()
        .iter()
        .map(|view| {
            (
                view["name"].as_str().unwrap().to_string(),
                view["state"].as_str().unwrap().to_string(),
                view["weight"].as_u64().unwrap(),
            )
        })
        .collect();
    let (_, tokens) = request(&daemon.unix(), "GET", "/v1/tokens", None, "").unwrap();
    (instances, tokens)
}

#[test]
fn bad_input_on_every_endpoint() {
    if !privileged("bad_input_on_every_endpoint") {
        return;
    }
    let daemon = Daemon::start("api-bad-input");
    daemon.ok(&["spawn", "api:alice"]);
    daemon.ok(&["spawn", "api:bob"]);
    daemon.ok(&["token-gen"]);
    let before = snapshot(&daemon);
    let long = "a".repeat(64);
    let long_name = format!("api:{long}");

    // (method, path, body, expected status, words the message must contain)
    let cases: Vec<(&str, String, String, u16, &str)> = vec![
        // spawn
        (
            "POST",
            "/v1/instances".into(),
            r#"{"instance": "nosuch:alice"}"#.into(),
            404,
            "no service \"nosuch\"",
        ),
        (
            "POST",
            "/v1/instances".into(),
            r#"{"instance": "../x"}"#.into(),
            422,
            "SERVICE:ID",
        ),
        (
            "POST",
            "/v1/instances".into(),
            r#"{"instance": "api:../x"}"#.into(),
            422,
            "may contain only",
        ),
        (
            "POST",
            "/v1/instances".into(),
            r#"{"instance": "api:Alice"}"#.into(),
            422,
            "may contain only",
        ),
        (
            "POST",
            "/v1/instances".into(),
            format!(r#"{{"instance": "{long_name}"}}"#),
            422,
            "1-63 characters",
        ),
        ("POST", "/v1/instances".into(), "".into(), 400, "empty"),
        (
            "POST",
            "/v1/instances".into(),
            "{not json".into(),
            400,
            "invalid request body",
        ),
        (
            "POST",
            "/v1/instances".into(),
            r#"{"instance": 5}"#.into(),
            422,
            "invalid type",
        ),
        (
            "POST",
            "/v1/instances".into(),
            r#"["api:carol"]"#.into(),
            422,
            "invalid type",
        ),
        (
            "POST",
            "/v1/instances".into(),
            r#"{"instance": "api:carol", "x": 1}"#.into(),
            422,
            "unknown field",
        ),
        (
            "POST",
            "/v1/instances".into(),
            "{}".into(),
            422,
            "missing field `instance`",
        ),
        // one instance, by path
        (
            "GET",
            "/v1/instances/..%2Fx".into(),
            "".into(),
            400,
            "SERVICE:ID",
        ),
        (
            "GET",
            "/v1/instances/api:..%2Fx".into(),
            "".into(),
            400,
            "may contain only",
        ),
        (
            "GET",
            "/v1/instances/api:Alice".into(),
            "".into(),
            400,
            "may contain only",
        ),
        (
            "GET",
            format!("/v1/instances/{long_name}"),
            "".into(),
            400,
            "1-63 characters",
        ),
        (
            "GET",
            "/v1/instances/nosuch:alice".into(),
            "".into(),
            404,
            "no service \"nosuch\"",
        ),
        (
            "GET",
            "/v1/instances/api:nobody".into(),
            "".into(),
            404,
            "no instance api:nobody",
        ),
        (
            "DELETE",
            "/v1/instances/api:alice".into(),
            "".into(),
            405,
            "use GET",
        ),
        // stop, restart
        (
            "POST",
            "/v1/instances/api:Alice/stop".into(),
            "".into(),
            400,
            "may contain only",
        ),
        (
            "POST",
            "/v1/instances/api:nobody/stop".into(),
            "".into(),
            404,
            "no instance api:nobody",
        ),
        (
            "POST",
            "/v1/instances/nosuch:a/stop".into(),
            "".into(),
            404,
            "no service",
        ),
        (
            "GET",
            "/v1/instances/api:alice/stop".into(),
            "".into(),
            405,
            "use POST",
        ),
        (
            "POST",
            format!("/v1/instances/{long_name}/restart"),
            "".into(),
            400,
            "1-63 characters",
        ),
        (
            "POST",
            "/v1/instances/api:nobody/restart".into(),
            "".into(),
            404,
            "no instance",
        ),
        // weight
        (
            "PUT",
            "/v1/instances/api:alice/weight".into(),
            r#"{"weight": 101}"#.into(),
            422,
            "weight 101 is out of range",
        ),
        (
            "PUT",
            "/v1/instances/api:alice/weight".into(),
            r#"{"weight": -1}"#.into(),
            422,
            "out of range",
        ),
        (
            "PUT",
            "/v1/instances/api:alice/weight".into(),
            r#"{"weight": "50"}"#.into(),
            422,
            "invalid type",
        ),
        (
            "PUT",
            "/v1/instances/api:alice/weight".into(),
            r#"{"weight": 1.5}"#.into(),
            422,
            "invalid type",
        ),
        (
            "PUT",
            "/v1/instances/api:alice/weight".into(),
            r#"{"weight": null}"#.into(),
            422,
            "invalid type",
        ),
        (
            "PUT",
            "/v1/instances/api:alice/weight".into(),
            "".into(),
            400,
            "empty",
        ),
        (
            "PUT",
            "/v1/instances/api:nobody/weight".into(),
            r#"{"weight": 5}"#.into(),
            404,
            "no instance",
        ),
        (
            "PUT",
            "/v1/instances/API:alice/weight".into(),
            r#"{"weight": 5}"#.into(),
            400,
            "may contain only",
        ),
        (
            "POST",
            "/v1/instances/api:alice/weight".into(),
            r#"{"weight": 5}"#.into(),
            405,
            "use PUT",
        ),
        // logs, events, stats
        (
            "GET",
            "/v1/instances/api:alice/logs?n=abc".into(),
            "".into(),
            400,
            "n=\"abc\"",
        ),
        (
            "GET",
            "/v1/instances/api:alice/logs?grep=(".into(),
            "".into(),
            400,
            "regular expression",
        ),
        (
            "GET",
            "/v1/instances/api:alice/logs?lines=5".into(),
            "".into(),
            400,
            "unknown query parameter \"lines\"",
        ),
        (
            "GET",
            "/v1/instances/api:alice/logs?follow=maybe".into(),
            "".into(),
            400,
            "true or false",
        ),
        (
            "GET",
            "/v1/instances/api:..%2Fx/logs".into(),
            "".into(),
            400,
            "may contain only",
        ),
        (
            "GET",
            "/v1/instances/nosuch:a/logs".into(),
            "".into(),
            404,
            "no service",
        ),
        (
            "GET",
            "/v1/instances/api:alice/events?limit=-1".into(),
            "".into(),
            400,
            "non-negative integer",
        ),
        (
            "GET",
            "/v1/instances/api:nobody/stats".into(),
            "".into(),
            404,
            "no instance",
        ),
        (
            "GET",
            "/v1/stats?follow=true&interval_ms=5".into(),
            "".into(),
            400,
            "interval_ms=5",
        ),
        // deploy
        (
            "POST",
            "/v1/services/nosuch/deploy".into(),
            r#"{"version": "v2"}"#.into(),
            404,
            "no service \"nosuch\"",
        ),
        (
            "POST",
            "/v1/services/Api/deploy".into(),
            r#"{"version": "v2"}"#.into(),
            400,
            "may contain only",
        ),
        (
            "POST",
            "/v1/services/api/deploy".into(),
            r#"{"version": "V2"}"#.into(),
            422,
            "may contain only",
        ),
        (
            "POST",
            "/v1/services/api/deploy".into(),
            format!(r#"{{"version": "{long}"}}"#),
            422,
            "1-63 characters",
        ),
        (
            "POST",
            "/v1/services/api/deploy".into(),
            r#"{"version": "v2", "weight": 101}"#.into(),
            422,
            "weight 101 is out of range",
        ),
        (
            "POST",
            "/v1/services/api/deploy".into(),
            r#"{"version": "v2", "timeout_secs": 0}"#.into(),
            422,
            "timeout_secs 0",
        ),
        (
            "POST",
            "/v1/services/api/deploy".into(),
            r#"{"version": 2}"#.into(),
            422,
            "invalid type",
        ),
        (
            "POST",
            "/v1/services/api/deploy".into(),
            "".into(),
            400,
            "empty",
        ),
        (
            "POST",
            "/v1/services/api/deploy".into(),
            r#"{"version": "alice"}"#.into(),
            409,
            "api:alice is already running",
        ),
        // route
        (
            "POST",
            "/v1/services/api/route".into(),
            r#"{"from": "alice", "to": "alice"}"#.into(),
            422,
            "two different instances",
        ),
        (
            "POST",
            "/v1/services/api/route".into(),
            r#"{"from": "alice", "to": "nobody"}"#.into(),
            404,
            "no instance api:nobody",
        ),
        (
            "POST",
            "/v1/services/api/route".into(),
            r#"{"from": "alice", "to": "other:bob"}"#.into(),
            422,
            "not an instance of api",
        ),
        (
            "POST",
            "/v1/services/api/route".into(),
            r#"{"from": "alice", "to": "Bob"}"#.into(),
            422,
            "may contain only",
        ),
        (
            "POST",
            "/v1/services/api/route".into(),
            r#"{"from": 1, "to": 2}"#.into(),
            422,
            "invalid type",
        ),
        (
            "POST",
            "/v1/services/api/route".into(),
            r#"{"from": "alice"}"#.into(),
            422,
            "missing field `to`",
        ),
        (
            "POST",
            "/v1/services/api/route".into(),
            "".into(),
            400,
            "empty",
        ),
        (
            "POST",
            "/v1/services/nosuch/route".into(),
            r#"{"from": "a", "to": "b"}"#.into(),
            404,
            "no service",
        ),
        // tokens
        (
            "POST",
            "/v1/tokens".into(),
            r#"{"tenant": "../x"}"#.into(),
            422,
            "SERVICE:ID",
        ),
        (
            "POST",
            "/v1/tokens".into(),
            r#"{"tenant": "nosuch:a"}"#.into(),
            404,
            "no service",
        ),
        (
            "POST",
            "/v1/tokens".into(),
            r#"{"tenant": 5}"#.into(),
            422,
            "invalid type",
        ),
        (
            "POST",
            "/v1/tokens".into(),
            r#"{"scope": "admin"}"#.into(),
            422,
            "unknown field `scope`",
        ),
        (
            "DELETE",
            "/v1/tokens/abc".into(),
            "".into(),
            400,
            "not a number",
        ),
        (
            "DELETE",
            "/v1/tokens/99999".into(),
            "".into(),
            404,
            "no token 99999",
        ),
        // the rest
        (
            "GET",
            "/v1/nothing".into(),
            "".into(),
            404,
            "no endpoint /v1/nothing",
        ),
        (
            "GET",
            "/v1/status?verbose=1".into(),
            "".into(),
            400,
            "unknown query parameter",
        ),
        ("POST", "/health".into(), "".into(), 405, "use GET"),
    ];
    let mut failures = Vec::new();
    for (method, path, body, status, words) in &cases {
        let (got, answer) = request(&daemon.unix(), method, path, None, body).unwrap();
        let message = serde_json::from_str::<serde_json::Value>(&answer)
            .ok()
            .and_then(|value| value["error"].as_str().map(str::to_string));
        match message {
            Some(message) if got == *status && message.contains(words) => {}
            _ => failures.push(format!(
                "{method} {path} {body:?}: expected {status} with {words:?}, got {got} {answer}"
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        snapshot(&daemon),
        before,
        "a refused request changed something"
    );

    // The CLI refuses the same things with the same messages.
    for (args, words) in [
        (
            vec!["weight", "api:alice", "101"],
            "weight 101 is out of range",
        ),
        (vec!["spawn", "../x"], "SERVICE:ID"),
        (vec!["spawn", "nosuch:alice"], "no service \"nosuch\""),
        (vec!["stop", "api:Alice"], "may contain only"),
        (
            vec!["deploy", "api", "--version", "v2", "--weight", "101"],
            "out of range",
        ),
        (
            vec!["route", "api", "--from", "alice", "--to", "nobody"],
            "no instance api:nobody",
        ),
        (
            vec!["logs", "api:alice", "--since", "yesterday-ish"],
            "--since",
        ),
        (vec!["token-gen", "--tenant", "API:x"], "--tenant"),
    ] {
        let output = daemon.cli(&args);
        assert!(!output.status.success(), "{args:?} succeeded");
        let message = stderr(&output);
        assert!(message.starts_with("error: "), "{args:?}: {message}");
        assert!(message.contains(words), "{args:?}: {message}");
        assert_eq!(
            message.lines().count(),
            1,
            "{args:?}: more than one line: {message}"
        );
    }
    assert_eq!(
        snapshot(&daemon),
        before,
        "a refused CLI command changed something"
    );
}
