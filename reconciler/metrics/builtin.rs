//! The `builtin` metrics source: the counters of rollgate's own proxy (`local` targets).
//!
//! Reads each plan's proxy counters through `ProxyCounters`: in-process from a
//! `Registry` the local target fills, or from the data plane over its socket
//! (`dataplane::client::DataPlaneCounters`).
//! Queries: `success-rate`, `error-rate`, `latency-p50`, `latency-p95`, `latency-p99`
//! (seconds), for one version over the context's window; each also as `shadow-…`, over
//! the candidate's answers to mirrored copies (`setMirror`), which a baseline judge
//! compares with the stable version's answers to users over the same window. While a
//! fresh baseline runs (`QueryContext::fresh_baseline`), a baseline judge's baseline is
//! its series (`"<stable> baseline"`), not the stable fleet's.
//! Invariants: `samples` is the number of requests in the window; no requests give a
//! measurement without a value (inconclusive), never a pass; a plan without a proxy or
//! an unknown query is an error, never a default.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use super::{MetricsSource, QueryContext};
use crate::engine::Measurement;
use crate::model::plan::Check;
use crate::proxy::{Stats, WindowStats};

/// Each plan's proxy statistics, by plan name.
pub type Registry = Arc<Mutex<HashMap<String, Arc<Stats>>>>;

/// The queries this source answers.
pub const QUERIES: [&str; 10] = [
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
];

/// A query and the series it reads for `version`: `shadow-q` reads the version's
/// answers to mirrored copies.
fn series(query: &str, version: &str) -> (&'static str, String) {
    let (q, shadow) = match query.strip_prefix("shadow-") {
        Some(q) => (q, true),
        None => (query, false),
    };
    let q = QUERIES
        .iter()
        .copied()
        .find(|k| *k == q)
        .unwrap_or("success-rate");
    let v = if shadow {
        crate::proxy::stats::shadow_series(version)
    } else {
        version.to_owned()
    };
    (q, v)
}

/// Where a plan's proxy counters are read: the one narrow seam of this source.
pub trait ProxyCounters: Send + Sync + std::fmt::Debug {
    /// `version`'s requests over the last `window` on `plan`'s proxy, and when that
    /// proxy began counting (a window reaching before it is incomplete). `Ok(None)`:
    /// no proxy for `plan` here.
    fn window(
        &self,
        plan: &str,
        version: &str,
        window: Duration,
    ) -> Result<Option<(WindowStats, SystemTime)>, String>;
}

impl ProxyCounters for Registry {
    fn window(
        &self,
        plan: &str,
        version: &str,
        window: Duration,
    ) -> Result<Option<(WindowStats, SystemTime)>, String> {
        let stats = self
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(plan)
            .cloned();
        Ok(stats.map(|s| (s.window(version, window), s.started_at())))
    }
}

#[derive(Debug, Clone)]
pub struct Builtin {
    places: Vec<Arc<dyn ProxyCounters>>,
}

impl Builtin {
    /// Counters of proxies in this process.
    pub fn new(registry: Registry) -> Self {
        Self::with(vec![Arc::new(registry)])
    }

    /// Counters from several places (one per local target); a plan is in at most one.
    pub fn with(places: Vec<Arc<dyn ProxyCounters>>) -> Self {
        Self { places }
    }

