//! Job checks and hooks in `decide`, told Given/When/Then (#18).
//!
//! Invariant: like `tests`, each story drives decisions the way the daemon does:
//! `due_jobs` says which jobs to look at, their states come back as observations.

use super::testing::*;
use super::*;
use crate::model::plan::{OnFailure, Plan};
use crate::model::status::{HoldKind, Phase};

fn smoke_in_a_0s_analysis() -> Plan {
    PlanBuilder::new()
        .artifact("app:v2")
        .job("smoke")
        .steps(vec![weight(5), analysis(&["smoke"], 0), weight(100)])
        .build()
}

/// v1 stable, v2 planned: decided up to the start of step `steps_before` (0-based).
fn started(plan: Plan, steps_before: i64) -> Rollout {
    let mut r = Rollout::new(plan, Some(stable_status("app:v1", t(-600))));
    for m in (-steps_before - 1)..=0 {
        r.decide(&quiet(), t(m));
    }
    r
}

fn succeeded(output: &str) -> JobState {
    JobState::Succeeded {
        output: output.to_owned(),
    }
}

fn failed(reason: &str) -> JobState {
    JobState::Failed {
        reason: reason.to_owned(),
    }
}

fn due(r: &Rollout, at: i64) -> Vec<String> {
    due_jobs(&r.plan, r.status(), t(at))
        .into_iter()
        .map(|d| d.check)
        .collect()
}

#[test]
fn a_job_check_in_a_0s_analysis_runs_once_and_the_step_waits_for_its_result() {
    // Given a plan whose analysis is one job check lasting 0s, in that analysis
    let mut r = started(smoke_in_a_0s_analysis(), 1);
    assert_eq!(r.phase(), Phase::Progressing);
    assert_eq!(r.status().step, 1);
    assert_eq!(due(&r, 0), vec!["smoke"]);
    // When nothing is known of the job yet, or it runs, Then the step neither passes
    // nor holds: a 0s duration is no pass without the job's result
    assert_eq!(r.decide(&quiet(), t(0)).transition, None);
    let d = r.decide(
        &quiet().jobs(vec![job("smoke", t(0), JobState::Running)]),
        t(0),
    );
    assert_eq!(d.transition, None);
    assert_eq!(r.phase(), Phase::Progressing);
    // and the job is looked at again at its pace, not in a busy loop
    assert!(due(&r, 0).is_empty());
    assert_eq!(d.next_wakeup, Some(t(0) + chrono::Duration::seconds(5)));
    // When it succeeds, Then the step passes with the job's verdict
    let at = t(0) + chrono::Duration::seconds(5);
    let d = r.decide(&quiet().jobs(vec![job("smoke", at, succeeded("ok"))]), at);
    assert_eq!(d.actions, vec![Action::SetWeight(100)]);
    let tr = d.transition.expect("advanced");
    assert_eq!(tr.verdicts, vec!["pass smoke value=1 n=1".to_owned()]);
    // and the job is never run again in that rollout
    assert!(due(&r, 1).is_empty());
}

#[test]
fn a_failed_job_fails_the_step_and_the_revert_carries_its_reason() {
    let mut r = started(smoke_in_a_0s_analysis(), 1);
    let d = r.decide(
        &quiet().jobs(vec![job(
            "smoke",
            t(0),
            failed("exit status 3; output: GET /checkout 502"),
        )]),
        t(0),
    );
    assert_eq!(r.phase(), Phase::RollingBack);
    assert_eq!(
        d.actions,
        vec![Action::Rollback {
            stable: Some("app:v1".to_owned())
        }]
    );
    let revert = d.revert.expect("a revert by default");
    assert!(
        revert.reason.contains("GET /checkout 502"),
        "{}",
        revert.reason
    );
    let tr = d.transition.expect("a transition");
    assert!(
        tr.reason.contains("check smoke: job failed: exit status 3"),
        "{}",
        tr.reason
    );
    assert_eq!(tr.verdicts.len(), 1);
    assert!(tr.verdicts[0].starts_with("fail smoke value=0 n=1 (job failed: exit status 3"));
}

