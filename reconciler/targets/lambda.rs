//! The AWS Lambda target: traffic shifted by an alias's weighted routing config.
//!
//! ```text
//!   invoke function:live ──┬── 1 - w ──▶ version <stable>      (the alias's FunctionVersion)
//!                          └── w     ──▶ version <candidate>   (RoutingConfig.AdditionalVersionWeights)
//! ```
//!
//! The artifact is a published version number: the build publishes versions, the plan
//! pins one. Nothing is deployed; only the alias moves, through these states:
//!
//! | step                         | alias `FunctionVersion` | `AdditionalVersionWeights` |
//! |------------------------------|-------------------------|----------------------------|
//! | start (0%)                   | stable (unchanged)      | none                       |
//! | `setWeight: w` (0 < w < 100) | stable                  | `{candidate: w/100}`       |
//! | `setWeight: 100`             | candidate               | `{stable: 0.0}`            |
//! | promote                      | candidate               | none                       |
//! | rollback                     | stable                  | none                       |
//!
//! Lambda refuses an additional weight of 1.0 (the alias's own version must keep a
//! share), so 100% points the alias at the candidate and keeps the stable attached at
//! 0%: the same traffic as a promotion, but the alias still says which version it came
//! from until the rollout is promoted (which drops the 0% entry) or rolled back.
//!
//! Invariants: every write is an `UpdateAlias` computed from the `GetAlias` just done and
//! guarded by that read's `RevisionId`, so a concurrent edit is a
//! `PreconditionFailedException` and rollgate reads again and recomputes (a few times,
//! then the step fails and the daemon retries it next pass): never a blind write.
//! `start_candidate` never repoints an existing alias and never creates a missing one (a
//! missing alias is an error telling the operator to create it at the version that
//! serves now: rollgate cannot know it at that point); only `promote` and `rollback`,
//! which name the version that takes all traffic, create it when it is missing.
//! Credentials come only from the SDK's default chain (or the target's named profile);
//! they are never logged, and neither errors nor `Debug` output carry them. Where signed
//! requests go (`endpoint`) and as whom (`profile`) is the target's, from `rollgate.yaml`
//! (reviewed as settings, `https://` or loopback only); a plan names only its region,
//! function and alias, so no plan can send rollgate's credentials to another host.
//!
//! The `Target` trait is synchronous: the target owns a small current-thread tokio
//! runtime and blocks on it for each call, like the Kubernetes target. SDK clients are
//! built lazily, one per (region, endpoint, profile), and cached.
//!
//! One job over 600 lines, kept in one file: the Lambda target: an alias's weights,
//! each update guarded by the revision just read; the pure helpers and their tests are
//! most of the length.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aws_sdk_lambda::Client;
use aws_sdk_lambda::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_lambda::types::{AliasRoutingConfiguration, State};

use super::{Desired, Target, TargetError};
use crate::aws::{Credentials, check_endpoint, credentials_label};
use crate::engine::TargetHealth;
use crate::model::Plan;
use crate::model::plan::{LambdaWorkload, Workload};

/// The AWS plumbing moved to `crate::aws`; re-exported so these paths keep working.
pub use crate::aws::{AwsAccess, SDK_LOG_TARGETS, chain};

/// The IAM actions this target calls (documented in the README).
pub const IAM_ACTIONS: &[&str] = &[
    "lambda:GetFunctionConfiguration",
    "lambda:GetAlias",
    "lambda:UpdateAlias",
    "lambda:CreateAlias",
];

/// How an AWS call failed, as far as the caller needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AwsFailure {
    /// The resource does not exist (`ResourceNotFoundException`).
    NotFound(String),
    /// Optimistic concurrency lost: a stale `RevisionId`, or a create that raced.
    Conflict(String),
    /// Anything else: the service answered with another error, or could not be reached.
    Other(String),
}

