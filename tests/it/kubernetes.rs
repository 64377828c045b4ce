//! The Kubernetes target against an in-memory API server (`kube-fake-client`).
//!
//! A tiny "deployment controller" runs next to the target and marks every Deployment
//! rolled out (or past its progress deadline when its image says `broken`), so the
//! tests see what a cluster would show. Each test reads as a story: given a cluster
//! with a stable `web` Deployment, Service and HTTPRoute, when rollgate runs a step,
//! then these objects and weights exist.

use crate::support;

mod baseline;
mod routing;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::ObjectMeta;
use rollgate::engine::TargetHealth;
use rollgate::model::Plan;
use rollgate::targets::kubernetes::{self, Deployments, KubernetesTarget, Timing};
use rollgate::targets::{Desired, Target, contract};
use serde_json::{Value, json};
use support::cluster::{
    self, E2E_SKIPPED, Readiness, Verbs, apply_creates, e2e_target, poll_until, wait_until,
};

const NS: &str = "shop";

fn plan(route: bool) -> Plan {
    let workload = if route {
        "kubernetes: { namespace: shop, deployment: web, container: app, route: web, routeRule: 1 }"
    } else {
        "kubernetes: { namespace: shop, deployment: web, container: app }"
    };
    let text = format!(
        "apiVersion: rollgate.dev/v1alpha1\nkind: RolloutPlan\nmetadata: {{ name: web }}\nspec:\n  target: prod\n  workload:\n    {workload}\n  artifact: registry.example/web:v2\n  strategy:\n    canary: {{ steps: [ {{ setWeight: 100 }} ] }}\n"
    );
    rollgate::model::validate::parse_plan("plans/web.yaml", &text, None)
        .expect("plan parses")
        .plan
}

/// The stable Deployment, opted in to rollgate (`rollgate.dev/managed: "true"`).
fn stable_deployment(replicas: i32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": "web", "namespace": NS,
                      "labels": { "app": "web", "team": "shop", "rollgate.dev/managed": "true" } },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web", "tier": "front" } },
                "spec": { "containers": [
                    { "name": "proxy", "image": "envoy:1.30" },
                    { "name": "app", "image": "registry.example/web:v1", "ports": [ { "containerPort": 8080 } ] }
                ] }
            }
        }
    })
}

fn stable_service() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": "web", "namespace": NS, "labels": { "app": "web" } },
        "spec": { "selector": { "app": "web" }, "ports": [ { "name": "http", "port": 80, "targetPort": 8080 } ] }
    })
}

fn route() -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": { "name": "web", "namespace": NS },
        "spec": {
            "parentRefs": [ { "name": "gw" } ],
            "rules": [
                { "matches": [ { "path": { "type": "PathPrefix", "value": "/admin" } } ],
                  "backendRefs": [ { "name": "admin", "port": 80 } ] },
                { "backendRefs": [ { "name": "web", "port": 80 } ] }
            ]
        }
    })
}

/// A cluster with the stable objects (plus `extra`), and a target wired to it.
fn cluster_with(replicas: i32, extra: Vec<Value>) -> KubernetesTarget {
    cluster_intercepted(replicas, extra, None)
}

fn cluster_intercepted(
    replicas: i32,
    extra: Vec<Value>,
    funcs: Option<kube_fake_client::interceptor::Funcs>,
) -> KubernetesTarget {
    cluster_built(replicas, extra, funcs, Readiness::default())
}

/// A cluster whose candidate pods never become ready until `readiness.withhold(false)`.
fn cluster_withholding(readiness: &Readiness) -> KubernetesTarget {
    cluster_built(4, Vec::new(), None, readiness.clone())
}

fn cluster_built(
    replicas: i32,
    extra: Vec<Value>,
    funcs: Option<kube_fake_client::interceptor::Funcs>,
    readiness: Readiness,
) -> KubernetesTarget {
    let mut objects = vec![stable_deployment(replicas), stable_service(), route()];
    objects.extend(extra);
    cluster::deployments_cluster(objects, funcs, NS, readiness)
}

fn cluster() -> KubernetesTarget {
    cluster_with(4, Vec::new())
}

fn deployment(t: &KubernetesTarget, name: &str) -> Option<Deployment> {
    let api: Api<Deployment> = Api::namespaced(t.client(), NS);
    t.block_on(api.get_opt(name)).expect("get deployment")
}

fn service(t: &KubernetesTarget, name: &str) -> Option<Service> {
    let api: Api<Service> = Api::namespaced(t.client(), NS);
    t.block_on(api.get_opt(name)).expect("get service")
}

fn route_value(t: &KubernetesTarget) -> Value {
    let api: Api<DynamicObject> = Api::namespaced_with(t.client(), NS, &kubernetes::http_route());
    serde_json::to_value(t.block_on(api.get("web")).expect("get route")).expect("json")
}

/// (stable weight, canary weight) in rule 1.
fn weights(t: &KubernetesTarget) -> (Option<i64>, Option<i64>) {
    kubernetes::route_weights(&route_value(t), 1, "web", "web-canary").expect("rule 1")
}

/// (stable weight, preview weight) in rule 1, for blue-green through the route.
fn preview_weights(t: &KubernetesTarget) -> (Option<i64>, Option<i64>) {
    kubernetes::route_weights(&route_value(t), 1, "web", "web-preview").expect("rule 1")
}

/// A blue-green plan: switching by the route's weights or the active Service selector.
fn bg_plan(route: bool, scale_down_delay: &str) -> Plan {
    let workload = if route {
        "kubernetes: { namespace: shop, deployment: web, container: app, route: web, routeRule: 1 }"
    } else {
        "kubernetes: { namespace: shop, deployment: web, container: app }"
    };
    let text = format!(
        "apiVersion: rollgate.dev/v1alpha1\nkind: RolloutPlan\nmetadata: {{ name: web }}\nspec:\n  target: prod\n  workload:\n    {workload}\n  artifact: registry.example/web:v2\n  strategy:\n    blueGreen: {{ autoPromote: true, scaleDownDelay: {scale_down_delay} }}\n"
    );
    rollgate::model::validate::parse_plan("plans/web.yaml", &text, None)
        .expect("plan parses")
        .plan
}

fn selector(t: &KubernetesTarget, name: &str) -> BTreeMap<String, String> {
    service(t, name)
        .and_then(|s| s.spec?.selector)
        .unwrap_or_default()
}

fn pod_labels(d: &Deployment) -> BTreeMap<String, String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

