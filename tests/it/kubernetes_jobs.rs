//! Job checks on Kubernetes (#18): the `JobRunner` contract on the in-memory cluster
//! (the test plays the Job controller: it writes the Job's conditions and its pod's
//! termination message), the Job as rollgate creates it from the plan's template, its
//! failure reason, cleanup, foreign Jobs left alone; and the opt-in real-cluster case
//! (skipped with a printed reason without `ROLLGATE_E2E_KUBECONFIG`).

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use rollgate::engine::JobState;
use rollgate::model::Plan;
use rollgate::targets::jobs::{JobRequest, JobRunner, contract};
use rollgate::targets::kubernetes::KubernetesTarget;
use rollgate::targets::kubernetes::jobs::KubernetesJobs;
use serde_json::json;

use crate::support::cluster::{self, E2E_SKIPPED};

fn plan_in(ns: &str) -> Plan {
    let text = format!(
        "apiVersion: rollgate.dev/v1alpha1\nkind: RolloutPlan\nmetadata: {{ name: web }}\nspec:\n  target: k8s\n  workload:\n    kubernetes: {{ namespace: {ns}, deployment: web }}\n  artifact: \"registry.example/web:v2\"\n  strategy: {{ canary: {{ steps: [ {{ setWeight: 20 }}, {{ analysis: {{ checks: [ok, bad, long], duration: 0s }} }}, {{ setWeight: 100 }} ] }} }}\n  checks:\n{}{}{}",
        check("ok", "echo ok; echo {{version}}", "1m"),
        check("bad", "echo broken > /dev/termination-log; exit 1", "1m"),
        check("long", "sleep 3600", "2h"),
    );
    rollgate::model::validate::parse_plan("plans/web.yaml", &text, None)
        .expect("valid plan")
        .plan
}

fn check(name: &str, script: &str, timeout: &str) -> String {
    format!(
        "    - name: {name}\n      job:\n        timeout: {timeout}\n        ttl: 10m\n        template:\n          backoffLimit: 0\n          template:\n            spec:\n              restartPolicy: Never\n              containers: [ {{ name: smoke, image: \"busybox:1.36\", command: [sh, -c, {script:?}] }} ]\n"
    )
}

fn runner(
    client: kube::Client,
    runtime: tokio::runtime::Runtime,
) -> (KubernetesJobs, KubernetesTarget) {
    let t = KubernetesTarget::new(runtime, client);
    (KubernetesJobs::on(t.connection()), t)
}

/// The Job controller's verdict on `id`, written as a real one would: the Job's
/// conditions and, for a failure, a pod with its container's termination message.
fn finish_job(t: &KubernetesTarget, client: &kube::Client, ns: &str, id: &str, ok: bool) {
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    t.block_on(async {
        let mut job = jobs.get(id).await.expect("job");
        let condition = if ok {
            json!({ "type": "Complete", "status": "True" })
        } else {
            json!({ "type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit" })
        };
        job.status = Some(serde_json::from_value(json!({ "conditions": [condition] })).expect("status"));
        jobs.replace_status(id, &PostParams::default(), &job)
            .await
            .expect("status written");
        if !ok {
            let pod: Pod = serde_json::from_value(json!({
                "metadata": { "name": format!("{id}-x1"), "namespace": ns, "labels": { "job-name": id } },
                "spec": { "containers": [ { "name": "smoke", "image": "busybox" } ] },
                "status": { "containerStatuses": [ {
                    "name": "smoke", "image": "busybox", "imageID": "", "ready": false, "restartCount": 0,
                    "state": { "terminated": { "exitCode": 1, "message": "broken\n" } }
                } ] }
            }))
            .expect("pod");
            pods.create(&PostParams::default(), &pod).await.expect("pod created");
        }
    });
}

fn req<'a>(plan: &'a Plan, id: &'a str, check: &str) -> JobRequest<'a> {
    JobRequest {
        id,
        job: plan.job(check).expect("job check"),
        version: "registry.example/web:v2",
        baseline: Some("registry.example/web:v1"),
    }
}

