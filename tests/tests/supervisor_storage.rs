//! `storage_quota_mb`: an instance whose data directory grows past its quota gets a
//! recorded event and a warning in its log (nothing is deleted, the instance keeps running).

mod supervisor_common;

use supervisor_common::{instance, python_app, Daemon};
use tenement::{
    logs::{LogHub, LogQuery, Stream},
    store::EventKind,
};
use tenement_tests::privileged;

#[test]
fn over_quota_is_recorded_and_warned_about() {
    if !privileged("over_quota_is_recorded_and_warned_about") {
        return;
    }
    let mut daemon = Daemon::new("quota", "");
    // Writes 3 MB into its data directory at start.
    let app = daemon.app(
        "filler.py",
        &python_app("").replacen(
            "print(\"listening on\"",
            "open(os.path.join(os.environ['DATA_DIR'], 'blob'), 'wb').write(os.urandom(3 << 20))\nprint(\"listening on\"",
            1,
        ),
    );
    daemon.configure(&format!(
        "[service.filler]\ncommand = \"/usr/bin/python3 {}\"\nstorage_quota_mb = 1\n\n\
         [instances]\nfiller = [\"q\"]\n",
        app.display()
    ));
    daemon.start();
    daemon.wait_ready("filler:q", 1);
    let events = daemon.wait_events("filler:q", "quota-exceeded", |events| {
        events.iter().any(|e| e.kind == EventKind::QuotaExceeded)
    });
    let over = events
        .iter()
        .find(|e| e.kind == EventKind::QuotaExceeded)
        .unwrap();
    assert!(
        over.detail.contains("MB, over storage_quota_mb = 1"),
        "{}",
        over.detail
    );
    let logs = LogHub::new(tenement::datadir::logs_dir(&daemon.data_dir)).unwrap();
    let warnings = logs
        .search(&LogQuery {
            instance: Some(instance("filler:q")),
            contains: Some("over storage_quota_mb".to_string()),
            ..LogQuery::default()
        })
        .unwrap();
    assert!(
        warnings
            .iter()
            .any(|l| l.stream == Stream::System && l.line.starts_with("warning:")),
        "{warnings:?}"
    );
    assert!(!events.iter().any(|e| e.kind == EventKind::Crashed));
    daemon.stop();
}
