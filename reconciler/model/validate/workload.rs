//! `spec.target` and `spec.workload`: the target exists and runs this kind of workload,
//! the namespace is one the target may touch, and each workload's own fields (command
//! and health check, Kubernetes names, Lambda function, alias and region, Knative
//! service) are well formed.
//!
//! Invariants: pure; reports every problem it finds and still returns a workload (with a
//! harmless stand-in for a bad value) so later sections run; without settings the
//! target is not checked. A Lambda plan's `endpoint`/`profile` are explained as moved
//! to the target (`moved_to_lambda_target`), rewriting the schema walk's unknown-field
//! diagnostic in place rather than adding a second one.

use std::time::Duration;

use crate::model::diagnostics::{Code, Diagnostic, did_you_mean};
use crate::model::plan::{self, Workload};
use crate::model::settings::{self, Settings};
use crate::model::wire;
use crate::model::yaml::{Kind, PathSeg};

use super::{Ctx, P, is_aws_region, spec};

/// Check `spec.target` against the settings (when given), then build the workload.
pub(super) fn workload(
    cx: &mut Ctx<'_>,
    s: &wire::PlanSpec,
    settings: Option<&Settings>,
) -> Workload {
    use P::K;
    // The target: it exists, runs this kind of workload and may touch its namespace.
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
    // The workload's own fields.
    match &s.workload {
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
                        scale: match k.canary_scale {
                            Some(wire::CanaryScale::Full) => plan::CanaryScale::Full,
                            _ => plan::CanaryScale::Proportional,
                        },
                    },
                    None => {
                        if k.canary_scale.is_some() {
                            cx.err(
                                &at(&[K("canaryScale")]),
                                Code::InvalidValue,
                                "canaryScale sizes a Gateway API canary (with `route`); without a route the traffic split is the replica ratio itself",
                            )
                            .help = Some("add `route:` or remove `canaryScale`".to_owned());
                        }
                        plan::Traffic::ReplicaRatio
                    }
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
    }
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
