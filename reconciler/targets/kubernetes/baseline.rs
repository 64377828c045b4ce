//! The fresh baseline on a cluster (issue #19, `baseline: fresh`), replica-ratio mode:
//! `<deployment>-baseline`, a copy of the stable Deployment as it runs (its pod
//! template, so the stable artifact), labelled `rollgate.dev/track: baseline` on the
//! Deployment, its selector and its pods the way the canary carries
//! `rollgate.dev/track: canary`, and given as many replicas as the canary, so the
//! stable Service (which selects all three, as it selects the canary in this mode)
//! splits the traffic canary : baseline : stable ≈ w : w : 100-2w by replica counts.
//!
//! Invariants: the baseline is created and deleted only here; it carries the managed-by
//! label ([`MANAGED_BY`](super::MANAGED_BY)) and never the opt-in one; a
//! `<deployment>-baseline` without the managed-by label is never adopted, overwritten,
//! scaled nor deleted (a plan that asks for a baseline fails on it; one that does not
//! ignores it); before it is deleted the stable Deployment is scaled back to its share
//! (stable first, so the ready total never drops below the rollout's total); deletes
//! are guarded by the uid just read. The replica split itself is `traffic.rs`'s.
//! Gateway API mode has no baseline yet: validation refuses `baseline: fresh` there
//! (see `Workload::capabilities`), and `set_routing` refuses it too.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Patch;
use kube::core::ObjectMeta;

use super::deployment::{image_of, replicas_of};
use super::ownership::{delete_params, gone};
use super::{
    ARTIFACT_ANNOTATION, BASELINE_SUFFIX, BASELINE_TRACK, Cluster, MANAGED_BY, OPT_IN,
    TOTAL_ANNOTATION, TargetError, is_managed,
};

/// `labels` with the baseline's track (replacing the canary's or none).
fn tracked(labels: Option<&BTreeMap<String, String>>) -> BTreeMap<String, String> {
    let mut out = labels.cloned().unwrap_or_default();
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
        spec.selector.match_labels = Some(tracked(spec.selector.match_labels.as_ref()));
        spec.template.metadata = Some(ObjectMeta {
            labels: Some(tracked(
                spec.template
                    .metadata
                    .as_ref()
                    .and_then(|m| m.labels.as_ref()),
            )),
            annotations: spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.clone()),
            ..ObjectMeta::default()
        });
        let mut labels = tracked(stable.metadata.labels.as_ref());
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

    /// Give the baseline's replicas back to the stable Deployment (stable first: it
    /// takes `total` less what the canary still runs), then delete the baseline.
    /// Nothing to do when there is none.
    pub(super) async fn remove_baseline(&self) -> Result<(), TargetError> {
        let Some(baseline) = self.baseline().await? else {
            return Ok(());
        };
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
        let name = self.baseline_deployment();
        tracing::info!(namespace = %self.w.namespace, deployment = %name, "removing the fresh baseline");
        let dp = delete_params(&baseline.metadata);
        self.timed(&format!("cannot delete deployment {name}"), async {
            gone(self.deployments.delete(&name, &dp).await)
        })
        .await
    }
}
