//! A fresh baseline on Kubernetes (issue #19, `baseline: fresh`), replica-ratio mode,
//! on the in-memory cluster: `<deployment>-baseline` runs the stable Deployment's pod
//! template with the canary's replicas, so the replica split gives canary, baseline and
//! stable w : w : 100-2w; the exact objects after every step of a 10/25/50/100 canary;
//! gone after promotion and after rollback; one deleted behind rollgate's back started
//! again; a foreign `web-baseline` never adopted nor deleted.

use super::*;

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
fn a_gateway_route_refuses_a_fresh_baseline_and_changes_nothing() {
    let mut t = cluster();
    let p = plan(true);
    t.start_candidate(&p, V2).expect("start");
    let before = snapshot(&t);
    let err = t
        .set_routing(&p, &with_baseline(true))
        .expect_err("refused");
    assert_eq!(err.kind, rollgate::targets::ErrorKind::Refused, "{err}");
    assert!(err.message.contains("replica-ratio"), "{err}");
    assert_eq!(snapshot(&t), before);
    assert!(deployment(&t, "web-baseline").is_none());
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
