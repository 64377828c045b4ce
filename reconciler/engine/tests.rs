//! Lifecycle stories for `decide`, told Given/When/Then.
//!
//! Invariant: each test starts from builders in `testing` and drives decisions the
//! way the daemon does (observe, decide, apply), never by poking at internals.

use super::testing::*;
use super::*;
use crate::model::plan::{FirstRollout, OnFailure, Plan};
use crate::model::status::{HoldKind, Phase};

fn v1_stable_v2_planned() -> PlanBuilder {
    PlanBuilder::new().artifact("app:v2")
}

fn hold_kind(r: &Rollout) -> Option<HoldKind> {
    r.status().hold.as_ref().map(|h| h.kind)
}

#[test]
fn a_plan_change_walks_every_step_to_succeeded_with_one_transition_per_change() {
    // Given v1 is stable and the plan now names v2 with a canary of five steps
    let plan = v1_stable_v2_planned()
        .threshold("sr", Some(0.99), None)
        .steps(vec![
            weight(5),
            analysis(&["sr"], 2),
            weight(25),
            pause(5),
            weight(100),
        ])
        .build();
    let mut r = Rollout::new(plan, Some(stable_status("app:v1", t(-600))));

    // When the daemon sees the change, then works through each step
    let d = r.decide(&quiet(), t(0));
    assert_eq!(r.phase(), Phase::Pending);
    assert_eq!(d.next_wakeup, Some(t(0)));
    let d = r.decide(&quiet(), t(0));
    assert_eq!(
        d.actions,
        vec![
            Action::StartCandidate {
                artifact: "app:v2".to_owned()
            },
            Action::SetWeight(5)
        ]
    );
    assert_eq!(r.decide(&progressing(), t(0)).transition, None);
    r.decide(&quiet(), t(1)); // 5% healthy: analysis starts
    assert_eq!(due_checks(&r.plan, r.status(), t(1)), vec!["sr".to_owned()]);
    let d = r.decide(&quiet().measured(vec![ok("sr", t(1), 0.995, 500)]), t(1));
    assert!(
        d.status.is_some() && d.transition.is_none(),
        "counters only"
    );
    assert_eq!(d.next_wakeup, Some(t(2)));
    r.decide(&quiet().measured(vec![ok("sr", t(2), 0.996, 500)]), t(2));
    let d = r.decide(&quiet().measured(vec![ok("sr", t(3), 0.997, 500)]), t(3));
    let passed = d.transition.expect("analysis passed");
    assert_eq!(passed.verdicts, vec!["pass sr value=0.997 min=0.99 n=500"]);
    assert_eq!(d.actions, vec![Action::SetWeight(25)]);
    r.decide(&quiet(), t(4)); // 25% healthy: pause 5m
    assert_eq!(r.phase(), Phase::Paused);
    r.decide(&quiet(), t(8));
    assert_eq!(r.phase(), Phase::Paused);
    r.decide(&quiet(), t(9)); // pause over: 100%
    r.decide(&quiet(), t(10)); // 100% healthy: promote
    assert_eq!(r.phase(), Phase::Promoting);
    r.decide(&progressing(), t(10));
    let d = r.decide(&quiet(), t(11));

    // Then it succeeded, v2 is stable, and each change was one transition
    assert_eq!(r.phase(), Phase::Succeeded);
    assert_eq!(d.next_wakeup, None);
    assert_eq!(r.status().stable.as_deref(), Some("app:v2"));
    assert_eq!(
        r.story(),
        vec![
            (Phase::Pending, 0),
            (Phase::Progressing, 1),
            (Phase::Progressing, 2),
            (Phase::Progressing, 3),
            (Phase::Paused, 4),
            (Phase::Progressing, 5),
            (Phase::Promoting, 5),
            (Phase::Succeeded, 5),
        ]
    );
    let weights: Vec<u8> = r
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::SetWeight(w) => Some(*w),
            _ => None,
        })
        .collect();
    assert_eq!(weights, vec![5, 25, 100]);
    assert!(r.actions.contains(&Action::Promote {
        artifact: "app:v2".to_owned()
    }));
    assert!(r.transitions.iter().all(|t| t.step.1 == 5));
    // and nothing more happens afterwards
    assert_eq!(r.decide(&quiet(), t(12)).status, None);
}

/// A plan of 20% → 50% → untimed pause → 100%, judged by a threshold and a baseline check.
fn first_plan(first: FirstRollout) -> Plan {
    PlanBuilder::new()
        .threshold("sr", Some(0.99), None)
        .baseline("latency")
        .steps(vec![
            weight(20),
            analysis(&["sr", "latency"], 2),
            weight(50),
            pause_untimed(),
            weight(100),
        ])
        .first_rollout(first)
        .build()
}

fn promote_of(artifact: &str) -> Action {
    Action::Promote {
        artifact: artifact.to_owned(),
    }
}

#[test]
fn a_first_rollout_with_no_stable_is_deployed_directly_in_one_transition() {
    // Given a plan seen for the first time: no status, so no stable version
    let mut r = Rollout::new(first_plan(FirstRollout::Direct), None);

    // When the daemon decides
    let d = r.decide(&quiet(), t(0));

    // Then v2 is deployed directly: one transition, one promote, no step walked
    assert_eq!(d.actions, vec![promote_of("app:v2")]);
    let tr = d.transition.expect("one transition");
    assert_eq!((tr.from, tr.to), (None, Phase::Promoting));
    assert_eq!(tr.first_rollout, Some(FirstRollout::Direct));
    assert_eq!(tr.step, (0, 0), "a direct rollout walks no steps");
    assert_eq!(
        tr.reason,
        "first rollout of app:v2: no stable version to compare with; deployed directly"
    );
    assert!(tr.verdicts.is_empty(), "nothing was judged");
    let s = r.status();
    assert!(s.direct);
    assert_eq!((s.candidate.as_str(), s.revision.as_str()), ("app:v2", REV));
    assert_eq!((s.stable.as_deref(), s.weight), (None, 100));
    assert_eq!(s.message.as_deref(), Some(tr.reason.as_str()));
    assert_eq!(d.next_wakeup, Some(t(0) + chrono::Duration::seconds(10)));
    // When the target is still converging, Then the promotion is re-issued, nothing committed
    let d = r.decide(&progressing(), t(1));
    assert_eq!(
        (d.actions, d.transition),
        (vec![promote_of("app:v2")], None)
    );
    // When it serves, Then v2 is the stable version
    let d = r.decide(&quiet(), t(2));
    assert_eq!(r.phase(), Phase::Succeeded);
    assert_eq!(r.status().stable.as_deref(), Some("app:v2"));
    assert_eq!(d.transition.expect("succeeded").first_rollout, None);
    assert_eq!(
        r.story(),
        vec![(Phase::Promoting, 0), (Phase::Succeeded, 0)]
    );
    assert!(
        r.actions
            .iter()
            .all(|a| matches!(a, Action::Promote { .. })),
        "no candidate beside a stable that does not exist, no weights: {:?}",
        r.actions
    );

    // And the next artifact, with v2 stable behind it, walks every step as usual
    r.plan.artifact = "app:v3".to_owned();
    r.decide(&Observation::quiet("rev-v3"), t(3));
    assert_eq!(r.phase(), Phase::Pending);
    assert!(!r.status().direct);
    let d = r.decide(&Observation::quiet("rev-v3"), t(3));
    assert_eq!(
        d.actions,
        vec![
            Action::StartCandidate {
                artifact: "app:v3".to_owned()
            },
            Action::SetWeight(20)
        ]
    );
    assert_eq!(d.transition.expect("step 1").first_rollout, None);
}

#[test]
fn a_first_rollout_deployed_directly_waits_for_the_change_window() {
    // Given a first plan merged on Monday at 17:00, outside office hours
    let plan = PlanBuilder::new()
        .window("* 9-16 * * 1-5")
        .steps(vec![weight(20), weight(100)])
        .build();
    let mut r = Rollout::new(plan, None);
    let d = r.decide(&quiet(), t(7 * 60));
    // Then it holds for the window, touching nothing, and says how it will go
    assert_eq!(hold_kind(&r), Some(HoldKind::Window));
    assert!(d.actions.is_empty());
    assert!(r.status().direct);
    assert_eq!(
        d.transition.expect("held").first_rollout,
        Some(FirstRollout::Direct)
    );
    // When the window opens, Then it is deployed directly
    let d = r.decide(&quiet(), t(23 * 60));
    assert_eq!(d.actions, vec![promote_of("app:v2")]);
    assert_eq!(r.phase(), Phase::Promoting);
    assert_eq!(r.status().weight, 100);
}

