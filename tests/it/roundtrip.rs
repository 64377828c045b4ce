//! Plans round-trip: any valid plan, written as YAML, validates; and the validated plan,
//! written back with `Plan::to_wire` and `serde_saphyr`, validates to the same plan.
//!
//! The generator covers the whole format: both workload kinds (on a target of the
//! matching kind), canary steps with non-decreasing weights that end at 100% or in
//! an untimed pause, blue-green, presets, threshold and baseline judges, windows,
//! rollback and the optional knobs, with label values chosen to trip a YAML writer
//! (`"yes"`, `"123"`, `"~"`, `"a: b"` ...). A second property mutates the text (lines
//! deleted, duplicated, swapped, fields inserted, characters changed): validation must
//! never panic, and whatever it still accepts must round-trip too.

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use rollgate::model::Settings;
use rollgate::model::validate::{ParsedPlan, parse_plan, parse_settings};

const SETTINGS: &str = "\
apiVersion: rollgate.dev/v1alpha1
kind: Settings
targets:
  local:
    local: {}
  prod-eu:
    kubernetes: { context: prod-eu }
metrics:
  prometheus:
    prometheus: { url: http://127.0.0.1:9090 }
";

fn settings() -> Settings {
    parse_settings("rollgate.yaml", SETTINGS).expect("the test settings are valid")
}

// ---------------------------------------------------------------------------------
// A plan as the generator builds it: what a user could write, before rendering.

#[derive(Debug, Clone)]
struct GenPlan {
    name: String,
    labels: Vec<(String, String)>,
    annotations: Vec<(String, String)>,
    workload: GenWorkload,
    artifact: String,
    promoted_from: Option<String>,
    strategy: GenStrategy,
    checks: Vec<GenCheck>,
    min_samples: Option<u64>,
    windows: Option<GenWindows>,
    on_failure: Option<&'static str>,
    rollback_window: Option<String>,
    progress_deadline: Option<String>,
    first_rollout: Option<&'static str>,
}

#[derive(Debug, Clone)]
enum GenWorkload {
    Local {
        command: Vec<&'static str>,
        listen: String,
        health: Option<(&'static str, Option<u16>, Option<String>)>,
        env: Vec<(String, String)>,
        sticky: Option<(&'static str, String)>,
    },
    Kubernetes {
        namespace: String,
        deployment: String,
        container: Option<String>,
        service: Option<String>,
        route: Option<String>,
        route_rule: Option<u32>,
    },
}

#[derive(Debug, Clone)]
enum GenStep {
    SetWeight(u8),
    Pause(Option<String>),
    Analysis(Vec<String>, String),
}

#[derive(Debug, Clone)]
enum GenStrategy {
    Canary(Vec<GenStep>),
    BlueGreen {
        preview: Option<(Vec<String>, String)>,
        auto_promote: Option<bool>,
        scale_down_delay: Option<String>,
    },
    Preset(&'static str, Vec<String>),
}

#[derive(Debug, Clone)]
struct GenCheck {
    name: String,
    builtin: Option<&'static str>,
    judge: GenJudge,
    interval: Option<String>,
    failure_limit: Option<u32>,
    consecutive_error_limit: Option<u32>,
}

#[derive(Debug, Clone)]
enum GenJudge {
    Threshold(Option<f64>, Option<f64>),
    Baseline {
        direction: Option<&'static str>,
        max_ratio: Option<f64>,
        max_increase: Option<f64>,
        alpha: Option<f64>,
    },
}

#[derive(Debug, Clone)]
struct GenWindows {
    allow: Vec<&'static str>,
    deny: Vec<&'static str>,
    timezone: Option<&'static str>,
}

// ---------------------------------------------------------------------------------
// Strategies.

fn dns_label() -> impl Strategy<Value = String> {
    "[a-z]([a-z0-9-]{0,14}[a-z0-9])?"
}

fn duration() -> impl Strategy<Value = String> {
    prop_oneof![
        (
            1u32..=999,
            prop::sample::select(vec!["ms", "s", "m", "h", "d"])
        )
            .prop_map(|(n, u)| format!("{n}{u}")),
        (1u32..=23, 1u32..=59).prop_map(|(h, m)| format!("{h}h{m}m")),
        (1u32..=59, 1u32..=59).prop_map(|(m, s)| format!("{m}m{s}s")),
    ]
}

/// Text that a careless YAML writer would turn into something else.
fn tricky_text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "",
            "yes",
            "no",
            "true",
            "False",
            "null",
            "~",
            "123",
            "0x1F",
            "1e3",
            "0o17",
            "-1",
            ".inf",
            "a: b",
            "#x",
            "- x",
            "[a]",
            "{a}",
            " lead",
            "trail ",
            "ünïcödé",
            "multi\nline",
            "tab\there",
            "quote\"d",
            "'single'",
            "*alias",
            "&anchor",
            "!tag",
            "@at",
            "%pct",
            "|",
            ">",
        ])
        .prop_map(str::to_owned),
        "[a-zA-Z0-9 ._/-]{0,20}",
    ]
}

