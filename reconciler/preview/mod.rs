//! `rollgate plan`: what a change (base → head) would do, before it is merged.
//!
//! ```text
//!  base ──▶ rollgate.yaml, policies/, status/ ─┐ (trusted: the rules and the state)
//!  head ──▶ plans/ ────────────────────────────┴─▶ gate::check (touched plans) ─▶ verdicts
//!  base...head ──▶ touched plans (renames found), unified diffs
//!  accepted or not, each plan ──▶ engine::decide (what merging starts) + dry run (stages)
//! ```
//! Invariant: the settings, the policies and the statuses that judge a change are read
//! from base, never from the change, so a hostile pull request cannot weaken the rules
//! that judge it (its edits to them are shown, and take effect after the merge).
//! [`preview`] does the I/O; a [`Preview`] is a plain value, rendered deterministically
//! (`markdown`, `text`, JSON) given the `now` it was made with.
//!
//! One job over 600 lines, kept in one file: a pull request's preview: what the merge
//! would start, judged with base's rules.

mod dry_run;
mod render;
mod repo;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::engine::{self, Observation};
use crate::gate::{self, Change, GateContext, PolicyEngine};
use crate::model::plan::FirstRollout;
use crate::model::status::{Phase, Status};
use crate::model::{Code, Diagnostic, Plan, Settings, Severity};
use crate::source::{SETTINGS_FILE, Snapshot, is_plan_path};

pub use dry_run::{HORIZON_DAYS, Stage, StageKind, Walk};

/// The marker line a bot finds its own sticky comment by (the first line of `markdown`).
pub const MARKER: &str = "<!-- rollgate:preview -->";

/// What a change would do, plan by plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Preview {
    /// The base revision (full sha): its settings, policies and statuses judge the change.
    pub base: String,
    /// The head revision (full sha): its plans are judged.
    pub head: String,
    /// Where head forked from base; the change is what head adds since (`base...head`).
    pub merge_base: String,
    /// The time the policies and the dry run were evaluated at.
    #[serde(serialize_with = "ser_now")]
    pub now: DateTime<Utc>,
    /// Every plan file the change adds, modifies, deletes or renames, by path.
    pub plans: Vec<PlanPreview>,
    /// Files the change edits that are read from base only (`rollgate.yaml`,
    /// `policies/*`, `status/*`): shown, not used to judge.
    pub base_only_changes: Vec<String>,
}

/// One touched plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanPreview {
    /// The plan's name (its file name without `.yaml`).
    pub name: String,
    /// The path at head (at base for a deleted plan).
    pub path: String,
    /// The path at base, for a renamed plan.
    pub old_path: Option<String>,
    pub change: ChangeKind,
    pub verdict: Verdict,
    /// Errors and warnings, with file, line and column.
    pub diagnostics: Vec<Diagnostic>,
    /// The unified diff of the plan file (`git diff base...head -- <path>`).
    pub diff: String,
    /// The dry run; empty when the plan does not parse or was deleted.
    pub stages: Vec<Stage>,
    /// What merging the change does to this plan's rollout, in a sentence or two.
    pub effect: String,
    /// The artifact the plan names at head.
    pub artifact: Option<String>,
    /// The rollout would be fast-tracked (weight steps only, no windows).
    pub fast_track: bool,
    /// The rollout would deploy the artifact directly: a first rollout, no stable version.
    pub direct: bool,
    /// The plan's change windows, e.g. ``allow `* 9-16 * * MON-THU` (Europe/Berlin)``;
    /// `None` when always open.
    pub windows: Option<String>,
    /// For a plan with `promotedFrom`: whether the artifact succeeded in the source.
    pub promotion: Option<Promotion>,
}

/// How the change touches a plan file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
    Renamed,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Added => "added",
            ChangeKind::Modified => "modified",
            ChangeKind::Deleted => "deleted",
            ChangeKind::Renamed => "renamed",
        }
    }
}

/// The gate's verdict on one plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Verdict {
    /// Passes the schema and every policy (warnings allowed).
    Accepted,
    /// Fails the schema or a meaning check (YAML, fields, weights, references …).
    Rejected,
    /// A policy denies it (or the policies could not be evaluated: fail closed).
    Denied,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Accepted => "accepted",
            Verdict::Rejected => "rejected",
            Verdict::Denied => "denied by policy",
        }
    }

    pub fn passes(self) -> bool {
        self == Verdict::Accepted
    }
}

