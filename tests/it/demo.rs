//! The README's main command, end to end: `rollgate demo --fast` plays the whole story
//! (v2 succeeds through analysis on live traffic, v3 is rolled back and reverted).

use crate::support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longer than the demo ever takes (about 20 s on two busy cores): past it, the test
/// fails instead of hanging.
const DEMO_TIMEOUT: Duration = Duration::from_secs(240);

/// The demo's process, killed and reaped when dropped (a failed assertion included).
/// The demo stops its data plane itself when it ends, but not when it is killed: the
/// `support::DataPlanes` declared before this guard does it then.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_demo_plays_the_whole_story() {
    let dir = tempfile::tempdir().expect("tmp");
    let logs = tempfile::tempdir().expect("logs");
    let plane = dir.path().join("state").join("local");
    let _planes = support::DataPlanes(plane.clone());
    let mut demo = Demo(
        Command::new(env!("CARGO_BIN_EXE_rollgate"))
            .args(["demo", "--fast", "--dir"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(logs.path().join("stdout")).expect("stdout file"))
            .stderr(std::fs::File::create(logs.path().join("stderr")).expect("stderr file"))
            .spawn()
            .expect("demo runs"),
    );
    let deadline = Instant::now() + DEMO_TIMEOUT;
    let status = loop {
        if let Some(status) = demo.0.try_wait().expect("wait for the demo") {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = std::fs::read_to_string(logs.path().join("stdout")).unwrap_or_default();
    let stderr = std::fs::read_to_string(logs.path().join("stderr")).unwrap_or_default();
    let status = status.unwrap_or_else(|| {
        panic!(
            "the demo did not end within {}s:\n{stdout}\n{stderr}",
            DEMO_TIMEOUT.as_secs()
        )
    });
    assert!(status.success(), "demo failed:\n{stdout}\n{stderr}");
    // v2 went through every stage and succeeded; v3 was rolled back with its evidence.
    for needed in [
        "Succeeded",
        "RolledBack",
        "revert pushed",
        "fail success-rate",
        "analysis passed",
        // The dashboard's address while it plays, and how to open it again (#20).
        "dashboard: http://127.0.0.1:",
        "the dashboard again: rollgate dashboard --repo ",
    ] {
        assert!(
            stdout.contains(needed),
            "demo output lacks {needed:?}:\n{stdout}"
        );
    }
    // The revert is in the repository the demo kept, and the plan is back at v2.
    let bare = dir.path().join("remote.git");
    let plan = Command::new("git")
        .args(["show", "main:plans/hello.yaml"])
        .current_dir(&bare)
        .output()
        .expect("git show");
    let plan = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan.contains("artifact: v2"),
        "plan not reverted to v2:\n{plan}"
    );
    // No request failed to connect during the whole show (promotion and rollback drain).
    let traffic = stdout
        .lines()
        .find(|l| l.starts_with("traffic:"))
        .expect("a traffic summary");
    assert!(traffic.ends_with(" 0 failed"), "{traffic}");
    // And the demo stopped its data plane when it ended: none is left in its folder.
    let left = rollgate::dataplane::planes_under(&plane);
    assert!(left.is_empty(), "data planes left running: {left:?}");
}
