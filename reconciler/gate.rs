//! The gate every revision passes before it may touch a target: schema, then policy.
//!
//! ```text
//!   Snapshot ──parse──▶ settings ──▶ plans (each: YAML → schema → meaning)
//!                                      │ cross-check (duplicates, promotedFrom)
//!                                      ▼
//!                                policy (Rego, per plan)  ──▶  GateReport
//! ```
//! Invariant (safety 2 and 3): a plan with any error-level diagnostic is in
//! `rejected`, never in `accepted`; one bad plan never hides the others.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::model::status::Status;
use crate::model::validate::{self, ParsedPlan};
use crate::model::{Code, Diagnostic, Pos, Settings, diagnostics};
use crate::source::{SETTINGS_FILE, Snapshot};

mod patch;

pub use crate::policy::{Finding, PolicyOutcome as Findings, Prepared};

/// The extension point for policy-as-code. Implementations must be deterministic for a
/// given input and bound their own running time.
pub trait PolicyEngine: Send {
    /// The parts of the input every plan of one revision shares (`settings`,
    /// `change`, `now` in `shared`; `statuses` prepared by the gate, which keeps each
    /// status file's view between revisions), converted once rather than once per plan.
    fn set_shared(&mut self, shared: &Value, statuses: &Prepared);
    /// Evaluate one plan's input, merged over the shared parts.
    fn evaluate(&mut self, input: &PolicyInput<'_>) -> Result<Findings, String>;
    /// An independent copy for another worker thread.
    fn fork(&self) -> Box<dyn PolicyEngine>;
}

/// What we know about the change being checked (for `input.change`).
#[derive(Debug, Clone, Default)]
pub struct Change {
    pub commit: Option<String>,
    pub author: Option<String>,
    pub files: Vec<String>,
    pub labels: Vec<String>,
}

#[derive(Debug, Default)]
pub struct GateReport {
    pub settings: Option<Settings>,
    /// Plans that passed schema and policy, by plan name.
    pub accepted: BTreeMap<String, Arc<ParsedPlan>>,
    /// Files of plans that failed, with why in `diagnostics`.
    pub rejected: BTreeSet<String>,
    /// Every diagnostic, errors and warnings, sorted by file and place.
    pub diagnostics: Vec<Diagnostic>,
    pub plan_files: usize,
    /// Which `check_into` made this report (0: none, or changed since): the cache
    /// patches only the report it made last.
    stamp: u64,
}

impl GateReport {
    pub fn errors(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }

    /// Fail closed on `errors` (the policies do not load): every plan is rejected, and
    /// the errors said. The report is no longer what the gate made, so the next
    /// `check_into` makes it whole.
    pub fn fail_closed(&mut self, errors: &[Diagnostic]) {
        let all = std::mem::take(&mut self.accepted);
        self.rejected
            .extend(all.into_values().map(|p| p.file.clone()));
        self.diagnostics.extend(errors.iter().cloned());
        self.stamp = 0;
    }
}

/// Everything the gate needs besides the snapshot.
#[derive(Debug)]
pub struct GateContext<'a> {
    pub base: Option<&'a Snapshot>,
    pub change: Change,
    pub now: DateTime<Utc>,
    /// Check only these plan files (others are still parsed for cross-checks); `None`: all.
    pub only: Option<BTreeSet<String>>,
    /// The namespaces the operator lets rollgate touch (`run --namespaces`); `None`: as
    /// the settings say. Kubernetes targets' lists are narrowed to it before any plan is
    /// checked, so a plan for another namespace is rejected here, never at run time.
    pub namespaces: Option<Vec<String>>,
}

/// Narrow every Kubernetes target's namespaces to the operator's `allowed`.
pub fn narrow_namespaces(settings: &mut crate::model::Settings, allowed: Option<&[String]>) {
    let Some(allowed) = allowed else { return };
    for t in settings.targets.values_mut() {
        if let crate::model::settings::Target::Kubernetes { namespaces, .. } = t {
            *namespaces = Some(match namespaces.take() {
                Some(own) => own.into_iter().filter(|n| allowed.contains(n)).collect(),
                None => allowed.to_vec(),
            });
        }
    }
}

/// The production implementation: the Rego policies of `crate::policy`.
#[derive(Debug, Clone)]
pub struct Rego {
    set: crate::policy::PolicySet,
    shared: Option<std::sync::Arc<crate::policy::SharedInput>>,
}

impl Rego {
    pub fn new(set: crate::policy::PolicySet) -> Self {
        Self { set, shared: None }
    }
}

impl PolicyEngine for Rego {
    fn set_shared(&mut self, shared: &Value, statuses: &Prepared) {
        self.shared = Some(std::sync::Arc::new(
            crate::policy::SharedInput::new(shared).with("statuses", statuses),
        ));
    }

    fn evaluate(&mut self, input: &PolicyInput<'_>) -> Result<Findings, String> {
        let fields = input.fields();
        let result = match &self.shared {
            Some(shared) => self.set.evaluate_fields(shared, &fields),
            None => self
                .set
                .evaluate_fields(&crate::policy::SharedInput::default(), &fields),
        };
        result.map_err(|e| e.to_string())
    }

    fn fork(&self) -> Box<dyn PolicyEngine> {
        Box::new(self.clone())
    }
}

impl std::fmt::Debug for dyn PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PolicyEngine")
    }
}

/// Run the gate over a snapshot. `policy` is `None` to check schema only.
pub fn check(
    snap: &Snapshot,
    cx: &GateContext<'_>,
    policy: Option<&dyn PolicyEngine>,
) -> GateReport {
    check_with(snap, cx, policy, &mut GateCache::default())
}

