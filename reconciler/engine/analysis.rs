//! Analysis steps, with Argo Rollouts' semantics.
//!
//! Each check of the step is measured every `interval`; every measurement is judged
//! (see `judge`) and counted. A check *fails* when its failures exceed `failureLimit`
//! (the step fails at once); it *errors out* when its consecutive source errors exceed
//! `consecutiveErrorLimit` (the step holds: no evidence is not a pass). The step
//! passes only when its duration has elapsed and every check has at least one pass
//! and has not failed; otherwise it holds for a human at the end.
//! A check judged against a baseline (`compare: baseline`) is *skipped* when there is no
//! stable version to compare with (a first rollout walking its steps): it is never
//! measured, never counts as a pass, and never holds the step.
//! A *job check* is measured once: its job is started when the step begins, looked at
//! every `JOB_POLL` while it runs, and its end is its one measurement: a success is a
//! pass, a failure fails the step at once. While a job has no result the step cannot
//! pass, whatever its duration (an analysis of jobs alone lasts 0s: it ends with them);
//! a runner that cannot start or read the job is an error, never a pass, held like a
//! failing source after `DEFAULT_CONSECUTIVE_ERROR_LIMIT` in a row.
//! Invariants: pure; measurements taken before the step started, or not after a
//! check's last recorded one, are ignored, so feeding the same observation twice
//! counts it once.

use chrono::{DateTime, Utc};

use super::judge::Measurement;
use super::{JOB_POLL, JobObserved, JobState, plus};
use crate::model::plan::{Analysis, DEFAULT_CONSECUTIVE_ERROR_LIMIT, Judge, Plan};
use crate::model::status::{CheckRun, Evidence, Judgement, Verdict};

/// One measurement the daemon took (or failed to take) for a check.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub check: String,
    pub at: DateTime<Utc>,
    /// `Err`: the source could not answer (unreachable, bad query); counted as an error.
    pub result: Result<Measurement, String>,
    /// Both versions' data, for a `compare: baseline` judge.
    pub sample: Option<super::judge::Sample>,
}

/// Where an analysis step stands after the latest measurements.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Keep measuring.
    Running,
    /// Duration elapsed, every check not skipped passed at least once and none failed.
    Passed,
    /// A check failed more often than its `failureLimit`.
    Failed {
        reason: String,
        evidence: Vec<Judgement>,
    },
    /// No verdict can be reached without a human: inconclusive at the end.
    Held { reason: String },
    /// A source failed more than `consecutiveErrorLimit` times in a row: no evidence can
    /// be had now. The step holds and restarts when the source answers again.
    Unavailable { reason: String },
}

/// Why a baseline check is not judged when there is no stable version.
pub const NO_BASELINE: &str = "no stable version to compare with";

/// Fresh counters for the checks of `analysis`; `baseline`: a stable version runs beside
/// the candidate (without one, checks judged against a baseline are skipped).
pub fn start(plan: &Plan, analysis: &Analysis, baseline: bool) -> Vec<CheckRun> {
    analysis
        .checks
        .iter()
        .map(|c| {
            let compares = plan
                .check(c)
                .is_some_and(|c| matches!(c.judge, Judge::Baseline { .. }));
            CheckRun {
                skipped: (compares && !baseline).then(|| NO_BASELINE.to_owned()),
                ..CheckRun::new(c)
            }
        })
        .collect()
}

/// The names of the skipped checks among `runs`.
pub fn skipped(runs: &[CheckRun]) -> Vec<&str> {
    runs.iter()
        .filter(|r| r.skipped.is_some())
        .map(|r| r.check.as_str())
        .collect()
}

/// Count the measurements in `observed` that belong to this step; true when any did.
pub fn record(
    plan: &Plan,
    runs: &mut [CheckRun],
    started: DateTime<Utc>,
    observed: &[Observed],
) -> bool {
    let mut sorted: Vec<&Observed> = observed.iter().collect();
    sorted.sort_by_key(|o| o.at);
    let mut changed = false;
    for o in sorted {
        let Some(run) = runs
            .iter_mut()
            .find(|r| r.check == o.check && r.skipped.is_none())
        else {
            continue;
        };
        if o.at < started || run.last_measured_at.is_some_and(|last| o.at <= last) {
            continue;
        }
        let Some(check) = plan.check(&o.check) else {
            continue;
        };
        changed = true;
        run.measurements += 1;
        run.last_measured_at = Some(o.at);
        match &o.result {
            Err(e) => {
                run.errors += 1;
                run.consecutive_errors += 1;
                run.last_error = Some(e.clone());
            }
            Ok(m) => {
                run.consecutive_errors = 0;
                let j =
                    super::judge::judge_with(check, plan.min_samples, *m, o.sample.as_ref(), o.at);
                match j.verdict {
                    Verdict::Pass => run.passes += 1,
                    Verdict::Fail { .. } => run.failures += 1,
                    Verdict::Inconclusive { .. } => run.inconclusives += 1,
                }
                run.last = Some(j);
            }
        }
    }
    changed
}

