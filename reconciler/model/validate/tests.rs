//! Unit tests of the validator, through `parse_plan`, `parse_settings` and the public
//! helpers: every problem is reported, at its place, and nothing hides another.
//!
//! Invariant: test-only (`#[cfg(test)]`); texts are written inline, no file is read.

use std::time::Duration;

use super::*;
use crate::model::diagnostics::{Code, Diagnostic};
use crate::model::plan::{FirstRollout, Step};
use crate::model::settings::Settings;

const SETTINGS: &str = "apiVersion: rollgate.dev/v1alpha1\nkind: Settings\ntargets:\n  local: { local: {} }\n  k8s: { kubernetes: { context: c } }\n";

fn settings() -> Settings {
    parse_settings("rollgate.yaml", SETTINGS).expect("settings parse")
}

fn plan(strategy: &str) -> String {
    format!(
        "apiVersion: rollgate.dev/v1alpha1\nkind: RolloutPlan\nmetadata: {{ name: p }}\nspec:\n  target: local\n  workload:\n    local: {{ command: [srv], listen: \"127.0.0.1:9000\" }}\n  artifact: v2\n  strategy:\n{strategy}\n  checks:\n    - {{ name: ok, source: builtin, query: success-rate, judge: {{ min: 0.99 }} }}\n"
    )
}

fn with_prometheus(url: &str, var: &str) -> Result<Settings, Vec<Diagnostic>> {
    parse_settings(
        "rollgate.yaml",
        &format!(
            "{SETTINGS}metrics:\n  prom:\n    prometheus:\n      url: {url}\n      authHeaderEnv: {var}\n"
        ),
    )
}

#[test]
fn regression_auth_header_env_cannot_send_rollgates_own_credentials_or_cross_plain_http() {
    // Given settings naming one of rollgate's own secret variables
    for var in [
        "ROLLGATE_GIT_TOKEN",
        "ROLLGATE_WEBHOOK_SECRET",
        "AWS_SECRET_ACCESS_KEY",
        "GITHUB_TOKEN",
    ] {
        let d = with_prometheus("http://127.0.0.1:9090", var).expect_err(var);
        // Then it is refused, at the key's place, naming the variable
        assert_eq!(d[0].code, Code::InvalidValue, "{d:?}");
        assert_eq!(d[0].pos.map(|p| p.line), Some(10), "{d:?}");
        assert!(d[0].message.contains(var), "{}", d[0].message);
    }
    // And a credential of its own may go to loopback only, over plain http
    let d = with_prometheus("http://prometheus.example:9090", "PROM_TOKEN").expect_err("remote");
    assert!(
        d[0].message.contains("prometheus.example"),
        "{}",
        d[0].message
    );
    assert!(with_prometheus("http://127.0.0.1:9090/prom", "PROM_TOKEN").is_ok());
    assert!(with_prometheus("http://localhost:9090", "PROM_TOKEN").is_ok());
}

fn with_web(source: &str) -> Result<Settings, Vec<Diagnostic>> {
    parse_settings(
        "rollgate.yaml",
        &format!("{SETTINGS}metrics:\n  kpi:\n    web:\n{source}"),
    )
}

#[test]
fn a_web_source_is_read_into_its_settings() {
    // Given a web source with every field set
    let s = with_web(
        "      url: \"http://127.0.0.1:8080/r?plan={{plan}}\"\n      method: POST\n      body: '{\"v\": \"{{version}}\"}'\n      headers: { Authorization: KPI_AUTH_HEADER }\n      timeout: 2s\n      jsonPath: $.data.ratio\n      samplesPath: $.data.n\n",
    )
    .expect("valid");
    // Then the domain holds it as written, the timeout parsed
    assert_eq!(
        s.metrics["kpi"],
        crate::model::settings::MetricsSource::Web {
            url: "http://127.0.0.1:8080/r?plan={{plan}}".to_owned(),
            method: crate::model::settings::WebMethod::Post,
            body: Some("{\"v\": \"{{version}}\"}".to_owned()),
            headers: [("Authorization".to_owned(), "KPI_AUTH_HEADER".to_owned())].into(),
            timeout: Duration::from_secs(2),
            json_path: "$.data.ratio".to_owned(),
            samples_path: Some("$.data.n".to_owned()),
        }
    );
    // And GET with a 5s timeout is the default
    let s = with_web("      url: http://kpi.internal/r\n      jsonPath: $.v\n").expect("valid");
    assert!(matches!(
        &s.metrics["kpi"],
        crate::model::settings::MetricsSource::Web { method: crate::model::settings::WebMethod::Get, timeout, .. }
            if *timeout == Duration::from_secs(5)
    ));
}