#[test]
fn a_first_rollout_deployed_directly_that_never_serves_is_rolled_back_to_nothing() {
    let mut r = Rollout::new(first_plan(FirstRollout::Direct), None);
    r.decide(&quiet(), t(0));
    let d = r.decide(
        &quiet().health(TargetHealth::Unhealthy {
            reason: "crash loop".to_owned(),
        }),
        t(1),
    );
    assert_eq!(r.phase(), Phase::RollingBack);
    assert_eq!(d.actions, vec![Action::Rollback { stable: None }]);
    assert!(
        d.revert.is_some(),
        "the plan change is reverted, as for any failure"
    );
    r.decide(&quiet(), t(2));
    assert_eq!(r.phase(), Phase::RolledBack);
    // When a human retries, Then it is deployed directly again
    let d = r.decide(&quiet().command(Command::Retry), t(3));
    assert_eq!(d.actions, vec![promote_of("app:v2")]);
    let reason = d.transition.expect("retried").reason;
    assert!(
        reason.starts_with("retry of app:v2 requested; first rollout"),
        "{reason}"
    );
}

#[test]
fn a_new_artifact_during_a_direct_first_rollout_replaces_it_directly() {
    let mut r = Rollout::new(first_plan(FirstRollout::Direct), None);
    r.decide(&progressing(), t(0));
    r.plan.artifact = "app:v3".to_owned();
    let d = r.decide(&Observation::quiet("rev-v3"), t(1));
    assert_eq!(
        d.actions,
        vec![Action::Rollback { stable: None }, promote_of("app:v3")]
    );
    assert_eq!(
        (r.phase(), r.status().candidate.as_str()),
        (Phase::Promoting, "app:v3")
    );
    assert!(
        d.transition
            .expect("t")
            .reason
            .starts_with("app:v2 superseded; first rollout")
    );
}

#[test]
fn a_first_rollout_with_first_rollout_steps_walks_the_steps_and_skips_baseline_checks() {
    // Given a first plan that opts into its steps, with a threshold and a baseline check
    let mut r = Rollout::new(first_plan(FirstRollout::Steps), None);
    let d = r.decide(&quiet(), t(0));
    assert_eq!(r.phase(), Phase::Pending);
    let tr = d.transition.expect("pending");
    assert_eq!(tr.first_rollout, Some(FirstRollout::Steps));
    assert!(tr.reason.contains("firstRollout: steps"), "{}", tr.reason);
    assert!(!r.status().direct);
    let d = r.decide(&quiet(), t(0));
    assert_eq!(d.actions[1], Action::SetWeight(20));

    // When the analysis starts
    let d = r.decide(&quiet(), t(0));
    // Then the baseline check is skipped with its reason, and never asked for
    let reason = d.transition.expect("analysis").reason;
    assert!(
        reason.ends_with("(latency skipped: no stable version to compare with)"),
        "{reason}"
    );
    let latency = &r.status().analysis[1];
    assert_eq!(latency.check, "latency");
    assert_eq!(
        latency.skipped.as_deref(),
        Some("no stable version to compare with")
    );
    assert_eq!(due_checks(&r.plan, r.status(), t(0)), vec!["sr".to_owned()]);
    // and a latency reading, were one taken, is not counted
    for m in 0..2 {
        r.decide(
            &quiet().measured(vec![
                ok("sr", t(m), 0.999, 500),
                ok("latency", t(m), 0.1, 500),
            ]),
            t(m),
        );
    }
    assert_eq!(r.phase(), Phase::Progressing);
    assert_eq!(r.status().analysis[1].measurements, 0);

    // When the duration is over with sr passing
    let d = r.decide(&quiet().measured(vec![ok("sr", t(2), 0.999, 500)]), t(2));
    // Then the step is done on sr's evidence alone, and says latency was not judged
    let tr = d.transition.expect("advanced");
    assert_eq!(
        tr.reason,
        "analysis passed; latency skipped (no stable version to compare with): setWeight 50"
    );
    assert_eq!(tr.verdicts, vec!["pass sr value=0.999 min=0.99 n=500"]);
    assert_eq!(d.actions, vec![Action::SetWeight(50)]);
}

#[test]
fn an_analysis_of_only_baseline_checks_in_a_first_rollout_is_never_held_and_never_claims_a_pass() {
    // Given a first rollout walking its steps, whose analysis only compares with a baseline
    let plan = PlanBuilder::new()
        .baseline("latency")
        .steps(vec![weight(20), analysis(&["latency"], 2), weight(100)])
        .first_rollout(FirstRollout::Steps)
        .build();
    let mut r = Rollout::new(plan, None);
    r.decide(&quiet(), t(0));
    r.decide(&quiet(), t(0));
    let d = r.decide(&quiet(), t(0));
    assert_eq!(r.phase(), Phase::Progressing);
    // Then nothing is measured, the step only waits out its duration
    assert!(due_checks(&r.plan, r.status(), t(0)).is_empty());
    assert_eq!(d.next_wakeup, Some(t(2)));
    assert_eq!(r.decide(&quiet(), t(1)).transition, None);
    // When the duration is over, Then it moves on, held for no one, with no verdict
    let d = r.decide(&quiet(), t(2));
    assert_ne!(r.phase(), Phase::Held);
    let tr = d.transition.expect("advanced");
    assert!(tr.verdicts.is_empty(), "{:?}", tr.verdicts);
    assert!(
        tr.reason
            .starts_with("analysis over, nothing judged: latency skipped"),
        "{}",
        tr.reason
    );
    assert!(!tr.reason.contains("passed"), "{}", tr.reason);
    assert_eq!(d.actions, vec![Action::SetWeight(100)]);
}

#[test]
fn baseline_checks_are_judged_whenever_a_stable_version_exists() {
    let plan = PlanBuilder::new()
        .baseline("latency")
        .steps(vec![weight(20), analysis(&["latency"], 2), weight(100)])
        .first_rollout(FirstRollout::Steps)
        .build();
    let mut r = Rollout::new(plan, Some(stable_status("app:v1", t(-600))));
    r.decide(&quiet(), t(0));
    r.decide(&quiet(), t(0));
    r.decide(&quiet(), t(0));
    assert!(r.status().analysis.iter().all(|c| c.skipped.is_none()));
    assert_eq!(
        due_checks(&r.plan, r.status(), t(0)),
        vec!["latency".to_owned()]
    );
    // and with no evidence at the end, it holds for a human as before
    r.decide(&quiet(), t(2));
    assert_eq!(hold_kind(&r), Some(HoldKind::Evidence));
}

#[test]
fn a_timed_pause_waits_until_its_time() {
    // Given a rollout paused for 15 minutes from t(0)
    let plan = v1_stable_v2_planned()
        .steps(vec![pause(15), weight(100)])
        .build();
    let mut r = Rollout::new(plan, Some(stable_status("app:v1", t(-600))));
    r.decide(&quiet(), t(-1));
    let d = r.decide(&quiet(), t(0));
    assert_eq!(r.phase(), Phase::Paused);
    assert_eq!(d.next_wakeup, Some(t(15)));
    // When the daemon wakes early, Then nothing changes
    let d = r.decide(&quiet(), t(14));
    assert_eq!((d.status, d.transition), (None, None));
    // When its time has come, Then the next step starts
    let d = r.decide(&quiet(), t(15));
    assert_eq!(d.actions, vec![Action::SetWeight(100)]);
    assert_eq!(r.phase(), Phase::Progressing);
}

#[test]
fn regression_a_pause_clock_stops_while_traffic_is_not_as_recorded() {
    // Given v2 at 20% then a 15-minute pause, paused since t(0)
    let plan = v1_stable_v2_planned()
        .steps(vec![weight(20), pause(15), weight(100)])
        .build();
    let mut r = Rollout::new(plan, Some(stable_status("app:v1", t(-600))));
    r.decide(&quiet(), t(-2));
    r.decide(&quiet(), t(-1));
    r.decide(&quiet(), t(0));
    assert_eq!(r.phase(), Phase::Paused);
    // When the traffic drifts at t(5) (another manager reset the route) and is being
    // re-applied: the pause is held for drift (before: its clock ran on, and the
    // rollout went to 100% the moment the route was repaired, past t(15))
    let d = r.decide(&progressing(), t(5));
    assert_eq!(hold_kind(&r), Some(HoldKind::Drift));
    assert!(d.transition.is_some());
    assert_eq!(r.decide(&progressing(), t(8)).status, None);
    // And once traffic is as recorded again (t(9)), the pause starts over: 15 minutes
    // from then (a drift that outlasts progressDeadline fails the stage, as before)
    let d = r.decide(&quiet(), t(9));
    assert_eq!(r.phase(), Phase::Paused);
    assert_eq!(d.next_wakeup, Some(t(24)));
    assert_eq!(r.decide(&quiet(), t(15)).actions, Vec::new());
    assert_eq!(
        r.decide(&quiet(), t(24)).actions,
        vec![Action::SetWeight(100)]
    );
}

