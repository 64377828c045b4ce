use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::*;
use crate::model::diagnostics::Code;

const DIGEST: &str = "4f1c0e6c8f3b2a1d9e7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e";

/// A plan input every built-in allows: pinned kubernetes artifact, 5% first step, an
/// analysis step, production and critical labels, window open.
fn good_input() -> Value {
    let steps = json!([
        {"setWeight": 5},
        {"analysis": {"checks": ["success-rate"], "duration": "5m"}},
        {"setWeight": 25},
        {"pause": {"duration": "10m"}},
        {"setWeight": 100}
    ]);
    json!({
        "file": "plans/checkout.yaml",
        "plan": {
            "apiVersion": "rollgate.dev/v1alpha1",
            "kind": "RolloutPlan",
            "metadata": {"name": "checkout", "labels": {"environment": "production", "tier": "critical"}},
            "spec": {
                "target": "prod-eu",
                "workload": {"kubernetes": {"namespace": "payments", "deployment": "checkout"}},
                "artifact": format!("registry.example/checkout@sha256:{DIGEST}"),
                "strategy": {"canary": {"steps": steps.clone()}},
                "checks": [{"name": "success-rate", "source": "prometheus", "query": "q", "judge": {"min": 0.999}}],
                "minSamples": 200,
                "windows": {"allow": ["* 9-16 * * MON-THU"]}
            }
        },
        "steps": steps,
        "basePlan": null,
        "change": {"commit": null, "author": null, "files": ["plans/checkout.yaml"], "labels": []},
        "statuses": {},
        "settings": {},
        "windowOpen": true,
        "now": "2026-11-26T10:00:00Z"
    })
}

/// `good_input()` with one change: `with("/plan/spec/artifact", json!("x:1"))`.
fn with(pointer: &str, value: Value) -> Value {
    let mut input = good_input();
    put(&mut input, pointer, value);
    input
}

fn put(input: &mut Value, pointer: &str, value: Value) {
    *input.pointer_mut(pointer).expect("fixture pointer exists") = value;
}

fn denies(set: &PolicySet, input: &Value) -> Vec<(String, String)> {
    let outcome = set.evaluate(input).expect("evaluation succeeds");
    outcome
        .deny
        .into_iter()
        .map(|f| (f.policy, f.message))
        .collect()
}

fn builtin_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

/// A repo `policies/` folder in a temp dir, with the given files.
fn repo_policies(files: &[(&str, &str)]) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path().join("policies");
    std::fs::create_dir(&dir).expect("mkdir policies");
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("write policy file");
    }
    tmp
}

#[test]
fn builtins_load_and_allow_a_good_plan() {
    let set = PolicySet::builtin();
    assert_eq!(
        set.policies(),
        [
            "rollgate.builtin.digest",
            "rollgate.builtin.first_step",
            "rollgate.builtin.production_analysis",
            "rollgate.builtin.promotion",
            "rollgate.builtin.windows"
        ]
    );
    let loaded = PolicySet::load(None).expect("built-ins load");
    assert_eq!(loaded.policies(), set.policies());
    assert_eq!(
        set.evaluate(&good_input()).expect("evaluates"),
        PolicyOutcome::default()
    );
    // The one-call fast path answers (rules with no findings are empty sets, not
    // undefined), so evaluation never needs the rule-by-rule fallback.
    let mut engine = set.engine.lock().expect("not poisoned");
    engine.set_input(regorus::Value::from(good_input()));
    let collected = engine
        .eval_rule(COLLECTOR_RULE.to_string())
        .expect("collector evaluates");
    assert_eq!(collected.as_array().expect("array").len(), 5);
}

#[test]
fn policy_set_is_clone_and_send() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<PolicySet>();
    let set = PolicySet::builtin();
    let handle = {
        let set = set.clone();
        std::thread::spawn(move || {
            set.evaluate(&with("/windowOpen", json!(false)))
                .expect("evaluates")
        })
    };
    let outcome = handle.join().expect("thread joins");
    assert_eq!(outcome.deny.len(), 1);
    assert!(
        set.evaluate(&good_input())
            .expect("evaluates")
            .deny
            .is_empty()
    );
}

