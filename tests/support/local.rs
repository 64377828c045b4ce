//! A GitOps remote with one `local` plan served by the demo service, a daemon that is
//! stopped with the test, and traffic that tells the proxy's failures from the
//! workload's own: what the data-plane and chaos suites share.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rollgate::dataplane::identity::Identity;
use rollgate::model::status::Status;

use super::{DataPlanes, Remote, free_port};

pub const BIN: &str = env!("CARGO_BIN_EXE_rollgate");

/// A plan of the demo service at `artifact` on `port`. `bad` versions answer 20% of
/// requests with 500; `marker` goes into every workload's argv, so the test can find
/// (and count) its processes.
pub fn plan_yaml(port: u16, artifact: &str, bad: bool, steps: &str, marker: &str) -> String {
    plan_yaml_with(port, artifact, bad, steps, marker, "")
}

/// `plan_yaml` with more entries under `checks:` (`extra`: YAML lines, each `    - {…}`).
pub fn plan_yaml_with(
    port: u16,
    artifact: &str,
    bad: bool,
    steps: &str,
    marker: &str,
    extra: &str,
) -> String {
    let fail = if bad { artifact } else { marker };
    format!(
        "apiVersion: rollgate.dev/v1alpha1
kind: RolloutPlan
metadata: {{ name: web, labels: {{ team: test }} }}
spec:
  target: local
  workload:
    local:
      command: [\"{BIN}\", demo-service, --port, \"{{{{port}}}}\", --version, \"{{{{version}}}}\", --fail-version, \"{fail}\", --fail-rate, \"0.2\", --work-ms, \"1\"]
      listen: \"127.0.0.1:{port}\"
      healthCheck: {{ path: /healthz, expectStatus: 200, timeout: 1s }}
  artifact: {artifact}
  strategy:
    canary:
      steps: {steps}
  checks:
    - {{ name: success-rate, source: builtin, query: success-rate, interval: 300ms, judge: {{ min: 0.95 }} }}
{extra}  minSamples: 10
"
    )
}

/// A remote with a `local` target and the plan at v1, a state folder, and the guard
/// that stops its data plane when the test ends.
pub struct World {
    /// First: fields drop in order, and the data planes must stop before the folders go.
    _planes: DataPlanes,
    pub remote: Remote,
    pub port: u16,
    pub state: PathBuf,
    pub steps: String,
    /// In the argv of every workload of this test (`--fail-version <marker>`).
    pub marker: String,
    /// More checks in the plan (`plan_yaml_with`).
    pub checks: String,
}

impl World {
    pub fn new(steps: &str) -> World {
        Self::with_checks(steps, "")
    }

    /// A world whose plan has these checks besides `success-rate` (`plan_yaml_with`).
    pub fn with_checks(steps: &str, checks: &str) -> World {
        let seed = tempfile::tempdir().expect("seed");
        let port = free_port();
        let marker = format!("none-{}-{port}", std::process::id());
        std::fs::create_dir_all(seed.path().join("plans")).expect("plans");
        std::fs::write(
            seed.path().join("rollgate.yaml"),
            "apiVersion: rollgate.dev/v1alpha1\nkind: Settings\ntargets:\n  local: { local: {} }\n",
        )
        .expect("settings");
        std::fs::write(
            seed.path().join("plans/web.yaml"),
            plan_yaml_with(port, "v1", false, steps, &marker, checks),
        )
        .expect("plan");
        let remote = Remote::seeded_from(seed.path());
        let state = remote.work_dir("state");
        std::fs::create_dir_all(&state).expect("state");
        World {
            _planes: DataPlanes(state.clone()),
            remote,
            port,
            state,
            steps: steps.to_owned(),
            marker,
            checks: checks.to_owned(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The data plane's folder (the default for the target named `local`).
    pub fn plane_dir(&self) -> PathBuf {
        self.state.join("local").join("local")
    }

    /// Start the daemon from `exe` (the built binary, or a copy playing a new release).
    pub fn daemon_from(&self, exe: &Path) -> Daemon {
        self.daemon_with(exe, &[])
    }

    /// Start the daemon from `exe` with more arguments (`--listen ADDR`).
    pub fn daemon_with(&self, exe: &Path, extra: &[&str]) -> Daemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.state.join("daemon.log"))
            .expect("log");
        let child = Command::new(exe)
            .args(["run", "--repo"])
            .arg(&self.remote.bare)
            .args(["--interval", "100ms", "--state-dir"])
            .arg(&self.state)
            .args(extra)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the daemon starts");
        Daemon(Some(child))
    }

    pub fn daemon(&self) -> Daemon {
        self.daemon_from(Path::new(BIN))
    }

    pub fn status(&self) -> Option<Status> {
        let out = Command::new("git")
            .args(["show", "main:status/web.yaml"])
            .current_dir(&self.remote.bare)
            .output()
            .ok()?;
        Status::from_yaml(&String::from_utf8_lossy(&out.stdout)).ok()
    }

    /// Wait for a status that satisfies `f`; panics with the daemon's log after `timeout`.
    pub fn wait(&self, what: &str, timeout: Duration, f: impl Fn(&Status) -> bool) -> Status {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.status().filter(|s| f(s)) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; status {:?}\n{}",
                self.status()
                    .map(|s| (s.phase, s.step, s.candidate, s.message)),
                self.diagnosis()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What a failed wait shows: the proxy's answer, the workloads, and the tails of the
    /// daemon's and the data plane's logs.
    pub fn diagnosis(&self) -> String {
        let plane_log =
            std::fs::read_to_string(self.plane_dir().join("dataplane.log")).unwrap_or_default();
        let mut plane_tail: Vec<&str> = plane_log.lines().rev().take(30).collect();
        plane_tail.reverse();
        format!(
            "proxy at {}: {:?}\nworkloads: {:?}\n--- daemon log\n{}\n--- data plane log\n{}",
            self.addr(),
            rollgate::targets::local::http_status(self.addr(), "/", Duration::from_secs(1)),
            self.workloads()
                .iter()
                .map(|i| (i.pid, i.argv.join(" ")))
                .collect::<Vec<_>>(),
            self.log_tail(40),
            plane_tail.join("\n")
        )
    }

    pub fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(self.state.join("daemon.log")).unwrap_or_default();
        let mut tail: Vec<&str> = log.lines().rev().take(n).collect();
        tail.reverse();
        tail.join("\n")
    }

    /// The human commits the plan at `artifact`.
    pub fn roll_out(&self, artifact: &str, bad: bool) -> String {
        self.remote.human_commit(
            "plans/web.yaml",
            |_| {
                plan_yaml_with(
                    self.port,
                    artifact,
                    bad,
                    &self.steps,
                    &self.marker,
                    &self.checks,
                )
            },
            &format!("web: {artifact}"),
        )
    }

    /// The live processes of this test's workloads (found by the marker in their argv).
    pub fn workloads(&self) -> Vec<Identity> {
        marked(&self.marker)
    }
}

/// Live `demo-service` processes with `marker` in their argv.
pub fn marked(marker: &str) -> Vec<Identity> {
    let mut out: Vec<Identity> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(Identity::of)
        .filter(|id| {
            id.argv.iter().any(|a| a == "demo-service")
                && id.argv.iter().any(|a| a.contains(marker))
        })
        .collect();
    out.sort_by_key(|i| i.pid);
    out
}

/// Is any live process's argv holding `marker` (in one of its words)?
pub fn marked_any(marker: &str) -> bool {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(Identity::of)
        .any(|id| id.argv.iter().any(|a| a.contains(marker)))
}

/// Stop every live process whose argv holds `marker` (a test's guard).
pub fn stop_marked_any(marker: &str) {
    let ids: Vec<Identity> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter_map(Identity::of)
        .filter(|id| id.argv.iter().any(|a| a.contains(marker)))
        .collect();
    for id in ids {
        id.stop(Duration::from_millis(200));
    }
}

/// Last line of defence after the data planes were stopped: no workload of this test
/// may outlive it, whatever went wrong in between.
pub fn kill_marked(marker: &str) {
    for id in marked(marker) {
        id.stop(Duration::from_millis(200));
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // `_planes` (the first field) stops the data planes after this; the workloads
        // of a data plane that could not be asked are stopped here by their marker.
        let planes = std::mem::replace(&mut self._planes, DataPlanes(PathBuf::new()));
        drop(planes);
        kill_marked(&self.marker);
    }
}

/// SIGKILL the process `id` names (no chance to clean up), and wait until it is gone.
pub fn sigkill(id: &Identity) {
    assert!(id.is_alive(), "{id:?} is not running");
    let _ = Command::new("kill")
        .args(["-KILL", &id.pid.to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while id.is_alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!id.is_alive(), "{id:?} survived SIGKILL");
}

/// A daemon process, SIGKILLed and reaped when dropped (a failing test included).
pub struct Daemon(pub Option<Child>);

impl Daemon {
    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and wait for the exit (at most 30 s).
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What the clients saw, by kind.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Answers by status code.
    pub codes: BTreeMap<u16, u64>,
    /// 200 answers by the version that gave them.
    pub versions: BTreeMap<String, u64>,
    /// The workload's own 500s (`<version> failed`), by version.
    pub failed_by: BTreeMap<String, u64>,
    /// No answer at all: refused, reset, timed out.
    pub connection_failures: u64,
}

impl Seen {
    pub fn total(&self) -> u64 {
        self.codes.values().sum::<u64>() + self.connection_failures
    }

    /// 5xx answers other than a workload's own failures (the proxy's 502 and 503, and
    /// any 500 that is not `<version> failed`).
    pub fn proxy_errors(&self) -> u64 {
        let fives: u64 = self
            .codes
            .iter()
            .filter(|(c, _)| **c >= 500)
            .map(|(_, n)| n)
            .sum();
        fives - self.failed_by.values().sum::<u64>()
    }
}

/// Steady client traffic (`rps` requests a second over 4 threads, a new connection
/// each) until stopped.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Traffic {
    pub fn start(addr: SocketAddr, rps: u32) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let gap = Duration::from_secs_f64(4.0 / f64::from(rps.max(1)));
        let threads = (0..4)
            .map(|_| {
                let (stop, seen) = (stop.clone(), seen.clone());
                std::thread::spawn(move || {
                    let mut next = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        let r =
                            rollgate::targets::local::http_get(addr, "/", Duration::from_secs(5));
                        if let Ok(mut s) = seen.lock() {
                            match r {
                                Ok((code, body)) => {
                                    *s.codes.entry(code).or_default() += 1;
                                    let body = body.trim();
                                    if code == 200 {
                                        let v = body.rsplit(' ').next().unwrap_or("?");
                                        *s.versions.entry(v.to_owned()).or_default() += 1;
                                    } else if code == 500
                                        && let Some(v) = body.strip_suffix(" failed")
                                    {
                                        *s.failed_by.entry(v.to_owned()).or_default() += 1;
                                    }
                                }
                                Err(_) => s.connection_failures += 1,
                            }
                        }
                        next += gap;
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        } else {
                            next = now;
                        }
                    }
                })
            })
            .collect();
        Traffic {
            stop,
            seen,
            threads,
        }
    }

    pub fn seen(&self) -> Seen {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn stop(mut self) -> Seen {
        self.halt();
        self.seen()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.halt();
    }
}
