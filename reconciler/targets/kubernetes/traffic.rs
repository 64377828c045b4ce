//! Moving traffic on a cluster: the weights of one HTTPRoute rule (Gateway API), or
//! the replica split between the stable and canary Deployments (replica ratio), and
//! the guarded patch of the stable Deployment, which rollgate does not own.
//!
//! Invariants: traffic moves *towards* a candidate only once its ready replicas cover
//! the share (otherwise the move is deferred, see `readiness.rs`), never towards a
//! candidate Service that is missing or not rollgate's; moving it away is never held;
//! a route at rest is never written; the route is applied whole with the
//! `resourceVersion` just read, so a concurrent edit fails the step instead of being
//! lost; in replica-ratio mode the ready total never drops below the stable's total.

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{DynamicObject, Patch};
use serde_json::{Value, json};

use super::deployment::{container_name, image_of, replicas_of};
use super::deployments::Mode;
use super::{
    Cluster, Share, TargetError, canary_replicas, is_managed, route_weights, rules_with_weight,
};
use crate::engine::TargetHealth;
use crate::model::plan::Traffic;

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
                    let canary = self
                        .timed(
                            &format!("cannot read service {name}"),
                            self.services.get_opt(&name),
                        )
                        .await?;
                    if !canary.is_some_and(|c| is_managed(&c.metadata)) {
                        return Err(TargetError::failed(format!(
                            "service {name} does not exist or is not rollgate's; start the candidate first"
                        )));
                    }
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
                // Stable first when shrinking the canary; when growing it, the canary
                // first, and the stable gives up replicas only once the canary's are
                // ready (a later `health` pass finishes the step), so the ready total
                // never drops below `total`.
                let grow = c >= replicas_of(&canary);
                if !grow {
                    self.patch_stable(None, Some(total - c)).await?;
                }
                if weight.is_some() && c != replicas_of(&canary) {
                    self.scale_canary(c).await?;
                }
                if grow {
                    let share = Share::of(&canary, weight.unwrap_or(0));
                    // Just scaled: its pods are not ready yet.
                    if c != replicas_of(&canary) || !share.covered() {
                        self.defer(&canary, share);
                        return Ok(());
                    }
                    self.patch_stable(None, Some(total - c)).await?;
                }
                Ok(())
            }
        }
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

    pub(super) async fn weigh_route(
        &self,
        route: &str,
        rule: u32,
        weight: Option<u8>,
    ) -> Result<(), TargetError> {
        let (current, value) = self.read_route(route).await?;
        let candidate = self.canary_service();
        if let Some((s, c)) = route_weights(&value, rule, &self.w.service, &candidate) {
            let done = match weight {
                Some(w) => (s, c) == (Some(100 - i64::from(w)), Some(i64::from(w))),
                // At rest: the stable alone, at whatever weight its owner wrote.
                None => s.is_some() && c.is_none(),
            };
            if done {
                return Ok(());
            }
        }
        let rules = rules_with_weight(&value, rule, &self.w.service, &candidate, weight)
            .map_err(|e| TargetError::failed(format!("httproute {route}: {e}")))?;
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
        self.timed(
            &format!("cannot apply httproute {route}"),
            self.routes
                .patch(route, &Self::apply(), &Patch::Apply(&patch)),
        )
        .await?;
        Ok(())
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
    /// Service (alone, at any weight) and the candidate's backendRef is gone.
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
        Ok(if c.is_none() && s.is_some() {
            TargetHealth::Healthy
        } else {
            TargetHealth::Progressing
        })
    }
}