fn selects(selector: &BTreeMap<String, String>, d: &Deployment) -> bool {
    let labels = pod_labels(d);
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn image(d: &Deployment, container: &str) -> String {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.iter().find(|c| c.name == container))
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

fn replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn labels(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

/// Every object's spec, labels and annotations: what "the same state" means.
fn snapshot(t: &KubernetesTarget) -> Value {
    let d = |n: &str| {
        deployment(t, n).map(|d| json!({ "labels": d.metadata.labels, "annotations": d.metadata.annotations, "spec": d.spec }))
    };
    let s = |n: &str| service(t, n).map(|s| json!({ "labels": s.metadata.labels, "spec": s.spec }));
    json!({
        "web": d("web"), "web-canary": d("web-canary"), "web-preview": d("web-preview"),
        "svc": s("web"), "svc-canary": s("web-canary"), "svc-preview": s("web-preview"),
        "rules": route_value(t)["spec"]["rules"],
    })
}

/// Wait until the stand-in controller has reported every Deployment at its generation,
/// with every replica ready: the candidate can take traffic.
fn wait_rolled_out(t: &KubernetesTarget) {
    let api: Api<Deployment> = Api::namespaced(t.client(), NS);
    wait_until(
        "the stand-in controller catches up",
        Duration::from_secs(10),
        || {
            let all = t.block_on(api.list(&ListParams::default())).expect("list");
            all.items.iter().all(|d| {
                let s = d.status.clone().unwrap_or_default();
                s.observed_generation >= d.metadata.generation
                    && s.ready_replicas.unwrap_or(0) == replicas(d)
            })
        },
    );
}

fn settle(t: &mut KubernetesTarget, plan: &Plan, desired: &Desired) -> TargetHealth {
    let mut last = TargetHealth::Progressing;
    poll_until(Duration::from_secs(10), || {
        last = t.health(plan, desired);
        last == TargetHealth::Healthy
    });
    last
}

const V2: &str = "registry.example/web:v2";
const V3: &str = "registry.example/web:v3";

#[test]
fn gateway_canary_objects_and_weights_after_every_step() {
    let mut t = cluster();
    let p = plan(true);

    t.start_candidate(&p, V2).expect("start");
    let canary = deployment(&t, "web-canary").expect("canary deployment");
    assert_eq!(image(&canary, "app"), V2);
    assert_eq!(
        image(&canary, "proxy"),
        "envoy:1.30",
        "only the named container changes"
    );
    assert_eq!(
        replicas(&canary),
        1,
        "proportional: one replica while it takes no traffic"
    );
    let l = labels(&canary.metadata);
    assert_eq!(
        l.get("app.kubernetes.io/managed-by").map(String::as_str),
        Some("rollgate")
    );
    assert_eq!(l.get("team").map(String::as_str), Some("shop"));
    assert_eq!(
        l.get(kubernetes::OPT_IN.0),
        None,
        "the copy is rollgate's, not a Deployment opted in to be patched"
    );
    let spec = canary.spec.as_ref().expect("spec");
    let selector = spec.selector.match_labels.clone().unwrap_or_default();
    assert_eq!(
        selector.get("app").map(String::as_str),
        Some("web-canary"),
        "the stable Service must not select canary pods"
    );
    assert_eq!(
        selector.get("rollgate.dev/track").map(String::as_str),
        Some("canary")
    );
    let pod_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    assert_eq!(pod_labels.get("tier").map(String::as_str), Some("front"));
    assert!(
        selector.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
        "the selector selects its pods"
    );
    let svc = service(&t, "web-canary").expect("canary service");
    assert!(kubernetes::is_managed(&svc.metadata));
    let svc_selector = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    assert!(
        svc_selector
            .iter()
            .all(|(k, v)| pod_labels.get(k) == Some(v)),
        "canary service selects canary pods"
    );
    assert_eq!(weights(&t), (Some(100), Some(0)), "no traffic yet");
    assert_eq!(
        settle(
            &mut t,
            &p,
            &Desired {
                stable: Some("registry.example/web:v1".into()),
                candidate: Some(V2.into()),
                weight: 0,
                ..Default::default()
            }
        ),
        TargetHealth::Healthy
    );

    // Proportional canary: ceil(4 × weight / 100) replicas, at least one.
    for (w, size) in [(5u8, 1), (25, 1), (50, 2), (100, 4)] {
        t.set_weight(&p, w).expect("weight");
        assert_eq!(
            replicas(&deployment(&t, "web-canary").expect("canary")),
            size,
            "canary replicas at {w}%"
        );
        assert_eq!(
            settle(&mut t, &p, &desired(V1, Some(V2), w)),
            TargetHealth::Healthy,
            "at {w}%"
        );
        assert_eq!(
            weights(&t),
            (Some(100 - i64::from(w)), Some(i64::from(w))),
            "at {w}%"
        );
        let rules = &route_value(&t)["spec"]["rules"];
        assert_eq!(
            rules[0],
            route()["spec"]["rules"][0],
            "other rules untouched"
        );
        assert_eq!(
            rules[1]["backendRefs"][1]["port"],
            json!(80),
            "canary ref copies the stable port"
        );
    }

    t.promote(&p, V2).expect("promote");
    let stable = deployment(&t, "web").expect("stable survives");
    assert_eq!(image(&stable, "app"), V2);
    assert_eq!(image(&stable, "proxy"), "envoy:1.30");
    assert_eq!(replicas(&stable), 4);
    assert!(deployment(&t, "web-canary").is_none());
    assert!(service(&t, "web-canary").is_none());
    assert_eq!(weights(&t), (Some(100), None));
    assert!(service(&t, "web").is_some());
    assert_eq!(
        settle(
            &mut t,
            &p,
            &Desired {
                stable: Some(V2.into()),
                candidate: None,
                weight: 0,
                ..Default::default()
            }
        ),
        TargetHealth::Healthy
    );
}

/// Issue #15: the canary was a full-size copy even at 20% (2 replicas beside a
/// 2-replica stable), doubling the resources of every rollout. In Gateway API mode the
/// canary now runs ceil(total × weight / 100) replicas, at least one: it grows before
/// its traffic moves (and the traffic waits for the new pods), and shrinks after its
/// traffic has left. The stable keeps every replica, so a rollback is instant.
#[test]
fn a_gateway_canary_with_canary_scale_full_is_a_full_copy_at_every_weight() {
    // Given a plan that asks for a full-size canary (the cost of warm capacity)
    let text = "apiVersion: rollgate.dev/v1alpha1\nkind: RolloutPlan\nmetadata: { name: web }\nspec:\n  target: prod\n  workload:\n    kubernetes: { namespace: shop, deployment: web, container: app, route: web, routeRule: 1, canaryScale: full }\n  artifact: registry.example/web:v2\n  strategy:\n    canary: { steps: [ { setWeight: 100 } ] }\n";
    let p = rollgate::model::validate::parse_plan("plans/web.yaml", text, None)
        .expect("plan parses")
        .plan;
    let mut t = cluster_with(2, Vec::new());
    t.start_candidate(&p, V2).expect("start");
    wait_rolled_out(&t);
    // Then the canary runs every replica of the stable, whatever its weight
    for w in [20u8, 60, 100] {
        t.set_weight(&p, w).expect("weight");
        assert_eq!(
            settle(&mut t, &p, &desired(V1, Some(V2), w)),
            TargetHealth::Healthy,
            "at {w}%"
        );
        assert_eq!(
            replicas(&deployment(&t, "web-canary").expect("canary")),
            2,
            "canary at {w}%"
        );
    }
}

#[test]
fn canary_scale_without_a_route_is_refused_at_its_place() {
    let text = "apiVersion: rollgate.dev/v1alpha1\nkind: RolloutPlan\nmetadata: { name: web }\nspec:\n  target: prod\n  workload:\n    kubernetes: { namespace: shop, deployment: web, canaryScale: full }\n  artifact: registry.example/web:v2\n  strategy:\n    canary: { steps: [ { setWeight: 100 } ] }\n";
    let d =
        rollgate::model::validate::parse_plan("plans/web.yaml", text, None).expect_err("refused");
    let d = d
        .iter()
        .find(|d| d.message.contains("canaryScale"))
        .unwrap_or_else(|| panic!("{d:?}"));
    assert_eq!(d.code, rollgate::model::Code::InvalidValue);
    assert_eq!(d.pos.map(|p| p.line), Some(7), "{d:?}");
}

#[test]
fn regression_a_gateway_canary_runs_only_the_replicas_its_weight_needs() {
    let mut t = cluster_with(2, Vec::new());
    let p = plan(true);
    t.start_candidate(&p, V2).expect("start");
    assert_eq!(replicas(&deployment(&t, "web-canary").expect("canary")), 1);
    wait_rolled_out(&t);
    for (w, size) in [(20u8, 1), (50, 1), (60, 2), (100, 2), (50, 1)] {
        t.set_weight(&p, w).expect("weight");
        assert_eq!(
            settle(&mut t, &p, &desired(V1, Some(V2), w)),
            TargetHealth::Healthy,
            "at {w}%"
        );
        assert_eq!(
            replicas(&deployment(&t, "web-canary").expect("canary")),
            size,
            "canary at {w}%"
        );
        assert_eq!(weights(&t), (Some(100 - i64::from(w)), Some(i64::from(w))));
        assert_eq!(
            replicas(&deployment(&t, "web").expect("stable")),
            2,
            "the stable keeps its replicas"
        );
    }
    // Growing: the weight waits for the new replica.
    let readiness = Readiness::withheld();
    let mut t = cluster_withholding(&readiness);
    t.start_candidate(&p, V2).expect("start");
    readiness.withhold(false);
    t.set_weight(&p, 20).expect("weight");
    assert_eq!(
        settle(&mut t, &p, &desired(V1, Some(V2), 20)),
        TargetHealth::Healthy
    );
    readiness.cap(1);
    t.set_weight(&p, 50).expect("weight");
    assert_eq!(replicas(&deployment(&t, "web-canary").expect("canary")), 2);
    assert_eq!(
        t.health(&p, &desired(V1, Some(V2), 50)),
        TargetHealth::Progressing
    );
    assert_eq!(
        weights(&t),
        (Some(80), Some(20)),
        "50% waits for the second replica"
    );
    readiness.withhold(false);
    assert_eq!(
        settle(&mut t, &p, &desired(V1, Some(V2), 50)),
        TargetHealth::Healthy
    );
    assert_eq!(weights(&t), (Some(50), Some(50)));
}

#[test]
fn replica_ratio_canary_scales_replicas_after_every_step() {
    let mut t = cluster();
    let p = plan(false);
    t.start_candidate(&p, V2).expect("start");
    let canary = deployment(&t, "web-canary").expect("canary");
    assert_eq!(replicas(&canary), 0);
    let selector = canary
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default();
    assert_eq!(
        selector.get("app").map(String::as_str),
        Some("web"),
        "the stable Service selects both"
    );
    assert_eq!(
        weights(&t),
        (Some(1), None),
        "the route is not touched in replica mode"
    );

    for (w, c, s) in [(5u8, 1, 3), (25, 1, 3), (50, 2, 2), (100, 4, 0), (50, 2, 2)] {
        t.set_weight(&p, w).expect("weight");
        assert_eq!(
            replicas(&deployment(&t, "web-canary").expect("canary")),
            c,
            "canary at {w}%"
        );
        // The stable gives up replicas once the canary's are ready (a health pass).
        assert_eq!(
            settle(
                &mut t,
                &p,
                &Desired {
                    stable: None,
                    candidate: Some(V2.into()),
                    weight: w,
                    ..Default::default()
                }
            ),
            TargetHealth::Healthy
        );
        assert_eq!(
            replicas(&deployment(&t, "web").expect("stable")),
            s,
            "stable at {w}%"
        );
    }

    t.promote(&p, V2).expect("promote");
    let stable = deployment(&t, "web").expect("stable");
    assert_eq!(
        (image(&stable, "app"), replicas(&stable)),
        (V2.to_owned(), 4)
    );
    assert!(deployment(&t, "web-canary").is_none());
    assert!(service(&t, "web-canary").is_none());
}

#[test]
fn rollback_sends_traffic_to_stable_then_removes_the_canary() {
    for route in [true, false] {
        let mut t = cluster();
        let p = plan(route);
        t.start_candidate(&p, V3).expect("start");
        t.set_weight(&p, 50).expect("weight");
        t.rollback(&p, Some("registry.example/web:v1"))
            .expect("rollback");
        let stable = deployment(&t, "web").expect("stable survives");
        assert_eq!(
            (image(&stable, "app"), replicas(&stable)),
            ("registry.example/web:v1".to_owned(), 4)
        );
        assert!(deployment(&t, "web-canary").is_none());
        assert!(service(&t, "web-canary").is_none());
        if route {
            assert_eq!(weights(&t), (Some(100), None));
        }
        assert_eq!(
            settle(
                &mut t,
                &p,
                &Desired {
                    stable: Some("registry.example/web:v1".into()),
                    candidate: None,
                    weight: 0,
                    ..Default::default()
                }
            ),
            TargetHealth::Healthy,
            "route mode: {route}"
        );
    }
}

#[test]
fn rolling_back_a_finished_rollout_restores_the_stable_image() {
    let mut t = cluster();
    let p = plan(true);
    t.start_candidate(&p, V2).expect("start");
    t.promote(&p, V2).expect("promote");
    t.rollback(&p, Some("registry.example/web:v1"))
        .expect("rollback");
    assert_eq!(
        image(&deployment(&t, "web").expect("stable"), "app"),
        "registry.example/web:v1"
    );
}

#[test]
fn rerunning_every_step_after_a_crash_converges() {
    for route in [true, false] {
        let mut t = cluster();
        let p = plan(route);
        type Step =
            Box<dyn Fn(&mut KubernetesTarget) -> Result<(), rollgate::targets::TargetError>>;
        let steps: Vec<(&str, Step)> = vec![
            (
                "start",
                Box::new(move |t| t.start_candidate(&plan(route), V2)),
            ),
            ("weight 5", Box::new(move |t| t.set_weight(&plan(route), 5))),
            (
                "weight 50",
                Box::new(move |t| t.set_weight(&plan(route), 50)),
            ),
            ("promote", Box::new(move |t| t.promote(&plan(route), V2))),
            (
                "start v3",
                Box::new(move |t| t.start_candidate(&plan(route), V3)),
            ),
            (
                "weight 25",
                Box::new(move |t| t.set_weight(&plan(route), 25)),
            ),
            (
                "rollback",
                Box::new(move |t| t.rollback(&plan(route), Some(V2))),
            ),
        ];
        for (name, step) in &steps {
            // A step whose traffic waited for the candidate's readiness finishes on a
            // later call; from then on, re-running it changes nothing.
            step(&mut t).unwrap_or_else(|e| panic!("{name}: {e}"));
            wait_rolled_out(&t);
            step(&mut t).unwrap_or_else(|e| panic!("{name}: {e}"));
            let once = snapshot(&t);
            // The process dies after the call and the step runs again, twice.
            step(&mut t).unwrap_or_else(|e| panic!("{name} again: {e}"));
            step(&mut t).unwrap_or_else(|e| panic!("{name} a third time: {e}"));
            assert_eq!(
                snapshot(&t),
                once,
                "{name} (route mode: {route}) is idempotent"
            );
        }
        // A re-run of start after set_weight keeps the traffic split.
        t.start_candidate(&p, V3).expect("start");
        wait_rolled_out(&t);
        t.set_weight(&p, 25).expect("weight");
        wait_rolled_out(&t);
        t.set_weight(&p, 25).expect("weight");
        let before = snapshot(&t);
        t.start_candidate(&p, V3).expect("start again");
        assert_eq!(
            snapshot(&t),
            before,
            "start after weight (route mode: {route})"
        );
    }
}

#[test]
fn a_canary_rollgate_did_not_create_is_never_deleted_nor_adopted() {
    let mut foreign = stable_deployment(2);
    foreign["metadata"]["name"] = json!("web-canary");
    for route in [true, false] {
        let mut t = cluster_with(4, vec![foreign.clone()]);
        let p = plan(route);
        let err = t.start_candidate(&p, V2).expect_err("refuses to adopt");
        assert!(err.message.contains("not created by rollgate"), "{err}");
        assert!(t.rollback(&p, None).is_err(), "refuses to delete");
        assert!(t.promote(&p, V2).is_err(), "refuses to delete");
        let still = deployment(&t, "web-canary").expect("foreign deployment survives");
        assert_eq!(image(&still, "app"), "registry.example/web:v1");
        assert!(!kubernetes::is_managed(&still.metadata));
        assert!(deployment(&t, "web").is_some(), "stable survives");
    }
}

#[test]
fn the_stable_deployment_survives_every_path() {
    for route in [true, false] {
        let mut t = cluster();
        let p = plan(route);
        t.rollback(&p, None).expect("rollback with nothing running");
        t.start_candidate(&p, V2).expect("start");
        t.rollback(&p, None).expect("rollback");
        t.start_candidate(&p, V2).expect("start");
        t.set_weight(&p, 100).expect("weight");
        t.promote(&p, V2).expect("promote");
        t.promote(&p, V2).expect("promote again");
        let stable = deployment(&t, "web").expect("stable survives");
        assert!(
            !kubernetes::is_managed(&stable.metadata),
            "never relabelled as ours"
        );
        assert!(service(&t, "web").is_some(), "stable service survives");
    }
}

#[test]
fn a_candidate_past_its_progress_deadline_is_unhealthy() {
    let mut t = cluster();
    let p = plan(true);
    t.start_candidate(&p, "registry.example/web:broken")
        .expect("start");
    let d = Desired {
        stable: None,
        candidate: Some("registry.example/web:broken".into()),
        weight: 0,
        ..Default::default()
    };
    let mut last = TargetHealth::Progressing;
    poll_until(Duration::from_secs(10), || {
        last = t.health(&p, &d);
        last != TargetHealth::Progressing
    });
    assert!(
        matches!(&last, TargetHealth::Unhealthy { reason } if reason.contains("ProgressDeadlineExceeded")),
        "{last:?}"
    );
    // Promoting a broken artifact fails instead of waiting forever.
    let err = t
        .promote(&p, "registry.example/web:broken")
        .expect_err("stable never rolls out");
    assert!(err.message.contains("ProgressDeadlineExceeded"), "{err}");
}

/// Issue #15: with readiness withheld, the HTTPRoute went to 80/20 while `web-canary`
/// had no ready replica, so a fifth of the users were sent to nothing. The weight now
/// waits for the canary's ready replicas to cover its share, and health says
/// `Progressing` (never `Healthy`) until they do; then the next pass moves it.
#[test]
fn regression_traffic_never_moves_to_a_canary_that_is_not_ready() {
    // Given a gateway canary whose pods never pass their readiness probe
    let readiness = Readiness::withheld();
    let mut t = cluster_withholding(&readiness);
    let p = plan(true);
    t.start_candidate(&p, V2).expect("start");
    // When the step asks for 20%, and again (a re-run after a crash)
    t.set_weight(&p, 20)
        .expect("a weight that waits is not an error");
    t.set_weight(&p, 20).expect("again");
    // Then the route stays on the stable while the canary has no ready replica
    for _ in 0..20 {
        assert_eq!(
            weights(&t),
            (Some(100), Some(0)),
            "no weight before readiness"
        );
        assert_eq!(
            t.health(&p, &desired(V1, Some(V2), 20)),
            TargetHealth::Progressing,
            "not serving: the canary is not ready"
        );
        readiness.caught_up(&t);
    }
    assert_eq!(weights(&t), (Some(100), Some(0)));
    // When its pods become ready, the next passes move the weight and call it serving
    readiness.withhold(false);
    assert_eq!(
        settle(&mut t, &p, &desired(V1, Some(V2), 20)),
        TargetHealth::Healthy
    );
    assert_eq!(weights(&t), (Some(80), Some(20)));
}

/// Replica-ratio mode: the canary grows at once (pods, not traffic), but the stable
/// gives up its replicas only when the canary's are ready, so capacity never drops.
#[test]
fn regression_the_stable_keeps_its_replicas_until_the_canary_is_ready() {
    let readiness = Readiness::withheld();
    let mut t = cluster_withholding(&readiness);
    let p = plan(false);
    t.start_candidate(&p, V2).expect("start");
    t.set_weight(&p, 50).expect("weight");
    assert_eq!(
        replicas(&deployment(&t, "web-canary").expect("canary")),
        2,
        "the canary grows first"
    );
    for _ in 0..20 {
        assert_eq!(
            t.health(&p, &desired(V1, Some(V2), 50)),
            TargetHealth::Progressing
        );
        assert_eq!(
            replicas(&deployment(&t, "web").expect("stable")),
            4,
            "the stable keeps every replica while the canary has no ready one"
        );
        readiness.caught_up(&t);
    }
    readiness.withhold(false);
    assert_eq!(
        settle(&mut t, &p, &desired(V1, Some(V2), 50)),
        TargetHealth::Healthy
    );
    assert_eq!(replicas(&deployment(&t, "web").expect("stable")), 2);
}

/// Blue-green: the switch (selector or route) waits for every replica of the preview.
#[test]
fn regression_blue_green_switches_only_to_a_ready_preview() {
    for route in [true, false] {
        let readiness = Readiness::withheld();
        let mut t = cluster_withholding(&readiness);
        let p = bg_plan(route, "0s");
        t.start_candidate(&p, V2).expect("start");
        t.set_weight(&p, 100).expect("switch");
        for _ in 0..20 {
            assert_eq!(
                selector(&t, "web"),
                BTreeMap::from([("app".to_owned(), "web".to_owned())]),
                "route: {route}"
            );
            if route {
                assert_eq!(preview_weights(&t), (Some(100), Some(0)));
            }
            assert_eq!(
                t.health(&p, &desired(V1, Some(V2), 100)),
                TargetHealth::Progressing
            );
            readiness.caught_up(&t);
        }
        readiness.withhold(false);
        assert_eq!(
            settle(&mut t, &p, &desired(V1, Some(V2), 100)),
            TargetHealth::Healthy,
            "route: {route}"
        );
        if route {
            assert_eq!(preview_weights(&t), (Some(0), Some(100)));
        } else {
            assert_eq!(
                selector(&t, "web").get("app").map(String::as_str),
                Some("web-preview")
            );
        }
    }
}

/// Pods that never become ready (a probe that never passes, a cluster with no kubelet)
/// may never earn a `ProgressDeadlineExceeded` from any controller: the target's own
/// deadline, the plan's `progressDeadline`, makes the stage fail with the reason, and
/// the canary never got its share.
#[test]
fn a_canary_not_ready_within_the_progress_deadline_is_unhealthy_without_traffic() {
    for route in [true, false] {
        let readiness = Readiness::withheld();
        let mut t = cluster_withholding(&readiness);
        let mut p = plan(route);
        p.progress_deadline = Duration::from_millis(400);
        t.start_candidate(&p, V2).expect("start");
        let asked = std::time::Instant::now();
        t.set_weight(&p, 20).expect("weight");
        let mut last = TargetHealth::Progressing;
        poll_until(Duration::from_secs(3), || {
            last = t.health(&p, &desired(V1, Some(V2), 20));
            last != TargetHealth::Progressing
        });
        assert!(
            asked.elapsed() >= Duration::from_millis(300),
            "not before the deadline (route: {route})"
        );
        let TargetHealth::Unhealthy { reason } = &last else {
            panic!("route: {route}: {last:?}");
        };
        assert!(
            reason.contains("web-canary") && reason.contains("0 of 1 ready"),
            "{reason}"
        );
        assert!(reason.contains("progressDeadline 400ms"), "{reason}");
        if route {
            assert_eq!(weights(&t), (Some(100), Some(0)));
        } else {
            assert_eq!(replicas(&deployment(&t, "web").expect("stable")), 4);
        }
    }
}

/// Issue #15: at 20%, another manager force-applied the route back to `web` 100 (as
/// Argo CD would) and rollgate kept saying "weight 20 is serving". Health reads the
/// weights on every pass, is not `Healthy` while they differ from the step, and puts
/// them back (rollgate owns them: a server-side apply with force).
#[test]
fn regression_a_route_forced_back_to_stable_is_repaired_not_reported_as_serving() {
    // Given a canary serving 20% through the route
    let mut t = cluster();
    let p = plan(true);
    t.start_candidate(&p, V2).expect("start");
    wait_rolled_out(&t);
    t.set_weight(&p, 20).expect("weight");
    let at_20 = desired(V1, Some(V2), 20);
    assert_eq!(settle(&mut t, &p, &at_20), TargetHealth::Healthy);
    // When another manager force-applies the rule back to the stable alone
    let routes: Api<DynamicObject> =
        Api::namespaced_with(t.client(), NS, &kubernetes::http_route());
    let mut theirs = route();
    theirs["spec"]["rules"][1]["backendRefs"] =
        json!([{ "name": "web", "port": 80, "weight": 100 }]);
    t.block_on(routes.patch(
        "web",
        &PatchParams::apply("argocd").force(),
        &Patch::Apply(&theirs),
    ))
    .expect("argocd applies");
    assert_eq!(weights(&t), (Some(100), None));
    // Then the next pass does not call it serving, and puts the weights back
    assert_eq!(
        t.health(&p, &at_20),
        TargetHealth::Progressing,
        "drifted traffic is never reported as serving"
    );
    assert_eq!(weights(&t), (Some(80), Some(20)), "re-applied at once");
    assert_eq!(settle(&mut t, &p, &at_20), TargetHealth::Healthy);
    // And a weight edited in place is put back the same way
    let mut edited = route_value(&t);
    edited["spec"]["rules"][1]["backendRefs"][1]["weight"] = json!(50);
    edited["spec"]["rules"][1]["backendRefs"][0]["weight"] = json!(50);
    t.block_on(routes.patch(
        "web",
        &PatchParams::apply("someone").force(),
        &Patch::Apply(&json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": { "name": "web", "namespace": NS },
            "spec": { "rules": edited["spec"]["rules"] },
        })),
    ))
    .expect("edit");
    assert_eq!(weights(&t), (Some(50), Some(50)));
    assert_eq!(t.health(&p, &at_20), TargetHealth::Progressing);
    assert_eq!(weights(&t), (Some(80), Some(20)));
}

