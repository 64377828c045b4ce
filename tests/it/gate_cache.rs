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

/// Staging, and production at v2 promoted from it: both plans, and production's file.
fn promoted_pair() -> (PlanFile, PlanFile, String) {
    let staging = PlanFile::new("staging").artifact("v2");
    let production = PlanFile::new("production").port(18081).artifact("v2");
    let prod_yaml = production
        .yaml()
        .replacen("spec:\n", "spec:\n  promotedFrom: staging\n", 1);
    (staging, production, prod_yaml)
}

fn builtin_policies() -> Rego {
    Rego::new(rollgate::policy::PolicySet::load(None).expect("built-in policies"))
}

#[test]
fn regression_a_status_change_reaches_the_promotion_policy_through_the_gate_cache() {
    // Given production promoted from staging at v2, while staging has run nothing yet
    let (staging, production, prod_yaml) = promoted_pair();
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
    let rego = builtin_policies();
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

#[test]
fn a_plan_judged_only_once_its_promotion_source_appears_is_judged_on_its_own_document() {
    // Given production, promoted from staging, before staging exists: the cross-plan
    // check rejects it, so its policies have not run
    let (staging, production, prod_yaml) = promoted_pair();
    let mut snap = Snapshot {
        files: BTreeMap::from([
            ("rollgate.yaml".to_owned(), SETTINGS.as_bytes().to_vec()),
            (production.path(), prod_yaml.into_bytes()),
        ]),
        ..Snapshot::default()
    };
    let rego = builtin_policies();
    let policy = Some(&rego as &dyn PolicyEngine);
    let mut cache = GateCache::default();
    let first = gate::check_with(&snap, &cx(), policy, &mut cache);
    assert!(
        first
            .diagnostics
            .iter()
            .any(|d| d.file == production.path() && d.message.contains("which does not exist")),
        "{:?}",
        first.diagnostics
    );

    // When staging comes, with no successful rollout yet (production's file unchanged:
    // the gate kept its parse, not its document)
    snap.files
        .insert(staging.path(), staging.yaml().into_bytes());
    cache.invalidate(&[staging.path()]);
    let second = gate::check_with(&snap, &cx(), policy, &mut cache);

    // Then the promotion policy read production's `promotedFrom` and denied it, as a
    // gate with nothing kept does
    assert!(
        second
            .diagnostics
            .iter()
            .any(|d| d.file == production.path()
                && d.message
                    .contains("promoted from \"staging\", which has no successful rollout yet")),
        "{:?}",
        second.diagnostics
    );
    assert!(!second.accepted.contains_key("production"));
    assert_eq!(said(&second), said(&gate::check(&snap, &cx(), policy)));
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
    let rego = builtin_policies();
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
        // (every other change finds the cache compacted, as the daemon does at rest)
        if i % 2 == 0 {
            cache.compact(&snap);
        }
    }
    // And the changes did reach the verdicts: production was let through and held back
    assert!(
        outcomes.contains(&true) && outcomes.contains(&false),
        "{outcomes:?}"
    );
}

/// One plan file's content in `a_patched_report_is_the_whole_report_after_random_changes`.
fn plan_variant(file: &str, names: &[&str], pick: &mut impl FnMut(usize) -> usize) -> Vec<u8> {
    let port = 18_100 + u16::try_from(pick(50)).expect("small");
    let mine = PlanFile::new(file)
        .port(port)
        .artifact(&format!("v{}", pick(3)));
    let other = names[pick(names.len())];
    let text = match pick(6) {
        // A plan a built-in policy denies: its first step sends 50%.
        0 => mine.steps(&["setWeight: 50", "setWeight: 100"]).yaml(),
        1 => "metadata: [\n".to_owned(),
        // Another file's name: both are rejected while both say it.
        2 => PlanFile::new(other).port(port).yaml(),
        // Promoted from another plan (the promotion policy reads its status), or from
        // one that does not exist.
        3 => mine
            .yaml()
            .replacen("spec:\n", &format!("spec:\n  promotedFrom: {other}\n"), 1),
        4 => mine
            .yaml()
            .replacen("spec:\n", "spec:\n  promotedFrom: ghost\n", 1),
        _ => mine.yaml(),
    };
    text.into_bytes()
}

