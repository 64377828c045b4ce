//! The lifecycle state machine behind `decide`.
//!
//! Rules, in the order they are applied to a status:
//! 0. A rollout starts `Pending`, except a first one: with no stable version (no status
//!    yet, or none stable) and `firstRollout: direct` (the default), the artifact is
//!    deployed directly (`Promoting`, one `Promote` action) in the same decision, as Argo
//!    Rollouts does; with `firstRollout: steps` it walks the steps, and checks judged
//!    against a baseline are skipped for want of one.
//! 1. Terminal (`Succeeded`, `RolledBack`): a new artifact starts a rollout (`Pending`),
//!    fast-tracked when it was stable within `rollbackWindow`; `retry`, or a new plan
//!    commit naming it again, restarts a rolled-back rollout of the same artifact.
//! 2. `RollingBack` ends (`RolledBack`) once the target is healthy; until then the
//!    rollback is re-issued. Nothing blocks it.
//! 3. In flight: the plan back at the stable artifact is a human revert (roll back, no
//!    revert commit); another artifact supersedes the rollout; `abort` rolls back and,
//!    like a failed stage, reverts the plan change unless `rollback.onFailure: hold`;
//!    an unhealthy target or a missed `progressDeadline` fails the stage (not while held
//!    for the target: that step is not in place).
//! 4. Otherwise the current step runs. An analysis step with a builtin check whose
//!    window began before `samples_since` (the proxy counting the builtin samples
//!    restarted, and lost them) restarts its window there, once, with fresh counters:
//!    only a full window of complete data may end inconclusive and hold for a human.
//!    When a step is done the next one is entered, but
//!    only while the change window is open (else `Held`, released at the opening).
//!    Entering step 0 starts the candidate; entering step n promotes (a direct first
//!    rollout has no steps: n = 0, and the promotion starts the candidate itself).
//!
//! Invariant: at most one transition per decision; a transition is a change of
//! phase, step, hold, candidate, fast-track, direct or analysis restart, and nothing
//! else is committed.
//!
//! One job over 600 lines, kept in one file: the rollout lifecycle as one state
//! machine, which reads best in one place.

use chrono::{DateTime, Utc};

use super::analysis::{self, Outcome};
use super::{
    Action, Command, Decision, Observation, POLL, Revert, TargetHealth, Transition,
    WINDOW_HORIZON_DAYS, plus,
};
use crate::model::duration;
use crate::model::plan::{Analysis, FirstRollout, OnFailure, Plan, Routing, Step};
use crate::model::settings::BUILTIN_SOURCE;
use crate::model::status::{
    AnalysisRestart, Hold, HoldKind, Judgement, MAX_SUCCEEDED, Phase, Status, Success, step_number,
};

/// The steps a rollout walks: the plan's, or only its weight steps when fast-tracked.
pub fn steps(plan: &Plan, fast_track: bool) -> Vec<Step> {
    let all = plan.steps();
    if fast_track {
        all.into_iter()
            .filter(|s| matches!(s, Step::SetWeight(_)))
            .collect()
    } else {
        all
    }
}

/// The steps the rollout recorded in `status` walks: none for a first rollout deployed
/// directly, else as `steps`.
pub fn rollout_steps(plan: &Plan, status: &Status) -> Vec<Step> {
    if status.direct {
        Vec::new()
    } else {
        steps(plan, status.fast_track)
    }
}

/// Whether the rollout `status` records runs a fresh baseline at some step: the plan
/// asks for one (`baseline: fresh`), there is a stable artifact to copy, and it walks
/// the plan's steps (not a fast track, whose weights are not judged).
pub fn fresh_baseline(plan: &Plan, status: &Status) -> bool {
    plan.strategy.fresh_baseline()
        && status.stable.is_some()
        && !status.fast_track
        && !status.direct
}

/// The header route, mirror and fresh baseline in force at the step `status` is in
/// (see `Routing::at_with_baseline`): derived from the plan, so a restart or a replay
/// needs nothing more in the status.
/// Outside a step (pending, promoting, rolling back, done) nothing but weights.
pub fn routing(plan: &Plan, status: &Status) -> Routing {
    if !matches!(
        status.phase,
        Phase::Progressing | Phase::Paused | Phase::Held
    ) {
        return Routing::default();
    }
    Routing::at_with_baseline(
        &rollout_steps(plan, status),
        status.step,
        fresh_baseline(plan, status),
    )
}

