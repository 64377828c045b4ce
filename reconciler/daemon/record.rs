//! Recording a decision in Git: the status commit, and the revert or restore commit
//! before it when a rollout rolls back.
//!
//! Invariants: the revert is pushed before the status (a crash in between resumes as a
//! human revert); every push is a compare-and-swap of the head this pass read; a status
//! whose file changed since this pass read it is not written (the next pass decides
//! again); a dry run writes nothing and keeps the status in memory.

use super::*;

impl Reconciler {
    /// Record a decision whose actions are done (or not needed): the revert, then the
    /// status commit (or only the counters, in memory). Returns the status now in force.
    pub(super) fn record(
        &mut self,
        pp: &Arc<ParsedPlan>,
        before: Option<&Status>,
        file_status: Option<Status>,
        d: Decision,
        last_command: Option<String>,
        report: &mut TickReport,
    ) -> Result<Option<Status>> {
        let name = pp.plan.name.clone();
        if let (Some(rev), Some(before)) = (&d.revert, before)
            && self.push_revert(pp, before, rev)?
        {
            report.reverts += 1;
            crate::telemetry::global()
                .reverts
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let mut next = d.status.clone().or_else(|| before.cloned());
        let acked = match (&mut next, &last_command) {
            (Some(s), Some(sha)) if s.last_command.as_deref() != Some(sha) => {
                s.last_command = Some(sha.clone());
                Some(sha.clone())
            }
            _ => None,
        };
        let memo = self.memo.entry(name.clone()).or_default();
        memo.wakeup = d.next_wakeup;

        let Some(next) = next else { return Ok(None) };
        if d.transition.is_none() && acked.is_none() {
            // Counters only: keep them in memory, on top of the file they came from.
            if let Some(s) = d.status {
                memo.counters = Some((file_status, s));
            }
            return Ok(Some(next));
        }
        let text = next.to_yaml().map_err(|e| anyhow::anyhow!(e))?;
        let spec = messages::status_commit(&next, d.transition.as_ref(), acked.as_deref(), text);
        if self.dry_run {
            // A dry run writes nothing: the status it would commit is kept in memory, on
            // top of the file it came from (as counters are), and the loop goes on.
            tracing::info!(subject = %spec.subject, "dry run: would commit");
            memo.counters = Some((file_status, next.clone()));
            report.transitions += 1;
            return Ok(Some(next));
        }
        memo.counters = None;
        let wb = self.write_back();
        // Compare-and-swap on the status itself: this decision rests on the status file
        // as it was at the head this pass read. If another writer changed it since (a
        // killed daemon's push that still landed, another replica), the decision is
        // stale: nothing is written and the next pass decides again from what is there.
        let path = status_path(&name);
        let basis = match self.head {
            Some(h) => self.src.file_at(h, &path)?,
            None => None,
        };
        let stale = std::cell::Cell::new(false);
        let outcome = Writer::new(&self.src, &wb).write(|head| {
            if self.src.file_at(head, &path)? != basis {
                tracing::info!("the status changed since this pass read it: not written; the next pass re-applies what Git says and decides again");
                stale.set(true);
                return Ok(None);
            }
            Ok(Some(spec.clone()))
        })?;
        if stale.get() {
            // The target may be ahead of Git now: put it back where Git says first.
            if let Some(memo) = self.memo.get_mut(&name) {
                memo.reapplied = false;
                memo.counters = None;
            }
            return Ok(None);
        }
        if let WriteOutcome::Pushed { commit, attempts } = outcome {
            report.transitions += 1;
            let t = crate::telemetry::global();
            t.writeback_commits
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            t.writeback_retries.fetch_add(
                u64::from(attempts.saturating_sub(1)),
                std::sync::atomic::Ordering::Relaxed,
            );
            if d.transition.is_some() {
                t.transition(next.phase);
            }
            tracing::info!(
                commit = %commit,
                phase = next.phase.as_str(),
                step = %next.step_label(),
                step_index = next.step,
                weight = next.weight,
                attempts,
                reason = d.transition.as_ref().map_or("", |t| t.reason.as_str()),
                "status written"
            );
            if let Some(n) = &self.notify {
                n.pushed(commit);
            }
        }
        if let Some(c) = self.commands.get_mut(&name)
            && let Some(sha) = &last_command
            && let Some(i) = c.iter().position(|(s, _)| s == sha)
        {
            c.drain(..=i);
        }
        Ok(Some(next))
    }

    /// Push the revert of the failed plan change, or restore the stable artifact when the
    /// change touched more than this plan or the plan changed again since.
    pub(super) fn push_revert(
        &self,
        pp: &Arc<ParsedPlan>,
        before: &Status,
        rev: &engine::Revert,
    ) -> Result<bool> {
        if self.dry_run {
            tracing::info!(plan = %pp.plan.name, revert_of = %rev.of_revision, "dry run: would push a revert or restore of the plan");
            return Ok(false);
        }
        let wb = self.write_back();
        let writer = Writer::new(&self.src, &wb);
        let name = pp.plan.name.clone();
        let file = pp.file.clone();
        let candidate = before.candidate.clone();
        let still_names_candidate = |head: Oid| -> Result<Option<String>> {
            let Some(bytes) = self.src.file_at(head, &file)? else {
                return Ok(None);
            };
            let text = String::from_utf8(bytes).context("plan file is not UTF-8")?;
            let root = crate::model::yaml::parse(&file, &text).ok();
            let artifact = root
                .as_ref()
                .and_then(|r| {
                    r.at(&[
                        crate::model::yaml::PathSeg::Key("spec"),
                        crate::model::yaml::PathSeg::Key("artifact"),
                    ])
                })
                .and_then(|n| n.as_str().map(str::to_owned));
            Ok((artifact.as_deref() == Some(candidate.as_str())).then_some(text))
        };
        // A revert is exact only when the change touched nothing but this plan, anywhere
        // in the tree (the full diff against its first parent: a merged pull request that
        // also changed `apps/…` or code must not have those reverted unreviewed), and the
        // plan has not changed since; otherwise put the stable artifact back instead.
        let only_this_plan = Oid::from_str(&rev.of_revision).ok().and_then(|o| {
            let c = self.src.repo().find_commit(o).ok()?;
            let parent = c.parent_id(0).ok();
            self.src.all_changed_paths(parent, o).ok()
        }) == Some(vec![file.clone()]);
        let unchanged_since = match (Oid::from_str(&rev.of_revision), self.head) {
            (Ok(o), Some(head)) => {
                self.src
                    .file_at(o, &file)
                    .ok()
                    .flatten()
                    .is_some_and(|at_rev| {
                        self.src.file_at(head, &file).ok().flatten().as_ref() == Some(&at_rev)
                    })
            }
            _ => false,
        };
        if only_this_plan && unchanged_since {
            let spec = messages::revert_commit(&name, before.stable.as_deref(), rev)?;
            let result =
                writer.write(|head| Ok(still_names_candidate(head)?.map(|_| spec.clone())));
            match result {
                Ok(WriteOutcome::Pushed { commit, .. }) => {
                    tracing::info!(%commit, of = %rev.of_revision, "revert pushed");
                    if let Some(n) = &self.notify {
                        n.pushed(commit);
                    }
                    return Ok(true);
                }
                Ok(WriteOutcome::NoChange) => return Ok(false),
                Err(e) if e.downcast_ref::<RevertConflict>().is_some() => {
                    tracing::info!(
                        "revert conflicts with later changes; restoring the stable artifact instead"
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "revert failed; restoring the stable artifact instead");
                }
            }
        }
        let Some(stable) = before.stable.clone() else {
            tracing::warn!(
                "no stable artifact to restore and no clean revert: the plan still names the failed artifact"
            );
            return Ok(false);
        };
        let outcome = writer.write(|head| {
            let Some(text) = still_names_candidate(head)? else {
                return Ok(None);
            };
            let Some(restored) = messages::replace_artifact(&text, &stable) else {
                anyhow::bail!("cannot find `spec.artifact` in {file} to restore it");
            };
            Ok(Some(messages::restore_commit(
                &name, &file, restored, &stable, rev,
            )))
        })?;
        if let (WriteOutcome::Pushed { commit, .. }, Some(n)) = (&outcome, &self.notify) {
            n.pushed(*commit);
        }
        Ok(matches!(outcome, WriteOutcome::Pushed { .. }))
    }
}