#[test]
fn a_first_step_whose_candidate_is_still_starting_is_not_drift() {
    // Given an analysis as the first step, while the candidate's pods start
    let plan = analysed(v1_stable_v2_planned());
    let mut r = Rollout::new(plan, Some(stable_status("app:v1", t(-600))));
    r.decide(&quiet(), t(-1));
    r.decide(&progressing(), t(0));
    // Then it waits, not held
    assert_ne!(r.phase(), Phase::Held);
}

#[test]
fn an_untimed_pause_waits_for_a_promote_command() {
    let plan = v1_stable_v2_planned()
        .steps(vec![weight(50), pause_untimed(), weight(100)])
        .build();
    let mut r = Rollout::new(plan, Some(stable_status("app:v1", t(-600))));
    r.decide(&quiet(), t(0));
    r.decide(&quiet(), t(0));
    let d = r.decide(&quiet(), t(1));
    assert_eq!(r.phase(), Phase::Paused);
    assert_eq!(d.next_wakeup, None, "only a human moves an untimed pause");
    // When days pass, Then it still waits
    assert_eq!(r.decide(&quiet(), t(3 * 24 * 60)).transition, None);
    // When a promotion is committed, Then the next step starts
    let d = r.decide(&quiet().command(Command::Promote), t(3 * 24 * 60 + 1));
    assert_eq!(d.actions, vec![Action::SetWeight(100)]);
    assert!(d.transition.expect("moved").reason.contains("promoted"));
}

fn in_analysis(plan: Plan) -> Rollout {
    let mut r = Rollout::new(plan, Some(stable_status("app:v1", t(-600))));
    r.decide(&quiet(), t(-2));
    r.decide(&quiet(), t(-1)); // 5%
    r.decide(&quiet(), t(0)); // analysis starts at t(0)
    assert_eq!(r.phase(), Phase::Progressing);
    assert_eq!(r.status().analysis.len(), r.plan.checks.len());
    r
}

fn analysed(builder: PlanBuilder) -> Plan {
    builder
        .steps(vec![weight(5), analysis(&["sr", "p99"], 3), weight(100)])
        .build()
}

#[test]
fn an_analysis_with_all_passes_advances() {
    let plan = analysed(
        v1_stable_v2_planned()
            .threshold("sr", Some(0.99), None)
            .threshold("p99", None, Some(0.3)),
    );
    let mut r = in_analysis(plan);
    for m in 0..3 {
        let d = r.decide(
            &quiet().measured(vec![ok("sr", t(m), 0.999, 800), ok("p99", t(m), 0.2, 800)]),
            t(m),
        );
        assert_eq!(d.transition, None, "still measuring at minute {m}");
    }
    let d = r.decide(
        &quiet().measured(vec![ok("sr", t(3), 0.999, 800), ok("p99", t(3), 0.2, 800)]),
        t(3),
    );
    assert_eq!(d.actions, vec![Action::SetWeight(100)]);
    assert_eq!(d.transition.expect("advanced").verdicts.len(), 2);
}

#[test]
fn a_check_failing_beyond_its_failure_limit_rolls_back_with_a_revert_carrying_the_evidence() {
    // Given an analysis whose success-rate check tolerates one failure
    let plan = analysed(
        v1_stable_v2_planned()
            .threshold("sr", Some(0.99), None)
            .failure_limit("sr", 1)
            .threshold("p99", None, Some(0.3)),
    );
    let mut r = in_analysis(plan);
    // When it fails once, Then the rollout carries on
    let d = r.decide(&quiet().measured(vec![ok("sr", t(1), 0.9, 800)]), t(1));
    assert_eq!(d.transition, None);
    // When it fails twice
    let d = r.decide(&quiet().measured(vec![ok("sr", t(2), 0.8, 800)]), t(2));
    // Then traffic goes back to v1 and the plan change is reverted, with the evidence
    assert_eq!(r.phase(), Phase::RollingBack);
    assert_eq!(
        d.actions,
        vec![Action::Rollback {
            stable: Some("app:v1".to_owned())
        }]
    );
    let revert = d.revert.expect("a revert");
    assert_eq!(revert.of_revision, REV);
    assert!(
        revert.reason.contains("failed 2 times"),
        "{}",
        revert.reason
    );
    assert_eq!(revert.evidence.len(), 1);
    assert_eq!(revert.evidence[0].evidence.value, Some(0.8));
    let tr = d.transition.expect("transition");
    assert_eq!(
        tr.verdicts,
        vec!["fail sr value=0.8 min=0.99 n=800 (0.8 is below min 0.99)"]
    );
    // When the target reports v1 serving, Then the rollout is rolled back
    assert_eq!(
        r.decide(&progressing(), t(3)).actions.len(),
        1,
        "rollback re-issued"
    );
    r.decide(&quiet(), t(4));
    assert_eq!(r.phase(), Phase::RolledBack);
    assert_eq!(
        r.decide(&quiet(), t(5)).status,
        None,
        "nothing re-applies v2"
    );
}

#[test]
fn on_failure_hold_restores_traffic_without_a_revert() {
    let plan = analysed(
        v1_stable_v2_planned()
            .threshold("sr", Some(0.99), None)
            .threshold("p99", None, Some(0.3))
            .on_failure(OnFailure::Hold),
    );
    let mut r = in_analysis(plan);
    let d = r.decide(&quiet().measured(vec![ok("sr", t(1), 0.5, 800)]), t(1));
    assert_eq!(r.phase(), Phase::RollingBack);
    assert_eq!(d.revert, None);
}

#[test]
fn too_few_samples_is_inconclusive_and_holds_never_promoting() {
    // Given a quiet service: every measurement has 10 samples, below minSamples 100
    let plan = analysed(
        v1_stable_v2_planned()
            .min_samples(100)
            .threshold("sr", Some(0.99), None)
            .threshold("p99", None, Some(0.3)),
    );
    let mut r = in_analysis(plan);
    for m in 0..=3 {
        r.decide(
            &quiet().measured(vec![ok("sr", t(m), 1.0, 10), ok("p99", t(m), 0.1, 10)]),
            t(m),
        );
    }
    // Then at the end of the analysis the rollout holds for a human
    assert_eq!(r.phase(), Phase::Held);
    assert_eq!(hold_kind(&r), Some(HoldKind::Evidence));
    let reason = &r.status().hold.as_ref().expect("hold").reason;
    assert!(reason.contains("too few samples"), "{reason}");
    // and stays held, however long it waits, with nothing scheduled
    let d = r.decide(&quiet(), t(600));
    assert_eq!((d.status, d.next_wakeup), (None, None));
    assert!(
        !r.actions
            .iter()
            .any(|a| matches!(a, Action::Promote { .. } | Action::SetWeight(100))),
        "never promoted without evidence"
    );
    // Until a human accepts it
    let d = r.decide(&quiet().command(Command::Promote), t(601));
    assert_eq!(d.actions, vec![Action::SetWeight(100)]);
}

#[test]
fn consecutive_errors_beyond_the_limit_hold_and_retry_reruns_the_analysis() {
    let plan = analysed(
        v1_stable_v2_planned()
            .threshold("sr", Some(0.99), None)
            .consecutive_error_limit("sr", 2)
            .threshold("p99", None, Some(0.3)),
    );
    let mut r = in_analysis(plan);
    r.decide(
        &quiet().measured(vec![err("sr", t(0)), err("sr", t(1))]),
        t(1),
    );
    assert_eq!(r.phase(), Phase::Progressing, "two errors are tolerated");
    r.decide(&quiet().measured(vec![err("sr", t(2))]), t(2));
    assert_eq!(r.phase(), Phase::Held);
    assert_eq!(hold_kind(&r), Some(HoldKind::Metrics));
    assert!(
        r.status()
            .hold
            .as_ref()
            .expect("hold")
            .reason
            .contains("3 consecutive errors")
    );
    // When a human asks for a retry, Then the analysis starts over with fresh counters
    let d = r.decide(&quiet().command(Command::Retry), t(5));
    assert_eq!(r.phase(), Phase::Progressing);
    assert!(d.transition.is_some());
    assert!(r.status().analysis.iter().all(|c| c.measurements == 0));
    assert_eq!(r.status().step_started_at, Some(t(5)));
}

