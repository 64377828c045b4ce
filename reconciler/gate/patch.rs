//! Patching the gate's last report when only a few plan and status files changed,
//! instead of making it whole: with 10,000 plans, a whole report (10,000 look-ups,
//! clones and inserts, all cached) was 10 ms of every reaction to a push (#21).
//!
//! ```text
//!   dirty paths (GateCache::invalidate) ─▶ parse the plans among them
//!        │                                    │ a cross-plan key changed? cross-check again;
//!        │                                    ▼ the files it named before or names now join
//!        └─▶ status views           touched files: their entries out of the report, then in
//!                                   again as check_on puts them (refused, parse, cross,
//!                                   settings, policy), and the diagnostics sorted
//! ```
//!
//! Invariant: a patched report is the report `check_on` makes of the same snapshot with
//! the same cache; the tests compare the two after random changes. Anything else makes
//! the report whole: a changed setting or policy (the cache is emptied then), a changed
//! path that is neither a plan nor a status file, more than [`MAX_PATHS`] paths, a
//! context other than the one the report was made in, or a report changed since it was
//! made (its stamp).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{
    Arc, BTreeMap, BTreeSet, GateCache, GateContext, GateReport, Judge, ParsedPlan, PolicyEngine,
    SETTINGS_FILE, Snapshot, Value, diagnostics, evaluate, judge, status_view, validate, workers,
    yaml_json,
};
use crate::source::{is_plan_path, is_status_path};

/// Past this many changed paths the report is made whole (a mass change of 1,000 plans
/// parses and judges them all either way; patching 1,000 entries saves nothing).
pub(super) const MAX_PATHS: usize = 256;

/// Stamps are unique in the process: a report cannot match another cache's.
static STAMPS: AtomicU64 = AtomicU64::new(1);

/// What the last whole report was made with: its stamp and the context it depends on
/// besides the snapshot.
#[derive(Debug)]
pub(super) struct Basis {
    pub(super) stamp: u64,
    policy: bool,
    namespaces: Option<Vec<String>>,
}

impl Basis {
    /// For a report of every plan (`only` and `base` unset: a preview's report is never
    /// patched).
    pub(super) fn of(cx: &GateContext<'_>, policy: Option<&dyn PolicyEngine>) -> Option<Self> {
        (cx.only.is_none() && cx.base.is_none()).then(|| Self {
            stamp: STAMPS.fetch_add(1, Ordering::Relaxed),
            policy: policy.is_some(),
            namespaces: cx.namespaces.clone(),
        })
    }
}

