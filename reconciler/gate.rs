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

pub use crate::policy::{Finding, PolicyOutcome as Findings};

/// The extension point for policy-as-code. Implementations must be deterministic for a
/// given input and bound their own running time.
pub trait PolicyEngine: Send {
    /// The parts of the input every plan of one revision shares (`statuses`,
    /// `settings`, `change`, `now`), converted once rather than once per plan.
    fn set_shared(&mut self, shared: &Value);
    /// Evaluate one plan's input, merged over the shared parts.
    fn evaluate(&mut self, input: &Value) -> Result<Findings, String>;
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
}

impl GateReport {
    pub fn errors(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
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
    fn set_shared(&mut self, shared: &Value) {
        self.shared = Some(std::sync::Arc::new(crate::policy::SharedInput::new(shared)));
    }

    fn evaluate(&mut self, input: &Value) -> Result<Findings, String> {
        let result = match &self.shared {
            Some(shared) => self.set.evaluate_with(shared, input),
            None => self.set.evaluate(input),
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
    statuses: HashMap<String, Result<(String, Value), String>>,
}

impl GateCache {
    /// Forget what `changed` (repo-relative paths) may have changed. Settings or
    /// policies changing invalidates everything.
    pub fn invalidate(&mut self, changed: &[String]) {
        for p in changed {
            self.statuses.remove(p);
        }
        if changed
            .iter()
            .any(|p| p == SETTINGS_FILE || p.starts_with("policies/"))
        {
            self.parsed.clear();
            self.findings.clear();
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
    let settings = report.settings.as_ref();
    let missing: Vec<(&String, &Vec<u8>)> = files
        .iter()
        .copied()
        .filter(|(f, _)| !cache.parsed.contains_key(*f))
        .collect();
    let fresh = parallel_map(&missing, |(file, bytes)| {
        parse_one(file, bytes, settings).map(Arc::new)
    });
    let reparsed = !missing.is_empty();
    for ((file, _), result) in missing.iter().zip(fresh) {
        cache.parsed.insert((*file).clone(), result);
    }
    cache.parsed.retain(|f, _| snap.files.contains_key(f));
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
    let cross = validate::cross_check(&ok.iter().map(|(f, p)| (f.clone(), p.as_ref())).collect());
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

    // Policies, for the plans not judged yet at this content.
    let pending: Vec<(&String, &Arc<ParsedPlan>)> = ok
        .iter()
        .filter(|(f, _)| policy.is_some() && !cache.findings.contains_key(*f))
        .collect();
    let statuses = if reparsed || !pending.is_empty() {
        let (statuses, status_diags) = status_docs(snap, &mut cache.statuses);
        report.diagnostics.extend(status_diags);
        statuses
    } else {
        Value::Null
    };
    if let (Some(engine), false) = (policy, pending.is_empty()) {
        let base_plans = cx.base.map(base_plan_docs).unwrap_or_default();
        let shared = Shared {
            statuses,
            settings: settings_doc,
            base_plans,
            change: &cx.change,
            now: cx.now,
        };
        let mut prepared = engine.fork();
        prepared.set_shared(&json!({
            "change": {
                "commit": shared.change.commit,
                "author": shared.change.author,
                "files": shared.change.files,
                "labels": shared.change.labels,
            },
            "statuses": shared.statuses,
            "settings": shared.settings,
            "now": shared.now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }));
        let results = parallel_map_with(&pending, prepared.as_ref(), |engine, (file, p)| {
            let input = policy_input(file, p, &shared);
            engine.evaluate(&input)
        });
        for ((file, _), result) in pending.iter().zip(results) {
            cache.findings.insert((*file).clone(), result);
        }
    }
    if policy.is_some() {
        for (file, p) in &ok {
            let Some(result) = cache.findings.get(file) else {
                continue;
            };
            let pos = p.name_pos;
            match result.clone() {
                Ok(f) => {
                    for d in f.deny {
                        report.rejected.insert((*file).clone());
                        report.diagnostics.push(
                            Diagnostic::error(file.as_str(), pos, Code::PolicyDenied, d.message)
                                .with_help(format!("policy {}", d.policy)),
                        );
                    }
                    for w in f.warn {
                        report.diagnostics.push(
                            Diagnostic::warning(file.as_str(), pos, Code::PolicyWarning, w.message)
                                .with_help(format!("policy {}", w.policy)),
                        );
                    }
                }
                Err(e) => {
                    report.rejected.insert((*file).clone());
                    report.diagnostics.push(Diagnostic::error(
                        file.as_str(),
                        pos,
                        Code::PolicyError,
                        e,
                    ));
                }
            }
        }
    }
    ok.retain(|f, _| !report.rejected.contains(f));
    report.accepted = ok.into_values().map(|p| (p.plan.name.clone(), p)).collect();
    diagnostics::sort(&mut report.diagnostics);
    report
}

fn parse_one(
    file: &str,
    bytes: &[u8],
    settings: Option<&Settings>,
) -> Result<ParsedPlan, Vec<Diagnostic>> {
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
    validate::parse_plan(file, text, settings)
}

struct Shared<'a> {
    statuses: Value,
    settings: Value,
    base_plans: BTreeMap<String, Value>,
    change: &'a Change,
    now: DateTime<Utc>,
}

/// The per-plan part of the document policies see as `input` (documented in the
/// README); `change`, `statuses`, `settings` and `now` are shared (`set_shared`).
fn policy_input(file: &str, p: &Arc<ParsedPlan>, s: &Shared<'_>) -> Value {
    let steps: Vec<Value> = p.plan.steps().iter().map(step_json).collect();
    json!({
        "file": file,
        "plan": p.document,
        "steps": steps,
        "basePlan": s.base_plans.get(&p.plan.name).cloned().unwrap_or(Value::Null),
        "windowOpen": p.plan.windows.is_open(s.now),
    })
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

/// Every status file as policies see it (`input.statuses`), by plan name. A status
/// file that does not parse is an error diagnostic and is left out, so policies that
/// need it deny (fail closed).
/// `cache` keeps each file's view by path (invalidated with the paths a diff names), so
/// only new or changed status files are parsed.
fn status_docs(
    snap: &Snapshot,
    cache: &mut HashMap<String, Result<(String, Value), String>>,
) -> (Value, Vec<Diagnostic>) {
    let mut out = serde_json::Map::new();
    let mut diags = Vec::new();
    cache.retain(|f, _| snap.files.contains_key(f));
    for (file, bytes) in snap.status_files() {
        let parsed = cache.entry(file.clone()).or_insert_with(|| {
            std::str::from_utf8(bytes)
                .map_err(|e| e.to_string())
                .and_then(|t| Status::from_yaml(t).map_err(|e| e.to_string()))
                .map(|status| (status.plan.clone(), status_doc(&status)))
        });
        match parsed {
            Ok((plan, doc)) => {
                out.insert(plan.clone(), doc.clone());
            }
            Err(e) => diags.push(
                Diagnostic::error(file.as_str(), None, Code::BadStatus, e.clone()).with_help(
                    "status files are written by rollgate; restore it from history (`git log -p -- status/`)",
                ),
            ),
        }
    }
    (Value::Object(out), diags)
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

fn workers(n: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    cores.min(n / 64 + 1).max(1)
}

/// Map `f` over `items` on all cores, keeping order.
fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let n = workers(items.len());
    if n <= 1 {
        return items.iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(n);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|c| s.spawn(|| c.iter().map(&f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// Like `parallel_map`, giving each worker its own fork of the policy engine.
fn parallel_map_with<T: Sync, R: Send>(
    items: &[T],
    engine: &dyn PolicyEngine,
    f: impl Fn(&mut dyn PolicyEngine, &T) -> R + Sync,
) -> Vec<R> {
    let n = workers(items.len());
    let chunk = items.len().div_ceil(n).max(1);
    let mut forks: Vec<Box<dyn PolicyEngine>> = (0..n).map(|_| engine.fork()).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .zip(forks.iter_mut())
            .map(|(c, eng)| {
                let f = &f;
                s.spawn(move || {
                    c.iter()
                        .map(|item| f(eng.as_mut(), item))
                        .collect::<Vec<R>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
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
