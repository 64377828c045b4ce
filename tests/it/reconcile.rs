//! The reconcile loop end to end: real bare remotes, the real `git` CLI as the human,
//! an in-process `Reconciler` with a recording target and scripted metrics, and a
//! synthetic clock handed to `tick(now)` wherever analysis or timed pauses need time.

use crate::support;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rollgate::model::status::Phase;
use rollgate::targets::TargetError;
use support::Remote;
use support::rollout::{LoggedCommit, PlanFile, World, set_artifact};
use support::{git, git_ok};

const BIN: &str = env!("CARGO_BIN_EXE_rollgate");

/// Given a remote with `plan` at v1, rolled out to Succeeded (a plan seen for the first time
/// has no stable version: it is deployed directly).
fn rolled_out(plan: &PlanFile) -> World {
    let mut w = World::new(&[plan]);
    w.run_until(&plan.name, 10, 40, |s| s.phase == Phase::Succeeded);
    w
}

fn is(phase: Phase, candidate: &str) -> impl Fn(&rollgate::model::status::Status) -> bool {
    let candidate = candidate.to_owned();
    move |s| s.phase == phase && s.candidate == candidate
}

/// The commits after `sha` on the remote's main, oldest first.
fn commits_after(remote: &Remote, sha: &str) -> Vec<LoggedCommit> {
    let all = remote.commits();
    let i = all
        .iter()
        .position(|c| c.sha == sha)
        .expect("the commit is on main");
    all[i + 1..].to_vec()
}

fn phases_and_steps(commits: &[LoggedCommit]) -> Vec<(String, String)> {
    commits
        .iter()
        .map(|c| {
            (
                c.trailer("Rollgate-Phase").unwrap_or("-").to_owned(),
                c.trailer("Rollgate-Step").unwrap_or("-").to_owned(),
            )
        })
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect()
}

#[test]
fn a_plan_change_rolls_out_in_stages_with_one_commit_per_transition() {
    // Given a plan rolled out at v1
    let plan = PlanFile::new("web");
    let mut w = rolled_out(&plan);
    let calls_before = w.target.calls("web").len();

    // When the human changes the artifact to v2
    let change = w
        .remote
        .human_commit(&plan.path(), set_artifact("v2"), "web: v2");
    let reports = w.run_until("web", 10, 40, is(Phase::Succeeded, "v2"));

    // Then every transition is exactly one status commit, touching only the status file
    let new = commits_after(&w.remote, &change);
    let transitions: usize = reports.iter().map(|r| r.transitions).sum();
    assert_eq!(new.len(), transitions, "one commit per transition");
    // The pass that sees the push records Pending and takes the first step; every later
    // pass records at most one transition
    assert_eq!(reports[0].transitions, 2, "{reports:?}");
    assert!(reports[1..].iter().all(|r| r.transitions <= 1));
    assert!(reports.iter().all(|r| r.errors == 0), "{reports:?}");
    for c in &new {
        assert!(c.is_status(), "not a status commit: {c:?}");
        assert_eq!(c.files, vec!["status/web.yaml".to_owned()], "{c:?}");
        assert_eq!(c.trailer("Rollgate-Plan"), Some("web"));
        assert_eq!(c.trailer("Rollgate-Revision"), Some(change.as_str()));
        assert_eq!(c.trailer("Rollgate-Artifact"), Some("v2"));
        assert_eq!(c.author, "rollgate");
    }
    // And the phases and steps tell the story, stage by stage
    assert_eq!(
        phases_and_steps(&new),
        pairs(&[
            ("Pending", "0/4"),
            ("Progressing", "1/4"),
            ("Progressing", "2/4"),
            ("Progressing", "3/4"),
            ("Progressing", "4/4"),
            ("Promoting", "4/4"),
            ("Succeeded", "4/4"),
        ])
    );
    let weights: Vec<&str> = new
        .iter()
        .filter_map(|c| c.trailer("Rollgate-Weight"))
        .collect();
    assert_eq!(weights, ["0", "10", "10", "50", "100", "100", "100"]);
    // And leaving the analysis carries its passing verdict as evidence
    let verdicts = new[3].trailers_named("Rollgate-Verdict");
    assert_eq!(verdicts.len(), 1, "{:?}", new[3]);
    assert!(verdicts[0].starts_with("pass success-rate"), "{verdicts:?}");

    // And the target was driven in order, once per stage
    assert_eq!(
        w.target.calls("web")[calls_before..],
        [
            "start v2",
            "weight 10",
            "weight 50",
            "weight 100",
            "promote v2"
        ]
    );
    let wl = w.target.workload("web");
    assert_eq!((wl.stable.as_deref(), wl.candidate), (Some("v2"), None));
    let s = w.status("web");
    assert_eq!(
        (s.stable.as_deref(), s.revision.as_str()),
        (Some("v2"), change.as_str())
    );

    // And `rollgate history --output json` lists every transition of the rollout
    let out = Command::new(BIN)
        .args(["history", "web", "--output", "json", "--repo"])
        .arg(&w.remote.bare)
        .output()
        .expect("rollgate history runs");
    assert!(out.status.success(), "{out:?}");
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    let listed: Vec<(String, String)> = entries
        .iter()
        .filter(|e| e["revision"] == change.as_str())
        .map(|e| {
            (
                e["phase"].as_str().unwrap_or("-").to_owned(),
                e["step"].as_str().unwrap_or("-").to_owned(),
            )
        })
        .collect();
    assert_eq!(listed, phases_and_steps(&new));
    let commits: Vec<&str> = entries
        .iter()
        .filter(|e| e["revision"] == change.as_str())
        .filter_map(|e| e["commit"].as_str())
        .collect();
    let expected: Vec<&str> = new.iter().map(|c| c.sha.as_str()).collect();
    assert_eq!(commits, expected);
}

/// The daemon keeps each status file parsed while its bytes stay the same (a pass asks
/// for it up to three times). The kept parse must never outlive its file.
#[test]
fn regression_the_status_the_daemon_keeps_parsed_follows_every_commit() {
    // Given a plan rolled out at v1
    let plan = PlanFile::new("web");
    let mut w = rolled_out(&plan);
    assert_eq!(w.rec.status("web"), w.remote.status("web"));

    // When the human changes the artifact and the daemon walks the rollout
    w.remote
        .human_commit(&plan.path(), set_artifact("v2"), "web: v2");
    let mut seen = Vec::new();
    for _ in 0..40 {
        let r = w.tick();
        // Then after every pass, moving or not, the daemon's status is the file at the
        // remote's head, which its own commits moved
        let remote = w.remote.status("web");
        assert_eq!(w.rec.status("web"), remote, "after {r:?}");
        assert_eq!(
            w.rec.live_status("web").map(|s| s.phase),
            remote.as_ref().map(|s| s.phase)
        );
        let s = remote.expect("a status file");
        seen.push(s.phase);
        if s.phase == Phase::Succeeded && s.candidate == "v2" {
            break;
        }
        w.wait(10);
    }
    // And the rollout went through its stages to the end
    assert_eq!(seen.last(), Some(&Phase::Succeeded), "{seen:?}");
    assert!(
        seen.contains(&Phase::Progressing) && seen.contains(&Phase::Promoting),
        "{seen:?}"
    );
}

/// The remote's status of `plan` at this moment (for hooks, which cannot hold a `Remote`).
fn remote_phase(bare: &std::path::Path, plan: &str) -> String {
    let text = git(bare, &["show", &format!("main:status/{plan}.yaml")]);
    let s = rollgate::model::status::Status::from_yaml(&text).expect("status");
    format!("{} {}", s.phase.as_str(), s.candidate)
}