impl AwsFailure {
    /// As the daemon decides on it: a missing function or alias is refused (a human
    /// has to act), a lost race a conflict, the rest a failure.
    pub fn into_target_error(self) -> TargetError {
        match self {
            AwsFailure::NotFound(m) => TargetError::refused(m),
            AwsFailure::Conflict(m) => TargetError::conflict(m),
            AwsFailure::Other(m) => TargetError::failed(m),
        }
    }

    pub fn message(&self) -> &str {
        match self {
            AwsFailure::NotFound(m) | AwsFailure::Conflict(m) | AwsFailure::Other(m) => m,
        }
    }
}

/// `what: Code: message` for a service error, `what: cause chain` otherwise. Built from
/// the error's code, message and `Display` chain only (never its `Debug`, which holds
/// the raw response), so nothing of the request's signature or credentials gets in.
pub fn classify<E>(what: &str, e: SdkError<E>) -> AwsFailure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let code = e.code().map(str::to_owned);
    let text = match (&code, e.message()) {
        (Some(code), Some(m)) => format!("{what}: {code}: {}", m.trim_end()),
        (Some(code), None) => format!("{what}: {code}"),
        _ => format!("{what}: {}", chain(&e)),
    };
    match code.as_deref() {
        Some("ResourceNotFoundException") => AwsFailure::NotFound(text),
        Some("PreconditionFailedException" | "ResourceConflictException") => {
            AwsFailure::Conflict(text)
        }
        _ => AwsFailure::Other(text),
    }
}

/// What an alias routes: its version and the additional versions' weights (0.0..1.0).
#[derive(Debug, Clone, PartialEq)]
pub struct AliasState {
    pub version: String,
    pub weights: BTreeMap<String, f64>,
}

impl AliasState {
    pub fn at(version: &str) -> Self {
        Self {
            version: version.to_owned(),
            weights: BTreeMap::new(),
        }
    }

    #[must_use]
    pub fn with(mut self, version: &str, weight: f64) -> Self {
        self.weights.insert(version.to_owned(), weight);
        self
    }
}

/// The stable version of an alias that `candidate` is being rolled out on: the alias's
/// version, or at 100% (the alias already on the candidate) the version kept at 0%.
/// `None` when the alias serves only the candidate.
pub fn stable_of(current: &AliasState, candidate: &str) -> Option<String> {
    if current.version != candidate {
        return Some(current.version.clone());
    }
    current.weights.keys().find(|v| *v != candidate).cloned()
}

/// The alias after `start_candidate`: never repointed; routing to versions other than
/// the candidate (left over from an interrupted rollout) is dropped, so the candidate
/// starts with no traffic unless a re-run finds it already weighted.
pub fn started(current: &AliasState, candidate: &str) -> AliasState {
    if current.version == candidate {
        return current.clone();
    }
    let mut next = AliasState::at(&current.version);
    if let Some(w) = current.weights.get(candidate) {
        next.weights.insert(candidate.to_owned(), *w);
    }
    next
}

/// The alias with `weight`% on `candidate` (see the module table).
pub fn weighted(current: &AliasState, candidate: &str, weight: u8) -> AliasState {
    let Some(stable) = stable_of(current, candidate) else {
        // Only the candidate is there: it already has all the traffic.
        return AliasState::at(candidate);
    };
    match weight {
        0 => AliasState::at(&stable),
        100.. => AliasState::at(candidate).with(&stable, 0.0),
        w => AliasState::at(&stable).with(candidate, f64::from(w) / 100.0),
    }
}

/// The alias after a rollback: all traffic on `stable`, or without one (a first
/// rollout) on the version that is not `candidate`, else where it is; routing cleared.
/// `None` when there is no alias and no stable version to create it at.
pub fn rolled_back(
    current: Option<&AliasState>,
    stable: Option<&str>,
    candidate: Option<&str>,
) -> Option<AliasState> {
    if let Some(s) = stable {
        return Some(AliasState::at(s));
    }
    let current = current?;
    let version = match candidate {
        Some(c) if current.version == c => {
            stable_of(current, c).unwrap_or_else(|| current.version.clone())
        }
        _ => current.version.clone(),
    };
    Some(AliasState::at(&version))
}

