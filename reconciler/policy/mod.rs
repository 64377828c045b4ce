//! Rego policies, evaluated in-process with regorus: the built-in ones embedded in the
//! binary, plus the repository's own `policies/` folder.
//!
//! ```text
//!   policies/*.rego + data.json (built-in, include_str!)  ─┐
//!   <repo>/policies/*.rego + *.json|*.yaml (optional)      ─┴─▶ load: parse once, prepare
//!                                                                  │ clone per worker
//!   input (one plan, its steps, statuses, change, …) ──▶ evaluate ─▶ PolicyOutcome { deny, warn }
//! ```
//!
//! Conventions (those of OPA and conftest): a policy is `package rollgate.<name>` with
//! `import rego.v1` and rules `deny contains msg if { … }` / `warn contains msg if { … }`,
//! `msg` a string. Built-ins live under `rollgate.builtin.<name>`. Packages outside
//! `rollgate` are loaded (they may hold helpers) but their `deny` and `warn` are ignored.
//! Data files merge into `data`; a repository file overrides a built-in value at the same
//! path (e.g. `rollgate.limits.maxFirstStepWeight`).
//!
//! Invariants: policies are parsed and prepared once, in [`PolicySet::load`]; every
//! evaluation runs under regorus' cooperative execution timer ([`EVAL_TIME_LIMIT`]), so a
//! slow policy yields [`PolicyError::TimeLimit`] instead of stalling the gate. Repository
//! files are read without following symlinks and with a size cap.

mod load;
mod native;
mod test_runner;

#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use regorus::Engine;
use serde::Deserialize as _;
use serde_json::Value;

use crate::model::diagnostics::Diagnostic;

pub use test_runner::{TestReport, TestResult, run_tests};

/// The wall-clock budget of one [`PolicySet::evaluate`] call (and of one policy test).
pub const EVAL_TIME_LIMIT: Duration = Duration::from_secs(2);

/// The rule that gathers every `deny` and `warn` of every `rollgate.*` package in one
/// evaluation; generated at load time (see `load::collector_module`).
const COLLECTOR_RULE: &str = "data.rollgate_internal__.findings";

/// The rule that gathers the `deny` and `warn` of every `rollgate.*` package but the
/// built-ins, for inputs the built-ins' pre-check proved clean (`native`).
const REPO_COLLECTOR_RULE: &str = "data.rollgate_internal__.repo_findings";

/// A prepared policy engine: built-in plus repository policies and data.
///
/// Cloning is cheap-ish (the parsed modules are shared) and gives an independent engine:
/// clone once per worker thread. A shared `PolicySet` also works across threads, but
/// evaluations on it take turns.
pub struct PolicySet {
    engine: Mutex<Engine>,
    /// The `deny`/`warn` rules found at load time, in package order.
    rules: Vec<RuleRef>,
    /// `rules` but the built-ins', which `native` stands for on the inputs it proves clean.
    repo_rules: Vec<RuleRef>,
    /// The built-ins' pre-check, when it applies to this set (`native`).
    native: Option<native::Prescreen>,
}

/// One `deny` or `warn` rule of one `rollgate.*` package.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RuleRef {
    /// The package, dotted: `rollgate.builtin.digest`.
    policy: String,
    kind: Kind,
    /// The Rego reference to the rule: `data.rollgate.builtin.digest.deny`.
    path: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Deny,
    Warn,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Deny => "deny",
            Kind::Warn => "warn",
        }
    }
}

impl Clone for PolicySet {
    fn clone(&self) -> Self {
        let engine = self
            .engine
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        Self {
            engine: Mutex::new(engine),
            rules: self.rules.clone(),
            repo_rules: self.repo_rules.clone(),
            native: self.native.clone(),
        }
    }
}

impl fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicySet")
            .field("policies", &self.policies())
            .finish_non_exhaustive()
    }
}

/// Input keys shared by many evaluations, converted to the engine's value type once;
/// cloning one into an input is a reference-count increment. See
/// [`PolicySet::evaluate_with`].
#[derive(Debug, Clone, Default)]
pub struct SharedInput {
    parts: Vec<(regorus::Value, regorus::Value)>,
}

