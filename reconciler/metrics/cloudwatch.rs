//! The `cloudwatch` metrics source: Lambda's own metrics per executed version, read
//! with `GetMetricData`.
//!
//! A check's query is one of [`CLOUDWATCH_QUERIES`]; the function and alias come from
//! the plan's `lambda` workload. Every series is `AWS/Lambda` with the dimensions Lambda
//! publishes for an invocation through an alias, `FunctionName`, `Resource`
//! (`function:alias`) and `ExecutedVersion` (the version that ran), so the candidate and
//! the stable version behind one weighted alias are told apart:
//!
//! | query | value | samples |
//! |---|---|---|
//! | `success-rate` | `1 - Errors/Invocations` | Invocations |
//! | `error-rate` | `Errors/Invocations` | Invocations |
//! | `errors`, `invocations`, `throttles` | the sum | Invocations |
//! | `duration-p50`, `-p90`, `-p99` | that percentile of `Duration` (ms) | Invocations |
//!
//! The window is the analysis so far (`QueryContext::window`), rounded up to whole
//! minutes (Lambda publishes per minute) and ending now. For `compare: baseline` the
//! counts of both versions become a proportion test (`Sample::Counts`) and durations
//! become the per-minute percentiles of both (`Sample::Continuous`; `minSamples` then
//! counts minutes).
//!
//! Invariants: a series with no datapoints is a measurement without a value (no
//! evidence, never a pass); an AWS error is a source error. Credentials come from the
//! SDK's default chain (or the source's profile) and are never logged; the source's
//! `endpoint` (from `rollgate.yaml`, never a plan) is `https://` or loopback only.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_cloudwatch::Client;
use aws_sdk_cloudwatch::error::ProvideErrorMetadata;
use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat};

use super::{MetricsSource, QueryContext};
use crate::aws::{AwsAccess, Credentials, chain, check_endpoint, credentials_label};
use crate::engine::{Measurement, Sample};
use crate::model::plan::{Check, Workload};
use crate::model::settings::CLOUDWATCH_QUERIES;

/// The namespace of Lambda's metrics.
pub const NAMESPACE: &str = "AWS/Lambda";
/// The IAM action this source calls.
pub const IAM_ACTIONS: &[&str] = &["cloudwatch:GetMetricData"];

/// One series to fetch: a metric and a statistic (`Sum`, `p99`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    pub metric: &'static str,
    pub stat: String,
}

fn sum(metric: &'static str) -> Series {
    Series {
        metric,
        stat: "Sum".to_owned(),
    }
}

/// The series a query needs; `Invocations` always (it counts the samples).
pub fn series(query: &str) -> Result<Vec<Series>, String> {
    let q = query.trim();
    Ok(match q {
        "success-rate" | "error-rate" | "errors" => vec![sum("Errors"), sum("Invocations")],
        "invocations" => vec![sum("Invocations")],
        "throttles" => vec![sum("Throttles"), sum("Invocations")],
        _ => match q.strip_prefix("duration-") {
            Some(p @ ("p50" | "p90" | "p99")) => vec![
                Series {
                    metric: "Duration",
                    stat: p.to_owned(),
                },
                sum("Invocations"),
            ],
            _ => {
                return Err(format!(
                    "cloudwatch query `{q}` is not one of {}",
                    CLOUDWATCH_QUERIES.join(", ")
                ));
            }
        },
    })
}