/// Parse and policy results kept between revisions, so a new commit costs what it
/// changed, not what the repository holds. Invalidate with the paths a diff names.
#[derive(Debug, Default)]
pub struct GateCache {
    parsed: HashMap<String, Result<Arc<ParsedPlan>, Vec<Diagnostic>>>,
    findings: HashMap<String, Result<Findings, String>>,
    /// Each status file's policy view (`status_doc`) by path, or why it does not parse:
    /// a plan change re-reads only the status files that changed, not all of them.
    statuses: StatusViews,
    /// `input.statuses` put together from `statuses`: a plan change in a 10,000-plan
    /// repository had copied and converted every view again. Kept up to date by
    /// patching in the views of `status_changed` (a status commit changes one).
    statuses_input: Option<Prepared>,
    /// Status paths whose view came, went or changed since `statuses_input` was put
    /// together or patched.
    status_changed: BTreeSet<String>,
    /// A view whose plan is not the one its path names (`status/<plan>.yaml`): then two
    /// files may claim a key, and `input.statuses` is put together whole, as before.
    status_misnamed: bool,
    /// What the cross-plan checks read of each plan that parsed, by file, and their
    /// diagnostics over it (`None`: to compute). A plan whose content changes keeps its
    /// name, so a change does not cross-check 10,000 plans again.
    cross_keys: HashMap<String, CrossKey>,
    cross: Option<Vec<Diagnostic>>,
    /// The report `check_into` made last, and what it was made with (`patch`).
    made: Option<patch::Basis>,
    /// Plan and status paths changed since that report, each with the plan name its
    /// parse declared then (`None`: it did not parse, or was not there).
    dirty: HashMap<String, Option<String>>,
}

/// What `validate::cross_check` reads of one plan: its name and `promotedFrom`, and
/// where each is written.
type CrossKey = (String, Option<Pos>, Option<String>, Option<Pos>);

fn cross_key(p: &ParsedPlan) -> CrossKey {
    (
        p.plan.name.clone(),
        p.name_pos,
        p.plan.promoted_from.clone(),
        p.promoted_from_pos,
    )
}

/// The plan a status path names (`status/<plan>.yaml`), if it has that shape.
fn status_path_plan(path: &str) -> Option<&str> {
    path.strip_prefix("status/")?
        .strip_suffix(".yaml")
        .filter(|p| !p.contains('/'))
}

/// Each status file's policy view (its plan and `status_doc`, prepared for the engine)
/// by path, or why it does not parse.
type StatusViews = HashMap<String, Result<(String, Prepared), String>>;

impl GateCache {
    /// Parse `files` (path, content) on `workers` threads and keep each parse. With
    /// `judge`, each plan it may judge is judged in the same step, while its document
    /// (`input.plan`) is at hand: the document is dropped there, not kept with the parse
    /// (kept, documents were 9.2 of the daemon's 25 MiB of heap with 1,000 plans, and
    /// dropped only after the whole report, the holes they left among the parses kept
    /// the pages: #21). Returns those findings by file; the caller keeps the ones of
    /// plans the check goes on to judge (not of plans the cross-plan checks reject:
    /// those are judged once they pass, on the statuses of then).
    fn parse(
        &mut self,
        files: &[(&String, &Vec<u8>)],
        settings: Option<&Settings>,
        workers: usize,
        judge: Option<&Judge<'_>>,
    ) -> HashMap<String, Result<Findings, String>> {
        let engines = (0..workers)
            .map(|_| judge.map(|j| j.engine.fork()))
            .collect();
        let shared = judge.map(|j| (&j.shared, j.only));
        let fresh = parallel_map(files, engines, |engine, (file, bytes)| {
            let (plan, doc) = parse_one(file, bytes, settings)?;
            let findings = match (engine, shared) {
                (Some(engine), Some((shared, only))) if may_judge(only, file) => {
                    Some(engine.evaluate(&policy_input(file, &plan, &doc, shared)))
                }
                _ => None,
            };
            Ok((plan, findings))
        });
        let mut judged = HashMap::new();
        for ((file, _), result) in files.iter().zip(fresh) {
            let result = result.map(|(plan, findings)| {
                if let Some(findings) = findings {
                    judged.insert((*file).clone(), findings);
                }
                Arc::new(plan)
            });
            self.take_parsed(file, result);
        }
        judged
    }

    /// Every plan parse kept, once each.
    pub fn plans(&self) -> Vec<Arc<ParsedPlan>> {
        self.parsed
            .values()
            .filter_map(|r| r.as_ref().ok().cloned())
            .collect()
    }

    /// Replace each plan parse kept by its successor, where `successor` names one
    /// (`memory::remake`: the same parse, allocated elsewhere).
    pub fn swap_plans(&mut self, successor: &dyn Fn(&Arc<ParsedPlan>) -> Option<Arc<ParsedPlan>>) {
        for p in self.parsed.values_mut().filter_map(|r| r.as_mut().ok()) {
            crate::memory::take_successor(p, successor);
        }
    }

    /// Make the status files' policy views again side by side (`memory::remake_each`),
    /// and `input.statuses` from them: the views a burst of status commits made sit
    /// among the blocks it freed (#21). Called at rest (`Reconciler::compact`) with the
    /// daemon's snapshot: a status file changed since the last check has no view yet
    /// and is left out here, and the next check patches it in (`status_changed`), as it
    /// would have.
    pub fn compact(&mut self, snap: &Snapshot) {
        // `input.statuses` shares the views: dropped first, so the old ones are freed.
        let had_input = self.statuses_input.take().is_some();
        let views: Vec<&mut (String, Prepared)> = self
            .statuses
            .values_mut()
            .filter_map(|v| v.as_mut().ok())
            .collect();
        crate::memory::remake_each(views, |(plan, doc)| (plan.clone(), doc.made_again()));
        if had_input {
            self.statuses_input = Some(status_docs(snap, &self.statuses));
        }
    }

    /// Keep `file`'s parse; its cross-plan key changing (or going) means the
    /// cross-plan checks are to compute again.
    fn take_parsed(&mut self, file: &str, result: Result<Arc<ParsedPlan>, Vec<Diagnostic>>) {
        match result.as_ref().ok().map(|p| cross_key(p)) {
            Some(key) => {
                if self.cross_keys.get(file) != Some(&key) {
                    self.cross_keys.insert(file.to_owned(), key);
                    self.cross = None;
                }
            }
            None => {
                if self.cross_keys.remove(file).is_some() {
                    self.cross = None;
                }
            }
        }
        self.parsed.insert(file.to_owned(), result);
    }