/// The checks to measure before the next `decide` (empty outside a running analysis).
pub fn due_checks(plan: &Plan, status: &Status, now: DateTime<Utc>) -> Vec<String> {
    let probing = status.phase == Phase::Held
        && status
            .hold
            .as_ref()
            .is_some_and(|h| h.kind == HoldKind::Metrics);
    if probing {
        // Held for failing sources: ask every check of the step, to see if they answer.
        let skipped = analysis::skipped(&status.analysis);
        return match rollout_steps(plan, status).get(status.step) {
            Some(Step::Analysis(a)) => a
                .checks
                .iter()
                .filter(|c| !skipped.contains(&c.as_str()))
                .cloned()
                .collect(),
            _ => Vec::new(),
        };
    }
    if status.phase != Phase::Progressing {
        return Vec::new();
    }
    let Some(Step::Analysis(_)) = rollout_steps(plan, status).get(status.step) else {
        return Vec::new();
    };
    let started = status.step_started_at.unwrap_or(now);
    analysis::due(plan, &status.analysis, started, now)
        .into_iter()
        .map(str::to_owned)
        .collect()
}

/// The job checks whose jobs to start (idempotently) and look at before the next
/// `decide`: those of a running analysis step (hooks included) that have no result yet,
/// at their pace, and while `RollingBack`, the `afterRollback` hooks (the daemon asks
/// them only once the target has rolled back).
pub fn due_jobs(plan: &Plan, status: &Status, now: DateTime<Utc>) -> Vec<super::DueJob> {
    let due = |names: Vec<String>| -> Vec<super::DueJob> {
        names
            .into_iter()
            .filter(|c| plan.job(c).is_some())
            .map(|c| super::DueJob {
                id: super::job_id(&plan.name, status, &c),
                check: c,
            })
            .collect()
    };
    if status.phase == Phase::RollingBack {
        let started = status.step_started_at.unwrap_or(now);
        return due(analysis::due(plan, &status.analysis, started, now)
            .into_iter()
            .filter(|c| plan.hooks.after_rollback.iter().any(|h| h == c))
            .map(str::to_owned)
            .collect());
    }
    due(due_checks(plan, status, now)
        .into_iter()
        .filter(|c| {
            status
                .analysis
                .iter()
                .find(|r| &r.check == c)
                .is_none_or(|r| !analysis::job_done(r))
        })
        .collect())
}

/// Decide what to do next for one plan. Pure: the same inputs give the same decision.
pub fn decide(
    plan: &Plan,
    status: Option<&Status>,
    obs: &Observation,
    now: DateTime<Utc>,
) -> Decision {
    let cx = match status {
        None => {
            let mut cx = Cx::new(plan, None, Status::pending(&plan.name, "", ""), obs, now);
            cx.begin();
            cx
        }
        Some(before) => {
            let mut cx = Cx::new(plan, Some(before), before.clone(), obs, now);
            cx.run();
            cx
        }
    };
    cx.finish()
}

struct Cx<'a> {
    plan: &'a Plan,
    before: Option<&'a Status>,
    s: Status,
    obs: &'a Observation,
    now: DateTime<Utc>,
    actions: Vec<Action>,
    reason: Option<String>,
    verdicts: Vec<String>,
    revert: Option<Revert>,
    /// Set when this decision starts a rollout with no stable version.
    first_rollout: Option<FirstRollout>,
    /// Set when this decision restarted the analysis window (its new start).
    restarted_at: Option<DateTime<Utc>>,
}

