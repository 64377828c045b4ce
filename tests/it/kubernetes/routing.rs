//! Header routes and mirrors through a Gateway API HTTPRoute (issue #19), on the
//! in-memory cluster: the exact route after every step of a plan that routes by header
//! and cookie, mirrors and moves weights; foreign rules and filters untouched; both gone
//! after promotion and after rollback; drift put back; a route changed between
//! rollgate's read and its write read again.

use super::*;

use crate::support::cluster::HttpRoute;
use kube::api::PostParams;
use rollgate::model::plan::{Routing, Step, Strategy};

/// A route whose weighted rule (the plan's rule 1) has a path match and two foreign
/// filters, one of them a mirror to another Service, between two foreign rules.
pub(super) fn shaped_route() -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": { "name": "web", "namespace": NS },
        "spec": {
            "parentRefs": [ { "name": "gw" } ],
            "rules": [admin_rule(), weighted(None, &[]), static_rule()]
        }
    })
}

fn admin_rule() -> Value {
    json!({ "matches": [ { "path": { "type": "PathPrefix", "value": "/admin" } } ],
            "backendRefs": [ { "name": "admin", "port": 80 } ] })
}

fn static_rule() -> Value {
    json!({ "matches": [ { "path": { "type": "PathPrefix", "value": "/static" } } ],
            "backendRefs": [ { "name": "static", "port": 80 } ] })
}

fn foreign_filters() -> Vec<Value> {
    vec![
        json!({ "type": "RequestHeaderModifier",
                "requestHeaderModifier": { "set": [ { "name": "x-from", "value": "gw" } ] } }),
        json!({ "type": "RequestMirror",
                "requestMirror": { "backendRef": { "name": "audit", "port": 80 } } }),
    ]
}

/// The weighted rule: `weights` (stable, canary) or the user's own ref alone, the
/// foreign filters and then `extra` ones.
fn weighted(weights: Option<(i64, i64)>, extra: &[Value]) -> Value {
    let refs = match weights {
        None => json!([ { "name": "web", "port": 80 } ]),
        Some((s, c)) => json!([ { "name": "web", "port": 80, "weight": s },
                                { "name": "web-canary", "port": 80, "weight": c } ]),
    };
    let mut filters = foreign_filters();
    filters.extend(extra.iter().cloned());
    json!({ "matches": [ { "path": { "type": "PathPrefix", "value": "/shop" } } ],
            "filters": filters, "backendRefs": refs })
}

/// rollgate's mirror filter at `percent`.
fn mirror(percent: u8) -> Value {
    json!({ "type": "RequestMirror", "requestMirror": {
        "backendRef": { "group": "", "kind": "Service", "name": "web-canary", "port": 80 },
        "percent": percent } })
}

/// rollgate's header rule for the plan's route: the weighted rule's path, the two
/// conditions, its foreign filters, the canary alone.
fn header_rule() -> Value {
    json!({
        "name": "rollgate-web-header",
        "matches": [ { "path": { "type": "PathPrefix", "value": "/shop" }, "headers": [
            { "name": "X-Canary", "type": "Exact", "value": "1" },
            { "name": "Cookie", "type": "RegularExpression", "value": r"(^|.*;\s*)beta=on[^;]*(;.*|$)" }
        ] } ],
        "filters": foreign_filters(),
        "backendRefs": [ { "name": "web-canary", "port": 80 } ]
    })
}

pub(super) fn shaping_plan() -> Plan {
    shaped_plan_for_e2e("registry.example/web:v2")
}

