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
//!
//! One pass, one file per stage: `intake.rs` (new commits, the gate, commands),
//! `observe.rs` (measurements), `execute.rs` (target actions and their failures),
//! `record.rs` (status, revert and restore commits), `adapters.rs` (targets and metrics
//! sources from settings); this file holds the `Reconciler` and `tick`/`reconcile`, and
//! `run.rs` the loop around them.

mod adapters;
mod execute;
mod intake;
mod layout;
mod observe;
pub mod order;
mod record;
pub mod run;

use adapters::Adapters;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use git2::Oid;

use crate::engine::{self, Command, Decision, Observation, Observed, TargetHealth};
use crate::gate::{self, Change, GateCache, GateContext, GateReport, PolicyEngine};
use crate::metrics::{MetricsSource, QueryContext};
use crate::model::plan::Routing;
use crate::model::settings::{LayoutSetting, StatusLayout, WriteBack};
use crate::model::status::{Phase, Status};
use crate::model::validate::ParsedPlan;
use crate::model::{Diagnostic, Plan};
use crate::source::Snapshot;
use crate::source::git::{CommitInfo, GitSource};
use crate::targets::{Desired, ErrorKind, Target, TargetError};
use crate::writeback::messages::{self, status_path};
use crate::writeback::{RevertConflict, WriteOutcome, Writer};

/// Target actions in a row that may lose an optimistic-concurrency race before the
/// rollout is held like for any failure.
pub const CONFLICT_RETRIES: u32 = 3;

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
    /// The pass stopped early for new commits (a human's revert or change waits): the
    /// next pass should start at once.
    pub yielded: bool,
}

/// The size of what a `Reconciler` remembers between passes (`Reconciler::remembered`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Remembered {
    /// Plans with memory (counters, backoff, the last warning said, jobs).
    pub plans: usize,
    /// Command commits kept for plans whose rollout may still act on them.
    pub commands: usize,
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
    /// The status file as last parsed and as last written by this daemon, each with its
    /// bytes (`Parsed`): a pass asks for a plan's status up to three times (to order it,
    /// to decide, to count it as held or moving), and parsing it each time was half of a
    /// busy pass (#21). Dropped when the plan goes idle, so only rollouts in flight keep
    /// them.
    parsed: Parsed,
    /// The last target action that failed, while it keeps failing.
    failure: Option<Failure>,
    /// Target actions in a row that lost an optimistic-concurrency race.
    conflicts: u32,
    /// The last warning said per cause (`Reconciler::news`): a repeat is not news.
    said: HashMap<String, String>,
    /// The last status recorded was RollingBack: the plan is urgent (`order`).
    rolling_back: bool,
    /// Jobs started and not yet seen to end: (check, id). One the rollout no longer
    /// wants (it moved on, rolled back) is stopped (`JobRunner::cleanup`).
    jobs: Vec<(String, String)>,
}

/// Status files known parsed, by their bytes: the file at the head (until the pass's
/// commit lands, the file a decision rests on) and the one this daemon wrote last.
#[derive(Debug, Default)]
struct Parsed(Vec<(Vec<u8>, Status)>);

impl Parsed {
    /// As many as a plan needs: its file now and the one its staged commit writes.
    const KEEP: usize = 2;

    fn get(&self, bytes: &[u8]) -> Option<&Status> {
        self.0.iter().find(|(b, _)| b == bytes).map(|(_, s)| s)
    }

    fn keep(&mut self, bytes: Vec<u8>, status: Status) {
        if self.get(&bytes).is_some() {
            return;
        }
        if self.0.len() >= Self::KEEP {
            self.0.remove(0);
        }
        self.0.push((bytes, status));
    }

