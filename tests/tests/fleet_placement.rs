//! A fleet of 3 nodes over a 3-member etcd cluster: one owner per instance, any node
//! answers any host by forwarding once to the owner.

mod fleet_support;

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::Barrier,
    time::Duration,
};

use fleet_support::{get, until, Fleet};
use tenement_tests::privileged;

#[test]
fn three_hundred_first_requests_over_three_nodes_start_one_process_and_any_node_answers() {
    if !privileged("three_hundred_first_requests_over_three_nodes_start_one_process") {
        return;
    }
    let fleet = Fleet::start(5);
    let (ok, status) = fleet.status(0, false);
    assert!(ok, "{status}");
    for node in ["n1", "n2", "n3"] {
        assert!(status.contains(node), "{status}\n{}", fleet.log(0));
    }

    // 300 concurrent first requests for one sleeping tenant, spread over the 3 nodes.
    let barrier = Barrier::new(300);
    let replies: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..300)
            .map(|i| {
                let port = fleet.nodes[i % 3].port;
                let barrier = &barrier;
                scope.spawn(move || {
                    barrier.wait();
                    get(port, "alice.app.example.com", "/headers", "").unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for reply in &replies {
        assert_eq!(reply.status, 200, "{reply:?}");
        assert!(
            reply.body.contains("\"instance\": \"app:alice\""),
            "{reply:?}"
        );
    }
    assert_eq!(fleet.starts(), 1, "processes started fleet-wide");
    let owner = replies[0].header("tenement-node").unwrap();
    assert!(replies
        .iter()
        .all(|r| r.header("tenement-node").as_deref() == Some(owner.as_str())));
    let (_, json) = fleet.status(1, true);
    assert!(
        json.contains(&format!("\"app:alice\": \"{owner}\"")),
        "{json}"
    );

    // /metrics names the node and, once listed, every node and the placement.
    let placed = format!("tenement_fleet_placement{{instance=\"app:alice\",node=\"{owner}\"}} 1");
    until("the placement on /metrics", Duration::from_secs(30), || {
        let text = fleet.metrics(2);
        (text.contains(&placed) && text.contains("tenement_fleet_nodes 3")).then_some(())
    });
    let text = fleet.metrics(2);
    assert!(
        text.contains("tenement_fleet_node_info{node=\"n3\"} 1"),
        "{text}"
    );
    assert!(text.contains("tenement_fleet_lease_held 1"), "{text}");

    // A non-owner forwards once to the owner; the client's address is kept, the hop header
    // does not reach the instance.
    let other = fleet.nodes.iter().find(|n| n.name != owner).unwrap().port;
    let reply = get(other, "alice.app.example.com", "/headers", "").unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("tenement-node").unwrap(), owner);
    assert!(
        reply.body.contains("[\"x-forwarded-for\", \"127.0.0.1\"]"),
        "{}",
        reply.body
    );
    assert!(!reply.body.contains("tenement-fleet-hop"), "{}", reply.body);

    // A forged hop header is a client's header like any other: forwarded once, no loop.
    let reply = get(
        other,
        "alice.app.example.com",
        "/headers",
        "tenement-fleet-hop: forged\r\nX-Forwarded-For: 6.6.6.6\r\n",
    )
    .unwrap();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("tenement-node").unwrap(), owner);
    assert!(!reply.body.contains("6.6.6.6"), "{}", reply.body);
    assert_eq!(fleet.starts(), 1);

    // Streaming through the forward: a 4 MiB download arrives whole.
    let reply = get(
        other,
        "alice.app.example.com",
        "/download?bytes=4194304",
        "",
    )
    .unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body_len, 4 * 1024 * 1024);

    // A WebSocket through the forward: upgraded at the owner, frames echoed end to end.
    assert_eq!(
        websocket_echo(other, "alice.app.example.com", b"hello fleet"),
        b"hello fleet"
    );

    // Another tenant first asked on node 3 is placed there (the receiving node has room).
    let reply = until("bob placed", Duration::from_secs(30), || {
        get(fleet.nodes[2].port, "bob.app.example.com", "/headers", "")
            .ok()
            .filter(|r| r.status == 200)
    });
    assert_eq!(reply.header("tenement-node").unwrap(), "n3");
}

/// Opens a WebSocket to `/ws` through node port `port`, sends `text` in one masked frame
/// and returns the payload of the frame that comes back.
fn websocket_echo(port: u16, host: &str, text: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(text.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    stream.write_all(&frame).unwrap();
    let mut reply_head = [0u8; 2];
    stream.read_exact(&mut reply_head).unwrap();
    let mut payload = vec![0u8; usize::from(reply_head[1] & 0x7f)];
    stream.read_exact(&mut payload).unwrap();
    payload
}