/// [`shaping_plan`] with `artifact` (the e2e suite's images are real ones).
pub(super) fn shaped_plan_for_e2e(artifact: &str) -> Plan {
    let text = String::from("apiVersion: rollgate.dev/v1alpha1\nkind: RolloutPlan\nmetadata: { name: web }\nspec:\n  target: prod\n  workload:\n    kubernetes: { namespace: shop, deployment: web, container: app, route: web, routeRule: 1 }\n  artifact: registry.example/web:v2\n  strategy:\n    canary:\n      steps:\n        - setMirror: { percent: 20 }\n        - setHeaderRoute: { match: [ { header: X-Canary, value: \"1\" }, { cookie: beta, prefix: \"on\" } ] }\n        - setWeight: 10\n        - setMirror: { percent: 50 }\n        - setWeight: 50\n        - setHeaderRoute: { match: [] }\n        - setWeight: 100\n").replace("registry.example/web:v2", artifact);
    rollgate::model::validate::parse_plan("plans/web.yaml", &text, None)
        .expect("plan parses")
        .plan
}

fn steps(p: &Plan) -> Vec<Step> {
    match &p.strategy {
        Strategy::Canary { steps, .. } => steps.clone(),
        Strategy::BlueGreen(_) => panic!("a canary plan"),
    }
}

fn shaped_cluster(funcs: Option<kube_fake_client::interceptor::Funcs>) -> KubernetesTarget {
    cluster::deployments_cluster(
        vec![stable_deployment(4), stable_service(), shaped_route()],
        funcs,
        NS,
        Readiness::default(),
    )
}

fn rules(t: &KubernetesTarget) -> Value {
    route_value(t)["spec"]["rules"].clone()
}

fn shaped(routing: &Routing) -> Desired {
    Desired {
        routing: routing.clone(),
        ..desired(V1, Some(V2), 0)
    }
}

/// Given the shaped route, when a candidate is started with a header route and a 20%
/// mirror at 25%: the state every rollback test starts from.
fn routed_at_25(t: &mut KubernetesTarget, p: &Plan) -> Routing {
    let routing = Routing::at(&steps(p), 1);
    t.start_candidate(p, V2).expect("start");
    wait_rolled_out(t);
    t.set_routing(p, &routing).expect("routing");
    t.set_weight(p, 25).expect("weight");
    let d = Desired {
        weight: 25,
        ..shaped(&routing)
    };
    assert_eq!(settle(t, p, &d), TargetHealth::Healthy);
    assert_eq!(
        rules(t),
        json!([
            admin_rule(),
            header_rule(),
            weighted(Some((75, 25)), &[mirror(20)]),
            static_rule()
        ])
    );
    routing
}

#[test]
fn the_route_after_every_step_of_a_plan_with_header_route_mirror_and_weights() {
    let mut t = shaped_cluster(None);
    walk(
        &mut t,
        &shaping_plan(),
        V1,
        V2,
        &|t, p, d| settle(t, p, d),
        true,
    );
}