#[test]
fn a_closed_window_holds_until_it_opens_while_rollback_stays_allowed() {
    // Given office hours, and a plan change merged on Monday at 17:00
    let plan = v1_stable_v2_planned()
        .steps(vec![weight(5), weight(50), weight(100)])
        .window("* 9-16 * * 1-5")
        .build();
    let mut r = Rollout::new(plan, Some(stable_status("app:v1", t(-600))));
    r.decide(&quiet(), t(7 * 60));
    // When the daemon would start the first step
    let d = r.decide(&quiet(), t(7 * 60));
    // Then it holds, with no action, and wakes at Tuesday 09:00
    assert_eq!(r.phase(), Phase::Held);
    assert_eq!(hold_kind(&r), Some(HoldKind::Window));
    assert!(d.actions.is_empty());
    assert_eq!(d.next_wakeup, Some(t(23 * 60)));
    assert_eq!(
        r.decide(&quiet(), t(8 * 60)).status,
        None,
        "no no-op commits"
    );
    // When the window opens, Then the first step starts
    let d = r.decide(&quiet(), t(23 * 60));
    assert_eq!(d.actions[1], Action::SetWeight(5));
    // When the 5% step turns healthy only after closing time (Tuesday 17:00)
    assert_eq!(r.phase(), Phase::Progressing);
    r.decide(&quiet(), t(31 * 60));
    // Then the next step waits for Wednesday 09:00, at the weight it had
    assert_eq!(hold_kind(&r), Some(HoldKind::Window));
    assert_eq!(r.status().weight, 5, "weight stays where it was");
    // and a failing candidate is still rolled back while the window is closed
    let d = r.decide(
        &quiet().health(TargetHealth::Unhealthy {
            reason: "crash loop".to_owned(),
        }),
        t(32 * 60),
    );
    assert_eq!(r.phase(), Phase::RollingBack);
    assert!(d.revert.is_some());
    r.decide(&quiet(), t(32 * 60 + 1));
    assert_eq!(r.phase(), Phase::RolledBack);
}

#[test]
fn a_human_revert_mid_rollout_aborts_at_once_without_a_revert_commit() {
    // Given a rollout of v2 at 25%
    let plan = v1_stable_v2_planned()
        .steps(vec![weight(25), pause_untimed(), weight(100)])
        .build();
    let mut r = Rollout::new(plan, Some(stable_status("app:v1", t(-600))));
    r.decide(&quiet(), t(0));
    r.decide(&quiet(), t(0));
    r.decide(&quiet(), t(1));
    assert_eq!(r.phase(), Phase::Paused);
    // When a human reverts the plan back to v1
    r.plan.artifact = "app:v1".to_owned();
    let d = r.decide(&quiet(), t(2));
    // Then traffic goes back to v1 at once, and rollgate pushes no revert of its own
    assert_eq!(r.phase(), Phase::RollingBack);
    assert_eq!(
        d.actions,
        vec![Action::Rollback {
            stable: Some("app:v1".to_owned())
        }]
    );
    assert_eq!(d.revert, None);
    assert!(
        d.transition
            .expect("transition")
            .reason
            .contains("reverted by a human")
    );
    r.decide(&quiet(), t(3));
    assert_eq!(r.phase(), Phase::RolledBack);
    assert_eq!(r.decide(&quiet(), t(4)).status, None);
}

#[test]
fn a_revert_to_a_recently_stable_artifact_after_success_is_fast_tracked() {
    // Given v1 was stable until v2 succeeded an hour ago
    let plan = PlanBuilder::new()
        .artifact("app:v1")
        .threshold("sr", Some(0.99), None)
        .steps(vec![
            weight(5),
            analysis(&["sr"], 10),
            weight(50),
            pause(30),
            weight(100),
        ])
        .window("* 9-16 * * 1-5")
        .build();
    let mut status = stable_status("app:v1", t(-3000));
    status.succeeded.push(crate::model::status::Success {
        artifact: "app:v2".to_owned(),
        at: t(-60),
    });
    status.stable = Some("app:v2".to_owned());
    status.candidate = "app:v2".to_owned();
    // When a human reverts the plan to v1 after hours
    let mut r = Rollout::new(plan, Some(status));
    let d = r.decide(&quiet(), t(8 * 60));
    assert!(r.status().fast_track);
    assert!(d.transition.expect("t").reason.contains("fast-tracked"));
    // Then it walks its weights only, ignoring the window, straight to success
    for m in 0..6 {
        r.decide(&quiet(), t(8 * 60 + m));
    }
    assert_eq!(r.phase(), Phase::Succeeded);
    assert_eq!(r.status().stable.as_deref(), Some("app:v1"));
    assert!(
        r.story()
            .iter()
            .all(|(p, _)| *p != Phase::Paused && *p != Phase::Held)
    );
    assert!(r.transitions.iter().all(|t| t.step.1 == 3), "5, 50, 100");
}

#[test]
fn a_revert_to_an_artifact_replaced_long_ago_is_a_normal_rollout() {
    let plan = PlanBuilder::new()
        .artifact("app:v1")
        .rollback_window(mins(60))
        .build();
    let mut status = stable_status("app:v1", t(-3000));
    status.succeeded.push(crate::model::status::Success {
        artifact: "app:v2".to_owned(),
        at: t(-61),
    });
    status.stable = Some("app:v2".to_owned());
    status.candidate = "app:v2".to_owned();
    let d = decide(&plan, Some(&status), &quiet(), t(0));
    assert!(!d.status.expect("pending").fast_track);
}

#[test]
fn regression_abort_reverts_the_plan_change_like_a_failed_stage() {
    let plan = v1_stable_v2_planned()
        .steps(vec![weight(10), pause_untimed(), weight(100)])
        .build();
    let mut r = Rollout::new(plan, Some(stable_status("app:v1", t(-600))));
    r.decide(&quiet(), t(0));
    r.decide(&quiet(), t(0));
    // When a human aborts
    let d = r.decide(&quiet().command(Command::Abort), t(1));
    // Then it rolls back, and the plan change is to be reverted (Git back at v1)
    assert_eq!(r.phase(), Phase::RollingBack);
    let revert = d.revert.expect("a revert");
    assert_eq!(
        (revert.of_revision.as_str(), revert.reason.as_str()),
        (REV, "aborted by command")
    );
    assert!(revert.evidence.is_empty());
}

#[test]
fn abort_rolls_back_and_retry_restarts_the_same_artifact() {
    // Given a plan that keeps Git as it is on a rollback (`onFailure: hold`)
    let plan = v1_stable_v2_planned()
        .steps(vec![weight(10), pause_untimed(), weight(100)])
        .on_failure(OnFailure::Hold)
        .build();
    let mut r = Rollout::new(plan, Some(stable_status("app:v1", t(-600))));
    r.decide(&quiet(), t(0));
    r.decide(&quiet(), t(0));
    // When a human aborts
    let d = r.decide(&quiet().command(Command::Abort), t(1));
    // Then it rolls back without reverting the plan
    assert_eq!(r.phase(), Phase::RollingBack);
    assert_eq!(d.revert, None);
    r.decide(&quiet(), t(2));
    assert_eq!(r.phase(), Phase::RolledBack);
    // When a promote or nothing arrives, Then it stays rolled back
    assert_eq!(
        r.decide(&quiet().command(Command::Promote), t(3)).status,
        None
    );
    // When a human asks for a retry, Then the same artifact is rolled out again
    let d = r.decide(&quiet().command(Command::Retry), t(4));
    assert_eq!(r.phase(), Phase::Pending);
    assert!(d.transition.expect("t").reason.contains("retry"));
    let d = r.decide(&quiet(), t(4));
    assert_eq!(
        d.actions[0],
        Action::StartCandidate {
            artifact: "app:v2".to_owned()
        }
    );
}

#[test]
fn a_new_artifact_mid_rollout_supersedes_the_candidate() {
    let plan = v1_stable_v2_planned().build();
    let mut r = Rollout::new(plan, Some(stable_status("app:v1", t(-600))));
    r.decide(&quiet(), t(0));
    r.decide(&quiet(), t(0));
    r.plan.artifact = "app:v3".to_owned();
    let d = r.decide(&Observation::quiet("rev-v3"), t(1));
    assert_eq!(r.phase(), Phase::Pending);
    assert_eq!(r.status().candidate, "app:v3");
    assert_eq!(r.status().revision, "rev-v3");
    assert_eq!(r.status().stable.as_deref(), Some("app:v1"));
    assert!(matches!(d.actions[..], [Action::Rollback { .. }]));
}

