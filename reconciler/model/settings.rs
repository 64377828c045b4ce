//! Domain types of the repository settings (`rollgate.yaml`).
//!
//! Invariant: secrets are never values here, only the names of the environment
//! variables or files that hold them.

use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Settings {
    pub targets: BTreeMap<String, Target>,
    pub metrics: BTreeMap<String, MetricsSource>,
    pub write_back: WriteBack,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Local {
        state_dir: Option<String>,
    },
    Kubernetes {
        context: Option<String>,
        in_cluster: bool,
    },
    Lambda,
}

impl Target {
    pub fn kind(&self) -> &'static str {
        match self {
            Target::Local { .. } => "local",
            Target::Kubernetes { .. } => "kubernetes",
            Target::Lambda => "lambda",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsSource {
    Prometheus {
        url: String,
        timeout: Duration,
        auth_header_env: Option<String>,
    },
    /// Amazon CloudWatch (AWS/Lambda metrics per executed version).
    Cloudwatch {
        region: String,
        endpoint: Option<String>,
        profile: Option<String>,
        timeout: Duration,
    },
}

impl MetricsSource {
    pub fn kind(&self) -> &'static str {
        match self {
            MetricsSource::Prometheus { .. } => "prometheus",
            MetricsSource::Cloudwatch { .. } => "cloudwatch",
        }
    }
}

/// Queries a `cloudwatch` source answers, per executed version of the plan's function.
pub const CLOUDWATCH_QUERIES: &[&str] = &[
    "success-rate",
    "error-rate",
    "errors",
    "invocations",
    "throttles",
    "duration-p50",
    "duration-p90",
    "duration-p99",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub email: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signing {
    Ssh { key: String },
    Gpg { key: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteBack {
    pub branch: String,
    pub author: Identity,
    pub committer: Identity,
    pub skip_ci: bool,
    pub signing: Option<Signing>,
}

impl Default for WriteBack {
    fn default() -> Self {
        let id = Identity {
            name: "rollgate".to_owned(),
            email: "rollgate@localhost".to_owned(),
        };
        Self {
            branch: "main".to_owned(),
            author: id.clone(),
            committer: id,
            skip_ci: false,
            signing: None,
        }
    }
}

/// The metrics source every plan may name without declaring it.
pub const BUILTIN_SOURCE: &str = "builtin";