/// The dimensions Lambda publishes for invocations of `function:alias` that ran `version`.
pub fn dimensions(function: &str, alias: &str, version: &str) -> [(&'static str, String); 3] {
    [
        ("FunctionName", function.to_owned()),
        ("Resource", format!("{function}:{alias}")),
        ("ExecutedVersion", version.to_owned()),
    ]
}

/// The period covering `window`: whole minutes, at least one.
pub fn period(window: Duration) -> i32 {
    let minutes = window.as_secs().div_ceil(60).max(1);
    i32::try_from(minutes * 60).unwrap_or(i32::MAX - 59)
}

/// What the fetched series hold: for each metric, its datapoints (`None`: none at all).
pub type Points = BTreeMap<&'static str, Vec<f64>>;

fn total(points: &Points, metric: &str) -> Option<f64> {
    points
        .get(metric)
        .filter(|v| !v.is_empty())
        .map(|v| v.iter().sum())
}

/// The measurement of `query` from one version's points over one period.
pub fn value(query: &str, points: &Points) -> Measurement {
    let invocations = total(points, "Invocations");
    let samples = invocations.map_or(0, |n| n.max(0.0).round() as u64);
    let none = Measurement {
        value: None,
        samples,
    };
    let per_invocation = |x: Option<f64>| match (x, invocations) {
        (Some(x), Some(n)) if n > 0.0 => Some(x / n),
        _ => None,
    };
    let value = match query.trim() {
        "success-rate" => per_invocation(total(points, "Errors")).map(|r| 1.0 - r),
        "error-rate" => per_invocation(total(points, "Errors")),
        "errors" => total(points, "Errors"),
        "invocations" => invocations,
        "throttles" => total(points, "Throttles"),
        // One period: one datapoint; should the period be split, the worst one.
        q if q.starts_with("duration-") => points
            .get("Duration")
            .and_then(|v| v.iter().copied().reduce(f64::max)),
        _ => return none,
    };
    Measurement {
        value: value.filter(|v| v.is_finite()),
        samples,
    }
}

/// Both versions' counts for a proportion test: successes (or the counted event) of all.
pub fn counts(query: &str, canary: &Points, baseline: &Points) -> Result<Sample, String> {
    let n = |p: &Points, m: &str| total(p, m).map_or(0, |x| x.max(0.0).round() as u64);
    let (cg, ct, bg, bt) = match query.trim() {
        "success-rate" => {
            let (ci, bi) = (n(canary, "Invocations"), n(baseline, "Invocations"));
            (
                ci.saturating_sub(n(canary, "Errors")),
                ci,
                bi.saturating_sub(n(baseline, "Errors")),
                bi,
            )
        }
        "error-rate" | "errors" => (
            n(canary, "Errors"),
            n(canary, "Invocations"),
            n(baseline, "Errors"),
            n(baseline, "Invocations"),
        ),
        "throttles" => {
            let (ct, bt) = (n(canary, "Throttles"), n(baseline, "Throttles"));
            (
                ct,
                n(canary, "Invocations") + ct,
                bt,
                n(baseline, "Invocations") + bt,
            )
        }
        q => {
            return Err(format!(
                "cloudwatch query `{q}` cannot be compared with a baseline"
            ));
        }
    };
    Ok(Sample::Counts {
        canary_good: cg,
        canary_total: ct,
        baseline_good: bg,
        baseline_total: bt,
    })
}

/// Amazon CloudWatch as a metrics source.
pub struct Cloudwatch {
    runtime: tokio::runtime::Runtime,
    access: AwsAccess,
    timeout: Duration,
    credentials: Option<Credentials>,
    client: Option<Client>,
}

impl std::fmt::Debug for Cloudwatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the client or credentials: only where they point.
        f.debug_struct("Cloudwatch")
            .field("access", &self.access)
            .field("timeout", &self.timeout)
            .field("credentials", &credentials_label(self.credentials.as_ref()))
            .finish_non_exhaustive()
    }
}

