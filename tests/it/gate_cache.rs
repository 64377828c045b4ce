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
        ..Snapshot::default()
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

/// What a report says, in a form two reports can be compared by.
fn said(r: &gate::GateReport) -> (Vec<String>, Vec<String>, Vec<String>) {
    (
        r.accepted.keys().cloned().collect(),
        r.rejected.iter().cloned().collect(),
        r.diagnostics
            .iter()
            .map(|d| format!("{d} [{}]", d.code))
            .collect(),
    )
}

#[test]
fn a_cached_gate_reports_what_a_fresh_gate_reports_after_every_kind_of_change() {
    // Given staging, production promoted from staging, and two other plans, with
    // policies that read `input.statuses` (promotion needs staging's success)
    let staging = PlanFile::new("staging").artifact("v2");
    let production = PlanFile::new("production").port(18081).artifact("v2");
    let web = PlanFile::new("web").port(18082);
    let api = PlanFile::new("api").port(18083);
    let promoted = |p: &PlanFile, note: &str| {
        p.yaml()
            .replacen("spec:\n", "spec:\n  promotedFrom: staging\n", 1)
            + &format!("# {note}\n")
    };
    let mut snap = Snapshot {
        files: BTreeMap::from([
            ("rollgate.yaml".to_owned(), SETTINGS.as_bytes().to_vec()),
            (staging.path(), staging.yaml().into_bytes()),
            (production.path(), promoted(&production, "0").into_bytes()),
            (web.path(), web.yaml().into_bytes()),
            (api.path(), api.yaml().into_bytes()),
            ("status/web.yaml".to_owned(), status_yaml("web", Some("v1"))),
        ]),
        ..Snapshot::default()
    };
    let rego = Rego::new(rollgate::policy::PolicySet::load(None).expect("built-in policies"));
    let policy = Some(&rego as &dyn PolicyEngine);
    let mut cache = GateCache::default();
    let first = gate::check_with(&snap, &cx(), policy, &mut cache);
    assert_eq!(said(&first), said(&gate::check(&snap, &cx(), policy)));

    // When each change below lands (the cache told the paths, as the daemon's intake
    // does; production's plan is touched each time so its policies run again)
    type Change = Box<dyn Fn(&mut BTreeMap<String, Vec<u8>>)>;
    let (sp, wp, ap) = (staging.path(), web.path(), api.path());
    let changes: Vec<(&str, Change)> = vec![
        (
            "staging succeeds v2",
            Box::new(|f| {
                f.insert(
                    "status/staging.yaml".into(),
                    status_yaml("staging", Some("v2")),
                );
            }),
        ),
        (
            "web's content changes, not its name",
            Box::new(move |f| {
                let text = String::from_utf8(f[&wp].clone()).expect("utf8") + "# edited\n";
                f.insert(wp.clone(), text.into_bytes());
            }),
        ),
        (
            "a second file, web.yml, names its plan web too",
            Box::new(|f| {
                let twin = PlanFile::new("web").port(18084);
                f.insert("plans/web.yml".into(), twin.yaml().into_bytes());
            }),
        ),
        (
            "web.yml goes",
            Box::new(|f| {
                f.remove("plans/web.yml");
            }),
        ),
        (
            "staging's status stops parsing",
            Box::new(|f| {
                f.insert("status/staging.yaml".into(), b"phase: [".to_vec());
            }),
        ),
        (
            "staging's status is back",
            Box::new(|f| {
                f.insert(
                    "status/staging.yaml".into(),
                    status_yaml("staging", Some("v2")),
                );
            }),
        ),
        (
            "a status file names another plan than its path",
            Box::new(|f| {
                f.insert("status/stray.yaml".into(), status_yaml("staging", None));
            }),
        ),
        (
            "the stray status file goes",
            Box::new(|f| {
                f.remove("status/stray.yaml");
            }),
        ),
        (
            "staging is deleted (production's promotedFrom names nothing)",
            Box::new({
                let sp = sp.clone();
                move |f| {
                    f.remove(&sp);
                    f.remove("status/staging.yaml");
                }
            }),
        ),
        (
            "staging comes back, not yet succeeded",
            Box::new(move |f| {
                f.insert(sp.clone(), staging.yaml().into_bytes());
                f.insert("status/staging.yaml".into(), status_yaml("staging", None));
            }),
        ),
        (
            "api stops parsing",
            Box::new({
                let ap = ap.clone();
                move |f| {
                    f.insert(ap.clone(), b"metadata: [".to_vec());
                }
            }),
        ),
        (
            "api parses again",
            Box::new(move |f| {
                f.insert(ap.clone(), api.yaml().into_bytes());
            }),
        ),
        (
            "the settings change",
            Box::new(|f| {
                let text =
                    String::from_utf8(f["rollgate.yaml"].clone()).expect("utf8") + "# edited\n";
                f.insert("rollgate.yaml".into(), text.into_bytes());
            }),
        ),
    ];
    let mut outcomes = Vec::new();
    for (i, (what, change)) in changes.iter().enumerate() {
        let before = snap.files.clone();
        change(&mut snap.files);
        snap.files.insert(
            production.path(),
            promoted(&production, &(i + 1).to_string()).into_bytes(),
        );
        let paths: Vec<String> = before
            .keys()
            .chain(snap.files.keys())
            .filter(|p| before.get(*p) != snap.files.get(*p))
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        cache.invalidate(&paths);
        let cached = gate::check_with(&snap, &cx(), policy, &mut cache);
        // Then the cached gate says exactly what a gate with nothing cached says
        let fresh = gate::check(&snap, &cx(), policy);
        assert_eq!(said(&cached), said(&fresh), "after: {what}");
        outcomes.push(cached.accepted.contains_key("production"));
    }
    // And the changes did reach the verdicts: production was let through and held back
    assert!(
        outcomes.contains(&true) && outcomes.contains(&false),
        "{outcomes:?}"
    );
}
