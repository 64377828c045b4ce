//! Unit tests of job checks and hooks in plans (#18): what validates, what is refused
//! and where (FILE:LINE:COL and a help line).
//!
//! Invariant: test-only (`#[cfg(test)]`); texts are written inline, no file is read.

use std::time::Duration;

use super::*;
use crate::model::diagnostics::{Code, Diagnostic};
use crate::model::plan::{HookPoint, JobRun, Step};

const LOCAL: &str = "local: { command: [srv], listen: \"127.0.0.1:9000\" }";

fn plan(workload: &str, checks: &str, steps: &str, extra: &str) -> String {
    format!(
        "apiVersion: rollgate.dev/v1alpha1\nkind: RolloutPlan\nmetadata: {{ name: p }}\nspec:\n  target: t\n  workload:\n    {workload}\n  artifact: v2\n  strategy:\n    canary:\n      steps: {steps}\n  checks:\n{checks}{extra}"
    )
}

fn errors(text: &str) -> Vec<Diagnostic> {
    parse_plan("plans/p.yaml", text, None).expect_err("refused")
}

#[test]
fn a_local_job_check_in_a_0s_analysis_with_hooks_validates_and_round_trips() {
    let text = plan(
        LOCAL,
        "    - name: smoke\n      job: { command: [./smoke.sh, \"{{version}}\"], env: { TARGET: \"http://127.0.0.1:9000\" }, timeout: 2m }\n    - { name: ok, source: builtin, query: success-rate, judge: { min: 0.99 } }\n",
        "[ { setWeight: 5 }, { analysis: { checks: [smoke], duration: 0s } }, { setWeight: 100 } ]",
        "  hooks: { onStart: [smoke], beforePromote: [smoke], afterRollback: [smoke] }\n",
    );
    let p = parse_plan("plans/p.yaml", &text, None).expect("valid").plan;
    let smoke = p.job("smoke").expect("a job check");
    assert_eq!(smoke.timeout, Duration::from_secs(120));
    assert!(matches!(&smoke.run, JobRun::Command { command, env }
        if command[0] == "./smoke.sh" && env.contains_key("TARGET")));
    assert!(p.check("smoke").is_none(), "a job is not a metric check");
    assert!(p.check("ok").is_some());
    // The hooks are steps around the plan's own: onStart first, beforePromote last.
    let steps = p.steps();
    assert!(matches!(&steps[0], Step::Analysis(a) if a.hook == Some(HookPoint::OnStart)));
    assert!(
        matches!(steps.last(), Some(Step::Analysis(a)) if a.hook == Some(HookPoint::BeforePromote) && a.duration.is_zero())
    );
    assert_eq!(p.hooks.after_rollback, vec!["smoke".to_owned()]);
    // The file form validates to the same plan.
    let again = serde_saphyr_text(&p);
    assert_eq!(
        parse_plan("plans/p.yaml", &again, None)
            .expect("again")
            .plan,
        p
    );
}

fn serde_saphyr_text(p: &crate::model::Plan) -> String {
    serde_json::to_string(&p.to_wire()).expect("json is yaml")
}

#[test]
fn a_kubernetes_job_check_takes_a_template_and_a_ttl() {
    let text = plan(
        "kubernetes: { namespace: shop, deployment: web }",
        "    - name: smoke\n      job:\n        ttl: 10m\n        template:\n          backoffLimit: 0\n          template: { spec: { restartPolicy: Never, containers: [ { name: s, image: curl } ] } }\n",
        "[ { setWeight: 5 }, { analysis: { checks: [smoke], duration: 0s } }, { setWeight: 100 } ]",
        "",
    );
    let p = parse_plan("plans/p.yaml", &text, None).expect("valid").plan;
    match &p.job("smoke").expect("job").run {
        JobRun::Kubernetes { template, ttl } => {
            assert_eq!(*ttl, Duration::from_secs(600));
            assert_eq!(template["backoffLimit"], 0);
        }
        other => panic!("{other:?}"),
    }
    let again = serde_saphyr_text(&p);
    assert_eq!(
        parse_plan("plans/p.yaml", &again, None)
            .expect("again")
            .plan,
        p
    );
}

