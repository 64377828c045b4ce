//! The contract every `Target` implementation passes (run from each one's tests: the
//! dry run below; the Deployments and Knative targets, alone and through the
//! Kubernetes target that routes to them, on the in-memory cluster of
//! `tests/support/cluster.rs` in `tests/it/kubernetes.rs` and `tests/it/knative.rs`; the
//! data plane client and the Lambda target in their own suites).
//!
//! Given a fresh target and a plan, it walks start → weights → promote, then a second
//! rollout that is rolled back, calling every method twice to prove idempotence, and
//! checks `health` agrees with what was asked at each point. The weights are a canary's
//! (5, 25, 50, 100) or, for a blue-green plan, its switch (0, 100). Where a target
//! answers `readiness`, a healthy candidate with traffic must read fully ready.
//!
//! Routing (issue #19): a canary on a workload whose `Workload::capabilities` claim a
//! header route or a mirror gets them (a header condition, or a Knative tag header
//! route where only that is claimed; a 20% mirror) from the
//! start, kept while the weights move, and gone after promotion and after rollback;
//! a workload that claims neither has a non-empty routing refused (`Refused`, nothing
//! changed) and the empty one accepted. A fresh baseline (`baseline: fresh`) is asked of
//! every canary: a workload that claims it runs one while the weight is between 0 and
//! 100 (exclusive), none after promotion and after rollback; one that does not refuses
//! it (`Refused`).

use super::{Desired, ErrorKind, Target};
use crate::engine::TargetHealth;
use crate::model::Plan;
use crate::model::plan::{MatchOn, MatchValue, RequestMatch, Routing, Strategy};

/// Wait (by polling `health`) until the target reports `Healthy` for `desired`.
fn settle(
    target: &mut dyn Target,
    plan: &Plan,
    desired: &Desired,
    polls: usize,
    pause: std::time::Duration,
) -> TargetHealth {
    let mut last = TargetHealth::Progressing;
    for _ in 0..polls {
        last = target.health(plan, desired);
        if last == TargetHealth::Healthy {
            return last;
        }
        std::thread::sleep(pause);
    }
    last
}

