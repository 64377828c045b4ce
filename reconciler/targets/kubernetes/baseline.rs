//! The fresh baseline on a cluster (issue #19, `baseline: fresh`):
//! `<deployment>-baseline`, a copy of the stable Deployment as it runs (its pod
//! template, so the stable artifact), labelled `rollgate.dev/track: baseline` on the
//! Deployment, its selector and its pods the way the canary carries
//! `rollgate.dev/track: canary`, and given as many replicas as the canary.
//! - Replica ratio: the stable Service (which selects all three, as it selects the
//!   canary in this mode) splits the traffic canary : baseline : stable ≈ w : w : 100-2w
//!   by replica counts (the split itself is `traffic.rs`'s).
//! - Gateway API: as the canary's, the baseline's pods carry `<value>-baseline` for
//!   every key of the stable selector, so the stable Service does not select them;
//!   `<service>-baseline`, a Service rollgate creates (as it creates `<service>-canary`),
//!   selects them; and the route rule weighs stable 100-2w, canary w, baseline w
//!   (`route::rules_with_baseline`). The baseline's backendRef is written only once its
//!   replicas are ready, and removed before its Service and Deployment are deleted.
//!
//! Invariants: the baseline Deployment and Service are created and deleted only here;
//! they carry the managed-by label ([`MANAGED_BY`](super::MANAGED_BY)) and never the
//! opt-in one; a `<deployment>-baseline` or `<service>-baseline` without the managed-by
//! label is never adopted, overwritten, scaled nor deleted (a plan that asks for a
//! baseline fails on it; one that does not ignores it); in replica-ratio mode, before
//! the baseline is deleted the stable Deployment is scaled back to its share (stable
//! first, so the ready total never drops below the rollout's total); deletes are
//! guarded by the uid just read.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::Patch;
use kube::core::ObjectMeta;

use super::deployment::{image_of, replicas_of};
use super::ownership::{delete_params, gone};
use super::{
    ARTIFACT_ANNOTATION, BASELINE_SUFFIX, BASELINE_TRACK, Cluster, MANAGED_BY, OPT_IN,
    TOTAL_ANNOTATION, TargetError, is_managed, rules_with_baseline,
};
use crate::model::plan::Traffic;

/// `labels` with the keys of `renamed` given its values (where present) and the
/// baseline's track (replacing the canary's or none).
fn tracked(
    labels: Option<&BTreeMap<String, String>>,
    renamed: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out = labels.cloned().unwrap_or_default();
    for (k, v) in renamed {
        if out.contains_key(k) {
            out.insert(k.clone(), v.clone());
        }
    }
    out.insert(BASELINE_TRACK.0.into(), BASELINE_TRACK.1.into());
    out
}

