//! A fresh baseline on Kubernetes (issue #19, `baseline: fresh`) on the in-memory
//! cluster. Replica-ratio mode: `<deployment>-baseline` runs the stable Deployment's pod
//! template with the canary's replicas, so the replica split gives canary, baseline and
//! stable w : w : 100-2w; the exact objects after every step of a 10/25/50/100 canary;
//! gone after promotion and after rollback; one deleted behind rollgate's back started
//! again; a foreign `web-baseline` never adopted nor deleted. Gateway API mode: the same
//! Deployment with its own labels, `<service>-baseline` selecting it, and the route
//! rule's backendRefs stable 100-2w, canary w, baseline w after every step, foreign rules
//! untouched; gone (backendRef, Service, Deployment) after promotion and rollback; a
//! route edited between read and write read again; a foreign `web-baseline` Service
//! never adopted nor deleted.

use super::*;

use crate::support::cluster::HttpRoute;
use kube::api::PostParams;
use rollgate::model::plan::Routing;

/// A replica-ratio canary of `web` with a fresh baseline.
fn baseline_plan() -> Plan {
    let text = "apiVersion: rollgate.dev/v1alpha1\nkind: RolloutPlan\nmetadata: { name: web }\nspec:\n  target: prod\n  workload:\n    kubernetes: { namespace: shop, deployment: web, container: app }\n  artifact: registry.example/web:v2\n  strategy:\n    canary:\n      baseline: fresh\n      steps: [ { setWeight: 10 }, { setWeight: 25 }, { setWeight: 50 }, { setWeight: 100 } ]\n";
    let p = rollgate::model::validate::parse_plan("plans/web.yaml", text, None)
        .expect("plan parses")
        .plan;
    assert!(p.workload.capabilities().fresh_baseline);
    p
}

fn with_baseline(on: bool) -> Routing {
    Routing {
        baseline: on,
        ..Routing::default()
    }
}

fn desired(candidate: &str, weight: u8, baseline: bool) -> Desired {
    Desired {
        stable: Some(V1.into()),
        candidate: Some(candidate.into()),
        weight,
        routing: with_baseline(baseline),
    }
}

/// As the engine does: the routing first (the baseline before its share), then the
/// weight, then `health` until the step is served.
fn step(t: &mut KubernetesTarget, p: &Plan, candidate: &str, weight: u8, baseline: bool) {
    t.set_routing(p, &with_baseline(baseline))
        .expect("set_routing");
    t.set_weight(p, weight).expect("set_weight");
    assert_eq!(
        settle(t, p, &desired(candidate, weight, baseline)),
        TargetHealth::Healthy,
        "{candidate} at {weight}% (baseline {baseline})"
    );
}

/// (stable, canary, baseline) replicas; the baseline's `None` when it does not exist.
fn split(t: &KubernetesTarget) -> (i32, i32, Option<i32>) {
    (
        replicas(&deployment(t, "web").expect("stable")),
        deployment(t, "web-canary").map_or(0, |d| replicas(&d)),
        deployment(t, "web-baseline").map(|d| replicas(&d)),
    )
}

/// Every object a baseline must be: the stable's pod template (its image) with the
/// baseline's track on the pods and selector, rollgate's labels without the opt-in.
fn assert_is_a_copy_of_the_stable(t: &KubernetesTarget) {
    let stable = deployment(t, "web").expect("stable");
    let baseline = deployment(t, "web-baseline").expect("baseline");
    let (ss, bs) = (
        stable.spec.clone().expect("spec"),
        baseline.spec.clone().expect("spec"),
    );
    assert_eq!(
        bs.template.spec, ss.template.spec,
        "the stable's pod spec, the stable artifact in it"
    );
    assert_eq!(image(&baseline, "app"), V1);
    assert_eq!(image(&baseline, "proxy"), "envoy:1.30");
    let mut pods = pod_labels(&stable);
    pods.insert("rollgate.dev/track".into(), "baseline".into());
    assert_eq!(pod_labels(&baseline), pods);
    assert_eq!(
        bs.selector.match_labels,
        Some(BTreeMap::from([
            ("app".to_owned(), "web".to_owned()),
            ("rollgate.dev/track".to_owned(), "baseline".to_owned()),
        ]))
    );
    assert_eq!(
        labels(&baseline.metadata),
        BTreeMap::from([
            ("app".to_owned(), "web".to_owned()),
            ("team".to_owned(), "shop".to_owned()),
            (
                "app.kubernetes.io/managed-by".to_owned(),
                "rollgate".to_owned()
            ),
            ("rollgate.dev/track".to_owned(), "baseline".to_owned()),
        ]),
        "rollgate's, never opted in"
    );
    // The stable Service selects all three: the replicas are the traffic split.
    let svc = selector(t, "web");
    assert!(selects(&svc, &baseline) && selects(&svc, &stable));
    assert!(
        service(t, "web-baseline").is_none(),
        "no Service of its own"
    );
}

