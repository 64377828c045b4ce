//! From text to validated domain values, collecting every problem.
//!
//! Three passes, each reporting all it finds: YAML (syntax and budgets), structure
//! (the JSON Schema of the wire types: unknown fields, missing fields, types, kinds),
//! then meaning (weights, durations, names, references, cron, judges). A later pass
//! runs only when the earlier ones left something to look at; unknown fields do not
//! stop the meaning pass, so one run shows as much as it can.
//! Invariant: pure; the caller reads files and passes their text.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

use super::diagnostics::{Code, Diagnostic, Pos, did_you_mean};
use super::duration;
use super::plan::{
    self, Analysis, Check, Direction, FirstRollout, Judge, OnFailure, Plan, RollbackPolicy, Step,
    Strategy, Workload,
};
use super::schema_check;
use super::settings::{self, BUILTIN_SOURCE, Settings};
use super::window::{CronExpr, Windows};
use super::wire;
use super::yaml::{self, Kind, Node, PathSeg};

/// Queries the builtin metrics source answers.
pub const BUILTIN_QUERIES: &[&str] = &[
    "success-rate",
    "error-rate",
    "latency-p50",
    "latency-p95",
    "latency-p99",
    "replica-health",
];

use super::schema::{plan_schema, settings_schema};

/// Is `s` shaped like an AWS region (`eu-west-1`, `us-gov-east-1`, `ap-southeast-3`)?
pub fn is_aws_region(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() >= 3
        && parts[0].len() == 2
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase()))
        && parts[parts.len() - 1].parse::<u8>().is_ok_and(|n| n > 0)
}

/// Is `s` an RFC 1123 DNS label (lowercase alphanumerics and `-`, at most 63)?
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A plan that passed every check, with the document as written (for policies and previews).
#[derive(Debug, Clone)]
pub struct ParsedPlan {
    /// The repo-relative path the plan was read from.
    pub file: String,
    pub plan: Plan,
    pub document: Value,
    /// Where `metadata.name` is (policy findings point here).
    pub name_pos: Option<Pos>,
    /// Where `spec.promotedFrom` is, when present.
    pub promoted_from_pos: Option<Pos>,
}

struct Ctx<'a> {
    file: &'a str,
    root: &'a Node,
    diags: Vec<Diagnostic>,
}

#[derive(Clone, Copy)]
enum P<'a> {
    K(&'a str),
    I(usize),
}

