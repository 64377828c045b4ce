//! The invalid-plan corpus: every case in `tests/corpus/invalid/` is a repository with
//! one mistake, and `rollgate validate` must reject it with that mistake's code, at a
//! line and column of the plan file, without panicking. What it prints is pinned by
//! an insta snapshot per case, so a change to any message is a reviewed change.
//!
//! A case is either `invalid/<name>.yaml` (copied to `plans/<name>.yaml` beside the
//! shared `corpus/rollgate.yaml`) or a folder `invalid/<name>/` holding the files of
//! the repository (the shared settings are added unless the folder has its own
//! `rollgate.yaml`). The code a case must produce is the longest error code its name
//! starts with: `weight-range-negative` must produce `weight-range`.
//! Cases named `policy-*` run with policies; the others with `--no-policy`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Every error code a repository can produce, each with at least one corpus case.
/// (`policy-warning` is a warning, so it never makes a repository invalid.)
const CODES: &[&str] = &[
    "yaml-syntax",
    "input-limit",
    "unsafe-path",
    "io",
    "unknown-field",
    "missing-field",
    "wrong-type",
    "invalid-value",
    "unknown-kind",
    "unknown-api-version",
    "weight-range",
    "weight-decreasing",
    "never-complete",
    "bad-duration",
    "unknown-check",
    "duplicate-check",
    "unknown-target",
    "unknown-source",
    "workload-mismatch",
    "unsupported-traffic",
    "bad-cron",
    "bad-timezone",
    "duplicate-plan",
    "name-mismatch",
    "bad-name",
    "empty-strategy",
    "bad-preset",
    "bad-judge",
    "bad-artifact",
    "unknown-plan",
    "policy-denied",
    "policy-error",
    "bad-status",
];

/// Codes whose problem is the file itself, not a place in it.
const CODES_WITHOUT_PLACE: &[&str] = &["io", "input-limit", "unsafe-path", "bad-status"];

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// The code a case is named after: the longest code its name starts with.
fn expected_code(case: &str) -> &'static str {
    CODES
        .iter()
        .copied()
        .filter(|c| case == *c || case.starts_with(&format!("{c}-")))
        .max_by_key(|c| c.len())
        .unwrap_or_else(|| panic!("case `{case}` is not named after an error code"))
}

/// Case names: file stems and folder names under `corpus/invalid/`, sorted.
fn case_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(corpus().join("invalid"))
        .expect("tests/corpus/invalid exists")
        .map(|e| e.expect("readable entry").path())
        .filter_map(|p| {
            if p.is_dir() {
                p.file_name()?.to_str().map(str::to_owned)
            } else if p.extension().is_some_and(|e| e == "yaml") {
                p.file_stem()?.to_str().map(str::to_owned)
            } else {
                None
            }
        })
        .collect();
    names.sort();
    names
}

/// Copy a folder, recreating symlinks as symlinks (never following them).
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create folder");
    for entry in std::fs::read_dir(from).expect("read case folder") {
        let entry = entry.expect("entry");
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().expect("file type");
        if kind.is_symlink() {
            let target = std::fs::read_link(&src).expect("read link");
            std::os::unix::fs::symlink(target, &dst).expect("create symlink");
        } else if kind.is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).expect("copy file");
        }
    }
}

/// Given a case, a temporary repository holding it.
fn repo_for(case: &str) -> tempfile::TempDir {
    let repo = tempfile::tempdir().expect("temp dir");
    let folder = corpus().join("invalid").join(case);
    if folder.is_dir() {
        copy_tree(&folder, repo.path());
    } else {
        let plans = repo.path().join("plans");
        std::fs::create_dir_all(&plans).expect("plans folder");
        std::fs::copy(
            folder.with_extension("yaml"),
            plans.join(format!("{case}.yaml")),
        )
        .expect("copy case");
    }
    let settings = repo.path().join("rollgate.yaml");
    if std::fs::symlink_metadata(&settings).is_err() {
        std::fs::copy(corpus().join("rollgate.yaml"), settings).expect("copy settings");
    }
    repo
}

/// The case's own one-line description (its `# Case NAME: ...` comment), for the snapshot.
fn description(case: &str) -> String {
    let file = corpus().join("invalid").join(format!("{case}.yaml"));
    let text = std::fs::read_to_string(&file)
        .or_else(|_| {
            std::fs::read_dir(corpus().join("invalid").join(case))
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .find(|t| t.starts_with("# Case "))
                .ok_or(())
        })
        .unwrap_or_default();
    text.lines()
        .take_while(|l| l.starts_with('#'))
        .map(|l| l.trim_start_matches('#').trim())
        .collect::<Vec<_>>()
        .join(" ")
}

