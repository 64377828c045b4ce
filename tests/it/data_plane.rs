//! The data plane outlives the control plane: proxies and workloads keep serving, on
//! the weights last set, while the daemon is SIGKILLed, stopped with SIGTERM, or replaced
//! by a new binary; the new daemon adopts them (same processes, no traffic moved).
//! `rollgate dataplane stop` stops everything. Real processes, real HTTP, real Git.

use crate::support;

use std::time::Duration;

use rollgate::dataplane::identity::Identity;
use support::local::{Traffic, World};

const STEPS: &str = "[ { setWeight: 25 }, { pause: {} } ]";

/// A world with v1 stable and v2 paused at 25% (an untimed pause), under traffic.
fn paused_at_25() -> (World, support::local::Daemon, Traffic) {
    let w = World::new(STEPS);
    let d = w.daemon();
    w.wait("v1 stable", Duration::from_secs(60), |s| {
        s.phase.as_str() == "Succeeded" && s.candidate == "v1"
    });
    w.roll_out("v2", false);
    w.wait("v2 paused at 25%", Duration::from_secs(60), |s| {
        s.phase.as_str() == "Paused" && s.candidate == "v2" && s.weight == 25
    });
    let traffic = Traffic::start(w.addr(), 100);
    std::thread::sleep(Duration::from_millis(500));
    (w, d, traffic)
}

fn plane(w: &World) -> Identity {
    rollgate::dataplane::client::hello(&w.plane_dir())
        .expect("the data plane answers")
        .identity
}

/// The share of v2 among the 200s seen between two readings.
fn share_of_v2(before: &support::local::Seen, after: &support::local::Seen) -> f64 {
    let n = |s: &support::local::Seen, v: &str| s.versions.get(v).copied().unwrap_or(0);
    let v1 = n(after, "v1") - n(before, "v1");
    let v2 = n(after, "v2") - n(before, "v2");
    v2 as f64 / (v1 + v2).max(1) as f64
}

#[test]
fn a_sigkilled_daemon_moves_no_traffic_and_its_successor_adopts_the_same_processes() {
    // Given v2 at 25% behind the proxy, under 100 req/s
    let (w, mut d, traffic) = paused_at_25();
    let workloads = w.workloads();
    assert_eq!(workloads.len(), 2, "v1 and v2 run: {workloads:?}");
    let dp = plane(&w);
    // When the daemon is SIGKILLed and stays dead for 2 s
    let before = traffic.seen();
    d.kill();
    std::thread::sleep(Duration::from_secs(2));
    let dead = traffic.seen();
    // Then every request was answered, on the same weights
    assert_eq!(dead.connection_failures, 0, "{dead:?}");
    assert_eq!(dead.proxy_errors(), 0, "{dead:?}");
    let share = share_of_v2(&before, &dead);
    assert!(
        (0.15..0.35).contains(&share),
        "v2 got {share:.2} of traffic, not ~0.25"
    );
    // When a new daemon starts on the same state folder
    let _d = w.daemon();
    std::thread::sleep(Duration::from_secs(2));
    let after = traffic.stop();
    // Then it adopted the same data plane and the same workload processes
    assert_eq!(plane(&w), dp);
    assert_eq!(w.workloads(), workloads, "no workload was restarted");
    assert_eq!(after.connection_failures, 0, "{after:?}");
    assert_eq!(after.proxy_errors(), 0, "{after:?}");
    let share = share_of_v2(&dead, &after);
    assert!(
        (0.15..0.35).contains(&share),
        "v2 got {share:.2} after the restart"
    );
    assert!(after.total() > 300, "traffic flowed: {after:?}");
}

#[test]
fn sigterm_then_restart_and_a_binary_upgrade_fail_no_request() {
    // Given v2 at 25% behind the proxy, under 100 req/s
    let (w, mut d, traffic) = paused_at_25();
    let workloads = w.workloads();
    let dp = plane(&w);
    // When the daemon gets SIGTERM (it stops the control plane only) and starts again
    d.terminate();
    std::thread::sleep(Duration::from_millis(500));
    let mut d = w.daemon();
    std::thread::sleep(Duration::from_secs(1));
    // And then is upgraded: stopped, and a new binary started on the same state folder
    let release = tempfile::tempdir().expect("release dir");
    let new_binary = release.path().join("rollgate");
    std::fs::copy(support::local::BIN, &new_binary).expect("copy the binary");
    d.terminate();
    let _d = w.daemon_from(&new_binary);
    std::thread::sleep(Duration::from_secs(2));
    // Then no request failed, and the same processes serve
    let seen = traffic.stop();
    assert_eq!(seen.connection_failures, 0, "{seen:?}");
    assert_eq!(seen.proxy_errors(), 0, "{seen:?}");
    assert!(seen.total() > 250, "traffic flowed: {seen:?}");
    assert_eq!(plane(&w), dp);
    assert_eq!(w.workloads(), workloads);
    // And the new daemon still drives the rollout: a promote finishes it
    support::git(
        &w.remote.human,
        &["pull", "-q", "--rebase", "origin", "main"],
    );
    let out = std::process::Command::new(support::local::BIN)
        .args(["promote", "web", "--push", "--repo"])
        .arg(&w.remote.human)
        .output()
        .expect("rollgate promote");
    assert!(out.status.success(), "{out:?}");
    w.wait("v2 stable", Duration::from_secs(60), |s| {
        s.phase.as_str() == "Succeeded" && s.candidate == "v2"
    });
}

