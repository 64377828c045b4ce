//! Observing a plan before a decision: the due measurements of its checks and the SLO
//! burn-rate reading, each from the metrics source the check names, and the due job
//! checks' jobs, started (idempotently, by their `engine::job_id`) and looked at through
//! the plan's target's `JobRunner`.
//!
//! Invariants: a missing source or a failed query is an error observation (inconclusive,
//! never a pass), and so is a target without a job runner or one that cannot start or
//! read a job; a check is measured only when due; an `afterRollback` job starts only
//! once the target has rolled back; a job the rollout no longer wants is stopped;
//! counters gathered since the last commit are carried in memory and never written on
//! their own.

use super::*;

impl Reconciler {
    /// Error ratios over the SLO's burn-rate windows (one instant query pair each).
    pub(super) fn slo_reading(
        &mut self,
        plan: &Plan,
        slo: &crate::model::plan::Slo,
        s: &Status,
    ) -> Result<engine::slo::Reading, String> {
        let source = self
            .metrics
            .get_mut(&slo.source)
            .ok_or_else(|| format!("metrics source `{}` is not available", slo.source))?;
        let mut ratio = |window: Duration| {
            let ctx = QueryContext {
                plan: &plan.name,
                version: &s.candidate,
                baseline: s.stable.as_deref(),
                fresh_baseline: false,
                window,
                workload: Some(&plan.workload),
            };
            source.error_ratio(&slo.good, &slo.total, &ctx)
        };
        let m = |x: u64| Duration::from_secs(x * 60);
        let reading = engine::slo::Reading {
            ratio_5m: ratio(m(5))?,
            ratio_30m: ratio(m(30))?,
            ratio_1h: ratio(m(60))?,
            ratio_6h: ratio(m(360))?,
            ratio_window: ratio(slo.window)?,
        };
        Ok(reading)
    }

    pub(super) fn measure(&mut self, plan: &Plan, s: &Status, now: DateTime<Utc>) -> Vec<Observed> {
        let mut out = Vec::new();
        // Baseline judges compare with the fresh baseline while one runs.
        let fresh = engine::routing(plan, s).baseline;
        for check_name in engine::due_checks(plan, s, now) {
            let Some(check) = plan.check(&check_name) else {
                continue;
            };
            // The window is the analysis so far: samples accumulate over the step.
            let since = s
                .step_started_at
                .and_then(|t| (now - t).to_std().ok())
                .unwrap_or(check.interval);
            let ctx = QueryContext {
                plan: &plan.name,
                version: &s.candidate,
                baseline: s.stable.as_deref(),
                fresh_baseline: fresh,
                window: since.max(check.interval).min(Duration::from_secs(3600)),
                workload: Some(&plan.workload),
            };
            let from_target = check.source == crate::model::settings::BUILTIN_SOURCE
                && check.query.trim() == "replica-health";
            let result = match self.metrics.get_mut(&check.source) {
                // Readiness counts come from the target that runs the candidate.
                _ if from_target => match self.targets.get_mut(&plan.target) {
                    Some(t) => t.readiness(plan),
                    None => Err(format!("target `{}` is not available", plan.target)),
                },
                Some(source) => source.measure(check, &ctx),
                None => Err(format!(
                    "metrics source `{}` is not available in this daemon",
                    check.source
                )),
            };
            if let Ok(m) = &result {
                tracing::debug!(check = %check_name, value = ?m.value, samples = m.samples, window_s = ctx.window.as_secs(), "measured");
            }
            let cause = format!("measure {check_name}");
            match &result {
                Err(e) if self.news(&plan.name, &cause, Some(e)) => {
                    tracing::warn!(check = %check_name, error = %e, "measurement failed (counts as an error, never a pass)");
                }
                Err(e) => {
                    tracing::debug!(check = %check_name, error = %e, "measurement failed again");
                }
                Ok(_) => {
                    self.news(&plan.name, &cause, None);
                }
            }
            // A baseline judge also needs both versions' data; failing to get it is an error.
            let (result, sample) = match (result, &check.judge, self.metrics.get_mut(&check.source))
            {
                (Ok(m), crate::model::plan::Judge::Baseline { .. }, Some(source)) => {
                    match source.compare(check, &ctx) {
                        Ok(sample) => (Ok(m), Some(sample)),
                        Err(e) => {
                            let cause = format!("baseline {check_name}");
                            if self.news(&plan.name, &cause, Some(&e)) {
                                tracing::warn!(check = %check_name, error = %e, "baseline data unavailable (counts as an error)");
                            } else {
                                tracing::debug!(check = %check_name, error = %e, "baseline data unavailable again");
                            }
                            (Err(e), None)
                        }
                    }
                }
                (r, _, _) => (r, None),
            };
            out.push(Observed {
                check: check_name,
                at: now,
                result,
                sample,
            });
        }
        out
    }