#[test]
fn an_unreachable_target_holds_and_the_step_resumes_when_it_answers() {
    let plan = v1_stable_v2_planned().build();
    let mut r = Rollout::new(plan, Some(stable_status("app:v1", t(-600))));
    r.decide(&quiet(), t(0));
    r.decide(&quiet(), t(0));
    let down = quiet().health(TargetHealth::Unreachable {
        reason: "no route to host".to_owned(),
    });
    let d = r.decide(&down, t(1));
    assert_eq!(hold_kind(&r), Some(HoldKind::Target));
    assert!(d.next_wakeup.is_some());
    assert_eq!(r.decide(&down, t(2)).status, None);
    let d = r.decide(&progressing(), t(3));
    assert_eq!(r.phase(), Phase::Progressing);
    assert_eq!(
        d.actions,
        vec![
            Action::StartCandidate {
                artifact: "app:v2".to_owned()
            },
            Action::SetWeight(5)
        ]
    );
}

#[test]
fn regression_a_refused_target_action_is_held_once_with_its_error_and_cleared_when_it_succeeds() {
    // Given v1 stable, v2 planned and pending
    let plan = v1_stable_v2_planned().progress_deadline(mins(5)).build();
    let mut r = Rollout::new(plan, Some(stable_status("app:v1", t(-600))));
    r.decide(&quiet(), t(0));
    // When the target refuses to start the candidate
    let d = r.decide_refused(&quiet(), t(0), "start candidate app:v2: 403 Forbidden");
    // Then the rollout is held for the target, with the error, at the step it was entering
    let held = d.transition.expect("a transition");
    assert_eq!(
        (held.from, held.to, held.step),
        (Some(Phase::Pending), Phase::Held, (1, 2))
    );
    assert!(held.reason.contains("403 Forbidden"), "{held:?}");
    assert_eq!(hold_kind(&r), Some(HoldKind::Target));
    assert_eq!(r.status().weight, 0);
    assert!(d.actions.is_empty());
    assert_eq!(d.next_wakeup, Some(t(1)), "retried at the daemon's backoff");
    // When it refuses again, long after the progress deadline: nothing new is recorded,
    // and the deadline does not fail a step that never started
    let again = r.decide_refused(&quiet(), t(30), "start candidate app:v2: 403 Forbidden");
    assert_eq!((again.status, again.transition), (None, None));
    // When the target accepts: the step is entered, the hold cleared by that transition
    let d = r.decide(&quiet(), t(31));
    let t1 = d.transition.expect("a transition");
    assert_eq!((t1.from, t1.to), (Some(Phase::Held), Phase::Progressing));
    assert!(t1.reason.starts_with("target answers again"), "{t1:?}");
    assert_eq!(r.status().hold, None);
    assert_eq!(d.actions.len(), 2);
}

#[test]
fn a_refused_rollback_is_never_held_and_keeps_its_revert() {
    // Given a rollout at its first step whose stage fails
    let plan = v1_stable_v2_planned().build();
    let mut r = Rollout::new(plan, Some(stable_status("app:v1", t(-600))));
    r.decide(&quiet(), t(0));
    r.decide(&quiet(), t(0));
    let sick = quiet().health(TargetHealth::Unhealthy {
        reason: "crash loop".to_owned(),
    });
    // When the target refuses the rollback
    let d = r.decide_refused(&sick, t(1), "roll back to app:v1: 503");
    // Then Git says it is rolling back, with the error; the plan change is still reverted
    assert_eq!(r.phase(), Phase::RollingBack);
    assert_eq!(hold_kind(&r), Some(HoldKind::Target));
    assert!(d.revert.is_some());
    assert!(d.transition.expect("t").reason.contains("503"));
    // When it refuses again: nothing new; when it succeeds: the error is cleared
    let again = r.decide_refused(&progressing(), t(2), "roll back to app:v1: 503");
    assert_eq!(again.transition, None);
    let d = r.decide(&progressing(), t(3));
    assert!(matches!(d.actions[..], [Action::Rollback { .. }]));
    assert_eq!(r.status().hold, None);
    assert!(d.transition.is_some());
    r.decide(&quiet(), t(4));
    assert_eq!(r.phase(), Phase::RolledBack);
}

#[test]
fn a_promotion_is_recorded_before_it_runs_and_a_refused_one_is_held_without_flapping() {
    // Given a rollout at its last step (setWeight 100), serving
    let plan = v1_stable_v2_planned().build();
    let mut r = Rollout::new(plan, Some(stable_status("app:v1", t(-600))));
    r.decide(&quiet(), t(0));
    r.decide(&quiet(), t(0));
    let d = r.decide(&quiet(), t(1));
    assert_eq!(r.status().weight, 100);
    assert!(!d.record_first, "a weight is recorded once it serves");
    // When it promotes: the transition is to be recorded before the promotion runs
    let d = r.decide(&quiet(), t(2));
    assert_eq!(r.phase(), Phase::Promoting);
    assert!(d.record_first);
    assert!(matches!(d.actions[..], [Action::Promote { .. }]));
    // When the target refuses the promotion (re-issued while Promoting): held, once
    let d = r.decide_refused(&progressing(), t(3), "promote app:v2: 403");
    assert_eq!(
        (d.transition.expect("t").from, r.phase()),
        (Some(Phase::Promoting), Phase::Held)
    );
    assert_eq!(
        r.status().weight,
        100,
        "the candidate still serves at its last weight"
    );
    // When it is retried: the promotion runs before anything is recorded, and a second
    // refusal records nothing (no Promoting/Held pair per retry)
    let retry = decide(&r.plan, r.status.as_ref(), &quiet(), t(4));
    assert_eq!(
        retry.transition.as_ref().map(|t| t.to),
        Some(Phase::Promoting)
    );
    assert!(!retry.record_first);
    let again = r.decide_refused(&quiet(), t(4), "promote app:v2: 403");
    assert_eq!(again.transition, None);
}

#[test]
fn a_first_rollout_deployed_directly_is_recorded_before_it_runs() {
    let d = decide(&first_plan(FirstRollout::Direct), None, &quiet(), t(0));
    assert_eq!(d.transition.as_ref().map(|t| t.to), Some(Phase::Promoting));
    assert!(d.record_first);
    // And a refused direct deployment serves nothing
    let mut r = Rollout::new(first_plan(FirstRollout::Direct), None);
    r.decide_refused(&quiet(), t(0), "promote app:v2: 403");
    assert_eq!((r.phase(), r.status().weight), (Phase::Held, 0));
}

#[test]
fn retry_backoff_doubles_from_one_second_to_five_minutes_spread_by_a_quarter() {
    use std::time::Duration;
    let s = Duration::from_secs;
    assert_eq!(retry_backoff(1, 0.5), s(1));
    assert_eq!(retry_backoff(2, 0.5), s(2));
    assert_eq!(retry_backoff(6, 0.5), s(32));
    assert_eq!(retry_backoff(9, 0.5), s(256));
    assert_eq!(retry_backoff(10, 0.5), s(300));
    assert_eq!(retry_backoff(u32::MAX, 1.0), s(300), "never beyond the cap");
    assert_eq!(retry_backoff(3, 0.0), Duration::from_millis(3000));
    assert_eq!(retry_backoff(3, 1.0), Duration::from_millis(5000));
    assert_eq!(retry_backoff(3, f64::NAN), s(4));
}

#[test]
fn a_target_progressing_beyond_the_deadline_fails_the_stage() {
    let plan = v1_stable_v2_planned().progress_deadline(mins(5)).build();
    let mut r = Rollout::new(plan, Some(stable_status("app:v1", t(-600))));
    r.decide(&quiet(), t(0));
    r.decide(&quiet(), t(0));
    assert_eq!(r.decide(&progressing(), t(5)).transition, None);
    let d = r.decide(&progressing(), t(6));
    assert_eq!(r.phase(), Phase::RollingBack);
    assert!(
        d.revert
            .expect("revert")
            .reason
            .contains("progressDeadline 5m")
    );
}