    fn window(
        &self,
        plan: &str,
        version: &str,
        window: Duration,
    ) -> Result<(WindowStats, SystemTime), String> {
        let mut errors = Vec::new();
        for place in &self.places {
            match place.window(plan, version, window) {
                Ok(Some(found)) => return Ok(found),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        Err(if errors.is_empty() {
            format!("no proxy for plan {plan}")
        } else {
            errors.join("; ")
        })
    }

    /// When the counters of `plan`'s proxy began: samples before it are lost.
    pub fn counting_since(&self, plan: &str) -> Option<SystemTime> {
        self.window(plan, "", Duration::ZERO).ok().map(|(_, t)| t)
    }
}

impl MetricsSource for Builtin {
    fn complete_since(&mut self, plan: &str) -> Option<chrono::DateTime<chrono::Utc>> {
        self.counting_since(plan)
            .map(chrono::DateTime::<chrono::Utc>::from)
    }

    fn measure(&mut self, check: &Check, ctx: &QueryContext<'_>) -> Result<Measurement, String> {
        let query = check.query.trim();
        if query == "replica-health" {
            return Err("replica-health is only available on kubernetes targets".to_owned());
        }
        if !QUERIES.contains(&query) {
            return Err(format!(
                "unknown builtin query {query:?}; expected one of: {}",
                QUERIES.join(", ")
            ));
        }
        let (query, version) = series(query, ctx.version);
        let (w, _) = self.window(ctx.plan, &version, ctx.window)?;
        let value = match query {
            "success-rate" => w.success_rate(),
            "error-rate" => w.error_rate(),
            "latency-p50" => w.p50(),
            "latency-p95" => w.p95(),
            _ => w.p99(),
        };
        Ok(Measurement {
            value,
            samples: w.requests,
        })
    }

    /// Both versions over the window: latency samples for `latency-*` (a rank test),
    /// counts for `success-rate` (non-5xx of all) and `error-rate` (5xx of all).
    fn compare(
        &mut self,
        check: &Check,
        ctx: &QueryContext<'_>,
    ) -> Result<crate::engine::Sample, String> {
        let baseline = ctx.baseline.ok_or("no stable version to compare with")?;
        let (query, version) = series(check.query.trim(), ctx.version);
        // With a fresh baseline, its own series: the copy started beside the canary,
        // not the stable fleet serving the rest.
        let baseline = if ctx.fresh_baseline {
            crate::proxy::stats::baseline_series(baseline)
        } else {
            baseline.to_owned()
        };
        let (c, _) = self.window(ctx.plan, &version, ctx.window)?;
        let (b, _) = self.window(ctx.plan, &baseline, ctx.window)?;
        let fives = |w: &crate::proxy::stats::WindowStats| w.by_class[4];
        Ok(match query {
            "success-rate" => crate::engine::Sample::Counts {
                canary_good: c.requests - fives(&c),
                canary_total: c.requests,
                baseline_good: b.requests - fives(&b),
                baseline_total: b.requests,
            },
            "error-rate" => crate::engine::Sample::Counts {
                canary_good: fives(&c),
                canary_total: c.requests,
                baseline_good: fives(&b),
                baseline_total: b.requests,
            },
            q if q.starts_with("latency-") => crate::engine::Sample::Continuous {
                canary: c.latency_samples(20_000),
                baseline: b.latency_samples(20_000),
            },
            q => {
                return Err(format!(
                    "builtin query {q:?} cannot be compared with a baseline"
                ));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::model::plan::Judge;

    fn check(query: &str) -> Check {
        Check {
            name: query.to_owned(),
            source: "builtin".to_owned(),
            query: query.to_owned(),
            judge: Judge::Threshold {
                min: None,
                max: None,
            },
            interval: Duration::from_secs(60),
            failure_limit: 1,
            consecutive_error_limit: 3,
            samples_query: None,
        }
    }

    fn ctx<'a>(plan: &'a str, version: &'a str) -> QueryContext<'a> {
        QueryContext {
            plan,
            version,
            baseline: Some("v1"),
            fresh_baseline: false,
            window: Duration::from_secs(30),
            workload: None,
        }
    }

    /// Given a proxy's stats with 96 fast successes, 4 slow 5xx for v2 and one v1 request.
    fn source() -> Builtin {
        let stats = Arc::new(Stats::new());
        for _ in 0..96 {
            stats.record("v2", 200, Duration::from_millis(10));
        }
        for _ in 0..4 {
            stats.record("v2", 503, Duration::from_millis(800));
        }
        stats.record("v1", 200, Duration::from_millis(1));
        let registry: Registry = Arc::default();
        registry
            .lock()
            .expect("not poisoned")
            .insert("checkout".to_owned(), stats);
        Builtin::new(registry)
    }

    fn near(m: Measurement, want: f64, samples: u64) {
        let got = m.value.expect("a value");
        assert!((got - want).abs() <= want * 0.035, "got {got}, want {want}");
        assert_eq!(m.samples, samples);
    }

    #[test]
    fn answers_each_query_over_the_window() {
        let mut b = source();
        let c = ctx("checkout", "v2");
        near(
            b.measure(&check("success-rate"), &c).expect("measured"),
            0.96,
            100,
        );
        near(
            b.measure(&check("error-rate"), &c).expect("measured"),
            0.04,
            100,
        );
        near(
            b.measure(&check("latency-p50"), &c).expect("measured"),
            0.010,
            100,
        );
        near(
            b.measure(&check("latency-p95"), &c).expect("measured"),
            0.010,
            100,
        );
        near(
            b.measure(&check("latency-p99"), &c).expect("measured"),
            0.800,
            100,
        );
        near(
            b.measure(&check(" latency-p99 "), &ctx("checkout", "v1"))
                .expect("measured"),
            0.001,
            1,
        );
    }

    #[test]
    fn no_requests_is_no_value_not_a_pass() {
        let mut b = source();
        let m = b
            .measure(&check("success-rate"), &ctx("checkout", "v3"))
            .expect("measured");
        assert_eq!(
            m,
            Measurement {
                value: None,
                samples: 0
            }
        );
        let zero = QueryContext {
            window: Duration::ZERO,
            ..ctx("checkout", "v2")
        };
        assert_eq!(
            b.measure(&check("latency-p99"), &zero),
            Ok(Measurement {
                value: None,
                samples: 0
            })
        );
    }

    /// The contract over the builtin source: the live one reads a proxy's counters given
    /// 96 successes and 4 5xx of v2; the dead one reads a data plane whose socket nobody
    /// listens on (how production reads the counters, and how it finds none).
    #[test]
    fn builtin_passes_the_metrics_source_contract() {
        let stats = Arc::new(Stats::new());
        let data_from = chrono::Utc::now();
        for _ in 0..96 {
            stats.record("v2", 200, Duration::from_millis(10));
        }
        for _ in 0..4 {
            stats.record("v2", 503, Duration::from_millis(800));
        }
        let registry: Registry = Arc::default();
        registry
            .lock()
            .expect("not poisoned")
            .insert("checkout".to_owned(), stats);
        let mut live = Builtin::new(registry);
        let no_plane = tempfile::tempdir().expect("tmp");
        let mut dead = Builtin::with(vec![Arc::new(
            crate::dataplane::client::DataPlaneCounters::new(no_plane.path().to_path_buf()),
        )]);
        let hour = |version| QueryContext {
            window: Duration::from_secs(3600),
            ..ctx("checkout", version)
        };
        let question = |query, version| crate::metrics::contract::Question {
            check: check(query),
            ctx: hour(version),
        };
        crate::metrics::contract::run(
            &mut live,
            &mut dead,
            &crate::metrics::contract::Cases {
                unreachable: question("success-rate", "v2"),
                // A version that served no request.
                empty: question("success-rate", "v3"),
                counted: question("success-rate", "v2"),
                value: 0.96,
                tolerance: 1e-9,
                samples: 100,
                data_from,
            },
        );
    }

    #[test]
    fn a_fresh_baseline_is_compared_from_its_own_series_not_the_stable_fleets() {
        // Given the stable fleet (v1) fast and healthy, its fresh copy and v2 both slow
        let stats = Arc::new(Stats::new());
        for _ in 0..50 {
            stats.record("v1", 200, Duration::from_millis(1));
            stats.record(
                &crate::proxy::stats::baseline_series("v1"),
                200,
                Duration::from_millis(40),
            );
            stats.record("v2", 200, Duration::from_millis(40));
        }
        stats.record(
            &crate::proxy::stats::baseline_series("v1"),
            503,
            Duration::from_millis(40),
        );
        let registry: Registry = Arc::default();
        registry
            .lock()
            .expect("not poisoned")
            .insert("checkout".to_owned(), stats);
        let mut b = Builtin::new(registry);
        let counts = |b: &mut Builtin, fresh| {
            let ctx = QueryContext {
                fresh_baseline: fresh,
                ..ctx("checkout", "v2")
            };
            match b.compare(&check("success-rate"), &ctx).expect("compared") {
                crate::engine::Sample::Counts {
                    baseline_good,
                    baseline_total,
                    ..
                } => (baseline_good, baseline_total),
                other => panic!("{other:?}"),
            }
        };
        // Then with a fresh baseline the judge's baseline is the copy's 51 requests
        assert_eq!(counts(&mut b, true), (50, 51));
        // And without, the stable fleet's 50
        assert_eq!(counts(&mut b, false), (50, 50));
    }

    #[test]
    fn unknown_plan_and_queries_are_errors() {
        let mut b = source();
        assert_eq!(
            b.measure(&check("success-rate"), &ctx("billing", "v2")),
            Err("no proxy for plan billing".to_owned())
        );
        assert_eq!(
            b.measure(&check("replica-health"), &ctx("checkout", "v2")),
            Err("replica-health is only available on kubernetes targets".to_owned())
        );
        let e = b
            .measure(
                &check("rate(http_requests_total[1m])"),
                &ctx("checkout", "v2"),
            )
            .expect_err("unknown");
        assert!(e.starts_with("unknown builtin query"), "{e}");
    }
}
