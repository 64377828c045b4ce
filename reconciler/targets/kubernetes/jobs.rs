//! The Kubernetes target's job runner: a job check as a `batch/v1` Job.
//!
//! The Job is the plan's `template` (a JobSpec) with rollgate's name (the engine's job
//! id), namespace (the workload's), labels (`app.kubernetes.io/managed-by: rollgate`,
//! `rollgate.dev/plan`, `rollgate.dev/check`, on the Job and its pods),
//! `activeDeadlineSeconds` (the check's timeout) and `ttlSecondsAfterFinished` (its
//! ttl: the cluster deletes it after). `{{plan}}`, `{{version}}` and `{{baseline}}` are
//! filled into the template's strings. It passes on `Complete`, fails on `Failed`
//! with the condition's reason and the pod's termination message.
//! Invariants: a Job that is not labelled managed-by rollgate is never adopted nor
//! deleted; `start` of an existing Job creates nothing; `cleanup` deletes only a Job
//! still running (a finished one stays for its ttl, for humans to read).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions, PropagationPolicy};
use kube::core::ObjectMeta;
use serde_json::Value;

use super::{Connection, MANAGED_BY, api_err, is_managed};
use crate::engine::JobState;
use crate::model::Plan;
use crate::model::plan::{JobRun, Workload};
use crate::targets::TargetError;
use crate::targets::jobs::{JobRequest, JobRunner};

/// What the job runner calls, as RBAC names it: Jobs `get` (poll, and before a create),
/// `create` (start), `delete` (cleanup of a running one; Background propagation so the
/// cluster removes its pods); Pods `list` (a failed Job's termination message).
pub const RBAC: &[(&str, &str, &[&str])] = &[
    ("batch", "jobs", &["get", "create", "delete"]),
    ("", "pods", &["list"]),
];

/// The label naming the plan a Job belongs to.
pub const PLAN_LABEL: &str = "rollgate.dev/plan";
/// The label naming the check a Job runs.
pub const CHECK_LABEL: &str = "rollgate.dev/check";

/// Job checks of Kubernetes plans, on the target's connection.
pub struct KubernetesJobs {
    connection: Arc<Connection>,
    call_timeout: Duration,
}

impl std::fmt::Debug for KubernetesJobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesJobs").finish_non_exhaustive()
    }
}

impl KubernetesJobs {
    pub fn on(connection: Arc<Connection>) -> Self {
        Self {
            connection,
            call_timeout: Duration::from_secs(30),
        }
    }

    fn jobs(&self, plan: &Plan) -> Result<(Api<Job>, String), TargetError> {
        match &plan.workload {
            Workload::Kubernetes(k) => Ok((
                Api::namespaced(self.connection.client(), &k.namespace),
                k.namespace.clone(),
            )),
            other => Err(TargetError::refused(format!(
                "plan {} has a {} workload; Kubernetes jobs run beside kubernetes workloads",
                plan.name,
                other.kind()
            ))),
        }
    }

    fn call<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, TargetError>>,
    ) -> Result<T, TargetError> {
        let limit = self.call_timeout;
        self.connection.block_on(async move {
            tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
                Err(TargetError::unreachable(
                    "the Kubernetes API did not answer in time",
                ))
            })
        })
    }
}

/// Every string in `v` with the request's placeholders filled in.
fn fill(v: &mut Value, plan: &str, req: &JobRequest<'_>) {
    match v {
        Value::String(s) => *s = req.fill(plan, s),
        Value::Array(a) => a.iter_mut().for_each(|x| fill(x, plan, req)),
        Value::Object(o) => o.values_mut().for_each(|x| fill(x, plan, req)),
        _ => {}
    }
}