/// A promotion between environments (`spec.promotedFrom`), as base's statuses tell it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Promotion {
    /// The source plan.
    pub from: String,
    pub artifact: String,
    /// The artifact succeeded in the source (its `succeeded` history, or its stable).
    pub succeeded: bool,
    #[serde(serialize_with = "dry_run::ser_time")]
    pub succeeded_at: Option<DateTime<Utc>>,
    /// The source's phase at base; `None` when it has no status yet.
    pub source_phase: Option<String>,
}

/// The check run's conclusion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Conclusion {
    /// Every touched plan passes.
    Success,
    /// Some touched plan is rejected or denied.
    Failure,
    /// The change touches no plan.
    Neutral,
}

impl Conclusion {
    /// The word GitHub's check-run API takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Conclusion::Success => "success",
            Conclusion::Failure => "failure",
            Conclusion::Neutral => "neutral",
        }
    }
}

/// A check-run annotation (the fields of GitHub's API, which this serializes to): the
/// one annotation type, which the GitHub client sends as it is (`github::Annotation`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Annotation {
    pub path: String,
    pub start_line: u32,
    pub end_line: u32,
    /// Only with `start_line == end_line` (GitHub ignores columns across lines).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_column: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end_column: Option<u32>,
    #[serde(rename = "annotation_level")]
    pub level: AnnotationLevel,
    pub title: String,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AnnotationLevel {
    Failure,
    Warning,
    Notice,
}

impl Preview {
    /// The `status/` files the change edits: rollgate's alone, so the change fails.
    pub fn status_edits(&self) -> Vec<&String> {
        self.base_only_changes
            .iter()
            .filter(|f| f.starts_with("status/"))
            .collect()
    }

    pub fn conclusion(&self) -> Conclusion {
        if !self.status_edits().is_empty() {
            // The daemon ignores a status it did not write: merging would put Git and
            // what runs at odds, so the check fails.
            Conclusion::Failure
        } else if self.plans.is_empty() {
            Conclusion::Neutral
        } else if self.plans.iter().all(|p| p.verdict.passes()) {
            Conclusion::Success
        } else {
            Conclusion::Failure
        }
    }

    /// The sticky pull-request comment and check-run summary; starts with [`MARKER`].
    pub fn markdown(&self) -> String {
        render::markdown(self)
    }

    /// For a terminal.
    pub fn text(&self) -> String {
        render::text(self)
    }

    /// Every diagnostic as an annotation on the line of the file it names (another
    /// file's problem, e.g. base's `rollgate.yaml`, is put on the plan's first line),
    /// plus a notice on each base-only file the change edits.
    pub fn annotations(&self) -> Vec<Annotation> {
        let mut out = Vec::new();
        for p in &self.plans {
            for d in &p.diagnostics {
                out.push(annotation(p, d));
            }
        }
        for f in self.status_edits() {
            out.push(Annotation {
                path: f.clone(),
                start_line: 1,
                end_line: 1,
                start_column: None,
                end_column: None,
                level: AnnotationLevel::Failure,
                title: "rollgate: status is written by rollgate only".to_owned(),
                message: format!(
                    "{f} is rollgate's record of what runs; the daemon ignores a change to it that rollgate did not write. Use `rollgate promote|abort|retry` (or a revert of the plan) instead"
                ),
            });
        }
        for f in self
            .base_only_changes
            .iter()
            .filter(|f| !f.starts_with("status/"))
        {
            out.push(Annotation {
                path: f.clone(),
                start_line: 1,
                end_line: 1,
                start_column: None,
                end_column: None,
                level: AnnotationLevel::Notice,
                title: "rollgate: read from base".to_owned(),
                message: format!(
                    "{f} is read from the base revision: this change is judged with base's version, and the edit takes effect after the merge"
                ),
            });
        }
        out
    }
}