fn validate(repo: &Path, with_policy: bool) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rollgate"));
    cmd.arg("validate").arg(repo);
    if !with_policy {
        cmd.arg("--no-policy");
    }
    cmd.env_remove("RUST_LOG")
        .output()
        .expect("run rollgate validate")
}

/// One `FILE[:LINE:COL]: error[CODE]: ...` line, taken apart.
#[derive(Debug)]
struct DiagLine<'a> {
    file: &'a str,
    place: Option<(u32, u32)>,
    code: &'a str,
}

fn parse_line(line: &str) -> Option<DiagLine<'_>> {
    let (location, rest) = line
        .split_once(": error[")
        .or_else(|| line.split_once(": warning["))?;
    let code = rest.split_once(']')?.0;
    let mut parts = location.rsplitn(3, ':');
    let col = parts.next().and_then(|c| c.parse().ok());
    let line_no = parts.next().and_then(|l| l.parse().ok());
    let (file, place) = match (parts.next(), line_no, col) {
        (Some(file), Some(l), Some(c)) => (file, Some((l, c))),
        _ => (location, None),
    };
    Some(DiagLine { file, place, code })
}

/// Given the case's repository, when it is validated, then it is rejected with the
/// case's code, every diagnostic is placed in a file the case is about, nothing
/// panics, and the output matches its snapshot.
fn check_case(case: &str) {
    let code = expected_code(case);
    let with_policy = case.starts_with("policy-");
    let repo = repo_for(case);
    let out = validate(repo.path(), with_policy);
    let stdout =
        String::from_utf8_lossy(&out.stdout).replace(&repo.path().display().to_string(), "[REPO]");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "{case}: rollgate panicked:\n{stderr}"
    );
    // An I/O problem is not a verdict on the plans: exit 2, as the README says.
    let exit = if code == "io" { 2 } else { 1 };
    assert_eq!(
        out.status.code(),
        Some(exit),
        "{case}: expected exit {exit}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );

    let lines: Vec<&str> = stdout.lines().collect();
    let summary = lines.last().copied().unwrap_or_default();
    assert!(
        summary.starts_with("checked "),
        "{case}: no summary line:\n{stdout}"
    );
    let diags: Vec<DiagLine<'_>> = lines[..lines.len() - 1]
        .iter()
        .filter(|l| !l.starts_with("  help: "))
        .map(|l| parse_line(l).unwrap_or_else(|| panic!("{case}: not a diagnostic: {l:?}")))
        .collect();
    assert!(!diags.is_empty(), "{case}: no diagnostics:\n{stdout}");
    for d in &diags {
        let allowed_file = d.file.starts_with("plans/")
            || (d.code == "io" && d.file == "rollgate.yaml")
            || (d.code == "bad-status" && d.file.starts_with("status/"))
            || (with_policy && d.file.starts_with("policies/"));
        assert!(
            allowed_file,
            "{case}: diagnostic names `{}`:\n{stdout}",
            d.file
        );
        match d.place {
            Some((line, col)) => assert!(line > 0 && col > 0, "{case}: place 0:\n{stdout}"),
            None => assert!(
                CODES_WITHOUT_PLACE.contains(&d.code) || d.file.starts_with("policies/"),
                "{case}: `{}` diagnostic without line and column:\n{stdout}",
                d.code
            ),
        }
    }
    assert!(
        diags.iter().any(|d| d.code == code),
        "{case}: expected error[{code}]:\n{stdout}"
    );

    insta::with_settings!({ description => description(case), omit_expression => true }, {
        insta::assert_snapshot!(case, stdout);
    });
}