/// The Job rollgate creates for `req` of `plan` in `namespace`.
pub fn job_of(plan: &Plan, namespace: &str, req: &JobRequest<'_>) -> Result<Job, TargetError> {
    let JobRun::Kubernetes { template, ttl } = &req.job.run else {
        return Err(TargetError::refused(format!(
            "check {} runs a command; a Kubernetes target runs Jobs from a template",
            req.job.name
        )));
    };
    let mut template = template.clone();
    fill(&mut template, &plan.name, req);
    let labels: std::collections::BTreeMap<String, String> = [
        (MANAGED_BY.0.to_owned(), MANAGED_BY.1.to_owned()),
        (PLAN_LABEL.to_owned(), plan.name.clone()),
        (CHECK_LABEL.to_owned(), req.job.name.clone()),
    ]
    .into();
    // The pods carry the labels too (so `kubectl get pods -l rollgate.dev/check=…`
    // finds them), beside the template's own.
    if let Some(meta) = template
        .pointer_mut("/template/metadata")
        .and_then(Value::as_object_mut)
    {
        let l = meta
            .entry("labels")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(l) = l.as_object_mut() {
            for (k, v) in &labels {
                l.insert(k.clone(), Value::String(v.clone()));
            }
        }
    } else if let Some(t) = template.get_mut("template").and_then(Value::as_object_mut) {
        t.insert(
            "metadata".to_owned(),
            serde_json::json!({ "labels": labels }),
        );
    }
    let mut spec: JobSpec = serde_json::from_value(template).map_err(|e| {
        TargetError::refused(format!(
            "the job template of check {} is not a JobSpec: {e}",
            req.job.name
        ))
    })?;
    spec.active_deadline_seconds =
        Some(i64::try_from(req.job.timeout.as_secs().max(1)).unwrap_or(i64::MAX));
    spec.ttl_seconds_after_finished = Some(i32::try_from(ttl.as_secs()).unwrap_or(i32::MAX));
    Ok(Job {
        metadata: ObjectMeta {
            name: Some(req.id.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels),
            annotations: Some(
                [(
                    super::ARTIFACT_ANNOTATION.to_owned(),
                    req.version.to_owned(),
                )]
                .into(),
            ),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
        status: None,
    })
}

/// Where a Job stands, from its conditions (pure).
pub fn state_of(job: &Job) -> Option<(bool, String)> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    conditions
        .iter()
        .filter(|c| c.status == "True")
        .find_map(|c| match c.type_.as_str() {
            "Complete" => Some((true, String::new())),
            "Failed" => Some((
                false,
                [c.reason.as_deref(), c.message.as_deref()]
                    .into_iter()
                    .flatten()
                    .filter(|s| !s.is_empty())
                    .collect::<Vec<_>>()
                    .join(": "),
            )),
            _ => None,
        })
}

/// The first termination message of a terminated container among `pods` (pure).
pub fn termination_message(pods: &[Pod]) -> Option<String> {
    pods.iter()
        .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
        .flatten()
        .filter_map(|c| {
            let t = [c.state.as_ref(), c.last_state.as_ref()]
                .into_iter()
                .flatten()
                .find_map(|s| s.terminated.as_ref())?;
            let msg = t.message.as_deref().unwrap_or("").trim();
            (!msg.is_empty()).then(|| format!("{}: {msg}", c.name))
        })
        .next()
}

impl JobRunner for KubernetesJobs {
    fn start(&mut self, plan: &Plan, req: &JobRequest<'_>) -> Result<(), TargetError> {
        let (api, ns) = self.jobs(plan)?;
        let job = job_of(plan, &ns, req)?;
        let id = req.id.to_owned();
        self.call(async move {
            match api.get_opt(&id).await.map_err(api_err("get job"))? {
                Some(existing) if is_managed(&existing.metadata) => Ok(()),
                Some(_) => Err(TargetError::refused(format!(
                    "a Job {id} exists that rollgate does not manage; it is left alone"
                ))),
                None => match api.create(&PostParams::default(), &job).await {
                    Ok(_) => Ok(()),
                    // Created meanwhile (by an earlier attempt): idempotent.
                    Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
                    Err(e) => Err(api_err("create job")(e)),
                },
            }
        })
    }

    fn poll(&mut self, plan: &Plan, id: &str) -> Result<JobState, TargetError> {
        let (api, ns) = self.jobs(plan)?;
        let pods: Api<Pod> = Api::namespaced(self.connection.client(), &ns);
        let id = id.to_owned();
        self.call(async move {
            let job = api
                .get_opt(&id)
                .await
                .map_err(api_err("get job"))?
                .ok_or_else(|| TargetError::refused(format!("job {id} does not exist")))?;
            if !is_managed(&job.metadata) {
                return Err(TargetError::refused(format!("job {id} is not rollgate's")));
            }
            Ok(match state_of(&job) {
                None => JobState::Running,
                Some((true, _)) => JobState::Succeeded {
                    output: String::new(),
                },
                Some((false, why)) => {
                    let list = ListParams::default().labels(&format!("job-name={id}"));
                    let message = pods
                        .list(&list)
                        .await
                        .ok()
                        .and_then(|l| termination_message(&l.items));
                    let reason = match (why.is_empty(), message) {
                        (_, Some(m)) if why.is_empty() => m,
                        (_, Some(m)) => format!("{why}; {m}"),
                        (false, None) => why,
                        (true, None) => "the Job failed".to_owned(),
                    };
                    JobState::Failed { reason }
                }
            })
        })
    }

    fn cleanup(&mut self, plan: &Plan, id: &str) -> Result<(), TargetError> {
        let (api, _) = self.jobs(plan)?;
        let id = id.to_owned();
        self.call(async move {
            let Some(job) = api.get_opt(&id).await.map_err(api_err("get job"))? else {
                return Ok(());
            };
            if !is_managed(&job.metadata) || state_of(&job).is_some() {
                return Ok(()); // not ours, or finished: kept for its ttl
            }
            // By the uid just read: a Job replaced meanwhile is not this one.
            let dp = DeleteParams {
                propagation_policy: Some(PropagationPolicy::Background),
                preconditions: job.metadata.uid.clone().map(|uid| Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match api.delete(&id, &dp).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                Err(e) => Err(api_err("delete job")(e)),
            }
        })
    }
}
