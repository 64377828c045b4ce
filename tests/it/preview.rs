//! `rollgate plan`: a change previewed before it is merged, on real Git repositories
//! seeded from `example-repo/`. Given a repository on `main`, when a branch changes
//! it, then the preview judges the touched plans with base's settings, policies and
//! statuses, shows their diffs and dry runs, and `rollgate plan` exits 0, 1 or 2.
//! The PR comments (`markdown()`) are pinned by insta snapshots, with the commit shas
//! (which depend on the clock) replaced by `BASE` and `HEAD`.

use crate::support;

use std::path::Path;
use std::process::Command;

use chrono::{DateTime, TimeZone, Utc};

use rollgate::model::Code;
use rollgate::preview::{
    AnnotationLevel, ChangeKind, Conclusion, MARKER, Preview, StageKind, Verdict, preview,
    preview_with_labels,
};
use support::{Remote, example_repo, git};

const OLD_CHECKOUT: &str =
    "sha256:4f1c2b3a4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";
const NEW_CHECKOUT: &str =
    "sha256:5a2d3c4b5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f809";
const STAGED: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const PROMOTED: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

/// Thursday 2026-11-26, 16:45 in Berlin: `checkout`'s window (MON-THU 9-16 Berlin)
/// closes at 17:00, so its later stages wait for Monday.
fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 26, 15, 45, 0)
        .single()
        .expect("valid time")
}

/// Given the example repository on `main`, checked out by a human.
fn given_the_example_repository() -> Remote {
    Remote::seeded_from(&example_repo())
}

/// The human edits a file in the checkout (not yet committed).
fn edit(repo: &Path, path: &str, f: impl FnOnce(String) -> String) {
    let p = repo.join(path);
    let before = std::fs::read_to_string(&p).unwrap_or_default();
    std::fs::write(&p, f(before)).expect("write");
}

fn replace(repo: &Path, path: &str, from: &str, to: &str) {
    edit(repo, path, |text| {
        assert!(text.contains(from), "{path} holds `{from}`");
        text.replacen(from, to, 1)
    });
}

fn commit(repo: &Path, message: &str) {
    git(repo, &["add", "-A"]);
    git(repo, &["commit", "-q", "-m", message]);
}

/// A pull request: a branch off `main` with one commit made by `change`.
fn pull_request(r: &Remote, change: impl FnOnce(&Path)) -> Preview {
    git(&r.human, &["checkout", "-q", "-B", "pr", "main"]);
    change(&r.human);
    commit(&r.human, "A change under review");
    preview(&r.human, "main", "pr", now()).expect("preview")
}