#[test]
fn a_patched_report_is_the_whole_report_after_random_changes() {
    // Given eight plan files and their status files, and two gates on one history:
    // one patches its last report (`check_into`, the daemon's), one makes it whole
    let names = ["a", "b", "c", "d", "e", "f", "g", "h"];
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut pick = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        usize::try_from(seed % n as u64).expect("small")
    };
    let mut snap = Snapshot {
        files: BTreeMap::from([("rollgate.yaml".to_owned(), SETTINGS.as_bytes().to_vec())]),
        ..Snapshot::default()
    };
    for n in names {
        let p = PlanFile::new(n).port(18_000 + u16::from(n.as_bytes()[0]));
        snap.files.insert(p.path(), p.yaml().into_bytes());
    }
    let rego = builtin_policies();
    let policy = Some(&rego as &dyn PolicyEngine);
    let (mut patched_cache, mut whole_cache) = (GateCache::default(), GateCache::default());
    let mut report = gate::GateReport::default();
    assert_eq!(
        gate::check_into(&snap, &cx(), policy, &mut patched_cache, &mut report),
        gate::Made::Whole,
        "nothing to patch at first"
    );
    let at = cx().now;
    let cx = || GateContext { now: at, ..cx() };
    let (mut patches, mut rejected_seen, mut accepted_seen) = (0, 0, 0);
    for round in 0..300 {
        // When one to four files change: a plan rewritten, deleted or refused (too
        // large, say), a status written, broken, naming another plan or deleted, now and
        // then a path no plan is at, or the settings
        let before = (snap.files.clone(), snap.refused.clone());
        for _ in 0..=pick(4) {
            let name = names[pick(names.len())];
            let (plan, status) = (format!("plans/{name}.yaml"), format!("status/{name}.yaml"));
            snap.refused.retain(|d| d.file != plan);
            match pick(20) {
                0..=9 => {
                    let text = plan_variant(name, &names, &mut pick);
                    snap.files.insert(plan, text);
                }
                10 => {
                    snap.files.remove(&plan);
                }
                11 => {
                    snap.files.remove(&plan);
                    snap.refused.push(rollgate::model::Diagnostic::error(
                        plan.as_str(),
                        None,
                        rollgate::model::Code::Io,
                        "file is larger than 1 MiB",
                    ));
                }
                12..=14 => {
                    let stable = pick(2) == 0;
                    let v = format!("v{}", pick(3));
                    snap.files
                        .insert(status, status_yaml(name, stable.then_some(v.as_str())));
                }
                15 => {
                    snap.files.insert(status, b"phase: [".to_vec());
                }
                16 => {
                    let other = names[pick(names.len())];
                    snap.files.insert(status, status_yaml(other, Some("v1")));
                }
                17 => {
                    snap.files.remove(&status);
                }
                18 => {
                    snap.files
                        .insert(format!("plans/nested/{name}.yaml"), b"x: 1\n".to_vec());
                }
                _ if pick(4) == 0 => {
                    let text = format!("{SETTINGS}# round {round}\n");
                    snap.files.insert("rollgate.yaml".into(), text.into_bytes());
                }
                _ => {}
            }
        }
        let mut paths: std::collections::BTreeSet<String> = before
            .0
            .keys()
            .chain(snap.files.keys())
            .filter(|p| before.0.get(*p) != snap.files.get(*p))
            .cloned()
            .collect();
        paths.extend(
            before
                .1
                .iter()
                .chain(&snap.refused)
                .filter(|d| before.1.contains(d) != snap.refused.contains(d))
                .map(|d| d.file.clone()),
        );
        let paths: Vec<String> = paths.into_iter().collect();
        patched_cache.invalidate(&paths);
        whole_cache.invalidate(&paths);
        let made = gate::check_into(&snap, &cx(), policy, &mut patched_cache, &mut report);
        let whole = gate::check_with(&snap, &cx(), policy, &mut whole_cache);

        // Then the patched report says exactly what the whole one says
        assert_eq!(
            said(&report),
            said(&whole),
            "round {round}, after {paths:?}"
        );
        assert_eq!(report.plan_files, whole.plan_files, "round {round}");
        let files = |r: &gate::GateReport| -> Vec<String> {
            r.accepted.values().map(|p| p.file.clone()).collect()
        };
        assert_eq!(files(&report), files(&whole), "round {round}");
        patches += usize::from(made == gate::Made::Patched);
        rejected_seen += report.rejected.len();
        accepted_seen += report.accepted.len();
    }
    // And most rounds were patches, over reports that rejected and accepted plans
    assert!(patches > 150, "{patches} of 300 rounds patched");
    assert!(
        rejected_seen > 300 && accepted_seen > 300,
        "{rejected_seen} {accepted_seen}"
    );
}
