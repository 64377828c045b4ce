//! Domain types of a rollout plan: validated, defaulted, with presets expanded.
//!
//! Built only by `validate`; every value here has passed every check, so the engine
//! never re-checks. `to_wire` turns a plan back into its file form: validating that
//! again yields the same plan (a property test holds us to it).

use std::collections::BTreeMap;
use std::time::Duration;

use super::duration;
use super::window::Windows;
use super::wire;

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub target: String,
    pub workload: Workload,
    pub artifact: String,
    pub promoted_from: Option<String>,
    pub strategy: Strategy,
    pub checks: Vec<Check>,
    /// Job checks (`spec.checks` entries with a `job:`), named like metric checks.
    pub jobs: Vec<JobCheck>,
    pub hooks: Hooks,
    pub min_samples: u64,
    pub windows: Windows,
    pub rollback: RollbackPolicy,
    pub progress_deadline: Duration,
    pub slo: Option<Slo>,
    /// How the artifact is rolled out when no version is stable yet.
    pub first_rollout: FirstRollout,
}

/// How a rollout starts when there is no stable version (`spec.firstRollout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FirstRollout {
    /// Deploy the artifact at once as the stable version at 100% (Argo Rollouts' way):
    /// there is no other version to share traffic with or to compare against.
    #[default]
    Direct,
    /// Walk the strategy's steps anyway; checks judged against a baseline are skipped.
    Steps,
}

impl FirstRollout {
    pub const ALL: [FirstRollout; 2] = [FirstRollout::Direct, FirstRollout::Steps];

    pub fn as_str(self) -> &'static str {
        match self {
            FirstRollout::Direct => "direct",
            FirstRollout::Steps => "steps",
        }
    }

    pub fn parse(s: &str) -> Option<FirstRollout> {
        Self::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Slo {
    pub source: String,
    pub objective: f64,
    pub window: Duration,
    pub good: String,
    pub total: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Workload {
    Local(LocalWorkload),
    Kubernetes(KubernetesWorkload),
    Lambda(LambdaWorkload),
    Knative(KnativeWorkload),
}

impl Workload {
    /// The kind of target this workload runs on (`rollgate.yaml` target kinds).
    pub fn target_kind(&self) -> &'static str {
        match self {
            Workload::Local(_) => "local",
            Workload::Kubernetes(_) | Workload::Knative(_) => "kubernetes",
            Workload::Lambda(_) => "lambda",
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Workload::Local(_) => "local",
            Workload::Kubernetes(_) => "kubernetes",
            Workload::Lambda(_) => "lambda",
            Workload::Knative(_) => "knative",
        }
    }

    /// What this workload's target can do with traffic besides weights. Validation
    /// refuses a step the target cannot take, so no target is asked for one at run time
    /// (the `Target` contract holds every target to what it claims here).
    pub fn capabilities(&self) -> Capabilities {
        match self {
            Workload::Local(_)
            | Workload::Kubernetes(KubernetesWorkload {
                traffic: Traffic::GatewayRoute { .. },
                ..
            }) => Capabilities {
                header_route: true,
                tag_header_route: true,
                mirror: true,
                fresh_baseline: true,
            },
            // A Knative Service routes a header only by its tag header.
            Workload::Knative(_) => Capabilities {
                tag_header_route: true,
                ..Capabilities::default()
            },
            // Replica ratio has no router to ask, but a third Deployment takes its share
            // by its replicas (`<deployment>-baseline`); Lambda aliases route by weight only.
            Workload::Kubernetes(_) => Capabilities {
                fresh_baseline: true,
                ..Capabilities::default()
            },
            Workload::Lambda(_) => Capabilities::default(),
        }
    }
}

/// Traffic shaping beyond weights that a target supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// `setHeaderRoute`: requests matching headers or cookies go to the candidate.
    pub header_route: bool,
    /// `setHeaderRoute` with the one match Knative's tag header routing can express:
    /// `Knative-Serving-Tag` equal to a tag ([`knative_tag`]). Implied by `header_route`.
    pub tag_header_route: bool,
    /// `setMirror`: a share of requests copied to the candidate, answers discarded.
    pub mirror: bool,
    /// `baseline: fresh`: a third copy running the stable artifact takes the canary's
    /// share, for baseline judges to compare with.
    pub fresh_baseline: bool,
}

