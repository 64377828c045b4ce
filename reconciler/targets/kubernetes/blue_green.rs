//! Blue-green on Kubernetes: the active Service's selector switch and the delayed
//! retirement of the preview after promotion.
//!
//! The active Service is the user's: rollgate changes only its `spec.selector`, by a
//! JSON Patch whose first operation tests the selector it has just read (a concurrent
//! edit fails the step, which holds and retries; nothing is overwritten blindly). The
//! selector to restore is the one recorded on the preview Deployment when it was
//! created, so a switch back after any crash restores exactly the original.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Service;
use kube::api::Patch;
use serde_json::json;

use super::{
    ACTIVE_SELECTOR_ANNOTATION, Cluster, Observed, SCALE_DOWN_AT_ANNOTATION, Share, TargetError,
    is_managed,
};
use crate::engine::TargetHealth;
use crate::model::plan::BlueGreen;

type Selector = BTreeMap<String, String>;

/// `selector` with every key of `renamed` that it has set to the renamed value: what
/// selects the preview's pods instead of the stable's. Pure.
pub fn switched(selector: &Selector, renamed: &Selector) -> Selector {
    selector
        .iter()
        .map(|(k, v)| (k.clone(), renamed.get(k).unwrap_or(v).clone()))
        .collect()
}