#[test]
fn blue_green_previews_then_switches() {
    let plan = v1_stable_v2_planned()
        .threshold("sr", Some(0.99), None)
        .blue_green(Some(analysis_step(&["sr"], 1)), false)
        .build();
    let mut r = Rollout::new(plan, Some(stable_status("app:v1", t(-600))));
    r.decide(&quiet(), t(0));
    let d = r.decide(&quiet(), t(0));
    assert_eq!(d.actions[1], Action::SetWeight(0));
    r.decide(&quiet(), t(1));
    r.decide(&quiet().measured(vec![ok("sr", t(2), 0.999, 500)]), t(2));
    assert_eq!(r.phase(), Phase::Paused, "waits for a promotion");
    r.decide(&quiet().command(Command::Promote), t(3));
    r.decide(&quiet(), t(4));
    r.decide(&quiet(), t(5));
    assert_eq!(r.phase(), Phase::Succeeded);
}

#[test]
fn deciding_is_idempotent() {
    // Given a rollout in each of its waiting states
    let plan = analysed(
        v1_stable_v2_planned()
            .threshold("sr", Some(0.99), None)
            .threshold("p99", None, Some(0.3)),
    );
    let mut r = in_analysis(plan.clone());
    let obs = quiet().measured(vec![ok("sr", t(1), 0.999, 800), ok("p99", t(1), 0.1, 800)]);
    // When deciding twice with the same inputs, Then the decisions are equal
    let before = r.status.clone();
    let first = decide(&plan, before.as_ref(), &obs, t(1));
    let second = decide(&plan, before.as_ref(), &obs, t(1));
    assert_eq!(first, second);
    // When deciding again on the decided status with the same measurements,
    // Then nothing is counted twice and nothing is committed
    r.decide(&obs, t(1));
    let again = r.decide(&obs, t(1));
    assert_eq!((again.status, again.transition), (None, None));
    assert_eq!(r.status().analysis[0].measurements, 1);
    // and the same holds in every state that waits for time or for a human
    let waiting = [(Phase::Paused, pause_untimed()), (Phase::Paused, pause(10))];
    for (phase, step) in waiting {
        let plan = v1_stable_v2_planned()
            .steps(vec![step, weight(100)])
            .build();
        let mut r = Rollout::new(plan, Some(stable_status("app:v1", t(-600))));
        r.decide(&quiet(), t(0));
        r.decide(&quiet(), t(0));
        assert_eq!(r.phase(), phase);
        let d = r.decide(&quiet(), t(1));
        assert_eq!((d.status, d.transition), (None, None));
    }
}

#[test]
fn a_reverted_artifact_proposed_again_by_a_new_commit_rolls_out_again() {
    // Given v2 failed, was rolled back, and rollgate's revert put v1 back in the plan
    let plan = v1_stable_v2_planned().build();
    let mut r = Rollout::new(plan, Some(stable_status("app:v1", t(-600))));
    r.decide(&quiet(), t(0));
    r.decide(&quiet(), t(0));
    let broken = quiet().health(TargetHealth::Unhealthy {
        reason: "crash loop".to_owned(),
    });
    assert!(r.decide(&broken, t(1)).revert.is_some());
    r.decide(&quiet(), t(2));
    r.plan.artifact = "app:v1".to_owned();
    assert_eq!(
        r.decide(&Observation::quiet("rev-revert"), t(3)).status,
        None
    );
    // When the same plan commit is seen again, Then nothing restarts
    r.plan.artifact = "app:v2".to_owned();
    assert_eq!(r.decide(&quiet(), t(4)).status, None);
    // When a human commits v2 to the plan again, Then it rolls out again
    r.decide(&Observation::quiet("rev-v2-again"), t(5));
    assert_eq!(r.phase(), Phase::Pending);
    assert_eq!(r.status().revision, "rev-v2-again");
}

#[test]
fn a_promotion_while_the_window_is_closed_waits_for_the_opening() {
    // Given an untimed pause at 16:00 on Monday, inside office hours
    let plan = v1_stable_v2_planned()
        .steps(vec![pause_untimed(), weight(100)])
        .window("* 9-16 * * 1-5")
        .build();
    let mut r = Rollout::new(plan, Some(stable_status("app:v1", t(-600))));
    r.decide(&quiet(), t(6 * 60));
    r.decide(&quiet(), t(6 * 60));
    assert_eq!(r.phase(), Phase::Paused);
    // When a human promotes after closing time
    let d = r.decide(&quiet().command(Command::Promote), t(8 * 60));
    // Then the pause is done but the next step waits for Tuesday 09:00
    assert_eq!(hold_kind(&r), Some(HoldKind::Window));
    assert!(d.actions.is_empty());
    assert_eq!(d.next_wakeup, Some(t(23 * 60)));
    let d = r.decide(&quiet(), t(23 * 60));
    assert_eq!(d.actions, vec![Action::SetWeight(100)]);
}

#[test]
fn the_status_file_of_a_decided_rollout_reads_back_the_same() {
    let plan = analysed(
        v1_stable_v2_planned()
            .threshold("sr", Some(0.99), None)
            .threshold("p99", None, Some(0.3)),
    );
    let mut r = in_analysis(plan);
    r.decide(
        &quiet().measured(vec![ok("sr", t(0), 0.999, 800), err("p99", t(0))]),
        t(0),
    );
    let s = r.status();
    let text = s.to_yaml().expect("writes");
    assert_eq!(
        &crate::model::status::Status::from_yaml(&text).expect("reads"),
        s
    );
}

#[test]
fn a_burning_error_budget_holds_the_rollout_until_the_burn_stops() {
    use crate::engine::slo::Reading;
    // Given a plan with a 99.9% SLO, stable at v1, and a change to v2
    let plan = PlanBuilder::new()
        .steps(vec![weight(10), weight(50), weight(100)])
        .slo(0.999)
        .build();
    let mut r = Rollout::new(plan, Some(stable_status("app:v1", t(0))));
    let calm = Reading {
        ratio_5m: 0.0,
        ratio_30m: 0.0,
        ratio_1h: 0.0,
        ratio_6h: 0.0,
        ratio_window: 0.0002,
    };
    let burning = Reading {
        ratio_5m: 0.03,
        ratio_30m: 0.03,
        ratio_1h: 0.02,
        ratio_6h: 0.01,
        ..calm
    };
    r.decide(&quiet().slo(Ok(calm)), t(1));
    r.decide(&quiet().slo(Ok(calm)), t(2));
    assert_eq!(r.phase(), Phase::Progressing);
    let step = r.status().step;
    // When the budget burns at 20x (1h) and 30x (5m)
    r.decide(&quiet().slo(Ok(burning)), t(3));
    // Then the next step is not entered: the rollout holds, and says why
    assert_eq!(r.phase(), Phase::Held);
    let hold = r.status().hold.clone().expect("a hold");
    assert_eq!(hold.kind, HoldKind::Slo);
    assert!(hold.reason.contains("14.4"), "{}", hold.reason);
    assert_eq!(r.status().step, step + 1);
    // And a missing reading keeps it held (no promotion without evidence)
    r.decide(&quiet().slo(Err("prometheus down".to_owned())), t(4));
    assert_eq!(r.phase(), Phase::Held);
    // When the burn stops, Then the rollout goes on, with the remaining budget recorded
    r.decide(&quiet().slo(Ok(calm)), t(5));
    assert_eq!(r.phase(), Phase::Progressing);
    assert!(
        r.status()
            .budget_remaining
            .is_some_and(|b| (b - 0.8).abs() < 1e-9),
        "{:?}",
        r.status().budget_remaining
    );
}

#[test]
fn a_source_that_answers_again_restarts_the_held_analysis() {
    // Given an analysis held because its source failed beyond consecutiveErrorLimit
    let plan = analysed(
        v1_stable_v2_planned()
            .threshold("sr", Some(0.99), None)
            .consecutive_error_limit("sr", 1)
            .threshold("p99", None, Some(0.3)),
    );
    let mut r = in_analysis(plan);
    r.decide(
        &quiet().measured(vec![err("sr", t(0)), err("sr", t(1))]),
        t(1),
    );
    assert_eq!(hold_kind(&r), Some(HoldKind::Metrics));
    // While it keeps failing, the daemon keeps probing and nothing moves
    assert_eq!(
        crate::engine::due_checks(&r.plan, r.status(), t(2)),
        vec!["sr".to_owned(), "p99".to_owned()]
    );
    let d = r.decide(&quiet().measured(vec![err("sr", t(2))]), t(2));
    assert!(d.transition.is_none());
    assert_eq!(r.phase(), Phase::Held);
    // When the source answers, Then the analysis starts over (no promotion on old data)
    let d = r.decide(&quiet().measured(vec![ok("sr", t(3), 1.0, 500)]), t(3));
    assert!(d.transition.is_some());
    assert_eq!(r.phase(), Phase::Progressing);
    assert_eq!(r.status().step_started_at, Some(t(3)));
    assert!(r.status().analysis.iter().all(|c| c.passes == 0));
}

