//! Wire types: the plan and settings files exactly as users write them.
//!
//! These derive serde and schemars and nothing else; they are the JSON Schema users
//! get from `rollgate schema`. They are checked structurally against that schema
//! (see `schema_check`) and then converted into the validated domain types in
//! `plan`/`settings`. Invariant: no logic lives here beyond field names and shapes.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const API_VERSION: &str = "rollgate.dev/v1alpha1";

/// A rollout plan: `plans/<name>.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields, title = "RolloutPlan")]
pub struct PlanFile {
    /// Always `rollgate.dev/v1alpha1`.
    pub api_version: String,
    /// Always `RolloutPlan`.
    pub kind: String,
    pub metadata: Metadata,
    pub spec: PlanSpec,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Metadata {
    /// A DNS label; must equal the file name without `.yaml`.
    pub name: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct PlanSpec {
    /// A target named in `rollgate.yaml`.
    pub target: String,
    pub workload: Workload,
    /// What is rolled out: an image reference, a version, a path. Changing it starts a rollout.
    pub artifact: String,
    /// Another plan whose successful artifact this plan may take (environment promotion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted_from: Option<String>,
    pub strategy: Strategy,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<Check>,
    /// Job checks run at points of the rollout's life (`onStart`, `beforePromote`,
    /// `afterRollback`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hooks: Option<Hooks>,
    /// Fewer samples than this on either side make a check inconclusive, never a pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_samples: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub windows: Option<Windows>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<Rollback>,
    /// A stage that is not healthy within this time fails (default `10m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline: Option<String>,
    /// How an artifact is rolled out when no version is stable yet (nothing to shift
    /// traffic from or compare with): `direct` (default) deploys it at once at 100%, as
    /// Argo Rollouts does; `steps` walks the strategy's steps anyway (checks judged
    /// against a baseline are skipped, for want of one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_rollout: Option<String>,
    /// A service level objective: no stage advances while its error budget burns too fast.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo: Option<Slo>,
}

/// An SLO gate, judged with the multiwindow burn rates of the Google SRE workbook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Slo {
    /// A Prometheus source named in `rollgate.yaml`.
    pub source: String,
    /// The target success ratio, e.g. `0.999`.
    pub objective: f64,
    /// The SLO's period, e.g. `30d`.
    pub window: String,
    /// PromQL counting good events over `{{window}}`.
    pub good: String,
    /// PromQL counting all events over `{{window}}`.
    pub total: String,
}

/// Where the workload runs; exactly one kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Workload {
    /// Processes on the rollgate host behind its built-in weighted proxy.
    Local(LocalWorkload),
    /// A Deployment in a Kubernetes cluster.
    Kubernetes(KubernetesWorkload),
    /// An AWS Lambda function alias; the artifact is a published version number.
    Lambda(LambdaWorkload),
    /// A Knative Serving Service; the artifact is an image.
    Knative(KnativeWorkload),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct LocalWorkload {
    /// The argv to start one instance; `{{port}}` and `{{version}}` are replaced.
    pub command: Vec<String>,
    /// The address the proxy listens on, e.g. `127.0.0.1:8080`.
    pub listen: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Keep a client on one version by header or cookie value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<Sticky>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct HealthCheck {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Sticky {
    Header(String),
    Cookie(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct KubernetesWorkload {
    pub namespace: String,
    pub deployment: String,
    /// The container whose image is the artifact (default: the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The stable Service (default: the deployment's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// A Gateway API HTTPRoute whose backend weights rollgate owns; without it,
    /// traffic follows the replica ratio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Index of the route rule holding the stable and canary backends (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_rule: Option<u32>,
    /// With a `route`: how many replicas the canary runs. `proportional` (default):
    /// ceil(total × weight / 100), at least one, grown before its traffic moves;
    /// `full`: a full copy of the stable Deployment at any weight (twice the pods, the
    /// canary's pods warm before traffic reaches them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_scale: Option<CanaryScale>,
}

/// How a Gateway API canary is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CanaryScale {
    Proportional,
    Full,
}

/// A function's alias. Where requests go and as whom (`endpoint`, `profile`) is set on
/// the lambda target in `rollgate.yaml`, never in a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct LambdaWorkload {
    /// The function name (not an ARN).
    pub function: String,
    /// The alias whose routing config rollgate shifts, e.g. `live`.
    pub alias: String,
    /// The AWS region, e.g. `eu-west-1`.
    pub region: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct KnativeWorkload {
    pub namespace: String,
    /// The Knative `serving.knative.dev/v1` Service.
    pub service: String,
    /// The container whose image is the artifact (default: the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// How traffic moves to the new artifact; exactly one kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Strategy {
    /// Explicit steps, as in Argo Rollouts.
    Canary(Canary),
    /// A preview copy is checked, then traffic switches all at once.
    BlueGreen(BlueGreen),
    /// A CodeDeploy-style preset such as `Linear10PercentEvery1Minute`, expanded into steps.
    Preset(Preset),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Canary {
    pub steps: Vec<Step>,
    /// What `compare: baseline` judges compare the canary with. `stable` (default): the
    /// stable fleet serving the rest of the traffic. `fresh`: a new copy of the stable
    /// artifact, started beside the canary with the same share of traffic (so steps
    /// weigh at most 50, or 100 as the last move), removed at promotion and rollback.
    /// Targets: `local`, and Kubernetes (replica ratio, or a Gateway API route).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BaselineKind>,
}

/// A canary's baseline: the stable fleet, or a fresh copy of the stable artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BaselineKind {
    Stable,
    Fresh,
}

/// One canary step; exactly one kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Step {
    /// Send this percentage of traffic (0-100) to the candidate.
    SetWeight(i64),
    /// Wait `duration`, or until a promotion when no duration is given.
    Pause(Pause),
    /// Judge the named checks for `duration`.
    Analysis(AnalysisStep),
    /// From this step on, requests meeting every condition of `match` go to the candidate
    /// whatever the weight (`match: []` takes the route away); gone at promotion and
    /// rollback. Targets: `local`, and Kubernetes with a Gateway API route.
    SetHeaderRoute(HeaderRoute),
    /// From this step on, `percent` of the requests the stable version serves are copied
    /// to the candidate: users get the stable answer, the candidate's is measured and
    /// thrown away (`percent: 0` stops it). Targets: `local`, and Kubernetes with a
    /// Gateway API route.
    SetMirror(Mirror),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct HeaderRoute {
    /// Conditions that must all hold.
    #[serde(rename = "match")]
    pub matches: Vec<RequestMatch>,
}

/// One condition: `header` or `cookie` (by name), and `value` (exact), `prefix` or
/// `regex` (must match the whole value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RequestMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// A rollout's header route and mirror in one value: not a file format, the shape the
/// data plane's socket and the dry-run journal carry (`plan::Routing` in the domain).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Routing {
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RequestMatch>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mirror: u8,
    /// A fresh baseline takes the candidate's weight.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub baseline: bool,
}

fn is_zero(n: &u8) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Mirror {
    /// The share (0-100) of requests copied.
    pub percent: i64,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Pause {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct AnalysisStep {
    pub checks: Vec<String>,
    pub duration: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct BlueGreen {
    /// Checks judged against the preview before the switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<AnalysisStep>,
    /// Switch as soon as the preview passes (default true); otherwise wait for a promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_promote: Option<bool>,
    /// How long the old version keeps running after the switch (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_delay: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Preset {
    /// `CanaryNPercentMMinutes`, `LinearNPercentEveryMMinutes` or `AllAtOnce`.
    pub name: String,
    /// Checks judged during each interval; without them each interval is a pause.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Check {
    pub name: String,
    /// `builtin`, or a metrics source named in `rollgate.yaml` (a metric check; a job
    /// check has `job` instead of `source`, `query` and `judge`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// For `builtin`: `success-rate`, `error-rate`, `latency-p50|p95|p99`; for Prometheus:
    /// PromQL; for a `web` source: what `{{query}}` in its URL or body becomes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<Judge>,
    /// A one-shot job that must succeed (a smoke or load test), run by the plan's
    /// target: it passes when the job succeeds and fails the step when it fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<Job>,
    /// How often a measurement is taken (default `30s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Failed measurements tolerated before the check fails (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_limit: Option<u32>,
    /// Consecutive errors (source unreachable) tolerated before the stage holds (default 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_error_limit: Option<u32>,
    /// Prometheus: PromQL counting the events behind the value over `{{window}}` (e.g.
    /// requests), compared with `minSamples`; without it, samples are the data points.
    /// (A `web` source counts with its own `samplesPath`.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples_query: Option<String>,
}

/// A job check's run: `command` on a `local` target, `template` on a `kubernetes` one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Job {
    /// Local targets: the argv, run without a shell in a cleared environment (plus
    /// `env`); `{{plan}}`, `{{version}}` and `{{baseline}}` are replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Local targets: the job's environment, on top of `PATH`, `HOME` and the locale.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Kubernetes targets: a `batch/v1` JobSpec (its `template` is the pod); rollgate
    /// names, labels, owns and bounds the Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<serde_json::Value>,
    /// A job still running after this fails (default `10m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Kubernetes targets: how long a finished Job is kept before the cluster deletes
    /// it (default `1h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

/// Job checks run at points of a rollout's life, by name.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Hooks {
    /// When a rollout starts, beside the candidate's start; a failure fails the rollout.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_start: Vec<String>,
    /// After the last step, before the promotion; a failure fails the rollout.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub before_promote: Vec<String>,
    /// After a rollback; a failure is reported and never blocks the rollback.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after_rollback: Vec<String>,
}

/// A threshold (`min` and/or `max`) or a comparison with the baseline.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Judge {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// `baseline`: compare the candidate with the stable version statistically.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare: Option<String>,
    /// Which change is harmful: `increase`, `decrease` or `either`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// Largest allowed candidate/baseline ratio (the effect-size threshold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ratio: Option<f64>,
    /// Largest allowed absolute difference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_increase: Option<f64>,
    /// Significance level (default 0.05).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Windows {
    /// Five-field cron expressions; a stage may advance in a minute any of them matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Minutes matched here are closed even when `allow` matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// IANA time zone for the expressions (default `UTC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Rollback {
    /// `revert` (default): push a revert of the plan change; `hold`: restore traffic only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<String>,
    /// A change back to an artifact that was stable this recently skips analysis (default `24h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_window: Option<String>,
}

/// Repository settings: `rollgate.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields, title = "Settings")]
pub struct SettingsFile {
    pub api_version: String,
    /// Always `Settings`.
    pub kind: String,
    #[serde(default)]
    pub targets: BTreeMap<String, Target>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, MetricsSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_back: Option<WriteBack>,
    /// Where every transition is announced, after its status commit is pushed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notify: Vec<Notifier>,
}

/// A named receiver of transitions; exactly one kind (`slack` or `webhook`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct Notifier {
    pub name: String,
    /// A Slack incoming webhook (a Block Kit message per transition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<SlackNotifier>,
    /// A CloudEvents 1.0 structured-mode POST, HMAC-SHA256 signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookNotifier>,
    /// Only plans with all these labels (default: every plan). A plan labelled
    /// `rollgate.dev/notify: "false"` is never announced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plans: Option<PlanSelector>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct SlackNotifier {
    /// Name of the environment variable holding the webhook URL (a secret).
    pub webhook_url_env: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct WebhookNotifier {
    /// Name of the environment variable holding the receiver's URL.
    pub url_env: String,
    /// Name of the environment variable holding the HMAC-SHA256 signing key.
    pub signing_key_env: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct PlanSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
}

/// A named place to deploy to; exactly one kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Target {
    Local(LocalTarget),
    Kubernetes(KubernetesTarget),
    /// AWS Lambda, reached with the default credential chain (or the target's profile).
    Lambda(LambdaTarget),
}

/// Where a Lambda target's signed requests go, and as whom. Here and not in plans:
/// settings changes are reviewed, and a plan must not redirect rollgate's credentials.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct LambdaTarget {
    /// Another Lambda endpoint (a local emulator, a VPC endpoint): `https://`, or
    /// `http://` to a loopback address only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// A named profile of the shared AWS config; default: the default credential chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct LocalTarget {
    /// Where process logs and state live (default `.rollgate/local`, outside the repo).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct KubernetesTarget {
    /// A kubeconfig context; without it, the in-cluster configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_cluster: Option<bool>,
    /// The namespaces plans on this target may use; a plan for another is rejected at
    /// validation. (The daemon's `--namespaces` narrows it further.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<String>>,
}

/// A named metrics source; exactly one kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum MetricsSource {
    Prometheus(PrometheusSource),
    /// Amazon CloudWatch `GetMetricData` over the AWS/Lambda namespace.
    Cloudwatch(CloudwatchSource),
    /// A JSON API over HTTP: one reading per measurement, picked out by a JSONPath.
    Web(WebSource),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct WebSource {
    /// An `http://` URL. `{{plan}}`, `{{version}}`, `{{baseline}}` (empty without one),
    /// `{{window}}` (e.g. `60s`) and `{{query}}` (the check's query) are filled into its
    /// path and query string, URL-encoded; the host and port are fixed.
    pub url: String,
    /// `GET` (default) or `POST`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// `POST` only: the request body, its placeholders filled in as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Header name → the name of the environment variable holding its value (never
    /// one of rollgate's own credentials; over plain http to loopback only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Per-request time limit (default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Where the reading is in the JSON answer, e.g. `$.data.ratio`: a number, or a
    /// boolean as 1/0; `null` is no data.
    pub json_path: String,
    /// Where the count of events behind the reading is; without it, one per reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples_path: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct CloudwatchSource {
    pub region: String,
    /// Another CloudWatch endpoint (a local emulator, a VPC endpoint): `https://`, or
    /// `http://` to a loopback address only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// A named profile of the shared AWS config; default: the default credential chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Per-call time limit (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct PrometheusSource {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Name of an environment variable holding an `Authorization` header value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_header_env: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct WriteBack {
    /// The branch rollgate watches and writes to (default `main`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<Identity>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committer: Option<Identity>,
    /// Append `[skip ci]` to rollgate's commit messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_ci: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing: Option<Signing>,
    /// Where status files are stored: `flat` (`status/<plan>.yaml`), `sharded`
    /// (`status/<hh>/<plan>.yaml`, 256 folders; for thousands of plans), or `auto` (the
    /// default): sharded from 2,000 plans, flat again below 1,000, and in between as the
    /// repository has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_layout: Option<StatusLayout>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum StatusLayout {
    Auto,
    Flat,
    Sharded,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Identity {
    pub name: String,
    pub email: String,
}

/// How rollgate signs its commits; exactly one kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Signing {
    /// An SSH key file (as `git config gpg.format ssh`).
    Ssh(SigningKey),
    /// A GPG key id, signed by the `gpg` program.
    Gpg(SigningKey),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(deny_unknown_fields)]
pub struct SigningKey {
    pub key: String,
}