/// Start `candidate` beside `stable` on the shaped route, take every step of
/// [`shaping_plan`], check the route after each (exactly, or `exact: false`, as a real
/// API server stores it, with the CRD's defaults filled in), then promote.
pub(super) fn walk(
    t: &mut KubernetesTarget,
    p: &Plan,
    stable: &str,
    candidate: &str,
    settle: &dyn Fn(&mut KubernetesTarget, &Plan, &Desired) -> TargetHealth,
    exact: bool,
) {
    let steps = steps(p);
    let ns = match &p.workload {
        rollgate::model::plan::Workload::Kubernetes(k) => k.namespace.clone(),
        _ => panic!("a kubernetes plan"),
    };
    let route_value = |t: &KubernetesTarget| {
        let api: Api<DynamicObject> =
            Api::namespaced_with(t.client(), &ns, &kubernetes::http_route());
        serde_json::to_value(t.block_on(api.get("web")).expect("get route")).expect("json")
    };
    let check = |t: &KubernetesTarget, want: Value, what: &str| {
        let got = route_value(t)["spec"]["rules"].clone();
        if exact {
            assert_eq!(got, want, "{what}");
        } else {
            assert_eq!(
                kubernetes::normalized(&got),
                kubernetes::normalized(&want),
                "{what}"
            );
        }
    };
    let at = |weight: u8, routing: Routing| Desired {
        stable: Some(stable.to_owned()),
        candidate: Some(candidate.to_owned()),
        weight,
        routing,
    };
    t.start_candidate(p, candidate).expect("start");
    assert_eq!(
        settle(t, p, &at(0, Routing::default())),
        TargetHealth::Healthy
    );
    check(
        t,
        json!([admin_rule(), weighted(Some((100, 0)), &[]), static_rule()]),
        "started",
    );
    // The route after each step, its weighted rule as (stable, canary) and rollgate's
    // filters; `true`: rollgate's header rule right before it.
    let expected: [(bool, (i64, i64), Vec<Value>); 7] = [
        (false, (100, 0), vec![mirror(20)]),
        (true, (100, 0), vec![mirror(20)]),
        (true, (90, 10), vec![mirror(20)]),
        (true, (90, 10), vec![mirror(50)]),
        (true, (50, 50), vec![mirror(50)]),
        (false, (50, 50), vec![mirror(50)]),
        (false, (0, 100), vec![mirror(50)]),
    ];
    let mut weight = 0;
    for (i, (step, (header, split, filters))) in steps.iter().zip(expected).enumerate() {
        match step {
            Step::SetWeight(w) => {
                weight = *w;
                t.set_weight(p, *w).expect("weight");
            }
            _ => t.set_routing(p, &Routing::at(&steps, i)).expect("routing"),
        }
        let d = at(weight, Routing::at(&steps, i));
        assert_eq!(settle(t, p, &d), TargetHealth::Healthy, "step {i}");
        let mut want = vec![admin_rule()];
        if header {
            want.push(header_rule());
        }
        want.push(weighted(Some(split), &filters));
        want.push(static_rule());
        check(t, Value::Array(want), &format!("after step {i}: {step:?}"));
        assert_eq!(
            kubernetes::route_weights(&route_value(t), 1, "web", "web-canary"),
            Some((Some(split.0), Some(split.1))),
            "the plan's rule 1 is still rule 1 (rollgate's own rule is not counted)"
        );
        // Every step is idempotent: once more writes nothing.
        let version = route_value(t)["metadata"]["resourceVersion"].clone();
        match step {
            Step::SetWeight(w) => t.set_weight(p, *w).expect("weight"),
            _ => t.set_routing(p, &Routing::at(&steps, i)).expect("routing"),
        }
        assert_eq!(
            route_value(t)["metadata"]["resourceVersion"],
            version,
            "step {i} again writes nothing"
        );
    }
    // Promotion takes the canary's backendRef and rollgate's mirror away; the foreign
    // rules and filters stay as they were.
    t.promote(p, candidate).expect("promote");
    let mut at_rest = weighted(None, &[]);
    at_rest["backendRefs"][0]["weight"] = json!(100);
    check(t, json!([admin_rule(), at_rest, static_rule()]), "promoted");
    let d = Desired {
        stable: Some(candidate.to_owned()),
        ..Desired::default()
    };
    assert_eq!(settle(t, p, &d), TargetHealth::Healthy);
}

#[test]
fn promotion_removes_the_header_rule_and_the_mirror() {
    let mut t = shaped_cluster(None);
    let p = shaping_plan();
    routed_at_25(&mut t, &p);
    t.promote(&p, V2).expect("promote");
    let mut at_rest = weighted(None, &[]);
    at_rest["backendRefs"][0]["weight"] = json!(100);
    assert_eq!(rules(&t), json!([admin_rule(), at_rest, static_rule()]));
    assert_eq!(
        settle(&mut t, &p, &desired(V2, None, 0)),
        TargetHealth::Healthy
    );
}

