//! Recording a decision in Git: the status commit, and the revert or restore commit
//! before it when a rollout rolls back.
//!
//! `record` stages a plan's status; `flush` writes everything staged as one commit (a
//! batch commit when several plans moved, `messages::batch_commit`; the single-plan
//! commit when one did). The run of one pass calls `flush` after its urgent plans and
//! after each chunk of routine ones (`daemon::order`).
//!
//! Invariants: the revert is pushed, in its own commit, before the status (a crash in
//! between resumes as a human revert); every push is a compare-and-swap of the head
//! this pass read, and after a lost race every plan's edit is recomputed on the new
//! head; a status whose file changed since this pass read it is not written (it drops
//! out of the batch, the others are written, the next pass decides again); actions
//! recorded first are done only once their status is pushed; a dry run writes nothing
//! and keeps the status in memory.

use super::*;

/// A status decided this pass and not yet committed (`Reconciler::flush` writes them).
#[derive(Debug)]
pub(super) struct Staged {
    name: String,
    path: String,
    /// The status file at the head the decision read (`None`: there was none).
    basis: Option<Vec<u8>>,
    /// The plan's own status commit (a batch is made of these).
    spec: crate::writeback::CommitSpec,
    status: Status,
    /// The transition's reason, when there is one (not only an acknowledged command).
    transition: Option<String>,
    last_command: Option<String>,
    /// Target actions to do once the status is in Git (decide, record, then do).
    pub(super) then: Option<Then>,
    /// When the decision was made: its push delay (`rollgate_status_push_delay_seconds`)
    /// counts from here.
    decided: std::time::Instant,
}

impl Staged {
    pub(super) fn is_for(&self, plan: &str) -> bool {
        self.name == plan
    }
}

/// What became of a staged status in one try of a commit (`Reconciler::write_staged`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kept {
    /// In the commit.
    Written,
    /// Still valid, left for the next commit (this one was made smaller).
    Later,
    /// Its status file changed since the decision read it: not written.
    Dropped,
}

/// How many of `n` plans (at most the current `ChunkSize`) the `try_`th try of a commit
/// carries: all of them on the first two, then half as many after each lost race, at
/// least one. A smaller commit's push is shorter, so the branch is likelier to be where
/// it was when the try began (ten humans pushing: a 54-plan commit lost 25 races in a
/// row, 10-plan ones 1.4 each; with no halving at all, p99 from decision to push was
/// 27.6 s against 8.6 s).
fn batch_share(n: usize, try_: u32) -> usize {
    let halvings = try_.saturating_sub(2).min(usize::BITS - 1);
    (n >> halvings).max(1)
}