/// How much of a job's output a reason carries (its tail, in characters).
pub const JOB_TAIL: usize = 400;

/// `text` cut to its last `JOB_TAIL` characters, on one line.
pub fn tail(text: &str) -> String {
    let flat: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let n = flat.chars().count();
    if n <= JOB_TAIL {
        flat
    } else {
        let rest: String = flat.chars().skip(n - JOB_TAIL).collect();
        format!("…{rest}")
    }
}

/// A job check has its result (passed or failed): it is not measured again.
pub fn job_done(run: &CheckRun) -> bool {
    run.passes + run.failures > 0
}

/// Count what the due jobs came to; true when anything changed.
pub fn record_jobs(
    plan: &Plan,
    runs: &mut [CheckRun],
    started: DateTime<Utc>,
    observed: &[JobObserved],
) -> bool {
    let mut changed = false;
    for o in observed {
        let Some(run) = runs
            .iter_mut()
            .find(|r| r.check == o.check && r.skipped.is_none())
        else {
            continue;
        };
        if plan.job(&o.check).is_none()
            || job_done(run)
            || o.at < started
            || run.last_measured_at.is_some_and(|last| o.at <= last)
        {
            continue;
        }
        changed = true;
        run.last_measured_at = Some(o.at);
        let evidence = |value: f64| Evidence {
            check: o.check.clone(),
            value: Some(value),
            min: None,
            max: None,
            samples: 1,
            at: o.at,
            comparison: None,
        };
        match &o.result {
            Ok(JobState::Running) => run.consecutive_errors = 0,
            Ok(JobState::Succeeded { output }) => {
                run.consecutive_errors = 0;
                run.measurements += 1;
                run.passes += 1;
                run.last = Some(Judgement {
                    verdict: Verdict::Pass,
                    evidence: evidence(1.0),
                });
                // The output of a passing job stays in its log; only a failure's tail
                // is evidence worth a status line.
                let _ = output;
                run.last_error = None;
            }
            Ok(JobState::Failed { reason }) => {
                run.consecutive_errors = 0;
                run.measurements += 1;
                run.failures += 1;
                run.last = Some(Judgement {
                    verdict: Verdict::Fail {
                        reason: format!("job failed: {}", tail(reason)),
                    },
                    evidence: evidence(0.0),
                });
            }
            Err(e) => {
                run.errors += 1;
                run.consecutive_errors += 1;
                run.last_error = Some(e.clone());
            }
        }
    }
    changed
}

/// Judge the step as a whole.
pub fn evaluate(
    plan: &Plan,
    analysis: &Analysis,
    runs: &[CheckRun],
    started: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Outcome {
    let run_of = |name: &str| runs.iter().find(|r| r.check == name);
    for name in &analysis.checks {
        let (Some(check), Some(run)) = (plan.check(name), run_of(name)) else {
            continue;
        };
        if run.failures > check.failure_limit {
            return Outcome::Failed {
                reason: format!(
                    "check {name} failed {} times (failureLimit {})",
                    run.failures, check.failure_limit
                ),
                evidence: run.last.iter().cloned().collect(),
            };
        }
    }
    for name in &analysis.checks {
        let (Some(_), Some(run)) = (plan.job(name), run_of(name)) else {
            continue;
        };
        if run.failures > 0 {
            let why = run
                .last
                .as_ref()
                .and_then(|j| j.verdict.reason())
                .unwrap_or("job failed");
            return Outcome::Failed {
                reason: format!("check {name}: {why}"),
                evidence: run.last.iter().cloned().collect(),
            };
        }
        if run.consecutive_errors > DEFAULT_CONSECUTIVE_ERROR_LIMIT {
            return Outcome::Unavailable {
                reason: format!(
                    "check {name}: the job could not be run or read {} times in a row: {}",
                    run.consecutive_errors,
                    run.last_error.as_deref().unwrap_or("unknown error")
                ),
            };
        }
    }
    for name in &analysis.checks {
        let (Some(check), Some(run)) = (plan.check(name), run_of(name)) else {
            continue;
        };
        if run.consecutive_errors > check.consecutive_error_limit {
            return Outcome::Unavailable {
                reason: format!(
                    "check {name}: {} consecutive errors (consecutiveErrorLimit {}): {}",
                    run.consecutive_errors,
                    check.consecutive_error_limit,
                    run.last_error.as_deref().unwrap_or("unknown error")
                ),
            };
        }
    }
    if now < plus(started, analysis.duration) {
        return Outcome::Running;
    }
    // A job that has not ended yet is waited for (its own timeout bounds it).
    let job_running = analysis.checks.iter().any(|name| {
        plan.job(name).is_some()
            && run_of(name).is_some_and(|r| r.skipped.is_none() && !job_done(r))
    });
    if job_running {
        return Outcome::Running;
    }
    let lacking: Vec<String> = analysis
        .checks
        .iter()
        .filter(|name| run_of(name).is_none_or(|r| r.skipped.is_none()))
        .filter(|name| {
            (plan.check(name).is_none() && plan.job(name).is_none())
                || run_of(name).is_none_or(|r| r.passes == 0)
        })
        .map(|name| {
            let why = run_of(name)
                .and_then(|r| r.last.as_ref())
                .and_then(|j| j.verdict.reason())
                .unwrap_or("no measurement");
            format!("{name} ({why})")
        })
        .collect();
    if lacking.is_empty() {
        Outcome::Passed
    } else {
        Outcome::Held {
            reason: format!(
                "inconclusive: no passing measurement for {}",
                lacking.join(", ")
            ),
        }
    }
}

/// When each check of the step is due next: `started` first, then every `interval`
/// (never, for a skipped check).
fn due_at(plan: &Plan, run: &CheckRun, started: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if run.skipped.is_some() {
        return None;
    }
    if plan.job(&run.check).is_some() {
        return match (job_done(run), run.last_measured_at) {
            (true, _) => None,
            (false, None) => Some(started),
            (false, Some(last)) => Some(plus(last, JOB_POLL)),
        };
    }
    let check = plan.check(&run.check)?;
    Some(match run.last_measured_at {
        None => started,
        Some(last) => plus(last, check.interval),
    })
}

/// The checks due for a measurement at `now`; the daemon measures these before deciding.
pub fn due<'a>(
    plan: &Plan,
    runs: &'a [CheckRun],
    started: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Vec<&'a str> {
    runs.iter()
        .filter(|r| due_at(plan, r, started).is_some_and(|d| d <= now))
        .map(|r| r.check.as_str())
        .collect()
}