/// What `health` expects of the alias for `desired`; `None` when nothing is asked.
/// Without a known stable version (a first rollout), the alias's own is taken.
pub fn expected(desired: &Desired, current: &AliasState) -> Option<AliasState> {
    match &desired.candidate {
        None => desired.stable.as_deref().map(AliasState::at),
        Some(c) => {
            let stable = desired
                .stable
                .clone()
                .or_else(|| stable_of(current, c))
                .filter(|s| s != c);
            Some(match stable {
                Some(s) => weighted(&AliasState::at(&s), c, desired.weight),
                None => AliasState::at(c),
            })
        }
    }
}

/// Whether two alias states send the same traffic: same version, same non-zero weights.
pub fn same_traffic(a: &AliasState, b: &AliasState) -> bool {
    let live = |s: &AliasState| -> Vec<(String, f64)> {
        s.weights
            .iter()
            .filter(|(_, w)| w.abs() > 1e-9)
            .map(|(v, w)| (v.clone(), *w))
            .collect()
    };
    let (wa, wb) = (live(a), live(b));
    a.version == b.version
        && wa.len() == wb.len()
        && wa
            .iter()
            .zip(&wb)
            .all(|((va, xa), (vb, xb))| va == vb && (xa - xb).abs() < 1e-6)
}

/// A published version's readiness, from its `State`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionState {
    /// Active, or Inactive (Lambda reactivates it on its next invocation).
    Ready,
    /// Pending: still being created.
    Pending,
    /// Failed, with Lambda's reason.
    Failed(String),
}

pub fn version_state(state: Option<&State>, reason: Option<&str>) -> VersionState {
    match state {
        Some(State::Active | State::Inactive) | None => VersionState::Ready,
        Some(State::Failed) => VersionState::Failed(reason.unwrap_or("no reason given").to_owned()),
        Some(_) => VersionState::Pending,
    }
}

/// Bounds of the target's calls.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Upper bound on one API call (with the SDK's retries).
    pub call_timeout: Duration,
    /// Reads and writes of one alias before a step gives up on concurrent edits.
    pub max_attempts: u32,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(15),
            max_attempts: 5,
        }
    }
}

/// AWS Lambda as a rollout target.
pub struct LambdaTarget {
    runtime: tokio::runtime::Runtime,
    /// The target's endpoint and profile (from `rollgate.yaml`, never a plan).
    endpoint: Option<String>,
    profile: Option<String>,
    clients: HashMap<AwsAccess, Client>,
    credentials: Option<Credentials>,
    /// The candidate each plan's rollout started (set by `start_candidate`).
    candidates: HashMap<String, String>,
    timing: Timing,
}

impl std::fmt::Debug for LambdaTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the clients or credentials: only where they point.
        let mut regions: Vec<&str> = self.clients.keys().map(|a| a.region.as_str()).collect();
        regions.sort_unstable();
        f.debug_struct("LambdaTarget")
            .field("endpoint", &self.endpoint)
            .field("profile", &self.profile)
            .field("regions", &regions)
            .field("credentials", &credentials_label(self.credentials.as_ref()))
            .field("candidates", &self.candidates)
            .field("timing", &self.timing)
            .finish()
    }
}

