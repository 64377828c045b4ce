//! Fresh baselines (#19, `baseline: fresh`) through the daemon, the data plane and its
//! proxy on the local target, with real `demo-service` workloads and real requests: a
//! third process runs the stable artifact with the canary's share, baseline judges
//! compare with it, and it is gone after promotion and after rollback.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support;
use crate::traffic_shaping::{proxied, versions};
use support::git;
use support::local::{Traffic, World};

/// The canary's steps, judged against a fresh baseline (the line follows `steps:` in
/// `support::local::plan_yaml_with`'s `canary:`).
fn fresh(steps: &str) -> String {
    format!("{steps}\n      baseline: fresh")
}

/// The fresh baseline's error rate check: v2's 20% of 500s against the copy's none.
const ERRORS_VS_BASELINE: &str = "    - { name: errors-vs-baseline, source: builtin, query: error-rate, interval: 500ms, judge: { compare: baseline, direction: increase, maxIncrease: 0.05 } }\n";

/// How many of this test's workload processes run `version` (`--version V` in argv).
fn running(world: &World, version: &str) -> usize {
    world
        .workloads()
        .iter()
        .filter(|id| {
            id.argv
                .windows(2)
                .any(|w| w[0] == "--version" && w[1] == version)
        })
        .count()
}

/// The pid records of fresh baselines under `dir` (`<version>.baseline-<pid>.pid`).
fn baseline_records(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(name) = p.file_name().and_then(|n| n.to_str())
                && name.contains(".baseline-")
                && name.ends_with(".pid")
            {
                out.push(name.to_owned());
            }
        }
    }
    out
}

/// Wait (bounded) until `f` holds; panics with `what` when it never does.
fn eventually(what: &str, timeout: Duration, f: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn promote(world: &World) {
    git(
        &world.remote.human,
        &["pull", "-q", "--rebase", "origin", "main"],
    );
    git(
        &world.remote.human,
        &[
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "Promote web\n\nRollgate-Command: promote\nRollgate-Plan: web",
        ],
    );
    git(&world.remote.human, &["push", "-q", "origin", "main"]);
}

#[test]
fn a_fresh_baseline_takes_the_canarys_share_and_is_gone_after_promotion() {
    // Given v1 stable, and a canary to 20% judged against a fresh baseline, then paused
    let world = World::new(&fresh(
        "[{ setWeight: 20 }, { pause: {} }, { setWeight: 100 }]",
    ));
    let _daemon = world.daemon();
    world.wait("v1 stable", Duration::from_secs(60), |s| {
        s.phase.as_str() == "Succeeded" && s.candidate == "v1"
    });
    assert_eq!(running(&world, "v1"), 1, "no baseline before a rollout");
    // When v2 is rolled out
    world.roll_out("v2", false);
    world.wait("v2 paused at 20%", Duration::from_secs(60), |s| {
        s.phase.as_str() == "Paused" && s.candidate == "v2" && s.weight == 20
    });
    // Then a third process runs the stable artifact, with its own pid record
    assert_eq!(running(&world, "v1"), 2, "{:?}", world.workloads());
    assert_eq!(running(&world, "v2"), 1, "{:?}", world.workloads());
    assert_eq!(baseline_records(&world.state).len(), 1);
    // And over 1,000 requests it serves the canary's share (20% ± 3 points each)
    let addr = world.addr();
    let (b0, c0) = (proxied(addr, "v1 baseline"), proxied(addr, "v2"));
    let seen = versions(addr, 1000, &[]);
    let (baseline, canary) = (proxied(addr, "v1 baseline") - b0, proxied(addr, "v2") - c0);
    assert_eq!(
        seen.get("v2").copied().unwrap_or(0) as u64,
        canary,
        "{seen:?}"
    );
    assert!((170..=230).contains(&canary), "canary {canary} of 1000");
    assert!(
        (170..=230).contains(&baseline),
        "baseline {baseline} of 1000"
    );
    assert!(
        baseline.abs_diff(canary) <= 30,
        "baseline {baseline} and canary {canary} differ by more than 3 points"
    );
    // And `rollgate history` tells the step with its baseline, from Git alone
    let out = std::process::Command::new(support::local::BIN)
        .args(["history", "--repo"])
        .arg(&world.remote.bare)
        .arg("web")
        .output()
        .expect("history runs");
    let history = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        history.contains("setWeight 20 (fresh baseline 20)"),
        "{history}"
    );
    // When a human promotes
    promote(&world);
    world.wait("v2 stable", Duration::from_secs(60), |s| {
        s.phase.as_str() == "Succeeded" && s.candidate == "v2"
    });
    // Then the baseline is gone with the old stable: no process, no record, no traffic
    eventually("v1 stopped", Duration::from_secs(20), || {
        running(&world, "v1") == 0
    });
    assert_eq!(running(&world, "v2"), 1);
    assert!(baseline_records(&world.state).is_empty());
    let before = proxied(addr, "v1 baseline");
    let after = versions(addr, 50, &[]);
    assert_eq!(after.get("v2"), Some(&50), "{after:?}");
    assert_eq!(proxied(addr, "v1 baseline"), before);
}

