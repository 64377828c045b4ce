//! Observing a plan before a decision: the due measurements of its checks and the SLO
//! burn-rate reading, each from the metrics source the check names.
//!
//! Invariants: a missing source or a failed query is an error observation (inconclusive,
//! never a pass); a check is measured only when due; counters gathered since the last
//! commit are carried in memory and never written on their own.

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
}