fn label_key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "team",
            "tier",
            "environment",
            "app.kubernetes.io/name"
        ])
        .prop_map(str::to_owned),
        "[a-z][a-z0-9.-]{0,10}",
    ]
}

fn map_of(
    keys: impl Strategy<Value = String>,
    values: impl Strategy<Value = String>,
) -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::btree_map(keys, values, 0..4).prop_map(|m| m.into_iter().collect())
}

fn workload() -> impl Strategy<Value = GenWorkload> {
    let local = (
        prop::sample::subsequence(
            vec!["--port", "{{port}}", "--version", "{{version}}"],
            0..=4,
        ),
        prop_oneof![Just("127.0.0.1"), Just("0.0.0.0"), Just("[::1]")],
        1024u16..=65535,
        prop::option::of((
            prop::sample::select(vec!["/", "/healthz", "/ready?full=1"]),
            prop::option::of(100u16..=599),
            prop::option::of(duration()),
        )),
        map_of("[A-Z][A-Z0-9_]{0,8}", tricky_text()),
        prop::option::of((
            prop::sample::select(vec!["header", "cookie"]),
            "[a-zA-Z-]{1,12}",
        )),
    )
        .prop_map(|(args, host, port, health, env, sticky)| {
            let mut command = vec!["./app"];
            command.extend(args);
            GenWorkload::Local {
                command,
                listen: format!("{host}:{port}"),
                health,
                env,
                sticky,
            }
        });
    let kubernetes = (
        dns_label(),
        dns_label(),
        prop::option::of("[a-z][a-z0-9-]{0,10}"),
        prop::option::of(dns_label()),
        prop::option::of(dns_label()),
        prop::option::of(0u32..4),
    )
        .prop_map(
            |(namespace, deployment, container, service, route, route_rule)| {
                GenWorkload::Kubernetes {
                    namespace,
                    deployment,
                    container,
                    service,
                    route,
                    route_rule,
                }
            },
        );
    prop_oneof![local, kubernetes]
}

fn thousandths(range: std::ops::RangeInclusive<u32>) -> impl Strategy<Value = f64> {
    range.prop_map(|n| f64::from(n) / 1000.0)
}

fn judge() -> impl Strategy<Value = GenJudge> {
    let threshold = prop_oneof![
        thousandths(0..=1000).prop_map(|lo| GenJudge::Threshold(Some(lo), None)),
        thousandths(0..=100_000).prop_map(|hi| GenJudge::Threshold(None, Some(hi))),
        (thousandths(0..=1000), thousandths(0..=1000))
            .prop_map(|(lo, extra)| GenJudge::Threshold(Some(lo), Some(lo + extra))),
    ];
    let baseline = (
        prop::option::of(prop::sample::select(vec!["increase", "decrease", "either"])),
        prop::option::of(thousandths(1..=10_000)),
        prop::option::of(thousandths(0..=10_000)),
        prop::option::of(prop::sample::select(vec![0.001, 0.01, 0.05, 0.1, 0.5])),
    )
        .prop_filter("an effect size", |(_, r, i, _)| r.is_some() || i.is_some())
        .prop_map(
            |(direction, max_ratio, max_increase, alpha)| GenJudge::Baseline {
                direction,
                max_ratio,
                max_increase,
                alpha,
            },
        );
    prop_oneof![threshold, baseline]
}