#[test]
fn the_kubernetes_runner_passes_the_job_runner_contract_on_the_in_memory_cluster() {
    let (runtime, client) = cluster::api(Vec::new(), None);
    let (mut jobs, t) = runner(client.clone(), runtime);
    let plan = plan_in("shop");
    let set = contract::Jobs {
        succeeds: plan.job("ok").expect("ok").clone(),
        fails: plan.job("bad").expect("bad").clone(),
        runs: plan.job("long").expect("long").clone(),
    };
    let mut settle = |id: &str| {
        if id.ends_with("-ok") || id.ends_with("-bad") {
            finish_job(&t, &client, "shop", id, id.ends_with("-ok"));
        }
    };
    contract::run(
        &mut jobs,
        &plan,
        &set,
        "c",
        &mut settle,
        10,
        Duration::from_millis(1),
    );
}

#[test]
fn a_job_is_created_from_the_template_owned_labelled_and_bounded() {
    let (runtime, client) = cluster::api(Vec::new(), None);
    let (mut jobs, t) = runner(client.clone(), runtime);
    let plan = plan_in("shop");
    jobs.start(&plan, &req(&plan, "web-ok-1", "ok"))
        .expect("start");
    jobs.start(&plan, &req(&plan, "web-ok-1", "ok"))
        .expect("start again");
    let api: Api<Job> = Api::namespaced(client.clone(), "shop");
    let job = t.block_on(api.get("web-ok-1")).expect("the Job exists");
    let labels = job.metadata.labels.clone().expect("labels");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "rollgate");
    assert_eq!(labels["rollgate.dev/plan"], "web");
    assert_eq!(labels["rollgate.dev/check"], "ok");
    let spec = job.spec.expect("spec");
    assert_eq!(
        spec.active_deadline_seconds,
        Some(60),
        "the check's timeout"
    );
    assert_eq!(
        spec.ttl_seconds_after_finished,
        Some(600),
        "deleted after its ttl"
    );
    assert_eq!(
        spec.backoff_limit,
        Some(0),
        "the template's own fields stay"
    );
    let pod = spec.template;
    let pod_labels = pod
        .metadata
        .expect("pod metadata")
        .labels
        .expect("pod labels");
    assert_eq!(pod_labels["rollgate.dev/check"], "ok");
    let container = &pod.spec.expect("pod spec").containers[0];
    assert_eq!(
        container.command.as_deref(),
        Some(
            &[
                "sh".to_owned(),
                "-c".to_owned(),
                "echo ok; echo registry.example/web:v2".to_owned()
            ][..]
        ),
        "{{{{version}}}} filled in"
    );
    let list = t.block_on(api.list(&Default::default())).expect("list");
    assert_eq!(list.items.len(), 1, "started twice, created once");
    assert_eq!(
        jobs.poll(&plan, "web-ok-1").expect("poll"),
        JobState::Running
    );
}

#[test]
fn a_failed_job_fails_with_its_condition_and_the_pods_termination_message() {
    let (runtime, client) = cluster::api(Vec::new(), None);
    let (mut jobs, t) = runner(client.clone(), runtime);
    let plan = plan_in("shop");
    jobs.start(&plan, &req(&plan, "web-bad-1", "bad"))
        .expect("start");
    finish_job(&t, &client, "shop", "web-bad-1", false);
    assert_eq!(
        jobs.poll(&plan, "web-bad-1").expect("poll"),
        JobState::Failed {
            reason:
                "BackoffLimitExceeded: Job has reached the specified backoff limit; smoke: broken"
                    .to_owned()
        }
    );
}

#[test]
fn cleanup_deletes_a_running_job_keeps_a_finished_one_and_never_touches_a_foreign_one() {
    let foreign = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": { "name": "web-long-1", "namespace": "shop", "labels": { "team": "shop" } },
        "spec": { "template": { "spec": { "restartPolicy": "Never", "containers": [ { "name": "x", "image": "busybox" } ] } } }
    });
    let (runtime, client) = cluster::api(vec![foreign], None);
    let (mut jobs, t) = runner(client.clone(), runtime);
    let plan = plan_in("shop");
    let api: Api<Job> = Api::namespaced(client.clone(), "shop");
    let exists = |name: &str| t.block_on(api.get_opt(name)).expect("get").is_some();

    // A Job of that name that rollgate did not create is neither adopted nor deleted.
    let e = jobs
        .start(&plan, &req(&plan, "web-long-1", "long"))
        .expect_err("foreign");
    assert!(e.message.contains("does not manage"), "{e}");
    jobs.cleanup(&plan, "web-long-1").expect("cleanup");
    assert!(exists("web-long-1"));

    jobs.start(&plan, &req(&plan, "web-long-2", "long"))
        .expect("start");
    jobs.cleanup(&plan, "web-long-2").expect("cleanup");
    assert!(
        !exists("web-long-2"),
        "a running Job no longer wanted is deleted"
    );
    jobs.cleanup(&plan, "web-long-2").expect("cleanup again");

    jobs.start(&plan, &req(&plan, "web-ok-2", "ok"))
        .expect("start");
    finish_job(&t, &client, "shop", "web-ok-2", true);
    jobs.cleanup(&plan, "web-ok-2").expect("cleanup");
    assert!(exists("web-ok-2"), "a finished Job stays for its ttl");
}

