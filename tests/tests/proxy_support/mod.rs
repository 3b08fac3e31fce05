//! What the proxy tests share: a stack of real instances (the Python app in
//! `tests/apps/echo_app.py`, started as real processes) behind tenement's proxy, and small
//! HTTP clients.
//!
//! The proxy runs in-process with `TestBackends`, a stand-in for the supervisor that spawns
//! each service's configured command with `PORT` and `INSTANCE`. Tests talk to the stack
//! only through `Stack` (its address, spawn counts, killing an instance), so they can later
//! run against the real `tenement serve` by giving `Stack` a second way to start.

#![allow(dead_code)]

use std::{
    collections::HashMap,
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use futures_util::{
    future::{BoxFuture, Shared},
    FutureExt,
};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tenement::{
    config::{Config, InstanceName},
    proxy::{
        ActivityMeter, BackendInstance, BackendState, Backends, Endpoint, Options, Proxy, WakeError,
    },
};
use tenement_tests::{free_port, workspace_root, Scratch};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::{oneshot, watch},
};

/// Generous: the machine is shared and slow; nothing here measures time.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub fn echo_app_command() -> String {
    format!(
        "/usr/bin/python3 {}",
        workspace_root().join("tests/apps/echo_app.py").display()
    )
}

/// An instance the stack knows at start.
pub struct Spec {
    pub name: &'static str,
    pub weight: u8,
    pub state: BackendState,
}

pub fn running(name: &'static str, weight: u8) -> Spec {
    Spec {
        name,
        weight,
        state: BackendState::Running,
    }
}

pub fn sleeping(name: &'static str, weight: u8) -> Spec {
    Spec {
        name,
        weight,
        state: BackendState::Sleeping,
    }
}

pub fn failed(name: &'static str) -> Spec {
    Spec {
        name,
        weight: 100,
        state: BackendState::Failed,
    }
}

pub struct Stack {
    pub addr: SocketAddr,
    pub backends: Arc<TestBackends>,
    pub proxy: Proxy,
    stop: Option<oneshot::Sender<()>>,
    _scratch: Scratch,
}

impl Stack {
    pub async fn start(config: &str, instances: &[Spec]) -> Stack {
        Stack::start_with(config, instances, Options::default()).await
    }

    pub async fn start_with(config: &str, instances: &[Spec], options: Options) -> Stack {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let scratch = Scratch::new("proxy");
        let config = Arc::new(Config::parse(config, "test config").expect("test config parses"));
        let backends = TestBackends::new(config.clone(), instances);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let proxy = Proxy::new(config, backends.clone(), options);
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = proxy.clone();
        tokio::spawn(async move { serving.serve(vec![listener], stopped).await });
        Stack {
            addr,
            backends,
            proxy,
            stop: Some(stop),
            _scratch: scratch,
        }
    }

    /// How many times the instance's process was started.
    pub fn spawns(&self, name: &str) -> usize {
        self.backends.slot(name, |slot| slot.spawns)
    }

    /// SIGKILL to the instance's process (it stays `Running` in the table, as after a crash
    /// the supervisor has not noticed yet).
    pub fn kill(&self, name: &str) {
        self.backends.slot(name, |slot| {
            if let Some(child) = &mut slot.child {
                let _ = child.kill();
                let _ = child.wait();
            }
        });
    }

    pub fn set_weight(&self, name: &str, weight: u8) {
        self.backends.slot(name, |slot| slot.weight = weight);
        self.backends.bump();
    }

    pub async fn get(&self, host: &str, path: &str) -> Reply {
        send(
            self.addr,
            host,
            Request::get(path).body(Full::default()).unwrap(),
        )
        .await
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // The proxy's worker threads may outlive the test; the instances must not.
        self.backends.stop_all();
    }
}

/// The supervisor's part, played with real processes: `ensure_running` spawns the service's
/// command once however many callers wait, and reports ready when the port accepts.
pub struct TestBackends {
    config: Arc<Config>,
    slots: Arc<Mutex<HashMap<InstanceName, Slot>>>,
    changes: watch::Sender<u64>,
}

pub struct Slot {
    pub weight: u8,
    pub state: BackendState,
    pub port: Option<u16>,
    pub child: Option<Child>,
    pub spawns: usize,
    /// Answer `ensure_running` with this instead of starting.
    pub wake_error: Option<WakeError>,
    starting: Option<Shared<BoxFuture<'static, Result<Endpoint, WakeError>>>>,
}

impl TestBackends {
    pub fn new(config: Arc<Config>, instances: &[Spec]) -> Arc<TestBackends> {
        let backends = Arc::new(TestBackends {
            config,
            slots: Arc::default(),
            changes: watch::channel(0).0,
        });
        for spec in instances {
            let name = InstanceName::parse(spec.name).unwrap();
            let mut slot = Slot {
                weight: spec.weight,
                state: spec.state,
                port: None,
                child: None,
                spawns: 0,
                wake_error: None,
                starting: None,
            };
            if spec.state == BackendState::Running {
                let port = free_port();
                slot.child = Some(backends.spawn(&name, port));
                slot.spawns = 1;
                slot.port = Some(port);
                wait_listening(port);
            }
            backends.slots.lock().unwrap().insert(name, slot);
        }
        backends
    }