#[test]
fn a_fresh_baseline_takes_the_canary_s_share_at_every_step_and_is_gone_after_promotion() {
    // Given 20 stable replicas, so a share is whole replicas at every step
    let mut t = cluster_with(20, Vec::new());
    let p = baseline_plan();
    t.start_candidate(&p, V2).expect("start");
    wait_rolled_out(&t);
    assert_eq!(split(&t), (20, 0, None), "no baseline before a share");
    // When the steps run: canary : baseline : stable replicas = w : w : 100-2w
    for (w, c, s) in [(10u8, 2, 16), (25, 5, 10), (50, 10, 0)] {
        step(&mut t, &p, V2, w, true);
        assert_eq!(split(&t), (s, c, Some(c)), "at {w}%");
        assert_is_a_copy_of_the_stable(&t);
        // Each pod takes an equal part of what the stable Service sends: the shares
        let (has_s, has_c, has_b) = split(&t);
        let all = f64::from(has_s + has_c + has_b.unwrap_or(0));
        assert_eq!(all, 20.0, "the total is kept");
        let share = |r: i32| f64::from(r) * 100.0 / all;
        for (who, r) in [("canary", has_c), ("baseline", has_b.unwrap_or(0))] {
            assert!(
                (share(r) - f64::from(w)).abs() <= 3.0,
                "the {who}'s share {} at {w}%",
                share(r)
            );
        }
        let baseline = deployment(&t, "web-baseline").expect("baseline");
        assert_eq!(
            baseline
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("rollgate.dev/artifact"))
                .map(String::as_str),
            Some(V1),
            "records the stable artifact it runs"
        );
    }
    // Then the engine drops it before the full weight: its replicas back to the stable
    step(&mut t, &p, V2, 100, false);
    assert_eq!(split(&t), (0, 20, None), "gone at setWeight 100");
    t.promote(&p, V2).expect("promote");
    assert_eq!(split(&t), (20, 0, None));
    assert_eq!(image(&deployment(&t, "web").expect("stable"), "app"), V2);
    assert!(deployment(&t, "web-canary").is_none());
    let at_rest = Desired {
        stable: Some(V2.into()),
        ..Desired::default()
    };
    assert_eq!(settle(&mut t, &p, &at_rest), TargetHealth::Healthy);
}

#[test]
fn a_fresh_baseline_is_gone_after_rollback_and_after_a_promotion_that_finds_it() {
    for promote in [false, true] {
        let mut t = cluster_with(20, Vec::new());
        let p = baseline_plan();
        t.start_candidate(&p, V3).expect("start");
        wait_rolled_out(&t);
        step(&mut t, &p, V3, 25, true);
        assert_eq!(split(&t), (10, 5, Some(5)));
        // When the rollout ends with the baseline still running
        if promote {
            t.promote(&p, V3).expect("promote");
        } else {
            t.rollback(&p, Some(V1)).expect("rollback");
            t.rollback(&p, Some(V1)).expect("rollback again");
        }
        // Then the baseline and the canary are gone and the stable has every replica
        assert_eq!(split(&t), (20, 0, None), "promote: {promote}");
        let at_rest = Desired {
            stable: Some(if promote { V3 } else { V1 }.into()),
            ..Desired::default()
        };
        assert_eq!(settle(&mut t, &p, &at_rest), TargetHealth::Healthy);
    }
}