#[test]
fn a_bad_canary_judged_against_its_fresh_baseline_rolls_back_and_the_baseline_goes_too() {
    // Given v1 stable under traffic, and a canary at 20% whose error rate is compared
    // with a fresh baseline's
    let world = World::with_checks(
        &fresh(
            "[{ setWeight: 20 }, { analysis: { checks: [errors-vs-baseline], duration: 30s } }, { setWeight: 100 }]",
        ),
        ERRORS_VS_BASELINE,
    );
    let _daemon = world.daemon();
    world.wait("v1 stable", Duration::from_secs(60), |s| {
        s.phase.as_str() == "Succeeded" && s.candidate == "v1"
    });
    let load = Traffic::start(world.addr(), 200);
    // When v2, which fails 20% of its requests, is rolled out
    world.roll_out("v2", true);
    world.wait(
        "v2 at 20% with its baseline",
        Duration::from_secs(60),
        |s| s.candidate == "v2" && s.weight == 20,
    );
    let s = world.wait("v2 rolled back", Duration::from_secs(90), |s| {
        s.phase.as_str() == "RolledBack" && s.candidate == "v2"
    });
    let seen = load.stop();
    // Then the judge failed v2 against the fresh baseline: its baseline samples are the
    // copy's (the canary's share, not the stable fleet's three times as many), none failed
    let run = s
        .analysis
        .iter()
        .find(|c| c.check == "errors-vs-baseline")
        .expect("the check ran");
    assert!(run.failures >= 1, "{run:?}");
    let c = run
        .last
        .as_ref()
        .and_then(|j| j.evidence.comparison.clone())
        .expect("a comparison");
    assert!(c.canary_samples >= 10, "{c:?}");
    let (n_c, n_b) = (c.canary_samples as f64, c.baseline_samples as f64);
    assert!(
        n_b >= n_c * 0.7 && n_b <= n_c * 1.3,
        "baseline n={n_b} is not the canary's share (n={n_c}): {c:?}"
    );
    assert_eq!(c.baseline, 0.0, "the fresh copy of v1 fails nothing: {c:?}");
    assert!(c.canary > 0.1, "{c:?}");
    assert!(
        seen.versions.get("v1").copied().unwrap_or(0) > 100,
        "{seen:?}"
    );
    // And the baseline is gone with the candidate: only the stable v1 runs
    eventually(
        "v2 and the baseline stopped",
        Duration::from_secs(20),
        || running(&world, "v2") == 0 && running(&world, "v1") == 1,
    );
    assert!(baseline_records(&world.state).is_empty());
    let plan = git(&world.remote.bare, &["show", "main:plans/web.yaml"]);
    assert!(plan.contains("artifact: v1"), "reverted:\n{plan}");
}

/// A world with v1 stable and v2 paused at 20% beside its fresh baseline, and its daemon.
fn paused_with_baseline() -> (World, support::local::Daemon) {
    let world = World::new(&fresh(
        "[{ setWeight: 20 }, { pause: {} }, { setWeight: 100 }]",
    ));
    let daemon = world.daemon();
    world.wait("v1 stable", Duration::from_secs(60), |s| {
        s.phase.as_str() == "Succeeded" && s.candidate == "v1"
    });
    world.roll_out("v2", false);
    world.wait("v2 paused at 20%", Duration::from_secs(60), |s| {
        s.phase.as_str() == "Paused" && s.candidate == "v2" && s.weight == 20
    });
    eventually("the baseline runs", Duration::from_secs(20), || {
        running(&world, "v1") == 2
    });
    (world, daemon)
}

/// Of `n` requests, how many the fresh baseline and the canary served (proxy counters).
fn shares(world: &World, n: usize) -> (u64, u64) {
    let addr = world.addr();
    let (b0, c0) = (proxied(addr, "v1 baseline"), proxied(addr, "v2"));
    versions(addr, n, &[]);
    (proxied(addr, "v1 baseline") - b0, proxied(addr, "v2") - c0)
}

#[test]
fn a_restarted_daemon_adopts_the_running_fresh_baseline_without_restarting_it() {
    // Given v2 at 20% beside its fresh baseline
    let (world, mut daemon) = paused_with_baseline();
    let workloads = world.workloads();
    let records = baseline_records(&world.state);
    assert_eq!(workloads.len(), 3, "{workloads:?}");
    // When the daemon is SIGKILLed and a new one starts on the same state folder
    daemon.kill();
    let _daemon = world.daemon();
    std::thread::sleep(Duration::from_secs(3));
    // Then the same three processes run (the baseline was found in place, not restarted)
    assert_eq!(world.workloads(), workloads, "no workload was restarted");
    assert_eq!(baseline_records(&world.state), records);
    // And the baseline still takes exactly the canary's share
    assert_eq!(shares(&world, 200), (40, 40));
}

#[test]
fn regression_a_killed_data_planes_fresh_baseline_is_stopped_by_identity_and_started_again() {
    // Given v2 at 20% beside its fresh baseline, then the daemon and the data plane
    // SIGKILLed: the three workloads are orphans
    let (world, mut daemon) = paused_with_baseline();
    daemon.kill();
    let orphans = world.workloads();
    assert_eq!(orphans.len(), 3, "{orphans:?}");
    let dp = rollgate::dataplane::client::hello(&world.plane_dir())
        .expect("the data plane answers")
        .identity;
    support::local::sigkill(&dp);
    // When the daemon starts again (and with it a new data plane)
    let _daemon = world.daemon();
    world.wait(
        &format!("serving again with a new baseline (orphans {orphans:?})"),
        Duration::from_secs(60),
        |_| {
            rollgate::targets::local::http_status(world.addr(), "/", Duration::from_secs(1))
                == Ok(200)
                && world.workloads().len() == 3
                && world.workloads().iter().all(|i| !orphans.contains(i))
        },
    );
    // Then every orphan, the old baseline included, was stopped by its record, and a new
    // stable, baseline and canary serve, the baseline with the canary's share
    assert!(orphans.iter().all(|i| !i.is_alive()), "an orphan survived");
    assert_eq!((running(&world, "v1"), running(&world, "v2")), (2, 1));
    assert_eq!(baseline_records(&world.state).len(), 1);
    eventually("the baseline routed again", Duration::from_secs(20), || {
        shares(&world, 100) == (20, 20)
    });
}
