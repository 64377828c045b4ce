//! Crash and resume: the daemon as a subprocess, killed with SIGKILL at random moments of
//! a rollout and restarted each time, ends where an uninterrupted run ends, and records
//! no transition twice. The state comes from Git alone; re-applying a step is idempotent.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rollgate::model::status::{Phase, Status};
use rollgate::targets::dry_run::{DryRun, Workload};
use support::Remote;
use support::rollout::{LoggedCommit, PlanFile};

const BIN: &str = env!("CARGO_BIN_EXE_rollgate");

/// How many times the daemon is killed during the rollout.
const KILLS: usize = 20;

/// The plan before: v1 in two steps (rolled out before the test starts).
fn before() -> PlanFile {
    PlanFile::new("web").steps(&["setWeight: 20", "setWeight: 100"])
}

/// The change under test: v2 in nine steps with four short timed pauses.
fn after() -> PlanFile {
    PlanFile::new("web").artifact("v2").steps(&[
        "setWeight: 5",
        "pause: { duration: 300ms }",
        "setWeight: 10",
        "pause: { duration: 300ms }",
        "setWeight: 25",
        "pause: { duration: 300ms }",
        "setWeight: 50",
        "pause: { duration: 300ms }",
        "setWeight: 100",
    ])
}

/// A tiny deterministic RNG (an LCG; no new dependency).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    /// Uniform in `lo..hi` milliseconds.
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo))
    }
}

/// A remote with v1 rolled out, a state folder, and the change to v2 pushed.
struct Setup {
    remote: Remote,
    state: PathBuf,
    change: String,
}

impl Setup {
    fn new() -> Self {
        let remote = Remote::with_plans(&[&before()]);
        let state = remote.work_dir("state");
        // Given v1 rolled out by the daemon (`--once` works until nothing moves)
        let out = Command::new(BIN)
            .args(["run", "--journal-targets", "--once", "--repo"])
            .arg(&remote.bare)
            .arg("--state-dir")
            .arg(&state)
            .env("RUST_LOG", "warn")
            .output()
            .expect("rollgate run --once");
        assert!(out.status.success(), "{out:?}");
        let s = remote.status("web").expect("a status");
        assert_eq!((s.phase, s.candidate.as_str()), (Phase::Succeeded, "v1"));
        // When the human pushes the change to v2
        let change = remote.human_commit(&after().path(), |_| after().yaml(), "web: v2");
        Self {
            remote,
            state,
            change,
        }
    }

    fn spawn(&self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state.join("daemon.log"))
            .expect("log file");
        Command::new(BIN)
            .args(["run", "--journal-targets", "--interval", "50ms", "--repo"])
            .arg(&self.remote.bare)
            .arg("--state-dir")
            .arg(&self.state)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("rollgate run starts")
    }

    fn done(&self) -> bool {
        self.remote
            .status("web")
            .is_some_and(|s| s.phase == Phase::Succeeded && s.candidate == "v2")
    }

    /// Run the daemon until the rollout succeeded (or `limit` passed), then stop it.
    fn finish(&self, limit: Duration) {
        let mut child = self.spawn();
        let start = Instant::now();
        let mut exited = None;
        while !self.done() && start.elapsed() < limit {
            exited = child.try_wait().expect("the daemon's state");
            if exited.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        kill(&mut child);
        assert!(
            self.done(),
            "the rollout did not finish in {limit:?} (the daemon exited: {exited:?}): {:?}\n{}\n{}",
            self.remote.status("web"),
            self.remote.log("%s"),
            std::fs::read_to_string(self.state.join("daemon.log")).unwrap_or_default()
        );
    }

    fn status(&self) -> Status {
        self.remote.status("web").expect("a status")
    }

    fn workload(&self) -> Workload {
        DryRun::with_journal(journal(&self.state)).workload("web")
    }

    /// `(Revision, Phase, Step)` of every status commit of the rollout, in order.
    fn transitions(&self) -> Vec<(String, String, String)> {
        self.remote
            .rollgate_commits()
            .iter()
            .filter(|c| c.is_status())
            .map(|c: &LoggedCommit| {
                let t = |k: &str| c.trailer(k).unwrap_or("-").to_owned();
                (
                    t("Rollgate-Revision"),
                    t("Rollgate-Phase"),
                    t("Rollgate-Step"),
                )
            })
            .collect()
    }
}

fn journal(state: &Path) -> PathBuf {
    state.join("dry-run").join("local.journal")
}

/// Delete every `*.lock` file under `dir`; how many there were.
fn remove_stale_locks(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            n += remove_stale_locks(&path);
        } else if path.extension().is_some_and(|x| x == "lock") {
            eprintln!("stale lock after a kill: {}", path.display());
            std::fs::remove_file(&path).expect("remove a stale lock");
            n += 1;
        }
    }
    n
}

