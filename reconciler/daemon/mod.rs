//! The reconcile loop: Git in, decisions out, Git again.
//!
//! ```text
//!  fetch ─▶ new head? ─▶ diff ─▶ snapshot += changed files ─▶ gate (changed plans only)
//!                                   │                             │ commands from commits
//!                                   ▼                             ▼
//!  for each accepted plan:  status (Git) ─▶ observe (target health, due measurements)
//!                             ─▶ engine::decide ─▶ target actions ─▶ revert? ─▶ status commit
//! ```
//! Invariants: the state is the status files at head plus the plans, so a restart
//! resumes from Git alone (in-flight steps are re-applied, idempotently); a plan the
//! gate rejected gets no target call; one plan's failure is logged and never stops the
//! others; rollgate's own commits are never taken as commands.

pub mod run;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use git2::Oid;

use crate::engine::{self, Command, Decision, Observation, Observed, TargetHealth};
use crate::gate::{self, Change, GateCache, GateContext, GateReport, PolicyEngine};
use crate::metrics::{MetricsSource, QueryContext};
use crate::model::settings::WriteBack;
use crate::model::status::{Phase, Status};
use crate::model::validate::ParsedPlan;
use crate::model::{Diagnostic, Plan};
use crate::source::Snapshot;
use crate::source::git::{CommitInfo, GitSource};
use crate::target::{Desired, Target};
use crate::writeback::messages::{self, status_path};
use crate::writeback::{RevertConflict, WriteOutcome, Writer};

/// How many commits back a (re)start looks for commands and plan revisions.
pub const HISTORY_LIMIT: usize = 10_000;

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickReport {
    pub head: Option<String>,
    /// Status commits written.
    pub transitions: usize,
    /// Target actions executed.
    pub actions: usize,
    /// Revert or restore commits written.
    pub reverts: usize,
    /// Plans whose reconcile failed this pass (logged; the others went on).
    pub errors: usize,
    /// The earliest time any plan wants to be looked at again.
    pub next_wakeup: Option<DateTime<Utc>>,
    /// The earliest wakeup of a rollout that moves on by itself (an analysis, a timed
    /// pause, a promotion), not of one held (a failing target's backoff, a window).
    pub moves_on_at: Option<DateTime<Utc>>,
    /// Plans held because their target refused an action (kind `target`).
    pub held_on_target: usize,
}

/// Per-plan memory that is not in Git (and need not survive a restart).
#[derive(Debug, Default)]
struct Memo {
    /// A decision's counters (measurements so far) on top of `based_on`, the file's status.
    counters: Option<(Option<Status>, Status)>,
    reapplied: bool,
    /// When the engine wants to look again (reported to the run loop).
    wakeup: Option<DateTime<Utc>>,
    /// A finished rollout with nothing new: the plan and status it was seen with. While
    /// both are the same and no command waits, the plan is skipped (10,000 idle plans
    /// cost a comparison each, not a decision).
    idle: Option<(Arc<ParsedPlan>, Option<Vec<u8>>)>,
    /// The last target action that failed, while it keeps failing.
    failure: Option<Failure>,
    /// The last warning said per cause (`Reconciler::news`): a repeat is not news.
    said: HashMap<String, String>,
}

/// A target action that failed, and when to try again: until then, and while the plan
/// and its commands stay the same, the plan is not looked at (however often the loop
/// wakes), so a failing target is asked `retry_backoff` apart, not on every pass.
#[derive(Debug)]
struct Failure {
    /// Failures in a row.
    count: u32,
    retry_at: DateTime<Utc>,
    plan: Arc<ParsedPlan>,
    /// How many command commits the plan had: a new one (an abort) is acted on at once.
    commands: usize,
    message: String,
}

/// Where jitter for retries comes from: a number in `0.0..1.0` per call.
pub type Jitter = Box<dyn FnMut() -> f64 + Send>;