#[test]
fn digest_denies_a_tag_and_allows_a_digest() {
    let set = PolicySet::builtin();
    assert_eq!(
        denies(&set, &with("/plan/spec/artifact", json!("registry.example/checkout:1.2"))),
        [(
            "rollgate.builtin.digest".to_string(),
            r#"plan "checkout": artifact "registry.example/checkout:1.2" is not pinned by digest (use name@sha256:<digest>)"#
                .to_string()
        )]
    );
    // A local workload may use a tag.
    let mut local = with("/plan/spec/artifact", json!("api:1.2"));
    put(
        &mut local,
        "/plan/spec/workload",
        json!({"local": {"command": ["./api"]}}),
    );
    assert!(denies(&set, &local).is_empty());
}

#[test]
fn first_step_denies_a_large_first_weight_but_not_blue_green() {
    let set = PolicySet::builtin();
    let big = with(
        "/steps",
        json!([{"setWeight": 0}, {"setWeight": 50}, {"analysis": {"checks": ["a"]}}, {"setWeight": 100}]),
    );
    assert_eq!(
        denies(&set, &big),
        [(
            "rollgate.builtin.first_step".to_string(),
            r#"plan "checkout": the first step sends 50% of traffic to the canary; at most 25% is allowed (data.rollgate.limits.maxFirstStepWeight)"#
                .to_string()
        )]
    );
    let mut blue_green = big.clone();
    put(
        &mut blue_green,
        "/plan/spec/strategy",
        json!({"blueGreen": {"checks": ["a"]}}),
    );
    assert!(denies(&set, &blue_green).is_empty());
}

#[test]
fn production_analysis_denies_a_production_plan_without_checks() {
    let set = PolicySet::builtin();
    let no_analysis = with(
        "/steps",
        json!([{"setWeight": 5}, {"pause": {}}, {"setWeight": 100}]),
    );
    assert_eq!(
        denies(&set, &no_analysis),
        [(
            "rollgate.builtin.production_analysis".to_string(),
            r#"plan "checkout": production plans need at least one analysis step with a check"#
                .to_string()
        )]
    );
    let mut staging = no_analysis.clone();
    put(
        &mut staging,
        "/plan/metadata/labels/environment",
        json!("staging"),
    );
    assert!(denies(&set, &staging).is_empty());
}

#[test]
fn windows_denies_a_critical_change_outside_the_window_unless_emergency() {
    let set = PolicySet::builtin();
    let closed = with("/windowOpen", json!(false));
    let denied = denies(&set, &closed);
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0].0, "rollgate.builtin.windows");
    assert!(denied[0].1.starts_with(
        r#"plan "checkout": critical plan changed while its change window is closed"#
    ));

    let mut emergency = closed.clone();
    put(&mut emergency, "/change/labels", json!(["emergency"]));
    assert!(denies(&set, &emergency).is_empty());
    let mut labelled = closed.clone();
    labelled["plan"]["metadata"]["labels"]["emergency"] = json!("true");
    assert!(denies(&set, &labelled).is_empty());
}

#[test]
fn promotion_requires_the_artifact_to_have_succeeded_upstream() {
    let set = PolicySet::builtin();
    let artifact = format!("registry.example/checkout@sha256:{DIGEST}");
    let mut input = good_input();
    input["plan"]["spec"]["promotedFrom"] = json!("staging-checkout");

    // No status for the upstream plan at all.
    assert_eq!(
        denies(&set, &input),
        [(
            "rollgate.builtin.promotion".to_string(),
            r#"plan "checkout": promoted from "staging-checkout", which has no successful rollout yet"#.to_string()
        )]
    );
    // Upstream succeeded with another artifact only.
    input["statuses"] = json!({"staging-checkout": {
        "plan": "staging-checkout", "phase": "Succeeded", "artifact": "img@sha256:other",
        "stableArtifact": "img@sha256:other",
        "succeeded": [{"artifact": "img@sha256:other", "at": "2026-11-20T10:00:00Z"}]
    }});
    let denied = denies(&set, &input);
    assert_eq!(denied.len(), 1);
    assert!(
        denied[0]
            .1
            .contains("has not succeeded in \"staging-checkout\""),
        "{denied:?}"
    );
    // Upstream succeeded with this artifact.
    input["statuses"]["staging-checkout"]["succeeded"][0]["artifact"] = json!(artifact);
    assert!(denies(&set, &input).is_empty());
}