impl<'a> Cx<'a> {
    fn new(
        plan: &'a Plan,
        before: Option<&'a Status>,
        s: Status,
        obs: &'a Observation,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            plan,
            before,
            s,
            obs,
            now,
            actions: Vec::new(),
            reason: None,
            verdicts: Vec::new(),
            revert: None,
            first_rollout: None,
            restarted_at: None,
        }
    }

    fn has(&self, c: Command) -> bool {
        self.obs.commands.contains(&c)
    }

    fn steps(&self) -> Vec<Step> {
        rollout_steps(self.plan, &self.s)
    }

    fn run(&mut self) {
        let artifact = self.plan.artifact.as_str();
        let phase = self.s.phase;
        if phase.is_terminal() {
            let same = artifact == self.s.candidate;
            if phase == Phase::RolledBack && same && self.has(Command::Retry) {
                self.begin();
                let retry = format!("retry of {artifact} requested");
                self.reason = Some(match (self.s.direct, self.reason.take()) {
                    (true, Some(why)) => format!("{retry}; {why}"),
                    _ => retry,
                });
            } else if !same && self.s.stable.as_deref() != Some(artifact) {
                self.begin();
            } else if phase == Phase::RolledBack && same && self.obs.revision != self.s.revision {
                // The plan was changed again to name the rolled-back artifact: a human re-proposes it.
                self.begin();
            }
            return;
        }
        if phase == Phase::RollingBack {
            // A failed rollback action is recorded as the hold of `RollingBack` (see
            // `action_failed`); re-issuing it clears that, so its success is a transition.
            self.s.hold = None;
            if self.obs.health == TargetHealth::Healthy {
                let Some(hooks) = self.after_rollback_hooks() else {
                    return; // the afterRollback jobs are still running
                };
                self.s.phase = Phase::RolledBack;
                let done = match &self.s.stable {
                    Some(stable) => format!("rolled back to {stable}"),
                    None => format!("rolled back: {} removed", self.s.candidate),
                };
                self.reason = Some(match hooks {
                    Some(h) => format!("{done}; {h}"),
                    None => done,
                });
            } else {
                self.actions.push(Action::Rollback {
                    stable: self.s.stable.clone(),
                });
                self.reason = Some("rolling back: the target answers again".to_owned());
            }
            return;
        }

        // In flight: Pending, Progressing, Paused, Held, Promoting.
        if self.s.stable.as_deref() == Some(artifact) {
            return self.roll_back(
                format!("reverted by a human: the plan is back at {artifact}"),
                Vec::new(),
                None,
            );
        }
        if artifact != self.s.candidate {
            let old = self.s.candidate.clone();
            self.actions.push(Action::Rollback {
                stable: self.s.stable.clone(),
            });
            self.begin();
            let why = self.reason.take().unwrap_or_default();
            self.reason = Some(format!("{old} superseded; {why}"));
            return;
        }
        if self.has(Command::Abort) {
            // A rollback a human asked for: Git goes back to the stable artifact as for a
            // failed judgement (a revert, or a restore), unless `onFailure: hold` keeps it.
            return self.fail("aborted by command".to_owned(), Vec::new());
        }
        // Held for the target (unreachable, or an action that failed): the step is not in
        // place, so its health and its deadline say nothing; clocks stop while it lasts.
        let held_for_target = phase == Phase::Held
            && self
                .s
                .hold
                .as_ref()
                .is_some_and(|h| h.kind == HoldKind::Target);
        if phase != Phase::Pending && !held_for_target {
            match &self.obs.health {
                TargetHealth::Unhealthy { reason } => {
                    return self.fail(format!("target unhealthy: {reason}"), Vec::new());
                }
                TargetHealth::Progressing if self.past_deadline() => {
                    return self.fail(
                        format!(
                            "progressDeadline {} exceeded",
                            duration::format(self.plan.progress_deadline)
                        ),
                        Vec::new(),
                    );
                }
                _ => {}
            }
        }
        let unreachable = match &self.obs.health {
            TargetHealth::Unreachable { reason } => Some(reason.clone()),
            _ => None,
        };
        match phase {
            // A pending first rollout (a status written before `firstRollout` existed).
            Phase::Pending if self.goes_direct() => self.deploy_directly(),
            Phase::Pending => self.advance_to(0, "rollout starts".to_owned()),
            Phase::Held => {
                let kind = self.s.hold.as_ref().map_or(HoldKind::Evidence, |h| h.kind);
                match kind {
                    HoldKind::Window => {
                        self.advance_to(self.s.step, "change window opened".to_owned())
                    }
                    HoldKind::Target if unreachable.is_none() => {
                        self.advance_to(self.s.step, "target answers again".to_owned())
                    }
                    HoldKind::Target => {}
                    HoldKind::Metrics => {
                        if self.has(Command::Promote) {
                            self.complete_step("promoted by command".to_owned());
                        } else if self.has(Command::Retry) {
                            self.enter(self.s.step, "retry requested".to_owned());
                        } else if self.obs.measurements.iter().any(|m| m.result.is_ok())
                            || self.obs.jobs.iter().any(|j| j.result.is_ok())
                        {
                            self.enter(
                                self.s.step,
                                "metrics answer again: the analysis restarts".to_owned(),
                            );
                        }
                    }
                    HoldKind::Slo => self.advance_to(
                        self.s.step,
                        "error budget burn is back under the limits".to_owned(),
                    ),
                    HoldKind::Drift => {
                        if self.obs.health == TargetHealth::Healthy {
                            self.enter(
                                self.s.step,
                                "traffic is as recorded again: the step starts over".to_owned(),
                            );
                        }
                    }
                    HoldKind::Evidence => {
                        if self.has(Command::Promote) {
                            self.complete_step("promoted by command".to_owned());
                        } else if self.has(Command::Retry) {
                            self.enter(self.s.step, "retry requested".to_owned());
                        }
                    }
                }
            }
            Phase::Promoting => match self.obs.health {
                TargetHealth::Healthy => self.succeed(),
                _ => self.actions.push(Action::Promote {
                    artifact: self.s.candidate.clone(),
                }),
            },
            Phase::Progressing | Phase::Paused => {
                if let Some(reason) = unreachable {
                    self.hold(HoldKind::Target, format!("target unreachable: {reason}"));
                } else if let Some(clock) = self.clock_without_traffic() {
                    self.hold(
                        HoldKind::Drift,
                        format!(
                            "traffic is not as recorded (drift being re-applied, or the canary not ready): the {clock} clock stops until it is"
                        ),
                    );
                } else if self.has(Command::Promote) {
                    self.complete_step("promoted by command".to_owned());
                } else {
                    self.run_step();
                }
            }
            Phase::Succeeded | Phase::RollingBack | Phase::RolledBack => {}
        }
    }

    /// A step whose clock runs on traffic (a timed pause, an analysis) while the target
    /// says its traffic is not in place (`Progressing`): what that clock is. The step
    /// before it completed only once healthy, so this is drift, or pods gone unready; a
    /// first step's candidate still starting is not (its traffic never was in place).
    fn clock_without_traffic(&self) -> Option<&'static str> {
        if self.obs.health != TargetHealth::Progressing || self.s.step == 0 {
            return None;
        }
        match self.steps().get(self.s.step) {
            Some(Step::Pause(Some(_))) => Some("pause"),
            Some(Step::Analysis(_)) => Some("analysis"),
            _ => None,
        }
    }

    fn started(&self) -> DateTime<Utc> {
        self.s.step_started_at.unwrap_or(self.now)
    }

    fn past_deadline(&self) -> bool {
        self.now > plus(self.started(), self.plan.progress_deadline)
    }

    /// The current step, at the target's current health (Healthy or Progressing).
    fn run_step(&mut self) {
        let healthy = self.obs.health == TargetHealth::Healthy;
        let steps = self.steps();
        let started = self.started();
        match steps.get(self.s.step) {
            None => self.advance_to(steps.len(), "all steps done".to_owned()),
            Some(Step::SetWeight(w)) => {
                if healthy {
                    self.complete_step(format!("weight {w} is serving"));
                }
            }
            Some(Step::SetHeaderRoute(_) | Step::SetMirror(_)) => {
                if healthy {
                    let r = routing(self.plan, &self.s);
                    self.complete_step(format!("{} is serving", super::routing_text(&r)));
                }
            }
            Some(Step::Pause(None)) => {}
            Some(Step::Pause(Some(d))) => {
                if healthy && self.now >= plus(started, *d) {
                    self.complete_step(format!("pause of {} ended", duration::format(*d)));
                }
            }
            Some(Step::Analysis(a)) => {
                self.restart_if_samples_lost(a);
                let started = self.started();
                analysis::record(
                    self.plan,
                    &mut self.s.analysis,
                    started,
                    &self.obs.measurements,
                );
                analysis::record_jobs(self.plan, &mut self.s.analysis, started, &self.obs.jobs);
                match analysis::evaluate(self.plan, a, &self.s.analysis, started, self.now) {
                    Outcome::Running => {}
                    Outcome::Passed if healthy => {
                        let reason = self.passed_reason(a);
                        self.complete_step(reason);
                    }
                    Outcome::Passed => {}
                    Outcome::Failed { reason, evidence } => self.fail(reason, evidence),
                    Outcome::Held { reason } => {
                        self.verdicts = self.analysis_verdicts();
                        self.hold(HoldKind::Evidence, reason);
                    }
                    Outcome::Unavailable { reason } => self.hold(HoldKind::Metrics, reason),
                }
            }
        }
    }

    /// The `afterRollback` hooks, once the target has rolled back: `None` while a job
    /// runs (the rollback is done; only its record waits, bounded by the jobs' own
    /// timeouts), else what they came to, for the reason (`Some(None)`: no hooks). A
    /// failure or a runner that cannot run them is reported, never blocks. The hooks
    /// are the plan's at head: after a revert, the restored plan's.
    fn after_rollback_hooks(&mut self) -> Option<Option<String>> {
        let hooks = &self.plan.hooks.after_rollback;
        if hooks.is_empty() {
            return Some(None);
        }
        let started = self.started();
        analysis::record_jobs(self.plan, &mut self.s.analysis, started, &self.obs.jobs);
        let mut said = Vec::new();
        for name in hooks {
            let Some(run) = self.s.analysis.iter().find(|r| &r.check == name) else {
                continue;
            };
            if run.passes > 0 {
                said.push(format!("{name} passed"));
            } else if run.failures > 0 {
                let why = run
                    .last
                    .as_ref()
                    .and_then(|j| j.verdict.reason())
                    .unwrap_or("job failed");
                said.push(format!("{name}: {why}"));
                self.verdicts
                    .extend(run.last.as_ref().map(Judgement::to_string));
            } else if run.consecutive_errors > crate::model::plan::DEFAULT_CONSECUTIVE_ERROR_LIMIT {
                said.push(format!(
                    "{name} could not run: {}",
                    run.last_error.as_deref().unwrap_or("unknown error")
                ));
            } else {
                return None;
            }
        }
        Some(Some(format!("afterRollback: {}", said.join("; "))))
    }

    /// The builtin source lost the samples of this analysis from before `samples_since`
    /// (its proxy restarted): judging the step on what is left would hold it for a
    /// human for want of traffic that was there. Restart the window where the data is
    /// complete, once (the new start is no longer before `samples_since`). Other
    /// sources keep their history, so a step without a builtin check goes on.
    fn restart_if_samples_lost(&mut self, a: &Analysis) {
        let (Some(since), Some(started)) = (self.obs.samples_since, self.s.step_started_at) else {
            return;
        };
        if since <= started || since > self.now {
            return;
        }
        let builtin = a
            .checks
            .iter()
            .filter_map(|c| self.plan.check(c))
            .any(|c| c.source == BUILTIN_SOURCE);
        if !builtin {
            return;
        }
        let reason = format!(
            "analysis restarted at {}: the builtin samples before it were lost (the data plane restarted)",
            since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
        let count = self.s.analysis_restart.as_ref().map_or(0, |r| r.count) + 1;
        self.s.step_started_at = Some(since);
        self.s.analysis = analysis::start(self.plan, a, self.s.stable.is_some());
        self.s.analysis_restart = Some(AnalysisRestart {
            count,
            at: since,
            reason: reason.clone(),
        });
        self.restarted_at = Some(since);
        self.reason = Some(reason);
    }

    /// Why a passed analysis is done, naming the checks it skipped: a skipped check is
    /// no evidence, so an analysis that judged nothing does not say it passed.
    fn passed_reason(&self, a: &crate::model::plan::Analysis) -> String {
        let skipped = analysis::skipped(&self.s.analysis);
        if skipped.is_empty() {
            "analysis passed".to_owned()
        } else if skipped.len() == a.checks.len() {
            format!(
                "analysis over, nothing judged: {} skipped ({})",
                skipped.join(", "),
                analysis::NO_BASELINE
            )
        } else {
            format!(
                "analysis passed; {} skipped ({})",
                skipped.join(", "),
                analysis::NO_BASELINE
            )
        }
    }

    fn analysis_verdicts(&self) -> Vec<String> {
        self.s
            .analysis
            .iter()
            .filter_map(|r| r.last.as_ref().map(Judgement::to_string))
            .collect()
    }

    /// The current step is done (or skipped by a promotion): go to the next one.
    fn complete_step(&mut self, reason: String) {
        if let Some(Step::Analysis(_)) = self.steps().get(self.s.step) {
            self.verdicts = self.analysis_verdicts();
        }
        self.advance_to(self.s.step + 1, reason);
    }

    /// Enter step `i` if the change window allows; otherwise hold until it opens.
    fn advance_to(&mut self, i: usize, reason: String) {
        if !self.s.fast_track && !self.plan.windows.is_open(self.now) {
            self.s.step = i.min(self.steps().len());
            self.s.analysis.clear();
            self.s.analysis_restart = None;
            self.hold(HoldKind::Window, "change window closed".to_owned());
            return;
        }
        if let Some(why) = self.slo_blocks() {
            self.s.step = i.min(self.steps().len());
            self.s.analysis.clear();
            self.s.analysis_restart = None;
            self.hold(HoldKind::Slo, why);
            return;
        }
        self.enter(i, reason);
    }

    /// The SLO gate (plans without an SLO always pass it; a missing reading blocks).
    fn slo_blocks(&mut self) -> Option<String> {
        let slo = self.plan.slo.as_ref()?;
        match &self.obs.slo {
            None => Some("SLO burn rates not measured yet".to_owned()),
            Some(Err(e)) => Some(format!("SLO burn rates unavailable: {e}")),
            Some(Ok(reading)) => {
                let b = super::slo::burn(reading, slo.objective);
                self.s.budget_remaining = Some(b.budget_remaining);
                super::slo::blocks(&b)
            }
        }
    }

    fn enter(&mut self, i: usize, reason: String) {
        let steps = self.steps();
        let n = steps.len();
        let candidate = self.s.candidate.clone();
        self.s.hold = None;
        self.s.step_started_at = Some(self.now);
        self.s.analysis.clear();
        self.s.analysis_restart = None;
        self.s.step = i.min(n);
        if i == 0 && n > 0 {
            self.actions.push(Action::StartCandidate {
                artifact: candidate.clone(),
            });
        }
        let what = match steps.get(i) {
            None => {
                self.s.phase = Phase::Promoting;
                if self.s.direct {
                    // Deployed directly: the promotion puts it at full traffic at once.
                    self.s.weight = 100;
                    self.first_rollout = Some(FirstRollout::Direct);
                }
                self.actions.push(Action::Promote {
                    artifact: candidate.clone(),
                });
                format!("promoting {candidate}")
            }
            Some(Step::SetWeight(w)) => {
                self.s.phase = Phase::Progressing;
                self.s.weight = *w;
                if fresh_baseline(self.plan, &self.s) {
                    // The fresh baseline first: started (or removed) before the shares
                    // move, so the canary never has traffic its baseline lacks.
                    let r = routing(self.plan, &self.s);
                    let baseline = r.baseline_weight(*w);
                    self.actions.push(Action::SetRouting(r));
                    self.actions.push(Action::SetWeight(*w));
                    format!("setWeight {w} (fresh baseline {baseline})")
                } else {
                    self.actions.push(Action::SetWeight(*w));
                    format!("setWeight {w}")
                }
            }
            Some(step @ (Step::SetHeaderRoute(_) | Step::SetMirror(_))) => {
                self.s.phase = Phase::Progressing;
                let r = routing(self.plan, &self.s);
                self.actions.push(Action::SetRouting(r.clone()));
                match step {
                    Step::SetMirror(p) => format!("setMirror {p}%"),
                    _ if r.matches.is_empty() => "setHeaderRoute: none".to_owned(),
                    _ => format!(
                        "setHeaderRoute {}",
                        super::routing_text(&Routing {
                            mirror: 0,
                            baseline: false,
                            ..r
                        })
                    ),
                }
            }
            Some(Step::Pause(d)) => {
                self.s.phase = Phase::Paused;
                match d {
                    Some(d) => format!("pause {}", duration::format(*d)),
                    None => "pause until promoted".to_owned(),
                }
            }
            Some(Step::Analysis(a)) => {
                self.s.phase = Phase::Progressing;
                self.s.analysis = analysis::start(self.plan, a, self.s.stable.is_some());
                let skipped = analysis::skipped(&self.s.analysis);
                let mut what = match a.hook {
                    Some(point) => format!("{} hook: {}", point.as_str(), a.checks.join(", ")),
                    None => format!(
                        "analysis of {} for {}",
                        a.checks.join(", "),
                        duration::format(a.duration)
                    ),
                };
                if !skipped.is_empty() {
                    what.push_str(&format!(
                        " ({} skipped: {})",
                        skipped.join(", "),
                        analysis::NO_BASELINE
                    ));
                }
                what
            }
        };
        self.reason = Some(format!("{reason}: {what}"));
    }

    fn hold(&mut self, kind: HoldKind, reason: String) {
        self.s.phase = Phase::Held;
        self.s.hold = Some(Hold {
            kind,
            reason: reason.clone(),
        });
        self.reason = Some(format!("held: {reason}"));
    }

    fn succeed(&mut self) {
        let artifact = self.s.candidate.clone();
        self.s.phase = Phase::Succeeded;
        self.s.stable = Some(artifact.clone());
        self.s.weight = 100;
        self.s.hold = None;
        self.s.analysis.clear();
        self.s.analysis_restart = None;
        self.s.succeeded.retain(|x| x.artifact != artifact);
        self.s.succeeded.push(Success {
            artifact: artifact.clone(),
            at: self.now,
        });
        let excess = self.s.succeeded.len().saturating_sub(MAX_SUCCEEDED);
        self.s.succeeded.drain(..excess);
        self.reason = Some(format!("{artifact} is stable"));
    }

    /// A failed judgement or an abort: roll back, and revert the plan change when the
    /// plan says so (`rollback.onFailure: revert`, the default), so that Git names what
    /// runs again.
    fn fail(&mut self, reason: String, evidence: Vec<Judgement>) {
        let revert = (self.plan.rollback.on_failure == OnFailure::Revert).then(|| Revert {
            of_revision: self.s.revision.clone(),
            reason: reason.clone(),
            evidence: evidence.clone(),
        });
        self.roll_back(reason, evidence, revert);
    }

    fn roll_back(&mut self, reason: String, evidence: Vec<Judgement>, revert: Option<Revert>) {
        self.s.phase = Phase::RollingBack;
        self.s.hold = None;
        self.s.weight = 0;
        self.s.step_started_at = Some(self.now);
        if !self.plan.hooks.after_rollback.is_empty() {
            // The afterRollback jobs are counted while rolling back (see
            // `after_rollback_hooks`); the failed step's evidence is in the verdicts.
            self.s.analysis = self
                .plan
                .hooks
                .after_rollback
                .iter()
                .map(|c| crate::model::status::CheckRun::new(c))
                .collect();
            self.s.analysis_restart = None;
        }
        self.actions.push(Action::Rollback {
            stable: self.s.stable.clone(),
        });
        self.verdicts = evidence.iter().map(Judgement::to_string).collect();
        self.reason = Some(format!("rolling back: {reason}"));
        self.revert = revert;
    }

    /// Start a rollout of the plan's artifact (fast-tracked when it was recently stable).
    fn begin(&mut self) {
        let artifact = self.plan.artifact.clone();
        let fast_track = was_recently_stable(
            &self.s.succeeded,
            self.s.stable.as_deref(),
            &artifact,
            self.now,
            self.plan.rollback.rollback_window,
        );
        let mut next = Status::pending(&self.plan.name, &artifact, &self.obs.revision);
        next.stable = self.s.stable.clone();
        next.succeeded = self.s.succeeded.clone();
        next.fast_track = fast_track;
        next.last_transition_at = self.s.last_transition_at;
        next.message = self.s.message.clone();
        self.s = next;
        if self.s.stable.is_none() {
            if self.goes_direct() {
                return self.deploy_directly();
            }
            self.first_rollout = Some(FirstRollout::Steps);
            self.reason = Some(format!(
                "first rollout of {artifact} pending: no stable version; walking the steps (firstRollout: steps), checks against a baseline skipped"
            ));
            return;
        }
        self.reason = Some(if fast_track {
            format!("fast-tracked rollout of {artifact}: stable within the rollback window")
        } else {
            format!("rollout of {artifact} pending")
        });
    }

    /// A rollout about to start with no stable version, and the plan asks for it directly.
    fn goes_direct(&self) -> bool {
        self.s.stable.is_none()
            && !self.s.fast_track
            && self.plan.first_rollout == FirstRollout::Direct
    }

    /// A first rollout: no stable version to shift traffic from or compare with, so the
    /// candidate becomes the stable version at 100% in one transition (`Promoting`, then
    /// `Succeeded` once the target reports it healthy), inside the change window.
    fn deploy_directly(&mut self) {
        self.s.direct = true;
        self.s.step = 0;
        self.first_rollout = Some(FirstRollout::Direct);
        self.advance_to(0, String::new());
        if self.s.phase == Phase::Promoting {
            self.reason = Some(format!(
                "first rollout of {}: no stable version to compare with; deployed directly",
                self.s.candidate
            ));
        }
    }

    fn finish(mut self) -> Decision {
        let transitioned = self.before.is_none_or(|b| key(b) != key(&self.s));
        let reason = self
            .reason
            .take()
            .unwrap_or_else(|| "status changed".to_owned());
        let n = self.steps().len();
        if transitioned {
            self.s.last_transition_at = Some(self.now);
            self.s.message = Some(reason.clone());
            self.s.step_count = Some(n);
        }
        let transition = transitioned.then(|| Transition {
            from: self.before.map(|b| b.phase),
            to: self.s.phase,
            step: step_number(self.s.phase, self.s.step, n),
            reason,
            verdicts: std::mem::take(&mut self.verdicts),
            first_rollout: self.first_rollout,
            analysis_restarted_at: self.restarted_at,
        });
        let next_wakeup = wakeup(self.plan, &self.s, self.now);
        let retrying = self.before.is_some_and(|b| {
            b.phase == Phase::Held && b.hold.as_ref().is_some_and(|h| h.kind == HoldKind::Target)
        });
        let record_first = !retrying
            && transition
                .as_ref()
                .is_some_and(|t| t.to == Phase::Promoting);
        let status = (self.before != Some(&self.s)).then_some(self.s);
        Decision {
            status,
            actions: self.actions,
            transition,
            revert: self.revert,
            next_wakeup,
            record_first,
        }
    }
}