    /// Forget what `changed` (repo-relative paths) may have changed. Settings or
    /// policies changing invalidates everything.
    pub fn invalidate(&mut self, changed: &[String]) {
        if self.made.is_some() {
            for p in changed {
                let name = self.parsed.get(p).and_then(|r| r.as_ref().ok());
                let name = name.map(|pp| pp.plan.name.clone());
                // The first name noted is the one in the report.
                self.dirty.entry(p.clone()).or_insert(name);
            }
            // Too many to patch: the next report is made whole, and nothing more is noted.
            if self.dirty.len() > patch::MAX_PATHS {
                self.made = None;
                self.dirty.clear();
            }
        }
        for p in changed {
            // Noted only while there is an `input.statuses` to patch (else the set
            // would grow with every path ever changed).
            if (self.statuses.remove(p).is_some() || p.starts_with("status/"))
                && self.statuses_input.is_some()
            {
                self.status_changed.insert(p.clone());
            }
        }
        if changed
            .iter()
            .any(|p| p == SETTINGS_FILE || p.starts_with("policies/"))
        {
            self.parsed.clear();
            self.findings.clear();
            self.made = None;
            self.dirty.clear();
            return;
        }
        for p in changed {
            self.parsed.remove(p);
            self.findings.remove(p);
        }
    }
}

/// [`check`], reusing and refreshing `cache`.
pub fn check_with(
    snap: &Snapshot,
    cx: &GateContext<'_>,
    policy: Option<&dyn PolicyEngine>,
    cache: &mut GateCache,
) -> GateReport {
    check_on(snap, cx, policy, cache, None)
}

/// [`check_with`] into `report`, the report this function made last with `cache` (or
/// any other: it is then made whole). When only plan and status files changed since,
/// and few (`patch::MAX_PATHS`), only their entries are made again: with 10,000 plans a
/// whole report is 10 ms of every reaction to a push, its patch well under one (#21).
/// The result is the one [`check_with`] gives; `report` must not have been changed in
/// between (a changed report is not patched: see `GateReport::stamp`).
pub fn check_into(
    snap: &Snapshot,
    cx: &GateContext<'_>,
    policy: Option<&dyn PolicyEngine>,
    cache: &mut GateCache,
    report: &mut GateReport,
) -> Made {
    let made = if patch::patch(snap, cx, policy, cache, report) {
        Made::Patched
    } else {
        *report = check_on(snap, cx, policy, cache, None);
        cache.made = patch::Basis::of(cx, policy);
        Made::Whole
    };
    report.stamp = cache.made.as_ref().map_or(0, |m| m.stamp);
    made
}

/// How [`check_into`] made its report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Made {
    /// Only the changed files' entries were made again.
    Patched,
    /// Every entry was made (settings or policies changed, too many files, …).
    Whole,
}

/// [`check_with`] on exactly `threads` worker threads (`None`: one per core, at most
/// one per 64 plans). The report is the same for any number: tests and benchmarks
/// compare them.
pub fn check_on(
    snap: &Snapshot,
    cx: &GateContext<'_>,
    policy: Option<&dyn PolicyEngine>,
    cache: &mut GateCache,
    threads: Option<std::num::NonZeroUsize>,
) -> GateReport {
    let workers_for = |n: usize| threads.map_or_else(|| workers(n), std::num::NonZeroUsize::get);
    cache.made = None;
    cache.dirty.clear();
    let mut report = GateReport {
        diagnostics: snap.refused.clone(),
        ..Default::default()
    };
    for d in &snap.refused {
        if crate::source::is_plan_path(&d.file) {
            report.rejected.insert(d.file.clone());
        }
    }
    let settings_doc = match snap.files.get(SETTINGS_FILE) {
        None => {
            report.diagnostics.push(
                Diagnostic::error(
                    SETTINGS_FILE,
                    None,
                    Code::Io,
                    "no rollgate.yaml at the repository root",
                )
                .with_help("it names the targets and metrics sources plans refer to"),
            );
            Value::Null
        }
        Some(bytes) => match std::str::from_utf8(bytes) {
            Err(_) => {
                report.diagnostics.push(Diagnostic::error(
                    SETTINGS_FILE,
                    None,
                    Code::YamlSyntax,
                    "file is not UTF-8 text",
                ));
                Value::Null
            }
            Ok(text) => match validate::parse_settings(SETTINGS_FILE, text) {
                Ok(mut s) => {
                    narrow_namespaces(&mut s, cx.namespaces.as_deref());
                    report.settings = Some(s);
                    crate::model::yaml::parse(SETTINGS_FILE, text)
                        .map(|n| n.to_json())
                        .unwrap_or(Value::Null)
                }
                Err(d) => {
                    report.diagnostics.extend(d);
                    Value::Null
                }
            },
        },
    };

    // Parse every plan, in parallel: validation is CPU-bound and independent per file.
    let files: Vec<(&String, &Vec<u8>)> = snap.plan_files().collect();
    report.plan_files = files.len()
        + snap
            .refused
            .iter()
            .filter(|d| crate::source::is_plan_path(&d.file))
            .count();
    let missing: Vec<(&String, &Vec<u8>)> = files
        .iter()
        .copied()
        .filter(|(f, _)| !cache.parsed.contains_key(*f))
        .collect();
    // Every status file is checked on every pass (a cached view per path costs a look-up);
    // the views are put together only when policies run.
    let (diags, stale) = refresh_statuses(snap, cache);
    report.diagnostics.extend(diags);
    if stale {
        cache.statuses_input = None;
    }
    // The plans to parse are judged as they are parsed (a plan the cross-plan checks
    // reject then was judged for nothing: rare, and cheaper than parsing it again).
    let mut judging = match (policy, &report.settings) {
        (Some(engine), Some(_)) if missing.iter().any(|(f, _)| may_judge(cx.only.as_ref(), f)) => {
            Some(Judge::new(snap, cx, engine, cache, settings_doc.clone()))
        }
        _ => None,
    };
    let mut judged = cache.parse(
        &missing,
        report.settings.as_ref(),
        workers_for(missing.len()),
        judging.as_ref(),
    );
    // Every plan file has its entry now: as many entries as files means none is stale
    // (a look-up per plan, 10,000 of them, is not free).
    if cache.parsed.len() > files.len() {
        cache.parsed.retain(|f, _| snap.files.contains_key(f));
    }
    let mut ok: BTreeMap<String, Arc<ParsedPlan>> = BTreeMap::new();
    for (file, _) in &files {
        match cache.parsed.get(*file) {
            Some(Ok(p)) => {
                ok.insert((*file).clone(), p.clone());
            }
            Some(Err(d)) => {
                report.rejected.insert((*file).clone());
                report.diagnostics.extend(d.iter().cloned());
            }
            None => {}
        }
    }
    // Every plan that parsed has its key, taken when it was parsed: more keys than such
    // plans means some file is gone.
    if cache.cross_keys.len() != ok.len() {
        cache.cross_keys.retain(|f, _| ok.contains_key(f));
        cache.cross = None;
    }
    let cross = match &cache.cross {
        Some(cross) => cross.clone(),
        None => {
            let cross =
                validate::cross_check(&ok.iter().map(|(f, p)| (f.clone(), p.as_ref())).collect());
            cache.cross = Some(cross.clone());
            cross
        }
    };
    for d in &cross {
        report.rejected.insert(d.file.clone());
    }
    report.diagnostics.extend(cross);
    ok.retain(|f, _| !report.rejected.contains(f));
    if let Some(only) = &cx.only {
        ok.retain(|f, _| only.contains(f));
    }

    // Without valid settings no target or source can be resolved: fail closed.
    if report.settings.is_none() {
        for f in ok.keys() {
            report.rejected.insert(f.clone());
        }
        ok.clear();
    }

    // Policies, for the plans not judged yet at this content: judged as they were
    // parsed, or else (parsed by an earlier check that did not judge them) now.
    for f in ok.keys() {
        if let Some(findings) = judged.remove(f) {
            cache.findings.insert(f.clone(), findings);
        }
    }
    let pending: Vec<(&String, &Arc<ParsedPlan>)> = ok
        .iter()
        .filter(|(f, _)| policy.is_some() && !cache.findings.contains_key(*f))
        .collect();
    if let Some(engine) = policy {
        if !pending.is_empty() {
            let judging =
                judging.get_or_insert_with(|| Judge::new(snap, cx, engine, cache, settings_doc));
            evaluate(snap, judging, cache, &pending, threads);
        }
        for (file, p) in &ok {
            if let Some(result) = cache.findings.get(file) {
                judge(file, p, result, &mut report);
            }
        }
    }
    ok.retain(|f, _| !report.rejected.contains(f));
    report.accepted = ok.into_values().map(|p| (p.plan.name.clone(), p)).collect();
    diagnostics::sort(&mut report.diagnostics);
    report
}