fn checks() -> impl Strategy<Value = Vec<GenCheck>> {
    prop::sample::subsequence(
        vec!["errors", "latency", "success", "p99", "saturation"],
        0..=3,
    )
    .prop_flat_map(|names| {
        let n = names.len();
        (
            Just(names),
            prop::collection::vec(
                (
                    prop::option::of(prop::sample::select(vec![
                        "success-rate",
                        "error-rate",
                        "latency-p50",
                        "latency-p95",
                        "latency-p99",
                        // replica-health is valid only on kubernetes and knative workloads.
                    ])),
                    judge(),
                    prop::option::of(duration()),
                    prop::option::of(0u32..10),
                    prop::option::of(0u32..10),
                ),
                n,
            ),
        )
    })
    .prop_map(|(names, rest)| {
        names
            .into_iter()
            .zip(rest)
            .map(
                |(name, (builtin, judge, interval, failure_limit, consecutive_error_limit))| {
                    GenCheck {
                        name: name.to_owned(),
                        builtin,
                        judge,
                        interval,
                        failure_limit,
                        consecutive_error_limit,
                    }
                },
            )
            .collect()
    })
}

/// A non-empty choice of the declared check names (`None` when there are none).
fn check_refs(names: &[String]) -> BoxedStrategy<Option<Vec<String>>> {
    if names.is_empty() {
        Just(None).boxed()
    } else {
        prop::sample::subsequence(names.to_vec(), 1..=names.len())
            .prop_map(Some)
            .boxed()
    }
}

fn canary(names: Vec<String>) -> impl Strategy<Value = GenStrategy> {
    let hold = prop_oneof![
        Just(None::<GenStep>),
        prop::option::of(duration()).prop_map(|d| Some(GenStep::Pause(d))),
        (check_refs(&names), duration())
            .prop_map(|(refs, d)| refs.map(|r| GenStep::Analysis(r, d))),
    ];
    (prop::collection::vec((0u8..=40, hold), 0..6), any::<bool>()).prop_map(
        |(stages, end_in_promotion)| {
            let mut steps = Vec::new();
            let mut weight = 0u8;
            for (up, hold) in stages {
                weight = weight.saturating_add(up).min(100);
                steps.push(GenStep::SetWeight(weight));
                steps.extend(hold);
            }
            if end_in_promotion {
                steps.push(GenStep::Pause(None));
            } else {
                steps.push(GenStep::SetWeight(100));
            }
            GenStrategy::Canary(steps)
        },
    )
}

fn strategy(names: Vec<String>) -> impl Strategy<Value = GenStrategy> {
    let blue_green = (
        check_refs(&names),
        duration(),
        prop::option::of(any::<bool>()),
        prop::option::of(duration()),
    )
        .prop_map(
            |(refs, d, auto_promote, scale_down_delay)| GenStrategy::BlueGreen {
                preview: refs.map(|r| (r, d)),
                auto_promote,
                scale_down_delay,
            },
        );
    let preset = (
        prop::sample::select(vec![
            "AllAtOnce",
            "Canary10Percent5Minutes",
            "Canary25Percent1Minute",
            "Linear10PercentEvery1Minute",
            "Linear33PercentEvery2Minutes",
        ]),
        prop_oneof![Just(None), check_refs(&names)],
    )
        .prop_map(|(name, refs)| GenStrategy::Preset(name, refs.unwrap_or_default()));
    prop_oneof![3 => canary(names), 1 => blue_green, 1 => preset]
}

fn windows() -> impl Strategy<Value = GenWindows> {
    let crons = vec![
        "* 9-16 * * MON-THU",
        "*/15 * * * *",
        "0 22 * * 1-5",
        "30 2 1 * *",
        "0-29 8,12 * JAN-JUN SAT",
    ];
    (
        prop::sample::subsequence(crons.clone(), 0..=2),
        prop::sample::subsequence(crons, 0..=2),
        prop::option::of(prop::sample::select(vec![
            "UTC",
            "Europe/Berlin",
            "America/New_York",
            "Asia/Kolkata",
            "Australia/Lord_Howe",
        ])),
    )
        .prop_map(|(allow, deny, timezone)| GenWindows {
            allow,
            deny,
            timezone,
        })
}

fn plan() -> impl Strategy<Value = GenPlan> {
    let head = (
        dns_label(),
        map_of(label_key(), tricky_text()),
        map_of(label_key(), tricky_text()),
        workload(),
        "[a-zA-Z0-9][a-zA-Z0-9./:@_-]{0,40}",
        prop::option::of(dns_label()),
    );
    let tail = (
        prop::option::of(0u64..100_000),
        prop::option::of(windows()),
        prop::option::of(prop::sample::select(vec!["revert", "hold"])),
        prop::option::of(duration()),
        prop::option::of(duration()),
        prop::option::of(prop::sample::select(vec!["direct", "steps"])),
    );
    (head, tail, checks())
        .prop_flat_map(|(head, tail, checks)| {
            let names: Vec<String> = checks.iter().map(|c| c.name.clone()).collect();
            (Just(head), Just(tail), Just(checks), strategy(names))
        })
        .prop_map(|(head, tail, checks, strategy)| {
            let (name, labels, annotations, workload, artifact, promoted_from) = head;
            let (
                min_samples,
                windows,
                on_failure,
                rollback_window,
                progress_deadline,
                first_rollout,
            ) = tail;
            let promoted_from = promoted_from.filter(|p| *p != name);
            GenPlan {
                name,
                labels,
                annotations,
                workload,
                artifact,
                promoted_from,
                strategy,
                checks,
                min_samples,
                windows,
                on_failure,
                rollback_window,
                progress_deadline,
                first_rollout,
            }
        })
}

