//! Wake on request: a sleeping instance is started by the requests that need it, once.

mod proxy_support;

use std::time::Duration;

use http::{header::RETRY_AFTER, StatusCode};
use proxy_support::*;
use tenement::proxy::{BackendState, WakeError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_requests_to_a_sleeping_instance_share_one_start() {
    let stack = Stack::start(&config(""), &[sleeping("api:alice", 100)]).await;
    assert_eq!(stack.spawns("api:alice"), 0);
    let client = client();
    let requests = (0..500).map(|i| {
        let client = client.clone();
        let addr = stack.addr;
        tokio::spawn(async move {
            let host = if i % 2 == 0 {
                "alice.api.example.com"
            } else {
                "api.example.com"
            };
            let request = http::Request::get("/").body(Default::default()).unwrap();
            send_with(&client, addr, host, request).await
        })
    });
    let replies = futures_util::future::join_all(requests).await;
    let answered = replies
        .into_iter()
        .map(|reply| reply.expect("request task"))
        .filter(|reply| reply.status == StatusCode::OK && reply.body == "api:alice")
        .count();
    assert_eq!(answered, 500);
    assert_eq!(stack.spawns("api:alice"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_port_wakes_the_instance_again() {
    let stack = Stack::start(&config(""), &[running("api:alice", 100)]).await;
    assert_eq!(
        stack.get("alice.api.example.com", "/").await.body,
        "api:alice"
    );
    // Stopped behind the table's back: the proxy still has the old port.
    stack.kill("api:alice");
    stack
        .backends
        .slot("api:alice", |slot| slot.state = BackendState::Sleeping);
    let reply = stack.get("alice.api.example.com", "/").await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.body, "api:alice");
    assert_eq!(stack.spawns("api:alice"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_a_502_naming_the_instance() {
    let stack = Stack::start(&config(""), &[running("api:alice", 100)]).await;
    let port = stack.backends.slot("api:alice", |slot| slot.port.unwrap());
    stack.kill("api:alice");
    let reply = stack.get("alice.api.example.com", "/").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        reply.body,
        format!("instance api:alice refused the connection on 127.0.0.1:{port}\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_failures_become_503s() {
    let stack = Stack::start(
        &config(""),
        &[sleeping("api:slow", 100), sleeping("api:broken", 100)],
    )
    .await;
    stack.backends.slot("api:slow", |slot| {
        slot.wake_error = Some(WakeError::Timeout {
            after: Duration::from_secs(10),
        });
    });
    stack.backends.slot("api:broken", |slot| {
        slot.wake_error = Some(WakeError::Failed {
            state: "failed".into(),
            reason: "exited with status 3 five times".into(),
        });
    });
    let reply = stack.get("slow.api.example.com", "/").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.headers[RETRY_AFTER], "10");
    assert_eq!(reply.body, "instance api:slow was not ready within 10s\n");
    let reply = stack.get("broken.api.example.com", "/").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    // Failed stays failed until an operator acts: clients are asked to come back later.
    assert_eq!(reply.headers[RETRY_AFTER], "30");
    assert_eq!(
        reply.body,
        "instance api:broken is failed: exited with status 3 five times\n"
    );
}