#[test]
fn a_job_runner_error_is_never_a_pass_and_holds_after_the_error_limit() {
    let mut r = started(smoke_in_a_0s_analysis(), 1);
    for s in 0..=4 {
        let at = t(0) + chrono::Duration::seconds(5 * s);
        let d = r.decide(&quiet().jobs(vec![job_err("smoke", at)]), at);
        assert_eq!(d.actions, Vec::new(), "no step passes on errors");
    }
    assert_eq!(r.phase(), Phase::Held);
    let hold = r.status().hold.clone().expect("held");
    assert_eq!(hold.kind, HoldKind::Metrics);
    assert!(
        hold.reason.contains("the runner is unreachable"),
        "{}",
        hold.reason
    );
    // When the runner answers again, Then the analysis restarts with a new job
    let id_before = job_id(&r.plan.name, r.status(), "smoke");
    let at = t(1);
    r.decide(&quiet().jobs(vec![job("smoke", at, JobState::Running)]), at);
    assert_eq!(r.phase(), Phase::Progressing);
    assert_ne!(job_id(&r.plan.name, r.status(), "smoke"), id_before);
}

#[test]
fn a_job_check_beside_a_metric_check_waits_for_the_job_past_the_duration() {
    let plan = PlanBuilder::new()
        .artifact("app:v2")
        .job("smoke")
        .threshold("sr", Some(0.99), None)
        .steps(vec![weight(5), analysis(&["smoke", "sr"], 2), weight(100)])
        .build();
    let mut r = started(plan, 1);
    r.decide(&quiet().measured(vec![ok("sr", t(0), 0.999, 500)]), t(0));
    r.decide(&quiet().measured(vec![ok("sr", t(1), 0.999, 500)]), t(1));
    // the duration is over, the job still runs: no hold, no pass
    let d = r.decide(
        &quiet()
            .measured(vec![ok("sr", t(2), 0.999, 500)])
            .jobs(vec![job("smoke", t(2), JobState::Running)]),
        t(2),
    );
    assert_eq!(d.transition, None);
    assert_eq!(r.phase(), Phase::Progressing);
    let d = r.decide(&quiet().jobs(vec![job("smoke", t(3), succeeded(""))]), t(3));
    assert_eq!(d.actions, vec![Action::SetWeight(100)]);
}

#[test]
fn job_ids_are_dns_labels_the_same_after_a_restart_and_new_for_a_retry() {
    let r = started(smoke_in_a_0s_analysis(), 1);
    let id = job_id(&r.plan.name, r.status(), "smoke");
    // The same status (read back from Git by a restarted daemon) names the same job.
    let again = crate::model::status::Status::from_yaml(&r.status().to_yaml().expect("yaml"))
        .expect("parses");
    assert_eq!(job_id(&r.plan.name, &again, "smoke"), id);
    assert!(crate::model::validate::is_dns_label(&id), "{id}");
    let long = job_id(&"p".repeat(63), r.status(), &"c".repeat(63));
    assert!(crate::model::validate::is_dns_label(&long), "{long}");
    // A step entered again (a retry) is a new job.
    let mut s = r.status().clone();
    s.step_started_at = Some(t(7));
    assert_ne!(job_id(&r.plan.name, &s, "smoke"), id);
    let mut other = r.status().clone();
    other.candidate = "app:v3".to_owned();
    assert_ne!(job_id(&r.plan.name, &other, "smoke"), id);
}

