//! Host and path routing through the proxy to real instances, and the errors a client sees
//! when a host leads nowhere.

mod proxy_support;

use std::collections::BTreeMap;

use http::{header::ACCEPT, Request, StatusCode};
use http_body_util::Full;
use proxy_support::*;

fn routing_config() -> String {
    config(
        r#"
[routing]
default = "web:main"

[routing.subdomain]
www = "web"
pinned = "api:bob"

[routing.path]
"/api" = "api"
"/api/admin" = "api:carol"
"#,
    )
}

fn instances() -> Vec<Spec> {
    vec![
        running("api:alice", 80),
        running("api:bob", 20),
        running("api:carol", 0),
        running("web:main", 100),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_and_paths_reach_their_instances() {
    let stack = Stack::start(&routing_config(), &instances()).await;
    let cases = [
        ("alice.api.example.com", "/", "api:alice"),
        ("bob.api.example.com", "/", "api:bob"),
        // Weight 0 takes no service traffic but stays reachable by name.
        ("carol.api.example.com", "/", "api:carol"),
        // Case, port and the trailing dot of a fully qualified name do not matter.
        ("ALICE.Api.Example.COM.:8080", "/", "api:alice"),
        ("bob.api.example.com.", "/", "api:bob"),
        ("main.web.example.com", "/", "web:main"),
        // The bare domain: the longest path prefix wins, else the default.
        ("example.com", "/", "web:main"),
        ("example.com", "/apix", "web:main"),
        ("example.com", "/api/admin/users", "api:carol"),
        ("example.com:8080", "/api/admin", "api:carol"),
        // Subdomain overrides.
        ("www.example.com", "/", "web:main"),
        ("pinned.example.com", "/", "api:bob"),
    ];
    for (host, path, instance) in cases {
        let reply = stack.get(host, path).await;
        assert_eq!(reply.status, StatusCode::OK, "{host}{path}: {reply:?}");
        assert_eq!(reply.body, instance, "{host}{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_split_service_traffic_80_20() {
    let stack = Stack::start(&routing_config(), &instances()).await;
    let client = client();
    let mut counts = BTreeMap::<String, usize>::new();
    for _ in 0..1000 {
        let request = Request::get("/").body(Full::default()).unwrap();
        let reply = send_with(&client, stack.addr, "api.example.com", request).await;
        assert_eq!(reply.status, StatusCode::OK);
        *counts.entry(reply.body).or_default() += 1;
    }
    let alice = counts.get("api:alice").copied().unwrap_or(0) as f64 / 10.0;
    let bob = counts.get("api:bob").copied().unwrap_or(0) as f64 / 10.0;
    assert!(
        (alice - 80.0).abs() <= 2.0,
        "api:alice got {alice}% ({counts:?})"
    );
    assert!((bob - 20.0).abs() <= 2.0, "api:bob got {bob}% ({counts:?})");
    assert!(
        !counts.contains_key("api:carol"),
        "weight 0 took traffic: {counts:?}"
    );

    // A new weight applies from the next table on.
    stack.set_weight("api:carol", 100);
    stack.set_weight("api:alice", 0);
    stack.set_weight("api:bob", 0);
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let reply = send_with(
            &client,
            stack.addr,
            "api.example.com",
            Request::get("/").body(Full::default()).unwrap(),
        )
        .await;
        if reply.body == "api:carol" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "weights never applied"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_requests_get_clear_errors() {
    let mut specs = instances();
    specs.push(failed("api:dave"));
    let stack = Stack::start(&routing_config(), &specs).await;

    // No Host header at all (HTTP/1.0 allows leaving it out).
    let answer = raw(stack.addr, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 400"), "{answer}");
    assert!(answer.contains("no Host header"), "{answer}");

    let reply = stack.get("nobody.api.example.com", "/").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.body, "no route for host nobody.api.example.com\n");
    let reply = stack.get("Elsewhere.ORG:8080", "/").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(reply.body.contains("elsewhere.org"), "{reply:?}");

    let reply = stack.get("dave.api.example.com", "/").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.body, "instance api:dave is failed\n");
    // A failed instance takes no share of its service's traffic.
    for _ in 0..20 {
        assert_ne!(stack.get("api.example.com", "/").await.body, "api:dave");
    }

    // JSON for clients that ask for it.
    let request = Request::get("/")
        .header(ACCEPT, "application/json")
        .body(Full::default())
        .unwrap();
    let reply = send(stack.addr, "nobody.example.com", request).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.headers["content-type"], "application/json");
    assert_eq!(
        reply.json()["error"],
        "no route for host nobody.example.com"
    );
    assert_eq!(reply.json()["status"], 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_without_weighted_instances_is_unavailable() {
    let stack = Stack::start(&config(""), &[running("api:alice", 0)]).await;
    let reply = stack.get("api.example.com", "/").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        reply
            .body
            .contains("service api has no instance taking traffic"),
        "{reply:?}"
    );
    // The bare domain has no default here.
    assert_eq!(
        stack.get("example.com", "/").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        stack.get("alice.api.example.com", "/").await.body,
        "api:alice"
    );
}
