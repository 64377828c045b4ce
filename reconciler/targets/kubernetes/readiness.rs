//! The readiness gate and the drift memory of the Deployments target.
//!
//! A move of traffic towards a candidate whose ready replicas do not cover its share is
//! *deferred*: the traffic stays where it is, the wait starts (kept in
//! [`Memory`](super::deployments::Memory), per candidate uid), and each `health` pass
//! moves it once the replicas are ready. A candidate short of them for the plan's
//! `progressDeadline` (less [`DEADLINE_LEAD`]) is `Unhealthy` with the reason. Traffic
//! that differs from the step with no deferred move pending is drift: logged once as a
//! warning, and its end once. The memory does not survive a restart: a wait starts
//! again, still bounded by the engine's own `progressDeadline`.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;

use super::deployment::replicas_of;
use super::deployments::Mode;
use super::{Cluster, needed_ready, ready_replicas};
use crate::engine::TargetHealth;
use crate::model::plan::Traffic;

/// How long before the plan's `progressDeadline` the target gives up on a candidate
/// that is not ready (a tenth of the deadline, at most this): the engine fails a stage
/// still progressing at that deadline with a bare "progressDeadline exceeded", and the
/// target's reason (which Deployment, how many ready of how many) is the useful one.
const DEADLINE_LEAD: Duration = Duration::from_secs(5);

/// How many ready replicas a candidate has, and how many its weight needs.
#[derive(Debug, Clone, Copy)]
pub(super) struct Share {
    pub(super) weight: u8,
    pub(super) ready: i32,
    pub(super) need: i32,
}

impl Share {
    pub(super) fn of(canary: &Deployment, weight: u8) -> Self {
        let total = Cluster::total_of(canary).unwrap_or_else(|| replicas_of(canary));
        Self {
            weight,
            ready: ready_replicas(canary),
            need: needed_ready(total, weight),
        }
    }

    pub(super) fn covered(&self) -> bool {
        self.ready >= self.need
    }
}

impl Cluster<'_> {
    /// The key of one candidate in [`Memory`]: a new canary (new uid) waits afresh.
    pub(super) fn wait_key(&self, canary: &Deployment) -> String {
        format!(
            "{}/{}@{}",
            self.w.namespace,
            self.canary_deployment(),
            canary.metadata.uid.as_deref().unwrap_or("")
        )
    }

    /// Where the traffic a candidate is not ready for stays, in words.
    pub(super) fn stays_on(&self) -> String {
        match (&self.w.traffic, self.mode) {
            (Traffic::GatewayRoute { .. }, _) => format!("service {}", self.w.service),
            (Traffic::ReplicaRatio, Mode::BlueGreen(_)) => {
                format!("the stable pods service {} selects", self.w.service)
            }
            (Traffic::ReplicaRatio, Mode::Canary) => {
                format!("the replicas of deployment {}", self.w.deployment)
            }
        }
    }

    /// Traffic was asked for but the candidate's ready replicas do not cover it: keep
    /// the traffic where it is, and start the wait (the `health` passes move it).
    pub(super) fn defer(&self, canary: &Deployment, share: Share) {
        let key = self.wait_key(canary);
        let mut memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        if let std::collections::hash_map::Entry::Vacant(e) = memory.unready_since.entry(key) {
            e.insert(Instant::now());
            tracing::info!(
                namespace = %self.w.namespace,
                deployment = %self.canary_deployment(),
                weight = share.weight,
                ready = share.ready,
                needed = share.need,
                "candidate not ready for its share; traffic waits on {}",
                self.stays_on()
            );
        }
    }

    /// The candidate is still short of `share`: `Progressing`, or, once it has been so
    /// for the plan's `progressDeadline` (less a small lead, see [`DEADLINE_LEAD`]),
    /// `Unhealthy` with the reason. Works where no controller ever writes
    /// `ProgressDeadlineExceeded` (pods that never pass their readiness probe, a
    /// cluster without kubelets).
    pub(super) fn waiting(&self, canary: &Deployment, share: Share) -> TargetHealth {
        let key = self.wait_key(canary);
        let since = *self
            .memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unready_since
            .entry(key)
            .or_insert_with(Instant::now);
        let lead = (self.deadline / 10).min(DEADLINE_LEAD);
        if since.elapsed() + lead >= self.deadline {
            return TargetHealth::Unhealthy {
                reason: format!(
                    "deployment {}/{} has {} of {} ready replicas that {}% of the traffic needs, for the whole progressDeadline {}; that traffic stayed on {}",
                    self.w.namespace,
                    self.canary_deployment(),
                    share.ready,
                    share.need,
                    share.weight,
                    crate::model::duration::format(self.deadline),
                    self.stays_on()
                ),
            };
        }
        tracing::debug!(
            deployment = %self.canary_deployment(),
            ready = share.ready,
            needed = share.need,
            "kubernetes target progressing: candidate not ready for its share"
        );
        TargetHealth::Progressing
    }

    /// Whether a move towards this candidate is waiting for its readiness.
    pub(super) fn is_waiting(&self, canary: &Deployment) -> bool {
        let key = self.wait_key(canary);
        self.memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unready_since
            .contains_key(&key)
    }

    /// The workload's key in [`Memory::drift`].
    pub(super) fn drift_key(&self) -> String {
        format!("{}/{}", self.w.namespace, self.canary_deployment())
    }

    /// The traffic differs from the step and no move of rollgate's is pending: someone
    /// changed it (a GitOps tool re-applying the route, a human). Logged once per drift.
    pub(super) fn drifted(&self, what: &str) {
        let key = self.drift_key();
        let mut memory = self.memory.lock().unwrap_or_else(|e| e.into_inner());
        if memory.drift.get(&key).is_none_or(|seen| seen != what) {
            tracing::warn!(
                namespace = %self.w.namespace,
                deployment = %self.w.deployment,
                drift = %what,
                "traffic differs from the step; rollgate re-applies it"
            );
            memory.drift.insert(key, what.to_owned());
        }
    }

    /// The traffic is where the step puts it: a drift logged before is over.
    pub(super) fn no_drift(&self) {
        let key = self.drift_key();
        let over = self
            .memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drift
            .remove(&key);
        if let Some(what) = over {
            tracing::info!(
                namespace = %self.w.namespace,
                deployment = %self.w.deployment,
                was = %what,
                "traffic drift repaired"
            );
        }
    }

    /// The candidate covers its share: whatever wait there was is over.
    pub(super) fn ready_again(&self, canary: &Deployment) {
        let key = self.wait_key(canary);
        self.memory
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .unready_since
            .remove(&key);
    }
}