/// Jitter from a small generator seeded by the clock and the process id (no crate needed:
/// it only spreads retries apart).
fn default_jitter() -> Jitter {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()).rotate_left(32);
    let mut state = seed | 1;
    Box::new(move || {
        // splitmix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// Builds the policy engine from a revision's `policies/` files.
pub type PolicyLoader =
    Box<dyn Fn(&Snapshot) -> Result<Box<dyn PolicyEngine>, Vec<Diagnostic>> + Send>;

pub struct Reconciler {
    src: GitSource,
    policy: Option<Box<dyn PolicyEngine>>,
    loader: Option<PolicyLoader>,
    /// Why the policies could not be loaded at this head (then every plan is rejected).
    policy_errors: Vec<Diagnostic>,
    targets: BTreeMap<String, Box<dyn Target>>,
    metrics: BTreeMap<String, Box<dyn MetricsSource>>,
    cache: GateCache,
    snapshot: Snapshot,
    head: Option<Oid>,
    report: GateReport,
    memo: HashMap<String, Memo>,
    /// Command commits seen, per plan, oldest first.
    commands: HashMap<String, Vec<(String, Command)>>,
    /// Spreads the retries of failed target actions (`engine::retry_backoff`).
    jitter: Jitter,
    /// The operator's namespace allowlist for the gate (`None`: the settings decide).
    namespaces: Option<Vec<String>>,
    /// Write nothing to Git (`run --dry-run`).
    dry_run: bool,
    /// Set: targets and metrics sources are built from the settings at head, and
    /// rebuilt when their entry changes (`with_adapters`).
    adapters: Option<Adapters>,
}

/// The daemon's targets and metrics sources as built from settings: what each was built
/// from, so a settings change rebuilds only the entries it touches.
struct Adapters {
    opts: crate::target::factory::Options,
    targets: BTreeMap<String, crate::model::settings::Target>,
    metrics: BTreeMap<String, crate::model::settings::MetricsSource>,
    counters: BTreeMap<String, Arc<dyn crate::metrics::builtin::ProxyCounters>>,
    built: bool,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("src", &self.src)
            .field("head", &self.head)
            .finish_non_exhaustive()
    }
}

/// Parse a command word (`promote`, `abort`, `retry`).
pub fn parse_command(word: &str) -> Option<Command> {
    match word.trim().to_ascii_lowercase().as_str() {
        "promote" => Some(Command::Promote),
        "abort" => Some(Command::Abort),
        "retry" => Some(Command::Retry),
        _ => None,
    }
}

/// What the target should look like for a status (health is judged against this).
pub fn desired(s: &Status) -> Desired {
    match s.phase {
        Phase::Promoting | Phase::Succeeded => Desired {
            stable: Some(s.candidate.clone()),
            candidate: None,
            weight: 0,
        },
        Phase::Pending | Phase::RollingBack | Phase::RolledBack => Desired {
            stable: s.stable.clone(),
            candidate: None,
            weight: 0,
        },
        Phase::Progressing | Phase::Paused | Phase::Held => Desired {
            stable: s.stable.clone(),
            candidate: Some(s.candidate.clone()),
            weight: s.weight,
        },
    }
}

impl Reconciler {
    pub fn new(
        src: GitSource,
        policy: Option<Box<dyn PolicyEngine>>,
        targets: BTreeMap<String, Box<dyn Target>>,
        metrics: BTreeMap<String, Box<dyn MetricsSource>>,
    ) -> Self {
        Self {
            src,
            policy,
            loader: None,
            policy_errors: Vec::new(),
            targets,
            metrics,
            cache: GateCache::default(),
            snapshot: Snapshot::default(),
            head: None,
            report: GateReport::default(),
            memo: HashMap::new(),
            commands: HashMap::new(),
            jitter: default_jitter(),
            namespaces: None,
            dry_run: false,
            adapters: None,
        }
    }

    /// Build the targets and metrics sources from the settings at head (replacing any
    /// given to `new`), and rebuild an entry whenever a later head changes it: a target
    /// added to `rollgate.yaml` serves its plans without a restart. While the settings
    /// at head are invalid, the adapters built last stay.
    #[must_use]
    pub fn with_adapters(mut self, opts: crate::target::factory::Options) -> Self {
        self.adapters = Some(Adapters {
            opts,
            targets: BTreeMap::new(),
            metrics: BTreeMap::new(),
            counters: BTreeMap::new(),
            built: false,
        });
        self
    }

    /// A dry run: status commits, reverts and restores are not written (logged, and the
    /// statuses kept in memory so the rollout plays on); targets are the caller's choice.
    pub fn set_dry_run(&mut self, dry_run: bool) {
        self.dry_run = dry_run;
    }

    /// Only these namespaces may be touched (the operator's `--namespaces`): plans for
    /// others are rejected by the gate.
    pub fn set_namespaces(&mut self, namespaces: Vec<String>) {
        self.namespaces = Some(namespaces);
    }

    /// Where the jitter of retry backoffs comes from (tests pass a fixed one).
    pub fn set_jitter(&mut self, jitter: Jitter) {
        self.jitter = jitter;
    }

    /// Load the repository's own policies from each revision (re-loaded when they change).
    #[must_use]
    pub fn with_policy_loader(mut self, loader: PolicyLoader) -> Self {
        self.loader = Some(loader);
        self
    }

    pub fn source(&self) -> &GitSource {
        &self.src
    }

    /// The gate's verdict on the current head.
    pub fn report(&self) -> &GateReport {
        &self.report
    }

    pub fn target_mut(&mut self, name: &str) -> Option<&mut Box<dyn Target>> {
        self.targets.get_mut(name)
    }

    /// The status of a plan at the last fetched head.
    pub fn status(&self, plan: &str) -> Option<Status> {
        let bytes = self.snapshot.files.get(&status_path(plan))?;
        Status::from_yaml(std::str::from_utf8(bytes).ok()?).ok()
    }

    /// The status with the analysis counters gathered since the last commit (for live views).
    pub fn live_status(&self, plan: &str) -> Option<Status> {
        let file = self.status(plan);
        match self.memo.get(plan).and_then(|m| m.counters.as_ref()) {
            Some((based_on, counted)) if *based_on == file => Some(counted.clone()),
            _ => file,
        }
    }

    fn write_back(&self) -> WriteBack {
        self.report
            .settings
            .as_ref()
            .map(|s| s.write_back.clone())
            .unwrap_or_default()
    }

    /// One pass: fetch, take in any new commits, and reconcile every accepted plan.
    pub fn tick(&mut self, now: DateTime<Utc>) -> Result<TickReport> {
        let head = self.src.fetch()?;
        if Some(head) != self.head {
            self.advance(head, now)?;
        }
        let mut report = TickReport {
            head: Some(head.to_string()),
            ..TickReport::default()
        };
        let names: Vec<String> = self.report.accepted.keys().cloned().collect();
        for name in names {
            let span = tracing::info_span!("plan", plan = %name);
            let _enter = span.enter();
            let started = std::time::Instant::now();
            let result = self.reconcile(&name, now, &mut report);
            let t = crate::telemetry::global();
            t.reconciles
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            t.reconcile_took(started.elapsed());
            match result {
                Err(e) => {
                    t.reconcile_errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    report.errors += 1;
                    let error = format!("{e:#}");
                    if self.news(&name, "reconcile", Some(&error)) {
                        tracing::warn!(%error, "reconcile failed; other plans go on");
                    } else {
                        tracing::debug!(%error, "reconcile failed again");
                    }
                }
                Ok(()) => {
                    self.news(&name, "reconcile", None);
                }
            }
            if self.live_status(&name).is_some_and(|s| {
                s.phase == Phase::Held
                    && s.hold
                        .as_ref()
                        .is_some_and(|h| h.kind == crate::model::status::HoldKind::Target)
            }) {
                report.held_on_target += 1;
            }
            if let Some(w) = self.memo.get(&name).and_then(|m| m.wakeup) {
                report.next_wakeup = Some(report.next_wakeup.map_or(w, |n| n.min(w)));
                let moving = self.live_status(&name).is_some_and(|s| {
                    matches!(
                        s.phase,
                        Phase::Pending | Phase::Progressing | Phase::Paused | Phase::Promoting
                    )
                });
                if moving {
                    report.moves_on_at = Some(report.moves_on_at.map_or(w, |n| n.min(w)));
                }
            }
        }
        Ok(report)
    }

    /// Take in the commits up to `head`: changed files only, then the gate, then commands.
    fn advance(&mut self, head: Oid, now: DateTime<Utc>) -> Result<()> {
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
        let prev_rejected = std::mem::take(&mut self.report.rejected);
        self.report =
            gate::check_with(&self.snapshot, &cx, self.policy.as_deref(), &mut self.cache);
        if !self.policy_errors.is_empty() {
            // Fail closed: no plan is accepted while the policies do not load.
            let all: Vec<String> = self
                .report
                .accepted
                .values()
                .map(|p| p.file.clone())
                .collect();
            self.report.rejected.extend(all);
            self.report.accepted.clear();
            self.report
                .diagnostics
                .extend(self.policy_errors.iter().cloned());
        }
        for d in &self.report.diagnostics {
            // Log what this change broke (not every old problem again).
            if changed.contains(&d.file)
                || !prev_rejected.contains(&d.file) && self.report.rejected.contains(&d.file)
            {
                log_diagnostic(d);
            }
        }
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
        Ok(())
    }

    /// Bring the targets and metrics sources in line with the settings at head: build
    /// what is new or changed, drop what is gone, keep the rest as it is (a data plane
    /// client, a cluster connection). No-op without `with_adapters`.
    fn rebuild_adapters(&mut self) {
        let Some(a) = self.adapters.as_mut() else {
            return;
        };
        let Some(settings) = self.report.settings.as_ref() else {
            if a.built {
                tracing::warn!(
                    "the settings at head are invalid: targets and metrics sources stay as they were"
                );
            }
            return;
        };
        if a.built && a.targets == settings.targets && a.metrics == settings.metrics {
            return;
        }
        let first = !a.built;
        a.built = true;
        let mut counters_changed = first;
        for gone in a
            .targets
            .keys()
            .filter(|n| !settings.targets.contains_key(*n))
            .cloned()
            .collect::<Vec<_>>()
        {
            tracing::info!(target_name = %gone, "target removed from the settings");
            self.targets.remove(&gone);
            a.targets.remove(&gone);
            counters_changed |= a.counters.remove(&gone).is_some();
        }
        for (name, kind) in &settings.targets {
            if a.targets.get(name) == Some(kind) {
                continue;
            }
            if !first {
                tracing::info!(target_name = %name, kind = kind.kind(), "target (re)built: its settings changed");
            }
            a.targets.insert(name.clone(), kind.clone());
            counters_changed |= a.counters.remove(name).is_some();
            match crate::target::factory::build(name, kind, &a.opts) {
                Ok(built) => {
                    self.targets.insert(name.clone(), built.target);
                    if let Some(c) = built.counters {
                        a.counters.insert(name.clone(), c);
                        counters_changed = true;
                    }
                }
                Err(why) => {
                    // Its plans hold (target not available); the others go on.
                    self.targets.remove(name);
                    tracing::warn!(target_name = %name, error = %why, "target unavailable; its plans hold");
                }
            }
        }
        for gone in a
            .metrics
            .keys()
            .filter(|n| !settings.metrics.contains_key(*n))
            .cloned()
            .collect::<Vec<_>>()
        {
            self.metrics.remove(&gone);
            a.metrics.remove(&gone);
        }
        for (name, kind) in &settings.metrics {
            if a.metrics.get(name) == Some(kind) {
                continue;
            }
            a.metrics.insert(name.clone(), kind.clone());
            match crate::metrics::factory::build(kind) {
                Ok(source) => {
                    self.metrics.insert(name.clone(), source);
                }
                Err(why) => {
                    self.metrics.remove(name);
                    tracing::warn!(source = %name, error = %why, "metrics source unavailable; its checks will hold");
                }
            }
        }
        if counters_changed {
            self.metrics.insert(
                crate::metrics::factory::BUILTIN.to_owned(),
                crate::metrics::factory::builtin(a.counters.values().cloned().collect()),
            );
        }
    }

    /// Status is rollgate's alone: a `status/` file whose last change at `head` was made
    /// by a commit rollgate did not write (its trailers and its configured author) is
    /// replaced, in the snapshot everything reads, by its content as rollgate last wrote
    /// it. Git keeps the foreign change; the daemon says so and ignores it.
    fn distrust_foreign_status(&mut self, head: Oid, changed: &[String]) -> Result<()> {
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

    fn take_command(&mut self, c: &CommitInfo) {
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
    fn pending_commands(&self, plan: &str, status: Option<&Status>) -> Vec<(String, Command)> {
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

    fn reconcile(&mut self, name: &str, now: DateTime<Utc>, report: &mut TickReport) -> Result<()> {
        let Some(pp) = self.report.accepted.get(name).cloned() else {
            return Ok(());
        };
        let status_bytes = self.snapshot.files.get(&status_path(name));
        let commands_waiting = self.commands.get(name).is_some_and(|c| !c.is_empty());
        if let Some((seen_plan, seen_status)) = self.memo.get(name).and_then(|m| m.idle.as_ref())
            && Arc::ptr_eq(seen_plan, &pp)
            && seen_status.as_ref() == status_bytes
            && !commands_waiting
        {
            return Ok(());
        }
        let commands_seen = self.commands.get(name).map_or(0, Vec::len);
        if let Some(memo) = self.memo.get_mut(name)
            && let Some(f) = &memo.failure
            && now < f.retry_at
            && Arc::ptr_eq(&f.plan, &pp)
            && f.commands == commands_seen
        {
            // A target action failed: back off (nothing changed that could help).
            memo.wakeup = Some(f.retry_at);
            return Ok(());
        }
        let status_bytes = status_bytes.cloned();
        let plan = &pp.plan;
        let file_status = match self.snapshot.files.get(&status_path(name)) {
            None => None,
            Some(bytes) => match std::str::from_utf8(bytes)
                .map_err(|e| e.to_string())
                .and_then(|t| Status::from_yaml(t).map_err(|e| e.to_string()))
            {
                Ok(s) => Some(s),
                Err(e) => {
                    // Fail safe: without a readable state, touch nothing.
                    anyhow::bail!(
                        "status/{name}.yaml is unreadable ({e}); not reconciling this plan"
                    );
                }
            },
        };
        let memo = self.memo.entry(name.to_owned()).or_default();
        let status = match &memo.counters {
            Some((based_on, counted)) if *based_on == file_status => Some(counted.clone()),
            _ => file_status.clone(),
        };
        // After a (re)start, put the target back in the state Git says it is in.
        if !memo.reapplied {
            memo.reapplied = true;
            if let Some(s) = &status {
                report.actions += self.reapply(plan, s);
            }
        }

        let revision = match &status {
            Some(s) if s.candidate == plan.artifact && !s.revision.is_empty() => s.revision.clone(),
            _ => {
                // The commit that introduced this artifact (not merely the last edit).
                let head = self.head.context("no head")?;
                self.src
                    .artifact_introduced(head, &pp.file, &plan.artifact, HISTORY_LIMIT)?
                    .unwrap_or(head)
                    .to_string()
            }
        };
        let health = match (&status, self.targets.get_mut(&plan.target)) {
            (_, None) => TargetHealth::Unreachable {
                reason: format!("no `{}` target is available in this daemon", plan.target),
            },
            (Some(s), Some(t)) => t.health(plan, &desired(s)),
            (None, Some(_)) => TargetHealth::Healthy,
        };
        let measurements = match &status {
            Some(s) => self.measure(plan, s, now),
            None => Vec::new(),
        };
        let commands = self.pending_commands(name, status.as_ref());
        let slo = match (&plan.slo, &status) {
            (Some(slo), Some(s)) if s.phase.is_in_flight() => Some(self.slo_reading(plan, slo, s)),
            _ => None,
        };
        let obs = Observation {
            revision,
            health,
            measurements,
            commands: commands.iter().map(|(_, c)| *c).collect(),
            slo,
            // When the builtin counters of this plan began (a data plane that restarted
            // lost the samples before): an analysis across that gap restarts its window.
            // Asked only where it can matter: an analysis in flight with a builtin check.
            samples_since: match &status {
                Some(s)
                    if s.phase == Phase::Progressing
                        && plan
                            .checks
                            .iter()
                            .any(|c| c.source == crate::model::settings::BUILTIN_SOURCE) =>
                {
                    self.metrics
                        .get_mut(crate::model::settings::BUILTIN_SOURCE)
                        .and_then(|m| m.complete_since(name))
                }
                _ => None,
            },
        };
        let decision = engine::decide(plan, status.as_ref(), &obs, now);
        if let Some(next) = &decision.status {
            for run in &next.analysis {
                let before = status
                    .as_ref()
                    .and_then(|s| s.analysis.iter().find(|r| r.check == run.check))
                    .map_or(0, |r| r.measurements);
                if run.measurements > before
                    && let Some(j) = &run.last
                {
                    crate::telemetry::global().judged(j.verdict.as_str());
                }
            }
        }
        let finished = status
            .as_ref()
            .is_some_and(|s| matches!(s.phase, Phase::Succeeded | Phase::RolledBack));
        let quiet = finished
            && decision.actions.is_empty()
            && decision.transition.is_none()
            && decision.status.is_none()
            && decision.revert.is_none()
            && commands.is_empty();
        self.execute(
            &pp,
            status.as_ref(),
            file_status,
            decision,
            commands.last().map(|(sha, _)| sha.clone()),
            now,
            report,
        )?;
        if quiet {
            self.memo.entry(name.to_owned()).or_default().idle = Some((pp, status_bytes));
        }
        Ok(())
    }

    /// Whether `message` is news for `plan` under `cause`, to log it at WARN once per
    /// change of cause instead of on every pass: it is when it differs from the last
    /// message said for that cause. `None` (the cause is gone) forgets it, so the same
    /// failure coming back later is news again.
    fn news(&mut self, plan: &str, cause: &str, message: Option<&str>) -> bool {
        match message {
            None => {
                if let Some(memo) = self.memo.get_mut(plan) {
                    memo.said.remove(cause);
                }
                false
            }
            Some(m) => {
                let said = &mut self.memo.entry(plan.to_owned()).or_default().said;
                if said.get(cause).is_some_and(|last| last == m) {
                    false
                } else {
                    said.insert(cause.to_owned(), m.to_owned());
                    true
                }
            }
        }
    }

    /// Error ratios over the SLO's burn-rate windows (one instant query pair each).
    fn slo_reading(
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

    fn measure(&mut self, plan: &Plan, s: &Status, now: DateTime<Utc>) -> Vec<Observed> {
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

    /// Re-apply the current step of an in-flight rollout (idempotent on every target).
    fn reapply(&mut self, plan: &Plan, s: &Status) -> usize {
        let Some(t) = self.targets.get_mut(&plan.target) else {
            return 0;
        };
        let result = match s.phase {
            // The stable version first (it carries the rest of the traffic), then the candidate.
            Phase::Progressing | Phase::Paused | Phase::Held => t
                .resume(plan, s.stable.as_deref(), &s.candidate, s.weight)
                .map(|()| 3),
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
    fn act(
        &mut self,
        plan: &Plan,
        d: &Decision,
        report: &mut TickReport,
    ) -> Option<(engine::Action, String)> {
        for action in &d.actions {
            let result = match self.targets.get_mut(&plan.target) {
                None => Err(format!(
                    "no `{}` target is available in this daemon",
                    plan.target
                )),
                Some(t) => match action {
                    engine::Action::StartCandidate { artifact } => {
                        t.start_candidate(plan, artifact)
                    }
                    engine::Action::SetWeight(w) => t.set_weight(plan, *w),
                    engine::Action::Promote { artifact } => t.promote(plan, artifact),
                    engine::Action::Rollback { stable } => t.rollback(plan, stable.as_deref()),
                }
                .map_err(|e| e.to_string()),
            };
            report.actions += 1;
            if let Err(e) = result {
                return Some((action.clone(), e));
            }
        }
        None
    }

    /// A target action failed: count it, back off, say so in the log once per cause, and
    /// turn the decision into what Git should record instead (`engine::action_failed`).
    #[allow(clippy::too_many_arguments)]
    fn failed(
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

    /// Do what was decided: target actions, then the revert, then the status commit.
    /// A failed action turns the decision into a hold (`engine::action_failed`).
    #[allow(clippy::too_many_arguments)]
    fn execute(
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
            let doing = Decision {
                status: Some(written.clone()),
                actions: d.actions,
                transition: None,
                revert: None,
                next_wakeup: d.next_wakeup,
                record_first: false,
            };
            return match self.act(plan, &doing, report) {
                None => {
                    self.recovered(&plan.name, &doing);
                    Ok(())
                }
                Some((action, error)) => {
                    let held =
                        self.failed(pp, Some(&written), &doing, &action, &error, now, report);
                    let file = Some(written.clone());
                    self.record(pp, Some(&written), file, held, None, report)
                        .map(|_| ())
                }
            };
        }
        let d = match self.act(plan, &d, report) {
            Some((action, error)) => self.failed(pp, before, &d, &action, &error, now, report),
            None => {
                self.recovered(&plan.name, &d);
                d
            }
        };
        self.record(pp, before, file_status, d, last_command, report)
            .map(|_| ())
    }

    /// The actions of `d` all succeeded: a failure streak, if any, is over.
    fn recovered(&mut self, name: &str, d: &Decision) {
        if !d.actions.is_empty()
            && let Some(memo) = self.memo.get_mut(name)
            && let Some(f) = memo.failure.take()
        {
            tracing::info!(after = f.count, "target actions succeed again");
        }
    }

    /// Record a decision whose actions are done (or not needed): the revert, then the
    /// status commit (or only the counters, in memory). Returns the status now in force.
    fn record(
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
    fn push_revert(
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
        Ok(matches!(outcome, WriteOutcome::Pushed { .. }))
    }

    /// Tick until nothing moves: every rollout finished or waiting on time or a human.
    pub fn run_until_idle(&mut self, max_ticks: usize) -> Result<Vec<TickReport>> {
        let mut reports = Vec::new();
        for _ in 0..max_ticks {
            let r = self.tick(Utc::now())?;
            let moved = r.transitions > 0 || r.reverts > 0;
            reports.push(r);
            if !moved {
                break;
            }
        }
        Ok(reports)
    }

    /// Diagnostics of the last gate run (for `status` and logs).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.report.diagnostics
    }
}

fn engine_after(now: DateTime<Utc>, wait: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(wait)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn log_diagnostic(d: &Diagnostic) {
    if d.is_error() {
        tracing::warn!(file = %d.file, code = %d.code, "{d}");
    } else {
        tracing::info!(file = %d.file, code = %d.code, "{d}");
    }
}

/// How long the loop sleeps at most between passes when nothing is due.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
