//! The web dashboard over plain HTTP, against a real `tenement serve` with real instances:
//! sign-in, cookie flags, CSRF, tenant scoping, the refused-token limit, the event stream,
//! escaping, and the audit log. The browser tests (`dashboard_browser.rs`) drive Chromium.

mod api_support;
mod dashboard_support;

use std::time::Duration;

use api_support::{request, Daemon};
use dashboard_support::{csrf_field, events, fetch, sign_in};
use tenement_tests::{privileged, Scratch};

/// Two configured tenants, `api:alice` and `api:bob`, both running.
fn daemon(label: &str) -> Daemon {
    daemon_with(label, api_support::APP)
}

/// The same with another app.
fn daemon_with(label: &str, app: &str) -> Daemon {
    let scratch = Scratch::new(label);
    let app = scratch.write("app.py", app);
    let services = format!(
        "{}\n[instances]\napi = [\"alice\", \"bob\"]\n",
        api_support::api_service(&app)
    );
    let mut daemon = Daemon::start_with(scratch, &services, &[]);
    daemon.wait_until("both tenants run", |daemon| {
        ["api:alice", "api:bob"].iter().all(|name| {
            daemon
                .instance(name)
                .is_some_and(|view| view["state"] == "running")
        })
    });
    daemon
}

fn token(daemon: &Daemon, args: &[&str]) -> String {
    let mut all = vec!["token-gen"];
    all.extend_from_slice(args);
    daemon.ok(&all).trim().to_string()
}

#[test]
fn without_a_token_the_dashboard_answers_the_sign_in_page() {
    if !privileged("without_a_token_the_dashboard_answers_the_sign_in_page") {
        return;
    }
    let daemon = daemon("dash-anon");
    let port = daemon.api_port;
    let overview = fetch(port, "GET", "/dashboard", &[], "");
    assert_eq!(overview.status, 303);
    assert_eq!(overview.header("location"), Some("/dashboard/sign-in"));
    let page = fetch(port, "GET", "/dashboard/sign-in", &[], "");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<form") && page.body.contains("name=\"token\""));
    assert!(!page.body.contains("api:alice"), "{}", page.body);
    // The API answers 401, and so do the dashboard's stream and actions.
    let (status, _) = request(&daemon.tcp(), "GET", "/v1/instances", None, "").unwrap();
    assert_eq!(status, 401);
    assert_eq!(fetch(port, "GET", "/dashboard/events", &[], "").status, 401);
    let stop = fetch(
        port,
        "POST",
        "/dashboard/instances/api:alice/stop",
        &[],
        "csrf=x",
    );
    assert_eq!(stop.status, 401);
    assert_eq!(daemon.instance("api:alice").unwrap()["state"], "running");
    // The unix socket's root credentials do not sign anyone in to the dashboard (`tenement
    // dashboard` forwards browsers through that socket).
    let (status, body) = request(&daemon.unix(), "GET", "/dashboard", None, "").unwrap();
    assert_eq!(status, 303, "{body}");
}

#[test]
fn sign_in_sets_a_strict_http_only_cookie() {
    if !privileged("sign_in_sets_a_strict_http_only_cookie") {
        return;
    }
    let daemon = daemon("dash-cookie");
    let port = daemon.api_port;
    let admin = token(&daemon, &["--description", "ops laptop"]);
    let page = fetch(port, "GET", "/dashboard/sign-in", &[], "");
    let pre = page.cookie("tenement_sign_in").unwrap();
    let csrf = csrf_field(&page.body);
    let form = format!("csrf={csrf}&token={admin}");
    let cookie = format!("tenement_sign_in={pre}");

    // Without the sign-in form's CSRF token (or its cookie), nobody is signed in.
    let refused = fetch(
        port,
        "POST",
        "/dashboard/sign-in",
        &[("Cookie", &cookie)],
        &format!("token={admin}"),
    );
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.cookie("tenement_session").is_none());
    let refused = fetch(port, "POST", "/dashboard/sign-in", &[], &form);
    assert_eq!(refused.status, 403, "{}", refused.body);

    let answer = fetch(
        port,
        "POST",
        "/dashboard/sign-in",
        &[("Cookie", &cookie)],
        &form,
    );
    assert_eq!(answer.status, 303, "{}", answer.body);
    assert_eq!(answer.header("location"), Some("/dashboard"));
    let set = answer
        .set_cookies()
        .into_iter()
        .find(|cookie| cookie.starts_with("tenement_session="))
        .expect("a session cookie")
        .to_string();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/dashboard"] {
        assert!(set.contains(flag), "{flag} missing in {set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP, yet Secure: {set}");
    // Behind a TLS-terminating proxy the cookie is Secure.
    let page = fetch(
        port,
        "GET",
        "/dashboard/sign-in",
        &[("X-Forwarded-Proto", "https")],
        "",
    );
    let secure = page.set_cookies().join("\n");
    assert!(secure.contains("; Secure"), "{secure}");

    // A wrong token is refused with the form again.
    let wrong = fetch(
        port,
        "POST",
        "/dashboard/sign-in",
        &[("Cookie", &cookie)],
        &format!("csrf={csrf}&token=tnm_wrong"),
    );
    assert_eq!(wrong.status, 401);
    assert!(wrong.body.contains("refused"), "{}", wrong.body);

    // Signing out ends the session.
    let (session, csrf) = sign_in(port, &admin);
    let out = fetch(
        port,
        "POST",
        "/dashboard/sign-out",
        &[("Cookie", &session)],
        &format!("csrf={csrf}"),
    );
    assert_eq!(out.status, 303);
    assert_eq!(
        fetch(port, "GET", "/dashboard", &[("Cookie", &session)], "").status,
        303
    );
}