#[test]
fn regression_a_baseline_deleted_behind_rollgate_s_back_is_started_again() {
    let mut t = cluster_with(20, Vec::new());
    let p = baseline_plan();
    t.start_candidate(&p, V2).expect("start");
    wait_rolled_out(&t);
    step(&mut t, &p, V2, 25, true);
    let api: Api<Deployment> = Api::namespaced(t.client(), NS);
    t.block_on(api.delete("web-baseline", &Default::default()))
        .expect("delete");
    // The stable alone now serves what the baseline did: not the step
    assert_ne!(t.health(&p, &desired(V2, 25, true)), TargetHealth::Healthy);
    assert_eq!(
        settle(&mut t, &p, &desired(V2, 25, true)),
        TargetHealth::Healthy
    );
    assert_eq!(split(&t), (10, 5, Some(5)));
    assert_is_a_copy_of_the_stable(&t);
    // And a baseline the step no longer asks for is not healthy until it is gone
    assert_ne!(t.health(&p, &desired(V2, 25, false)), TargetHealth::Healthy);
    assert_eq!(
        settle(&mut t, &p, &desired(V2, 25, false)),
        TargetHealth::Healthy
    );
    assert_eq!(split(&t), (15, 5, None));
}

#[test]
fn a_baseline_rollgate_did_not_create_is_never_adopted_scaled_nor_deleted() {
    let mut foreign = stable_deployment(2);
    foreign["metadata"]["name"] = json!("web-baseline");
    let mut t = cluster_with(20, vec![foreign]);
    let p = baseline_plan();
    t.start_candidate(&p, V2).expect("start");
    wait_rolled_out(&t);
    let err = t
        .set_routing(&p, &with_baseline(true))
        .expect_err("refuses to adopt");
    assert!(err.message.contains("not created by rollgate"), "{err}");
    assert_ne!(
        t.health(&p, &desired(V2, 0, true)),
        TargetHealth::Healthy,
        "not a baseline"
    );
    // A rollout that ends, or runs none, leaves it alone and is not held by it
    t.rollback(&p, Some(V1)).expect("rollback ignores it");
    let at_rest = Desired {
        stable: Some(V1.into()),
        ..Desired::default()
    };
    assert_eq!(settle(&mut t, &p, &at_rest), TargetHealth::Healthy);
    let still = deployment(&t, "web-baseline").expect("foreign deployment survives");
    assert_eq!(replicas(&still), 2);
    assert!(!kubernetes::is_managed(&still.metadata));
}

#[test]
fn regression_the_stable_keeps_its_replicas_until_the_baseline_is_ready() {
    let readiness = Readiness::default();
    let mut t = cluster_built(20, Vec::new(), None, readiness.clone());
    let p = baseline_plan();
    t.start_candidate(&p, V2).expect("start");
    wait_rolled_out(&t);
    // Given the canary at 10% without a baseline yet
    step(&mut t, &p, V2, 10, false);
    assert_eq!(split(&t), (18, 2, None));
    // When the baseline starts on a cluster whose new pods do not become ready
    readiness.withhold(true);
    t.set_routing(&p, &with_baseline(true))
        .expect("set_routing");
    t.set_weight(&p, 10).expect("set_weight");
    // Then the stable keeps the replicas the baseline is to take over
    for _ in 0..20 {
        assert_ne!(t.health(&p, &desired(V2, 10, true)), TargetHealth::Healthy);
    }
    assert_eq!(split(&t), (18, 2, Some(2)), "the stable waits");
    // And gives them up once the baseline's pods are ready
    readiness.withhold(false);
    assert_eq!(
        settle(&mut t, &p, &desired(V2, 10, true)),
        TargetHealth::Healthy
    );
    assert_eq!(split(&t), (16, 2, Some(2)));
}

/// A 10/25/50/100 canary of `web` with a fresh baseline, through rule 1 of route `web`.
fn gateway_baseline_plan() -> Plan {
    let text = "apiVersion: rollgate.dev/v1alpha1\nkind: RolloutPlan\nmetadata: { name: web }\nspec:\n  target: prod\n  workload:\n    kubernetes: { namespace: shop, deployment: web, container: app, route: web, routeRule: 1 }\n  artifact: registry.example/web:v2\n  strategy:\n    canary:\n      baseline: fresh\n      steps: [ { setWeight: 10 }, { setWeight: 25 }, { setWeight: 50 }, { setWeight: 100 } ]\n";
    let p = rollgate::model::validate::parse_plan("plans/web.yaml", text, None)
        .expect("plan parses")
        .plan;
    assert!(p.workload.capabilities().fresh_baseline);
    p
}

