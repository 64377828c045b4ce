//! Job checks (#18): the local runner with real commands (the `JobRunner` contract,
//! failure, timeout, a cleared environment, a job that outlives its runner, a keeper
//! killed), and the daemon running a smoke job in a rollout on a local target: a
//! failing job rolls back with its output in the status, a passing one promotes; hooks.
//! Every process a test starts is stopped by a guard, a failing test included.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use rollgate::engine::JobState;
use rollgate::model::Plan;
use rollgate::model::plan::{JobCheck, JobRun};
use rollgate::model::status::Phase;
use rollgate::targets::jobs::{JobRequest, JobRunner, contract};
use rollgate::targets::local_jobs::LocalJobs;

use crate::support;

fn local_plan() -> Plan {
    rollgate::model::validate::parse_plan(
        "plans/web.yaml",
        "apiVersion: rollgate.dev/v1alpha1\nkind: RolloutPlan\nmetadata: { name: web }\nspec:\n  target: local\n  workload:\n    local: { command: [srv], listen: \"127.0.0.1:9\" }\n  artifact: v2\n  strategy: { canary: { steps: [ { setWeight: 100 } ] } }\n",
        None,
    )
    .expect("valid plan")
    .plan
}

fn job(name: &str, argv: &[&str], timeout: Duration) -> JobCheck {
    JobCheck {
        name: name.to_owned(),
        run: JobRun::Command {
            command: argv.iter().map(|a| (*a).to_owned()).collect(),
            env: BTreeMap::from([("SMOKE_TARGET".to_owned(), "{{plan}}@{{version}}".to_owned())]),
        },
        timeout,
    }
}

fn req<'a>(id: &'a str, job: &'a JobCheck) -> JobRequest<'a> {
    JobRequest {
        id,
        job,
        version: "v2",
        baseline: Some("v1"),
    }
}

/// A runner whose keeper is the built `rollgate`.
fn runner(dir: &Path) -> LocalJobs {
    LocalJobs::with_keeper(dir.join("jobs"), support::local::BIN.into())
}

/// Stops, when dropped, every process whose argv holds one of its markers (keepers by
/// their folder, jobs by a word of their script).
struct Reaper(Vec<String>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for m in &self.0 {
            support::local::stop_marked_any(m);
        }
    }
}

/// Poll until the job ends (bounded).
fn finish(runner: &mut LocalJobs, plan: &Plan, id: &str) -> JobState {
    contract::finish(
        runner,
        plan,
        id,
        &mut |_| {},
        1500,
        Duration::from_millis(10),
    )
}

#[test]
fn the_local_runner_passes_the_job_runner_contract() {
    let dir = tempfile::tempdir().expect("dir");
    let _reaper = Reaper(vec![dir.path().display().to_string()]);
    let mut runner = runner(dir.path());
    let jobs = contract::Jobs {
        succeeds: job(
            "ok",
            &["/bin/sh", "-c", "echo ok-output"],
            Duration::from_secs(10),
        ),
        fails: job(
            "bad",
            &["/bin/sh", "-c", "echo boom >&2; exit 3"],
            Duration::from_secs(10),
        ),
        runs: job("long", &["sleep", "30"], Duration::from_secs(60)),
    };
    contract::run(
        &mut runner,
        &local_plan(),
        &jobs,
        "contract",
        &mut |_| {},
        1500,
        Duration::from_millis(10),
    );
}