#[test]
fn regression_a_pushed_artifact_reaches_the_target_in_the_pass_that_sees_it() {
    // Given a plan rolled out at v1, and a target that notes what Git says at each call
    let plan = PlanFile::new("web");
    let mut w = rolled_out(&plan);
    let calls_before = w.target.calls("web").len();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (bare, seen2) = (w.remote.bare.clone(), seen.clone());
    w.target.before_each_action(move |action| {
        let phase = remote_phase(&bare, "web");
        seen2
            .lock()
            .expect("lock")
            .push(format!("{action} / {phase}"));
        Ok(())
    });

    // When the human changes the artifact to v2 and one pass runs
    let change = w
        .remote
        .human_commit(&plan.path(), set_artifact("v2"), "web: v2");
    let r = w.tick();

    // Then that pass started the candidate (before: only the next pass did)
    assert_eq!((r.transitions, r.errors), (2, 0), "{r:?}");
    assert_eq!(
        w.target.calls("web")[calls_before..],
        ["start v2", "weight 10"]
    );
    // And the Pending commit was on the remote before the target heard of v2
    assert_eq!(
        *seen.lock().expect("lock"),
        ["web start v2 / Pending v2", "web weight 10 / Pending v2"]
    );
    // And Git keeps one commit per transition, Pending first
    assert_eq!(
        phases_and_steps(&commits_after(&w.remote, &change)),
        pairs(&[("Pending", "0/4"), ("Progressing", "1/4")])
    );

    // When the human pushes v3 between passes (the daemon took in its own commits
    // without a fetch)
    w.target.clear_hook();
    let calls_before = w.target.calls("web").len();
    let v3 = w
        .remote
        .human_commit(&plan.path(), set_artifact("v3"), "web: v3");
    w.tick();
    // Then the next pass sees it: v2 is superseded and v3 starts in that same pass
    assert_eq!(
        w.target.calls("web")[calls_before..],
        ["rollback v1", "start v3", "weight 10"]
    );
    assert_eq!(
        phases_and_steps(&commits_after(&w.remote, &v3)),
        pairs(&[("Pending", "0/4"), ("Progressing", "1/4")])
    );
    w.run_until("web", 10, 40, is(Phase::Succeeded, "v3"));
}

#[test]
fn regression_a_plan_the_gate_rejects_gets_no_pending_and_no_target_call() {
    // Given a plan rolled out at v1
    let plan = PlanFile::new("web");
    let mut w = rolled_out(&plan);
    let calls = w.target.calls("web").len();
    let head = w.remote.head();
    // When the human pushes v2 with a field the schema does not know
    let change = w.remote.human_commit(
        &plan.path(),
        |s| set_artifact("v2")(s).replace("spec:\n", "spec:\n  bogus: 1\n"),
        "web: v2, broken",
    );
    assert_ne!(w.remote.head(), head);
    let r = w.tick();
    // Then no status commit and no target call
    assert_eq!((r.transitions, r.actions), (0, 0), "{r:?}");
    assert!(commits_after(&w.remote, &change).is_empty());
    assert_eq!(w.target.calls("web").len(), calls);
    assert!(w.rec.report().rejected.contains(&plan.path()));
}

#[test]
fn regression_a_status_push_that_lost_a_race_is_taken_in_by_a_fetch_not_in_place() {
    // Given two plans rolled out at v1
    let api = PlanFile::new("api").port(18083);
    let web = PlanFile::new("web");
    let mut w = World::new(&[&api, &web]);
    w.run_until("api", 10, 40, |s| s.phase == Phase::Succeeded);
    w.run_until("web", 10, 40, |s| s.phase == Phase::Succeeded);
    // And a human who pushes api at v3 while the daemon starts api's v2 (after api's
    // Pending commit, before its next one: that write loses the race)
    let human = w.remote.human.clone();
    let api_path = api.path();
    let pushed = Arc::new(AtomicBool::new(false));
    let pushed2 = pushed.clone();
    w.target.before_each_action(move |action| {
        if action == "api start v2" && !pushed2.swap(true, Ordering::SeqCst) {
            git(&human, &["pull", "-q", "--rebase", "origin", "main"]);
            let file = human.join(&api_path);
            let text = std::fs::read_to_string(&file).expect("read");
            std::fs::write(&file, set_artifact("v3")(text)).expect("write");
            git(&human, &["commit", "-qam", "api: v3"]);
            git(&human, &["push", "-q", "origin", "main"]);
        }
        Ok(())
    });

    // When one commit changes both to v2, and one pass runs
    w.remote.pull();
    std::fs::write(
        w.remote.human.join(api.path()),
        api.clone().artifact("v2").yaml(),
    )
    .expect("write");
    std::fs::write(
        w.remote.human.join(web.path()),
        web.clone().artifact("v2").yaml(),
    )
    .expect("write");
    w.remote.human(&["commit", "-qam", "api and web: v2"]);
    w.remote.human(&["push", "-q", "origin", "main"]);
    let r = w.tick();

    // Then api's next status was recomputed on the human's commit and pushed on top of it
    assert!(pushed.load(Ordering::SeqCst));
    assert_eq!(r.errors, 0, "{r:?}");
    let subjects = w.remote.log("%s");
    assert!(subjects.lines().any(|l| l == "api: v3"), "{subjects}");
    let api_v3 = git(
        &w.remote.bare,
        &["log", "-1", "--format=%H", "--grep=^api: v3$", "main"],
    );
    let after: Vec<String> = commits_after(&w.remote, &api_v3)
        .iter()
        .map(|c| {
            format!(
                "{} {}",
                c.trailer("Rollgate-Plan").unwrap_or("-"),
                c.trailer("Rollgate-Phase").unwrap_or("-")
            )
        })
        .collect();
    assert_eq!(after, ["api Progressing"]);
    // And both had started in that pass, on the head it read (Pending, then first steps)
    assert!(w.target.calls("web").contains(&"start v2".to_owned()));
    // And the write that lost the race did not move the pass's snapshot on past the
    // human's commit: the next pass fetches and reads it
    w.target.clear_hook();
    w.tick();
    // And the human's v3 was seen: it supersedes api's v2 and starts at once
    let calls = w.target.calls("api");
    assert_eq!(
        calls[calls.len() - 3..],
        ["rollback v1", "start v3", "weight 10"]
    );
    assert_eq!(w.status("api").candidate, "v3");
}

#[test]
fn a_new_plan_is_deployed_directly_in_one_status_commit_then_confirmed() {
    // Given a remote with a new plan at v1 (steps 10% → analysis → 50% → 100%) and no status
    let plan = PlanFile::new("web");
    let mut w = World::new(&[&plan]);
    let seeded = w.remote.head();

    // When the daemon runs until v1 is stable
    let reports = w.run_until("web", 10, 5, |s| s.phase == Phase::Succeeded);

    // Then v1 was deployed directly: one commit saying so, one confirming it serves
    assert!(reports.iter().all(|r| r.errors == 0), "{reports:?}");
    let new = commits_after(&w.remote, &seeded);
    assert_eq!(
        phases_and_steps(&new),
        pairs(&[("Promoting", "0/0"), ("Succeeded", "0/0")])
    );
    let deploy = &new[0];
    assert_eq!(deploy.subject, "web: first rollout, deploying v1 directly");
    assert_eq!(deploy.files, vec!["status/web.yaml".to_owned()]);
    assert_eq!(deploy.trailer("Rollgate-First-Rollout"), Some("direct"));
    assert_eq!(deploy.trailer("Rollgate-Weight"), Some("100"));
    assert_eq!(
        deploy.trailer("Rollgate-Reason"),
        Some("first rollout of v1: no stable version to compare with; deployed directly")
    );
    assert!(deploy.trailers_named("Rollgate-Verdict").is_empty());
    assert_eq!(new[1].trailer("Rollgate-First-Rollout"), None);
    // And the target got one promotion: no candidate beside nothing, no weights, no analysis
    assert_eq!(w.target.calls("web"), ["promote v1"]);
    let wl = w.target.workload("web");
    assert_eq!((wl.stable.as_deref(), wl.candidate), (Some("v1"), None));
    assert_eq!(w.metrics.asked(), 0, "nothing to judge on a first rollout");
    let s = w.status("web");
    assert!(s.direct);
    assert_eq!((s.stable.as_deref(), s.weight), (Some("v1"), 100));

    // And `rollgate history` tells it from the trailers
    let out = Command::new(BIN)
        .args(["history", "web", "--output", "json", "--repo"])
        .arg(&w.remote.bare)
        .output()
        .expect("rollgate history runs");
    assert!(out.status.success(), "{out:?}");
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(entries[0]["first_rollout"], "direct", "{entries:?}");

    // And the next change walks every step with v1 behind the other share
    let change = w
        .remote
        .human_commit(&plan.path(), set_artifact("v2"), "web: v2");
    w.run_until("web", 10, 40, is(Phase::Succeeded, "v2"));
    assert_eq!(commits_after(&w.remote, &change).len(), 7);
    assert!(!w.status("web").direct);
}