/// Blue-green without a route: a selector switched back behind rollgate's back is
/// switched again, and the step is not healthy meanwhile.
#[test]
fn regression_a_blue_green_selector_switched_back_is_repaired() {
    let mut t = cluster();
    let p = bg_plan(false, "0s");
    t.start_candidate(&p, V2).expect("start");
    wait_rolled_out(&t);
    t.set_weight(&p, 100).expect("switch");
    let switched = desired(V1, Some(V2), 100);
    assert_eq!(settle(&mut t, &p, &switched), TargetHealth::Healthy);
    let api: Api<Service> = Api::namespaced(t.client(), NS);
    let back: Patch<()> = Patch::Json(
        serde_json::from_value(json!([
            { "op": "replace", "path": "/spec/selector", "value": { "app": "web" } }
        ]))
        .expect("patch"),
    );
    t.block_on(api.patch("web", &PatchParams::default(), &back))
        .expect("switch back");
    assert_eq!(t.health(&p, &switched), TargetHealth::Progressing);
    assert_eq!(
        selector(&t, "web").get("app").map(String::as_str),
        Some("web-preview"),
        "switched again"
    );
    assert_eq!(settle(&mut t, &p, &switched), TargetHealth::Healthy);
}

/// Replica-ratio mode: a stable scaled back to its full size by someone else is
/// scaled to the step's split again.
#[test]
fn regression_a_replica_split_undone_behind_rollgate_s_back_is_repaired() {
    let mut t = cluster();
    let p = plan(false);
    t.start_candidate(&p, V2).expect("start");
    t.set_weight(&p, 50).expect("weight");
    let at_50 = desired(V1, Some(V2), 50);
    assert_eq!(settle(&mut t, &p, &at_50), TargetHealth::Healthy);
    let api: Api<Deployment> = Api::namespaced(t.client(), NS);
    t.block_on(api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": { "replicas": 4 } })),
    ))
    .expect("scale");
    wait_rolled_out(&t);
    assert_eq!(t.health(&p, &at_50), TargetHealth::Progressing);
    assert_eq!(replicas(&deployment(&t, "web").expect("stable")), 2);
    assert_eq!(settle(&mut t, &p, &at_50), TargetHealth::Healthy);
}