/// Patch `report` for the paths changed since it was made; `false` (nothing done, the
/// dirty paths kept) when it has to be made whole.
pub(super) fn patch(
    snap: &Snapshot,
    cx: &GateContext<'_>,
    policy: Option<&dyn PolicyEngine>,
    cache: &mut GateCache,
    report: &mut GateReport,
) -> bool {
    let Some(made) = &cache.made else {
        return false;
    };
    let patchable = report.stamp == made.stamp
        && made.policy == policy.is_some()
        && made.namespaces == cx.namespaces
        && cx.only.is_none()
        && cx.base.is_none()
        && cache.cross.is_some()
        && cache.dirty.len() <= MAX_PATHS
        && cache
            .dirty
            .keys()
            .all(|p| is_plan_path(p) || is_status_path(p));
    if !patchable {
        return false;
    }
    let dirty = std::mem::take(&mut cache.dirty);
    let old_cross = cache.cross.clone().unwrap_or_default();

    // The changed plans: parsed again (present) or forgotten (gone).
    let plans: BTreeSet<&str> = dirty
        .keys()
        .filter(|p| is_plan_path(p))
        .map(String::as_str)
        .collect();
    let missing: Vec<(&String, &Vec<u8>)> = plans
        .iter()
        .filter_map(|f| snap.files.get_key_value(*f))
        .filter(|(f, _)| !cache.parsed.contains_key(*f))
        .collect();
    // Judged below with the other plans to judge (their documents made again: a patch
    // parses a few plans).
    cache.parse(
        &missing,
        report.settings.as_ref(),
        workers(missing.len()),
        None,
    );
    for f in &plans {
        if !snap.files.contains_key(*f) {
            cache.parsed.remove(*f);
            if cache.cross_keys.remove(*f).is_some() {
                cache.cross = None;
            }
        }
    }

    // The cross-plan checks, again only when what they read changed; every file they
    // named before or name now is looked at again.
    let mut affected: BTreeSet<String> = plans.iter().map(|f| (*f).to_owned()).collect();
    let cross = match &cache.cross {
        Some(cross) => cross.clone(),
        None => {
            let ok: BTreeMap<String, &ParsedPlan> = cache
                .parsed
                .iter()
                .filter(|(f, _)| snap.files.contains_key(*f))
                .filter_map(|(f, r)| r.as_ref().ok().map(|p| (f.clone(), p.as_ref())))
                .collect();
            let cross = validate::cross_check(&ok);
            affected.extend(old_cross.iter().map(|d| d.file.clone()));
            affected.extend(cross.iter().map(|d| d.file.clone()));
            cache.cross = Some(cross.clone());
            cross
        }
    };
    let statuses: Vec<&String> = dirty.keys().filter(|p| is_status_path(p)).collect();

    // Out of the report: every entry of a touched file.
    let touched: HashSet<&str> = affected
        .iter()
        .map(String::as_str)
        .chain(statuses.iter().map(|s| s.as_str()))
        .collect();
    report
        .diagnostics
        .retain(|d| !touched.contains(d.file.as_str()));
    for f in &affected {
        report.rejected.remove(f);
        // The name its entry was accepted under: the one noted when it changed, or
        // (unchanged, named by the cross-plan checks) the one it parses to.
        let name = match dirty.get(f) {
            Some(noted) => noted.clone(),
            None => cache
                .parsed
                .get(f)
                .and_then(|r| r.as_ref().ok())
                .map(|p| p.plan.name.clone()),
        };
        if let Some(name) = name
            && report.accepted.get(&name).is_some_and(|p| p.file == *f)
        {
            report.accepted.remove(&name);
        }
    }

    // In again, in the order `check_on` puts them: refused, parse, cross, status, policy.
    for d in &snap.refused {
        if touched.contains(d.file.as_str()) {
            report.diagnostics.push(d.clone());
            if is_plan_path(&d.file) {
                report.rejected.insert(d.file.clone());
            }
        }
    }
    let mut ok: BTreeMap<&String, Arc<ParsedPlan>> = BTreeMap::new();
    for f in &affected {
        if !snap.files.contains_key(f) {
            continue;
        }
        match cache.parsed.get(f) {
            Some(Ok(p)) => {
                ok.insert(f, p.clone());
            }
            Some(Err(d)) => {
                report.rejected.insert(f.clone());
                report.diagnostics.extend(d.iter().cloned());
            }
            None => {}
        }
    }
    for d in cross.iter().filter(|d| affected.contains(&d.file)) {
        report.rejected.insert(d.file.clone());
        report.diagnostics.push(d.clone());
    }
    for f in statuses {
        if let Some(bytes) = snap.files.get(f) {
            report.diagnostics.extend(status_view(cache, f, bytes));
        }
    }
    ok.retain(|f, _| !report.rejected.contains(*f));
    if report.settings.is_none() {
        for f in ok.keys() {
            report.rejected.insert((*f).clone());
        }
        ok.clear();
    }
    if let Some(engine) = policy {
        let pending: Vec<(&String, &Arc<ParsedPlan>)> = ok
            .iter()
            .filter(|(f, _)| !cache.findings.contains_key(**f))
            .map(|(f, p)| (*f, p))
            .collect();
        if !pending.is_empty() {
            let settings = snap.files.get(SETTINGS_FILE);
            let settings = settings.and_then(|b| yaml_json(SETTINGS_FILE, b));
            let judge = Judge::new(snap, cx, engine, cache, settings.unwrap_or(Value::Null));
            evaluate(snap, &judge, cache, &pending, None);
        }
        for (f, p) in &ok {
            if let Some(result) = cache.findings.get(*f) {
                judge(f, p, result, report);
            }
        }
    }
    for (f, p) in ok {
        if !report.rejected.contains(f) {
            report.accepted.insert(p.plan.name.clone(), p);
        }
    }
    report.plan_files = snap.plan_files().count()
        + snap
            .refused
            .iter()
            .filter(|d| is_plan_path(&d.file))
            .count();
    diagnostics::sort(&mut report.diagnostics);
    true
}
