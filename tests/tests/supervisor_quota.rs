//! `storage_quota_mb` enforced by the file system: a tenant with a 5 MB quota that writes
//! 20 MB gets ENOSPC from the kernel; its data survives a restart of the daemon; files that
//! were there before the quota move into it; the API shows its disk use beside the quota;
//! and nothing stays mounted or attached to a loop device once the daemon has stopped.

mod supervisor_common;

use std::{path::Path, process::Command};

use supervisor_common::{eventually, get, python_app, Daemon};
use tenement_tests::{privileged, tenement_bin};

/// `/write?mb=N&name=F` writes N MB to `$DATA_DIR/F` (removing a partial file on error and
/// answering 507 with the errno's name); `/files` lists the data directory.
const ROUTES: &str = r#"
        elif self.path.startswith("/write"):
            import errno, urllib.parse
            query = dict(urllib.parse.parse_qsl(self.path.split("?", 1)[1]))
            path = os.path.join(os.environ["DATA_DIR"], query["name"])
            try:
                with open(path, "wb") as out:
                    for _ in range(int(query["mb"])):
                        out.write(b"x" * (1 << 20))
                        out.flush()
                        os.fsync(out.fileno())
                self.answer(200, "wrote")
            except OSError as err:
                os.remove(path)
                self.answer(507, errno.errorcode.get(err.errno, str(err.errno)))
        elif self.path == "/files":
            self.answer(200, sorted(os.listdir(os.environ["DATA_DIR"])))"#;

fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.canonicalize().unwrap().display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| point.starts_with(&dir))
        .map(str::to_string)
        .collect()
}

fn loop_devices_of(image: &Path) -> String {
    let out = Command::new("losetup")
        .arg("-j")
        .arg(image)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ps_json(daemon: &Daemon) -> serde_json::Value {
    let out = Command::new(tenement_bin())
        .arg("--server")
        .arg(format!(
            "unix:{}",
            daemon.data_dir.join("tenement.sock").display()
        ))
        .args(["ps", "--json"])
        .env_remove("TENEMENT_TOKEN")
        .env_remove("TENEMENT_SERVER")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_quota_is_a_file_system_the_tenant_cannot_write_past() {
    if !privileged("a_quota_is_a_file_system_the_tenant_cannot_write_past") {
        return;
    }
    let mut daemon = Daemon::new("quota-fs", "");
    let app = daemon.app("store.py", &python_app(ROUTES));
    daemon.configure(&format!(
        "[service.store]\ncommand = \"/usr/bin/python3 {}\"\nstorage_quota_mb = 5\n\n\
         [instances]\nstore = [\"alice\"]\n",
        app.display()
    ));
    // Data from before the quota existed.
    let data = daemon.data_dir.join("store/alice");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("old.txt"), "from before").unwrap();
    let image = daemon.data_dir.join(".storage/store_alice.img");

    daemon.start();
    let port = daemon.wait_ready("store:alice", 1);
    assert_eq!(
        mounts_under(&daemon.data_dir).len(),
        1,
        "{:?}",
        mounts_under(&daemon.data_dir)
    );
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 5 << 20);

    let (status, body) = get(port, "/write?mb=20&name=big").unwrap();
    assert_eq!((status, body.as_str()), (507, "\"ENOSPC\""));
    let (status, body) = get(port, "/write?mb=1&name=keep").unwrap();
    assert_eq!((status, body.as_str()), (200, "\"wrote\""));
    let (_, files) = get(port, "/files").unwrap();
    assert!(
        files.contains("\"keep\"") && files.contains("\"old.txt\""),
        "{files}"
    );
    // Copied by the tenant itself (never by root through its tree): the copy is its own.
    use std::os::unix::fs::MetadataExt;
    let owner = |path: &Path| std::fs::metadata(path).unwrap().uid();
    assert_eq!(owner(&data.join("old.txt")), owner(&data));
    assert_ne!(owner(&data), 0);

    // Disk use beside the quota, in `ps --json` (measured every 30 s): the 1 MB file.
    let view = eventually("disk use in ps --json", || {
        let all = ps_json(&daemon);
        let alice = all
            .as_array()?
            .iter()
            .find(|v| v["name"] == "store:alice")?
            .clone();
        (alice["disk_used_bytes"].as_u64()? >= 1 << 20).then_some(alice)
    });
    assert_eq!(view["storage_quota_mb"], 5);
    let used = view["disk_used_bytes"].as_u64().unwrap();
    assert!((1 << 20..=5 << 20).contains(&used), "{view}");

    daemon.stop();
    assert_eq!(mounts_under(&daemon.data_dir), Vec::<String>::new());
    assert_eq!(loop_devices_of(&image), "");

    // The data is in the image and comes back with the next start.
    daemon.start();
    let port = daemon.wait_ready("store:alice", 2);
    let (_, files) = get(port, "/files").unwrap();
    assert!(
        files.contains("\"keep\"") && files.contains("\"old.txt\""),
        "{files}"
    );
    assert!(!files.contains("\"big\""), "{files}");
    daemon.stop();
    assert_eq!(mounts_under(&daemon.data_dir), Vec::<String>::new());
    assert_eq!(loop_devices_of(&image), "");
}

#[test]
fn doctor_says_how_quotas_are_enforced_here() {
    let out = Command::new(tenement_bin())
        .arg("doctor")
        .env_remove("TENEMENT_CONFIG")
        .current_dir(std::env::temp_dir())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let line = text
        .lines()
        .find(|line| line.contains("storage quotas"))
        .unwrap_or_else(|| panic!("no storage quota line:\n{text}"));
    if root {
        assert!(
            line.contains("enforced: a loop-mounted ext4 image per instance"),
            "{line}"
        );
    } else {
        assert!(line.contains("measured only"), "{line}");
    }
}