/// Issue #15: a merged plan could name any Deployment, `kube-system/coredns` included,
/// and rollgate would copy it, patch its image and move its traffic. It touches only a
/// stable Deployment that opted in with the label `rollgate.dev/managed: "true"`, and
/// says so; without it nothing is created, patched or moved, in any mode.
#[test]
fn regression_a_deployment_without_the_opt_in_label_is_refused_and_nothing_is_created() {
    for p in [
        plan(true),
        plan(false),
        bg_plan(true, "0s"),
        bg_plan(false, "0s"),
    ] {
        // Given a stable Deployment that never opted in
        let mut t = cluster();
        let api: Api<Deployment> = Api::namespaced(t.client(), NS);
        let remove = json!({ "metadata": { "labels": { "rollgate.dev/managed": null } } });
        t.block_on(api.patch("web", &PatchParams::default(), &Patch::Merge(&remove)))
            .expect("remove the label");
        wait_rolled_out(&t);
        let before = snapshot(&t);
        // When rollgate is asked to roll it out, in every way it can be asked
        let err = t.start_candidate(&p, V2).expect_err("refused");
        // Then it refuses, says why and how to opt in, and nothing changed
        assert!(
            err.message.contains("rollgate.dev/managed=true") && err.message.contains("shop/web"),
            "{err}"
        );
        assert!(err.message.contains("kubectl"), "says how to opt in: {err}");
        assert!(t.set_weight(&p, 100).is_err());
        assert!(t.promote(&p, V2).is_err());
        assert!(t.resume(&p, Some(V1), V2, 50).is_err());
        let h = t.health(&p, &desired(V1, Some(V2), 0));
        assert!(
            matches!(&h, TargetHealth::Unreachable { reason } if reason.contains("rollgate.dev/managed")),
            "held with the reason, never healthy: {h:?}"
        );
        let _ = t.rollback(&p, Some(V1));
        assert_eq!(snapshot(&t), before, "nothing created, patched or moved");
        assert!(deployment(&t, "web-canary").is_none() && deployment(&t, "web-preview").is_none());
        // And once the owner opts in, the same plan starts
        let add = json!({ "metadata": { "labels": { "rollgate.dev/managed": "true" } } });
        t.block_on(api.patch("web", &PatchParams::default(), &Patch::Merge(&add)))
            .expect("opt in");
        t.start_candidate(&p, V2).expect("starts once opted in");
    }
}