    /// Start and look at the due job checks' jobs (`engine::due_jobs`).
    pub(super) fn run_jobs(
        &mut self,
        plan: &Plan,
        s: &Status,
        health: &TargetHealth,
        now: DateTime<Utc>,
    ) -> Vec<engine::JobObserved> {
        if s.phase == Phase::RollingBack && *health != TargetHealth::Healthy {
            return Vec::new(); // afterRollback runs after the rollback
        }
        let mut out = Vec::new();
        for due in engine::due_jobs(plan, s, now) {
            let Some(job) = plan.job(&due.check) else {
                continue;
            };
            let result = match self.jobs.get_mut(&plan.target) {
                None => Err(format!(
                    "target `{}` cannot run jobs in this daemon",
                    plan.target
                )),
                Some(runner) => {
                    let req = crate::targets::jobs::JobRequest {
                        id: &due.id,
                        job,
                        version: &s.candidate,
                        baseline: s.stable.as_deref(),
                    };
                    runner
                        .start(plan, &req)
                        .and_then(|()| runner.poll(plan, &due.id))
                        .map_err(|e| e.to_string())
                }
            };
            let memo = self.memo.entry(plan.name.clone()).or_default();
            let key = (due.check.clone(), due.id.clone());
            match &result {
                Ok(engine::JobState::Running) => {
                    if !memo.jobs.contains(&key) {
                        memo.jobs.push(key);
                    }
                }
                _ => memo.jobs.retain(|k| *k != key),
            }
            let cause = format!("job {}", due.check);
            match &result {
                Err(e) if self.news(&plan.name, &cause, Some(e)) => {
                    tracing::warn!(check = %due.check, job = %due.id, error = %e, "job could not be run (counts as an error, never a pass)");
                }
                Err(_) => {}
                Ok(state) => {
                    self.news(&plan.name, &cause, None);
                    tracing::debug!(check = %due.check, job = %due.id, ?state, "job looked at");
                }
            }
            out.push(engine::JobObserved {
                check: due.check,
                at: now,
                result,
            });
        }
        out
    }

    /// Stop the jobs started for `before` that the decided status no longer runs.
    pub(super) fn stop_unwanted_jobs(
        &mut self,
        plan: &Plan,
        before: &Status,
        after: Option<&Status>,
        now: DateTime<Utc>,
    ) {
        let s = after.unwrap_or(before);
        let wanted: Vec<String> = engine::due_jobs(plan, s, now)
            .into_iter()
            .map(|d| d.id)
            .chain(
                // A job between two looks is not due, and still wanted.
                s.analysis
                    .iter()
                    .filter(|r| plan.job(&r.check).is_some())
                    .map(|r| engine::job_id(&plan.name, s, &r.check)),
            )
            .collect();
        let Some(memo) = self.memo.get_mut(&plan.name) else {
            return;
        };
        let (keep, stop): (Vec<_>, Vec<_>) = std::mem::take(&mut memo.jobs)
            .into_iter()
            .partition(|(_, id)| wanted.contains(id));
        memo.jobs = keep;
        for (check, id) in stop {
            if let Some(runner) = self.jobs.get_mut(&plan.target) {
                match runner.cleanup(plan, &id) {
                    Ok(()) => {
                        tracing::info!(check = %check, job = %id, "job no longer wanted: stopped")
                    }
                    Err(e) => {
                        tracing::warn!(check = %check, job = %id, error = %e, "cannot stop a job no longer wanted")
                    }
                }
            }
        }
    }
}