impl SharedInput {
    /// Every key of `shared` (a JSON object; anything else is empty).
    pub fn new(shared: &Value) -> Self {
        let parts = match shared {
            Value::Object(map) => map
                .iter()
                .filter_map(|(k, v)| Some((regorus::Value::from(k.as_str()), to_regorus(v).ok()?)))
                .collect(),
            _ => Vec::new(),
        };
        Self { parts }
    }
}

impl SharedInput {
    /// This input with `key` set to a value prepared beforehand (it replaces a `key` of
    /// the document it was made from).
    pub fn with(mut self, key: &str, value: &Prepared) -> Self {
        let key = regorus::Value::from(key);
        self.parts.retain(|(k, _)| *k != key);
        self.parts.push((key, value.0.clone()));
        self
    }
}

/// One input value converted to the engine's value type, kept by the caller between
/// evaluations (the gate keeps each status file's view this way): cloning it, or putting
/// it into an object, is a reference-count increment.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared(regorus::Value);

impl Prepared {
    pub fn from_json(value: &Value) -> Result<Self, PolicyError> {
        to_regorus(value).map(Self)
    }

    /// An object of prepared values by key (a later duplicate key wins).
    pub fn object<'a>(entries: impl IntoIterator<Item = (&'a str, &'a Prepared)>) -> Self {
        let map: std::collections::BTreeMap<regorus::Value, regorus::Value> = entries
            .into_iter()
            .map(|(k, v)| (regorus::Value::from(k), v.0.clone()))
            .collect();
        Self(regorus::Value::from(map))
    }

    /// Set `key` of this object to `value` (copying the object only while another
    /// holder shares it). Not an object: nothing changes.
    pub fn insert(&mut self, key: &str, value: &Prepared) {
        if let Ok(map) = self.0.as_object_mut() {
            map.insert(regorus::Value::from(key), value.0.clone());
        }
    }

    /// Remove `key` from this object, if there.
    pub fn remove(&mut self, key: &str) {
        if let Ok(map) = self.0.as_object_mut() {
            map.remove(&regorus::Value::from(key));
        }
    }

    /// The same value in blocks of its own (a clone shares every part): what
    /// `memory::remake_each` moves a kept view with.
    pub fn made_again(&self) -> Self {
        Self(made_again(&self.0))
    }
}

/// A copy of `v` that shares no string, list, set or object with it.
fn made_again(v: &regorus::Value) -> regorus::Value {
    use regorus::Value as V;
    match v {
        V::String(s) => V::from(&**s),
        V::Array(a) => V::from(a.iter().map(made_again).collect::<Vec<_>>()),
        V::Set(s) => V::from(
            s.iter()
                .map(made_again)
                .collect::<std::collections::BTreeSet<_>>(),
        ),
        V::Object(o) => V::from(
            o.iter()
                .map(|(k, v)| (made_again(k), made_again(v)))
                .collect::<std::collections::BTreeMap<_, _>>(),
        ),
        _ => v.clone(),
    }
}

/// What the policies said about one input.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PolicyOutcome {
    pub deny: Vec<Finding>,
    pub warn: Vec<Finding>,
}

impl PolicyOutcome {
    pub fn is_denied(&self) -> bool {
        !self.deny.is_empty()
    }
}

/// One message from one policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// The package that produced it, e.g. `rollgate.builtin.digest`.
    pub policy: String,
    pub message: String,
}

/// Why an evaluation produced no outcome. Callers treat any of these as a failed policy
/// check (fail closed), never as a pass.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy evaluation exceeded its time limit of {limit:?}{}", in_policy(.policy))]
    TimeLimit {
        limit: Duration,
        policy: Option<String>,
    },
    #[error("policy evaluation failed{}: {message}", in_policy(.policy))]
    Eval {
        policy: Option<String>,
        message: String,
    },
}

fn in_policy(policy: &Option<String>) -> String {
    policy
        .as_ref()
        .map(|p| format!(" in {p}"))
        .unwrap_or_default()
}