#[test]
fn rollback_removes_the_header_rule_and_the_mirror() {
    let mut t = shaped_cluster(None);
    let p = shaping_plan();
    routed_at_25(&mut t, &p);
    t.rollback(&p, None).expect("rollback");
    let mut at_rest = weighted(None, &[]);
    at_rest["backendRefs"][0]["weight"] = json!(100);
    assert_eq!(rules(&t), json!([admin_rule(), at_rest, static_rule()]));
    assert!(deployment(&t, "web-canary").is_none());
    assert_eq!(
        settle(&mut t, &p, &desired(V1, None, 0)),
        TargetHealth::Healthy
    );
    // A header rule left behind (a crash between two writes, a restored backup) is
    // not at rest: health says so and the next rollback takes it away.
    let routes: Api<DynamicObject> =
        Api::namespaced_with(t.client(), NS, &kubernetes::http_route());
    let mut left = route_value(&t);
    left["spec"]["rules"]
        .as_array_mut()
        .expect("rules")
        .insert(1, header_rule());
    left["metadata"] = json!({ "name": "web", "namespace": NS });
    t.block_on(routes.patch(
        "web",
        &PatchParams::apply("restore").force(),
        &Patch::Apply(&left),
    ))
    .expect("restore");
    assert_eq!(
        t.health(&p, &desired(V1, None, 0)),
        TargetHealth::Progressing
    );
    t.rollback(&p, None).expect("rollback again");
    assert_eq!(
        settle(&mut t, &p, &desired(V1, None, 0)),
        TargetHealth::Healthy
    );
}

#[test]
fn a_header_rule_or_mirror_changed_behind_rollgate_s_back_is_put_back() {
    let mut t = shaped_cluster(None);
    let p = shaping_plan();
    let routing = routed_at_25(&mut t, &p);
    let d = Desired {
        weight: 25,
        ..shaped(&routing)
    };
    let want = rules(&t);
    let routes: Api<DynamicObject> =
        Api::namespaced_with(t.client(), NS, &kubernetes::http_route());
    let apply = |t: &KubernetesTarget, rules: Value| {
        t.block_on(routes.patch(
            "web",
            &PatchParams::apply("argocd").force(),
            &Patch::Apply(&json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                "metadata": { "name": "web", "namespace": NS },
                "spec": { "rules": rules },
            })),
        ))
        .expect("apply");
    };
    // A GitOps tool re-applies the rules as they are in Git, with the weights kept.
    apply(
        &t,
        json!([admin_rule(), weighted(Some((75, 25)), &[]), static_rule()]),
    );
    assert_eq!(
        t.health(&p, &d),
        TargetHealth::Progressing,
        "a route without the header rule is not serving the step"
    );
    assert_eq!(rules(&t), want, "put back at once");
    assert_eq!(settle(&mut t, &p, &d), TargetHealth::Healthy);
    // Someone turns the mirror down to 5%.
    apply(
        &t,
        json!([
            admin_rule(),
            header_rule(),
            weighted(Some((75, 25)), &[mirror(5)]),
            static_rule()
        ]),
    );
    assert_eq!(t.health(&p, &d), TargetHealth::Progressing);
    assert_eq!(rules(&t), want);
    assert_eq!(settle(&mut t, &p, &d), TargetHealth::Healthy);
}