#[test]
fn a_new_plan_with_first_rollout_steps_walks_its_steps_with_nothing_behind() {
    // Given a new plan that asks for its steps even on the first rollout
    let plan = PlanFile::new("web").first_rollout_steps();
    let mut w = World::new(&[&plan]);
    let seeded = w.remote.head();
    // When it runs to the end
    w.run_until("web", 10, 40, |s| s.phase == Phase::Succeeded);
    // Then it walked every step, said why at the start, and judged its threshold check
    let new = commits_after(&w.remote, &seeded);
    assert_eq!(
        phases_and_steps(&new),
        pairs(&[
            ("Pending", "0/4"),
            ("Progressing", "1/4"),
            ("Progressing", "2/4"),
            ("Progressing", "3/4"),
            ("Progressing", "4/4"),
            ("Promoting", "4/4"),
            ("Succeeded", "4/4"),
        ])
    );
    assert_eq!(new[0].trailer("Rollgate-First-Rollout"), Some("steps"));
    assert!(
        new[3].trailers_named("Rollgate-Verdict")[0].starts_with("pass success-rate"),
        "{:?}",
        new[3]
    );
    assert_eq!(
        w.target.calls("web"),
        [
            "start v1",
            "weight 10",
            "weight 50",
            "weight 100",
            "promote v1"
        ]
    );
}

#[test]
fn a_failed_judgement_rolls_back_and_reverts_the_plan_change() {
    // Given a plan rolled out at v1, and v2 failing its success rate
    let plan = PlanFile::new("web");
    let mut w = rolled_out(&plan);
    let calls_before = w.target.calls("web").len();
    w.metrics.set("v2", 0.42);

    // When the human changes the artifact to v2
    let change = w
        .remote
        .human_commit(&plan.path(), set_artifact("v2"), "web: v2");
    w.run_until("web", 10, 40, is(Phase::RolledBack, "v2"));

    // Then rollgate pushed a revert of that change, with the evidence in its trailers
    let new = commits_after(&w.remote, &change);
    let reverts: Vec<&LoggedCommit> = new
        .iter()
        .filter(|c| c.trailer("Rollgate-Rollback-Of").is_some())
        .collect();
    assert_eq!(reverts.len(), 1, "{new:#?}");
    let revert = reverts[0];
    assert_eq!(
        revert.trailer("Rollgate-Rollback-Of"),
        Some(change.as_str())
    );
    assert_eq!(revert.trailer("Rollgate-Plan"), Some("web"));
    assert_eq!(revert.subject, "Roll back web to v1");
    assert_eq!(revert.files, vec![plan.path()]);
    let evidence = revert.trailers_named("Rollgate-Verdict");
    assert!(
        evidence.iter().any(|v| v.starts_with("fail success-rate")),
        "{evidence:?}"
    );
    // And the plan file is back at the old artifact, exactly as before the change
    assert_eq!(w.remote.file(&plan.path()), plan.yaml().trim_end());
    // And the rollback was recorded as status transitions
    let phases: Vec<&str> = new
        .iter()
        .filter_map(|c| c.trailer("Rollgate-Phase"))
        .collect();
    assert_eq!(
        phases,
        [
            "Pending",
            "Progressing",
            "Progressing",
            "RollingBack",
            "RolledBack"
        ]
    );
    // And the target is back on stable, the candidate gone
    assert_eq!(
        w.target.calls("web")[calls_before..],
        ["start v2", "weight 10", "rollback v1"]
    );
    let wl = w.target.workload("web");
    assert_eq!(
        (wl.stable.as_deref(), wl.candidate, wl.weight),
        (Some("v1"), None, 0)
    );
    let s = w.status("web");
    assert_eq!(s.stable.as_deref(), Some("v1"));

    // And nothing re-applies the bad version afterwards
    let head = w.remote.head();
    for _ in 0..5 {
        w.wait(60);
        let r = w.tick();
        assert_eq!((r.transitions, r.actions, r.reverts), (0, 0, 0), "{r:?}");
    }
    assert_eq!(w.remote.head(), head);
}

#[test]
fn a_plan_changed_again_after_the_failing_change_is_restored_not_reverted() {
    // Given a plan rolled out at v1, and v2 failing its success rate
    let plan = PlanFile::new("web");
    let mut w = rolled_out(&plan);
    w.metrics.set("v2", 0.42);
    // And the human changed the artifact to v2, and the canary is serving
    let change = w
        .remote
        .human_commit(&plan.path(), set_artifact("v2"), "web: v2");
    w.run_until("web", 10, 10, |s| s.phase == Phase::Progressing);

    // When the human edits the same line again (the artifact stays v2) before the verdict
    let again = w.remote.human_commit(
        &plan.path(),
        |t| t.replace("  artifact: v2\n", "  artifact: v2  # the new build\n"),
        "web: note the new build",
    );
    w.run_until("web", 10, 40, is(Phase::RolledBack, "v2"));

    // Then the stable artifact is restored by a commit that keeps the later edit
    let new = commits_after(&w.remote, &again);
    let rollbacks: Vec<&LoggedCommit> = new
        .iter()
        .filter(|c| c.trailer("Rollgate-Rollback-Of").is_some())
        .collect();
    assert_eq!(rollbacks.len(), 1, "{new:#?}");
    let restore = rollbacks[0];
    assert_eq!(restore.subject, "Restore web to v1");
    assert_eq!(
        restore.trailer("Rollgate-Rollback-Of"),
        Some(change.as_str())
    );
    assert_eq!(restore.files, vec![plan.path()]);
    let file = w.remote.file(&plan.path());
    assert!(
        file.contains("\n  artifact: v1  # the new build\n"),
        "{file}"
    );
    // And no conflicting revert was attempted or pushed
    assert!(
        !new.iter().any(|c| c.subject.starts_with("Roll back")),
        "{new:#?}"
    );
    // And the target is back on stable
    let wl = w.target.workload("web");
    assert_eq!((wl.stable.as_deref(), wl.candidate), (Some("v1"), None));
}

/// Given `before` rolled out at v1, the human changes it to `after` (v2); rollgate runs
/// until `reached`; the human reverts the change with `git revert`.
fn human_revert_while(
    before: &PlanFile,
    after: &PlanFile,
    reached: impl Fn(&rollgate::model::status::Status) -> bool,
) {
    let mut w = rolled_out(before);
    let change = w
        .remote
        .human_commit(&before.path(), |_| after.yaml(), "web: v2");
    w.run_until("web", 10, 20, reached);
    let calls_before = w.target.calls("web").len();

    // When the human reverts the plan change
    w.remote.pull();
    w.remote.human(&["revert", "--no-edit", &change]);
    w.remote.human(&["push", "-q", "origin", "main"]);
    let reverted = w.remote.head();

    // Then the very next pass rolls back
    w.wait(1);
    let r = w.tick();
    assert_eq!(r.transitions, 1, "{r:?}");
    let s = w.status("web");
    assert_eq!(s.phase, Phase::RollingBack);
    assert!(
        s.message
            .as_deref()
            .is_some_and(|m| m.contains("reverted by a human")),
        "{s:?}"
    );
    assert_eq!(w.target.calls("web")[calls_before..], ["rollback v1"]);
    w.run_until("web", 10, 5, |s| s.phase == Phase::RolledBack);

    // And rollgate pushed no revert of its own: the human's revert is the record
    let new = commits_after(&w.remote, &reverted);
    assert!(new.iter().all(LoggedCommit::is_status), "{new:#?}");
    assert!(
        w.remote
            .commits()
            .iter()
            .all(|c| c.trailer("Rollgate-Rollback-Of").is_none())
    );
    assert_eq!(w.remote.file(&before.path()), before.yaml().trim_end());
    let wl = w.target.workload("web");
    assert_eq!(
        (wl.stable.as_deref(), wl.candidate, wl.weight),
        (Some("v1"), None, 0)
    );
}

#[test]
fn a_human_revert_during_an_analysis_aborts_at_once() {
    let plan = PlanFile::new("web");
    human_revert_while(&plan, &plan.clone().artifact("v2"), |s| {
        s.phase == Phase::Progressing && s.step == 1
    });
}

#[test]
fn a_human_revert_during_an_untimed_pause_aborts_at_once() {
    let before = PlanFile::new("web").steps(&["setWeight: 100"]);
    let after = PlanFile::new("web").artifact("v2").steps(&[
        "setWeight: 10",
        "pause: {}",
        "setWeight: 100",
    ]);
    human_revert_while(&before, &after, |s| s.phase == Phase::Paused);
}