#[test]
fn a_baseline_judge_rolls_back_sparse_errors_the_stable_version_does_not_have() {
    use crate::engine::{Measurement, Observed, Sample};
    use crate::model::plan::{Direction, Judge};
    // Given a success-rate check judged against the stable version
    let mut builder = v1_stable_v2_planned()
        .threshold("sr", None, None)
        .threshold("p99", None, Some(0.3));
    let plan = {
        let mut p = analysed(std::mem::replace(&mut builder, PlanBuilder::new()));
        let sr = p.checks.iter_mut().find(|c| c.name == "sr").expect("sr");
        sr.judge = Judge::Baseline {
            direction: Direction::Decrease,
            max_ratio: Some(1.5),
            max_increase: None,
            alpha: 0.05,
        };
        p
    };
    let mut r = in_analysis(plan);
    // When the candidate failed 3 of 100 requests and the baseline none of 10,000
    let sparse = Observed {
        check: "sr".to_owned(),
        at: t(1),
        result: Ok(Measurement {
            value: Some(0.97),
            samples: 100,
        }),
        sample: Some(Sample::Counts {
            canary_good: 97,
            canary_total: 100,
            baseline_good: 10_000,
            baseline_total: 10_000,
        }),
    };
    let d = r.decide(&quiet().measured(vec![sparse]), t(1));
    // Then the check fails on Fisher's exact test and the rollout is rolled back, with the evidence
    assert_eq!(r.phase(), Phase::RollingBack);
    let revert = d.revert.expect("a revert");
    let evidence = revert.evidence.first().expect("evidence");
    assert_eq!(evidence.verdict.as_str(), "fail");
    let c = evidence.evidence.comparison.as_ref().expect("a comparison");
    assert_eq!(c.test, "fisher");
    assert!(c.p_value < 1e-5, "{c:?}");
    assert!(evidence.to_string().contains("n=100/10000"), "{evidence}");
}

/// v1 stable, v2 in a 10-minute analysis of a builtin success-rate check, entered at
/// t(0) and committed: what the status file holds when the daemon (and its counters in
/// memory) restarts.
fn in_builtin_analysis() -> Rollout {
    let plan = v1_stable_v2_planned()
        .threshold("sr", Some(0.99), None)
        .steps(vec![weight(5), analysis(&["sr"], 10), weight(100)])
        .build();
    assert_eq!(
        plan.checks[0].source,
        crate::model::settings::BUILTIN_SOURCE
    );
    let mut r = Rollout::new(plan, Some(stable_status("app:v1", t(-600))));
    r.decide(&quiet(), t(-2));
    r.decide(&quiet(), t(-1));
    r.decide(&quiet(), t(0));
    assert_eq!(r.status().step_started_at, Some(t(0)));
    r
}

const RESTARTED_AT_11: &str = "analysis restarted at 2026-11-23T10:11:00Z: the builtin samples before it were lost (the data plane restarted)";

#[test]
fn regression_an_analysis_that_lost_its_builtin_samples_restarts_its_window_instead_of_holding() {
    // Given an analysis from t(0) to t(10), and the daemon and its data plane down from
    // t(3): the data plane is back at t(11) and has counted requests since then only
    let mut r = in_builtin_analysis();
    let status = r.status.clone();
    // When the daemon measures at t(12): one minute of traffic, too few samples
    let thin = vec![ok("sr", t(12), 1.0, 30)];
    // (Without knowing when the samples begin, the step would end inconclusive and wait
    // for a human, though the traffic was there: the bug.)
    let blind = decide(
        &r.plan,
        status.as_ref(),
        &quiet().measured(thin.clone()),
        t(12),
    );
    assert_eq!(blind.status.expect("held").phase, Phase::Held);
    let d = r.decide(&quiet().measured(thin.clone()).samples_since(t(11)), t(12));

    // Then the window restarts where the samples are complete, with fresh counters
    assert_eq!(r.phase(), Phase::Progressing);
    let s = r.status();
    assert_eq!(s.step_started_at, Some(t(11)));
    assert_eq!(
        s.analysis[0].measurements, 1,
        "the reading after t(11) counts"
    );
    assert_eq!(s.analysis[0].inconclusives, 1);
    let restart = s.analysis_restart.as_ref().expect("recorded");
    assert_eq!((restart.count, restart.at), (1, t(11)));
    assert_eq!(restart.reason, RESTARTED_AT_11);
    // and it is one status commit saying so
    let tr = d.transition.expect("a transition");
    assert_eq!(tr.analysis_restarted_at, Some(t(11)));
    assert_eq!(tr.reason, RESTARTED_AT_11);
    assert_eq!(tr.step, (2, 3));
    assert!(d.actions.is_empty());
    // When the same observation comes again, Then nothing restarts twice
    let again = r.decide(&quiet().measured(thin).samples_since(t(11)), t(12));
    assert_eq!((again.status, again.transition), (None, None));
    // When the traffic comes back over the new window, Then the step passes at its end
    for m in 13..21 {
        let d = r.decide(
            &quiet()
                .measured(vec![ok("sr", t(m), 0.999, 500)])
                .samples_since(t(11)),
            t(m),
        );
        assert_eq!(d.transition, None, "still measuring at minute {m}");
    }
    let d = r.decide(
        &quiet()
            .measured(vec![ok("sr", t(21), 0.999, 500)])
            .samples_since(t(11)),
        t(21),
    );
    assert_eq!(d.actions, vec![Action::SetWeight(100)]);
    assert_eq!(r.status().analysis_restart, None, "a new step starts clean");
}

#[test]
fn a_restarted_analysis_with_too_little_traffic_over_its_full_window_still_holds() {
    // Given an analysis restarted at t(11) when the data plane came back
    let mut r = in_builtin_analysis();
    r.decide(&quiet().samples_since(t(11)), t(12));
    assert_eq!(r.status().step_started_at, Some(t(11)));
    // When a full window of complete data has too few samples
    for m in 12..=21 {
        r.decide(
            &quiet()
                .measured(vec![ok("sr", t(m), 1.0, 10)])
                .samples_since(t(11)),
            t(m),
        );
    }
    // Then, and only then, it holds for a human, as before
    assert_eq!(hold_kind(&r), Some(HoldKind::Evidence));
    assert!(
        r.status()
            .hold
            .as_ref()
            .is_some_and(|h| h.reason.contains("too few samples"))
    );
}

#[test]
fn each_data_plane_restart_restarts_the_window_once_and_is_counted() {
    let mut r = in_builtin_analysis();
    r.decide(&quiet().samples_since(t(2)), t(3));
    assert_eq!(
        r.decide(&quiet().samples_since(t(2)), t(4)).transition,
        None
    );
    let d = r.decide(&quiet().samples_since(t(6)), t(7));
    assert_eq!(
        d.transition.expect("restarted").analysis_restarted_at,
        Some(t(6))
    );
    let restart = r.status().analysis_restart.clone().expect("recorded");
    assert_eq!((restart.count, restart.at), (2, t(6)));
    assert_eq!(r.status().step_started_at, Some(t(6)));
    // and the status file says so
    let text = r.status().to_yaml().expect("writes");
    assert!(text.contains("analysisRestart:"), "{text}");
    assert_eq!(
        &crate::model::status::Status::from_yaml(&text).expect("reads"),
        r.status()
    );
}

#[test]
fn samples_lost_outside_a_builtin_analysis_change_nothing() {
    // A Prometheus check keeps its history: the daemon re-queries the whole window
    let plan = v1_stable_v2_planned()
        .threshold("sr", Some(0.99), None)
        .steps(vec![weight(5), analysis(&["sr"], 10), weight(100)])
        .build();
    let mut prom = plan.clone();
    prom.checks[0].source = "prometheus".to_owned();
    let mut r = Rollout::new(prom, Some(stable_status("app:v1", t(-600))));
    r.decide(&quiet(), t(-2));
    r.decide(&quiet(), t(-1));
    r.decide(&quiet(), t(0));
    let d = r.decide(&quiet().samples_since(t(5)), t(6));
    assert_eq!((d.status, d.transition), (None, None));
    assert_eq!(r.status().step_started_at, Some(t(0)));
    // A pause has no checks to restart
    let plan = v1_stable_v2_planned()
        .steps(vec![weight(5), pause(10), weight(100)])
        .build();
    let mut r = Rollout::new(plan, Some(stable_status("app:v1", t(-600))));
    r.decide(&quiet(), t(-2));
    r.decide(&quiet(), t(-1));
    r.decide(&quiet(), t(0));
    assert_eq!(r.phase(), Phase::Paused);
    let d = r.decide(&quiet().samples_since(t(5)), t(6));
    assert_eq!((d.status, d.transition), (None, None));
    // Samples complete since before the step began, or "since" a moment still to come
    let mut r = in_builtin_analysis();
    for since in [t(-5), t(0), t(9)] {
        let d = r.decide(&quiet().samples_since(since), t(6));
        assert_eq!((d.status, d.transition), (None, None), "since {since}");
    }
    assert_eq!(r.status().step_started_at, Some(t(0)));
}

