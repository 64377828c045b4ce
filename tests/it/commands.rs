//! `rollgate promote|abort|retry` as users meet them: refused when the daemon would
//! ignore them, and pushed as a fast-forward that survives a race with the daemon.

use crate::support;

use std::process::Command;

use rollgate::model::status::Phase;
use support::Remote;
use support::rollout::PlanFile;

const BIN: &str = env!("CARGO_BIN_EXE_rollgate");

fn run_once(remote: &Remote) {
    let out = Command::new(BIN)
        .args(["run", "--journal-targets", "--once", "--repo"])
        .arg(&remote.bare)
        .arg("--state-dir")
        .arg(remote.work_dir("state"))
        .env("RUST_LOG", "warn")
        .output()
        .expect("rollgate run --once");
    assert!(out.status.success(), "{out:?}");
}

fn cli(remote: &Remote, args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN)
        .args(args)
        .arg("--repo")
        .arg(&remote.human)
        .output()
        .expect("rollgate");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// v1 stable, v2 paused at an untimed pause.
fn paused() -> Remote {
    let v1 = PlanFile::new("web").steps(&["setWeight: 20", "setWeight: 100"]);
    let remote = Remote::with_plans(&[&v1]);
    run_once(&remote);
    let v2 = PlanFile::new("web").artifact("v2").steps(&[
        "setWeight: 20",
        "pause: {}",
        "setWeight: 100",
    ]);
    remote.human_commit(&v2.path(), |_| v2.yaml(), "web: v2");
    run_once(&remote);
    assert_eq!(remote.status("web").expect("status").phase, Phase::Paused);
    remote
}

#[test]
fn regression_a_command_for_an_unknown_plan_is_refused_and_nothing_is_pushed() {
    let remote = paused();
    let before = remote.head();
    let (code, out) = cli(&remote, &["promote", "nosuch", "--push"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("no plan named nosuch") && out.contains("web"),
        "{out}"
    );
    assert_eq!(remote.head(), before);
}

#[test]
fn regression_a_command_with_nothing_to_act_on_is_refused() {
    // Given v2 paused: retry has nothing to do
    let remote = paused();
    let before = remote.head();
    let (code, out) = cli(&remote, &["retry", "web", "--push"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("nothing to retry: web is Paused"), "{out}");
    // And once v2 succeeded, promote and abort have nothing to do either
    let (code, out) = cli(&remote, &["promote", "web", "--push"]);
    assert_eq!(code, 0, "{out}");
    run_once(&remote);
    assert_eq!(
        remote.status("web").expect("status").phase,
        Phase::Succeeded
    );
    for verb in ["promote", "abort"] {
        let (code, out) = cli(&remote, &[verb, "web", "--push"]);
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains(&format!(
                "nothing to {verb}: web is Succeeded (v2 is stable)"
            )),
            "{out}"
        );
    }
    assert_ne!(remote.head(), before);
}

#[test]
fn regression_a_push_that_lost_a_race_to_the_daemon_is_fetched_rechecked_and_retried() {
    // Given v2 paused, and a human checkout that is behind the remote (the daemon has
    // pushed status commits since it last pulled)
    let remote = paused();
    let stale = remote.human(&["rev-parse", "HEAD"]);
    let remote_head = remote.head();
    assert_ne!(stale, remote_head, "the checkout is behind");
    // When the human promotes with --push from the stale checkout
    let (code, out) = cli(&remote, &["promote", "web", "--push"]);
    // Then exactly one command commit lands, on top of the remote's head
    assert_eq!(code, 0, "{out}");
    let parents = support::git(&remote.bare, &["log", "-1", "--format=%P", "main"]);
    assert_eq!(parents, remote_head);
    let msg = support::git(&remote.bare, &["log", "-1", "--format=%B", "main"]);
    assert!(msg.contains("Rollgate-Command: promote"), "{msg}");
    // And the daemon acts on it
    run_once(&remote);
    assert_eq!(
        remote.status("web").expect("status").phase,
        Phase::Succeeded
    );
}

#[test]
fn regression_run_once_waits_for_a_rollout_that_moves_on_by_itself() {
    // Given v1 stable and a change to v2 with a timed pause and a later step
    let v1 = PlanFile::new("web").steps(&["setWeight: 20", "setWeight: 100"]);
    let remote = Remote::with_plans(&[&v1]);
    run_once(&remote);
    let v2 = PlanFile::new("web").artifact("v2").steps(&[
        "setWeight: 20",
        "pause: { duration: 2s }",
        "setWeight: 100",
    ]);
    remote.human_commit(&v2.path(), |_| v2.yaml(), "web: v2");
    // When `run --once` runs
    let started = std::time::Instant::now();
    run_once(&remote);
    // Then it waited through the pause and the rollout finished (before: it exited at
    // the pause, with Git saying Paused 20%)
    let s = remote.status("web").expect("status");
    assert_eq!(
        (s.phase, s.candidate.as_str()),
        (Phase::Succeeded, "v2"),
        "{s:?}"
    );
    assert!(started.elapsed() >= std::time::Duration::from_secs(2));
}

#[test]
fn regression_run_once_fails_when_a_plan_cannot_be_reconciled() {
    // Given a plan whose status file (imported with the repository) is unreadable:
    // reconciling it is refused
    let v1 = PlanFile::new("web").steps(&["setWeight: 20", "setWeight: 100"]);
    let remote = Remote::with_files(&[
        (
            "rollgate.yaml".to_owned(),
            "apiVersion: rollgate.dev/v1alpha1\nkind: Settings\ntargets:\n  local: { local: {} }\n"
                .to_owned(),
        ),
        (v1.path(), v1.yaml()),
        ("status/web.yaml".to_owned(), "{ not: [a status".to_owned()),
    ]);
    // When `run --once` runs
    let out = Command::new(BIN)
        .args(["run", "--journal-targets", "--once", "--repo"])
        .arg(&remote.bare)
        .arg("--state-dir")
        .arg(remote.work_dir("state2"))
        .env("RUST_LOG", "warn")
        .output()
        .expect("rollgate run --once");
    // Then it says so and exits 1 (before: 0)
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("could not be reconciled"),
        "{out:?}"
    );
}