#[test]
fn a_revert_after_success_to_a_recently_stable_artifact_is_fast_tracked() {
    // Given v1 then v2 rolled out, both judged on metrics
    let plan = PlanFile::new("web");
    let mut w = rolled_out(&plan);
    let change = w
        .remote
        .human_commit(&plan.path(), set_artifact("v2"), "web: v2");
    w.run_until("web", 10, 40, is(Phase::Succeeded, "v2"));
    let asked = w.metrics.asked();
    assert!(asked > 0);
    let calls_before = w.target.calls("web").len();

    // When the human reverts the v2 change
    w.remote.pull();
    w.remote.human(&["revert", "--no-edit", &change]);
    w.remote.human(&["push", "-q", "origin", "main"]);
    let reverted = w.remote.head();
    w.run_until("web", 10, 20, is(Phase::Succeeded, "v1"));

    // Then the rollout of v1 skipped every analysis: the metrics source was not asked
    assert_eq!(w.metrics.asked(), asked, "analysis ran on a fast-track");
    let new = commits_after(&w.remote, &reverted);
    let first = new.first().expect("a Pending commit");
    assert_eq!(first.trailer("Rollgate-Phase"), Some("Pending"));
    assert!(
        first
            .trailer("Rollgate-Reason")
            .is_some_and(|r| r.contains("fast-tracked")),
        "{first:?}"
    );
    // And only the weight steps ran
    assert_eq!(
        phases_and_steps(&new),
        pairs(&[
            ("Pending", "0/3"),
            ("Progressing", "1/3"),
            ("Progressing", "2/3"),
            ("Progressing", "3/3"),
            ("Promoting", "3/3"),
            ("Succeeded", "3/3"),
        ])
    );
    assert_eq!(
        w.target.calls("web")[calls_before..],
        [
            "start v1",
            "weight 10",
            "weight 50",
            "weight 100",
            "promote v1"
        ]
    );
    let s = w.status("web");
    assert!(s.fast_track);
    assert_eq!(s.stable.as_deref(), Some("v1"));
}

/// How many status commits acknowledge the command commit `sha`.
fn acks(remote: &Remote, sha: &str) -> usize {
    remote
        .rollgate_commits()
        .iter()
        .filter(|c| c.trailer("Rollgate-Command-Ack") == Some(sha))
        .count()
}

/// Tick `n` times, an hour apart; assert nothing moved.
fn nothing_moves(w: &mut World, n: usize) {
    let head = w.remote.head();
    for _ in 0..n {
        w.wait(3600);
        let r = w.tick();
        assert_eq!((r.transitions, r.reverts, r.errors), (0, 0, 0), "{r:?}");
    }
    assert_eq!(w.remote.head(), head, "a commit was made while waiting");
}

#[test]
fn an_untimed_pause_waits_for_a_promote_commit_acted_on_once_across_restarts() {
    // Given a plan with two untimed pauses, walked on its first rollout, waiting at the first
    let plan = PlanFile::new("web")
        .steps(&[
            "setWeight: 10",
            "pause: {}",
            "setWeight: 50",
            "pause: {}",
            "setWeight: 100",
        ])
        .first_rollout_steps();
    let mut w = World::new(&[&plan]);
    w.run_until("web", 10, 10, |s| s.phase == Phase::Paused);
    assert_eq!(w.status("web").step, 1);
    // When time passes: nothing moves
    nothing_moves(&mut w, 4);

    // When the human promotes with `rollgate promote --push`
    w.remote.pull();
    let out = Command::new(BIN)
        .args(["promote", "web", "--push", "--repo"])
        .arg(&w.remote.human)
        .output()
        .expect("rollgate promote runs");
    assert!(out.status.success(), "{out:?}");
    let first = w.remote.head();
    // Then the next pass passes the pause, and acknowledges the command
    let r = w.tick();
    assert_eq!(r.transitions, 1, "{r:?}");
    let s = w.status("web");
    assert_eq!((s.phase, s.step, s.weight), (Phase::Progressing, 2, 50));
    assert_eq!(s.last_command.as_deref(), Some(first.as_str()));
    assert_eq!(acks(&w.remote, &first), 1);
    w.run_until("web", 10, 5, |s| s.phase == Phase::Paused);
    assert_eq!(w.status("web").step, 3);

    // When the daemon restarts: the old command is not acted on again
    w.restart();
    nothing_moves(&mut w, 3);
    assert_eq!(w.status("web").step, 3);

    // When the human promotes with plain git
    w.remote.human_promote("web");
    let second = w.remote.head();
    let r = w.tick();
    assert_eq!(r.transitions, 1, "{r:?}");
    let s = w.status("web");
    assert_eq!((s.phase, s.step, s.weight), (Phase::Progressing, 4, 100));
    w.run_until("web", 10, 5, |s| s.phase == Phase::Succeeded);

    // And after another restart nothing is replayed: each command acknowledged once
    w.restart();
    nothing_moves(&mut w, 3);
    assert_eq!(acks(&w.remote, &first), 1);
    assert_eq!(acks(&w.remote, &second), 1);
    // (Each restart re-applied the state Git records, idempotently: the second pause's
    // weight, then the stable version; no step was taken twice.)
    assert_eq!(
        w.target.calls("web"),
        [
            "start v1",
            "weight 10",
            "weight 50",
            "start v1",
            "weight 50",
            "weight 100",
            "promote v1",
            "promote v1"
        ]
    );
}

const DENY_V666: &str = "package rollgate.test.no_v666

import rego.v1

deny contains msg if {
\tinput.plan.spec.artifact == \"v666\"
\tmsg := \"v666 is known to be broken\"
}
";

#[test]
fn a_policy_denied_change_touches_no_target() {
    // Given a repository policy denying v666, a plan at v1 and a plan denied from the start
    let web = PlanFile::new("web");
    let evil = PlanFile::new("evil").artifact("v666").port(18081);
    let remote = Remote::with_files(&[
        (
            "rollgate.yaml".to_owned(),
            support::rollout::SETTINGS.to_owned(),
        ),
        (web.path(), web.yaml()),
        (evil.path(), evil.yaml()),
        ("policies/no_v666.rego".to_owned(), DENY_V666.to_owned()),
    ]);
    let mut w = World::on(remote, true);
    w.run_until("web", 10, 40, |s| s.phase == Phase::Succeeded);
    assert!(w.target.calls("evil").is_empty());
    assert!(w.remote.status("evil").is_none());
    let calls_before = w.target.calls("web").len();

    // When the human changes web to v666
    w.remote
        .human_commit(&web.path(), set_artifact("v666"), "web: v666");
    let head = w.remote.head();
    for _ in 0..5 {
        let r = w.tick();
        assert_eq!((r.transitions, r.actions), (0, 0), "{r:?}");
        w.wait(60);
    }

    // Then the plan is rejected by the policy, and no target was called for it
    assert!(
        w.rec.report().rejected.contains(&web.path()),
        "{:?}",
        w.rec.report().rejected
    );
    assert!(
        w.rec
            .diagnostics()
            .iter()
            .any(|d| d.file == web.path() && d.to_string().contains("v666 is known to be broken")),
        "{:?}",
        w.rec.diagnostics()
    );
    assert_eq!(w.target.calls("web").len(), calls_before);
    assert!(w.target.calls("evil").is_empty());
    // And nothing was written: the last status still says v1 is stable
    assert_eq!(w.remote.head(), head);
    assert_eq!(w.status("web").phase, Phase::Succeeded);
    assert_eq!(w.target.workload("web").stable.as_deref(), Some("v1"));
}

#[test]
fn a_schema_invalid_plan_touches_no_target_while_a_valid_one_rolls_out() {
    // Given a valid plan and an invalid one (an unknown field, a weight over 100)
    let web = PlanFile::new("web");
    let broken = PlanFile::new("broken")
        .port(18082)
        .steps(&["setWeight: 500", "setWieght: 100"]);
    let mut w = World::new(&[&web, &broken]);
    w.run_until("web", 10, 40, |s| s.phase == Phase::Succeeded);
    assert!(w.rec.report().rejected.contains(&broken.path()));
    assert!(w.target.calls("broken").is_empty());

    // When one commit changes both: web to v2, broken to v2 (still invalid)
    w.remote.pull();
    std::fs::write(
        w.remote.human.join(web.path()),
        web.clone().artifact("v2").yaml(),
    )
    .expect("write");
    std::fs::write(
        w.remote.human.join(broken.path()),
        broken.clone().artifact("v2").yaml(),
    )
    .expect("write");
    w.remote.human(&["commit", "-qam", "web and broken: v2"]);
    w.remote.human(&["push", "-q", "origin", "main"]);
    w.run_until("web", 10, 40, is(Phase::Succeeded, "v2"));

    // Then the valid plan rolled out, and the invalid one never reached a target
    assert!(w.target.calls("broken").is_empty());
    assert!(w.remote.status("broken").is_none());
    assert!(
        w.rec
            .diagnostics()
            .iter()
            .any(|d| d.file == broken.path() && d.is_error())
    );
    assert_eq!(w.target.workload("web").stable.as_deref(), Some("v2"));
}