/// The foreign rule 0 of [`route`], never touched.
fn admin_rule() -> Value {
    json!({ "matches": [ { "path": { "type": "PathPrefix", "value": "/admin" } } ],
            "backendRefs": [ { "name": "admin", "port": 80 } ] })
}

/// The route's rules with rule 1's backendRefs `refs` as (service, weight).
fn rules_with(refs: &[(&str, i64)]) -> Value {
    let refs: Vec<Value> = refs
        .iter()
        .map(|(name, w)| json!({ "name": name, "port": 80, "weight": w }))
        .collect();
    json!([admin_rule(), { "backendRefs": refs }])
}

fn route_rules(t: &KubernetesTarget) -> Value {
    route_value(t)["spec"]["rules"].clone()
}

/// Neither the baseline's Deployment nor its Service is left.
fn assert_no_gateway_baseline(t: &KubernetesTarget) {
    assert!(deployment(t, "web-baseline").is_none(), "deployment left");
    assert!(service(t, "web-baseline").is_none(), "service left");
}

/// The baseline in Gateway API mode: the stable's pod template with its own selector
/// values (`web-baseline`), so the stable Service does not select it and
/// `web-baseline`, rollgate's Service, selects it alone.
fn assert_gateway_baseline(t: &KubernetesTarget) {
    let stable = deployment(t, "web").expect("stable");
    let canary = deployment(t, "web-canary").expect("canary");
    let baseline = deployment(t, "web-baseline").expect("baseline");
    assert_eq!(
        baseline.spec.clone().expect("spec").template.spec,
        stable.spec.clone().expect("spec").template.spec,
        "the stable's pod spec"
    );
    assert_eq!(image(&baseline, "app"), V1);
    assert_eq!(
        replicas(&baseline),
        replicas(&canary),
        "the canary's replicas"
    );
    assert_eq!(
        pod_labels(&baseline),
        BTreeMap::from([
            ("app".to_owned(), "web-baseline".to_owned()),
            ("tier".to_owned(), "front".to_owned()),
            ("rollgate.dev/track".to_owned(), "baseline".to_owned()),
        ])
    );
    let own = selector(t, "web-baseline");
    assert_eq!(
        own,
        BTreeMap::from([
            ("app".to_owned(), "web-baseline".to_owned()),
            ("rollgate.dev/track".to_owned(), "baseline".to_owned()),
        ])
    );
    assert!(selects(&own, &baseline));
    assert!(!selects(&own, &stable) && !selects(&own, &canary));
    assert!(!selects(&selector(t, "web"), &baseline), "not the stable's");
    let svc = service(t, "web-baseline").expect("service");
    assert!(kubernetes::is_managed(&svc.metadata), "rollgate's");
    assert!(!labels(&svc.metadata).contains_key("rollgate.dev/managed"));
    assert_eq!(
        svc.spec.and_then(|s| s.ports).map(|p| p.len()),
        Some(1),
        "the stable Service's port"
    );
}

#[test]
fn a_gateway_fresh_baseline_weighs_as_much_as_the_canary_at_every_step_and_is_gone_after_promotion()
{
    let mut t = cluster();
    let p = gateway_baseline_plan();
    t.start_candidate(&p, V2).expect("start");
    wait_rolled_out(&t);
    assert_eq!(
        route_rules(&t),
        rules_with(&[("web", 100), ("web-canary", 0)])
    );
    assert_no_gateway_baseline(&t);
    // When the steps run: stable 100-2w, canary w, baseline w
    for w in [10i64, 25, 50] {
        step(&mut t, &p, V2, w as u8, true);
        assert_eq!(
            route_rules(&t),
            rules_with(&[("web", 100 - 2 * w), ("web-canary", w), ("web-baseline", w)]),
            "at {w}%"
        );
        assert_gateway_baseline(&t);
    }
    // Then the engine drops it before the full weight: its backendRef, Service, Deployment
    step(&mut t, &p, V2, 100, false);
    assert_eq!(
        route_rules(&t),
        rules_with(&[("web", 0), ("web-canary", 100)])
    );
    assert_no_gateway_baseline(&t);
    t.promote(&p, V2).expect("promote");
    assert_eq!(route_rules(&t), rules_with(&[("web", 100)]));
    assert_no_gateway_baseline(&t);
    let at_rest = Desired {
        stable: Some(V2.into()),
        ..Desired::default()
    };
    assert_eq!(settle(&mut t, &p, &at_rest), TargetHealth::Healthy);
}