impl Capabilities {
    /// Whether a header route of `matches` can be taken (no matches: no route, always).
    pub fn routes_by(&self, matches: &[RequestMatch]) -> bool {
        matches.is_empty()
            || self.header_route
            || (self.tag_header_route && knative_tag(matches).is_some())
    }
}

/// The header Knative Serving routes by tag (with `tag-header-based-routing` enabled):
/// a request carrying `Knative-Serving-Tag: T` goes to the revision tagged `T`.
pub const TAG_HEADER: &str = "Knative-Serving-Tag";

/// The tag a header route names when it is exactly one exact match on [`TAG_HEADER`]
/// whose value can be a Knative traffic tag (a DNS-1035 label: lowercase letters,
/// digits and `-`, a letter first, no `-` last, at most 63 characters).
pub fn knative_tag(matches: &[RequestMatch]) -> Option<&str> {
    let [m] = matches else { return None };
    let (MatchOn::Header(h), MatchValue::Exact(tag)) = (&m.on, &m.value) else {
        return None;
    };
    let b = tag.as_bytes();
    let label = (1..=63).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[b.len() - 1] != b'-';
    (h.eq_ignore_ascii_case(TAG_HEADER) && label).then_some(tag.as_str())
}

/// The workloads that support header routes and mirrors, for help lines.
pub const SHAPING_WORKLOADS: &str =
    "local workloads and Kubernetes workloads with a Gateway API route";

/// The workloads that support `baseline: fresh`, for help lines.
pub const FRESH_BASELINE_WORKLOADS: &str =
    "local workloads and Kubernetes workloads (replica ratio or a Gateway API route)";

#[derive(Debug, Clone, PartialEq)]
pub struct LocalWorkload {
    pub command: Vec<String>,
    pub listen: std::net::SocketAddr,
    pub health_path: String,
    pub health_status: u16,
    pub health_timeout: Duration,
    pub env: BTreeMap<String, String>,
    pub sticky: Option<Sticky>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    Header(String),
    Cookie(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesWorkload {
    pub namespace: String,
    pub deployment: String,
    pub container: Option<String>,
    pub service: String,
    pub traffic: Traffic,
}

/// An AWS Lambda alias; artifacts are published version numbers. Where requests go and
/// as whom is the target's (`settings::Target::Lambda`), never the plan's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LambdaWorkload {
    pub function: String,
    pub alias: String,
    pub region: String,
}

/// A Knative Serving Service; artifacts are images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnativeWorkload {
    pub namespace: String,
    pub service: String,
    pub container: Option<String>,
}

/// How a Gateway API canary Deployment is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CanaryScale {
    /// ceil(total × weight / 100) replicas, at least one: it grows before its traffic
    /// moves and shrinks after the traffic has left (Argo Rollouts'
    /// `dynamicStableScale`, without scaling the stable down).
    #[default]
    Proportional,
    /// A full copy of the stable Deployment, whatever the weight.
    Full,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Traffic {
    /// Weights of the stable and canary backendRefs in one HTTPRoute rule; the canary
    /// sized by `scale`.
    GatewayRoute {
        route: String,
        rule: u32,
        scale: CanaryScale,
    },
    /// Canary replicas = ceil(total × weight / 100).
    ReplicaRatio,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Strategy {
    Canary {
        steps: Vec<Step>,
        baseline: Baseline,
    },
    BlueGreen(BlueGreen),
}

impl Strategy {
    /// A canary of `steps` judged against the stable fleet (the default baseline).
    pub fn canary(steps: Vec<Step>) -> Strategy {
        Strategy::Canary {
            steps,
            baseline: Baseline::Stable,
        }
    }

    /// Whether a fresh baseline runs beside the canary (`baseline: fresh`).
    pub fn fresh_baseline(&self) -> bool {
        matches!(
            self,
            Strategy::Canary {
                baseline: Baseline::Fresh,
                ..
            }
        )
    }
}

/// What a canary's `compare: baseline` judges compare it with (`strategy.canary.baseline`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Baseline {
    /// The long-running stable fleet, serving the rest of the traffic.
    #[default]
    Stable,
    /// Kayenta's fresh baseline: a new copy of the stable artifact, started beside the
    /// canary and given the same share of traffic (so a step weighs at most 50, or 100
    /// as the last move); removed at promotion, rollback and `setWeight: 100`.
    Fresh,
}

