//! Where rollouts happen: the `Target` extension point.
//!
//! One trait, one file per implementation (`dry_run.rs`, `local.rs`; `kubernetes.rs`
//! for Deployments and `knative.rs` for Knative Services, two targets on one shared
//! cluster connection, between which `KubernetesTarget` picks by the plan's workload
//! kind; `lambda.rs` shifts an AWS Lambda alias's weights).
//! Every method is idempotent: the daemon may call any of them
//! again after a crash or a lost race, and the target converges to the same state.
//! `contract` holds the test every implementation must pass.
//! Job checks have their own narrow trait, `jobs::JobRunner` (`local_jobs.rs`,
//! `kubernetes/jobs.rs`), built beside the target by `factory`.

pub mod contract;
pub mod dry_run;
pub mod factory;
pub mod jobs;
pub mod knative;
pub mod kubernetes;
pub mod lambda;
pub mod local;
pub mod local_jobs;

use crate::engine::TargetHealth;
use crate::model::Plan;
use crate::model::plan::Routing;

/// What the target should look like now, for health checks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Desired {
    pub stable: Option<String>,
    /// `None` when no candidate should be running.
    pub candidate: Option<String>,
    pub weight: u8,
    /// The header route and mirror in force (empty without a candidate).
    pub routing: Routing,
}

/// An error talking to the target. The rollout holds; it never counts as a pass.
/// `kind` is what the daemon decides on: a lost race (`Conflict`) is tried again on the
/// next pass without holding the rollout; anything else holds it and backs off.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TargetError {
    pub kind: ErrorKind,
    pub message: String,
}

/// Why a target action failed, as far as the target can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The target could not be asked (connection refused, timeout, a 5xx): transient.
    Unreachable,
    /// The target said no (forbidden, invalid, not found): a human has to act.
    Refused,
    /// Optimistic concurrency lost (a stale `resourceVersion` or `RevisionId`) after the
    /// target's own re-reads: the next pass reads again and decides again.
    Conflict,
    /// Anything else.
    Failed,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::Refused => "refused",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Failed => "failed",
        }
    }
}

impl TargetError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Failed, message)
    }

    pub fn unreachable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unreachable, message)
    }

    pub fn refused(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Refused, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }
}

/// A place rollouts run: processes on this host, a Kubernetes cluster, a function platform.
pub trait Target: Send {
    /// Run `artifact` as the candidate next to the stable version, with no traffic.
    fn start_candidate(&mut self, plan: &Plan, artifact: &str) -> Result<(), TargetError>;
    /// Send `weight`% of traffic to the candidate.
    fn set_weight(&mut self, plan: &Plan, weight: u8) -> Result<(), TargetError>;
    /// Make `artifact` the stable version at 100% and retire the old stable and the candidate.
    fn promote(&mut self, plan: &Plan, artifact: &str) -> Result<(), TargetError>;
    /// Send all traffic to the stable version, then remove the candidate.
    fn rollback(&mut self, plan: &Plan, stable: Option<&str>) -> Result<(), TargetError>;
    /// How close the target is to `desired`.
    fn health(&mut self, plan: &Plan, desired: &Desired) -> TargetHealth;

    /// Route requests by header or cookie to the candidate, and mirror a share of the
    /// rest to it, as `routing` says; weights stay as they are. Promotion and rollback
    /// take both away. Validation refuses these steps on a workload whose
    /// `Workload::capabilities` lack them, so a target that has none never gets a
    /// non-empty routing; it refuses one, and accepts the empty one.
    fn set_routing(&mut self, plan: &Plan, routing: &Routing) -> Result<(), TargetError> {
        if routing.is_empty() {
            return Ok(());
        }
        Err(TargetError::refused(format!(
            "{} workloads cannot route by header or mirror requests",
            plan.workload.kind()
        )))
    }

    /// Whether the target's state lives outside the daemon (a cluster, a cloud alias)
    /// and so outlives a daemon restart. It decides what [`Target::resume`] does.
    fn keeps_state_across_restarts(&self) -> bool {
        false
    }

    /// After a daemon restart: bring the target to an in-flight step (`stable` serving
    /// the rest, `candidate` at `weight`). A target that kept its state
    /// ([`Target::keeps_state_across_restarts`]: a cluster, an alias) re-runs the step,
    /// which converges without touching the stable version or moving traffic (promoting
    /// the stable first would take the candidate's share away for a moment); one that
    /// lost its processes has everything rebuilt, the stable version first. Targets
    /// whose restart needs more (the local target's data plane) override this.
    fn resume(
        &mut self,
        plan: &Plan,
        stable: Option<&str>,
        candidate: &str,
        weight: u8,
    ) -> Result<(), TargetError> {
        if !self.keeps_state_across_restarts()
            && let Some(stable) = stable
        {
            self.promote(plan, stable)?;
        }
        self.start_candidate(plan, candidate)?;
        self.set_weight(plan, weight)
    }

    /// The `replica-health` check: the share of the candidate's replicas that are
    /// ready (`value`), over how many it should have (`samples`). `Err` on a target
    /// that has no replicas to count, or cannot be read (never a pass).
    fn readiness(&mut self, plan: &Plan) -> Result<crate::engine::Measurement, String> {
        Err(format!(
            "replica-health is not available on {} workloads",
            plan.workload.kind()
        ))
    }
}