#[test]
fn a_missing_stable_deployment_holds_the_rollout() {
    let (runtime, client) = cluster::api(Vec::new(), None);
    let mut t = KubernetesTarget::new(runtime, client);
    let p = plan(true);
    assert!(t.start_candidate(&p, V2).is_err());
    let h = t.health(
        &p,
        &Desired {
            stable: None,
            candidate: Some(V2.into()),
            weight: 0,
            ..Default::default()
        },
    );
    assert!(matches!(h, TargetHealth::Unreachable { .. }), "{h:?}");
}

#[test]
fn a_local_plan_is_refused() {
    let mut t = cluster();
    let p = rollgate::model::validate::parse_plan(
        "plans/p.yaml",
        "apiVersion: rollgate.dev/v1alpha1\nkind: RolloutPlan\nmetadata: { name: p }\nspec:\n  target: t\n  workload:\n    local: { command: [srv], listen: \"127.0.0.1:9\" }\n  artifact: v2\n  strategy:\n    canary: { steps: [ { setWeight: 100 } ] }\n",
        None,
    )
    .expect("plan parses")
    .plan;
    let err = t.start_candidate(&p, "v2").expect_err("wrong workload");
    assert!(err.message.contains("local workload"), "{err}");
}

#[test]
fn kubernetes_passes_the_target_contract_with_gateway_weights() {
    let mut t = cluster();
    contract::run(
        &mut t,
        &plan(true),
        Some("registry.example/web:v1"),
        V2,
        V3,
        500,
        Duration::from_millis(2),
    );
    assert_eq!(weights(&t), (Some(100), None));
}

#[test]
fn kubernetes_passes_the_target_contract_with_replica_ratio() {
    let mut t = cluster();
    contract::run(
        &mut t,
        &plan(false),
        Some("registry.example/web:v1"),
        V2,
        V3,
        500,
        Duration::from_millis(2),
    );
    assert_eq!(replicas(&deployment(&t, "web").expect("stable")), 4);
}

/// The Deployments target on its own, without the Kubernetes target routing to it, on
/// the same in-memory cluster, in every traffic mode: route weights, replica ratio, and
/// blue-green by the route and by the selector.
#[test]
fn the_deployments_target_alone_passes_the_target_contract() {
    for p in [
        plan(true),
        plan(false),
        bg_plan(true, "0s"),
        bg_plan(false, "0s"),
    ] {
        let t = cluster();
        let mut d = Deployments::new(t.connection()).with_timing(cluster::QUICK);
        contract::run(&mut d, &p, Some(V1), V2, V3, 500, Duration::from_millis(2));
        assert_eq!(image(&deployment(&t, "web").expect("stable"), "app"), V2);
    }
}

/// Why rollgate applies a whole `rules` list: the CRD declares `rules` and `backendRefs`
/// `x-kubernetes-list-type: atomic`, so no server-side apply can own only the weights.
#[test]
fn httproute_rules_and_backend_refs_are_atomic_lists_in_the_crd() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/gateway-api/gateway.networking.k8s.io_httproutes.yaml"
    ))
    .expect("crd fixture");
    let crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
        serde_saphyr::from_str(&text).expect("crd parses");
    let v1 = crd
        .spec
        .versions
        .iter()
        .find(|v| v.name == "v1")
        .expect("v1");
    assert!(v1.served && v1.storage);
    let schema = serde_json::to_value(&v1.schema).expect("json");
    let rules = schema
        .pointer("/openAPIV3Schema/properties/spec/properties/rules")
        .expect("rules");
    assert_eq!(rules.get("x-kubernetes-list-type"), Some(&json!("atomic")));
    let refs = rules
        .pointer("/items/properties/backendRefs")
        .expect("backendRefs");
    assert_eq!(refs.get("x-kubernetes-list-type"), Some(&json!("atomic")));
    assert!(refs.pointer("/items/properties/weight").is_some());
    // The upstream traffic-splitting example reads the way rollgate writes.
    let example: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/gateway-api/example-traffic-split.yaml"
        ))
        .expect("example"),
    )
    .expect("example parses");
    assert_eq!(
        kubernetes::route_weights(&example, 0, "foo-v1", "foo-v1-canary"),
        Some((Some(90), None))
    );
}

/// Every verb the target sends to the API server is one `deploy/kubernetes` grants
/// (through `kubernetes::RBAC`, which `tests/deploy_manifests.rs` compares with the
/// ClusterRole), as the API server authorizes it: a server-side apply that creates its
/// object counts as `create` too. The fake's interceptors see verbs, not resources
/// (except an apply's, checked per resource by
/// `regression_an_apply_that_creates_the_canary_is_authorized_as_create`), so the other
/// resources are checked by reading the code against `RBAC`'s documentation.
#[test]
fn the_target_sends_only_verbs_rbac_grants() {
    let verbs = Verbs::default();
    for gateway in [true, false] {
        let funcs = verbs.interceptor_also(|ctx| apply_creates(ctx).map(|_| "create"));
        // No controller here (it lists): the stable starts out rolled out.
        let mut stable = stable_deployment(4);
        stable["status"] = json!({ "replicas": 4, "updatedReplicas": 4, "availableReplicas": 4 });
        let (runtime, client) = cluster::api(vec![stable, stable_service(), route()], Some(funcs));
        let mut t = KubernetesTarget::new(runtime, client);
        let p = plan(gateway);
        t.start_candidate(&p, V2).expect("start");
        t.set_weight(&p, 50).expect("weight");
        if gateway {
            // A header route and a mirror are written by the same verbs (get, patch).
            let routing = rollgate::model::plan::Routing {
                mirror: 10,
                ..Default::default()
            };
            t.set_routing(&p, &routing).expect("routing");
        }
        let _ = t.health(
            &p,
            &Desired {
                stable: None,
                candidate: Some(V2.into()),
                weight: 50,
                ..Default::default()
            },
        );
        t.rollback(&p, None).expect("rollback");
        t.start_candidate(&p, V2).expect("start");
        t.promote(&p, V2).expect("promote");
        assert_eq!(image(&deployment(&t, "web").expect("stable"), "app"), V2);
    }
    assert_eq!(
        verbs.seen(),
        cluster::granted(kubernetes::RBAC),
        "verbs sent vs verbs granted"
    );
}

/// A real API server refused the canary (issue #15): an apply that creates its object
/// is authorized as `create` as well as `patch`, and the ClusterRole granted only
/// `patch`. Every apply the target sends, in canary and blue-green mode, with and
/// without a route, must be granted `patch` on its resource, and `create` too when the
/// object was absent; and starting a candidate on a fresh cluster does create both
/// candidate objects by apply.
#[test]
fn regression_an_apply_that_creates_the_canary_is_authorized_as_create() {
    use kube_fake_client::interceptor::Funcs;
    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};
    type Needed = BTreeSet<(&'static str, &'static str, &'static str)>;
    let granted: Needed = kubernetes::RBAC
        .iter()
        .flat_map(|(g, r, verbs)| verbs.iter().map(move |v| (*g, *r, *v)))
        .collect();
    let plans = [
        plan(true),
        plan(false),
        bg_plan(true, "0s"),
        bg_plan(false, "0s"),
    ];
    for p in plans {
        let needed: Arc<Mutex<Needed>> = Arc::default();
        let record = Arc::clone(&needed);
        let funcs = Funcs::new().patch(move |ctx| {
            if ctx.patch_type == kube_fake_client::PatchType::ApplyPatch {
                let resource = match ctx.patch["kind"].as_str() {
                    Some("Deployment") => ("apps", "deployments"),
                    Some("Service") => ("", "services"),
                    Some("HTTPRoute") => ("gateway.networking.k8s.io", "httproutes"),
                    other => panic!("an apply of kind {other:?}"),
                };
                let mut needed = record.lock().expect("lock");
                needed.insert((resource.0, resource.1, "patch"));
                if let Some((g, r)) = apply_creates(&ctx) {
                    needed.insert((g, r, "create"));
                }
            }
            Ok(None)
        });
        let mut stable = stable_deployment(4);
        stable["status"] = json!({ "replicas": 4, "updatedReplicas": 4, "availableReplicas": 4 });
        let (runtime, client) = cluster::api(vec![stable, stable_service(), route()], Some(funcs));
        let mut t = KubernetesTarget::new(runtime, client);
        t.start_candidate(&p, V2).expect("start");
        t.set_weight(&p, 100).expect("weight");
        // Again, on existing objects: an apply that updates needs only `patch`.
        t.start_candidate(&p, V2).expect("start again");
        let needed = needed.lock().expect("lock").clone();
        for creates in [
            ("apps", "deployments", "create"),
            ("", "services", "create"),
        ] {
            assert!(
                needed.contains(&creates),
                "starting a candidate creates {creates:?} by apply: {needed:?}"
            );
        }
        let missing: Needed = needed.difference(&granted).copied().collect();
        assert!(
            missing.is_empty(),
            "applies the API server would refuse, as (apiGroup, resource, verb): {missing:?}"
        );
    }
}