#[test]
fn actions_need_the_csrf_token_and_are_audited() {
    if !privileged("actions_need_the_csrf_token_and_are_audited") {
        return;
    }
    let daemon = daemon("dash-csrf");
    let port = daemon.api_port;
    let admin = token(&daemon, &["--description", "ci deploys"]);
    let (session, csrf) = sign_in(port, &admin);
    let cookie = [("Cookie", session.as_str())];

    for form in ["", "csrf=", "csrf=0000"] {
        let refused = fetch(
            port,
            "POST",
            "/dashboard/instances/api:alice/stop",
            &cookie,
            form,
        );
        assert_eq!(refused.status, 403, "{form}: {}", refused.body);
        assert!(refused.body.contains("CSRF"), "{}", refused.body);
    }
    assert_eq!(daemon.instance("api:alice").unwrap()["state"], "running");

    let stopped = fetch(
        port,
        "POST",
        "/dashboard/instances/api:alice/stop",
        &cookie,
        &format!("csrf={csrf}&return=/dashboard"),
    );
    assert_eq!(stopped.status, 303, "{}", stopped.body);
    assert_eq!(stopped.header("location"), Some("/dashboard"));
    assert_eq!(daemon.instance("api:alice").unwrap()["state"], "stopped");
    let ps = daemon.ok(&["ps", "--json"]);
    assert!(ps.contains("\"stopped\""), "{ps}");

    // Weight, with a bad value refused.
    let bad = fetch(
        port,
        "POST",
        "/dashboard/instances/api:bob/weight",
        &cookie,
        &format!("csrf={csrf}&weight=300"),
    );
    assert_eq!(bad.status, 422, "{}", bad.body);
    let set = fetch(
        port,
        "POST",
        "/dashboard/instances/api:bob/weight",
        &cookie,
        &format!("csrf={csrf}&weight=40"),
    );
    assert_eq!(set.status, 303, "{}", set.body);
    assert_eq!(daemon.instance("api:bob").unwrap()["weight"], 40);

    // The audit log (API and page) names the token by its description.
    let (status, body) = request(&daemon.unix(), "GET", "/v1/audit", None, "").unwrap();
    assert_eq!(status, 200, "{body}");
    let log: serde_json::Value = serde_json::from_str(&body).unwrap();
    let stop = log
        .as_array()
        .unwrap()
        .iter()
        .find(|entry| entry["action"] == "stop")
        .unwrap_or_else(|| panic!("no stop in {log}"));
    assert_eq!(stop["target"], "api:alice");
    assert_eq!(stop["status"], 200);
    assert!(
        stop["who"].as_str().unwrap().contains("ci deploys"),
        "{stop}"
    );
    assert!(
        stop["address"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{stop}"
    );
    assert!(log
        .as_array()
        .unwrap()
        .iter()
        .any(|entry| entry["action"] == "weight" && entry["status"] == 422));
    let page = fetch(port, "GET", "/dashboard/audit", &cookie, "");
    assert!(
        page.body.contains("ci deploys") && page.body.contains("api:alice"),
        "{}",
        page.body
    );
    // token-list shows the description too.
    assert!(daemon.ok(&["token-list"]).contains("ci deploys"));
}

#[test]
fn tenant_tokens_see_only_their_own_instance() {
    if !privileged("tenant_tokens_see_only_their_own_instance") {
        return;
    }
    let daemon = daemon("dash-tenant");
    let port = daemon.api_port;
    let alice = token(&daemon, &["--tenant", "api:alice"]);
    let (session, csrf) = sign_in(port, &alice);
    let cookie = [("Cookie", session.as_str())];
    let overview = fetch(port, "GET", "/dashboard", &cookie, "");
    assert!(
        overview.body.contains("data-name=\"api:alice\""),
        "{}",
        overview.body
    );
    assert!(!overview.body.contains("api:bob"), "{}", overview.body);
    assert!(
        !overview.body.contains("/stop\""),
        "a tenant gets no stop button"
    );
    assert_eq!(
        fetch(port, "GET", "/dashboard/instances/api:bob", &cookie, "").status,
        403
    );
    assert_eq!(
        fetch(port, "GET", "/dashboard/audit", &cookie, "").status,
        403
    );
    let stop = fetch(
        port,
        "POST",
        "/dashboard/instances/api:alice/stop",
        &cookie,
        &format!("csrf={csrf}"),
    );
    assert_eq!(stop.status, 403, "{}", stop.body);
    assert_eq!(daemon.instance("api:alice").unwrap()["state"], "running");
    // The same with a bearer header instead of the cookie.
    let bearer = format!("Bearer {alice}");
    let page = fetch(port, "GET", "/dashboard", &[("Authorization", &bearer)], "");
    assert!(page.body.contains("api:alice") && !page.body.contains("api:bob"));
    // Revoking the token ends the session.
    let id = daemon.ok(&["token-list", "--json"]);
    let tokens: serde_json::Value = serde_json::from_str(&id).unwrap();
    let id = tokens[0]["id"].to_string();
    daemon.ok(&["token-revoke", &id]);
    assert_eq!(fetch(port, "GET", "/dashboard", &cookie, "").status, 303);
}

#[test]
fn refused_tokens_are_counted_and_rate_limited() {
    if !privileged("refused_tokens_are_counted_and_rate_limited") {
        return;
    }
    let daemon = daemon("dash-limit");
    let port = daemon.api_port;
    for attempt in 0..10 {
        let answer = fetch(
            port,
            "GET",
            "/dashboard",
            &[("Authorization", "Bearer tnm_guess")],
            "",
        );
        assert_eq!(answer.status, 401, "attempt {attempt}");
    }
    // Past the limit, even the API answers 429 to this address.
    let limited = fetch(
        port,
        "GET",
        "/dashboard",
        &[("Authorization", "Bearer tnm_guess")],
        "",
    );
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert!(limited.header("retry-after").is_some());
    let (status, body) =
        request(&daemon.tcp(), "GET", "/v1/instances", Some("tnm_guess"), "").unwrap();
    assert_eq!(status, 429, "{body}");
    // Root on the unix socket is another address and still gets in, and sees the count.
    let (status, metrics) = request(&daemon.unix(), "GET", "/metrics", None, "").unwrap();
    assert_eq!(status, 200);
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
            .parse()
            .unwrap()
    };
    assert_eq!(value("tenement_api_auth_refused_total"), 10.0);
    assert!(value("tenement_api_auth_throttled_total") >= 2.0);
    // Bad tokens on the unix socket are limited too, but never lock out root without a
    // token: it is known by its credentials, not by a guess.
    let guess = || {
        request(
            &daemon.unix(),
            "GET",
            "/v1/instances",
            Some("tnm_guess"),
            "",
        )
        .unwrap()
        .0
    };
    let statuses: Vec<u16> = (0..11).map(|_| guess()).collect();
    assert_eq!(statuses[..10], [401; 10]);
    assert_eq!(statuses[10], 429);
    let (status, body) = request(&daemon.unix(), "GET", "/v1/instances", None, "").unwrap();
    assert_eq!(status, 200, "{body}");
}