impl LambdaTarget {
    /// A target that reaches AWS through `endpoint` (default: the region's own) with the
    /// default credential chain, or `profile`: a `lambda` target's settings. An endpoint
    /// over plain http to a host that is not loopback is refused.
    pub fn new(endpoint: Option<String>, profile: Option<String>) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        check_endpoint(endpoint.as_deref())?;
        Ok(Self {
            runtime: super::kubernetes::runtime().context("cannot start the lambda runtime")?,
            endpoint,
            profile,
            clients: HashMap::new(),
            credentials: None,
            candidates: HashMap::new(),
            timing: Timing::default(),
        })
    }

    /// Use these credentials instead of the default chain (tests, emulators).
    #[must_use]
    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self.clients.clear();
        self
    }

    #[must_use]
    pub fn with_timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    /// The client for a plan's region through this target's endpoint and profile,
    /// built on first use.
    fn alias<'p>(&mut self, plan: &'p Plan) -> Result<Alias<'p>, TargetError> {
        let Workload::Lambda(w) = &plan.workload else {
            return Err(TargetError::failed(format!(
                "plan {} has a {} workload; this target runs lambda workloads",
                plan.name,
                plan.workload.kind()
            )));
        };
        let access = AwsAccess {
            region: w.region.clone(),
            endpoint: self.endpoint.clone(),
            profile: self.profile.clone(),
        };
        let client = match self.clients.get(&access) {
            Some(c) => c.clone(),
            None => {
                let config = self
                    .runtime
                    .block_on(access.load(self.credentials.as_ref(), self.timing.call_timeout));
                let client = Client::new(&config);
                self.clients.insert(access, client.clone());
                client
            }
        };
        Ok(Alias {
            client,
            w,
            max_attempts: self.timing.max_attempts.max(1),
        })
    }

    /// The candidate of a plan's rollout: the one this target started, else the plan's artifact.
    fn candidate(&self, plan: &Plan) -> String {
        self.candidates
            .get(&plan.name)
            .cloned()
            .unwrap_or_else(|| plan.artifact.clone())
    }
}

/// The read of an alias: its state and the revision that guards the next write.
struct Read {
    state: AliasState,
    revision: Option<String>,
}

/// One plan's function and alias, and the calls on them (all async).
struct Alias<'a> {
    client: Client,
    w: &'a LambdaWorkload,
    max_attempts: u32,
}