#[test]
fn a_gateway_fresh_baseline_is_gone_after_rollback_and_after_a_promotion_that_finds_it() {
    for promote in [false, true] {
        let mut t = cluster();
        let p = gateway_baseline_plan();
        t.start_candidate(&p, V3).expect("start");
        wait_rolled_out(&t);
        step(&mut t, &p, V3, 25, true);
        assert_eq!(
            route_rules(&t),
            rules_with(&[("web", 50), ("web-canary", 25), ("web-baseline", 25)])
        );
        // When the rollout ends with the baseline still running
        if promote {
            t.promote(&p, V3).expect("promote");
        } else {
            t.rollback(&p, Some(V1)).expect("rollback");
            t.rollback(&p, Some(V1)).expect("rollback again");
        }
        // Then its backendRef, Service and Deployment are gone; the stable takes all
        assert_eq!(
            route_rules(&t),
            rules_with(&[("web", 100)]),
            "promote: {promote}"
        );
        assert_no_gateway_baseline(&t);
        let at_rest = Desired {
            stable: Some(if promote { V3 } else { V1 }.into()),
            ..Desired::default()
        };
        assert_eq!(settle(&mut t, &p, &at_rest), TargetHealth::Healthy);
    }
}

/// Someone writes the route between rollgate's read and its write of the baseline's
/// backendRef: the write is refused, the route read again, the other edit kept.
#[test]
fn a_route_changed_before_the_baseline_s_backend_ref_is_written_is_read_again() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let applies = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&applies);
    let funcs = kube_fake_client::interceptor::Funcs::new().patch(move |ctx| {
        let refs_baseline = ctx
            .patch
            .pointer("/spec/rules/1/backendRefs")
            .and_then(Value::as_array)
            .is_some_and(|refs| refs.iter().any(|r| r["name"] == json!("web-baseline")));
        if ctx.patch.get("kind").and_then(Value::as_str) == Some("HTTPRoute")
            && refs_baseline
            && seen.fetch_add(1, Ordering::SeqCst) == 0
        {
            let mut theirs =
                serde_json::to_value(ctx.client.get::<HttpRoute>(ctx.namespace, ctx.name)?)?;
            theirs["spec"]["rules"].as_array_mut().expect("rules").push(
                json!({ "matches": [ { "path": { "type": "PathPrefix", "value": "/new" } } ],
                        "backendRefs": [ { "name": "new", "port": 80 } ] }),
            );
            let theirs: HttpRoute = serde_json::from_value(theirs)?;
            ctx.client
                .update(ctx.namespace, &theirs, &PostParams::default())?;
        }
        Ok(None)
    });
    let mut t = cluster_intercepted(4, Vec::new(), Some(funcs));
    let p = gateway_baseline_plan();
    t.start_candidate(&p, V2).expect("start");
    wait_rolled_out(&t);
    step(&mut t, &p, V2, 10, true);
    assert!(
        applies.load(Ordering::SeqCst) >= 2,
        "refused once, written again"
    );
    let rules = route_rules(&t);
    assert_eq!(rules[0], admin_rule());
    assert_eq!(
        rules[1]["backendRefs"],
        rules_with(&[("web", 80), ("web-canary", 10), ("web-baseline", 10)])[1]["backendRefs"]
    );
    assert_eq!(
        rules[2]["backendRefs"][0]["name"],
        json!("new"),
        "the other writer's rule is kept"
    );
}