#[test]
fn the_event_stream_is_server_sent_events_with_the_rows() {
    if !privileged("the_event_stream_is_server_sent_events_with_the_rows") {
        return;
    }
    let daemon = daemon("dash-sse");
    let port = daemon.api_port;
    let admin = token(&daemon, &[]);
    let bearer = format!("Bearer {admin}");
    let (answer, received) = events(
        port,
        "/dashboard/events?sort=id&order=desc",
        &[("Authorization", &bearer)],
        Duration::from_secs(30),
        |events| events.len() >= 2,
    );
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("text/event-stream"));
    // The same protections as every page.
    assert_eq!(answer.header("x-frame-options"), Some("DENY"));
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    assert!(answer
        .header("content-security-policy")
        .is_some_and(|csp| csp.contains("frame-ancestors 'none'")));
    assert!(received.len() >= 2, "{received:?}");
    let (event, data) = &received[0];
    assert_eq!(event, "update");
    let update: serde_json::Value = serde_json::from_str(data).unwrap();
    let rows = update["rows"].as_str().unwrap();
    let (bob, alice) = (
        rows.find("api:bob").unwrap(),
        rows.find("api:alice").unwrap(),
    );
    assert!(bob < alice, "sorted by id, descending: {rows}");
    assert!(
        update["summary"].as_str().unwrap().contains("2 / 2"),
        "{update}"
    );
    assert!(
        update["count"].as_str().unwrap().starts_with("2 instances"),
        "{update}"
    );

    // One instance's stream: its numbers and sparklines.
    let (_, received) = events(
        port,
        "/dashboard/events?instance=api:alice",
        &[("Authorization", &bearer)],
        Duration::from_secs(30),
        |events| !events.is_empty(),
    );
    let update: serde_json::Value = serde_json::from_str(&received[0].1).unwrap();
    let live = update["live"].as_str().unwrap();
    assert!(live.contains("<svg") && live.contains("running"), "{live}");
}

