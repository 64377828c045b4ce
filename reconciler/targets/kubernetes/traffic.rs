//! Moving traffic on a cluster: the weights of one HTTPRoute rule (Gateway API), or
//! the replica split between the stable and canary Deployments (replica ratio), and
//! the guarded patch of the stable Deployment, which rollgate does not own.
//!
//! Invariants: traffic moves *towards* a candidate only once its ready replicas cover
//! the share (otherwise the move is deferred, see `readiness.rs`), never towards a
//! candidate Service that is missing or not rollgate's; moving it away is never held;
//! rollgate's header rule and mirror filter (issue #19) are written beside the weights
//! by the same writer ([`Cluster::update_route`]) and go with the candidate's backendRef,
//! and so is the fresh baseline's backendRef (issue #19: added only once its replicas are
//! ready, weighing as much as the candidate's, taken from the stable's);
//! a route at rest is never written; the route is applied whole with the
//! `resourceVersion` just read, so a concurrent edit is never lost: the write is
//! refused, the route read again and the rules computed again (a few times, then a
//! `Conflict`); in replica-ratio mode the ready total never drops below the stable's total.

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{DynamicObject, Patch};
use serde_json::{Value, json};

use super::deployment::{container_name, image_of, replicas_of};
use super::deployments::Mode;
use super::{
    Cluster, Share, TargetError, baseline_share, canary_replicas, is_managed, normalized,
    ready_replicas, ref_weight, route_weights, routing_shown, rules_with_baseline,
    rules_with_routing, rules_with_weight,
};
use crate::engine::TargetHealth;
use crate::model::plan::{Routing, Traffic};
use crate::targets::ErrorKind;

