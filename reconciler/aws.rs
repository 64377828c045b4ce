//! AWS plumbing shared by the Lambda target and the CloudWatch metrics source: where
//! and as whom to reach AWS ([`AwsAccess`]), the SDK configuration built from it, the
//! endpoint rule, and error text that carries nothing secret.
//!
//! Invariants: credentials come only from the SDK's default chain, the configured
//! named profile, or credentials handed in explicitly (tests, emulators); they are
//! never logged, and neither errors nor `Debug` output carry them (only
//! [`credentials_label`]). An endpoint comes from `rollgate.yaml` (a target's or a
//! source's settings, never a plan) and is `https://` or loopback only
//! ([`check_endpoint`]). The SDK's own log targets ([`SDK_LOG_TARGETS`]) print secrets
//! below info, so `rollgate run` keeps them at info or above.

use std::time::Duration;

/// Static credentials for the SDK (one type, re-exported by every AWS service crate).
pub use aws_sdk_lambda::config::Credentials;

use crate::model::settings::endpoint_problem;

/// The AWS SDK's log targets: at debug they print access key ids, at trace request
/// headers (a session token); `rollgate run` keeps them at info or above.
pub const SDK_LOG_TARGETS: &[&str] = &[
    "aws_config",
    "aws_credential_types",
    "aws_runtime",
    "aws_sigv4",
    "aws_smithy_runtime",
    "aws_smithy_runtime_api",
    "aws_smithy_http_client",
    "aws_sdk_lambda",
    "aws_sdk_cloudwatch",
    "aws_sdk_sts",
];

/// Where and as whom to reach AWS: a region (a plan's workload names it, or a metrics
/// source), and the endpoint and profile of a target or source in `rollgate.yaml`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AwsAccess {
    pub region: String,
    /// Another endpoint (a local emulator, a VPC endpoint).
    pub endpoint: Option<String>,
    /// A named profile of the shared AWS config; `None`: the default credential chain.
    pub profile: Option<String>,
}

impl AwsAccess {
    /// The SDK configuration: the default credential chain (environment, shared files
    /// or `profile`, web identity, container and instance roles) unless `credentials`
    /// are given; each call bounded by `timeout`, with the SDK's standard retries.
    pub async fn load(
        &self,
        credentials: Option<&Credentials>,
        timeout: Duration,
    ) -> aws_config::SdkConfig {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(self.region.clone()))
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .operation_timeout(timeout)
                    .connect_timeout(timeout.min(Duration::from_secs(5)))
                    .build(),
            );
        if let Some(profile) = &self.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(endpoint) = &self.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some(c) = credentials {
            loader = loader.credentials_provider(c.clone());
        }
        loader.load().await
    }
}

/// Refuse an endpoint over plain http to a host that is not loopback (or not a plain
/// `http(s)://host[:port]` URL at all); no endpoint is fine (the region's own).
pub fn check_endpoint(endpoint: Option<&str>) -> anyhow::Result<()> {
    if let Some(problem) = endpoint.and_then(endpoint_problem) {
        anyhow::bail!("{problem}");
    }
    Ok(())
}

/// What `Debug` output says of a client's credentials: whether they were handed in
/// (`static`) or come from the `default chain`; never the credentials themselves.
pub fn credentials_label(credentials: Option<&Credentials>) -> &'static str {
    if credentials.is_some() {
        "static"
    } else {
        "default chain"
    }
}

/// An error and its causes, each once: `dispatch failure: io error: ...`. Only `Display`
/// (the SDK's `DisplayErrorContext` also appends the `Debug` form, with the raw response).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let m = c.to_string();
        if !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        cause = c.source();
    }
    out
}
