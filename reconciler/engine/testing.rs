//! Fixtures for engine tests: a plan builder, observations, statuses and a driver.
//!
//! Invariant: test-only (`#[cfg(test)]`); times are minutes after Monday
//! 2026-11-23 10:00 UTC, inside the builder's optional office-hours window.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use super::{
    Action, Command, Decision, Measurement, Observation, Observed, TargetHealth, Transition,
    action_failed, decide,
};
use crate::model::plan::{
    Analysis, BlueGreen, Check, DEFAULT_ALPHA, DEFAULT_PROGRESS_DEADLINE, DEFAULT_ROLLBACK_WINDOW,
    Direction, FirstRollout, Judge, LocalWorkload, OnFailure, Plan, RollbackPolicy, Step, Strategy,
    Workload,
};
use crate::model::status::{Phase, Status, Success};
use crate::model::window::{CronExpr, Windows};

pub const REV: &str = "rev-v2";

/// `m` minutes after Monday 2026-11-23 10:00 UTC (may be negative).
pub fn t(m: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 10, 0, 0)
        .single()
        .expect("valid time")
        + chrono::Duration::minutes(m)
}

pub fn mins(m: u64) -> Duration {
    Duration::from_secs(m * 60)
}

pub fn threshold_check(name: &str, min: Option<f64>, max: Option<f64>) -> Check {
    Check {
        name: name.to_owned(),
        source: "builtin".to_owned(),
        query: "success-rate".to_owned(),
        judge: Judge::Threshold { min, max },
        interval: mins(1),
        failure_limit: 0,
        consecutive_error_limit: 2,
        samples_query: None,
    }
}

pub fn analysis_step(checks: &[&str], minutes: u64) -> Analysis {
    Analysis {
        checks: checks.iter().map(|c| (*c).to_owned()).collect(),
        duration: mins(minutes),
        hook: None,
    }
}

pub fn weight(w: u8) -> Step {
    Step::SetWeight(w)
}

pub fn pause(minutes: u64) -> Step {
    Step::Pause(Some(mins(minutes)))
}

pub fn pause_untimed() -> Step {
    Step::Pause(None)
}

pub fn analysis(checks: &[&str], minutes: u64) -> Step {
    Step::Analysis(analysis_step(checks, minutes))
}

/// A measurement of `check` at `at`.
pub fn ok(check: &str, at: DateTime<Utc>, value: f64, samples: u64) -> Observed {
    Observed {
        check: check.to_owned(),
        at,
        result: Ok(Measurement {
            value: Some(value),
            samples,
        }),
        sample: None,
    }
}

/// A failed attempt to measure `check` at `at`.
pub fn err(check: &str, at: DateTime<Utc>) -> Observed {
    Observed {
        check: check.to_owned(),
        at,
        result: Err("connection refused".to_owned()),
        sample: None,
    }
}

#[derive(Debug)]
pub struct PlanBuilder {
    plan: Plan,
}

impl PlanBuilder {
    /// `checkout`, artifact `app:v2`, steps 5% → 100%, no checks, minSamples 100, always
    /// open, a first rollout deployed directly.
    pub fn new() -> Self {
        Self {
            plan: Plan {
                name: "checkout".to_owned(),
                labels: BTreeMap::new(),
                annotations: BTreeMap::new(),
                target: "local".to_owned(),
                workload: Workload::Local(LocalWorkload {
                    command: vec!["app".to_owned()],
                    listen: std::net::SocketAddr::from(([127, 0, 0, 1], 8080)),
                    health_path: "/healthz".to_owned(),
                    health_status: 200,
                    health_timeout: Duration::from_secs(1),
                    env: BTreeMap::new(),
                    sticky: None,
                }),
                artifact: "app:v2".to_owned(),
                promoted_from: None,
                strategy: Strategy::canary(vec![weight(5), weight(100)]),
                checks: Vec::new(),
                jobs: Vec::new(),
                hooks: crate::model::plan::Hooks::default(),
                min_samples: 100,
                windows: Windows::default(),
                rollback: RollbackPolicy {
                    on_failure: OnFailure::Revert,
                    rollback_window: DEFAULT_ROLLBACK_WINDOW,
                },
                progress_deadline: DEFAULT_PROGRESS_DEADLINE,
                slo: None,
                first_rollout: FirstRollout::Direct,
            },
        }
    }