#[test]
fn rollgate_never_reacts_to_its_own_commits() {
    // Given a plan with a long timed pause, walked on its first rollout
    let plan = PlanFile::new("web")
        .steps(&["setWeight: 10", "pause: { duration: 1h }", "setWeight: 100"])
        .first_rollout_steps();
    let mut w = World::new(&[&plan]);
    // When each pass writes a status commit, the pass right after it at the same time,
    // with nothing due, writes nothing and calls no target
    for _ in 0..10 {
        let r = w.tick();
        if r.transitions == 0 {
            break;
        }
        let own = w.remote.commits().pop().expect("a commit");
        assert!(own.is_rollgate(), "{own:?}");
        if w.status("web").phase == Phase::Paused {
            let head = w.remote.head();
            let calls = w.target.all_calls();
            let again = w.tick();
            assert_eq!(
                (again.transitions, again.actions, again.reverts),
                (0, 0, 0),
                "{again:?}"
            );
            assert_eq!(w.remote.head(), head);
            assert_eq!(w.target.all_calls(), calls);
            break;
        }
    }
    assert_eq!(w.status("web").phase, Phase::Paused);
    // And many passes later, still inside the pause, nothing more
    let head = w.remote.head();
    for _ in 0..10 {
        w.wait(60);
        let r = w.tick();
        assert_eq!((r.transitions, r.actions), (0, 0), "{r:?}");
    }
    assert_eq!(w.remote.head(), head);
    // And once the pause ends the rollout goes on (the loop is not stuck either)
    w.run_until("web", 600, 10, |s| s.phase == Phase::Succeeded);
    let head = w.remote.head();
    for _ in 0..3 {
        w.wait(3600);
        assert_eq!(w.tick().transitions, 0);
    }
    assert_eq!(w.remote.head(), head);
}

#[test]
fn a_push_race_with_a_human_never_drops_a_commit_and_the_rollout_finishes() {
    // Given a human (the git CLI, another process) pushing commits in a tight loop, and a
    // plan of seven steps walked on its first rollout
    let plan = PlanFile::new("web")
        .steps(&[
            "setWeight: 5",
            "setWeight: 10",
            "setWeight: 20",
            "setWeight: 35",
            "setWeight: 50",
            "setWeight: 75",
            "setWeight: 100",
        ])
        .first_rollout_steps();
    let mut w = World::new(&[&plan]);
    let stop = Arc::new(AtomicBool::new(false));
    let human_dir = w.remote.human.clone();
    let stop2 = stop.clone();
    let human = std::thread::spawn(move || {
        let mut pushed = Vec::new();
        let mut i = 0;
        while !stop2.load(Ordering::Relaxed) && i < 300 {
            i += 1;
            std::fs::write(human_dir.join(format!("notes-{i}.txt")), format!("{i}\n"))
                .expect("write");
            git(&human_dir, &["add", "-A"]);
            git(&human_dir, &["commit", "-q", "-m", &format!("human {i}")]);
            let mut done = false;
            for _ in 0..100 {
                if git_ok(&human_dir, &["push", "-q", "origin", "main"]) {
                    done = true;
                    break;
                }
                git(&human_dir, &["pull", "-q", "--rebase", "origin", "main"]);
            }
            assert!(done, "human {i} could not be pushed");
            pushed.push(format!("human {i}"));
        }
        pushed
    });

    // When a full rollout writes its transitions back meanwhile
    let mut reports = Vec::new();
    for _ in 0..60 {
        reports.push(w.tick());
        if w.rec
            .status("web")
            .is_some_and(|s| s.phase == Phase::Succeeded)
        {
            break;
        }
        w.wait(10);
    }
    stop.store(true, Ordering::Relaxed);
    let pushed = human.join().expect("human thread");

    // Then the rollout finished, each transition once
    assert_eq!(w.status("web").phase, Phase::Succeeded);
    let status_commits: Vec<LoggedCommit> = w
        .remote
        .rollgate_commits()
        .into_iter()
        .filter(LoggedCommit::is_status)
        .collect();
    assert_eq!(status_commits.len(), 1 + 7 + 2, "{status_commits:#?}");
    assert_eq!(
        w.target.calls("web"),
        [
            "start v1",
            "weight 5",
            "weight 10",
            "weight 20",
            "weight 35",
            "weight 50",
            "weight 75",
            "weight 100",
            "promote v1"
        ]
    );
    // And every human commit is in main's history
    let subjects = w.remote.log("%s");
    for h in &pushed {
        assert!(subjects.lines().any(|l| l == h), "{h} was dropped");
    }
    assert!(!pushed.is_empty());
    // And the remote's reflog shows only fast-forwards
    support::rollout::assert_only_fast_forwards(&w.remote);
    eprintln!(
        "human pushed {} commits during a rollout of {} transitions",
        pushed.len(),
        status_commits.len()
    );
}

/// The plan file at the remote's head names `artifact`.
fn plan_names(w: &World, plan: &PlanFile, artifact: &str) -> bool {
    w.remote
        .file(&plan.path())
        .contains(&format!("\n  artifact: {artifact}\n"))
}

#[test]
fn regression_a_failed_change_merged_with_a_merge_commit_is_rolled_back_in_git() {
    // Given a plan rolled out at v1, and v2 failing its success rate
    let plan = PlanFile::new("web");
    let mut w = rolled_out(&plan);
    w.metrics.set("v2", 0.42);

    // When the change to v2 arrives as a pull request merged with a merge commit
    w.remote.pull();
    w.remote.human(&["checkout", "-q", "-b", "bump"]);
    let path = w.remote.human.join(plan.path());
    let text = std::fs::read_to_string(&path).expect("read plan");
    std::fs::write(&path, set_artifact("v2")(text)).expect("write plan");
    w.remote.human(&["commit", "-qam", "web: v2"]);
    w.remote.human(&["checkout", "-q", "main"]);
    w.remote.human(&[
        "merge",
        "-q",
        "--no-ff",
        "--no-edit",
        "-m",
        "Merge pull request #7 from bump",
        "bump",
    ]);
    w.remote.human(&["push", "-q", "origin", "main"]);
    let mut reports = Vec::new();
    for _ in 0..12 {
        reports.push(w.tick());
        w.wait(10);
    }

    // Then the rollback is recorded and Git is back at v1, like any failed change
    let s = w.status("web");
    assert_eq!(
        (s.phase, s.candidate.as_str()),
        (Phase::RolledBack, "v2"),
        "{reports:#?}\n{}",
        w.remote.log("%s")
    );
    assert!(plan_names(&w, &plan, "v1"), "{}", w.remote.log("%s"));
    assert_eq!(w.target.workload("web").stable.as_deref(), Some("v1"));
}

#[test]
fn regression_a_failed_change_pushed_with_a_later_edit_is_rolled_back_in_git() {
    // Given a plan rolled out at v1, and v2 failing its success rate
    let plan = PlanFile::new("web");
    let mut w = rolled_out(&plan);
    w.metrics.set("v2", 0.42);

    // When the human pushes two commits at once: v2, then an edit of another line
    w.remote.pull();
    let path = w.remote.human.join(plan.path());
    let text = std::fs::read_to_string(&path).expect("read plan");
    std::fs::write(&path, set_artifact("v2")(text)).expect("write plan");
    w.remote.human(&["commit", "-qam", "web: v2"]);
    let text = std::fs::read_to_string(&path).expect("read plan");
    std::fs::write(
        &path,
        text.replace("{ team: demo }", "{ team: demo, tier: web }"),
    )
    .expect("write plan");
    w.remote.human(&["commit", "-qam", "web: tier label"]);
    w.remote.human(&["push", "-q", "origin", "main"]);
    w.run_until("web", 10, 40, is(Phase::RolledBack, "v2"));

    // Then Git no longer names the failed artifact: what runs (v1) is what the plan says
    assert_eq!(w.target.workload("web").stable.as_deref(), Some("v1"));
    assert!(
        plan_names(&w, &plan, "v1"),
        "the plan still names v2 after the rollback:\n{}\n{}",
        w.remote.log("%s%n%(trailers)"),
        w.remote.file(&plan.path())
    );
}

/// How a human change lands on main.
#[derive(Debug, Clone, Copy)]
enum Landing {
    /// One commit pushed to main.
    Commit,
    /// The same commit on a branch, merged with a merge commit (a merged pull request).
    MergeCommit,
}

