//! Where measurements come from: the `MetricsSource` extension point.
//!
//! One trait, one file per implementation (`builtin.rs` for the proxy's counters,
//! `prometheus.rs`, `cloudwatch.rs` for Lambda's metrics, `web.rs` for a JSON API).
//! A source answers one check for one version over a window; an unreachable source or
//! an empty result is an error or a measurement without a value, which the judge
//! treats as inconclusive, never as a pass.
//! `contract` holds the test every implementation must pass.

pub mod builtin;
pub mod cloudwatch;
pub mod contract;
pub mod factory;
pub mod prometheus;
pub mod web;

use std::time::Duration;

use crate::engine::Measurement;
use crate::model::plan::Check;

/// What a query is about.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryContext<'a> {
    pub plan: &'a str,
    /// The version being judged (the candidate's artifact).
    pub version: &'a str,
    /// The stable version, for baseline comparisons.
    pub baseline: Option<&'a str>,
    /// A fresh baseline (`baseline: fresh`) runs now: a source that can tell it apart
    /// from the stable fleet (`builtin`: its own series) compares with it.
    pub fresh_baseline: bool,
    /// How far back to look.
    pub window: Duration,
    /// The plan's workload, for sources that query it by name (`cloudwatch`: the
    /// function and alias); `None` where there is no plan (`rollgate judge`, tests).
    pub workload: Option<&'a crate::model::plan::Workload>,
}

/// A source of measurements.
pub trait MetricsSource: Send {
    /// Measure `check` for `ctx.version`. `Err` is a source error (counted against
    /// `consecutiveErrorLimit`), never a verdict.
    fn measure(&mut self, check: &Check, ctx: &QueryContext<'_>) -> Result<Measurement, String>;

    /// Both versions' data for a `compare: baseline` judge of `check` over `ctx.window`.
    fn compare(
        &mut self,
        check: &Check,
        ctx: &QueryContext<'_>,
    ) -> Result<crate::engine::Sample, String> {
        let _ = (check, ctx);
        Err("this metrics source cannot compare the candidate with the baseline".to_owned())
    }

    /// From when this source's data for `plan` is complete: samples before it were lost
    /// (the builtin source's proxy restarted). `None`: complete as far back as asked
    /// (a server that keeps its own history, like Prometheus).
    fn complete_since(&mut self, plan: &str) -> Option<chrono::DateTime<chrono::Utc>> {
        let _ = plan;
        None
    }

    /// The error ratio `1 - good/total` over `ctx.window`, for SLO burn rates. Sources
    /// that cannot answer arbitrary windows say so (the SLO gate then holds).
    fn error_ratio(
        &mut self,
        good: &str,
        total: &str,
        ctx: &QueryContext<'_>,
    ) -> Result<f64, String> {
        let _ = (good, total, ctx);
        Err("this metrics source cannot evaluate SLO queries".to_owned())
    }
}