#[test]
fn a_job_on_a_target_that_cannot_run_one_is_refused_at_its_place_with_help() {
    for (workload, kind) in [
        (
            "lambda: { function: f, alias: live, region: eu-west-1 }",
            "lambda",
        ),
        ("knative: { namespace: n, service: s }", "knative"),
    ] {
        let text = plan(
            workload,
            "    - name: smoke\n      job: { command: [./smoke.sh] }\n",
            "[ { setWeight: 5 }, { analysis: { checks: [smoke], duration: 0s } } ]",
            "",
        );
        let d = errors(&text);
        let e = d
            .iter()
            .find(|d| d.code == Code::WorkloadMismatch)
            .unwrap_or_else(|| panic!("{d:?}"));
        assert!(
            e.message
                .contains(&format!("a {kind} workload's target cannot run a job")),
            "{e}"
        );
        let shown = e.to_string();
        assert!(shown.starts_with("plans/p.yaml:14:7:"), "{shown}");
        assert!(
            e.help
                .as_deref()
                .is_some_and(|h| h.contains("local and kubernetes")),
            "{shown}"
        );
    }
}

#[test]
fn metric_fields_on_a_job_check_mean_nothing_and_are_refused() {
    let text = plan(
        LOCAL,
        "    - name: smoke\n      interval: 1m\n      judge: { min: 1 }\n      job: { command: [./smoke.sh] }\n",
        "[ { analysis: { checks: [smoke], duration: 0s } } ]",
        "",
    );
    let d = errors(&text);
    let fields: Vec<&str> = d
        .iter()
        .filter(|d| d.message.contains("means nothing on a job check"))
        .map(|d| d.message.split('`').nth(1).unwrap_or(""))
        .collect();
    assert_eq!(fields, vec!["interval", "judge"], "{d:?}");
}

#[test]
fn the_wrong_kind_of_job_for_the_target_is_refused() {
    let local_with_template = plan(
        LOCAL,
        "    - name: smoke\n      job: { template: { template: { spec: { containers: [ { name: a } ] } } } }\n",
        "[ { analysis: { checks: [smoke], duration: 0s } } ]",
        "",
    );
    let d = errors(&local_with_template);
    assert!(
        d.iter().any(|d| d
            .message
            .contains("a local workload's job runs a `command`")),
        "{d:?}"
    );
    assert!(
        d.iter()
            .any(|d| d.message.contains("missing field `command`")),
        "{d:?}"
    );
    let k8s_with_command = plan(
        "kubernetes: { namespace: shop, deployment: web }",
        "    - name: smoke\n      job: { command: [./smoke.sh], template: { spec: {} } }\n",
        "[ { analysis: { checks: [smoke], duration: 0s } } ]",
        "",
    );
    let d = errors(&k8s_with_command);
    assert!(
        d.iter()
            .any(|d| d.message.contains("`command` is for local jobs")),
        "{d:?}"
    );
    assert!(
        d.iter()
            .any(|d| d.message.contains("template.spec.containers")),
        "{d:?}"
    );
}

#[test]
fn a_0s_analysis_still_needs_time_when_it_judges_a_metric() {
    let text = plan(
        LOCAL,
        "    - name: smoke\n      job: { command: [./smoke.sh] }\n    - { name: ok, source: builtin, query: success-rate, judge: { min: 0.99 } }\n",
        "[ { analysis: { checks: [smoke, ok], duration: 0s } } ]",
        "",
    );
    let d = errors(&text);
    assert!(d.iter().any(|d| d.code == Code::BadDuration), "{d:?}");
}

#[test]
fn a_metric_check_without_its_source_query_or_judge_is_refused() {
    let text = plan(
        LOCAL,
        "    - { name: ok, query: success-rate }\n",
        "[ { analysis: { checks: [ok], duration: 1m } } ]",
        "",
    );
    let d = errors(&text);
    let missing: Vec<&str> = d
        .iter()
        .filter(|d| d.code == Code::MissingField)
        .map(|d| d.message.as_str())
        .collect();
    assert_eq!(
        missing,
        vec![
            "missing field `judge` in check `ok`",
            "missing field `source` in check `ok`"
        ]
    );
}

#[test]
fn hooks_name_job_checks_of_the_plan() {
    let text = plan(
        LOCAL,
        "    - name: smoke\n      job: { command: [./smoke.sh] }\n    - { name: ok, source: builtin, query: success-rate, judge: { min: 0.99 } }\n",
        "[ { setWeight: 100 } ]",
        "  hooks: { beforePromote: [ok, smok] }\n",
    );
    let d = errors(&text);
    assert!(
        d.iter().any(|d| d
            .message
            .contains("`ok` is a metric check; hooks run job checks")),
        "{d:?}"
    );
    let unknown = d
        .iter()
        .find(|d| d.code == Code::UnknownCheck)
        .unwrap_or_else(|| panic!("{d:?}"));
    assert_eq!(unknown.help.as_deref(), Some("did you mean `smoke`?"));
}
