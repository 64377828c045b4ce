//! What rollgate creates, refuses to adopt, and deletes on a cluster: the candidate
//! Deployment and Service (`-canary` or `-preview`), copies of the stable ones.
//!
//! Invariants: every object created here carries the managed-by label ([`MANAGED_BY`])
//! and never the opt-in one; `start` refuses a candidate name taken by an object
//! without the managed-by label *before* writing anything; an object without that label
//! is never deleted nor overwritten; deletes are guarded by the uid just read, and one
//! already gone has reached its goal.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use kube::api::{DeleteParams, Patch, Preconditions};
use kube::core::ObjectMeta;

use super::deployment::{container_name, replicas_of};
use super::deployments::Mode;
use super::{
    ACTIVE_SELECTOR_ANNOTATION, ARTIFACT_ANNOTATION, Cluster, MANAGED_BY, OPT_IN, TOTAL_ANNOTATION,
    TargetError, is_managed,
};
use crate::model::plan::Traffic;

impl Cluster<'_> {
    /// Labels on everything rollgate creates (never the opt-in: a copy is rollgate's,
    /// not a Deployment its owner opted in to be patched).
    pub(super) fn owned_labels(
        &self,
        base: Option<&BTreeMap<String, String>>,
    ) -> BTreeMap<String, String> {
        let mut labels = base.cloned().unwrap_or_default();
        labels.remove(OPT_IN.0);
        labels.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
        let (k, v) = self.track();
        labels.insert(k.into(), v.into());
        labels
    }

    /// The label values the canary's pods carry instead of the stable's, so the stable
    /// Service (gateway mode, blue-green) does not select them: `<value>-canary` (or
    /// `-preview`) for every key of the stable selector. In replica-ratio canary mode the
    /// stable Service must select both, so nothing is renamed.
    pub(super) fn renamed(&self, stable: &Deployment) -> BTreeMap<String, String> {
        if self.w.traffic == Traffic::ReplicaRatio && matches!(self.mode, Mode::Canary) {
            return BTreeMap::new();
        }
        let suffix = self.suffix();
        stable
            .spec
            .as_ref()
            .and_then(|s| s.selector.match_labels.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, format!("{v}{suffix}")))
            .collect()
    }

    pub(super) fn rename(
        &self,
        labels: Option<&BTreeMap<String, String>>,
        renamed: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        let mut out = labels.cloned().unwrap_or_default();
        for (k, v) in renamed {
            if out.contains_key(k) {
                out.insert(k.clone(), v.clone());
            }
        }
        let (k, v) = self.track();
        out.insert(k.into(), v.into());
        out
    }

    /// Apply the canary Deployment (a copy of `stable` running `artifact`) and its Service.
    pub(super) async fn start(&self, artifact: &str) -> Result<(), TargetError> {
        let stable = self.stable().await?;
        let existing = self.canary().await?;
        // Refuse before writing anything if either canary name is taken by someone else.
        let service = self.canary_service();
        if self
            .timed(
                &format!("cannot read service {service}"),
                self.services.get_opt(&service),
            )
            .await?
            .is_some_and(|s| !is_managed(&s.metadata))
        {
            return Err(TargetError::failed(format!(
                "service {service} exists and was not created by rollgate; refusing to adopt it"
            )));
        }
        if let Some(c) = &existing
            && !is_managed(&c.metadata)
        {
            return Err(TargetError::failed(format!(
                "deployment {} exists and was not created by rollgate; refusing to adopt it",
                self.canary_deployment()
            )));
        }
        let total = existing
            .as_ref()
            .and_then(|c| {
                c.metadata
                    .annotations
                    .as_ref()?
                    .get(TOTAL_ANNOTATION)?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| replicas_of(&stable));
        let replicas = match (&existing, &self.w.traffic, self.mode) {
            // Keep what set_weight chose; a re-run must not reset the split.
            (Some(c), _, _) => replicas_of(c),
            (None, Traffic::ReplicaRatio, Mode::Canary) => 0,
            (None, _, _) => self.size_for(total, 0).unwrap_or(total).max(1),
        };
        let mut annotations = BTreeMap::from([
            (ARTIFACT_ANNOTATION.to_owned(), artifact.to_owned()),
            (TOTAL_ANNOTATION.to_owned(), total.to_string()),
        ]);
        if self.switches_selector() {
            // The selector before any switch: kept from the first start (a re-run after
            // the switch must not record the switched one).
            let kept = existing
                .as_ref()
                .and_then(|c| {
                    c.metadata
                        .annotations
                        .as_ref()?
                        .get(ACTIVE_SELECTOR_ANNOTATION)
                })
                .cloned();
            let original = match kept {
                Some(v) => v,
                None => serde_json::to_string(&self.active_selector().await?.1)
                    .map_err(|e| TargetError::failed(format!("cannot record the selector: {e}")))?,
            };
            annotations.insert(ACTIVE_SELECTOR_ANNOTATION.to_owned(), original);
        }
        let container = container_name(&stable, self.w.container.as_deref())?;
        let renamed = self.renamed(&stable);
        let Some(mut spec) = stable.spec.clone() else {
            return Err(TargetError::failed(format!(
                "deployment {} has no spec",
                self.w.deployment
            )));
        };
        spec.replicas = Some(replicas);
        spec.selector.match_labels =
            Some(self.rename(spec.selector.match_labels.as_ref(), &renamed));
        spec.template.metadata = Some(ObjectMeta {
            labels: Some(
                self.rename(
                    spec.template
                        .metadata
                        .as_ref()
                        .and_then(|m| m.labels.as_ref()),
                    &renamed,
                ),
            ),
            annotations: spec
                .template
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.clone()),
            ..ObjectMeta::default()
        });
        if let Some(pod) = spec.template.spec.as_mut() {
            for c in &mut pod.containers {
                if c.name == container {
                    c.image = Some(artifact.to_owned());
                }
            }
        }
        let canary = Deployment {
            metadata: ObjectMeta {
                name: Some(self.canary_deployment()),
                namespace: Some(self.w.namespace.clone()),
                labels: Some(self.owned_labels(stable.metadata.labels.as_ref())),
                annotations: Some(annotations),
                ..ObjectMeta::default()
            },
            spec: Some(spec),
            status: None,
        };
        let name = self.canary_deployment();
        self.timed(
            &format!("cannot apply deployment {name}"),
            self.deployments
                .patch(&name, &Self::apply(), &Patch::Apply(&canary)),
        )
        .await?;
        self.start_service(&renamed).await
    }

    pub(super) async fn start_service(
        &self,
        renamed: &BTreeMap<String, String>,
    ) -> Result<(), TargetError> {
        let stable = self.stable_service().await?;
        let canary_name = self.canary_service();
        let existing = self
            .timed(
                &format!("cannot read service {canary_name}"),
                self.services.get_opt(&canary_name),
            )
            .await?;
        if let Some(c) = &existing
            && !is_managed(&c.metadata)
        {
            return Err(TargetError::failed(format!(
                "service {canary_name} exists and was not created by rollgate; refusing to adopt it"
            )));
        }
        let spec = stable.spec.unwrap_or_default();
        let labels = self.owned_labels(stable.metadata.labels.as_ref());
        let selector = self.rename(spec.selector.as_ref(), renamed);
        self.apply_service_copy(&canary_name, labels, selector, spec.ports)
            .await
    }

    /// Apply `name`, rollgate's ClusterIP copy of a Service with `ports` (node ports
    /// dropped), `labels` and `selector` (the canary's and the fresh baseline's).
    pub(super) async fn apply_service_copy(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
        selector: BTreeMap<String, String>,
        ports: Option<Vec<ServicePort>>,
    ) -> Result<(), TargetError> {
        let service = Service {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(self.w.namespace.clone()),
                labels: Some(labels),
                ..ObjectMeta::default()
            },
            spec: Some(ServiceSpec {
                selector: Some(selector),
                ports: ports.map(|ports| {
                    ports
                        .into_iter()
                        .map(|mut p| {
                            p.node_port = None;
                            p
                        })
                        .collect()
                }),
                type_: Some("ClusterIP".into()),
                ..ServiceSpec::default()
            }),
            status: None,
        };
        self.timed(
            &format!("cannot apply service {name}"),
            self.services
                .patch(name, &Self::apply(), &Patch::Apply(&service)),
        )
        .await?;
        Ok(())
    }

    /// The candidate Deployment, which must exist and be rollgate's.
    pub(super) async fn owned_canary(&self) -> Result<Deployment, TargetError> {
        let name = self.canary_deployment();
        let canary = self.canary().await?.ok_or_else(|| {
            TargetError::failed(format!(
                "deployment {name} does not exist; start the candidate first"
            ))
        })?;
        if !is_managed(&canary.metadata) {
            return Err(TargetError::failed(format!(
                "deployment {name} was not created by rollgate"
            )));
        }
        Ok(canary)
    }

    /// Delete the canary Deployment and Service, only if rollgate created them.
    pub(super) async fn remove_canary(&self) -> Result<(), TargetError> {
        let name = self.canary_service();
        if let Some(s) = self
            .timed(
                &format!("cannot read service {name}"),
                self.services.get_opt(&name),
            )
            .await?
        {
            if !is_managed(&s.metadata) {
                return Err(TargetError::failed(format!(
                    "service {name} was not created by rollgate; refusing to delete it"
                )));
            }
            let dp = delete_params(&s.metadata);
            self.timed(&format!("cannot delete service {name}"), async {
                gone(self.services.delete(&name, &dp).await)
            })
            .await?;
        }
        let name = self.canary_deployment();
        if let Some(d) = self.canary().await? {
            if !is_managed(&d.metadata) {
                return Err(TargetError::failed(format!(
                    "deployment {name} was not created by rollgate; refusing to delete it"
                )));
            }
            let dp = delete_params(&d.metadata);
            self.timed(&format!("cannot delete deployment {name}"), async {
                gone(self.deployments.delete(&name, &dp).await)
            })
            .await?;
        }
        Ok(())
    }
}

pub(super) fn delete_params(meta: &ObjectMeta) -> DeleteParams {
    DeleteParams {
        preconditions: Some(Preconditions {
            uid: meta.uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::background()
    }
}

/// A delete whose object is already gone (deleted by someone else between our read
/// and our delete) has reached its goal.
pub(super) fn gone<T>(r: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}