/// The policies, with the input every plan of a check shares set, and that input.
struct Judge<'a> {
    engine: Box<dyn PolicyEngine>,
    shared: Shared<'a>,
    only: Option<&'a BTreeSet<String>>,
}

impl<'a> Judge<'a> {
    fn new(
        snap: &Snapshot,
        cx: &'a GateContext<'a>,
        engine: &dyn PolicyEngine,
        cache: &mut GateCache,
        settings: Value,
    ) -> Self {
        let statuses = statuses_input(snap, cache);
        let base_plans = cx.base.map(base_plan_docs).unwrap_or_default();
        let shared = Shared {
            settings,
            base_plans,
            change: &cx.change,
            now: cx.now,
        };
        let mut prepared = engine.fork();
        prepared.set_shared(
            &json!({
                "change": {
                    "commit": shared.change.commit,
                    "author": shared.change.author,
                    "files": shared.change.files,
                    "labels": shared.change.labels,
                },
                "settings": shared.settings,
                "now": shared.now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            }),
            &statuses,
        );
        Self {
            engine: prepared,
            shared,
            only: cx.only.as_ref(),
        }
    }
}

/// Whether a check judges `file`: `only` (`GateContext::only`) names the plans it judges.
fn may_judge(only: Option<&BTreeSet<String>>, file: &str) -> bool {
    only.is_none_or(|o| o.contains(file))
}

/// Run the policies over `pending` (file, plan), plans parsed by an earlier check and
/// not judged then, and keep each one's findings in `cache`. Each plan's document is
/// made again from its file (about 26 µs a plan) and dropped once judged.
fn evaluate(
    snap: &Snapshot,
    judge: &Judge<'_>,
    cache: &mut GateCache,
    pending: &[(&String, &Arc<ParsedPlan>)],
    threads: Option<std::num::NonZeroUsize>,
) {
    let workers = threads.map_or_else(|| workers(pending.len()), std::num::NonZeroUsize::get);
    let forks = (0..workers).map(|_| judge.engine.fork()).collect();
    let shared = &judge.shared;
    let results = parallel_map(pending, forks, |engine, (file, p)| {
        let doc = snap
            .files
            .get(*file)
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|text| validate::plan_document(file, text))
            .unwrap_or(Value::Null);
        engine.evaluate(&policy_input(file, p, &doc, shared))
    });
    for ((file, _), result) in pending.iter().zip(results) {
        cache.findings.insert((*file).clone(), result);
    }
}

/// Put one plan's policy findings in `report`: a deny or an error rejects it.
fn judge(file: &str, p: &ParsedPlan, result: &Result<Findings, String>, report: &mut GateReport) {
    let pos = p.name_pos;
    match result {
        Ok(f) => {
            for d in &f.deny {
                report.rejected.insert(file.to_owned());
                report.diagnostics.push(
                    Diagnostic::error(file, pos, Code::PolicyDenied, d.message.clone())
                        .with_help(format!("policy {}", d.policy)),
                );
            }
            for w in &f.warn {
                report.diagnostics.push(
                    Diagnostic::warning(file, pos, Code::PolicyWarning, w.message.clone())
                        .with_help(format!("policy {}", w.policy)),
                );
            }
        }
        Err(e) => {
            report.rejected.insert(file.to_owned());
            report
                .diagnostics
                .push(Diagnostic::error(file, pos, Code::PolicyError, e.clone()));
        }
    }
}