fn annotation(p: &PlanPreview, d: &Diagnostic) -> Annotation {
    let level = match d.severity {
        Severity::Error => AnnotationLevel::Failure,
        Severity::Warning => AnnotationLevel::Warning,
    };
    let mut message = d.message.clone();
    if let Some(help) = &d.help {
        message.push_str(&format!("\nhelp: {help}"));
    }
    // A plan file's own problem sits on its line; anything else on the plan's first line.
    let own = d.file == p.path || is_plan_path(&d.file);
    let (path, pos) = if own {
        (d.file.clone(), d.pos)
    } else {
        let place = match d.pos {
            Some(pos) => format!("{}:{}:{}", d.file, pos.line, pos.col),
            None => d.file.clone(),
        };
        message = format!("{place}: {message}");
        (p.path.clone(), None)
    };
    let line = pos.map_or(1, |p| p.line.max(1));
    let col = pos.map(|p| p.col.max(1));
    Annotation {
        path,
        start_line: line,
        end_line: line,
        start_column: col,
        end_column: col,
        level,
        title: format!(
            "{}[{}]",
            if d.is_error() { "error" } else { "warning" },
            d.code
        ),
        message,
    }
}

/// Preview the change from `base` to `head` in the repository at `repo` (bare or not;
/// revisions are anything Git resolves: a sha, a branch, `HEAD~1`), at `now`.
pub fn preview(repo: &Path, base: &str, head: &str, now: DateTime<Utc>) -> Result<Preview> {
    preview_with_labels(repo, base, head, now, &[])
}

/// [`preview`] of a change that carries labels (a pull request's), which policies see
/// as `input.change.labels` (e.g. `emergency` for the built-in `windows` policy).
pub fn preview_with_labels(
    repo: &Path,
    base: &str,
    head: &str,
    now: DateTime<Utc>,
    labels: &[String],
) -> Result<Preview> {
    let scratch = tempfile::Builder::new()
        .prefix("rollgate-preview-")
        .tempdir()
        .context("cannot create a scratch folder")?;
    let revs = repo::Revisions::open(repo, base, head, scratch.path())?;
    let base_snap = revs.snapshot(revs.base)?;
    let head_snap = revs.snapshot(revs.head)?;
    let (touched, changed) = revs.changes()?;
    let base_only_changes: Vec<String> = changed
        .iter()
        .filter(|p| *p == SETTINGS_FILE || p.starts_with("policies/") || p.starts_with("status/"))
        .cloned()
        .collect();

    // Judged: head's plans, everything else (settings, policies, statuses) from base.
    let judged = judged_snapshot(&base_snap, &head_snap);
    let policy = policy_engine(&base_snap, &scratch.path().join("policies"));
    let only: BTreeSet<String> = touched
        .iter()
        .filter(|t| t.kind != ChangeKind::Deleted)
        .map(|t| t.path.clone())
        .collect();
    let cx = GateContext {
        base: Some(&base_snap),
        change: Change {
            commit: Some(revs.head.to_string()),
            author: revs.head_author(),
            files: changed.clone(),
            labels: labels.to_vec(),
        },
        now,
        only: Some(only),
        namespaces: None,
    };
    let (report, policy_errors) = match &policy {
        Ok(engine) => (gate::check(&judged, &cx, Some(engine.as_ref())), Vec::new()),
        Err(d) => (gate::check(&judged, &cx, None), d.clone()),
    };
    let statuses = statuses(&base_snap);
    let head_sha = revs.head.to_string();
    let facts = Facts {
        settings: report.settings.as_ref(),
        statuses: &statuses,
        head_snap: &head_snap,
        base_snap: &base_snap,
        head: &head_sha,
        now,
    };

    let mut plans = Vec::with_capacity(touched.len());
    for t in &touched {
        let mut diagnostics: Vec<Diagnostic> = Vec::new();
        let mut rejected = false;
        if t.kind != ChangeKind::Deleted {
            diagnostics.extend(
                report
                    .diagnostics
                    .iter()
                    .filter(|d| d.file == t.path || d.is_error() && is_repo_wide(&d.file))
                    .cloned(),
            );
            rejected = report.rejected.contains(&t.path);
            if !policy_errors.is_empty() {
                diagnostics.extend(policy_errors.iter().cloned());
                rejected = true;
            }
        }
        // Deleting or renaming a plan another plan is promoted from breaks that plan.
        if let Some(gone) = removed_name(t) {
            let broken = collateral(&gone, &touched, &head_snap, &report.diagnostics);
            rejected |= !broken.is_empty();
            diagnostics.extend(broken);
        }
        crate::model::diagnostics::sort(&mut diagnostics);
        diagnostics.dedup();
        let verdict = if !rejected && !diagnostics.iter().any(Diagnostic::is_error) {
            Verdict::Accepted
        } else if diagnostics
            .iter()
            .any(|d| d.is_error() && matches!(d.code, Code::PolicyDenied | Code::PolicyError))
            || !policy_errors.is_empty()
        {
            Verdict::Denied
        } else {
            Verdict::Rejected
        };
        plans.push(plan_preview(t, verdict, diagnostics, &facts));
    }
    Ok(Preview {
        base: revs.base.to_string(),
        head: head_sha,
        merge_base: revs.merge_base.to_string(),
        now,
        plans,
        base_only_changes,
    })
}