/// Someone writes the route between rollgate's read and its write: the API server
/// refuses the write (the `resourceVersion` moved), rollgate reads the route again and
/// writes its routing onto what it holds now, so the other write is kept.
#[test]
fn a_route_changed_between_read_and_write_is_read_again_and_the_edit_kept() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let applies = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&applies);
    let funcs = kube_fake_client::interceptor::Funcs::new().patch(move |ctx| {
        if ctx.patch.get("kind").and_then(Value::as_str) == Some("HTTPRoute")
            && ctx.patch.pointer("/spec/rules/1/name") == Some(&json!("rollgate-web-header"))
            && seen.fetch_add(1, Ordering::SeqCst) == 0
        {
            // Another writer adds a rule after rollgate read the route.
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
    let mut t = shaped_cluster(Some(funcs));
    let p = shaping_plan();
    t.start_candidate(&p, V2).expect("start");
    wait_rolled_out(&t);
    let routing = Routing::at(&steps(&p), 1);
    t.set_routing(&p, &routing)
        .expect("the conflict is read again, not an error");
    assert_eq!(
        applies.load(Ordering::SeqCst),
        2,
        "written twice: refused once"
    );
    let rules = rules(&t);
    assert_eq!(rules[1], header_rule());
    assert_eq!(
        rules[4]["backendRefs"][0]["name"],
        json!("new"),
        "the other writer's rule is kept"
    );
    assert_eq!(settle(&mut t, &p, &shaped(&routing)), TargetHealth::Healthy);
}

#[test]
fn routing_waits_for_a_ready_candidate_and_needs_its_service() {
    // Given a candidate with no ready replica
    let readiness = Readiness::withheld();
    let mut t = cluster::deployments_cluster(
        vec![stable_deployment(4), stable_service(), shaped_route()],
        None,
        NS,
        readiness.clone(),
    );
    let p = shaping_plan();
    let routing = Routing::at(&steps(&p), 1);
    let err = t.set_routing(&p, &routing).expect_err("no candidate yet");
    assert!(err.message.contains("start the candidate first"), "{err}");
    t.start_candidate(&p, V2).expect("start");
    readiness.caught_up(&t);
    // When the header route is asked for, it waits: nothing goes to it yet
    t.set_routing(&p, &routing).expect("deferred, not refused");
    assert_eq!(
        rules(&t),
        json!([admin_rule(), weighted(Some((100, 0)), &[]), static_rule()])
    );
    assert_eq!(t.health(&p, &shaped(&routing)), TargetHealth::Progressing);
    // Then, once a replica is ready, a health pass moves it
    readiness.withhold(false);
    assert_eq!(settle(&mut t, &p, &shaped(&routing)), TargetHealth::Healthy);
    assert_eq!(rules(&t)[1], header_rule());
}

#[test]
fn a_workload_without_a_route_refuses_routing_and_validation_says_so_first() {
    let mut t = cluster();
    let p = plan(false);
    t.start_candidate(&p, V2).expect("start");
    let routing = Routing::at(&steps(&shaping_plan()), 1);
    let err = t.set_routing(&p, &routing).expect_err("replica ratio");
    assert_eq!(err.kind, rollgate::targets::ErrorKind::Refused, "{err}");
    t.set_routing(&p, &Routing::default())
        .expect("the empty routing is fine");
    assert!(!p.workload.capabilities().header_route);
    assert!(plan(true).workload.capabilities().header_route);
    assert!(plan(true).workload.capabilities().mirror);
}

/// The route's owner changes the weighted rule to test the very header the step routes
/// by: one HTTPRoute match cannot test it twice, so the header rule cannot be written.
/// The step is unhealthy with the reason (it fails like a rule gone), never "serving".
#[test]
fn a_weighted_rule_that_comes_to_test_the_routed_header_fails_the_step() {
    let mut t = shaped_cluster(None);
    let p = shaping_plan();
    let routing = routed_at_25(&mut t, &p);
    let mut theirs = weighted(Some((75, 25)), &[mirror(20)]);
    theirs["matches"][0]["headers"] = json!([ { "name": "x-canary", "value": "0" } ]);
    let routes: Api<DynamicObject> =
        Api::namespaced_with(t.client(), NS, &kubernetes::http_route());
    t.block_on(routes.patch(
        "web",
        &PatchParams::apply("argocd").force(),
        &Patch::Apply(&json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": { "name": "web", "namespace": NS },
            "spec": { "rules": [admin_rule(), theirs, static_rule()] },
        })),
    ))
    .expect("apply");
    let d = Desired {
        weight: 25,
        ..shaped(&routing)
    };
    match t.health(&p, &d) {
        TargetHealth::Unhealthy { reason } => {
            assert!(reason.contains("X-Canary"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let err = t.set_routing(&p, &routing).expect_err("cannot be written");
    assert_eq!(err.kind, rollgate::targets::ErrorKind::Refused, "{err}");
}