#[test]
fn the_readiness_simulation_stands_aside_for_a_running_controller_manager() {
    // (#15: with a real kube-controller-manager, the e2e suites' simulation and the
    // controller fought over Deployment status.)
    let lease = |name: &str, renewed: chrono::DateTime<chrono::Utc>| {
        json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": { "name": name, "namespace": "kube-system" },
            "spec": {
                "holderIdentity": "master-1",
                "leaseDurationSeconds": 15,
                "renewTime": renewed.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            }
        })
    };
    let now = chrono::Utc::now();
    for (objects, running) in [
        // Given a controller-manager that renewed its lease a moment ago: it runs
        (vec![lease("kube-controller-manager", now)], true),
        // One whose lease went stale an hour ago, or none at all (kwok, envtest): not
        (
            vec![lease(
                "kube-controller-manager",
                now - chrono::Duration::hours(1),
            )],
            false,
        ),
        (vec![lease("kube-scheduler", now)], false),
        (Vec::new(), false),
    ] {
        let (rt, client) = cluster::api(objects.clone(), None);
        assert_eq!(
            rt.block_on(cluster::controller_manager_running(&client)),
            running,
            "{objects:?}"
        );
    }
}

/// The opt-in suite: the target contract against a real cluster named by
/// `ROLLGATE_E2E_KUBECONFIG`, in a namespace of its own that it deletes afterwards.
/// Replica-ratio mode always (where the contract also sees routing refused); Gateway
/// API weights too when the HTTPRoute CRD is installed, with a header route and a 20%
/// mirror through the contract (so the API server's own CRD validation, CEL rules
/// included, accepts rollgate's header rule and `RequestMirror` filter), and the exact
/// route after each step of a plan that routes by header and cookie and mirrors.
#[test]
fn e2e_contract_on_a_real_cluster() {
    let Some(path) = std::env::var_os("ROLLGATE_E2E_KUBECONFIG") else {
        println!("{E2E_SKIPPED}");
        return;
    };
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{DeleteParams, PostParams};
    let ns = format!("rollgate-e2e-{}", std::process::id());
    let (mut t, client) = e2e_target(std::path::Path::new(&path));
    // Clusters without kubelets (kwok, envtest) report no pod readiness: there, play
    // the Deployment controller by patching status, as the in-memory tests do. Never
    // next to a running kube-controller-manager, which writes the same status.
    let simulate = std::env::var_os("ROLLGATE_E2E_SIMULATE_READINESS").is_some();
    let manager = simulate && t.block_on(cluster::controller_manager_running(&client));
    if manager {
        println!(
            "ROLLGATE_E2E_SIMULATE_READINESS ignored: a kube-controller-manager renews its lease in kube-system and writes Deployment status itself"
        );
    }
    if simulate && !manager {
        let (client, ns) = (client.clone(), ns.clone());
        t.spawn(async move {
            loop {
                let _ =
                    cluster::deployment_controller_pass(&client, &ns, &Readiness::default()).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace =
        serde_json::from_value(json!({ "metadata": { "name": ns } })).expect("namespace");
    t.block_on(namespaces.create(&PostParams::default(), &namespace))
        .expect("create namespace");
    // Small images that start in a second; the artifacts are their tags.
    let v1 = "registry.k8s.io/pause:3.10";
    let (v2, v3) = ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause:3.8");
    let apply = PatchParams::apply("rollgate-e2e").force();
    let with_ns = |mut v: Value| {
        v["metadata"]["namespace"] = json!(ns);
        v
    };
    let mut stable = with_ns(stable_deployment(2));
    stable["spec"]["template"]["spec"]["containers"] = json!([{ "name": "app", "image": v1 }]);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let routes: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &kubernetes::http_route());
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        t.block_on(deployments.patch("web", &apply, &Patch::Apply(&stable)))
            .expect("stable deployment");
        t.block_on(services.patch("web", &apply, &Patch::Apply(with_ns(stable_service()))))
            .expect("stable service");
        // Each contract starts from v1 as the stable version, and ends by putting it back.
        let in_ns = |mut p: Plan| {
            if let rollgate::model::plan::Workload::Kubernetes(k) = &mut p.workload {
                k.namespace = ns.clone();
            }
            p
        };
        let contract_from_v1 = |t: &mut KubernetesTarget, p: Plan| {
            let p = in_ns(p);
            t.rollback(&p, Some(v1)).expect("reset to v1");
            contract::run(t, &p, Some(v1), v2, v3, 180, Duration::from_secs(1));
        };
        contract_from_v1(&mut t, plan(false));
        // Blue-green by the active Service's selector.
        contract_from_v1(&mut t, bg_plan(false, "0s"));
        // The Gateway API v1.6.1 HTTPRoute CRD (the fixture copied from ../shared/data).
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        let crd: CustomResourceDefinition = serde_saphyr::from_str(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/gateway-api/gateway.networking.k8s.io_httproutes.yaml"
            ))
            .expect("CRD fixture"),
        )
        .expect("CRD parses");
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        match t.block_on(crds.patch(
            "httproutes.gateway.networking.k8s.io",
            &apply,
            &Patch::Apply(&crd),
        )) {
            // Wait until the API serves the new kind.
            Ok(_) => wait_until("the API serves httproutes", Duration::from_secs(60), || {
                t.block_on(routes.list(&ListParams::default().limit(1)))
                    .is_ok()
            }),
            Err(e) => println!("could not install the HTTPRoute CRD: {e}"),
        }
        let mut route = with_ns(route());
        route["spec"]["parentRefs"] = json!([{ "name": "none" }]);
        if t.block_on(routes.patch("web", &apply, &Patch::Apply(&route)))
            .is_ok()
        {
            contract_from_v1(&mut t, plan(true));
            // Header route and mirror steps on the shaped route, each route as the API
            // server stores it (its defaults filled in) checked after every step.
            let p = in_ns(routing::shaped_plan_for_e2e(v2));
            t.rollback(&p, Some(v1)).expect("reset to v1");
            t.block_on(routes.patch(
                "web",
                &apply,
                &Patch::Apply(&with_ns(routing::shaped_route())),
            ))
            .expect("shaped route");
            routing::walk(
                &mut t,
                &p,
                v1,
                v2,
                &|t, p, d| {
                    let mut last = TargetHealth::Progressing;
                    for _ in 0..180 {
                        last = t.health(p, d);
                        if last == TargetHealth::Healthy {
                            break;
                        }
                        std::thread::sleep(Duration::from_secs(1));
                    }
                    last
                },
                false,
            );
            t.block_on(routes.patch("web", &apply, &Patch::Apply(&route)))
                .expect("route back");
            contract_from_v1(&mut t, bg_plan(true, "0s"));
        } else {
            println!("gateway mode skipped: no HTTPRoute CRD in the cluster");
        }
    }));
    let _ = t.block_on(namespaces.delete(&ns, &DeleteParams::background()));
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// `ROLLGATE_E2E_IMPERSONATE` runs only against a real cluster; what holds here: a
/// target built with `from_kubeconfig_as` sends the impersonation headers on every call
/// (the ServiceAccount and its groups), a client from the same kubeconfig without it
/// sends none, and a malformed account name is refused up front.
#[test]
fn the_target_impersonates_a_service_account_and_the_setup_client_does_not() {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::{Arc, Mutex};
    // Given an HTTP server that records each request's headers and answers 404
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
    let record = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut head = Vec::new();
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                head.push(line.trim_end().to_ascii_lowercase());
                line.clear();
            }
            record.lock().expect("lock").push(head);
            let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"not found","reason":"NotFound","code":404}"#;
            let _ = write!(
                stream,
                "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("kubeconfig");
    std::fs::write(
        &path,
        format!("apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{ server: \"http://{addr}\" }}\nusers:\n- name: u\n  user: {{ token: admin-token }}\ncontexts:\n- name: x\n  context: {{ cluster: c, user: u }}\ncurrent-context: x\n"),
    )
    .expect("kubeconfig");
    let ask = |t: &mut KubernetesTarget| {
        let h = t.health(&plan(true), &desired(V1, Some(V2), 0));
        assert!(matches!(h, TargetHealth::Unreachable { .. }), "{h:?}");
        seen.lock().expect("lock").drain(..).collect::<Vec<_>>()
    };
    // When the target impersonates deploy/'s ServiceAccount
    let mut t = KubernetesTarget::from_kubeconfig_as(
        Some(&path),
        None,
        Some("system:serviceaccount:rollgate:rollgate"),
    )
    .expect("target");
    let requests = ask(&mut t);
    // Then every call it makes says so, with the account's groups
    assert!(!requests.is_empty());
    for head in &requests {
        assert!(
            head.contains(&"impersonate-user: system:serviceaccount:rollgate:rollgate".into()),
            "{head:?}"
        );
        for group in [
            "system:serviceaccounts",
            "system:serviceaccounts:rollgate",
            "system:authenticated",
        ] {
            assert!(
                head.contains(&format!("impersonate-group: {group}")),
                "{group}: {head:?}"
            );
        }
    }
    // And a target from the same kubeconfig without it does not impersonate
    let mut plain = KubernetesTarget::from_kubeconfig(Some(&path), None).expect("target");
    let requests = ask(&mut plain);
    assert!(!requests.is_empty());
    assert!(
        requests
            .iter()
            .flatten()
            .all(|h| !h.starts_with("impersonate-")),
        "{requests:?}"
    );
    // And a ServiceAccount without its namespace is refused before any call
    let err = KubernetesTarget::from_kubeconfig_as(
        Some(&path),
        None,
        Some("system:serviceaccount:rollgate"),
    )
    .expect_err("malformed");
    assert!(format!("{err:#}").contains("NAMESPACE:NAME"), "{err:#}");
}