// ---------------------------------------------------------------------------------
// Rendering: block style for structure, flow style for small maps, every string quoted
// (unquoted, YAML 1.1 reads a name such as `y`, `no` or `on` as a boolean).

/// A YAML double-quoted scalar (JSON's escapes are a subset of YAML's).
fn q(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

fn qs(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| q(s)).collect();
    format!("[{}]", quoted.join(", "))
}

fn render(p: &GenPlan) -> String {
    use std::fmt::Write;
    let mut y = String::new();
    let mut line = |indent: usize, text: &str| {
        let _ = writeln!(y, "{}{text}", "  ".repeat(indent));
    };
    line(0, "# A generated plan.");
    line(0, "apiVersion: rollgate.dev/v1alpha1");
    line(0, "kind: RolloutPlan");
    line(0, "metadata:");
    line(1, &format!("name: {}", q(&p.name)));
    for (key, map) in [("labels", &p.labels), ("annotations", &p.annotations)] {
        if !map.is_empty() {
            line(1, &format!("{key}:"));
            for (k, v) in map {
                line(2, &format!("{}: {}", q(k), q(v)));
            }
        }
    }
    line(0, "spec:");
    match &p.workload {
        GenWorkload::Local {
            command,
            listen,
            health,
            env,
            sticky,
        } => {
            line(1, "target: local");
            line(1, "workload:");
            line(2, "local:");
            let command: Vec<String> = command.iter().map(|s| (*s).to_owned()).collect();
            line(3, &format!("command: {}", qs(&command)));
            line(3, &format!("listen: {}", q(listen)));
            if let Some((path, status, timeout)) = health {
                line(3, "healthCheck:");
                line(4, &format!("path: {}", q(path)));
                if let Some(s) = status {
                    line(4, &format!("expectStatus: {s}"));
                }
                if let Some(t) = timeout {
                    line(4, &format!("timeout: {t}"));
                }
            }
            if !env.is_empty() {
                line(3, "env:");
                for (k, v) in env {
                    line(4, &format!("{}: {}", q(k), q(v)));
                }
            }
            if let Some((kind, value)) = sticky {
                line(3, &format!("sticky: {{ {kind}: {} }}", q(value)));
            }
        }
        GenWorkload::Kubernetes {
            namespace,
            deployment,
            container,
            service,
            route,
            route_rule,
        } => {
            line(1, "target: prod-eu");
            line(1, "workload:");
            let mut fields = vec![
                format!("namespace: {}", q(namespace)),
                format!("deployment: {}", q(deployment)),
            ];
            if let Some(c) = container {
                fields.push(format!("container: {}", q(c)));
            }
            if let Some(s) = service {
                fields.push(format!("service: {}", q(s)));
            }
            if let Some(r) = route {
                fields.push(format!("route: {}", q(r)));
            }
            if let Some(r) = route_rule {
                fields.push(format!("routeRule: {r}"));
            }
            line(2, &format!("kubernetes: {{ {} }}", fields.join(", ")));
        }
    }
    line(1, &format!("artifact: {}", q(&p.artifact)));
    if let Some(from) = &p.promoted_from {
        line(1, &format!("promotedFrom: {}", q(from)));
    }
    line(1, "strategy:");
    match &p.strategy {
        GenStrategy::Canary(steps) => {
            line(2, "canary:");
            line(3, "steps:");
            for s in steps {
                match s {
                    GenStep::SetWeight(w) => line(4, &format!("- setWeight: {w}")),
                    GenStep::Pause(None) => line(4, "- pause: {}"),
                    GenStep::Pause(Some(d)) => line(4, &format!("- pause: {{ duration: {d} }}")),
                    GenStep::Analysis(c, d) => line(
                        4,
                        &format!("- analysis: {{ checks: {}, duration: {d} }}", qs(c)),
                    ),
                }
            }
        }
        GenStrategy::BlueGreen {
            preview,
            auto_promote,
            scale_down_delay,
        } => {
            line(2, "blueGreen:");
            if let Some((c, d)) = preview {
                line(
                    3,
                    &format!("preview: {{ checks: {}, duration: {d} }}", qs(c)),
                );
            }
            if let Some(a) = auto_promote {
                line(3, &format!("autoPromote: {a}"));
            }
            if let Some(d) = scale_down_delay {
                line(3, &format!("scaleDownDelay: {d}"));
            }
            if preview.is_none() && auto_promote.is_none() && scale_down_delay.is_none() {
                line(3, "{}");
            }
        }
        GenStrategy::Preset(name, checks) => {
            line(2, "preset:");
            line(3, &format!("name: {name}"));
            if !checks.is_empty() {
                line(3, &format!("checks: {}", qs(checks)));
            }
        }
    }
    if !p.checks.is_empty() {
        line(1, "checks:");
        for c in &p.checks {
            line(2, &format!("- name: {}", q(&c.name)));
            match c.builtin {
                Some(query) => {
                    line(3, "source: builtin");
                    line(3, &format!("query: {query}"));
                }
                None => {
                    line(3, "source: prometheus");
                    let promql = format!(
                        "sum(rate(http_requests_total{{check=\"{}\",version=\"{{{{version}}}}\"}}[{{{{window}}}}]))",
                        c.name
                    );
                    line(3, &format!("query: {}", q(&promql)));
                }
            }
            let mut judge = Vec::new();
            match &c.judge {
                GenJudge::Threshold(min, max) => {
                    if let Some(v) = min {
                        judge.push(format!("min: {v}"));
                    }
                    if let Some(v) = max {
                        judge.push(format!("max: {v}"));
                    }
                }
                GenJudge::Baseline {
                    direction,
                    max_ratio,
                    max_increase,
                    alpha,
                } => {
                    judge.push("compare: baseline".to_owned());
                    if let Some(d) = direction {
                        judge.push(format!("direction: {d}"));
                    }
                    if let Some(v) = max_ratio {
                        judge.push(format!("maxRatio: {v}"));
                    }
                    if let Some(v) = max_increase {
                        judge.push(format!("maxIncrease: {v}"));
                    }
                    if let Some(v) = alpha {
                        judge.push(format!("alpha: {v}"));
                    }
                }
            }
            line(3, &format!("judge: {{ {} }}", judge.join(", ")));
            if let Some(i) = &c.interval {
                line(3, &format!("interval: {i}"));
            }
            if let Some(n) = c.failure_limit {
                line(3, &format!("failureLimit: {n}"));
            }
            if let Some(n) = c.consecutive_error_limit {
                line(3, &format!("consecutiveErrorLimit: {n}"));
            }
        }
    }
    if let Some(n) = p.min_samples {
        line(1, &format!("minSamples: {n}"));
    }
    if let Some(w) = &p.windows {
        line(1, "windows:");
        let allow: Vec<String> = w.allow.iter().map(|s| (*s).to_owned()).collect();
        let deny: Vec<String> = w.deny.iter().map(|s| (*s).to_owned()).collect();
        line(2, &format!("allow: {}", qs(&allow)));
        line(2, &format!("deny: {}", qs(&deny)));
        if let Some(tz) = w.timezone {
            line(2, &format!("timezone: {tz}"));
        }
    }
    if p.on_failure.is_some() || p.rollback_window.is_some() {
        line(1, "rollback:");
        if let Some(f) = p.on_failure {
            line(2, &format!("onFailure: {f}"));
        }
        if let Some(d) = &p.rollback_window {
            line(2, &format!("rollbackWindow: {d}"));
        }
    }
    if let Some(d) = &p.progress_deadline {
        line(1, &format!("progressDeadline: {d}"));
    }
    if let Some(f) = p.first_rollout {
        line(1, &format!("firstRollout: {f}"));
    }
    y
}