/// What makes a change of status a transition (one status commit); nothing else is.
type Key = (Phase, usize, Option<Hold>, String, bool, bool, Option<u32>);

fn key(s: &Status) -> Key {
    (
        s.phase,
        s.step,
        s.hold.clone(),
        s.candidate.clone(),
        s.fast_track,
        s.direct,
        s.analysis_restart.as_ref().map(|r| r.count),
    )
}

/// What to record when a target action of `failed` (decided on `before`) could not be
/// executed (`error`): the decided change did not happen, so it is not recorded.
/// Instead a rollout moving forward holds (kind `target`) at the step it was entering,
/// at the weight that was serving, with the target's error as the reason; a rollback is
/// never held: it is recorded as `RollingBack` with the error as its hold (and its revert,
/// if any, still goes), and re-issued. Either is a transition the first time only: the
/// same error again changes nothing. The daemon decides again at `retry_at` (its backoff,
/// see `retry_backoff`), and the step's actions are issued again: when they succeed, that
/// is the transition that clears the hold.
pub fn action_failed(
    plan: &Plan,
    before: Option<&Status>,
    failed: &Decision,
    error: &str,
    now: DateTime<Utc>,
    retry_at: DateTime<Utc>,
) -> Decision {
    let quiet = Observation::quiet("");
    let Some(mut s) = failed.status.clone().or_else(|| before.cloned()) else {
        return Decision {
            status: None,
            actions: Vec::new(),
            transition: None,
            revert: None,
            next_wakeup: Some(retry_at),
            record_first: false,
        };
    };
    let reason = format!("target action failed: {error}");
    let rolling_back = s.phase == Phase::RollingBack;
    if !rolling_back {
        s.phase = Phase::Held;
        // What serves is what served before the failed step (a new candidate, or one
        // deployed directly: nothing yet).
        s.weight = before
            .filter(|b| b.candidate == s.candidate && b.phase != Phase::Pending && !s.direct)
            .map_or(0, |b| b.weight);
    }
    s.hold = Some(Hold {
        kind: HoldKind::Target,
        reason: reason.clone(),
    });
    if before.is_some_and(|b| key(b) == key(&s)) {
        // Recorded already: the same failure again changes nothing in Git.
        return Decision {
            status: None,
            actions: Vec::new(),
            transition: None,
            revert: failed.revert.clone(),
            next_wakeup: Some(retry_at),
            record_first: false,
        };
    }
    let mut cx = Cx::new(plan, before, s, &quiet, now);
    cx.reason = Some(if rolling_back {
        format!("rolling back, {reason}")
    } else {
        format!("held: {reason}")
    });
    cx.revert = failed.revert.clone().filter(|_| rolling_back);
    cx.verdicts = failed
        .transition
        .as_ref()
        .filter(|_| rolling_back)
        .map(|t| t.verdicts.clone())
        .unwrap_or_default();
    let mut d = cx.finish();
    d.next_wakeup = Some(retry_at);
    d.record_first = false;
    d
}