impl Cluster<'_> {
    /// The active Service and its selector.
    pub(super) async fn active_selector(&self) -> Result<(Service, Selector), TargetError> {
        let name = &self.w.service;
        let service = self.stable_service().await?;
        let selector = service
            .spec
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_default();
        if selector.is_empty() {
            return Err(TargetError::failed(format!(
                "service {name} has no selector; a blue-green switch needs one"
            )));
        }
        Ok((service, selector))
    }

    /// The selector before any switch, as recorded on the preview (`None`: no preview).
    async fn original_selector(&self) -> Result<Option<Selector>, TargetError> {
        let Some(preview) = self.canary().await? else {
            return Ok(None);
        };
        if !is_managed(&preview.metadata) {
            return Err(TargetError::failed(format!(
                "deployment {} was not created by rollgate",
                self.canary_deployment()
            )));
        }
        let recorded = preview
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ACTIVE_SELECTOR_ANNOTATION))
            .ok_or_else(|| {
                TargetError::failed(format!(
                    "deployment {} has no {ACTIVE_SELECTOR_ANNOTATION} annotation; start the candidate again",
                    self.canary_deployment()
                ))
            })?;
        serde_json::from_str(recorded).map(Some).map_err(|e| {
            TargetError::failed(format!(
                "deployment {}: unreadable {ACTIVE_SELECTOR_ANNOTATION}: {e}",
                self.canary_deployment()
            ))
        })
    }

    /// The selector that sends the active Service's traffic to the preview.
    async fn preview_selector(&self, original: &Selector) -> Result<Selector, TargetError> {
        let stable = self.stable().await?;
        Ok(switched(original, &self.renamed(&stable)))
    }

    /// Point the active Service at the preview (`Some(100)`) or back at the stable
    /// (`Some(0)` or `None`). Weights in between do not exist in blue-green.
    pub(super) async fn switch(&self, weight: Option<u8>) -> Result<(), TargetError> {
        let to_preview = match weight {
            None | Some(0) => false,
            Some(100) => true,
            Some(w) => {
                return Err(TargetError::failed(format!(
                    "blue-green switches all traffic at once; {w}% is not a step it can take"
                )));
            }
        };
        let Some(original) = self.original_selector().await? else {
            if to_preview {
                return Err(TargetError::failed(format!(
                    "deployment {} does not exist; start the candidate first",
                    self.canary_deployment()
                )));
            }
            // No preview: it was deleted only after the selector was restored.
            return Ok(());
        };
        let want = if to_preview {
            self.preview_selector(&original).await?
        } else {
            original
        };
        let (_, current) = self.active_selector().await?;
        if current == want {
            return Ok(());
        }
        // Users go to the preview only once every one of its replicas is ready.
        if to_preview {
            let preview = self.owned_canary().await?;
            let share = Share::of(&preview, 100);
            if !share.covered() {
                self.defer(&preview, share);
                return Ok(());
            }
        }
        let name = &self.w.service;
        let ops = json!([
            { "op": "test", "path": "/spec/selector", "value": current },
            { "op": "replace", "path": "/spec/selector", "value": want },
        ]);
        let patch: Patch<()> =
            Patch::Json(serde_json::from_value(ops).map_err(|e| {
                TargetError::failed(format!("cannot build a patch for {name}: {e}"))
            })?);
        self.timed(
            &format!("cannot switch service {name}"),
            self.services.patch(name, &Self::merge(), &patch),
        )
        .await?;
        Ok(())
    }

    /// The active Service's selector against what `weight` (0 or 100) asks for, while a
    /// preview runs.
    pub(super) async fn selector_observed(&self, weight: u8) -> Result<Observed, TargetError> {
        let (_, current) = self.active_selector().await?;
        let Some(original) = self.original_selector().await? else {
            return Ok(Observed::Differs(format!(
                "deployment {} does not exist",
                self.canary_deployment()
            )));
        };
        let want = if weight == 100 {
            self.preview_selector(&original).await?
        } else {
            original
        };
        Ok(if current == want {
            Observed::AsDesired
        } else {
            Observed::Differs(format!(
                "service {} selects {current:?}, the step {want:?}",
                self.w.service
            ))
        })
    }

    /// At rest (no preview): healthy when the active Service selects none of the
    /// preview's selector values.
    pub(super) async fn selector_at_rest(&self) -> Result<TargetHealth, TargetError> {
        let (_, current) = self.active_selector().await?;
        let stable = self.stable().await?;
        let renamed = self.renamed(&stable);
        Ok(if renamed.iter().any(|(k, v)| current.get(k) == Some(v)) {
            TargetHealth::Progressing
        } else {
            TargetHealth::Healthy
        })
    }

    /// Promotion: the stable Deployment takes the artifact while traffic is on the
    /// preview, then traffic switches back, then the preview goes once `scaleDownDelay`
    /// has passed. Each call does what is due and returns; the engine calls again until
    /// the target is healthy (no preview left).
    pub(super) async fn promote_blue_green(
        &self,
        artifact: &str,
        bg: &BlueGreen,
    ) -> Result<(), TargetError> {
        self.patch_stable(Some(artifact), None).await?;
        self.wait_stable(artifact).await?;
        self.weigh(None).await?;
        let Some(preview) = self.canary().await? else {
            return self.remove_canary().await;
        };
        let now = Utc::now();
        let due = preview
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SCALE_DOWN_AT_ANNOTATION))
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc));
        match due {
            Some(at) if now >= at => self.remove_canary().await,
            Some(_) => Ok(()),
            None if bg.scale_down_delay.is_zero() => self.remove_canary().await,
            None => {
                let at = now
                    + chrono::Duration::from_std(bg.scale_down_delay)
                        .unwrap_or(chrono::Duration::MAX);
                self.annotate_preview(SCALE_DOWN_AT_ANNOTATION, &at.to_rfc3339())
                    .await
            }
        }
    }

    async fn annotate_preview(&self, key: &str, value: &str) -> Result<(), TargetError> {
        let name = self.canary_deployment();
        let patch = json!({ "metadata": { "annotations": { key: value } } });
        self.timed(
            &format!("cannot annotate deployment {name}"),
            self.deployments
                .patch(&name, &Self::merge(), &Patch::Merge(&patch)),
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_switched_selector_renames_only_the_stable_selector_keys() {
        let selector = Selector::from([
            ("app".to_owned(), "web".to_owned()),
            ("tier".to_owned(), "front".to_owned()),
        ]);
        let renamed = Selector::from([("app".to_owned(), "web-preview".to_owned())]);
        let s = switched(&selector, &renamed);
        assert_eq!(s.get("app").map(String::as_str), Some("web-preview"));
        assert_eq!(s.get("tier").map(String::as_str), Some("front"));
        assert_eq!(s.len(), 2, "no key is added");
    }
}