    pub fn slot<R>(&self, name: &str, f: impl FnOnce(&mut Slot) -> R) -> R {
        let name = InstanceName::parse(name).unwrap();
        f(self
            .slots
            .lock()
            .unwrap()
            .get_mut(&name)
            .expect("known instance"))
    }

    pub fn bump(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    fn spawn(&self, name: &InstanceName, port: u16) -> Child {
        let service = &self.config.service[&name.service];
        let words = shell_words::split(&service.command).unwrap();
        Command::new(&words[0])
            .args(&words[1..])
            .env("PORT", port.to_string())
            .env("INSTANCE", name.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"))
    }
}

impl Backends for TestBackends {
    fn instances(&self) -> Vec<BackendInstance> {
        self.slots
            .lock()
            .unwrap()
            .iter()
            .map(|(name, slot)| BackendInstance {
                name: name.clone(),
                weight: slot.weight,
                state: slot.state,
                endpoint: slot.port.map(Endpoint::Port),
            })
            .collect()
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn ensure_running(
        &self,
        name: &InstanceName,
    ) -> BoxFuture<'static, Result<Endpoint, WakeError>> {
        let mut slots = self.slots.lock().unwrap();
        let Some(slot) = slots.get_mut(name) else {
            return futures_util::future::ready(Err(WakeError::Unknown)).boxed();
        };
        if let Some(error) = &slot.wake_error {
            return futures_util::future::ready(Err(error.clone())).boxed();
        }
        match slot.state {
            BackendState::Failed => {
                let error = WakeError::Failed {
                    state: "failed".into(),
                    reason: "too many restarts".into(),
                };
                return futures_util::future::ready(Err(error)).boxed();
            }
            BackendState::Running => {
                let endpoint = Endpoint::Port(slot.port.unwrap());
                return futures_util::future::ready(Ok(endpoint)).boxed();
            }
            _ => {}
        }
        if let Some(starting) = &slot.starting {
            return starting.clone().boxed();
        }
        let port = free_port();
        slot.child = Some(self.spawn(name, port));
        slot.spawns += 1;
        slot.state = BackendState::Starting;
        // The start runs on its own, whoever still waits for it.
        let ready = tokio::task::spawn_blocking(move || wait_listening(port));
        let (slots, changes, name) = (self.slots.clone(), self.changes.clone(), name.clone());
        let start = async move {
            let _ = ready.await;
            if let Some(slot) = slots.lock().unwrap().get_mut(&name) {
                slot.state = BackendState::Running;
                slot.port = Some(port);
                slot.starting = None;
            }
            changes.send_modify(|n| *n += 1);
            Ok(Endpoint::Port(port))
        }
        .boxed()
        .shared();
        slot.starting = Some(start.clone());
        self.bump();
        start.boxed()
    }

    fn activity_meter(&self, _name: &InstanceName) -> Option<Arc<dyn ActivityMeter>> {
        None
    }
}

impl TestBackends {
    /// Kills every instance process this stand-in started (by PID, through its `Child`).
    pub fn stop_all(&self) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        for slot in slots.values_mut() {
            if let Some(mut child) = slot.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for TestBackends {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Blocks until 127.0.0.1:`port` accepts a connection.
pub fn wait_listening(port: u16) {
    let deadline = std::time::Instant::now() + PATIENCE;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing listens on port {port}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A complete answer.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }
}

pub type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends `request` to the proxy at `addr` with `Host: host`, and reads the whole answer.
pub async fn send(addr: SocketAddr, host: &str, request: Request<Full<Bytes>>) -> Reply {
    send_with(&client(), addr, host, request).await
}

pub async fn send_with(
    client: &TestClient,
    addr: SocketAddr,
    host: &str,
    mut request: Request<Full<Bytes>>,
) -> Reply {
    let path = request.uri().path_and_query().unwrap().as_str().to_string();
    *request.uri_mut() = format!("http://{addr}{path}").parse().unwrap();
    request
        .headers_mut()
        .insert(http::header::HOST, host.parse().unwrap());
    let response = tokio::time::timeout(PATIENCE, client.request(request))
        .await
        .expect("the proxy answers")
        .expect("the request goes through");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("the body arrives").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Writes raw bytes and reads until the proxy closes the connection (or `PATIENCE` passes).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// A config with the echo app as services `api` and `web` under `example.com`.
pub fn config(extra: &str) -> String {
    let command = echo_app_command();
    format!(
        r#"
[settings]
domain = ["example.com"]

[service.api]
command = "{command}"

[service.web]
command = "{command}"
{extra}
"#
    )
}
