//! `rollgate policy test`: OPA-style unit tests for policies.
//!
//! Every `.rego` file (tests included) and data file of each folder is loaded on top of
//! the built-in data document; every rule named `test_*` in a `*_test.rego` file is
//! evaluated, and passes when its value is `true`. Undefined, `false`, an error or the
//! time limit ([`super::EVAL_TIME_LIMIT`] per test) is a failure.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use regorus::unstable::{Parser, Rule, RuleHead};

use super::load::{self, Include, Sources};
use crate::model::diagnostics::Diagnostic;

/// The outcome of every test found.
#[derive(Debug, Clone, Default)]
pub struct TestReport {
    pub results: Vec<TestResult>,
}

/// One `test_*` rule.
#[derive(Debug, Clone)]
pub struct TestResult {
    /// The test's package, e.g. `rollgate.builtin.digest_test`.
    pub package: String,
    /// The rule name, e.g. `test_tagged_kubernetes_artifact_is_denied`.
    pub name: String,
    pub passed: bool,
    /// Why a failing test failed when it did not just evaluate to something other than
    /// `true`: an evaluation error or the time limit.
    pub error: Option<String>,
    pub duration: Duration,
    /// What the test `print()`ed, shown under a failing test.
    pub output: Vec<String>,
}

impl TestReport {
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.passed).count()
    }

    pub fn failed(&self) -> usize {
        self.results.len() - self.passed()
    }

    /// One line per test, `PASS pkg.test_x` or `FAIL pkg.test_x` (with `: error` when
    /// there is one, and the test's printed lines indented below), then `N passed, M failed`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for r in &self.results {
            let verdict = if r.passed { "PASS" } else { "FAIL" };
            let _ = write!(out, "{verdict} {}.{}", r.package, r.name);
            if let Some(error) = &r.error {
                let _ = write!(out, ": {error}");
            }
            out.push('\n');
            if !r.passed {
                for line in &r.output {
                    let _ = writeln!(out, "    {line}");
                }
            }
        }
        let _ = writeln!(out, "{} passed, {} failed", self.passed(), self.failed());
        out
    }
}

/// Load every `.rego` and data file in each folder and run every `test_*` rule of every
/// `*_test.rego` file, in package then file order. A file that does not parse stops the
/// run with diagnostics (every such file is reported).
pub fn run_tests(dirs: &[PathBuf]) -> Result<TestReport, Vec<Diagnostic>> {
    let mut sources = Sources::builtin_data();
    let mut diags = Vec::new();
    for dir in dirs {
        if let Err(mut d) = sources.add_dir(dir, Include::WithTests, false) {
            diags.append(&mut d);
        }
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    let mut engine = sources.into_engine(super::load::Packages::Any)?;
    load::set_limits(&mut engine);
    // Prepare now, so a semantic error (unsafe variable, conflicting rules) is reported
    // once, with its place, rather than as the failure of every test.
    engine
        .eval_query("true".to_string(), false)
        .map_err(|e| vec![load::diagnostic(&e, "policies")])?;

    let mut report = TestReport::default();
    for (package, name) in discover(&mut engine)? {
        let path = load::rule_path(&package, &name);
        let start = Instant::now();
        let value = engine.eval_rule(path);
        let duration = start.elapsed();
        let output = engine.take_prints().unwrap_or_default();
        let (passed, error) = match value {
            Ok(v) => (v == regorus::Value::Bool(true), None),
            Err(e) => (false, Some(super::policy_error(&e, None).to_string())),
        };
        report.results.push(TestResult {
            package: package.join("."),
            name,
            passed,
            error,
            duration,
            output,
        });
    }
    Ok(report)
}

/// (package components, rule name) of every `test_*` rule in a `*_test.rego` module,
/// without duplicates (a test may have several bodies), sorted.
fn discover(
    engine: &mut regorus::Engine,
) -> Result<BTreeSet<(Vec<String>, String)>, Vec<Diagnostic>> {
    let packages = engine
        .get_policy_package_components()
        .map_err(|e| vec![load::diagnostic(&e, "policies")])?;
    let mut tests = BTreeSet::new();
    for (module, package) in engine.get_modules().iter().zip(packages) {
        if !package.source_file.ends_with("_test.rego") {
            continue;
        }
        for rule in &module.policy {
            let Rule::Spec {
                head: RuleHead::Compr { refr, .. },
                ..
            } = rule.as_ref()
            else {
                continue;
            };
            let Ok(components) = Parser::get_path_ref_components(refr) else {
                continue;
            };
            if let [name] = components.as_slice()
                && name.text().starts_with("test_")
            {
                tests.insert((package.components.clone(), name.text().to_string()));
            }
        }
    }
    Ok(tests)
}