#[test]
fn a_repo_policy_adds_deny_and_warn_and_other_packages_are_ignored() {
    let repo = repo_policies(&[
        (
            "team.rego",
            "package rollgate.team\n\nimport rego.v1\n\n\
             deny contains msg if {\n\tnot input.plan.metadata.labels.team\n\tmsg := \"every plan needs a team label\"\n}\n\n\
             warn contains {\"msg\": \"checkout is special\"} if input.plan.metadata.name == \"checkout\"\n",
        ),
        (
            "other.rego",
            "package other\n\nimport rego.v1\n\ndeny contains \"ignored\" if true\n",
        ),
        (
            "team_test.rego",
            "package rollgate.team_test\n\nimport rego.v1\n\ntest_x if false\n",
        ),
    ]);
    let set = PolicySet::load(Some(&repo.path().join("policies"))).expect("loads");
    let outcome = set.evaluate(&good_input()).expect("evaluates");
    assert_eq!(
        outcome.deny,
        [Finding {
            policy: "rollgate.team".into(),
            message: "every plan needs a team label".into()
        }]
    );
    assert_eq!(
        outcome.warn,
        [Finding {
            policy: "rollgate.team".into(),
            message: "checkout is special".into()
        }]
    );
    assert!(
        !set.policies()
            .iter()
            .any(|p| p == "other" || p.ends_with("_test"))
    );
}

#[test]
fn a_missing_repo_policy_folder_is_empty() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let set = PolicySet::load(Some(&tmp.path().join("policies"))).expect("loads");
    assert_eq!(set.policies().len(), 5);
}

#[test]
fn a_syntax_error_names_the_file_line_and_column() {
    let repo = repo_policies(&[
        (
            "good.rego",
            "package rollgate.good\n\nimport rego.v1\n\ndeny contains \"x\" if false\n",
        ),
        (
            "bad.rego",
            "package rollgate.bad\n\nimport rego.v1\n\ndeny contains msg if {\n\tmsg := \n}\n",
        ),
        (
            "worse.rego",
            "package rollgate.worse\n\nimport rego.v1\n\nwarn contains if {\n",
        ),
    ]);
    let diags = PolicySet::load(Some(&repo.path().join("policies"))).expect_err("syntax error");
    assert_eq!(diags.len(), 2, "{diags:?}");
    assert_eq!(diags[0].file, "policies/bad.rego");
    assert_eq!(diags[0].code, Code::PolicyError);
    assert_eq!(diags[0].pos.map(|p| p.line), Some(6), "{}", diags[0]);
    assert_eq!(diags[1].file, "policies/worse.rego");
    assert!(diags[1].pos.is_some(), "{}", diags[1]);
    let rendered = diags[0].to_string();
    assert!(rendered.starts_with("policies/bad.rego:6:"), "{rendered}");
    assert!(!rendered.contains('\n'), "{rendered}");
}

#[test]
fn a_semantic_error_is_reported_at_load_with_its_place() {
    let repo = repo_policies(&[(
        "unsafe.rego",
        "package rollgate.unsafe\n\nimport rego.v1\n\ndeny contains msg if {\n\tx > 1\n\tmsg := \"no\"\n}\n",
    )]);
    let diags = PolicySet::load(Some(&repo.path().join("policies"))).expect_err("unsafe variable");
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert_eq!(diags[0].file, "policies/unsafe.rego", "{}", diags[0]);
    assert_eq!(diags[0].pos.map(|p| p.line), Some(6), "{}", diags[0]);
    assert!(diags[0].message.contains("unsafe"), "{}", diags[0]);
}

#[test]
fn a_bad_data_file_is_a_diagnostic() {
    let repo = repo_policies(&[
        ("limits.json", "{\n  \"rollgate\": [1,\n}\n"),
        ("list.yaml", "- 1\n- 2\n"),
    ]);
    let diags = PolicySet::load(Some(&repo.path().join("policies"))).expect_err("bad data");
    assert_eq!(diags.len(), 2, "{diags:?}");
    assert_eq!(diags[0].file, "policies/limits.json");
    assert_eq!(diags[0].pos.map(|p| p.line), Some(3));
    assert_eq!(diags[1].file, "policies/list.yaml");
    assert_eq!(diags[1].code, Code::WrongType);
}

#[cfg(unix)]
#[test]
fn a_symlinked_policy_file_is_refused() {
    let repo = repo_policies(&[]);
    let dir = repo.path().join("policies");
    std::os::unix::fs::symlink("/etc/passwd", dir.join("evil.rego")).expect("symlink");
    let diags = PolicySet::load(Some(&dir)).expect_err("symlink refused");
    assert_eq!(diags[0].code, Code::UnsafePath);
}

