//! `spec.strategy`: a canary's steps, a blue-green switch, or a CodeDeploy-style preset
//! expanded into canary steps (`expand_preset`).
//!
//! Invariants: pure; weights are 0-100 and never go down (with `baseline: fresh`, at
//! most 50 below 100, and only on workloads whose capabilities say so); a canary reaches 100% or ends
//! in an untimed pause (a promotion), unless a bad weight already explains why not; a
//! canary's analysis lasts longer than 0s; an analysis (a canary step, a blue-green
//! preview, a preset's holds) names at least one check, each declared in `spec.checks`
//! (a preset without checks holds with pauses instead); an unknown preset still yields
//! a strategy (all at once) so the rest of the plan is checked.

use std::time::Duration;

use crate::model::diagnostics::{Code, did_you_mean};
use crate::model::duration;
use crate::model::plan::{
    self, Analysis, MatchOn, MatchValue, RequestMatch, Step, Strategy, Workload,
};
use crate::model::wire;

use super::{Ctx, P};

/// Check the strategy and build it; analyses are checked against `s.checks` by name.
pub(super) fn strategy(cx: &mut Ctx<'_>, s: &wire::PlanSpec, workload: &Workload) -> Strategy {
    use P::{I, K};
    let check_names: Vec<String> = s.checks.iter().map(|c| c.name.clone()).collect();
    let job_names: Vec<String> = s
        .checks
        .iter()
        .filter(|c| c.job.is_some())
        .map(|c| c.name.clone())
        .collect();
    match &s.strategy {
        wire::Strategy::Canary(c) => {
            let base = [K("spec"), K("strategy"), K("canary"), K("steps")];
            if c.steps.is_empty() {
                cx.err(
                    &base,
                    Code::EmptyStrategy,
                    "a canary needs at least one step",
                );
            }
            let fresh = c.baseline == Some(wire::BaselineKind::Fresh);
            if fresh && !workload.capabilities().fresh_baseline {
                let here = [K("spec"), K("strategy"), K("canary"), K("baseline")];
                cx.err(
                    &here,
                    Code::UnsupportedTraffic,
                    format!("a {} workload cannot run a fresh baseline", workload.kind()),
                )
                .help = Some(format!(
                    "`baseline: fresh` is supported on {}; without it, baseline judges compare with the stable version (`baseline: stable`)",
                    plan::FRESH_BASELINE_WORKLOADS
                ));
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
                        if fresh && wt > plan::MAX_WEIGHT_WITH_FRESH_BASELINE && wt < 100 {
                            cx.err(
                                &at("setWeight", &[]),
                                Code::WeightRange,
                                format!(
                                    "weight {wt} leaves a fresh baseline less than the canary's share"
                                ),
                            )
                            .help = Some(format!(
                                "with `baseline: fresh` the canary and its baseline each take the step's weight: use at most {}, then `setWeight: 100` or a promotion",
                                plan::MAX_WEIGHT_WITH_FRESH_BASELINE
                            ));
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
                        refs(cx, &check_names, &a.checks, &at("analysis", &[K("checks")]));
                        let dp = at("analysis", &[K("duration")]);
                        let d = cx.dur(Some(&a.duration), Duration::ZERO, &dp);
                        // Metric checks need time to measure; job checks run once, so
                        // an analysis of jobs only may last 0s (it ends with the jobs).
                        let jobs_only = a.checks.iter().all(|n| job_names.contains(n));
                        if d.is_zero() && duration::parse(&a.duration).is_some() && !jobs_only {
                            cx.err(
                                &dp,
                                Code::BadDuration,
                                "an analysis must last longer than 0s",
                            )
                            .help = Some(
                                "only an analysis of job checks alone may last 0s: the jobs run once".to_owned(),
                            );
                        }
                        steps.push(Step::Analysis(Analysis {
                            checks: a.checks.clone(),
                            hook: None,
                            duration: d,
                        }));
                    }
                    wire::Step::SetHeaderRoute(r) => {
                        let here = at("setHeaderRoute", &[]);
                        let matches: Vec<RequestMatch> = r
                            .matches
                            .iter()
                            .enumerate()
                            .filter_map(|(j, m)| {
                                request_match(cx, m, &at("setHeaderRoute", &[K("match"), I(j)]))
                            })
                            .collect();
                        let caps = workload.capabilities();
                        if caps.tag_header_route && !caps.header_route {
                            if !caps.routes_by(&matches) {
                                tag_route_only(cx, &here);
                            }
                        } else if !caps.header_route {
                            unsupported(cx, &here, "setHeaderRoute", workload);
                        }
                        if let Some(j) = header_tested_twice(workload, &matches) {
                            cx.err(
                                &at("setHeaderRoute", &[K("match"), I(j)]),
                                Code::UnsupportedTraffic,
                                "a Gateway API route cannot test one header twice in a match (two cookies are both the `Cookie` header)",
                            )
                            .help = Some(
                                "keep one condition per header and at most one cookie on a Kubernetes workload".to_owned(),
                            );
                        }
                        steps.push(Step::SetHeaderRoute(matches));
                    }
                    wire::Step::SetMirror(m) => {
                        let here = at("setMirror", &[K("percent")]);
                        if !workload.capabilities().mirror {
                            unsupported(cx, &at("setMirror", &[]), "setMirror", workload);
                        }
                        if !(0..=100).contains(&m.percent) {
                            cx.err(
                                &here,
                                Code::InvalidValue,
                                format!("mirror percent {} is outside 0-100", m.percent),
                            );
                        }
                        steps.push(Step::SetMirror(
                            u8::try_from(m.percent.clamp(0, 100)).unwrap_or(0),
                        ));
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
            Strategy::Canary {
                steps,
                baseline: if fresh {
                    plan::Baseline::Fresh
                } else {
                    plan::Baseline::Stable
                },
            }
        }
        wire::Strategy::BlueGreen(bg) => {
            let base = [K("spec"), K("strategy"), K("blueGreen")];
            let preview = bg.preview.as_ref().map(|a| {
                let p: Vec<P<'static>> = base
                    .iter()
                    .copied()
                    .chain([K("preview"), K("checks")])
                    .collect();
                refs(cx, &check_names, &a.checks, &p);
                let dp: Vec<P<'static>> = base
                    .iter()
                    .copied()
                    .chain([K("preview"), K("duration")])
                    .collect();
                Analysis {
                    checks: a.checks.clone(),
                    hook: None,
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
                refs(cx, &check_names, &p.checks, &cp);
            }
            match expand_preset(&p.name, &p.checks) {
                Some(steps) => Strategy::canary(steps),
                None => {
                    let np: Vec<P<'static>> = base.iter().copied().chain([K("name")]).collect();
                    cx.err(&np, Code::BadPreset, format!("unknown preset `{}`", p.name)).help = Some(
                        "presets: `CanaryNPercentMMinutes` (e.g. Canary10Percent5Minutes), `LinearNPercentEveryMMinutes` (e.g. Linear10PercentEvery1Minute), `AllAtOnce`".to_owned(),
                    );
                    Strategy::canary(vec![Step::SetWeight(100)])
                }
            }
        }
    }
}

/// On a Gateway API route, the index of a condition on a header an earlier one
/// already tests: an HTTPRoute match lists each header once (a list keyed by name), and
/// every cookie is a condition on the `Cookie` header.
fn header_tested_twice(workload: &Workload, matches: &[RequestMatch]) -> Option<usize> {
    if !matches!(
        workload,
        Workload::Kubernetes(plan::KubernetesWorkload {
            traffic: plan::Traffic::GatewayRoute { .. },
            ..
        })
    ) {
        return None;
    }
    let header = |m: &RequestMatch| match &m.on {
        MatchOn::Header(h) => h.to_ascii_lowercase(),
        MatchOn::Cookie(_) => "cookie".to_owned(),
    };
    (1..matches.len()).find(|&j| {
        matches[..j]
            .iter()
            .any(|m| header(m) == header(&matches[j]))
    })
}

/// A step this workload's target cannot take: refused here, never met at run time.
fn unsupported(cx: &mut Ctx<'_>, path: &[P<'static>], step: &str, workload: &Workload) {
    cx.err(
        path,
        Code::UnsupportedTraffic,
        format!("a {} workload cannot take `{step}`", workload.kind()),
    )
    .help = Some(format!(
        "`{step}` is supported on {}; {}",
        plan::SHAPING_WORKLOADS,
        match workload {
            Workload::Lambda(_) => "a Lambda alias routes by weight only",
            Workload::Knative(_) => "a Knative Service routes by weight and by its tag header only",
            Workload::Kubernetes(_) =>
                "name the HTTPRoute in `route` (and its rule in `routeRule`), or use weights (setWeight) on this workload",
            Workload::Local(_) => "",
        }
    ));
}

/// A header route a Knative Service cannot express: it routes by its tag header only.
fn tag_route_only(cx: &mut Ctx<'_>, path: &[P<'static>]) {
    cx.err(
        path,
        Code::UnsupportedTraffic,
        format!(
            "a knative workload routes by header only through `{}` equal to a tag",
            plan::TAG_HEADER
        ),
    )
    .help = Some(format!(
        "use `match: [{{ header: {}, value: beta }}]` (one exact match; the value a DNS label: lowercase letters, digits, `-`), with `tag-header-based-routing: enabled` in Knative's config-features; other header and cookie routes are supported on {}",
        plan::TAG_HEADER,
        plan::SHAPING_WORKLOADS
    ));
}

/// The longest regular expression a match may carry; its compiled size is bounded too.
const MAX_PATTERN: usize = 1024;

/// One condition of a header route: a header or a cookie, and one way to match it.
fn request_match(
    cx: &mut Ctx<'_>,
    m: &wire::RequestMatch,
    path: &[P<'static>],
) -> Option<RequestMatch> {
    use P::K;
    let key = |k: &'static str| -> Vec<P<'static>> { path.iter().copied().chain([K(k)]).collect() };
    let on = match (&m.header, &m.cookie) {
        (Some(h), None) => {
            if h.is_empty() || !h.bytes().all(is_token_byte) {
                cx.err(
                    &key("header"),
                    Code::InvalidValue,
                    format!("`{h}` is not a header name"),
                );
                return None;
            }
            MatchOn::Header(h.clone())
        }
        (None, Some(c)) => {
            if c.is_empty() || !c.bytes().all(is_token_byte) {
                cx.err(
                    &key("cookie"),
                    Code::InvalidValue,
                    format!("`{c}` is not a cookie name"),
                );
                return None;
            }
            MatchOn::Cookie(c.clone())
        }
        _ => {
            cx.err(
                path,
                Code::InvalidValue,
                "a match names exactly one of `header` or `cookie`",
            )
            .help = Some("e.g. `{ header: X-Canary, value: \"1\" }`".to_owned());
            return None;
        }
    };
    let value = match (&m.value, &m.prefix, &m.regex) {
        (Some(v), None, None) => MatchValue::Exact(v.clone()),
        (None, Some(p), None) => MatchValue::Prefix(p.clone()),
        (None, None, Some(r)) => {
            let compiled = if r.len() <= MAX_PATTERN {
                regex::RegexBuilder::new(r)
                    .size_limit(1 << 20)
                    .build()
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            } else {
                Err(format!("longer than {MAX_PATTERN} characters"))
            };
            if let Err(e) = compiled {
                let first = e.lines().last().unwrap_or("invalid").trim().to_owned();
                cx.err(
                    &key("regex"),
                    Code::InvalidValue,
                    format!("`{r}` is not a regular expression: {first}"),
                );
                return None;
            }
            MatchValue::Regex(r.clone())
        }
        _ => {
            cx.err(
                path,
                Code::InvalidValue,
                "a match has exactly one of `value`, `prefix` or `regex`",
            );
            return None;
        }
    };
    Some(RequestMatch { on, value })
}

/// A byte of an HTTP token (RFC 9110 `tchar`): what header and cookie names are made of.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The checks an analysis names (at `path`): at least one, each declared in the plan.
fn refs(cx: &mut Ctx<'_>, check_names: &[String], names: &[String], path: &[P<'static>]) {
    use P::I;
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
                None if check_names.is_empty() => "declare checks under `spec.checks`".to_owned(),
                None => format!("checks in this plan: {}", check_names.join(", ")),
            });
        }
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
                hook: None,
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