fn parse_one(
    file: &str,
    bytes: &[u8],
    settings: Option<&Settings>,
) -> Result<(ParsedPlan, Value), Vec<Diagnostic>> {
    if bytes.contains(&0) {
        return Err(vec![Diagnostic::error(
            file,
            None,
            Code::YamlSyntax,
            "file is binary (contains NUL bytes), not YAML",
        )]);
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let good = &bytes[..e.valid_up_to()];
        let line = good.iter().filter(|b| **b == b'\n').count() + 1;
        let col = good.iter().rev().take_while(|b| **b != b'\n').count() + 1;
        let pos = Pos::new(
            u32::try_from(line).unwrap_or(u32::MAX),
            u32::try_from(col).unwrap_or(u32::MAX),
        );
        vec![Diagnostic::error(
            file,
            Some(pos),
            Code::YamlSyntax,
            "file is not UTF-8 text (an invalid byte here)",
        )]
    })?;
    validate::parse_plan_document(file, text, settings)
}

struct Shared<'a> {
    settings: Value,
    base_plans: BTreeMap<String, Value>,
    change: &'a Change,
    now: DateTime<Utc>,
}

/// The per-plan part of the document policies see as `input` (documented in the
/// README), borrowed from the parsed plan: the plan's document is never copied, the
/// engine converts it straight into its own values. `change`, `statuses`, `settings`
/// and `now` are shared (`set_shared`).
#[derive(Debug)]
pub struct PolicyInput<'a> {
    /// The plan's repo-relative path (`input.file`).
    pub file: Value,
    /// The plan file as written (`input.plan`).
    pub plan: &'a Value,
    /// The plan's steps in the file form (`input.steps`), presets expanded.
    pub steps: Value,
    /// The plan of the same name at the base revision (`input.basePlan`), if any.
    pub base_plan: Option<&'a Value>,
    /// Whether the plan's windows are open now (`input.windowOpen`).
    pub window_open: Value,
}

static NULL: Value = Value::Null;

impl PolicyInput<'_> {
    /// The top-level keys of the per-plan input.
    pub fn fields(&self) -> [(&'static str, &Value); 5] {
        [
            ("file", &self.file),
            ("plan", self.plan),
            ("steps", &self.steps),
            ("basePlan", self.base_plan.unwrap_or(&NULL)),
            ("windowOpen", &self.window_open),
        ]
    }

    /// The per-plan input as one JSON document.
    pub fn to_json(&self) -> Value {
        json!({
            "file": self.file,
            "plan": self.plan,
            "steps": self.steps,
            "basePlan": self.base_plan,
            "windowOpen": self.window_open,
        })
    }
}

fn policy_input<'a>(
    file: &str,
    p: &'a ParsedPlan,
    doc: &'a Value,
    s: &'a Shared<'_>,
) -> PolicyInput<'a> {
    let steps: Vec<Value> = p.plan.steps().iter().map(step_json).collect();
    PolicyInput {
        file: Value::String(file.to_owned()),
        plan: doc,
        steps: Value::Array(steps),
        base_plan: s.base_plans.get(&p.plan.name),
        window_open: Value::Bool(p.plan.windows.is_open(s.now)),
    }
}

/// A domain step in the file form (`{"setWeight": 5}` …).
pub fn step_json(step: &crate::model::plan::Step) -> Value {
    serde_json::to_value(step.to_wire()).unwrap_or(Value::Null)
}

fn yaml_json(file: &str, bytes: &[u8]) -> Option<Value> {
    let text = std::str::from_utf8(bytes).ok()?;
    crate::model::yaml::parse(file, text)
        .ok()
        .map(|n| n.to_json())
}

/// Bring the cached policy view of every status file up to date with `snap` (parsing
/// only new or changed files, which `GateCache::invalidate` dropped) and report each
/// file that does not parse: an error diagnostic, and left out of `input.statuses`, so
/// a policy that needs it finds no status. New views are noted in `status_changed`;
/// also says whether a view was dropped without a word from `invalidate` (then
/// `input.statuses` is put together whole).
fn refresh_statuses(snap: &Snapshot, cache: &mut GateCache) -> (Vec<Diagnostic>, bool) {
    let mut diags = Vec::new();
    let mut stale = false;
    let mut files = 0;
    for (file, bytes) in snap.status_files() {
        files += 1;
        diags.extend(status_view(cache, file, bytes));
    }
    // Every status file has its view now: more views than files means some are stale.
    if cache.statuses.len() > files {
        cache.statuses.retain(|f, _| snap.files.contains_key(f));
        stale = true;
    }
    (diags, stale)
}

/// The status file `file`'s view, from `cache` or made and kept there; the diagnostic
/// when it does not parse.
fn status_view(cache: &mut GateCache, file: &String, bytes: &[u8]) -> Option<Diagnostic> {
    let parsed = match cache.statuses.get(file) {
        Some(view) => view,
        None => {
            let view = std::str::from_utf8(bytes)
                .map_err(|e| e.to_string())
                .and_then(|t| Status::from_yaml(t).map_err(|e| e.to_string()))
                .and_then(|status| {
                    Prepared::from_json(&status_doc(&status))
                        .map(|doc| (status.plan.clone(), doc))
                        .map_err(|e| e.to_string())
                });
            if let Ok((plan, _)) = &view
                && status_path_plan(file) != Some(plan.as_str())
            {
                cache.status_misnamed = true;
            }
            if cache.statuses_input.is_some() {
                cache.status_changed.insert(file.clone());
            }
            cache.statuses.entry(file.clone()).or_insert(view)
        }
    };
    let e = parsed.as_ref().err()?;
    Some(
        Diagnostic::error(file.as_str(), None, Code::BadStatus, e.clone()).with_help(
            "status files are written by rollgate; restore it from history (`git log -p -- status/`)",
        ),
    )
}

/// `input.statuses` as the views say: the one kept, with the views changed since put
/// in; put together whole the first time, after a view went stale, or while some file
/// names another plan than its path (`status_misnamed`).
fn statuses_input(snap: &Snapshot, cache: &mut GateCache) -> Prepared {
    let changed = std::mem::take(&mut cache.status_changed);
    if let Some(input) = cache.statuses_input.as_mut()
        && !cache.status_misnamed
        && changed.iter().all(|path| {
            let Some(plan) = status_path_plan(path) else {
                return false;
            };
            match cache.statuses.get(path) {
                Some(Ok((_, doc))) => input.insert(plan, doc),
                _ => input.remove(plan),
            }
            true
        })
    {
        return input.clone();
    }
    cache.status_misnamed = cache.statuses.iter().any(|(path, view)| {
        view.as_ref()
            .is_ok_and(|(plan, _)| status_path_plan(path) != Some(plan.as_str()))
    });
    cache
        .statuses_input
        .insert(status_docs(snap, &cache.statuses))
        .clone()
}

