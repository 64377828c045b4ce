//! The command line as users meet it: exit codes, output formats, schema, completions.

use std::process::Command;

fn rollgate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .args(args)
        .output()
        .expect("rollgate runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn example() -> String {
    format!("{}/example-repo", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_example_repository_is_valid_with_policies() {
    let (code, out, err) = rollgate(&["validate", &example()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("7 valid, 0 invalid"), "{out}");
}

#[test]
fn json_output_is_data() {
    let (code, out, _) = rollgate(&["validate", &example(), "--output", "json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["valid"], true);
    assert_eq!(v["accepted"].as_array().map(Vec::len), Some(7));
}

#[test]
fn a_missing_repository_is_a_usage_error_printed_once() {
    let (code, out, err) = rollgate(&["validate", "/nonexistent/repo"]);
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(err.matches("error:").count(), 1, "{err}");
    assert!(err.contains("/nonexistent/repo"), "{err}");
}

#[test]
fn unknown_subcommands_are_usage_errors() {
    let (code, _, err) = rollgate(&["valdate"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("validate"),
        "clap suggests the right word: {err}"
    );
}

#[test]
fn schema_prints_the_plan_and_settings_schemas() {
    let (code, out, _) = rollgate(&["schema"]);
    assert_eq!(code, 0);
    let plan: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(plan["title"], "RolloutPlan");
    let (_, out, _) = rollgate(&["schema", "settings"]);
    let settings: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(settings["title"], "Settings");
}

#[test]
fn completions_and_version() {
    let (code, out, _) = rollgate(&["completions", "bash"]);
    assert_eq!(code, 0);
    assert!(out.contains("rollgate"), "{out}");
    let (code, out, _) = rollgate(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        format!("rollgate {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn policy_test_counts_like_opa_test() {
    let dir = format!("{}/policies", env!("CARGO_MANIFEST_DIR"));
    let (code, out, err) = rollgate(&["policy", "test", &dir]);
    assert_eq!(code, 0, "{out}{err}");
    let last = out.lines().last().unwrap_or_default();
    assert!(last.ends_with("passed, 0 failed"), "{last}");
    // A failing test makes it exit 1.
    let tmp = tempfile::tempdir().expect("tmp");
    std::fs::write(
        tmp.path().join("x_test.rego"),
        "package rollgate.x_test\n\nimport rego.v1\n\ntest_fails if {\n\t1 == 2\n}\n",
    )
    .expect("write");
    let (code, out, _) = rollgate(&["policy", "test", tmp.path().to_str().expect("utf8")]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines().last().unwrap_or_default() == "0 passed, 1 failed",
        "{out}"
    );
}

#[test]
fn judge_replays_kayentas_miss_as_a_fail() {
    let dir = tempfile::tempdir().expect("tmp");
    let canary = dir.path().join("canary");
    let baseline = dir.path().join("baseline");
    std::fs::write(&canary, "100\n100\n100\n100\n100\n100\n100\n1\n1\n1\n").expect("write");
    std::fs::write(&baseline, "1\n".repeat(10)).expect("write");
    let (code, out, err) = rollgate(&[
        "judge",
        "--baseline",
        baseline.to_str().expect("utf8"),
        "--canary",
        canary.to_str().expect("utf8"),
        "--direction",
        "increase",
        "--max-ratio",
        "1.2",
        "--output",
        "json",
    ]);
    assert_eq!(code, 1, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["verdict"], "fail");
    assert_eq!(v["n"]["canary"], 10);
    assert!(v["pValue"].as_f64().is_some_and(|p| p < 0.05), "{v}");
}

#[test]
fn judge_counts_sparse_errors() {
    let dir = tempfile::tempdir().expect("tmp");
    let canary = dir.path().join("canary");
    let baseline = dir.path().join("baseline");
    std::fs::write(&canary, "97 100\n").expect("write");
    std::fs::write(&baseline, "10000 10000\n").expect("write");
    let (code, out, err) = rollgate(&[
        "judge",
        "--kind",
        "ratio",
        "--baseline",
        baseline.to_str().expect("utf8"),
        "--canary",
        canary.to_str().expect("utf8"),
        "--max-ratio",
        "1.5",
    ]);
    assert_eq!(
        code, 1,
        "3 errors in 100 against 0 in 10,000 is a fail: {out}{err}"
    );
    assert!(out.starts_with("fail "), "{out}");
}
