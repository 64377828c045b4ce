//! Gathering policy sources (embedded built-ins, a folder on disk) into one regorus
//! engine, and turning regorus' errors into diagnostics with file, line and column.
//!
//! Invariant: files are read without following symlinks and under a size cap; every
//! problem in every file is reported, not just the first.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::num::NonZeroU32;
use std::path::Path;

use regorus::Engine;
use regorus::utils::limits::ExecutionTimerConfig;
use serde_json::Value;

use super::{EVAL_TIME_LIMIT, Kind, RuleRef};
use crate::model::diagnostics::{Code, Diagnostic, Pos};

/// The largest policy or data file read from a repository.
pub(super) const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// The source label of the generated module that collects every finding.
pub(super) const COLLECTOR_FILE: &str = "<rollgate-collector>";

/// Work units between two clock reads of regorus' execution timer.
const TIMER_CHECK_INTERVAL: NonZeroU32 = NonZeroU32::MIN.saturating_add(1023);

/// Whether repository files may declare the built-in packages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Packages {
    ReserveBuiltin,
    Any,
}

/// The packages of the built-in policies: no repository policy may declare them.
const RESERVED_PACKAGE: &str = "data.rollgate.builtin";

/// The built-in policies, embedded in the binary. Labelled `builtin/<file>` so they never
/// clash with a repository's `policies/<file>`.
pub(super) const BUILTIN_POLICIES: &[(&str, &str)] = &[
    (
        "builtin/digest.rego",
        include_str!("../../policies/digest.rego"),
    ),
    (
        "builtin/first_step.rego",
        include_str!("../../policies/first_step.rego"),
    ),
    (
        "builtin/production_analysis.rego",
        include_str!("../../policies/production_analysis.rego"),
    ),
    (
        "builtin/promotion.rego",
        include_str!("../../policies/promotion.rego"),
    ),
    (
        "builtin/windows.rego",
        include_str!("../../policies/windows.rego"),
    ),
];

const BUILTIN_DATA: &str = include_str!("../../policies/data.json");

/// Which `.rego` files of a folder to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Include {
    /// Policies for evaluation: `*_test.rego` files are skipped.
    PoliciesOnly,
    /// Everything, for `rollgate policy test`.
    WithTests,
}

/// Policy texts and the merged data document, before parsing.
#[derive(Debug, Default)]
pub(super) struct Sources {
    /// (label used in diagnostics, Rego text)
    policies: Vec<(String, String)>,
    data: serde_json::Map<String, Value>,
}

impl Sources {
    /// The built-in policies and data.
    pub(super) fn builtin() -> Self {
        let mut sources = Self::builtin_data();
        sources.policies = BUILTIN_POLICIES
            .iter()
            .map(|(label, text)| ((*label).to_string(), (*text).to_string()))
            .collect();
        sources
    }

    /// The built-in data document only (`data.rollgate.limits`, …), so repository tests
    /// see the same defaults evaluation does.
    pub(super) fn builtin_data() -> Self {
        let mut sources = Self::default();
        if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(BUILTIN_DATA) {
            sources.data = map;
        }
        sources
    }

    /// Add a folder's `.rego` files and data files (`.json`, `.yaml`, `.yml`), in name
    /// order, not recursively. A missing folder is empty when `missing_ok`.
    pub(super) fn add_dir(
        &mut self,
        dir: &Path,
        include: Include,
        missing_ok: bool,
    ) -> Result<(), Vec<Diagnostic>> {
        let label = dir_label(dir);
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound && missing_ok => return Ok(()),
            Err(e) => {
                return Err(vec![Diagnostic::error(
                    label,
                    None,
                    Code::Io,
                    format!("cannot read policy folder: {e}"),
                )]);
            }
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();

        let mut diags = Vec::new();
        for name in names {
            let file = format!("{label}/{name}");
            let is_rego = name.ends_with(".rego");
            let is_test = name.ends_with("_test.rego");
            let is_data = [".json", ".yaml", ".yml"]
                .iter()
                .any(|ext| name.ends_with(ext));
            if !(is_rego || is_data) || (is_test && include == Include::PoliciesOnly) {
                continue;
            }
            let text = match read_bounded(&dir.join(&name), &file) {
                Ok(Some(text)) => text,
                Ok(None) => continue,
                Err(d) => {
                    diags.push(d);
                    continue;
                }
            };
            if is_rego {
                self.policies.push((file, text));
            } else {
                match parse_data(&file, &name, &text) {
                    Ok(data) => merge(&mut self.data, data),
                    Err(d) => diags.push(d),
                }
            }
        }
        if diags.is_empty() { Ok(()) } else { Err(diags) }
    }

