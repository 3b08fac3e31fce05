//! A real etcd cluster for the fleet tests: `etcd` (Debian `etcd-server`) members on
//! 127.0.0.1 with free ports and their own data directories, killed and restarted at will.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{free_port, Scratch};

pub struct EtcdCluster {
    scratch: Scratch,
    members: Vec<Member>,
    initial_cluster: String,
}

struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

impl EtcdCluster {
    /// `size` members, started together; returns once every member answers.
    pub fn start(size: usize) -> EtcdCluster {
        let scratch = Scratch::new("etcd");
        let members: Vec<Member> = (0..size)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_port(),
                peer: free_port(),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            scratch,
            members,
            initial_cluster,
        };
        for i in 0..size {
            cluster.launch(i, "new");
        }
        for i in 0..size {
            cluster.wait_healthy(i);
        }
        cluster
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.scratch.join(&self.members[i].name)
    }

    fn launch(&mut self, i: usize, state: &str) {
        let data_dir = self.data_dir(i);
        let log =
            std::fs::File::create(self.scratch.join(&format!("{}.log", self.members[i].name)))
                .unwrap();
        let member = &self.members[i];
        let client = format!("http://127.0.0.1:{}", member.client);
        let peer = format!("http://127.0.0.1:{}", member.peer);
        let child = Command::new("etcd")
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "tenement-test"])
            // Small and quick: a test cluster on a loaded machine.
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args(["--quota-backend-bytes", "104857600"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting etcd (Debian etcd-server; `cargo xtask setup --apt`)");
        self.members[i].child = Some(child);
    }

    /// Waits until member `i` serves reads with a quorum behind it.
    pub fn wait_healthy(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let port = self.members[i].client;
        while Instant::now() < deadline {
            if let Ok((200, body)) = crate::http::get(port, "127.0.0.1", "/health") {
                if body.contains("\"true\"") {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "etcd member {} did not become healthy:\n{}",
            self.members[i].name,
            std::fs::read_to_string(self.scratch.join(&format!("{}.log", self.members[i].name)))
                .unwrap_or_default()
        );
    }

    /// Client URLs, as `[fleet] etcd` takes them (a TOML array).
    pub fn endpoints_toml(&self) -> String {
        let list: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("\"http://127.0.0.1:{}\"", m.client))
            .collect();
        format!("[{}]", list.join(", "))
    }

    pub fn client_port(&self, i: usize) -> u16 {
        self.members[i].client
    }

    /// SIGKILL to member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP to member `i`: its connections stay open and hang (until `kill`).
    pub fn pause(&self, i: usize) {
        if let Some(child) = &self.members[i].child {
            // SAFETY: kill has no memory preconditions; the pid is this test's own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGSTOP) };
        }
    }

    /// Starts member `i` again on its data directory.
    pub fn restart(&mut self, i: usize) {
        self.launch(i, "existing");
    }

    /// The value of `key` (read through the first member that answers), as text.
    pub fn get(&self, key: &str) -> Option<String> {
        use base64::{engine::general_purpose::STANDARD as B64, Engine};
        for member in self.members.iter().filter(|m| m.child.is_some()) {
            let output = Command::new("curl")
                .args(["-s", "-f", "-X", "POST"])
                .arg(format!("http://127.0.0.1:{}/v3/kv/range", member.client))
                .args(["-d", &format!("{{\"key\":\"{}\"}}", B64.encode(key))])
                .output()
                .ok()?;
            if !output.status.success() {
                continue;
            }
            let answer: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
            let value = answer["kvs"][0]["value"].as_str()?;
            return String::from_utf8(B64.decode(value).ok()?).ok();
        }
        None
    }

    /// Compacts the key history up to the current revision (through member `i`).
    pub fn compact(&self, i: usize) {
        let url = format!("http://127.0.0.1:{}", self.members[i].client);
        let revision = Command::new("curl")
            .args([
                "-s",
                "-X",
                "POST",
                &format!("{url}/v3/kv/range"),
                "-d",
                "{\"key\":\"AA==\"}",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&revision.stdout).to_string();
        let revision: String = text
            .split("\"revision\":\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or("1")
            .to_string();
        let status = Command::new("curl")
            .args(["-s", "-f", "-X", "POST", &format!("{url}/v3/kv/compaction")])
            .args([
                "-d",
                &format!("{{\"revision\":\"{revision}\",\"physical\":true}}"),
            ])
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "compacting etcd at revision {revision}"
        );
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in (0..self.members.len()).rev() {
            self.kill(i);
        }
    }
}
