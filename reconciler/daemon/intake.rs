//! Taking in new commits: the snapshot moved to a new head (changed files only), the
//! gate over what changed, foreign status edits distrusted, and command commits
//! collected per plan.
//!
//! Invariants: a commit is read once; rollgate's own commits are never commands; a
//! `status/` file changed by anyone but rollgate is replaced, in what the daemon reads,
//! by rollgate's last version of it; while the policies do not load, no plan is accepted.

use super::*;

impl Reconciler {
    /// Take in the commits up to `head`: changed files only, then the gate, then commands.
    pub(super) fn advance(&mut self, head: Oid, now: DateTime<Utc>) -> Result<()> {
        let changed = match self.head {
            Some(old) => {
                let changed = self.src.changed_paths(Some(old), head)?;
                self.src
                    .update_snapshot(&mut self.snapshot, head, &changed)?;
                self.cache.invalidate(&changed);
                changed
            }
            None => {
                self.snapshot = self.src.snapshot(head)?;
                self.cache = GateCache::default();
                self.snapshot.files.keys().cloned().collect()
            }
        };
        self.distrust_foreign_status(head, &changed)?;
        let limit = if self.head.is_some() {
            HISTORY_LIMIT
        } else {
            1_000
        };
        let commits = self.src.commits_between(self.head, head, limit)?;
        for c in &commits {
            self.take_command(c);
        }
        let author = commits.last().map(|c| c.author.clone());
        let cx = GateContext {
            base: None,
            change: Change {
                commit: Some(head.to_string()),
                author,
                files: changed.clone(),
                labels: Vec::new(),
            },
            now,
            only: None,
            namespaces: self.namespaces.clone(),
        };
        let policies_changed =
            self.head.is_none() || changed.iter().any(|p| p.starts_with("policies/"));
        if let (Some(loader), true) = (&self.loader, policies_changed) {
            match loader(&self.snapshot) {
                Ok(engine) => {
                    self.policy = Some(engine);
                    self.policy_errors.clear();
                }
                Err(d) => self.policy_errors = d,
            }
        }
        let prev_rejected = self.report.rejected.clone();
        gate::check_into(
            &self.snapshot,
            &cx,
            self.policy.as_deref(),
            &mut self.cache,
            &mut self.report,
        );
        if !self.policy_errors.is_empty() {
            // Fail closed: no plan is accepted while the policies do not load.
            self.report.fail_closed(&self.policy_errors);
        }
        let changing: std::collections::HashSet<&str> =
            changed.iter().map(String::as_str).collect();
        for d in &self.report.diagnostics {
            // Log what this change broke (not every old problem again).
            if changing.contains(d.file.as_str())
                || !prev_rejected.contains(&d.file) && self.report.rejected.contains(&d.file)
            {
                log_diagnostic(d);
            }
        }
        // Plans whose file this change touched are new work (`order::Priority::New`,
        // or urgent when they change a rollout in flight).
        for (name, pp) in &self.report.accepted {
            if changing.contains(pp.file.as_str()) {
                self.fresh.insert(name.clone());
            }
        }
        self.fresh.retain(|n| self.report.accepted.contains_key(n));
        self.rebuild_adapters();
        let t = crate::telemetry::global();
        t.accepted_plans.store(
            self.report.accepted.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        t.rejected_plans.store(
            self.report.rejected.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.head = Some(head);
        self.plans_head = Some(head);
        Ok(())
    }

    /// Take in rollgate's own status commit without a fetch or a diff. When `commit` was
    /// pushed on the head this pass read (no one pushed in between, or only commits that
    /// change nothing rollgate reads: `nothing_read_changed`) and its `edits` are
    /// all `status/` files, the head it makes differs from this one by exactly those
    /// files: the snapshot moves to it by them, and the gate's verdicts stand (no plan,
    /// setting or policy changed; status changes never re-run policies, `advance` alike).
    /// Otherwise (a change recomputed on a human's commit after a lost race) nothing
    /// moves: the next pass fetches and takes the commits in the usual way. Returns
    /// whether the snapshot moved.
    pub(super) fn take_own_commit(
        &mut self,
        commit: Oid,
        edits: &[crate::writeback::Edit],
    ) -> bool {
        let parent = self
            .src
            .repo()
            .find_commit(commit)
            .ok()
            .and_then(|c| c.parent_id(0).ok());
        let status_only = edits.iter().all(|e| crate::source::is_status_path(&e.path));
        // Made on the pass's head, or on commits after it that change nothing rollgate
        // reads (humans pushing other files while the pass ran).
        let on_head = match (self.head, parent) {
            (Some(head), Some(parent)) => self.nothing_read_changed(head, parent),
            _ => false,
        };
        if !on_head || !status_only {
            return false;
        }
        let paths: Vec<String> = edits.iter().map(|e| e.path.clone()).collect();
        // The writer stored each where the configured layout keeps it.
        let sharded = self.status_layout() == StatusLayout::Sharded;
        for e in edits {
            self.snapshot.refused.retain(|d| d.file != e.path);
            if sharded && e.content.is_some() {
                self.snapshot.sharded.insert(e.path.clone());
            } else {
                self.snapshot.sharded.remove(&e.path);
            }
            match &e.content {
                Some(bytes) => {
                    self.snapshot.files.insert(e.path.clone(), bytes.clone());
                }
                None => {
                    self.snapshot.files.remove(&e.path);
                }
            }
        }
        self.cache.invalidate(&paths);
        self.head = Some(commit);
        true
    }

    /// Status is rollgate's alone: a `status/` file whose last change at `head` was made
    /// by a commit rollgate did not write (its trailers and its configured author) is
    /// replaced, in the snapshot everything reads, by its content as rollgate last wrote
    /// it. Git keeps the foreign change; the daemon says so and ignores it.
    pub(super) fn distrust_foreign_status(&mut self, head: Oid, changed: &[String]) -> Result<()> {
        let paths: Vec<String> = changed
            .iter()
            .filter(|p| p.starts_with("status/"))
            .cloned()
            .collect();
        if paths.is_empty() {
            return Ok(());
        }
        let author = self
            .snapshot
            .files
            .get(crate::source::SETTINGS_FILE)
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|t| {
                crate::model::validate::parse_settings(crate::source::SETTINGS_FILE, t).ok()
            })
            .unwrap_or_default()
            .write_back
            .author;
        let ours = format!("{} <{}>", author.name, author.email);
        let trusted = |c: &CommitInfo| c.is_rollgate() && c.author == ours;
        let foreign =
            self.src
                .untrusted_changes(head, "status/", &paths, HISTORY_LIMIT, &trusted)?;
        for (path, (good, by)) in foreign {
            tracing::warn!(
                file = %path,
                commits = %by.iter().map(|o| o.to_string()[..12].to_owned()).collect::<Vec<_>>().join(", "),
                "status changed by a commit rollgate did not write: ignored; the last status rollgate wrote stays in force"
            );
            match good {
                Some(bytes) => {
                    self.snapshot.files.insert(path, bytes);
                }
                None => {
                    self.snapshot.files.remove(&path);
                }
            }
        }
        Ok(())
    }

    pub(super) fn take_command(&mut self, c: &CommitInfo) {
        let (Some(word), Some(plan)) = (
            c.trailer(crate::source::git::TRAILER_COMMAND),
            c.trailer(crate::source::git::TRAILER_PLAN),
        ) else {
            return;
        };
        if !self.src.changes_nothing(c.id) {
            // A squash or rebase merge copies its contributors' messages: a trailer in a
            // commit that changes files may come from anyone. Only a pure command commit
            // (no file changed) carries a command.
            tracing::warn!(plan, command = word, commit = %c.id, "command trailer ignored: the commit changes files (a command commit changes none)");
            return;
        }
        match parse_command(word) {
            Some(cmd) => {
                tracing::debug!(plan, command = word, commit = %c.id, "command found");
                self.commands
                    .entry(plan.to_owned())
                    .or_default()
                    .push((c.id.to_string(), cmd));
            }
            None => tracing::warn!(plan, command = word, commit = %c.id, "unknown command ignored"),
        }
    }

    /// Commands for `plan` not yet acted on by `status`.
    pub(super) fn pending_commands(
        &self,
        plan: &str,
        status: Option<&Status>,
    ) -> Vec<(String, Command)> {
        let Some(all) = self.commands.get(plan) else {
            return Vec::new();
        };
        let Some(status) = status else {
            return Vec::new();
        };
        if let Some(last) = &status.last_command
            && let Some(i) = all.iter().position(|(sha, _)| sha == last)
        {
            return all[i + 1..].to_vec();
        }
        // Commands older than the rollout are for an earlier one.
        let repo = self.src.repo();
        let Ok(rev) = Oid::from_str(&status.revision) else {
            return all.clone();
        };
        all.iter()
            .filter(|(sha, _)| {
                Oid::from_str(sha)
                    .is_ok_and(|c| c != rev && repo.graph_descendant_of(c, rev).unwrap_or(false))
            })
            .cloned()
            .collect()
    }
}