#[test]
fn regression_web_headers_cannot_send_rollgates_own_credentials_or_cross_plain_http() {
    // Given a web source whose header names one of rollgate's own secret variables
    for var in [
        "ROLLGATE_GIT_TOKEN",
        "AWS_SECRET_ACCESS_KEY",
        "GITHUB_TOKEN",
    ] {
        let d = with_web(&format!(
            "      url: http://127.0.0.1:8080/r\n      headers:\n        Authorization: {var}\n      jsonPath: $.v\n"
        ))
        .expect_err(var);
        // Then it is refused, at the header's place, naming the variable
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].code, Code::InvalidValue, "{d:?}");
        assert_eq!(d[0].pos.map(|p| (p.line, p.col)), Some((11, 24)), "{d:?}");
        assert!(d[0].message.contains(var), "{}", d[0].message);
    }
    // And a credential of its own goes over plain http to loopback only
    let d = with_web(
        "      url: http://kpi.example:8080/r\n      headers: { Authorization: KPI_AUTH }\n      jsonPath: $.v\n",
    )
    .expect_err("remote");
    assert!(
        d[0].message.contains("kpi.example") && d[0].message.contains("KPI_AUTH"),
        "{}",
        d[0].message
    );
    for url in [
        "http://localhost:8080/r",
        "http://[::1]:8080/r",
        "https://kpi.example/r",
    ] {
        assert!(
            with_web(&format!(
                "      url: \"{url}\"\n      headers: {{ Authorization: KPI_AUTH }}\n      jsonPath: $.v\n"
            ))
            .is_ok(),
            "{url}"
        );
    }
    // And without a header, any host will do
    assert!(with_web("      url: http://kpi.example/r\n      jsonPath: $.v\n").is_ok());
}

#[test]
fn every_problem_of_a_web_source_is_reported_at_its_place() {
    // Given a web source with six problems
    let d = with_web(
        "      url: \"http://{{plan}}.kpi/r\"\n      method: PUT\n      body: x\n      headers: { Host: H, X-Key: \"not a var\" }\n      jsonPath: data.ratio\n      samplesPath: \"$..n\"\n      timeout: 5x\n",
    )
    .expect_err("invalid");
    // Then each is reported, in order, at its own line
    let found: Vec<(u32, &str)> = d
        .iter()
        .map(|d| (d.pos.map_or(0, |p| p.line), d.code.as_str()))
        .collect();
    assert_eq!(
        found,
        [
            (9, "invalid-value"),
            (10, "invalid-value"),
            (11, "invalid-value"),
            (12, "invalid-value"),
            (12, "invalid-value"),
            (13, "invalid-value"),
            (14, "invalid-value"),
            (15, "bad-duration"),
        ],
        "{d:#?}"
    );
    assert!(d[0].message.contains("placeholder"), "{}", d[0].message);
    assert!(d[3].message.contains("Host"), "{}", d[3].message);
    assert!(d[4].message.contains("not a var"), "{}", d[4].message);
    // And a method that is not a string at all is a structure error
    let d = with_web("      url: http://x/r\n      jsonPath: $.v\n      nope: 1\n")
        .expect_err("unknown");
    assert_eq!(d[0].code, Code::UnknownField, "{d:?}");
}