/// The highest canary weight that leaves a fresh baseline an equal share (below 100).
pub const MAX_WEIGHT_WITH_FRESH_BASELINE: u8 = 50;

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    SetWeight(u8),
    /// `None`: untimed, waits for a promotion.
    Pause(Option<Duration>),
    Analysis(Analysis),
    /// From here on, a request meeting every condition goes to the candidate whatever
    /// the weight; an empty list takes the route away.
    SetHeaderRoute(Vec<RequestMatch>),
    /// From here on, this share (0-100) of the requests the stable version serves is
    /// copied to the candidate, whose answers are measured and thrown away; 0 stops it.
    SetMirror(u8),
}

impl Step {
    /// The file form of this step.
    pub fn to_wire(&self) -> wire::Step {
        match self {
            Step::SetWeight(w) => wire::Step::SetWeight(i64::from(*w)),
            Step::Pause(d) => wire::Step::Pause(wire::Pause {
                duration: d.map(duration::format),
            }),
            Step::Analysis(a) => wire::Step::Analysis(analysis_to_wire(a)),
            Step::SetHeaderRoute(m) => wire::Step::SetHeaderRoute(wire::HeaderRoute {
                matches: m.iter().map(match_to_wire).collect(),
            }),
            Step::SetMirror(p) => wire::Step::SetMirror(wire::Mirror {
                percent: i64::from(*p),
            }),
        }
    }
}