/// What waits for a staged status to be committed: the decision's target actions.
#[derive(Debug)]
pub(super) struct Then {
    pub(super) pp: Arc<ParsedPlan>,
    pub(super) actions: Vec<engine::Action>,
    pub(super) next_wakeup: Option<DateTime<Utc>>,
    pub(super) now: DateTime<Utc>,
}

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
        let written = text.clone().into_bytes();
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
        // Once this commit lands, the status file is `written`: it is known parsed, so the
        // next pass does not parse it again (a parse per transition was a tenth of a
        // busy pass). Writing then reading a status gives it back unchanged; every test
        // checks that on every status it writes.
        debug_assert_eq!(
            std::str::from_utf8(&written)
                .ok()
                .map(Status::from_yaml)
                .as_ref(),
            Some(&Ok(next.clone())),
            "a status reads back as written"
        );
        memo.parsed.keep(written, next.clone());
        // Compare-and-swap on the status itself: this decision rests on the status file
        // as it was at the head this pass read. If another writer changed it since (a
        // killed daemon's push that still landed, another replica), the decision is
        // stale: it drops out of the commit and the next pass decides again (`flush`).
        let path = status_path(&name);
        let basis = match self.head {
            Some(h) => self.src.file_at(h, &path)?,
            None => None,
        };
        memo.rolling_back = next.phase == Phase::RollingBack;
        self.staged.push(Staged {
            name,
            path,
            basis,
            spec,
            status: next.clone(),
            transition: d.transition.as_ref().map(|t| t.reason.clone()),
            last_command,
            then: None,
            decided: std::time::Instant::now(),
        });
        Ok(Some(next))
    }

    /// Write every status staged since the last flush as one commit (one staged: the
    /// single-plan format), then do what waited for it (`Then`), then decide the first
    /// step of each rollout that commit started (`Pending`), written in the next round.
    /// Each try, on the head the pass read or one just fetched, keeps only the plans
    /// whose status file is still the one their decision read: a plan whose file changed
    /// drops out (the next pass decides again) and the others are written. A failed
    /// write is logged and counted per plan; the pass goes on.
    ///
    /// Against other writers, a big commit loses more races than a small one (its push
    /// takes longer, and the branch moves meanwhile), so after two lost races a try
    /// carries only the first half of the plans still kept, then a quarter, and so on
    /// (`batch_share`); the rest are written next, in their order, as commits of their
    /// own. Every commit is still a compare-and-swap of the head it was made on.
    pub(super) fn flush(&mut self, now: DateTime<Utc>, report: &mut TickReport) {
        self.pushed = None;
        // Rounds: the statuses staged; the first steps of rollouts that just started;
        // a deferred action that failed stages its hold; one to spare. Plans left out of
        // a smaller commit are written before the next round, and do not count as one.
        let mut rounds = 0;
        let mut left_out = Vec::new();
        loop {
            let staged = if left_out.is_empty() {
                if self.staged.is_empty() || rounds == 4 {
                    return;
                }
                rounds += 1;
                std::mem::take(&mut self.staged)
            } else {
                std::mem::take(&mut left_out)
            };
            left_out = self.write_staged(staged, now, report);
        }
    }

    /// One commit of `flush`: the plans of `staged` still kept, or the first of them
    /// after lost races. Returns the plans left out of the commit, to write next.
    fn write_staged(
        &mut self,
        staged: Vec<Staged>,
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) -> Vec<Staged> {
        let kept = std::cell::RefCell::new(Vec::<Kept>::new());
        let edits = std::cell::RefCell::new(Vec::new());
        let tries = std::cell::Cell::new(0u32);
        // The first tries carry as many plans as the last commits could push (`ChunkSize`).
        let start = self.chunk.plans();
        let wb = self.write_back();
        let mut writer = Writer::new(&self.src, &wb);
        // This pass fetched the head it decided on just now.
        writer.first_on_known_head = true;
        let outcome = writer.write(|head| {
            tries.set(tries.get() + 1);
            let mut keep = Vec::with_capacity(staged.len());
            let mut specs = Vec::new();
            let room = batch_share(staged.len().min(start), tries.get());
            for s in &staged {
                if self.src.file_at(head, &s.path)? != s.basis {
                    tracing::info!(plan = %s.name, "the status changed since this pass read it: not written; the next pass re-applies what Git says and decides again");
                    keep.push(Kept::Dropped);
                    continue;
                }
                if specs.len() < room {
                    specs.push(s.spec.clone());
                    keep.push(Kept::Written);
                } else {
                    keep.push(Kept::Later);
                }
            }
            *kept.borrow_mut() = keep;
            let spec = messages::batch_commit(specs);
            *edits.borrow_mut() = spec.as_ref().map(|s| s.edits.clone()).unwrap_or_default();
            Ok(spec)
        });
        let kept = kept.into_inner();
        // Pushed on the head this pass read: the snapshot moves to it by its edits,
        // so the rollouts it started can take their first step in this pass.
        let moved = match &outcome {
            Ok(WriteOutcome::Pushed { commit, .. }) => {
                self.take_own_commit(*commit, &edits.into_inner())
            }
            _ => false,
        };
        let carried = kept.iter().filter(|k| **k == Kept::Written).count();
        self.chunk = match &outcome {
            Ok(WriteOutcome::Pushed { attempts, .. }) => {
                self.chunk.after_commit(Some(*attempts), carried)
            }
            Ok(_) => self.chunk,
            Err(_) => self.chunk.after_commit(None, carried),
        };
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                report.errors += staged.len();
                tracing::warn!(error = %format!("{e:#}"), plans = staged.len(), "status commit failed; the next pass decides again");
                return Vec::new();
            }
        };
        let mut starting = Vec::new();
        let mut later = Vec::new();
        let mut then = Vec::new();
        for (i, s) in staged.into_iter().enumerate() {
            match kept.get(i).copied().unwrap_or(Kept::Dropped) {
                Kept::Written => {}
                Kept::Later => {
                    later.push(s);
                    continue;
                }
                Kept::Dropped => {
                    // The target may be ahead of Git now: put it back where Git says first.
                    if let Some(memo) = self.memo.get_mut(&s.name) {
                        memo.reapplied = false;
                        memo.counters = None;
                    }
                    continue;
                }
            }
            if let WriteOutcome::Pushed { commit, attempts } = outcome {
                report.transitions += 1;
                let t = crate::telemetry::global();
                t.writeback_retries.fetch_add(
                    u64::from(attempts.saturating_sub(1)),
                    std::sync::atomic::Ordering::Relaxed,
                );
                if s.transition.is_some() {
                    t.transition(s.status.phase);
                }
                let waited = s.decided.elapsed();
                t.status_pushed_after(waited);
                tracing::info!(
                    plan = %s.name,
                    commit = %commit,
                    phase = s.status.phase.as_str(),
                    step = %s.status.step_label(),
                    step_index = s.status.step,
                    weight = s.status.weight,
                    attempts,
                    waited_ms = waited.as_millis(),
                    reason = s.transition.as_deref().unwrap_or(""),
                    "status written"
                );
            }
            if let Some(c) = self.commands.get_mut(&s.name)
                && let Some(sha) = &s.last_command
                && let Some(i) = c.iter().position(|(x, _)| x == sha)
            {
                c.drain(..=i);
            }
            if moved && s.status.phase == Phase::Pending && s.transition.is_some() {
                starting.push(s.name.clone());
            }
            if let Some(t) = s.then {
                then.push((t, s.status));
            }
        }
        if let WriteOutcome::Pushed { commit, .. } = outcome {
            self.pushed = Some(commit);
            crate::telemetry::global()
                .writeback_commits
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(n) = &self.notify {
                n.pushed(commit);
            }
        }
        for (t, written) in then {
            let span = tracing::info_span!("plan", plan = %t.pp.plan.name);
            let _enter = span.enter();
            if let Err(e) =
                self.act_recorded(&t.pp, written, t.actions, t.next_wakeup, t.now, report)
            {
                report.errors += 1;
                tracing::warn!(error = %format!("{e:#}"), "reconcile failed; other plans go on");
            }
        }
        // Push → first target call in one pass: a rollout whose `Pending` is now in
        // Git (and in the snapshot) decides its first step at once; the step's
        // status is staged, and its action waits for it (the next round).
        for name in starting {
            tracing::debug!(plan = %name, "a rollout starts: its first step in the same pass");
            self.reconcile_logged(&name, now, report);
        }
        later
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