    /// Parse every policy (reporting every file that fails) and load the data. With
    /// `Packages::ReserveBuiltin` (the gate), a file that is not a built-in may not declare
    /// a built-in package; `rollgate policy test` over the built-ins' own folder may.
    pub(super) fn into_engine(self, packages: Packages) -> Result<Engine, Vec<Diagnostic>> {
        let mut engine = Engine::new();
        engine.set_gather_prints(true);
        let mut diags = Vec::new();
        for (file, text) in self.policies {
            match engine.add_policy(file.clone(), text) {
                Err(e) => diags.push(diagnostic(&e, &file)),
                // A repository policy may add packages and rules, never join a built-in
                // package: rules of one package combine across files, so it could
                // redefine what a built-in rule relies on.
                Ok(package)
                    if packages == Packages::ReserveBuiltin
                        && !file.starts_with("builtin/")
                        && (package == RESERVED_PACKAGE
                            || package.starts_with(&format!("{RESERVED_PACKAGE}."))) =>
                {
                    let shown = package.trim_start_matches("data.");
                    diags.push(Diagnostic::error(
                        file.as_str(),
                        Some(Pos::new(1, 1)),
                        Code::PolicyError,
                        format!(
                            "package {shown} is reserved for rollgate's built-in policies; \
                             a repository policy uses a package of its own (e.g. rollgate.team.{})",
                            shown.rsplit('.').next().unwrap_or("rules")
                        ),
                    ));
                }
                Ok(_) => {}
            }
        }
        if let Err(e) = engine.add_data(regorus::Value::from(Value::Object(self.data))) {
            diags.push(Diagnostic::error(
                "policies",
                None,
                Code::PolicyError,
                format!("cannot load policy data: {}", one_line(&e)),
            ));
        }
        if diags.is_empty() {
            Ok(engine)
        } else {
            Err(diags)
        }
    }
}

/// `policies` for `/repo/policies`: diagnostics name files relative to the repository.
fn dir_label(dir: &Path) -> String {
    match dir.file_name() {
        Some(name) => name.to_string_lossy().into_owned(),
        None => dir.display().to_string(),
    }
}

/// A regular file's text; `None` for directories and other non-files; an error for
/// symlinks, oversized or non-UTF-8 files.
fn read_bounded(path: &Path, file: &str) -> Result<Option<String>, Diagnostic> {
    let io_error =
        |e: io::Error| Diagnostic::error(file, None, Code::Io, format!("cannot read file: {e}"));
    let meta = fs::symlink_metadata(path).map_err(io_error)?;
    if meta.file_type().is_symlink() {
        return Err(Diagnostic::error(
            file,
            None,
            Code::UnsafePath,
            "policy files may not be symlinks",
        ));
    }
    if !meta.is_file() {
        return Ok(None);
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(Diagnostic::error(
            file,
            None,
            Code::InputLimit,
            format!(
                "file is {} bytes; the limit is {MAX_FILE_BYTES}",
                meta.len()
            ),
        ));
    }
    fs::read_to_string(path).map(Some).map_err(io_error)
}

/// A data file as a JSON object, to merge into `data`.
fn parse_data(
    file: &str,
    name: &str,
    text: &str,
) -> Result<serde_json::Map<String, Value>, Diagnostic> {
    let value = if name.ends_with(".json") {
        serde_json::from_str::<Value>(text).map_err(|e| {
            let line = u32::try_from(e.line()).unwrap_or(u32::MAX);
            let col = u32::try_from(e.column()).unwrap_or(u32::MAX);
            let pos = (line > 0).then(|| Pos::new(line, col.max(1)));
            Diagnostic::error(file, pos, Code::InvalidValue, format!("invalid JSON: {e}"))
        })?
    } else {
        crate::model::yaml::parse(file, text)?.to_json()
    };
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(Diagnostic::error(
            file,
            Some(Pos::new(1, 1)),
            Code::WrongType,
            "a policy data file must hold a mapping at the top level",
        )),
    }
}

