//! The gate's cache between revisions: what a status change must still reach.

use std::collections::BTreeMap;

use rollgate::gate::{self, Change, GateCache, GateContext, PolicyEngine, Rego};
use rollgate::model::status::{Phase, Status, Success};
use rollgate::source::Snapshot;

use crate::support::rollout::{PlanFile, SETTINGS};

const REV: &str = "0123456789abcdef0123456789abcdef01234567";

fn status_yaml(plan: &str, succeeded: Option<&str>) -> Vec<u8> {
    let mut s = Status::pending(plan, "v2", REV);
    if let Some(artifact) = succeeded {
        s.phase = Phase::Succeeded;
        s.stable = Some(artifact.to_owned());
        s.succeeded = vec![Success {
            artifact: artifact.to_owned(),
            at: chrono::DateTime::UNIX_EPOCH,
        }];
    }
    s.to_yaml().expect("status yaml").into_bytes()
}

fn cx() -> GateContext<'static> {
    GateContext {
        base: None,
        change: Change::default(),
        now: chrono::Utc::now(),
        only: None,
        namespaces: None,
    }
}

#[test]
fn regression_a_status_change_reaches_the_promotion_policy_through_the_gate_cache() {
    // Given production promoted from staging at v2, while staging has run nothing yet
    let staging = PlanFile::new("staging").artifact("v2");
    let production = PlanFile::new("production").port(18081).artifact("v2");
    let prod_yaml = production
        .yaml()
        .replacen("spec:\n", "spec:\n  promotedFrom: staging\n", 1);
    let mut snap = Snapshot {
        files: BTreeMap::from([
            ("rollgate.yaml".to_owned(), SETTINGS.as_bytes().to_vec()),
            (staging.path(), staging.yaml().into_bytes()),
            (production.path(), prod_yaml.into_bytes()),
            (
                "status/staging.yaml".to_owned(),
                status_yaml("staging", None),
            ),
        ]),
        refused: Vec::new(),
    };
    let rego = Rego::new(rollgate::policy::PolicySet::load(None).expect("built-in policies"));
    let policy = Some(&rego as &dyn PolicyEngine);
    let mut cache = GateCache::default();
    let first = gate::check_with(&snap, &cx(), policy, &mut cache);
    assert!(
        first.rejected.contains(&production.path()),
        "{:?}",
        first.diagnostics
    );

    // When staging's status says v2 succeeded, and production's plan is touched again
    // (the cache forgets the paths a diff names, as the daemon's intake does)
    snap.files.insert(
        "status/staging.yaml".to_owned(),
        status_yaml("staging", Some("v2")),
    );
    cache.invalidate(&["status/staging.yaml".to_owned(), production.path()]);
    let second = gate::check_with(&snap, &cx(), policy, &mut cache);

    // Then the policy saw the new status: production is accepted
    assert!(
        second.accepted.contains_key("production"),
        "{:?}",
        second.diagnostics
    );
    // And a status that does not parse any more is an error, not a stale cached view
    snap.files
        .insert("status/staging.yaml".to_owned(), b"phase: [".to_vec());
    cache.invalidate(&["status/staging.yaml".to_owned(), production.path()]);
    let third = gate::check_with(&snap, &cx(), policy, &mut cache);
    assert!(
        third.rejected.contains(&production.path()),
        "{:?}",
        third.diagnostics
    );
}