#[test]
fn header_route_and_mirror_steps_set_the_routing_in_force_and_move_on_when_healthy() {
    use crate::model::plan::{MatchOn, MatchValue, RequestMatch, Routing, Step};
    let canary = RequestMatch {
        on: MatchOn::Header("x-canary".into()),
        value: MatchValue::Exact("1".into()),
    };
    // Given a shadow step, then a header route, before any weight
    let plan = v1_stable_v2_planned()
        .steps(vec![
            Step::SetMirror(20),
            Step::SetHeaderRoute(vec![canary.clone()]),
            weight(10),
            weight(100),
        ])
        .build();
    let mut r = Rollout::new(plan, Some(stable_status("app:v1", t(-600))));
    r.decide(&quiet(), t(0));
    // When the first step is entered, Then the candidate starts and the mirror is set
    let d = r.decide(&quiet(), t(0));
    let mirror = Routing {
        matches: Vec::new(),
        mirror: 20,
        baseline: false,
    };
    assert_eq!(
        d.actions,
        vec![
            Action::StartCandidate {
                artifact: "app:v2".to_owned()
            },
            Action::SetRouting(mirror)
        ]
    );
    assert_eq!(r.status().weight, 0, "a shadow step moves no user traffic");
    // While the target converges, nothing moves on
    assert_eq!(r.decide(&progressing(), t(0)).transition, None);
    // When healthy, Then the header route joins the mirror (the routing in force so far)
    let d = r.decide(&quiet(), t(1));
    assert_eq!(
        d.actions,
        vec![Action::SetRouting(Routing {
            matches: vec![canary],
            mirror: 20,
            baseline: false,
        })]
    );
    let tr = d.transition.expect("moved on");
    assert!(tr.reason.contains("mirror 20% is serving"), "{}", tr.reason);
    // And the weights follow as usual; the promotion is the target's to clear
    assert_eq!(
        r.decide(&quiet(), t(2)).actions,
        vec![Action::SetWeight(10)]
    );
}

/// The routing the daemon asks the target to hold for the rollout's current step.
fn routing_now(r: &Rollout) -> crate::model::plan::Routing {
    crate::engine::routing(&r.plan, r.status())
}

fn fresh(baseline: bool) -> crate::model::plan::Routing {
    crate::model::plan::Routing {
        baseline,
        ..Default::default()
    }
}

#[test]
fn a_fresh_baseline_starts_before_the_canarys_share_and_leaves_at_full_weight_and_promotion() {
    // Given v1 stable and a canary judged against a fresh baseline
    let plan = v1_stable_v2_planned()
        .baseline("latency")
        .steps(vec![
            weight(5),
            analysis(&["latency"], 2),
            weight(25),
            weight(100),
        ])
        .fresh_baseline()
        .build();
    let mut r = Rollout::new(plan, Some(stable_status("app:v1", t(-600))));
    r.decide(&quiet(), t(0));
    // When the first weight step is entered
    let d = r.decide(&quiet(), t(0));
    // Then the candidate starts, the fresh baseline is set up, and only then the shares move
    assert_eq!(
        d.actions,
        vec![
            Action::StartCandidate {
                artifact: "app:v2".to_owned()
            },
            Action::SetRouting(fresh(true)),
            Action::SetWeight(5)
        ]
    );
    let tr = d.transition.expect("entered");
    assert!(
        tr.reason.contains("setWeight 5 (fresh baseline 5)"),
        "{}",
        tr.reason
    );
    assert_eq!(routing_now(&r), fresh(true));
    assert_eq!(routing_now(&r).baseline_weight(r.status().weight), 5);
    // The analysis step keeps it (the judge compares with it)
    r.decide(&quiet(), t(1));
    assert_eq!(r.status().step, 1);
    assert_eq!(routing_now(&r), fresh(true));
    // Judging is the analysis tests' job: a promotion passes the step here
    let d = r.decide(&quiet().command(Command::Promote), t(4));
    assert_eq!(r.status().step, 2, "{:?}", d.transition);
    assert_eq!(
        d.actions,
        vec![Action::SetRouting(fresh(true)), Action::SetWeight(25)]
    );
    assert_eq!(routing_now(&r).baseline_weight(25), 25);
    // When the weight goes to 100, Then the baseline is removed before the shift
    let d = r.decide(&quiet(), t(5));
    assert_eq!(
        d.actions,
        vec![Action::SetRouting(fresh(false)), Action::SetWeight(100)]
    );
    assert_eq!(routing_now(&r), fresh(false));
    // And at promotion nothing but weights remains
    let d = r.decide(&quiet(), t(6));
    assert_eq!(r.phase(), Phase::Promoting);
    assert_eq!(d.actions, vec![promote_of("app:v2")]);
    assert_eq!(routing_now(&r), fresh(false));
}

#[test]
fn a_fresh_baseline_is_gone_after_rollback_and_abort() {
    // Given a canary with a fresh baseline at 10%, paused
    let plan = v1_stable_v2_planned()
        .steps(vec![weight(10), pause_untimed(), weight(100)])
        .fresh_baseline()
        .build();
    let mut r = Rollout::new(plan, Some(stable_status("app:v1", t(-600))));
    r.decide(&quiet(), t(0));
    r.decide(&quiet(), t(0));
    r.decide(&quiet(), t(1));
    assert_eq!(r.phase(), Phase::Paused);
    assert_eq!(routing_now(&r), fresh(true), "paused with its baseline");
    // When a human aborts, Then the rollback clears it (the target's rollback removes
    // the baseline with the candidate) and nothing asks for it again
    let d = r.decide(&quiet().command(Command::Abort), t(2));
    assert_eq!(
        d.actions,
        vec![Action::Rollback {
            stable: Some("app:v1".to_owned())
        }]
    );
    assert_eq!(r.phase(), Phase::RollingBack);
    assert_eq!(routing_now(&r), fresh(false));
    r.decide(&quiet(), t(3));
    assert_eq!(r.phase(), Phase::RolledBack);
    assert_eq!(routing_now(&r), fresh(false));
}

#[test]
fn no_fresh_baseline_without_a_stable_version_or_on_a_fast_track() {
    // Given a first rollout that walks its steps: there is no stable artifact to copy
    let plan = v1_stable_v2_planned()
        .steps(vec![weight(10), weight(100)])
        .fresh_baseline()
        .first_rollout(FirstRollout::Steps)
        .build();
    let mut r = Rollout::new(plan, None);
    let d = r.decide(&quiet(), t(0));
    let d = if d.actions.is_empty() {
        r.decide(&quiet(), t(0))
    } else {
        d
    };
    assert!(
        !d.actions.iter().any(|a| matches!(a, Action::SetRouting(_))),
        "{:?}",
        d.actions
    );
    assert_eq!(r.status().weight, 10);
    assert_eq!(routing_now(&r), fresh(false));
    // And a plan that does not ask for one never gets one
    let plan = v1_stable_v2_planned()
        .steps(vec![weight(10), weight(100)])
        .build();
    let mut r = Rollout::new(plan, Some(stable_status("app:v1", t(-600))));
    r.decide(&quiet(), t(0));
    let d = r.decide(&quiet(), t(0));
    assert_eq!(d.actions[1..], [Action::SetWeight(10)]);
    assert_eq!(routing_now(&r), fresh(false));
    // And a fast-tracked revert (weights only, nothing judged) runs none either
    let plan = v1_stable_v2_planned()
        .steps(vec![weight(10), weight(100)])
        .fresh_baseline()
        .build();
    let mut r = Rollout::new(plan.clone(), Some(stable_status("app:v1", t(-600))));
    r.decide(&quiet(), t(0));
    r.decide(&quiet(), t(0));
    let mut s = r.status().clone();
    assert!(crate::engine::fresh_baseline(&plan, &s));
    s.fast_track = true;
    assert!(!crate::engine::fresh_baseline(&plan, &s));
    assert_eq!(crate::engine::routing(&plan, &s), fresh(false));
}