#[test]
fn regression_a_misspelt_section_hides_none_of_the_other_errors() {
    // Given a plan whose `strategy` is misspelt `stratgy`, with five more problems
    let text = "apiVersion: rollgate.dev/v1alpha1
kind: RolloutPlan
metadata: { name: p }
spec:
  target: nowhere
  workload:
    local: { command: [srv], listen: \"127.0.0.1:9000\" }
  artifact: v2
  stratgy:
    canary:
      steps:
        - setWeight: 50
        - setWeight: 20
        - analysis: { checks: [nosuch], duration: 5x }
  checks:
    - { name: ok, source: builtin, query: success-rate, judge: { min: 0.99 } }
";
    // When it is validated
    let d = parse_plan("plans/p.yaml", text, Some(&settings())).expect_err("invalid");
    let codes: Vec<&str> = d.iter().map(|d| d.code.as_str()).collect();
    // Then the typo is reported, and every problem inside and beside it as well
    for code in [
        "unknown-field",
        "unknown-target",
        "weight-decreasing",
        "never-complete",
        "unknown-check",
        "bad-duration",
    ] {
        assert!(codes.contains(&code), "{code} missing from {codes:?}");
    }
    // And the typo is not reported twice (as a missing `strategy` as well)
    assert!(!codes.contains(&"missing-field"), "{codes:?}");
    let typo = d
        .iter()
        .find(|d| d.code == Code::UnknownField)
        .expect("typo");
    assert_eq!(typo.help.as_deref(), Some("did you mean `strategy`?"));
}

#[test]
fn regression_a_threshold_that_is_not_a_finite_number_is_refused() {
    for bound in [".nan", ".inf", "-.inf"] {
        let text = plan("    canary: { steps: [ { setWeight: 100 } ] }").replace(
            "judge: { min: 0.99 }",
            &format!("judge: {{ min: {bound} }}"),
        );
        let d = parse_plan("plans/p.yaml", &text, Some(&settings())).expect_err(bound);
        // (A non-finite number has no JSON form: it is refused where it stands,
        // never dropped on the way in.)
        assert!(
            d.iter()
                .any(|d| d.code == Code::InvalidValue && d.message.contains("finite")),
            "{bound}: {d:?}"
        );
    }
}

#[test]
fn linear_preset_expands_into_weights_and_analyses() {
    let p = parse_plan(
        "plans/p.yaml",
        &plan("    preset: { name: Linear25PercentEvery2Minutes, checks: [ok] }"),
        Some(&settings()),
    )
    .expect("valid");
    let weights: Vec<u8> = p
        .plan
        .steps()
        .iter()
        .filter_map(|s| {
            if let Step::SetWeight(w) = s {
                Some(*w)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(weights, vec![25, 50, 75, 100]);
    assert!(
        p.plan
            .steps()
            .iter()
            .any(|s| matches!(s, Step::Analysis(a) if a.duration == Duration::from_secs(120)))
    );
}

#[test]
fn canary_preset_has_one_hold() {
    let steps = expand_preset("Canary10Percent5Minutes", &[]).expect("known preset");
    assert_eq!(
        steps,
        vec![
            Step::SetWeight(10),
            Step::Pause(Some(Duration::from_secs(300))),
            Step::SetWeight(100)
        ]
    );
    assert_eq!(expand_preset("Linear0PercentEvery1Minute", &[]), None);
    assert_eq!(expand_preset("Sideways10", &[]), None);
}

#[test]
fn every_problem_is_reported_not_just_the_first() {
    let text = plan(
        "    canary:\n      steps: [ { setWeight: 120 }, { pause: { duration: soon } }, { analysis: { checks: [nope], duration: 1m } } ]",
    );
    let diags = parse_plan("plans/p.yaml", &text, Some(&settings())).expect_err("invalid");
    let codes: Vec<Code> = diags.iter().map(|d| d.code).collect();
    for code in [Code::WeightRange, Code::BadDuration, Code::UnknownCheck] {
        assert!(codes.contains(&code), "{code} missing from {codes:?}");
    }
    assert!(diags.iter().all(|d| d.pos.is_some()), "{diags:?}");
    // A knock-on error is not reported: the bad weight already explains it.
    assert!(!codes.contains(&Code::NeverComplete), "{codes:?}");
}

#[test]
fn workload_must_match_the_target_kind() {
    let text = plan("    canary: { steps: [ { setWeight: 100 } ] }")
        .replace("target: local", "target: k8s");
    let diags = parse_plan("plans/p.yaml", &text, Some(&settings())).expect_err("invalid");
    assert_eq!(diags[0].code, Code::WorkloadMismatch);
}

#[test]
fn baseline_judge_needs_an_effect_size() {
    let text = plan("    canary: { steps: [ { setWeight: 100 } ] }")
        .replace("judge: { min: 0.99 }", "judge: { compare: baseline }");
    let diags = parse_plan("plans/p.yaml", &text, Some(&settings())).expect_err("invalid");
    assert!(
        diags
            .iter()
            .any(|d| d.code == Code::BadJudge && d.message.contains("effect size")),
        "{diags:?}"
    );
}

#[test]
fn a_first_rollout_is_direct_unless_the_plan_asks_for_steps() {
    let text = plan("    canary: { steps: [ { setWeight: 100 } ] }");
    let p = parse_plan("plans/p.yaml", &text, Some(&settings())).expect("valid");
    assert_eq!(p.plan.first_rollout, FirstRollout::Direct);
    let steps = text.replace(
        "  artifact: v2\n",
        "  artifact: v2\n  firstRollout: steps\n",
    );
    let p = parse_plan("plans/p.yaml", &steps, Some(&settings())).expect("valid");
    assert_eq!(p.plan.first_rollout, FirstRollout::Steps);
    let typo = text.replace(
        "  artifact: v2\n",
        "  artifact: v2\n  firstRollout: Steps\n",
    );
    let diags = parse_plan("plans/p.yaml", &typo, Some(&settings())).expect_err("invalid");
    assert_eq!(diags[0].code, Code::InvalidValue);
    assert_eq!(diags[0].help.as_deref(), Some("did you mean `steps`?"));
}

#[test]
fn dns_labels() {
    assert!(is_dns_label("checkout-eu-1"));
    for bad in ["", "-a", "a-", "A", "../../x", "a_b", &"a".repeat(64)] {
        assert!(!is_dns_label(bad), "{bad}");
    }
}

#[test]
fn notifiers_name_their_secrets_by_variable_never_rollgates_own() {
    let ok = format!(
        "{SETTINGS}notify:\n  - name: team-slack\n    slack: {{ webhookUrlEnv: SLACK_WEBHOOK_URL }}\n  - name: events\n    webhook: {{ urlEnv: EVENTS_URL, signingKeyEnv: EVENTS_KEY }}\n    plans: {{ matchLabels: {{ team: payments }} }}\n"
    );
    let s = parse_settings("rollgate.yaml", &ok).expect("valid");
    assert_eq!(s.notify.len(), 2);
    assert_eq!(
        s.notify[1].match_labels.get("team").map(String::as_str),
        Some("payments")
    );
    let bad = format!(
        "{SETTINGS}notify:\n  - name: a\n    slack: {{ webhookUrlEnv: ROLLGATE_GIT_TOKEN }}\n  - name: a\n    webhook: {{ urlEnv: 'no way', signingKeyEnv: K }}\n  - name: c\n"
    );
    let diags = parse_settings("rollgate.yaml", &bad).expect_err("invalid");
    let msgs: Vec<_> = diags.iter().map(|d| d.message.as_str()).collect();
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("ROLLGATE_GIT_TOKEN holds one of rollgate's own")),
        "{msgs:?}"
    );
    assert!(msgs.contains(&"notifier `a` is named twice"), "{msgs:?}");
    assert!(
        msgs.contains(&"`no way` is not an environment variable name"),
        "{msgs:?}"
    );
    assert!(
        msgs.contains(&"notifier `c` needs exactly one kind: `slack` or `webhook`"),
        "{msgs:?}"
    );
}

fn knative_plan(step: &str) -> Result<ParsedPlan, Vec<Diagnostic>> {
    let text = format!(
        "apiVersion: rollgate.dev/v1alpha1\nkind: RolloutPlan\nmetadata: {{ name: p }}\nspec:\n  target: k8s\n  workload:\n    knative: {{ namespace: web, service: hello }}\n  artifact: registry.example/hello@sha256:3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f\n  strategy:\n    canary:\n      steps:\n        - {step}\n        - setWeight: 10\n        - setWeight: 100\n"
    );
    parse_plan("plans/p.yaml", &text, Some(&settings()))
}

#[test]
fn a_knative_plan_takes_a_header_route_on_its_tag_header_only() {
    // Given Knative's tag header, exactly, with a tag for a value: accepted
    let ok = knative_plan(
        "setHeaderRoute: { match: [ { header: knative-serving-tag, value: beta-2 } ] }",
    )
    .expect("a tag header route is accepted");
    let crate::model::plan::Strategy::Canary { steps, .. } = &ok.plan.strategy else {
        panic!("a canary: {:?}", ok.plan.strategy);
    };
    let routing = crate::model::plan::Routing::at(steps, 0);
    assert_eq!(
        crate::model::plan::knative_tag(&routing.matches),
        Some("beta-2")
    );
    // Anything else Knative cannot route is refused at the step, saying what it can
    for step in [
        "setHeaderRoute: { match: [ { header: X-Canary, value: \"1\" } ] }",
        "setHeaderRoute: { match: [ { header: Knative-Serving-Tag, prefix: beta } ] }",
        "setHeaderRoute: { match: [ { header: Knative-Serving-Tag, value: Beta } ] }",
        "setHeaderRoute: { match: [ { header: Knative-Serving-Tag, value: beta }, { cookie: c, value: \"1\" } ] }",
    ] {
        let d = knative_plan(step).expect_err(step);
        let e = d
            .iter()
            .find(|d| d.code == Code::UnsupportedTraffic)
            .unwrap_or_else(|| panic!("{step}: {d:?}"));
        assert_eq!(e.pos.map(|p| p.line), Some(12), "{step}: {e:?}");
        assert!(e.message.contains("Knative-Serving-Tag"), "{step}: {e:?}");
        assert!(
            e.help.as_deref().is_some_and(|h| h.contains("Gateway API")),
            "{step}: {e:?}"
        );
    }
    // And a mirror stays refused
    let d = knative_plan("setMirror: { percent: 20 }").expect_err("mirror");
    assert_eq!(d[0].code, Code::UnsupportedTraffic, "{d:?}");
}

#[test]
fn a_fresh_baseline_is_kept_with_weights_up_to_half_and_a_last_full_step() {
    use crate::model::plan::{Baseline, Strategy};
    // Given a local canary with a fresh baseline at 5, 25, 50, then 100
    let text = plan(
        "    canary:\n      baseline: fresh\n      steps: [ { setWeight: 5 }, { setWeight: 25 }, { setWeight: 50 }, { setWeight: 100 } ]",
    );
    let parsed = parse_plan("plans/p.yaml", &text, None).expect("valid");
    // Then the plan carries it, and its file form says so again
    assert!(parsed.plan.strategy.fresh_baseline());
    assert!(matches!(
        parsed.plan.strategy,
        Strategy::Canary {
            baseline: Baseline::Fresh,
            ..
        }
    ));
    let again = serde_json::to_value(parsed.plan.to_wire()).expect("serialises");
    assert_eq!(again["spec"]["strategy"]["canary"]["baseline"], "fresh");
    // And without the key, or with `stable`, the stable fleet stays the baseline
    for strategy in [
        "    canary:\n      steps: [ { setWeight: 75 }, { setWeight: 100 } ]",
        "    canary:\n      baseline: stable\n      steps: [ { setWeight: 75 }, { setWeight: 100 } ]",
    ] {
        let p = parse_plan("plans/p.yaml", &plan(strategy), None).expect("valid");
        assert!(!p.plan.strategy.fresh_baseline(), "{strategy}");
    }
}

#[test]
fn a_fresh_baseline_is_accepted_on_kubernetes_with_replica_ratio_and_with_a_gateway_route() {
    let k8s = |workload: &str| {
        let text = format!(
            "apiVersion: rollgate.dev/v1alpha1\nkind: RolloutPlan\nmetadata: {{ name: p }}\nspec:\n  target: k8s\n  workload:\n    kubernetes: {{ {workload} }}\n  artifact: registry.example.com/web:2\n  strategy:\n    canary:\n      baseline: fresh\n      steps: [ {{ setWeight: 10 }}, {{ setWeight: 50 }}, {{ setWeight: 100 }} ]\n"
        );
        parse_plan("plans/p.yaml", &text, Some(&settings()))
    };
    // Given a Deployment whose traffic follows its replicas, or a Gateway API route
    // (a third backendRef to `<service>-baseline`): accepted
    for workload in [
        "namespace: web, deployment: web, service: web",
        "namespace: web, deployment: web, service: web, route: web",
    ] {
        let ok = k8s(workload).expect(workload);
        assert!(ok.plan.strategy.fresh_baseline(), "{workload}");
        assert!(ok.plan.workload.capabilities().fresh_baseline, "{workload}");
    }
}