impl Cloudwatch {
    /// A source in `region` (through `endpoint` when given) with the default credential
    /// chain, or `profile`; each call bounded by `timeout`. Connects on first use. An
    /// endpoint over plain http to a host that is not loopback is refused.
    pub fn new(access: AwsAccess, timeout: Duration) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        check_endpoint(access.endpoint.as_deref())?;
        Ok(Self {
            runtime: crate::targets::kubernetes::runtime()
                .context("cannot start the cloudwatch runtime")?,
            access,
            timeout,
            credentials: None,
            client: None,
        })
    }

    /// Use these credentials instead of the default chain (tests, emulators).
    #[must_use]
    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self.client = None;
        self
    }

    fn client(&mut self) -> Client {
        if let Some(c) = &self.client {
            return c.clone();
        }
        let config = self
            .runtime
            .block_on(self.access.load(self.credentials.as_ref(), self.timeout));
        let client = Client::new(&config);
        self.client = Some(client.clone());
        client
    }

    /// Fetch `series` for each version in `versions` over the window ending now, one
    /// datapoint per `period` seconds; the points per version, in that order.
    fn fetch(
        &mut self,
        ctx: &QueryContext<'_>,
        series: &[Series],
        versions: &[&str],
        period: i32,
        window: i32,
    ) -> Result<Vec<Points>, String> {
        let (function, alias) = match ctx.workload {
            Some(Workload::Lambda(w)) => (w.function.as_str(), w.alias.as_str()),
            Some(other) => {
                return Err(format!(
                    "the cloudwatch source reads lambda workloads, not {}",
                    other.kind()
                ));
            }
            None => return Err("the cloudwatch source needs the plan's lambda workload".into()),
        };
        let mut queries = Vec::new();
        let mut ids = BTreeMap::new();
        for (vi, version) in versions.iter().enumerate() {
            for (si, s) in series.iter().enumerate() {
                let id = format!("v{vi}_s{si}");
                let mut metric = Metric::builder().namespace(NAMESPACE).metric_name(s.metric);
                for (name, value) in dimensions(function, alias, version) {
                    metric =
                        metric.dimensions(Dimension::builder().name(name).value(value).build());
                }
                queries.push(
                    MetricDataQuery::builder()
                        .id(&id)
                        .metric_stat(
                            MetricStat::builder()
                                .metric(metric.build())
                                .period(period)
                                .stat(&s.stat)
                                .build(),
                        )
                        .return_data(true)
                        .build(),
                );
                ids.insert(id, (vi, s.metric));
            }
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let end = i64::try_from(now).unwrap_or(i64::MAX);
        let start = end - i64::from(window);
        let client = self.client();
        let mut out = vec![Points::new(); versions.len()];
        let mut token: Option<String> = None;
        for _ in 0..100 {
            let result = self.runtime.block_on(
                client
                    .get_metric_data()
                    .set_metric_data_queries(Some(queries.clone()))
                    .start_time(DateTime::from_secs(start))
                    .end_time(DateTime::from_secs(end))
                    .set_next_token(token.take())
                    .send(),
            );
            let page = result.map_err(|e| match (e.code(), e.message()) {
                (Some(code), Some(m)) => {
                    format!("cloudwatch GetMetricData: {code}: {}", m.trim_end())
                }
                (Some(code), None) => format!("cloudwatch GetMetricData: {code}"),
                _ => format!("cloudwatch GetMetricData: {}", chain(&e)),
            })?;
            for r in page.metric_data_results() {
                if let Some((vi, metric)) = r.id().and_then(|id| ids.get(id)) {
                    out[*vi]
                        .entry(metric)
                        .or_default()
                        .extend(r.values().iter().copied().filter(|v| v.is_finite()));
                }
            }
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => return Ok(out),
            }
        }
        Err("cloudwatch GetMetricData: too many pages".to_owned())
    }
}

impl MetricsSource for Cloudwatch {
    fn measure(&mut self, check: &Check, ctx: &QueryContext<'_>) -> Result<Measurement, String> {
        let series = series(&check.query)?;
        let p = period(ctx.window);
        let points = self.fetch(ctx, &series, &[ctx.version], p, p)?;
        Ok(value(&check.query, &points[0]))
    }