/// The PR comment with the commit shas (they depend on the clock) replaced.
fn comment(p: &Preview) -> String {
    let md = p.markdown();
    assert!(md.starts_with(&format!("{MARKER}\n")), "{md}");
    let md = md
        .replace(&p.base[..7], "BASE")
        .replace(&p.head[..7], "HEAD");
    // Blob ids change with every edit of `example-repo/`; the diff itself is what counts.
    md.lines()
        .map(|l| match l.strip_prefix("index ") {
            Some(rest) if rest.contains("..") => "index …",
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// `checkout` sends 30% of traffic at its first step (the limit is 25%).
fn too_big_a_first_step(repo: &Path) {
    replace(
        repo,
        "plans/checkout.yaml",
        "- setWeight: 25\n",
        "- setWeight: 40\n",
    );
    replace(
        repo,
        "plans/checkout.yaml",
        "- setWeight: 5\n",
        "- setWeight: 30\n",
    );
}

/// Given `main` where rollgate rolled `plan` out at `artifact` (as it records it): a
/// change of the plan is then a rollout replacing a stable version, not a first rollout.
fn given_rollgate_runs(r: &Remote, plan: &str, artifact: &str) {
    edit(&r.human, &format!("status/{plan}.yaml"), |_| {
        format!(
            "# Written by rollgate; read it, do not edit it.
apiVersion: rollgate.dev/v1alpha1
kind: RolloutStatus
metadata:
  name: {plan}
status:
  phase: Succeeded
  candidate: {artifact}
  stable: {artifact}
  revision: 0b5e1c7d2f1e4b3a29180716f5e4d3c2b1a09f8e
  stepIndex: 7
  weight: 100
  succeeded:
    - artifact: {artifact}
      at: \"2026-11-19T10:00:00Z\"
  lastTransitionAt: \"2026-11-19T10:00:00Z\"
  message: {artifact} is stable
"
        )
    });
    commit(&r.human, &format!("Status: {plan} succeeded"));
}

fn given_checkout_runs_the_old_artifact(r: &Remote) {
    given_rollgate_runs(
        r,
        "checkout",
        &format!("registry.example/checkout@{OLD_CHECKOUT}"),
    );
}

fn snapshot(name: &str, p: &Preview) {
    insta::with_settings!({ omit_expression => true }, {
        insta::assert_snapshot!(name, comment(p));
    });
}

#[test]
fn a_canary_artifact_bump_passes_with_its_dry_run() {
    let r = given_the_example_repository();
    given_checkout_runs_the_old_artifact(&r);
    let p = pull_request(&r, |repo| {
        replace(repo, "plans/checkout.yaml", OLD_CHECKOUT, NEW_CHECKOUT);
    });
    assert_eq!(p.conclusion(), Conclusion::Success);
    let [plan] = p.plans.as_slice() else {
        panic!("one plan touched: {p:?}")
    };
    assert_eq!(
        (plan.name.as_str(), plan.change, plan.verdict),
        ("checkout", ChangeKind::Modified, Verdict::Accepted)
    );
    assert!(
        plan.diff.contains(&format!(
            "+  artifact: registry.example/checkout@{NEW_CHECKOUT}"
        )),
        "{}",
        plan.diff
    );
    assert!(
        plan.effect.starts_with(&format!(
            "rollout of `registry.example/checkout@{NEW_CHECKOUT}`, replacing stable `registry.example/checkout@{OLD_CHECKOUT}`"
        )),
        "{}",
        plan.effect
    );
    assert!(!plan.direct);
    // Seven steps and the promotion; the weight 50 waits for Monday's window.
    assert_eq!(plan.stages.len(), 8);
    let monday = Utc.with_ymd_and_hms(2026, 11, 30, 8, 0, 0).single();
    assert_eq!(plan.stages[4].earliest_completion, monday);
    assert!(p.annotations().is_empty());
    snapshot("canary_change", &p);
}

#[test]
fn a_first_step_over_25_percent_is_denied_by_policy() {
    let r = given_the_example_repository();
    given_checkout_runs_the_old_artifact(&r);
    let p = pull_request(&r, |repo| {
        too_big_a_first_step(repo);
    });
    assert_eq!(p.conclusion(), Conclusion::Failure);
    let plan = &p.plans[0];
    assert_eq!(plan.verdict, Verdict::Denied);
    assert!(
        plan.diagnostics
            .iter()
            .any(|d| d.code == Code::PolicyDenied && d.message.contains("30%")),
        "{:?}",
        plan.diagnostics
    );
    snapshot("policy_denial", &p);
}

/// A new plan: `hello` copied as `greeter`, on its own port.
fn a_new_plan(repo: &Path, extra: &str) {
    let hello = std::fs::read_to_string(repo.join("plans/hello.yaml")).expect("hello");
    let greeter = hello
        .replace("name: hello", "name: greeter")
        .replace("127.0.0.1:18080", "127.0.0.1:18090")
        .replace("  artifact: v1\n", &format!("  artifact: v1\n{extra}"));
    std::fs::write(repo.join("plans/greeter.yaml"), greeter).expect("write");
}

#[test]
fn a_new_plan_is_a_first_rollout_deployed_directly() {
    let r = given_the_example_repository();
    let p = pull_request(&r, |repo| a_new_plan(repo, ""));
    assert_eq!(p.conclusion(), Conclusion::Success, "{}", p.text());
    let [plan] = p.plans.as_slice() else {
        panic!("one plan touched: {p:?}")
    };
    assert_eq!(
        (plan.name.as_str(), plan.change, plan.verdict),
        ("greeter", ChangeKind::Added, Verdict::Accepted)
    );
    // Then merging deploys v1 directly: nothing is stable to shift from or compare with
    assert!(plan.direct && !plan.fast_track);
    assert!(
        plan.effect.starts_with(
            "first rollout of `v1`: no stable version to compare with, so it is deployed directly at 100%"
        ),
        "{}",
        plan.effect
    );
    let [stage] = plan.stages.as_slice() else {
        panic!("one stage: {:?}", plan.stages)
    };
    assert_eq!(
        (stage.step, stage.kind, stage.weight),
        (1, StageKind::Deploy, 100)
    );
    assert_eq!(stage.earliest_completion, Some(now()));
    assert!(p.text().contains("deploy directly"), "{}", p.text());
    snapshot("first_rollout", &p);
}

#[test]
fn a_new_plan_with_first_rollout_steps_shows_its_steps() {
    let r = given_the_example_repository();
    let p = pull_request(&r, |repo| a_new_plan(repo, "  firstRollout: steps\n"));
    assert_eq!(p.conclusion(), Conclusion::Success, "{}", p.text());
    let plan = &p.plans[0];
    assert!(!plan.direct);
    assert!(
        plan.effect.starts_with(
            "first rollout of `v1`: no stable version, and `firstRollout: steps` walks the steps anyway"
        ),
        "{}",
        plan.effect
    );
    // Seven steps and the promotion.
    assert_eq!(plan.stages.len(), 8);
    assert_eq!(plan.stages[0].kind, StageKind::SetWeight);
}

#[test]
fn an_unknown_field_is_a_schema_error_with_its_line_column_and_annotation() {
    let r = given_the_example_repository();
    let p = pull_request(&r, |repo| {
        replace(
            repo,
            "plans/hello.yaml",
            "  minSamples: 50\n",
            "  minSamples: 50\n  maxSurge: 3\n",
        );
    });
    assert_eq!(p.conclusion(), Conclusion::Failure);
    let plan = &p.plans[0];
    assert_eq!(plan.verdict, Verdict::Rejected);
    let d = plan
        .diagnostics
        .iter()
        .find(|d| d.code == Code::UnknownField)
        .expect("unknown-field");
    let pos = d.pos.expect("a place");
    let text = std::fs::read_to_string(r.human.join("plans/hello.yaml")).expect("read");
    let line = text.lines().nth(pos.line as usize - 1).expect("line");
    assert_eq!(&line[pos.col as usize - 1..], "maxSurge: 3");
    assert!(
        plan.stages.is_empty(),
        "a plan that does not parse has no dry run"
    );
    let a = p
        .annotations()
        .into_iter()
        .find(|a| a.title == "error[unknown-field]")
        .expect("annotation");
    assert_eq!(
        (
            a.path.as_str(),
            a.start_line,
            a.end_line,
            a.start_column,
            a.level
        ),
        (
            "plans/hello.yaml",
            pos.line,
            pos.line,
            Some(pos.col),
            AnnotationLevel::Failure
        )
    );
    snapshot("schema_error", &p);
}

#[test]
fn a_deleted_plan_is_shown_with_what_happens_to_it() {
    let r = given_the_example_repository();
    let p = pull_request(&r, |repo| {
        std::fs::remove_file(repo.join("plans/storefront.yaml")).expect("rm");
    });
    assert_eq!(p.conclusion(), Conclusion::Success);
    let plan = &p.plans[0];
    assert_eq!(
        (plan.name.as_str(), plan.change, plan.verdict),
        ("storefront", ChangeKind::Deleted, Verdict::Accepted)
    );
    assert!(plan.effect.contains("stops reconciling"), "{}", plan.effect);
    snapshot("deleted_plan", &p);
}

#[test]
fn deleting_the_plan_production_is_promoted_from_breaks_production() {
    let r = given_the_example_repository();
    let p = pull_request(&r, |repo| {
        std::fs::remove_file(repo.join("plans/staging-payments.yaml")).expect("rm");
    });
    assert_eq!(p.conclusion(), Conclusion::Failure);
    let plan = &p.plans[0];
    assert_eq!(plan.verdict, Verdict::Rejected);
    assert!(
        plan.diagnostics
            .iter()
            .any(|d| d.code == Code::UnknownPlan && d.file == "plans/prod-payments.yaml"),
        "{:?}",
        plan.diagnostics
    );
}

/// Given `main` where staging succeeded with `PROMOTED` (as rollgate records it).
fn given_staging_succeeded_with_the_new_artifact(r: &Remote) {
    edit(&r.human, "status/staging-payments.yaml", |text| {
        text.replace(
            &format!("  candidate: registry.example/payments-api@{STAGED}\n  stable: registry.example/payments-api@{STAGED}"),
            &format!("  candidate: registry.example/payments-api@{PROMOTED}\n  stable: registry.example/payments-api@{PROMOTED}"),
        )
        .replace(
            "      at: \"2026-11-20T10:00:00Z\"\n",
            &format!("      at: \"2026-11-20T10:00:00Z\"\n    - artifact: registry.example/payments-api@{PROMOTED}\n      at: \"2026-11-25T14:00:00Z\"\n"),
        )
    });
    commit(&r.human, "Status: staging-payments succeeded");
}

#[test]
fn a_promotion_from_staging_shows_that_the_artifact_succeeded_there() {
    let r = given_the_example_repository();
    given_staging_succeeded_with_the_new_artifact(&r);
    given_rollgate_runs(
        &r,
        "prod-payments",
        &format!("registry.example/payments-api@{STAGED}"),
    );
    let p = pull_request(&r, |repo| {
        replace(repo, "plans/prod-payments.yaml", STAGED, PROMOTED);
    });
    assert_eq!(p.conclusion(), Conclusion::Success, "{}", p.text());
    assert!(
        !p.plans[0].direct,
        "production ran staging's previous artifact"
    );
    let promotion = p.plans[0].promotion.as_ref().expect("a promotion");
    assert!(promotion.succeeded);
    assert_eq!(promotion.from, "staging-payments");
    snapshot("promotion", &p);
}

#[test]
fn a_promotion_of_what_staging_never_ran_is_denied_even_with_a_forged_status() {
    let r = given_the_example_repository();
    let p = pull_request(&r, |repo| {
        replace(repo, "plans/prod-payments.yaml", STAGED, PROMOTED);
        // The change also claims, in the status file, that staging ran it.
        replace(repo, "status/staging-payments.yaml", STAGED, PROMOTED);
    });
    assert_eq!(p.conclusion(), Conclusion::Failure);
    let plan = &p.plans[0];
    assert_eq!(plan.verdict, Verdict::Denied);
    assert!(!plan.promotion.as_ref().expect("a promotion").succeeded);
    assert_eq!(p.base_only_changes, vec!["status/staging-payments.yaml"]);
}

#[test]
fn a_critical_plan_changed_outside_its_window_passes_only_as_an_emergency() {
    let r = given_the_example_repository();
    git(&r.human, &["checkout", "-q", "-B", "pr", "main"]);
    replace(
        &r.human,
        "plans/prod-payments.yaml",
        "  minSamples: 500\n",
        "  minSamples: 500\n  windows: { allow: [\"* * * * SAT\"] }\n",
    );
    commit(&r.human, "Production changes on Saturdays only");
    let p = preview(&r.human, "main", "pr", now()).expect("preview");
    assert_eq!(p.plans[0].verdict, Verdict::Denied, "{}", p.text());
    let emergency = vec!["emergency".to_owned()];
    let p = preview_with_labels(&r.human, "main", "pr", now(), &emergency).expect("preview");
    assert_eq!(p.plans[0].verdict, Verdict::Accepted, "{}", p.text());
}

#[test]
fn a_change_that_weakens_the_policies_is_still_judged_by_base_policies() {
    let r = given_the_example_repository();
    let p = pull_request(&r, |repo| {
        // Allow any first step, and drop the team-label policy …
        std::fs::write(
            repo.join("policies/limits.json"),
            r#"{"rollgate": {"limits": {"maxFirstStepWeight": 100}}}"#,
        )
        .expect("write");
        std::fs::remove_file(repo.join("policies/team_label.rego")).expect("rm");
        // … and the settings' targets, in the same change as plans that need all that.
        replace(
            repo,
            "rollgate.yaml",
            "  local:\n    local: {}\n",
            "  local:\n    local: {}\n  anywhere:\n    local: {}\n",
        );
        too_big_a_first_step(repo);
        replace(
            repo,
            "plans/checkout.yaml",
            "labels: { team: payments, tier: standard }",
            "labels: { tier: standard }",
        );
        replace(
            repo,
            "plans/hello.yaml",
            "target: local",
            "target: anywhere",
        );
    });
    assert_eq!(p.conclusion(), Conclusion::Failure);
    assert_eq!(
        p.base_only_changes,
        vec![
            "policies/limits.json",
            "policies/team_label.rego",
            "rollgate.yaml"
        ]
    );
    let checkout = p
        .plans
        .iter()
        .find(|x| x.name == "checkout")
        .expect("checkout");
    assert_eq!(checkout.verdict, Verdict::Denied);
    let policies: Vec<&str> = checkout
        .diagnostics
        .iter()
        .filter_map(|d| d.help.as_deref())
        .collect();
    assert!(
        policies.contains(&"policy rollgate.builtin.first_step"),
        "{policies:?}"
    );
    assert!(
        policies.contains(&"policy rollgate.example.team_label"),
        "{policies:?}"
    );
    let hello = p.plans.iter().find(|x| x.name == "hello").expect("hello");
    assert_eq!(hello.verdict, Verdict::Rejected);
    assert!(
        hello
            .diagnostics
            .iter()
            .any(|d| d.code == Code::UnknownTarget),
        "base's settings name no target `anywhere`: {:?}",
        hello.diagnostics
    );
    let md = p.markdown();
    assert!(md.contains("Read from base, not from this change"), "{md}");
}

#[test]
fn a_renamed_plan_is_shown_as_a_rename() {
    let r = given_the_example_repository();
    let p = pull_request(&r, |repo| {
        git(repo, &["mv", "plans/hello.yaml", "plans/greeter.yaml"]);
        replace(repo, "plans/greeter.yaml", "name: hello", "name: greeter");
    });
    assert_eq!(p.conclusion(), Conclusion::Success, "{}", p.text());
    let [plan] = p.plans.as_slice() else {
        panic!("one plan touched: {p:?}")
    };
    assert_eq!(plan.change, ChangeKind::Renamed);
    assert_eq!(plan.path, "plans/greeter.yaml");
    assert_eq!(plan.old_path.as_deref(), Some("plans/hello.yaml"));
    assert!(
        plan.effect.contains("stops reconciling `hello`"),
        "{}",
        plan.effect
    );
    assert!(
        p.markdown()
            .contains("*renamed* `plans/hello.yaml` → `plans/greeter.yaml`")
    );
}

#[test]
fn the_change_is_what_head_adds_since_it_forked_from_base() {
    let r = given_the_example_repository();
    git(&r.human, &["checkout", "-q", "-B", "pr", "main"]);
    replace(&r.human, "plans/checkout.yaml", OLD_CHECKOUT, NEW_CHECKOUT);
    commit(&r.human, "The change");
    // Meanwhile main moves on, touching another plan.
    git(&r.human, &["checkout", "-q", "main"]);
    std::fs::remove_file(r.human.join("plans/storefront.yaml")).expect("rm");
    commit(&r.human, "Elsewhere on main");
    let p = preview(&r.human, "main", "pr", now()).expect("preview");
    let names: Vec<&str> = p.plans.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(names, ["checkout"]);
    assert_ne!(p.merge_base, p.base);
}

fn rollgate_plan(repo: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .arg("plan")
        .arg("--repo")
        .arg(repo)
        .args(args)
        .args(["--now", "2026-11-26T15:45:00Z"])
        .output()
        .expect("rollgate runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn rollgate_plan_exits_0_when_every_plan_passes_1_when_one_fails_2_on_usage_errors() {
    let r = given_the_example_repository();
    // A change that touches no plan: neutral, exit 0.
    git(&r.human, &["checkout", "-q", "-B", "docs", "main"]);
    std::fs::write(r.human.join("NOTES.md"), "notes\n").expect("write");
    commit(&r.human, "Notes");
    let (code, out, err) = rollgate_plan(&r.human, &["--base", "main", "--head", "docs"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("touches no plan"), "{out}");

    git(&r.human, &["checkout", "-q", "-B", "good", "main"]);
    replace(&r.human, "plans/checkout.yaml", OLD_CHECKOUT, NEW_CHECKOUT);
    commit(&r.human, "Bump checkout");
    let (code, out, err) = rollgate_plan(&r.human, &["--base", "main"]);
    assert_eq!(code, 0, "head defaults to HEAD: {out}{err}");
    assert!(
        out.contains("checkout: accepted (modified, plans/checkout.yaml)"),
        "{out}"
    );

    let (code, out, _) = rollgate_plan(
        &r.bare,
        &["--base", "main~0", "--head", "main", "--output", "json"],
    );
    assert_eq!(code, 0, "a bare repository works too: {out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["plans"].as_array().map(Vec::len), Some(0));

    git(&r.human, &["checkout", "-q", "-B", "bad", "main"]);
    too_big_a_first_step(&r.human);
    commit(&r.human, "Too big a first step");
    let (code, out, err) = rollgate_plan(&r.human, &["--base", "main", "--output", "markdown"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.starts_with(MARKER), "{out}");
    let (code, out, _) = rollgate_plan(
        &r.human,
        &["--base", "main", "--head", "bad", "--output", "json"],
    );
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["plans"][0]["verdict"], "denied");
    assert_eq!(v["plans"][0]["diagnostics"][0]["code"], "policy-denied");

    let (code, out, err) = rollgate_plan(&r.human, &["--base", "no-such-branch"]);
    assert_eq!(code, 2, "{out}{err}");
    assert_eq!(err.matches("error:").count(), 1, "{err}");
    assert!(err.contains("no-such-branch"), "{err}");
    let (code, _, err) = rollgate_plan(&r.human, &[]);
    assert_eq!(code, 2, "--base is required: {err}");
    let (code, _, err) = rollgate_plan(r.dir.path(), &["--base", "main"]);
    assert_eq!(code, 2, "not a repository: {err}");
}

#[test]
fn regression_a_change_that_edits_a_status_file_fails_the_preview() {
    // Given a pull request that edits only a status file (no plan)
    let r = given_the_example_repository();
    let p = pull_request(&r, |repo| {
        replace(repo, "status/staging-payments.yaml", STAGED, PROMOTED);
    });
    // Then the check fails (before: neutral, which GitHub takes as passing), with a
    // failure annotation on the file and a headline that says why
    assert!(p.plans.is_empty());
    assert_eq!(p.conclusion(), Conclusion::Failure, "{}", p.text());
    let a = p
        .annotations()
        .into_iter()
        .find(|a| a.path == "status/staging-payments.yaml")
        .expect("an annotation");
    assert_eq!(a.level, rollgate::preview::AnnotationLevel::Failure);
    assert!(
        p.markdown().contains("edits status files"),
        "{}",
        p.markdown()
    );
    assert!(
        p.text().contains("written by rollgate only"),
        "{}",
        p.text()
    );
}