/// Problems of the repository as a whole (base's settings, policies) reject every plan.
fn is_repo_wide(file: &str) -> bool {
    file == SETTINGS_FILE || file == "policies" || file.starts_with("policies/")
}

/// The snapshot the gate judges: head's plans over base's everything else.
fn judged_snapshot(base: &Snapshot, head: &Snapshot) -> Snapshot {
    let mut out = Snapshot::default();
    out.files.extend(
        base.files
            .iter()
            .filter(|(p, _)| !is_plan_path(p))
            .map(|(p, b)| (p.clone(), b.clone())),
    );
    out.files.extend(
        head.files
            .iter()
            .filter(|(p, _)| is_plan_path(p))
            .map(|(p, b)| (p.clone(), b.clone())),
    );
    out.refused.extend(
        base.refused
            .iter()
            .filter(|d| !is_plan_path(&d.file))
            .cloned(),
    );
    out.refused.extend(
        head.refused
            .iter()
            .filter(|d| is_plan_path(&d.file))
            .cloned(),
    );
    out
}

/// The Rego engine with the built-in policies and `snap`'s `policies/` files, written
/// to `dir` for the loader (diagnostics then name files `policies/<file>` when `dir`'s
/// last component is `policies`). `dir` is emptied first.
pub fn policy_engine(
    snap: &Snapshot,
    dir: &Path,
) -> Result<Box<dyn PolicyEngine>, Vec<Diagnostic>> {
    let io = |file: &str, e: std::io::Error| {
        vec![Diagnostic::error(file, None, Code::Io, e.to_string())]
    };
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| io("policies", e))?;
    for (path, bytes) in &snap.files {
        let Some(name) = path.strip_prefix("policies/") else {
            continue;
        };
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            continue;
        }
        std::fs::write(dir.join(name), bytes).map_err(|e| io(path, e))?;
    }
    Ok(Box::new(gate::Rego::new(crate::policy::PolicySet::load(
        Some(dir),
    )?)))
}

/// Base's statuses by plan name (a status that does not parse is left out; the gate
/// reports it).
fn statuses(snap: &Snapshot) -> BTreeMap<String, Status> {
    snap.status_files()
        .filter_map(|(_, bytes)| Status::from_yaml(std::str::from_utf8(bytes).ok()?).ok())
        .map(|s| (s.plan.clone(), s))
        .collect()
}

/// The name a deleted or renamed plan no longer has.
fn removed_name(t: &repo::Touched) -> Option<String> {
    let old = match t.kind {
        ChangeKind::Deleted => &t.path,
        ChangeKind::Renamed => t.old_path.as_ref()?,
        ChangeKind::Added | ChangeKind::Modified => return None,
    };
    Some(plan_name(old))
}

fn plan_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.strip_suffix(".yaml")
        .or_else(|| file.strip_suffix(".yml"))
        .unwrap_or(file)
        .to_owned()
}

/// The `unknown-plan` errors of untouched plans at head that are promoted from `gone`.
fn collateral(
    gone: &str,
    touched: &[repo::Touched],
    head: &Snapshot,
    diags: &[Diagnostic],
) -> Vec<Diagnostic> {
    let touched: BTreeSet<&str> = touched.iter().map(|t| t.path.as_str()).collect();
    let from_gone: BTreeSet<&str> = head
        .plan_files()
        .filter(|(p, _)| !touched.contains(p.as_str()))
        .filter(|(p, bytes)| {
            let Ok(text) = std::str::from_utf8(bytes) else {
                return false;
            };
            crate::model::yaml::parse(p, text).ok().is_some_and(|n| {
                n.to_json()
                    .pointer("/spec/promotedFrom")
                    .and_then(serde_json::Value::as_str)
                    == Some(gone)
            })
        })
        .map(|(p, _)| p.as_str())
        .collect();
    diags
        .iter()
        .filter(|d| d.code == Code::UnknownPlan && from_gone.contains(d.file.as_str()))
        .cloned()
        .collect()
}

