//! Metrics sources from settings: one `MetricsSource` per entry of `rollgate.yaml`'s
//! `metrics:`, plus `builtin` over the local targets' proxy counters.
//!
//! The daemon's only way to build a source (tests build theirs directly).
//! Invariants: building sends no query; an entry that cannot be built is an `Err` with
//! the reason (its checks then hold, never pass); `builtin` always exists.

use std::sync::Arc;

use crate::model::settings;

use super::MetricsSource;
use super::builtin::{Builtin, ProxyCounters};

/// The name of the source that reads rollgate's own proxies.
pub const BUILTIN: &str = "builtin";

/// The source `name` as `kind` describes it.
pub fn build(kind: &settings::MetricsSource) -> Result<Box<dyn MetricsSource>, String> {
    match kind {
        settings::MetricsSource::Prometheus {
            url,
            timeout,
            auth_header_env,
        } => super::prometheus::Prometheus::new(url, *timeout, auth_header_env.clone())
            .map(|p| Box::new(p) as Box<dyn MetricsSource>),
        settings::MetricsSource::Cloudwatch {
            region,
            endpoint,
            profile,
            timeout,
        } => super::cloudwatch::Cloudwatch::new(
            crate::aws::AwsAccess {
                region: region.clone(),
                endpoint: endpoint.clone(),
                profile: profile.clone(),
            },
            *timeout,
        )
        .map(|c| Box::new(c) as Box<dyn MetricsSource>)
        .map_err(|e| format!("{e:#}")),
        settings::MetricsSource::Web {
            url,
            method,
            body,
            headers,
            timeout,
            json_path,
            samples_path,
        } => super::web::Web::new(
            url,
            *method,
            body.as_deref(),
            headers,
            *timeout,
            json_path,
            samples_path.as_deref(),
        )
        .map(|w| Box::new(w) as Box<dyn MetricsSource>),
    }
}

/// The builtin source over `counters` (one per local target).
pub fn builtin(counters: Vec<Arc<dyn ProxyCounters>>) -> Box<dyn MetricsSource> {
    Box::new(Builtin::with(counters))
}