impl Alias<'_> {
    fn name(&self) -> String {
        format!("{}:{}", self.w.function, self.w.alias)
    }

    async fn read(&self) -> Result<Option<Read>, AwsFailure> {
        let what = format!("cannot read alias {}", self.name());
        match self
            .client
            .get_alias()
            .function_name(&self.w.function)
            .name(&self.w.alias)
            .send()
            .await
        {
            Ok(out) => {
                let version = out
                    .function_version()
                    .ok_or_else(|| AwsFailure::Other(format!("{what}: it has no version")))?;
                let weights = out
                    .routing_config()
                    .and_then(AliasRoutingConfiguration::additional_version_weights)
                    .map(|m| m.iter().map(|(k, v)| (k.clone(), *v)).collect())
                    .unwrap_or_default();
                Ok(Some(Read {
                    state: AliasState {
                        version: version.to_owned(),
                        weights,
                    },
                    revision: out.revision_id().map(str::to_owned),
                }))
            }
            Err(e) => match classify(&what, e) {
                AwsFailure::NotFound(_) => Ok(None),
                f => Err(f),
            },
        }
    }

    fn routing(state: &AliasState) -> AliasRoutingConfiguration {
        AliasRoutingConfiguration::builder()
            .set_additional_version_weights(Some(
                state.weights.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            ))
            .build()
    }

    async fn update(&self, next: &AliasState, revision: &str) -> Result<(), AwsFailure> {
        self.client
            .update_alias()
            .function_name(&self.w.function)
            .name(&self.w.alias)
            .function_version(&next.version)
            .routing_config(Self::routing(next))
            .revision_id(revision)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify(&format!("cannot update alias {}", self.name()), e))
    }

    async fn create(&self, next: &AliasState) -> Result<(), AwsFailure> {
        self.client
            .create_alias()
            .function_name(&self.w.function)
            .name(&self.w.alias)
            .function_version(&next.version)
            .routing_config(Self::routing(next))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| classify(&format!("cannot create alias {}", self.name()), e))
    }

    /// Read, compute the next state with `next`, write it guarded by the read's
    /// revision; on a lost race read again (at most `max_attempts` times).
    /// `next` answers `Ok(None)` when nothing is to be written.
    async fn converge(
        &self,
        next: impl Fn(Option<&AliasState>) -> Result<Option<AliasState>, TargetError>,
    ) -> Result<(), TargetError> {
        let mut last = String::new();
        for attempt in 1..=self.max_attempts {
            let read = self.read().await.map_err(|f| f.into_target_error())?;
            let Some(wanted) = next(read.as_ref().map(|r| &r.state))? else {
                return Ok(());
            };
            let written = match &read {
                Some(r) if r.state == wanted => return Ok(()),
                Some(Read {
                    revision: Some(rev),
                    ..
                }) => self.update(&wanted, rev).await,
                Some(Read { revision: None, .. }) => {
                    return Err(TargetError::failed(format!(
                        "alias {} has no RevisionId; refusing an unguarded write",
                        self.name()
                    )));
                }
                None => self.create(&wanted).await,
            };
            match written {
                Ok(()) => {
                    tracing::info!(
                        function = %self.w.function,
                        alias = %self.w.alias,
                        version = %wanted.version,
                        weights = ?wanted.weights,
                        "alias updated"
                    );
                    return Ok(());
                }
                Err(AwsFailure::Conflict(m)) => {
                    tracing::info!(
                        function = %self.w.function,
                        alias = %self.w.alias,
                        attempt,
                        "the alias changed since it was read; reading it again"
                    );
                    last = m;
                }
                Err(f) => return Err(f.into_target_error()),
            }
        }
        Err(TargetError::conflict(format!(
            "alias {} kept changing while rollgate updated it ({} attempts; last: {last})",
            self.name(),
            self.max_attempts
        )))
    }

    /// The state of a published version; `Ok(None)` when it does not exist.
    async fn version(&self, version: &str) -> Result<Option<VersionState>, AwsFailure> {
        match self
            .client
            .get_function_configuration()
            .function_name(&self.w.function)
            .qualifier(version)
            .send()
            .await
        {
            Ok(out) => Ok(Some(version_state(out.state(), out.state_reason()))),
            Err(e) => match classify(
                &format!(
                    "cannot read version {version} of function {}",
                    self.w.function
                ),
                e,
            ) {
                AwsFailure::NotFound(_) => Ok(None),
                f => Err(f),
            },
        }
    }

    async fn start(&self, candidate: &str) -> Result<(), TargetError> {
        match self
            .version(candidate)
            .await
            .map_err(|f| f.into_target_error())?
        {
            None => {
                return Err(TargetError::failed(format!(
                    "version {candidate} of function {} does not exist (publish it first)",
                    self.w.function
                )));
            }
            Some(VersionState::Pending) => {
                return Err(TargetError::failed(format!(
                    "version {candidate} of function {} is still pending",
                    self.w.function
                )));
            }
            Some(VersionState::Failed(reason)) => {
                return Err(TargetError::failed(format!(
                    "version {candidate} of function {} failed: {reason}",
                    self.w.function
                )));
            }
            Some(VersionState::Ready) => {}
        }
        self.converge(|current| match current {
            Some(c) => Ok(Some(started(c, candidate))),
            None => Err(self.missing()),
        })
        .await
    }

    fn missing(&self) -> TargetError {
        TargetError::failed(format!(
            "alias {} does not exist; create it at the version that serves now \
             (aws lambda create-alias --function-name {} --name {} --function-version N)",
            self.name(),
            self.w.function,
            self.w.alias
        ))
    }

    async fn health(&self, desired: &Desired) -> Result<TargetHealth, AwsFailure> {
        if let Some(c) = &desired.candidate {
            match self.version(c).await? {
                None => {
                    return Ok(TargetHealth::Unhealthy {
                        reason: format!(
                            "version {c} of function {} does not exist",
                            self.w.function
                        ),
                    });
                }
                Some(VersionState::Failed(reason)) => {
                    return Ok(TargetHealth::Unhealthy {
                        reason: format!(
                            "version {c} of function {} failed: {reason}",
                            self.w.function
                        ),
                    });
                }
                Some(VersionState::Pending) => return Ok(TargetHealth::Progressing),
                Some(VersionState::Ready) => {}
            }
        }
        let Some(read) = self.read().await? else {
            if desired.candidate.is_none() && desired.stable.is_none() {
                return Ok(TargetHealth::Healthy);
            }
            return Ok(TargetHealth::Unhealthy {
                reason: format!("alias {} does not exist", self.name()),
            });
        };
        Ok(match expected(desired, &read.state) {
            None => TargetHealth::Healthy,
            Some(e) if same_traffic(&e, &read.state) => TargetHealth::Healthy,
            Some(_) => TargetHealth::Progressing,
        })
    }
}