impl PolicySet {
    /// The built-in policies plus, when given, the repository's policy folder: every
    /// `*.rego` except `*_test.rego`, and data files `*.json`, `*.yaml`, `*.yml`. The
    /// folder is not searched recursively. Diagnostics name files as `<folder>/<file>`
    /// (e.g. `policies/foo.rego`), with line and column when the problem has a place.
    pub fn load(repo_policy_dir: Option<&std::path::Path>) -> Result<PolicySet, Vec<Diagnostic>> {
        let mut sources = load::Sources::builtin();
        if let Some(dir) = repo_policy_dir {
            sources.add_dir(dir, load::Include::PoliciesOnly, true)?;
        }
        let engine = sources.into_engine(load::Packages::ReserveBuiltin)?;
        Self::prepare(engine)
    }

    /// The built-in policies only.
    pub fn builtin() -> PolicySet {
        match load::Sources::builtin()
            .into_engine(load::Packages::ReserveBuiltin)
            .and_then(Self::prepare)
        {
            Ok(set) => set,
            // Unreachable while the built-ins' own tests pass; an engine with no policies
            // is the least surprising fallback, and the failure is logged.
            Err(diags) => {
                for d in &diags {
                    tracing::error!(%d, "built-in policy failed to load");
                }
                Self {
                    engine: Mutex::new(Engine::new()),
                    rules: Vec::new(),
                    repo_rules: Vec::new(),
                    native: None,
                }
            }
        }
    }

    fn prepare(mut engine: Engine) -> Result<PolicySet, Vec<Diagnostic>> {
        let rules = load::find_rules(&engine)?;
        let repo_rules: Vec<RuleRef> = rules
            .iter()
            .filter(|r| !native::RULES.contains(&r.path.as_str()))
            .cloned()
            .collect();
        engine
            .add_policy(
                load::COLLECTOR_FILE.to_string(),
                load::collector_module(&rules, &repo_rules),
            )
            .map_err(|e| vec![load::diagnostic(&e, load::COLLECTOR_FILE)])?;
        load::set_limits(&mut engine);
        // A trivial query runs regorus' preparation (analysis, scheduling, rule indexing)
        // now, without evaluating any policy: clones start prepared, and semantic errors
        // (unsafe variables, conflicting rules) surface as diagnostics at load time.
        engine
            .eval_query("true".to_string(), false)
            .map_err(|e| vec![load::diagnostic(&e, "policies")])?;
        let native = Self::prescreen(&engine, &rules);
        Ok(PolicySet {
            engine: Mutex::new(engine),
            rules,
            repo_rules,
            native,
        })
    }

    /// The built-ins' pre-check, when this set holds the built-in rules it was written
    /// for, all of them, and nothing else reaches into `data.rollgate.builtin`: no data
    /// (it could stand in for a built-in rule), and no module of package `rollgate`
    /// other than the built-ins' (a rule ref such as `builtin.digest.deny` joins the
    /// built-in's rule without declaring its package).
    fn prescreen(engine: &Engine, rules: &[RuleRef]) -> Option<native::Prescreen> {
        let packages = engine.get_policy_package_components().ok()?;
        if packages.iter().any(|p| {
            p.components.len() <= 1
                && p.components.first().is_none_or(|c| c == "rollgate")
                && !p.source_file.starts_with("builtin/")
        }) {
            return None;
        }
        let builtin: Vec<&str> = rules
            .iter()
            .filter(|r| r.policy.starts_with("rollgate.builtin."))
            .map(|r| r.path.as_str())
            .collect();
        let texts = load::BUILTIN_POLICIES.iter().map(|(_, text)| *text);
        if builtin != native::RULES || native::fingerprint(texts) != native::BUILTIN_FINGERPRINT {
            return None;
        }
        let data = engine.get_data();
        let rollgate = &data[&regorus::Value::from("rollgate")];
        if rollgate[&regorus::Value::from("builtin")] != regorus::Value::Undefined {
            return None;
        }
        let limit =
            &rollgate[&regorus::Value::from("limits")][&regorus::Value::from("maxFirstStepWeight")];
        let limit = match limit {
            regorus::Value::Undefined => None,
            v => Some(serde_json::to_value(v).ok()?),
        };
        Some(native::Prescreen::new(limit.as_ref()))
    }

