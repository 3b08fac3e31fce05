//! The web dashboard in a real browser: Debian's headless Chromium, driven through
//! chromedriver (WebDriver), against a real `tenement serve` with real instances.

mod api_support;
mod dashboard_support;

use std::time::Duration;

use api_support::{Daemon, PATIENCE};
use tenement::{config::InstanceName, store::Store};
use tenement_tests::{privileged, webdriver::Browser, Scratch};

/// A daemon whose store already knows `stopped` instances of `api` (stopped, as after
/// `tenement stop`), with `running` configured and running.
fn daemon(label: &str, running: &[&str], stopped: usize) -> Daemon {
    let scratch = Scratch::new(label);
    let store = Store::open(&scratch.join("data")).unwrap();
    for index in 0..stopped {
        let name = InstanceName::parse(&format!("api:idle-{index:04}")).unwrap();
        store.set_desired(&name, false).unwrap();
        // Held: stopped by an operator, as after `tenement stop`.
        store.hold(&name).unwrap();
    }
    drop(store);
    let app = scratch.write("app.py", api_support::APP);
    let ids: Vec<String> = running.iter().map(|id| format!("{id:?}")).collect();
    let services = format!(
        "{}\n[instances]\napi = [{}]\n",
        api_support::api_service(&app),
        ids.join(", ")
    );
    let mut daemon = Daemon::start_with(scratch, &services, &[]);
    daemon.wait_until("the configured tenants run", |daemon| {
        running.iter().all(|id| {
            daemon
                .instance(&format!("api:{id}"))
                .is_some_and(|view| view["state"] == "running")
        })
    });
    daemon
}

fn sign_in(browser: &Browser, daemon: &Daemon, token: &str) {
    browser.goto(&format!("http://127.0.0.1:{}/dashboard", daemon.api_port));
    // Without a session the dashboard answers its sign-in page.
    browser.wait_for("the sign-in page", PATIENCE, |b| {
        b.url().ends_with("/dashboard/sign-in")
    });
    browser.type_into("#token", token);
    browser.click("form.sign-in button[type=submit]");
    browser.wait_for("the overview", PATIENCE, |b| b.find("#instances").is_some());
}

