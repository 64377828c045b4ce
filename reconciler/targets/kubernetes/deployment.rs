//! Reading Deployments: which image a container runs, how far a rollout is, and the
//! replica split. Pure functions over k8s-openapi types, no I/O.

use k8s_openapi::api::apps::v1::Deployment;

use crate::targets::TargetError;

/// Canary replicas for `weight`% of `total`: ceil(total × weight / 100).
pub fn canary_replicas(total: i32, weight: u8) -> i32 {
    let total = i64::from(total.max(0));
    i32::try_from((total * i64::from(weight.min(100)) + 99) / 100).unwrap_or(i32::MAX)
}

/// The ready replicas a candidate needs before it takes `weight`% of the traffic of
/// `total` replicas: ceil(total × weight / 100), at least one once it takes any.
pub fn needed_ready(total: i32, weight: u8) -> i32 {
    if weight == 0 || total <= 0 {
        0
    } else {
        canary_replicas(total, weight).max(1)
    }
}

/// Replicas of `d` that run its current spec and are ready: none until the controller
/// has observed the latest generation (the counts it reports are an older spec's
/// before that), and never more than the updated ones.
pub fn ready_replicas(d: &Deployment) -> i32 {
    let Some(status) = &d.status else {
        return 0;
    };
    if let (Some(g), Some(seen)) = (d.metadata.generation, status.observed_generation)
        && seen < g
    {
        return 0;
    }
    let ready = status.ready_replicas.unwrap_or(0);
    status.updated_replicas.map_or(ready, |u| ready.min(u))
}

/// The image of the plan's container (`container`, or the first one).
pub(super) fn image_of(d: &Deployment, container: Option<&str>) -> Option<String> {
    let spec = d.spec.as_ref()?.template.spec.as_ref()?;
    let c = match container {
        Some(name) => spec.containers.iter().find(|c| c.name == name)?,
        None => spec.containers.first()?,
    };
    c.image.clone()
}

pub(super) fn container_name(
    d: &Deployment,
    container: Option<&str>,
) -> Result<String, TargetError> {
    let name = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| match container {
            Some(name) => s.containers.iter().find(|c| c.name == name),
            None => s.containers.first(),
        })
        .map(|c| c.name.clone());
    name.ok_or_else(|| {
        TargetError::failed(format!(
            "deployment {} has no container {}",
            d.metadata.name.as_deref().unwrap_or(""),
            container.unwrap_or("(any)")
        ))
    })
}

pub(super) fn replicas_of(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

/// Where a Deployment is in its rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rollout {
    Available,
    Progressing(String),
    Failed(String),
}

/// Read a Deployment's status: `ProgressDeadlineExceeded` fails; available when the
/// controller has seen the latest spec and every replica is updated and available.
pub fn rollout_of(d: &Deployment) -> Rollout {
    let name = d.metadata.name.as_deref().unwrap_or("");
    let want = replicas_of(d);
    let Some(status) = &d.status else {
        return Rollout::Progressing(format!("deployment {name} has no status yet"));
    };
    if let Some(c) = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Progressing")
        && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    {
        return Rollout::Failed(format!(
            "deployment {name}: ProgressDeadlineExceeded{}",
            c.message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ));
    }
    if let (Some(g), Some(seen)) = (d.metadata.generation, status.observed_generation)
        && seen < g
    {
        return Rollout::Progressing(format!("deployment {name}: generation {g} not observed"));
    }
    let updated = status.updated_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    if updated >= want && available >= want && total <= want {
        Rollout::Available
    } else {
        Rollout::Progressing(format!(
            "deployment {name}: {updated} updated, {available} available, {total} total of {want}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canary_replicas_round_up() {
        assert_eq!(canary_replicas(10, 0), 0);
        assert_eq!(canary_replicas(10, 5), 1);
        assert_eq!(canary_replicas(10, 25), 3);
        assert_eq!(canary_replicas(4, 50), 2);
        assert_eq!(canary_replicas(3, 100), 3);
        assert_eq!(canary_replicas(0, 50), 0);
    }

    #[test]
    fn a_share_needs_at_least_one_ready_replica() {
        assert_eq!(needed_ready(4, 0), 0);
        assert_eq!(needed_ready(4, 1), 1);
        assert_eq!(needed_ready(4, 20), 1);
        assert_eq!(needed_ready(4, 50), 2);
        assert_eq!(needed_ready(4, 100), 4);
        assert_eq!(needed_ready(0, 50), 0);
    }

    #[test]
    fn ready_replicas_count_only_the_observed_generation() {
        let d = |generation: i64, seen: i64, ready: i32, updated: i32| -> Deployment {
            serde_json::from_value(serde_json::json!({
                "metadata": { "name": "web-canary", "generation": generation },
                "status": { "observedGeneration": seen, "readyReplicas": ready,
                            "updatedReplicas": updated }
            }))
            .expect("deployment")
        };
        assert_eq!(ready_replicas(&d(2, 2, 3, 3)), 3);
        assert_eq!(ready_replicas(&d(3, 2, 3, 3)), 0, "a spec not yet seen");
        assert_eq!(
            ready_replicas(&d(2, 2, 3, 1)),
            1,
            "old pods are not the canary"
        );
        assert_eq!(ready_replicas(&Deployment::default()), 0, "no status yet");
    }
}