#[test]
fn a_baseline_service_rollgate_did_not_create_is_never_adopted_nor_deleted() {
    let foreign = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": "web-baseline", "namespace": NS, "labels": { "app": "web" } },
        "spec": { "selector": { "app": "other" }, "ports": [ { "port": 80 } ] }
    });
    let mut t = cluster_with(4, vec![foreign]);
    let p = gateway_baseline_plan();
    t.start_candidate(&p, V2).expect("start");
    wait_rolled_out(&t);
    let err = t
        .set_routing(&p, &with_baseline(true))
        .expect_err("refuses to adopt");
    assert!(err.message.contains("not created by rollgate"), "{err}");
    assert!(
        deployment(&t, "web-baseline").is_none(),
        "refused before any write"
    );
    assert_eq!(
        kubernetes::route_weights(&route_value(&t), 1, "web", "web-baseline"),
        Some((Some(100), None)),
        "no traffic to it"
    );
    t.rollback(&p, Some(V1)).expect("rollback leaves it alone");
    let still = service(&t, "web-baseline").expect("foreign service survives");
    assert!(!kubernetes::is_managed(&still.metadata));
    assert_eq!(
        selector(&t, "web-baseline").get("app").map(String::as_str),
        Some("other")
    );
}

#[test]
fn regression_a_gateway_baseline_s_backend_ref_removed_behind_rollgate_s_back_is_put_back() {
    let mut t = cluster();
    let p = gateway_baseline_plan();
    t.start_candidate(&p, V2).expect("start");
    wait_rolled_out(&t);
    step(&mut t, &p, V2, 25, true);
    let served = rules_with(&[("web", 50), ("web-canary", 25), ("web-baseline", 25)]);
    assert_eq!(route_rules(&t), served);
    // When someone removes the baseline's backendRef (its share back to the stable)
    let mut route = route_value(&t);
    let refs = route["spec"]["rules"][1]["backendRefs"]
        .as_array_mut()
        .expect("refs");
    refs.retain(|r| r["name"] != json!("web-baseline"));
    refs[0]["weight"] = json!(75);
    let api: Api<HttpRoute> = Api::namespaced(t.client(), NS);
    let edited: HttpRoute = serde_json::from_value(route).expect("route");
    t.block_on(api.replace("web", &PostParams::default(), &edited))
        .expect("edit");
    // Then the step is not served until the route reads back as it says
    assert_ne!(t.health(&p, &desired(V2, 25, true)), TargetHealth::Healthy);
    assert_eq!(
        settle(&mut t, &p, &desired(V2, 25, true)),
        TargetHealth::Healthy
    );
    assert_eq!(route_rules(&t), served);
    assert_gateway_baseline(&t);
}

#[test]
fn regression_the_canary_s_weight_waits_for_the_gateway_baseline_s_backend_ref() {
    let text = "apiVersion: rollgate.dev/v1alpha1\nkind: RolloutPlan\nmetadata: { name: web }\nspec:\n  target: prod\n  workload:\n    kubernetes: { namespace: shop, deployment: web, container: app, route: web, routeRule: 1, canaryScale: full }\n  artifact: registry.example/web:v2\n  strategy:\n    canary:\n      baseline: fresh\n      steps: [ { setWeight: 10 }, { setWeight: 25 }, { setWeight: 100 } ]\n";
    let p = rollgate::model::validate::parse_plan("plans/web.yaml", text, None)
        .expect("plan parses")
        .plan;
    let readiness = Readiness::default();
    let mut t = cluster_built(4, Vec::new(), None, readiness.clone());
    t.start_candidate(&p, V2).expect("start");
    wait_rolled_out(&t);
    // Given a full-size canary (4 replicas) at 10% without a baseline yet
    step(&mut t, &p, V2, 10, false);
    assert_eq!(
        route_rules(&t),
        rules_with(&[("web", 90), ("web-canary", 10)])
    );
    // When the baseline (4 replicas) starts on a cluster that lets one candidate pod be
    // ready: enough for the canary's 25%, not for the baseline
    readiness.cap(1);
    t.set_routing(&p, &with_baseline(true))
        .expect("set_routing");
    t.set_weight(&p, 25).expect("set_weight");
    // Then neither the baseline's backendRef nor more canary weight is written
    for _ in 0..20 {
        assert_ne!(t.health(&p, &desired(V2, 25, true)), TargetHealth::Healthy);
    }
    assert_eq!(
        route_rules(&t),
        rules_with(&[("web", 90), ("web-canary", 10)]),
        "the canary waits for its baseline"
    );
    // And both move once the baseline's pods are ready
    readiness.withhold(false);
    assert_eq!(
        settle(&mut t, &p, &desired(V2, 25, true)),
        TargetHealth::Healthy
    );
    assert_eq!(
        route_rules(&t),
        rules_with(&[("web", 50), ("web-canary", 25), ("web-baseline", 25)])
    );
}
