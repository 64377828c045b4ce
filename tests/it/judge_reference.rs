//! The baseline judge's statistics agree with SciPy.
//!
//! `tests/data/judge/reference.json` was generated once by `generate.py` next to it
//! (SciPy's `mannwhitneyu` asymptotic and exact, `fisher_exact`, the pooled z test,
//! `erfc`, `norm.sf/cdf/ppf`) with fixed seeds, and is committed. Every p-value must
//! agree to 1e-9 relative (values below 1e-300 count as equal), every U exactly.

use std::path::Path;

use rollgate::engine::stats::{self, Alternative, Method};
use serde_json::Value;

const RELATIVE: f64 = 1e-9;
const FLOOR: f64 = 1e-300;

fn reference() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/judge/reference.json");
    let text = std::fs::read_to_string(&path).expect("reference vectors are committed");
    serde_json::from_str(&text).expect("reference vectors are JSON")
}

fn cases<'a>(doc: &'a Value, key: &str) -> &'a [Value] {
    doc[key]
        .as_array()
        .unwrap_or_else(|| panic!("`{key}` is a list"))
}

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("`{key}` is a number in {v}"))
}

fn count(v: &Value) -> u64 {
    v.as_u64().expect("a count")
}

fn floats(v: &Value, key: &str) -> Vec<f64> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("`{key}` is a list"))
        .iter()
        .map(|x| x.as_f64().expect("a number"))
        .collect()
}

fn alternative(v: &Value) -> Alternative {
    let s = v["alternative"].as_str().expect("an alternative");
    Alternative::parse(s).unwrap_or_else(|| panic!("unknown alternative `{s}`"))
}

/// `None` when they agree, else the relative error.
fn disagreement(ours: f64, theirs: f64) -> Option<f64> {
    if ours.abs() < FLOOR && theirs.abs() < FLOOR {
        return None;
    }
    if ours == theirs {
        return None;
    }
    let rel = ((ours - theirs) / theirs).abs();
    // NaN (ours undefined) counts as a disagreement too
    (rel.is_nan() || rel > RELATIVE).then_some(rel)
}

/// Check every case, then report all disagreements at once.
fn check_all(name: &str, cases: &[Value], mut one: impl FnMut(&Value) -> Vec<(String, f64, f64)>) {
    let mut bad = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        for (what, ours, theirs) in one(case) {
            if let Some(rel) = disagreement(ours, theirs) {
                bad.push(format!(
                    "{name}[{i}] {what}: ours {ours:e}, scipy {theirs:e} (relative {rel:e})"
                ));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "{} disagreements:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

#[test]
fn mann_whitney_agrees_with_scipy_asymptotic_and_exact() {
    let doc = reference();
    let cases = cases(&doc, "mannwhitneyu");
    let exact = cases.iter().filter(|c| c["method"] == "exact").count();
    assert!(
        cases.len() >= 200 && exact >= 40,
        "{} cases, {exact} exact",
        cases.len()
    );
    check_all("mannwhitneyu", cases, |c| {
        let (x, y) = (floats(c, "x"), floats(c, "y"));
        let method = match c["method"].as_str() {
            Some("exact") => Method::Exact,
            Some("asymptotic") => Method::Asymptotic,
            other => panic!("unknown method {other:?}"),
        };
        let t = stats::mann_whitney_u_with(&x, &y, alternative(c), method)
            .unwrap_or_else(|e| panic!("{e} for {c}"));
        assert_eq!(t.u, num(c, "statistic"), "U of {c}");
        assert_eq!(t.exact, method == Method::Exact);
        vec![("p".to_owned(), t.p_value, num(c, "pvalue"))]
    });
}

#[test]
fn fisher_agrees_with_scipy_on_every_side() {
    let doc = reference();
    let cases = cases(&doc, "fisher_exact");
    assert!(cases.len() >= 100);
    check_all("fisher_exact", cases, |c| {
        let t = &c["table"];
        let table = [
            [count(&t[0][0]), count(&t[0][1])],
            [count(&t[1][0]), count(&t[1][1])],
        ];
        let f = stats::fisher_exact(table, alternative(c));
        vec![(format!("p of {table:?}"), f.p_value, num(c, "pvalue"))]
    });
}

#[test]
fn the_pooled_z_test_agrees_with_the_formula() {
    let doc = reference();
    check_all("two_proportion_z", cases(&doc, "two_proportion_z"), |c| {
        let (x1, n1, x2, n2) = (
            count(&c["x1"]),
            count(&c["n1"]),
            count(&c["x2"]),
            count(&c["n2"]),
        );
        let t = stats::two_proportion_z(x1, n1, x2, n2, alternative(c)).expect("valid counts");
        vec![
            ("z".to_owned(), t.z, num(c, "z")),
            ("p".to_owned(), t.p_value, num(c, "pvalue")),
        ]
    });
}

#[test]
fn the_normal_distribution_agrees_with_scipy_in_the_tails() {
    let doc = reference();
    check_all("erfc", cases(&doc, "erfc"), |c| {
        vec![("erfc".to_owned(), stats::erfc(num(c, "x")), num(c, "erfc"))]
    });
    check_all("normal", cases(&doc, "normal"), |c| {
        let z = num(c, "z");
        vec![
            ("sf".to_owned(), stats::normal_sf(z), num(c, "sf")),
            ("cdf".to_owned(), stats::normal_cdf(z), num(c, "cdf")),
        ]
    });
    check_all("quantile", cases(&doc, "quantile"), |c| {
        vec![(
            "ppf".to_owned(),
            stats::normal_quantile(num(c, "p")),
            num(c, "ppf"),
        )]
    });
}

#[test]
fn the_reference_holds_at_least_200_cases_and_names_its_generator() {
    let doc = reference();
    let total: usize = [
        "mannwhitneyu",
        "fisher_exact",
        "two_proportion_z",
        "erfc",
        "normal",
        "quantile",
    ]
    .iter()
    .map(|k| cases(&doc, k).len())
    .sum();
    assert!(total >= 200, "{total}");
    assert_eq!(doc["generator"], "tests/data/judge/generate.py");
}