impl Cluster<'_> {
    /// Set the image and/or `spec.replicas` of the stable Deployment, which rollgate does
    /// not own: a JSON Patch that first tests the container's name at its index, so it
    /// changes exactly these fields or fails (no co-ownership through an apply, and no
    /// list replaced by a merge).
    pub(super) async fn patch_stable(
        &self,
        image: Option<&str>,
        replicas: Option<i32>,
    ) -> Result<(), TargetError> {
        let name = &self.w.deployment;
        let stable = self.stable().await?;
        let mut ops = Vec::new();
        if let Some(image) = image {
            let container = container_name(&stable, self.w.container.as_deref())?;
            let index = stable
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .and_then(|p| p.containers.iter().position(|c| c.name == container))
                .unwrap_or(0);
            if image_of(&stable, Some(&container)).as_deref() != Some(image) {
                let at = format!("/spec/template/spec/containers/{index}");
                ops.push(json!({ "op": "test", "path": format!("{at}/name"), "value": container }));
                ops.push(json!({ "op": "add", "path": format!("{at}/image"), "value": image }));
            }
        }
        if let Some(r) = replicas
            && r != replicas_of(&stable)
        {
            ops.push(json!({ "op": "add", "path": "/spec/replicas", "value": r }));
        }
        if ops.is_empty() {
            return Ok(());
        }
        let patch: Patch<()> =
            Patch::Json(serde_json::from_value(Value::Array(ops)).map_err(|e| {
                TargetError::failed(format!("cannot build a patch for {name}: {e}"))
            })?);
        self.timed(
            &format!("cannot patch deployment {name}"),
            self.deployments.patch(name, &Self::merge(), &patch),
        )
        .await?;
        Ok(())
    }

    /// Put `weight`% on the canary; `None` sends everything to stable and removes the
    /// canary from the route (replica mode: stable back to its total).
    pub(super) async fn weigh(&self, weight: Option<u8>) -> Result<(), TargetError> {
        match &self.w.traffic {
            Traffic::GatewayRoute { route, rule, .. } => {
                // Never point traffic at a Service that is not there (or not ours).
                if let Some(w) = weight.filter(|w| *w > 0) {
                    let name = self.canary_service();
                    self.our_canary_service().await?;
                    // Nor more of it at a candidate whose ready replicas do not cover it.
                    let canary = self.owned_canary().await?;
                    let share = Share::of(&canary, w);
                    // A proportional canary grows first; its new pods are not ready yet.
                    if let Some(size) = self.size_of(&canary, w)
                        && size > replicas_of(&canary)
                    {
                        self.scale_canary(size).await?;
                        self.defer(&canary, share);
                        return Ok(());
                    }
                    let (_, value) = self.read_route(route).await?;
                    let now = route_weights(&value, *rule, &self.w.service, &name)
                        .and_then(|(_, c)| c)
                        .unwrap_or(0);
                    if i64::from(w) > now && !share.covered() {
                        self.defer(&canary, share);
                        return Ok(());
                    }
                    // Nor a share the fresh baseline (when one runs) cannot take beside
                    // it yet: the canary never has traffic its baseline lacks.
                    if i64::from(w) > now
                        && let Some(baseline) = self.baseline().await?
                        && (ref_weight(&value, *rule, &self.baseline_service()).is_none()
                            || ready_replicas(&baseline) < replicas_of(&baseline))
                    {
                        self.defer(&canary, share);
                        return Ok(());
                    }
                }
                self.weigh_route(route, *rule, weight).await?;
                // ... and shrinks once its traffic has left.
                if let Some(w) = weight
                    && let Some(canary) = self.canary().await?
                    && is_managed(&canary.metadata)
                    && let Some(size) = self.size_of(&canary, w)
                    && size < replicas_of(&canary)
                {
                    self.scale_canary(size).await?;
                }
                Ok(())
            }
            Traffic::ReplicaRatio if self.switches_selector() => self.switch(weight).await,
            Traffic::ReplicaRatio => {
                let Some(canary) = self.canary().await? else {
                    return match weight {
                        None => Ok(()),
                        Some(_) => Err(TargetError::failed(format!(
                            "deployment {} does not exist; start the candidate first",
                            self.canary_deployment()
                        ))),
                    };
                };
                if !is_managed(&canary.metadata) {
                    return Err(TargetError::failed(format!(
                        "deployment {} was not created by rollgate",
                        self.canary_deployment()
                    )));
                }
                let total = Self::total_of(&canary).unwrap_or_else(|| replicas_of(&canary));
                let c = canary_replicas(total, weight.unwrap_or(0));
                let baseline = self.baseline().await?;
                self.split(&canary, baseline.as_ref(), total, c, weight)
                    .await
            }
        }
    }

    /// The replicas of a replica-ratio split of `total` with `c` on the canary: the
    /// canary's, the fresh baseline's (as many as the canary, as far as the stable has
    /// them to give; none without one) and the stable's (the rest).
    pub(super) fn replica_split(total: i32, c: i32, baseline: bool) -> (i32, i32, i32) {
        let b = if baseline { c.min(total - c).max(0) } else { 0 };
        (c, b, (total - c - b).max(0))
    }

    /// Replica ratio: scale the canary to `c` (only when a `weight` is asked; `None`
    /// leaves it to be deleted), the fresh baseline (when there is one) to as many, and
    /// the stable to the rest of `total`. A stable that grows goes first; one that
    /// shrinks goes last, once the canary covers its share and the baseline its
    /// replicas (a later `health` pass finishes the step), so the ready total never
    /// drops below `total`.
    pub(super) async fn split(
        &self,
        canary: &Deployment,
        baseline: Option<&Deployment>,
        total: i32,
        c: i32,
        weight: Option<u8>,
    ) -> Result<(), TargetError> {
        let (c, b, s) = Self::replica_split(total, c, baseline.is_some());
        let stable_now = replicas_of(&self.stable().await?);
        let scale_others = async {
            if weight.is_some() && c != replicas_of(canary) {
                self.scale_canary(c).await?;
            }
            if let Some(bd) = baseline
                && b != replicas_of(bd)
            {
                self.scale_baseline(b).await?;
            }
            Ok::<_, TargetError>(())
        };
        if s >= stable_now {
            self.patch_stable(None, Some(s)).await?;
            return scale_others.await;
        }
        let scaled = (weight.is_some() && c != replicas_of(canary))
            || baseline.is_some_and(|bd| b != replicas_of(bd));
        scale_others.await?;
        let share = Share::of(canary, weight.unwrap_or(0));
        let baseline_ready = baseline.is_none_or(|bd| ready_replicas(bd) >= b);
        // Just scaled: their pods are not ready yet.
        if scaled || !share.covered() || !baseline_ready {
            self.defer(canary, share);
            return Ok(());
        }
        self.patch_stable(None, Some(s)).await
    }

    /// Set the candidate's `spec.replicas` (a merge patch: an apply of only `replicas`
    /// would drop the rest of what our manager applied).
    pub(super) async fn scale_canary(&self, replicas: i32) -> Result<(), TargetError> {
        let name = self.canary_deployment();
        let patch = json!({ "spec": { "replicas": replicas } });
        self.timed(
            &format!("cannot scale deployment {name}"),
            self.deployments
                .patch(&name, &Self::merge(), &Patch::Merge(&patch)),
        )
        .await?;
        Ok(())
    }

    /// The replicas a canary of `total` runs at `weight`%, when it is sized by its
    /// weight (a proportional Gateway API canary); `None`: sized otherwise (full-size
    /// copy, blue-green preview, replica-ratio split).
    pub(super) fn size_for(&self, total: i32, weight: u8) -> Option<i32> {
        let proportional = matches!(self.mode, Mode::Canary)
            && matches!(
                self.w.traffic,
                Traffic::GatewayRoute {
                    scale: crate::model::plan::CanaryScale::Proportional,
                    ..
                }
            );
        proportional.then(|| canary_replicas(total, weight).max(1))
    }

    pub(super) fn size_of(&self, canary: &Deployment, weight: u8) -> Option<i32> {
        let total = Self::total_of(canary).unwrap_or_else(|| replicas_of(canary));
        self.size_for(total, weight)
    }

    /// The HTTPRoute, typed and as JSON; a missing route is an error (it is the user's).
    pub(super) async fn read_route(
        &self,
        route: &str,
    ) -> Result<(DynamicObject, serde_json::Value), TargetError> {
        let current = self
            .timed(
                &format!("cannot read httproute {route}"),
                self.routes.get_opt(route),
            )
            .await?
            .ok_or_else(|| {
                TargetError::failed(format!(
                    "httproute {}/{route} does not exist",
                    self.w.namespace
                ))
            })?;
        let value = serde_json::to_value(&current)
            .map_err(|e| TargetError::failed(format!("cannot read httproute {route}: {e}")))?;
        Ok((current, value))
    }

    /// Write the route's `rules` as `rules_for` computes them from the route just read
    /// (`None`: already there, nothing written): the whole list (`rules` is an atomic
    /// list, see the module header of `kubernetes.rs`), applied with the
    /// `resourceVersion` read, so a write in between makes the API server refuse ours
    /// (409). Then the route is read again and the rules computed again from what it
    /// holds now, a few times; a route that keeps changing is a `Conflict` (the daemon
    /// decides again on its next pass). The one writer of the route.
    pub(super) async fn update_route(
        &self,
        route: &str,
        rules_for: impl Fn(&Value) -> Result<Option<Value>, TargetError>,
    ) -> Result<(), TargetError> {
        const ATTEMPTS: u32 = 5;
        let mut last = None;
        for attempt in 1..=ATTEMPTS {
            let (current, value) = self.read_route(route).await?;
            let Some(rules) = rules_for(&value)? else {
                return Ok(());
            };
            let patch = json!({
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "HTTPRoute",
                "metadata": {
                    "name": route,
                    "namespace": self.w.namespace,
                    "resourceVersion": current.metadata.resource_version,
                },
                "spec": { "rules": rules },
            });
            match self
                .timed(
                    &format!("cannot apply httproute {route}"),
                    self.routes
                        .patch(route, &Self::apply(), &Patch::Apply(&patch)),
                )
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if e.kind == ErrorKind::Conflict => {
                    tracing::info!(
                        namespace = %self.w.namespace,
                        route,
                        attempt,
                        "httproute changed since it was read; reading it again"
                    );
                    last = Some(e.message);
                }
                Err(e) => return Err(e),
            }
        }
        Err(TargetError::conflict(format!(
            "httproute {}/{route} kept changing while rollgate wrote it ({ATTEMPTS} attempts; last: {})",
            self.w.namespace,
            last.unwrap_or_default()
        )))
    }

    /// Put `weight`% on the candidate's backendRef of rule `rule` (`None`: remove it, and
    /// rollgate's header rule and mirror with it: they point at the candidate too).
    pub(super) async fn weigh_route(
        &self,
        route: &str,
        rule: u32,
        weight: Option<u8>,
    ) -> Result<(), TargetError> {
        let candidate = self.canary_service();
        let baseline = self.baseline_service();
        self.update_route(route, |value| {
            let at_rest = || {
                rules_with_routing(
                    value,
                    rule,
                    &self.w.service,
                    &candidate,
                    self.plan,
                    &Routing::default(),
                )
                .map(|r| normalized(&r) == normalized(&value["spec"]["rules"]))
                .unwrap_or(false)
            };
            let b = ref_weight(value, rule, &baseline);
            if let Some((s, c)) = route_weights(value, rule, &self.w.service, &candidate) {
                let done = match weight {
                    // A fresh baseline's ref (when there) takes as much as the canary.
                    Some(w) => {
                        let want_b = b.map(|_| baseline_share(i64::from(w)));
                        (s, c, b)
                            == (
                                Some(100 - i64::from(w) - want_b.unwrap_or(0)),
                                Some(i64::from(w)),
                                want_b,
                            )
                    }
                    // At rest: the stable alone, at whatever weight its owner wrote.
                    None => s.is_some() && c.is_none() && b.is_none() && at_rest(),
                };
                if done {
                    return Ok(None);
                }
            }
            let fail = |e: String| TargetError::failed(format!("httproute {route}: {e}"));
            let mut rules = rules_with_weight(value, rule, &self.w.service, &candidate, weight)
                .map_err(fail)?;
            // The baseline's ref follows the canary's weight, and goes with it.
            if b.is_some() {
                rules = rules_with_baseline(
                    &json!({ "spec": { "rules": rules } }),
                    rule,
                    &self.w.service,
                    &candidate,
                    &baseline,
                    weight.is_some(),
                )
                .map_err(fail)?;
            }
            if weight.is_some() {
                return Ok(Some(rules));
            }
            rules_with_routing(
                &json!({ "spec": { "rules": rules } }),
                rule,
                &self.w.service,
                &candidate,
                self.plan,
                &Routing::default(),
            )
            .map(Some)
            .map_err(fail)
        })
        .await
    }

    /// `set_routing`: rollgate's header rule and mirror filter in the route as `routing`
    /// says (see `route::rules_with_routing`), weights untouched. Like a weight, routing
    /// goes to a candidate only once its Service is rollgate's and one of its replicas
    /// is ready (until then the move is deferred and `health` makes it); taking it away
    /// is never held. Without a route (replica ratio) there is nothing to route by:
    /// validation refuses these steps there, and an empty routing is all it accepts.
    pub(super) async fn route_to(&self, routing: &Routing) -> Result<(), TargetError> {
        let Traffic::GatewayRoute { route, rule, .. } = &self.w.traffic else {
            if !routing.matches.is_empty() || routing.mirror > 0 {
                return Err(TargetError::refused(format!(
                    "deployment {} has no Gateway API route: it cannot route by header or mirror requests",
                    self.w.deployment
                )));
            }
            return self.baseline_to(routing.baseline).await;
        };
        // The fresh baseline first (the engine starts it before the canary's share
        // moves), or taken away: its backendRef, then its Service and Deployment.
        if routing.baseline {
            self.route_baseline(route, *rule).await?;
        } else {
            self.remove_baseline().await?;
        }
        if !routing.is_empty() {
            self.our_canary_service().await?;
            let canary = self.owned_canary().await?;
            let share = Share::of(&canary, 1);
            if !share.covered() {
                self.defer(&canary, share);
                return Ok(());
            }
        }
        let candidate = self.canary_service();
        self.update_route(route, |value| {
            let rules = rules_with_routing(
                value,
                *rule,
                &self.w.service,
                &candidate,
                self.plan,
                routing,
            )
            .map_err(|e| TargetError::refused(format!("httproute {route}: {e}")))?;
            Ok((normalized(&rules) != normalized(&value["spec"]["rules"])).then_some(rules))
        })
        .await
    }

    /// Gateway API: the fresh baseline started beside the candidate (its Deployment
    /// with the canary's replicas, and `<service>-baseline`), and its backendRef added
    /// to the rule (weighing as much as the canary's, taken from the stable's) once its
    /// replicas are ready; until then nothing is routed to it (`health` adds it later,
    /// and `weigh` holds the canary's share meanwhile).
    async fn route_baseline(&self, route: &str, rule: u32) -> Result<(), TargetError> {
        self.our_canary_service().await?;
        let canary = self.owned_canary().await?;
        let replicas = replicas_of(&canary).max(1);
        let total = Self::total_of(&canary).unwrap_or(replicas);
        // Its Service first: a foreign `<service>-baseline` is refused before anything
        // is written.
        self.start_baseline_service().await?;
        let baseline = self.start_baseline(replicas, total).await?;
        if replicas_of(&baseline) != replicas {
            self.scale_baseline(replicas).await?;
            return Ok(());
        }
        if ready_replicas(&baseline) < replicas {
            return Ok(());
        }
        let (stable, candidate, name) = (
            self.w.service.clone(),
            self.canary_service(),
            self.baseline_service(),
        );
        self.update_route(route, |value| {
            let rules = rules_with_baseline(value, rule, &stable, &candidate, &name, true)
                .map_err(|e| TargetError::failed(format!("httproute {route}: {e}")))?;
            Ok((normalized(&rules) != normalized(&value["spec"]["rules"])).then_some(rules))
        })
        .await
    }

    /// Replica ratio: a fresh baseline (`wanted`) started beside the candidate and
    /// given as many replicas as it runs (the stable giving them up once the baseline's
    /// are ready, see [`Cluster::split`]), or given back and deleted. Without a
    /// candidate there is nothing to copy a share from: only the removal is done.
    pub(super) async fn baseline_to(&self, wanted: bool) -> Result<(), TargetError> {
        if !wanted {
            return self.remove_baseline().await;
        }
        let canary = self.owned_canary().await?;
        let total = Self::total_of(&canary).unwrap_or_else(|| replicas_of(&canary));
        let c = replicas_of(&canary);
        let (_, b, _) = Self::replica_split(total, c, true);
        let baseline = self.start_baseline(b, total).await?;
        // The canary's own scaling is `set_weight`'s: its share is not asked here.
        self.split(&canary, Some(&baseline), total, c, None).await
    }

    /// The route's header rule and mirror against `routing`: `Ok(None)` when they are
    /// as it says, else what the route shows, in words; `Err` when the route cannot
    /// hold it (its rule gone, or testing a header the routing tests too).
    pub(super) fn routing_differs(
        &self,
        value: &Value,
        rule: u32,
        routing: &Routing,
    ) -> Result<Option<String>, String> {
        let candidate = self.canary_service();
        let route = value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let want = rules_with_routing(value, rule, &self.w.service, &candidate, self.plan, routing)
            .map_err(|e| format!("httproute {route}: {e}"))?;
        if normalized(&want) == normalized(&value["spec"]["rules"]) {
            return Ok(None);
        }
        Ok(Some(format!(
            "httproute {route} has {}, the step {}",
            routing_shown(value, rule, &candidate, self.plan),
            crate::engine::routing_text(routing)
        )))
    }

    /// The candidate's Service, which traffic may go to only when it is there and
    /// rollgate's.
    pub(super) async fn our_canary_service(&self) -> Result<(), TargetError> {
        let name = self.canary_service();
        let canary = self
            .timed(
                &format!("cannot read service {name}"),
                self.services.get_opt(&name),
            )
            .await?;
        if canary.is_some_and(|c| is_managed(&c.metadata)) {
            return Ok(());
        }
        Err(TargetError::failed(format!(
            "service {name} does not exist or is not rollgate's; start the candidate first"
        )))
    }

    /// `start_candidate` in gateway mode: the canary ref at weight 0, unless a weight is
    /// already set (a re-run after `set_weight` must not take traffic away).
    pub(super) async fn weigh_route_at_start(&self) -> Result<(), TargetError> {
        let Traffic::GatewayRoute { route, rule, .. } = &self.w.traffic else {
            return Ok(());
        };
        let (_, value) = self.read_route(route).await?;
        match route_weights(&value, *rule, &self.w.service, &self.canary_service()) {
            Some((_, Some(_))) => Ok(()),
            _ => self.weigh_route(route, *rule, Some(0)).await,
        }
    }

    /// At rest (no candidate): healthy when the route sends everything to the stable
    /// Service (alone, at any weight) and the candidate's backendRef, rollgate's header
    /// rule and its mirror filter are gone.
    pub(super) async fn weights_at_rest(&self) -> Result<TargetHealth, TargetError> {
        let Traffic::GatewayRoute { route, rule, .. } = &self.w.traffic else {
            return Ok(TargetHealth::Healthy);
        };
        let (_, value) = self.read_route(route).await?;
        let Some((s, c)) = route_weights(&value, *rule, &self.w.service, &self.canary_service())
        else {
            return Ok(TargetHealth::Unhealthy {
                reason: format!("httproute {route} has no rule {rule} with backendRefs"),
            });
        };
        Ok(
            if c.is_none()
                && s.is_some()
                && ref_weight(&value, *rule, &self.baseline_service()).is_none()
                && self
                    .routing_differs(&value, *rule, &Routing::default())
                    .is_ok_and(|d| d.is_none())
            {
                TargetHealth::Healthy
            } else {
                TargetHealth::Progressing
            },
        )
    }
}