#[test]
fn dataplane_stop_stops_every_workload_and_the_proxy() {
    // Given v2 at 25% and the daemon stopped (SIGTERM: the data plane keeps serving)
    let (w, mut d, traffic) = paused_at_25();
    drop(traffic);
    d.terminate();
    let workloads = w.workloads();
    assert_eq!(workloads.len(), 2);
    assert!(rollgate::targets::local::http_status(w.addr(), "/", Duration::from_secs(2)).is_ok());
    // When everything is stopped the documented way
    let out = std::process::Command::new(support::local::BIN)
        .args(["dataplane", "stop", "--dir"])
        .arg(&w.state)
        .output()
        .expect("rollgate dataplane stop");
    assert!(out.status.success(), "{out:?}");
    // Then no workload, no data plane and no proxy is left
    assert_eq!(w.workloads(), Vec::new());
    assert!(workloads.iter().all(|i| !i.is_alive()));
    assert!(rollgate::dataplane::client::hello(&w.plane_dir()).is_err());
    assert!(rollgate::targets::local::http_status(w.addr(), "/", Duration::from_secs(1)).is_err());
}

#[test]
fn regression_leftovers_of_a_killed_data_plane_are_stopped_before_the_stable_restarts() {
    // Given v2 at 25%, then the data plane itself SIGKILLed: its workloads are orphans
    let (w, mut d, traffic) = paused_at_25();
    drop(traffic);
    d.kill();
    let orphans = w.workloads();
    assert_eq!(orphans.len(), 2);
    let dp = plane(&w);
    support::local::sigkill(&dp);
    assert!(orphans.iter().all(Identity::is_alive), "orphans run on");
    // When the daemon starts again (and with it a new data plane)
    let _d = w.daemon();
    let alive = || -> Vec<u32> {
        orphans
            .iter()
            .filter(|i| i.is_alive())
            .map(|i| i.pid)
            .collect()
    };
    w.wait(
        &format!("serving again (orphans {orphans:?})"),
        Duration::from_secs(60),
        |_| {
            rollgate::targets::local::http_status(w.addr(), "/", Duration::from_secs(1)) == Ok(200)
                && w.workloads().len() == 2
                && w.workloads().iter().all(|i| !orphans.contains(i))
        },
    );
    // Then every orphan was stopped (by identity) and exactly one new v1 and v2 serve
    assert_eq!(alive(), Vec::<u32>::new(), "an orphan survived");
    let versions: Vec<String> = w
        .workloads()
        .iter()
        .filter_map(|i| {
            let at = i.argv.iter().position(|a| a == "--version")?;
            i.argv.get(at + 1).cloned()
        })
        .collect();
    assert_eq!(versions.len(), 2);
    assert!(versions.contains(&"v1".to_owned()) && versions.contains(&"v2".to_owned()));
    assert_ne!(plane(&w), dp);
}

/// A data plane started by hand (`Launch::Never`: a test binary is not `rollgate`), and
/// stopped with everything it runs when dropped.
struct Plane {
    dir: tempfile::TempDir,
    child: std::process::Child,
    /// In the argv of every workload of this plane's plans.
    marker: String,
}