#[test]
fn an_on_start_hook_runs_before_any_traffic_and_a_before_promote_hook_after_the_last_step() {
    let plan = PlanBuilder::new()
        .artifact("app:v2")
        .job("migrate")
        .job("smoke")
        .hooks(&["migrate"], &["smoke"], &[])
        .steps(vec![weight(50), weight(100)])
        .build();
    let mut r = Rollout::new(plan, Some(stable_status("app:v1", t(-600))));
    r.decide(&quiet(), t(0)); // pending
    let d = r.decide(&quiet(), t(0));
    // The candidate starts, with no traffic, and onStart's job is due
    assert_eq!(
        d.actions,
        vec![Action::StartCandidate {
            artifact: "app:v2".to_owned()
        }]
    );
    assert!(d.transition.expect("entered").reason.contains("onStart"));
    assert_eq!(due(&r, 0), vec!["migrate"]);
    let d = r.decide(
        &quiet().jobs(vec![job("migrate", t(1), succeeded(""))]),
        t(1),
    );
    assert_eq!(d.actions, vec![Action::SetWeight(50)]);
    r.decide(&quiet(), t(2));
    assert_eq!(r.status().weight, 100);
    // After the last step, beforePromote's job runs before the promotion
    let d = r.decide(&quiet(), t(3));
    assert_eq!(d.actions, Vec::new());
    assert_eq!(due(&r, 3), vec!["smoke"]);
    // and its failure fails the rollout like a failed check
    let d = r.decide(
        &quiet().jobs(vec![job("smoke", t(4), failed("exit status 1"))]),
        t(4),
    );
    assert_eq!(r.phase(), Phase::RollingBack);
    assert!(d.revert.is_some());
    assert!(
        !r.actions
            .iter()
            .any(|a| matches!(a, Action::Promote { .. }))
    );
}

#[test]
fn a_before_promote_hook_that_passes_promotes() {
    let plan = PlanBuilder::new()
        .artifact("app:v2")
        .job("smoke")
        .hooks(&[], &["smoke"], &[])
        .steps(vec![weight(100)])
        .build();
    let mut r = started(plan, 1);
    assert_eq!(due(&r, 0), vec!["smoke"]);
    let d = r.decide(&quiet().jobs(vec![job("smoke", t(1), succeeded(""))]), t(1));
    assert_eq!(
        d.actions,
        vec![Action::Promote {
            artifact: "app:v2".to_owned()
        }]
    );
}

#[test]
fn an_after_rollback_hook_runs_after_the_rollback_and_its_failure_never_blocks() {
    let plan = PlanBuilder::new()
        .artifact("app:v2")
        .job("smoke")
        .job("notify-oncall")
        .hooks(&[], &[], &["notify-oncall"])
        .on_failure(OnFailure::Hold)
        .steps(vec![weight(5), analysis(&["smoke"], 0), weight(100)])
        .build();
    let mut r = started(plan, 1);
    r.decide(
        &quiet().jobs(vec![job("smoke", t(0), failed("boom"))]),
        t(0),
    );
    assert_eq!(r.phase(), Phase::RollingBack);
    // The rollback comes first: the hook is due, but the daemon asks it only once the
    // target has rolled back
    assert_eq!(due(&r, 0), vec!["notify-oncall"]);
    let d = r.decide(
        &quiet().jobs(vec![job("notify-oncall", t(1), JobState::Running)]),
        t(1),
    );
    assert_eq!(
        d.transition, None,
        "rolled back, the record waits for the hook"
    );
    // When the hook fails, Then the rollback is recorded anyway, with the hook's failure
    let d = r.decide(
        &quiet().jobs(vec![job("notify-oncall", t(2), failed("exit status 7"))]),
        t(2),
    );
    assert_eq!(r.phase(), Phase::RolledBack);
    let tr = d.transition.expect("rolled back");
    assert!(
        tr.reason
            .contains("afterRollback: notify-oncall: job failed: exit status 7"),
        "{}",
        tr.reason
    );
}

#[test]
fn an_after_rollback_hook_that_cannot_run_is_reported_and_never_blocks() {
    let plan = PlanBuilder::new()
        .artifact("app:v2")
        .job("smoke")
        .hooks(&[], &[], &["smoke"])
        .steps(vec![weight(5), weight(100)])
        .build();
    let mut r = started(plan, 1);
    r.decide(&quiet().command(Command::Abort), t(0));
    assert_eq!(r.phase(), Phase::RollingBack);
    for s in 1..=5 {
        r.decide(&quiet().jobs(vec![job_err("smoke", t(s))]), t(s));
    }
    assert_eq!(r.phase(), Phase::RolledBack);
    assert!(
        r.status()
            .message
            .as_deref()
            .is_some_and(|m| m.contains("smoke could not run")),
        "{:?}",
        r.status().message
    );
}
