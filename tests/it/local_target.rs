//! The `local` target end to end: real processes (the demo service), real HTTP traffic
//! through rollgate's proxy, and the daemon as a real subprocess against a bare remote.

use crate::support;

use support::free_port;
use support::local::Daemon;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rollgate::demo::load::Generator;
use rollgate::model::Plan;
use rollgate::targets::Target;
use rollgate::targets::local::LocalTarget;
use support::git;

fn plan_yaml(name: &str, port: u16, artifact: &str, steps: &str, checks: &str) -> String {
    format!(
        "apiVersion: rollgate.dev/v1alpha1
kind: RolloutPlan
metadata: {{ name: {name}, labels: {{ team: test }} }}
spec:
  target: local
  workload:
    local:
      command: [\"{exe}\", demo-service, --port, \"{{{{port}}}}\", --version, \"{{{{version}}}}\", --fail-version, v3, --fail-rate, \"0.2\", --work-ms, \"1\"]
      listen: \"127.0.0.1:{port}\"
      healthCheck: {{ path: /healthz, expectStatus: 200, timeout: 1s }}
  artifact: {artifact}
  strategy:
    canary:
      steps: {steps}
{checks}  minSamples: 20
",
        exe = env!("CARGO_BIN_EXE_rollgate")
    )
}

fn plan(port: u16) -> Plan {
    rollgate::model::validate::parse_plan(
        "plans/web.yaml",
        &plan_yaml("web", port, "v1", "[ { setWeight: 100 } ]", ""),
        None,
    )
    .expect("valid plan")
    .plan
}

/// `n` requests, counted by the version that answered.
fn shares(addr: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let code = rollgate::targets::local::http_get(addr, "/", Duration::from_secs(2))
            .expect("request answered");
        *out.entry(code.1.trim().rsplit(' ').next().unwrap_or("?").to_owned())
            .or_default() += 1;
    }
    out
}

fn wait_healthy(t: &mut LocalTarget, plan: &Plan, desired: &rollgate::targets::Desired) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if t.health(plan, desired) == rollgate::engine::TargetHealth::Healthy {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("target never became healthy for {desired:?}");
}

/// Wait until `load` has seen `more` answers from `version` than it had when called: the
/// traffic reached that state (bounded: 30 s, then a failure with the counts so far).
fn served(load: &Generator, version: &str, more: u64, what: &str) {
    let of = |c: &rollgate::demo::load::Counts| c.ok.get(version).copied().unwrap_or(0);
    let before = of(&load.counts());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = load.counts();
        if of(&c) >= before + more {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after 30 s waiting for {more} answers from {version} ({what}): {}",
            c.summary()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn local_target_passes_the_target_contract() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let plan = plan(port);
    let mut t = LocalTarget::new(dir.path().to_path_buf(), Arc::default());
    rollgate::targets::contract::run(
        &mut t,
        &plan,
        None,
        "v2",
        "v3",
        300,
        Duration::from_millis(20),
    );
}

#[test]
fn the_candidate_share_follows_the_weight() {
    // Given v1 stable and v2 as candidate behind the proxy
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let plan = plan(port);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut t = LocalTarget::new(dir.path().to_path_buf(), Arc::default());
    t.start_candidate(&plan, "v1").expect("start v1");
    t.promote(&plan, "v1").expect("v1 stable");
    t.start_candidate(&plan, "v2").expect("start v2");
    for weight in [5u8, 25, 50] {
        // When the weight is set
        t.set_weight(&plan, weight).expect("weight");
        wait_healthy(
            &mut t,
            &plan,
            &rollgate::targets::Desired {
                stable: Some("v1".into()),
                candidate: Some("v2".into()),
                weight,
                ..Default::default()
            },
        );
        // Then over 4,000 real requests v2's share is within 3 points of it
        let s = shares(addr, 4_000);
        let v2 = s.get("v2").copied().unwrap_or(0) as f64 / 4_000.0 * 100.0;
        eprintln!("weight {weight}%: {s:?} -> v2 {v2:.2}%");
        assert!(
            (v2 - f64::from(weight)).abs() <= 3.0,
            "weight {weight}: v2 got {v2:.2}% ({s:?})"
        );
    }
}

#[test]
fn promotion_and_rollback_lose_no_request() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let plan = plan(port);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut t = LocalTarget::new(dir.path().to_path_buf(), Arc::default());
    t.start_candidate(&plan, "v1").expect("start v1");
    t.promote(&plan, "v1").expect("v1 stable");
    // Given steady traffic
    let load = Generator::start(addr, 400);
    served(&load, "v1", 50, "steady traffic on v1");
    // When v2 goes 50% then is promoted, and v4 goes 50% then is rolled back, each state
    // serving traffic before the next
    t.start_candidate(&plan, "v2").expect("start v2");
    t.set_weight(&plan, 50).expect("50%");
    served(&load, "v2", 50, "v2 at 50%");
    t.promote(&plan, "v2").expect("promote v2");
    served(&load, "v2", 100, "v2 promoted");
    t.start_candidate(&plan, "v4").expect("start v4");
    t.set_weight(&plan, 50).expect("50%");
    served(&load, "v4", 20, "v4 at 50%");
    t.rollback(&plan, Some("v2")).expect("rollback");
    served(&load, "v2", 100, "v4 rolled back");
    let counts = load.stop();
    eprintln!("{}", counts.summary());
    // Then every request was answered, and by a healthy version
    assert_eq!(counts.failed, 0, "{}", counts.summary());
    assert_eq!(counts.server_errors, 0, "{}", counts.summary());
    assert!(
        counts.ok.get("v2").copied().unwrap_or(0) > 100,
        "{}",
        counts.summary()
    );
    assert!(
        counts.ok.get("v4").copied().unwrap_or(0) > 10,
        "{}",
        counts.summary()
    );
}