#[test]
fn regression_a_rollback_never_reverts_files_outside_the_plan() {
    for landing in [Landing::Commit, Landing::MergeCommit] {
        // Given a plan rolled out at v1 next to an app's values outside rollgate's
        // folders, and v2 failing its success rate
        let plan = PlanFile::new("web");
        let values = "apps/web/values.yaml";
        let remote = Remote::with_files(&[
            (
                "rollgate.yaml".to_owned(),
                support::rollout::SETTINGS.to_owned(),
            ),
            (plan.path(), plan.yaml()),
            (values.to_owned(), "replicas: 2\nimage: web:v1\n".to_owned()),
        ]);
        let mut w = World::on(remote, false);
        w.run_until("web", 10, 40, |s| s.phase == Phase::Succeeded);
        w.metrics.set("v2", 0.42);

        // When one human change names v2 in the plan AND edits the app's values
        w.remote.pull();
        if let Landing::MergeCommit = landing {
            w.remote.human(&["checkout", "-q", "-b", "bump"]);
        }
        let plan_path = w.remote.human.join(plan.path());
        let text = std::fs::read_to_string(&plan_path).expect("read plan");
        std::fs::write(&plan_path, set_artifact("v2")(text)).expect("write plan");
        let human_values = "replicas: 5\nimage: web:v2\nresources: { cpu: 500m }\n";
        std::fs::write(w.remote.human.join(values), human_values).expect("write values");
        w.remote
            .human(&["commit", "-qam", "web: v2, five replicas"]);
        if let Landing::MergeCommit = landing {
            w.remote.human(&["checkout", "-q", "main"]);
            w.remote.human(&[
                "merge",
                "-q",
                "--no-ff",
                "--no-edit",
                "-m",
                "Merge pull request #9 from bump",
                "bump",
            ]);
        }
        w.remote.human(&["push", "-q", "origin", "main"]);
        let change = w.remote.head();
        w.run_until("web", 10, 40, is(Phase::RolledBack, "v2"));

        // Then rollgate restored the stable artifact (no revert of the whole change) in
        // a commit that touches the plan file alone
        let new = commits_after(&w.remote, &change);
        let rollbacks: Vec<&LoggedCommit> = new
            .iter()
            .filter(|c| c.trailer("Rollgate-Rollback-Of").is_some())
            .collect();
        assert_eq!(rollbacks.len(), 1, "{landing:?}: {new:#?}");
        let restore = rollbacks[0];
        assert_eq!(
            restore.subject, "Restore web to v1",
            "{landing:?}: {new:#?}"
        );
        assert_eq!(restore.files, vec![plan.path()], "{landing:?}: {new:#?}");
        assert!(
            !new.iter().any(|c| c.subject.starts_with("Roll back")),
            "{landing:?}: {new:#?}"
        );
        // And every rollgate commit since stayed out of the app's folder
        for c in &new {
            assert!(
                !c.files.iter().any(|f| f == values),
                "{landing:?}: {} touched {values}: {:?}",
                c.subject,
                c.files
            );
        }
        // And the app's values at head are byte for byte what the human committed
        let at_head = Command::new("git")
            .args(["show", &format!("main:{values}")])
            .current_dir(&w.remote.bare)
            .output()
            .expect("git show");
        assert!(
            at_head.status.success(),
            "{landing:?}: {values} is gone at head"
        );
        assert_eq!(
            at_head.stdout,
            human_values.as_bytes(),
            "{landing:?}: {}",
            String::from_utf8_lossy(&at_head.stdout)
        );
        // And the plan is back at v1, exactly as before the change
        assert!(
            plan_names(&w, &plan, "v1"),
            "{}",
            w.remote.file(&plan.path())
        );
        assert_eq!(w.remote.file(&plan.path()), plan.yaml().trim_end());
        assert_eq!(w.target.workload("web").stable.as_deref(), Some("v1"));
    }
}