/// What `plan_preview` needs besides the touched file.
struct Facts<'a> {
    settings: Option<&'a Settings>,
    statuses: &'a BTreeMap<String, Status>,
    head_snap: &'a Snapshot,
    base_snap: &'a Snapshot,
    head: &'a str,
    now: DateTime<Utc>,
}

fn plan_preview(
    t: &repo::Touched,
    verdict: Verdict,
    diagnostics: Vec<Diagnostic>,
    f: &Facts<'_>,
) -> PlanPreview {
    let name = plan_name(&t.path);
    let mut out = PlanPreview {
        name: name.clone(),
        path: t.path.clone(),
        old_path: t.old_path.clone(),
        change: t.kind,
        verdict,
        diagnostics,
        diff: t.diff.clone(),
        stages: Vec::new(),
        effect: String::new(),
        artifact: None,
        fast_track: false,
        direct: false,
        windows: None,
        promotion: None,
    };
    if t.kind == ChangeKind::Deleted {
        out.effect = stopped(&name, &t.path, f);
        return out;
    }
    // The plan as the gate parsed it (with base's settings), for the dry run even when a
    // policy denies it; a plan that does not parse has no stages.
    let parsed = f
        .head_snap
        .files
        .get(&t.path)
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|text| crate::model::validate::parse_plan(&t.path, text, f.settings).ok());
    let Some(parsed) = parsed else {
        out.effect =
            "the plan is invalid: rollgate does not act on it until it is fixed (what runs stays as it is)".to_owned();
        return out;
    };
    let plan = &parsed.plan;
    out.artifact = Some(plan.artifact.clone());
    out.windows = describe_windows(plan);
    out.promotion = plan
        .promoted_from
        .as_ref()
        .map(|from| promotion(from, &plan.artifact, f.statuses.get(from)));
    let (effect, walk) = effect(plan, f.statuses.get(&plan.name), f.head, f.now);
    out.fast_track = walk == Walk::FastTrack;
    out.direct = walk == Walk::Direct;
    out.stages = dry_run::stages(plan, walk, f.now);
    out.effect = if verdict.passes() {
        effect
    } else {
        format!(
            "if merged as it is, rollgate does not act on this plan while it is {}: what runs stays as it is",
            verdict.as_str()
        )
    };
    if t.kind == ChangeKind::Renamed
        && let Some(old) = &t.old_path
    {
        out.effect
            .push_str(&format!("; {}", stopped(&plan_name(old), old, f)));
    }
    out
}