/// The opt-in real-cluster case: a Job that succeeds and one that fails with its
/// termination message, in a namespace of its own that it deletes afterwards.
#[test]
fn e2e_job_checks_on_a_real_cluster() {
    let Some(path) = std::env::var_os("ROLLGATE_E2E_KUBECONFIG") else {
        println!("{E2E_SKIPPED}");
        return;
    };
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::DeleteParams;
    let ns = format!("rollgate-e2e-jobs-{}", std::process::id());
    let (t, client) = cluster::e2e_target(std::path::Path::new(&path));
    let mut jobs = KubernetesJobs::on(t.connection());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace =
        serde_json::from_value(json!({ "metadata": { "name": ns } })).expect("namespace");
    t.block_on(namespaces.create(&PostParams::default(), &namespace))
        .expect("create namespace");
    let plan = plan_in(&ns);
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        jobs.start(&plan, &req(&plan, "web-ok-e2e", "ok"))
            .expect("start ok");
        jobs.start(&plan, &req(&plan, "web-bad-e2e", "bad"))
            .expect("start bad");
        let ok = contract::finish(
            &mut jobs,
            &plan,
            "web-ok-e2e",
            &mut |_| {},
            180,
            Duration::from_secs(1),
        );
        assert!(matches!(ok, JobState::Succeeded { .. }), "{ok:?}");
        match contract::finish(
            &mut jobs,
            &plan,
            "web-bad-e2e",
            &mut |_| {},
            180,
            Duration::from_secs(1),
        ) {
            JobState::Failed { reason } => assert!(reason.contains("broken"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }));
    let _ = t.block_on(namespaces.delete(&ns, &DeleteParams::default()));
    if let Err(e) = outcome {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn the_runner_calls_only_what_its_rbac_grants() {
    // A failed Job of ours and its pod, there before the runner looks (no call seen).
    let failed = json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": { "name": "web-bad-9", "namespace": "shop",
                      "labels": { "app.kubernetes.io/managed-by": "rollgate" } },
        "spec": { "template": { "spec": { "restartPolicy": "Never", "containers": [ { "name": "x", "image": "busybox" } ] } } },
        "status": { "conditions": [ { "type": "Failed", "status": "True", "reason": "DeadlineExceeded" } ] }
    });
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": "web-bad-9-x", "namespace": "shop", "labels": { "job-name": "web-bad-9" } },
        "spec": { "containers": [ { "name": "x", "image": "busybox" } ] }
    });
    let verbs = cluster::Verbs::default();
    let (runtime, client) = cluster::api(vec![failed, pod], Some(verbs.interceptor()));
    let (mut jobs, _t) = runner(client, runtime);
    let plan = plan_in("shop");
    jobs.start(&plan, &req(&plan, "web-long-9", "long"))
        .expect("start");
    assert_eq!(
        jobs.poll(&plan, "web-long-9").expect("poll"),
        JobState::Running
    );
    jobs.cleanup(&plan, "web-long-9").expect("cleanup");
    assert_eq!(
        jobs.poll(&plan, "web-bad-9").expect("poll"),
        JobState::Failed {
            reason: "DeadlineExceeded".to_owned()
        }
    );
    assert_eq!(
        verbs.seen(),
        cluster::granted(rollgate::targets::kubernetes::jobs::RBAC),
        "get, create, delete (Jobs) and list (Pods), nothing else"
    );
}
