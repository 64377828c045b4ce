//! The trust boundary (#16), end to end on the real binary: what a commit may make the
//! daemon do depends on what the commit is, not on what its message claims.

use crate::support;

use std::process::Command;

use rollgate::model::status::Phase;
use support::Remote;
use support::rollout::PlanFile;

const BIN: &str = env!("CARGO_BIN_EXE_rollgate");

/// One `rollgate run --journal-targets --once` pass over the remote (until nothing moves).
fn run_once(remote: &Remote, state: &std::path::Path) {
    let out = Command::new(BIN)
        .args(["run", "--journal-targets", "--once", "--repo"])
        .arg(&remote.bare)
        .arg("--state-dir")
        .arg(state)
        .env("RUST_LOG", "warn")
        .output()
        .expect("rollgate run --once");
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn regression_a_command_trailer_in_a_commit_that_changes_files_is_not_obeyed() {
    // Given v1 rolled out and v2 waiting at an untimed pause
    let v1 = PlanFile::new("web").steps(&["setWeight: 20", "setWeight: 100"]);
    let remote = Remote::with_plans(&[&v1]);
    let state = remote.work_dir("state");
    run_once(&remote, &state);
    let v2 = PlanFile::new("web").artifact("v2").steps(&[
        "setWeight: 20",
        "pause: {}",
        "setWeight: 100",
    ]);
    remote.human_commit(&v2.path(), |_| v2.yaml(), "web: v2");
    run_once(&remote, &state);
    let paused = remote.status("web").expect("status");
    assert_eq!(
        (paused.phase, paused.candidate.as_str()),
        (Phase::Paused, "v2")
    );

    // When a merge that changes a file carries a contributor's promote trailer (a squash
    // merge copies the contributor's message)
    remote.human_commit(
        "docs/notes.md",
        |_| "a harmless change\n".to_owned(),
        "Update notes\n\nRollgate-Command: promote\nRollgate-Plan: web",
    );
    run_once(&remote, &state);
    // Then the rollout stays paused
    let s = remote.status("web").expect("status");
    assert_eq!((s.phase, s.step), (Phase::Paused, paused.step), "{s:?}");
    assert_eq!(s.last_command, None);

    // When a maintainer makes a pure command commit (no file changed)
    remote.human_promote("web");
    run_once(&remote, &state);
    // Then it is obeyed
    let s = remote.status("web").expect("status");
    assert_eq!(
        (s.phase, s.candidate.as_str()),
        (Phase::Succeeded, "v2"),
        "{s:?}"
    );
}

#[test]
fn regression_a_status_file_forged_by_a_human_commit_is_ignored() {
    use rollgate::targets::dry_run::{DryRun, Workload};
    // Given v1 rolled out and v2 waiting at an untimed pause at 20%
    let v1 = PlanFile::new("web").steps(&["setWeight: 20", "setWeight: 100"]);
    let remote = Remote::with_plans(&[&v1]);
    let state = remote.work_dir("state");
    run_once(&remote, &state);
    let v2 = PlanFile::new("web").artifact("v2").steps(&[
        "setWeight: 20",
        "pause: {}",
        "setWeight: 100",
    ]);
    remote.human_commit(&v2.path(), |_| v2.yaml(), "web: v2");
    run_once(&remote, &state);
    let paused = remote.status("web").expect("status");
    assert_eq!((paused.phase, paused.weight), (Phase::Paused, 20));

    // When a human commit (a merged PR) rewrites the status: v2 succeeded, at 100%
    let mut forged = paused.clone();
    forged.phase = Phase::Succeeded;
    forged.stable = Some("v2".to_owned());
    forged.weight = 100;
    let forged_yaml = forged.to_yaml().expect("yaml");
    remote.human_commit(
        "status/web.yaml",
        |_| forged_yaml.clone(),
        "Mark web v2 done",
    );
    // And a daemon starts on it (re-applying the state it trusts to the target)
    run_once(&remote, &state);

    // Then the target still runs v1 with v2 at 20%: the forged status was not believed
    let journal = state.join("dry-run").join("local.journal");
    assert_eq!(
        DryRun::with_journal(journal).workload("web"),
        Workload {
            stable: Some("v1".to_owned()),
            candidate: Some("v2".to_owned()),
            weight: 20,
            ..Default::default()
        }
    );
    // And a real promote continues from the state rollgate wrote, and Git converges
    remote.human_promote("web");
    run_once(&remote, &state);
    let s = remote.status("web").expect("status");
    assert_eq!(
        (s.phase, s.stable.as_deref()),
        (Phase::Succeeded, Some("v2"))
    );
    assert_ne!(
        s.to_yaml().expect("yaml"),
        forged_yaml,
        "written by rollgate"
    );
}

/// A Kubernetes plan for `namespace`.
fn k8s_plan(namespace: &str) -> String {
    format!(
        "apiVersion: rollgate.dev/v1alpha1
kind: RolloutPlan
metadata: {{ name: dns, labels: {{ team: infra }} }}
spec:
  target: cluster
  workload:
    kubernetes: {{ namespace: {namespace}, deployment: coredns }}
  artifact: registry.example/coredns@sha256:{digest}
  strategy:
    canary:
      steps: [ {{ setWeight: 20 }}, {{ setWeight: 100 }} ]
",
        digest = "a".repeat(64)
    )
}

#[test]
fn regression_a_plan_for_a_namespace_outside_the_allowlist_is_rejected_at_validation() {
    // Given a repository whose settings let the cluster target touch `shop` only, and a
    // merged plan that repoints kube-system/coredns
    let settings = "apiVersion: rollgate.dev/v1alpha1
kind: Settings
targets:
  cluster: { kubernetes: { context: c, namespaces: [shop] } }
";
    let remote = Remote::with_files(&[
        ("rollgate.yaml".to_owned(), settings.to_owned()),
        ("plans/dns.yaml".to_owned(), k8s_plan("kube-system")),
    ]);
    // Then `validate` rejects it at the namespace, naming the allowed ones
    let out = Command::new(BIN)
        .arg("validate")
        .arg(&remote.human)
        .arg("--no-policy")
        .output()
        .expect("validate");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("plans/dns.yaml:7:") && text.contains("namespace `kube-system`"),
        "{text}"
    );
    assert!(text.contains("allowed namespaces: shop"), "{text}");

    // And with no list in the settings, the operator's --namespaces does the same: the
    // daemon never rolls it out (no status is written)
    let open = Remote::with_files(&[
        (
            "rollgate.yaml".to_owned(),
            "apiVersion: rollgate.dev/v1alpha1\nkind: Settings\ntargets:\n  cluster: { kubernetes: { context: c } }\n".to_owned(),
        ),
        ("plans/dns.yaml".to_owned(), k8s_plan("kube-system")),
    ]);
    let state = open.work_dir("state");
    let run = |extra: &[&str]| {
        Command::new(BIN)
            .args(["run", "--journal-targets", "--once", "--repo"])
            .arg(&open.bare)
            .arg("--state-dir")
            .arg(&state)
            .args(extra)
            .env("RUST_LOG", "warn")
            .output()
            .expect("run")
    };
    let out = run(&["--namespaces", "shop,web"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("namespace `kube-system`"),
        "{out:?}"
    );
    assert!(open.status("dns").is_none(), "the plan was rolled out");
    // (Without the flag the same plan is accepted and rolled out, on the journalling target.)
    assert!(run(&[]).status.success());
    assert!(open.status("dns").is_some());
}

#[test]
fn the_operators_namespaces_narrow_the_settings_never_widen_them() {
    use rollgate::model::settings::Target;
    let mut s = rollgate::model::validate::parse_settings(
        "rollgate.yaml",
        "apiVersion: rollgate.dev/v1alpha1\nkind: Settings\ntargets:\n  a: { kubernetes: { context: c, namespaces: [shop, web] } }\n  b: { kubernetes: { context: c } }\n",
    )
    .expect("settings");
    let allowed = ["web".to_owned(), "ops".to_owned()];
    rollgate::gate::narrow_namespaces(&mut s, Some(&allowed));
    let ns = |name: &str| match &s.targets[name] {
        Target::Kubernetes { namespaces, .. } => namespaces.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(ns("a"), Some(vec!["web".to_owned()]));
    assert_eq!(ns("b"), Some(vec!["web".to_owned(), "ops".to_owned()]));
}
