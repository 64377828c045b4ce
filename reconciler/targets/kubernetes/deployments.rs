//! The Deployments target: a `kubernetes` workload's rollout, a candidate Deployment
//! (`-canary`, or `-preview` in blue-green) next to the stable one. This file holds the
//! target itself (what each `Target` call does, in order) and [`Cluster`], the plan's
//! objects in one namespace; the calls it makes live beside it by concern:
//! `ownership.rs` (creating, adopting, deleting), `traffic.rs` (moving traffic),
//! `readiness.rs` (holding traffic for a candidate that is not ready, noticing
//! drift), `blue_green.rs` (the selector switch).
//!
//! Invariants (the module header of `kubernetes.rs` has the whole story): the stable
//! Deployment is read only through [`Cluster::stable`], which refuses one without the
//! opt-in label; traffic goes back to the stable version before candidate objects are
//! deleted; `health` is never `Healthy` while the traffic differs from the step.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DynamicObject, PatchParams};

use super::deployment::{image_of, replicas_of};
use super::readiness::Share;
use super::{
    CANARY_SUFFIX, Connection, FIELD_MANAGER, OPT_IN, PREVIEW_SUFFIX, Rollout, TOTAL_ANNOTATION,
    TRACK, Timing, api_err, baseline_share, canary_replicas, http_route, opted_in, ref_weight,
    rollout_of, route_weights,
};
use crate::engine::{Measurement, TargetHealth};
use crate::model::Plan;
use crate::model::plan::{BlueGreen, KubernetesWorkload, Routing, Strategy, Traffic, Workload};
use crate::targets::{Desired, Target, TargetError};

/// Rollouts of `kubernetes` workloads (Deployments) on a shared cluster connection.
pub struct Deployments {
    connection: Arc<Connection>,
    timing: Timing,
    memory: Mutex<Memory>,
}

impl std::fmt::Debug for Deployments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployments")
            .field("timing", &self.timing)
            .finish_non_exhaustive()
    }
}

/// What the target remembers between calls (not across restarts: after one, a wait
/// starts again, and the engine's own `progressDeadline`, kept in Git, still bounds it).
#[derive(Debug, Default)]
pub(super) struct Memory {
    /// Since when each candidate (by namespace, name and uid) has been short of the
    /// ready replicas its weight needs.
    pub(super) unready_since: HashMap<String, Instant>,
    /// The traffic drift last logged for each workload (namespace and candidate name),
    /// so a drift is logged once, not on every pass.
    pub(super) drift: HashMap<String, String>,
}

/// Canary (weights over time) or blue-green (a full preview, then one switch).
#[derive(Debug, Clone, Copy)]
pub(super) enum Mode<'a> {
    Canary,
    BlueGreen(&'a BlueGreen),
}

/// The plan's objects in one namespace, and the calls on them (all async).
pub(super) struct Cluster<'a> {
    /// The plan's name (rollgate's header rule in the route is named after it).
    pub(super) plan: &'a str,
    pub(super) w: &'a KubernetesWorkload,
    pub(super) mode: Mode<'a>,
    pub(super) deployments: Api<Deployment>,
    pub(super) services: Api<Service>,
    pub(super) routes: Api<DynamicObject>,
    pub(super) timing: Timing,
    /// The plan's `progressDeadline`: how long a candidate may stay short of the ready
    /// replicas its weight needs.
    pub(super) deadline: Duration,
    pub(super) memory: &'a Mutex<Memory>,
}

/// The traffic a step wants, compared with what the cluster shows.
pub(super) enum Observed {
    AsDesired,
    /// What differs, in words.
    Differs(String),
    /// The traffic cannot be read as rollgate writes it (a route rule gone).
    Broken(String),
}

impl Deployments {
    /// On `connection`, with the default [`Timing`].
    pub fn new(connection: Arc<Connection>) -> Self {
        Self {
            connection,
            timing: Timing::default(),
            memory: Mutex::default(),
        }
    }

    pub fn with_timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    fn cluster<'a>(&'a self, plan: &'a Plan) -> Result<Cluster<'a>, TargetError> {
        let Workload::Kubernetes(w) = &plan.workload else {
            return Err(TargetError::failed(format!(
                "plan {} has a {} workload; this target runs kubernetes workloads",
                plan.name,
                plan.workload.kind()
            )));
        };
        let mode = match &plan.strategy {
            Strategy::BlueGreen(bg) => Mode::BlueGreen(bg),
            Strategy::Canary { .. } => Mode::Canary,
        };
        let client = self.connection.client();
        Ok(Cluster {
            plan: &plan.name,
            w,
            mode,
            deployments: Api::namespaced(client.clone(), &w.namespace),
            services: Api::namespaced(client.clone(), &w.namespace),
            routes: Api::namespaced_with(client, &w.namespace, &http_route()),
            timing: self.timing,
            deadline: plan.progress_deadline,
            memory: &self.memory,
        })
    }
}