impl Target for LambdaTarget {
    fn start_candidate(&mut self, plan: &Plan, artifact: &str) -> Result<(), TargetError> {
        let a = self.alias(plan)?;
        self.runtime.block_on(a.start(artifact))?;
        self.candidates
            .insert(plan.name.clone(), artifact.to_owned());
        Ok(())
    }

    fn set_weight(&mut self, plan: &Plan, weight: u8) -> Result<(), TargetError> {
        let candidate = self.candidate(plan);
        let a = self.alias(plan)?;
        self.runtime.block_on(a.converge(|current| match current {
            Some(c) => Ok(Some(weighted(c, &candidate, weight))),
            None => Err(a.missing()),
        }))
    }

    fn promote(&mut self, plan: &Plan, artifact: &str) -> Result<(), TargetError> {
        let a = self.alias(plan)?;
        self.runtime
            .block_on(a.converge(|_| Ok(Some(AliasState::at(artifact)))))?;
        self.candidates.remove(&plan.name);
        Ok(())
    }

    fn rollback(&mut self, plan: &Plan, stable: Option<&str>) -> Result<(), TargetError> {
        let candidate = self.candidate(plan);
        let a = self.alias(plan)?;
        self.runtime
            .block_on(a.converge(|current| Ok(rolled_back(current, stable, Some(&candidate)))))?;
        self.candidates.remove(&plan.name);
        Ok(())
    }

    fn health(&mut self, plan: &Plan, desired: &Desired) -> TargetHealth {
        let a = match self.alias(plan) {
            Ok(a) => a,
            Err(e) => return TargetHealth::Unhealthy { reason: e.message },
        };
        match self.runtime.block_on(a.health(desired)) {
            Ok(h) => h,
            Err(f) => TargetHealth::Unreachable {
                reason: f.message().to_owned(),
            },
        }
    }