impl<'a> Ctx<'a> {
    fn pos(&self, path: &[P<'_>]) -> Option<Pos> {
        // The deepest node on the path that exists.
        let segs: Vec<PathSeg<'_>> = path
            .iter()
            .map(|p| match p {
                P::K(k) => PathSeg::Key(k),
                P::I(i) => PathSeg::Index(*i),
            })
            .collect();
        // The deepest node on the path that exists; a mapping's place is its key's
        // (the value of `local:` starts at its first field, which would mislead).
        (0..=segs.len()).rev().find_map(|n| {
            let node = self.root.at(&segs[..n])?;
            if let (Kind::Map(_), Some(PathSeg::Key(k)), Some(parent)) = (
                &node.kind,
                segs[..n].last(),
                n.checked_sub(1).and_then(|m| self.root.at(&segs[..m])),
            ) && let Kind::Map(entries) = &parent.kind
                && let Some((key, _)) = entries.iter().find(|(key, _)| key.as_str() == Some(k))
            {
                return Some(key.pos);
            }
            Some(node.pos)
        })
    }

    fn err(&mut self, path: &[P<'_>], code: Code, msg: impl Into<String>) -> &mut Diagnostic {
        let pos = self.pos(path);
        self.diags
            .push(Diagnostic::error(self.file, pos, code, msg));
        let n = self.diags.len() - 1;
        &mut self.diags[n]
    }

    fn dur(&mut self, text: Option<&str>, default: Duration, path: &[P<'_>]) -> Duration {
        match text {
            None => default,
            Some(t) => match duration::parse(t) {
                Some(d) => d,
                None => {
                    self.err(path, Code::BadDuration, format!("`{t}` is not a duration"))
                        .help = Some(
                        "write a number and a unit: `500ms`, `30s`, `10m`, `1h`, `1h30m`"
                            .to_owned(),
                    );
                    default
                }
            },
        }
    }

    /// `apiVersion` and `kind` of a file that must be `kind: expected`.
    fn header(&mut self, api_version: &str, kind: &str, expected: &str, what: &str) {
        if api_version != wire::API_VERSION {
            self.err(
                &[P::K("apiVersion")],
                Code::UnknownApiVersion,
                format!("unknown apiVersion `{api_version}`"),
            )
            .help = Some(format!("use `{}`", wire::API_VERSION));
        }
        if kind != expected {
            let hint = did_you_mean(kind, [expected]);
            self.err(
                &[P::K("kind")],
                Code::UnknownKind,
                format!("unknown kind `{kind}` in {what}"),
            )
            .help = Some(hint.map_or_else(
                || format!("{what} has `kind: {expected}`"),
                |h| format!("did you mean `{h}`?"),
            ));
        }
    }

    fn name(&mut self, s: &str, what: &str, path: &[P<'_>]) {
        if !is_dns_label(s) {
            self.err(path, Code::BadName, format!("{what} `{s}` is not a DNS label"))
                .help = Some("use at most 63 lowercase letters, digits and `-`, starting and ending with a letter or digit".to_owned());
        }
    }
}

/// A document that passed the YAML and structure passes.
struct Structured<T> {
    root: Node,
    json: Value,
    wire: T,
    /// Unknown fields (reported, then dropped): the meaning pass still runs.
    diags: Vec<Diagnostic>,
}

/// YAML, then the schema walk, then the wire type: the passes plans and settings share.
fn structured<T: serde::de::DeserializeOwned>(
    file: &str,
    text: &str,
    schema: &Value,
) -> Result<Structured<T>, Vec<Diagnostic>> {
    let root = yaml::parse(file, text).map_err(|d| vec![d])?;
    let (json, mut diags) = schema_check::check(file, &root, schema);
    let Some(json) = json else { return Err(diags) };
    match T::deserialize(&json) {
        Ok(wire) => Ok(Structured {
            root,
            json,
            wire,
            diags,
        }),
        Err(e) => {
            diags.push(Diagnostic::error(
                file,
                Some(root.pos),
                Code::WrongType,
                e.to_string(),
            ));
            Err(diags)
        }
    }
}

/// Parse and validate one plan file. `file` is the path shown in diagnostics (relative
/// to the repo); its stem must equal `metadata.name`. `settings` resolves targets and
/// metrics sources; without settings those references are not checked.
pub fn parse_plan(
    file: &str,
    text: &str,
    settings: Option<&Settings>,
) -> Result<ParsedPlan, Vec<Diagnostic>> {
    let Structured {
        root,
        json,
        wire,
        diags,
    } = structured::<wire::PlanFile>(file, text, plan_schema())?;
    let mut cx = Ctx {
        file,
        root: &root,
        diags,
    };
    let plan = plan_from_wire(&mut cx, &wire, settings);
    let stem = std::path::Path::new(file)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("");
    if !stem.is_empty() && stem != wire.metadata.name && is_dns_label(&wire.metadata.name) {
        cx.err(
            &[P::K("metadata"), P::K("name")],
            Code::NameMismatch,
            format!("plan `{}` is in a file named `{stem}`", wire.metadata.name),
        )
        .help = Some(format!(
            "rename the file to `{}.yaml` or the plan to `{stem}`",
            wire.metadata.name
        ));
    }
    if cx.diags.iter().any(Diagnostic::is_error) {
        let mut d = cx.diags;
        super::diagnostics::sort(&mut d);
        return Err(d);
    }
    let name_pos = root
        .at(&[PathSeg::Key("metadata"), PathSeg::Key("name")])
        .map(|n| n.pos);
    let promoted_from_pos = root
        .at(&[PathSeg::Key("spec"), PathSeg::Key("promotedFrom")])
        .map(|n| n.pos);
    Ok(ParsedPlan {
        file: file.to_owned(),
        plan,
        document: json,
        name_pos,
        promoted_from_pos,
    })
}

fn plan_from_wire(cx: &mut Ctx<'_>, w: &wire::PlanFile, settings: Option<&Settings>) -> Plan {
    use P::{I, K};
    cx.header(&w.api_version, &w.kind, "RolloutPlan", "a plan file");
    cx.name(&w.metadata.name, "plan name", &[K("metadata"), K("name")]);
    let s = &w.spec;
    let spec = |rest: &[P<'static>]| -> Vec<P<'static>> {
        let mut v = vec![K("spec")];
        v.extend_from_slice(rest);
        v
    };

    // Target and workload.
    if let Some(settings) = settings {
        match settings.targets.get(&s.target) {
            None => {
                let hint = did_you_mean(&s.target, settings.targets.keys().map(String::as_str));
                let known: Vec<&str> = settings.targets.keys().map(String::as_str).collect();
                cx.err(
                    &spec(&[K("target")]),
                    Code::UnknownTarget,
                    format!("unknown target `{}`", s.target),
                )
                .help = Some(match hint {
                    Some(h) => format!("did you mean `{h}`?"),
                    None if known.is_empty() => {
                        "declare it under `targets` in rollgate.yaml".to_owned()
                    }
                    None => format!("targets in rollgate.yaml: {}", known.join(", ")),
                });
            }
            Some(t) => {
                let (wk, runs_on) = match &s.workload {
                    wire::Workload::Local(_) => ("local", "local"),
                    wire::Workload::Kubernetes(_) => ("kubernetes", "kubernetes"),
                    wire::Workload::Lambda(_) => ("lambda", "lambda"),
                    wire::Workload::Knative(_) => ("knative", "kubernetes"),
                };
                if t.kind() != runs_on {
                    cx.err(
                        &spec(&[K("workload"), K(wk)]),
                        Code::WorkloadMismatch,
                        format!(
                            "a `{wk}` workload cannot run on target `{}`, which is `{}`",
                            s.target,
                            t.kind()
                        ),
                    );
                }
                let namespace = match &s.workload {
                    wire::Workload::Kubernetes(k) => Some(&k.namespace),
                    wire::Workload::Knative(k) => Some(&k.namespace),
                    _ => None,
                };
                if let (
                    Some(ns),
                    settings::Target::Kubernetes {
                        namespaces: Some(allowed),
                        ..
                    },
                ) = (namespace, t)
                    && !allowed.contains(ns)
                {
                    cx.err(
                        &spec(&[K("workload"), K(wk), K("namespace")]),
                        Code::InvalidValue,
                        format!(
                            "namespace `{ns}` is not one target `{}` may touch",
                            s.target
                        ),
                    )
                    .help = Some(if allowed.is_empty() {
                        "this target may touch no namespace".to_owned()
                    } else {
                        format!("allowed namespaces: {}", allowed.join(", "))
                    });
                }
            }
        }
    }
    let workload = match &s.workload {
        wire::Workload::Local(l) => {
            let base = spec(&[K("workload"), K("local")]);
            let at = |rest: &[P<'static>]| -> Vec<P<'static>> {
                base.iter().copied().chain(rest.iter().copied()).collect()
            };
            if l.command.is_empty() || l.command[0].trim().is_empty() {
                cx.err(
                    &at(&[K("command")]),
                    Code::InvalidValue,
                    "`command` needs at least the program to run",
                );
            }
            let listen = match l.listen.parse::<std::net::SocketAddr>() {
                Ok(a) => a,
                Err(_) => {
                    cx.err(
                        &at(&[K("listen")]),
                        Code::InvalidValue,
                        format!("`{}` is not an address like `127.0.0.1:8080`", l.listen),
                    );
                    std::net::SocketAddr::from(([127, 0, 0, 1], 0))
                }
            };
            let hc = l.health_check.clone().unwrap_or(wire::HealthCheck {
                path: "/healthz".to_owned(),
                expect_status: None,
                timeout: None,
            });
            if !hc.path.starts_with('/') {
                cx.err(
                    &at(&[K("healthCheck"), K("path")]),
                    Code::InvalidValue,
                    format!("health check path `{}` must start with `/`", hc.path),
                );
            }
            let status = hc.expect_status.unwrap_or(200);
            if !(100..=599).contains(&status) {
                cx.err(
                    &at(&[K("healthCheck"), K("expectStatus")]),
                    Code::InvalidValue,
                    format!("{status} is not an HTTP status"),
                );
            }
            let timeout = cx.dur(
                hc.timeout.as_deref(),
                Duration::from_secs(2),
                &at(&[K("healthCheck"), K("timeout")]),
            );
            Workload::Local(plan::LocalWorkload {
                command: l.command.clone(),
                listen,
                health_path: hc.path,
                health_status: status,
                health_timeout: timeout,
                env: l.env.clone(),
                sticky: l.sticky.as_ref().map(|s| match s {
                    wire::Sticky::Header(h) => plan::Sticky::Header(h.clone()),
                    wire::Sticky::Cookie(c) => plan::Sticky::Cookie(c.clone()),
                }),
            })
        }
        wire::Workload::Kubernetes(k) => {
            let base = spec(&[K("workload"), K("kubernetes")]);
            let at = |rest: &[P<'static>]| -> Vec<P<'static>> {
                base.iter().copied().chain(rest.iter().copied()).collect()
            };
            cx.name(&k.namespace, "namespace", &at(&[K("namespace")]));
            cx.name(&k.deployment, "deployment", &at(&[K("deployment")]));
            if let Some(r) = &k.route {
                cx.name(r, "route", &at(&[K("route")]));
            }
            if let Some(svc) = &k.service {
                cx.name(svc, "service", &at(&[K("service")]));
            }
            Workload::Kubernetes(plan::KubernetesWorkload {
                namespace: k.namespace.clone(),
                deployment: k.deployment.clone(),
                container: k.container.clone(),
                service: k.service.clone().unwrap_or_else(|| k.deployment.clone()),
                traffic: match &k.route {
                    Some(r) => plan::Traffic::GatewayRoute {
                        route: r.clone(),
                        rule: k.route_rule.unwrap_or(0),
                    },
                    None => plan::Traffic::ReplicaRatio,
                },
            })
        }
        wire::Workload::Lambda(l) => {
            let base = spec(&[K("workload"), K("lambda")]);
            let at = |rest: &[P<'static>]| -> Vec<P<'static>> {
                base.iter().copied().chain(rest.iter().copied()).collect()
            };
            let word = |v: &str, max: usize| {
                !v.is_empty()
                    && v.len() <= max
                    && v.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            };
            if !word(&l.function, 64) {
                cx.err(
                    &at(&[K("function")]),
                    Code::BadName,
                    format!("`{}` is not a Lambda function name", l.function),
                )
                .help = Some("1 to 64 letters, digits, `-` or `_` (a name, not an ARN)".to_owned());
            }
            if !word(&l.alias, 128) || l.alias.chars().all(|c| c.is_ascii_digit()) {
                cx.err(
                    &at(&[K("alias")]),
                    Code::BadName,
                    format!("`{}` is not a Lambda alias name", l.alias),
                )
                .help = Some(
                    "letters, digits, `-` or `_`, not only digits (that is a version)".to_owned(),
                );
            }
            if !is_aws_region(&l.region) {
                cx.err(
                    &at(&[K("region")]),
                    Code::InvalidValue,
                    format!("`{}` is not an AWS region", l.region),
                )
                .help = Some("for example `eu-west-1` or `us-east-2`".to_owned());
            }
            moved_to_lambda_target(cx, &s.target);
            Workload::Lambda(plan::LambdaWorkload {
                function: l.function.clone(),
                alias: l.alias.clone(),
                region: l.region.clone(),
            })
        }
        wire::Workload::Knative(k) => {
            let base = spec(&[K("workload"), K("knative")]);
            let at = |rest: &[P<'static>]| -> Vec<P<'static>> {
                base.iter().copied().chain(rest.iter().copied()).collect()
            };
            cx.name(&k.namespace, "namespace", &at(&[K("namespace")]));
            cx.name(&k.service, "service", &at(&[K("service")]));
            Workload::Knative(plan::KnativeWorkload {
                namespace: k.namespace.clone(),
                service: k.service.clone(),
                container: k.container.clone(),
            })
        }
    };

    // Artifact.
    let artifact = s.artifact.trim();
    if artifact.is_empty()
        || artifact
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        || artifact.len() > 512
    {
        let why = if artifact.is_empty() {
            "is empty".to_owned()
        } else if artifact.len() > 512 {
            format!("is {} characters long", artifact.len())
        } else {
            "contains spaces or control characters".to_owned()
        };
        let shown: String = artifact.chars().take(80).collect();
        cx.err(&spec(&[K("artifact")]), Code::BadArtifact, format!("artifact `{shown}` {why}"))
            .help = Some("an artifact is one word of at most 512 characters: an image reference, a version or a path".to_owned());
    } else if matches!(s.workload, wire::Workload::Lambda(_))
        && !(artifact.chars().all(|c| c.is_ascii_digit())
            && artifact.parse::<u64>().is_ok_and(|v| v > 0))
    {
        let shown: String = artifact.chars().take(80).collect();
        cx.err(
            &spec(&[K("artifact")]),
            Code::BadArtifact,
            format!("a lambda artifact is a published version number, not `{shown}`"),
        )
        .help = Some("publish a version (`aws lambda publish-version`) and pin its number, e.g. `artifact: \"7\"`; `$LATEST` is never rolled out".to_owned());
    }
    if let Some(from) = &s.promoted_from {
        cx.name(from, "promotedFrom", &spec(&[K("promotedFrom")]));
        if *from == w.metadata.name {
            cx.err(
                &spec(&[K("promotedFrom")]),
                Code::UnknownPlan,
                "a plan cannot be promoted from itself",
            );
        }
    }

    // Checks.
    let mut checks = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, c) in s.checks.iter().enumerate() {
        let at = |rest: &[P<'static>]| -> Vec<P<'static>> {
            [K("spec"), K("checks"), I(i)]
                .into_iter()
                .chain(rest.iter().copied())
                .collect()
        };
        cx.name(&c.name, "check name", &at(&[K("name")]));
        if !seen.insert(c.name.clone()) {
            cx.err(
                &at(&[K("name")]),
                Code::DuplicateCheck,
                format!("check `{}` is declared twice", c.name),
            );
        }
        if c.source == BUILTIN_SOURCE {
            if c.query == "replica-health"
                && !matches!(
                    s.workload,
                    wire::Workload::Kubernetes(_) | wire::Workload::Knative(_)
                )
            {
                cx.err(
                    &at(&[K("query")]),
                    Code::WorkloadMismatch,
                    "replica-health counts the candidate's ready replicas, which only kubernetes and knative workloads have",
                )
                .help = Some("judge this workload by its traffic (success-rate, latency-p99) instead".to_owned());
            }
            if !BUILTIN_QUERIES.contains(&c.query.as_str()) {
                let hint = did_you_mean(&c.query, BUILTIN_QUERIES.iter().copied());
                cx.err(
                    &at(&[K("query")]),
                    Code::InvalidValue,
                    format!("the builtin source has no query `{}`", c.query),
                )
                .help = Some(hint.map_or_else(
                    || format!("builtin queries: {}", BUILTIN_QUERIES.join(", ")),
                    |h| format!("did you mean `{h}`?"),
                ));
            }
        } else if let Some(settings::MetricsSource::Cloudwatch { .. }) =
            settings.and_then(|st| st.metrics.get(&c.source))
        {
            if !matches!(s.workload, wire::Workload::Lambda(_)) {
                cx.err(
                    &at(&[K("source")]),
                    Code::WorkloadMismatch,
                    format!(
                        "`{}` is a cloudwatch source, which measures lambda workloads",
                        c.source
                    ),
                );
            }
            if !settings::CLOUDWATCH_QUERIES.contains(&c.query.trim()) {
                let hint = did_you_mean(&c.query, settings::CLOUDWATCH_QUERIES.iter().copied());
                cx.err(
                    &at(&[K("query")]),
                    Code::InvalidValue,
                    format!("a cloudwatch source has no query `{}`", c.query),
                )
                .help = Some(hint.map_or_else(
                    || {
                        format!(
                            "cloudwatch queries: {}",
                            settings::CLOUDWATCH_QUERIES.join(", ")
                        )
                    },
                    |h| format!("did you mean `{h}`?"),
                ));
            }
        } else if let Some(settings) = settings
            && !settings.metrics.contains_key(&c.source)
        {
            let names: Vec<&str> = std::iter::once(BUILTIN_SOURCE)
                .chain(settings.metrics.keys().map(String::as_str))
                .collect();
            let hint = did_you_mean(&c.source, names.iter().copied());
            cx.err(
                &at(&[K("source")]),
                Code::UnknownSource,
                format!("unknown metrics source `{}`", c.source),
            )
            .help = Some(hint.map_or_else(
                || format!("sources: {}", names.join(", ")),
                |h| format!("did you mean `{h}`?"),
            ));
        }
        if c.query.trim().is_empty() {
            cx.err(&at(&[K("query")]), Code::InvalidValue, "the query is empty");
        }
        let mut judge = judge_from_wire(cx, &c.judge, &at(&[K("judge")]));
        // A success rate is harmed by going down: that is its default direction.
        if let Judge::Baseline { direction, .. } = &mut judge
            && c.judge.direction.is_none()
            && c.query.trim() == "success-rate"
        {
            *direction = Direction::Decrease;
        }
        let interval = cx.dur(
            c.interval.as_deref(),
            plan::DEFAULT_INTERVAL,
            &at(&[K("interval")]),
        );
        checks.push(Check {
            name: c.name.clone(),
            source: c.source.clone(),
            query: c.query.clone(),
            judge,
            interval,
            failure_limit: c.failure_limit.unwrap_or(0),
            consecutive_error_limit: c
                .consecutive_error_limit
                .unwrap_or(plan::DEFAULT_CONSECUTIVE_ERROR_LIMIT),
            samples_query: c.samples_query.clone(),
        });
    }
    let check_names: Vec<String> = s.checks.iter().map(|c| c.name.clone()).collect();
    let refs = |cx: &mut Ctx<'_>, names: &[String], path: &[P<'static>]| {
        if names.is_empty() {
            cx.err(
                path,
                Code::InvalidValue,
                "an analysis needs at least one check",
            );
        }
        for (j, n) in names.iter().enumerate() {
            if !check_names.contains(n) {
                let mut p = path.to_vec();
                p.push(I(j));
                let hint = did_you_mean(n, check_names.iter().map(String::as_str));
                cx.err(&p, Code::UnknownCheck, format!("unknown check `{n}`"))
                    .help = Some(match hint {
                    Some(h) => format!("did you mean `{h}`?"),
                    None if check_names.is_empty() => {
                        "declare checks under `spec.checks`".to_owned()
                    }
                    None => format!("checks in this plan: {}", check_names.join(", ")),
                });
            }
        }
    };

    // Strategy.
    let strategy = match &s.strategy {
        wire::Strategy::Canary(c) => {
            let base = [K("spec"), K("strategy"), K("canary"), K("steps")];
            if c.steps.is_empty() {
                cx.err(
                    &base,
                    Code::EmptyStrategy,
                    "a canary needs at least one step",
                );
            }
            let mut steps = Vec::new();
            let mut last_weight: Option<(u8, usize)> = None;
            let mut bad_weight = false;
            for (i, st) in c.steps.iter().enumerate() {
                let at = |k: &'static str, rest: &[P<'static>]| -> Vec<P<'static>> {
                    base.iter()
                        .copied()
                        .chain([I(i), K(k)])
                        .chain(rest.iter().copied())
                        .collect()
                };
                match st {
                    wire::Step::SetWeight(wt) => {
                        if !(0..=100).contains(wt) {
                            cx.err(
                                &at("setWeight", &[]),
                                Code::WeightRange,
                                format!("weight {wt} is outside 0-100"),
                            );
                            bad_weight = true;
                            continue;
                        }
                        let wt = u8::try_from(*wt).unwrap_or(100);
                        if let Some((prev, _)) = last_weight
                            && wt < prev
                        {
                            cx.err(
                                &at("setWeight", &[]),
                                Code::WeightDecreasing,
                                format!("weight {wt} is lower than the previous step's {prev}"),
                            )
                            .help = Some(
                                "weights only go up; a rollback is what sends traffic back"
                                    .to_owned(),
                            );
                        }
                        last_weight = Some((wt, i));
                        steps.push(Step::SetWeight(wt));
                    }
                    wire::Step::Pause(p) => {
                        let d = p.duration.as_deref().map(|t| {
                            cx.dur(Some(t), Duration::ZERO, &at("pause", &[K("duration")]))
                        });
                        steps.push(Step::Pause(d));
                    }
                    wire::Step::Analysis(a) => {
                        refs(cx, &a.checks, &at("analysis", &[K("checks")]));
                        let dp = at("analysis", &[K("duration")]);
                        let d = cx.dur(Some(&a.duration), Duration::ZERO, &dp);
                        if d.is_zero() && duration::parse(&a.duration).is_some() {
                            cx.err(
                                &dp,
                                Code::BadDuration,
                                "an analysis must last longer than 0s",
                            );
                        }
                        steps.push(Step::Analysis(Analysis {
                            checks: a.checks.clone(),
                            duration: d,
                        }));
                    }
                }
            }
            let reaches_full = matches!(last_weight, Some((100, _)));
            let ends_in_promotion = matches!(steps.last(), Some(Step::Pause(None)));
            if !c.steps.is_empty() && !reaches_full && !ends_in_promotion && !bad_weight {
                let last: Vec<P<'static>> =
                    base.iter().copied().chain([I(c.steps.len() - 1)]).collect();
                cx.err(
                    &last,
                    Code::NeverComplete,
                    "the steps never reach 100% nor end in an untimed pause (a promotion)",
                )
                .help = Some(
                    "end with `- setWeight: 100`, or with `- pause: {}` to wait for a promotion"
                        .to_owned(),
                );
            }
            Strategy::Canary { steps }
        }
        wire::Strategy::BlueGreen(bg) => {
            let base = [K("spec"), K("strategy"), K("blueGreen")];
            let preview = bg.preview.as_ref().map(|a| {
                let p: Vec<P<'static>> = base
                    .iter()
                    .copied()
                    .chain([K("preview"), K("checks")])
                    .collect();
                refs(cx, &a.checks, &p);
                let dp: Vec<P<'static>> = base
                    .iter()
                    .copied()
                    .chain([K("preview"), K("duration")])
                    .collect();
                Analysis {
                    checks: a.checks.clone(),
                    duration: cx.dur(Some(&a.duration), Duration::ZERO, &dp),
                }
            });
            let sd: Vec<P<'static>> = base.iter().copied().chain([K("scaleDownDelay")]).collect();
            Strategy::BlueGreen(plan::BlueGreen {
                preview,
                auto_promote: bg.auto_promote.unwrap_or(true),
                scale_down_delay: cx.dur(
                    bg.scale_down_delay.as_deref(),
                    plan::DEFAULT_SCALE_DOWN_DELAY,
                    &sd,
                ),
            })
        }
        wire::Strategy::Preset(p) => {
            let base = [K("spec"), K("strategy"), K("preset")];
            let cp: Vec<P<'static>> = base.iter().copied().chain([K("checks")]).collect();
            if !p.checks.is_empty() {
                refs(cx, &p.checks, &cp);
            }
            match expand_preset(&p.name, &p.checks) {
                Some(steps) => Strategy::Canary { steps },
                None => {
                    let np: Vec<P<'static>> = base.iter().copied().chain([K("name")]).collect();
                    cx.err(&np, Code::BadPreset, format!("unknown preset `{}`", p.name)).help = Some(
                        "presets: `CanaryNPercentMMinutes` (e.g. Canary10Percent5Minutes), `LinearNPercentEveryMMinutes` (e.g. Linear10PercentEvery1Minute), `AllAtOnce`".to_owned(),
                    );
                    Strategy::Canary {
                        steps: vec![Step::SetWeight(100)],
                    }
                }
            }
        }
    };

    // Windows.
    let mut windows = Windows::default();
    if let Some(wn) = &s.windows {
        for (list, key, out) in [
            (&wn.allow, "allow", &mut windows.allow),
            (&wn.deny, "deny", &mut windows.deny),
        ] {
            for (i, text) in list.iter().enumerate() {
                match CronExpr::parse(text) {
                    Ok(c) => out.push(c),
                    Err(e) => {
                        cx.err(&[K("spec"), K("windows"), K(key), I(i)], Code::BadCron, format!("`{text}` is not a cron expression: {e}"))
                            .help = Some("five fields: minute hour day-of-month month day-of-week, e.g. `* 9-16 * * MON-FRI`".to_owned());
                    }
                }
            }
        }
        if let Some(tz) = &wn.timezone {
            match tz.parse::<chrono_tz::Tz>() {
                Ok(t) => windows.timezone = Some(t),
                Err(_) => {
                    cx.err(
                        &[K("spec"), K("windows"), K("timezone")],
                        Code::BadTimezone,
                        format!("unknown time zone `{tz}`"),
                    )
                    .help = Some("use an IANA name such as `Europe/Berlin` or `UTC`".to_owned());
                }
            }
        }
    }

    // Rollback.
    let rb = s.rollback.clone().unwrap_or_default();
    let on_failure = match rb.on_failure.as_deref() {
        None | Some("revert") => OnFailure::Revert,
        Some("hold") => OnFailure::Hold,
        Some(other) => {
            let hint = did_you_mean(other, ["revert", "hold"]);
            cx.err(
                &[K("spec"), K("rollback"), K("onFailure")],
                Code::InvalidValue,
                format!("`onFailure` must be `revert` or `hold`, found `{other}`"),
            )
            .help = hint.map(|h| format!("did you mean `{h}`?"));
            OnFailure::Revert
        }
    };
    let rollback_window = cx.dur(
        rb.rollback_window.as_deref(),
        plan::DEFAULT_ROLLBACK_WINDOW,
        &[K("spec"), K("rollback"), K("rollbackWindow")],
    );
    let progress_deadline = cx.dur(
        s.progress_deadline.as_deref(),
        plan::DEFAULT_PROGRESS_DEADLINE,
        &[K("spec"), K("progressDeadline")],
    );
    let first_rollout = match s.first_rollout.as_deref() {
        None => FirstRollout::default(),
        Some(text) => FirstRollout::parse(text).unwrap_or_else(|| {
            let names = FirstRollout::ALL.map(FirstRollout::as_str);
            let hint = did_you_mean(text, names);
            cx.err(
                &[K("spec"), K("firstRollout")],
                Code::InvalidValue,
                format!("`firstRollout` must be `direct` or `steps`, found `{text}`"),
            )
            .help = Some(hint.map_or_else(
                || {
                    "`direct` deploys the first artifact at once; `steps` walks the steps anyway"
                        .to_owned()
                },
                |h| format!("did you mean `{h}`?"),
            ));
            FirstRollout::default()
        }),
    };
    let slo = s.slo.as_ref().map(|w| {
        let at = |k: &'static str| -> Vec<P<'static>> { vec![K("spec"), K("slo"), K(k)] };
        if !(w.objective > 0.0 && w.objective < 1.0) {
            cx.err(
                &at("objective"),
                Code::InvalidValue,
                format!(
                    "`objective` must be between 0 and 1 (e.g. 0.999), found {}",
                    w.objective
                ),
            );
        }
        if w.source == BUILTIN_SOURCE {
            cx.err(
                &at("source"),
                Code::UnknownSource,
                "an SLO needs a Prometheus source: the builtin proxy counters keep only 15 minutes",
            );
        } else if let Some(settings) = settings
            && !settings.metrics.contains_key(&w.source)
        {
            let hint = did_you_mean(&w.source, settings.metrics.keys().map(String::as_str));
            cx.err(
                &at("source"),
                Code::UnknownSource,
                format!("unknown metrics source `{}`", w.source),
            )
            .help = hint.map(|h| format!("did you mean `{h}`?"));
        }
        for (k, q) in [("good", &w.good), ("total", &w.total)] {
            if q.trim().is_empty() {
                cx.err(
                    &at(k),
                    Code::InvalidValue,
                    format!("`{k}` is an empty query"),
                );
            }
        }
        plan::Slo {
            source: w.source.clone(),
            objective: w.objective,
            window: cx.dur(
                Some(&w.window),
                Duration::from_secs(30 * 86_400),
                &at("window"),
            ),
            good: w.good.clone(),
            total: w.total.clone(),
        }
    });
    let min_samples = s.min_samples.unwrap_or(plan::DEFAULT_MIN_SAMPLES);
    if min_samples == 0 {
        cx.err(
            &[K("spec"), K("minSamples")],
            Code::InvalidValue,
            "`minSamples` must be at least 1",
        )
        .help =
            Some("with no samples there is no evidence, and no evidence never promotes".to_owned());
    }

    Plan {
        name: w.metadata.name.clone(),
        labels: w.metadata.labels.clone(),
        annotations: w.metadata.annotations.clone(),
        target: s.target.clone(),
        workload,
        artifact: artifact.to_owned(),
        promoted_from: s.promoted_from.clone(),
        strategy,
        checks,
        min_samples,
        windows,
        rollback: RollbackPolicy {
            on_failure,
            rollback_window,
        },
        progress_deadline,
        slo,
        first_rollout,
    }
}

fn judge_from_wire(cx: &mut Ctx<'_>, j: &wire::Judge, path: &[P<'static>]) -> Judge {
    let at =
        |k: &'static str| -> Vec<P<'static>> { path.iter().copied().chain([P::K(k)]).collect() };
    let threshold = j.min.is_some() || j.max.is_some();
    let baseline = j.compare.is_some()
        || j.direction.is_some()
        || j.max_ratio.is_some()
        || j.max_increase.is_some()
        || j.alpha.is_some();
    if threshold && baseline {
        cx.err(path, Code::BadJudge, "a judge is either a threshold (`min`/`max`) or a baseline comparison (`compare: baseline`), not both");
        return Judge::Threshold {
            min: j.min,
            max: j.max,
        };
    }
    if threshold {
        if let (Some(lo), Some(hi)) = (j.min, j.max)
            && lo > hi
        {
            cx.err(
                &at("min"),
                Code::BadJudge,
                format!("`min` {lo} is above `max` {hi}: nothing can pass"),
            );
        }
        return Judge::Threshold {
            min: j.min,
            max: j.max,
        };
    }
    if !baseline {
        cx.err(path, Code::BadJudge, "the judge is empty").help = Some(
            "give `min` and/or `max`, or `compare: baseline` with `maxRatio` or `maxIncrease`"
                .to_owned(),
        );
        return Judge::Threshold {
            min: None,
            max: None,
        };
    }
    match j.compare.as_deref() {
        Some("baseline") => {}
        Some(other) => {
            cx.err(
                &at("compare"),
                Code::BadJudge,
                format!("`compare` can only be `baseline`, found `{other}`"),
            );
        }
        None => {
            cx.err(
                path,
                Code::BadJudge,
                "a baseline judge needs `compare: baseline`",
            );
        }
    }
    let direction = match j.direction.as_deref() {
        None | Some("increase") => Direction::Increase,
        Some("decrease") => Direction::Decrease,
        Some("either") => Direction::Either,
        Some(other) => {
            let hint = did_you_mean(other, ["increase", "decrease", "either"]);
            cx.err(
                &at("direction"),
                Code::BadJudge,
                format!("`direction` must be `increase`, `decrease` or `either`, found `{other}`"),
            )
            .help = hint.map(|h| format!("did you mean `{h}`?"));
            Direction::Increase
        }
    };
    if j.max_ratio.is_none() && j.max_increase.is_none() {
        cx.err(
            path,
            Code::BadJudge,
            "a baseline judge needs an effect size: `maxRatio` or `maxIncrease`",
        );
    }
    if let Some(r) = j.max_ratio
        && !(r.is_finite() && r > 0.0)
    {
        cx.err(
            &at("maxRatio"),
            Code::BadJudge,
            format!("`maxRatio` must be above 0, found {r}"),
        );
    }
    if let Some(m) = j.max_increase
        && !(m.is_finite() && m >= 0.0)
    {
        cx.err(
            &at("maxIncrease"),
            Code::BadJudge,
            format!("`maxIncrease` must be 0 or more, found {m}"),
        );
    }
    let alpha = j.alpha.unwrap_or(plan::DEFAULT_ALPHA);
    if !(alpha > 0.0 && alpha <= 0.5) {
        cx.err(
            &at("alpha"),
            Code::BadJudge,
            format!("`alpha` must be in (0, 0.5], found {alpha}"),
        );
    }
    Judge::Baseline {
        direction,
        max_ratio: j.max_ratio,
        max_increase: j.max_increase,
        alpha,
    }
}

/// Expand a CodeDeploy-style preset into canary steps; `None` for an unknown name.
pub fn expand_preset(name: &str, checks: &[String]) -> Option<Vec<Step>> {
    fn num(s: &str) -> Option<(u32, &str)> {
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        if end == 0 {
            return None;
        }
        Some((s[..end].parse().ok()?, &s[end..]))
    }
    let hold = |minutes: u32| -> Step {
        let d = Duration::from_secs(u64::from(minutes) * 60);
        if checks.is_empty() {
            Step::Pause(Some(d))
        } else {
            Step::Analysis(Analysis {
                checks: checks.to_vec(),
                duration: d,
            })
        }
    };
    if name == "AllAtOnce" {
        return Some(vec![Step::SetWeight(100)]);
    }
    if let Some(rest) = name.strip_prefix("Canary") {
        let (pct, rest) = num(rest)?;
        let (mins, rest) = num(rest.strip_prefix("Percent")?)?;
        if !(rest == "Minutes" || rest == "Minute") || pct == 0 || pct >= 100 || mins == 0 {
            return None;
        }
        return Some(vec![
            Step::SetWeight(u8::try_from(pct).ok()?),
            hold(mins),
            Step::SetWeight(100),
        ]);
    }
    if let Some(rest) = name.strip_prefix("Linear") {
        let (pct, rest) = num(rest)?;
        let (mins, rest) = num(rest.strip_prefix("PercentEvery")?)?;
        if !(rest == "Minutes" || rest == "Minute") || pct == 0 || pct >= 100 || mins == 0 {
            return None;
        }
        let mut steps = Vec::new();
        let mut w = pct;
        while w < 100 {
            steps.push(Step::SetWeight(u8::try_from(w).ok()?));
            steps.push(hold(mins));
            w += pct;
        }
        steps.push(Step::SetWeight(100));
        return Some(steps);
    }
    None
}

/// A lambda workload's `endpoint` and `profile` (plan fields until #16): the schema
/// walk reported them as unknown fields; say where they live now, and why. Where signed
/// AWS requests go and whose credentials sign them is the target's, in `rollgate.yaml`,
/// whose changes are reviewed as settings; a plan (any PR author) cannot choose them.
fn moved_to_lambda_target(cx: &mut Ctx<'_>, target: &str) {
    let lambda = [
        PathSeg::Key("spec"),
        PathSeg::Key("workload"),
        PathSeg::Key("lambda"),
    ];
    let Some(Kind::Map(entries)) = cx.root.at(&lambda).map(|n| &n.kind) else {
        return;
    };
    for (key, why) in [
        (
            "endpoint",
            "a plan cannot point signed AWS requests elsewhere",
        ),
        (
            "profile",
            "a plan cannot choose whose credentials sign AWS requests",
        ),
    ] {
        let Some((k, _)) = entries.iter().find(|(k, _)| k.as_str() == Some(key)) else {
            continue;
        };
        let message = format!(
            "`{key}` is set on the lambda target in rollgate.yaml (`targets.{target}.lambda.{key}`), where settings changes are reviewed; {why}"
        );
        let help = format!("remove `{key}` from this plan; the target `{target}` decides it");
        let place = Some(k.pos);
        match cx
            .diags
            .iter_mut()
            .find(|d| d.code == Code::UnknownField && d.pos == place)
        {
            Some(d) => {
                d.message = message;
                d.help = Some(help);
            }
            None => {
                let d = Diagnostic::error(cx.file, place, Code::UnknownField, message);
                cx.diags.push(d.with_help(help));
            }
        }
    }
}

/// Parse and validate `rollgate.yaml`.
pub fn parse_settings(file: &str, text: &str) -> Result<Settings, Vec<Diagnostic>> {
    use P::K;
    let Structured {
        root,
        wire: w,
        diags,
        ..
    } = structured::<wire::SettingsFile>(file, text, settings_schema())?;
    let mut cx = Ctx {
        file,
        root: &root,
        diags,
    };
    cx.header(&w.api_version, &w.kind, "Settings", "rollgate.yaml");
    let mut out = Settings::default();
    for (name, t) in &w.targets {
        cx.name(name, "target name", &[K("targets"), K(name)]);
        out.targets.insert(
            name.clone(),
            match t {
                wire::Target::Local(l) => settings::Target::Local {
                    state_dir: l.state_dir.clone(),
                },
                wire::Target::Kubernetes(k) => settings::Target::Kubernetes {
                    context: k.context.clone(),
                    in_cluster: k.in_cluster.unwrap_or(false),
                    namespaces: k.namespaces.clone(),
                },
                wire::Target::Lambda(l) => {
                    if let Some(e) = &l.endpoint
                        && let Some(problem) = settings::endpoint_problem(e)
                    {
                        cx.err(
                            &[K("targets"), K(name), K("lambda"), K("endpoint")],
                            Code::InvalidValue,
                            problem,
                        );
                    }
                    settings::Target::Lambda {
                        endpoint: l.endpoint.clone(),
                        profile: l.profile.clone(),
                    }
                }
            },
        );
    }
    for (name, m) in &w.metrics {
        if name == BUILTIN_SOURCE {
            cx.err(
                &[K("metrics"), K(name)],
                Code::InvalidValue,
                "`builtin` is reserved for rollgate's own proxy metrics",
            );
        }
        let p = match m {
            wire::MetricsSource::Prometheus(p) => p,
            wire::MetricsSource::Cloudwatch(c) => {
                let at = |k: &'static str| [K("metrics"), K(name), K("cloudwatch"), K(k)];
                if !is_aws_region(&c.region) {
                    cx.err(
                        &at("region"),
                        Code::InvalidValue,
                        format!("`{}` is not an AWS region", c.region),
                    );
                }
                if let Some(e) = &c.endpoint
                    && let Some(problem) = settings::endpoint_problem(e)
                {
                    cx.err(&at("endpoint"), Code::InvalidValue, problem);
                }
                let timeout = cx.dur(
                    c.timeout.as_deref(),
                    Duration::from_secs(10),
                    &at("timeout"),
                );
                out.metrics.insert(
                    name.clone(),
                    settings::MetricsSource::Cloudwatch {
                        region: c.region.clone(),
                        endpoint: c.endpoint.clone(),
                        profile: c.profile.clone(),
                        timeout,
                    },
                );
                continue;
            }
        };
        if !(p.url.starts_with("http://") || p.url.starts_with("https://")) {
            cx.err(
                &[K("metrics"), K(name), K("prometheus"), K("url")],
                Code::InvalidValue,
                format!("`{}` is not an http(s) URL", p.url),
            );
        }
        if let Some(var) = &p.auth_header_env {
            let at = [K("metrics"), K(name), K("prometheus"), K("authHeaderEnv")];
            if is_reserved_secret(var) {
                cx.err(
                    &at,
                    Code::InvalidValue,
                    format!(
                        "{var} holds one of rollgate's own credentials (Git, GitHub, webhook or AWS); a metrics source may not send it anywhere"
                    ),
                );
            } else if let Some(host) = p
                .url
                .strip_prefix("http://")
                .map(|r| r.split('/').next().unwrap_or(r))
                .map(|a| a.rsplit_once(':').map_or(a, |(h, _)| h))
                && !crate::metrics::prometheus::is_loopback_host(host)
            {
                cx.err(
                    &at,
                    Code::InvalidValue,
                    format!(
                        "the credential in {var} would go over plain http to `{host}`; send it only to a loopback address (e.g. a local auth proxy)"
                    ),
                );
            }
        }
        let timeout = cx.dur(
            p.timeout.as_deref(),
            Duration::from_secs(5),
            &[K("metrics"), K(name), K("prometheus"), K("timeout")],
        );
        out.metrics.insert(
            name.clone(),
            settings::MetricsSource::Prometheus {
                url: p.url.clone(),
                timeout,
                auth_header_env: p.auth_header_env.clone(),
            },
        );
    }
    if let Some(wb) = &w.write_back {
        let d = settings::WriteBack::default();
        out.write_back = settings::WriteBack {
            branch: wb.branch.clone().unwrap_or(d.branch),
            author: wb.author.as_ref().map_or(d.author, |i| settings::Identity {
                name: i.name.clone(),
                email: i.email.clone(),
            }),
            committer: wb
                .committer
                .as_ref()
                .or(wb.author.as_ref())
                .map_or(d.committer, |i| settings::Identity {
                    name: i.name.clone(),
                    email: i.email.clone(),
                }),
            skip_ci: wb.skip_ci.unwrap_or(false),
            signing: wb.signing.as_ref().map(|s| match s {
                wire::Signing::Ssh(k) => settings::Signing::Ssh { key: k.key.clone() },
                wire::Signing::Gpg(k) => settings::Signing::Gpg { key: k.key.clone() },
            }),
        };
    }
    if cx.diags.iter().any(Diagnostic::is_error) {
        return Err(cx.diags);
    }
    Ok(out)
}

/// Checks that need every plan at once: duplicate names and `promotedFrom` references.
/// `plans` maps file path to the plan parsed from it.
pub fn cross_check(plans: &BTreeMap<String, &ParsedPlan>) -> Vec<Diagnostic> {
    let mut diags = Vec::new();
    let mut by_name: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (file, p) in plans {
        by_name.entry(&p.plan.name).or_default().push(file);
    }
    for (name, files) in &by_name {
        if files.len() < 2 {
            continue;
        }
        // Every file with the name is rejected: which one was meant is for a human to say.
        for file in files {
            let others: Vec<&str> = files.iter().copied().filter(|f| f != file).collect();
            diags.push(
                Diagnostic::error(
                    *file,
                    plans[*file].name_pos,
                    Code::DuplicatePlan,
                    format!("plan name `{name}` is also used by {}", others.join(", ")),
                )
                .with_help("every plan needs a unique name"),
            );
        }
    }
    for (file, p) in plans {
        if let Some(from) = &p.plan.promoted_from
            && !by_name.contains_key(from.as_str())
        {
            let pos = p.promoted_from_pos;
            let hint = did_you_mean(from, by_name.keys().copied());
            let mut d = Diagnostic::error(
                file.clone(),
                pos,
                Code::UnknownPlan,
                format!("`promotedFrom` names plan `{from}`, which does not exist"),
            );
            if let Some(h) = hint {
                d = d.with_help(format!("did you mean `{h}`?"));
            }
            diags.push(d);
        }
    }
    diags
}

/// Variables that hold rollgate's own credentials: no repository setting may name them
/// as something to send (`authHeaderEnv`).
pub fn is_reserved_secret(var: &str) -> bool {
    const EXACT: &[&str] = &["GITHUB_TOKEN", "GH_TOKEN", "GIT_ASKPASS", "SSH_AUTH_SOCK"];
    const PREFIXES: &[&str] = &[
        "AWS_",
        "ROLLGATE_GIT",
        "ROLLGATE_GITHUB",
        "ROLLGATE_WEBHOOK",
    ];
    let upper = var.to_ascii_uppercase();
    EXACT.contains(&upper.as_str()) || PREFIXES.iter().any(|p| upper.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let d =
            with_prometheus("http://prometheus.example:9090", "PROM_TOKEN").expect_err("remote");
        assert!(
            d[0].message.contains("prometheus.example"),
            "{}",
            d[0].message
        );
        assert!(with_prometheus("http://127.0.0.1:9090/prom", "PROM_TOKEN").is_ok());
        assert!(with_prometheus("http://localhost:9090", "PROM_TOKEN").is_ok());
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
}