/// The state cell of each row, by instance name.
fn states(browser: &Browser) -> Vec<(String, String)> {
    let rows = browser.execute(
        "return Array.from(document.querySelectorAll('#rows tr')).map(tr => \
         [tr.dataset.name, tr.querySelector('td.state .badge').textContent]);",
    );
    rows.as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row[0].as_str().unwrap().to_string(),
                row[1].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn cell(browser: &Browser, name: &str, class: &str) -> String {
    browser
        .execute(&format!(
            "const row = document.querySelector('#rows tr[data-name=\"{name}\"]'); \
             return row ? row.querySelector('td.{class}').textContent : null;"
        ))
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn no_console_errors(browser: &Browser) {
    let errors: Vec<_> = browser
        .console()
        .into_iter()
        .filter(|(level, _)| level == "SEVERE")
        .collect();
    assert!(errors.is_empty(), "browser console errors: {errors:?}");
}

#[test]
fn browser_sees_every_instance_live_and_stops_one() {
    if !privileged("browser_sees_every_instance_live_and_stops_one") {
        return;
    }
    // 2 running and 47 stopped; a spawn makes it 50.
    let mut daemon = daemon("dash-browser", &["alice", "bob"], 47);
    let admin = daemon
        .ok(&["token-gen", "--description", "ops laptop"])
        .trim()
        .to_string();
    let browser = Browser::start("dash-browser");
    sign_in(&browser, &daemon, &admin);

    // Every instance, stopped ones included, with the state `tenement ps --json` gives.
    let ps: serde_json::Value = serde_json::from_str(&daemon.ok(&["ps", "--json"])).unwrap();
    let mut expected: Vec<(String, String)> = ps
        .as_array()
        .unwrap()
        .iter()
        .map(|view| {
            (
                view["name"].as_str().unwrap().to_string(),
                view["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    expected.sort();
    let mut shown = states(&browser);
    shown.sort();
    assert_eq!(shown, expected);
    assert!(expected.contains(&("api:idle-0000".to_string(), "stopped".to_string())));
    assert_eq!(
        cell(&browser, "api:alice", "port"),
        ps[0]["port"].to_string()
    );
    no_console_errors(&browser);

    // Live: mark the page, then traffic and a spawn show up without a reload.
    browser.execute("window.notReloaded = true; return null;");
    let http_port = daemon.http_port;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let done = done.clone();
        std::thread::spawn(move || {
            // Until the page shows it (bounded, in case it never does).
            for _ in 0..3000 {
                if done.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let answer = dashboard_support::fetch(
                    http_port,
                    "GET",
                    "/",
                    &[("Host", "alice.api.localhost")],
                    "",
                );
                assert_eq!(answer.status, 200, "{}", answer.body);
                std::thread::sleep(Duration::from_millis(30));
            }
        })
    };
    browser.wait_for("alice's requests per second", PATIENCE, |b| {
        cell(b, "api:alice", "requests")
            .parse::<f64>()
            .is_ok_and(|rate| rate > 0.0)
    });
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    traffic.join().unwrap();
    daemon.ok(&["spawn", "api:carol"]);
    browser.wait_for("the spawned instance's row", PATIENCE, |b| {
        states(b)
            .iter()
            .any(|(name, state)| name == "api:carol" && state == "running")
    });
    assert_eq!(
        browser.execute("return window.notReloaded === true;"),
        serde_json::json!(true),
        "the page reloaded instead of updating itself"
    );
    assert_eq!(states(&browser).len(), 50);
    // A screenshot of the overview with 50 instances, kept with the test run.
    let shot = tenement_tests::workspace_root().join("target/dashboard-overview.png");
    browser.screenshot(&shot);
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);

    // Stop through the UI: the form carries the CSRF token.
    browser.click("#rows tr[data-name=\"api:alice\"] button.stop");
    browser.wait_for("alice stopped in the table", PATIENCE, |b| {
        states(b)
            .iter()
            .any(|(name, state)| name == "api:alice" && state == "stopped")
    });
    assert_eq!(daemon.instance("api:alice").unwrap()["state"], "stopped");
    assert!(daemon
        .ok(&["ps"])
        .lines()
        .any(|line| line.contains("alice") && line.contains("stopped")));

    // The audit log shows it, with the token's description.
    browser.goto(&format!(
        "http://127.0.0.1:{}/dashboard/audit",
        daemon.api_port
    ));
    let audit = browser.text("#audit");
    assert!(
        audit.lines().any(|line| line.contains("stop")
            && line.contains("api:alice")
            && line.contains("ops laptop")),
        "{audit}"
    );

    // The instance page: sparklines and its log.
    browser.goto(&format!(
        "http://127.0.0.1:{}/dashboard/instances/api:bob",
        daemon.api_port
    ));
    assert!(browser.find("#instance-live svg polyline").is_some());
    browser.wait_for("bob's log", PATIENCE, |b| {
        b.text("#log").contains("bob served")
    });
    no_console_errors(&browser);
    daemon.stop();
}

#[test]
fn browser_handles_a_thousand_rows_and_tenant_scopes() {
    if !privileged("browser_handles_a_thousand_rows_and_tenant_scopes") {
        return;
    }
    let daemon = daemon("dash-thousand", &["alice"], 999);
    let admin = daemon.ok(&["token-gen"]).trim().to_string();
    let tenant = daemon
        .ok(&["token-gen", "--tenant", "api:alice"])
        .trim()
        .to_string();

    // Page weight of the default page (100 rows) with everything it loads.
    let bearer = format!("Bearer {admin}");
    let auth = [("Authorization", bearer.as_str())];
    let weight: usize = [
        "/dashboard",
        "/dashboard/assets/app.js",
        "/dashboard/assets/app.css",
    ]
    .iter()
    .map(|path| {
        dashboard_support::fetch(daemon.api_port, "GET", path, &auth, "")
            .body
            .len()
    })
    .sum();
    assert!(weight < 100 * 1024, "the overview weighs {weight} bytes");

    let browser = Browser::start("dash-thousand");
    sign_in(&browser, &daemon, &admin);
    assert_eq!(browser.text("#count"), "1000 instances · showing 1–100");
    // All 1000 on one page, still live and filterable.
    browser.goto(&format!(
        "http://127.0.0.1:{}/dashboard?per_page=1000",
        daemon.api_port
    ));
    assert_eq!(browser.find_all("#rows tr").len(), 1000);
    browser.wait_for("a live update of 1000 rows", PATIENCE, |b| {
        b.execute("return document.body.dataset.updated || null;") != serde_json::Value::Null
    });
    browser.type_into("#filter input[name=q]", "idle-0998");
    browser.wait_for("the filtered rows", PATIENCE, |b| {
        b.find_all("#rows tr").len() == 1
    });
    assert!(browser.url().contains("q=idle-0998"), "{}", browser.url());
    // Sorting by a column, by its header link.
    browser.goto(&format!("http://127.0.0.1:{}/dashboard", daemon.api_port));
    browser.click("th a[href*='sort=state']");
    browser.wait_for("sorted by state", PATIENCE, |b| {
        b.url().contains("sort=state")
    });
    assert_eq!(
        states(&browser)[0].1,
        "running",
        "running sorts before stopped"
    );
    no_console_errors(&browser);

    // A tenant sees only its own row.
    browser.click("form.inline button[type=submit]");
    browser.wait_for("signed out", PATIENCE, |b| {
        b.url().ends_with("/dashboard/sign-in")
    });
    sign_in(&browser, &daemon, &tenant);
    assert_eq!(
        states(&browser),
        vec![("api:alice".to_string(), "running".to_string())]
    );
    assert!(
        browser.find("button.stop").is_none(),
        "a tenant gets no stop button"
    );
    no_console_errors(&browser);
}