/// The daemon's private clone under its state folder.
fn private_clone(state: &Path) -> PathBuf {
    let mut clones: Vec<PathBuf> = std::fs::read_dir(state.join("git"))
        .expect("the daemon made its private clone")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(clones.len(), 1, "{clones:?}");
    clones.remove(0)
}

fn kill(child: &mut Child) {
    // `Child::kill` is SIGKILL on Unix: no chance to clean up.
    let _ = child.kill();
    let _ = child.wait();
}

fn final_state(s: &Status) -> (Phase, String, Option<String>, usize, u8) {
    (
        s.phase,
        s.candidate.clone(),
        s.stable.clone(),
        s.step,
        s.weight,
    )
}

fn assert_no_duplicates(transitions: &[(String, String, String)]) {
    for (i, t) in transitions.iter().enumerate() {
        assert!(
            !transitions[..i].contains(t),
            "transition {t:?} recorded twice: {transitions:#?}"
        );
    }
}

#[test]
fn a_daemon_killed_at_random_moments_ends_where_an_uninterrupted_one_ends() {
    // Given an uninterrupted run of the rollout, for reference
    let calm = Setup::new();
    let started = Instant::now();
    calm.finish(Duration::from_secs(30));
    let calm_took = started.elapsed();
    let calm_transitions = calm.transitions();
    assert_no_duplicates(&calm_transitions);

    // When the same rollout runs on a fresh remote, the daemon killed (SIGKILL) at 20
    // random moments and restarted each time
    let crashy = Setup::new();
    // (`CRASH_SEED=<n>` explores other moments.)
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_2026);
    let mut rng = Lcg(seed);
    let mut kills = 0;
    let mut stale_locks = 0;
    while kills < KILLS && !crashy.done() {
        let mut child = crashy.spawn();
        std::thread::sleep(rng.millis(5, 90));
        kill(&mut child);
        kills += 1;
        // Locks a kill leaves in the private clone are the daemon's to clear (it does, at
        // start). A kill during a push to a *path* remote (libgit2 updates it in-process)
        // can leave `refs/heads/main.lock` in the remote itself, where only its owner may
        // clear it (a human could be pushing): clear it here, as that owner would.
        stale_locks += remove_stale_locks(&crashy.remote.bare.join("refs"));
    }
    let journal_lines_at_last_kill = std::fs::read_to_string(journal(&crashy.state))
        .unwrap_or_default()
        .lines()
        .count();
    crashy.finish(Duration::from_secs(30));

    // Then it ends in the same state, in Git and on the target
    assert_eq!(final_state(&crashy.status()), final_state(&calm.status()));
    assert_eq!(crashy.status().revision, crashy.change);
    assert_eq!(calm.status().revision, calm.change);
    assert_eq!(crashy.workload(), calm.workload());
    assert_eq!(
        crashy.workload(),
        Workload {
            stable: Some("v2".to_owned()),
            candidate: None,
            weight: 0,
            ..Default::default()
        }
    );
    // And no transition was recorded twice
    let crashy_transitions = crashy.transitions();
    assert_no_duplicates(&crashy_transitions);
    // And the rollout's transitions are the same ones, in the same order
    let of_change = |all: &[(String, String, String)], change: &str| -> Vec<(String, String)> {
        all.iter()
            .filter(|(rev, _, _)| rev == change)
            .map(|(_, p, s)| (p.clone(), s.clone()))
            .collect()
    };
    assert_eq!(
        of_change(&crashy_transitions, &crashy.change),
        of_change(&calm_transitions, &calm.change)
    );
    eprintln!(
        "seed {seed}: uninterrupted: {calm_took:?}; killed {kills} times, \
         {stale_locks} stale lock files cleared ({journal_lines_at_last_kill} \
         target calls by the last kill, {} in all)",
        std::fs::read_to_string(journal(&crashy.state))
            .unwrap_or_default()
            .lines()
            .count()
    );
}

#[test]
fn regression_a_lock_file_left_by_a_killed_fetch_does_not_stop_the_daemon() {
    // Given v1 rolled out, the change to v2 pushed, and the daemon killed (SIGKILL) while
    // fetching into its private clone, so libgit2's lock file is left behind
    let setup = Setup::new();
    let lock = private_clone(&setup.state).join("refs/remotes/origin/main.lock");
    std::fs::write(&lock, "").expect("a stale lock file");

    // When the daemon starts again
    // Then it recovers (the clone is private: nobody else can hold the lock) and the
    // rollout finishes
    setup.finish(Duration::from_secs(15));
}

