//! Executing a decision's target actions, re-applying the current step after a start,
//! and a failing action's backoff and recovery.
//!
//! Invariants: actions run in the decision's order and stop at the first failure; a
//! failed action is never recorded as done (it becomes a hold of kind `target`, written
//! once) and is retried only after `engine::retry_backoff`; a dry run calls no target.

use super::*;

impl Reconciler {
    /// Re-apply the current step of an in-flight rollout (idempotent on every target).
    pub(super) fn reapply(&mut self, plan: &Plan, s: &Status) -> usize {
        let Some(t) = self.targets.get_mut(&plan.target) else {
            return 0;
        };
        let result = match s.phase {
            // The stable version first (it carries the rest of the traffic), then the candidate.
            Phase::Progressing | Phase::Paused | Phase::Held => {
                let routing = desired(plan, s).routing;
                t.resume(plan, s.stable.as_deref(), &s.candidate, s.weight)
                    .and_then(|()| t.set_routing(plan, &routing))
                    .map(|()| 3)
            }
            // A finished rollout still has a stable version that must be running.
            Phase::Promoting | Phase::Succeeded => t.promote(plan, &s.candidate).map(|()| 1),
            Phase::RollingBack => t.rollback(plan, s.stable.as_deref()).map(|()| 1),
            Phase::RolledBack if s.stable.is_some() => {
                t.rollback(plan, s.stable.as_deref()).map(|()| 1)
            }
            Phase::Pending | Phase::RolledBack => Ok(0),
        };
        match result {
            Ok(n) => {
                if n > 0 {
                    tracing::info!(
                        phase = s.phase.as_str(),
                        step = %s.step_label(),
                        step_index = s.step,
                        weight = s.weight,
                        "re-applied the current step after a start"
                    );
                }
                n
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not re-apply the current step; the engine will hold");
                0
            }
        }
    }

    /// Run a decision's target actions in order, up to the first that fails.
    pub(super) fn act(
        &mut self,
        plan: &Plan,
        d: &Decision,
        report: &mut TickReport,
    ) -> Option<(engine::Action, TargetError)> {
        for action in &d.actions {
            let result = match self.targets.get_mut(&plan.target) {
                None => Err(TargetError::refused(format!(
                    "no `{}` target is available in this daemon",
                    plan.target
                ))),
                Some(t) => match action {
                    engine::Action::StartCandidate { artifact } => {
                        t.start_candidate(plan, artifact)
                    }
                    engine::Action::SetWeight(w) => t.set_weight(plan, *w),
                    engine::Action::SetRouting(r) => t.set_routing(plan, r),
                    engine::Action::Promote { artifact } => t.promote(plan, artifact),
                    engine::Action::Rollback { stable } => t.rollback(plan, stable.as_deref()),
                },
            };
            report.actions += 1;
            if let Err(e) = result {
                return Some((action.clone(), e));
            }
        }
        None
    }

    /// A target action lost an optimistic-concurrency race (after the target's own
    /// re-reads): not a failure the first `CONFLICT_RETRIES` times in a row. The rollout
    /// is not held; the next pass, at once, reads again and decides again.
    pub(super) fn race_lost(
        &mut self,
        plan: &str,
        action: &engine::Action,
        error: &TargetError,
    ) -> bool {
        let memo = self.memo.entry(plan.to_owned()).or_default();
        if error.kind != ErrorKind::Conflict || memo.conflicts >= CONFLICT_RETRIES {
            memo.conflicts = 0;
            return false;
        }
        memo.conflicts += 1;
        tracing::info!(%action, error = %error.message, conflicts = memo.conflicts, "a target action lost a race; deciding again on the next pass");
        true
    }