#[test]
fn a_crash_looping_candidate_is_unhealthy() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    let text = plan_yaml("crashy", port, "v1", "[ { setWeight: 100 } ]", "").replace(
        &format!("[\"{}\", demo-service", env!("CARGO_BIN_EXE_rollgate")),
        "[\"/bin/sh\", \"-c\", \"exit 3\", demo-service",
    );
    let plan = rollgate::model::validate::parse_plan("plans/crashy.yaml", &text, None)
        .expect("valid")
        .plan;
    let mut t = LocalTarget::new(dir.path().to_path_buf(), Arc::default());
    let _ = t.start_candidate(&plan, "v1");
    let desired = rollgate::targets::Desired {
        stable: None,
        candidate: Some("v1".into()),
        weight: 0,
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match t.health(&plan, &desired) {
            rollgate::engine::TargetHealth::Unhealthy { reason } => {
                assert!(reason.contains("crashing"), "{reason}");
                break;
            }
            other => assert!(Instant::now() < deadline, "still {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A bare remote with settings and one local plan at v1, already rolled out by a daemon.
/// Fields drop in order: the data planes under `state` (and their workloads) are stopped
/// before `remote` removes the folder they live in.
struct Story {
    _planes: support::DataPlanes,
    remote: support::Remote,
    port: u16,
    state: std::path::PathBuf,
}

fn daemon(story: &Story) -> Daemon {
    let child = Command::new(env!("CARGO_BIN_EXE_rollgate"))
        .args(["run", "--repo"])
        .arg(&story.remote.bare)
        .args(["--interval", "200ms", "--state-dir"])
        .arg(&story.state)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(story.state.join("daemon.log"))
                .expect("log"),
        ))
        .spawn()
        .expect("daemon starts");
    Daemon(Some(child))
}

fn status_of(story: &Story) -> Option<rollgate::model::status::Status> {
    let out = Command::new("git")
        .args(["show", "main:status/web.yaml"])
        .current_dir(&story.remote.bare)
        .output()
        .ok()?;
    rollgate::model::status::Status::from_yaml(&String::from_utf8_lossy(&out.stdout)).ok()
}

fn wait_for(
    story: &Story,
    what: &str,
    timeout: Duration,
    f: impl Fn(&rollgate::model::status::Status) -> bool,
) -> rollgate::model::status::Status {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = status_of(story).filter(|s| f(s)) {
            return s;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(story.state.join("daemon.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "timed out waiting for {what}; status {:?}\n{}",
                status_of(story).map(|s| (s.phase, s.step, s.candidate)),
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

const ANALYSED: &str = "[ { setWeight: 25 }, { analysis: { checks: [success-rate], duration: 2s } }, { setWeight: 50 }, { analysis: { checks: [success-rate], duration: 2s } }, { setWeight: 100 } ]";
const CHECKS: &str = "  checks:\n    - { name: success-rate, source: builtin, query: success-rate, interval: 500ms, judge: { min: 0.95 } }\n";

fn story() -> Story {
    let seed = tempfile::tempdir().expect("seed");
    let port = free_port();
    std::fs::create_dir_all(seed.path().join("plans")).expect("plans");
    std::fs::write(
        seed.path().join("rollgate.yaml"),
        "apiVersion: rollgate.dev/v1alpha1\nkind: Settings\ntargets:\n  local: { local: {} }\n",
    )
    .expect("settings");
    std::fs::write(
        seed.path().join("plans/web.yaml"),
        plan_yaml("web", port, "v1", ANALYSED, CHECKS),
    )
    .expect("plan");
    let remote = support::Remote::seeded_from(seed.path());
    let state = remote.work_dir("state");
    std::fs::create_dir_all(&state).expect("state");
    Story {
        _planes: support::DataPlanes(state.clone()),
        remote,
        port,
        state,
    }
}

fn set_artifact(story: &Story, artifact: &str) {
    story.remote.human_commit(
        "plans/web.yaml",
        |_| plan_yaml("web", story.port, artifact, ANALYSED, CHECKS),
        &format!("web {artifact}"),
    );
}

#[test]
fn a_failing_version_is_rolled_back_and_reverted_while_traffic_flows() {
    // Given a daemon that rolled out v1 under steady traffic
    let story = story();
    let d = daemon(&story);
    let load = Generator::start(SocketAddr::from(([127, 0, 0, 1], story.port)), 300);
    wait_for(&story, "v1 stable", Duration::from_secs(40), |s| {
        s.phase.as_str() == "Succeeded" && s.candidate == "v1"
    });
    // When v3, which fails 20% of requests, is committed
    set_artifact(&story, "v3");
    let began = Instant::now();
    let s = wait_for(&story, "v3 rolled back", Duration::from_secs(40), |s| {
        s.phase.as_str() == "RolledBack" && s.candidate == "v3"
    });
    let took = began.elapsed();
    // Then it was rolled back on the first conclusive measurement: one failure, no pass,
    // every other measurement inconclusive (an interval short of minSamples, which on a
    // busy machine may be more than the first one), and the revert is on the remote
    eprintln!("rolled back {:.2}s after the commit", took.as_secs_f64());
    let run = s
        .analysis
        .iter()
        .find(|c| c.check == "success-rate")
        .expect("the check ran");
    assert_eq!(run.failures, 1, "{run:?}");
    assert_eq!(run.passes, 0, "{run:?}");
    assert_eq!(
        run.measurements,
        run.failures + run.inconclusives,
        "nothing but the failure was conclusive: {run:?}"
    );
    assert!(
        matches!(&run.last, Some(j) if j.evidence.samples >= 20),
        "the failure was judged on at least minSamples (20): {run:?}"
    );
    let plan_now = git(&story.remote.bare, &["show", "main:plans/web.yaml"]);
    assert!(
        plan_now.contains("artifact: v1"),
        "plan not reverted:\n{plan_now}"
    );
    let rollback_of = git(
        &story.remote.bare,
        &[
            "log",
            "main",
            "--format=%(trailers:key=Rollgate-Rollback-Of,valueonly)",
        ],
    );
    assert!(!rollback_of.trim().is_empty(), "no revert commit");
    assert_eq!(s.stable.as_deref(), Some("v1"));
    served(&load, "v1", 100, "v1 serving after the rollback");
    let counts = load.stop();
    drop(d);
    // And the only failures were v3's own 500s: at most the first second of v1's start-up
    // (before the proxy listened) failed to connect
    eprintln!("{}", counts.summary());
    assert!(counts.failed < 300, "{}", counts.summary());
}

#[test]
fn after_sigkill_a_restarted_daemon_finishes_the_rollout_with_traffic_intact() {
    let story = story();
    let mut d = daemon(&story);
    let load = Generator::start(SocketAddr::from(([127, 0, 0, 1], story.port)), 300);
    wait_for(&story, "v1 stable", Duration::from_secs(40), |s| {
        s.phase.as_str() == "Succeeded" && s.candidate == "v1"
    });
    set_artifact(&story, "v2");
    wait_for(&story, "v2 in flight", Duration::from_secs(20), |s| {
        s.candidate == "v2" && s.step >= 1
    });
    // When the daemon is killed mid-rollout and started again
    d.kill();
    let d = daemon(&story);
    let s = wait_for(&story, "v2 stable", Duration::from_secs(60), |s| {
        s.phase.as_str() == "Succeeded" && s.candidate == "v2"
    });
    let counts = load.stop();
    eprintln!("{}", counts.summary());
    // Then the rollout finished and the service answers from v2 only
    assert_eq!(s.stable.as_deref(), Some("v2"));
    let after = shares(SocketAddr::from(([127, 0, 0, 1], story.port)), 200);
    drop(d);
    assert_eq!(after.get("v2").copied(), Some(200), "{after:?}");
}

#[test]
fn regression_a_workload_never_inherits_rollgate_secrets() {
    // Given a local plan whose workload dumps its environment before it becomes the
    // demo service, with two variables of its own
    let seed = tempfile::tempdir().expect("seed");
    let dumps = tempfile::tempdir().expect("dumps");
    let port = free_port();
    std::fs::create_dir_all(seed.path().join("plans")).expect("plans");
    std::fs::write(
        seed.path().join("rollgate.yaml"),
        "apiVersion: rollgate.dev/v1alpha1\nkind: Settings\ntargets:\n  local: { local: {} }\n",
    )
    .expect("settings");
    let script = r#"env > "$0.env.tmp" && mv "$0.env.tmp" "$0.env"; exec "$1" demo-service --port "$2" --version "$3""#;
    std::fs::write(
        seed.path().join("plans/web.yaml"),
        format!(
            "apiVersion: rollgate.dev/v1alpha1
kind: RolloutPlan
metadata: {{ name: web, labels: {{ team: test }} }}
spec:
  target: local
  workload:
    local:
      command:
        - /bin/sh
        - -c
        - '{script}'
        - '{dump}'
        - '{exe}'
        - '{{{{port}}}}'
        - '{{{{version}}}}'
      listen: \"127.0.0.1:{port}\"
      healthCheck: {{ path: /healthz, expectStatus: 200, timeout: 1s }}
      env:
        GREETING: hello from the plan
        APP_PORT: '{{{{port}}}}'
  artifact: v1
  strategy:
    canary:
      steps: [ {{ setWeight: 25 }}, {{ setWeight: 100 }} ]
",
            dump = dumps.path().join("workload-{{version}}").display(),
            exe = env!("CARGO_BIN_EXE_rollgate"),
        ),
    )
    .expect("plan");
    let remote = support::Remote::seeded_from(seed.path());
    let state = remote.work_dir("state");
    std::fs::create_dir_all(&state).expect("state");
    let story = Story {
        _planes: support::DataPlanes(state.clone()),
        remote,
        port,
        state,
    };

    // When the daemon runs with rollgate's secrets in its own environment
    let secrets = [
        ("ROLLGATE_GIT_TOKEN", "rg-git-token-5ec2e7"),
        ("GITHUB_TOKEN", "ghp_githubtoken5ec2e7"),
        ("ROLLGATE_WEBHOOK_SECRET", "webhook-secret-5ec2e7"),
        ("AWS_ACCESS_KEY_ID", "AKIA5EC2E7EXAMPLE"),
        ("AWS_SECRET_ACCESS_KEY", "aws-secret-key-5ec2e7"),
        ("AWS_SESSION_TOKEN", "aws-session-token-5ec2e7"),
    ];
    let _daemon = Daemon(Some(
        Command::new(env!("CARGO_BIN_EXE_rollgate"))
            .args(["run", "--repo"])
            .arg(&story.remote.bare)
            .args(["--interval", "200ms", "--state-dir"])
            .arg(&story.state)
            .envs(secrets)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(story.state.join("daemon.log")).expect("log"),
            ))
            .spawn()
            .expect("daemon starts"),
    ));
    wait_for(&story, "v1 stable", Duration::from_secs(40), |s| {
        s.phase.as_str() == "Succeeded" && s.candidate == "v1"
    });
    let dump_path = dumps.path().join("workload-v1.env");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dump_path.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let dump = std::fs::read_to_string(&dump_path).expect("the workload dumped its env");
    let env: BTreeMap<&str, &str> = dump.lines().filter_map(|l| l.split_once('=')).collect();

    // Then the workload sees none of the secrets, by name or by value
    for (name, value) in secrets {
        assert!(!env.contains_key(name), "the workload got {name}:\n{dump}");
        assert!(
            !dump.contains(value),
            "the workload got {name}'s value:\n{dump}"
        );
    }
    // And nothing but the allowlist, the plan's env, PORT and ROLLGATE_VERSION (and the
    // variables the shell sets itself)
    let shell_own = ["PWD", "OLDPWD", "SHLVL", "_"];
    let plan_own = ["GREETING", "APP_PORT", "PORT", "ROLLGATE_VERSION"];
    for name in env.keys() {
        assert!(
            rollgate::targets::local::INHERITED_ENV.contains(name)
                || plan_own.contains(name)
                || shell_own.contains(name),
            "the workload inherited {name}:\n{dump}"
        );
    }
    // And it still has what a process needs to run, and its plan's own variables
    let path = std::env::var("PATH").expect("the test has a PATH");
    assert_eq!(env.get("PATH").copied(), Some(path.as_str()), "{dump}");
    assert_eq!(
        env.get("GREETING").copied(),
        Some("hello from the plan"),
        "{dump}"
    );
    let app_port = env.get("APP_PORT").copied().expect("APP_PORT");
    assert!(app_port.parse::<u16>().is_ok(), "{dump}");
    assert_eq!(env.get("PORT").copied(), Some(app_port), "{dump}");
    assert_eq!(env.get("ROLLGATE_VERSION").copied(), Some("v1"), "{dump}");
}
