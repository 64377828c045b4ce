//! The README's main command, end to end: `rollgate demo --fast` plays the whole story
//! (v2 succeeds through analysis on live traffic, v3 is rolled back and reverted).

use std::process::Command;

#[test]
fn the_demo_plays_the_whole_story() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .args(["demo", "--fast", "--dir"])
        .arg(dir.path())
        .output()
        .expect("demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    // v2 went through every stage and succeeded; v3 was rolled back with its evidence.
    for needed in [
        "Succeeded",
        "RolledBack",
        "revert pushed",
        "fail success-rate",
        "analysis passed",
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
}