impl Target for Deployments {
    fn start_candidate(&mut self, plan: &Plan, artifact: &str) -> Result<(), TargetError> {
        let c = self.cluster(plan)?;
        self.connection.block_on(async {
            c.start(artifact).await?;
            c.weigh_route_at_start().await
        })
    }

    fn set_weight(&mut self, plan: &Plan, weight: u8) -> Result<(), TargetError> {
        let c = self.cluster(plan)?;
        self.connection.block_on(c.weigh(Some(weight.min(100))))
    }

    /// Gateway API mode: rollgate's header rule and mirror filter in the route (see
    /// `traffic.rs`), and a fresh baseline's Deployment, Service and backendRef
    /// (`baseline.rs`); replica ratio has no route to route by (validation refuses the
    /// steps there) and takes only a fresh baseline (a third Deployment in the split).
    fn set_routing(&mut self, plan: &Plan, routing: &Routing) -> Result<(), TargetError> {
        let c = self.cluster(plan)?;
        self.connection.block_on(c.route_to(routing))
    }

    fn promote(&mut self, plan: &Plan, artifact: &str) -> Result<(), TargetError> {
        let c = self.cluster(plan)?;
        self.connection.block_on(c.promote(artifact))
    }

    fn rollback(&mut self, plan: &Plan, stable: Option<&str>) -> Result<(), TargetError> {
        let c = self.cluster(plan)?;
        self.connection.block_on(c.rollback(stable))
    }

    /// The cluster keeps its state while the daemon is down: `resume` re-runs the step.
    fn keeps_state_across_restarts(&self) -> bool {
        true
    }

    fn readiness(&mut self, plan: &Plan) -> Result<Measurement, String> {
        let c = self.cluster(plan).map_err(|e| e.message)?;
        self.connection
            .block_on(c.readiness())
            .map_err(|e| e.message)
    }

    fn health(&mut self, plan: &Plan, desired: &Desired) -> TargetHealth {
        let c = match self.cluster(plan) {
            Ok(c) => c,
            Err(e) => return TargetHealth::Unhealthy { reason: e.message },
        };
        match self.connection.block_on(c.health(desired)) {
            Ok(h) => h,
            Err(e) => TargetHealth::Unreachable { reason: e.message },
        }
    }
}