/// Run the contract; panics with a description of the first broken promise.
/// `stable` must already be running as the plan's stable version (or `None`).
pub fn run(
    target: &mut dyn Target,
    plan: &Plan,
    stable: Option<&str>,
    v2: &str,
    v3: &str,
    polls: usize,
    pause: std::time::Duration,
) {
    let stable = stable.map(str::to_owned);
    let (weights, rollback_at): (&[u8], u8) = match plan.strategy {
        Strategy::BlueGreen(_) => (&[0, 100], 100),
        Strategy::Canary { .. } => (&[5, 25, 50, 100], 25),
    };
    let caps = plan.workload.capabilities();
    let asked = Routing {
        matches: vec![RequestMatch {
            on: MatchOn::Header("X-Canary".to_owned()),
            value: MatchValue::Exact("1".to_owned()),
        }],
        mirror: 20,
        baseline: true,
    };
    // What this plan's rollouts route by, besides weights (a blue-green plan has no
    // steps to ask for any).
    let routing = match plan.strategy {
        Strategy::Canary { .. } => Routing {
            matches: if caps.header_route {
                asked.matches.clone()
            } else if caps.tag_header_route {
                vec![RequestMatch {
                    on: MatchOn::Header(crate::model::plan::TAG_HEADER.to_owned()),
                    value: MatchValue::Exact("beta".to_owned()),
                }]
            } else {
                Vec::new()
            },
            mirror: if caps.mirror { asked.mirror } else { 0 },
            baseline: caps.fresh_baseline,
        },
        Strategy::BlueGreen(_) => Routing::default(),
    };
    // The routing at weight `w`: a fresh baseline runs only while the weight is above 0
    // and below 100, and only with a stable version to copy (as `engine::routing` has it).
    let routing_with = |w: u8, stable: bool| Routing {
        baseline: routing.baseline && stable && (1..100).contains(&w),
        ..routing.clone()
    };
    let routing_at = |w: u8| routing_with(w, stable.is_some());
    // A rollout to v2 that succeeds.
    for _ in 0..2 {
        target
            .start_candidate(plan, v2)
            .expect("start_candidate v2");
    }
    let d = Desired {
        stable: stable.clone(),
        candidate: Some(v2.to_owned()),
        weight: 0,
        ..Default::default()
    };
    assert_eq!(
        settle(target, plan, &d, polls, pause),
        TargetHealth::Healthy,
        "candidate v2 at 0%"
    );
    if !caps.fresh_baseline && matches!(plan.strategy, Strategy::Canary { .. }) {
        let err = target
            .set_routing(
                plan,
                &Routing {
                    baseline: true,
                    ..routing.clone()
                },
            )
            .expect_err("a fresh baseline the workload cannot run is refused");
        assert_eq!(err.kind, ErrorKind::Refused, "{err}");
    }
    if !caps.header_route && !caps.mirror && !caps.fresh_baseline {
        let err = target
            .set_routing(plan, &asked)
            .expect_err("a routing the workload cannot take is refused");
        assert_eq!(err.kind, ErrorKind::Refused, "{err}");
        target
            .set_routing(plan, &Routing::default())
            .expect("the empty routing is accepted");
        assert_eq!(
            settle(target, plan, &d, polls, pause),
            TargetHealth::Healthy,
            "nothing changed by a refused routing"
        );
    }
    if !routing_at(0).is_empty() {
        for _ in 0..2 {
            target
                .set_routing(plan, &routing_at(0))
                .expect("set_routing");
        }
        let d = Desired {
            routing: routing_at(0),
            ..d.clone()
        };
        assert_eq!(
            settle(target, plan, &d, polls, pause),
            TargetHealth::Healthy,
            "v2 at 0% with {routing:?}"
        );
    }
    for &w in weights {
        // As the engine does: the routing first (a fresh baseline ready before its
        // share moves), then the weight.
        for _ in 0..2 {
            if !routing.is_empty() {
                target
                    .set_routing(plan, &routing_at(w))
                    .expect("set_routing");
            }
            target.set_weight(plan, w).expect("set_weight");
        }
        let d = Desired {
            stable: stable.clone(),
            candidate: Some(v2.to_owned()),
            weight: w,
            routing: routing_at(w),
        };
        assert_eq!(
            settle(target, plan, &d, polls, pause),
            TargetHealth::Healthy,
            "v2 at {w}%"
        );
        if w > 0
            && let Ok(m) = target.readiness(plan)
        {
            assert_eq!(
                (m.value, m.samples > 0),
                (Some(1.0), true),
                "a healthy candidate at {w}% reads fully ready: {m:?}"
            );
        }
    }
    for _ in 0..2 {
        target.promote(plan, v2).expect("promote v2");
    }
    let d = Desired {
        stable: Some(v2.to_owned()),
        candidate: None,
        weight: 0,
        ..Default::default()
    };
    assert_eq!(
        settle(target, plan, &d, polls, pause),
        TargetHealth::Healthy,
        "v2 promoted"
    );
    // A rollout to v3 that is rolled back.
    target
        .start_candidate(plan, v3)
        .expect("start_candidate v3");
    target.set_weight(plan, rollback_at).expect("set_weight v3");
    if !routing.is_empty() {
        target
            .set_routing(plan, &routing_with(rollback_at, true))
            .expect("set_routing v3");
    }
    let d = Desired {
        stable: Some(v2.to_owned()),
        candidate: Some(v3.to_owned()),
        weight: rollback_at,
        routing: routing_with(rollback_at, true),
    };
    assert_eq!(
        settle(target, plan, &d, polls, pause),
        TargetHealth::Healthy,
        "v3 at {rollback_at}%"
    );
    for _ in 0..2 {
        target.rollback(plan, Some(v2)).expect("rollback");
    }
    let d = Desired {
        stable: Some(v2.to_owned()),
        candidate: None,
        weight: 0,
        ..Default::default()
    };
    assert_eq!(
        settle(target, plan, &d, polls, pause),
        TargetHealth::Healthy,
        "rolled back to v2"
    );
}