#[test]
fn pages_work_without_javascript_and_show_text_as_text() {
    if !privileged("pages_work_without_javascript_and_show_text_as_text") {
        return;
    }
    // A tenant whose log has `<script>` in it.
    let noisy = format!(
        "print('<script>alert(1)</script>', flush=True)\n{}",
        api_support::APP
    );
    let daemon = daemon_with("dash-nojs", &noisy);
    let port = daemon.api_port;
    let admin = token(&daemon, &[]);
    let bearer = format!("Bearer {admin}");
    let auth = [("Authorization", bearer.as_str())];
    let overview = fetch(
        port,
        "GET",
        "/dashboard?service=api&q=alice&sort=restarts",
        &auth,
        "",
    );
    assert_eq!(overview.status, 200);
    assert_eq!(
        overview.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(overview
        .header("content-security-policy")
        .unwrap()
        .contains("script-src 'self'"));
    let body = &overview.body;
    assert!(body.contains("data-name=\"api:alice\"") && !body.contains("data-name=\"api:bob\""));
    assert!(body.contains("<form") && body.contains("method=\"post\""));
    assert!(body.contains("1 instance"), "{body}");

    let mut page = String::new();
    for _ in 0..100 {
        // The same search as `tenement logs --grep`.
        page = fetch(
            port,
            "GET",
            "/dashboard/instances/api:alice?grep=script",
            &auth,
            "",
        )
        .body;
        if page.contains("alert(1)") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}\n{}",
        daemon.ok(&["logs", "api:alice"])
    );
    assert!(!page.contains("<script>alert"), "{page}");
    assert!(page.contains("<svg"), "sparklines are inline SVG");
    // Input reflected in errors is escaped too.
    let error = fetch(
        port,
        "GET",
        "/dashboard/instances/api:%3Cscript%3E",
        &auth,
        "",
    );
    assert_eq!(error.status, 400);
    assert!(
        error.body.contains("&lt;script&gt;") && !error.body.contains("<script>"),
        "{}",
        error.body
    );
    // Bad selections name the culprit.
    let bad = fetch(port, "GET", "/dashboard?sort=colour", &auth, "");
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("colour"));
    // The assets are in the binary.
    for asset in ["/dashboard/assets/app.js", "/dashboard/assets/app.css"] {
        assert_eq!(fetch(port, "GET", asset, &[], "").status, 200, "{asset}");
    }
}

#[test]
fn the_dashboard_command_forwards_and_signs_in_once() {
    if !privileged("the_dashboard_command_forwards_and_signs_in_once") {
        return;
    }
    let daemon = daemon("dash-cli");
    let mut forwarder = dashboard_support::Forwarder::start(&daemon);
    let link = forwarder.link.clone();
    let port = forwarder.port;
    let path = link
        .split_once(&format!("127.0.0.1:{port}"))
        .unwrap()
        .1
        .to_string();
    let answer = fetch(port, "GET", &path, &[], "");
    assert_eq!(answer.status, 303, "{}", answer.body);
    let session = format!(
        "tenement_session={}",
        answer.cookie("tenement_session").unwrap()
    );
    let overview = fetch(port, "GET", "/dashboard", &[("Cookie", &session)], "");
    assert!(
        overview.body.contains("api:alice") && overview.body.contains("operator"),
        "{}",
        overview.body
    );
    // The link works once.
    assert_eq!(fetch(port, "GET", &path, &[], "").status, 401);
    // Only the dashboard is forwarded: the API behind the socket is not reachable this way.
    assert_eq!(fetch(port, "GET", "/v1/instances", &[], "").status, 404);
    // The audit log shows where the browser was.
    let (_, log) = request(&daemon.unix(), "GET", "/v1/audit", None, "").unwrap();
    assert!(log.contains("via tenement dashboard"), "{log}");
    forwarder.stop();
}