#[test]
fn a_repo_data_file_overrides_the_first_step_limit() {
    let fifty = with(
        "/steps",
        json!([{"setWeight": 50}, {"analysis": {"checks": ["a"]}}, {"setWeight": 100}]),
    );
    assert_eq!(denies(&PolicySet::builtin(), &fifty).len(), 1);

    let json = repo_policies(&[(
        "limits.json",
        r#"{"rollgate": {"limits": {"maxFirstStepWeight": 50}}}"#,
    )]);
    let set = PolicySet::load(Some(&json.path().join("policies"))).expect("loads");
    assert!(denies(&set, &fifty).is_empty());

    let yaml = repo_policies(&[(
        "limits.yaml",
        "rollgate:\n  limits:\n    maxFirstStepWeight: 10\n",
    )]);
    let set = PolicySet::load(Some(&yaml.path().join("policies"))).expect("loads");
    assert!(denies(&set, &fifty).len() == 1);
    let twenty = with(
        "/steps",
        json!([{"setWeight": 20}, {"analysis": {"checks": ["a"]}}, {"setWeight": 100}]),
    );
    assert_eq!(denies(&set, &twenty).len(), 1, "10% is the new limit");
}

#[test]
fn a_runtime_error_names_the_policy() {
    let repo = repo_policies(&[(
        "conflict.rego",
        "package rollgate.conflict\n\nimport rego.v1\n\nname := input.plan.metadata.name\nname := \"other\"\n\n\
         deny contains name if true\n",
    )]);
    let set = PolicySet::load(Some(&repo.path().join("policies"))).expect("loads");
    let err = set.evaluate(&good_input()).expect_err("conflicting values");
    assert!(
        matches!(&err, PolicyError::Eval { policy: Some(p), .. } if p == "rollgate.conflict"),
        "{err}"
    );
    assert!(
        err.to_string()
            .starts_with("policy evaluation failed in rollgate.conflict: "),
        "{err}"
    );
}

#[test]
fn a_slow_policy_is_stopped_by_the_time_limit() {
    let repo = repo_policies(&[(
        "slow.rego",
        "package rollgate.slow\n\nimport rego.v1\n\n\
         deny contains \"never\" if {\n\tsome i in numbers.range(1, 100000)\n\tsome j in numbers.range(1, 100000)\n\ti * j == -1\n}\n",
    )]);
    let set = PolicySet::load(Some(&repo.path().join("policies"))).expect("loads");
    let start = Instant::now();
    let err = set.evaluate(&good_input()).expect_err("time limit");
    let took = start.elapsed();
    assert!(
        matches!(err, PolicyError::TimeLimit { policy: None, .. }),
        "{err}"
    );
    assert!(
        took >= EVAL_TIME_LIMIT && took < EVAL_TIME_LIMIT + Duration::from_secs(1),
        "stopped after {took:?}"
    );
    // The engine is usable afterwards, with its full budget.
    let quick = PolicySet::load(None).expect("loads");
    assert!(quick.evaluate(&good_input()).is_ok());
    assert!(set.evaluate(&json!({"plan": {}})).is_err());
    assert!(
        err.to_string()
            .starts_with("policy evaluation exceeded its time limit of 2s"),
        "{err}"
    );
}

#[test]
fn the_builtin_policy_tests_all_pass() {
    let report = run_tests(&[builtin_dir()]).expect("built-in tests load");
    assert_eq!(report.failed(), 0, "{}", report.render());
    assert!(report.passed() >= 25, "{}", report.render());
    let rendered = report.render();
    assert!(
        rendered.contains(
            "PASS rollgate.builtin.digest_test.test_tagged_kubernetes_artifact_is_denied\n"
        )
    );
    assert!(
        rendered.ends_with(&format!("\n{} passed, 0 failed\n", report.passed())),
        "{rendered}"
    );
    // Every built-in policy has tests.
    for policy in PolicySet::builtin().policies() {
        let package = format!("{policy}_test");
        assert!(
            report.results.iter().any(|r| r.package == package),
            "no tests for {policy}"
        );
    }
}