/// Deep-merge `overlay` into `base`: mappings merge key by key, anything else in
/// `overlay` replaces what `base` had (so a repository file overrides a built-in value).
pub(super) fn merge(
    base: &mut serde_json::Map<String, Value>,
    overlay: serde_json::Map<String, Value>,
) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(Value::Object(b)), Value::Object(o)) => merge(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Every evaluation under the wall-clock limit.
pub(super) fn set_limits(engine: &mut Engine) {
    set_time_limit(engine, EVAL_TIME_LIMIT);
}

/// Each later engine call (`eval_rule`, `eval_query`) restarts regorus' cooperative timer
/// with this limit.
pub(super) fn set_time_limit(engine: &mut Engine, limit: std::time::Duration) {
    engine.set_execution_timer_config(ExecutionTimerConfig {
        limit,
        check_interval: TIMER_CHECK_INTERVAL,
    });
}

/// The `deny` and `warn` rules declared in `rollgate` and `rollgate.*` packages, sorted
/// by package, `deny` before `warn`, without duplicates (a package may span files).
pub(super) fn find_rules(engine: &Engine) -> Result<Vec<RuleRef>, Vec<Diagnostic>> {
    let internal = |e: anyhow::Error| {
        vec![Diagnostic::error(
            "policies",
            None,
            Code::PolicyError,
            one_line(&e),
        )]
    };
    let mut found = BTreeSet::new();
    for package in engine.get_policy_package_components().map_err(internal)? {
        if package.components.first().map(String::as_str) != Some("rollgate") {
            continue;
        }
        for (order, kind) in [(0u8, Kind::Deny), (1, Kind::Warn)] {
            if engine
                .has_declared_rule_rooted_at(&package.source_file, kind.as_str())
                .map_err(|e| vec![diagnostic(&e, &package.source_file)])?
            {
                found.insert((
                    package.components.join("."),
                    order,
                    rule_path(&package.components, kind.as_str()),
                ));
            }
        }
    }
    Ok(found
        .into_iter()
        .map(|(policy, order, path)| RuleRef {
            policy,
            kind: if order == 0 { Kind::Deny } else { Kind::Warn },
            path,
        })
        .collect())
}

/// `data.rollgate.builtin.digest.deny`; components that are not plain identifiers are
/// written in brackets: `data.rollgate["my-team"].deny`.
pub(super) fn rule_path(components: &[String], rule: &str) -> String {
    let mut path = String::from("data");
    for c in components.iter().map(String::as_str).chain([rule]) {
        if is_identifier(c) {
            path.push('.');
            path.push_str(c);
        } else {
            path.push('[');
            path.push_str(&Value::String(c.to_string()).to_string());
            path.push(']');
        }
    }
    path
}

fn is_identifier(s: &str) -> bool {
    const KEYWORDS: &[&str] = &[
        "as", "contains", "default", "else", "every", "false", "if", "import", "in", "not", "null",
        "package", "some", "true", "with",
    ];
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !KEYWORDS.contains(&s)
}

/// The generated module whose rules gather `deny`/`warn` values in one engine call:
/// `findings` every one of `rules`, in order; `repo_findings` those of `repo` (the
/// rules left when the built-ins' pre-check stands for theirs, `native`).
pub(super) fn collector_module(rules: &[RuleRef], repo: &[RuleRef]) -> String {
    let mut text = String::from("package rollgate_internal__\n\nimport rego.v1\n");
    for (name, rules) in [("findings", rules), ("repo_findings", repo)] {
        text.push_str(&format!("\n{name} := [\n"));
        for rule in rules {
            text.push('\t');
            text.push_str(&rule.path);
            text.push_str(",\n");
        }
        text.push_str("]\n");
    }
    text
}

/// A regorus error as a diagnostic: regorus renders located errors as
/// `--> FILE:LINE:COL`, a source excerpt, then `error: MESSAGE`.
pub(super) fn diagnostic(err: &anyhow::Error, fallback_file: &str) -> Diagnostic {
    let text = format!("{err:#}");
    match locate(&text) {
        Some(loc) => Diagnostic::error(loc.file, Some(loc.pos), Code::PolicyError, loc.message),
        None => Diagnostic::error(fallback_file, None, Code::PolicyError, squash(&text)),
    }
}

/// A regorus error on one line: `FILE:LINE:COL: MESSAGE` when it has a place.
pub(super) fn one_line(err: &anyhow::Error) -> String {
    let text = format!("{err:#}");
    match locate(&text) {
        Some(loc) => format!(
            "{}:{}:{}: {}",
            loc.file, loc.pos.line, loc.pos.col, loc.message
        ),
        None => squash(&text),
    }
}

struct Located {
    file: String,
    pos: Pos,
    message: String,
}

fn locate(text: &str) -> Option<Located> {
    let start = text.find("--> ")?;
    let rest = text.get(start + 4..)?;
    let (location, after) = rest.split_once('\n').unwrap_or((rest, ""));
    let mut parts = location.trim().rsplitn(3, ':');
    let col = parts.next()?.parse().ok()?;
    let line = parts.next()?.parse().ok()?;
    let file = parts.next()?.to_string();
    let message = match after.find("error: ") {
        Some(i) => after.get(i + "error: ".len()..).unwrap_or_default(),
        None => after.lines().last().unwrap_or_default(),
    };
    let prefix = text
        .get(..start)
        .unwrap_or_default()
        .trim()
        .trim_end_matches(':');
    let message = if prefix.is_empty() {
        squash(message)
    } else {
        format!("{}: {}", squash(prefix), squash(message))
    };
    Some(Located {
        file,
        pos: Pos::new(line, col),
        message,
    })
}

/// Collapse whitespace runs (regorus messages span lines) into single spaces.
fn squash(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