/// Regression guard: test builds compile both rustls providers (kube-fake-client turns
/// on kube's default `ring`), and rustls with two providers and no process default
/// panics when a TLS client starts. kube-client installs aws-lc-rs as the default (its
/// `aws-lc-rs` feature), so the client starts; a cluster that does not answer makes
/// `health` unreachable (the rollout holds).
#[test]
fn a_tls_client_starts_and_an_unreachable_cluster_holds() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("kubeconfig");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: { server: \"https://127.0.0.1:9\" }\nusers:\n- name: u\n  user: { token: not-a-secret }\ncontexts:\n- name: x\n  context: { cluster: c, user: u }\ncurrent-context: x\n",
    )
    .expect("write kubeconfig");
    let mut t = KubernetesTarget::from_kubeconfig(Some(&path), None)
        .expect("client")
        .with_timing(Timing {
            promote_wait: Duration::from_secs(1),
            poll: Duration::from_millis(10),
            call_timeout: Duration::from_secs(5),
        });
    let h = t.health(
        &plan(true),
        &Desired {
            stable: None,
            candidate: None,
            weight: 0,
            ..Default::default()
        },
    );
    assert!(matches!(h, TargetHealth::Unreachable { .. }), "{h:?}");
    assert!(t.set_weight(&plan(true), 5).is_err());
}

#[test]
fn weight_without_a_candidate_is_refused_and_moves_no_traffic() {
    for gateway in [true, false] {
        let mut t = cluster();
        let p = plan(gateway);
        let before = snapshot(&t);
        let err = t.set_weight(&p, 25).expect_err("no candidate yet");
        assert!(err.message.contains("start the candidate first"), "{err}");
        assert_eq!(snapshot(&t), before, "nothing changed (gateway: {gateway})");
    }
}

/// The route keeps changing between rollgate's read and its apply: the server answers
/// 409 to every one of the target's attempts (each a fresh read), the step fails as a
/// `Conflict` (the daemon decides again on its next pass) and changes nothing; once the
/// route holds still, the next try converges. (A single conflict is read again inside
/// the call: `routing::a_route_changed_between_read_and_write_is_read_again_and_the_edit_kept`.)
#[test]
fn a_conflicting_route_edit_fails_the_step_and_the_retry_converges() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let conflicts = Arc::new(AtomicUsize::new(5));
    let left = Arc::clone(&conflicts);
    let funcs = kube_fake_client::interceptor::Funcs::new().patch(move |ctx| {
        if ctx.patch.get("kind").and_then(Value::as_str) == Some("HTTPRoute")
            && left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            return Err(kube_fake_client::Error::Conflict(
                "the object has been modified".into(),
            ));
        }
        Ok(None)
    });
    let mut t = cluster_intercepted(4, Vec::new(), Some(funcs));
    let p = plan(true);
    let err = t.start_candidate(&p, V2).expect_err("conflict");
    assert_eq!(err.kind, rollgate::targets::ErrorKind::Conflict, "{err}");
    assert!(err.message.contains("kept changing"), "{err}");
    assert!(err.message.contains("409"), "{err}");
    assert_eq!(weights(&t), (Some(1), None), "route unchanged");
    assert_eq!(conflicts.load(Ordering::SeqCst), 0, "five attempts");
    t.start_candidate(&p, V2).expect("retry");
    wait_rolled_out(&t);
    t.set_weight(&p, 5).expect("weight");
    assert_eq!(weights(&t), (Some(95), Some(5)));
}

#[test]
fn a_foreign_canary_service_stops_start_before_anything_is_written() {
    let mut foreign = stable_service();
    foreign["metadata"]["name"] = json!("web-canary");
    let mut t = cluster_with(4, vec![foreign]);
    let p = plan(true);
    let before = snapshot(&t);
    let err = t.start_candidate(&p, V2).expect_err("refuses to adopt");
    assert!(err.message.contains("not created by rollgate"), "{err}");
    assert_eq!(snapshot(&t), before);
    assert!(t.rollback(&p, None).is_err(), "refuses to delete");
    assert!(
        service(&t, "web-canary").is_some(),
        "foreign service survives"
    );
}

const V1: &str = "registry.example/web:v1";

fn desired(stable: &str, candidate: Option<&str>, weight: u8) -> Desired {
    Desired {
        stable: Some(stable.into()),
        candidate: candidate.map(str::to_owned),
        weight,
        ..Default::default()
    }
}

#[test]
fn blue_green_switches_the_active_selector_and_retires_the_preview_after_the_delay() {
    let mut t = cluster();
    let p = bg_plan(false, "1h");

    t.start_candidate(&p, V2).expect("start");
    let preview = deployment(&t, "web-preview").expect("preview deployment");
    let stable = deployment(&t, "web").expect("stable");
    assert_eq!(image(&preview, "app"), V2);
    assert_eq!(replicas(&preview), 4, "a full-size preview");
    assert!(kubernetes::is_managed(&preview.metadata));
    assert!(
        selects(&selector(&t, "web-preview"), &preview),
        "the preview Service selects the preview"
    );
    assert!(!selects(&selector(&t, "web-preview"), &stable));
    assert_eq!(
        selector(&t, "web"),
        BTreeMap::from([("app".to_owned(), "web".to_owned())]),
        "no user traffic on the preview yet"
    );
    assert!(!selects(&selector(&t, "web"), &preview));
    assert_eq!(
        settle(&mut t, &p, &desired(V1, Some(V2), 0)),
        TargetHealth::Healthy
    );
    assert_eq!(
        t.readiness(&p).expect("readiness"),
        rollgate::engine::Measurement {
            value: Some(1.0),
            samples: 4
        }
    );

    t.set_weight(&p, 100).expect("switch");
    let active = selector(&t, "web");
    assert!(
        selects(&active, &preview),
        "active selects the preview: {active:?}"
    );
    assert!(!selects(&active, &stable), "and no longer the stable");
    let stable_after = deployment(&t, "web").expect("stable");
    assert_eq!(
        (image(&stable_after, "app"), replicas(&stable_after)),
        (V1.to_owned(), 4),
        "the stable waits untouched: rollback is instant"
    );
    assert_eq!(
        settle(&mut t, &p, &desired(V1, Some(V2), 100)),
        TargetHealth::Healthy
    );
    let half = t.set_weight(&p, 50).expect_err("no half switch");
    assert!(half.message.contains("all traffic at once"), "{half}");

    t.promote(&p, V2).expect("promote");
    let stable = deployment(&t, "web").expect("stable");
    assert_eq!(image(&stable, "app"), V2);
    assert_eq!(
        selector(&t, "web"),
        BTreeMap::from([("app".to_owned(), "web".to_owned())]),
        "traffic back on the stable Deployment, now running v2"
    );
    let preview = deployment(&t, "web-preview").expect("the preview waits out the delay");
    let at = preview
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(kubernetes::SCALE_DOWN_AT_ANNOTATION))
        .expect("scale-down time recorded");
    let at = chrono::DateTime::parse_from_rfc3339(at).expect("rfc3339");
    assert!(
        at > chrono::Utc::now() + chrono::Duration::minutes(59),
        "{at}"
    );
    assert_eq!(
        t.health(&p, &desired(V2, None, 0)),
        TargetHealth::Progressing,
        "not done while the preview runs"
    );
    t.promote(&p, V2).expect("promote again before the delay");
    assert!(
        deployment(&t, "web-preview").is_some(),
        "too early to delete"
    );

    // The delay passes (moved into the past, as a clock would).
    let api: Api<Deployment> = Api::namespaced(t.client(), NS);
    let past = json!({ "metadata": { "annotations": {
        kubernetes::SCALE_DOWN_AT_ANNOTATION: (chrono::Utc::now() - chrono::Duration::seconds(1)).to_rfc3339()
    } } });
    t.block_on(api.patch("web-preview", &PatchParams::default(), &Patch::Merge(&past)))
        .expect("patch");
    t.promote(&p, V2).expect("promote after the delay");
    assert!(deployment(&t, "web-preview").is_none());
    assert!(service(&t, "web-preview").is_none());
    assert!(
        service(&t, "web").is_some(),
        "the active Service is the user's"
    );
    assert_eq!(
        settle(&mut t, &p, &desired(V2, None, 0)),
        TargetHealth::Healthy
    );
}

#[test]
fn blue_green_rollback_switches_back_at_once_and_removes_the_preview() {
    for route in [true, false] {
        let mut t = cluster();
        let p = bg_plan(route, "30s");
        t.start_candidate(&p, V3).expect("start");
        wait_rolled_out(&t);
        t.set_weight(&p, 100).expect("switch");
        if route {
            assert_eq!(preview_weights(&t), (Some(0), Some(100)));
            assert_eq!(
                selector(&t, "web").get("app").map(String::as_str),
                Some("web")
            );
        }
        t.rollback(&p, Some(V1)).expect("rollback");
        assert_eq!(
            selector(&t, "web"),
            BTreeMap::from([("app".to_owned(), "web".to_owned())])
        );
        if route {
            assert_eq!(preview_weights(&t), (Some(100), None));
        }
        assert!(deployment(&t, "web-preview").is_none(), "route: {route}");
        assert!(service(&t, "web-preview").is_none(), "route: {route}");
        let stable = deployment(&t, "web").expect("stable survives");
        assert_eq!(
            (image(&stable, "app"), replicas(&stable)),
            (V1.to_owned(), 4)
        );
        assert_eq!(
            settle(&mut t, &p, &desired(V1, None, 0)),
            TargetHealth::Healthy,
            "route: {route}"
        );
    }
}