/// Every status file as policies see it (`input.statuses`), by plan name, from the
/// views `refresh_statuses` brought up to date.
fn status_docs(snap: &Snapshot, cache: &StatusViews) -> Prepared {
    Prepared::object(
        snap.status_files()
            .filter_map(|(file, _)| match cache.get(file) {
                Some(Ok((plan, doc))) => Some((plan.as_str(), doc)),
                _ => None,
            }),
    )
}

/// The policy view of one status: a small, stable contract (documented in the README).
pub fn status_doc(s: &Status) -> Value {
    json!({
        "plan": s.plan,
        "phase": s.phase.as_str(),
        "artifact": s.candidate,
        "stableArtifact": s.stable,
        "step": s.step,
        "weight": s.weight,
        "succeeded": s.succeeded.iter().map(|x| json!({
            "artifact": x.artifact,
            "at": x.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        })).collect::<Vec<_>>(),
    })
}

fn base_plan_docs(base: &Snapshot) -> BTreeMap<String, Value> {
    base.plan_files()
        .filter_map(|(file, bytes)| {
            let doc = yaml_json(file, bytes)?;
            let name = doc.pointer("/metadata/name")?.as_str()?.to_owned();
            Some((name, doc))
        })
        .collect()
}

/// How many threads the gate may use: every core, but no more than one per 64 plans.
fn workers(n: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    cores.min(n / 64 + 1).max(1)
}

/// Items a worker takes at a time: small enough that a worker the scheduler holds back
/// (other processes on the same cores) leaves little for the others to wait on at the
/// end, large enough that taking one costs nothing.
const BLOCK: usize = 16;

/// Map `f` over `items` with one worker per `states` entry (each worker owns its
/// state, e.g. a fork of the policy engine), keeping the order of `items`. Workers take
/// blocks of [`BLOCK`] items from a shared counter, so a busy core slows its worker
/// without idling the others; the result is the same for any number of workers.
fn parallel_map<T: Sync, R: Send, S: Send>(
    items: &[T],
    mut states: Vec<S>,
    f: impl Fn(&mut S, &T) -> R + Sync,
) -> Vec<R> {
    if states.len() <= 1 || items.len() <= BLOCK {
        return match states.first_mut() {
            Some(state) => items.iter().map(|item| f(state, item)).collect(),
            None => Vec::new(),
        };
    }
    let blocks: Vec<&[T]> = items.chunks(BLOCK).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut done: Vec<Option<Vec<R>>> =
        std::iter::repeat_with(|| None).take(blocks.len()).collect();
    std::thread::scope(|s| {
        let (blocks, next, f) = (&blocks, &next, &f);
        let handles: Vec<_> = states
            .iter_mut()
            .map(|state| {
                s.spawn(move || {
                    let mut out = Vec::new();
                    loop {
                        let b = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(block) = blocks.get(b) else { break };
                        out.push((
                            b,
                            block.iter().map(|item| f(state, item)).collect::<Vec<R>>(),
                        ));
                    }
                    out
                })
            })
            .collect();
        for handle in handles {
            let out = handle
                .join()
                .unwrap_or_else(|e| std::panic::resume_unwind(e));
            for (b, results) in out {
                done[b] = Some(results);
            }
        }
    });
    done.into_iter().flatten().flatten().collect()
}

/// The policies of a revision (`policies/` in its snapshot), written out to `dir` and
/// loaded as a `Rego` engine: the daemon's policy loader. `dir` is emptied first, so a
/// policy removed in Git is gone from the engine too.
pub fn repository_policies(
    dir: std::path::PathBuf,
) -> impl Fn(&Snapshot) -> Result<Box<dyn PolicyEngine>, Vec<Diagnostic>> + Send {
    move |snap| {
        let io = |file: &str, e: std::io::Error| {
            vec![Diagnostic::error(file, None, Code::Io, e.to_string())]
        };
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| io("policies", e))?;
        for (path, bytes) in snap
            .files
            .iter()
            .filter(|(p, _)| p.starts_with("policies/"))
        {
            let name = path.trim_start_matches("policies/");
            std::fs::write(dir.join(name), bytes).map_err(|e| io(path, e))?;
        }
        Ok(
            Box::new(Rego::new(crate::policy::PolicySet::load(Some(&dir))?))
                as Box<dyn PolicyEngine>,
        )
    }
}

#[cfg(test)]
mod tests {
    //! The gate's answer does not depend on how it was computed: on how many threads,
    //! on a warm cache, or on one policy engine (and one shared input) serving many plans.

    use std::num::NonZeroUsize;
    use std::path::Path;

    use super::*;

    const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/corpus");

