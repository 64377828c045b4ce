//! The evidence a rollout is judged on: `spec.checks` (names, metrics sources and
//! their queries, judges, intervals), `spec.minSamples` and the `spec.slo` gate.
//!
//! Invariants: pure; check names are DNS labels and unique within a plan; a query is
//! one its source answers (the builtin proxy's and CloudWatch's are known here, a
//! Prometheus query is the source's to judge; a `web` source counts its own samples, so
//! a `samplesQuery` on its checks is refused); a judge is either a threshold or a
//! baseline comparison, never both nor neither; with no evidence nothing promotes, so
//! `minSamples` is at least 1. Without settings, sources are not resolved.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::model::diagnostics::{Code, did_you_mean};
use crate::model::plan::{self, Check, Direction, JobCheck, Judge};
use crate::model::settings::{self, BUILTIN_SOURCE, Settings};
use crate::model::wire;

use super::{Ctx, P};

/// Queries the builtin metrics source answers.
pub const BUILTIN_QUERIES: &[&str] = &[
    "success-rate",
    "error-rate",
    "latency-p50",
    "latency-p95",
    "latency-p99",
    "shadow-success-rate",
    "shadow-error-rate",
    "shadow-latency-p50",
    "shadow-latency-p95",
    "shadow-latency-p99",
    "replica-health",
];

/// Check every entry of `spec.checks`, in order, and build the checks.
pub(super) fn checks(
    cx: &mut Ctx<'_>,
    s: &wire::PlanSpec,
    settings: Option<&Settings>,
) -> (Vec<Check>, Vec<JobCheck>) {
    use P::{I, K};
    let mut checks = Vec::new();
    let mut jobs = Vec::new();
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
        if let Some(job) = &c.job {
            jobs.push(super::jobs::job_check(cx, s, c, job, &at(&[])));
            continue;
        }
        let (Some(source), Some(query), Some(wire_judge)) = (&c.source, &c.query, &c.judge) else {
            for (field, missing) in [
                ("source", c.source.is_none()),
                ("query", c.query.is_none()),
                ("judge", c.judge.is_none()),
            ] {
                if missing {
                    cx.err(
                        &at(&[]),
                        Code::MissingField,
                        format!("missing field `{field}` in check `{}`", c.name),
                    )
                    .help = Some(
                        "a check is a metric (`source`, `query`, `judge`) or a `job:`".to_owned(),
                    );
                }
            }
            continue;
        };
        if source == BUILTIN_SOURCE {
            if query == "replica-health"
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
            if !BUILTIN_QUERIES.contains(&query.as_str()) {
                let hint = did_you_mean(query, BUILTIN_QUERIES.iter().copied());
                cx.err(
                    &at(&[K("query")]),
                    Code::InvalidValue,
                    format!("the builtin source has no query `{}`", query),
                )
                .help = Some(hint.map_or_else(
                    || format!("builtin queries: {}", BUILTIN_QUERIES.join(", ")),
                    |h| format!("did you mean `{h}`?"),
                ));
            }
        } else if let Some(settings::MetricsSource::Cloudwatch { .. }) =
            settings.and_then(|st| st.metrics.get(source.as_str()))
        {
            if !matches!(s.workload, wire::Workload::Lambda(_)) {
                cx.err(
                    &at(&[K("source")]),
                    Code::WorkloadMismatch,
                    format!(
                        "`{}` is a cloudwatch source, which measures lambda workloads",
                        source
                    ),
                );
            }
            if !settings::CLOUDWATCH_QUERIES.contains(&query.trim()) {
                let hint = did_you_mean(query, settings::CLOUDWATCH_QUERIES.iter().copied());
                cx.err(
                    &at(&[K("query")]),
                    Code::InvalidValue,
                    format!("a cloudwatch source has no query `{}`", query),
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
            && !settings.metrics.contains_key(source.as_str())
        {
            let names: Vec<&str> = std::iter::once(BUILTIN_SOURCE)
                .chain(settings.metrics.keys().map(String::as_str))
                .collect();
            let hint = did_you_mean(source, names.iter().copied());
            cx.err(
                &at(&[K("source")]),
                Code::UnknownSource,
                format!("unknown metrics source `{}`", source),
            )
            .help = Some(hint.map_or_else(
                || format!("sources: {}", names.join(", ")),
                |h| format!("did you mean `{h}`?"),
            ));
        }
        if query.trim().is_empty() {
            cx.err(&at(&[K("query")]), Code::InvalidValue, "the query is empty");
        }
        if c.samples_query.is_some()
            && let Some(settings::MetricsSource::Web { .. }) =
                settings.and_then(|st| st.metrics.get(source.as_str()))
        {
            cx.err(
                &at(&[K("samplesQuery")]),
                Code::InvalidValue,
                format!(
                    "`{}` is a web source, which reads its samples from the answer, never from a samplesQuery",
                    source
                ),
            )
            .help = Some(format!(
                "set `samplesPath` on `metrics.{}.web` in rollgate.yaml, or remove `samplesQuery`",
                source
            ));
        }
        let mut judge = judge_from_wire(cx, wire_judge, &at(&[K("judge")]));
        // A success rate is harmed by going down: that is its default direction.
        if let Judge::Baseline { direction, .. } = &mut judge
            && wire_judge.direction.is_none()
            && query.trim() == "success-rate"
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
            source: source.clone(),
            query: query.clone(),
            judge,
            interval,
            failure_limit: c.failure_limit.unwrap_or(0),
            consecutive_error_limit: c
                .consecutive_error_limit
                .unwrap_or(plan::DEFAULT_CONSECUTIVE_ERROR_LIMIT),
            samples_query: c.samples_query.clone(),
        });
    }
    (checks, jobs)
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

/// `spec.slo`: the error-budget gate reads a Prometheus source (the builtin counters
/// keep too little history) and needs an objective strictly between 0 and 1.
pub(super) fn slo(
    cx: &mut Ctx<'_>,
    s: &wire::PlanSpec,
    settings: Option<&Settings>,
) -> Option<plan::Slo> {
    use P::K;
    s.slo.as_ref().map(|w| {
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
    })
}

/// `spec.minSamples`: how many measurements a judge needs before it may pass.
pub(super) fn min_samples(cx: &mut Ctx<'_>, s: &wire::PlanSpec) -> u64 {
    use P::K;
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
    min_samples
}