/// Was `artifact` the stable artifact at some time within `window` before `now`?
/// It stopped being stable when the next success replaced it.
fn was_recently_stable(
    succeeded: &[Success],
    stable: Option<&str>,
    artifact: &str,
    now: DateTime<Utc>,
    window: std::time::Duration,
) -> bool {
    if stable.is_none() || stable == Some(artifact) {
        return false;
    }
    let Some(k) = succeeded.iter().rposition(|x| x.artifact == artifact) else {
        return false;
    };
    match succeeded.get(k + 1) {
        Some(next) => plus(next.at, window) >= now,
        None => true,
    }
}

/// When to decide again, from the status alone.
fn wakeup(plan: &Plan, s: &Status, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let poll = plus(now, POLL);
    let started = s.step_started_at.unwrap_or(now);
    match s.phase {
        Phase::Pending => Some(now),
        Phase::Succeeded | Phase::RolledBack => None,
        Phase::Promoting | Phase::RollingBack => Some(poll),
        Phase::Held => match s.hold.as_ref().map(|h| h.kind) {
            Some(HoldKind::Window) => {
                let horizon = chrono::Duration::days(WINDOW_HORIZON_DAYS);
                plan.windows
                    .next_open(now, horizon)
                    .or_else(|| now.checked_add_signed(horizon))
            }
            Some(HoldKind::Target | HoldKind::Slo | HoldKind::Drift) => Some(poll),
            Some(HoldKind::Metrics) => {
                // Probe the sources at the step's own pace.
                let every = match rollout_steps(plan, s).get(s.step) {
                    Some(Step::Analysis(a)) => a
                        .checks
                        .iter()
                        .filter_map(|c| plan.check(c))
                        .map(|c| c.interval)
                        .min(),
                    _ => None,
                };
                Some(every.map_or(poll, |d| plus(now, d)))
            }
            Some(HoldKind::Evidence) | None => None,
        },
        Phase::Progressing | Phase::Paused => match rollout_steps(plan, s).get(s.step) {
            Some(Step::Pause(None)) => None,
            Some(Step::Pause(Some(d))) => {
                let end = plus(started, *d);
                Some(if end > now { end } else { poll })
            }
            Some(Step::Analysis(a)) => {
                Some(analysis::next_wakeup(plan, a, &s.analysis, started, now).max(now))
            }
            Some(Step::SetWeight(_) | Step::SetHeaderRoute(_) | Step::SetMirror(_)) | None => {
                Some(poll.min(plus(started, plan.progress_deadline)).max(now))
            }
        },
    }
}