/// `rollgate ARGS --repo REMOTE`, its stdout (it must succeed).
fn rollgate_on(remote: &Remote, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .arg("--repo")
        .arg(&remote.bare)
        .output()
        .expect("rollgate runs");
    assert!(out.status.success(), "rollgate {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_target_action_that_loses_a_race_is_decided_again_not_held() {
    // Given a plan rolled out at v1, and a target whose first action on v2 loses an
    // optimistic-concurrency race (a 409 after its own re-reads)
    let plan = PlanFile::new("web");
    let mut w = rolled_out(&plan);
    let lost = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = lost.clone();
    w.target.before_each_action_typed(move |_| {
        if counted.fetch_add(1, Ordering::SeqCst) == 0 {
            Err(TargetError::conflict(
                "409 Conflict: the object has been modified",
            ))
        } else {
            Ok(())
        }
    });
    // When the human changes the artifact to v2 and the loop runs
    let change = w
        .remote
        .human_commit(&plan.path(), set_artifact("v2"), "web: v2");
    let mut errors = 0;
    for _ in 0..20 {
        errors += w.tick().errors;
    }
    // Then the next pass did it again: nothing held, no error, the rollout moved on
    let new = commits_after(&w.remote, &change);
    assert!(
        !phases_and_steps(&new).iter().any(|(p, _)| p == "Held"),
        "{new:#?}"
    );
    assert_eq!(errors, 0);
    assert!(lost.load(Ordering::SeqCst) >= 2, "tried again");
    assert_ne!(w.status("web").phase.as_str(), "Held");
}

#[test]
fn a_target_action_that_keeps_losing_races_is_held_like_any_failure() {
    // Given a target that loses every race
    let plan = PlanFile::new("web");
    let mut w = rolled_out(&plan);
    w.rec.set_jitter(Box::new(|| 0.5));
    w.target.before_each_action_typed(|_| {
        Err(TargetError::conflict(
            "409 Conflict: the object has been modified",
        ))
    });
    // When v2 is rolled out
    let change = w
        .remote
        .human_commit(&plan.path(), set_artifact("v2"), "web: v2");
    for _ in 0..10 {
        w.tick();
    }
    // Then after CONFLICT_RETRIES passes it is held for the target, with the error
    let new = commits_after(&w.remote, &change);
    assert_eq!(
        phases_and_steps(&new),
        pairs(&[("Pending", "0/4"), ("Held", "1/4")]),
        "{new:#?}"
    );
    let hold = w.status("web").hold.expect("held");
    assert!(hold.reason.contains("409 Conflict"), "{hold:?}");
}

#[test]
fn regression_a_failing_target_action_backs_off_and_is_held_in_git_once() {
    // Given a plan rolled out at v1, a daemon whose retry jitter is none, and a target that
    // now refuses every action with a 403 (while it still answers health checks)
    let plan = PlanFile::new("web");
    let mut w = rolled_out(&plan);
    w.rec.set_jitter(Box::new(|| 0.5));
    let attempts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = attempts.clone();
    w.target.before_each_action(move |_| {
        counted.fetch_add(1, Ordering::SeqCst);
        Err("403 Forbidden: deployments.apps \"web\" is forbidden".to_owned())
    });

    // When the human changes the artifact to v2 and the loop wakes every 200 ms for 61 s
    let change = w
        .remote
        .human_commit(&plan.path(), set_artifact("v2"), "web: v2");
    let mut errors = 0;
    for _ in 0..305 {
        errors += w.tick().errors;
        w.now += chrono::Duration::milliseconds(200);
    }

    // Then the failing action was retried with backoff (1 s doubling: 0, 1, 3, 7, 15, 31 s
    // after the first try), not on every pass
    let tried = attempts.load(Ordering::SeqCst);
    assert!((5..=7).contains(&tried), "{tried} attempts in 61 s");
    assert_eq!(errors, tried, "each failed attempt is an error of its pass");
    // And Git says so once: held for the target, with the target's error
    let new = commits_after(&w.remote, &change);
    assert_eq!(
        phases_and_steps(&new),
        pairs(&[("Pending", "0/4"), ("Held", "1/4")]),
        "{new:#?}"
    );
    let s = w.status("web");
    let hold = s.hold.clone().expect("held");
    assert_eq!(hold.kind.as_str(), "target");
    assert!(hold.reason.contains("403 Forbidden"), "{hold:?}");
    assert!(hold.reason.contains("start candidate v2"), "{hold:?}");
    assert_eq!(s.weight, 0, "nothing of v2 serves");
    // And `rollgate status`, `rollgate history` and /metrics show it
    let table = rollgate_on(&w.remote, &["status"]);
    let row = table
        .lines()
        .find(|l| l.starts_with("web "))
        .expect("a row for web");
    assert!(
        row.contains("Held") && row.contains("403 Forbidden"),
        "{table}"
    );
    let history = rollgate_on(&w.remote, &["history", "web"]);
    assert!(
        history
            .lines()
            .any(|l| l.contains("Held") && l.contains("403 Forbidden")),
        "{history}"
    );
    let metrics = rollgate::telemetry::global().render();
    assert!(
        metrics.contains(&format!(
            "rollgate_target_action_failures_total{{action=\"start_candidate\"}} {tried}"
        )),
        "{metrics}"
    );

    // When the target accepts actions again
    w.target.clear_hook();
    let held_at = w.remote.head();
    w.run_until("web", 10, 10, |s| s.phase == Phase::Progressing);

    // Then the next attempt clears the hold with a transition, and the rollout goes on
    let recovered = &commits_after(&w.remote, &held_at)[0];
    assert_eq!(recovered.trailer("Rollgate-From"), Some("Held"));
    assert!(
        recovered
            .trailer("Rollgate-Reason")
            .is_some_and(|r| r.starts_with("target answers again")),
        "{recovered:?}"
    );
    assert_eq!(w.status("web").hold, None);
    w.run_until("web", 10, 40, is(Phase::Succeeded, "v2"));
    assert_eq!(
        w.target.calls("web").last().map(String::as_str),
        Some("promote v2")
    );
}

/// The phase and candidate of `plan` in the status file at the head of the bare remote.
fn phase_at(bare: &std::path::Path, plan: &str) -> Option<(String, String)> {
    let repo = git2::Repository::open_bare(bare).ok()?;
    let head = repo
        .revparse_single("refs/heads/main")
        .ok()?
        .peel_to_commit()
        .ok()?;
    let entry = head
        .tree()
        .ok()?
        .get_path(std::path::Path::new(&format!("status/{plan}.yaml")))
        .ok()?;
    let blob = repo.find_blob(entry.id()).ok()?;
    let s = rollgate::model::status::Status::from_yaml(std::str::from_utf8(blob.content()).ok()?)
        .ok()?;
    Some((s.phase.as_str().to_owned(), s.candidate))
}

#[test]
fn regression_promoting_is_in_git_before_the_target_promotes() {
    // Given a new plan, and a target that notes what Git says at each action it is asked for
    let plan = PlanFile::new("web");
    let mut w = World::new(&[&plan]);
    let seen = Arc::new(std::sync::Mutex::new(Vec::<(
        String,
        Option<(String, String)>,
    )>::new()));
    let (log, bare) = (seen.clone(), w.remote.bare.clone());
    w.target.before_each_action(move |call| {
        let at = phase_at(&bare, "web");
        log.lock().expect("log").push((call.to_owned(), at));
        Ok(())
    });
    let promoted_while = |artifact: &str| -> Vec<Option<(String, String)>> {
        seen.lock()
            .expect("log")
            .iter()
            .filter(|(call, _)| *call == format!("web promote {artifact}"))
            .map(|(_, at)| at.clone())
            .collect()
    };

    // When it is deployed directly (first rollout)
    w.run_until("web", 10, 10, is(Phase::Succeeded, "v1"));
    // Then Git said Promoting v1 while the target promoted it
    assert_eq!(
        promoted_while("v1"),
        [Some(("Promoting".to_owned(), "v1".to_owned()))]
    );

    // When v2 walks its steps to the promotion
    let change = w
        .remote
        .human_commit(&plan.path(), set_artifact("v2"), "web: v2");
    w.run_until("web", 10, 40, is(Phase::Succeeded, "v2"));
    // Then Git said Promoting v2 before the promotion began, and Succeeded only after it
    assert_eq!(
        promoted_while("v2"),
        [Some(("Promoting".to_owned(), "v2".to_owned()))]
    );
    let phases: Vec<String> = phases_and_steps(&commits_after(&w.remote, &change))
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    assert_eq!(&phases[phases.len() - 2..], ["Promoting", "Succeeded"]);
}

/// The human aborts `plan` with a plain command commit, pushed.
fn abort(remote: &Remote, plan: &str) -> String {
    remote.pull();
    remote.human(&[
        "commit",
        "--allow-empty",
        "-q",
        "-m",
        &format!("Abort {plan}"),
        "--trailer",
        "Rollgate-Command: abort",
        "--trailer",
        &format!("Rollgate-Plan: {plan}"),
    ]);
    remote.human(&["push", "-q", "origin", "main"]);
    remote.head()
}

/// Given `plan` (with an untimed pause) stable at v1, then changed to v2 and paused at
/// 10%: the commit that changed it.
fn paused_at_v2(w: &mut World, plan: &PlanFile, edit: impl FnOnce(String) -> String) -> String {
    w.run_until(&plan.name, 10, 10, is(Phase::Succeeded, "v1"));
    let change = w.remote.human_commit(&plan.path(), edit, "web: v2");
    w.run_until(&plan.name, 10, 10, is(Phase::Paused, "v2"));
    change
}

#[test]
fn regression_abort_puts_the_plan_back_at_the_stable_artifact() {
    // Given web at v2, paused at 10% over v1
    let plan = PlanFile::new("web").steps(&["setWeight: 10", "pause: {}", "setWeight: 100"]);
    let mut w = World::new(&[&plan]);
    let change = paused_at_v2(&mut w, &plan, set_artifact("v2"));

    // When the human aborts
    let aborted = abort(&w.remote, "web");
    w.run_until("web", 10, 10, is(Phase::RolledBack, "v2"));

    // Then v1 serves, and the plan at head names v1 again, through a revert of the change
    let wl = w.target.workload("web");
    assert_eq!((wl.stable.as_deref(), wl.candidate), (Some("v1"), None));
    assert!(
        w.remote.file(&plan.path()).contains("  artifact: v1\n"),
        "{}",
        w.remote.file(&plan.path())
    );
    let reverts: Vec<LoggedCommit> = commits_after(&w.remote, &aborted)
        .into_iter()
        .filter(|c| c.trailer("Rollgate-Rollback-Of").is_some())
        .collect();
    assert_eq!(reverts.len(), 1, "{reverts:#?}");
    assert_eq!(
        reverts[0].trailer("Rollgate-Rollback-Of"),
        Some(change.as_str())
    );
    assert_eq!(
        reverts[0].trailer("Rollgate-Reason"),
        Some("aborted by command")
    );
    assert_eq!(reverts[0].files, vec![plan.path()]);
    // And nothing rolls v2 out again
    nothing_moves(&mut w, 2);
    assert_eq!(w.status("web").stable.as_deref(), Some("v1"));
}

#[test]
fn an_abort_of_a_change_that_touched_more_than_the_plan_restores_the_stable_artifact() {
    // Given web at v2 through a change that also edited another file, paused at 10%
    let plan = PlanFile::new("web").steps(&["setWeight: 10", "pause: {}", "setWeight: 100"]);
    let mut w = World::new(&[&plan]);
    w.run_until("web", 10, 10, is(Phase::Succeeded, "v1"));
    w.remote.pull();
    std::fs::write(w.remote.human.join("NOTES.md"), "v2 notes\n").expect("write");
    let text = std::fs::read_to_string(w.remote.human.join(plan.path())).expect("plan");
    std::fs::write(w.remote.human.join(plan.path()), set_artifact("v2")(text)).expect("write");
    w.remote.human(&["add", "-A"]);
    w.remote
        .human(&["commit", "-q", "-m", "web: v2, with notes"]);
    w.remote.human(&["push", "-q", "origin", "main"]);
    w.run_until("web", 10, 10, is(Phase::Paused, "v2"));

    // When the human aborts
    let aborted = abort(&w.remote, "web");
    w.run_until("web", 10, 10, is(Phase::RolledBack, "v2"));

    // Then the plan names v1 again through a restore of the plan file only; the notes stay
    assert!(w.remote.file(&plan.path()).contains("  artifact: v1\n"));
    assert_eq!(w.remote.file("NOTES.md"), "v2 notes");
    let restore = commits_after(&w.remote, &aborted)
        .into_iter()
        .find(|c| c.trailer("Rollgate-Rollback-Of").is_some())
        .expect("a restore commit");
    assert_eq!(restore.files, vec![plan.path()]);
    assert_eq!(restore.subject, "Restore web to v1");
}

#[test]
fn an_abort_with_on_failure_hold_keeps_the_plan_as_it_is() {
    // Given web at v2 with `rollback: { onFailure: hold }`, paused at 10%
    let plan = PlanFile::new("web").steps(&["setWeight: 10", "pause: {}", "setWeight: 100"]);
    let mut w = World::new(&[&plan]);
    paused_at_v2(&mut w, &plan, |text| {
        set_artifact("v2")(text.replace("onFailure: revert", "onFailure: hold"))
    });

    // When the human aborts
    let aborted = abort(&w.remote, "web");
    w.run_until("web", 10, 10, is(Phase::RolledBack, "v2"));

    // Then traffic is back on v1 and Git is left as the plan asks: no revert, no restore
    assert_eq!(w.target.workload("web").stable.as_deref(), Some("v1"));
    assert!(w.remote.file(&plan.path()).contains("  artifact: v2\n"));
    assert!(
        commits_after(&w.remote, &aborted)
            .iter()
            .all(|c| c.trailer("Rollgate-Rollback-Of").is_none())
    );
}

/// Where a person reads the step of `plan` at the remote's head: the `rollgate status`
/// table, the last line of `rollgate history` text, and the last status commit's subject
/// and `Rollgate-Step` trailer; and where a machine reads it: `--output json`.
fn steps_everywhere(w: &World, plan: &str) -> (String, String, String, String, serde_json::Value) {
    let table = rollgate_on(&w.remote, &["status"]);
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with(&format!("{plan} ")))
        .expect("a row")
        .split_whitespace()
        .collect();
    let header: Vec<&str> = table
        .lines()
        .next()
        .expect("header")
        .split_whitespace()
        .collect();
    let col = header
        .iter()
        .position(|h| *h == "STEP")
        .expect("a STEP column");
    let last = w
        .remote
        .commits()
        .into_iter()
        .rev()
        .find(|c| c.is_status())
        .expect("a status commit");
    let history = rollgate_on(&w.remote, &["history", plan]);
    let line = history
        .lines()
        .find(|l| l.contains(&last.sha[..7]))
        .expect("the last commit in the history")
        .to_owned();
    let json: serde_json::Value =
        serde_json::from_str(&rollgate_on(&w.remote, &["status", "--output", "json"]))
            .expect("json");
    let doc = json
        .as_array()
        .and_then(|a| a.iter().find(|d| d["plan"] == plan))
        .expect("the plan in json")
        .clone();
    (
        row[col].to_owned(),
        line,
        last.subject.clone(),
        last.trailer("Rollgate-Step").unwrap_or("-").to_owned(),
        doc["step"].clone(),
    )
}