    /// A generated plan: valid, or denied by the built-in digest policy (a tag), or by the
    /// repository's team policy (a number above 3), or failing it (a team that is no number).
    fn generated(i: usize) -> String {
        let team = if i.is_multiple_of(5) {
            format!("t{i}")
        } else {
            (i % 7).to_string()
        };
        let artifact = if i.is_multiple_of(3) {
            format!("registry.example/gen-{i:03}:v{i}")
        } else {
            format!("registry.example/gen-{i:03}@sha256:{i:064x}")
        };
        let owner = if i.is_multiple_of(4) {
            ""
        } else {
            ", owner: ops"
        };
        format!(
            "apiVersion: rollgate.dev/v1alpha1
kind: RolloutPlan
metadata: {{ name: gen-{i:03}, labels: {{ team: \"{team}\"{owner} }} }}
spec:
  target: prod-eu
  workload:
    kubernetes: {{ namespace: ns-{i}, deployment: gen-{i:03} }}
  artifact: {artifact}
  strategy:
    canary:
      steps:
        - setWeight: {}
        - analysis: {{ checks: [errors], duration: 5m }}
        - setWeight: 100
  checks:
    - {{ name: errors, source: prometheus, query: up, judge: {{ max: 0.1 }} }}
",
            5 + i % 40
        )
    }

    /// The corpus settings; every invalid case that is one file or a folder of plans and
    /// statuses (no settings or policies of its own); 300 generated plans.
    fn corpus_snapshot() -> Snapshot {
        let root = Path::new(CORPUS);
        let read = |p: &Path| std::fs::read(p).expect("corpus file reads");
        let mut files = BTreeMap::new();
        files.insert(SETTINGS_FILE.to_owned(), read(&root.join("rollgate.yaml")));
        for entry in std::fs::read_dir(root.join("invalid")).expect("corpus") {
            let path = entry.expect("entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).expect("name");
            if path.is_file() && crate::source::is_yaml(name) {
                files.insert(format!("plans/{name}"), read(&path));
            } else if path.is_dir() && !path.join(SETTINGS_FILE).exists() {
                for folder in ["plans", "status"] {
                    let Ok(listing) = std::fs::read_dir(path.join(folder)) else {
                        continue;
                    };
                    for f in listing {
                        let f = f.expect("entry").path();
                        let n = f.file_name().and_then(|n| n.to_str()).expect("name");
                        files.insert(format!("{folder}/{n}"), read(&f));
                    }
                }
            }
        }
        for i in 0..300 {
            files.insert(format!("plans/gen-{i:03}.yaml"), generated(i).into_bytes());
        }
        files.insert(
            "plans/broken.yaml".to_owned(),
            b"kind: [RolloutPlan\n".to_vec(),
        );
        files.insert("plans/binary.yaml".to_owned(), b"kind: \0\n".to_vec());
        files.insert("plans/latin1.yaml".to_owned(), b"kind: caf\xe9\n".to_vec());
        Snapshot {
            files,
            ..Snapshot::default()
        }
    }

    /// The built-in policies, the corpus policy that fails on a team that is not a
    /// number, and one that warns about a plan without an owner.
    fn policies() -> Rego {
        let dir = tempfile::tempdir().expect("temp dir");
        let failing = Path::new(CORPUS).join("invalid/policy-error/policies/owner.rego");
        std::fs::copy(failing, dir.path().join("owner.rego")).expect("copy policy");
        std::fs::write(
            dir.path().join("labels.rego"),
            "package rollgate.test.labels\n\nimport rego.v1\n\nwarn contains msg if {\n\tnot input.plan.metadata.labels.owner\n\tmsg := sprintf(\"plan %q has no owner label\", [input.plan.metadata.name])\n}\n",
        )
        .expect("write policy");
        Rego::new(crate::policy::PolicySet::load(Some(dir.path())).expect("policies load"))
    }

    fn context() -> GateContext<'static> {
        GateContext {
            base: None,
            change: Change {
                labels: vec!["reviewed".to_owned()],
                ..Change::default()
            },
            now: "2026-11-24T10:00:00Z".parse().expect("time"),
            only: None,
            namespaces: None,
        }
    }

    /// Everything a report says, in a comparable form: diagnostics, accepted plans (name,
    /// file, plan), rejected files.
    type Summary = (
        Vec<Diagnostic>,
        Vec<(String, String, crate::model::Plan)>,
        Vec<String>,
    );

    fn summary(r: &GateReport) -> Summary {
        let accepted = r
            .accepted
            .iter()
            .map(|(name, p)| (name.clone(), p.file.clone(), p.plan.clone()))
            .collect();
        (
            r.diagnostics.clone(),
            accepted,
            r.rejected.iter().cloned().collect(),
        )
    }

    fn threads(n: usize) -> Option<NonZeroUsize> {
        NonZeroUsize::new(n)
    }

    #[test]
    fn parallel_and_sequential_gates_give_the_same_report() {
        let snap = corpus_snapshot();
        let cx = context();
        let rego = policies();
        let one = check_on(
            &snap,
            &cx,
            Some(&rego),
            &mut GateCache::default(),
            threads(1),
        );
        // The corpus exercises every kind of outcome, so the comparison means something.
        let codes: BTreeSet<Code> = one.diagnostics.iter().map(|d| d.code).collect();
        for code in [
            Code::YamlSyntax,
            Code::UnknownField,
            Code::DuplicatePlan,
            Code::BadStatus,
            Code::PolicyDenied,
            Code::PolicyWarning,
            Code::PolicyError,
        ] {
            assert!(codes.contains(&code), "the corpus yields {code}: {codes:?}");
        }
        assert!(one.accepted.len() >= 40, "{} accepted", one.accepted.len());
        for n in [2, 3, 8] {
            let many = check_on(
                &snap,
                &cx,
                Some(&rego),
                &mut GateCache::default(),
                threads(n),
            );
            assert_eq!(summary(&one), summary(&many), "{n} threads");
        }
        let default = check(&snap, &cx, Some(&rego));
        assert_eq!(summary(&one), summary(&default), "default threads");
        let schema_only_one = check_on(&snap, &cx, None, &mut GateCache::default(), threads(1));
        let schema_only_many = check_on(&snap, &cx, None, &mut GateCache::default(), threads(4));
        assert_eq!(summary(&schema_only_one), summary(&schema_only_many));
    }

    /// A warm cache gives the report a cold one does, bad status files included (they
    /// are checked on every pass, not only on one with something to parse or judge).
    #[test]
    fn regression_a_warm_cache_gives_the_same_report_bad_status_files_included() {
        let snap = corpus_snapshot();
        let cx = context();
        let rego = policies();
        let mut cache = GateCache::default();
        let cold = check_on(&snap, &cx, Some(&rego), &mut cache, threads(2));
        let warm = check_on(&snap, &cx, Some(&rego), &mut cache, threads(2));
        assert!(cold.diagnostics.iter().any(|d| d.code == Code::BadStatus));
        // A bad status file stays reported on a warm pass (it was dropped when nothing
        // was re-parsed or judged)
        assert_eq!(summary(&cold), summary(&warm));
    }

    /// The status views (and with them `input.statuses`) follow status files that come
    /// and go between passes with no invalidation naming them, also when as many go as
    /// come (the views are pruned by count); `input.statuses`, patched with the views that
    /// changed, is always the one put together whole.
    #[test]
    fn regression_status_views_follow_status_files_that_come_and_go_without_an_invalidation() {
        let status = |plan: &str| {
            Status::pending(plan, "v1", &"0".repeat(40))
                .to_yaml()
                .expect("yaml")
                .into_bytes()
        };
        let plans = |views: &StatusViews| -> Vec<String> {
            let mut names: Vec<String> = views
                .values()
                .filter_map(|v| v.as_ref().ok().map(|(plan, _)| plan.clone()))
                .collect();
            names.sort();
            names
        };
        // What `check_on` does before its policies run, and the input it gets.
        let input = |snap: &Snapshot, cache: &mut GateCache| {
            if refresh_statuses(snap, cache).1 {
                cache.statuses_input = None;
            }
            let input = statuses_input(snap, cache);
            assert_eq!(
                input,
                status_docs(snap, &cache.statuses),
                "patched as whole"
            );
            input
        };
        let mut snap = Snapshot::default();
        snap.files.insert("status/a.yaml".into(), status("a"));
        snap.files.insert("status/b.yaml".into(), status("b"));
        let mut cache = GateCache::default();
        let first = input(&snap, &mut cache);
        assert_eq!(plans(&cache.statuses), ["a", "b"]);
        assert_eq!(input(&snap, &mut cache), first, "nothing moved");

        snap.files.remove("status/b.yaml");
        snap.files.insert("status/c.yaml".into(), status("c"));
        assert_ne!(input(&snap, &mut cache), first, "one went, one came");
        assert_eq!(plans(&cache.statuses), ["a", "c"]);

        snap.files.insert("status/d.yaml".into(), status("d"));
        input(&snap, &mut cache);
        assert_eq!(plans(&cache.statuses), ["a", "c", "d"], "one came");

        snap.files.remove("status/c.yaml");
        snap.files.remove("status/d.yaml");
        let after = input(&snap, &mut cache);
        assert_eq!(plans(&cache.statuses), ["a"], "two went");
        assert_eq!(input(&snap, &mut cache), after, "nothing moved");
        // A file that names another plan than its path: put together whole from then on.
        snap.files.insert("status/e.yaml".into(), status("a"));
        input(&snap, &mut cache);
        assert!(cache.status_misnamed);
        snap.files.remove("status/e.yaml");
        input(&snap, &mut cache);
        assert!(!cache.status_misnamed, "named as its path again");
    }

    /// A plan judged after the check that parsed it (its promotion source appeared, or it
    /// was outside `only`) has its document made again from its file: it must be the
    /// document its parse gave, for every plan of the corpus that parses.
    #[test]
    fn a_plan_document_made_again_is_the_one_its_parse_gave() {
        let snap = corpus_snapshot();
        let settings = check(&snap, &context(), None).settings;
        let mut compared = 0;
        for (file, bytes) in snap.plan_files() {
            let Ok((_, doc)) = parse_one(file, bytes, settings.as_ref()) else {
                continue;
            };
            let text = std::str::from_utf8(bytes).expect("parsed, so UTF-8");
            assert_eq!(validate::plan_document(file, text), Some(doc), "{file}");
            compared += 1;
        }
        assert!(compared >= 20, "only {compared} plans parsed");
    }

    /// Each plan's findings through the gate (one engine and one shared input serving
    /// every plan) equal those of a fresh engine given that plan's whole input, as JSON.
    #[test]
    fn findings_from_a_shared_engine_equal_those_of_a_fresh_engine_per_plan() {
        let snap = corpus_snapshot();
        let cx = context();
        let rego = policies();
        let report = check_on(
            &snap,
            &cx,
            Some(&rego),
            &mut GateCache::default(),
            threads(2),
        );
        let schema_only = check_on(&snap, &cx, None, &mut GateCache::default(), threads(1));
        // `input.statuses` as JSON, built without the gate's prepared views.
        let statuses = Value::Object(
            snap.status_files()
                .filter_map(|(_, bytes)| {
                    let status = Status::from_yaml(std::str::from_utf8(bytes).ok()?).ok()?;
                    Some((status.plan.clone(), status_doc(&status)))
                })
                .collect(),
        );
        let settings = yaml_json(SETTINGS_FILE, &snap.files[SETTINGS_FILE]).expect("settings");
        let shared = Shared {
            settings: settings.clone(),
            base_plans: BTreeMap::new(),
            change: &cx.change,
            now: cx.now,
        };
        let mut judged = 0;
        for p in schema_only.accepted.values() {
            let (_, doc) = parse_one(&p.file, &snap.files[&p.file], schema_only.settings.as_ref())
                .expect("an accepted plan parses");
            let mut input = policy_input(&p.file, p, &doc, &shared).to_json();
            let object = input.as_object_mut().expect("an object");
            object.insert(
                "change".into(),
                json!({"commit": null, "author": null, "files": [], "labels": ["reviewed"]}),
            );
            object.insert("statuses".into(), statuses.clone());
            object.insert("settings".into(), settings.clone());
            object.insert(
                "now".into(),
                json!(cx.now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            );
            let fresh = rego.set.clone().evaluate(&input);
            let mut expected: Vec<Diagnostic> = match fresh {
                Ok(f) => f
                    .deny
                    .into_iter()
                    .map(|d| {
                        Diagnostic::error(
                            p.file.as_str(),
                            p.name_pos,
                            Code::PolicyDenied,
                            d.message,
                        )
                        .with_help(format!("policy {}", d.policy))
                    })
                    .chain(f.warn.into_iter().map(|w| {
                        Diagnostic::warning(
                            p.file.as_str(),
                            p.name_pos,
                            Code::PolicyWarning,
                            w.message,
                        )
                        .with_help(format!("policy {}", w.policy))
                    }))
                    .collect(),
                Err(e) => vec![Diagnostic::error(
                    p.file.as_str(),
                    p.name_pos,
                    Code::PolicyError,
                    e.to_string(),
                )],
            };
            let mut got: Vec<Diagnostic> = report
                .diagnostics
                .iter()
                .filter(|d| {
                    d.file == p.file
                        && matches!(
                            d.code,
                            Code::PolicyDenied | Code::PolicyWarning | Code::PolicyError
                        )
                })
                .cloned()
                .collect();
            diagnostics::sort(&mut expected);
            diagnostics::sort(&mut got);
            assert_eq!(got, expected, "{}", p.file);
            judged += usize::from(!expected.is_empty());
        }
        assert!(judged >= 100, "only {judged} plans had findings");
    }
}