    pub fn artifact(mut self, a: &str) -> Self {
        a.clone_into(&mut self.plan.artifact);
        self
    }

    pub fn steps(mut self, steps: Vec<Step>) -> Self {
        self.plan.strategy = Strategy::canary(steps);
        self
    }

    /// The canary's steps, judged against a fresh baseline (`baseline: fresh`).
    pub fn fresh_baseline(mut self) -> Self {
        if let Strategy::Canary { baseline, .. } = &mut self.plan.strategy {
            *baseline = crate::model::plan::Baseline::Fresh;
        }
        self
    }

    pub fn blue_green(mut self, preview: Option<Analysis>, auto_promote: bool) -> Self {
        self.plan.strategy = Strategy::BlueGreen(BlueGreen {
            preview,
            auto_promote,
            scale_down_delay: Duration::from_secs(30),
        });
        self
    }

    pub fn threshold(mut self, name: &str, min: Option<f64>, max: Option<f64>) -> Self {
        self.plan.checks.push(threshold_check(name, min, max));
        self
    }

    /// A check of the candidate against the stable version (`compare: baseline`).
    pub fn baseline(mut self, name: &str) -> Self {
        let mut c = threshold_check(name, None, None);
        c.judge = Judge::Baseline {
            direction: Direction::Increase,
            max_ratio: Some(1.2),
            max_increase: None,
            alpha: DEFAULT_ALPHA,
        };
        self.plan.checks.push(c);
        self
    }

    /// `spec.firstRollout`.
    pub fn first_rollout(mut self, f: FirstRollout) -> Self {
        self.plan.first_rollout = f;
        self
    }

    fn check_mut(&mut self, name: &str) -> &mut Check {
        self.plan
            .checks
            .iter_mut()
            .find(|c| c.name == name)
            .expect("check added first")
    }

    pub fn failure_limit(mut self, name: &str, n: u32) -> Self {
        self.check_mut(name).failure_limit = n;
        self
    }

    pub fn consecutive_error_limit(mut self, name: &str, n: u32) -> Self {
        self.check_mut(name).consecutive_error_limit = n;
        self
    }

    pub fn min_samples(mut self, n: u64) -> Self {
        self.plan.min_samples = n;
        self
    }

    /// Stages may advance only in minutes matching `cron` (UTC).
    pub fn window(mut self, cron: &str) -> Self {
        self.plan
            .windows
            .allow
            .push(CronExpr::parse(cron).expect("valid cron"));
        self
    }

    pub fn on_failure(mut self, f: OnFailure) -> Self {
        self.plan.rollback.on_failure = f;
        self
    }

    pub fn rollback_window(mut self, d: Duration) -> Self {
        self.plan.rollback.rollback_window = d;
        self
    }

    pub fn progress_deadline(mut self, d: Duration) -> Self {
        self.plan.progress_deadline = d;
        self
    }

    pub fn slo(mut self, objective: f64) -> Self {
        self.plan.slo = Some(crate::model::plan::Slo {
            source: "prometheus".to_owned(),
            objective,
            window: Duration::from_secs(30 * 86_400),
            good: "good".to_owned(),
            total: "total".to_owned(),
        });
        self
    }

    /// A job check `name` (a local command) of `timeout_min` minutes.
    pub fn job(mut self, name: &str) -> Self {
        self.plan.jobs.push(crate::model::plan::JobCheck {
            name: name.to_owned(),
            run: crate::model::plan::JobRun::Command {
                command: vec!["./smoke".to_owned()],
                env: BTreeMap::new(),
            },
            timeout: mins(2),
        });
        self
    }

    /// `spec.hooks`.
    pub fn hooks(
        mut self,
        on_start: &[&str],
        before_promote: &[&str],
        after_rollback: &[&str],
    ) -> Self {
        let v = |x: &[&str]| x.iter().map(|c| (*c).to_owned()).collect();
        self.plan.hooks = crate::model::plan::Hooks {
            on_start: v(on_start),
            before_promote: v(before_promote),
            after_rollback: v(after_rollback),
        };
        self
    }