#[test]
fn regression_run_once_does_not_end_a_moving_rollout_because_another_plan_fails() {
    // Given a plan that cannot be reconciled (an unreadable status file) beside a rollout
    // of v2 with a timed pause and a later step
    let settings =
        "apiVersion: rollgate.dev/v1alpha1\nkind: Settings\ntargets:\n  local: { local: {} }\n";
    let v1 = PlanFile::new("web").steps(&["setWeight: 20", "setWeight: 100"]);
    let broken = PlanFile::new("broken").steps(&["setWeight: 20", "setWeight: 100"]);
    let remote = Remote::with_files(&[
        ("rollgate.yaml".to_owned(), settings.to_owned()),
        (v1.path(), v1.yaml()),
        (broken.path(), broken.yaml()),
        (
            "status/broken.yaml".to_owned(),
            "{ not: [a status".to_owned(),
        ),
    ]);
    let once = || {
        Command::new(BIN)
            .args(["run", "--journal-targets", "--once", "--repo"])
            .arg(&remote.bare)
            .arg("--state-dir")
            .arg(remote.work_dir("state"))
            .env("RUST_LOG", "warn")
            .output()
            .expect("rollgate run --once")
    };
    let first = once();
    assert_eq!(first.status.code(), Some(1), "{first:?}");
    assert_eq!(remote.status("web").expect("v1").phase, Phase::Succeeded);
    let v2 = PlanFile::new("web").artifact("v2").steps(&[
        "setWeight: 20",
        "pause: { duration: 2s }",
        "setWeight: 100",
    ]);
    remote.human_commit(&v2.path(), |_| v2.yaml(), "web: v2");
    // When `run --once` runs
    let out = once();
    // Then the rollout went through its pause to the end (before: the run ended at the
    // pause, because the other plan failed in that quiet pass), and the run still says
    // that a plan failed
    let s = remote.status("web").expect("status");
    assert_eq!(
        (s.phase, s.candidate.as_str()),
        (Phase::Succeeded, "v2"),
        "{s:?}\n{out:?}"
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

/// A daemon killed (and reaped) when dropped, whatever the test found.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_target_added_to_the_settings_serves_its_plans_without_a_restart() {
    // Given a daemon running with only the `local` target, and a plan for `edge`
    // (refused: no such target)
    let edge = PlanFile::new("web").steps(&["setWeight: 20", "setWeight: 100"]);
    let plan = edge.yaml().replace("target: local", "target: edge");
    let remote = Remote::with_files(&[
        (
            "rollgate.yaml".to_owned(),
            support::rollout::SETTINGS.to_owned(),
        ),
        (edge.path(), plan),
    ]);
    let state = remote.work_dir("state");
    let _daemon = Running(
        Command::new(BIN)
            .args(["run", "--journal-targets", "--interval", "100ms", "--repo"])
            .arg(&remote.bare)
            .arg("--state-dir")
            .arg(&state)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("rollgate run"),
    );
    let journal = state.join("dry-run").join("edge.journal");
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        remote.status("web"),
        None,
        "a plan for a missing target is refused"
    );
    // When a human adds `edge` to the settings
    remote.human_commit(
        "rollgate.yaml",
        |s| s + "  edge: { local: {} }\n",
        "settings: the edge target",
    );
    // Then the same daemon builds it and the plan rolls out on it
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while remote
        .status("web")
        .is_none_or(|s| s.phase != Phase::Succeeded)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "web never succeeded: {:?}",
            remote.status("web")
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let calls = std::fs::read_to_string(&journal).expect("the edge target's journal");
    assert!(calls.contains("web"), "{calls}");
}