impl Plane {
    fn start() -> Plane {
        let dir = tempfile::tempdir().expect("tmp");
        let child = std::process::Command::new(support::local::BIN)
            .args(["dataplane", "serve", "--dir"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("rollgate dataplane serve");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while rollgate::dataplane::client::hello(dir.path()).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the data plane did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let marker = format!("plane-{}-{}", std::process::id(), support::free_port());
        Plane { dir, child, marker }
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        let _ = rollgate::dataplane::stop(self.dir.path(), Duration::from_secs(30));
        let _ = self.child.kill();
        let _ = self.child.wait();
        support::local::kill_marked(&self.marker);
    }
}

fn local_plan(port: u16, marker: &str) -> rollgate::model::Plan {
    rollgate::model::validate::parse_plan(
        "plans/web.yaml",
        &support::local::plan_yaml(
            port,
            "v1",
            false,
            "[ { setWeight: 20 }, { pause: {} } ]",
            marker,
        ),
        None,
    )
    .expect("valid plan")
    .plan
}

#[test]
fn the_data_plane_client_passes_the_target_contract() {
    use rollgate::dataplane::client::{DataPlaneTarget, Launch};
    let plane = Plane::start();
    let plan = local_plan(support::free_port(), &plane.marker);
    let mut t = DataPlaneTarget::new(plane.dir.path().to_path_buf(), Launch::Never);
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

/// The builtin metrics source as the daemon reads it: the data plane's counters, over its
/// socket, of 50 real requests through its proxy to v2 (v3 served none); the dead source
/// asks a folder where no data plane listens.
#[test]
fn the_builtin_source_over_the_data_plane_passes_the_metrics_source_contract() {
    use rollgate::dataplane::client::{DataPlaneCounters, DataPlaneTarget, Launch};
    use rollgate::metrics::builtin::Builtin;
    use rollgate::metrics::contract::{Cases, Question};
    use rollgate::targets::{Desired, Target};
    use std::sync::Arc;
    use std::time::Instant;
    // Given v2 stable behind the data plane's proxy, serving
    let plane = Plane::start();
    let port = support::free_port();
    let plan = local_plan(port, &plane.marker);
    let mut t = DataPlaneTarget::new(plane.dir.path().to_path_buf(), Launch::Never);
    t.promote(&plan, "v2").expect("v2");
    let desired = Desired {
        stable: Some("v2".to_owned()),
        candidate: None,
        weight: 0,
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let health = t.health(&plan, &desired);
        if health == rollgate::engine::TargetHealth::Healthy {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "v2 not healthy within 30 s: {health:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // When 50 requests go through the proxy
    let data_from = chrono::Utc::now();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    for i in 0..50 {
        let (code, body) = rollgate::targets::local::http_get(addr, "/", Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("request {i} unanswered: {e}"));
        assert_eq!(code, 200, "request {i}: {body}");
    }
    // Then the builtin source reading the data plane keeps the contract
    let mut live = Builtin::with(vec![Arc::new(DataPlaneCounters::new(
        plane.dir.path().to_path_buf(),
    ))]);
    let nowhere = tempfile::tempdir().expect("tmp");
    let mut dead = Builtin::with(vec![Arc::new(DataPlaneCounters::new(
        nowhere.path().to_path_buf(),
    ))]);
    let question = |version| Question {
        check: rollgate::model::plan::Check {
            name: "success-rate".to_owned(),
            source: "builtin".to_owned(),
            query: "success-rate".to_owned(),
            judge: rollgate::model::plan::Judge::Threshold {
                min: Some(0.95),
                max: None,
            },
            interval: Duration::from_secs(1),
            failure_limit: 1,
            consecutive_error_limit: 2,
            samples_query: None,
        },
        ctx: rollgate::metrics::QueryContext {
            plan: &plan.name,
            version,
            baseline: None,
            fresh_baseline: false,
            window: Duration::from_secs(600),
            workload: None,
        },
    };
    rollgate::metrics::contract::run(
        &mut live,
        &mut dead,
        &Cases {
            unreachable: question("v2"),
            empty: question("v3"),
            counted: question("v2"),
            value: 1.0,
            tolerance: 0.0,
            samples: 50,
            data_from,
        },
    );
}

#[test]
fn a_replaced_data_plane_gets_the_last_applied_state_back_before_anything_else() {
    use rollgate::dataplane::client::{DataPlaneTarget, Launch};
    use rollgate::targets::{Desired, Target};
    // Given v1 stable and v2 at 20% through the client
    let plane = Plane::start();
    let port = support::free_port();
    let plan = local_plan(port, &plane.marker);
    let mut t = DataPlaneTarget::new(plane.dir.path().to_path_buf(), Launch::Never);
    t.promote(&plan, "v1").expect("v1");
    t.start_candidate(&plan, "v2").expect("v2");
    t.set_weight(&plan, 20).expect("20%");
    // When the data plane dies (SIGKILL) and another one starts on the same folder
    let old = rollgate::dataplane::client::hello(plane.dir.path())
        .expect("hello")
        .identity;
    support::local::sigkill(&old);
    let _second = Plane {
        child: std::process::Command::new(support::local::BIN)
            .args(["dataplane", "serve", "--dir"])
            .arg(plane.dir.path())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("a second data plane"),
        dir: tempfile::tempdir().expect("unused"),
        marker: plane.marker.clone(),
    };
    let desired = Desired {
        stable: Some("v1".to_owned()),
        candidate: Some("v2".to_owned()),
        weight: 20,
        ..Default::default()
    };
    // Then the client's next call finds it, replays v1 + v2 at 20%, and reads healthy
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let h = t.health(&plan, &desired);
        if h == rollgate::engine::TargetHealth::Healthy {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still {h:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let new = rollgate::dataplane::client::hello(plane.dir.path())
        .expect("hello")
        .identity;
    assert_ne!(new, old);
    let seen =
        support::local::Traffic::start(std::net::SocketAddr::from(([127, 0, 0, 1], port)), 200);
    std::thread::sleep(Duration::from_secs(2));
    let seen = seen.stop();
    let v2 = seen.versions.get("v2").copied().unwrap_or(0) as f64;
    let all = seen.versions.values().sum::<u64>() as f64;
    assert!((0.1..0.3).contains(&(v2 / all)), "{seen:?}");
}

#[test]
fn regression_a_killed_demo_leaves_no_data_plane_and_no_workload_behind() {
    // Given `rollgate demo` serving (its data plane started for it alone)
    let dir = tempfile::tempdir().expect("tmp");
    let _planes = support::DataPlanes(dir.path().join("state"));
    let mut demo = support::local::Daemon(Some(
        std::process::Command::new(support::local::BIN)
            .args(["demo", "--fast", "--dir"])
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("rollgate demo"),
    ));
    let plane_dir = dir.path().join("state/local");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let recorded = || -> Vec<Identity> {
        std::fs::read_dir(plane_dir.join("hello"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "pid"))
            .filter_map(|e| Identity::read(&e.path()))
            .collect()
    };
    while recorded().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the demo never served"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let plane = rollgate::dataplane::client::recorded(&plane_dir).expect("a data plane");
    let workloads = recorded();
    // When the demo alone is SIGKILLed (not its process group)
    demo.kill();
    // Then its data plane and workloads stop by themselves, within seconds
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while plane.is_alive() || workloads.iter().any(Identity::is_alive) {
        assert!(
            std::time::Instant::now() < deadline,
            "left behind: plane {}, workloads {:?}",
            plane.is_alive(),
            workloads
                .iter()
                .filter(|i| i.is_alive())
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn regression_an_analysis_whose_data_plane_restarted_restarts_its_window_instead_of_holding() {
    use rollgate::model::status::Phase;
    // Given v1 stable, and v2 in a 4 s builtin analysis at 25% under 100 req/s
    let w = World::new(
        "[ { setWeight: 25 }, { analysis: { checks: [success-rate], duration: 4s } }, { setWeight: 100 } ]",
    );
    let _d = w.daemon();
    w.wait("v1 stable", Duration::from_secs(60), |s| {
        s.phase.as_str() == "Succeeded" && s.candidate == "v1"
    });
    let traffic = Traffic::start(w.addr(), 100);
    w.roll_out("v2", false);
    w.wait("v2 analysing", Duration::from_secs(60), |s| {
        s.candidate == "v2" && s.phase == Phase::Progressing && s.step >= 1
    });
    std::thread::sleep(Duration::from_millis(1500));
    // When the data plane itself dies mid-analysis (its counters with it) and the daemon
    // starts a new one
    let old = plane(&w);
    support::local::sigkill(&old);
    // Then the rollout does not hold for the lost samples: the window restarts where the
    // new counters begin, and v2 succeeds on a full window of fresh evidence
    let s = w.wait("v2 stable", Duration::from_secs(60), |s| {
        s.candidate == "v2" && matches!(s.phase, Phase::Succeeded | Phase::Held | Phase::RolledBack)
    });
    drop(traffic);
    assert_eq!(s.phase, Phase::Succeeded, "{s:?}");
    assert_ne!(plane(&w), old);
    let restarted = w
        .remote
        .log("%(trailers:key=Rollgate-Analysis-Restarted,valueonly)");
    assert!(
        !restarted.trim().is_empty(),
        "no restart was recorded:\n{}",
        w.remote.log("%s")
    );
    let held = w.remote.log("%(trailers:key=Rollgate-Phase,valueonly)");
    assert!(
        !held.lines().any(|l| l.trim() == "Held"),
        "held:\n{}",
        w.remote.log("%s")
    );
}