impl Cluster<'_> {
    /// `<deployment>-baseline`.
    pub(super) fn baseline_deployment(&self) -> String {
        format!("{}{BASELINE_SUFFIX}", self.w.deployment)
    }

    /// The baseline Deployment, if there is one of rollgate's. A `<deployment>-baseline`
    /// rollgate did not create is not a baseline: never scaled nor deleted, and no
    /// reason to hold a plan that runs none (`start_baseline` refuses to adopt it).
    pub(super) async fn baseline(&self) -> Result<Option<Deployment>, TargetError> {
        Ok(self
            .any_baseline()
            .await?
            .filter(|d| is_managed(&d.metadata)))
    }

    /// `<service>-baseline` (Gateway API mode).
    pub(super) fn baseline_service(&self) -> String {
        format!("{}{BASELINE_SUFFIX}", self.w.service)
    }

    /// The label values the baseline's pods carry instead of the stable's: none in
    /// replica-ratio mode (the stable Service selects them), `<value>-baseline` for every
    /// key of the stable selector with a route (so only `<service>-baseline` does).
    fn baseline_renamed(&self, stable: &Deployment) -> BTreeMap<String, String> {
        if self.w.traffic == Traffic::ReplicaRatio {
            return BTreeMap::new();
        }
        stable
            .spec
            .as_ref()
            .and_then(|s| s.selector.match_labels.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, format!("{v}{BASELINE_SUFFIX}")))
            .collect()
    }

    async fn any_baseline_service(&self) -> Result<Option<Service>, TargetError> {
        let name = self.baseline_service();
        self.timed(
            &format!("cannot read service {name}"),
            self.services.get_opt(&name),
        )
        .await
    }

    /// Gateway API mode: whether `<service>-baseline` is there and rollgate's.
    pub(super) async fn has_baseline_service(&self) -> Result<bool, TargetError> {
        Ok(self
            .any_baseline_service()
            .await?
            .is_some_and(|s| is_managed(&s.metadata)))
    }

    /// Gateway API mode: apply `<service>-baseline`, a copy of the stable Service (its
    /// ports) selecting the baseline's pods. A foreign one is never adopted.
    pub(super) async fn start_baseline_service(&self) -> Result<(), TargetError> {
        let name = self.baseline_service();
        if let Some(existing) = self.any_baseline_service().await?
            && !is_managed(&existing.metadata)
        {
            return Err(TargetError::failed(format!(
                "service {name} exists and was not created by rollgate; refusing to adopt it as the fresh baseline's"
            )));
        }
        let stable = self.stable_service().await?;
        let renamed = self.baseline_renamed(&self.stable().await?);
        let spec = stable.spec.unwrap_or_default();
        let mut labels = tracked(stable.metadata.labels.as_ref(), &BTreeMap::new());
        labels.remove(OPT_IN.0);
        labels.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
        let selector = tracked(spec.selector.as_ref(), &renamed);
        self.apply_service_copy(&name, labels, selector, spec.ports)
            .await
    }

    async fn any_baseline(&self) -> Result<Option<Deployment>, TargetError> {
        let name = self.baseline_deployment();
        self.timed(
            &format!("cannot read deployment {name}"),
            self.deployments.get_opt(&name),
        )
        .await
    }

    /// Create the baseline (if it is not there yet) with `replicas`: the stable
    /// Deployment's spec as it runs, tracked as the baseline, recording the stable
    /// artifact and the rollout's `total`. An existing one is left as it is (its
    /// replicas are the split's).
    pub(super) async fn start_baseline(
        &self,
        replicas: i32,
        total: i32,
    ) -> Result<Deployment, TargetError> {
        if let Some(existing) = self.any_baseline().await? {
            if !is_managed(&existing.metadata) {
                return Err(TargetError::failed(format!(
                    "deployment {} exists and was not created by rollgate; refusing to adopt it as the fresh baseline",
                    self.baseline_deployment()
                )));
            }
            return Ok(existing);
        }
        let stable = self.stable().await?;
        let Some(mut spec) = stable.spec.clone() else {
            return Err(TargetError::failed(format!(
                "deployment {} has no spec",
                self.w.deployment
            )));
        };
        spec.replicas = Some(replicas);
        let renamed = self.baseline_renamed(&stable);
        spec.selector.match_labels = Some(tracked(spec.selector.match_labels.as_ref(), &renamed));
        spec.template.metadata = Some(ObjectMeta {
            labels: Some(tracked(
                spec.template
                    .metadata
                    .as_ref()
                    .and_then(|m| m.labels.as_ref()),
                &renamed,
            )),
            annotations: spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.clone()),
            ..ObjectMeta::default()
        });
        let mut labels = tracked(stable.metadata.labels.as_ref(), &BTreeMap::new());
        labels.remove(OPT_IN.0);
        labels.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
        let artifact = image_of(&stable, self.w.container.as_deref()).unwrap_or_default();
        let name = self.baseline_deployment();
        let baseline = Deployment {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(self.w.namespace.clone()),
                labels: Some(labels),
                annotations: Some(BTreeMap::from([
                    (ARTIFACT_ANNOTATION.to_owned(), artifact),
                    (TOTAL_ANNOTATION.to_owned(), total.to_string()),
                ])),
                ..ObjectMeta::default()
            },
            spec: Some(spec),
            status: None,
        };
        tracing::info!(
            namespace = %self.w.namespace,
            deployment = %name,
            replicas,
            "starting a fresh baseline"
        );
        self.timed(
            &format!("cannot apply deployment {name}"),
            self.deployments
                .patch(&name, &Self::apply(), &Patch::Apply(&baseline)),
        )
        .await
    }

    /// Set the baseline's `spec.replicas` (a merge patch, as the canary's).
    pub(super) async fn scale_baseline(&self, replicas: i32) -> Result<(), TargetError> {
        let name = self.baseline_deployment();
        let patch = serde_json::json!({ "spec": { "replicas": replicas } });
        self.timed(
            &format!("cannot scale deployment {name}"),
            self.deployments
                .patch(&name, &Self::merge(), &Patch::Merge(&patch)),
        )
        .await?;
        Ok(())
    }

    /// Take the baseline away: with a route, its backendRef first (its share back to
    /// the stable), then `<service>-baseline` (only rollgate's), then the Deployment;
    /// in replica-ratio mode its replicas back to the stable Deployment first (it takes
    /// `total` less what the canary still runs), then the Deployment. Nothing to do
    /// when there is none.
    pub(super) async fn remove_baseline(&self) -> Result<(), TargetError> {
        if let Traffic::GatewayRoute { route, rule, .. } = &self.w.traffic {
            let (stable, canary, baseline) = (
                self.w.service.clone(),
                self.canary_service(),
                self.baseline_service(),
            );
            self.update_route(route, |value| {
                if super::ref_weight(value, *rule, &baseline).is_none() {
                    return Ok(None);
                }
                rules_with_baseline(value, *rule, &stable, &canary, &baseline, false)
                    .map(Some)
                    .map_err(|e| TargetError::failed(format!("httproute {route}: {e}")))
            })
            .await?;
            if let Some(s) = self.any_baseline_service().await?
                && is_managed(&s.metadata)
            {
                let name = self.baseline_service();
                let dp = delete_params(&s.metadata);
                self.timed(&format!("cannot delete service {name}"), async {
                    gone(self.services.delete(&name, &dp).await)
                })
                .await?;
            }
        }
        let Some(baseline) = self.baseline().await? else {
            return Ok(());
        };
        if self.w.traffic == Traffic::ReplicaRatio {
            let canary = self.canary().await?.filter(|c| is_managed(&c.metadata));
            let total = canary
                .as_ref()
                .and_then(Self::total_of)
                .or_else(|| Self::total_of(&baseline));
            if let Some(total) = total {
                let c = canary.as_ref().map_or(0, replicas_of);
                let s = (total - c).max(0);
                if replicas_of(&self.stable().await?) < s {
                    self.patch_stable(None, Some(s)).await?;
                }
            }
        }
        let name = self.baseline_deployment();
        tracing::info!(namespace = %self.w.namespace, deployment = %name, "removing the fresh baseline");
        let dp = delete_params(&baseline.metadata);
        self.timed(&format!("cannot delete deployment {name}"), async {
            gone(self.deployments.delete(&name, &dp).await)
        })
        .await
    }
}