/// One condition on a request: a header or a cookie, by value, prefix or pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestMatch {
    pub on: MatchOn,
    pub value: MatchValue,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatchOn {
    /// A header, by name (case-insensitive).
    Header(String),
    /// A cookie of the `Cookie` header, by name (case-sensitive).
    Cookie(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatchValue {
    Exact(String),
    Prefix(String),
    /// A regular expression (Rust `regex` syntax, checked at validation) that must match
    /// the whole value.
    Regex(String),
}

/// What a rollout's traffic holds besides the weight at one step: the header route and
/// the mirror set by the steps so far, and whether a fresh baseline runs (all end at
/// promotion and rollback).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Routing {
    /// Requests meeting every condition go to the candidate; empty: no such route.
    pub matches: Vec<RequestMatch>,
    /// The share (0-100) of stable-served requests copied to the candidate.
    pub mirror: u8,
    /// A fresh baseline: a new copy of the stable artifact serves the candidate's
    /// weight (`baseline_weight`), the stable fleet the rest.
    pub baseline: bool,
}

impl Routing {
    /// No header route, no mirror, no fresh baseline: weights only.
    pub fn is_empty(&self) -> bool {
        self.matches.is_empty() && self.mirror == 0 && !self.baseline
    }

    /// The fresh baseline's share at candidate weight `weight`: the same, as far as the
    /// stable fleet has it to give (validation keeps weights at 50 or below, or 100).
    pub fn baseline_weight(&self, weight: u8) -> u8 {
        if self.baseline {
            weight.min(100 - weight.min(100))
        } else {
            0
        }
    }

    /// The routing in force at step `step` of `steps` (the steps before it and itself;
    /// past the end, the last one's).
    pub fn at(steps: &[Step], step: usize) -> Routing {
        let mut r = Routing::default();
        for s in steps.iter().take(step.saturating_add(1)) {
            match s {
                Step::SetHeaderRoute(m) => r.matches.clone_from(m),
                Step::SetMirror(p) => r.mirror = *p,
                _ => {}
            }
        }
        r
    }

    /// `at`, with a fresh baseline when `fresh` (the plan asks for one and there is a
    /// stable artifact to copy) while the weight in force is above 0 and below 100.
    pub fn at_with_baseline(steps: &[Step], step: usize, fresh: bool) -> Routing {
        let weight = steps[..steps.len().min(step.saturating_add(1))]
            .iter()
            .rev()
            .find_map(|s| match s {
                Step::SetWeight(w) => Some(*w),
                _ => None,
            })
            .unwrap_or(0);
        Routing {
            baseline: fresh && (1..100).contains(&weight),
            ..Routing::at(steps, step)
        }
    }
}

impl Routing {
    /// The serde form (data plane socket, dry-run journal).
    pub fn to_wire(&self) -> wire::Routing {
        wire::Routing {
            matches: self.matches.iter().map(match_to_wire).collect(),
            mirror: self.mirror,
            baseline: self.baseline,
        }
    }

    /// Back from the serde form; `None` when a match does not name exactly one of
    /// header/cookie and one of value/prefix/regex.
    pub fn from_wire(w: &wire::Routing) -> Option<Routing> {
        let matches = w
            .matches
            .iter()
            .map(|m| {
                let on = match (&m.header, &m.cookie) {
                    (Some(h), None) => MatchOn::Header(h.clone()),
                    (None, Some(c)) => MatchOn::Cookie(c.clone()),
                    _ => return None,
                };
                let value = match (&m.value, &m.prefix, &m.regex) {
                    (Some(v), None, None) => MatchValue::Exact(v.clone()),
                    (None, Some(p), None) => MatchValue::Prefix(p.clone()),
                    (None, None, Some(r)) => MatchValue::Regex(r.clone()),
                    _ => return None,
                };
                Some(RequestMatch { on, value })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Routing {
            matches,
            mirror: w.mirror.min(100),
            baseline: w.baseline,
        })
    }
}

impl std::fmt::Display for RequestMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.on {
            MatchOn::Header(h) => write!(f, "header {h}")?,
            MatchOn::Cookie(c) => write!(f, "cookie {c}")?,
        }
        match &self.value {
            MatchValue::Exact(v) => write!(f, " = {v:?}"),
            MatchValue::Prefix(v) => write!(f, " starts with {v:?}"),
            MatchValue::Regex(v) => write!(f, " matches /{v}/"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Analysis {
    pub checks: Vec<String>,
    pub duration: Duration,
    /// Set on the steps `Plan::steps` adds for `spec.hooks` (their job checks, once).
    pub hook: Option<HookPoint>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BlueGreen {
    pub preview: Option<Analysis>,
    pub auto_promote: bool,
    pub scale_down_delay: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub name: String,
    pub source: String,
    pub query: String,
    pub judge: Judge,
    pub interval: Duration,
    pub failure_limit: u32,
    pub consecutive_error_limit: u32,
    pub samples_query: Option<String>,
}

/// A one-shot check: a job that must succeed, run by the plan's target.
#[derive(Debug, Clone, PartialEq)]
pub struct JobCheck {
    pub name: String,
    pub run: JobRun,
    /// A job still running after this fails.
    pub timeout: Duration,
}

/// What a job runs, by the kind of target.
#[derive(Debug, Clone, PartialEq)]
pub enum JobRun {
    /// A local target: an argv without a shell, in a cleared environment plus `env`.
    Command {
        command: Vec<String>,
        env: BTreeMap<String, String>,
    },
    /// A Kubernetes target: a `batch/v1` JobSpec, kept `ttl` after it finished.
    Kubernetes {
        template: serde_json::Value,
        ttl: Duration,
    },
}

/// Job checks run at points of a rollout's life (names of `Plan::jobs`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hooks {
    /// When the rollout starts; a failure fails it.
    pub on_start: Vec<String>,
    /// After the last step, before the promotion; a failure fails it.
    pub before_promote: Vec<String>,
    /// After a rollback; a failure is reported, never blocks.
    pub after_rollback: Vec<String>,
}

/// When a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookPoint {
    OnStart,
    BeforePromote,
    AfterRollback,
}

impl HookPoint {
    pub fn as_str(self) -> &'static str {
        match self {
            HookPoint::OnStart => "onStart",
            HookPoint::BeforePromote => "beforePromote",
            HookPoint::AfterRollback => "afterRollback",
        }
    }
}

impl Hooks {
    pub fn at(&self, point: HookPoint) -> &[String] {
        match point {
            HookPoint::OnStart => &self.on_start,
            HookPoint::BeforePromote => &self.before_promote,
            HookPoint::AfterRollback => &self.after_rollback,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.on_start.is_empty() && self.before_promote.is_empty() && self.after_rollback.is_empty()
    }
}

pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(600);
pub const DEFAULT_JOB_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Increase,
    Decrease,
    Either,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Increase => "increase",
            Direction::Decrease => "decrease",
            Direction::Either => "either",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Judge {
    Threshold {
        min: Option<f64>,
        max: Option<f64>,
    },
    Baseline {
        direction: Direction,
        max_ratio: Option<f64>,
        max_increase: Option<f64>,
        alpha: f64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    Revert,
    Hold,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollbackPolicy {
    pub on_failure: OnFailure,
    pub rollback_window: Duration,
}

pub const DEFAULT_MIN_SAMPLES: u64 = 100;
pub const DEFAULT_ALPHA: f64 = 0.05;
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_CONSECUTIVE_ERROR_LIMIT: u32 = 4;
pub const DEFAULT_PROGRESS_DEADLINE: Duration = Duration::from_secs(600);
pub const DEFAULT_ROLLBACK_WINDOW: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_SCALE_DOWN_DELAY: Duration = Duration::from_secs(30);

impl Plan {
    /// The steps the rollout walks through (blue-green is one switch after its preview).
    /// Hooks are steps too: `onStart` an analysis of its jobs first (beside the
    /// candidate's start, before any traffic), `beforePromote` one last (for blue-green,
    /// before the switch), each with duration 0: the jobs run once and must succeed.
    pub fn steps(&self) -> Vec<Step> {
        let hook = |point: HookPoint| {
            let checks = self.hooks.at(point);
            (!checks.is_empty()).then(|| {
                Step::Analysis(Analysis {
                    checks: checks.to_vec(),
                    duration: Duration::ZERO,
                    hook: Some(point),
                })
            })
        };
        let mut s: Vec<Step> = hook(HookPoint::OnStart).into_iter().collect();
        match &self.strategy {
            Strategy::Canary { steps, .. } => {
                s.extend(steps.iter().cloned());
                s.extend(hook(HookPoint::BeforePromote));
            }
            Strategy::BlueGreen(bg) => {
                s.push(Step::SetWeight(0));
                if let Some(a) = &bg.preview {
                    s.push(Step::Analysis(a.clone()));
                }
                if !bg.auto_promote {
                    s.push(Step::Pause(None));
                }
                s.extend(hook(HookPoint::BeforePromote));
                s.push(Step::SetWeight(100));
            }
        }
        s
    }

    /// The metric check `name` (`None` for a job check: see `job`).
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// The job check `name`.
    pub fn job(&self, name: &str) -> Option<&JobCheck> {
        self.jobs.iter().find(|c| c.name == name)
    }

    /// The file form of this plan.
    pub fn to_wire(&self) -> wire::PlanFile {
        wire::PlanFile {
            api_version: wire::API_VERSION.to_owned(),
            kind: "RolloutPlan".to_owned(),
            metadata: wire::Metadata {
                name: self.name.clone(),
                labels: self.labels.clone(),
                annotations: self.annotations.clone(),
            },
            spec: wire::PlanSpec {
                target: self.target.clone(),
                workload: match &self.workload {
                    Workload::Local(l) => wire::Workload::Local(wire::LocalWorkload {
                        command: l.command.clone(),
                        listen: l.listen.to_string(),
                        health_check: Some(wire::HealthCheck {
                            path: l.health_path.clone(),
                            expect_status: Some(l.health_status),
                            timeout: Some(duration::format(l.health_timeout)),
                        }),
                        env: l.env.clone(),
                        sticky: l.sticky.as_ref().map(|s| match s {
                            Sticky::Header(h) => wire::Sticky::Header(h.clone()),
                            Sticky::Cookie(c) => wire::Sticky::Cookie(c.clone()),
                        }),
                    }),
                    Workload::Kubernetes(k) => {
                        wire::Workload::Kubernetes(wire::KubernetesWorkload {
                            namespace: k.namespace.clone(),
                            deployment: k.deployment.clone(),
                            container: k.container.clone(),
                            service: Some(k.service.clone()),
                            route: match &k.traffic {
                                Traffic::GatewayRoute { route, .. } => Some(route.clone()),
                                Traffic::ReplicaRatio => None,
                            },
                            route_rule: match &k.traffic {
                                Traffic::GatewayRoute { rule, .. } => Some(*rule),
                                Traffic::ReplicaRatio => None,
                            },
                            canary_scale: match &k.traffic {
                                Traffic::GatewayRoute {
                                    scale: CanaryScale::Full,
                                    ..
                                } => Some(wire::CanaryScale::Full),
                                _ => None,
                            },
                        })
                    }
                    Workload::Lambda(l) => wire::Workload::Lambda(wire::LambdaWorkload {
                        function: l.function.clone(),
                        alias: l.alias.clone(),
                        region: l.region.clone(),
                    }),
                    Workload::Knative(k) => wire::Workload::Knative(wire::KnativeWorkload {
                        namespace: k.namespace.clone(),
                        service: k.service.clone(),
                        container: k.container.clone(),
                    }),
                },
                artifact: self.artifact.clone(),
                promoted_from: self.promoted_from.clone(),
                strategy: match &self.strategy {
                    Strategy::Canary { steps, baseline } => wire::Strategy::Canary(wire::Canary {
                        steps: steps.iter().map(Step::to_wire).collect(),
                        baseline: match baseline {
                            Baseline::Stable => None,
                            Baseline::Fresh => Some(wire::BaselineKind::Fresh),
                        },
                    }),
                    Strategy::BlueGreen(bg) => wire::Strategy::BlueGreen(wire::BlueGreen {
                        preview: bg.preview.as_ref().map(analysis_to_wire),
                        auto_promote: Some(bg.auto_promote),
                        scale_down_delay: Some(duration::format(bg.scale_down_delay)),
                    }),
                },
                checks: self
                    .checks
                    .iter()
                    .map(|c| wire::Check {
                        name: c.name.clone(),
                        source: Some(c.source.clone()),
                        query: Some(c.query.clone()),
                        job: None,
                        judge: Some(match &c.judge {
                            Judge::Threshold { min, max } => wire::Judge {
                                min: *min,
                                max: *max,
                                ..Default::default()
                            },
                            Judge::Baseline {
                                direction,
                                max_ratio,
                                max_increase,
                                alpha,
                            } => wire::Judge {
                                compare: Some("baseline".to_owned()),
                                direction: Some(direction.as_str().to_owned()),
                                max_ratio: *max_ratio,
                                max_increase: *max_increase,
                                alpha: Some(*alpha),
                                ..Default::default()
                            },
                        }),
                        interval: Some(duration::format(c.interval)),
                        failure_limit: Some(c.failure_limit),
                        consecutive_error_limit: Some(c.consecutive_error_limit),
                        samples_query: c.samples_query.clone(),
                    })
                    .chain(self.jobs.iter().map(job_to_wire))
                    .collect(),
                hooks: (!self.hooks.is_empty()).then(|| wire::Hooks {
                    on_start: self.hooks.on_start.clone(),
                    before_promote: self.hooks.before_promote.clone(),
                    after_rollback: self.hooks.after_rollback.clone(),
                }),
                min_samples: Some(self.min_samples),
                windows: Some(wire::Windows {
                    allow: self.windows.allow.iter().map(|c| c.text.clone()).collect(),
                    deny: self.windows.deny.iter().map(|c| c.text.clone()).collect(),
                    timezone: self.windows.timezone.map(|t| t.name().to_owned()),
                }),
                rollback: Some(wire::Rollback {
                    on_failure: Some(
                        match self.rollback.on_failure {
                            OnFailure::Revert => "revert",
                            OnFailure::Hold => "hold",
                        }
                        .to_owned(),
                    ),
                    rollback_window: Some(duration::format(self.rollback.rollback_window)),
                }),
                progress_deadline: Some(duration::format(self.progress_deadline)),
                first_rollout: Some(self.first_rollout.as_str().to_owned()),
                slo: self.slo.as_ref().map(|s| wire::Slo {
                    source: s.source.clone(),
                    objective: s.objective,
                    window: duration::format(s.window),
                    good: s.good.clone(),
                    total: s.total.clone(),
                }),
            },
        }
    }
}

fn match_to_wire(m: &RequestMatch) -> wire::RequestMatch {
    let (header, cookie) = match &m.on {
        MatchOn::Header(h) => (Some(h.clone()), None),
        MatchOn::Cookie(c) => (None, Some(c.clone())),
    };
    let (value, prefix, regex) = match &m.value {
        MatchValue::Exact(v) => (Some(v.clone()), None, None),
        MatchValue::Prefix(v) => (None, Some(v.clone()), None),
        MatchValue::Regex(v) => (None, None, Some(v.clone())),
    };
    wire::RequestMatch {
        header,
        cookie,
        value,
        prefix,
        regex,
    }
}

fn analysis_to_wire(a: &Analysis) -> wire::AnalysisStep {
    wire::AnalysisStep {
        checks: a.checks.clone(),
        duration: duration::format(a.duration),
    }
}

fn job_to_wire(j: &JobCheck) -> wire::Check {
    let (command, env, template, ttl) = match &j.run {
        JobRun::Command { command, env } => (Some(command.clone()), env.clone(), None, None),
        JobRun::Kubernetes { template, ttl } => (
            None,
            BTreeMap::new(),
            Some(template.clone()),
            Some(duration::format(*ttl)),
        ),
    };
    wire::Check {
        name: j.name.clone(),
        source: None,
        query: None,
        judge: None,
        job: Some(wire::Job {
            command,
            env,
            template,
            timeout: Some(duration::format(j.timeout)),
            ttl,
        }),
        interval: None,
        failure_limit: None,
        consecutive_error_limit: None,
        samples_query: None,
    }
}
