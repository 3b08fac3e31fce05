//! A small WebDriver client for Debian's headless Chromium through `chromedriver`: plain
//! HTTP/1.1 and JSON (W3C WebDriver), just the commands the dashboard tests use.

use std::{
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use crate::{free_port, Scratch};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A running chromedriver with one headless Chromium session.
pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    /// Chromium's own pid: killed at the end if ending the session did not end it.
    chromium: Option<i64>,
    _profile: Scratch,
}

/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    /// Starts chromedriver and a headless Chromium with a fresh profile, as root needs it.
    pub fn start(label: &str) -> Browser {
        for binary in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(binary).exists(),
                "{binary} is missing: `cargo xtask setup --apt` installs chromium and chromium-driver"
            );
        }
        let profile = Scratch::new(&format!("{label}-chromium"));
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let mut browser = Browser {
            driver,
            port,
            session: String::new(),
            chromium: None,
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while browser.call("GET", "/status", None).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let capabilities = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:loggingPrefs": { "browser": "ALL" },
                "goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": [
                        "--headless", "--no-sandbox", "--disable-gpu",
                        "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                        "--window-size=1600,1000",
                        format!("--user-data-dir={}", browser._profile.path.display()),
                    ]
                }
            }}
        });
        let answer = browser
            .call("POST", "/session", Some(capabilities))
            .expect("starting a Chromium session");
        browser.session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session in {answer}"))
            .to_string();
        browser.chromium = answer["value"]["capabilities"]["goog:processID"].as_i64();
        browser
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let body = body.map(|body| body.to_string()).unwrap_or_default();
        let mut stream =
            TcpStream::connect(("127.0.0.1", self.port)).map_err(|err| err.to_string())?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .map_err(|err| err.to_string())?;
        let body = read_answer(&mut stream).map_err(|err| err.to_string())?;
        let body = body.as_str();
        let value: Value = serde_json::from_str(body).map_err(|err| format!("{err}: {body}"))?;
        if let Some(error) = value["value"]["error"].as_str() {
            return Err(format!("{error}: {}", value["value"]["message"]));
        }
        Ok(value)
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        self.call(method, &format!("/session/{}{path}", self.session), body)
            .map(|value| value["value"].clone())
    }

    pub fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })))
            .unwrap_or_else(|err| panic!("opening {url}: {err}"));
    }

    pub fn url(&self) -> String {
        self.session_call("GET", "/url", None)
            .unwrap()
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The first element matching `css`, if any.
    pub fn find(&self, css: &str) -> Option<String> {
        let found = self
            .session_call(
                "POST",
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .ok()?;
        found[ELEMENT].as_str().map(str::to_string)
    }

    pub fn find_all(&self, css: &str) -> Vec<String> {
        self.session_call(
            "POST",
            "/elements",
            Some(json!({ "using": "css selector", "value": css })),
        )
        .map(|found| {
            found
                .as_array()
                .map(|elements| {
                    elements
                        .iter()
                        .filter_map(|element| element[ELEMENT].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        })
        .unwrap_or_default()
    }

    /// The rendered text of the first element matching `css` (empty when there is none).
    pub fn text(&self, css: &str) -> String {
        self.find(css)
            .and_then(|element| {
                self.session_call("GET", &format!("/element/{element}/text"), None)
                    .ok()
            })
            .and_then(|text| text.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    pub fn click(&self, css: &str) {
        let element = self
            .find(css)
            .unwrap_or_else(|| panic!("no element {css} on {}", self.url()));
        self.session_call(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .unwrap_or_else(|err| panic!("clicking {css}: {err}"));
    }

    pub fn type_into(&self, css: &str, text: &str) {
        let element = self
            .find(css)
            .unwrap_or_else(|| panic!("no element {css} on {}", self.url()));
        self.session_call(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )
        .unwrap_or_else(|err| panic!("typing into {css}: {err}"));
    }

    /// Runs `script` (a function body) in the page and returns its value.
    pub fn execute(&self, script: &str) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
        .unwrap_or_else(|err| panic!("running a script: {err}"))
    }

    /// Waits until `condition` holds, up to `patience`.
    pub fn wait_for(
        &self,
        what: &str,
        patience: Duration,
        mut condition: impl FnMut(&Browser) -> bool,
    ) {
        let deadline = Instant::now() + patience;
        while !condition(self) {
            assert!(
                Instant::now() < deadline,
                "gave up waiting for {what} on {}",
                self.url()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self, path: &Path) {
        use base64::Engine;
        let png = self.session_call("GET", "/screenshot", None).unwrap();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    /// The browser console's entries since the last call: `(level, message)`.
    pub fn console(&self) -> Vec<(String, String)> {
        self.session_call("POST", "/se/log", Some(json!({ "type": "browser" })))
            .ok()
            .and_then(|entries| entries.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|entry| {
                (
                    entry["level"].as_str().unwrap_or_default().to_string(),
                    entry["message"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }
}

/// The body of one HTTP answer, by its `Content-Length` (chromedriver may keep the
/// connection open, so reading to the end would wait forever).
fn read_answer(stream: &mut TcpStream) -> std::io::Result<String> {
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut raw = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    loop {
        if let Some(end) = raw.windows(4).position(|window| window == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|line| {
                    let (key, value) = line.split_once(':')?;
                    if key.eq_ignore_ascii_case("content-length") {
                        value.trim().parse().ok()
                    } else {
                        None
                    }
                })
                .unwrap_or(0);
            let body_start = end + 4;
            while raw.len() < body_start + length {
                let read = stream.read(&mut buffer)?;
                if read == 0 {
                    break;
                }
                raw.extend_from_slice(&buffer[..read]);
            }
            return Ok(String::from_utf8_lossy(&raw[body_start..]).to_string());
        }
        let read = stream.read(&mut buffer)?;
        if read == 0 {
            return Err(std::io::Error::other("chromedriver closed the connection"));
        }
        raw.extend_from_slice(&buffer[..read]);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        crate::terminate_or_kill(&mut self.driver, Duration::from_secs(10));
        if let Some(pid) = self.chromium.and_then(|pid| i32::try_from(pid).ok()) {
            // SAFETY: kill has no memory-safety preconditions; the pid is the Chromium this
            // session started (gone already, normally: then this fails harmlessly).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}