    /// A target action failed: count it, back off, say so in the log once per cause, and
    /// turn the decision into what Git should record instead (`engine::action_failed`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn failed(
        &mut self,
        pp: &Arc<ParsedPlan>,
        before: Option<&Status>,
        d: &Decision,
        action: &engine::Action,
        error: &str,
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) -> Decision {
        let plan = &pp.plan;
        report.errors += 1;
        crate::telemetry::global().target_action_failed(action.kind());
        let commands = self.commands.get(&plan.name).map_or(0, Vec::len);
        let jitter = (self.jitter)();
        let memo = self.memo.entry(plan.name.clone()).or_default();
        let count = memo.failure.as_ref().map_or(0, |f| f.count) + 1;
        let wait = engine::retry_backoff(count, jitter);
        let retry_at = engine_after(now, wait);
        let message = format!("{action}: {error}");
        if memo.failure.as_ref().is_none_or(|f| f.message != message) {
            tracing::warn!(%action, error, failures = count, retry_in_ms = wait.as_millis() as u64, "target action failed; held, retrying with backoff");
        } else {
            tracing::debug!(%action, error, failures = count, retry_in_ms = wait.as_millis() as u64, "target action failed again");
        }
        memo.failure = Some(Failure {
            count,
            retry_at,
            plan: pp.clone(),
            commands,
            message: message.clone(),
        });
        engine::action_failed(plan, before, d, &message, now, retry_at)
    }

    /// Do what was decided: target actions, then the revert, then the status (staged for
    /// the pass's commit). A decision recorded first has its actions done once its
    /// status is pushed.
    /// A failed action turns the decision into a hold (`engine::action_failed`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn execute(
        &mut self,
        pp: &Arc<ParsedPlan>,
        before: Option<&Status>,
        file_status: Option<Status>,
        d: Decision,
        last_command: Option<String>,
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) -> Result<()> {
        let plan = &pp.plan;
        if d.record_first && d.transition.is_some() {
            // Decide, record, then do: Git says what is in flight (Promoting) while the
            // target does it, and the next pass records the outcome (Succeeded once healthy).
            let mut first = d.clone();
            first.actions.clear();
            let Some(written) =
                self.record(pp, before, file_status, first, last_command, report)?
            else {
                return Ok(());
            };
            // The actions wait for the status to be pushed (`flush`); when nothing was
            // staged (a dry run), they are done now.
            if let Some(staged) = self.staged.last_mut()
                && staged.then.is_none()
                && staged.is_for(&plan.name)
            {
                staged.then = Some(super::record::Then {
                    pp: pp.clone(),
                    actions: d.actions,
                    next_wakeup: d.next_wakeup,
                    now,
                });
                return Ok(());
            }
            return self.act_recorded(pp, written, d.actions, d.next_wakeup, now, report);
        }
        let d = match self.act(plan, &d, report) {
            Some((action, error)) if self.race_lost(&plan.name, &action, &error) => {
                // Nothing recorded: the next pass reads the target again and decides again.
                report.next_wakeup = Some(report.next_wakeup.map_or(now, |n| n.min(now)));
                return Ok(());
            }
            Some((action, error)) => {
                self.failed(pp, before, &d, &action, &error.message, now, report)
            }
            None => {
                self.recovered(&plan.name, &d);
                d
            }
        };
        self.record(pp, before, file_status, d, last_command, report)
            .map(|_| ())
    }

    /// Do the actions of a decision whose status (`written`) is recorded: Git says what
    /// is in flight (Promoting) while the target does it. A failure is recorded as a hold.
    pub(super) fn act_recorded(
        &mut self,
        pp: &Arc<ParsedPlan>,
        written: Status,
        actions: Vec<engine::Action>,
        next_wakeup: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) -> Result<()> {
        let plan = &pp.plan;
        let doing = Decision {
            status: Some(written.clone()),
            actions,
            transition: None,
            revert: None,
            next_wakeup,
            record_first: false,
        };
        match self.act(plan, &doing, report) {
            None => {
                self.recovered(&plan.name, &doing);
                Ok(())
            }
            Some((action, error)) if self.race_lost(&plan.name, &action, &error) => {
                // Git says Promoting: the next pass promotes again.
                report.next_wakeup = Some(report.next_wakeup.map_or(now, |n| n.min(now)));
                Ok(())
            }
            Some((action, error)) => {
                let held = self.failed(
                    pp,
                    Some(&written),
                    &doing,
                    &action,
                    &error.message,
                    now,
                    report,
                );
                let file = Some(written.clone());
                self.record(pp, Some(&written), file, held, None, report)
                    .map(|_| ())
            }
        }
    }

    /// The actions of `d` all succeeded: a failure streak, if any, is over.
    pub(super) fn recovered(&mut self, name: &str, d: &Decision) {
        if let Some(memo) = self.memo.get_mut(name) {
            memo.conflicts = 0;
        }
        if !d.actions.is_empty()
            && let Some(memo) = self.memo.get_mut(name)
            && let Some(f) = memo.failure.take()
        {
            tracing::info!(after = f.count, "target actions succeed again");
        }
    }
}