    /// The alias keeps its state while the daemon is down: `resume` re-runs the step.
    fn keeps_state_across_restarts(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(stable: Option<&str>, candidate: Option<&str>, weight: u8) -> Desired {
        Desired {
            stable: stable.map(str::to_owned),
            candidate: candidate.map(str::to_owned),
            weight,
            ..Default::default()
        }
    }

    #[test]
    fn weights_go_to_the_routing_config_and_100_points_the_alias_at_the_candidate() {
        let live = AliasState::at("1");
        assert_eq!(weighted(&live, "2", 0), AliasState::at("1"));
        assert_eq!(weighted(&live, "2", 10), AliasState::at("1").with("2", 0.1));
        assert_eq!(
            weighted(&live, "2", 99),
            AliasState::at("1").with("2", 0.99)
        );
        let full = weighted(&live, "2", 100);
        assert_eq!(full, AliasState::at("2").with("1", 0.0));
        // From 100% the stable is still known, so any weight can be set again.
        assert_eq!(stable_of(&full, "2").as_deref(), Some("1"));
        assert_eq!(weighted(&full, "2", 50), AliasState::at("1").with("2", 0.5));
        assert_eq!(weighted(&full, "2", 100), full);
        // An alias that serves only the candidate keeps serving it.
        assert_eq!(weighted(&AliasState::at("2"), "2", 30), AliasState::at("2"));
    }

    #[test]
    fn start_never_repoints_and_drops_leftover_routing() {
        let leftover = AliasState::at("1").with("3", 0.2);
        assert_eq!(started(&leftover, "2"), AliasState::at("1"));
        // A re-run keeps the split that set_weight chose.
        let running = AliasState::at("1").with("2", 0.25);
        assert_eq!(started(&running, "2"), running);
        let full = AliasState::at("2").with("1", 0.0);
        assert_eq!(started(&full, "2"), full);
    }

    #[test]
    fn rollback_goes_to_the_stable_version_and_clears_routing() {
        let at25 = AliasState::at("1").with("2", 0.25);
        let full = AliasState::at("2").with("1", 0.0);
        assert_eq!(
            rolled_back(Some(&at25), Some("1"), Some("2")),
            Some(AliasState::at("1"))
        );
        assert_eq!(
            rolled_back(Some(&full), Some("1"), Some("2")),
            Some(AliasState::at("1"))
        );
        // No stable version known: the version that is not the candidate.
        assert_eq!(
            rolled_back(Some(&full), None, Some("2")),
            Some(AliasState::at("1"))
        );
        assert_eq!(
            rolled_back(Some(&at25), None, Some("2")),
            Some(AliasState::at("1"))
        );
        assert_eq!(rolled_back(None, None, Some("2")), None);
        assert_eq!(
            rolled_back(None, Some("1"), Some("2")),
            Some(AliasState::at("1"))
        );
    }

    #[test]
    fn health_expects_what_the_step_wrote() {
        let at10 = AliasState::at("1").with("2", 0.1);
        assert_eq!(
            expected(&d(Some("1"), Some("2"), 10), &at10),
            Some(at10.clone())
        );
        // A first rollout (no stable in Git) takes the alias's own version as stable.
        assert_eq!(expected(&d(None, Some("2"), 10), &at10), Some(at10.clone()));
        assert_eq!(
            expected(&d(Some("1"), Some("2"), 100), &at10),
            Some(AliasState::at("2").with("1", 0.0))
        );
        assert_eq!(
            expected(&d(Some("2"), None, 0), &at10),
            Some(AliasState::at("2"))
        );
        assert_eq!(expected(&d(None, None, 0), &at10), None);
    }

    #[test]
    fn traffic_is_compared_without_zero_weights_and_with_float_tolerance() {
        let full = AliasState::at("2").with("1", 0.0);
        assert!(same_traffic(&full, &AliasState::at("2")));
        assert!(same_traffic(
            &AliasState::at("1").with("2", 0.1),
            &AliasState::at("1").with("2", 0.1000000001)
        ));
        assert!(!same_traffic(
            &AliasState::at("1").with("2", 0.1),
            &AliasState::at("1").with("2", 0.25)
        ));
        assert!(!same_traffic(&AliasState::at("1"), &AliasState::at("2")));
        assert!(!same_traffic(
            &AliasState::at("1").with("2", 0.1),
            &AliasState::at("1").with("3", 0.1)
        ));
    }

    #[test]
    fn version_states() {
        assert_eq!(
            version_state(Some(&State::Active), None),
            VersionState::Ready
        );
        assert_eq!(
            version_state(Some(&State::Inactive), None),
            VersionState::Ready
        );
        assert_eq!(
            version_state(Some(&State::Pending), None),
            VersionState::Pending
        );
        assert_eq!(
            version_state(Some(&State::Failed), Some("InvalidImage")),
            VersionState::Failed("InvalidImage".to_owned())
        );
    }
}