/// The earliest of the next measurement and the end of the step (once the end has
/// passed, a step still waiting for a job wakes at the job's pace, not at once).
pub fn next_wakeup(
    plan: &Plan,
    analysis: &Analysis,
    runs: &[CheckRun],
    started: DateTime<Utc>,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    let end = plus(started, analysis.duration);
    runs.iter()
        .filter_map(|r| due_at(plan, r, started))
        .chain((end > now).then_some(end))
        .min()
        .unwrap_or(end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::testing::{PlanBuilder, analysis_step, err, ok, t};

    fn given() -> (Plan, Analysis) {
        let plan = PlanBuilder::new()
            .threshold("sr", Some(0.99), None)
            .failure_limit("sr", 1)
            .build();
        (plan, analysis_step(&["sr"], 10))
    }

    #[test]
    fn failures_up_to_the_limit_are_tolerated_and_one_more_fails() {
        let (plan, a) = given();
        let mut runs = start(&plan, &a, true);
        record(&plan, &mut runs, t(0), &[ok("sr", t(1), 0.5, 500)]);
        assert_eq!(evaluate(&plan, &a, &runs, t(0), t(1)), Outcome::Running);
        record(&plan, &mut runs, t(0), &[ok("sr", t(2), 0.5, 500)]);
        let out = evaluate(&plan, &a, &runs, t(0), t(2));
        assert!(matches!(out, Outcome::Failed { ref evidence, .. } if evidence.len() == 1));
    }

    #[test]
    fn the_same_measurement_is_counted_once_and_stale_ones_not_at_all() {
        let (plan, a) = given();
        let mut runs = start(&plan, &a, true);
        let obs = [ok("sr", t(3), 0.999, 500)];
        assert!(record(&plan, &mut runs, t(2), &obs));
        assert!(!record(&plan, &mut runs, t(2), &obs));
        assert!(!record(
            &plan,
            &mut runs,
            t(2),
            &[ok("sr", t(1), 0.999, 500)]
        ));
        assert_eq!(runs[0].measurements, 1);
    }

    #[test]
    fn passes_only_after_the_duration() {
        let (plan, a) = given();
        let mut runs = start(&plan, &a, true);
        record(&plan, &mut runs, t(0), &[ok("sr", t(1), 0.999, 500)]);
        assert_eq!(evaluate(&plan, &a, &runs, t(0), t(9)), Outcome::Running);
        assert_eq!(evaluate(&plan, &a, &runs, t(0), t(10)), Outcome::Passed);
    }

    #[test]
    fn an_error_resets_nothing_but_a_success_resets_the_error_streak() {
        let (plan, a) = given();
        let mut runs = start(&plan, &a, true);
        record(
            &plan,
            &mut runs,
            t(0),
            &[err("sr", t(1)), err("sr", t(2)), ok("sr", t(3), 0.999, 500)],
        );
        assert_eq!(runs[0].errors, 2);
        assert_eq!(runs[0].consecutive_errors, 0);
        assert_eq!(runs[0].passes, 1);
    }

    #[test]
    fn due_checks_follow_the_interval() {
        let (plan, a) = given();
        let mut runs = start(&plan, &a, true);
        assert_eq!(due(&plan, &runs, t(0), t(0)), vec!["sr"]);
        record(&plan, &mut runs, t(0), &[ok("sr", t(0), 0.999, 500)]);
        // the builder's interval is one minute
        assert!(due(&plan, &runs, t(0), t(0)).is_empty());
        assert_eq!(due(&plan, &runs, t(0), t(1)), vec!["sr"]);
        assert_eq!(next_wakeup(&plan, &a, &runs, t(0), t(0)), t(1));
    }
}