#[test]
fn a_local_job_succeeds_or_fails_by_its_exit_status_with_its_output_captured() {
    let dir = tempfile::tempdir().expect("dir");
    let plan = local_plan();
    let mut runner = runner(dir.path());
    let ok = job(
        "smoke",
        &["/bin/sh", "-c", "echo checked $SMOKE_TARGET"],
        Duration::from_secs(10),
    );
    runner.start(&plan, &req("smoke-ok", &ok)).expect("start");
    assert_eq!(
        finish(&mut runner, &plan, "smoke-ok"),
        JobState::Succeeded {
            output: "checked web@v2".to_owned()
        }
    );
    let log = dir.path().join("jobs/web/smoke-ok/output.log");
    assert_eq!(
        std::fs::read_to_string(log).expect("log"),
        "checked web@v2\n"
    );

    let bad = job(
        "smoke",
        &["/bin/sh", "-c", "echo GET /checkout 502; exit 3"],
        Duration::from_secs(10),
    );
    runner.start(&plan, &req("smoke-bad", &bad)).expect("start");
    assert_eq!(
        finish(&mut runner, &plan, "smoke-bad"),
        JobState::Failed {
            reason: "exit status 3; output: GET /checkout 502".to_owned()
        }
    );

    let missing = job("smoke", &["/nonexistent/smoke"], Duration::from_secs(10));
    runner
        .start(&plan, &req("smoke-missing", &missing))
        .expect("start");
    match finish(&mut runner, &plan, "smoke-missing") {
        JobState::Failed { reason } => assert!(
            reason.starts_with("cannot start `/nonexistent/smoke`"),
            "{reason}"
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_local_job_past_its_timeout_fails_with_the_reason_and_its_processes_are_gone() {
    let dir = tempfile::tempdir().expect("dir");
    let plan = local_plan();
    let mut runner = runner(dir.path());
    // A shell whose child (a load generator's worker, say) would outlive it; the
    // marker is in both argvs (a sleep of 29.<pid> seconds).
    let marker = format!("29.{}", std::process::id());
    let _reaper = Reaper(vec![dir.path().display().to_string(), marker.clone()]);
    let slow = job(
        "load",
        &[
            "/bin/sh",
            "-c",
            &format!("echo warming up; sleep {marker}; echo done"),
        ],
        Duration::from_millis(300),
    );
    let started = Instant::now();
    runner.start(&plan, &req("load-1", &slow)).expect("start");
    match finish(&mut runner, &plan, "load-1") {
        JobState::Failed { reason } => {
            assert_eq!(reason, "timed out after 300ms; output: warming up");
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        !support::local::marked_any(&marker),
        "the job's processes were stopped"
    );
    assert!(!dir.path().join("jobs/web/load-1/job.pid").exists());
}

#[test]
fn a_local_job_gets_a_cleared_environment_plus_its_own() {
    let dir = tempfile::tempdir().expect("dir");
    let plan = local_plan();
    let mut runner = runner(dir.path());
    // This test process has CARGO_* and whatever the CI exports: none of it may pass.
    let env = job("env", &["/usr/bin/env"], Duration::from_secs(10));
    runner.start(&plan, &req("env-1", &env)).expect("start");
    let JobState::Succeeded { output } = finish(&mut runner, &plan, "env-1") else {
        panic!("env failed");
    };
    let names: Vec<&str> = output
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k))
        .collect();
    let own = [
        "SMOKE_TARGET",
        "ROLLGATE_PLAN",
        "ROLLGATE_VERSION",
        "ROLLGATE_BASELINE",
    ];
    for n in &names {
        assert!(
            rollgate::targets::local::INHERITED_ENV.contains(n) || own.contains(n),
            "`{n}` leaked into the job's environment: {output}"
        );
    }
    assert!(output.contains("SMOKE_TARGET=web@v2"), "{output}");
    assert!(output.contains("ROLLGATE_BASELINE=v1"), "{output}");
}

#[test]
fn a_job_outlives_its_runner_and_a_new_one_finds_it_by_its_id() {
    let dir = tempfile::tempdir().expect("dir");
    let marker = format!("28.{}", std::process::id());
    let _reaper = Reaper(vec![dir.path().display().to_string(), marker.clone()]);
    let plan = local_plan();
    let long = job(
        "soak",
        &[
            "/bin/sh",
            "-c",
            &format!("echo soaking; sleep {marker}; echo done"),
        ],
        Duration::from_secs(60),
    );
    {
        let mut first = runner(dir.path());
        first.start(&plan, &req("soak-1", &long)).expect("start");
        assert_eq!(
            first.poll(&plan, "soak-1").expect("poll"),
            JobState::Running
        );
    } // the daemon goes away (a restart, an upgrade, a SIGKILL)
    assert!(support::local::marked_any(&marker), "the job runs on");
    let mut next = runner(dir.path());
    assert_eq!(next.poll(&plan, "soak-1").expect("poll"), JobState::Running);
    next.start(&plan, &req("soak-1", &long))
        .expect("start again: found, not run twice");
    let runs = std::fs::read_to_string(dir.path().join("jobs/web/soak-1/output.log")).expect("log");
    assert_eq!(runs, "soaking\n", "one run");
    next.cleanup(&plan, "soak-1").expect("cleanup");
    assert!(
        !support::local::marked_any(&marker),
        "stopped when no longer wanted"
    );
    match next.poll(&plan, "soak-1").expect("poll") {
        JobState::Failed { reason } => {
            assert_eq!(reason, "stopped: no longer wanted; output: soaking")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_job_whose_keeper_was_killed_has_no_result_and_runs_again() {
    let dir = tempfile::tempdir().expect("dir");
    let marker = format!("27.{}", std::process::id());
    let _reaper = Reaper(vec![dir.path().display().to_string(), marker.clone()]);
    let plan = local_plan();
    let long = job(
        "soak",
        &["/bin/sh", "-c", &format!("sleep {marker}; echo done")],
        Duration::from_secs(60),
    );
    let mut jobs = runner(dir.path());
    jobs.start(&plan, &req("soak-2", &long)).expect("start");
    let job_dir = dir.path().join("jobs/web/soak-2");
    let keeper = rollgate::dataplane::identity::Identity::read(&job_dir.join("keeper.pid"))
        .expect("the keeper's record");
    support::local::sigkill(&keeper);
    // Reaped by the runner, the keeper is gone without a result: never a pass.
    assert!(jobs.poll(&plan, "soak-2").is_err());
    jobs.start(&plan, &req("soak-2", &long))
        .expect("runs again");
    assert_eq!(jobs.poll(&plan, "soak-2").expect("poll"), JobState::Running);
    jobs.cleanup(&plan, "soak-2").expect("cleanup");
    assert!(
        !support::local::marked_any(&marker),
        "the first run's job was stopped too"
    );
}

/// The demo service's plan, its analysis a smoke job running `script` (sh).
fn smoke_plan(world: &support::local::World, artifact: &str, script: &str) -> String {
    let steps = "[ { setWeight: 20 }, { analysis: { checks: [smoke], duration: 0s } }, { setWeight: 100 } ]";
    let base = support::local::plan_yaml(world.port, artifact, false, steps, &world.marker);
    let check = format!(
        "    - name: smoke\n      job: {{ command: [/bin/sh, -c, {script:?}], timeout: 20s }}\n"
    );
    base.replace("  checks:\n", &format!("  checks:\n{check}"))
}

#[test]
fn a_daemon_runs_a_smoke_job_once_and_its_failure_rolls_back_with_the_output() {
    let world = support::local::World::new("[ { setWeight: 20 }, { setWeight: 100 } ]");
    let mut daemon = world.daemon();
    world.wait("v1 deployed", Duration::from_secs(60), |s| {
        s.phase == Phase::Succeeded && s.candidate == "v1"
    });
    // A candidate whose smoke test fails
    world.remote.human_commit(
        "plans/web.yaml",
        |_| {
            smoke_plan(
                &world,
                "v2",
                "echo smoke of $ROLLGATE_VERSION: GET /checkout 502; exit 3",
            )
        },
        "web: v2",
    );
    let s = world.wait("v2 rolled back", Duration::from_secs(60), |s| {
        s.phase == Phase::RolledBack && s.candidate == "v2"
    });
    let log = world.remote.log("%(trailers:key=Rollgate-Verdict)%n%s");
    assert!(
        log.contains("fail smoke value=0 n=1 (job failed: exit status 3; output: smoke of v2: GET /checkout 502)"),
        "{log}"
    );
    let _ = s;
    // The job's output is in the state folder.
    let jobs = world.plane_dir().join("jobs/web");
    let outputs: Vec<String> = std::fs::read_dir(&jobs)
        .expect("job folders")
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("output.log")).ok())
        .collect();
    assert_eq!(outputs, vec!["smoke of v2: GET /checkout 502\n".to_owned()]);

    // A candidate whose smoke test passes is promoted
    world.remote.human_commit(
        "plans/web.yaml",
        |_| smoke_plan(&world, "v3", "echo fine"),
        "web: v3",
    );
    world.wait("v3 stable", Duration::from_secs(60), |s| {
        s.phase == Phase::Succeeded && s.stable.as_deref() == Some("v3")
    });
    daemon.terminate();
    assert!(Path::new(&jobs).exists());
}

#[test]
fn a_daemon_fails_a_rollout_on_a_failing_before_promote_hook_and_reports_after_rollback() {
    let world = support::local::World::new("[ { setWeight: 20 }, { setWeight: 100 } ]");
    let mut daemon = world.daemon();
    world.wait("v1 deployed", Duration::from_secs(60), |s| {
        s.phase == Phase::Succeeded && s.candidate == "v1"
    });
    let plan = |artifact: &str| {
        let base = support::local::plan_yaml(
            world.port,
            artifact,
            false,
            "[ { setWeight: 20 }, { setWeight: 100 } ]",
            &world.marker,
        );
        base.replace(
            "  checks:\n",
            "  hooks: { beforePromote: [gate], afterRollback: [report] }\n  checks:\n    - name: gate\n      job: { command: [/bin/sh, -c, \"echo gate closed for $ROLLGATE_VERSION; exit 1\"] }\n    - name: report\n      job: { command: [/bin/sh, -c, \"echo reported $ROLLGATE_VERSION back to $ROLLGATE_BASELINE\"] }\n",
        )
    };
    // The hooks are part of the plan before the change (a revert goes back to them:
    // the afterRollback hooks that run are those of the plan at head)
    world
        .remote
        .human_commit("plans/web.yaml", |_| plan("v1"), "web: hooks");
    world
        .remote
        .human_commit("plans/web.yaml", |_| plan("v2"), "web: v2");
    let s = world.wait("v2 rolled back", Duration::from_secs(60), |s| {
        s.phase == Phase::RolledBack && s.candidate == "v2"
    });
    assert_eq!(
        s.message.as_deref(),
        Some("rolled back to v1; afterRollback: report passed")
    );
    let log = world.remote.log("%(trailers:key=Rollgate-Verdict)%n%s");
    assert!(
        log.contains(
            "fail gate value=0 n=1 (job failed: exit status 1; output: gate closed for v2)"
        ),
        "{log}"
    );
    // The hook ran after the rollback, with the versions it was about.
    let jobs = world.plane_dir().join("jobs/web");
    let outputs: Vec<String> = std::fs::read_dir(&jobs)
        .expect("job folders")
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("output.log")).ok())
        .collect();
    assert!(
        outputs.contains(&"reported v2 back to v1\n".to_owned()),
        "{outputs:?}"
    );
    assert!(
        world
            .status()
            .is_some_and(|s| s.stable.as_deref() == Some("v1"))
    );
    daemon.terminate();
}

#[test]
fn a_job_started_by_a_daemon_killed_meanwhile_is_found_by_the_next_one_and_runs_once() {
    let world = support::local::World::new("[ { setWeight: 20 }, { setWeight: 100 } ]");
    let _reaper = Reaper(vec![world.state.display().to_string()]);
    let mut daemon = world.daemon();
    world.wait("v1 deployed", Duration::from_secs(60), |s| {
        s.phase == Phase::Succeeded && s.candidate == "v1"
    });
    // A smoke job that runs until the test lets it end (a file appears).
    let gate = world.state.join("let-smoke-end");
    let script = format!(
        "echo run >> ../runs; while [ ! -e {} ]; do sleep 0.05; done; echo smoke ok",
        gate.display()
    );
    world.remote.human_commit(
        "plans/web.yaml",
        |_| smoke_plan(&world, "v2", &script),
        "web: v2",
    );
    let jobs = world.plane_dir().join("jobs/web");
    let runs = jobs.join("runs");
    assert!(
        support::cluster::poll_until(Duration::from_secs(60), || runs.exists()),
        "the job started\n{}",
        world.diagnosis()
    );
    // When the daemon dies (SIGKILL) while the job runs, and another one starts
    daemon.kill();
    let mut next = world.daemon();
    std::fs::write(&gate, b"").expect("let the job end");
    // Then the next daemon finds the same job, which ran once, and the rollout goes on
    world.wait("v2 stable", Duration::from_secs(60), |s| {
        s.phase == Phase::Succeeded && s.stable.as_deref() == Some("v2")
    });
    assert_eq!(std::fs::read_to_string(&runs).expect("runs"), "run\n");
    let log = world.remote.log("%(trailers:key=Rollgate-Verdict)%n%s");
    assert!(log.contains("pass smoke value=1 n=1"), "{log}");
    next.terminate();
}
