//! Where rollouts happen: the `Target` extension point.
//!
//! One trait, one file per implementation (`dry_run.rs`, `local.rs`; `kubernetes.rs`
//! for Deployments and `knative.rs` for Knative Services, two targets on one shared
//! cluster connection, between which `KubernetesTarget` picks by the plan's workload
//! kind; `lambda.rs` shifts an AWS Lambda alias's weights).
//! Every method is idempotent: the daemon may call any of them
//! again after a crash or a lost race, and the target converges to the same state.
//! `contract` holds the test every implementation must pass.

pub mod contract;
pub mod dry_run;
pub mod factory;
pub mod knative;
pub mod kubernetes;
pub mod lambda;
pub mod local;

use crate::engine::TargetHealth;
use crate::model::Plan;

/// What the target should look like now, for health checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub stable: Option<String>,
    /// `None` when no candidate should be running.
    pub candidate: Option<String>,
    pub weight: u8,
}

/// An error talking to the target. The rollout holds; it never counts as a pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TargetError(pub String);

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