/// Analysis steps on the proxy's own counters: each needs live samples from the data plane.
const ANALYSED: &str = "[ { setWeight: 20 }, { analysis: { checks: [success-rate], duration: 2s } }, { setWeight: 50 }, { analysis: { checks: [success-rate], duration: 2s } }, { setWeight: 100 } ]";

#[test]
fn fifty_sigkills_over_ten_rollouts_under_traffic_fail_no_request_and_hold_nothing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use support::local::{Traffic, World};

    // (`ROLLGATE_CHAOS_KILLS=<n>` and `CRASH_SEED=<n>` explore further.)
    let kills_wanted: usize = std::env::var("ROLLGATE_CHAOS_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x00c4_a05e);
    // Given v1 rolled out by a daemon on the local target, and ~100 req/s through the proxy
    let w = Arc::new(World::new(ANALYSED));
    let daemon = Arc::new(Mutex::new(w.daemon()));
    w.wait("v1 stable", Duration::from_secs(60), |s| {
        s.phase == Phase::Succeeded && s.candidate == "v1"
    });
    let traffic = Traffic::start(w.addr(), 100);

    // When ten versions are rolled out one after another (two of them fail 20% of
    // requests), while the daemon is SIGKILLed at seeded random moments and restarted
    let done = Arc::new(AtomicBool::new(false));
    let chaos = {
        let (w, daemon, done) = (w.clone(), daemon.clone(), done.clone());
        std::thread::spawn(move || {
            let mut rng = Lcg(seed);
            let mut kills = 0;
            while kills < kills_wanted && !done.load(Ordering::SeqCst) {
                std::thread::sleep(rng.millis(150, 900));
                let mut d = daemon.lock().expect("daemon");
                d.kill();
                kills += 1;
                // Dead for a moment: the data plane serves alone.
                std::thread::sleep(rng.millis(0, 300));
                *d = w.daemon();
            }
            kills
        })
    };
    let mut stable = "v1".to_owned();
    let mut ends = Vec::new();
    let started = Instant::now();
    for i in 2..=11 {
        let bad = i == 4 || i == 8;
        let version = format!("{}{i}", if bad { "b" } else { "g" });
        w.roll_out(&version, bad);
        let s = w.wait(
            &format!("{version} settled"),
            Duration::from_secs(120),
            |s| s.candidate == version && matches!(s.phase, Phase::Succeeded | Phase::RolledBack),
        );
        ends.push((version.clone(), s.phase, s.stable.clone()));
        if !bad {
            stable = version;
        }
    }
    done.store(true, Ordering::SeqCst);
    let kills = chaos.join().expect("the chaos thread");
    let took = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let seen = traffic.stop();

    // Then every rollout ended as an uninterrupted one does: good ones stable, bad ones
    // rolled back to the good one before them
    let mut expect_stable = "v1".to_owned();
    for (version, phase, stable_after) in &ends {
        if version.starts_with('g') {
            expect_stable.clone_from(version);
            assert_eq!(*phase, Phase::Succeeded, "{version}: {ends:?}");
        } else {
            assert_eq!(*phase, Phase::RolledBack, "{version}: {ends:?}");
        }
        assert_eq!(
            stable_after.as_deref(),
            Some(expect_stable.as_str()),
            "{ends:?}"
        );
    }
    assert_eq!(expect_stable, stable);
    // And no request failed, and the only 5xx were the bad versions' own
    assert_eq!(seen.connection_failures, 0, "{seen:?}");
    assert_eq!(seen.proxy_errors(), 0, "{seen:?}");
    assert!(
        seen.failed_by.keys().all(|v| v.starts_with('b')),
        "{seen:?}"
    );
    // And no rollout was ever held (no analysis judged on samples it lost)
    let held: Vec<String> = w
        .remote
        .log("%(trailers:key=Rollgate-Phase,valueonly)")
        .lines()
        .filter(|l| l.trim() == "Held")
        .map(str::to_owned)
        .collect();
    assert!(held.is_empty(), "held {} times", held.len());
    // And exactly one process (the stable) runs: no orphan of any kill
    let left = w.workloads();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].argv.contains(&stable), "{left:?}");
    drop(daemon.lock().map(|mut d| d.kill()));
    eprintln!(
        "seed {seed}: {kills} SIGKILLs over 10 rollouts in {:.1}s; {} requests: {} connection failures, {} proxy 5xx, {} 500s of bad versions ({:?})",
        took.as_secs_f64(),
        seen.total(),
        seen.connection_failures,
        seen.proxy_errors(),
        seen.failed_by.values().sum::<u64>(),
        seen.failed_by
    );
    assert!(kills >= kills_wanted.min(40), "only {kills} kills happened");
}