    fn clear(&mut self) {
        self.0 = Vec::new();
    }
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
    /// Job runners, by target name (targets that can run job checks).
    jobs: BTreeMap<String, Box<dyn crate::targets::jobs::JobRunner>>,
    metrics: BTreeMap<String, Box<dyn MetricsSource>>,
    cache: GateCache,
    snapshot: Snapshot,
    head: Option<Oid>,
    /// The head `advance` last took in. `plans/` is the same at `head`: the heads after
    /// it are status commits taken in place and commits that change nothing rollgate
    /// reads. A plan's history is walked from here, not through the pass's own commits
    /// (a 1,000-plan change makes 20 of them, and every plan walked them all).
    plans_head: Option<Oid>,
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
    /// Told of every status and revert commit once it is pushed (`with_notifications`).
    notify: Option<crate::notify::Outbox>,
    /// `run --shards`: only plans of shards this replica holds are reconciled.
    shards: Option<crate::leader::ShardGate>,
    /// Statuses decided this pass, not yet committed (`record`, `flush`).
    staged: Vec<record::Staged>,
    /// Plans whose file changed in commits not yet acted on (`order::Priority::New`).
    fresh: BTreeSet<String>,
    /// Where the last pass that yielded stopped in its routine plans.
    cursor: Option<String>,
    /// How many routine plans a chunk holds now (`order::ChunkSize`: smaller while status
    /// commits lose races).
    chunk: order::ChunkSize,
    /// The commit the last `flush` pushed (`None`: it pushed nothing): the branch's
    /// history up to it is known without a fetch (`new_commits_waiting`).
    pushed: Option<Oid>,
    /// The last move of the status files to the configured layout failed: try again
    /// (`layout::settle_status_layout`).
    layout_retry: bool,
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
pub fn desired(plan: &Plan, s: &Status) -> Desired {
    match s.phase {
        Phase::Promoting | Phase::Succeeded => Desired {
            stable: Some(s.candidate.clone()),
            candidate: None,
            weight: 0,
            routing: Routing::default(),
        },
        Phase::Pending | Phase::RollingBack | Phase::RolledBack => Desired {
            stable: s.stable.clone(),
            candidate: None,
            weight: 0,
            routing: Routing::default(),
        },
        Phase::Progressing | Phase::Paused | Phase::Held => Desired {
            stable: s.stable.clone(),
            candidate: Some(s.candidate.clone()),
            weight: s.weight,
            routing: engine::routing(plan, s),
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
            jobs: BTreeMap::new(),
            metrics,
            cache: GateCache::default(),
            snapshot: Snapshot::default(),
            head: None,
            plans_head: None,
            report: GateReport::default(),
            memo: HashMap::new(),
            commands: HashMap::new(),
            jitter: default_jitter(),
            namespaces: None,
            dry_run: false,
            adapters: None,
            notify: None,
            shards: None,
            staged: Vec::new(),
            fresh: BTreeSet::new(),
            cursor: None,
            chunk: order::ChunkSize::default(),
            pushed: None,
            layout_retry: false,
        }
    }

    /// Build the targets and metrics sources from the settings at head (replacing any
    /// given to `new`), and rebuild an entry whenever a later head changes it: a target
    /// added to `rollgate.yaml` serves its plans without a restart. While the settings
    /// at head are invalid, the adapters built last stay.
    #[must_use]
    pub fn with_adapters(mut self, opts: crate::targets::factory::Options) -> Self {
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

    /// One replica of several (`run --shards`): a pass reconciles only the plans of the
    /// shards `gate` says this replica holds.
    pub fn set_shards(&mut self, gate: crate::leader::ShardGate) {
        self.shards = Some(gate);
    }

    /// Whether this pass reconciles `name`, and the claim to hold while it does. A plan
    /// of a shard this replica does not hold is skipped and its memory forgotten, so if
    /// the shard comes (back) to it later, it resumes from Git alone (re-applying the
    /// target's state) like after a restart.
    fn claim(&mut self, name: &str, now: DateTime<Utc>) -> Option<crate::leader::Claim> {
        let Some(gate) = &self.shards else {
            return Some(crate::leader::Claim::unsharded());
        };
        let claim = gate.claim(name, now);
        if claim.is_none() {
            self.memo.remove(name);
        }
        claim
    }

    /// Where the jitter of retry backoffs comes from (tests pass a fixed one).
    pub fn set_jitter(&mut self, jitter: Jitter) {
        self.jitter = jitter;
    }

    /// Announce every status and revert commit, after it is pushed, through `outbox`
    /// (its own threads: a reconcile never waits for a receiver).
    #[must_use]
    pub fn with_notifications(mut self, outbox: crate::notify::Outbox) -> Self {
        self.notify = Some(outbox);
        self
    }

    /// Run the job checks of `target`'s plans with `runner` (tests; `with_adapters`
    /// builds them from the settings).
    #[must_use]
    pub fn with_job_runner(
        mut self,
        target: &str,
        runner: Box<dyn crate::targets::jobs::JobRunner>,
    ) -> Self {
        self.jobs.insert(target.to_owned(), runner);
        self
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
        if let Some(parsed) = self.memo.get(plan).and_then(|m| m.parsed.get(bytes)) {
            return Some(parsed.clone());
        }
        Status::from_yaml(std::str::from_utf8(bytes).ok()?).ok()
    }

    /// The status file of `name` at the last fetched head, parsed once per content:
    /// `None` without a file, an error naming why it does not parse.
    fn parse_status(&mut self, name: &str) -> Result<Option<Status>> {
        let Some(bytes) = self.snapshot.files.get(&status_path(name)) else {
            return Ok(None);
        };
        if let Some(parsed) = self.memo.get(name).and_then(|m| m.parsed.get(bytes)) {
            return Ok(Some(parsed.clone()));
        }
        match std::str::from_utf8(bytes)
            .map_err(|e| e.to_string())
            .and_then(|t| Status::from_yaml(t).map_err(|e| e.to_string()))
        {
            Ok(s) => {
                let bytes = bytes.clone();
                self.memo
                    .entry(name.to_owned())
                    .or_default()
                    .parsed
                    .keep(bytes, s.clone());
                Ok(Some(s))
            }
            // Fail safe: without a readable state, touch nothing.
            Err(e) => {
                anyhow::bail!("status/{name}.yaml is unreadable ({e}); not reconciling this plan")
            }
        }
    }

    /// The status with the analysis counters gathered since the last commit (for live views).
    pub fn live_status(&self, plan: &str) -> Option<Status> {
        let file = self.status(plan);
        match self.memo.get(plan).and_then(|m| m.counters.as_ref()) {
            Some((based_on, counted)) if *based_on == file => Some(counted.clone()),
            _ => file,
        }
    }

    /// The settings' write-back, with the status layout picked for this head (see
    /// [`Self::status_layout`]) fixed, so every write of the pass stores status files in
    /// the same place and the snapshot knows where.
    fn write_back(&self) -> WriteBack {
        let status_layout = LayoutSetting::Fixed(self.status_layout());
        match &self.report.settings {
            Some(s) => WriteBack {
                status_layout,
                ..s.write_back.clone()
            },
            None => WriteBack {
                status_layout,
                ..WriteBack::default()
            },
        }
    }

    /// Where status files are stored at this head: the setting's layout, or for `auto`
    /// the one it picks by the number of plan files. Settings that do not read name no
    /// layout: the one in use is kept.
    fn status_layout(&self) -> StatusLayout {
        let now = if self.snapshot.sharded.is_empty() {
            StatusLayout::Flat
        } else {
            StatusLayout::Sharded
        };
        match &self.report.settings {
            Some(s) => s
                .write_back
                .status_layout
                .resolve(self.report.plan_files, now),
            None => now,
        }
    }

    /// One pass: fetch, take in any new commits, and reconcile every accepted plan.
    pub fn tick(&mut self, now: DateTime<Utc>) -> Result<TickReport> {
        let started = std::time::Instant::now();
        let head = self.src.fetch()?;
        // A new pack (a big push, `git gc`): libgit2 lets go of the packs it read (#21).
        if let Err(e) = self.src.forget_old_packs() {
            tracing::warn!(error = %format!("{e:#}"), "cannot reopen the clone; reading on");
        }
        if Some(head) != self.head {
            let t = std::time::Instant::now();
            self.advance(head, now)?;
            self.forget_deleted_plans();
            tracing::debug!(%head, ms = t.elapsed().as_millis() as u64, "new commits taken in");
            self.settle_status_layout();
        } else if self.layout_retry {
            self.settle_status_layout();
        }
        let mut report = TickReport {
            head: Some(head.to_string()),
            ..TickReport::default()
        };
        // Urgent plans first, each chunk of the rest committed as one, and the pass
        // yields when someone else pushed meanwhile (`order`).
        let cursor = self.cursor.take();
        let plans = self.pass_order(cursor.as_deref());
        let mut urgent_flushed = false;
        let mut chunk_start = std::time::Instant::now();
        let mut in_chunk = 0usize;
        // `run --shards`: a plan is reconciled only under a claim on its shard, held
        // until its status is committed (the chunk's flush).
        let mut claims = Vec::new();
        let mut new_flushed = false;
        let mut last_check = std::time::Instant::now();
        for (name, priority) in plans {
            if priority != order::Priority::Urgent && !urgent_flushed {
                urgent_flushed = true;
                self.flush(now, &mut report);
                claims.clear();
                chunk_start = std::time::Instant::now();
            }
            // New changes are committed (and started) before any routine plan is looked
            // at: a push reaches its target without waiting behind a chunk of routine work.
            if priority == order::Priority::Routine && !new_flushed {
                new_flushed = true;
                if in_chunk > 0 {
                    self.flush(now, &mut report);
                    claims.clear();
                    in_chunk = 0;
                    chunk_start = std::time::Instant::now();
                }
            }
            match self.claim(&name, now) {
                Some(claim) => claims.push(claim),
                None => continue,
            }
            self.reconcile_logged(&name, now, &mut report);
            self.fresh.remove(&name);
            if priority == order::Priority::Urgent {
                continue;
            }
            in_chunk += 1;
            if order::chunk_done(in_chunk, chunk_start.elapsed(), self.chunk) {
                self.flush(now, &mut report);
                claims.clear();
                in_chunk = 0;
                // A look at the remote is a fetch: once per CHUNK_TIME of pass, not per
                // chunk (10,000 idle plans are 100 chunks, and were 100 fetches a pass).
                if order::check_due(last_check.elapsed()) && {
                    last_check = std::time::Instant::now();
                    self.new_commits_waiting()
                } {
                    tracing::debug!(after = %name, "new commits: this pass yields to the next");
                    report.yielded = true;
                    self.cursor = match priority {
                        order::Priority::Routine => Some(name),
                        _ => cursor,
                    };
                    break;
                }
                chunk_start = std::time::Instant::now();
            }
        }
        self.flush(now, &mut report);
        drop(claims);
        tracing::debug!(
            ms = started.elapsed().as_millis() as u64,
            transitions = report.transitions,
            yielded = report.yielded,
            "pass done"
        );
        Ok(report)
    }

    /// Every accepted plan with its priority, in the order of this pass.
    fn pass_order(&self, cursor: Option<&str>) -> Vec<(String, order::Priority)> {
        // Only a plan that changed, has commands or is rolling back can be more than
        // routine: those few are looked up, the rest (10,000 idle plans) cost a clone of
        // their name (three map look-ups each were 2.3 ms of every pass, #21).
        let rolling_back: BTreeSet<&str> = self
            .memo
            .iter()
            .filter(|(_, m)| m.rolling_back)
            .map(|(n, _)| n.as_str())
            .collect();
        let plans = self
            .report
            .accepted
            .iter()
            .map(|(name, pp)| {
                let changed = self.fresh.contains(name);
                let commands = self.commands.get(name);
                let rolling_back = rolling_back.contains(name.as_str());
                if !changed && commands.is_none_or(Vec::is_empty) && !rolling_back {
                    return (name.clone(), order::Priority::Routine);
                }
                let commands: Vec<Command> = commands
                    .map(|c| c.iter().map(|(_, c)| *c).collect())
                    .unwrap_or_default();
                // Only a changed plan needs its status read to be ordered.
                let status = changed.then(|| self.live_status(name)).flatten();
                let seen = order::Seen {
                    artifact: &pp.plan.artifact,
                    status: status.as_ref(),
                    changed,
                    commands: &commands,
                    rolling_back,
                };
                (name.clone(), order::priority(&seen))
            })
            .collect();
        order::order(plans, cursor)
    }

    /// Whether someone else pushed since this pass's head (rollgate's own commits aside).
    /// Right after the chunk's commit was pushed, the branch was that commit, so its
    /// first-parent history tells without a fetch (a compare-and-swap push lands only on
    /// the head it was made on, which the writer had fetched): a fetch per chunk cost
    /// as much as the chunk's own push. A push after ours is seen after the next chunk.
    fn new_commits_waiting(&mut self) -> bool {
        let head = match self.pushed.take() {
            Some(pushed) => pushed,
            None => match self.src.fetch() {
                Ok(head) => head,
                Err(_) => return false,
            },
        };
        if Some(head) == self.head {
            return false;
        }
        let Ok(commits) = self.src.commits_between(self.head, head, HISTORY_LIMIT) else {
            return false;
        };
        // Only what rollgate reads makes a pass yield: a plan, setting, policy or status
        // change, or a command (which changes no file). Against humans pushing other files
        // all the time, every pass had yielded after its first chunk.
        if commits.iter().any(|c| !c.is_rollgate() && self.is_read(c)) {
            return true;
        }
        // Nothing rollgate reads changed since the pass's head (rollgate's own commits
        // included: another replica's status commit is not skipped): the head moves on
        // with the snapshot as it is, so this pass's commits take their first steps.
        if self.head.is_some_and(|h| self.none_read(h, &commits)) {
            tracing::debug!(%head, commits = commits.len(), "new commits change nothing rollgate reads: the pass goes on");
            self.head = Some(head);
        }
        false
    }

    /// Whether `c` changes what rollgate reads (a watched path) or carries a command.
    fn is_read(&self, c: &CommitInfo) -> bool {
        c.trailer(crate::source::git::TRAILER_COMMAND).is_some() || self.src.touches_watched(c.id)
    }

    /// Whether `commits` (first-parent, oldest first) follow `from` and none is read.
    fn none_read(&self, from: Oid, commits: &[CommitInfo]) -> bool {
        commits
            .first()
            .is_some_and(|c| self.src.first_parent(c.id) == Some(from))
            && !commits.iter().any(|c| self.is_read(c))
    }

    /// Whether `to` follows `from` on the first-parent line by commits that change nothing
    /// rollgate reads and carry no command: the snapshot at `from` is the one at `to`.
    pub(super) fn nothing_read_changed(&self, from: Oid, to: Oid) -> bool {
        from == to
            || self
                .src
                .commits_between(Some(from), to, HISTORY_LIMIT)
                .is_ok_and(|commits| self.none_read(from, &commits))
    }

    /// Reconcile one plan in its span; an error is logged (once per cause) and counted.
    fn reconcile_logged(&mut self, name: &str, now: DateTime<Utc>, report: &mut TickReport) {
        let started = std::time::Instant::now();
        let t = crate::telemetry::global();
        // An idle plan (a finished rollout with nothing new) has nothing to decide, log or
        // read: one comparison, and no span, per plan and pass (10,000 of them).
        if self.is_idle(name) {
            t.reconciles
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            t.reconcile_took(started.elapsed());
            self.note_wakeup(name, None, report);
            return;
        }
        let span = tracing::info_span!("plan", plan = %name);
        let _enter = span.enter();
        let result = self.reconcile(name, now, report);
        t.reconciles
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        t.reconcile_took(started.elapsed());
        match result {
            Err(e) => {
                t.reconcile_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                report.errors += 1;
                let error = format!("{e:#}");
                if self.news(name, "reconcile", Some(&error)) {
                    tracing::warn!(%error, "reconcile failed; other plans go on");
                } else {
                    tracing::debug!(%error, "reconcile failed again");
                }
            }
            Ok(()) => {
                self.news(name, "reconcile", None);
            }
        }
        // A plan idle now (its rollout just finished) is neither held nor moving: its
        // status file is not parsed again.
        let live = if self.is_idle(name) {
            None
        } else {
            self.live_status(name)
        };
        self.note_wakeup(name, live.as_ref(), report);
    }

    /// Count `name` in the pass's report by its live status (`None`: idle): held on its
    /// target, and when its memo asks to be woken.
    fn note_wakeup(&self, name: &str, live: Option<&Status>, report: &mut TickReport) {
        if live.is_some_and(|s| {
            s.phase == Phase::Held
                && s.hold
                    .as_ref()
                    .is_some_and(|h| h.kind == crate::model::status::HoldKind::Target)
        }) {
            report.held_on_target += 1;
        }
        if let Some(w) = self.memo.get(name).and_then(|m| m.wakeup) {
            report.next_wakeup = Some(report.next_wakeup.map_or(w, |n| n.min(w)));
            let moving = live.is_some_and(|s| {
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

    /// A finished rollout seen before with the same plan and status and no command
    /// waiting: nothing to decide (the pass skips it).
    pub fn is_idle(&self, name: &str) -> bool {
        let Some(pp) = self.report.accepted.get(name) else {
            return false;
        };
        let status_bytes = self.snapshot.files.get(&status_path(name));
        let commands_waiting = self.commands.get(name).is_some_and(|c| !c.is_empty());
        self.memo
            .get(name)
            .and_then(|m| m.idle.as_ref())
            .is_some_and(|(seen_plan, seen_status)| {
                Arc::ptr_eq(seen_plan, pp)
                    && seen_status.as_ref() == status_bytes
                    && !commands_waiting
            })
    }

    fn reconcile(&mut self, name: &str, now: DateTime<Utc>, report: &mut TickReport) -> Result<()> {
        let Some(pp) = self.report.accepted.get(name).cloned() else {
            return Ok(());
        };
        let status_bytes = self.snapshot.files.get(&status_path(name));
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
        let file_status = self.parse_status(name)?;
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
                    .artifact_introduced(
                        self.plans_head.unwrap_or(head),
                        &pp.file,
                        &plan.artifact,
                        HISTORY_LIMIT,
                    )?
                    .unwrap_or(head)
                    .to_string()
            }
        };
        let health = match (&status, self.targets.get_mut(&plan.target)) {
            (_, None) => TargetHealth::Unreachable {
                reason: format!("no `{}` target is available in this daemon", plan.target),
            },
            (Some(s), Some(t)) => t.health(plan, &desired(plan, s)),
            (None, Some(_)) => TargetHealth::Healthy,
        };
        let measurements = match &status {
            Some(s) => self.measure(plan, s, now),
            None => Vec::new(),
        };
        let jobs = match &status {
            Some(s) => self.run_jobs(plan, s, &health, now),
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
            jobs,
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
        if let Some(s) = &status {
            self.stop_unwanted_jobs(plan, s, decision.status.as_ref(), now);
        }
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
            let memo = self.memo.entry(name.to_owned()).or_default();
            memo.idle = Some((pp, status_bytes));
            memo.parsed.clear();
        }
        Ok(())
    }

    /// Forget the memory of plans whose file is gone (deleted or renamed): a plan is
    /// remembered only while the head has it, accepted or not (#21).
    fn forget_deleted_plans(&mut self) {
        let rejected: BTreeSet<&str> = self
            .report
            .rejected
            .iter()
            .filter_map(|file| Path::new(file).file_stem().and_then(|s| s.to_str()))
            .collect();
        let exists =
            |name: &str| self.report.accepted.contains_key(name) || rejected.contains(name);
        let gone: Vec<String> = self
            .memo
            .keys()
            .chain(self.commands.keys())
            .filter(|n| !exists(n))
            .cloned()
            .collect();
        for name in gone {
            self.memo.remove(&name);
            self.commands.remove(&name);
        }
    }

    /// What the daemon remembers between passes besides Git: it grows with plans, never
    /// with finished rollouts or commits.
    pub fn remembered(&self) -> Remembered {
        Remembered {
            plans: self.memo.len(),
            commands: self.commands.values().map(Vec::len).sum(),
        }
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

    /// Allocate what this daemon keeps between passes again side by side, as it rests
    /// after a burst (`daemon::run`, before `memory::release`): the bytes (the head's
    /// files, the status texts its memos compare against: `memory::repack`), the plan
    /// parses (`memory::remake`) and the gate's status views (`GateCache::compact`).
    /// Nothing it decides on changes.
    pub fn compact(&mut self) {
        let mut bufs: Vec<&mut Vec<u8>> = self.snapshot.files.values_mut().collect();
        for memo in self.memo.values_mut() {
            if let Some((_, Some(status))) = &mut memo.idle {
                bufs.push(status);
            }
            bufs.extend(memo.parsed.0.iter_mut().map(|(bytes, _)| bytes));
        }
        crate::memory::repack(bufs);
        let plans = self.cache.plans();
        crate::memory::remake(plans, |successor| self.swap_plans(successor));
        self.cache.compact(&self.snapshot);
    }

    /// Give every holder of a plan parse (the gate's cache and report, the memos) its
    /// successor, where `successor` names one (`compact`).
    fn swap_plans(&mut self, successor: &dyn Fn(&Arc<ParsedPlan>) -> Option<Arc<ParsedPlan>>) {
        let swap = |p: &mut Arc<ParsedPlan>| crate::memory::take_successor(p, successor);
        self.cache.swap_plans(successor);
        self.report.accepted.values_mut().for_each(swap);
        for memo in self.memo.values_mut() {
            if let Some((p, _)) = &mut memo.idle {
                swap(p);
            }
            if let Some(f) = &mut memo.failure {
                swap(&mut f.plan);
            }
        }
    }

    /// Tick until nothing moves: every rollout finished or waiting on time or a human.
    pub fn run_until_idle(&mut self, max_ticks: usize) -> Result<Vec<TickReport>> {
        let mut reports = Vec::new();
        for _ in 0..max_ticks {
            let r = self.tick(Utc::now())?;
            let moved = r.transitions > 0 || r.reverts > 0 || r.yielded;
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