#[test]
fn a_failing_test_is_reported_as_failed() {
    let repo = repo_policies(&[
        (
            "team.rego",
            "package rollgate.team\n\nimport rego.v1\n\ndeny contains \"no team\" if not input.team\n",
        ),
        (
            "team_test.rego",
            "package rollgate.team_test\n\nimport rego.v1\n\nimport data.rollgate.team\n\n\
             test_denied_without_team if { count(team.deny) == 1 with input as {} }\n\n\
             test_wrongly_expects_allow if {\n\tprint(\"deny was\", team.deny) with input as {}\n\tcount(team.deny) == 0 with input as {}\n}\n\n\
             test_errors if { to_number(\"x\") == 1 }\n\n\
             helper := true\n",
        ),
    ]);
    let report = run_tests(&[repo.path().join("policies")]).expect("loads");
    assert_eq!(
        (report.passed(), report.failed()),
        (1, 2),
        "{}",
        report.render()
    );
    let rendered = report.render();
    assert!(
        rendered.contains("PASS rollgate.team_test.test_denied_without_team\n"),
        "{rendered}"
    );
    assert!(
        rendered.contains("FAIL rollgate.team_test.test_wrongly_expects_allow\n"),
        "{rendered}"
    );
    assert!(
        rendered.contains("    policies/team_test.rego:"),
        "print output shown: {rendered}"
    );
    assert!(rendered.ends_with("\n1 passed, 2 failed\n"), "{rendered}");
}

#[test]
fn a_test_folder_with_a_syntax_error_is_a_diagnostic() {
    let repo = repo_policies(&[("x_test.rego", "package rollgate.x_test\n\ntest_x if {\n")]);
    let diags = run_tests(&[repo.path().join("policies")]).expect_err("syntax error");
    assert_eq!(diags[0].file, "policies/x_test.rego");
    assert!(diags[0].pos.is_some());
    let missing = run_tests(&[repo.path().join("nope")]).expect_err("missing folder");
    assert_eq!(missing[0].code, Code::Io);
}

#[test]
fn regression_a_repository_policy_cannot_join_a_builtin_package() {
    // Given a repository policy that declares a built-in package, to add to its rules
    let repo = repo_policies(&[(
        "windows.rego",
        "package rollgate.builtin.windows\n\nimport rego.v1\n\nin_window(_) := true\n",
    )]);
    // Then the set does not load, and the diagnostic names the file and the package
    let diags = PolicySet::load(Some(&repo.path().join("policies"))).expect_err("reserved");
    let d = diags
        .iter()
        .find(|d| d.message.contains("reserved"))
        .unwrap_or_else(|| panic!("{diags:?}"));
    assert_eq!(d.file, "policies/windows.rego");
    assert!(
        d.message.contains("rollgate.builtin.windows"),
        "{}",
        d.message
    );
    // And a package of its own loads
    let own = repo_policies(&[(
        "windows.rego",
        "package rollgate.team.windows\n\nimport rego.v1\n\ndeny contains \"no\" if { false }\n",
    )]);
    assert!(PolicySet::load(Some(&own.path().join("policies"))).is_ok());
}

/// Every string, list, set and object of `a` and of `b`, side by side: none is the same
/// allocation.
fn shares_nothing(a: &regorus::Value, b: &regorus::Value) -> bool {
    use regorus::Value as V;
    match (a, b) {
        (V::String(x), V::String(y)) => !std::ptr::addr_eq(x.as_ptr(), y.as_ptr()),
        (V::Array(x), V::Array(y)) => {
            !std::ptr::eq(&**x, &**y) && x.iter().zip(y.iter()).all(|(a, b)| shares_nothing(a, b))
        }
        (V::Set(x), V::Set(y)) => {
            !std::ptr::eq(&**x, &**y) && x.iter().zip(y.iter()).all(|(a, b)| shares_nothing(a, b))
        }
        (V::Object(x), V::Object(y)) => {
            !std::ptr::eq(&**x, &**y)
                && x.iter()
                    .zip(y.iter())
                    .all(|((ka, va), (kb, vb))| shares_nothing(ka, kb) && shares_nothing(va, vb))
        }
        _ => true,
    }
}

#[test]
fn a_status_view_made_again_is_equal_to_it_and_shares_no_block_with_it() {
    let doc = json!({
        "plan": "web", "phase": "Succeeded", "step": 3, "weight": 100, "fastTrack": false,
        "succeeded": ["v1", "v2"], "hold": null,
        "analysis": [{"check": "errors", "passes": 3, "last": {"verdict": "pass"}}],
    });
    let view = Prepared::from_json(&doc).expect("prepared");
    let again = view.made_again();
    assert_eq!(again, view);
    assert!(shares_nothing(&view.0, &again.0));
    // A clone shares: the check itself can fail.
    assert!(!shares_nothing(&view.0, &view.clone().0));
}