#[test]
fn an_invalid_settings_file_at_start_is_an_error_with_its_place() {
    // Given settings with a misspelt field
    let v1 = PlanFile::new("web").steps(&["setWeight: 20", "setWeight: 100"]);
    let remote = Remote::with_files(&[
        (
            "rollgate.yaml".to_owned(),
            "apiVersion: rollgate.dev/v1alpha1\nkind: Settings\ntargets:\n  local: { locale: {} }\n"
                .to_owned(),
        ),
        (v1.path(), v1.yaml()),
    ]);
    // When the daemon starts
    let out = Command::new(BIN)
        .args(["run", "--journal-targets", "--once", "--repo"])
        .arg(&remote.bare)
        .arg("--state-dir")
        .arg(remote.work_dir("state"))
        .env("RUST_LOG", "warn")
        .output()
        .expect("rollgate run --once");
    // Then it refuses to start, naming the file, line and column (before: it ran with no
    // targets at all, and every plan said "target not available")
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("rollgate.yaml:4:"), "{err}");
    assert!(err.contains("is not valid"), "{err}");
}

#[test]
fn regression_status_and_history_work_on_a_bare_remote_whose_head_names_master() {
    // Given a plain `git init --bare` (HEAD → master, unborn) that was pushed `main`
    let v1 = PlanFile::new("web").steps(&["setWeight: 20", "setWeight: 100"]);
    let remote = Remote::with_plans(&[&v1]);
    support::git(&remote.bare, &["symbolic-ref", "HEAD", "refs/heads/master"]);
    run_once(&remote);
    // When status and history are asked without --branch
    for sub in ["status", "history"] {
        let out = Command::new(BIN)
            .args([sub, "--repo"])
            .arg(&remote.bare)
            .output()
            .expect("rollgate");
        // Then they read main (the branch rollgate writes), not the unborn HEAD
        assert!(out.status.success(), "{sub}: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("web"),
            "{sub}: {out:?}"
        );
    }
}

#[test]
fn regression_a_dry_run_pushes_nothing_and_plays_the_rollout_in_memory() {
    // Given v1 stable and a change to v2 pushed
    let v1 = PlanFile::new("web").steps(&["setWeight: 20", "setWeight: 100"]);
    let remote = Remote::with_plans(&[&v1]);
    run_once(&remote);
    let v2 = PlanFile::new("web").artifact("v2").steps(&[
        "setWeight: 20",
        "setWeight: 50",
        "setWeight: 100",
    ]);
    remote.human_commit(&v2.path(), |_| v2.yaml(), "web: v2");
    let before = remote.head();
    let state = remote.work_dir("dry");
    // When `run --dry-run --once` runs
    let out = Command::new(BIN)
        .args(["run", "--dry-run", "--once", "--repo"])
        .arg(&remote.bare)
        .arg("--state-dir")
        .arg(&state)
        .env("RUST_LOG", "info")
        .output()
        .expect("rollgate run --dry-run");
    assert!(out.status.success(), "{out:?}");
    // Then the remote is untouched (before: Pending, Progressing… commits were pushed)
    assert_eq!(remote.head(), before);
    // And the log says what it would have committed, through to the end of the rollout
    let log = String::from_utf8_lossy(&out.stderr);
    let would: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("dry run: would commit"))
        .collect();
    assert!(would.len() >= 3, "{log}");
    assert!(would.iter().any(|l| l.contains("Succeeded")), "{log}");
    // And the targets only journalled
    let journal = std::fs::read_to_string(state.join("dry-run").join("local.journal"))
        .expect("the local target's journal");
    assert!(journal.lines().count() > 0);
}