macro_rules! cases {
    ($($(#[$attr:meta])* $test:ident => $case:literal,)*) => {
        $(
            #[test]
            $(#[$attr])*
            fn $test() {
                check_case($case);
            }
        )*

        /// The list of tests above and the corpus folder must not drift apart.
        #[test]
        fn every_corpus_case_has_a_test() {
            let mut listed = vec![$($case),*];
            listed.sort_unstable();
            assert_eq!(case_names(), listed, "add the new case to `cases!` in this file");
        }
    };
}

cases! {
    bad_artifact => "bad-artifact",
    bad_artifact_lambda => "bad-artifact-lambda",
    bad_cron => "bad-cron",
    bad_cron_hour => "bad-cron-hour",
    bad_duration => "bad-duration",
    bad_duration_fraction => "bad-duration-fraction",
    bad_judge => "bad-judge",
    bad_judge_min_above_max => "bad-judge-min-above-max",
    bad_judge_mixed => "bad-judge-mixed",
    bad_name => "bad-name",
    bad_name_namespace => "bad-name-namespace",
    bad_preset => "bad-preset",
    bad_status => "bad-status",
    bad_timezone => "bad-timezone",
    duplicate_check => "duplicate-check",
    duplicate_plan => "duplicate-plan",
    empty_strategy => "empty-strategy",
    input_limit => "input-limit",
    input_limit_aliases => "input-limit-aliases",
    invalid_value => "invalid-value",
    invalid_value_header_route => "invalid-value-header-route",
    invalid_value_baseline => "invalid-value-baseline",
    invalid_value_builtin_query => "invalid-value-builtin-query",
    invalid_value_cloudwatch_query => "invalid-value-cloudwatch-query",
    invalid_value_first_rollout => "invalid-value-first-rollout",
    invalid_value_health_status => "invalid-value-health-status",
    invalid_value_listen => "invalid-value-listen",
    invalid_value_route_rule_overflow => "invalid-value-route-rule-overflow",
    invalid_value_negative_min_samples => "invalid-value-negative-min-samples",
    invalid_value_two_strategies => "invalid-value-two-strategies",
    invalid_value_web_samples_query => "invalid-value-web-samples-query",
    io_settings_is_a_directory => "io-settings-is-a-directory",
    missing_field => "missing-field",
    missing_field_analysis_duration => "missing-field-analysis-duration",
    missing_field_workload_kind => "missing-field-workload-kind",
    name_mismatch => "name-mismatch",
    never_complete => "never-complete",
    policy_denied => "policy-denied",
    policy_denied_first_step => "policy-denied-first-step",
    policy_denied_production_without_analysis => "policy-denied-production-without-analysis",
    policy_denied_promotion => "policy-denied-promotion",
    policy_error => "policy-error",
    policy_error_conflicting_rule => "policy-error-conflicting-rule",
    policy_error_syntax => "policy-error-syntax",
    unknown_api_version => "unknown-api-version",
    unknown_check => "unknown-check",
    unknown_field => "unknown-field",
    unknown_field_beside_workload => "unknown-field-beside-workload",
    unknown_field_in_check => "unknown-field-in-check",
    unknown_kind => "unknown-kind",
    unknown_kind_step => "unknown-kind-step",
    unknown_kind_strategy => "unknown-kind-strategy",
    unknown_plan => "unknown-plan",
    unknown_plan_self => "unknown-plan-self",
    unknown_source => "unknown-source",
    unknown_target => "unknown-target",
    unsafe_path => "unsafe-path",
    unsupported_traffic => "unsupported-traffic",
    unsupported_traffic_header_route_kubernetes => "unsupported-traffic-header-route-kubernetes",
    unsupported_traffic_header_route_knative => "unsupported-traffic-header-route-knative",
    unsupported_traffic_two_cookies_gateway => "unsupported-traffic-two-cookies-gateway",
    unsupported_traffic_fresh_baseline_knative => "unsupported-traffic-fresh-baseline-knative",
    weight_decreasing => "weight-decreasing",
    weight_range => "weight-range",
    weight_range_negative => "weight-range-negative",
    weight_range_fresh_baseline => "weight-range-fresh-baseline",
    workload_mismatch => "workload-mismatch",
    workload_mismatch_replica_health => "workload-mismatch-replica-health",
    workload_mismatch_knative => "workload-mismatch-knative",
    wrong_type => "wrong-type",
    wrong_type_checks_mapping => "wrong-type-checks-mapping",
    wrong_type_label_value => "wrong-type-label-value",
    wrong_type_set_weight_string => "wrong-type-set-weight-string",
    wrong_type_weight_overflow => "wrong-type-weight-overflow",
    yaml_syntax => "yaml-syntax",
    yaml_syntax_duplicate_key => "yaml-syntax-duplicate-key",
    yaml_syntax_tab_indent => "yaml-syntax-tab-indent",
}

#[test]
fn every_error_code_has_a_case() {
    let names = case_names();
    let missing: Vec<&str> = CODES
        .iter()
        .copied()
        .filter(|code| !names.iter().any(|n| expected_code(n) == *code))
        .collect();
    assert!(missing.is_empty(), "no corpus case for: {missing:?}");
}

#[test]
fn example_repo_is_valid() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("example-repo");
    for with_policy in [false, true] {
        let out = validate(&repo, with_policy);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "example-repo (policies: {with_policy}) is invalid:\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout
                .trim_end()
                .ends_with("checked 7 plans: 7 valid, 0 invalid; 0 errors, 0 warnings"),
            "{stdout}"
        );
    }
}

#[test]
fn diagnostic_lines_are_taken_apart() {
    let d =
        parse_line("plans/a.yaml:3:5: error[unknown-field]: unknown field `x`").expect("parses");
    assert_eq!(
        (d.file, d.place, d.code),
        ("plans/a.yaml", Some((3, 5)), "unknown-field")
    );
    let d = parse_line("plans/a.yaml: error[unsafe-path]: refusing").expect("parses");
    assert_eq!(
        (d.file, d.place, d.code),
        ("plans/a.yaml", None, "unsafe-path")
    );
}