/// What merging does to the rollout of `plan`, given base's status: the engine decides.
/// Returns the sentence and how the stages below are walked (the rollout that starts, or
/// the next one).
fn effect(plan: &Plan, before: Option<&Status>, head: &str, now: DateTime<Utc>) -> (String, Walk) {
    let d = engine::decide(plan, before, &Observation::quiet(head), now);
    let after = d.status.as_ref().or(before);
    let artifact = &plan.artifact;
    let Some(after) = after else {
        return (format!("no rollout of `{artifact}` starts"), Walk::Steps);
    };
    // The next rollout, when none starts: a first one (nothing stable) goes as the plan says.
    let next_is_first = after.stable.is_none()
        && !after.phase.is_in_flight()
        && plan.first_rollout == FirstRollout::Direct;
    let next = if (after.direct && after.phase.is_in_flight()) || next_is_first {
        Walk::Direct
    } else {
        Walk::Steps
    };
    // A rollout starts: pending, or (a first one) already deploying directly.
    let fresh = |s: &Status| {
        s.candidate == *artifact
            && (s.phase == Phase::Pending || (s.direct && s.phase.is_in_flight()))
    };
    let begins = fresh(after) && before.is_none_or(|b| !fresh(b));
    if begins {
        let mut s = match before {
            None => format!("first rollout of `{artifact}`"),
            Some(b) => match &b.stable {
                Some(stable) => format!("rollout of `{artifact}`, replacing stable `{stable}`"),
                None => format!("rollout of `{artifact}`, with no stable version"),
            },
        };
        if let Some(b) = before.filter(|b| !b.phase.is_terminal() && b.candidate != *artifact) {
            s.push_str(&format!(
                "; the rollout of `{}` in flight ({} at {}%) is rolled back first",
                b.candidate, b.phase, b.weight
            ));
        }
        if after.fast_track {
            s.push_str(
                "; fast-tracked (stable within the rollback window): weight steps only, no analysis, pauses or windows",
            );
        }
        if after.direct {
            s.push_str(
                ": no stable version to compare with, so it is deployed directly at 100% (no steps, no analysis; `firstRollout: steps` walks the steps instead)",
            );
            if after.phase == Phase::Held {
                let why = after.hold.as_ref().map_or("", |h| h.reason.as_str());
                s.push_str(&format!("; held first: {why}"));
            }
        } else if after.stable.is_none() {
            s.push_str(
                ": no stable version, and `firstRollout: steps` walks the steps anyway (the other share of traffic has no version to go to; checks against a baseline are skipped)",
            );
        }
        let walk = if after.fast_track {
            Walk::FastTrack
        } else if after.direct {
            Walk::Direct
        } else {
            Walk::Steps
        };
        return (s, walk);
    }
    match before {
        Some(b) if after.phase == Phase::RollingBack && b.phase != Phase::RollingBack => (
            format!(
                "a human revert: the rollout of `{}` in flight ({} at {}%) is rolled back to `{artifact}`",
                b.candidate, b.phase, b.weight
            ),
            next,
        ),
        Some(b) if b.phase.is_in_flight() && b.candidate == *artifact && b.direct => (
            format!(
                "no new rollout: the first rollout of `{artifact}`, deployed directly, goes on ({})",
                b.phase
            ),
            next,
        ),
        Some(b) if b.phase.is_in_flight() && b.candidate == *artifact => (
            format!(
                "no new rollout: the rollout of `{artifact}` in flight ({} at step {}) goes on with these steps",
                b.phase,
                b.step + 1
            ),
            next,
        ),
        Some(b) if b.stable.as_deref() == Some(artifact.as_str()) => (
            format!(
                "no rollout: `{artifact}` is already stable; the stages below apply to the next artifact"
            ),
            next,
        ),
        _ => (
            format!(
                "no rollout of `{artifact}` starts; the stages below apply to the next artifact"
            ),
            next,
        ),
    }
}

/// What happens to a plan that disappears: nothing is undone.
fn stopped(name: &str, path: &str, f: &Facts<'_>) -> String {
    let target = f
        .base_snap
        .files
        .get(path)
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|t| crate::model::yaml::parse(path, t).ok())
        .and_then(|n| {
            n.to_json()
                .pointer("/spec/target")
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        });
    let status = crate::writeback::messages::status_path(name);
    let mut s = format!(
        "rollgate stops reconciling `{name}`: nothing is rolled back or removed{}, and `{status}` stays in Git",
        target
            .map(|t| format!(" on target `{t}`"))
            .unwrap_or_default()
    );
    if let Some(st) = f.statuses.get(name) {
        if st.phase.is_in_flight() {
            s.push_str(&format!(
                "; its rollout of `{}` is left where it is ({} at {}%)",
                st.candidate, st.phase, st.weight
            ));
        } else if let Some(stable) = &st.stable {
            s.push_str(&format!("; `{stable}` keeps running"));
        }
    }
    s
}

fn promotion(from: &str, artifact: &str, source: Option<&Status>) -> Promotion {
    let run = source.and_then(|s| s.succeeded.iter().rev().find(|x| x.artifact == artifact));
    let stable = source.is_some_and(|s| s.stable.as_deref() == Some(artifact));
    Promotion {
        from: from.to_owned(),
        artifact: artifact.to_owned(),
        succeeded: run.is_some() || stable,
        succeeded_at: run.map(|r| r.at),
        source_phase: source.map(|s| s.phase.as_str().to_owned()),
    }
}

fn describe_windows(plan: &Plan) -> Option<String> {
    let w = &plan.windows;
    if w.allow.is_empty() && w.deny.is_empty() {
        return None;
    }
    let list = |v: &[crate::model::window::CronExpr]| {
        v.iter()
            .map(|c| format!("`{}`", c.text))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut parts = Vec::new();
    if !w.allow.is_empty() {
        parts.push(format!("allow {}", list(&w.allow)));
    }
    if !w.deny.is_empty() {
        parts.push(format!("deny {}", list(&w.deny)));
    }
    Some(format!(
        "{} ({})",
        parts.join("; "),
        w.timezone.map_or("UTC", |tz| tz.name())
    ))
}

fn ser_now<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&dry_run::rfc3339(*t))
}