// ---------------------------------------------------------------------------------
// Mutations: small edits a hurried human (or a bad merge) makes.

#[derive(Debug, Clone)]
enum Mutation {
    DeleteLine(usize),
    DuplicateLine(usize),
    SwapLines(usize),
    InsertField(usize, &'static str),
    ChangeChar(usize, char),
    DeleteChar(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::DeleteLine),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        any::<usize>().prop_map(Mutation::SwapLines),
        (
            any::<usize>(),
            prop::sample::select(vec![
                "bogus: 1",
                "minSamples: 7",
                "setWeight: 50",
                "- setWeight: 30",
                "- pause: {}",
                "duration: 1m",
                "name: other",
                "timezone: Mars/Olympus",
                "checks: []",
                "judge: {}",
                "&a x: *a",
                "<<: {}",
            ])
        )
            .prop_map(|(at, f)| Mutation::InsertField(at, f)),
        (
            any::<usize>(),
            prop::sample::select(vec![
                'a', 'Z', '0', '9', ':', '-', ' ', '{', '}', '[', ']', '"', '\'', '#', '&', '*',
                '!', '|', '>', '\t', '\n', '.', 'é',
            ])
        )
            .prop_map(|(at, c)| Mutation::ChangeChar(at, c)),
        any::<usize>().prop_map(Mutation::DeleteChar),
    ]
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let n = lines.len().max(1);
    match m {
        Mutation::DeleteLine(i) => {
            if !lines.is_empty() {
                lines.remove(i % n);
            }
        }
        Mutation::DuplicateLine(i) => {
            if let Some(l) = lines.get(i % n).cloned() {
                lines.insert(i % n, l);
            }
        }
        Mutation::SwapLines(i) => {
            if lines.len() >= 2 {
                let i = i % (lines.len() - 1);
                lines.swap(i, i + 1);
            }
        }
        Mutation::InsertField(i, field) => {
            let at = i % n;
            let indent: String = lines
                .get(at)
                .map(|l| l.chars().take_while(|c| *c == ' ').collect())
                .unwrap_or_default();
            lines.insert(at, format!("{indent}{field}"));
        }
        Mutation::ChangeChar(i, c) => {
            let mut chars: Vec<char> = text.chars().collect();
            if !chars.is_empty() {
                let at = i % chars.len();
                chars[at] = *c;
            }
            return chars.into_iter().collect();
        }
        Mutation::DeleteChar(i) => {
            let mut chars: Vec<char> = text.chars().collect();
            if !chars.is_empty() {
                chars.remove(i % chars.len());
            }
            return chars.into_iter().collect();
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

// ---------------------------------------------------------------------------------
// The properties.

fn file_for(name: &str) -> String {
    format!("plans/{name}.yaml")
}

fn render_diags(diags: &[rollgate::model::Diagnostic]) -> String {
    diags
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The validated plan, written back through the wire types and serde-saphyr,
/// validates again to the same plan.
fn assert_round_trips(
    file: &str,
    parsed: &ParsedPlan,
    settings: &Settings,
) -> Result<(), TestCaseError> {
    let wire = parsed.plan.to_wire();
    let text = serde_saphyr::to_string(&wire)
        .map_err(|e| TestCaseError::fail(format!("to_wire does not serialise: {e}")))?;
    let again = parse_plan(file, &text, Some(settings)).map_err(|d| {
        TestCaseError::fail(format!(
            "the written-back plan is rejected:\n{}\n--- written back:\n{text}",
            render_diags(&d)
        ))
    })?;
    prop_assert_eq!(&parsed.plan, &again.plan, "--- written back:\n{}", text);
    Ok(())
}

proptest! {
    // 512 cases unless PROPTEST_CASES says otherwise (e.g. 20000 for a longer hunt).
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512),
        ..ProptestConfig::default()
    })]

    #[test]
    fn valid_plans_are_accepted_and_round_trip(p in plan()) {
        let settings = settings();
        let file = file_for(&p.name);
        let text = render(&p);
        let parsed = parse_plan(&file, &text, Some(&settings)).map_err(|d| {
            TestCaseError::fail(format!(
                "a valid plan is rejected:\n{}\n--- plan:\n{text}",
                render_diags(&d)
            ))
        })?;
        prop_assert_eq!(&parsed.plan.name, &p.name);
        assert_round_trips(&file, &parsed, &settings)?;
    }

    #[test]
    fn mutated_plans_never_panic_and_what_is_accepted_round_trips(
        p in plan(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let settings = settings();
        let file = file_for(&p.name);
        let text = mutations.iter().fold(render(&p), |t, m| apply(&t, m));
        match parse_plan(&file, &text, Some(&settings)) {
            Ok(parsed) => assert_round_trips(&file, &parsed, &settings)?,
            Err(diags) => {
                prop_assert!(!diags.is_empty(), "rejected without a diagnostic:\n{}", text);
                for d in &diags {
                    prop_assert_eq!(&d.file, &file);
                }
            }
        }
    }
}