    /// The packages whose `deny`/`warn` rules are evaluated, sorted.
    pub fn policies(&self) -> Vec<String> {
        let mut names: Vec<String> = self.rules.iter().map(|r| r.policy.clone()).collect();
        names.dedup();
        names
    }

    /// Evaluate every `deny` and `warn` set of every `rollgate.*` package against `input`,
    /// in one engine call bounded by [`EVAL_TIME_LIMIT`]. Findings are ordered by package,
    /// then message.
    pub fn evaluate(&self, input: &Value) -> Result<PolicyOutcome, PolicyError> {
        self.evaluate_value(to_regorus(input)?)
    }

    /// [`evaluate`](Self::evaluate) with the parts of the input that every plan of a
    /// revision shares (`statuses`, `settings`, `change`, `now`) converted once, in
    /// [`SharedInput::new`], instead of once per plan: with thousands of plans, every
    /// status file in every input would make the gate quadratic. A key present in
    /// `input` wins over the same key in `shared`.
    pub fn evaluate_with(
        &self,
        shared: &SharedInput,
        input: &Value,
    ) -> Result<PolicyOutcome, PolicyError> {
        let mut value = to_regorus(input)?;
        if let Ok(object) = value.as_object_mut() {
            for (key, part) in &shared.parts {
                if !object.contains_key(key) {
                    object.insert(key.clone(), part.clone());
                }
            }
        }
        self.evaluate_value(value)
    }

    /// [`evaluate_with`](Self::evaluate_with) for an input given as its top-level keys,
    /// each converted straight into the engine's values: no JSON document of the whole
    /// input is built (for the gate, that would copy every plan's document once more).
    /// A key in `fields` wins over the same key in `shared`.
    pub fn evaluate_fields(
        &self,
        shared: &SharedInput,
        fields: &[(&str, &Value)],
    ) -> Result<PolicyOutcome, PolicyError> {
        let field = |name: &str| {
            fields
                .iter()
                .find(|(key, _)| *key == name)
                .map_or(&Value::Null, |(_, v)| *v)
        };
        // The built-ins' pre-check: a plan it proves clean needs only the repository's
        // own rules evaluated (none: no engine call at all).
        let clean = self
            .native
            .as_ref()
            .is_some_and(|n| n.clean(field("plan"), field("steps"), field("windowOpen")));
        if clean && self.repo_rules.is_empty() {
            return Ok(PolicyOutcome::default());
        }
        let mut value = regorus::Value::new_object();
        if let Ok(object) = value.as_object_mut() {
            for (key, field) in fields {
                object.insert(regorus::Value::from(*key), to_regorus(field)?);
            }
            for (key, part) in &shared.parts {
                if !object.contains_key(key) {
                    object.insert(key.clone(), part.clone());
                }
            }
        }
        if clean {
            self.evaluate_rules(value, REPO_COLLECTOR_RULE, &self.repo_rules)
        } else {
            self.evaluate_value(value)
        }
    }

    fn evaluate_value(&self, input: regorus::Value) -> Result<PolicyOutcome, PolicyError> {
        self.evaluate_rules(input, COLLECTOR_RULE, &self.rules)
    }

    /// Evaluate `rules` against `input` in one call of `collector` (the rule that gathers
    /// them, in order); rule by rule when that fails, to name the culprit.
    fn evaluate_rules(
        &self,
        input: regorus::Value,
        collector: &str,
        rules: &[RuleRef],
    ) -> Result<PolicyOutcome, PolicyError> {
        let started = Instant::now();
        let mut engine = self.engine.lock().unwrap_or_else(PoisonError::into_inner);
        engine.set_input(input);
        let collected = engine.eval_rule(collector.to_string());
        discard_prints(&mut engine);
        match collected {
            Ok(value) if value != regorus::Value::Undefined => Self::outcome(rules, &value),
            // The whole budget is spent: say so, without running anything again (so we
            // cannot tell which policy was slow).
            Err(e) if matches!(policy_error(&e, None), PolicyError::TimeLimit { .. }) => {
                Err(PolicyError::TimeLimit {
                    limit: EVAL_TIME_LIMIT,
                    policy: None,
                })
            }
            // Some rule failed, or a `deny`/`warn` that is not a partial set came out
            // undefined: evaluate rule by rule, within what is left of the budget, to
            // name the culprit.
            Ok(_) | Err(_) => {
                let outcome = Self::evaluate_each(rules, &mut engine, started);
                load::set_time_limit(&mut engine, EVAL_TIME_LIMIT);
                outcome
            }
        }
    }