#[test]
fn blue_green_through_the_route_moves_weight_zero_to_hundred() {
    let mut t = cluster();
    let p = bg_plan(true, "0s");
    t.start_candidate(&p, V2).expect("start");
    assert_eq!(preview_weights(&t), (Some(100), Some(0)));
    wait_rolled_out(&t);
    assert_eq!(
        route_value(&t)["spec"]["rules"][1]["backendRefs"][1]["name"],
        json!("web-preview")
    );
    t.set_weight(&p, 100).expect("switch");
    assert_eq!(preview_weights(&t), (Some(0), Some(100)));
    assert_eq!(
        selector(&t, "web").get("app").map(String::as_str),
        Some("web"),
        "with a route, the active Service is not touched"
    );
    t.promote(&p, V2).expect("promote");
    assert_eq!(preview_weights(&t), (Some(100), None));
    assert!(
        deployment(&t, "web-preview").is_none(),
        "no delay: gone at once"
    );
    assert_eq!(image(&deployment(&t, "web").expect("stable"), "app"), V2);
}

#[test]
fn blue_green_steps_rerun_after_a_crash_converge() {
    for route in [true, false] {
        let mut t = cluster();
        type Step =
            Box<dyn Fn(&mut KubernetesTarget) -> Result<(), rollgate::targets::TargetError>>;
        let p = move || bg_plan(route, "0s");
        let steps: Vec<(&str, Step)> = vec![
            ("start", Box::new(move |t| t.start_candidate(&p(), V2))),
            ("switch", Box::new(move |t| t.set_weight(&p(), 100))),
            // A crash after the switch: start runs again and must keep the original selector.
            (
                "start again",
                Box::new(move |t| t.start_candidate(&p(), V2)),
            ),
            ("promote", Box::new(move |t| t.promote(&p(), V2))),
            ("start v3", Box::new(move |t| t.start_candidate(&p(), V3))),
            ("switch v3", Box::new(move |t| t.set_weight(&p(), 100))),
            ("rollback", Box::new(move |t| t.rollback(&p(), Some(V2)))),
        ];
        for (name, step) in &steps {
            // A step whose traffic waited for the candidate's readiness finishes on a
            // later call; from then on, re-running it changes nothing.
            step(&mut t).unwrap_or_else(|e| panic!("{name}: {e}"));
            wait_rolled_out(&t);
            step(&mut t).unwrap_or_else(|e| panic!("{name}: {e}"));
            let once = snapshot(&t);
            step(&mut t).unwrap_or_else(|e| panic!("{name} again: {e}"));
            step(&mut t).unwrap_or_else(|e| panic!("{name} a third time: {e}"));
            assert_eq!(snapshot(&t), once, "{name} (route: {route}) is idempotent");
        }
        assert_eq!(
            selector(&t, "web"),
            BTreeMap::from([("app".to_owned(), "web".to_owned())]),
            "route: {route}"
        );
    }
}

#[test]
fn switching_back_restores_the_selector_recorded_at_start() {
    let mut t = cluster();
    let p = bg_plan(false, "0s");
    t.start_candidate(&p, V2).expect("start");
    wait_rolled_out(&t);
    // Someone (Argo CD, a human) changes the active Service after rollgate recorded it.
    let api: Api<Service> = Api::namespaced(t.client(), NS);
    let edit = json!({ "spec": { "selector": { "app": "web", "canary-free": "yes" } } });
    t.block_on(api.patch("web", &PatchParams::default(), &Patch::Merge(&edit)))
        .expect("edit");
    // rollgate switches from what it reads now, guarded by a test of that value.
    t.set_weight(&p, 100).expect("switch");
    let active = selector(&t, "web");
    assert_eq!(active.get("app").map(String::as_str), Some("web-preview"));
    // And switching back restores what was recorded at start, not the edit.
    t.rollback(&p, None).expect("rollback");
    assert_eq!(
        selector(&t, "web"),
        BTreeMap::from([("app".to_owned(), "web".to_owned())])
    );
}

#[test]
fn kubernetes_passes_the_target_contract_with_blue_green() {
    for route in [true, false] {
        let mut t = cluster();
        contract::run(
            &mut t,
            &bg_plan(route, "0s"),
            Some(V1),
            V2,
            V3,
            500,
            Duration::from_millis(2),
        );
        assert_eq!(
            selector(&t, "web"),
            BTreeMap::from([("app".to_owned(), "web".to_owned())])
        );
        assert!(deployment(&t, "web-preview").is_none());
    }
}

#[test]
fn replica_health_counts_ready_candidate_replicas() {
    let mut t = cluster();
    let p = plan(true);
    let err = t.readiness(&p).expect_err("no candidate yet");
    assert!(err.contains("does not exist"), "{err}");
    t.start_candidate(&p, V2).expect("start");
    t.set_weight(&p, 100).expect("weight");
    settle(&mut t, &p, &desired(V1, Some(V2), 100));
    // One of four pods loses readiness (the controller here only tracks availability).
    let api: Api<Deployment> = Api::namespaced(t.client(), NS);
    let status = json!({ "status": { "readyReplicas": 1 } });
    t.block_on(api.patch_status(
        "web-canary",
        &PatchParams::default(),
        &Patch::Merge(&status),
    ))
    .expect("status");
    assert_eq!(
        t.readiness(&p).expect("readiness"),
        rollgate::engine::Measurement {
            value: Some(0.25),
            samples: 4
        }
    );
    // A replica-ratio canary at 0% has no pods: no evidence, not a pass.
    let mut t = cluster();
    let p = plan(false);
    t.start_candidate(&p, V2).expect("start");
    assert_eq!(
        t.readiness(&p).expect("readiness"),
        rollgate::engine::Measurement {
            value: None,
            samples: 0
        }
    );
}

#[test]
fn resuming_after_a_daemon_restart_moves_no_traffic_and_keeps_the_canary() {
    for route in [true, false] {
        let mut t = cluster();
        let p = plan(route);
        t.start_candidate(&p, V2).expect("start");
        t.set_weight(&p, 50).expect("weight");
        assert_eq!(
            settle(&mut t, &p, &desired(V1, Some(V2), 50)),
            TargetHealth::Healthy
        );
        let uid = deployment(&t, "web-canary").and_then(|d| d.metadata.uid);
        let before = snapshot(&t);
        t.resume(&p, Some(V1), V2, 50).expect("resume");
        assert_eq!(snapshot(&t), before, "route: {route}");
        assert_eq!(
            deployment(&t, "web-canary").and_then(|d| d.metadata.uid),
            uid,
            "the same canary, not a new one (route: {route})"
        );
    }
}

#[test]
fn a_foreign_preview_is_never_adopted_nor_deleted_and_the_stable_survives_blue_green() {
    let mut foreign = stable_deployment(2);
    foreign["metadata"]["name"] = json!("web-preview");
    for route in [true, false] {
        let mut t = cluster_with(4, vec![foreign.clone()]);
        let p = bg_plan(route, "0s");
        let err = t.start_candidate(&p, V2).expect_err("refuses to adopt");
        assert!(err.message.contains("not created by rollgate"), "{err}");
        assert!(
            t.set_weight(&p, 100).is_err(),
            "no switch to a foreign preview"
        );
        assert!(t.rollback(&p, None).is_err(), "refuses to delete");
        let still = deployment(&t, "web-preview").expect("foreign deployment survives");
        assert!(!kubernetes::is_managed(&still.metadata));
        assert_eq!(
            selector(&t, "web"),
            BTreeMap::from([("app".to_owned(), "web".to_owned())]),
            "the active Service never pointed at it"
        );
    }
    for route in [true, false] {
        let mut t = cluster();
        let p = bg_plan(route, "0s");
        t.rollback(&p, None).expect("rollback with nothing running");
        t.start_candidate(&p, V2).expect("start");
        t.set_weight(&p, 100).expect("switch");
        t.rollback(&p, None).expect("rollback");
        t.start_candidate(&p, V2).expect("start");
        t.set_weight(&p, 100).expect("switch");
        t.promote(&p, V2).expect("promote");
        t.promote(&p, V2).expect("promote again");
        let stable = deployment(&t, "web").expect("stable survives");
        assert!(
            !kubernetes::is_managed(&stable.metadata),
            "never relabelled as ours"
        );
        assert!(service(&t, "web").is_some(), "active service survives");
        assert!(!kubernetes::is_managed(
            &service(&t, "web").expect("svc").metadata
        ));
    }
}

#[test]
fn regression_a_named_context_missing_from_the_kubeconfig_is_reported_by_name() {
    // Given a kubeconfig with one context, `staging`
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("config");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: { server: https://127.0.0.1:6443 }\nusers:\n- name: u\n  user: { token: t }\ncontexts:\n- name: staging\n  context: { cluster: c, user: u }\ncurrent-context: staging\n",
    )
    .expect("kubeconfig");
    // When the target names the context `research`
    let err =
        KubernetesTarget::from_kubeconfig(Some(&path), Some("research")).expect_err("refused");
    // Then the error names the context, the file and the contexts there are
    let text = format!("{err:#}");
    assert!(text.contains("`research` is not in"), "{text}");
    assert!(text.contains("contexts: staging"), "{text}");
    assert!(!text.contains("current context"), "{text}");
}