    fn compare(&mut self, check: &Check, ctx: &QueryContext<'_>) -> Result<Sample, String> {
        let baseline = ctx.baseline.ok_or("no stable version to compare with")?;
        let series = series(&check.query)?;
        let window = period(ctx.window);
        if check.query.trim().starts_with("duration-") {
            let points = self.fetch(ctx, &series[..1], &[ctx.version, baseline], 60, window)?;
            let minutes = |p: &Points| p.get("Duration").cloned().unwrap_or_default();
            return Ok(Sample::Continuous {
                canary: minutes(&points[0]),
                baseline: minutes(&points[1]),
            });
        }
        if check.query.trim() == "invocations" {
            return Err("cloudwatch query `invocations` cannot be compared with a baseline".into());
        }
        let points = self.fetch(ctx, &series, &[ctx.version, baseline], window, window)?;
        counts(&check.query, &points[0], &points[1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points(v: &[(&'static str, &[f64])]) -> Points {
        v.iter().map(|(k, x)| (*k, x.to_vec())).collect()
    }

    #[test]
    fn every_listed_query_has_its_series() {
        for q in CLOUDWATCH_QUERIES {
            let s = series(q).expect(q);
            assert!(s.iter().any(|s| s.metric == "Invocations"), "{q}");
        }
        assert_eq!(
            series("duration-p99").expect("p99")[0],
            Series {
                metric: "Duration",
                stat: "p99".to_owned()
            }
        );
        assert!(series("latency-p99").is_err());
    }

    #[test]
    fn dimensions_are_the_ones_lambda_publishes_for_alias_invocations() {
        assert_eq!(
            dimensions("pay", "live", "7"),
            [
                ("FunctionName", "pay".to_owned()),
                ("Resource", "pay:live".to_owned()),
                ("ExecutedVersion", "7".to_owned()),
            ]
        );
    }

    #[test]
    fn windows_round_up_to_whole_minutes() {
        assert_eq!(period(Duration::from_secs(0)), 60);
        assert_eq!(period(Duration::from_secs(45)), 60);
        assert_eq!(period(Duration::from_secs(61)), 120);
        assert_eq!(period(Duration::from_secs(3600)), 3600);
    }

    #[test]
    fn ratios_come_from_counts_and_no_datapoints_is_no_value() {
        let p = points(&[("Errors", &[2.0, 3.0]), ("Invocations", &[400.0, 600.0])]);
        assert_eq!(
            value("success-rate", &p),
            Measurement {
                value: Some(0.995),
                samples: 1000
            }
        );
        assert_eq!(value("error-rate", &p).value, Some(0.005));
        assert_eq!(value("errors", &p).value, Some(5.0));
        assert_eq!(value("invocations", &p).value, Some(1000.0));
        // No datapoints at all: no evidence.
        let empty = Points::new();
        assert_eq!(
            value("success-rate", &empty),
            Measurement {
                value: None,
                samples: 0
            }
        );
        // Invocations without an Errors series is not "no errors".
        let no_errors = points(&[("Invocations", &[10.0])]);
        assert_eq!(value("success-rate", &no_errors).value, None);
        // Zero invocations: no ratio.
        let zero = points(&[("Errors", &[0.0]), ("Invocations", &[0.0])]);
        assert_eq!(value("error-rate", &zero).value, None);
        let d = points(&[("Duration", &[120.0, 180.0]), ("Invocations", &[50.0])]);
        assert_eq!(
            value("duration-p99", &d),
            Measurement {
                value: Some(180.0),
                samples: 50
            }
        );
    }

    #[test]
    fn baseline_counts_per_query() {
        let c = points(&[
            ("Errors", &[30.0]),
            ("Invocations", &[1000.0]),
            ("Throttles", &[5.0]),
        ]);
        let b = points(&[
            ("Errors", &[1.0]),
            ("Invocations", &[9000.0]),
            ("Throttles", &[0.0]),
        ]);
        assert_eq!(
            counts("success-rate", &c, &b),
            Ok(Sample::Counts {
                canary_good: 970,
                canary_total: 1000,
                baseline_good: 8999,
                baseline_total: 9000
            })
        );
        assert_eq!(
            counts("error-rate", &c, &b),
            Ok(Sample::Counts {
                canary_good: 30,
                canary_total: 1000,
                baseline_good: 1,
                baseline_total: 9000
            })
        );
        assert_eq!(
            counts("throttles", &c, &b),
            Ok(Sample::Counts {
                canary_good: 5,
                canary_total: 1005,
                baseline_good: 0,
                baseline_total: 9000
            })
        );
        assert!(counts("invocations", &c, &b).is_err());
    }
}