    pub fn build(self) -> Plan {
        self.plan
    }
}

/// The status of a plan whose `artifact` has been stable since `at`.
pub fn stable_status(artifact: &str, at: DateTime<Utc>) -> Status {
    let mut s = Status::pending("checkout", artifact, "rev-v1");
    s.phase = Phase::Succeeded;
    s.stable = Some(artifact.to_owned());
    s.weight = 100;
    s.succeeded = vec![Success {
        artifact: artifact.to_owned(),
        at,
    }];
    s.last_transition_at = Some(at);
    s
}

/// Nothing new; the target is healthy.
pub fn quiet() -> Observation {
    Observation::quiet(REV)
}

impl Observation {
    pub fn health(mut self, h: TargetHealth) -> Self {
        self.health = h;
        self
    }

    pub fn jobs(mut self, j: Vec<super::JobObserved>) -> Self {
        self.jobs = j;
        self
    }

    pub fn measured(mut self, m: Vec<Observed>) -> Self {
        self.measurements = m;
        self
    }

    pub fn slo(mut self, r: Result<crate::engine::slo::Reading, String>) -> Self {
        self.slo = Some(r);
        self
    }

    pub fn command(mut self, c: Command) -> Self {
        self.commands.push(c);
        self
    }

    /// The builtin source's data is complete from `t` on (its proxy started then).
    pub fn samples_since(mut self, t: DateTime<Utc>) -> Self {
        self.samples_since = Some(t);
        self
    }
}

pub fn progressing() -> Observation {
    quiet().health(TargetHealth::Progressing)
}

/// Drives a plan through decisions the way the daemon would, recording what happened.
#[derive(Debug)]
pub struct Rollout {
    pub plan: Plan,
    pub status: Option<Status>,
    pub transitions: Vec<Transition>,
    pub actions: Vec<Action>,
}

impl Rollout {
    pub fn new(plan: Plan, status: Option<Status>) -> Self {
        Self {
            plan,
            status,
            transitions: Vec::new(),
            actions: Vec::new(),
        }
    }

    /// Decide once and apply the decision.
    pub fn decide(&mut self, obs: &Observation, now: DateTime<Utc>) -> Decision {
        let d = decide(&self.plan, self.status.as_ref(), obs, now);
        if let Some(s) = &d.status {
            self.status = Some(s.clone());
        }
        self.transitions.extend(d.transition.clone());
        self.actions.extend(d.actions.iter().cloned());
        d
    }

    /// Decide once, but the target refuses the decision's actions with `error`: apply
    /// what `action_failed` records instead (retry a minute later).
    pub fn decide_refused(
        &mut self,
        obs: &Observation,
        now: DateTime<Utc>,
        error: &str,
    ) -> Decision {
        let d = decide(&self.plan, self.status.as_ref(), obs, now);
        assert!(!d.actions.is_empty(), "nothing to refuse: {d:?}");
        let retry_at = now + chrono::Duration::minutes(1);
        let f = action_failed(&self.plan, self.status.as_ref(), &d, error, now, retry_at);
        if let Some(s) = &f.status {
            self.status = Some(s.clone());
        }
        self.transitions.extend(f.transition.clone());
        f
    }

    pub fn status(&self) -> &Status {
        self.status.as_ref().expect("a status")
    }

    pub fn phase(&self) -> Phase {
        self.status().phase
    }

    /// `(phase, 1-based step)` of every transition so far.
    pub fn story(&self) -> Vec<(Phase, usize)> {
        self.transitions.iter().map(|t| (t.to, t.step.0)).collect()
    }
}

/// What the job of `check` came to at `at`.
pub fn job(check: &str, at: DateTime<Utc>, state: super::JobState) -> super::JobObserved {
    super::JobObserved {
        check: check.to_owned(),
        at,
        result: Ok(state),
    }
}

/// The job of `check` could not be run or read at `at`.
pub fn job_err(check: &str, at: DateTime<Utc>) -> super::JobObserved {
    super::JobObserved {
        check: check.to_owned(),
        at,
        result: Err("the runner is unreachable".to_owned()),
    }
}