#[test]
fn regression_status_history_and_commits_agree_on_the_step_and_json_carries_the_index() {
    // Given web (4 steps) stable at v1, changed to v2, in its analysis: the second step
    let plan = PlanFile::new("web");
    let mut w = rolled_out(&plan);
    w.remote
        .human_commit(&plan.path(), set_artifact("v2"), "web: v2");
    w.run_until("web", 10, 10, |s| s.candidate == "v2" && s.step == 1);

    // Then people read 2/4 everywhere, and machines the 0-based index 1
    let (table, history, subject, trailer, index) = steps_everywhere(&w, "web");
    assert_eq!((table.as_str(), trailer.as_str()), ("2/4", "2/4"));
    assert!(subject.contains("step 2/4"), "{subject}");
    assert!(history.contains(" 2/4 "), "{history}");
    assert_eq!(index, serde_json::json!(1));
    assert_eq!(w.status("web").step, 1, "stepIndex in the status file");

    // When it succeeds: every step done is 4/4 (never a fifth step), the index is 4
    w.run_until("web", 10, 40, is(Phase::Succeeded, "v2"));
    let (table, history, subject, trailer, index) = steps_everywhere(&w, "web");
    assert_eq!((table.as_str(), trailer.as_str()), ("4/4", "4/4"));
    assert!(subject.contains("step 4/4"), "{subject}");
    assert!(history.contains(" 4/4 "), "{history}");
    assert_eq!(index, serde_json::json!(4));
}

/// Log lines written while it is in force (this thread only), without colour.
#[derive(Clone, Default)]
struct CapturedLog(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for CapturedLog {
    type Writer = CapturedLog;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl CapturedLog {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log")).into_owned()
    }

    /// WARN lines that contain `needle`.
    fn warnings(&self, needle: &str) -> usize {
        self.text()
            .lines()
            .filter(|l| l.contains(" WARN ") && l.contains(needle))
            .count()
    }
}

#[test]
fn regression_a_missing_target_or_metrics_source_is_logged_once_per_cause_not_every_pass() {
    // Given settings naming a target (`other`) and a metrics source (`prom`) this daemon
    // does not have, as in a copied example repository: `api` on that target, and `web`
    // whose analysis asks that source
    let settings = "apiVersion: rollgate.dev/v1alpha1
kind: Settings
targets:
  local: { local: {} }
  other: { local: {} }
metrics:
  prom: { prometheus: { url: \"http://127.0.0.1:9\" } }
";
    let web = PlanFile::new("web").first_rollout_steps();
    let api = PlanFile::new("api").port(18081);
    let remote = Remote::with_files(&[
        ("rollgate.yaml".to_owned(), settings.to_owned()),
        (
            web.path(),
            web.yaml()
                .replace("source: builtin", "source: prom")
                .replace("query: success-rate", "query: up"),
        ),
        (
            api.path(),
            api.yaml().replace("target: local", "target: other"),
        ),
    ]);
    let mut w = World::on(remote, false);
    let log = CapturedLog::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(log.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // When the daemon runs for ten minutes, a pass every 10 s (web's analysis asks the
    // source at each of its three measurements, then holds: inconclusive)
    for _ in 0..60 {
        w.tick();
        w.wait(10);
    }

    // Then each cause was said once at WARN (repeats at debug only), and Git says why
    let api_status = w.status("api");
    assert_eq!(api_status.phase, Phase::Held);
    assert!(
        api_status
            .hold
            .as_ref()
            .is_some_and(|h| h.reason.contains("no `other` target")),
        "{api_status:?}"
    );
    let text = log.text();
    assert_eq!(log.warnings("no `other` target"), 1, "{text}");
    let measured = text
        .lines()
        .filter(|l| l.contains("metrics source `prom` is not available"))
        .count();
    assert!(
        measured >= 3,
        "the source was asked again and again: {text}"
    );
    assert_eq!(
        log.warnings("metrics source `prom` is not available"),
        1,
        "{text}"
    );
}

#[test]
fn regression_a_status_another_writer_changed_since_the_pass_read_it_is_not_written_again() {
    // Given v1 stable and a change to v2 (steps without analysis)
    let plan = PlanFile::new("web").steps(&["setWeight: 20", "setWeight: 100"]);
    let mut w = World::new(&[&plan]);
    w.run_until("web", 10, 10, is(Phase::Succeeded, "v1"));
    w.remote
        .human_commit(&plan.path(), set_artifact("v2"), "web: v2");
    w.run_until("web", 10, 10, |s| {
        s.candidate == "v2" && s.phase == Phase::Progressing
    });
    // And another writer (a killed daemon's push that still lands, another replica)
    // that changes the status while this pass is acting on what it read
    let other = w.remote.work_dir("other");
    support::git(
        w.remote.dir.path(),
        &[
            "clone",
            "-q",
            w.remote.bare.to_str().expect("utf8"),
            other.to_str().expect("utf8"),
        ],
    );
    let fired = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let once = fired.clone();
    w.target.before_each_action(move |call| {
        if call.starts_with("web weight") && !once.swap(true, std::sync::atomic::Ordering::SeqCst) {
            support::git(&other, &["pull", "-q", "origin", "main"]);
            let path = other.join("status/web.yaml");
            let text = std::fs::read_to_string(&path).expect("status");
            std::fs::write(&path, format!("{text}# written by another replica\n")).expect("write");
            support::git(&other, &["add", "-A"]);
            support::git(
                &other,
                &[
                    "-c",
                    "user.name=rollgate",
                    "-c",
                    "user.email=rollgate@localhost",
                    "commit",
                    "-q",
                    "--author",
                    "rollgate <rollgate@localhost>",
                    "-m",
                    "web: written by another replica\n\nRollgate-Plan: web",
                ],
            );
            support::git(&other, &["push", "-q", "origin", "HEAD:main"]);
        }
        Ok(())
    });
    let head_before = w.remote.head();
    // When the pass that moves the weight runs
    let r = w.tick();
    // Then it writes nothing on top of the other writer's status (before: a second
    // commit of the same transition), and the next passes finish the rollout
    assert!(
        fired.load(std::sync::atomic::Ordering::SeqCst),
        "the other writer ran"
    );
    assert_eq!(r.transitions, 0, "{r:?}");
    let subjects = support::git(
        &w.remote.bare,
        &["log", "--format=%s", &format!("{head_before}..main")],
    );
    assert_eq!(subjects, "web: written by another replica", "{subjects}");
    w.target.clear_hook();
    w.run_until("web", 10, 10, is(Phase::Succeeded, "v2"));
}