impl Cluster<'_> {
    pub(super) async fn timed<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, TargetError> {
        match tokio::time::timeout(self.timing.call_timeout, fut).await {
            Ok(r) => r.map_err(api_err(what)),
            Err(_) => Err(TargetError::failed(format!("{what}: timed out"))),
        }
    }

    pub(super) fn suffix(&self) -> &'static str {
        match self.mode {
            Mode::Canary => CANARY_SUFFIX,
            Mode::BlueGreen(_) => PREVIEW_SUFFIX,
        }
    }

    pub(super) fn track(&self) -> (&'static str, &'static str) {
        match self.mode {
            Mode::Canary => TRACK,
            Mode::BlueGreen(_) => (TRACK.0, "preview"),
        }
    }

    /// The candidate Deployment: `<deployment>-canary` or `<deployment>-preview`.
    pub(super) fn canary_deployment(&self) -> String {
        format!("{}{}", self.w.deployment, self.suffix())
    }

    /// The candidate Service: `<service>-canary` or `<service>-preview`.
    pub(super) fn canary_service(&self) -> String {
        format!("{}{}", self.w.service, self.suffix())
    }

    /// Blue-green without a route: the switch is the active Service's selector.
    pub(super) fn switches_selector(&self) -> bool {
        matches!(self.mode, Mode::BlueGreen(_)) && self.w.traffic == Traffic::ReplicaRatio
    }

    pub(super) fn apply() -> PatchParams {
        PatchParams::apply(FIELD_MANAGER).force()
    }

    /// Params of the non-apply patches: scaling the canary (a merge patch of
    /// `spec.replicas`; an apply of only `replicas` would drop the rest of what our
    /// manager applied) and the guarded JSON Patch of the stable.
    pub(super) fn merge() -> PatchParams {
        PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        }
    }

    /// The stable Deployment, refused unless it opted in ([`OPT_IN`]): every path that
    /// reads, copies or patches it comes through here, so a plan naming any other
    /// Deployment (`kube-system/coredns`) creates, patches and moves nothing.
    pub(super) async fn stable(&self) -> Result<Deployment, TargetError> {
        let name = &self.w.deployment;
        let ns = &self.w.namespace;
        let stable = self
            .timed(
                &format!("cannot read deployment {name}"),
                self.deployments.get_opt(name),
            )
            .await?
            .ok_or_else(|| TargetError::failed(format!("deployment {ns}/{name} does not exist")))?;
        if !opted_in(&stable.metadata) {
            let (k, v) = OPT_IN;
            return Err(TargetError::failed(format!(
                "deployment {ns}/{name} does not carry the label {k}={v}; rollgate touches only Deployments that opt in (`kubectl -n {ns} label deployment {name} {k}={v}`)"
            )));
        }
        Ok(stable)
    }

    pub(super) async fn canary(&self) -> Result<Option<Deployment>, TargetError> {
        let name = self.canary_deployment();
        self.timed(
            &format!("cannot read deployment {name}"),
            self.deployments.get_opt(&name),
        )
        .await
    }

    /// The plan's Service (the stable one; in blue-green, the active one). It is the
    /// user's: a missing Service is an error.
    pub(super) async fn stable_service(&self) -> Result<Service, TargetError> {
        let name = &self.w.service;
        self.timed(
            &format!("cannot read service {name}"),
            self.services.get_opt(name),
        )
        .await?
        .ok_or_else(|| {
            TargetError::failed(format!(
                "service {}/{name} does not exist",
                self.w.namespace
            ))
        })
    }

    /// The total replicas recorded on the canary (replica-ratio mode).
    pub(super) fn total_of(canary: &Deployment) -> Option<i32> {
        canary
            .metadata
            .annotations
            .as_ref()?
            .get(TOTAL_ANNOTATION)?
            .parse()
            .ok()
    }

    /// Wait until the stable Deployment runs `artifact` and is available.
    pub(super) async fn wait_stable(&self, artifact: &str) -> Result<(), TargetError> {
        let deadline = tokio::time::Instant::now() + self.timing.promote_wait;
        loop {
            let stable = self.stable().await?;
            let image = image_of(&stable, self.w.container.as_deref());
            let last = match rollout_of(&stable) {
                Rollout::Failed(reason) => return Err(TargetError::failed(reason)),
                Rollout::Available if image.as_deref() == Some(artifact) => return Ok(()),
                Rollout::Available => {
                    format!("deployment {} still runs {image:?}", self.w.deployment)
                }
                Rollout::Progressing(why) => why,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(TargetError::failed(format!(
                    "promotion not finished: {last}"
                )));
            }
            tokio::time::sleep(self.timing.poll).await;
        }
    }

    pub(super) async fn promote(&self, artifact: &str) -> Result<(), TargetError> {
        if let Mode::BlueGreen(bg) = self.mode {
            return self.promote_blue_green(artifact, bg).await;
        }
        let canary = self.canary().await?;
        let total = match &self.w.traffic {
            Traffic::ReplicaRatio => canary.as_ref().and_then(Self::total_of),
            Traffic::GatewayRoute { .. } => None,
        };
        let stable = self.stable().await?;
        if image_of(&stable, self.w.container.as_deref()).as_deref() != Some(artifact)
            || total.is_some_and(|t| t != replicas_of(&stable))
        {
            self.patch_stable(Some(artifact), total).await?;
        }
        self.wait_stable(artifact).await?;
        self.weigh(None).await?;
        self.remove_canary().await?;
        self.remove_baseline().await
    }

    pub(super) async fn rollback(&self, stable: Option<&str>) -> Result<(), TargetError> {
        self.weigh(None).await?;
        self.remove_canary().await?;
        self.remove_baseline().await?;
        if let Some(artifact) = stable {
            let current = self.stable().await?;
            if image_of(&current, self.w.container.as_deref()).as_deref() != Some(artifact) {
                self.patch_stable(Some(artifact), None).await?;
            }
        }
        Ok(())
    }

    pub(super) async fn health(&self, desired: &Desired) -> Result<TargetHealth, TargetError> {
        let stable = self.stable().await?;
        let image = image_of(&stable, self.w.container.as_deref());
        let canary = self.canary().await?;
        let progressing = |why: String| {
            tracing::debug!(reason = %why, "kubernetes target progressing");
            Ok(TargetHealth::Progressing)
        };
        if let Some(want) = &desired.stable
            && image.as_ref() != Some(want)
        {
            return progressing(format!("stable runs {image:?}, not {want}"));
        }
        match rollout_of(&stable) {
            Rollout::Failed(reason) => return Ok(TargetHealth::Unhealthy { reason }),
            Rollout::Progressing(why) => return progressing(why),
            Rollout::Available => {}
        }
        let Some(want) = &desired.candidate else {
            if canary.is_some() {
                return progressing(format!("{} still exists", self.canary_deployment()));
            }
            if self.baseline().await?.is_some() {
                return progressing(format!("{} still exists", self.baseline_deployment()));
            }
            if matches!(self.w.traffic, Traffic::GatewayRoute { .. })
                && self.has_baseline_service().await?
            {
                return progressing(format!("{} still exists", self.baseline_service()));
            }
            let name = self.canary_service();
            if self
                .timed(
                    &format!("cannot read service {name}"),
                    self.services.get_opt(&name),
                )
                .await?
                .is_some()
            {
                return progressing(format!("{name} still exists"));
            }
            if self.switches_selector() {
                return self.selector_at_rest().await;
            }
            return self.weights_at_rest().await;
        };
        let Some(canary) = canary else {
            return progressing(format!("{} does not exist", self.canary_deployment()));
        };
        let canary_image = image_of(&canary, self.w.container.as_deref());
        if canary_image.as_ref() != Some(want) {
            return progressing(format!("canary runs {canary_image:?}, not {want}"));
        }
        if let Rollout::Failed(reason) = rollout_of(&canary) {
            return Ok(TargetHealth::Unhealthy { reason });
        }
        // Traffic where the step puts it, read on every pass: a weight that waited for
        // the candidate's readiness moves now, and traffic someone changed behind
        // rollgate's back (drift) is put back; `weigh` still never moves it towards a
        // candidate that is not ready. Not healthy until the next pass reads it back.
        let w = desired.weight;
        let observed = self.observe(&stable, &canary, w, &desired.routing).await?;
        let awaited = self.is_waiting(&canary);
        match &observed {
            Observed::Broken(reason) => {
                return Ok(TargetHealth::Unhealthy {
                    reason: reason.clone(),
                });
            }
            Observed::Differs(what) => {
                if !awaited {
                    self.drifted(what);
                }
                if self.w.traffic == Traffic::ReplicaRatio {
                    // The fresh baseline first, as the engine orders it: a missing one
                    // is started (and a dropped one given back) before the split is
                    // made again, so the stable is not scaled up and down again.
                    self.route_to(&desired.routing).await?;
                    self.weigh(Some(w)).await?;
                } else {
                    self.weigh(Some(w)).await?;
                    self.route_to(&desired.routing).await?;
                }
            }
            Observed::AsDesired => self.no_drift(),
        }
        // A header route or a mirror needs one ready replica, as a weight does.
        let share = Share::of(
            &canary,
            if desired.routing.is_empty() {
                w
            } else {
                w.max(1)
            },
        );
        if !share.covered() {
            return Ok(self.waiting(&canary, share));
        }
        self.ready_again(&canary);
        // The fresh baseline, exactly while the step asks for one: its replicas ready
        // (a baseline not asked for is a difference `observe` reported).
        if desired.routing.baseline
            && let Some(baseline) = self.baseline().await?
        {
            match rollout_of(&baseline) {
                Rollout::Failed(reason) => return Ok(TargetHealth::Unhealthy { reason }),
                Rollout::Progressing(why) => return progressing(why),
                Rollout::Available => {}
            }
        }
        if let Observed::Differs(what) = observed {
            if awaited {
                tracing::info!(
                    namespace = %self.w.namespace,
                    deployment = %self.canary_deployment(),
                    weight = w,
                    "candidate ready for its share; traffic moves"
                );
            }
            return progressing(what);
        }
        match rollout_of(&canary) {
            Rollout::Failed(reason) => Ok(TargetHealth::Unhealthy { reason }),
            Rollout::Progressing(why) => progressing(why),
            Rollout::Available => Ok(TargetHealth::Healthy),
        }
    }

    /// The step's traffic (`weight`% on the candidate, and `routing`) against the
    /// cluster's: the route's two weights and rollgate's header rule and mirror filter,
    /// the active Service's selector (blue-green without a route), or the replica split.
    pub(super) async fn observe(
        &self,
        stable: &Deployment,
        canary: &Deployment,
        weight: u8,
        routing: &Routing,
    ) -> Result<Observed, TargetError> {
        if self.switches_selector() {
            return self.selector_observed(weight).await;
        }
        match &self.w.traffic {
            Traffic::GatewayRoute { route, rule, .. } => {
                let (_, value) = self.read_route(route).await?;
                let candidate = self.canary_service();
                let Some((s, c)) = route_weights(&value, *rule, &self.w.service, &candidate) else {
                    return Ok(Observed::Broken(format!(
                        "httproute {route} has no rule {rule} with backendRefs"
                    )));
                };
                // A fresh baseline (issue #19): its ref weighs as much as the canary's,
                // taken from the stable's, exactly while the step asks for one.
                let baseline_name = self.baseline_service();
                let b = ref_weight(&value, *rule, &baseline_name);
                let want_b = routing.baseline.then(|| baseline_share(i64::from(weight)));
                let want = (
                    100 - i64::from(weight) - want_b.unwrap_or(0),
                    i64::from(weight),
                );
                if b != want_b {
                    let show =
                        |w: Option<i64>| w.map_or("no backendRef".to_owned(), |w| w.to_string());
                    return Ok(Observed::Differs(format!(
                        "httproute {route} rule {rule} weighs {baseline_name} {}, the step {}",
                        show(b),
                        show(want_b)
                    )));
                }
                if routing.baseline != self.baseline().await?.is_some() {
                    return Ok(Observed::Differs(format!(
                        "{} {}",
                        self.baseline_deployment(),
                        if routing.baseline {
                            "does not exist"
                        } else {
                            "still exists"
                        }
                    )));
                }
                if (s, c) == (Some(want.0), Some(want.1)) {
                    return Ok(match self.size_of(canary, weight) {
                        Some(size) if size != replicas_of(canary) => Observed::Differs(format!(
                            "deployment {} runs {} replicas, the step {size}",
                            self.canary_deployment(),
                            replicas_of(canary)
                        )),
                        // A route that can no longer hold the header rule (its weighted
                        // rule now tests the same header) fails like a rule gone.
                        _ => match self.routing_differs(&value, *rule, routing) {
                            Ok(Some(what)) => Observed::Differs(what),
                            Ok(None) => Observed::AsDesired,
                            Err(reason) => Observed::Broken(reason),
                        },
                    });
                }
                let show = |w: Option<i64>| w.map_or("no backendRef".to_owned(), |w| w.to_string());
                Ok(Observed::Differs(format!(
                    "httproute {route} rule {rule} weighs {} {} and {candidate} {}, the step {} and {}",
                    self.w.service,
                    show(s),
                    show(c),
                    want.0,
                    want.1
                )))
            }
            Traffic::ReplicaRatio => {
                let total = Self::total_of(canary).unwrap_or_else(|| replicas_of(canary));
                let baseline = self.baseline().await?;
                let (c, b, s) =
                    Self::replica_split(total, canary_replicas(total, weight), routing.baseline);
                let (has_c, has_s) = (replicas_of(canary), replicas_of(stable));
                let has_b = baseline.as_ref().map(replicas_of);
                let want_b = routing.baseline.then_some(b);
                if (has_c, has_b, has_s) == (c, want_b, s) {
                    return Ok(Observed::AsDesired);
                }
                let show = |r: Option<i32>| r.map_or("none".to_owned(), |r| r.to_string());
                Ok(Observed::Differs(format!(
                    "replicas {} {has_s}, {} {has_c} and {} {}, the step {s}, {c} and {}",
                    self.w.deployment,
                    self.canary_deployment(),
                    self.baseline_deployment(),
                    show(has_b),
                    show(want_b)
                )))
            }
        }
    }

    /// Ready replicas of the candidate over its desired replicas. A candidate scaled to
    /// zero has no value (no evidence), never a pass.
    pub(super) async fn readiness(&self) -> Result<Measurement, TargetError> {
        let name = self.canary_deployment();
        let canary = self
            .canary()
            .await?
            .ok_or_else(|| TargetError::failed(format!("deployment {name} does not exist")))?;
        let desired = replicas_of(&canary);
        let ready = canary
            .status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0);
        Ok(Measurement {
            value: (desired > 0).then(|| f64::from(ready.min(desired)) / f64::from(desired)),
            samples: u64::try_from(desired.max(0)).unwrap_or(0),
        })
    }
}