    fn outcome(
        rules: &[RuleRef],
        collected: &regorus::Value,
    ) -> Result<PolicyOutcome, PolicyError> {
        let values = collected.as_array().map_err(|e| PolicyError::Eval {
            policy: None,
            message: load::one_line(&e),
        })?;
        let mut outcome = PolicyOutcome::default();
        for (rule, value) in rules.iter().zip(values.iter()) {
            push_findings(&mut outcome, rule, value)?;
        }
        Ok(outcome)
    }

    fn evaluate_each(
        rules: &[RuleRef],
        engine: &mut Engine,
        started: Instant,
    ) -> Result<PolicyOutcome, PolicyError> {
        let mut outcome = PolicyOutcome::default();
        for rule in rules {
            let left = EVAL_TIME_LIMIT.saturating_sub(started.elapsed());
            load::set_time_limit(engine, left.max(Duration::from_millis(1)));
            let value = engine.eval_rule(rule.path.clone());
            discard_prints(engine);
            let value = value.map_err(|e| policy_error(&e, Some(&rule.policy)))?;
            push_findings(&mut outcome, rule, &value)?;
        }
        Ok(outcome)
    }
}

/// Convert without cloning the JSON tree first.
fn to_regorus(input: &Value) -> Result<regorus::Value, PolicyError> {
    regorus::Value::deserialize(input).map_err(|e| PolicyError::Eval {
        policy: None,
        message: format!("cannot convert the policy input: {e}"),
    })
}

/// `print()` output is gathered, not written to stderr (a repo policy must not be able to
/// flood the daemon's output), and dropped after each evaluation.
fn discard_prints(engine: &mut Engine) {
    if let Ok(prints) = engine.take_prints() {
        for line in prints {
            tracing::trace!(%line, "policy print");
        }
    }
}

fn push_findings(
    outcome: &mut PolicyOutcome,
    rule: &RuleRef,
    value: &regorus::Value,
) -> Result<(), PolicyError> {
    if *value == regorus::Value::Undefined {
        return Ok(());
    }
    let json = serde_json::to_value(value).map_err(|e| PolicyError::Eval {
        policy: Some(rule.policy.clone()),
        message: e.to_string(),
    })?;
    let list = match rule.kind {
        Kind::Deny => &mut outcome.deny,
        Kind::Warn => &mut outcome.warn,
    };
    let mut push = |v: &Value| {
        list.push(Finding {
            policy: rule.policy.clone(),
            message: message_text(v),
        });
    };
    match &json {
        // A set (the convention) or an array: one finding per element.
        Value::Array(items) => items.iter().for_each(&mut push),
        // A complete rule that said nothing.
        Value::Null | Value::Bool(false) => {}
        // A complete rule `deny := "…"`: one finding.
        other => push(other),
    }
    Ok(())
}

/// A finding's text: the string itself, or conftest's `{"msg": "…"}` form, or compact JSON.
fn message_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Object(map) => match map.get("msg") {
            Some(Value::String(s)) => s.clone(),
            _ => value.to_string(),
        },
        other => other.to_string(),
    }
}

fn policy_error(err: &anyhow::Error, policy: Option<&str>) -> PolicyError {
    let policy = policy.map(str::to_string);
    let timed_out = err.chain().any(|c| {
        matches!(
            c.downcast_ref::<regorus::LimitError>(),
            Some(regorus::LimitError::TimeLimitExceeded { .. })
        )
    }) || err.to_string().contains("exceeded time limit");
    if timed_out {
        PolicyError::TimeLimit {
            limit: EVAL_TIME_LIMIT,
            policy,
        }
    } else {
        PolicyError::Eval {
            policy,
            message: load::one_line(err),
        }
    }
}
